"""``focalchat export``: recorded calls (.fcr) to WAV."""

from __future__ import annotations

import argparse
import sys


def register(sub) -> None:
    p = sub.add_parser("export", help="decode a recorded call (.fcr) to a WAV file",
                       description="Decode both directions of a recorded call; missing chunks are concealed as in "
                                   "the call; a damaged recording is exported up to the damage.")
    p.add_argument("input", help="recording (.fcr)")
    p.add_argument("output", help="WAV file to write")
    p.add_argument("--layout", default="stereo", choices=("stereo", "mix", "sent", "received"),
                   help="stereo: left = me, right = peer (default); mix: mono sum; or one direction")
    p.add_argument("--model", default="default", help="the model the call used (default: the embedded one)")
    p.add_argument("--force", action="store_true", help="decode even if the recording names another model")
    p.set_defaults(func=export)


def export(args: argparse.Namespace) -> int:
    from app.modelref import load_model
    from app.recording import RecordingError, RecordingReader, export_wav
    from codec.pretrained import CheckpointError

    try:
        reader = RecordingReader(args.input)
        model = load_model(args.model)
        h = reader.header
        if h.bits != model.bits_per_token:
            raise RecordingError(f"the recording holds {h.bits}-bit tokens; model {model.model_id} makes "
                                 f"{model.bits_per_token}-bit tokens")
        if not args.force and h.model_hash != model.fingerprint():
            raise RecordingError(f"the call used model {h.model_id!r} (hash {h.model_hash[:12]}), not "
                                 f"{model.model_id!r}; pass --model, or --force")
        summary = export_wav(reader, model, args.output, layout=args.layout)
    except (RecordingError, CheckpointError, ValueError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if summary.get("damage"):
        print(f"warning: {summary['damage']}", file=sys.stderr)
    parts = ", ".join(f"{k}: {v['chunks']} chunks ({v['concealed']} concealed)"
                      for k, v in summary.items() if isinstance(v, dict))
    print(f"{args.input} -> {args.output}: {summary['seconds']:.2f} s, {parts}")
    return 0
