"""WaveNeXt's causal overlap-add (istft) head: synthesis, causality, streaming, level scaling, config."""

from __future__ import annotations

import dataclasses
import math

import pytest
import torch

from codec.config import CodecConfig, ConfigError, WaveNeXtConfig
from codec.decoder import OverlapAddHead, WaveNeXt

CFG = WaveNeXtConfig(input_dim=24, num_layers=2, dim=32, ffn_dim=64, kernel_size=5, hop_length=480,
                     head="istft", head_hop=120, head_fft=480)


def decoder(seed: int = 0, **kw) -> WaveNeXt:
    torch.manual_seed(seed)
    return WaveNeXt(dataclasses.replace(CFG, **kw)).eval()


def test_a_steady_bin_overlap_adds_to_a_clean_sinusoid():
    """The same spectrum (one bin, phase advancing by the hop) in every sub-frame gives a sinusoid of the
    set amplitude: the window overlap-adds to one and no sub-frame or frame edge shows."""
    head = OverlapAddHead(dim=4, hop=480, sub_hop=120, n_fft=480)
    k, amp = 20, 0.25  # bin 20 = 1 kHz at 24 kHz
    n = 6
    j = torch.arange(n * head.sub, dtype=torch.float64)
    phase = (2 * math.pi * k * 120 / 480 * j).remainder(2 * math.pi)  # the phase at each sub-frame's start
    logmag = torch.full((n * head.sub, head.bins), -30.0, dtype=torch.float64)
    logmag[:, k] = math.log(amp * 480 / 2)
    ph = torch.zeros_like(logmag)
    ph[:, k] = phase
    raw = torch.stack([logmag, ph], 1).reshape(1, n, head.sub * 2 * head.bins).float()
    head.proj = torch.nn.Identity()  # feed the log-magnitudes and phases directly
    y, tail = head(raw, None)
    t = torch.arange(y.shape[1], dtype=torch.float64)
    ref = amp * torch.cos(2 * math.pi * k / 480 * t)
    steady = slice(480, y.shape[1])  # after the first sub-frames' fade-in
    assert torch.allclose(y[0, steady].double(), ref[steady], atol=1e-4)
    assert tail.shape == (1, 3, 120)


def test_output_depends_on_past_frames_only():
    dec = decoder()
    x = torch.randn(1, 8, 24)
    y0, _ = dec(x)
    x2 = x.clone()
    x2[:, 5:] += torch.randn(1, 3, 24)
    y1, _ = dec(x2)
    assert torch.equal(y0[:, : 5 * 480], y1[:, : 5 * 480])
    assert not torch.allclose(y0[:, 5 * 480 :], y1[:, 5 * 480 :])


@pytest.mark.parametrize("split", [[1] * 8, [3, 5], [2, 1, 4, 1]])
def test_streaming_carries_the_tail(split):
    dec = decoder(head_hop=60, head_fft=360)
    x = torch.randn(2, sum(split), 24)
    with torch.no_grad():
        dec.head.proj.bias.view(dec.head.sub, 2, dec.head.bins)[:, 0] += 3.0  # audible, below the clamp
        ref, _ = dec(x)
        outs, state, i = [], None, 0
        for n in split:
            y, state = dec(x[:, i : i + n], state)
            outs.append(y)
            i += n
    assert ref.abs().max() > 1e-2
    assert state[-1].shape == (2, 5, 60)
    assert torch.allclose(torch.cat(outs, 1), ref, atol=1e-6)


def test_scale_output_scales_every_sample():
    dec = decoder()
    x = torch.randn(1, 6, 24)
    with torch.no_grad():
        y0, _ = dec(x)
        dec.head.scale_output(0.5)
        y1, _ = dec(x)
    assert torch.allclose(y1, 0.5 * y0, atol=1e-6)


def test_no_buffers_to_load_and_json_round_trip(tmp_path):
    dec = decoder()
    assert not list(dec.buffers())
    assert set(dec.head.state_dict()) == {"proj.weight", "proj.bias"}
    from codec.presets import tiny_config

    cfg = tiny_config(12)
    cfg = dataclasses.replace(cfg, decoder_config=dataclasses.replace(cfg.decoder_config, head="istft",
                                                                      head_hop=120, head_fft=480))
    cfg.to_json(tmp_path / "c.json")
    assert CodecConfig.from_json(tmp_path / "c.json") == cfg


@pytest.mark.parametrize("kw, msg", [
    ({"head": "ola"}, "head must be"),
    ({"head_hop": 7}, "must divide hop_length"),
    ({"head_fft": 500}, "multiple of head_hop"),
    ({"head_fft": 120}, "at least twice"),
    ({"causal": False}, "istft head is causal"),
])
def test_config_errors(kw, msg):
    with pytest.raises(ConfigError, match=msg):
        dataclasses.replace(CFG, **kw).validate()


def test_published_style_config_keeps_the_linear_head():
    assert WaveNeXtConfig().head == "linear"
    assert type(WaveNeXt(WaveNeXtConfig(input_dim=8, num_layers=1, dim=8, ffn_dim=8)).head).__name__ == "LinearHead"


def test_head_trains():
    dec = decoder()
    x = torch.randn(2, 5, 24, requires_grad=True)
    y, _ = dec(x)
    y.pow(2).sum().backward()
    assert x.grad.abs().sum() > 0 and dec.head.proj.weight.grad.abs().sum() > 0
