"""Training losses: multi-resolution mel and STFT reconstruction, loudness, phase derivatives, BSQ entropy,
GAN hinge and feature matching."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..config import WavLMConfig
from ..melfront import LogMelFrontEnd, mel_filterbank


class MultiResolutionLoss(nn.Module):
    """L1 of log-mel spectra + L1 of log-|STFT| + spectral convergence, averaged over resolutions.

    Inputs (B, T) waveforms at ``sample_rate``. Returns ``(mel_loss, stft_loss)``.

    ``band_limit`` (Hz) is the highest frequency the targets hold: 8 000 when 16 kHz speech is the target
    of a 24 kHz decoder. Above it the target is the resampler's stop band (about -100 dB): log-spectral
    distances there measure how well the prediction matches that numerical floor, not speech, and at
    24 kHz they were most of the loss (a third of the bins, 7 nats off each), so the log terms stop at
    ``band_limit`` and the STFT term adds the L1 distance of the out-of-band magnitudes, linear (not log),
    relative to the target's mean in-band magnitude: hiss above the band costs in proportion to its level.
    """

    def __init__(self, sample_rate: int, ffts: tuple[int, ...] = (512, 1024, 2048), n_mels: int = 80,
                 fmax: float | None = None, band_limit: float | None = None) -> None:
        super().__init__()
        self.ffts = ffts
        top = min(fmax or sample_rate / 2, band_limit or sample_rate / 2)
        self.bins: dict[int, int] = {}
        for n in ffts:
            self.register_buffer(f"win{n}", torch.hann_window(n), persistent=False)
            mels = min(n_mels, n // 8)
            self.register_buffer(f"mel{n}", torch.from_numpy(mel_filterbank(sample_rate, n, mels, 0.0, top)),
                                 persistent=False)
            self.bins[n] = int(math.floor(top / sample_rate * n)) + 1  # bins 0..top kept by the log terms
        self.out_of_band = band_limit is not None and band_limit < sample_rate / 2

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
            k = self.bins[n]
            pi, ti = p[:, :k], t[:, :k]
            sc = torch.linalg.vector_norm(ti - pi, dim=(1, 2)) / torch.linalg.vector_norm(ti, dim=(1, 2)).clamp_min(1e-5)
            stft_total = stft_total + F.l1_loss(torch.log(pi), torch.log(ti)) + sc.mean()
            if self.out_of_band:
                stft_total = stft_total + F.l1_loss(p[:, k:], t[:, k:]) / ti.mean().clamp_min(1e-5)
        k = len(self.ffts)
        return mel_total / k, stft_total / k


class LoudnessLoss(nn.Module):
    """Distance of loudness spectra as perceptual quality measures (PESQ, P.862) weigh it: (B, T) x 2 -> scalar.

    Per resolution, mel-band power (bands up to ``band_limit``) compressed with Zwicker's exponent 0.23
    (PESQ's loudness law), the prediction's excess over the target weighted ``asymmetry`` times its deficit
    (added sound disturbs more than missing sound), L1 relative to the target's mean loudness. A log-spectral
    loss weighs every band and frame alike, the quiet ones (pauses, the noise floor between formants) as
    much as the loud ones; on this scale the loud parts of speech dominate, as they dominate what is heard.
    """

    EXPONENT = 0.23

    def __init__(self, sample_rate: int, ffts: tuple[int, ...] = (512, 1024), n_mels: int = 49,
                 band_limit: float | None = None, asymmetry: float = 2.0) -> None:
        super().__init__()
        self.ffts = ffts
        self.asymmetry = asymmetry
        top = min(sample_rate / 2, band_limit or sample_rate / 2)
        for n in ffts:
            self.register_buffer(f"win{n}", torch.hann_window(n), persistent=False)
            self.register_buffer(f"mel{n}", torch.from_numpy(mel_filterbank(sample_rate, n, min(n_mels, n // 8),
                                                                            0.0, top)), persistent=False)

    def loudness(self, x: Tensor, n: int) -> Tensor:
        """(B, T) -> (B, bands, frames) loudness (mel power ** 0.23), window n samples, hop n / 2."""
        spec = torch.stft(x, n, hop_length=n // 2, window=getattr(self, f"win{n}"), return_complex=True)
        power = spec.real.square() + spec.imag.square()
        return (getattr(self, f"mel{n}") @ power + 1e-10).pow(self.EXPONENT)

    def forward(self, pred: Tensor, target: Tensor) -> Tensor:
        total = pred.new_zeros(())
        for n in self.ffts:
            lp, lt = self.loudness(pred, n), self.loudness(target, n)
            d = lp - lt
            w = torch.where(d > 0, self.asymmetry, 1.0)
            total = total + (w * d.abs()).mean() / lt.mean().clamp_min(1e-6)
        return total / len(self.ffts)


def _frames(x: Tensor, hop: int) -> Tensor:
    """Every whole ``hop``-sample frame of a batch, on the decoder's frame grid: (B, T) -> (B * (T // hop), hop)."""
    return x[..., : x.shape[-1] // hop * hop].reshape(-1, hop)


def frame_position_modulation(x: Tensor, hop: int) -> Tensor:
    """How unevenly a decoder spreads energy over the positions inside its frames: (B, T) -> scalar.

    The coefficient of variation, over the ``hop`` sample positions of a frame, of the mean energy at each
    position (averaged over all frames of the batch). Natural audio is close to 0 (only the estimate's own
    noise); a decoder that gives every frame the same energy shape scores near 1, heard as a buzz at the
    frame rate (``rate / hop`` Hz).
    """
    e = _frames(x, hop).pow(2).mean(0)
    return e.std() / e.mean().clamp_min(1e-12)


def frame_locked_share(x: Tensor, hop: int) -> Tensor:
    """Share of a signal's energy that is one fixed waveform repeated every frame: (B, T) -> scalar.

    The energy of the mean frame (the average, over all frames of the batch, of the samples at each of the
    ``hop`` positions) over the mean energy. Audio unrelated to the frame grid scores about 1 / frames (the
    estimate's noise); a decoder that adds the same waveform to every frame, a pulse train at
    ``rate / hop`` Hz, scores up to 1.
    """
    frames = _frames(x, hop)
    return frames.mean(0).pow(2).mean() / frames.pow(2).mean().clamp_min(1e-12)


class PhaseDerivativeLoss(nn.Module):
    """Magnitude-weighted cosine loss on the STFT phase derivatives, blind to a constant phase offset.

    Per resolution, the instantaneous frequency (phase advance from one frame to the next, per bin) and
    the group delay (phase step from one bin to the next, per frame) of ``pred`` are compared with the
    target's as ``1 - cos(difference)``, weighted by the target's energy so that harmonics count and
    silence does not. Log-spectral losses are blind to phase, so a decoder trained on them alone may
    excite voiced speech with noise; this term asks for sinusoids that stay coherent across frames,
    with the target's pitch, without asking for the target's absolute phase. Inputs (B, T); the
    result lies in [0, 2] (0 = same phase derivatives).
    """

    def __init__(self, resolutions: tuple[tuple[int, int], ...] = ((512, 128), (1024, 256))) -> None:
        super().__init__()
        self.resolutions = resolutions
        for n, _ in resolutions:
            self.register_buffer(f"win{n}", torch.hann_window(n), persistent=False)

    @staticmethod
    def _term(p: Tensor, t: Tensor, dim: int) -> Tensor:
        """1 - weighted cos of the angle between the two signals' products of neighbours along ``dim``."""
        n = p.shape[dim]
        dp = p.narrow(dim, 1, n - 1) * p.narrow(dim, 0, n - 1).conj()
        dt = t.narrow(dim, 1, n - 1) * t.narrow(dim, 0, n - 1).conj()
        # sum |dt| cos(angle dp - angle dt) / sum |dt|
        agree = (dp * dt.conj()).real / (dp.abs() + 1e-7)
        return 1.0 - agree.sum() / dt.abs().sum().clamp_min(1e-7)

    def forward(self, pred: Tensor, target: Tensor) -> Tensor:
        total = pred.new_zeros(())
        for n, hop in self.resolutions:
            win = getattr(self, f"win{n}")
            p = torch.stft(pred, n, hop_length=hop, window=win, return_complex=True)
            t = torch.stft(target, n, hop_length=hop, window=win, return_complex=True)
            total = total + self._term(p, t, dim=2) + self._term(p, t, dim=1)  # (B, F, frames)
        return total / (2 * len(self.resolutions))


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


class ContentHead(nn.Module):
    """A linear read-out of the decompressed features (B, N, C) that predicts the input's log-mel (B, N,
    stack * bins): ``forward(qfeats, sig)`` returns the L1 distance in nats. The log-mel is the encoder's own
    front end when it is one (then the target is exactly what the encoder saw), else the default causal
    log-mel (80 bands, 32 ms windows every 10 ms, two per token). Training only: never exported."""

    def __init__(self, feat_dim: int, encoder: WavLMConfig) -> None:
        super().__init__()
        cfg = encoder if encoder.frontend == "logmel" else WavLMConfig(frontend="logmel")
        if cfg.downsample_factor != encoder.downsample_factor:
            raise ValueError(f"the log-mel grid ({cfg.downsample_factor} samples) is not the encoder's "
                             f"({encoder.downsample_factor})")
        self.mel = LogMelFrontEnd(cfg)
        self.proj = nn.Linear(feat_dim, self.mel.out_dim)

    def forward(self, qfeats: Tensor, sig: Tensor) -> Tensor:
        with torch.no_grad():
            target, _ = self.mel(sig, None)
        n = min(qfeats.shape[1], target.shape[1])
        return F.l1_loss(self.proj(qfeats[:, :n]), target[:, :n]) / self.mel.scale
