"""The multi-stage trainer: runs the stages of a :class:`TrainConfig` in order, resumable at any step.

What each stage kind trains (``freeze`` removes more parts) and on what:

========= ======================================= =====================================================
kind      trainable                               loss
========= ======================================= =====================================================
e2e       encoder, compressor, decompressor,      mel + STFT on the 24 kHz waveform, BSQ entropy,
          decoder                                 (teacher feature MSE), (self-feature MSE), (log-mel
                                                  read-out of the decompressed features: ContentHead),
                                                  (adversarial + feature matching), (pitch, voicing and
                                                  envelope of a harmonic source against the target's:
                                                  pitch.py; an envelope GAN on top)
decoder   decoder                                 the same waveform (and pitch) losses, from teacher
                                                  features or from the frozen codec's decompressed features
encoder   encoder                                 MSE to teacher features
quantizer compressor, decompressor                MSE to the frozen causal encoder's features + entropy
joint     encoder, compressor, decompressor       MSE to teacher features + entropy (decoder frozen)
========= ======================================= =====================================================

Checkpoints (``out_dir``): ``last.pt`` holds everything (fp32 weights, optimiser moments, RNG, position)
for an exact resume; ``compact/`` holds what is small enough to commit (fp16 model and discriminator
weights + ``trainer.json``): resuming from it restarts the optimiser moments with a short warm-up, and the
training-only content head (``content_weight``; a single linear layer, relearnt within a few hundred steps).
"""

from __future__ import annotations

import json
import logging
import math
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from codec.model import FocalCodec

from .config import StageConfig, TrainConfig
from .data import SR, CropSampler, fixed_validation_set, load_corpus, split_by_speaker
from .discriminators import Discriminators, EnvelopeDiscriminator
from .losses import (
    ContentHead,
    LoudnessLoss,
    MultiResolutionLoss,
    PhaseDerivativeLoss,
    bsq_entropy_loss,
    feature_matching_loss,
    frame_locked_share,
    frame_position_modulation,
    hinge_d_loss,
    hinge_g_loss,
    straight_through,
)
from .pitch import pitch_losses
from .teacher import make_teacher

log = logging.getLogger("focalchat.train")

PARTS = ("encoder", "compressor", "decompressor", "decoder")
TRAINABLE = {
    "e2e": PARTS,
    "decoder": ("decoder",),
    "encoder": ("encoder",),
    "quantizer": ("compressor", "decompressor"),
    "joint": ("encoder", "compressor", "decompressor"),
}
COMPACT_VERSION = 1


def feature_mse(pred: Tensor, ref: Tensor) -> Tensor:
    """MSE over the frames both have (a full-context teacher may emit one frame less at the end)."""
    n = min(pred.shape[1], ref.shape[1])
    return F.mse_loss(pred[:, :n], ref[:, :n])


def rms(x: Tensor) -> Tensor:
    """Root mean square per item: (B, T) -> (B, 1), floored at -100 dBFS."""
    return x.square().mean(dim=1, keepdim=True).clamp_min(1e-10).sqrt()


def pick_device(name: str = "auto") -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def lr_at(stage: StageConfig, step: int, rewarm_from: int | None = None) -> float:
    """Linear warm-up then cosine decay to ``lr * min_lr_ratio``; ``rewarm_from`` restarts the warm-up there."""
    scale = 1.0
    if stage.warmup_steps > 0:
        since = step if rewarm_from is None else step - rewarm_from
        if since < stage.warmup_steps:
            scale = (since + 1) / stage.warmup_steps
    progress = min(1.0, step / max(1, stage.steps))
    cos = stage.min_lr_ratio + (1 - stage.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress))
    return stage.lr * cos * scale


@dataclass
class Position:
    stage: int = 0
    step: int = 0  # steps done in this stage
    total_steps: int = 0
    elapsed_s: float = 0.0
    rewarm_from: int | None = None


def _load_if_same_shape(module: torch.nn.Module | None, weights: dict[str, Tensor] | None, where: Path,
                        what: str) -> bool:
    """Load ``weights`` into ``module`` when both exist and every tensor fits; a misfit is logged (the module
    keeps its fresh weights). True when loaded."""
    if module is None or weights is None:
        return False
    own = module.state_dict()
    if own.keys() != weights.keys() or any(own[k].shape != v.shape for k, v in weights.items()):
        log.warning("%s: %s of another shape: they start afresh", where, what)
        return False
    module.load_state_dict(weights)
    return True


