"""The embedded default model (assets/default_model): it ships, loads offline, streams, and speaks.

Checked on real speech from a speaker it never heard in training (tests/data/speech). The quality
floor is loose on purpose: it catches a broken or untrained model, not small regressions
(``focalchat eval`` measures quality).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from app.modelref import DEFAULT_MODEL_DIR, DEFAULT_MODEL_ID, load_model
from codec.audio import load_audio, resample

CLIP = Path(__file__).parent / "data" / "speech" / "3080-5032-0001.flac"


@pytest.fixture(scope="module")
def model():
    """The exact (fp32) model: what one-shot and streaming equivalence is checked on."""
    torch.set_num_threads(1)
    return load_model("default", mode="fp32")


@pytest.fixture(scope="module")
def clip() -> np.ndarray:
    return load_audio(CLIP, 16000)


def test_ships_small_and_at_the_promised_bitrate(model):
    size = (DEFAULT_MODEL_DIR / "model.safetensors").stat().st_size
    assert size <= 20e6, f"default model is {size / 1e6:.1f} MB (limit 20 MB)"
    assert model.model_id == DEFAULT_MODEL_ID
    info = model.info()
    assert info["causal"] and info["chunk_size"] == 1280 and info["latency_ms"] == 80
    assert 550 <= info["bitrate_bps"] <= 800
    assert info["sample_rate_input"] == 16000 and info["sample_rate_output"] == 24000


def test_one_shot_shapes_and_non_silent_output(model, clip):
    sig = torch.from_numpy(clip)[None]
    with torch.inference_mode():
        toks, codes, rec = model(sig)
    n = -(-clip.shape[0] // 320)
    assert toks.shape == (1, n) and codes.shape == (1, n, model.bits_per_token)
    assert rec.shape == (1, clip.shape[0] * 3 // 2) and torch.isfinite(rec).all()
    rms_db = 10 * np.log10(float(rec.pow(2).mean()) + 1e-12)
    in_db = 10 * np.log10(float(np.mean(clip**2)))
    assert abs(rms_db - in_db) < 10, f"output level {rms_db:.1f} dBFS vs input {in_db:.1f} dBFS"
    # the codebook is used: many distinct tokens on 8 s of speech
    assert torch.unique(toks).numel() > 0.5 * n


def test_streaming_matches_one_shot(model, clip):
    k = model.chunk_size
    sig = torch.from_numpy(clip[: (clip.shape[0] // k) * k])[None]
    with torch.inference_mode():
        ref_toks = model.sig_to_toks(sig)
        ref_sig = model.toks_to_sig(ref_toks)
        es = ds = None
        toks, outs = [], []
        for i in range(0, sig.shape[1], k):
            t, es = model.encode_step(sig[:, i : i + k], es)
            toks.append(t)
        toks = torch.cat(toks, 1)
        for i in range(0, ref_toks.shape[1], model.tokens_per_chunk):
            o, ds = model.decode_step(ref_toks[:, i : i + model.tokens_per_chunk], ds)
            outs.append(o)
    # float summation order differs between one call and 80 ms steps: a latent at the decision boundary may flip
    assert (toks == ref_toks).float().mean() >= 0.99
    # ... and the harmonic source integrates the pitch's rounding into its phase, which harmonic k multiplies
    # by k: a few samples differ by ~3e-4 (of a 0.45 peak) on this 7.8 s clip, 80 dB below the signal
    out = torch.cat(outs, 1)
    torch.testing.assert_close(out, ref_sig, rtol=0, atol=2e-3 * float(ref_sig.abs().max()))
    assert 10 * torch.log10(ref_sig.pow(2).sum() / (out - ref_sig).pow(2).sum()) > 60.0


def test_quality_floor_on_unseen_speaker(model, clip):
    from pystoi import stoi

    with torch.inference_mode():
        _, _, rec = model(torch.from_numpy(clip)[None])
    dec16 = resample(rec[0].numpy(), 24000, 16000)[: clip.shape[0]]
    score = stoi(clip, dec16, 16000, extended=False)
    assert score >= 0.55, f"STOI {score:.3f} on an unseen speaker: the default model is broken or untrained"


def test_the_app_runs_it_in_int8_with_the_same_quality(model, clip):
    """The app's precision for the embedded model (``auto``) is int8: its streaming tokens mostly agree with
    fp32's (dynamic int8 quantises each step's activations with their own range) and it passes the same floor."""
    from pystoi import stoi

    from app.precision import resolve_mode

    assert resolve_mode("default") == "int8" and resolve_mode("4k") == "fp32" and resolve_mode("x", "bf16") == "bf16"
    with pytest.raises(ValueError, match="precision"):
        resolve_mode("default", "fp8")
    fast = load_model("default")
    assert type(fast.decoder.backbone.layers[0].pwconv1) is not type(model.decoder.backbone.layers[0].pwconv1)
    assert fast.num_params() == pytest.approx(model.num_params(), rel=0.01)  # packed int8 weights counted too
    k = model.chunk_size
    sig = torch.from_numpy(clip[: (clip.shape[0] // k) * k])[None]
    with torch.inference_mode():
        es = ds = None
        toks, outs = [], []
        for i in range(0, sig.shape[1], k):
            t, es = fast.encode_step(sig[:, i : i + k], es)
            o, ds = fast.decode_step(t, ds)
            toks.append(t)
            outs.append(o)
        ref_toks = model.sig_to_toks(sig)
    assert (torch.cat(toks, 1) == ref_toks).float().mean() >= 0.8
    dec16 = resample(torch.cat(outs, 1)[0].numpy(), 24000, 16000)[: sig.shape[1]]
    assert stoi(clip[: dec16.shape[0]], dec16, 16000, extended=False) >= 0.55
