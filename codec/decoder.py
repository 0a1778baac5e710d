"""Waveform decoders: causal WaveNeXt (streaming checkpoints, 24 kHz) and full-context Vocos (16 kHz).

Both take features (B, N, input_dim) and run a ConvNeXt backbone, time-major (B, N, C) throughout.
WaveNeXt's linear head maps each frame to ``hop_length`` samples (no overlap-add), so streaming
only carries the convolutions' left contexts (``kernel - 1`` frames, zeros at stream start). Its
causal overlap-add head (``head = "istft"``) also carries the tail of the last sub-frames, and its optional
harmonic source (``source = "harmonic"``, :mod:`codec.harmonic`) its phase and last frame's pitch.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .config import VocosConfig, WaveNeXtConfig
from .harmonic import HarmonicSource
from .layers import Conv1d, gelu_, layer_norm, linear
from .stream import History, with_left_context


class ConvNeXtBlock(nn.Module):
    def __init__(self, dim: int, ffn_dim: int, kernel: int, layerscale: float, causal: bool) -> None:
        super().__init__()
        self.kernel = kernel
        self.causal = causal
        self.dwconv = Conv1d(dim, dim, kernel, groups=dim, padding=0 if causal else kernel // 2, channels_last=True)
        self.norm = nn.LayerNorm(dim, eps=1e-6)
        self.pwconv1 = nn.Linear(dim, ffn_dim)
        self.pwconv2 = nn.Linear(ffn_dim, dim)
        self.layerscale = layerscale
        self.gamma = nn.Parameter(torch.full((dim,), layerscale))

    def reset_parameters(self) -> None:
        """Initialise this module's own parameter (the layer scale)."""
        nn.init.constant_(self.gamma, self.layerscale)

    def forward(self, x: Tensor, ctx: History | None) -> tuple[Tensor, History | None]:
        """x (B, N, C) -> (B, N, C); ``ctx`` = left context (B, K - 1, C) (None at stream start)."""
        y = x
        if self.causal:
            y, ctx = with_left_context(y, ctx, self.kernel - 1, pad="zeros", dim=1)
        y = linear(self.pwconv2, gelu_(linear(self.pwconv1, layer_norm(self.norm, self.dwconv(y)))))
        return torch.addcmul(x, self.gamma, y), ctx


