"""The matmul fast paths of codec.layers agree with torch's convolutions; helpers of the streaming path."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from codec.layers import Conv1d, ConvTranspose1d, derived, gelu, gelu_


@pytest.mark.parametrize("cin,cout,k,s,groups,frames", [
    (16, 24, 1, 1, 1, 4), (16, 24, 7, 1, 1, 4), (16, 24, 2, 2, 1, 8), (16, 16, 3, 2, 1, 9),
    (32, 32, 12, 1, 4, 4), (16, 16, 14, 1, 16, 4), (16, 16, 40, 1, 16, 3), (16, 24, 3, 1, 1, 300),
])
@torch.inference_mode()
def test_conv1d_fast_path(cin, cout, k, s, groups, frames):
    torch.manual_seed(0)
    conv = Conv1d(cin, cout, k, stride=s, groups=groups)
    x = torch.randn(2, cin, (frames - 1) * s + k)
    ref = F.conv1d(x, conv.weight, conv.bias, stride=s, groups=groups)
    torch.testing.assert_close(conv(x), ref, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("k", [1, 2, 4])
@torch.inference_mode()
def test_conv_transpose_fast_path(k):
    torch.manual_seed(0)
    conv = ConvTranspose1d(16, 24, k, stride=k)
    x = torch.randn(2, 16, 5)
    ref = F.conv_transpose1d(x, conv.weight, conv.bias, stride=k)
    torch.testing.assert_close(conv(x), ref, atol=1e-5, rtol=1e-5)


def test_training_uses_torch_convolution():
    conv = Conv1d(4, 4, 3)
    x = torch.randn(1, 4, 6, requires_grad=True)
    conv(x).sum().backward()
    assert conv.weight.grad is not None and x.grad is not None


@pytest.mark.parametrize("cin,cout,k,s,groups,frames", [
    (16, 24, 1, 1, 1, 4), (16, 24, 7, 1, 1, 4), (16, 24, 2, 2, 1, 8), (1, 8, 10, 5, 1, 256),
    (32, 32, 12, 1, 4, 4), (16, 24, 3, 2, 4, 5), (16, 16, 14, 1, 16, 4), (16, 16, 18, 2, 16, 9),
    (16, 16, 128, 1, 16, 4), (16, 16, 128, 1, 16, 20), (16, 24, 3, 1, 1, 300),
])
@torch.inference_mode()
def test_conv1d_channels_last(cin, cout, k, s, groups, frames):
    torch.manual_seed(0)
    conv = Conv1d(cin, cout, k, stride=s, groups=groups, channels_last=True)
    x = torch.randn(2, cin, (frames - 1) * s + k)
    ref = F.conv1d(x, conv.weight, conv.bias, stride=s, groups=groups)
    y = conv(x.transpose(1, 2).contiguous())
    assert y.shape == (2, frames, cout)
    torch.testing.assert_close(y, ref.transpose(1, 2), atol=1e-5, rtol=1e-5)
    buf = torch.zeros(2, x.shape[-1] + 7, cin)  # a view into a longer buffer, as History returns
    view = buf.narrow(1, 3, x.shape[-1])
    view.copy_(x.transpose(1, 2))
    torch.testing.assert_close(conv(view), ref.transpose(1, 2), atol=1e-5, rtol=1e-5)


@torch.inference_mode()
def test_conv1d_channels_last_padded_and_training():
    torch.manual_seed(0)
    conv = Conv1d(8, 8, 5, padding=2, groups=8, channels_last=True)
    x = torch.randn(1, 8, 30)
    torch.testing.assert_close(conv(x.transpose(1, 2)), conv._conv_forward(x, conv.weight, conv.bias).transpose(1, 2))
    with torch.inference_mode(False):
        conv2 = Conv1d(4, 6, 3, channels_last=True)
        xt = torch.randn(1, 10, 4, requires_grad=True)
        conv2(xt).sum().backward()  # torch's convolution when autograd records
        assert conv2.weight.grad is not None and xt.grad is not None


@pytest.mark.parametrize("k", [1, 2, 4])
@torch.inference_mode()
def test_conv_transpose_channels_last(k):
    torch.manual_seed(0)
    conv = ConvTranspose1d(16, 24, k, stride=k, channels_last=True)
    x = torch.randn(2, 16, 5)
    ref = F.conv_transpose1d(x, conv.weight, conv.bias, stride=k)
    torch.testing.assert_close(conv(x.transpose(1, 2).contiguous()), ref.transpose(1, 2), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("shape", [(1, 4, 192), (1, 1, 7), (2, 3, 1, 5), (7,)])
def test_gelu_matches_torch(shape):
    x = torch.randn(*shape) * 3
    y = gelu(x)
    assert y.shape == x.shape and y.is_contiguous()
    torch.testing.assert_close(y, F.gelu(x), atol=1e-6, rtol=1e-6)


@pytest.mark.parametrize("shape", [(1, 4, 192), (1, 1, 7), (3, 5)])
def test_gelu_in_place(shape):
    x = torch.randn(*shape) * 3
    ref = F.gelu(x)
    y = x.clone()
    with torch.no_grad():
        out = gelu_(y)
    assert out is y and torch.allclose(y, ref, atol=1e-6, rtol=1e-6)
    t = y.t() if y.dim() == 2 else y.transpose(1, 2)  # a non-contiguous temporary
    t.copy_(x.t() if x.dim() == 2 else x.transpose(1, 2))
    with torch.no_grad():
        gelu_(t)
    torch.testing.assert_close(y, ref, atol=1e-6, rtol=1e-6)
    xg = x.clone().requires_grad_(True)  # autograd records: a new tensor, differentiable
    out = gelu_(xg * 1.0)
    out.sum().backward()
    assert xg.grad is not None and torch.equal(xg.detach(), x)


def test_derived_follows_weight_updates():
    lin = torch.nn.Linear(3, 2)
    calls = []

    def fn(w):
        calls.append(1)
        return w * 2

    with torch.inference_mode():
        a = derived(lin, "w2", lin.weight, fn)
        assert derived(lin, "w2", lin.weight, fn) is a and len(calls) == 1  # kept
    with torch.no_grad():
        lin.weight.add_(1.0)  # in place: new version
        b = derived(lin, "w2", lin.weight, fn)
        assert len(calls) == 2 and torch.equal(b, lin.weight * 2)
        assert derived(lin, "w2", lin.weight, fn) is b
    lin.load_state_dict({"weight": torch.zeros(2, 3), "bias": torch.zeros(2)})
    with torch.no_grad():
        assert torch.equal(derived(lin, "w2", lin.weight, fn), torch.zeros(2, 3)) and len(calls) == 3
    lin.weight = torch.nn.Parameter(torch.ones(2, 3))  # replaced
    with torch.no_grad():
        assert torch.equal(derived(lin, "w2", lin.weight, fn), torch.full((2, 3), 2.0)) and len(calls) == 4
    out = derived(lin, "w2", lin.weight, fn)  # autograd records: computed every time, differentiable
    assert len(calls) == 5 and out.requires_grad
