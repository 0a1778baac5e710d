"""Discriminators for adversarial decoder training: multi-period (HiFi-GAN) and multi-resolution STFT
(UnivNet / Vocos). Each returns, per sub-discriminator, logits and the list of feature maps. And one for
the harmonic source's spectral envelopes alone (:class:`EnvelopeDiscriminator`).

Widths are scaled by ``channels`` (doubling per layer) so that a CPU run can afford them
(HiFi-GAN uses 32..1024, growing 4x per layer).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.utils.parametrizations import weight_norm


def _conv_stack(convs: nn.ModuleList, out: nn.Module, x: Tensor) -> tuple[Tensor, list[Tensor]]:
    """Leaky-ReLU convs then the output conv on an image (B, 1, H, W) -> (logits, every layer's output)."""
    feats = []
    for c in convs:
        x = F.leaky_relu(c(x), 0.1)
        feats.append(x)
    x = out(x)
    feats.append(x)
    return x, feats


class PeriodDiscriminator(nn.Module):
    """Folds the waveform (B, T) into (B, 1, T / p, p) and runs 2-D convs along time."""

    def __init__(self, period: int, channels: int = 16, layers: int = 4) -> None:
        super().__init__()
        self.period = period
        chans = [1] + [min(channels * 2**i, 512) for i in range(layers)]
        self.convs = nn.ModuleList(
            weight_norm(nn.Conv2d(chans[i], chans[i + 1], (5, 1), (3, 1), padding=(2, 0))) for i in range(layers)
        )
        self.post = weight_norm(nn.Conv2d(chans[-1], chans[-1], (5, 1), 1, padding=(2, 0)))
        self.out = weight_norm(nn.Conv2d(chans[-1], 1, (3, 1), 1, padding=(1, 0)))

    def forward(self, x: Tensor) -> tuple[Tensor, list[Tensor]]:
        b, t = x.shape
        pad = -t % self.period
        if pad:
            x = F.pad(x, (0, pad), mode="reflect")
        x = x.view(b, 1, -1, self.period)
        feats = []
        for c in self.convs:
            x = F.leaky_relu(c(x), 0.1)
            feats.append(x)
        x = F.leaky_relu(self.post(x), 0.1)
        feats.append(x)
        x = self.out(x)
        feats.append(x)
        return x.flatten(1), feats


class ResolutionDiscriminator(nn.Module):
    """2-D convs over the log-magnitude spectrogram of one STFT resolution."""

    def __init__(self, n_fft: int, channels: int = 16) -> None:
        super().__init__()
        self.n_fft = n_fft
        self.register_buffer("window", torch.hann_window(n_fft), persistent=False)
        c = channels
        self.convs = nn.ModuleList([
            weight_norm(nn.Conv2d(1, c, (7, 5), (2, 2), padding=(3, 2))),
            weight_norm(nn.Conv2d(c, c, (5, 3), (2, 1), padding=(2, 1))),
            weight_norm(nn.Conv2d(c, c, (5, 3), (2, 1), padding=(2, 1))),
            weight_norm(nn.Conv2d(c, c, 3, 1, padding=1)),
        ])
        self.out = weight_norm(nn.Conv2d(c, 1, 3, 1, padding=1))

    def forward(self, x: Tensor) -> tuple[Tensor, list[Tensor]]:
        spec = torch.stft(x, self.n_fft, self.n_fft // 4, window=self.window, return_complex=True)
        x, feats = _conv_stack(self.convs, self.out, torch.log(spec.abs().clamp_min(1e-5)).unsqueeze(1))
        return x.flatten(1), feats


class Discriminators(nn.Module):
    """All sub-discriminators; ``forward(x)`` -> (logits list, feature-map lists)."""

    def __init__(self, periods: tuple[int, ...] = (2, 3, 5, 7, 11), ffts: tuple[int, ...] = (512, 1024, 2048),
                 channels: int = 32) -> None:
        super().__init__()
        self.channels = channels
        self.discs = nn.ModuleList([PeriodDiscriminator(p, channels) for p in periods]
                                   + [ResolutionDiscriminator(n, channels) for n in ffts])

    def forward(self, x: Tensor) -> tuple[list[Tensor], list[list[Tensor]]]:
        logits, feats = [], []
        for d in self.discs:
            lg, f = d(x)
            logits.append(lg)
            feats.append(f)
        return logits, feats


class EnvelopeDiscriminator(nn.Module):
    """Judges spectral envelopes: 2-D convs over (frames, bands) of log-amplitude shapes (B, N, bands)
    (``pitch.envelope_shapes``), strided along frequency only, so logits (B, N, bands / 8) keep one row per
    frame and unvoiced frames can be left out of the loss. Returns (logits, feature maps)."""

    def __init__(self, channels: int = 32, layers: int = 3) -> None:
        super().__init__()
        self.channels = channels
        chans = [1] + [min(channels * 2**i, 256) for i in range(layers)]
        self.convs = nn.ModuleList(
            weight_norm(nn.Conv2d(chans[i], chans[i + 1], (3, 5), (1, 2), padding=(1, 2))) for i in range(layers)
        )
        self.out = weight_norm(nn.Conv2d(chans[-1], 1, 3, 1, padding=1))

    def forward(self, x: Tensor) -> tuple[Tensor, list[Tensor]]:
        x, feats = _conv_stack(self.convs, self.out, x.unsqueeze(1))  # (B, 1, N, bands) in
        return x.squeeze(1), feats
