"""The decoder's harmonic source (codec.harmonic) and its pitch targets (codec.training.pitch)."""

from __future__ import annotations

import dataclasses
import math

import pytest
import torch

from codec.config import CodecConfig, ConfigError, WaveNeXtConfig
from codec.decoder import WaveNeXt
from codec.harmonic import HarmonicSource
from codec.training.discriminators import EnvelopeDiscriminator
from codec.training.pitch import (
    envelope_shapes,
    harmonic_amplitudes,
    harmonics_to_bands,
    pitch_losses,
    track_pitch,
)

SR, HOP = 24000, 480


def source(seed: int = 0, harmonics: int = 40, bands: int = 16, **kw) -> HarmonicSource:
    torch.manual_seed(seed)
    args = {"dim": 8, "hop": HOP, "sample_rate": SR, "harmonics": harmonics, "bands": bands, "f0_min": 50.0,
            "f0_max": 500.0, "fmax": 8000.0, **kw}
    return HarmonicSource(**args).eval()


def set_constant(src: HarmonicSource, f0: float, log_amp: float, gate_logit: float = 30.0) -> None:
    """Make the source ignore its input: a fixed pitch, gate and flat envelope."""
    with torch.no_grad():
        src.proj.weight.zero_()
        u = math.log(f0 / src.f0_min) / src.log_range
        src.proj.bias[0] = math.log(u / (1 - u))
        src.proj.bias[1] = gate_logit
        src.proj.bias[2:] = log_amp


def test_a_steady_pitch_gives_its_harmonics_below_fmax():
    src = source()
    set_constant(src, 200.0, math.log(0.01))
    with torch.no_grad():
        y, state, params = src(torch.randn(1, 6, 8), None)
    assert y.shape == (1, 6 * HOP) and y.dtype == torch.float32
    assert torch.allclose(params["f0"], torch.full((1, 6), 200.0), rtol=1e-5)
    t = torch.arange(6 * HOP, dtype=torch.float64)
    k = torch.arange(1, 41, dtype=torch.float64)
    f0 = float(params["f0"][0, 0])  # 200 Hz to float32 precision, which the phase sums up
    fade = ((8000.0 - f0 * k) / 800.0).clamp(0, 1)  # harmonic 40 (8 kHz) and above are silent
    ref = (0.01 * fade * torch.sin(2 * math.pi * f0 / SR * (t[:, None] + 1) * k)).sum(1)
    steady = slice(HOP, None)  # after the fade-in of the first frame
    assert torch.allclose(y[0, steady].double(), ref[steady], atol=1e-4)
    assert torch.all(y[0, :HOP].abs() <= ref[:HOP].abs().max() + 1e-4)  # the first frame fades in
    assert state.shape == (1, 42) and state.dtype == torch.float64
    assert 0 <= float(state[0, 0]) < 1


def test_voiced_fmax_stops_the_harmonics_below_the_envelope_span():
    """The same steady source with voiced_fmax 4 kHz: the harmonics below 3.6 kHz unchanged, none at or above
    4 kHz (linear fade between), the envelope still read over the full 8 kHz span."""
    full, cut = source(), source(voiced_fmax=4000.0)
    for src in (full, cut):
        set_constant(src, 200.0, math.log(0.01))
    x = torch.randn(1, 6, 8)
    with torch.no_grad():
        y_full, _, p_full = full(x, None)
        y_cut, state, p_cut = cut(x, None)
    assert cut.voiced_fmax == 4000.0 and source(voiced_fmax=12000.0).voiced_fmax == 8000.0
    assert torch.equal(p_full["envelope"], p_cut["envelope"])
    spec = lambda y: torch.fft.rfft(y[0, HOP:].double()).abs()  # 5 frames, 5 Hz bins
    freqs = torch.fft.rfftfreq(5 * HOP, 1 / SR)
    s_full, s_cut = spec(y_full), spec(y_cut)
    below, above = freqs < 3500, freqs > 4100
    assert torch.allclose(s_cut[below], s_full[below], atol=1e-3 * float(s_full.max()))
    assert s_cut[above].max() < 1e-4 * s_cut.max() and s_full[above].max() > 0.3 * s_full.max()
    at_3800 = int(torch.argmin((freqs - 3800).abs()))
    assert 0.4 < float(s_cut[at_3800] / s_full[at_3800]) < 0.6  # halfway down the fade
    assert state.shape == (1, 42)


