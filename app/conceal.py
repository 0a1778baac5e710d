"""Decoding one incoming token stream with packet-loss concealment.

A lost chunk is concealed by running the decoder on the last good chunk's tokens again (the decoder
state keeps moving, so the next real chunk continues smoothly), faded out over the loss; after
``fade_chunks`` lost chunks in a row (160 ms) the output is comfort noise until real chunks return,
which fade back in over one chunk. All per-chunk work is vectorised (gain ramps, one noise block).

A *pause* (:meth:`StreamDecoder.pause`: the peer stopped sending after a chunk it flagged as silence, DTX) is
not a loss: it is filled with comfort noise at the level of the last silent chunk the peer did send (its
background, clamped to ``comfort_min_dbfs..comfort_max_dbfs``), crossfaded from the decoder's own output over
the first pause chunk, and not counted as concealment (``comfort`` counts those chunks). When the talkspurt
resumes the decoder fades back in over one chunk, as after a loss.
"""

from __future__ import annotations

import numpy as np
import torch

from codec.model import DecodeState, FocalCodec


class StreamDecoder:
    """Chunk-by-chunk decoder of one peer's stream: ``decode(tokens | None) -> (output_chunk_size,) float32``."""

    def __init__(self, model: FocalCodec, fade_chunks: int = 2, comfort_noise_dbfs: float = -66.0,
                 seed: int = 0, comfort_min_dbfs: float = -80.0, comfort_max_dbfs: float = -50.0) -> None:
        self.model = model
        self.n = model.output_chunk_size
        self.fade_chunks = fade_chunks
        self.noise_rms = 10 ** (comfort_noise_dbfs / 20)
        self.comfort_min = 10 ** (comfort_min_dbfs / 20)
        self.comfort_max = 10 ** (comfort_max_dbfs / 20)
        self.rng = np.random.default_rng(seed)
        self.reset()

    def reset(self) -> None:
        self.state: DecodeState | None = None
        self.last: torch.Tensor | None = None
        self.lost_run = 0  # consecutive concealed chunks
        self.gain = 1.0  # output gain at the end of the previous chunk
        self.concealed = 0
        self.comfort = 0  # pause chunks filled with comfort noise
        self.last_rms = 0.0  # RMS of the last chunk decoded from real tokens

    def _run(self, toks: torch.Tensor) -> np.ndarray:
        with torch.inference_mode():
            y, self.state = self.model.decode_step(toks, self.state)
        return y[0].numpy()

    def _ramp(self, target: float) -> np.ndarray:
        r = np.linspace(self.gain, target, self.n, dtype=np.float32)
        self.gain = target
        return r

    def _noise(self, rms: float | None = None) -> np.ndarray:
        return ((self.noise_rms if rms is None else rms) * self.rng.standard_normal(self.n)).astype(np.float32)

    def pause(self) -> np.ndarray:
        """Next chunk of a DTX pause (the peer sent a silent chunk, then nothing): comfort noise at the
        level of the last real chunk (clamped), crossfaded from the repeated last chunk on the first pause
        chunk. Not counted as concealment."""
        self.comfort += 1
        rms = min(self.comfort_max, max(self.comfort_min, self.last_rms))
        if self.last is None:
            return self._noise(rms)
        if self.gain > 0.0:  # first pause chunk: fade the decoder out into the noise
            y = self._run(self.last)
            g = self._ramp(0.0)
            return g * y + (1 - g) * self._noise(rms)
        return self._noise(rms)

    def decode(self, tokens: np.ndarray | None) -> np.ndarray:
        """Next chunk of output audio; ``tokens`` = the chunk's tokens, or None if it was lost."""
        if tokens is not None:
            self.last = torch.as_tensor(np.asarray(tokens, dtype=np.int64))[None]
            y = self._run(self.last)
            self.lost_run = 0
            self.last_rms = float(np.sqrt(np.mean(np.square(y, dtype=np.float64)))) if y.size else 0.0
            if self.gain < 1.0:  # fade back in after a loss
                g = self._ramp(1.0)
                return g * y + (1 - g) * self._noise()
            return y
        self.concealed += 1
        self.lost_run += 1
        if self.last is None:  # nothing to repeat yet
            return self._noise()
        if self.lost_run <= self.fade_chunks:
            y = self._run(self.last)  # keep the decoder moving
            g = self._ramp(1.0 - self.lost_run / self.fade_chunks)
            return g * y + (1 - g) * self._noise()
        self.gain = 0.0
        return self._noise()
