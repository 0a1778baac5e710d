"""Codec evaluation harness: classic baselines, quality metrics and the benchmark loop behind ``focalchat eval``.

- :mod:`codec.evaluation.baselines`: one interface for every codec,
  ``encode_decode(sig16k) -> (signal, sample_rate, payload_bits)``.
- :mod:`codec.evaluation.metrics`: alignment, PESQ-wb, STOI, WER, speaker similarity, no-reference MOS.
- :mod:`codec.evaluation.harness`: ``evaluate(manifest, codecs)`` -> per-codec table + per-utterance rows.

The heavy evaluator packages are the optional extra ``eval`` (``pip install -e ".[eval]"``); nothing here
imports them before they are needed.
"""

from __future__ import annotations

INSTALL_HINT = 'pip install -e ".[eval]"'


class MissingEvalDependency(ImportError):
    """An optional evaluation package is not installed."""

    def __init__(self, package: str, what: str = "") -> None:
        self.package = package
        why = f" (for {what})" if what else ""
        super().__init__(f"the optional package {package!r}{why} is missing: install the evaluation extra "
                         f"with `{INSTALL_HINT}` (from the repository root; no make target needed)")


def require(module: str, package: str | None = None, what: str = ""):
    """Import ``module`` or raise :class:`MissingEvalDependency` naming the pip package."""
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError as exc:
        if isinstance(exc, MissingEvalDependency):
            raise
        raise MissingEvalDependency(package or module, what) from exc
