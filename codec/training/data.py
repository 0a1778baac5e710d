"""Speech data for training: utterances held in RAM, random crops with augmentation, 16 kHz input and
the 24 kHz reconstruction target.

A batch is ``(sig16 (B, S) float32, target (B, S * out_rate / 16000) float32)`` with S a whole number of
80 ms chunks. The target is the augmented input resampled to the output rate (soxr), so the codec learns
to reproduce what it hears.
"""

from __future__ import annotations

import csv
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import soxr
from scipy import signal as sps

from codec.audio import load_audio

from .config import AugmentConfig

SR = 16000


@dataclass
class Utterance:
    path: str
    speaker: str
    audio: np.ndarray  # (samples,) float32 at 16 kHz


def read_manifest(path: str | Path) -> list[tuple[str, str]]:
    """(audio path, speaker) rows of a tab-separated manifest with a ``path`` column (relative to its folder)."""
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"{p}: no such manifest")
    rows = []
    with p.open(newline="") as f:
        reader = csv.DictReader(f, delimiter="\t")
        if not reader.fieldnames or "path" not in reader.fieldnames:
            raise ValueError(f"{p}: a manifest needs a 'path' column, got {reader.fieldnames}")
        for r in reader:
            audio = Path(r["path"])
            if not audio.is_absolute():
                audio = p.parent / audio
            rows.append((str(audio), r.get("speaker") or audio.stem.split("-")[0]))
    return rows


def load_corpus(manifests: tuple[str, ...] | list[str], base: Path | None = None) -> list[Utterance]:
    """Read every utterance of the manifests into RAM at 16 kHz."""
    utts = []
    for m in manifests:
        mp = Path(m) if base is None or Path(m).is_absolute() else base / m
        for path, spk in read_manifest(mp):
            utts.append(Utterance(path, spk, load_audio(path, SR)))
    if not utts:
        raise ValueError("no training utterances")
    return utts


def split_by_speaker(utts: list[Utterance], valid_fraction: float, seed: int) -> tuple[list[Utterance], list[Utterance]]:
    """Hold out whole speakers (about ``valid_fraction`` of them) for validation."""
    speakers = sorted({u.speaker for u in utts})
    rng = np.random.default_rng(seed)
    n = max(1, round(len(speakers) * valid_fraction)) if valid_fraction > 0 and len(speakers) > 1 else 0
    held = set(rng.choice(speakers, size=n, replace=False).tolist()) if n else set()
    return [u for u in utts if u.speaker not in held], [u for u in utts if u.speaker in held]


def _rms_dbfs(x: np.ndarray) -> float:
    return 10.0 * math.log10(float(np.mean(x * x)) + 1e-12)


def _coloured_noise(rng: np.random.Generator, n: int) -> np.ndarray:
    """White noise tilted by a random spectral slope (-6..+3 dB/octave), unit RMS."""
    spec = np.fft.rfft(rng.standard_normal(n))
    f = np.arange(spec.shape[0], dtype=np.float64) + 1.0
    spec *= f ** (rng.uniform(-6.0, 3.0) / 6.02 / 2.0)
    x = np.fft.irfft(spec, n)
    return (x / (np.std(x) + 1e-9)).astype(np.float32)


def _room_impulse(rng: np.random.Generator, rt60: float, sr: int = SR) -> np.ndarray:
    """Exponentially decaying noise tail with a direct path: a cheap synthetic room impulse response."""
    n = max(16, int(rt60 * sr))
    t = np.arange(n) / sr
    h = rng.standard_normal(n) * np.exp(-6.91 * t / rt60)
    h[0] = 1.0 / (1.0 - rng.uniform(0.0, 0.7))  # direct-to-reverberant ratio
    return (h / np.sqrt(np.sum(h * h))).astype(np.float32)


class CropSampler:
    """Random augmented crops of ``segment`` samples from in-RAM utterances."""

    def __init__(self, utts: list[Utterance], segment: int, augment: AugmentConfig, out_rate: int = 24000,
                 min_rms_dbfs: float = -55.0, seed: int = 0) -> None:
        if not utts:
            raise ValueError("CropSampler needs at least one utterance")
        self.utts = utts
        self.segment = segment
        self.aug = augment
        self.out_rate = out_rate
        self.min_rms_dbfs = min_rms_dbfs
        self.rng = np.random.default_rng(seed)
        lengths = np.array([u.audio.shape[0] for u in utts], dtype=np.float64)
        self.weights = lengths / lengths.sum()  # every second of speech equally likely

    def _raw_crop(self, n: int) -> np.ndarray:
        for _ in range(20):
            u = self.utts[self.rng.choice(len(self.utts), p=self.weights)]
            a = u.audio
            if a.shape[0] <= n:
                x = np.zeros(n, np.float32)
                x[: a.shape[0]] = a
            else:
                s = int(self.rng.integers(0, a.shape[0] - n))
                x = a[s : s + n]
            if _rms_dbfs(x) > self.min_rms_dbfs:
                break
        return np.array(x, dtype=np.float32)

    def crop(self, augment: bool = True) -> np.ndarray:
        """One crop (segment,) float32 at 16 kHz."""
        a, rng, n = self.aug, self.rng, self.segment
        speed = rng.uniform(*a.speed) if augment and a.speed[0] != a.speed[1] else 1.0
        if speed != 1.0:  # read n * speed samples and play them back in n: tempo and pitch x speed
            raw = self._raw_crop(int(math.ceil(n * speed)) + 64)
            x = soxr.resample(raw, SR * speed, SR, quality="HQ")[32 : 32 + n]
            if x.shape[0] < n:
                x = np.pad(x, (0, n - x.shape[0]))
        else:
            x = self._raw_crop(n)
        if augment:
            if a.reverb_prob > 0 and rng.random() < a.reverb_prob:
                h = _room_impulse(rng, rng.uniform(*a.reverb_rt60_s))
                x = sps.fftconvolve(x, h)[:n].astype(np.float32)
            if a.noise_prob > 0 and rng.random() < a.noise_prob:
                snr = rng.uniform(*a.noise_snr_db)
                level = math.sqrt(float(np.mean(x * x)) + 1e-12) * 10 ** (-snr / 20)
                x = x + level * _coloured_noise(rng, n)
            target = rng.uniform(*a.gain_dbfs)
            x = x * 10 ** ((target - _rms_dbfs(x)) / 20)
            if a.polarity and rng.random() < 0.5:
                x = -x
            peak = float(np.max(np.abs(x)))
            if peak > 0.99:
                x = x * (0.99 / peak)
        return x.astype(np.float32, copy=False)

    def batch(self, batch_size: int, augment: bool = True) -> tuple[np.ndarray, np.ndarray]:
        """(B, segment) input at 16 kHz and (B, segment * out_rate / 16000) target at the output rate."""
        xs = np.stack([self.crop(augment) for _ in range(batch_size)])
        if self.out_rate == SR:
            return xs, xs.copy()
        ys = soxr.resample(xs.T, SR, self.out_rate, quality="HQ").T  # (B, T') all channels at once
        m = self.segment * self.out_rate // SR
        ys = ys[:, :m] if ys.shape[1] >= m else np.pad(ys, ((0, 0), (0, m - ys.shape[1])))
        return xs, np.ascontiguousarray(ys, dtype=np.float32)


def fixed_validation_set(utts: list[Utterance], segment: int, count: int, out_rate: int, seed: int = 1234):
    """A deterministic, unaugmented set of crops for the validation loss."""
    if not utts:
        return None
    s = CropSampler(utts, segment, AugmentConfig(), out_rate=out_rate, seed=seed)
    return s.batch(count, augment=False)
