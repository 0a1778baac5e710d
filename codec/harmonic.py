"""Harmonic source of the WaveNeXt decoder: sinusoids at the multiples of a predicted pitch.

A decoder that writes every sample from frame features has to invent a periodic excitation for voiced
speech, and a small one mostly gives noise (a hoarse voice). This source gives it the periodicity
outright: per frame (``hop`` samples) one linear map of the backbone features gives

* the pitch f0 (Hz, on a log scale between ``f0_min`` and ``f0_max``),
* a voicing gate in [0, 1],
* a log-amplitude envelope at ``bands`` points evenly spaced over [0, ``fmax``] Hz;

harmonic k (1..``harmonics``) has amplitude ``gate * exp(envelope(k * f0))``, faded out over the last
10 % below ``voiced_fmax`` (at most ``fmax``, the envelope's span: voiced speech is periodic only up to a
few kHz, and harmonics written above that are heard as a buzz). Pitch and amplitudes go linearly from frame
n-1's values to frame n's over frame n's samples (no lookahead), and the phase is the running sum of the
pitch, so each harmonic is one continuous sinusoid across frames and streaming calls. The decoder adds
this to its head's output, which keeps the noise and everything else (and can be switched off in voiced
frames: ``head_voiced_gain``, below ``head_voiced_above``). Pitch and gate are what a pitch loss trains
(:mod:`codec.training.pitch`); the synthesis uses the pitch detached (the phase of a sinusoid is no
gradient to learn a pitch from). The envelope learns from the waveform losses and, with an envelope loss,
from the target's measured harmonic amplitudes: without it the waveform losses leave every harmonic but
the lowest few to the head, as noise.

Streaming state: (B, 2 + harmonics) float64 = [phase (cycles, in [0, 1)), last frame's f0, last frame's
harmonic amplitudes]; a stream starts at phase 0 with the amplitudes fading in over its first frame.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .layers import linear


class HarmonicSource(nn.Module):
    """(B, N, dim) features -> (B, N * hop) float32 samples, new state, {"f0": (B, N) Hz, "voicing": (B, N)
    logits, "envelope": (B, N, bands) log amplitudes}."""

    TAPER = 0.1  # share of fmax over which the highest harmonics fade out
    MAX_LOG_AMP = 2.0  # envelope clamp (amplitude e^2 per harmonic at most)
    POSTFILTER_HZ = 1000.0  # the post-filter raises the envelope above its average over +- this

    def __init__(self, dim: int, hop: int, sample_rate: int, harmonics: int, bands: int,
                 f0_min: float, f0_max: float, fmax: float, postfilter: float = 1.0,
                 voiced_fmax: float = 0.0) -> None:
        super().__init__()
        self.postfilter = postfilter
        self.smooth = max(1, round(self.POSTFILTER_HZ * (bands - 1) / fmax))  # band points each side
        self.hop = hop
        self.sample_rate = sample_rate
        self.harmonics = harmonics
        self.bands = bands
        self.f0_min = f0_min
        self.log_range = math.log(f0_max / f0_min)
        self.fmax = fmax
        self.voiced_fmax = min(voiced_fmax or fmax, fmax)  # Hz; 0: fmax
        self.proj = nn.Linear(dim, 2 + bands)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Start quiet (envelope -60 dB, gate 0.5). Next to a head that already writes voiced speech (as
        noise) the source stays silent: any harmonic it adds first makes that speech louder, so training
        keeps it at zero. Trained together with a fresh head (``focalchat train small_mel_hns``) it takes
        the voiced part over within a few hundred steps."""
        nn.init.normal_(self.proj.weight, std=1e-3)
        nn.init.zeros_(self.proj.bias)
        with torch.no_grad():
            self.proj.bias[2:] = -7.0

    @torch.no_grad()
    def scale_output(self, gain: float) -> None:
        """Multiply every output sample by ``gain`` (exact below the envelope clamp)."""
        self.proj.bias[2:].add_(math.log(gain))

    def forward(self, x: Tensor, state: Tensor | None) -> tuple[Tensor, Tensor, dict[str, Tensor]]:
        b, n, _ = x.shape
        p = linear(self.proj, x).float()  # (B, N, 2 + bands)
        f0 = self.f0_min * torch.exp(torch.sigmoid(p[..., 0]) * self.log_range)  # (B, N) Hz
        gate = torch.sigmoid(p[..., 1])
        env = p[..., 2:].clamp(max=self.MAX_LOG_AMP)
        heard = env if self.training or self.postfilter == 1.0 else self.sharpen(env)
        f0d = f0.detach()
        k = torch.arange(1, self.harmonics + 1, device=x.device, dtype=torch.float32)
        freqs = f0d[..., None] * k  # (B, N, K) Hz
        fade = ((self.voiced_fmax - freqs) * (1.0 / (self.TAPER * self.voiced_fmax))).clamp(0.0, 1.0)
        amps = gate[..., None] * self.envelope_at(heard, freqs).exp() * fade  # (B, N, K)

        if state is None:
            phase0 = torch.zeros(b, 1, dtype=torch.float64, device=x.device)
            f0_prev, a_prev = f0d[:, :1], torch.zeros_like(amps[:, :1])
        else:
            phase0, f0_prev, a_prev = state[:, :1], state[:, 1:2].float(), state[:, None, 2:].float()
        f0_from = torch.cat([f0_prev, f0d[:, :-1]], 1)  # (B, N): the value each frame starts from
        a_from = torch.cat([a_prev, amps[:, :-1]], 1)  # (B, N, K)
        ramp = torch.arange(1, self.hop + 1, device=x.device, dtype=torch.float32) * (1.0 / self.hop)  # (hop,)
        f0_t = torch.lerp(f0_from[..., None], f0d[..., None], ramp)  # (B, N, hop) Hz per sample
        phase = torch.cumsum(f0_t.reshape(b, n * self.hop).double() * (1.0 / self.sample_rate), 1).add_(phase0)
        cyc = phase.remainder(1.0).float().reshape(b, n, self.hop, 1)
        # harmonics at or above voiced_fmax at both ends of every frame are silent: only the others are synthesised
        top = min(self.harmonics, int(self.voiced_fmax / float(torch.minimum(f0_from, f0d).min())) + 1)
        s = torch.sin(cyc * (2 * math.pi) * k[:top])  # (B, N, hop, top)
        # (B, N, 2, hop): the sum at the frame's start / end amplitudes (2 x top @ top x hop: a wide product,
        # much faster than hop x top @ top x 2)
        ends = torch.stack([a_from[..., :top], amps[..., :top]], 2) @ s.transpose(2, 3)
        y = torch.lerp(ends[:, :, 0], ends[:, :, 1], ramp).reshape(b, n * self.hop)
        new = torch.cat([phase[:, -1:].remainder(1.0), f0d[:, -1:].double(), amps[:, -1].detach().double()], 1)
        return y, new, {"f0": f0, "voicing": p[..., 1], "envelope": env}

    def sharpen(self, env: Tensor) -> Tensor:
        """The post-filter: (B, N, bands) log amplitudes with their rise above the average over
        +-``POSTFILTER_HZ`` (edges repeated) scaled by ``postfilter``."""
        b, n, k = env.shape
        flat = F.pad(env.reshape(b * n, 1, k), (self.smooth, self.smooth), mode="replicate")
        avg = F.avg_pool1d(flat, 2 * self.smooth + 1, stride=1).reshape(b, n, k)
        return torch.lerp(avg, env, self.postfilter)

    def envelope_at(self, env: Tensor, freqs: Tensor) -> Tensor:
        """Log-amplitude envelopes (B, N, bands) read at frequencies (B, N, K) Hz (linear between the
        band points, the last band's value above ``fmax``) -> (B, N, K)."""
        pos = (freqs * ((self.bands - 1) / self.fmax)).clamp(0.0, self.bands - 1)
        i0 = pos.floor().clamp(max=self.bands - 2)
        w = pos - i0
        i0 = i0.long()
        return torch.lerp(env.gather(2, i0), env.gather(2, i0 + 1), w)
