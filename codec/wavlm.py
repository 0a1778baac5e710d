"""Causal WavLM-style encoder: 16 kHz signal (B, T) -> features (B, N, dim) at 50 Hz.

CNN feature extractor (left-only padding, replicate at stream start) -> LayerNorm -> projection ->
convolutional positional embedding -> pre-LN transformer layers with WavLM's gated relative
position bias and sliding-window chunked attention (``window_size`` frames, ``lookahead_size``
frames of lookahead inside chunks of ``1 + lookahead_size`` frames).

Streaming state (:class:`WavLMState`) holds the CNN and positional-conv left contexts and, per
layer, the keys/values of the last ``window_size - chunk_frames`` frames; it never grows.

Activations are time-major (B, T, C) throughout, the convolutions included (``channels_last``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .config import WavLMConfig
from .layers import Conv1d, Derived, FeedForward, gelu_, layer_norm, linear
from .melfront import LogMelFrontEnd
from .stream import History, with_left_context

# Relative position biases of at most this many elements (heads x queries x keys) are kept per shape.
_BIAS_CACHE_MAX = 1 << 16


@dataclass
class WavLMState:
    """Per-stream encoder state. ``num_frames`` = frames produced so far (absolute position)."""

    num_frames: int = 0
    cnn_ctx: list[History | None] = field(default_factory=list)  # (B, K - 1, C) per layer
    pos_ctx: History | None = None  # (B, K - 1, C)
    kv: list[tuple[History, History]] = field(default_factory=list)  # per layer: keys, values (B, H, P, Dh)


class ConvLayer(nn.Module):
    """Conv1d (no bias) -> LayerNorm over channels -> GELU; time-major (B, T, Cin) -> (B, n, Cout)."""

    def __init__(self, cin: int, cout: int, kernel: int, stride: int) -> None:
        super().__init__()
        self.conv = Conv1d(cin, cout, kernel, stride=stride, bias=False, channels_last=True)
        self.norm = nn.LayerNorm(cout)

    def forward(self, x: Tensor) -> Tensor:
        return gelu_(layer_norm(self.norm, self.conv(x)))


class FeatureExtractor(nn.Module):
    def __init__(self, cfg: WavLMConfig) -> None:
        super().__init__()
        chans = [1, *cfg.hidden_dims]
        self.kernels = list(cfg.kernel_sizes)
        self.causal = cfg.causal
        self.layers = nn.ModuleList(
            ConvLayer(chans[i], chans[i + 1], k, s) for i, (k, s) in enumerate(zip(cfg.kernel_sizes, cfg.strides))
        )

    def forward(self, sig: Tensor, ctx: list[History | None] | None) -> tuple[Tensor, list[History | None]]:
        """sig (B, T) samples -> (B, N, C) frames; ``ctx`` = per-layer left contexts (None at start)."""
        x = sig.unsqueeze(-1)
        new_ctx: list[History | None] = []
        for i, layer in enumerate(self.layers):
            if self.causal:
                x, c = with_left_context(x, ctx[i] if ctx else None, self.kernels[i] - 1, dim=1)
                new_ctx.append(c)
            x = layer(x)
        return x, new_ctx


class PositionalConv(nn.Module):
    """Grouped convolution over time -> GELU, added to the input by the caller."""

    def __init__(self, dim: int, kernel: int, groups: int, causal: bool) -> None:
        super().__init__()
        self.kernel = kernel
        self.causal = causal
        self.conv = Conv1d(dim, dim, kernel, groups=groups, padding=0 if causal else kernel // 2,
                           channels_last=True)

    def forward(self, x: Tensor, ctx: History | None) -> tuple[Tensor, History | None]:
        """x (B, N, C) -> (B, N, C)."""
        if self.causal:
            x, ctx = with_left_context(x, ctx, self.kernel - 1, dim=1)
            return gelu_(self.conv(x)), ctx
        y = self.conv(x)
        if self.kernel % 2 == 0:
            y = y[:, :-1]
        return gelu_(y), None


class GatedRelPosAttention(nn.Module):
    """Multi-head attention with WavLM's gated relative position bias."""

    def __init__(self, dim: int, num_heads: int) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.qkv_proj = nn.Linear(dim, 3 * dim)
        self.out_proj = nn.Linear(dim, dim)
        self.gru_rel_pos_linear = nn.Linear(self.head_dim, 8)
        self.gru_rel_pos_const = nn.Parameter(torch.ones(1, num_heads, 1, 1))

    def reset_parameters(self) -> None:
        nn.init.ones_(self.gru_rel_pos_const)

    def forward(self, x: Tensor, bias: Tensor, mask: Tensor | None, kv: tuple[History, History] | None) -> Tensor:
        """x (B, n, C); bias (H, n, P + n) relative bias; mask (n, P + n) additive window mask (0 where a
        query may attend, -inf elsewhere) or None (attend everywhere); ``kv`` = key/value histories
        holding the P past frames (appended to in place), None for full context.

        Returns the output (B, n, C).
        """
        b, n, c = x.shape
        h, dh = self.num_heads, self.head_dim
        q, k, v = linear(self.qkv_proj, x).view(b, n, 3, h, dh).permute(2, 0, 3, 1, 4)
        if kv is not None:
            k, v = kv[0].extend(k), kv[1].extend(v)
        # per head, from its slice of x: (B, n, H, 8) -> (B, n, H, 2) -> (B, H, n, 2)
        gate_a, gate_b = torch.sigmoid(
            linear(self.gru_rel_pos_linear, x.view(b, n, h, dh)).view(b, n, h, 2, 4).sum(-1)
        ).transpose(1, 2).chunk(2, dim=-1)
        gate = gate_a * (gate_b * self.gru_rel_pos_const - 1.0) + 2.0  # (B, H, n, 1)
        attn_bias = gate * bias
        if mask is not None:
            attn_bias = attn_bias + mask
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_bias)
        y = y.transpose(1, 2).reshape(b, n, c)
        return linear(self.out_proj, y)


