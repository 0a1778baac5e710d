"""Focal modulation: the compressor (FocalEncoder), the decompressor (FocalDecoder) and the chunk refiner.

Tensors are channels-last (B, N, C) between blocks. In causal mode every depthwise convolution sees
only past frames; its left context (``kernel - 1`` frames, replicate-padded at stream start) is the
per-stream state. The "global" context of a causal block is a depthwise convolution spanning
``window_size`` frames instead of the full-context model's average over the whole utterance.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .config import FocalDecoderConfig, FocalEncoderConfig
from .layers import Conv1d, ConvTranspose1d, FeedForward
from .stream import with_left_context

# Per-block state: one left context per focal level plus one for the global conv.
FocalBlockState = list[Tensor | None]


class DynamicTanh(nn.Module):
    """tanh(alpha * x) with a single learned scalar alpha (no affine)."""

    def __init__(self, alpha: float) -> None:
        super().__init__()
        self.init = float(alpha)
        self.alpha = nn.Parameter(torch.full((1,), self.init))

    def reset_parameters(self) -> None:
        nn.init.constant_(self.alpha, self.init)

    def forward(self, x: Tensor) -> Tensor:
        return torch.tanh(self.alpha * x)


class Snake1d(nn.Module):
    """x + sin^2(alpha x) / alpha with per-channel alpha; input (B, C, T)."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.alpha = nn.Parameter(torch.ones(channels, 1))

    def reset_parameters(self) -> None:
        nn.init.ones_(self.alpha)

    def forward(self, x: Tensor) -> Tensor:
        return x + (self.alpha + 1e-9).reciprocal() * torch.sin(self.alpha * x).pow(2)


