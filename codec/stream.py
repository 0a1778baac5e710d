"""Helpers for causal convolutions with explicit left context.

Every causal module keeps, per convolution, the last ``kernel - 1`` input frames of the stream
(channels-first, shape ``(B, C, kernel - 1)``). A context of ``None`` means "start of stream": it is
filled by replicating the first frame (``"replicate"``) or with zeros (``"zeros"``).
"""

from __future__ import annotations

import torch
from torch import Tensor


def with_left_context(x: Tensor, ctx: Tensor | None, size: int, pad: str = "replicate") -> tuple[Tensor, Tensor | None]:
    """Prepend ``size`` frames of left context to ``x`` (B, C, T).

    Returns the extended input (B, C, size + T) and the context for the next call
    (the last ``size`` frames of it), or ``None`` when ``size == 0``.
    """
    if size == 0:
        return x, None
    if ctx is None:
        if pad == "replicate":
            ctx = x[..., :1].expand(-1, -1, size)
        else:
            ctx = x.new_zeros(x.shape[0], x.shape[1], size)
    xx = torch.cat([ctx, x], dim=-1)
    return xx, xx[..., -size:]
