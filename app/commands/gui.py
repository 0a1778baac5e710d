"""``focalchat gui``: the desktop app (PySide6)."""

from __future__ import annotations

import argparse
import sys


def register(sub) -> None:
    p = sub.add_parser("gui", help="the desktop app: calls, codec demo, recordings",
                       description="Open the FocalChat window. Settings live in a JSON file (--config, default "
                                   "$XDG_CONFIG_HOME/focalchat/settings.json).")
    p.add_argument("--config", metavar="FILE", help="settings file to use (created on exit if missing)")
    p.add_argument("--model", help="model to load at start (default | 2k | 4k | 65k | hub id | folder); "
                                   "default: the one in the settings")
    how = p.add_mutually_exclusive_group()
    how.add_argument("--host", metavar="[HOST:]PORT", help="once the model is loaded, wait for a peer on this port")
    how.add_argument("--connect", metavar="HOST:PORT", help="once the model is loaded, call the peer there")
    p.add_argument("--smoke-test", type=float, metavar="S", default=None,
                   help="start, load the model, quit (exit 0 if it loaded within S seconds); for packaging checks")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    try:
        from app.gui.app import run as run_gui
    except ImportError as exc:
        print(f"error: the GUI needs the app extra (pip install -e '.[app]'): {exc}", file=sys.stderr)
        return 2
    return run_gui(config=args.config, model=args.model, host=args.host, connect=args.connect,
                   smoke_test=args.smoke_test)
