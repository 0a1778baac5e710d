"""Dataclass configs, one per model part; the JSON on disk (``config.json``) is their ``asdict``.

The schema is that of the published FocalCodec checkpoints: a top-level object with
``<part>_name`` and ``<part>_config`` for encoder, compressor, quantizer, decompressor, decoder.
"""

from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any


class ConfigError(ValueError):
    """A model configuration is malformed or inconsistent."""


def _from_dict(cls, data: dict[str, Any], where: str):
    if not isinstance(data, dict):
        raise ConfigError(f"{where}: expected a JSON object, got {type(data).__name__}")
    known = {f.name for f in fields(cls)}
    unknown = sorted(set(data) - known)
    if unknown:
        raise ConfigError(f"{where}: unknown keys {unknown} (known: {sorted(known)})")
    kwargs = {}
    for f in fields(cls):
        if f.name in data:
            v = data[f.name]
            if isinstance(v, list):
                v = tuple(v)
            kwargs[f.name] = v
    try:
        obj = cls(**kwargs)
    except TypeError as e:  # missing required fields
        raise ConfigError(f"{where}: {e}") from None
    obj.validate(where)
    return obj


FRONTENDS = ("conv", "logmel")


@dataclass(frozen=True)
class WavLMConfig:
    """Causal (or full-context) WavLM-style encoder: CNN feature extractor + transformer."""

    hidden_dims: tuple[int, ...] = (512,) * 7
    kernel_sizes: tuple[int, ...] = (10, 3, 3, 3, 3, 2, 2)
    strides: tuple[int, ...] = (5, 2, 2, 2, 2, 2, 2)
    num_layers: int = 6
    dim: int = 1024
    ffn_dim: int = 4096
    num_heads: int = 16
    num_buckets: int = 320
    max_distance: int = 800
    max_cached_steps: int = 2048  # kept for schema compatibility; no bias table is cached here
    dropout: float = 0.0
    conv_pos: int = 128
    conv_pos_groups: int = 16
    causal: bool = True
    window_size: int = 512
    lookahead_size: int = 3
    use_flex_attention: bool = False  # schema compatibility; ignored
    # front end: "conv" (WavLM's raw-waveform CNN: hidden_dims, kernel_sizes, strides) or "logmel"
    # (codec.melfront: causal log-mel, mel_fft-sample windows every mel_hop samples, mel_stack hops per frame)
    frontend: str = "conv"
    mel_bins: int = 80
    mel_fft: int = 512
    mel_hop: int = 160
    mel_stack: int = 2
    mel_offset: float = -9.0  # log energies -> (log - offset) * scale
    mel_scale: float = 0.25

    def validate(self, where: str = "encoder_config") -> None:
        if self.frontend not in FRONTENDS:
            raise ConfigError(f"{where}: unknown frontend {self.frontend!r} (known: {', '.join(FRONTENDS)})")
        if self.frontend == "logmel":
            if self.mel_bins < 1 or self.mel_hop < 1 or self.mel_stack < 1 or self.mel_fft < self.mel_hop:
                raise ConfigError(f"{where}: the log-mel front end needs mel_bins, mel_hop, mel_stack >= 1 and "
                                  f"mel_fft >= mel_hop")
            if not self.mel_scale > 0:
                raise ConfigError(f"{where}: mel_scale must be > 0")
        n = len(self.hidden_dims)
        if n == 0 or len(self.kernel_sizes) != n or len(self.strides) != n:
            raise ConfigError(f"{where}: hidden_dims, kernel_sizes and strides must have the same non-zero length")
        if self.dim % self.num_heads:
            raise ConfigError(f"{where}: dim {self.dim} is not divisible by num_heads {self.num_heads}")
        if self.dim % self.conv_pos_groups:
            raise ConfigError(f"{where}: dim {self.dim} is not divisible by conv_pos_groups {self.conv_pos_groups}")
        if self.causal and self.window_size < self.chunk_frames:
            raise ConfigError(f"{where}: window_size {self.window_size} < chunk of {self.chunk_frames} frames")
        if self.num_buckets < 4 or self.max_distance <= self.num_buckets // 4:
            raise ConfigError(f"{where}: num_buckets/max_distance out of range")

    @property
    def downsample_factor(self) -> int:
        """Input samples per encoder frame."""
        if self.frontend == "logmel":
            return self.mel_hop * self.mel_stack
        return math.prod(self.strides)

    @property
    def frontend_dim(self) -> int:
        """Channels the front end hands to the projection."""
        return self.mel_bins * self.mel_stack if self.frontend == "logmel" else self.hidden_dims[-1]

    @property
    def chunk_frames(self) -> int:
        """Frames per streaming chunk (1 + lookahead)."""
        return 1 + self.lookahead_size


