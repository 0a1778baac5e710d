"""Whole-file compression: audio -> tokens -> ``.fcs`` and back."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from .audio import load_audio, save_audio
from .bitpack import packed_size
from .fileformat import FcsHeader, read_fcs, write_fcs
from .model import FocalCodec


class ModelMismatchError(ValueError):
    """A compressed file was made by another model than the one asked to decode it."""


def header_for(model: FocalCodec, num_samples: int, num_tokens: int) -> FcsHeader:
    rate = model.config.token_rate
    num, den = (int(rate), 1) if float(rate).is_integer() else (int(round(rate * 1000)), 1000)
    return FcsHeader(
        bits=model.bits_per_token, frame_rate_num=num, frame_rate_den=den,
        input_sample_rate=model.sample_rate_input, output_sample_rate=model.sample_rate_output,
        chunk_frames=model.tokens_per_chunk if model.causal else 1,
        num_samples=num_samples, num_tokens=num_tokens,
        model_id=model.model_id or "unnamed", model_hash=bytes.fromhex(model.fingerprint()),
    )


@torch.inference_mode()
def encode_signal(model: FocalCodec, sig: np.ndarray) -> np.ndarray:
    """16 kHz mono (samples,) -> tokens (frames,) int64. Causal models see the signal zero-padded
    to whole chunks, exactly as a stream would."""
    x = torch.from_numpy(np.ascontiguousarray(sig, dtype=np.float32))[None]
    if model.causal:
        x = torch.nn.functional.pad(x, (0, -x.shape[1] % model.chunk_size))
    return model.sig_to_toks(x)[0].numpy()


@torch.inference_mode()
def decode_tokens(model: FocalCodec, toks: np.ndarray, num_samples: int | None = None) -> np.ndarray:
    """tokens (frames,) -> signal (samples,) at the output rate, trimmed to ``num_samples`` input samples."""
    if toks.size == 0:
        return np.zeros(0, np.float32)
    y = model.toks_to_sig(torch.from_numpy(np.asarray(toks, dtype=np.int64))[None])[0].numpy()
    if num_samples is not None:
        y = y[: num_samples * model.sample_rate_output // model.sample_rate_input]
    return y


def encode_file(model: FocalCodec, src: str | Path, dst: str | Path) -> FcsHeader:
    sig = load_audio(src, model.sample_rate_input)
    toks = encode_signal(model, sig)
    header = header_for(model, len(sig), len(toks))
    write_fcs(dst, header, toks)
    return header


def check_model(model: FocalCodec, header: FcsHeader, force: bool = False) -> None:
    if header.bits != model.bits_per_token:
        raise ModelMismatchError(f"the file holds {header.bits}-bit tokens but the model makes "
                                 f"{model.bits_per_token}-bit tokens ({header.model_id})")
    if not force and header.model_hash != bytes.fromhex(model.fingerprint()):
        raise ModelMismatchError(f"the file was encoded with model {header.model_id!r} "
                                 f"(hash {header.model_hash.hex()[:12]}), not with {model.model_id!r} "
                                 f"(hash {model.fingerprint()[:12]}); decode with that model, or --force")


def decode_file(model: FocalCodec, src: str | Path, dst: str | Path, force: bool = False,
                allow_partial: bool = False, sample_rate: int | None = None) -> tuple[FcsHeader, int]:
    """Decode ``src`` (.fcs) to a WAV; returns the header and the number of samples written."""
    from .audio import resample

    header, toks = read_fcs(src, allow_partial=allow_partial)
    check_model(model, header, force)
    y = decode_tokens(model, toks, header.num_samples)
    sr = model.sample_rate_output
    if sample_rate and sample_rate != sr:
        y, sr = resample(y, sr, sample_rate), sample_rate
    save_audio(dst, y, sr)
    return header, len(y)


def payload_bytes(header: FcsHeader) -> int:
    return packed_size(header.num_tokens, header.bits)
