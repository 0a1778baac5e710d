"""Small wrappers the GUI puts around its audio source and sink, and a recording clip helper.

They exist for session builds that lack the talk controls (``CallSession.set_transmit_mode`` & co.) or the
level fields in :class:`app.session.CallStats`: the GUI then gates the microphone itself
(:class:`GatedSource`: zeros while muted, while the push-to-talk key is up, or below the voice-activity
threshold) and measures the decoded audio (:class:`MeteredSink`). Both run on the session's worker threads
and do one numpy reduction per 80 ms chunk; attribute access falls through to the wrapped object.
(Recording a part of a call is the session's own: ``CallSession.start_recording`` / ``stop_recording``.)
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

_FLOOR_DB = -120.0


def level_dbfs(x: np.ndarray) -> float:
    if x.size == 0:
        return _FLOOR_DB
    rms = math.sqrt(float(np.mean(np.square(x, dtype=np.float64))))
    return max(_FLOOR_DB, 20.0 * math.log10(rms)) if rms > 0 else _FLOOR_DB


class GatedSource:
    """A source that sends silence unless the talk controls let the microphone through."""

    #: Voice activity hangover: chunks kept open after the level fell below the threshold.
    VAD_HOLD_CHUNKS = 4

    def __init__(self, inner: Any) -> None:
        self._inner = inner
        self.muted = False
        self.mode = "continuous"
        self.ptt = False
        self.vad_threshold_dbfs = -45.0
        self.input_level_dbfs = _FLOOR_DB
        self.vad_active = False
        self.transmitting = True
        self._hold = 0

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)

    def read_chunk(self, timeout: float | None = None) -> np.ndarray | None:
        x = self._inner.read_chunk(timeout)
        if x is None:
            return None
        lvl = level_dbfs(x)
        self.input_level_dbfs = lvl
        if lvl >= self.vad_threshold_dbfs:
            self._hold = self.VAD_HOLD_CHUNKS
        elif self._hold > 0:
            self._hold -= 1
        self.vad_active = self._hold > 0
        on = not self.muted and (self.mode == "continuous" or (self.mode == "ptt" and self.ptt)
                                 or (self.mode == "vad" and self.vad_active))
        self.transmitting = on
        return x if on else np.zeros_like(x)


class MeteredSink:
    """A sink that remembers the level of the last chunk written (the decoded speech meter)."""

    def __init__(self, inner: Any) -> None:
        self._inner = inner
        self.output_level_dbfs = _FLOOR_DB

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)

    def write_chunk(self, x: np.ndarray) -> int:
        a = np.asarray(x, dtype=np.float32)
        self.output_level_dbfs = level_dbfs(a * np.float32(getattr(self._inner, "gain", 1.0)))
        return self._inner.write_chunk(a)
