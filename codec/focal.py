"""Focal modulation: the compressor (FocalEncoder), the decompressor (FocalDecoder) and the chunk refiner.

Tensors are channels-last (B, N, C) throughout, the convolutions included. In causal mode every
depthwise convolution sees only past frames; its left context (``kernel - 1`` frames,
replicate-padded at stream start, a :class:`codec.stream.History` along time) is the per-stream
state. The "global" context of a causal block is a depthwise convolution spanning ``window_size``
frames instead of the full-context model's average over the whole utterance.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .config import FocalDecoderConfig, FocalEncoderConfig
from .layers import Conv1d, ConvTranspose1d, FeedForward, derived, gelu_, layer_norm, linear, plain
from .stream import History, with_left_context

# Per-block state: one left context (B, K - 1, C) per focal level plus one for the global conv.
FocalBlockState = list[History | None]


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
    """x + sin^2(alpha x) / alpha with per-channel alpha; input (B, T, C) (``channels_last``) or (B, C, T)."""

    def __init__(self, channels: int, channels_last: bool = False) -> None:
        super().__init__()
        self.channels_last = channels_last
        self.alpha = nn.Parameter(torch.ones(channels, 1))

    def reset_parameters(self) -> None:
        nn.init.ones_(self.alpha)

    def forward(self, x: Tensor) -> Tensor:
        alpha, inv = derived(self, "alpha", self.alpha, self._alpha_and_inverse)
        return torch.addcmul(x, inv, torch.sin(alpha * x).square())

    def _alpha_and_inverse(self, alpha: Tensor) -> tuple[Tensor, Tensor]:
        """alpha and 1 / (alpha + 1e-9), shaped for this module's layout ((C,) time-major, else (C, 1))."""
        a = alpha.view(-1) if self.channels_last else alpha
        return a, (a + 1e-9).reciprocal()


def _norm(mod: nn.Module, x: Tensor) -> Tensor:
    """``mod(x)`` for a block's norm (:class:`DynamicTanh` or ``nn.LayerNorm``), without the module call."""
    if plain(mod, DynamicTanh):
        return torch.tanh(mod._parameters["alpha"] * x)
    return layer_norm(mod, x)


class DepthwiseGELU(nn.Sequential):
    """Depthwise Conv1d over time (time-major) -> GELU; an ``nn.Sequential`` for the published
    state-dict keys (``<k>.0.weight``)."""

    def __init__(self, dim: int, kernel: int) -> None:
        super().__init__(Conv1d(dim, dim, kernel, groups=dim, channels_last=True), nn.GELU())

    def forward(self, x: Tensor) -> Tensor:
        """x (B, T, C) -> (B, T - kernel + 1, C)."""
        return gelu_(self._modules["0"](x))


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
        self.layers = nn.ModuleList(DepthwiseGELU(dim, k) for k in self.kernels)
        self.context_proj = Conv1d(dim, dim, 1, channels_last=True)
        self.out_proj = nn.Linear(dim, dim)

    def forward(self, x: Tensor, state: FocalBlockState | None) -> tuple[Tensor, FocalBlockState]:
        """x (B, N, C) -> (B, N, C)."""
        c, lvl = self.dim, self.focal_level
        q, z, *gates = linear(self.in_proj, x).split([c, c] + [1] * (lvl + 1), dim=-1)  # gates (B, N, 1)
        layers = list(self.layers)
        new_state: FocalBlockState = []
        ctx_all = None
        for k in range(lvl):
            if self.causal:
                z, s = with_left_context(z, state[k] if state else None, self.kernels[k] - 1, dim=1)
                new_state.append(s)
            else:  # "same" padding; an even kernel pads one frame more on the right
                k_ = self.kernels[k]
                z = F.pad(z, (0, 0, (k_ - 1) // 2, k_ // 2))
            z = layers[k](z)
            ctx_all = z * gates[k] if ctx_all is None else torch.addcmul(ctx_all, z, gates[k])
        if self.causal:
            zg, s = with_left_context(z, state[lvl] if state else None, self.kernels[lvl] - 1, dim=1)
            new_state.append(s)
            glob = layers[lvl](zg)
        else:
            glob = gelu_(z.mean(dim=1, keepdim=True))
        ctx_all = glob * gates[lvl] if ctx_all is None else torch.addcmul(ctx_all, glob, gates[lvl])
        if self.normalize_modulator:
            ctx_all = ctx_all / (lvl + 1)
        return linear(self.out_proj, q * self.context_proj(ctx_all)), new_state


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
        """x (B, N, C) -> (B, N, C)."""
        if self.use_post_norm:
            y, state = self.modulation(x, state)
            y = _norm(self.modulation_norm, y)
        else:
            y, state = self.modulation(_norm(self.modulation_norm, x), state)
        g1, g2 = self.gamma_1, self.gamma_2
        x = x + y if g1 is None else torch.addcmul(x, g1, y)
        y = _norm(self.feed_forward_norm, self.feed_forward(x)) if self.use_post_norm else \
            self.feed_forward(_norm(self.feed_forward_norm, x))
        x = x + y if g2 is None else torch.addcmul(x, g2, y)
        return x, state


class DownScale(nn.Module):
    """Conv1d(kernel = stride = factor) -> Snake; (B, N, Cin) -> (B, N / factor, Cout)."""

    def __init__(self, cin: int, cout: int, factor: int) -> None:
        super().__init__()
        self.downscale = Conv1d(cin, cout, factor, stride=factor, channels_last=True)
        self.activation = Snake1d(cout, channels_last=True)

    def forward(self, x: Tensor) -> Tensor:
        return self.activation(self.downscale(x))


class UpScale(nn.Module):
    """Snake -> ConvTranspose1d(kernel = stride = factor); (B, N, Cin) -> (B, N * factor, Cout)."""

    def __init__(self, cin: int, cout: int, factor: int) -> None:
        super().__init__()
        self.activation = Snake1d(cin, channels_last=True)
        self.upscale = ConvTranspose1d(cin, cout, factor, stride=factor, channels_last=True)

    def forward(self, x: Tensor) -> Tensor:
        return self.upscale(self.activation(x))


class FocalDownScale(nn.Module):
    def __init__(self, cin: int, cout: int, factor: int, cfg: FocalEncoderConfig) -> None:
        super().__init__()
        self.downscale = DownScale(cin, cout, factor)
        self.focal_block = FocalBlock(cout, cfg, cfg.window_size)

    def forward(self, x: Tensor, state: FocalBlockState | None) -> tuple[Tensor, FocalBlockState]:
        return self.focal_block(self.downscale(x), state)


class FocalUpScale(nn.Module):
    def __init__(self, cin: int, cout: int, factor: int, cfg: FocalDecoderConfig, window_size: int) -> None:
        super().__init__()
        self.focal_block = FocalBlock(cin, cfg, window_size)
        self.upscale = UpScale(cin, cout, factor)

    def forward(self, x: Tensor, state: FocalBlockState | None) -> tuple[Tensor, FocalBlockState]:
        x, state = self.focal_block(x, state)
        return self.upscale(x), state


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
        return linear(self.out_proj, x), new


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
        y = y + linear(self.out_proj, gelu_(linear(self.in_proj, y)))
        y = y.reshape(b, n + pad, c)
        return y[:, :n] if pad else y


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
        x = linear(self.in_proj, x)
        new = []
        for i, layer in enumerate(self.layers):
            x, s = layer(x, state[i] if state else None)
            new.append(s)
        if self.refiner is not None:
            x = self.refiner(x)
        return x, new