class Backbone(nn.Module):
    def __init__(self, cfg: WaveNeXtConfig | VocosConfig) -> None:
        super().__init__()
        self.kernel = cfg.kernel_size
        self.causal = cfg.causal
        scale = cfg.layerscale_init if cfg.layerscale_init is not None else 1.0 / cfg.num_layers
        self.embedding = Conv1d(cfg.input_dim, cfg.dim, cfg.kernel_size,
                                padding=0 if cfg.causal else cfg.kernel_size // 2, channels_last=True)
        self.input_norm = nn.LayerNorm(cfg.dim, eps=1e-6)
        self.layers = nn.ModuleList(
            ConvNeXtBlock(cfg.dim, cfg.ffn_dim, cfg.kernel_size, scale, cfg.causal) for _ in range(cfg.num_layers)
        )
        self.output_norm = nn.LayerNorm(cfg.dim, eps=1e-6)

    def forward(self, x: Tensor, state: list[History | None] | None) -> tuple[Tensor, list[History | None]]:
        """x (B, N, Cin) -> (B, N, dim); ``state`` = left contexts of the embedding and each block."""
        new: list[History | None] = []
        if self.causal:
            x, c = with_left_context(x, state[0] if state else None, self.kernel - 1, pad="zeros", dim=1)
            new.append(c)
        x = layer_norm(self.input_norm, self.embedding(x))
        for i, layer in enumerate(self.layers):
            x, c = layer(x, state[i + 1] if state else None)
            new.append(c)
        return layer_norm(self.output_norm, x), new


class LinearHead(nn.Module):
    """Linear(dim -> hop) per frame, frames concatenated: (B, N, dim) -> (B, N * hop)."""

    def __init__(self, dim: int, hop: int) -> None:
        super().__init__()
        self.proj = nn.Linear(dim, hop)

    def forward(self, x: Tensor) -> Tensor:
        return linear(self.proj, x).flatten(1)

    @torch.no_grad()
    def scale_output(self, gain: float) -> None:
        """Multiply every output sample by ``gain`` (exact: the head is linear)."""
        self.proj.weight.mul_(gain)
        self.proj.bias.mul_(gain)


class OverlapAddHead(nn.Module):
    """Causal iSTFT head: (B, N, dim) -> (B, N * hop) with a tail carried between calls.

    Each frame gives ``hop / sub_hop`` sub-frames (log-magnitude and phase of ``n_fft // 2 + 1`` bins);
    sub-frame j is Hann-windowed and added at samples ``[j * sub_hop, j * sub_hop + n_fft)``. Output
    up to the end of frame n thus depends on frames <= n only (no lookahead, no added delay); the
    ``n_fft - sub_hop`` samples that reach past the last frame are the streaming state (B, n_fft / sub_hop - 1,
    sub_hop). Frames overlap-add smoothly, so nothing marks the frame grid. The spectra and the
    overlap-add run in float32 whatever the compute dtype.
    """

    def __init__(self, dim: int, hop: int, sub_hop: int, n_fft: int) -> None:
        super().__init__()
        self.sub = hop // sub_hop  # sub-frames per frame
        self.overlap = n_fft // sub_hop  # sub-frames adding up at every sample
        self.sub_hop = sub_hop
        self.n_fft = n_fft
        self.bins = n_fft // 2 + 1
        self.proj = nn.Linear(dim, self.sub * 2 * self.bins)
        self._windows: dict[torch.device, Tensor] = {}  # made on first use: the module has no buffers to load

    def _window(self, device: torch.device) -> Tensor:
        w = self._windows.get(device)
        if w is None:
            with torch.inference_mode(False), torch.no_grad():
                w = torch.hann_window(self.n_fft, periodic=True, device=device)
                w = (w * (self.sub_hop / w.sum())).reshape(self.overlap, self.sub_hop)  # overlap-adds to 1
            self._windows[device] = w
        return w

    @torch.no_grad()
    def scale_output(self, gain: float) -> None:
        """Multiply every output sample by ``gain`` (the log-magnitudes' biases move by log(gain); exact
        below the magnitude clamp)."""
        self.proj.bias.view(self.sub, 2, self.bins)[:, 0].add_(math.log(gain))

    def forward(self, x: Tensor, tail: Tensor | None, gain: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """x (B, N, dim) -> (samples (B, N * hop) float32, new tail); ``tail`` = the previous call's (None at
        stream start); ``gain`` (B, N, 1 or bins): a per-frame factor on the frame's sub-frame spectra (the
        overlap-add crossfades it between frames)."""
        b, n, _ = x.shape
        m = n * self.sub
        logmag, phase = linear(self.proj, x).float().reshape(b, m, 2, self.bins).unbind(2)
        mag = logmag.clamp(max=8.0).exp()
        if gain is not None:  # the frame's factor on each of its sub-frames (broadcast, no copy of it per sub-frame)
            mag = (mag.view(b, n, self.sub, self.bins) * gain.float()[:, :, None]).view(b, m, self.bins)
        spec = torch.polar(mag, phase)
        frames = torch.fft.irfft(spec, self.n_fft, dim=-1).reshape(b, m, self.overlap, self.sub_hop)
        frames.mul_(self._window(x.device))  # in place: irfft's backward does not need its output
        out = frames.new_zeros(b, m + self.overlap - 1, self.sub_hop)
        for k in range(self.overlap):  # sub-frame j's k-th part lands at sub-hop j + k
            out[:, k:k + m] += frames[:, :, k]
        if tail is not None:
            out[:, :self.overlap - 1] += tail
        return out[:, :m].reshape(b, m * self.sub_hop), out[:, m:]


class WaveNeXt(nn.Module):
    def __init__(self, cfg: WaveNeXtConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.backbone = Backbone(cfg)
        self.contexts = cfg.num_layers + 1 if cfg.causal else 0  # state entries of the backbone
        self.overlap_add = cfg.head == "istft"
        if self.overlap_add:
            self.head: nn.Module = OverlapAddHead(cfg.dim, cfg.hop_length, cfg.head_hop, cfg.head_fft)
        else:
            self.head = LinearHead(cfg.dim, cfg.hop_length)
        self.source: HarmonicSource | None = None
        self.voiced_gain: float | None = None  # head_voiced_gain, None when the head is never scaled
        if cfg.source == "harmonic":
            self.source = HarmonicSource(cfg.dim, cfg.hop_length, cfg.sample_rate, cfg.source_harmonics,
                                         cfg.source_bands, cfg.source_f0_min, cfg.source_f0_max, cfg.source_fmax,
                                         cfg.source_postfilter, cfg.source_voiced_fmax)
            if cfg.head_voiced_gain < 1.0:
                self.voiced_gain = cfg.head_voiced_gain

    @torch.no_grad()
    def scale_output(self, gain: float) -> None:
        """Multiply every output sample by ``gain`` (head and source)."""
        self.head.scale_output(gain)
        if self.source is not None:
            self.source.scale_output(gain)

    def synthesize(self, x: Tensor, state: list | None = None) -> tuple[Tensor, list, dict[str, Tensor] | None]:
        """Features (B, N, C) -> (waveform (B, N * hop) clamped to [-1, 1], new state, the harmonic source's
        per-frame pitch, voicing logits and envelope or None). ``state`` = the backbone's left contexts, then the
        overlap-add tail (istft head), then the source's state (harmonic source)."""
        extra = state[self.contexts:] if state else None
        h, new = self.backbone(x, state[: self.contexts] if state else None)
        params = s = src = gain = None
        if self.source is not None:
            s, src, params = self.source(h, extra[-1] if extra else None)
            if self.voiced_gain is not None:  # a hard switch: a soft gain the head would learn to make up for
                on = self._voiced_gains(h.device) if self.cfg.head_voiced_above else self.voiced_gain
                gain = torch.where((params["voicing"].detach() > 0)[..., None], on, 1.0)  # (B, N, 1 or bins)
        if self.overlap_add:
            y, tail = self.head(h, extra[0] if extra else None, gain)
            new.append(tail)
        else:
            y = self.head(h)
        if s is not None:
            y = y + s
            new.append(src)
        return y.clamp(-1.0, 1.0), new, params

    def _voiced_gains(self, device: torch.device) -> Tensor:
        """The head's per-bin factor in voiced frames: (bins,) = head_voiced_gain below head_voiced_above Hz, 1 above."""
        cfg = self.cfg
        freqs = torch.arange(cfg.head_fft // 2 + 1, device=device) * (cfg.sample_rate / cfg.head_fft)
        return torch.where(freqs < cfg.head_voiced_above, cfg.head_voiced_gain, 1.0)

    def forward(self, x: Tensor, state: list | None = None) -> tuple[Tensor, list]:
        """Features (B, N, C) -> (waveform (B, N * hop) clamped to [-1, 1], new state); see :meth:`synthesize`."""
        y, new, _ = self.synthesize(x, state)
        return y, new


class ISTFTHead(nn.Module):
    """Linear -> log-magnitude and phase -> inverse STFT with "same" padding: (B, N, dim) -> (B, N * hop)."""

    def __init__(self, dim: int, n_fft: int, hop: int) -> None:
        super().__init__()
        self.n_fft = n_fft
        self.hop = hop
        self.proj = nn.Linear(dim, n_fft + 2)
        window = torch.hann_window(n_fft, device="cpu")
        self.register_buffer("window", window, persistent=False)

    def forward(self, x: Tensor) -> Tensor:
        mag, phase = self.proj(x).transpose(1, 2).chunk(2, dim=1)
        mag = torch.exp(mag).clamp(max=1e2)
        spec = torch.polar(mag, phase)  # (B, F, N)
        frames = torch.fft.irfft(spec, self.n_fft, dim=1, norm="backward") * self.window[None, :, None]
        n = frames.shape[-1]
        out_len = (n - 1) * self.hop + self.n_fft
        y = F.fold(frames, (1, out_len), (1, self.n_fft), stride=(1, self.hop))[:, 0, 0]
        env = F.fold(self.window.square().expand(1, n, -1).transpose(1, 2), (1, out_len), (1, self.n_fft),
                     stride=(1, self.hop)).squeeze()
        pad = (self.n_fft - self.hop) // 2
        y, env = y[:, pad:out_len - pad], env[pad:out_len - pad]
        return y / env.clamp(min=1e-11)


class Vocos(nn.Module):
    def __init__(self, cfg: VocosConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.backbone = Backbone(cfg)
        self.head = ISTFTHead(cfg.dim, cfg.n_fft, cfg.hop_length)

    def forward(self, x: Tensor, state: list[Tensor | None] | None = None) -> tuple[Tensor, list[Tensor | None]]:
        if state:
            raise ValueError("Vocos is a full-context decoder: it cannot stream")
        x, _ = self.backbone(x, None)
        return self.head(x), []