def test_a_closed_gate_is_silent():
    src = source()
    set_constant(src, 120.0, 0.0, gate_logit=-60.0)
    with torch.no_grad():
        y, _, _ = src(torch.randn(2, 3, 8), None)
    assert y.abs().max() < 1e-12


def test_pitch_glides_without_a_click():
    """A pitch jump between frames is a glide over the next frame, each harmonic one continuous sinusoid."""
    src = source(harmonics=1)
    with torch.no_grad():
        set_constant(src, 100.0, math.log(0.5))
        y1, state, _ = src(torch.zeros(1, 2, 8), None)
        set_constant(src, 400.0, math.log(0.5))
        y2, _, _ = src(torch.zeros(1, 2, 8), state)
    y = torch.cat([y1, y2], 1)[0]
    step = (y[1:] - y[:-1]).abs()
    # a sinusoid of amplitude 0.5 at <= 400 Hz moves at most 2 pi 400 / SR * 0.5 = 0.052 per sample
    assert float(step.max()) < 2 * math.pi * 400 / SR * 0.5 * 1.05
    assert float(step[2 * HOP - 10 : 2 * HOP + 10].max()) < 2 * math.pi * 100 / SR * 0.5 * 1.5  # no jump at the call


@pytest.mark.parametrize("split", [[1] * 7, [3, 4], [2, 1, 4]])
def test_streaming_matches_one_shot(split):
    src = source(seed=3)
    with torch.no_grad():
        src.proj.weight.normal_(0, 0.3)
        src.proj.bias[2:] = -3.0
        x = torch.randn(2, sum(split), 8)
        ref, ref_state, _ = src(x, None)
        outs, state, i = [], None, 0
        for n in split:
            y, state, _ = src(x[:, i : i + n], state)
            outs.append(y)
            i += n
    # the phase is a running sum of the pitch: float32 rounding of the pitch in differently shaped matrix
    # products moves it by ~1e-6 cycles per frame, a few 1e-5 of the peak after 7 frames
    assert torch.allclose(torch.cat(outs, 1), ref, atol=1e-4 * float(ref.abs().max()))
    assert torch.allclose(state, ref_state, atol=1e-5)


def test_output_depends_on_past_frames_only():
    src = source(seed=1)
    with torch.no_grad():
        src.proj.weight.normal_(0, 0.3)
        src.proj.bias[2:] = -3.0
        x = torch.randn(1, 6, 8)
        y0, _, _ = src(x, None)
        x2 = x.clone()
        x2[:, 4:] += 1.0
        y1, _, _ = src(x2, None)
    assert torch.equal(y0[:, : 4 * HOP], y1[:, : 4 * HOP])
    assert not torch.allclose(y0[:, 4 * HOP :], y1[:, 4 * HOP :])


def test_scale_output_and_gradients():
    src = source(seed=2)
    with torch.no_grad():
        src.proj.bias[2:] = -3.0
    x = torch.randn(1, 4, 8)
    with torch.no_grad():
        y0, _, _ = src(x, None)
        src.scale_output(0.25)
        y1, _, _ = src(x, None)
    assert torch.allclose(y1, 0.25 * y0, atol=1e-6)
    src.train()
    y, _, params = src(x, None)
    (y.square().sum() + params["f0"].sum() + params["voicing"].sum()).backward()
    g = src.proj.weight.grad
    assert g is not None and bool(torch.isfinite(g).all()) and bool((g[2:] != 0).any()) and bool((g[0] != 0).any())


def decoder_config(**kw) -> WaveNeXtConfig:
    return WaveNeXtConfig(**{"input_dim": 12, "num_layers": 2, "dim": 16, "ffn_dim": 32, "kernel_size": 3,
                             "hop_length": HOP, "head": "istft", "source": "harmonic", **kw})


