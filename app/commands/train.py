"""``focalchat train``: multi-stage training of a FocalCodec model (see :mod:`codec.training.trainer`)."""

from __future__ import annotations

import argparse
import dataclasses
import logging
import sys
from pathlib import Path

CONFIG_DIR = Path(__file__).resolve().parents[2] / "codec" / "training" / "configs"


def register(sub) -> None:
    p = sub.add_parser(
        "train",
        help="train a codec (multi-stage: e2e / decoder (GAN) / encoder / quantizer / joint), resumable",
        description="Run the stages of a training config in order. Checkpoints go to --out (last.pt for an "
                    "exact resume, compact/ in fp16 small enough to commit). Runs on a GPU when there is one. "
                    f"Bundled configs: {', '.join(sorted(c.stem for c in CONFIG_DIR.glob('*.json')))} "
                    f"(in {CONFIG_DIR}).",
    )
    p.add_argument("config", metavar="CONFIG", help="training config JSON, or the name of a bundled one (small_cpu)")
    p.add_argument("--out", default=None, metavar="DIR", help="run folder [default: runs/<config name>]")
    p.add_argument("--resume", default=None, metavar="PATH",
                   help="resume from a run folder, last.pt or compact/ folder; 'auto' = --out if it holds one")
    p.add_argument("--init-from", default=None, metavar="MODEL", help="initialise weights from a model folder")
    p.add_argument("--max-minutes", type=float, default=None, help="stop (with a checkpoint) after this long")
    p.add_argument("--threads", type=int, default=None, metavar="N",
                   help="torch threads, overriding the config's (1 keeps a busy 2-core machine's other core free)")
    p.add_argument("--device", default="auto", help="auto | cpu | cuda[:N] [default: auto]")
    p.add_argument("--export", default=None, metavar="DIR",
                   help="when training stops, write the model (fp16 config.json + model.safetensors) here")
    p.add_argument("--export-only", action="store_true",
                   help="no training: load --resume's checkpoint and write --export (level-calibrated)")
    p.add_argument("--data-root", default=None, metavar="DIR",
                   help="folder relative manifest paths in the config are taken from [default: current folder]")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_train)


def _resolve_config(spec: str) -> Path:
    p = Path(spec)
    if p.exists():
        return p
    bundled = CONFIG_DIR / f"{spec}.json"
    if bundled.exists():
        return bundled
    raise FileNotFoundError(f"{spec}: no such training config (bundled: "
                            f"{', '.join(sorted(c.stem for c in CONFIG_DIR.glob('*.json')))})")


def cmd_train(args: argparse.Namespace) -> int:
    from codec.config import ConfigError
    from codec.training.config import TrainConfig
    from codec.training.trainer import Trainer

    logging.getLogger("focalchat.train").setLevel(logging.INFO)
    if not logging.getLogger().handlers:
        logging.basicConfig(level=logging.INFO)
    try:
        path = _resolve_config(args.config)
        cfg = TrainConfig.load(path)
    except (FileNotFoundError, ConfigError) as e:
        print(f"focalchat train: {e}", file=sys.stderr)
        return 2
    if args.threads is not None:
        if args.threads < 1:
            print("focalchat train: --threads must be >= 1", file=sys.stderr)
            return 2
        cfg = dataclasses.replace(cfg, threads=args.threads)
    out = Path(args.out or Path("runs") / path.stem)
    resume = args.resume
    if resume == "auto":
        resume = str(out) if (out / "last.pt").exists() or (out / "compact" / "trainer.json").exists() else None
    try:
        trainer = Trainer(cfg, out, device=args.device, init_from=args.init_from,
                          data_base=Path(args.data_root) if args.data_root else None, progress=not args.no_progress)
        if args.export_only:
            if not (args.export and (resume or args.init_from)):
                print("focalchat train: --export-only needs --export and --resume (a run) or --init-from (a model)",
                      file=sys.stderr)
                return 2
            if resume:
                trainer.load(resume)
            print(f"model written to {trainer.export(args.export)}", file=sys.stderr)
            return 0
        print(f"training on {trainer.device}; run folder {out}", file=sys.stderr)
        done = trainer.run(max_minutes=args.max_minutes, resume=resume)
    except (FileNotFoundError, ValueError, ConfigError) as e:
        print(f"focalchat train: {e}", file=sys.stderr)
        return 2
    if args.export:
        folder = trainer.export(args.export)
        print(f"model written to {folder}", file=sys.stderr)
    print("all stages done" if done else "stopped at the time budget (resume with --resume auto)", file=sys.stderr)
    return 0
