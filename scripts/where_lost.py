"""Where a codec loses intelligibility: its spectral envelope, or its excitation (harmonics, phase)?

For each utterance the codec's output (aligned, level-matched, at 16 kHz) is recombined with the original
in the STFT domain (512-point, 8 ms hop) and every version is transcribed (faster-whisper, as in
``focalchat eval``) and scored with STOI:

* ``codec``: the decoded speech as it is;
* ``orig excitation + codec envelope``: the original STFT times, per frame, the ratio of the codec's to the
  original's energy in ``--bands`` mel bands (a smooth envelope: 20 bands do not resolve harmonics), i.e.
  the original's harmonics and phase shaped by the codec's envelope;
* ``codec magnitude + orig phase``: the codec's STFT magnitudes with the original's phase;
* ``oracle-pitch harmonics + codec envelope``: a synthetic excitation (harmonics of the original's pitch
  from pYIN where voiced, white noise where not) shaped by the codec's envelope; unlike the original
  excitation it brings no spectral detail of its own inside a band;
* ``oracle-pitch harmonics + orig envelope``: the same excitation under the original's envelope (the
  ceiling of this synthesis);
* with ``--continuous``, ``unquantised``: the decoder fed the compressor's continuous latents instead of
  the binary codes (the quantiser's share of the loss).

Read the rows together. The original excitation carries the original's spectrum inside each band, so
``orig excitation + codec envelope`` transcribing well shows only that the codec's band energies are
right; whether the codec's envelope holds the phonetic detail is what the harmonic rows tell: when the
synthetic excitation transcribes well under the original's envelope and badly under the codec's, the
content is missing from the codec's spectrum, not only its excitation. Needs the eval extra
(``pip install -e ".[eval]"``).

    .venv/bin/python scripts/where_lost.py MODEL [--limit 10] [--bands 20] [--continuous]
"""

from __future__ import annotations

import argparse

import librosa
import numpy as np
import soundfile as sf
import torch

from codec.evaluation import metrics as M
from codec.evaluation.harness import read_manifest
from codec.pretrained import load_pretrained

N_FFT, HOP = 512, 128


def _stft(x: np.ndarray) -> torch.Tensor:
    return torch.stft(torch.from_numpy(x), N_FFT, HOP, window=torch.hann_window(N_FFT), return_complex=True)


def _istft(s: torch.Tensor, n: int) -> np.ndarray:
    return torch.istft(s, N_FFT, HOP, window=torch.hann_window(N_FFT), length=n).numpy()


def shape_to_band_energies(sx: torch.Tensor, target: torch.Tensor, fb: torch.Tensor,
                           max_gain: float = 100.0) -> torch.Tensor:
    """An STFT sx (F, frames) scaled per band so that its band energies ``fb @ |sx|^2`` (fb: (bands, F))
    become ``target`` (bands, frames); each bin takes the bands' gains by its share of them -> (F, frames)."""
    back = fb.T / fb.T.sum(1, keepdim=True).clamp_min(1e-8)  # (F, bands): each bin's share of the bands
    gain = torch.sqrt(target / (fb @ sx.abs() ** 2 + 1e-9)).clamp(max=max_gain)
    return sx * (back @ gain)


def envelope_transfer(x: np.ndarray, y: np.ndarray, bands: int, sr: int = 16000) -> np.ndarray:
    """x's STFT shaped by y's mel-band envelope: both (T,) at ``sr`` and aligned -> (T,)."""
    fb = torch.from_numpy(librosa.filters.mel(sr=sr, n_fft=N_FFT, n_mels=bands, norm=None)).float()  # (bands, F)
    sy = _stft(y)
    return _istft(shape_to_band_energies(_stft(x), fb @ sy.abs() ** 2 + 1e-9, fb), len(x))