@dataclass(frozen=True)
class FocalEncoderConfig:
    """Compressor: focal-modulation blocks (with optional temporal downscaling) and a projection to D."""

    input_dim: int = 1024
    output_dim: int = 12
    hidden_dims: tuple[int, ...] = (1024, 1024, 1024)
    downscale_factors: tuple[int, ...] = (1, 1, 1)
    focal_window: int = 14
    focal_level: int = 2
    focal_factor: int = 4
    dropout: float = 0.0
    use_post_norm: bool = False
    use_layerscale: bool = False
    layerscale_init: float = 1e-4
    tanhscale_init: float = 0.5
    normalize_modulator: bool = False
    causal: bool = True
    window_size: int = 512

    def validate(self, where: str = "compressor_config") -> None:
        if len(self.hidden_dims) != len(self.downscale_factors) or not self.hidden_dims:
            raise ConfigError(f"{where}: hidden_dims and downscale_factors must have the same non-zero length")
        if self.focal_level < 1 or self.window_size < 1:
            raise ConfigError(f"{where}: focal_level and window_size must be >= 1")


@dataclass(frozen=True)
class FocalDecoderConfig:
    """Decompressor: projection from D, focal-modulation blocks (with optional upscaling), chunk refiner."""

    input_dim: int = 12
    output_dim: int = 1024
    hidden_dims: tuple[int, ...] = (1024, 1024, 1024)
    upscale_factors: tuple[int, ...] = (1, 1, 1)
    focal_window: int = 14
    focal_level: int = 2
    focal_factor: int = 4
    dropout: float = 0.0
    use_post_norm: bool = False
    use_layerscale: bool = False
    layerscale_init: float = 1e-4
    tanhscale_init: float = 0.5
    normalize_modulator: bool = False
    causal: bool = True
    window_size: int = 512
    last_window_size: int = 512
    lookahead_size: int = 3

    def validate(self, where: str = "decompressor_config") -> None:
        if len(self.hidden_dims) != len(self.upscale_factors) or not self.hidden_dims:
            raise ConfigError(f"{where}: hidden_dims and upscale_factors must have the same non-zero length")
        if self.focal_level < 1 or self.window_size < 1 or self.last_window_size < 1:
            raise ConfigError(f"{where}: focal_level and window sizes must be >= 1")

    @property
    def has_refiner(self) -> bool:
        return self.causal and self.lookahead_size > 0


@dataclass(frozen=True)
class BSQConfig:
    """Binary spherical quantizer: codebook of 2**D sign patterns."""

    codebook_size: int = 4096

    def validate(self, where: str = "quantizer_config") -> None:
        d = self.codebook_size.bit_length() - 1
        if self.codebook_size < 2 or 1 << d != self.codebook_size or d > 32:
            raise ConfigError(f"{where}: codebook_size must be a power of two in [2, 2**32], got {self.codebook_size}")

    @property
    def dim(self) -> int:
        """Bits per token D = log2(codebook_size)."""
        return self.codebook_size.bit_length() - 1