class TransformerLayer(nn.Module):
    def __init__(self, cfg: WavLMConfig) -> None:
        super().__init__()
        self.attention_norm = nn.LayerNorm(cfg.dim)
        self.attention = GatedRelPosAttention(cfg.dim, cfg.num_heads)
        self.feed_forward_norm = nn.LayerNorm(cfg.dim)
        self.feed_forward = FeedForward(cfg.dim, cfg.ffn_dim)

    def forward(self, x: Tensor, bias: Tensor, mask: Tensor | None, kv: tuple[History, History] | None) -> Tensor:
        x = x + self.attention(layer_norm(self.attention_norm, x), bias, mask, kv)
        return x + self.feed_forward(layer_norm(self.feed_forward_norm, x))


def relative_position_bucket(rel: Tensor, num_buckets: int, max_distance: int) -> Tensor:
    """WavLM bidirectional buckets of relative positions ``key - query`` (int64), computed in float32."""
    half = num_buckets // 2
    buckets = (rel > 0).long() * half
    rel = rel.abs()
    max_exact = half // 2
    is_small = rel < max_exact
    large = max_exact + (
        torch.log(rel.float() / max_exact) / math.log(max_distance / max_exact) * (half - max_exact)
    ).long()
    large = torch.clamp(large, max=half - 1)
    return buckets + torch.where(is_small, rel, large)


@dataclass
class _Positions:
    """What the attention of one query/key layout needs besides the weights: relative position buckets
    (n, P + n) int64, the window mask (n, P + n) bool or None when every query sees every key, its
    additive form per (dtype, device), and the relative bias (H, n, P + n) of one weight version."""

    buckets: Tensor
    mask: Tensor | None
    masks: dict[tuple, Tensor] = field(default_factory=dict)
    bias: Derived = field(default_factory=Derived)

    def additive_mask(self, dtype: torch.dtype, device) -> Tensor | None:
        """0 where a query may attend, -inf elsewhere (n, P + n); None when nothing is masked."""
        if self.mask is None:
            return None
        m = self.masks.get((dtype, device))
        if m is None:
            with torch.inference_mode(False), torch.no_grad():  # plain tensor: usable when training too
                m = torch.zeros(self.mask.shape, dtype=dtype, device=device)
                m.masked_fill_(~self.mask.to(device), float("-inf"))
            self.masks[(dtype, device)] = m
        return m


