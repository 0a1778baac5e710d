"""The matmul fast paths of codec.layers agree with torch's convolutions."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from codec.layers import Conv1d, ConvTranspose1d


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