@dataclass(frozen=True)
class WaveNeXtConfig:
    """Causal WaveNeXt decoder: ConvNeXt backbone + a head writing ``hop_length`` samples per frame.

    ``head``: ``"linear"`` (the published checkpoints: one linear map per frame to its samples) or
    ``"istft"`` (causal overlap-add: each frame gives ``hop_length / head_hop`` short spectra of
    ``head_fft`` samples, Hann-windowed and overlap-added every ``head_hop`` samples; no lookahead).
    ``source``: ``"none"`` or ``"harmonic"`` (adds :class:`codec.harmonic.HarmonicSource`: sinusoids at the
    multiples of a pitch predicted per frame, ``source_harmonics`` of them below ``source_fmax`` Hz, their
    amplitudes read from a ``source_bands``-point envelope; ``sample_rate`` must be the codec's output rate).
    ``head_voiced_gain`` (istft head with the harmonic source): the factor on the head's spectra in frames
    the source calls voiced (voicing logit > 0): at 1 the head adds to the harmonics everywhere, at 0 voiced
    speech comes from the harmonics alone (trained with the source, the head otherwise fills voiced speech
    with noise, and a soft gain on it only teaches it to be louder there); it applies below
    ``head_voiced_above`` Hz (0: at all frequencies), above which voiced frames keep the head's noise
    (breath, voiced fricatives). ``source_voiced_fmax`` (Hz, 0: ``source_fmax``): the highest harmonic
    frequency, the envelope still spanning ``source_fmax``: voiced speech is harmonic only up to a few kHz
    and aperiodic above, and harmonics written up to 8 kHz are heard as a buzz. ``source_postfilter``: at
    decoding (eval mode) the envelope's rise above its average over +-1 kHz is multiplied by this factor:
    trained by regression, the envelope comes out flatter than speech, and raising its formants makes it
    sound less muffled (Codec2 post-filters its decoded envelope likewise); in training the envelope is used
    as predicted.
    """

    input_dim: int = 1024
    num_layers: int = 8
    dim: int = 1024
    ffn_dim: int = 2048
    kernel_size: int = 7
    layerscale_init: float | None = None
    hop_length: int = 480
    causal: bool = True
    head: str = "linear"
    head_hop: int = 120  # istft: samples between sub-frames; divides hop_length
    head_fft: int = 480  # istft: sub-frame length (samples); a multiple of head_hop
    source: str = "none"
    sample_rate: int = 24000  # output rate (Hz): the harmonic source's frequencies are in Hz
    source_harmonics: int = 96
    source_bands: int = 64
    source_f0_min: float = 50.0  # Hz
    source_f0_max: float = 500.0  # Hz
    source_fmax: float = 8000.0  # Hz: the envelope's span
    source_voiced_fmax: float = 0.0  # Hz: no harmonic at or above it (0: source_fmax)
    head_voiced_gain: float = 1.0
    head_voiced_above: float = 0.0  # Hz
    source_postfilter: float = 1.0  # decoding only: formant contrast of the envelope (1 = as predicted)

    def validate(self, where: str = "decoder_config") -> None:
        if self.kernel_size < 1 or self.hop_length < 1:
            raise ConfigError(f"{where}: kernel_size and hop_length must be >= 1")
        if self.source not in ("none", "harmonic"):
            raise ConfigError(f"{where}: source must be 'none' or 'harmonic', got {self.source!r}")
        if self.source != "harmonic" and (self.head_voiced_gain != 1.0 or self.source_postfilter != 1.0):
            raise ConfigError(f"{where}: head_voiced_gain and source_postfilter need source = 'harmonic'")
        if self.source == "harmonic":
            if self.source_harmonics < 1 or self.source_bands < 2:
                raise ConfigError(f"{where}: need source_harmonics >= 1 and source_bands >= 2")
            if not 0 < self.source_f0_min < self.source_f0_max:
                raise ConfigError(f"{where}: need 0 < source_f0_min < source_f0_max (Hz), got "
                                  f"{self.source_f0_min}, {self.source_f0_max}")
            if not self.source_f0_max < self.source_fmax <= self.sample_rate / 2:
                raise ConfigError(f"{where}: source_fmax ({self.source_fmax} Hz) must lie above source_f0_max "
                                  f"and at most half the sample rate ({self.sample_rate} Hz)")
            if not (self.source_voiced_fmax == 0.0 or self.source_f0_max < self.source_voiced_fmax <= self.source_fmax):
                raise ConfigError(f"{where}: source_voiced_fmax ({self.source_voiced_fmax} Hz) must be 0 or lie above "
                                  f"source_f0_max and at most source_fmax ({self.source_fmax} Hz)")
            if not 0.0 < self.source_postfilter <= 4.0:
                raise ConfigError(f"{where}: source_postfilter must lie in (0, 4], got {self.source_postfilter}")
            if not 0.0 <= self.head_voiced_gain <= 1.0:
                raise ConfigError(f"{where}: head_voiced_gain must lie in [0, 1], got {self.head_voiced_gain}")
            if not 0.0 <= self.head_voiced_above <= self.sample_rate / 2:
                raise ConfigError(f"{where}: head_voiced_above must lie in [0, {self.sample_rate / 2}] Hz")
            if self.head_voiced_gain != 1.0 and self.head != "istft":
                raise ConfigError(f"{where}: head_voiced_gain needs the istft head")
        if self.head not in ("linear", "istft"):
            raise ConfigError(f"{where}: head must be 'linear' or 'istft', got {self.head!r}")
        if self.head == "istft":
            if self.head_hop < 1 or self.hop_length % self.head_hop:
                raise ConfigError(f"{where}: head_hop ({self.head_hop}) must divide hop_length ({self.hop_length})")
            if self.head_fft < 2 * self.head_hop or self.head_fft % self.head_hop:
                raise ConfigError(f"{where}: head_fft ({self.head_fft}) must be a multiple of head_hop "
                                  f"({self.head_hop}), at least twice it")
            if not self.causal:
                raise ConfigError(f"{where}: the istft head is causal; use the Vocos decoder for full context")


