"""Training losses: multi-resolution mel and STFT reconstruction, BSQ entropy, GAN hinge and feature matching."""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn


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


class MultiResolutionLoss(nn.Module):
    """L1 of log-mel spectra + L1 of log-|STFT| + spectral convergence, averaged over resolutions.

    Inputs (B, T) waveforms at ``sample_rate``. Returns ``(mel_loss, stft_loss)``.
    """

    def __init__(self, sample_rate: int, ffts: tuple[int, ...] = (512, 1024, 2048), n_mels: int = 80,
                 fmax: float | None = None) -> None:
        super().__init__()
        self.ffts = ffts
        for n in ffts:
            self.register_buffer(f"win{n}", torch.hann_window(n), persistent=False)
            mels = min(n_mels, n // 8)
            self.register_buffer(f"mel{n}", torch.from_numpy(mel_filterbank(sample_rate, n, mels, 0.0, fmax)),
                                 persistent=False)

    def _mag(self, x: Tensor, n: int) -> Tensor:
        spec = torch.stft(x, n, hop_length=n // 4, window=getattr(self, f"win{n}"), return_complex=True)
        return spec.abs().clamp_min(1e-5)  # (B, F, frames); floor -100 dBFS-ish

    def forward(self, pred: Tensor, target: Tensor) -> tuple[Tensor, Tensor]:
        mel_total = pred.new_zeros(())
        stft_total = pred.new_zeros(())
        for n in self.ffts:
            p, t = self._mag(pred, n), self._mag(target, n)
            fb = getattr(self, f"mel{n}")
            mel_total = mel_total + F.l1_loss(torch.log(fb @ p + 1e-5), torch.log(fb @ t + 1e-5))
            sc = torch.linalg.vector_norm(t - p, dim=(1, 2)) / torch.linalg.vector_norm(t, dim=(1, 2)).clamp_min(1e-5)
            stft_total = stft_total + F.l1_loss(torch.log(p), torch.log(t)) + sc.mean()
        k = len(self.ffts)
        return mel_total / k, stft_total / k


def bsq_entropy_loss(lats: Tensor, inv_temperature: float = 1.0, gamma: float = 1.0,
                     sample_weight: float = 1.0) -> tuple[Tensor, Tensor]:
    """Factorised BSQ entropy loss on L2-normalised latents (B, N, D).

    Each bit gets a soft probability ``sigmoid(4 * inv_temperature * sqrt(D) * lat)``. The loss is the mean
    per-token bit entropy (pushes latents away from the decision boundary; scaled by ``sample_weight``)
    minus ``gamma`` times the entropy of the batch-average bit usage (keeps every bit in use). The
    factorised usage term cannot see correlated bits: with the per-token term on, end-to-end training
    can settle on a handful of well-separated codes whose bits are each used half the time, so
    ``sample_weight=0`` (usage term only) is the safer choice there. Returns ``(loss, codebook_entropy_bits)``: the
    second is the summed per-bit usage entropy in bits (D = every bit used half the time).
    """
    d = lats.shape[-1]
    logits = 4.0 * inv_temperature * math.sqrt(d) * lats.float()
    p = torch.sigmoid(logits)

    def h(q: Tensor) -> Tensor:
        q = q.clamp(1e-6, 1 - 1e-6)
        return -(q * torch.log(q) + (1 - q) * torch.log(1 - q))

    per_sample = h(p).sum(-1).mean()
    usage = h(p.reshape(-1, d).mean(0)).sum()
    return (sample_weight * per_sample - gamma * usage) / d, usage.detach() / math.log(2)


def straight_through(lats: Tensor, codes: Tensor) -> Tensor:
    """Codes in the forward pass, the identity gradient to the latents in the backward pass."""
    return lats + (codes - lats).detach()


def hinge_d_loss(real: list[Tensor], fake: list[Tensor]) -> Tensor:
    """Discriminator hinge loss over several discriminators' logits."""
    return sum(F.relu(1 - r).mean() + F.relu(1 + f).mean() for r, f in zip(real, fake)) / len(real)


def hinge_g_loss(fake: list[Tensor]) -> Tensor:
    return sum(F.relu(1 - f).mean() for f in fake) / len(fake)


def feature_matching_loss(real_feats: list[list[Tensor]], fake_feats: list[list[Tensor]]) -> Tensor:
    """Mean L1 between discriminator feature maps of real and generated audio (real detached)."""
    total, count = 0.0, 0
    for rs, fs in zip(real_feats, fake_feats):
        for r, f in zip(rs, fs):
            total = total + F.l1_loss(f, r.detach()) / (r.detach().abs().mean() + 1e-5)
            count += 1
    return total / max(count, 1)
