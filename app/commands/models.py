"""Model subcommands: ``check-manifest`` (key/shape manifests) and ``model-info`` (load and describe)."""

from __future__ import annotations

import argparse
import sys


def register(sub) -> None:
    p = sub.add_parser(
        "check-manifest",
        help="compare the model built from a reference manifest's config with its keys, shapes and counts",
        description="Build each manifest's model on the meta device (no weights allocated) and compare every "
                    "state-dict key, shape and dtype and the parameter counts with the manifest.",
    )
    p.add_argument("manifests", nargs="+", metavar="MANIFEST", help="manifest JSON file(s)")
    p.set_defaults(func=cmd_check_manifest)

    p = sub.add_parser(
        "model-info",
        help="load a model (folder, config path, hub id or 2k/4k/65k) and print its summary",
        description="Load a checkpoint and print its configuration summary. SOURCE is a local folder with "
                    "config.json (or model.json) + model.safetensors, the path of such a JSON file, a Hugging "
                    "Face Hub id, or one of the aliases 2k, 4k, 65k.",
    )
    p.add_argument("source", metavar="SOURCE")
    p.add_argument("--revision", default=None, help="hub revision (branch, tag or commit)")
    p.add_argument("--cache-dir", default=None, help="hub cache folder")
    p.add_argument("--offline", action="store_true", help="use only the local hub cache (like HF_HUB_OFFLINE=1)")
    p.set_defaults(func=cmd_model_info)


def cmd_check_manifest(args: argparse.Namespace) -> int:
    from codec.pretrained import CheckpointError, check_manifest

    passed = failed = 0
    for path in args.manifests:
        try:
            report = check_manifest(path)
        except CheckpointError as e:
            print(f"{path}: FAILED\n  error: {e}")
            failed += 1
            continue
        print(report.format())
        if report.ok:
            passed += 1
        else:
            failed += 1
    print(f"{passed} passed, {failed} failed")
    return 1 if failed else 0


def _fmt_rate(hz: float) -> str:
    return f"{hz:g} Hz"


def cmd_model_info(args: argparse.Namespace) -> int:
    from codec.pretrained import CheckpointError, load_pretrained

    try:
        model = load_pretrained(args.source, revision=args.revision, cache_dir=args.cache_dir,
                                local_files_only=True if args.offline else None)
    except CheckpointError as e:
        print("error: " + " ".join(str(e).split()), file=sys.stderr)
        return 2
    c = model.config
    rows = [
        ("model id", model.model_id),
        ("causal (streaming)", "yes" if c.causal else "no (full context)"),
        ("input sample rate", _fmt_rate(c.sample_rate_input)),
        ("output sample rate", _fmt_rate(c.sample_rate_output)),
        ("chunk size", f"{c.chunk_size} samples ({c.tokens_per_chunk} tokens, {c.output_chunk_size} output samples)"
         if c.causal else "n/a"),
        ("latency", f"{c.latency_ms:g} ms" if c.latency_ms is not None else "n/a (not streaming)"),
        ("codebook", f"{c.quantizer_config.codebook_size} codes, {c.bits_per_token} bits per token"),
        ("token rate", f"{c.token_rate:g} tokens/s"),
        ("bitrate", f"{c.bitrate:g} bps ({c.bitrate / 1000:.2f} kbps)"),
        ("decoder", c.decoder_name),
        ("parameters", f"{model.num_params():,}"),
        ("dtype", str(next(model.parameters()).dtype).removeprefix("torch.")),
        ("weights sha256", model.weights_sha256),
    ]
    width = max(len(k) for k, _ in rows)
    for k, v in rows:
        print(f"{k:<{width}}  {v}")
    return 0
