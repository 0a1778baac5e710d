"""``focalchat bench``: streaming latency / memory / quality figures of the codec (see :mod:`codec.bench`)."""

from __future__ import annotations

import argparse


def _run(args: argparse.Namespace) -> int:
    from codec.bench import main_from_args  # torch is imported by the run, not by ``focalchat --help``

    return main_from_args(args)


def register(sub) -> None:
    from codec.bench import add_arguments

    p = sub.add_parser(
        "bench",
        help="benchmark streaming encode/decode per 80 ms chunk (latency, RTF, peak RSS, bf16/int8 quality)",
        description="Benchmark streaming encode + decode per 80 ms chunk for each mode and thread count, each "
                    "configuration in a fresh subprocess; prints a markdown table.",
    )
    add_arguments(p)
    p.set_defaults(func=_run)
