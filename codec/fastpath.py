"""Fast inference modes and a memory-lean model build.

Modes (the exact ``fp32`` path is what conformance checks; the others change numbers slightly, see
``focalchat bench`` for their token agreement with fp32):

* ``fp32``: float32 weights and activations.
* ``bf16``: bfloat16 weights and activations (half the weight bytes; tokens still come from signs).
* ``int8``: every weight matrix of :data:`MIN_INT8_WEIGHTS` weights or more (linear layers, and
  convolutions that run as matrix products in a streaming step: 1x1 / kernel = stride convs,
  transposed convs, the positional and decoder-input convs) in int8 with one scale per output
  channel, activations quantised on the fly (``torch.ao`` dynamic quantisation); smaller matrices,
  small depthwise/CNN convolutions and norms stay float32, and so do grouped convolutions whose groups
  are small (below :data:`MIN_GROUP_WEIGHTS`: one int8 product per group costs more than reading
  their float weights; the small models' positional conv).

A streaming step multiplies 4 frames by every weight, so for large matrices its time is the time to
read the weights and fewer weight bytes make a step fast; for the smallest ones the fixed cost of each
product dominates (:data:`MIN_INT8_WEIGHTS`). Converted models are for inference only.

:func:`build` makes a model directly in its mode, one layer at a time, so that the process never
holds a full float32 copy (peak memory = the converted model plus one layer).
"""

from __future__ import annotations

import warnings
import zlib
from collections.abc import Callable

import torch
from torch import Tensor, nn

from .config import CodecConfig
from .layers import Conv1d, ConvTranspose1d
from .model import FocalCodec, tensor_digest, weights_fingerprint

MODES = ("fp32", "bf16", "int8")
# A grouped convolution goes int8 (one product per group) only with at least this many weights per group:
# the full model's positional conv (64 x 64 x 128 per group, 16 groups) does; the small models' (24 x 24 x 32,
# 8 groups) ran 0.3 ms slower a streaming step in int8 than in float32.
MIN_GROUP_WEIGHTS = 65536
# Smaller weight matrices stay float32: quantising the activations costs more than their whole product
# (the attention's gate projection, 8 x 48; the bottleneck's 16 x 192 and 192 x 16).
MIN_INT8_WEIGHTS = 4096


