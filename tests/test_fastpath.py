"""Fast inference modes: built layer by layer, same API, close to the exact fp32 path."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from codec.fastpath import build, convert, quantize_module
from codec.layers import Conv1d
from codec.model import FocalCodec
from codec.presets import tiny_config
from codec.pretrained import load_pretrained, save_pretrained


@pytest.fixture(scope="module", params=["conv", "logmel-istft-harmonic"])
def ckpt(tmp_path_factory, request):
    torch.manual_seed(0)
    cfg = tiny_config(16)
    if request.param == "logmel-istft-harmonic":  # a front end, a decoder head and a source without buffers
        cfg = cfg.replace(encoder_config=dataclasses.replace(cfg.encoder_config, frontend="logmel", mel_bins=32),
                          decoder_config=dataclasses.replace(cfg.decoder_config, head="istft", source="harmonic"))
    m = FocalCodec(cfg)
    d = tmp_path_factory.mktemp("ckpt")
    save_pretrained(m, d)
    return d, m


def _stream(m, x):
    est = dst = None
    toks, wav = [], []
    for i in range(0, x.shape[1], m.chunk_size):
        t, est = m.encode_step(x[:, i : i + m.chunk_size], est)
        y, dst = m.decode_step(t, dst)
        toks.append(t)
        wav.append(y)
    return torch.cat(toks, 1), torch.cat(wav, 1)


@pytest.mark.parametrize("mode,min_agree", [("fp32", 1.0), ("bf16", 0.8), ("int8", 0.7)])
@torch.inference_mode()
def test_modes_from_checkpoint(ckpt, speech_16k, mode, min_agree):
    folder, ref = ckpt
    m = load_pretrained(folder, mode=mode)
    assert m.mode == mode and not any(p.requires_grad for p in m.parameters())
    x = torch.from_numpy(speech_16k[: 40 * 1280])[None]
    toks, wav = _stream(m, x)
    ref_toks = ref.sig_to_toks(x)
    agree = float((toks == ref_toks).float().mean())
    assert agree >= min_agree, agree
    assert wav.dtype == torch.float32 and wav.shape == (1, 40 * 1920) and torch.isfinite(wav).all()
    if mode == "fp32":
        torch.testing.assert_close(wav, ref.toks_to_sig(ref_toks), atol=1e-4, rtol=1e-4)
    else:  # same tokens decode to a close waveform
        y_ref = ref.toks_to_sig(ref_toks)
        y, _ = m.decode_step(ref_toks[:, :4], None)
        assert y.shape == (1, 1920)
        snr = 10 * torch.log10(y_ref[:, :1920].square().sum() / (y - y_ref[:, :1920]).square().sum())
        assert snr > 15, float(snr)


def test_int8_quantizes_every_weight_matrix():
    from codec.fastpath import MIN_INT8_WEIGHTS

    m = build(tiny_config(12), "int8", seed=0)
    kinds = {type(mod).__name__ for mod in m.modules()}
    assert "Linear" in kinds  # the dynamic quantized Linear class is also called Linear
    floats = [mod for mod in m.modules() if type(mod) is torch.nn.Linear]
    assert floats and all(mod.weight.numel() < MIN_INT8_WEIGHTS for mod in floats)  # tiny ones stay float
    convs = [mod for name, mod in m.named_modules() if name.endswith(("context_proj", "upscale.upscale"))]
    assert convs and all(mod.qlinear is not None and mod.weight.numel() == 0 for mod in convs)
    # grouped convs: int8 per group where the groups are big, float where the per-group products cost more
    assert m.encoder.encoder.positional_embedding.conv.qgroups is None
    torch.manual_seed(0)
    big, small = Conv1d(1024, 1024, 128, groups=16), Conv1d(192, 192, 32, groups=8)
    x = torch.randn(1, 1024, 131)
    with torch.no_grad():
        ref = big(x)
        for conv in (big, small):
            quantize_module(conv)
        y = big(x)
    assert big.qgroups is not None and big.weight.numel() == 0
    assert small.qgroups is None and small.weight.numel() == 192 * 24 * 32
    assert float((y - ref).norm() / ref.norm()) < 0.05  # int8 per output channel: close to float


def test_convert_in_place_and_errors():
    torch.manual_seed(0)
    m = convert(FocalCodec(tiny_config(12)), "bf16")
    assert m.compute_dtype == torch.bfloat16 and next(m.parameters()).dtype == torch.bfloat16
    with pytest.raises(ValueError, match="already converted"):
        convert(m, "int8")
    with pytest.raises(ValueError, match="unknown mode"):
        build(tiny_config(12), "fp8")


def test_fingerprint_is_the_same_in_every_mode(ckpt):
    folder, ref = ckpt
    fps = {mode: load_pretrained(folder, mode=mode).fingerprint() for mode in ("fp32", "bf16", "int8")}
    assert len(set(fps.values())) == 1 and fps["fp32"] == ref.fingerprint()
    torch.manual_seed(5)
    assert FocalCodec(tiny_config(16)).fingerprint() != ref.fingerprint()


@torch.inference_mode()
def test_int8_linear_is_called_without_the_module_wrapper():
    """codec.layers.linear calls the int8 op directly: the same numbers as the quantised module's forward,
    and a module with hooks (the bench's profile) is still called as a module."""
    from codec.fastpath import _qlinear
    from codec.layers import linear

    torch.manual_seed(0)
    lin = torch.nn.Linear(64, 48)
    q = _qlinear(lin.weight.detach(), lin.bias.detach())
    x = torch.randn(1, 4, 64)
    assert q.int8_packed is not None
    torch.testing.assert_close(linear(q, x), q(x), rtol=0, atol=0)
    assert float((linear(q, x) - lin(x)).norm() / lin(x).norm()) < 0.05
    seen = []
    h = q.register_forward_hook(lambda mod, inp, out: seen.append(out.shape))
    linear(q, x)
    h.remove()
    assert seen == [(1, 4, 48)]
