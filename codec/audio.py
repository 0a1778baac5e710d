"""Audio file I/O and resampling (soundfile + soxr): any rate / channel count in, mono float32 out."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import soundfile as sf
import soxr


class AudioFileError(ValueError):
    """An audio file cannot be read."""


def resample(x: np.ndarray, sr_in: int, sr_out: int, quality: str = "HQ") -> np.ndarray:
    """Resample a mono float32 signal (samples,) from ``sr_in`` to ``sr_out`` Hz."""
    if sr_in == sr_out:
        return np.asarray(x, dtype=np.float32)
    return soxr.resample(np.asarray(x, dtype=np.float32), sr_in, sr_out, quality=quality).astype(np.float32, copy=False)


def load_audio(path: str | Path, sample_rate: int) -> np.ndarray:
    """Read any file libsndfile reads, mix down to mono, resample to ``sample_rate``: (samples,) float32."""
    try:
        data, sr = sf.read(str(path), dtype="float32", always_2d=True)
    except (sf.LibsndfileError, RuntimeError, TypeError) as exc:
        raise AudioFileError(f"{path}: cannot read audio ({exc})") from None
    except FileNotFoundError:
        raise AudioFileError(f"{path}: no such file") from None
    if data.shape[0] == 0:
        raise AudioFileError(f"{path}: the file holds no audio samples")
    mono = data.mean(axis=1) if data.shape[1] > 1 else data[:, 0]
    return resample(mono, sr, sample_rate)


def save_audio(path: str | Path, x: np.ndarray, sample_rate: int, subtype: str = "PCM_16") -> None:
    """Write a mono signal (samples,) in [-1, 1] as WAV (16-bit PCM by default)."""
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    sf.write(str(path), np.clip(np.asarray(x, dtype=np.float32), -1.0, 1.0), sample_rate, subtype=subtype)