@pytest.mark.parametrize("head", ["istft", "linear"])
def test_decoder_adds_the_source_and_streams_it(head):
    torch.manual_seed(0)
    dec = WaveNeXt(dataclasses.replace(decoder_config(), head=head)).eval()
    x = torch.randn(1, 6, 12)
    with torch.no_grad():
        dec.source.proj.bias[2:] = -2.0
        y, state, params = dec.synthesize(x)
        assert set(params) == {"f0", "voicing", "envelope"} and params["f0"].shape == (1, 6)
        assert params["envelope"].shape == (1, 6, dec.cfg.source_bands)
        assert state[-1].shape == (1, 2 + 96)
        dec.source.proj.bias[1] = -60.0  # gate closed: the head alone
        y_head, _, _ = dec.synthesize(x)
        assert not torch.allclose(y, y_head)
        outs, st = [], None
        for i in range(0, 6, 2):
            o, st = dec(x[:, i : i + 2], st)
            outs.append(o)
    torch.testing.assert_close(torch.cat(outs, 1), y_head, atol=1e-5, rtol=0)
    assert sum(p.numel() for p in dec.source.parameters()) == 16 * 66 + 66
    assert not list(dec.buffers())


def test_head_voiced_gain_quiets_the_head_where_the_gate_is_open():
    torch.manual_seed(0)
    x = torch.randn(1, 8, 12)
    outs = {}
    for gain in (1.0, 0.25, 0.0):
        torch.manual_seed(1)
        dec = WaveNeXt(decoder_config(head_voiced_gain=gain)).eval()
        with torch.no_grad():
            dec.source.proj.bias[2:] = -60.0  # harmonics silent: the output is the head alone
            dec.source.proj.weight.zero_()
            dec.source.proj.bias[1] = 0.0  # logit 0: not voiced
            half, _, _ = dec.synthesize(x)
            dec.source.proj.bias[1] = 60.0  # gate open
            voiced, _, _ = dec.synthesize(x)
            dec.source.proj.bias[1] = -60.0  # gate closed
            unvoiced, _, _ = dec.synthesize(x)
            outs[gain] = (half, voiced, unvoiced)
            # streaming matches one-shot with voicing that changes from frame to frame
            dec.source.proj.bias[1] = 0.0
            dec.source.proj.weight[1].normal_()
            mixed, _, params = dec.synthesize(x)
            assert (params["voicing"] > 0).any() and (params["voicing"] < 0).any()
            parts, st = [], None
            for i in range(0, 8, 3):
                o, st = dec(x[:, i : i + 3], st)
                parts.append(o)
        torch.testing.assert_close(torch.cat(parts, 1), mixed, atol=1e-6, rtol=0)
    ref_half, ref_voiced, ref_unvoiced = outs[1.0]
    assert ref_voiced.abs().max() > 0
    for gain, (half, voiced, unvoiced) in outs.items():
        torch.testing.assert_close(unvoiced, ref_unvoiced, atol=1e-7, rtol=0)  # closed gate: head as it is
        # voiced frames (logit > 0): the head times head_voiced_gain; a logit of exactly 0 counts as unvoiced
        torch.testing.assert_close(voiced, ref_voiced * gain, atol=1e-7, rtol=1e-5)
        torch.testing.assert_close(half, ref_half, atol=1e-7, rtol=0)


def test_postfilter_raises_formants_at_decoding_only():
    src = source(bands=65, postfilter=1.5)  # band points every 125 Hz: the average spans +-8 points
    assert src.smooth == 8
    grid = torch.arange(65.0)
    slope = -0.05 * grid  # a spectral tilt is left as it is (away from the edges)
    bump = slope + torch.exp(-0.5 * ((grid - 30) / 2.0) ** 2)  # plus one formant
    out = src.sharpen(torch.stack([slope, bump])[None])[0]
    torch.testing.assert_close(out[0, 8:-8], slope[8:-8])
    avg = bump[22:39].mean()  # the average over +-8 points
    assert float(out[1, 30]) == pytest.approx(float(avg + 1.5 * (bump[30] - avg)), abs=1e-5)
    assert out[1, 30] > bump[30] + 0.3
    # the synthesis uses it in eval mode only; training and postfilter 1 use the envelope as predicted
    x = torch.randn(1, 4, 8)
    plain = source(bands=65)
    with torch.no_grad():
        plain.proj.bias[2:] = -2.0
        src.load_state_dict(plain.state_dict())
        y_eval = src(x, None)[0]
        y_plain = plain(x, None)[0]
        src.train()
        y_train = src(x, None)[0]
    assert torch.equal(y_train, y_plain) and not torch.allclose(y_eval, y_plain)


