"""Full-context feature teachers for distillation.

The paper distils the causal encoder from full-context WavLM-6 features (the encoder of the published
full-context FocalCodec@50 checkpoint). ``kind="focalcodec"`` loads exactly that (hub id, alias or local
folder; it needs the network once, then the Hugging Face cache); ``kind="checkpoint"`` takes the encoder
of any local FocalCodec folder. Features are (B, N, C) at 50 Hz for 16 kHz input.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import torch
from torch import Tensor

from .config import TeacherConfig

_ALIASES = {"50hz": "lucadellalib/focalcodec_50hz"}


class FeatureTeacher:
    """Frozen full-context encoder; ``__call__(sig16 (B, T)) -> feats (B, ceil(T / 320), C)``."""

    def __init__(self, cfg: TeacherConfig, device: torch.device) -> None:
        from codec.pretrained import load_pretrained

        source = _ALIASES.get(cfg.source, cfg.source)
        if not source:
            raise ValueError(f"teacher kind {cfg.kind!r} needs a source (path or hub id)")
        model = load_pretrained(source)
        self.encoder = model.encoder.to(device).eval().requires_grad_(False)
        self.dim = model.config.encoder_config.dim
        self.cache = Path(cfg.cache_dir) if cfg.cache_dir else None
        self.device = device

    @torch.no_grad()
    def __call__(self, sig: Tensor, cacheable: bool = False) -> Tensor:
        key = None
        if self.cache is not None and cacheable:
            key = self.cache / (hashlib.sha1(sig.cpu().numpy().tobytes()).hexdigest() + ".pt")
            if key.exists():
                return torch.load(key).to(self.device).float()
        feats, _ = self.encoder(sig.to(self.device), None)
        if key is not None:
            key.parent.mkdir(parents=True, exist_ok=True)
            torch.save(feats.half().cpu(), key)
        return feats.float()


def make_teacher(cfg: TeacherConfig, device: torch.device) -> FeatureTeacher | None:
    return None if cfg.kind == "none" else FeatureTeacher(cfg, device)
