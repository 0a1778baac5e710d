"""Convolutions that run streaming-size inputs as matrix products, and small shared layers.

A streaming step feeds each layer only a few frames (4 per 80 ms), so every layer is a weight-bound
matrix-vector product. These subclasses keep the parameters (and state-dict keys) of the torch
modules they extend, but compute short inputs with one matmul, where torch's convolution kernels are
several times slower on such shapes. Each can also hold an int8 copy of its weight (``qlinear``,
set by :mod:`codec.fastpath`), used instead of the float weight.

With ``channels_last=True`` a convolution takes and returns time-major tensors (B, T, C) instead of
(B, C, T): the codec keeps its activations time-major, so that layer norms, linear layers and the
convolutions' left contexts (:class:`codec.stream.History` along time) need no transposes or copies.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

# Outputs up to which a convolution with kernel > 1 runs as unfold + matmul (the unfolded input
# grows as frames x kernel x channels; longer one-shot inputs use torch's convolution) ...
MATMUL_MAX_FRAMES = 64
# ... or, for more frames, while the unfolded input stays this small (elements): the first layers of
# the CNN feature extractor see hundreds of frames per streaming step, but few channels.
MATMUL_MAX_UNFOLD = 1 << 16
# Depthwise kernels longer than this (the focal "global" context) run as one multiply-add over all
# (output frame, tap) pairs up to LONG_KERNEL_MAX_FRAMES outputs (more: torch's convolution).
LONG_KERNEL = 64
LONG_KERNEL_MAX_FRAMES = 8


def gelu(x: Tensor) -> Tensor:
    """Exact (erf) GELU, computed by ATen's vectorised kernel.

    ATen hands contiguous float tensors to oneDNN, whose per-call setup (~5 us) costs more than the
    whole activation of a streaming step; a transposed view of the same memory takes ATen's own
    kernel, and the result is transposed back (the output keeps the input's memory layout, so it is
    contiguous again). Same values up to float rounding (1 ulp) as ``F.gelu``.
    """
    if x.dim() >= 2 and x.shape[-1] > 1 and x.shape[-2] > 1:
        return F.gelu(x.transpose(-1, -2)).transpose(-1, -2)
    return F.gelu(x)


# the in-place GELU op (torch._C._nn.gelu_ is its binding without a Python-level dispatch frame)
_gelu_inplace = getattr(torch._C._nn, "gelu_", None) or torch.ops.aten.gelu_.default


def gelu_(x: Tensor) -> Tensor:
    """:func:`gelu` of a temporary ``x`` (an intermediate result nothing else holds), computed in place
    when autograd does not record; returns ``x`` then (else a new tensor)."""
    if torch.is_grad_enabled() and x.requires_grad:
        return gelu(x)
    if x.is_contiguous() and x.dim() >= 2 and x.shape[-1] > 1 and x.shape[-2] > 1:
        _gelu_inplace(x.transpose(-1, -2))  # ATen's kernel on a non-contiguous view, see gelu
    else:
        _gelu_inplace(x)
    return x


class Derived:
    """Tensors computed from a weight (``fn(src)``: a tensor or a tuple of them), kept until the weight changes.

    Such a value depends on weights only, never on a stream. It is recomputed when ``src`` is replaced
    or updated in place (its storage, version counter, shape or dtype differ); the entry holds a view
    of the storage it was made from, so that no other tensor can take that address meanwhile. While
    autograd records through ``src``, and for inference tensors (no version counter), ``fn(src)`` is
    computed on every call.
    """

    __slots__ = ("entry",)

    def __init__(self) -> None:
        # (view of the source storage, source tag, value), replaced as a whole (safe for concurrent readers)
        self.entry: tuple[Tensor, tuple, Any] | None = None

    def get(self, src: Tensor, fn: Callable[[Tensor], Any]) -> Any:
        if src.is_inference() or src.requires_grad and torch.is_grad_enabled():
            return fn(src)
        tag = (src.data_ptr(), src._version, src.shape, src.stride(), src.dtype, src.device)
        entry = self.entry
        if entry is None or entry[1] != tag:
            with torch.inference_mode(False), torch.no_grad():  # a plain tensor: usable in any mode
                entry = self.entry = (src.detach(), tag, fn(src.detach()))
        return entry[2]


def derived(module: nn.Module, key: Hashable, src: Tensor, fn: Callable[[Tensor], Any]) -> Any:
    """``fn(src)`` for a weight ``src`` of ``module``, kept on the module under ``key`` (see :class:`Derived`)."""
    slots: dict = module.__dict__.setdefault("_derived", {})
    slot = slots.get(key)
    if slot is None:
        slot = slots[key] = Derived()
    return slot.get(src, fn)


def plain(mod: nn.Module, cls: type) -> bool:
    """``mod`` is exactly ``cls`` (not an int8 replacement or a parametrised subclass) and has no hooks."""
    return type(mod) is cls and not (mod._forward_hooks or mod._forward_pre_hooks)


# torch's dynamic int8 linear op, resolved once (the quantised Linear module's forward finds it anew per call)
_LINEAR_DYNAMIC = torch.ops.quantized.linear_dynamic.default


def linear(mod: nn.Module, x: Tensor) -> Tensor:
    """``mod(x)`` for a linear layer, without the module-call machinery for a plain ``nn.Linear`` or an
    int8 one (:mod:`codec.fastpath` sets ``int8_packed`` on those).

    A module call and its two attribute look-ups cost ~3 us, as much as the matrix product of a
    streaming step, and the quantised Linear's forward another ~10 us of look-ups and checks around its
    op; a module with hooks (profiling) is called.
    """
    if mod._forward_hooks or mod._forward_pre_hooks:  # see plain()
        return mod(x)
    if type(mod) is nn.Linear:
        p = mod._parameters
        return F.linear(x, p["weight"], p["bias"])
    packed = mod.__dict__.get("int8_packed")
    if packed is not None and x.dtype == torch.float32:
        return _LINEAR_DYNAMIC(x, packed, True)  # reduce_range, as the module's forward
    return mod(x)


def layer_norm(mod: nn.Module, x: Tensor) -> Tensor:
    """``mod(x)`` for an ``nn.LayerNorm``, without the module-call machinery (see :func:`linear`)."""
    if type(mod) is nn.LayerNorm and not (mod._forward_hooks or mod._forward_pre_hooks):  # see plain()
        p = mod._parameters
        return torch.layer_norm(x, mod.normalized_shape, p["weight"], p["bias"], mod.eps)
    return mod(x)


class FeedForward(nn.Module):
    """Linear(dim -> ffn_dim) -> GELU -> Linear(ffn_dim -> dim), over the last axis."""

    def __init__(self, dim: int, ffn_dim: int) -> None:
        super().__init__()
        self.in_proj = nn.Linear(dim, ffn_dim)
        self.out_proj = nn.Linear(ffn_dim, dim)

    def forward(self, x: Tensor) -> Tensor:
        return linear(self.out_proj, gelu_(linear(self.in_proj, x)))


def _unfold_cl(x: Tensor, kernel: int, stride: int) -> Tensor:
    """(B, C, T) -> (B, n, C * kernel): the receptive field of each output, channel-major like conv weights."""
    b, c, _ = x.shape
    u = x.unfold(-1, kernel, stride)  # (B, C, n, K)
    return u.permute(0, 2, 1, 3).reshape(b, u.shape[2], c * kernel)


class Conv1d(nn.Conv1d):
    """nn.Conv1d; short unpadded inputs run as one matmul (grouped: one per group; depthwise: multiply-add).

    ``channels_last=True``: input (B, T, Cin) -> output (B, n, Cout) (torch's layout is (B, C, T)).
    """

    # Optional int8 weights, registered as submodules by codec.fastpath:
    #   qlinear: dense convs, (n, Cin * K) -> (n, Cout); qgroups: grouped convs, one per group.

    def __init__(self, *args, channels_last: bool = False, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.channels_last = channels_last

    @property
    def qlinear(self) -> nn.Module | None:
        return self._modules.get("qlinear")

    @property
    def qgroups(self) -> nn.ModuleList | None:
        return self._modules.get("qgroups")  # type: ignore[return-value]

    def _fast_ok(self, n_out: int, cin: int, k: int) -> bool:
        if self.padding != (0,) or self.dilation != (1,) or self.padding_mode != "zeros":
            return False
        if self._modules:  # int8 weights (qlinear / qgroups): their products take any length
            return True
        if k > LONG_KERNEL and self.groups == cin == self.out_channels:
            return n_out <= LONG_KERNEL_MAX_FRAMES
        return k == 1 or n_out <= MATMUL_MAX_FRAMES or n_out * cin * k <= MATMUL_MAX_UNFOLD

    def forward(self, x: Tensor) -> Tensor:
        """(B, Cin, T) -> (B, Cout, n); channels_last: (B, T, Cin) -> (B, n, Cout)."""
        cl = self.channels_last
        k, s = self.kernel_size[0], self.stride[0]
        if cl:
            _, t, cin = x.shape
        else:
            _, cin, t = x.shape
        n_out = (t - k) // s + 1
        p = self._parameters
        w = p["weight"] if "weight" in p else self.weight
        if (n_out <= 0 or torch.is_grad_enabled() and w.requires_grad
                or not self._fast_ok(n_out, cin, k)):
            return super().forward(x.transpose(1, 2)).transpose(1, 2) if cl else super().forward(x)
        bias = p["bias"] if "bias" in p else self.bias
        return (self._forward_cl if cl else self._forward_cf)(x, w, bias, n_out, cin, k, s)

    def _forward_cl(self, x: Tensor, w: Tensor, bias: Tensor | None,
                    n_out: int, cin: int, k: int, s: int) -> Tensor:
        """Fast paths on time-major input x (B, T, Cin) -> (B, n_out, Cout)."""
        b = x.shape[0]
        cout, g = self.out_channels, self.groups
        if g == 1:
            # (B, n, Cin, K) -> (B, n, Cin * K): channel-major like the weight
            xu = x if k == 1 and s == 1 else x.unfold(1, k, s).reshape(b, n_out, cin * k)
            q = self._modules.get("qlinear") if self._modules else None  # int8 weight (codec.fastpath)
            if q is not None:
                return linear(q, xu)
            return F.linear(xu, derived(self, "weight_2d", w, lambda w: w.view(cout, cin * k)), bias)
        if g == cin == cout:  # depthwise: (B, n, K, C) windows (rows contiguous) . (K, C) kernel, summed over K
            wkc = derived(self, "weight_kc", w, lambda w: w.view(cout, k).t().contiguous())
            sb, st, sc = x.stride()  # the windows as one view: x.unfold(1, k, s).transpose(2, 3)
            xw = x.as_strided((b, n_out, k, cin), (sb, s * st, st, sc), x.storage_offset())
            y = torch.linalg.vecdot(xw, wkc, dim=2)
            return y if bias is None else y + bias
        cg, og = cin // g, cout // g  # grouped: one matmul per group, batched
        sb, st, sc = x.stride()  # the windows per group (B, G, n, Cg, K), then (B, G, n, Cg * K)
        u = x.as_strided((b, g, n_out, cg, k), (sb, cg * sc, s * st, sc, st), x.storage_offset())
        u = u.reshape(b, g, n_out, cg * k)
        if self.qgroups is not None:
            y = torch.stack([linear(q, u[:, i]) for i, q in enumerate(self.qgroups)], 1)  # (B, G, n, og)
        else:
            y = torch.matmul(u, derived(self, "weight_groups", w, lambda w: w.view(g, og, cg * k).transpose(1, 2)))
            if bias is not None:
                y = y + derived(self, "bias_groups", bias, lambda b: b.view(g, 1, og))
        return y.permute(0, 2, 1, 3).reshape(b, n_out, cout)

    def _forward_cf(self, x: Tensor, w: Tensor, bias: Tensor | None,
                    n_out: int, cin: int, k: int, s: int) -> Tensor:
        """Fast paths on channel-major input x (B, Cin, T) -> (B, Cout, n_out)."""
        b = x.shape[0]
        cout, g = self.out_channels, self.groups
        if g == 1:
            xu = x.transpose(1, 2) if k == 1 and s == 1 else _unfold_cl(x, k, s)
            if self.qlinear is not None:
                y = linear(self.qlinear, xu)
            else:
                y = F.linear(xu, w.view(cout, cin * k), bias)
            return y.transpose(1, 2)
        if g == cin == cout:  # depthwise: batched dot products (short kernels), a loop over outputs (long)
            if k > LONG_KERNEL:
                wk = w.view(cout, k)
                y = torch.stack([(x[..., j * s : j * s + k] * wk).sum(-1) for j in range(n_out)], -1)
                return y if bias is None else y + bias[:, None]
            y = torch.matmul(x.unfold(-1, k, s), w.view(cout, k, 1)).squeeze(-1)
            return y if bias is None else y + bias[:, None]
        cg, og = cin // g, cout // g  # grouped: one matmul per group, batched
        u = x.unfold(-1, k, s).reshape(b, g, cg, n_out, k).permute(0, 1, 3, 2, 4).reshape(b, g, n_out, cg * k)
        if self.qgroups is not None:
            y = torch.stack([linear(q, u[:, i]) for i, q in enumerate(self.qgroups)], 1)  # (B, G, n, og)
        else:
            y = torch.matmul(u, w.view(g, og, cg * k).transpose(1, 2))
            if bias is not None:
                y = y + bias.view(g, 1, og)
        return y.permute(0, 1, 3, 2).reshape(b, cout, n_out)

    def linear_weight(self) -> Tensor:
        """The dense weight as a (Cout, Cin * K) matrix (groups == 1)."""
        return self.weight.detach().reshape(self.out_channels, -1)


class ConvTranspose1d(nn.ConvTranspose1d):
    """nn.ConvTranspose1d; with kernel == stride (no overlap) it is one matmul and a reshape.

    ``channels_last=True``: input (B, n, Cin) -> output (B, n * K, Cout).
    """

    def __init__(self, *args, channels_last: bool = False, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.channels_last = channels_last

    @property
    def qlinear(self) -> nn.Module | None:
        """Optional int8 weight (registered by codec.fastpath): (n, Cin) -> (n, Cout * K), bias added after."""
        return self._modules.get("qlinear")

    def forward(self, x: Tensor, output_size: list[int] | None = None) -> Tensor:  # type: ignore[override]
        """(B, Cin, n) -> (B, Cout, n * K); channels_last: (B, n, Cin) -> (B, n * K, Cout)."""
        cl = self.channels_last
        k, s = self.kernel_size[0], self.stride[0]
        p = self._parameters
        w = p["weight"] if "weight" in p else self.weight
        if (k != s or self.padding != (0,) or self.output_padding != (0,) or self.groups != 1
                or self.dilation != (1,) or output_size is not None
                or torch.is_grad_enabled() and w.requires_grad):
            if cl:
                return super().forward(x.transpose(1, 2), output_size).transpose(1, 2)
            return super().forward(x, output_size)
        bias = p["bias"] if "bias" in p else self.bias
        cout, q = self.out_channels, self.qlinear
        if cl:
            b, n, cin = x.shape
            if q is not None:
                y = linear(q, x)
            else:
                y = torch.matmul(x, derived(self, "weight_2d", w, lambda w: w.view(cin, cout * k)))
            if k > 1:  # (B, n, Cout, K) -> (B, n, K, Cout) -> (B, n * K, Cout)
                y = y.view(b, n, cout, k).transpose(2, 3).reshape(b, n * k, cout)
            return y if bias is None else y + bias
        b, cin, n = x.shape
        xt = x.transpose(1, 2)
        y = linear(q, xt) if q is not None else torch.matmul(xt, w.view(cin, cout * k))
        y = y.view(b, n, cout, k).permute(0, 2, 1, 3).reshape(b, cout, n * k)
        return y if bias is None else y + bias[:, None]

    def linear_weight(self) -> Tensor:
        """The weight as a (Cout * K, Cin) matrix."""
        cin = self.in_channels
        return self.weight.detach().reshape(cin, -1).t().contiguous()
