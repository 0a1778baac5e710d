"""``focalchat``: one command with a subcommand for every job."""

from __future__ import annotations

import argparse
import logging
import sys

from app import commands


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="focalchat", description="FocalChat: low-bandwidth voice chat on FocalCodec-Stream")
    p.add_argument("-v", "--verbose", action="count", default=0, help="more logging (-vv for debug)")
    sub = p.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    for register in commands.REGISTRY:
        register(sub)
    return p


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=(logging.WARNING, logging.INFO, logging.DEBUG)[min(args.verbose, 2)],
                        format="%(levelname)s %(name)s: %(message)s")
    try:
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