@dataclass(frozen=True)
class VocosConfig:
    """Full-context Vocos decoder: ConvNeXt backbone + iSTFT head (non-streaming checkpoints)."""

    input_dim: int = 1024
    num_layers: int = 8
    dim: int = 512
    ffn_dim: int = 1536
    kernel_size: int = 7
    layerscale_init: float | None = None
    n_fft: int = 1024
    hop_length: int = 320
    causal: bool = False

    def validate(self, where: str = "decoder_config") -> None:
        if self.n_fft < self.hop_length or self.hop_length < 1:
            raise ConfigError(f"{where}: need n_fft >= hop_length >= 1")
        if self.causal:
            raise ConfigError(f"{where}: the causal Vocos variant is not supported; causal models use WaveNeXt")


ENCODERS = {"WavLM": WavLMConfig}
COMPRESSORS = {"FocalEncoder": FocalEncoderConfig}
QUANTIZERS = {"BinarySphericalQuantizer": BSQConfig}
DECOMPRESSORS = {"FocalDecoder": FocalDecoderConfig}
DECODERS = {"WaveNeXt": WaveNeXtConfig, "Vocos": VocosConfig}
_PARTS = {
    "encoder": ENCODERS,
    "compressor": COMPRESSORS,
    "quantizer": QUANTIZERS,
    "decompressor": DECOMPRESSORS,
    "decoder": DECODERS,
}


