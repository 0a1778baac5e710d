"""The log-mel front end (``WavLMConfig.frontend = "logmel"``): what it measures, causality, level, state."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from codec.config import CodecConfig, ConfigError, WavLMConfig
from codec.melfront import POWER_FLOOR, LogMelFrontEnd, mel_filterbank
from codec.model import FocalCodec
from codec.presets import tiny_config

SR = 16000


def front(**kw) -> LogMelFrontEnd:
    return LogMelFrontEnd(WavLMConfig(frontend="logmel", **kw))


def tone(f: float, seconds: float = 0.64, amp: float = 0.1) -> torch.Tensor:
    t = torch.arange(int(seconds * SR)) / SR
    return (amp * torch.sin(2 * torch.pi * f * t))[None].float()


@torch.inference_mode()
def test_shapes_and_frame_rate():
    fe = front()
    for n in (320, 1280, 1281, 4000):
        y, _ = fe(torch.zeros(2, n), None)
        assert y.shape == (2, -(-n // 320), 160)
    assert WavLMConfig(frontend="logmel").downsample_factor == 320
    assert WavLMConfig(frontend="logmel", mel_hop=80, mel_stack=2).downsample_factor == 160


@pytest.mark.parametrize("f", [300.0, 1000.0, 3000.0, 6000.0])
@torch.inference_mode()
def test_a_tone_lands_in_its_mel_band(f):
    fe = front(mel_offset=0.0, mel_scale=1.0)
    y, _ = fe(tone(f), None)
    bands = y[0, 4:].reshape(-1, 2, 80).mean((0, 1))  # steady frames, both stacked hops
    fb = mel_filterbank(SR, 512, 80)
    assert int(bands.argmax()) == int(np.argmax(fb[:, round(f / SR * 512)]))
    assert float(bands.max() - bands.median()) > 5.0  # nats above the bulk of the bands


@torch.inference_mode()
def test_causal_no_lookahead():
    fe = front()
    x = tone(440.0)
    y, _ = fe(x, None)
    x2 = x.clone()
    x2[:, 3200:] = torch.randn(1, x.shape[1] - 3200)
    y2, _ = fe(x2, None)
    assert torch.equal(y[:, :10], y2[:, :10])  # frames ending at or before sample 3200
    assert not torch.equal(y[:, 10], y2[:, 10])


@torch.inference_mode()
def test_non_causal_windows_are_centred():
    """``causal = False`` (full-context models): each hop's window is centred on it (zeros outside the
    signal), so it sees half a window ahead; values match a direct numpy log-mel of the same windows."""
    fe = front(causal=False, mel_offset=0.0, mel_scale=1.0)
    n_fft, hop, left = 512, 160, 512 - 160
    x = torch.randn(1, 3200, generator=torch.Generator().manual_seed(2)) * 0.1
    y, ctx = fe(x, None)
    assert ctx is None and y.shape == (1, 10, 160)
    xp = np.pad(x[0].double().numpy(), (left // 2, left - left // 2))
    win = np.hanning(n_fft + 1)[:-1]  # periodic Hann
    frames = np.stack([xp[i * hop : i * hop + n_fft] * win for i in range(20)])
    ref = np.log(np.abs(np.fft.rfft(frames, axis=-1)) ** 2 @ mel_filterbank(SR, n_fft, 80).T + POWER_FLOOR)
    np.testing.assert_allclose(y[0].reshape(20, 80).numpy(), ref, atol=2e-3)
    # lookahead: a change after sample 1600 reaches the frame of hops 8-9 (windows up to sample 1776)
    x2 = x.clone()
    x2[:, 1600:] = 0.0
    y2, _ = fe(x2, None)
    assert torch.equal(y[:, :4], y2[:, :4]) and not torch.equal(y[:, 4], y2[:, 4])


@torch.inference_mode()
def test_level_is_kept():
    fe = front(mel_offset=0.0, mel_scale=1.0)
    g = torch.Generator().manual_seed(0)
    # every band well above the log's floor (1e-10), where the level is a pure offset
    x = tone(500.0, amp=0.1) + 0.01 * torch.randn(1, int(0.64 * SR), generator=g)
    y1, _ = fe(x, None)
    y2, _ = fe(2.0 * x, None)
    torch.testing.assert_close(y2[:, 2:], y1[:, 2:] + float(np.log(4.0)), atol=1e-3, rtol=0)
    # silence before the stream start (zeros) sits at the floor
    y0, _ = fe(torch.zeros(1, 640), None)
    assert torch.allclose(y0, torch.full_like(y0, float(np.log(1e-10))), atol=1e-3)


@torch.inference_mode()
def test_streaming_state_is_the_last_window():
    fe = front(mel_fft=400, mel_hop=80, mel_stack=4)
    x = torch.randn(1, 11 * 1280, generator=torch.Generator().manual_seed(1)) * 0.1
    one, _ = fe(x, None)
    ctx = None
    parts = []
    for i in range(0, x.shape[1], 1280):
        y, ctx = fe(x[:, i : i + 1280], ctx)
        parts.append(y)
    torch.testing.assert_close(torch.cat(parts, 1), one, atol=1e-5, rtol=1e-5)
    assert ctx.length == 400 - 80


def test_config_errors_and_json_round_trip(tmp_path):
    with pytest.raises(ConfigError, match="unknown frontend"):
        WavLMConfig(frontend="mfcc").validate()
    with pytest.raises(ConfigError, match="mel_fft >= mel_hop"):
        WavLMConfig(frontend="logmel", mel_fft=100, mel_hop=160).validate()
    base = tiny_config(12)
    cfg = base.replace(encoder_config=dataclasses.replace(base.encoder_config, frontend="logmel"))
    cfg.to_json(tmp_path / "config.json")
    back = CodecConfig.from_json(tmp_path / "config.json")
    assert back == cfg and back.chunk_size == 1280 and back.sample_rate_output == 24000
    # a published checkpoint's config (no front-end keys) stays the WavLM CNN
    d = base.to_dict()
    for k in ("frontend", "mel_bins", "mel_fft", "mel_hop", "mel_stack", "mel_offset", "mel_scale"):
        del d["encoder_config"][k]
    assert CodecConfig.from_dict(d).encoder_config.frontend == "conv"


def test_logmel_model_has_no_cnn_weights_and_trains():
    base = tiny_config(12)
    cfg = base.replace(encoder_config=dataclasses.replace(base.encoder_config, frontend="logmel", mel_bins=32))
    m = FocalCodec(cfg)
    keys = m.state_dict().keys()
    assert not any(k.startswith(("encoder.feature_extractor", "encoder.norm")) for k in keys)
    assert m.encoder.feature_proj.in_features == 64
    x = (torch.randn(2, 2 * 1280) * 0.1).requires_grad_(True)
    m.train()
    m.feats_to_sig(m.codes_to_qfeats(m.feats_to_lats(m.sig_to_feats(x)))).square().mean().backward()
    assert x.grad is not None and torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0
    assert m.encoder.feature_proj.weight.grad.abs().sum() > 0