def _qlinear(weight: Tensor, bias: Tensor | None) -> nn.Module:
    """A dynamic int8 linear layer (per-output-channel scales) for ``weight`` (out, in)."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=DeprecationWarning)
        warnings.filterwarnings("ignore", category=FutureWarning)
        warnings.filterwarnings("ignore", category=UserWarning)
        from torch.ao.nn.quantized.dynamic import Linear as DynLinear
        from torch.ao.quantization import per_channel_dynamic_qconfig

        lin = nn.Linear(weight.shape[1], weight.shape[0], bias=bias is not None, device="meta")
        lin.weight = nn.Parameter(weight.float(), requires_grad=False)  # no copy for a float32 weight
        if bias is not None:
            lin.bias = nn.Parameter(bias.float(), requires_grad=False)
        lin.qconfig = per_channel_dynamic_qconfig
        q = DynLinear.from_float(lin)
    q.int8_packed = q._packed_params._packed_params  # codec.layers.linear calls the op with it directly
    return q


def _drop(module: nn.Module, name: str) -> None:
    """Free a float weight that an int8 copy replaces (keeps the attribute, empty)."""
    setattr(module, name, nn.Parameter(torch.empty(0), requires_grad=False))


def quantize_module(module: nn.Module) -> nn.Module | None:
    """int8 version of one module: a replacement for nn.Linear, or None after converting a conv in place
    (or leaving a matrix under :data:`MIN_INT8_WEIGHTS` weights float)."""
    if type(module) is nn.Linear:
        if module.weight.numel() < MIN_INT8_WEIGHTS:
            return None
        return _qlinear(module.weight.detach(), None if module.bias is None else module.bias.detach())
    if isinstance(module, Conv1d) and module.padding == (0,):
        g = module.groups
        if g == 1 and module.weight.numel() >= MIN_INT8_WEIGHTS:
            module._modules["qlinear"] = _qlinear(module.linear_weight(), module.bias)
            _drop(module, "weight")  # inputs of any length now run as (unfold +) int8 matmul
        elif 1 < g < module.in_channels and module.weight.numel() // g >= MIN_GROUP_WEIGHTS:
            og, w = module.out_channels // g, module.weight.detach()
            b = module.bias.detach() if module.bias is not None else None
            module._modules["qgroups"] = nn.ModuleList(
                _qlinear(w[i * og : (i + 1) * og].reshape(og, -1), None if b is None else b[i * og : (i + 1) * og])
                for i in range(g)
            )
            _drop(module, "weight")
    elif isinstance(module, ConvTranspose1d) and module.kernel_size == module.stride:
        module._modules["qlinear"] = _qlinear(module.linear_weight(), None)
        _drop(module, "weight")
    return None


def _replace_children(model: nn.Module, fn: Callable[[nn.Module], nn.Module | None]) -> None:
    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            new = fn(child)
            if new is not None:
                setattr(parent, name, new)


def convert(model: FocalCodec, mode: str) -> FocalCodec:
    """Convert a float32 model in place to ``mode`` (see the module docstring); returns it."""
    if mode not in MODES:
        raise ValueError(f"unknown mode {mode!r} (known: {', '.join(MODES)})")
    if model.mode != "fp32" and mode != model.mode:
        raise ValueError(f"the model is already converted to {model.mode}")
    model.eval()
    if mode == "bf16":
        model.to(torch.bfloat16)
        model.compute_dtype = torch.bfloat16
    elif mode == "int8":
        with torch.no_grad():
            _replace_children(model, quantize_module)
    model.mode = mode
    model.requires_grad_(False)
    return model


def _release_freed_memory() -> None:
    """Hand the heap freed by the build (temporary float32 layers) back to the OS (glibc only)."""
    try:
        import ctypes

        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


def _own_params(module: nn.Module) -> list[tuple[str, nn.Parameter]]:
    return [(n, p) for n, p in module.named_parameters(recurse=False) if p is not None]


def build(config: CodecConfig, mode: str = "fp32",
          weights: Callable[[str], Tensor] | None = None, seed: int | None = 0) -> FocalCodec:
    """Build a model in ``mode`` one layer at a time.

    ``weights(key)`` returns the checkpoint tensor of a state-dict key (any float dtype); without it
    the layers get their default random initialisation, seeded per layer from ``seed`` and the layer's
    name (so every mode of one seed has the same weights).
    """
    if mode not in MODES:
        raise ValueError(f"unknown mode {mode!r} (known: {', '.join(MODES)})")
    with torch.device("meta"):
        model = FocalCodec(config)
    dtype = torch.bfloat16 if mode == "bf16" else torch.float32
    # Largest layers first: the temporary float32 copy of a layer being converted then sits on top of a
    # small model, which keeps the peak low. Names only, so that replaced layers are freed.
    sizes = {name: sum(p.numel() for _, p in _own_params(mod)) for name, mod in model.named_modules()}
    names = sorted((n for n in sizes if sizes[n]), key=lambda n: -sizes[n])
    digests: dict[str, bytes] = {}
    for name in names:
        module = model.get_submodule(name)
        own = _own_params(module)
        module.to_empty(device="cpu", recurse=False)
        with torch.no_grad():
            if weights is not None:
                for pname, _ in own:
                    key = f"{name}.{pname}" if name else pname
                    src = weights(key)
                    digests[key] = tensor_digest(key, src)
                    getattr(module, pname).copy_(src)
            else:  # random init seeded per layer: the same weights in every mode and build order
                if seed is not None:
                    torch.manual_seed(seed * 1_000_003 + zlib.crc32(name.encode()))
                if hasattr(module, "reset_parameters"):
                    module.reset_parameters()
                for pname, _ in own:
                    key = f"{name}.{pname}" if name else pname
                    digests[key] = tensor_digest(key, getattr(module, pname))
            if dtype != torch.float32:
                module._apply(lambda t: t.to(dtype), recurse=False)
            if mode == "int8":  # quantise this layer now: at most one float32 layer exists at a time
                new = quantize_module(module)
                if new is not None:
                    parent, _, child = name.rpartition(".")
                    setattr(model.get_submodule(parent), child, new)
        del module, own
    for name, buf in model.named_buffers():
        if buf.is_meta:
            raise RuntimeError(f"buffer {name} was not materialised")
    model.compute_dtype = dtype
    model._fingerprint = weights_fingerprint(digests)
    _release_freed_memory()
    model.mode = mode
    model.requires_grad_(False)
    return model.eval()
