"""Which model to use: ``default`` (embedded in assets/), ``2k``/``4k``/``65k`` (published), a hub id or a folder."""

from __future__ import annotations

import logging
from pathlib import Path

import torch

from codec.model import FocalCodec

log = logging.getLogger(__name__)

ASSETS = Path(__file__).resolve().parent.parent / "assets"
DEFAULT_MODEL_DIR = ASSETS / "default_model"
SPEECH_SAMPLE = ASSETS / "speech_sample.wav"
DEFAULT_MODEL_ID = "focalchat-default"


def default_model_available() -> bool:
    return (DEFAULT_MODEL_DIR / "config.json").exists() and (DEFAULT_MODEL_DIR / "model.safetensors").exists()


def untrained_model(seed: int = 0) -> FocalCodec:
    """A tiny random-weight model (noise out): the stand-in until a trained default ships."""
    from codec.presets import tiny_config

    torch.manual_seed(seed)
    model = FocalCodec(tiny_config(bits=16))
    model.model_id = f"untrained-tiny-seed{seed}"
    return model


def load_model(spec: str = "default", allow_untrained: bool = False, mode: str = "auto") -> FocalCodec:
    """Load a model by name, hub id or folder (CheckpointError on a bad checkpoint).

    ``mode``: auto (:func:`app.precision.resolve_mode`) | fp32 (exact) | bf16 | int8 (see codec.fastpath).
    """
    from app.precision import resolve_mode
    from codec.pretrained import load_pretrained

    mode = resolve_mode(spec, mode)  # the loaded model says which in ``model.mode``
    if spec == "default":
        if default_model_available():
            model = load_pretrained(DEFAULT_MODEL_DIR, mode=mode)
            model.model_id = DEFAULT_MODEL_ID
            return model
        if allow_untrained:
            log.warning("the embedded default model is not in %s yet: using an UNTRAINED tiny model "
                        "(its output is noise)", DEFAULT_MODEL_DIR)
            return untrained_model()
        from codec.pretrained import CheckpointError

        raise CheckpointError(f"the embedded default model is missing ({DEFAULT_MODEL_DIR}); "
                              "pass --model with a checkpoint folder or a hub id")
    if spec.startswith("untrained"):
        return untrained_model()
    return load_pretrained(spec, mode=mode)