class FocalModulation(nn.Module):
    """Hierarchical depthwise contexts gated per level, modulating a query projection."""

    def __init__(self, dim: int, focal_window: int, focal_level: int, focal_factor: int, causal: bool,
                 window_size: int, normalize_modulator: bool) -> None:
        super().__init__()
        self.dim = dim
        self.focal_level = focal_level
        self.causal = causal
        self.normalize_modulator = normalize_modulator
        self.in_proj = nn.Linear(dim, 2 * dim + focal_level + 1)
        self.kernels = [focal_factor * k + focal_window for k in range(focal_level)]
        if causal:
            self.kernels.append(window_size)
        self.layers = nn.ModuleList(
            nn.Sequential(Conv1d(dim, dim, k, groups=dim), nn.GELU())
            for k in self.kernels
        )
        self.context_proj = Conv1d(dim, dim, 1)
        self.out_proj = nn.Linear(dim, dim)

    def forward(self, x: Tensor, state: FocalBlockState | None) -> tuple[Tensor, FocalBlockState]:
        """x (B, N, C) -> (B, N, C)."""
        c, lvl = self.dim, self.focal_level
        q, z, gates = self.in_proj(x).split([c, c, lvl + 1], dim=-1)
        z = z.transpose(1, 2)
        gates = gates.transpose(1, 2)
        new_state: FocalBlockState = []
        ctx_all = 0
        for k in range(lvl):
            if self.causal:
                z, s = with_left_context(z, state[k] if state else None, self.kernels[k] - 1)
                new_state.append(s)
                z = self.layers[k](z)
            else:  # "same" padding; an even kernel pads one frame more on the right
                k_ = self.kernels[k]
                z = self.layers[k](F.pad(z, ((k_ - 1) // 2, k_ // 2)))
            ctx_all = ctx_all + z * gates[:, k : k + 1]
        if self.causal:
            zg, s = with_left_context(z, state[lvl] if state else None, self.kernels[lvl] - 1)
            new_state.append(s)
            glob = self.layers[lvl](zg)
        else:
            glob = F.gelu(z.mean(dim=-1, keepdim=True))
        ctx_all = ctx_all + glob * gates[:, lvl:]
        if self.normalize_modulator:
            ctx_all = ctx_all / (lvl + 1)
        modulator = self.context_proj(ctx_all).transpose(1, 2)
        return self.out_proj(q * modulator), new_state


class FocalBlock(nn.Module):
    """Pre-norm residual block: focal modulation then feed-forward (4x)."""

    def __init__(self, dim: int, cfg: FocalEncoderConfig | FocalDecoderConfig, window_size: int) -> None:
        super().__init__()

        def norm() -> nn.Module:
            return DynamicTanh(cfg.tanhscale_init) if cfg.causal else nn.LayerNorm(dim)

        self.use_post_norm = cfg.use_post_norm
        self.modulation_norm = norm()
        self.modulation = FocalModulation(dim, cfg.focal_window, cfg.focal_level, cfg.focal_factor, cfg.causal,
                                          window_size, cfg.normalize_modulator)
        self.feed_forward_norm = norm()
        self.feed_forward = FeedForward(dim, 4 * dim)
        self.layerscale_init = cfg.layerscale_init
        if cfg.use_layerscale:
            self.gamma_1 = nn.Parameter(torch.full((dim,), cfg.layerscale_init))
            self.gamma_2 = nn.Parameter(torch.full((dim,), cfg.layerscale_init))
        else:
            self.gamma_1 = self.gamma_2 = None

    def reset_parameters(self) -> None:
        for g in (self.gamma_1, self.gamma_2):
            if g is not None:
                nn.init.constant_(g, self.layerscale_init)

    def forward(self, x: Tensor, state: FocalBlockState | None) -> tuple[Tensor, FocalBlockState]:
        if self.use_post_norm:
            y, state = self.modulation(x, state)
            y = self.modulation_norm(y)
        else:
            y, state = self.modulation(self.modulation_norm(x), state)
        x = x + (y if self.gamma_1 is None else self.gamma_1 * y)
        y = self.feed_forward_norm(self.feed_forward(x)) if self.use_post_norm else \
            self.feed_forward(self.feed_forward_norm(x))
        x = x + (y if self.gamma_2 is None else self.gamma_2 * y)
        return x, state


class DownScale(nn.Module):
    """Conv1d(kernel = stride = factor) -> Snake; (B, Cin, N) -> (B, Cout, N / factor)."""

    def __init__(self, cin: int, cout: int, factor: int) -> None:
        super().__init__()
        self.downscale = Conv1d(cin, cout, factor, stride=factor)
        self.activation = Snake1d(cout)

    def forward(self, x: Tensor) -> Tensor:
        return self.activation(self.downscale(x))


class UpScale(nn.Module):
    """Snake -> ConvTranspose1d(kernel = stride = factor); (B, Cin, N) -> (B, Cout, N * factor)."""

    def __init__(self, cin: int, cout: int, factor: int) -> None:
        super().__init__()
        self.activation = Snake1d(cin)
        self.upscale = ConvTranspose1d(cin, cout, factor, stride=factor)

    def forward(self, x: Tensor) -> Tensor:
        return self.upscale(self.activation(x))


class FocalDownScale(nn.Module):
    def __init__(self, cin: int, cout: int, factor: int, cfg: FocalEncoderConfig) -> None:
        super().__init__()
        self.downscale = DownScale(cin, cout, factor)
        self.focal_block = FocalBlock(cout, cfg, cfg.window_size)

    def forward(self, x: Tensor, state: FocalBlockState | None) -> tuple[Tensor, FocalBlockState]:
        x = self.downscale(x.transpose(1, 2)).transpose(1, 2)
        return self.focal_block(x, state)


class FocalUpScale(nn.Module):
    def __init__(self, cin: int, cout: int, factor: int, cfg: FocalDecoderConfig, window_size: int) -> None:
        super().__init__()
        self.focal_block = FocalBlock(cin, cfg, window_size)
        self.upscale = UpScale(cin, cout, factor)

    def forward(self, x: Tensor, state: FocalBlockState | None) -> tuple[Tensor, FocalBlockState]:
        x, state = self.focal_block(x, state)
        return self.upscale(x.transpose(1, 2)).transpose(1, 2), state


class FocalEncoder(nn.Module):
    """Compressor: features (B, N, input_dim) -> latents (B, N / prod(factors), output_dim), not normalised."""

    def __init__(self, cfg: FocalEncoderConfig) -> None:
        super().__init__()
        self.cfg = cfg
        dims = [cfg.input_dim, *cfg.hidden_dims]
        self.layers = nn.ModuleList(
            FocalDownScale(dims[i], dims[i + 1], f, cfg) for i, f in enumerate(cfg.downscale_factors)
        )
        self.out_proj = nn.Linear(dims[-1], cfg.output_dim)

    def forward(self, x: Tensor, state: list[FocalBlockState] | None = None) -> tuple[Tensor, list[FocalBlockState]]:
        new = []
        for i, layer in enumerate(self.layers):
            x, s = layer(x, state[i] if state else None)
            new.append(s)
        return self.out_proj(x), new


class ChunkFeedForward(nn.Module):
    """Refiner: residual MLP over non-overlapping chunks of ``chunk`` frames flattened to chunk*C.

    Chunks are aligned to the first frame of the call; a trailing partial chunk is zero-padded
    and trimmed. Stateless across calls when every streaming call holds whole chunks.
    """

    def __init__(self, dim: int, chunk: int) -> None:
        super().__init__()
        self.chunk = chunk
        self.in_proj = nn.Linear(dim * chunk, dim * chunk)
        self.out_proj = nn.Linear(dim * chunk, dim * chunk)

    def forward(self, x: Tensor) -> Tensor:
        b, n, c = x.shape
        pad = -n % self.chunk
        if pad:
            x = F.pad(x, (0, 0, 0, pad))
        y = x.reshape(b, -1, self.chunk * c)
        y = y + self.out_proj(F.gelu(self.in_proj(y)))
        return y.reshape(b, n + pad, c)[:, :n]


class FocalDecoder(nn.Module):
    """Decompressor: codes (B, N, input_dim) -> features (B, N * prod(factors), output_dim)."""

    def __init__(self, cfg: FocalDecoderConfig) -> None:
        super().__init__()
        self.cfg = cfg
        dims = [*cfg.hidden_dims, cfg.output_dim]
        self.in_proj = nn.Linear(cfg.input_dim, dims[0])
        n = len(cfg.upscale_factors)
        self.layers = nn.ModuleList(
            FocalUpScale(dims[i], dims[i + 1], f, cfg, cfg.last_window_size if i == n - 1 else cfg.window_size)
            for i, f in enumerate(cfg.upscale_factors)
        )
        self.refiner = ChunkFeedForward(cfg.output_dim, cfg.lookahead_size + 1) if cfg.has_refiner else None

    def forward(self, x: Tensor, state: list[FocalBlockState] | None = None) -> tuple[Tensor, list[FocalBlockState]]:
        x = self.in_proj(x)
        new = []
        for i, layer in enumerate(self.layers):
            x, s = layer(x, state[i] if state else None)
            new.append(s)
        if self.refiner is not None:
            x = self.refiner(x)
        return x, new
