"""``focalchat conformance ROOT``: check our codec against reference test vectors."""

from __future__ import annotations

import argparse
import sys


def register(sub) -> None:
    p = sub.add_parser("conformance", help="recompute reference test vectors and compare (exit 1 on any failure)",
                       description="Recompute every stored array of every clip of every model folder under ROOT "
                                   "(inputs/ + <model>/{config.json, model.safetensors, expected/*.npz}) and compare: "
                                   "tokens exactly, floats with allclose(rtol, atol).")
    p.add_argument("root", help="conformance folder, e.g. ../shared/conformance/focalcodec_stream_small")
    p.add_argument("--rtol", type=float, default=1e-4)
    p.add_argument("--atol", type=float, default=1e-4)
    p.add_argument("-q", "--quiet", action="store_true", help="print failures and the summary only")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from codec.conformance import check_root, format_result

    def show(r):
        if not args.quiet or r.status == "fail":
            print(format_result(r), flush=True)

    try:
        report = check_root(args.root, rtol=args.rtol, atol=args.atol, progress=show)
    except FileNotFoundError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(report.summary())
    return 0 if report.ok else 1
