"""Energy-based voice activity detection for the call engine (one decision per 80 ms chunk).

:class:`VoiceActivityDetector` looks at the chunk in ``frames`` sub-frames (20 ms at 16 kHz with the defaults):
a chunk is *voiced* when any sub-frame's RMS is above the threshold (so a short onset is not averaged away
by the rest of the chunk). The threshold is ``max(threshold_dbfs, noise floor + margin_db)``: the noise
floor follows the quietest sub-frames slowly upward and quickly downward, so a steady fan or hum above
``threshold_dbfs`` is not taken for speech for ever. After the last voiced chunk the detector stays active
for ``hangover_s`` (300 ms: the ends of words are quiet), and :attr:`onset` tells the caller that speech
starts with this chunk (the session then also sends the chunk before it, the "pre-roll", if it had not).

All work per chunk is a handful of numpy reductions; no per-sample Python.
"""

from __future__ import annotations

import math

import numpy as np

__all__ = ["LEVEL_FLOOR_DBFS", "VoiceActivityDetector", "rms_dbfs"]

#: Level reported for digital silence (and the floor of every level).
LEVEL_FLOOR_DBFS = -100.0


def rms_dbfs(x: np.ndarray) -> float:
    """RMS level of ``x`` in dBFS (full scale = 1.0), floored at :data:`LEVEL_FLOOR_DBFS`; empty -> floor."""
    a = np.asarray(x, dtype=np.float32).reshape(-1)
    if a.size == 0:
        return LEVEL_FLOOR_DBFS
    ms = float(np.dot(a, a)) / a.size
    if not (ms > 0.0 and math.isfinite(ms)):  # digital silence, or NaN/inf from a broken source
        return LEVEL_FLOOR_DBFS
    return max(LEVEL_FLOOR_DBFS, 10.0 * math.log10(ms))


class VoiceActivityDetector:
    """``update(chunk) -> bool`` (active, hangover included) per chunk; see the module docstring.

    Args:
        threshold_dbfs: the lowest level taken for speech (-45 dBFS by default).
        hangover_s: how long the detector stays active after the last voiced chunk.
        chunk_s: duration of one chunk.
        frames: sub-frames per chunk (the chunk length must be a multiple; otherwise the tail is ignored).
        margin_db: a sub-frame must also be this far above the tracked noise floor.
    """

    def __init__(self, threshold_dbfs: float = -45.0, hangover_s: float = 0.3, chunk_s: float = 0.08,
                 frames: int = 4, margin_db: float = 9.0) -> None:
        if not (math.isfinite(threshold_dbfs) and LEVEL_FLOOR_DBFS <= threshold_dbfs <= 0.0):
            raise ValueError(f"threshold_dbfs must be in [{LEVEL_FLOOR_DBFS:g}, 0], got {threshold_dbfs!r}")
        if not (hangover_s >= 0 and chunk_s > 0 and frames >= 1 and margin_db >= 0):
            raise ValueError("need hangover_s >= 0, chunk_s > 0, frames >= 1, margin_db >= 0")
        self.threshold_dbfs = float(threshold_dbfs)
        self.hangover_chunks = int(math.ceil(hangover_s / chunk_s - 1e-9))
        self.frames = int(frames)
        self.margin_db = float(margin_db)
        self.reset()

    def reset(self) -> None:
        self.noise_floor_dbfs = self.threshold_dbfs - self.margin_db  # learned from there
        self.active = False
        self.voiced = False  # this chunk itself is above the threshold
        self.onset = False  # the detector became active with this chunk
        self.level_dbfs = LEVEL_FLOOR_DBFS  # RMS of the whole last chunk
        self._hang = 0

    def set_threshold(self, threshold_dbfs: float) -> None:
        """A new threshold, mid-stream. The learned noise floor is lowered to ``threshold - margin`` if it was
        above (so a lower threshold takes effect at once, not once the floor has come down); the activity
        state and hangover carry on."""
        if not (math.isfinite(threshold_dbfs) and LEVEL_FLOOR_DBFS <= threshold_dbfs <= 0.0):
            raise ValueError(f"threshold_dbfs must be in [{LEVEL_FLOOR_DBFS:g}, 0], got {threshold_dbfs!r}")
        self.threshold_dbfs = float(threshold_dbfs)
        self.noise_floor_dbfs = min(self.noise_floor_dbfs, self.threshold_dbfs - self.margin_db)

    @property
    def effective_threshold_dbfs(self) -> float:
        return max(self.threshold_dbfs, self.noise_floor_dbfs + self.margin_db)

    def update(self, chunk: np.ndarray) -> bool:
        x = np.asarray(chunk, dtype=np.float32).reshape(-1)
        n = x.size // self.frames * self.frames
        if n == 0:
            raise ValueError("a chunk must hold at least one sample per sub-frame")
        sub = x[:n].reshape(self.frames, -1)
        ms = np.einsum("ij,ij->i", sub, sub) / sub.shape[1]
        ms = np.where(np.isfinite(ms), ms, 0.0)
        with np.errstate(divide="ignore"):
            db = np.maximum(10.0 * np.log10(np.maximum(ms, 1e-30)), LEVEL_FLOOR_DBFS)
        total = float(np.mean(ms))
        self.level_dbfs = max(LEVEL_FLOOR_DBFS, 10.0 * math.log10(total)) if total > 0 else LEVEL_FLOOR_DBFS
        quietest = float(db.min())
        # noise floor: down at once, up by at most 0.5 dB per chunk (~6 dB/s), ignoring digital silence
        if quietest > LEVEL_FLOOR_DBFS:
            if quietest < self.noise_floor_dbfs:
                self.noise_floor_dbfs = quietest
            else:
                self.noise_floor_dbfs = min(quietest, self.noise_floor_dbfs + 0.5)
        self.voiced = bool(float(db.max()) > self.effective_threshold_dbfs)
        was = self.active
        if self.voiced:
            self._hang = self.hangover_chunks
            self.active = True
        elif self._hang > 0:
            self._hang -= 1
            self.active = True
        else:
            self.active = False
        self.onset = self.active and not was
        return self.active