def phase_transfer(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """y's STFT magnitudes with x's phase: (T,) -> (T,)."""
    sx, sy = _stft(x), _stft(y)
    return _istft(sy.abs() * torch.exp(1j * sx.angle()), len(x))


def harmonic_excitation(x: np.ndarray, sr: int = 16000, fmin: float = 60.0, fmax: float = 400.0) -> np.ndarray:
    """A flat-spectrum excitation at x's pitch: harmonics below sr/2 where pYIN finds voicing, white noise
    elsewhere (cross-faded per sample), (T,) -> (T,) float32, unit power. Deterministic (seeded noise)."""
    f0, voiced, _ = librosa.pyin(x, fmin=fmin, fmax=fmax, sr=sr, frame_length=1024, hop_length=HOP)
    t = np.arange(len(x)) / HOP
    frames = np.arange(len(f0))
    f0s = np.interp(t, frames, np.nan_to_num(f0, nan=0.0))
    v = np.interp(t, frames, voiced.astype(np.float64)) * 0.9  # voiced frames keep a little noise
    f0s = np.where(f0s > 0, f0s, 100.0)
    phase = 2 * np.pi * np.cumsum(f0s / sr)
    k = np.arange(1, int(sr / 2 / fmin) + 1)[:, None]  # (K, 1) harmonic numbers
    harm = np.empty(len(x))
    for a in range(0, len(x), sr):  # one second at a time: (K, sr) at most
        below = k * f0s[None, a:a + sr] < sr / 2  # harmonics under Nyquist
        harm[a:a + sr] = (below * np.sin(k * phase[None, a:a + sr])).sum(0) / np.sqrt(below.sum(0).clip(1) / 2)
    noise = np.random.default_rng(0).standard_normal(len(x))
    return (np.sqrt(v) * harm + np.sqrt(1 - v) * noise).astype(np.float32)


def decode(model, x: np.ndarray, continuous: bool) -> np.ndarray:
    """One-shot encode + decode of x (T,) at 16 kHz -> the model's output rate; ``continuous``: skip the BSQ."""
    sig = torch.from_numpy(np.pad(x, (0, -len(x) % model.chunk_size)))[None]
    with torch.inference_mode():
        lats = model.sig_to_lats(sig)
        codes = lats if continuous else model.lats_to_codes(lats)  # both unit-norm (B, N, D)
        return model.feats_to_sig(model.codes_to_qfeats(codes))[0].numpy()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("model", help="model folder, hub id or alias (see focalchat --model)")
    ap.add_argument("--manifest", default="../shared/data/librispeech/test-other.tsv")
    ap.add_argument("--limit", type=int, default=10)
    ap.add_argument("--bands", type=int, default=20, help="mel bands of the envelope (default 20)")
    ap.add_argument("--continuous", action="store_true", help="also decode the unquantised latents")
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    model = load_pretrained(args.model).eval()
    asr = M.WhisperASR(cpu_threads=args.threads)
    rows: dict[str, tuple[list[str], list[str], list[float]]] = {}
    for u in read_manifest(args.manifest, limit=args.limit):
        x, sr = sf.read(u.path, dtype="float32")
        if sr != 16000:
            raise SystemExit(f"{u.path}: {sr} Hz, 16 kHz expected")
        versions: dict[str, tuple[np.ndarray, np.ndarray]] = {}
        for name, cont in (("codec", False), ("unquantised", True))[: 2 if args.continuous else 1]:
            y = M.to_16k(decode(model, x, cont), model.sample_rate_output)[: len(x)]
            ref, y = M.align(x, y, M.estimate_delay(x, y))
            y = y * float(np.sqrt(np.mean(ref**2) / max(np.mean(y**2), 1e-12)))
            versions[name] = (ref, y)
            if name == "codec":
                versions["orig excitation + codec envelope"] = (ref, envelope_transfer(ref, y, args.bands))
                versions["codec magnitude + orig phase"] = (ref, phase_transfer(ref, y))
                e = harmonic_excitation(ref)
                versions["oracle-pitch harmonics + codec envelope"] = (ref, envelope_transfer(e, y, args.bands))
                versions["oracle-pitch harmonics + orig envelope"] = (ref, envelope_transfer(e, ref, args.bands))
        for name, (ref, z) in versions.items():
            refs, hyps, stois = rows.setdefault(name, ([], [], []))
            refs.append(u.transcript or "")
            hyps.append(asr.transcribe(z))
            stois.append(M.stoi(ref, z))
        print(u.id, flush=True)
    print(f"\n{args.model}: {args.limit} utterances of {args.manifest}, envelope in {args.bands} mel bands")
    print("| version | WER % | STOI |\n|---|---:|---:|")
    for name, (refs, hyps, stois) in rows.items():
        print(f"| {name} | {M.wer(refs, hyps):.1f} | {np.mean(stois):.3f} |")


if __name__ == "__main__":
    main()
