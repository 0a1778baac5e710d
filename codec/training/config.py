"""Training configuration: one dataclass per concern; a run is a :class:`TrainConfig` stored as JSON.

A run is a list of stages executed in order (see :mod:`codec.training.trainer` for what each kind does)::

    e2e        all codec parts, waveform losses (multi-resolution mel + STFT) + BSQ entropy
               (+ optional feature distillation from a teacher)
    decoder    the decoder only, from teacher features (paper stage 1) or from the frozen codec's
               decompressed features; mel loss + optional adversarial / feature-matching losses
    encoder    the causal encoder, MSE to the full-context teacher's features (paper stages 2-3)
    quantizer  compressor + BSQ + decompressor, MSE to the (frozen) causal encoder features + entropy (stage 4)
    joint      encoder + compressor + decompressor (+ refiner), MSE to the teacher's features (stage 5)
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

from codec.config import CodecConfig, ConfigError

STAGE_KINDS = ("e2e", "decoder", "encoder", "quantizer", "joint")


def _build(cls, data: dict[str, Any], where: str):
    if not isinstance(data, dict):
        raise ConfigError(f"{where}: expected a JSON object")
    known = {f.name for f in fields(cls)}
    unknown = sorted(set(data) - known)
    if unknown:
        raise ConfigError(f"{where}: unknown keys {unknown} (known: {sorted(known)})")
    return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in data.items()})


@dataclass(frozen=True)
class AugmentConfig:
    """Input augmentation; the reconstruction target is the augmented input (a codec reproduces what it hears)."""

    speed: tuple[float, float] = (0.9, 1.1)  # tempo+pitch factor range (resampling); (1, 1) = off
    gain_dbfs: tuple[float, float] = (-32.0, -16.0)  # RMS level range after augmentation
    polarity: bool = True  # random sign flip
    noise_prob: float = 0.2  # additive coloured noise
    noise_snr_db: tuple[float, float] = (20.0, 45.0)
    reverb_prob: float = 0.1  # synthetic exponential-decay room impulse response
    reverb_rt60_s: tuple[float, float] = (0.1, 0.4)


@dataclass(frozen=True)
class DataConfig:
    """Where speech comes from and how it is cut."""

    manifests: tuple[str, ...] = ("../shared/data/librispeech/train-clean-100.tsv",)
    valid_fraction: float = 0.03  # utterances held out (whole speakers) for the validation loss
    segment_chunks: int = 16  # crop length in 80 ms chunks (16 = 1.28 s)
    batch_size: int = 8
    min_rms_dbfs: float = -55.0  # crops quieter than this (silence) are re-drawn
    augment: AugmentConfig = field(default_factory=AugmentConfig)


@dataclass(frozen=True)
class TeacherConfig:
    """Full-context feature teacher; ``kind`` none | focalcodec (the encoder of a full-context FocalCodec
    checkpoint: path, hub id or alias 50hz) | checkpoint (any local FocalCodec folder: its encoder)."""

    kind: str = "none"
    source: str = ""
    cache_dir: str = ""  # cache teacher features of unaugmented crops here ("" = no cache)


@dataclass(frozen=True)
class StageConfig:
    """One training stage."""

    name: str
    kind: str
    steps: int
    lr: float = 1e-3
    min_lr_ratio: float = 0.05  # cosine decay to lr * ratio
    warmup_steps: int = 200
    betas: tuple[float, float] = (0.8, 0.99)
    weight_decay: float = 0.01
    grad_clip: float = 5.0
    batch_size: int | None = None  # None = data.batch_size
    segment_chunks: int | None = None
    # loss weights
    mel_weight: float = 45.0
    stft_weight: float = 1.0  # log-magnitude L1 + spectral convergence
    phase_weight: float = 0.0  # instantaneous-frequency + group-delay agreement (losses.PhaseDerivativeLoss)
    # loudness-spectrum distance as PESQ weighs it (losses.LoudnessLoss: mel power ** 0.23, added loudness
    # weighted ``loudness_asymmetry`` times missing loudness), on the same (level-invariant) prediction
    loudness_weight: float = 0.0
    loudness_asymmetry: float = 2.0
    # FFT sizes (samples at the output rate, hop = n/4) of the mel and STFT losses. A decoder that writes
    # each frame (hop_length samples) at once needs windows shorter than a frame: longer ones cannot see
    # how the energy is spread inside it, and a frame-locked modulation (a buzz at the frame rate) goes free.
    loss_ffts: tuple[int, ...] = (512, 1024, 2048)
    # weight of the frame-grid terms of the generated batch: losses.frame_position_modulation (pulls the mean
    # energy at every sample position of a frame to the same level; audio ~0.1 over a batch of 256 frames)
    # plus losses.frame_locked_share (the share of one waveform repeated every frame; audio ~1/256)
    frame_mod_weight: float = 0.0
    # The WavLM-style encoder is blind to the input's level (bias-free conv, then LayerNorm per frame), so a
    # decoded crop's level is a guess and its log-spectral error is noise the model cannot reduce. With
    # ``level_invariant`` the waveform losses compare the prediction scaled to the target's RMS (per crop),
    # and ``level_weight`` times |log RMS ratio| keeps the absolute level anchored.
    level_invariant: bool = False
    level_weight: float = 0.1
    entropy_weight: float = 0.1  # BSQ entropy loss (per-sample minus codebook entropy)
    entropy_sample_weight: float = 1.0  # weight of its per-sample (confidence) term; 0 = bit usage only
    commit_weight: float = 0.0
    feature_weight: float = 0.0  # MSE to teacher / target features
    # e2e: MSE between the decompressed features and the (detached) causal encoder features, divided by
    # their variance: the paper's stage-4 target, here a dense signal that keeps information in the bits
    self_feature_weight: float = 0.0
    # e2e: L1 (nats) between the input's log-mel (80 bands, 10 ms hops) and a linear read-out of the
    # decompressed features (losses.ContentHead, trained with the stage): a direct target for what the tokens
    # must carry, which the waveform losses only give through the decoder
    content_weight: float = 0.0
    # decoders with a harmonic source (codec.harmonic): weight of its pitch loss against the target's tracked
    # pitch (codec.training.pitch: |log2 f0 ratio| on voiced frames + voicing cross-entropy)
    pitch_weight: float = 0.0
    # ... and of its envelope loss: |log amplitude error| (nats) at the target's harmonics on its voiced frames
    # (pitch.harmonic_amplitudes); without it the source leaves all but the lowest harmonics to the head
    envelope_weight: float = 0.0
    adversarial: bool = False  # decoder: hinge GAN with MPD + multi-resolution STFT discriminators
    adv_weight: float = 1.0
    fm_weight: float = 2.0
    disc_lr: float | None = None  # None = lr
    disc_channels: int = 32  # discriminator width: first layer's channels, doubling per layer (capped at 512)
    disc_start: int = 0  # generator-only steps before the discriminators join
    # decoders with a harmonic source: hinge GAN on its envelope's shape (pitch.envelope_shapes, voiced frames;
    # discriminators.EnvelopeDiscriminator, lr = disc_lr or lr) + feature matching, against the measured
    # envelope's: the envelope loss alone learns the conditional median, flatter than any real envelope
    envelope_adv_weight: float = 0.0
    envelope_fm_weight: float = 0.0
    envelope_disc_channels: int = 32
    freeze: tuple[str, ...] = ()  # extra parts to freeze: encoder, compressor, decompressor, decoder
    encoder_lr_scale: float = 1.0  # the encoder's learning rate relative to ``lr`` (slower for a pretrained one)
    # the decoder's harmonic source's learning rate relative to ``lr`` (faster when it joins a trained decoder:
    # Adam moves its envelope's log-amplitudes by about lr per step)
    source_lr_scale: float = 1.0

    def validate(self, where: str) -> None:
        if self.kind not in STAGE_KINDS:
            raise ConfigError(f"{where}: kind must be one of {STAGE_KINDS}, got {self.kind!r}")
        if self.steps < 1 or self.lr <= 0:
            raise ConfigError(f"{where}: steps must be >= 1 and lr > 0")
        if not self.loss_ffts or any(int(n) != n or n < 16 for n in self.loss_ffts):
            raise ConfigError(f"{where}: loss_ffts must be FFT sizes >= 16, got {list(self.loss_ffts)}")
        if self.disc_channels < 1 or self.envelope_disc_channels < 1:
            raise ConfigError(f"{where}: disc_channels and envelope_disc_channels must be >= 1")
        if (self.envelope_adv_weight > 0 or self.envelope_fm_weight > 0) and self.envelope_weight <= 0:
            raise ConfigError(f"{where}: the envelope GAN (envelope_adv_weight, envelope_fm_weight) needs the "
                              "envelope measurement: set envelope_weight > 0")
        bad = set(self.freeze) - {"encoder", "compressor", "decompressor", "decoder"}
        if bad:
            raise ConfigError(f"{where}: unknown parts in freeze: {sorted(bad)}")


@dataclass(frozen=True)
class TrainConfig:
    """A training run: the model to train, its data, an optional teacher and the stages."""

    model: CodecConfig
    stages: tuple[StageConfig, ...]
    data: DataConfig = field(default_factory=DataConfig)
    teacher: TeacherConfig = field(default_factory=TeacherConfig)
    seed: int = 0
    threads: int = 0  # torch threads on CPU (0 = all cores)
    log_every: int = 50
    valid_every: int = 500
    checkpoint_every: int = 250
    checkpoint_minutes: float = 10.0  # also checkpoint at least this often (wall clock)

    def validate(self) -> None:
        if not self.stages:
            raise ConfigError("training config: no stages")
        names = [s.name for s in self.stages]
        if len(set(names)) != len(names):
            raise ConfigError(f"training config: stage names must be unique, got {names}")
        for s in self.stages:
            s.validate(f"stage {s.name!r}")
            if s.kind in ("encoder", "joint") and self.teacher.kind == "none":
                raise ConfigError(f"stage {s.name!r}: kind {s.kind!r} needs a teacher")
        if self.teacher.kind not in ("none", "focalcodec", "checkpoint"):
            raise ConfigError(f"teacher.kind must be none, focalcodec or checkpoint, got {self.teacher.kind!r}")
        if not self.model.causal:
            raise ConfigError("the trained model must be causal (streaming)")

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TrainConfig:
        if not isinstance(data, dict):
            raise ConfigError("training config: expected a JSON object")
        data = dict(data)
        try:
            model = CodecConfig.from_dict(data.pop("model"))
            stages = tuple(_build(StageConfig, s, f"stages[{i}]") for i, s in enumerate(data.pop("stages")))
        except KeyError as e:
            raise ConfigError(f"training config: missing {e}") from None
        d = dict(data.pop("data", {}))
        aug = _build(AugmentConfig, d.pop("augment", {}), "data.augment")
        dc = _build(DataConfig, {**d, "augment": aug}, "data") if d or aug else DataConfig()
        teacher = _build(TeacherConfig, data.pop("teacher", {}), "teacher")
        cfg = _build(cls, {**data, "model": model, "stages": stages, "data": dc, "teacher": teacher}, "training config")
        cfg.validate()
        return cfg

    @classmethod
    def load(cls, path: str | Path) -> TrainConfig:
        p = Path(path)
        try:
            data = json.loads(p.read_text())
        except FileNotFoundError:
            raise ConfigError(f"{p}: no such training config") from None
        except json.JSONDecodeError as e:
            raise ConfigError(f"{p}: not valid JSON ({e})") from None
        return cls.from_dict(data)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["model"] = self.model.to_dict()
        return json.loads(json.dumps(d))  # plain JSON types (lists, not tuples)

    def save(self, path: str | Path) -> None:
        Path(path).write_text(json.dumps(self.to_dict(), indent=2) + "\n")
