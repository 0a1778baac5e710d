"""Left contexts of causal layers, kept in preallocated sliding buffers.

Every causal convolution needs the last ``kernel - 1`` input frames of its stream, and every
attention layer the keys/values of the last ``window - chunk`` frames. :class:`History` holds those
frames in a buffer with spare room after them: appending ``n`` new frames writes only those frames,
and ``[history; new]`` is returned as one contiguous view, so no step copies the whole context
(the history is moved back to the front once every ``spare / n`` steps). The views a step needs
(where the new frames go, what it returns) recur with the buffer position and are kept.

A history belongs to one stream and is updated in place: a step hands its state over to the next
step (``copy.deepcopy`` a state to branch a stream).
"""

from __future__ import annotations

import torch
from torch import Tensor

# Spare frames after the history: the history is compacted once per SPARE / n appends of n frames.
SPARE = 64
# Buffer views kept per history (one pair per (start, length, n) position; steady steps cycle
# through about SPARE / n + 1 of them).
MAX_VIEWS = 2 * SPARE


class History:
    """The last ``size`` frames of a stream along ``dim``.

    ``pad`` says how missing frames at stream start are filled: ``"replicate"`` (the first frame),
    ``"zeros"``, or ``None`` (not filled: the history grows up to ``size`` frames, for KV caches).
    """

    def __init__(self, size: int, dim: int, pad: str | None = "replicate") -> None:
        self.size = size
        self.dim = dim
        self.pad = pad
        self.buf: Tensor | None = None
        self.start = 0  # buffer index of the first kept frame
        self.length = 0  # kept frames (== size once full, or from the start when padded)
        self._views: dict[tuple[int, int, int], tuple[Tensor, Tensor]] = {}  # (start, length, n) -> (slot, view)
        self._shape: tuple[int, ...] | None = None  # shape and dtype of the last frames appended
        self._dtype: torch.dtype | None = None

    def _init(self, x: Tensor) -> None:
        n = x.shape[self.dim]
        shape = list(x.shape)
        shape[self.dim] = self.size + max(n, SPARE)
        self.buf = x.new_empty(shape)
        self._views = {}
        if self.pad is not None and self.size:
            head = self.buf.narrow(self.dim, 0, self.size)
            if self.pad == "replicate":
                head.copy_(x.narrow(self.dim, 0, 1).expand_as(head))
            else:
                head.zero_()
            self.length = self.size

    def _accept(self, x: Tensor) -> None:
        """First frames: make the buffer; later: frames of another shape/dtype than the buffer's fail."""
        if self.buf is None:
            self._init(x)
        else:
            d = self.dim % x.dim()
            b = self.buf
            if (b.dtype != x.dtype or b.dim() != x.dim() or b.shape[:d] != x.shape[:d]
                    or b.shape[d + 1:] != x.shape[d + 1:]):
                raise ValueError(f"stream shape/dtype changed mid-stream: history {tuple(b.shape)} {b.dtype}, "
                                 f"new frames {tuple(x.shape)} {x.dtype}; start a new stream state")
        self._shape, self._dtype = x.shape, x.dtype

    def _make_room(self, n: int) -> None:
        """Move the kept frames to the front of the buffer (reallocated for a step that needs more
        room than it has, or much less after a big step)."""
        buf, d = self.buf, self.dim
        cap = buf.shape[d]
        keep = buf.narrow(d, self.start, self.length)
        want = self.size + max(n, SPARE)
        if self.length + n > cap or cap > 2 * want:  # grow for a bigger step, shrink after one
            shape = list(buf.shape)
            shape[d] = want
            new = buf.new_empty(shape)
            new.narrow(d, 0, self.length).copy_(keep)
            self.buf = new
            self._views = {}
        else:
            buf.narrow(d, 0, self.length).copy_(keep.clone())
        self.start = 0

    def extend(self, x: Tensor) -> Tensor:
        """Append ``x`` (n frames along ``dim``); returns the view ``[history; x]`` (length + n frames)."""
        if x.shape != self._shape or x.dtype != self._dtype:
            self._accept(x)
        n = x.shape[self.dim]
        if self.start + self.length + n > self.buf.shape[self.dim]:
            self._make_room(n)
        start, length = self.start, self.length
        views = self._views.get((start, length, n))
        if views is None:
            if len(self._views) >= MAX_VIEWS:
                self._views.clear()
            d = self.dim
            views = self._views[(start, length, n)] = (self.buf.narrow(d, start + length, n),
                                                       self.buf.narrow(d, start, length + n))
        views[0].copy_(x)
        total = length + n
        kept = min(total, self.size)
        self.start = start + total - kept
        self.length = kept
        return views[1]

    def frames(self) -> Tensor | None:
        """The kept frames (a view), or None before the first append."""
        return None if self.buf is None else self.buf.narrow(self.dim, self.start, self.length)


def with_left_context(x: Tensor, ctx: History | None, size: int, pad: str = "replicate",
                      dim: int = -1) -> tuple[Tensor, History | None]:
    """Prepend ``size`` frames of left context to ``x`` along its time axis ``dim``.

    ``x`` is (B, C, T) with ``dim=-1``, or time-major (B, T, C) with ``dim=1``. ``ctx`` is the
    stream's history (None at stream start: a new one is made, padded with ``pad``). Returns the
    extended input (size + T frames) and the history to pass to the next call.
    """
    if size == 0:
        return x, None
    if ctx is None:
        ctx = History(size, dim=dim, pad=pad)
    return ctx.extend(x), ctx