def test_head_voiced_above_keeps_the_head_above_a_frequency():
    torch.manual_seed(0)
    x = torch.randn(1, 8, 12)
    spectra = {}
    for above in (0.0, 3000.0):
        torch.manual_seed(1)
        dec = WaveNeXt(decoder_config(head_voiced_gain=0.0, head_voiced_above=above)).eval()
        with torch.no_grad():
            dec.source.proj.weight.zero_()
            dec.source.proj.bias[2:] = -60.0  # harmonics silent
            dec.source.proj.bias[1] = 60.0  # every frame voiced
            y, _, _ = dec.synthesize(x)
        spectra[above] = torch.fft.rfft(y[0, 960:] * torch.hann_window(len(y[0, 960:]))).abs()
    freqs = torch.fft.rfftfreq(len(y[0, 960:]), 1 / SR)
    assert spectra[0.0].max() < 1e-20  # voiced everywhere, gain 0: no head at all (harmonics at e^-60)
    high = spectra[3000.0][freqs > 3500].pow(2).sum()
    low = spectra[3000.0][freqs < 2500].pow(2).sum()
    assert high > 0 and low < 1e-4 * high


def test_decoder_config_sets_the_highest_harmonic():
    assert WaveNeXt(decoder_config()).source.voiced_fmax == 8000.0  # 0: source_fmax
    assert WaveNeXt(decoder_config(source_voiced_fmax=4000.0)).source.voiced_fmax == 4000.0


@pytest.mark.parametrize("kw,message", [
    ({"head_voiced_above": 13000.0}, "head_voiced_above"),
    ({"source_postfilter": 0.0}, "source_postfilter"),
    ({"head_voiced_gain": 1.5}, "head_voiced_gain"),
    ({"head_voiced_gain": 0.5, "head": "linear"}, "istft head"),
    ({"head_voiced_gain": 0.0, "source": "none"}, "need source = 'harmonic'"),
    ({"source_postfilter": 1.2, "source": "none"}, "need source = 'harmonic'"),
    ({"source": "pulse"}, "source must be"),
    ({"source_harmonics": 0}, "source_harmonics"),
    ({"source_f0_min": 300.0, "source_f0_max": 200.0}, "source_f0_min"),
    ({"source_fmax": 13000.0}, "source_fmax"),
    ({"source_fmax": 400.0}, "source_fmax"),
    ({"source_voiced_fmax": 9000.0}, "source_voiced_fmax"),
    ({"source_voiced_fmax": 300.0}, "source_voiced_fmax"),
])
def test_config_errors(kw, message):
    with pytest.raises(ConfigError, match=message):
        decoder_config(**kw).validate()


def test_codec_config_wants_the_output_rate():
    from codec.presets import tiny_config

    d = tiny_config(12).to_dict()
    d["decoder_config"].update(head="istft", source="harmonic", sample_rate=16000)
    with pytest.raises(ConfigError, match="output rate"):
        CodecConfig.from_dict(d)
    d["decoder_config"]["sample_rate"] = 24000
    cfg = CodecConfig.from_dict(d)
    assert CodecConfig.from_dict(cfg.to_dict()) == cfg and cfg.decoder_config.source == "harmonic"


# ------------------------------------------------------------------------------------------- pitch targets
def harmonic_wave(f0: torch.Tensor, sr: int = SR, partials: int = 25) -> torch.Tensor:
    """A sawtooth-like tone following the per-sample pitch f0 (T,) -> (T,)."""
    ph = torch.cumsum(f0.double() / sr, 0)
    return sum((0.3 / k) * torch.sin(2 * math.pi * k * ph) for k in range(1, partials + 1)).float()