class TransformerEncoder(nn.Module):
    def __init__(self, cfg: WavLMConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.positional_embedding = PositionalConv(cfg.dim, cfg.conv_pos, cfg.conv_pos_groups, cfg.causal)
        self.relative_embedding = nn.Embedding(cfg.num_buckets, cfg.num_heads)
        self.layers = nn.ModuleList(TransformerLayer(cfg) for _ in range(cfg.num_layers))
        # per (query phase in its chunk, past frames, new frames); shapes only, never per-stream state
        self._bucket_memo: dict[tuple[int, int, int], _Positions] = {}

    def _positions(self, start: int, past: int, n: int) -> _Positions:
        """Buckets and window mask for queries at absolute frames ``start .. start + n - 1`` attending
        keys at ``start - past .. start + n - 1`` (computed once per layout)."""
        cfg = self.cfg
        # the mask depends on the query phase inside its chunk, hence on start mod chunk
        key = (start % cfg.chunk_frames if cfg.causal else 0, past, n)
        memo = self._bucket_memo.get(key)
        if memo is None:
            with torch.inference_mode(False), torch.no_grad():  # plain tensors: usable when training too
                q = torch.arange(past, past + n)
                kpos = torch.arange(past + n)
                buckets = relative_position_bucket(kpos[None, :] - q[:, None], cfg.num_buckets, cfg.max_distance)
                mask = None
                if cfg.causal:
                    c = cfg.chunk_frames
                    qa = q + (start - past)  # absolute query frame
                    end = torch.clamp((qa // c + 1) * c, max=start + n) - (start - past)
                    mask = (kpos[None, :] < end[:, None]) & (kpos[None, :] >= end[:, None] - cfg.window_size)
                    if bool(mask.all()):  # e.g. every steady-state streaming step: nothing to mask
                        mask = None
            memo = _Positions(buckets, mask)
            if len(self._bucket_memo) > 64:
                self._bucket_memo.clear()
            self._bucket_memo[key] = memo
        return memo

    def _bias_and_mask(self, start: int, past: int, n: int, device) -> tuple[Tensor, Tensor | None]:
        """Relative bias (H, n, past + n) and additive window mask (n, past + n) (0 / -inf) or None
        for queries at absolute frames ``start .. start + n - 1`` attending keys at
        ``start - past .. start + n - 1``.

        Outside training the bias is kept per layout and weight version (a gather from the embedding
        table: a step then only scales it by its gates); the mask is None when every query sees every
        key (any steady-state streaming step)."""
        pos = self._positions(start, past, n)
        emb = self.relative_embedding
        w = emb.weight
        mask = pos.additive_mask(w.dtype, device)

        def gather(w: Tensor) -> Tensor:
            return F.embedding(pos.buckets.to(device), w).permute(2, 0, 1).contiguous()

        if pos.buckets.numel() * w.shape[1] > _BIAS_CACHE_MAX:  # long one-shot inputs: not kept
            return gather(w), mask
        return pos.bias.get(w, gather), mask

    def forward(self, x: Tensor, state: WavLMState) -> tuple[Tensor, WavLMState]:
        """x (B, n, C) projected CNN features -> (B, n, C); ``state`` supplies positions and caches."""
        cfg = self.cfg
        n = x.shape[1]
        pos, pos_ctx = self.positional_embedding(x, state.pos_ctx)
        x = x + pos
        kv = state.kv
        if cfg.causal and not kv:
            keep = cfg.window_size - cfg.chunk_frames  # past frames any query of a chunk may see
            kv = [(History(keep, 2, pad=None), History(keep, 2, pad=None)) for _ in self.layers]
        past = kv[0][0].length if kv else 0
        bias, mask = self._bias_and_mask(state.num_frames, past, n, x.device)
        for i, layer in enumerate(self.layers):
            x = layer(x, bias, mask, kv[i] if kv else None)
        return x, WavLMState(state.num_frames + n, state.cnn_ctx, pos_ctx, kv)


class WavLM(nn.Module):
    """Signal (B, T) at 16 kHz -> features (B, ceil(T / downsample_factor), dim) (320 samples: 50 Hz).

    ``cfg.frontend`` "conv" is WavLM's CNN + LayerNorm; "logmel" is :class:`codec.melfront.LogMelFrontEnd`
    (no norm: it keeps the input level)."""

    def __init__(self, cfg: WavLMConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.norm: nn.LayerNorm | None
        if cfg.frontend == "logmel":
            self.feature_extractor: nn.Module = LogMelFrontEnd(cfg)
            self.norm = None
        else:
            self.feature_extractor = FeatureExtractor(cfg)
            self.norm = nn.LayerNorm(cfg.hidden_dims[-1])
        self.feature_proj = nn.Linear(cfg.frontend_dim, cfg.dim)
        self.encoder = TransformerEncoder(cfg)

    def forward(self, sig: Tensor, state: WavLMState | None = None) -> tuple[Tensor, WavLMState]:
        state = state or WavLMState()
        if self.norm is None:  # log-mel: one history (the last window's samples)
            x, ctx = self.feature_extractor(sig, state.cnn_ctx[0] if state.cnn_ctx else None)
            cnn_ctx = [ctx]
        else:
            x, cnn_ctx = self.feature_extractor(sig, state.cnn_ctx)
            x = layer_norm(self.norm, x)
        x = linear(self.feature_proj, x)
        x, new = self.encoder(x, state)
        new.cnn_ctx = cnn_ctx
        return x, new
