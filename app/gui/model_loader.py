"""Loading a codec model in the background (a QThread), with progress and a clear warning for the
untrained stand-in model.

The GUI never touches the model's tensors: the loader hands the finished model object to whoever runs it
(the call session's workers, the codec demo's worker). A warm-up step (one chunk encoded and decoded) runs
in the loader thread too, so the first call does not pay for it, and it gives the encode/decode time shown
next to the model.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import Any

from PySide6.QtCore import QThread, Signal

from app.gui.settings import PUBLISHED_KBPS

log = logging.getLogger(__name__)

#: (spec, label) of the model choices offered in the GUI; "hub id" and "folder" take free text.
MODEL_CHOICES = (
    ("default", "Embedded default"),
    ("2k", "FocalCodec-Stream 2k (published)"),
    ("4k", "FocalCodec-Stream 4k (published)"),
    ("65k", "FocalCodec-Stream 65k (published)"),
)

UNTRAINED_WARNING = ("The embedded default model is not trained yet: this build uses an UNTRAINED tiny model "
                     "and every call sounds like noise. Pick a published checkpoint (2k / 4k / 65k) or a "
                     "checkpoint folder in the model box.")


def expected_kbps(spec: str) -> float | None:
    """The payload bitrate of a choice before it is loaded (None when only the model knows)."""
    return PUBLISHED_KBPS.get(spec)


@dataclass(frozen=True)
class ModelInfo:
    spec: str
    model_id: str
    bits: int
    payload_kbps: float
    params_m: float
    untrained: bool
    warning: str
    encode_ms: float
    decode_ms: float
    chunk_ms: float
    mode: str

    def summary(self) -> str:
        return (f"{self.model_id}: {self.bits} bits/token, {self.payload_kbps:.2f} kbps payload, "
                f"{self.params_m:.1f} M params, {self.mode}, encode {self.encode_ms:.1f} + decode {self.decode_ms:.1f} ms "
                f"per {self.chunk_ms:.0f} ms chunk")


def load_with_info(spec: str, mode: str = "auto", progress=None) -> tuple[Any, ModelInfo]:
    """Load ``spec`` (as ``--model``), warm it up, describe it. Raises what :func:`app.modelref.load_model`
    raises (CheckpointError, OSError, ValueError...)."""
    progress = progress or (lambda pct, text: None)
    progress(5, "importing the codec")
    import numpy as np
    import torch

    from app.modelref import default_model_available, load_model

    torch.set_num_threads(1)
    untrained = spec == "default" and not default_model_available() or spec.startswith("untrained")
    if spec in PUBLISHED_KBPS or ("/" in spec and not spec.startswith((".", "/"))):
        progress(15, f"fetching {spec} (from the Hugging Face cache or the hub)")
    else:
        progress(15, f"reading {spec}")
    model = load_model(spec, allow_untrained=spec == "default", mode=mode)
    untrained = untrained or str(model.model_id or "").startswith("untrained")
    if not getattr(model, "causal", True):
        raise ValueError(f"{spec} is a full-context model and cannot stream: calls need a causal checkpoint")
    progress(70, "warming up (one chunk through the encoder and decoder)")
    with torch.inference_mode():
        x = torch.zeros(1, model.chunk_size)
        enc_state = dec_state = None
        enc, dec = [], []
        for _ in range(3):
            t0 = time.perf_counter()
            toks, enc_state = model.encode_step(x, enc_state)
            t1 = time.perf_counter()
            _, dec_state = model.decode_step(toks, dec_state)
            t2 = time.perf_counter()
            enc.append(t1 - t0)
            dec.append(t2 - t1)
    chunk_ms = 1000.0 * model.chunk_size / model.sample_rate_input
    info = ModelInfo(spec=spec, model_id=str(model.model_id or spec), bits=int(model.bits_per_token),
                     payload_kbps=float(model.config.bitrate) / 1000.0, params_m=model.num_params() / 1e6,
                     untrained=untrained, warning=UNTRAINED_WARNING if untrained else "",
                     encode_ms=1000.0 * float(np.median(enc[1:])), decode_ms=1000.0 * float(np.median(dec[1:])),
                     chunk_ms=chunk_ms, mode=model.mode)
    progress(100, "ready")
    return model, info


class ModelLoader(QThread):
    """``ModelLoader(spec, mode).start()``; signals ``progress(pct, text)``, then ``loaded(model, info)`` or
    ``failed(message)``."""

    progress = Signal(int, str)
    loaded = Signal(object, object)
    failed = Signal(str)

    def __init__(self, spec: str, mode: str = "auto", parent=None) -> None:
        super().__init__(parent)
        self.spec = spec
        self.mode = mode
        self.model: Any = None
        self.info: ModelInfo | None = None
        self.error: str | None = None

    def run(self) -> None:  # the loader thread
        try:
            self.model, self.info = load_with_info(self.spec, self.mode, self.progress.emit)
        except Exception as exc:  # noqa: BLE001 - shown to the user
            log.debug("model %s failed to load", self.spec, exc_info=True)
            msg = str(exc) or type(exc).__name__
            if self.spec in PUBLISHED_KBPS and ("offline" in msg.lower() or "connection" in msg.lower()
                                                or "resolve" in msg.lower()):
                msg += " (the published checkpoints are downloaded once from the Hugging Face hub; this " \
                       "machine could not reach it and has no cached copy)"
            self.error = f"could not load model {self.spec!r}: {msg}"
            self.failed.emit(self.error)
            return
        self.loaded.emit(self.model, self.info)