@pytest.mark.parametrize("f0", [62.0, 137.0, 233.0, 410.0])
def test_tracker_finds_a_steady_pitch(f0):
    x = harmonic_wave(torch.full((SR,), f0))[None]
    pitch, voiced, complete = track_pitch(x, SR, HOP)
    assert pitch.shape == voiced.shape == (1, SR // HOP + 1) and complete.shape == (SR // HOP + 1,)
    inner = complete.clone()
    inner[:3] = False
    assert voiced[0, inner].all()
    assert torch.allclose(pitch[0, inner], torch.full_like(pitch[0, inner], f0), rtol=2e-3)


def test_tracker_follows_a_glide_and_rejects_noise_and_silence():
    f0 = torch.linspace(90.0, 320.0, SR)
    x = torch.stack([harmonic_wave(f0), 0.1 * torch.randn(SR), torch.zeros(SR)])
    pitch, voiced, complete = track_pitch(x, SR, HOP)
    idx = torch.arange(5, 45)
    truth = f0[idx * HOP]
    assert voiced[0, idx].all()
    assert (pitch[0, idx] / truth - 1).abs().max() < 0.03
    assert not voiced[1:].any()
    assert not complete[-1] and complete[:-2].all()


def test_tracker_rates_each_item_on_its_own():
    tone = harmonic_wave(torch.full((SR // 2,), 180.0))
    alone, v_alone, _ = track_pitch(tone[None], SR, HOP)
    both, v_both, _ = track_pitch(torch.stack([tone, 30 * tone]), SR, HOP)
    assert torch.allclose(alone[0], both[0]) and torch.equal(v_alone[0], v_both[0])
    with pytest.raises(ValueError, match="batch, samples"):
        track_pitch(tone, SR, HOP)


def test_pitch_losses_score_the_prediction_against_the_target():
    x = harmonic_wave(torch.full((SR // 2,), 150.0))[None]
    n = SR // 2 // HOP
    right = {"f0": torch.full((1, n), 150.0), "voicing": torch.full((1, n), 8.0)}
    octave = {"f0": torch.full((1, n), 300.0), "voicing": torch.full((1, n), -8.0)}
    good, bad = (pitch_losses(p, x, SR, HOP, 50.0, 500.0) for p in (right, octave))
    assert float(good["f0"]) < 0.01 and float(good["voicing"]) < 0.1 and float(good["gross"]) == 0.0
    assert float(bad["f0"]) == pytest.approx(1.0, abs=0.01) and float(bad["gross"]) == 1.0
    assert float(bad["voicing"]) > 5.0
    assert 0.8 < float(good["voiced"]) <= 1.0


def test_harmonic_amplitudes_are_measured_even_with_the_pitch_a_little_off():
    t = torch.arange(SR) / SR
    truth = torch.tensor([0.3, 0.1, 0.05, 0.2, 0.01])
    x = sum(a * torch.sin(2 * math.pi * (k + 1) * 123.4 * t + k) for k, a in enumerate(truth))[None]
    for off in (1.0, 1.01, 0.99):
        amps = harmonic_amplitudes(x, torch.full((1, 50), 123.4 * off), SR, HOP, 8)
        assert amps.shape == (1, 50, 8)
        assert torch.allclose(amps[0, 5:45, :5], truth.expand(40, 5), rtol=0.05)  # frames clear of the ends
        assert (amps[0, 5:45, 5:] < 1e-3).all()  # no partials there
    # frames past the end of the signal (frame i is centred on sample i * HOP) read silence
    amps = harmonic_amplitudes(x, torch.full((1, 60), 123.4), SR, HOP, 8)
    assert amps[0, 52:].max() < 1e-6 and amps[0, 48, :5].min() > 5e-3


def test_envelope_loss_pulls_the_envelope_to_the_harmonic_amplitudes():
    torch.manual_seed(0)
    src = source(bands=16)
    x = harmonic_wave(torch.full((SR // 2,), 150.0), partials=53)[None]  # harmonic k (< 8 kHz): amplitude 0.3 / k
    n = SR // 2 // HOP
    freqs = torch.linspace(0, 8000, 16)
    right = torch.log(0.3 * 150.0 / freqs.clamp_min(150.0)).expand(1, n, 16)
    flat = torch.full((1, n, 16), math.log(0.3), requires_grad=True)
    base = {"f0": torch.full((1, n), 150.0), "voicing": torch.full((1, n), 8.0)}
    good = pitch_losses({**base, "envelope": right}, x, SR, HOP, 50.0, 500.0, src.envelope_at, 8000.0)
    bad = pitch_losses({**base, "envelope": flat}, x, SR, HOP, 50.0, 500.0, src.envelope_at, 8000.0)
    assert float(good["envelope"]) < 0.1 and float(bad["envelope"]) > 1.5
    bad["envelope"].backward()
    assert flat.grad is not None and flat.grad[0, 2:].abs().sum() > 0
    assert "envelope" not in pitch_losses(base, x, SR, HOP, 50.0, 500.0)


def test_envelope_at_reads_between_and_beyond_the_band_points():
    src = source(bands=5)  # points at 0, 2, 4, 6, 8 kHz
    env = torch.tensor([0.0, 1.0, 2.0, 3.0, 4.0]).expand(1, 1, 5)
    got = src.envelope_at(env, torch.tensor([[[0.0, 1000.0, 7000.0, 8000.0, 12000.0]]]))
    assert torch.allclose(got, torch.tensor([[[0.0, 0.5, 3.5, 4.0, 4.0]]]))


def test_harmonics_to_bands_reads_the_harmonics_on_a_fixed_grid():
    f0 = torch.tensor([[100.0, 250.0]])
    k = torch.arange(1, 41, dtype=torch.float32)
    log_amps = 1.0 - 1e-3 * f0[..., None] * k  # linear in frequency: 1 - f / 1 kHz
    got = harmonics_to_bands(log_amps, f0, 9, 4000.0)  # points every 500 Hz
    hz = torch.linspace(0, 4000, 9)
    want = 1.0 - 1e-3 * torch.maximum(hz, f0[..., None])  # below the first harmonic: its value
    assert got.shape == (1, 2, 9) and torch.allclose(got, want, atol=1e-5)
    # above the last harmonic: the last one's value
    top = harmonics_to_bands(log_amps[..., :4], f0, 9, 4000.0)
    assert torch.allclose(top[0, 0, 2:], torch.full((7,), 1.0 - 0.4))


def test_envelope_shapes_drop_the_level_and_the_unvoiced_frames():
    f0 = torch.full((1, 3), 125.0)
    k = torch.arange(1, 65, dtype=torch.float32)
    ref = torch.log(1.0 / k).expand(1, 3, 64)
    louder = ref + 2.0
    voiced = torch.tensor([[True, False, True]])
    a, b = envelope_shapes(louder, ref, f0, voiced, 16, 8000.0)
    assert torch.allclose(a, b, atol=1e-6)  # the same shape at another level
    assert torch.equal(a[0, 1], torch.zeros(16)) and a[0, 0].abs().sum() > 1.0
    assert torch.allclose(a[0, 0].mean(), torch.tensor(0.0), atol=1e-6)


def test_pitch_losses_give_the_envelope_shapes_and_their_spread():
    src = source(bands=16)
    x = harmonic_wave(torch.full((SR // 2,), 150.0), partials=53)[None]  # amplitude 0.3 / k
    n = SR // 2 // HOP
    freqs = torch.linspace(0, 8000, 16)
    right = torch.log(0.3 * 150.0 / freqs.clamp_min(150.0)).expand(1, n, 16)
    flat = torch.full((1, n, 16), math.log(0.3), requires_grad=True)
    base = {"f0": torch.full((1, n), 150.0), "voicing": torch.full((1, n), 8.0)}
    good = pitch_losses({**base, "envelope": right}, x, SR, HOP, 50.0, 500.0, src.envelope_at, 8000.0, shapes=16)
    bad = pitch_losses({**base, "envelope": flat}, x, SR, HOP, 50.0, 500.0, src.envelope_at, 8000.0, shapes=16)
    v = good["shape_voiced"]
    assert good["shape_pred"].shape == good["shape_ref"].shape == (1, n, 16) and v.float().mean() > 0.8
    assert (good["shape_pred"] - good["shape_ref"])[v].abs().mean() < 0.1
    assert float(good["spread"]) == pytest.approx(float(good["spread_ref"]), rel=0.1)
    assert float(bad["spread"]) < 0.01 < float(bad["spread_ref"])  # a flat envelope has no spread
    bad["shape_pred"].sum().backward()  # the shapes carry the gradient to the envelope
    assert flat.grad is not None


def test_envelope_discriminator_keeps_a_row_per_frame():
    d = EnvelopeDiscriminator(channels=4)
    x = torch.randn(2, 7, 64)
    logits, feats = d(x)
    assert logits.shape == (2, 7, 8) and len(feats) == 4
    # a frame's logits see only frames within the receptive field (3 convs + output of 3 frames: +-4)
    y = x.clone()
    y[:, 0] += 1.0
    assert torch.equal(d(y)[0][:, 5:], logits[:, 5:])
