"""Pitch targets for the decoder's harmonic source: a batched YIN pitch tracker and the pitch loss.

The tracker runs on the training batch itself (after augmentation: speed changes move the pitch), on
whatever device trains, so it is written in torch rather than taken from an audio library that works on
one numpy signal at a time. YIN (de Cheveigné and Kawahara, 2002): per frame the cumulative-mean-normalised
difference function d'(lag) over lags of ``f0_max`` .. ``f0_min``; the pitch period is the first local
minimum of d' under ``threshold`` (the global minimum when there is none), refined by a parabola through
its neighbours. A frame is voiced when that minimum is under ``voicing_threshold`` and the frame is no
more than 40 dB below the loudest frame of its item (and above -70 dBFS).
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor


@torch.no_grad()
def track_pitch(wave: Tensor, sample_rate: int, hop: int, f0_min: float = 50.0, f0_max: float = 500.0,
                threshold: float = 0.15, voicing_threshold: float = 0.4) -> tuple[Tensor, Tensor, Tensor]:
    """wave (B, T) -> (f0 (B, F) Hz, voiced (B, F) bool, complete (F,) bool), F = T // hop + 1.

    Frame i sums over the L samples centred on sample ``i * hop``, L = ceil(sample_rate / f0_min) (the
    longest period), against the same samples up to L later; the signal is zero-padded at both ends and
    ``complete`` marks the frames that reach no padding at the end.
    """
    if wave.dim() != 2:
        raise ValueError(f"track_pitch: expected (batch, samples), got shape {tuple(wave.shape)}")
    b, t = wave.shape
    lag_max = math.ceil(sample_rate / f0_min)
    lag_min = max(2, math.floor(sample_rate / f0_max))
    win = 2 * lag_max
    lead = lag_max // 2  # the summed half-window [c - L/2, c + L/2) is centred on the frame's centre c
    x = F.pad(wave.float(), (lead, win - lead + hop))
    frames = x.unfold(1, win, hop)[:, : t // hop + 1]  # (B, F, 2L)
    frames = frames - frames.mean(-1, keepdim=True)
    n_fft = 2 * win
    head = frames[..., :lag_max]
    # r(lag) = sum_j x_j x_{j+lag} over the first L samples; d(lag) = E(0) + E(lag) - 2 r(lag)
    r = torch.fft.irfft(torch.fft.rfft(head, n_fft).conj() * torch.fft.rfft(frames, n_fft), n_fft)[..., :lag_max]
    sq = F.pad(frames.square().cumsum(-1), (1, 0))
    energy = sq[..., lag_max:2 * lag_max] - sq[..., :lag_max]  # E(lag) = sum_{j=lag}^{lag+L-1} x_j^2
    d = (energy[..., :1] + energy - 2 * r).clamp_min(0.0)
    lags = torch.arange(lag_max, device=wave.device, dtype=d.dtype)
    cmnd = d * lags / d.cumsum(-1).clamp_min(1e-12)
    cmnd[..., 0] = 1.0
    seg = cmnd[..., lag_min - 1 : lag_max]  # lags lag_min - 1 .. lag_max - 1 (one neighbour on the left)
    mid = seg[..., 1:-1]
    local_min = (mid <= seg[..., :-2]) & (mid <= seg[..., 2:])
    cand = local_min & (mid < threshold)
    first = cand.float().argmax(-1)
    best = torch.where(cand.any(-1), first, mid.argmin(-1))  # index into mid: lag = lag_min + best
    lo, c, hi = (seg.gather(-1, (best + o)[..., None])[..., 0] for o in (0, 1, 2))
    curv = lo - 2 * c + hi
    shift = torch.where(curv > 1e-9, 0.5 * (lo - hi) / curv.clamp_min(1e-9), torch.zeros_like(c)).clamp(-1, 1)
    period = (lag_min + best).to(d.dtype) + shift
    f0 = (sample_rate / period).clamp(f0_min, f0_max)
    level = 10 * torch.log10(energy[..., 0] / lag_max + 1e-12)  # dBFS of the summed half-window
    loud = (level > level.amax(1, keepdim=True) - 40.0) & (level > -70.0)
    voiced = (c < voicing_threshold) & loud
    complete = torch.arange(f0.shape[1], device=wave.device) * hop + (win - lead) <= t
    return f0, voiced, complete


@torch.no_grad()
def harmonic_amplitudes(wave: Tensor, f0: Tensor, sample_rate: int, hop: int, harmonics: int,
                        win: int = 1024, oversample: int = 4, search: int = 1) -> Tensor:
    """Amplitudes of the harmonics of a given pitch, measured in the waveform: wave (B, T), f0 (B, F) Hz ->
    (B, F, harmonics) linear amplitudes (a sinusoid of amplitude a gives a).

    Frame i is a Hann window of ``win`` samples centred on sample ``i * hop`` (zero-padded at both ends, as
    in :func:`track_pitch`). Harmonic k's amplitude is the spectrum's peak within ``search`` bins of the
    window (``search * sample_rate / win`` Hz) of ``k * f0``, read off a spectrum ``oversample`` times finer
    than the window's bins, so a pitch a little off still finds its harmonics' peaks.
    """
    b, t = wave.shape
    n_frames = f0.shape[1]
    x = F.pad(wave.float(), (win // 2, win // 2 + max(0, (n_frames - 1) * hop - t + 1)))
    frames = x.unfold(1, win, hop)[:, :n_frames]  # (B, F, win)
    window = torch.hann_window(win, periodic=False, device=wave.device)
    n_fft = oversample * win
    mag = torch.fft.rfft(frames * window, n_fft).abs() * (2.0 / window.sum())  # (B, F, n_fft / 2 + 1)
    k = torch.arange(1, harmonics + 1, device=wave.device, dtype=f0.dtype)
    centre = (f0[..., None] * k * (n_fft / sample_rate)).round().long()  # (B, F, K) bins
    offsets = torch.arange(-search * oversample, search * oversample + 1, device=wave.device)
    bins = (centre[..., None] + offsets).clamp(0, n_fft // 2)  # (B, F, K, S)
    return mag.gather(2, bins.flatten(2)).view(bins.shape).amax(-1)


def harmonics_to_bands(log_amps: Tensor, f0: Tensor, bands: int, fmax: float) -> Tensor:
    """Log amplitudes at the harmonics of a pitch, (B, F, K) at ``k * f0`` (B, F) Hz, read at ``bands``
    points evenly spaced over 0..``fmax`` Hz (linear between harmonics; the first harmonic's value below
    it, the last one's above) -> (B, F, bands): a fixed frequency grid whatever the pitch."""
    k = log_amps.shape[-1]
    band_hz = torch.linspace(0.0, fmax, bands, device=log_amps.device, dtype=f0.dtype)
    pos = (band_hz / f0[..., None] - 1.0).clamp(0.0, k - 1)  # (B, F, bands) in harmonic indices (0 = k=1)
    i0 = pos.floor().clamp(max=max(k - 2, 0))
    w = (pos - i0).to(log_amps.dtype)
    i0 = i0.long()
    i1 = (i0 + 1).clamp(max=k - 1)
    return torch.lerp(log_amps.gather(2, i0), log_amps.gather(2, i1), w)


def envelope_shapes(pred: Tensor, ref: Tensor, f0: Tensor, voiced: Tensor, bands: int, fmax: float
                    ) -> tuple[Tensor, Tensor]:
    """What the envelope discriminator compares: predicted and measured log amplitudes at the same
    harmonics (B, F, K), each on the fixed band grid (:func:`harmonics_to_bands`), less its mean over the
    bands (the shape, not the level), zero on unvoiced frames (``voiced`` (B, F) bool) -> two (B, F, bands)."""
    out = []
    for la in (pred, ref):
        img = harmonics_to_bands(la, f0, bands, fmax)
        img = img - img.mean(-1, keepdim=True)
        out.append(img * voiced[..., None])
    return out[0], out[1]


def pitch_losses(params: dict[str, Tensor], target: Tensor, sample_rate: int, hop: int, f0_min: float,
                 f0_max: float, envelope_at: Callable[[Tensor, Tensor], Tensor] | None = None,
                 fmax: float | None = None, floor_db: float = 50.0, shapes: int = 0) -> dict[str, Tensor]:
    """The harmonic source's per-frame pitch and voicing (``HarmonicSource`` params, (B, N)) against the
    target waveform's (B, >= N * hop) tracked pitch.

    Frame n's values are reached at its last sample, ``(n + 1) * hop``: the tracker frame centred there is
    its target. Returns ``f0`` (mean |log2 ratio| over voiced frames, octaves), ``voicing`` (binary
    cross-entropy of the voicing logits), ``gross`` (share of voiced frames off by more than 20 %, no
    gradient) and ``voiced`` (share of voiced frames, no gradient). With ``envelope_at`` (the source's
    :meth:`~codec.harmonic.HarmonicSource.envelope_at`) and ``fmax`` also ``envelope``: the mean |log
    amplitude error| (nats) of the predicted envelope read at the target's harmonics below ``fmax`` on its
    voiced frames, against the amplitudes measured there (:func:`harmonic_amplitudes`; each frame's floored
    ``floor_db`` below its strongest harmonic, so the noise between formants counts as that, not as zero).
    With ``shapes`` (a band count) too, ``shape_pred`` and ``shape_ref`` (B, n, shapes): both envelopes'
    shapes on voiced frames (:func:`envelope_shapes`, the prediction floored like the measurement),
    ``shape_voiced`` (B, n) and, without gradient, ``spread`` and ``spread_ref``: their standard deviation
    over frequency (nats, mean over voiced frames; a regression-smoothed envelope's is the smaller).
    """
    f0_track, voiced_ref, complete = track_pitch(target, sample_rate, hop, f0_min, f0_max)
    n = min(params["f0"].shape[1], f0_track.shape[1] - 1)
    f0, logits = params["f0"][:, :n], params["voicing"][:, :n]
    f0_ref, voiced_ref = f0_track[:, 1 : n + 1], voiced_ref[:, 1 : n + 1]
    keep = complete[1 : n + 1].expand_as(voiced_ref)
    voiced = voiced_ref & keep
    err = (torch.log2(f0) - torch.log2(f0_ref)).abs()
    count = voiced.sum().clamp_min(1)
    f0_loss = (err * voiced).sum() / count
    bce = F.binary_cross_entropy_with_logits(logits[keep], voiced_ref[keep].float()) if keep.any() else logits.sum() * 0
    gross = ((err > math.log2(1.2)) & voiced).sum() / count
    out = {"f0": f0_loss, "voicing": bce, "gross": gross.detach(), "voiced": voiced.float().mean().detach()}
    if envelope_at is not None and fmax is not None:
        harmonics = max(1, int(fmax / f0_min))
        amps = harmonic_amplitudes(target, f0_track[:, : n + 1], sample_rate, hop, harmonics)[:, 1:]  # (B, n, K)
        freqs = f0_ref[..., None] * torch.arange(1, harmonics + 1, device=target.device, dtype=f0_ref.dtype)
        floor = amps.amax(-1, keepdim=True) * 10 ** (-floor_db / 20)
        ref = torch.log(torch.maximum(amps, floor).clamp_min(1e-7))
        pred = envelope_at(params["envelope"][:, :n], freqs)
        mask = (freqs < fmax) & voiced[..., None]
        out["envelope"] = ((pred - ref).abs() * mask).sum() / mask.sum().clamp_min(1)
        if shapes:
            floor_nats = floor_db * math.log(10) / 20
            pred_f = torch.maximum(pred, pred.amax(-1, keepdim=True).detach() - floor_nats)
            sp, sr = envelope_shapes(pred_f, ref, f0_ref, voiced, shapes, fmax)
            out.update(shape_pred=sp, shape_ref=sr, shape_voiced=voiced)
            with torch.no_grad():
                for key, img in (("spread", sp), ("spread_ref", sr)):
                    out[key] = (img.std(-1) * voiced).sum() / count
    return out
