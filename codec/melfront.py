"""Causal log-mel front end: 16 kHz signal (B, T) -> log-mel frames stacked to the encoder's frame rate.

An alternative to the WavLM-style raw-waveform convolution stack (``WavLMConfig.frontend = "logmel"``)
for models trained from scratch on little speech: each ``mel_hop`` samples, a ``mel_fft``-sample Hann
window *ending* at that hop (no lookahead) gives ``mel_bins`` log mel energies; ``mel_stack`` consecutive
hops make one encoder frame (B, N, mel_stack * mel_bins), N = ceil(T / (mel_hop * mel_stack)).

The input level is kept (no per-frame normalisation): loudness and its changes within a sentence reach
the encoder; a fixed affine map (``mel_offset``, ``mel_scale``) brings the log energies of speech near
zero mean and unit spread.

Streaming state: the last ``mel_fft - mel_hop`` samples (:class:`codec.stream.History`, zeros before the
stream start), so that chunked and one-shot encoding agree exactly. Constants (window, filterbank) are
made on first use per device: the module has no parameters or buffers to load.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .config import WavLMConfig
from .stream import History, with_left_context

#: Power floor inside the log (the signal is float in [-1, 1]): -100 dB, below any real recording.
POWER_FLOOR = 1e-10


def mel_filterbank(sr: int, n_fft: int, n_mels: int, fmin: float = 0.0, fmax: float | None = None) -> np.ndarray:
    """Slaney-style triangular mel filters (n_mels, n_fft // 2 + 1), area-normalised."""
    fmax = fmax or sr / 2

    def hz_to_mel(f):
        f = np.asarray(f, dtype=np.float64)
        lin = f / (200.0 / 3)
        return np.where(f >= 1000.0, 15.0 + np.log(np.maximum(f, 1e-9) / 1000.0) / (np.log(6.4) / 27.0), lin)

    def mel_to_hz(m):
        m = np.asarray(m, dtype=np.float64)
        return np.where(m >= 15.0, 1000.0 * np.exp((np.log(6.4) / 27.0) * (m - 15.0)), m * (200.0 / 3))

    freqs = np.linspace(0, sr / 2, n_fft // 2 + 1)
    pts = mel_to_hz(np.linspace(hz_to_mel(fmin), hz_to_mel(fmax), n_mels + 2))
    fdiff = np.diff(pts)
    ramps = pts[:, None] - freqs[None, :]
    lower = -ramps[:-2] / fdiff[:-1, None]
    upper = ramps[2:] / fdiff[1:, None]
    fb = np.maximum(0, np.minimum(lower, upper))
    fb *= (2.0 / (pts[2 : n_mels + 2] - pts[:n_mels]))[:, None]
    return fb.astype(np.float32)


class LogMelFrontEnd(nn.Module):
    """sig (B, T) samples at 16 kHz -> (B, ceil(T / frame), mel_stack * mel_bins) normalised log-mel."""

    def __init__(self, cfg: WavLMConfig, sample_rate: int = 16000) -> None:
        super().__init__()
        self.n_fft = cfg.mel_fft
        self.hop = cfg.mel_hop
        self.stack = cfg.mel_stack
        self.bins = cfg.mel_bins
        self.offset = cfg.mel_offset
        self.scale = cfg.mel_scale
        self.causal = cfg.causal
        self.sample_rate = sample_rate
        self._consts: dict[torch.device, tuple[Tensor, Tensor]] = {}  # window (n_fft,), filters (F, bins)

    @property
    def frame(self) -> int:
        """Input samples per output frame."""
        return self.hop * self.stack

    @property
    def out_dim(self) -> int:
        return self.stack * self.bins

    def _constants(self, device: torch.device) -> tuple[Tensor, Tensor]:
        c = self._consts.get(device)
        if c is None:
            with torch.inference_mode(False), torch.no_grad():  # plain tensors: usable when training too
                win = torch.hann_window(self.n_fft, periodic=True, device=device)
                fb = mel_filterbank(self.sample_rate, self.n_fft, self.bins, 0.0, self.sample_rate / 2)
                c = (win, torch.from_numpy(fb).t().contiguous().to(device))
            self._consts[device] = c
        return c

    def forward(self, sig: Tensor, ctx: History | None) -> tuple[Tensor, History | None]:
        """sig (B, T) -> frames (B, ceil(T / frame), out_dim) in ``sig``'s dtype; ``ctx`` = the last
        ``mel_fft - mel_hop`` samples of the stream (None at its start)."""
        dtype = sig.dtype
        x = sig.float()
        pad = -x.shape[1] % self.frame
        if pad:  # a partial last frame (one-shot input of any length): completed with silence
            x = F.pad(x, (0, pad))
        left = self.n_fft - self.hop
        if self.causal:
            ext, ctx = with_left_context(x.unsqueeze(-1), ctx, left, pad="zeros", dim=1)
            ext = ext.squeeze(-1)
        else:  # centred windows
            ext = F.pad(x, (left // 2, left - left // 2))
        win, fb = self._constants(x.device)
        frames = ext.unfold(-1, self.n_fft, self.hop) * win  # (B, T / hop, n_fft)
        power = torch.fft.rfft(frames, dim=-1).abs().square()
        mel = torch.log(power @ fb + POWER_FLOOR).sub_(self.offset).mul_(self.scale)  # (B, T / hop, bins)
        b, n, _ = mel.shape
        return mel.reshape(b, n // self.stack, self.out_dim).to(dtype), ctx
