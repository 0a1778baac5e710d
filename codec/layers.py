"""Convolutions that run streaming-size inputs as matrix products.

A streaming step feeds each layer only a few frames (4 per 80 ms), so every layer is a weight-bound
matrix-vector product. These subclasses keep the parameters (and state-dict keys) of the torch
modules they extend, but compute short inputs with one matmul, where torch's convolution kernels are
several times slower on such shapes. Each can also hold an int8 copy of its weight (``qlinear``,
set by :mod:`codec.fastpath`), used instead of the float weight.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

# Outputs up to which a convolution with kernel > 1 runs as unfold + matmul (the unfolded input
# grows as frames x kernel x channels; longer one-shot inputs use torch's convolution).
MATMUL_MAX_FRAMES = 64


class FeedForward(nn.Module):
    """Linear(dim -> ffn_dim) -> GELU -> Linear(ffn_dim -> dim), over the last axis."""

    def __init__(self, dim: int, ffn_dim: int) -> None:
        super().__init__()
        self.in_proj = nn.Linear(dim, ffn_dim)
        self.out_proj = nn.Linear(ffn_dim, dim)

    def forward(self, x: Tensor) -> Tensor:
        return self.out_proj(F.gelu(self.in_proj(x)))


def _unfold_cl(x: Tensor, kernel: int, stride: int) -> Tensor:
    """(B, C, T) -> (B, n, C * kernel): the receptive field of each output, channel-major like conv weights."""
    b, c, _ = x.shape
    u = x.unfold(-1, kernel, stride)  # (B, C, n, K)
    return u.permute(0, 2, 1, 3).reshape(b, u.shape[2], c * kernel)


class Conv1d(nn.Conv1d):
    """nn.Conv1d; short unpadded inputs run as one matmul (grouped: one per group; depthwise: multiply-add)."""

    # Optional int8 weights, registered as submodules by codec.fastpath:
    #   qlinear: dense convs, (n, Cin * K) -> (n, Cout); qgroups: grouped convs, one per group.

    @property
    def qlinear(self) -> nn.Module | None:
        return self._modules.get("qlinear")

    @property
    def qgroups(self) -> nn.ModuleList | None:
        return self._modules.get("qgroups")  # type: ignore[return-value]

    def _fast_ok(self, n_out: int) -> bool:
        if self.padding != (0,) or self.dilation != (1,) or self.padding_mode != "zeros":
            return False
        if self.qlinear is not None or self.qgroups is not None:
            return True
        return self.kernel_size[0] == 1 or n_out <= MATMUL_MAX_FRAMES

    def forward(self, x: Tensor) -> Tensor:
        k, s = self.kernel_size[0], self.stride[0]
        n_out = (x.shape[-1] - k) // s + 1
        if n_out <= 0 or not self._fast_ok(n_out) or self.weight.requires_grad and torch.is_grad_enabled():
            return super().forward(x)
        b, cin = x.shape[0], x.shape[1]
        cout, g = self.out_channels, self.groups
        if g == 1:
            xu = x.transpose(1, 2) if k == 1 and s == 1 else _unfold_cl(x, k, s)
            if self.qlinear is not None:
                y = self.qlinear(xu)
            else:
                y = F.linear(xu, self.weight.view(cout, cin * k), self.bias)
            return y.transpose(1, 2)
        if g == cin == cout:  # depthwise: batched dot products for short kernels, torch's kernel for long ones
            if k > 64:  # long kernels (the focal "global" context): one multiply-add per output frame
                if n_out > 8:
                    return super().forward(x)
                w = self.weight.view(cout, k)
                xc = x.contiguous()
                y = torch.stack([(xc[..., j * s : j * s + k] * w).sum(-1) for j in range(n_out)], -1)
                return y if self.bias is None else y + self.bias[:, None]
            y = torch.matmul(x.unfold(-1, k, s), self.weight.view(cout, k, 1)).squeeze(-1)
            return y if self.bias is None else y + self.bias[:, None]
        cg, og = cin // g, cout // g  # grouped: one matmul per group, batched
        u = x.unfold(-1, k, s).reshape(b, g, cg, n_out, k).permute(0, 1, 3, 2, 4).reshape(b, g, n_out, cg * k)
        if self.qgroups is not None:
            y = torch.stack([q(u[:, i]) for i, q in enumerate(self.qgroups)], 1)  # (B, G, n, og)
        else:
            y = torch.matmul(u, self.weight.view(g, og, cg * k).transpose(1, 2))
            if self.bias is not None:
                y = y + self.bias.view(g, 1, og)
        return y.permute(0, 1, 3, 2).reshape(b, cout, n_out)

    def linear_weight(self) -> Tensor:
        """The dense weight as a (Cout, Cin * K) matrix (groups == 1)."""
        return self.weight.detach().reshape(self.out_channels, -1)


class ConvTranspose1d(nn.ConvTranspose1d):
    """nn.ConvTranspose1d; with kernel == stride (no overlap) it is one matmul and a reshape."""

    @property
    def qlinear(self) -> nn.Module | None:
        """Optional int8 weight (registered by codec.fastpath): (n, Cin) -> (n, Cout * K), bias added after."""
        return self._modules.get("qlinear")

    def forward(self, x: Tensor, output_size: list[int] | None = None) -> Tensor:  # type: ignore[override]
        k, s = self.kernel_size[0], self.stride[0]
        if (k != s or self.padding != (0,) or self.output_padding != (0,) or self.groups != 1
                or self.dilation != (1,) or output_size is not None
                or self.weight.requires_grad and torch.is_grad_enabled()):
            return super().forward(x, output_size)
        b, cin, n = x.shape
        cout = self.out_channels
        xt = x.transpose(1, 2)
        y = self.qlinear(xt) if self.qlinear is not None else torch.matmul(xt, self.weight.view(cin, cout * k))
        y = y.view(b, n, cout, k).permute(0, 2, 1, 3).reshape(b, cout, n * k)
        return y if self.bias is None else y + self.bias[:, None]

    def linear_weight(self) -> Tensor:
        """The weight as a (Cout * K, Cin) matrix."""
        cin = self.in_channels
        return self.weight.detach().reshape(cin, -1).t().contiguous()