class Trainer:
    """Owns the model, the data, the optimisers and the checkpoints of one run."""

    def __init__(self, cfg: TrainConfig, out_dir: str | Path, device: str = "auto",
                 init_from: str | Path | None = None, data_base: Path | None = None, progress: bool = True) -> None:
        self.cfg = cfg
        self.out = Path(out_dir)
        self.out.mkdir(parents=True, exist_ok=True)
        self.device = pick_device(device)
        self.progress = progress
        if self.device.type == "cpu" and cfg.threads > 0:
            torch.set_num_threads(cfg.threads)
        torch.manual_seed(cfg.seed)
        self.model = FocalCodec(cfg.model)
        if init_from:
            from codec.pretrained import load_pretrained

            src = load_pretrained(init_from).state_dict()
            own = self.model.state_dict()
            usable = {k: v for k, v in src.items() if k in own and own[k].shape == v.shape}
            self.model.load_state_dict(usable, strict=False)
            log.info("initialised %d of %d tensors from %s (the rest differ in name or shape and keep their "
                     "initialisation)", len(usable), len(own), init_from)
        self.model.to(self.device)
        self.rate_out = cfg.model.sample_rate_output
        self.frame_hop = cfg.model.decoder_config.hop_length  # samples the decoder writes per frame
        # the targets are 16 kHz speech resampled to the output rate: nothing above 8 kHz to learn
        self.band_limit = min(SR, self.rate_out) / 2
        self._spec_losses: dict[tuple[int, ...], MultiResolutionLoss] = {}
        self._loudness_losses: dict[float, LoudnessLoss] = {}
        self.spec_loss = self._spec_loss_at(StageConfig.loss_ffts)  # validation: the same scale for every stage
        self.phase_loss = PhaseDerivativeLoss().to(self.device)
        self.teacher = make_teacher(cfg.teacher, self.device)
        self.content: ContentHead | None = None  # the log-mel read-out of stages with content_weight
        if any(st.content_weight > 0 for st in cfg.stages):
            self.content = ContentHead(cfg.model.decompressor_config.output_dim, cfg.model.encoder_config).to(self.device)
        self.discs: Discriminators | None = None
        self._discs_loaded = False
        self.env_disc: EnvelopeDiscriminator | None = None  # stages with envelope_adv_weight / envelope_fm_weight
        self._env_shapes: tuple[Tensor, Tensor, Tensor] | None = None  # this step's (fake, real, voiced), detached
        self.opt: torch.optim.Optimizer | None = None
        self.opt_d: torch.optim.Optimizer | None = None
        self.opt_e: torch.optim.Optimizer | None = None
        self.pos = Position()
        utts = load_corpus(cfg.data.manifests, base=data_base)
        self.train_utts, self.valid_utts = split_by_speaker(utts, cfg.data.valid_fraction, cfg.seed)
        log.info("data: %d training utterances (%.1f min), %d validation", len(self.train_utts),
                 sum(u.audio.shape[0] for u in self.train_utts) / 16000 / 60, len(self.valid_utts))
        self._samplers: dict[int, CropSampler] = {}
        self._valid = None
        self.history: list[dict[str, Any]] = []

    # ------------------------------------------------------------------ set-up per stage
    @property
    def stage(self) -> StageConfig:
        return self.cfg.stages[self.pos.stage]

    def _sampler(self, chunks: int) -> CropSampler:
        if chunks not in self._samplers:
            seg = chunks * self.cfg.model.chunk_size
            self._samplers[chunks] = CropSampler(self.train_utts, seg, self.cfg.data.augment, self.rate_out,
                                                 self.cfg.data.min_rms_dbfs, seed=self.cfg.seed + 17 * chunks + self.pos.total_steps)
        return self._samplers[chunks]

    def trainable_parts(self, stage: StageConfig) -> tuple[str, ...]:
        return tuple(p for p in TRAINABLE[stage.kind] if p not in stage.freeze)

    def _setup_stage(self) -> None:
        st = self.stage
        parts = self.trainable_parts(st)
        self.model.requires_grad_(False)
        groups = []
        for p in parts:
            mod = getattr(self.model, p)
            mod.requires_grad_(True)
            params = list(mod.parameters())
            if p == "decoder" and getattr(mod, "source", None) is not None and st.source_lr_scale != 1.0:
                own = {id(q) for q in mod.source.parameters()}
                params = [q for q in params if id(q) not in own]
                groups.append({"params": list(mod.source.parameters()), "lr_scale": st.source_lr_scale})
            groups.append({"params": params, "lr_scale": st.encoder_lr_scale if p == "encoder" else 1.0})
        if st.content_weight > 0 and self.content is not None:
            groups.append({"params": list(self.content.parameters()), "lr_scale": 1.0})
        params = [q for g in groups for q in g["params"]]
        self.model.train()
        self.opt = torch.optim.AdamW(groups, lr=st.lr, betas=st.betas, weight_decay=st.weight_decay)
        if st.adversarial:
            if self.discs is None or self.discs.channels != st.disc_channels:
                self.discs = Discriminators(channels=st.disc_channels).to(self.device)
            self.opt_d = torch.optim.AdamW(self.discs.parameters(), lr=st.disc_lr or st.lr, betas=st.betas,
                                           weight_decay=st.weight_decay)
        else:
            self.opt_d = None
        if self._envelope_gan(st):
            if self.env_disc is None or self.env_disc.channels != st.envelope_disc_channels:
                self.env_disc = EnvelopeDiscriminator(channels=st.envelope_disc_channels).to(self.device)
            self.opt_e = torch.optim.AdamW(self.env_disc.parameters(), lr=st.disc_lr or st.lr, betas=st.betas,
                                           weight_decay=st.weight_decay)
        else:
            self.opt_e = None
        log.info("stage %s (%s): %d steps, training %s (%.2f M parameters)", st.name, st.kind, st.steps,
                 ", ".join(parts), sum(p.numel() for p in params) / 1e6)

    def _envelope_gan(self, st: StageConfig) -> bool:
        return (st.envelope_adv_weight > 0 or st.envelope_fm_weight > 0) and self._source_bands() > 0

    def _source_bands(self) -> int:
        """The harmonic source's envelope points (0 without a source)."""
        source = getattr(self.model.decoder, "source", None)
        return source.bands if source is not None else 0

    def _spec_loss_at(self, ffts: tuple[int, ...]) -> MultiResolutionLoss:
        """The mel + STFT loss at these FFT sizes (built once per set)."""
        key = tuple(int(n) for n in ffts)
        if key not in self._spec_losses:
            self._spec_losses[key] = MultiResolutionLoss(self.rate_out, ffts=key, fmax=self.rate_out / 2,
                                                         band_limit=self.band_limit).to(self.device)
        return self._spec_losses[key]

    def _loudness_loss(self, asymmetry: float) -> LoudnessLoss:
        """The loudness loss with this asymmetry (built once per value), in the targets' band like the spectral
        losses."""
        if asymmetry not in self._loudness_losses:
            self._loudness_losses[asymmetry] = LoudnessLoss(self.rate_out, band_limit=self.band_limit,
                                                            asymmetry=asymmetry).to(self.device)
        return self._loudness_losses[asymmetry]

    # ------------------------------------------------------------------ one step
    def _codec_path(self, sig: Tensor, st: StageConfig, grad_encoder: bool) -> dict[str, Tensor]:
        m = self.model
        with torch.set_grad_enabled(grad_encoder):
            feats = m.sig_to_feats(sig)
        lats = m.feats_to_lats(feats)
        codes = straight_through(lats, m.lats_to_codes(lats))
        return {"feats": feats, "lats": lats, "codes": codes}

    def compute_losses(self, sig: Tensor, target: Tensor, st: StageConfig
                       ) -> tuple[Tensor, dict[str, float], Tensor | None, Tensor]:
        """Generator-side loss of one batch: (loss, scalars for the log, generated waveform or None, the
        target trimmed to the generated length)."""
        m = self.model
        logs: dict[str, float] = {}
        loss = sig.new_zeros(())
        rec = None
        if st.kind in ("e2e", "quantizer", "joint"):
            enc_grad = st.kind != "quantizer" and "encoder" not in st.freeze
            out = self._codec_path(sig, st, enc_grad)
            if st.entropy_weight > 0:
                ent, usage = bsq_entropy_loss(out["lats"], sample_weight=st.entropy_sample_weight)
                loss = loss + st.entropy_weight * ent
                logs["entropy"] = float(ent.detach())
                logs["bit_usage"] = float(usage)
            if st.commit_weight > 0:
                c = F.mse_loss(out["lats"], out["codes"].detach())
                loss = loss + st.commit_weight * c
                logs["commit"] = float(c.detach())
            qfeats = m.codes_to_qfeats(out["codes"])
            if st.kind == "e2e":
                if st.self_feature_weight > 0:
                    ref = out["feats"].detach()
                    pred = qfeats
                    if enc_grad:  # keep the encoder out of it: predicting its own output lets it collapse
                        lats2 = m.feats_to_lats(ref)
                        pred = m.codes_to_qfeats(straight_through(lats2, m.lats_to_codes(lats2)))
                    sf = feature_mse(pred, ref) / ref.var().clamp_min(1e-6)
                    loss = loss + st.self_feature_weight * sf
                    logs["self_feature"] = float(sf.detach())
                if st.content_weight > 0 and self.content is not None:
                    c = self.content(qfeats, sig)
                    loss = loss + st.content_weight * c
                    logs["content"] = float(c.detach())
                if self.teacher is not None and st.feature_weight > 0:
                    f = feature_mse(out["feats"], self.teacher(sig))
                    loss = loss + st.feature_weight * f
                    logs["feature"] = float(f.detach())
                rec, source_loss = self._decode(qfeats, target, st, logs)
                loss = loss + source_loss
            else:
                ref = out["feats"].detach() if st.kind == "quantizer" else self.teacher(sig)
                f = feature_mse(qfeats, ref)
                loss = loss + st.feature_weight * f if st.feature_weight > 0 else loss + f
                logs["feature"] = float(f.detach())
        elif st.kind == "encoder":
            f = feature_mse(m.sig_to_feats(sig), self.teacher(sig))
            loss = loss + f
            logs["feature"] = float(f.detach())
        elif st.kind == "decoder":
            with torch.no_grad():
                feats = self.teacher(sig) if self.teacher is not None else m.sig_to_qfeats(sig)
            rec, source_loss = self._decode(feats, target, st, logs)
            loss = loss + source_loss
        if rec is not None:
            n = min(rec.shape[1], target.shape[1])  # teacher features may cover one frame less
            rec, target = rec[:, :n], target[:, :n]
            scaled = rec
            if st.level_invariant:
                ratio = rms(rec) / rms(target)  # (B, 1)
                scaled = rec / ratio  # not detached: the spectral losses then have no gradient along the level
                lvl = torch.log(ratio).abs().mean()
                loss = loss + st.level_weight * lvl
                logs["level"] = float(lvl.detach())
            mel, stft = self._spec_loss_at(st.loss_ffts)(scaled, target)
            loss = loss + st.mel_weight * mel + st.stft_weight * stft
            logs["mel"] = float(mel.detach())
            logs["stft"] = float(stft.detach())
            if st.frame_mod_weight > 0:
                fmod = frame_position_modulation(scaled, self.frame_hop)
                locked = frame_locked_share(scaled, self.frame_hop)
                loss = loss + st.frame_mod_weight * (fmod + locked)
                logs["frame_mod"] = float(fmod.detach())
                logs["frame_locked"] = float(locked.detach())
            if st.loudness_weight > 0:
                lo = self._loudness_loss(st.loudness_asymmetry)(scaled, target)
                loss = loss + st.loudness_weight * lo
                logs["loudness"] = float(lo.detach())
            if st.phase_weight > 0:
                ph = self.phase_loss(scaled, target)
                loss = loss + st.phase_weight * ph
                logs["phase"] = float(ph.detach())
            rec = scaled  # what the discriminators judge
        return loss, logs, rec, target

    def _decode(self, feats: Tensor, target: Tensor, st: StageConfig, logs: dict[str, float]) -> tuple[Tensor, Tensor]:
        """Features -> (waveform, source loss). The source loss (``pitch_weight`` x (|log2 f0 ratio| + voicing
        cross-entropy against the target's tracked pitch) + ``envelope_weight`` x the envelope loss, parts
        logged) is 0 unless the decoder has a harmonic source and the stage one of those weights."""
        dec = self.model.decoder
        if (st.pitch_weight <= 0 and st.envelope_weight <= 0) or getattr(dec, "source", None) is None:
            return self.model.feats_to_sig(feats), target.new_zeros(())
        rec, _, params = dec.synthesize(feats)
        gan = self._envelope_gan(st) and st.envelope_weight > 0
        p = self._pitch_losses(params, target, envelope=st.envelope_weight > 0, shapes=gan)
        shapes = [p.pop(k) for k in ("shape_pred", "shape_ref", "shape_voiced")] if gan else None
        logs.update({f"pitch_{k}": float(v.detach()) for k, v in p.items()})
        loss = st.pitch_weight * (p["f0"] + p["voicing"])
        if "envelope" in p:
            loss = loss + st.envelope_weight * p["envelope"]
        if shapes is not None:
            loss = loss + self._envelope_g_loss(*shapes, st, logs)
        return rec.float(), loss

    def _envelope_g_loss(self, fake: Tensor, real: Tensor, voiced: Tensor, st: StageConfig,
                         logs: dict[str, float]) -> Tensor:
        """The generator's side of the envelope GAN (hinge on voiced frames + feature matching); keeps the
        shapes, detached, for the discriminator's step in :meth:`train_step`."""
        assert self.env_disc is not None
        self._env_shapes = (fake.detach(), real, voiced)
        if not voiced.any():
            return fake.sum() * 0
        self.env_disc.requires_grad_(False)
        fake_logits, fake_feats = self.env_disc(fake)
        with torch.no_grad():
            _, real_feats = self.env_disc(real)
        self.env_disc.requires_grad_(True)
        m = voiced[..., None].to(fake_logits.dtype)
        count = (m.sum() * fake_logits.shape[-1]).clamp_min(1)
        g = (F.relu(1 - fake_logits) * m).sum() / count
        fm = feature_matching_loss([real_feats], [fake_feats])
        logs["env_adv_g"] = float(g.detach())
        logs["env_fm"] = float(fm.detach())
        return st.envelope_adv_weight * g + st.envelope_fm_weight * fm

    def _envelope_d_step(self, st: StageConfig, logs: dict[str, float]) -> None:
        """One step of the envelope discriminator on this step's shapes (hinge on voiced frames)."""
        if self._env_shapes is None or self.opt_e is None or self.env_disc is None:
            return
        fake, real, voiced = self._env_shapes
        self._env_shapes = None
        if not voiced.any():
            return
        m = voiced[..., None].float()
        real_logits, _ = self.env_disc(real)
        fake_logits, _ = self.env_disc(fake)
        count = (m.sum() * real_logits.shape[-1]).clamp_min(1)
        d = ((F.relu(1 - real_logits) + F.relu(1 + fake_logits)) * m).sum() / count
        self.opt_e.zero_grad(set_to_none=True)
        d.backward()
        torch.nn.utils.clip_grad_norm_(self.env_disc.parameters(), st.grad_clip)
        self.opt_e.step()
        logs["env_adv_d"] = float(d.detach())

    def _pitch_losses(self, params: dict[str, Tensor], target: Tensor, envelope: bool = True,
                      shapes: bool = False) -> dict[str, Tensor]:
        """The harmonic source's pitch, voicing and (``envelope``) harmonic amplitudes against the target
        waveform's, and (``shapes``) both envelopes' shapes on the source's band grid (see pitch.pitch_losses)."""
        dec = self.model.decoder
        cfg = dec.cfg
        return pitch_losses(params, target, self.rate_out, self.frame_hop, cfg.source_f0_min, cfg.source_f0_max,
                            envelope_at=dec.source.envelope_at if envelope else None, fmax=cfg.source_fmax,
                            shapes=self._source_bands() if shapes else 0)

    def train_step(self, sig: Tensor, target: Tensor) -> dict[str, float]:
        st = self.stage
        loss, logs, rec, target = self.compute_losses(sig, target, st)
        use_gan = st.adversarial and rec is not None and self.pos.step >= st.disc_start
        if use_gan:
            assert self.discs is not None and self.opt_d is not None
            self.discs.requires_grad_(False)
            fake_logits, fake_feats = self.discs(rec)
            with torch.no_grad():
                _, real_feats = self.discs(target)
            g = hinge_g_loss(fake_logits)
            fm = feature_matching_loss(real_feats, fake_feats)
            loss = loss + st.adv_weight * g + st.fm_weight * fm
            logs["adv_g"] = float(g.detach())
            logs["fm"] = float(fm.detach())
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        params = [p for g_ in self.opt.param_groups for p in g_["params"]]
        gn = torch.nn.utils.clip_grad_norm_(params, st.grad_clip)
        if torch.isfinite(gn):
            self.opt.step()
        else:
            logs["skipped"] = 1.0
        if use_gan:
            self.discs.requires_grad_(True)
            real_logits, _ = self.discs(target)
            fake_logits, _ = self.discs(rec.detach())
            d = hinge_d_loss(real_logits, fake_logits)
            self.opt_d.zero_grad(set_to_none=True)
            d.backward()
            torch.nn.utils.clip_grad_norm_(self.discs.parameters(), st.grad_clip)
            self.opt_d.step()
            logs["adv_d"] = float(d.detach())
        self._envelope_d_step(st, logs)
        logs["loss"] = float(loss.detach())
        logs["grad_norm"] = float(gn)
        return logs

    # ------------------------------------------------------------------ validation
    @torch.no_grad()
    def validate(self) -> dict[str, float]:
        """Unaugmented held-out crops through the whole codec: mel/STFT loss, bit usage, distinct tokens."""
        if self._valid is None:
            utts = self.valid_utts or self.train_utts
            self._valid = fixed_validation_set(utts, 16 * self.cfg.model.chunk_size, 16, self.rate_out)
        x, y = (torch.from_numpy(a).to(self.device) for a in self._valid)
        was = self.model.training
        self.model.eval()
        lats = self.model.sig_to_lats(x)
        qfeats = self.model.codes_to_qfeats(self.model.lats_to_codes(lats))
        extra = {}
        if getattr(self.model.decoder, "source", None) is not None:
            rec, _, params = self.model.decoder.synthesize(qfeats)
            p = self._pitch_losses(params, y, shapes=True)
            extra = {"val_pitch_octaves": float(p["f0"]), "val_pitch_gross": float(p["gross"]),
                     "val_voicing_bce": float(p["voicing"]), "val_envelope": float(p["envelope"]),
                     "val_envelope_spread": float(p["spread"]), "val_envelope_spread_ref": float(p["spread_ref"])}
        else:
            rec = self.model.feats_to_sig(qfeats)
        rec = rec[:, : y.shape[1]]
        mel, stft = self.spec_loss(rec, y)
        mel_li, _ = self.spec_loss(rec * (rms(y) / rms(rec)), y)
        phase = self.phase_loss(rec, y)
        frame_mod, locked = frame_position_modulation(rec, self.frame_hop), frame_locked_share(rec, self.frame_hop)
        toks = self.model.lats_to_toks(lats)
        _, usage = bsq_entropy_loss(lats)
        self.model.train(was)
        return {"val_mel": float(mel), "val_stft": float(stft), "val_mel_level_invariant": float(mel_li),
                "val_phase": float(phase), "val_frame_mod": float(frame_mod), "val_frame_locked": float(locked),
                "val_bit_usage": float(usage),
                "val_distinct_tokens": int(torch.unique(toks).numel()), "val_tokens": int(toks.numel()), **extra}

    # ------------------------------------------------------------------ checkpoints
    def save(self) -> None:
        """Write last.pt (exact resume) and compact/ (fp16, small enough to commit), atomically."""
        from safetensors.torch import save_file

        state = {
            "config": self.cfg.to_dict(),
            "position": self.pos.__dict__,
            "model": self.model.state_dict(),
            "discs": self.discs.state_dict() if self.discs is not None else None,
            "env_disc": self.env_disc.state_dict() if self.env_disc is not None else None,
            "content": self.content.state_dict() if self.content is not None else None,
            "opt": self.opt.state_dict() if self.opt is not None else None,
            "opt_d": self.opt_d.state_dict() if self.opt_d is not None else None,
            "opt_e": self.opt_e.state_dict() if self.opt_e is not None else None,
            "samplers": {k: s.rng.bit_generator.state for k, s in self._samplers.items()},
            "torch_rng": torch.get_rng_state(),
        }
        tmp = self.out / "last.pt.tmp"
        torch.save(state, tmp)
        os.replace(tmp, self.out / "last.pt")
        compact = self.out / "compact"
        self.model.save_pretrained(compact, dtype=torch.float16)
        for disc, name in ((self.discs, "discriminators"), (self.env_disc, "envelope_discriminator")):
            if disc is not None:
                save_file({k: v.detach().cpu().half().contiguous() for k, v in disc.state_dict().items()},
                          str(compact / f"{name}.safetensors.tmp"))
                os.replace(compact / f"{name}.safetensors.tmp", compact / f"{name}.safetensors")
        meta = {"format": "focalchat-train-compact", "version": COMPACT_VERSION, "position": self.pos.__dict__,
                "stage_name": self.stage.name, "config": self.cfg.to_dict(), "history_tail": self.history[-20:]}
        (compact / "trainer.json.tmp").write_text(json.dumps(meta, indent=1))
        os.replace(compact / "trainer.json.tmp", compact / "trainer.json")

    def _snapshot_stage(self, name: str) -> None:
        """Keep the model as it was at the end of stage ``name`` in ``<out>/stages/<name>`` (fp16), so a later
        stage that turns out worse (a GAN stage cut short, say) does not cost the earlier result."""
        self.model.save_pretrained(self.out / "stages" / name, dtype=torch.float16)

    def _load_discs(self, weights: dict[str, Tensor], where: Path) -> None:
        """Discriminator weights from a checkpoint, unless this stage has none or they have another width
        (``disc_channels`` changed): then its discriminators start afresh (logged)."""
        self._discs_loaded = _load_if_same_shape(self.discs, weights, where, "discriminators (disc_channels changed?)")

    def _load_env_disc(self, weights: dict[str, Tensor] | None, where: Path) -> bool:
        """The envelope discriminator's weights, where this stage has one of the same shape (else it starts
        afresh, logged). True when loaded."""
        return _load_if_same_shape(self.env_disc, weights, where, "envelope discriminator")

    def load(self, path: str | Path) -> None:
        """Resume from ``last.pt`` or a compact folder (see the module docstring)."""
        p = Path(path)
        if p.is_dir() and (p / "last.pt").exists():
            p = p / "last.pt"
        if p.is_file():
            state = torch.load(p, map_location=self.device, weights_only=False)
            self.pos = Position(**state["position"])
            self.model.load_state_dict(state["model"])
            if state.get("content") is not None and self.content is not None:
                self.content.load_state_dict(state["content"])
            self._setup_stage()
            if state.get("discs") is not None:
                self._load_discs(state["discs"], p)
            if state.get("opt"):
                scales = [g["lr_scale"] for g in self.opt.param_groups]
                try:
                    self.opt.load_state_dict(state["opt"])
                    for g, sc in zip(self.opt.param_groups, scales):  # the config's scales win
                        g["lr_scale"] = sc
                except ValueError as e:
                    log.warning("optimiser state does not fit this stage's parameter groups (%s): restarted", e)
                    self.pos.rewarm_from = self.pos.step
            if state.get("opt_d") and self.opt_d is not None and self._discs_loaded:
                self.opt_d.load_state_dict(state["opt_d"])
            if self._load_env_disc(state.get("env_disc"), p) and state.get("opt_e") and self.opt_e is not None:
                self.opt_e.load_state_dict(state["opt_e"])
            for k, s in state.get("samplers", {}).items():
                self._sampler(int(k)).rng.bit_generator.state = s
            torch.set_rng_state(state["torch_rng"])
            log.info("resumed exactly from %s at stage %d step %d", p, self.pos.stage, self.pos.step)
            return
        compact = p / "compact" if (p / "compact").is_dir() else p
        meta_path = compact / "trainer.json"
        if not meta_path.exists():
            raise FileNotFoundError(f"{path}: no last.pt and no compact checkpoint (trainer.json) to resume from")
        from safetensors.torch import load_file

        meta = json.loads(meta_path.read_text())
        if meta.get("format") != "focalchat-train-compact" or meta.get("version") != COMPACT_VERSION:
            raise ValueError(f"{meta_path}: not a compact training checkpoint of version {COMPACT_VERSION}")
        self.pos = Position(**meta["position"])
        weights = load_file(str(compact / "model.safetensors"))
        self.model.load_state_dict({k: v.float() for k, v in weights.items()})
        self._setup_stage()
        if (compact / "discriminators.safetensors").exists():
            dw = load_file(str(compact / "discriminators.safetensors"))
            self._load_discs({k: v.float() for k, v in dw.items()}, compact)
        if (compact / "envelope_discriminator.safetensors").exists():
            ew = load_file(str(compact / "envelope_discriminator.safetensors"))
            self._load_env_disc({k: v.float() for k, v in ew.items()}, compact)
        self.pos.rewarm_from = self.pos.step
        log.info("resumed from compact checkpoint %s at stage %d step %d (optimiser restarted with warm-up)",
                 compact, self.pos.stage, self.pos.step)

    # ------------------------------------------------------------------ main loop
    def run(self, max_minutes: float | None = None, resume: str | Path | None = None) -> bool:
        """Train until every stage is done (True) or ``max_minutes`` have passed (False); checkpoints either way."""
        from tqdm import tqdm

        if resume is not None:
            self.load(resume)
        elif self.opt is None:
            self._setup_stage()
        t_start = time.monotonic()
        t_ckpt = t_start
        log_path = self.out / "train.log.jsonl"
        while self.pos.stage < len(self.cfg.stages):
            st = self.stage
            bar = tqdm(total=st.steps, initial=self.pos.step, desc=f"{st.name}", disable=not self.progress,
                       dynamic_ncols=True)
            bs = st.batch_size or self.cfg.data.batch_size
            sampler = self._sampler(st.segment_chunks or self.cfg.data.segment_chunks)
            acc: dict[str, list[float]] = {}
            t_log = time.monotonic()
            while self.pos.step < st.steps:
                lr = lr_at(st, self.pos.step, self.pos.rewarm_from)
                for g in self.opt.param_groups:
                    g["lr"] = lr * g.get("lr_scale", 1.0)
                for opt in (self.opt_d, self.opt_e):
                    if opt is not None:
                        for g in opt.param_groups:
                            g["lr"] = lr * (st.disc_lr or st.lr) / st.lr
                x, y = sampler.batch(bs)
                logs = self.train_step(torch.from_numpy(x).to(self.device), torch.from_numpy(y).to(self.device))
                for k, v in logs.items():
                    acc.setdefault(k, []).append(v)
                self.pos.step += 1
                self.pos.total_steps += 1
                bar.update(1)
                now = time.monotonic()
                if self.pos.step % self.cfg.log_every == 0 or self.pos.step == st.steps:
                    rec = {"stage": st.name, "step": self.pos.step, "total_steps": self.pos.total_steps, "lr": lr,
                           "s_per_step": (now - t_log) / max(1, len(acc.get("loss", [1]))),
                           **{k: float(np.mean(v)) for k, v in acc.items()}}
                    if self.pos.step % self.cfg.valid_every == 0 or self.pos.step == st.steps:
                        rec.update(self.validate())
                    rec["elapsed_min"] = (self.pos.elapsed_s + now - t_start) / 60
                    self.history.append(rec)
                    with log_path.open("a") as f:
                        f.write(json.dumps(rec) + "\n")
                    bar.set_postfix({k: f"{rec[k]:.3g}" for k in ("loss", "mel", "bit_usage", "val_mel") if k in rec})
                    log.debug("%s", rec)
                    acc = {}
                    t_log = now
                out_of_time = max_minutes is not None and (now - t_start) / 60 >= max_minutes
                if (self.pos.step % self.cfg.checkpoint_every == 0
                        or (now - t_ckpt) / 60 >= self.cfg.checkpoint_minutes or out_of_time):
                    self.pos.elapsed_s += now - t_start
                    t_start = now
                    self.save()
                    t_ckpt = now
                if out_of_time:
                    bar.close()
                    log.info("time budget reached at stage %s step %d; checkpoint saved in %s", st.name,
                             self.pos.step, self.out)
                    return False
            bar.close()
            self._snapshot_stage(st.name)
            self.pos.stage += 1
            self.pos.step = 0
            self.pos.rewarm_from = None
            if self.pos.stage < len(self.cfg.stages):
                self._setup_stage()
            self.pos.elapsed_s += time.monotonic() - t_start
            t_start = time.monotonic()
            if self.pos.stage < len(self.cfg.stages):
                self.save()
        self.pos.stage = len(self.cfg.stages) - 1
        self.pos.step = self.cfg.stages[-1].steps
        self.save()
        return True

    @torch.no_grad()
    def calibrate_output_level(self, crops: int = 32, seconds: float = 4.0) -> float:
        """Scale the decoder's output so decoded speech is as loud as the input on average.

        Spectral losses on log magnitudes leave the overall level loosely tied (the decoder learns the
        median, not the mean, of the energy it is unsure about), so a trained model can come out several
        dB quiet. Measures the input/output energy ratio on unaugmented training crops and folds the gain
        into the WaveNeXt head (``scale_output``). Returns the gain applied.
        """
        from codec.decoder import WaveNeXt

        if not isinstance(self.model.decoder, WaveNeXt):
            return 1.0
        chunks = max(1, int(seconds * 16000) // self.cfg.model.chunk_size)
        sampler = CropSampler(self.train_utts, chunks * self.cfg.model.chunk_size, self.cfg.data.augment,
                              self.rate_out, self.cfg.data.min_rms_dbfs, seed=4321)
        x, y = sampler.batch(crops, augment=False)
        was = self.model.training
        self.model.eval()
        rec = self.model.sig_to_sig(torch.from_numpy(x).to(self.device))[:, : y.shape[1]]
        self.model.train(was)
        gain = float(np.sqrt(np.sum(y.astype(np.float64) ** 2) / max(float(rec.double().pow(2).sum()), 1e-12)))
        gain = float(np.clip(gain, 0.1, 10.0))
        self.model.decoder.scale_output(gain)
        log.info("output level calibrated: gain %.2f (%+.1f dB)", gain, 20 * np.log10(gain))
        return gain

    def export(self, folder: str | Path, dtype: torch.dtype = torch.float16, calibrate: bool = True) -> Path:
        """Save the trained codec as a model folder (config.json + fp16 model.safetensors), its output
        level calibrated first (see :meth:`calibrate_output_level`; the run's checkpoints are not changed)."""
        model = self.model
        if calibrate:
            import copy

            backup = copy.deepcopy(model.decoder.state_dict())
            self.calibrate_output_level()
        model.eval()
        folder = model.to("cpu").save_pretrained(folder, dtype=dtype)
        if calibrate:
            model.decoder.load_state_dict(backup)
        return folder
