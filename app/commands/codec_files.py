"""``focalchat encode | decode | info``: compressed audio files (.fcs)."""

from __future__ import annotations

import argparse
import sys
import time

from app.precision import MODE_HELP, MODES


def register(sub) -> None:
    p = sub.add_parser("encode", help="compress an audio file to .fcs tokens",
                       description="Compress any audio file (any rate, any channels; mixed to mono and resampled "
                                   "to 16 kHz) to a .fcs file of codec tokens.")
    p.add_argument("input", help="audio file (wav, flac, ogg, ...)")
    p.add_argument("output", help="compressed file to write (.fcs)")
    p.add_argument("--model", default="default", help="default | 2k | 4k | 65k | hub id | checkpoint folder")
    p.add_argument("--mode", default="auto", choices=MODES, help=MODE_HELP)
    p.set_defaults(func=encode)

    p = sub.add_parser("decode", help="decompress a .fcs file to WAV")
    p.add_argument("input", help="compressed file (.fcs)")
    p.add_argument("output", help="WAV file to write")
    p.add_argument("--model", default="default", help="default | 2k | 4k | 65k | hub id | checkpoint folder")
    p.add_argument("--mode", default="auto", choices=MODES, help=MODE_HELP)
    p.add_argument("--rate", type=int, default=None, help="resample the output to this rate (default: model rate)")
    p.add_argument("--force", action="store_true", help="decode even if the file names another model")
    p.add_argument("--partial", action="store_true", help="decode a truncated file up to the damage")
    p.set_defaults(func=decode)

    p = sub.add_parser("info", help="show the header of a .fcs file")
    p.add_argument("input", help="compressed file (.fcs)")
    p.set_defaults(func=info)


def _fail(msg: str) -> int:
    print(f"error: {msg}", file=sys.stderr)
    return 2


def _load(spec: str, mode: str = "auto"):
    from app.modelref import load_model

    return load_model(spec, mode=mode)


def encode(args: argparse.Namespace) -> int:
    from codec.audio import AudioFileError
    from codec.compress import encode_file, payload_bytes
    from codec.pretrained import CheckpointError

    try:
        model = _load(args.model, args.mode)
        t0 = time.perf_counter()
        h = encode_file(model, args.input, args.output)
    except (CheckpointError, AudioFileError, OSError) as exc:
        return _fail(str(exc))
    dt = time.perf_counter() - t0
    print(f"{args.input} -> {args.output}: {h.duration_s:.2f} s, {h.num_tokens} tokens x {h.bits} bits "
          f"= {payload_bytes(h)} bytes payload ({h.bitrate_bps / 1000:.2f} kbps), model {h.model_id}, "
          f"{dt:.2f} s ({h.duration_s / max(dt, 1e-9):.1f}x real time)")
    return 0


def decode(args: argparse.Namespace) -> int:
    from codec.compress import ModelMismatchError, decode_file
    from codec.fileformat import FcsFormatError
    from codec.pretrained import CheckpointError

    try:
        model = _load(args.model, args.mode)
        h, n = decode_file(model, args.input, args.output, force=args.force, allow_partial=args.partial,
                           sample_rate=args.rate)
    except (CheckpointError, FcsFormatError, ModelMismatchError, OSError) as exc:
        return _fail(str(exc))
    rate = args.rate or model.sample_rate_output
    print(f"{args.input} -> {args.output}: {n} samples at {rate} Hz ({n / rate:.2f} s), "
          f"{h.num_tokens} tokens, model {h.model_id}")
    return 0


def info(args: argparse.Namespace) -> int:
    from codec.compress import payload_bytes
    from codec.fileformat import FcsFormatError, read_fcs_header

    try:
        h = read_fcs_header(args.input)
    except (FcsFormatError, OSError) as exc:
        return _fail(str(exc))
    rows = [
        ("model", h.model_id), ("model hash", h.model_hash.hex()),
        ("bits per token", h.bits), ("frame rate", f"{h.frame_rate:g} Hz"),
        ("bitrate", f"{h.bitrate_bps:.0f} bps"), ("sample rates", f"{h.input_sample_rate} Hz in, "
                                                              f"{h.output_sample_rate} Hz out"),
        ("chunk", f"{h.chunk_frames} frames"), ("duration", f"{h.duration_s:.3f} s ({h.num_samples} samples)"),
        ("tokens", h.num_tokens), ("payload", f"{payload_bytes(h)} bytes"),
    ]
    for k, v in rows:
        print(f"{k:>15}: {v}")
    return 0