@dataclass(frozen=True)
class CodecConfig:
    """The whole codec: one config per part plus the part names (``config.json`` of a checkpoint)."""

    encoder_config: WavLMConfig = field(default_factory=WavLMConfig)
    compressor_config: FocalEncoderConfig = field(default_factory=FocalEncoderConfig)
    quantizer_config: BSQConfig = field(default_factory=BSQConfig)
    decompressor_config: FocalDecoderConfig = field(default_factory=FocalDecoderConfig)
    decoder_config: WaveNeXtConfig | VocosConfig = field(default_factory=WaveNeXtConfig)
    encoder_name: str = "WavLM"
    compressor_name: str = "FocalEncoder"
    quantizer_name: str = "BinarySphericalQuantizer"
    decompressor_name: str = "FocalDecoder"
    decoder_name: str = "WaveNeXt"

    # ------------------------------------------------------------------ (de)serialisation
    @classmethod
    def from_dict(cls, data: dict[str, Any], overrides: dict[str, Any] | None = None) -> CodecConfig:
        """Build from the ``config.json`` schema; ``overrides`` patches dotted paths first
        (e.g. ``{"encoder_config.window_size": 256}``)."""
        if not isinstance(data, dict):
            raise ConfigError(f"config: expected a JSON object, got {type(data).__name__}")
        data = json.loads(json.dumps(data))  # deep copy
        for path, value in (overrides or {}).items():
            node = data
            *head, last = path.split(".")
            for k in head:
                if not isinstance(node.get(k), dict):
                    raise ConfigError(f"override {path!r}: {k!r} is not a config section")
                node = node[k]
            node[last] = value
        known = {f"{p}_name" for p in _PARTS} | {f"{p}_config" for p in _PARTS}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ConfigError(f"config: unknown top-level keys {unknown}")
        kwargs: dict[str, Any] = {}
        for part, registry in _PARTS.items():
            name = data.get(f"{part}_name", cls.__dataclass_fields__[f"{part}_name"].default)
            if name not in registry:
                raise ConfigError(f"config: unsupported {part}_name {name!r} (supported: {sorted(registry)})")
            kwargs[f"{part}_name"] = name
            kwargs[f"{part}_config"] = _from_dict(registry[name], data.get(f"{part}_config", {}), f"{part}_config")
        cfg = cls(**kwargs)
        cfg.validate()
        return cfg

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for part in _PARTS:
            out[f"{part}_name"] = getattr(self, f"{part}_name")
            d = asdict(getattr(self, f"{part}_config"))
            out[f"{part}_config"] = {k: list(v) if isinstance(v, tuple) else v for k, v in d.items()}
        return out

    @classmethod
    def from_json(cls, path: str | Path, overrides: dict[str, Any] | None = None) -> CodecConfig:
        path = Path(path)
        try:
            data = json.loads(path.read_text())
        except FileNotFoundError:
            raise ConfigError(f"{path}: no such config file") from None
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise ConfigError(f"{path}: not valid JSON ({e})") from None
        return cls.from_dict(data, overrides)

    def to_json(self, path: str | Path) -> None:
        Path(path).write_text(json.dumps(self.to_dict(), indent=2) + "\n")

    def replace(self, **kwargs: Any) -> CodecConfig:
        return dataclasses.replace(self, **kwargs)

    # ------------------------------------------------------------------ checks and derived values
    def validate(self) -> None:
        e, c, q, d, v = (self.encoder_config, self.compressor_config, self.quantizer_config,
                         self.decompressor_config, self.decoder_config)
        if c.input_dim != e.dim:
            raise ConfigError(f"compressor input_dim {c.input_dim} != encoder dim {e.dim}")
        if c.output_dim != q.dim:
            raise ConfigError(f"compressor output_dim {c.output_dim} != log2(codebook_size) {q.dim}")
        if d.input_dim != q.dim:
            raise ConfigError(f"decompressor input_dim {d.input_dim} != log2(codebook_size) {q.dim}")
        if v.input_dim != d.output_dim:
            raise ConfigError(f"decoder input_dim {v.input_dim} != decompressor output_dim {d.output_dim}")
        if self.causal:
            if not (e.causal and c.causal and d.causal and v.causal):
                raise ConfigError("a causal codec needs every part causal (encoder, compressor, decompressor, decoder)")
            if d.has_refiner and d.lookahead_size != e.lookahead_size:
                raise ConfigError("decompressor lookahead_size must equal the encoder's (refiner chunks = encoder chunks)")
            r = math.prod(c.downscale_factors)
            if e.chunk_frames % r:
                raise ConfigError(f"a streaming chunk of {e.chunk_frames} frames is not divisible by the "
                                  f"compressor downscaling x{r}")
            if math.prod(d.upscale_factors) != r:
                raise ConfigError("decompressor upscaling must undo the compressor downscaling")
        if getattr(v, "source", "none") != "none" and v.sample_rate != self.sample_rate_output:
            raise ConfigError(f"decoder_config.sample_rate ({v.sample_rate}) must be the output rate "
                              f"({self.sample_rate_output} Hz) for its harmonic source")

    @property
    def causal(self) -> bool:
        return self.encoder_config.causal

    @property
    def bits_per_token(self) -> int:
        return self.quantizer_config.dim

    @property
    def sample_rate_input(self) -> int:
        return 16000

    @property
    def sample_rate_output(self) -> int:
        return self.sample_rate_input * self.decoder_config.hop_length // self.encoder_config.downsample_factor

    @property
    def token_rate(self) -> float:
        """Tokens per second (frame rate of the quantised stream)."""
        return self.sample_rate_input / self.encoder_config.downsample_factor / math.prod(
            self.compressor_config.downscale_factors)

    @property
    def chunk_size(self) -> int:
        """Input samples per streaming step (16 kHz)."""
        return self.encoder_config.downsample_factor * self.encoder_config.chunk_frames

    @property
    def tokens_per_chunk(self) -> int:
        return self.encoder_config.chunk_frames // math.prod(self.compressor_config.downscale_factors)

    @property
    def output_chunk_size(self) -> int:
        """Output samples per streaming step (24 kHz for WaveNeXt)."""
        return self.encoder_config.chunk_frames * self.decoder_config.hop_length

    @property
    def bitrate(self) -> float:
        """Payload bits per second."""
        return self.token_rate * self.bits_per_token

    @property
    def latency_ms(self) -> float | None:
        return 1000.0 * self.chunk_size / self.sample_rate_input if self.causal else None
