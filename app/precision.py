"""Which precision a model runs in (light: no torch import, for the CLI's argument parsers)."""

from __future__ import annotations

#: ``auto`` (see :func:`resolve_mode`), then codec.fastpath's modes
MODES = ("auto", "fp32", "bf16", "int8")
MODE_HELP = ("model precision: auto = int8 for the embedded model (same measured quality, faster), fp32 for "
             "others; fp32 = exact; bf16 / int8 = faster, slightly different tokens (see focalchat bench)")


def resolve_mode(spec: str, mode: str = "auto") -> str:
    """The precision a model runs in: ``auto`` is int8 for the embedded default (its streaming step ~25 %
    faster than fp32 on one thread, with the same measured quality: ``focalchat eval --mode``) and fp32
    (exact, what the conformance vectors check) for any other model; other modes as given."""
    if mode not in MODES:
        raise ValueError(f"unknown model precision {mode!r}: one of {', '.join(MODES)}")
    if mode != "auto":
        return mode
    from app.modelref import default_model_available

    return "int8" if spec == "default" and default_model_available() else "fp32"
