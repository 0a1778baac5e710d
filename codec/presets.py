"""Named configurations: the published full-size streaming models and a tiny one for tests/demos."""

from __future__ import annotations

from .config import (
    BSQConfig,
    CodecConfig,
    FocalDecoderConfig,
    FocalEncoderConfig,
    WaveNeXtConfig,
    WavLMConfig,
)


def full_config(bits: int = 12) -> CodecConfig:
    """FocalCodec-Stream full size (249 M parameters); bits 11 / 12 / 16 = the 2k / 4k / 65k checkpoints."""
    return CodecConfig(
        compressor_config=FocalEncoderConfig(output_dim=bits),
        quantizer_config=BSQConfig(codebook_size=2**bits),
        decompressor_config=FocalDecoderConfig(input_dim=bits),
    )


def tiny_config(bits: int = 12, window: int = 24) -> CodecConfig:
    """About 1 M parameters, same geometry (320x, 4-frame chunks, 24 kHz out): for tests and demos."""
    return CodecConfig(
        encoder_config=WavLMConfig(hidden_dims=(32, 32, 32, 32, 32, 48, 48), num_layers=2, dim=96, ffn_dim=256,
                                   num_heads=4, num_buckets=32, max_distance=64, max_cached_steps=64, conv_pos=32,
                                   conv_pos_groups=4, window_size=window),
        compressor_config=FocalEncoderConfig(input_dim=96, output_dim=bits, hidden_dims=(80, 64),
                                             downscale_factors=(1, 1), window_size=window),
        quantizer_config=BSQConfig(codebook_size=2**bits),
        decompressor_config=FocalDecoderConfig(input_dim=bits, output_dim=96, hidden_dims=(64, 80),
                                               upscale_factors=(1, 1), window_size=window, last_window_size=window),
        decoder_config=WaveNeXtConfig(input_dim=96, num_layers=3, dim=64, ffn_dim=128),
    )


PRESETS = {"full-2k": lambda: full_config(11), "full-4k": lambda: full_config(12),
           "full-65k": lambda: full_config(16), "tiny": tiny_config}
