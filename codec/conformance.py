"""Conformance checker: recompute reference test vectors with our codec and compare.

A conformance root holds ``inputs/*.wav`` (16 kHz) and one or more model folders, each with
``config.json`` (or ``model.json``), ``model.safetensors`` and ``expected/<clip>.npz``. Every stored
array is recomputed **teacher-forced** (each stage gets the expected input of that stage, so a
single token flip cannot cascade) and compared: tokens and codes exactly, floats with
``allclose(rtol, atol)``. Array names are ``<mode>_<what>`` with mode in ``oneshot``,
``oneshot_padded`` (clip zero-padded to whole chunks) or ``stream`` (1280-sample chunks with carried
state), and what in ``feats lats toks codes qfeats rec_sig fwd_toks fwd_codes fwd_rec_sig``.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import soundfile as sf
import torch
import torch.nn.functional as F

from .model import FocalCodec

EXACT = {"toks", "codes", "fwd_toks", "fwd_codes"}
_NAME = re.compile(r"^(oneshot_padded|oneshot|stream)_(.+)$")


@dataclass
class ArrayResult:
    model: str
    clip: str
    key: str
    status: str  # "pass" | "fail" | "skip"
    max_abs_err: float | None = None
    mismatches: int | None = None
    total: int | None = None
    note: str = ""


@dataclass
class ConformanceReport:
    results: list[ArrayResult] = field(default_factory=list)

    @property
    def passed(self) -> int:
        return sum(r.status == "pass" for r in self.results)

    @property
    def failed(self) -> int:
        return sum(r.status == "fail" for r in self.results)

    @property
    def skipped(self) -> int:
        return sum(r.status == "skip" for r in self.results)

    @property
    def ok(self) -> bool:
        return self.failed == 0 and self.passed > 0

    def summary(self) -> str:
        s = f"{self.passed} passed, {self.failed} failed"
        return s + (f" ({self.skipped} skipped)" if self.skipped else "")


def find_model_dirs(root: Path) -> list[Path]:
    return sorted(
        p for p in root.iterdir()
        if p.is_dir() and (p / "expected").is_dir() and ((p / "config.json").exists() or (p / "model.json").exists())
    )


def find_input(root: Path, clip: str) -> Path:
    inputs = root / "inputs"
    cands = sorted(p for p in inputs.glob("*.wav") if p.stem == clip or p.stem.startswith(clip + "_"))
    if len(cands) != 1:
        raise FileNotFoundError(f"expected one input for clip {clip!r} in {inputs} (as {clip}.wav or {clip}_*.wav), "
                                f"found {[p.name for p in cands]}")
    return cands[0]


def load_model(folder: Path) -> FocalCodec:
    from .pretrained import load_pretrained

    return load_pretrained(folder, local_files_only=True)


class _ClipRunner:
    """Computes our version of each stored array of one clip, lazily and teacher-forced."""

    def __init__(self, model: FocalCodec, sig: np.ndarray, expected: dict[str, np.ndarray]) -> None:
        self.m = model
        self.sig = torch.from_numpy(np.ascontiguousarray(sig, dtype=np.float32))[None]
        self.exp = expected
        self._stream_cache: dict[str, np.ndarray] | None = None

    def _t(self, key: str) -> torch.Tensor:
        return torch.from_numpy(self.exp[key])[None]

    def signal(self, mode: str) -> torch.Tensor:
        if mode == "oneshot":
            return self.sig
        return F.pad(self.sig, (0, -self.sig.shape[1] % self.m.chunk_size))

    def compute(self, mode: str, what: str) -> np.ndarray | None:
        if mode == "stream":
            return self.streaming().get(what)
        m, pre = self.m, mode + "_"
        sig = self.signal(mode)
        fns: dict[str, Callable[[], torch.Tensor]] = {
            "feats": lambda: m.sig_to_feats(sig),
            "lats": lambda: m.feats_to_lats(self._t(pre + "feats")),
            "toks": lambda: m.lats_to_toks(self._t(pre + "lats")),
            "codes": lambda: m.lats_to_codes(self._t(pre + "lats")),
            "qfeats": lambda: m.codes_to_qfeats(self._t(pre + "codes")),
            "rec_sig": lambda: m.toks_to_sig(self._t(pre + "toks")),
            "fwd_toks": lambda: m(sig)[0],
            "fwd_codes": lambda: m(sig)[1],
            "fwd_rec_sig": lambda: m(sig)[2],
        }
        if what not in fns:
            return None
        return fns[what]()[0].numpy()

    def streaming(self) -> dict[str, np.ndarray]:
        """Granular streaming, teacher-forced per stage, plus the end-to-end step API."""
        if self._stream_cache is not None:
            return self._stream_cache
        m, e = self.m, self.exp
        sig = self.signal("stream")
        cs, f = m.chunk_size, m.config.encoder_config.chunk_frames
        n_chunks = sig.shape[1] // cs
        out: dict[str, list[torch.Tensor]] = {k: [] for k in
                                              ("feats", "lats", "toks", "codes", "qfeats", "rec_sig",
                                               "fwd_toks", "fwd_codes", "fwd_rec_sig")}
        enc = comp = dec = wav = None
        est = dst = None
        for i in range(n_chunks):
            x = sig[:, i * cs : (i + 1) * cs]
            fr = slice(i * f, (i + 1) * f)
            y, enc = m.sig_to_feats(x, enc, return_state=True)
            out["feats"].append(y)
            if "stream_feats" in e:
                y, comp = m.feats_to_lats(torch.from_numpy(e["stream_feats"][fr])[None], comp, return_state=True)
                out["lats"].append(y)
            if "stream_lats" in e:
                lat = torch.from_numpy(e["stream_lats"][fr])[None]
                out["toks"].append(m.lats_to_toks(lat))
                out["codes"].append(m.lats_to_codes(lat))
            if "stream_codes" in e:
                y, dec = m.codes_to_qfeats(torch.from_numpy(e["stream_codes"][fr])[None], dec, return_state=True)
                out["qfeats"].append(y)
            if "stream_qfeats" in e:
                y, wav = m.feats_to_sig(torch.from_numpy(e["stream_qfeats"][fr])[None], wav, return_state=True)
                out["rec_sig"].append(y)
            # end to end through the public streaming API (not teacher-forced)
            toks, est = m.encode_step(x, est)
            rec, dst = m.decode_step(toks, dst)
            out["fwd_toks"].append(toks)
            out["fwd_codes"].append(m.toks_to_codes(toks))
            out["fwd_rec_sig"].append(rec)
        self._stream_cache = {k: torch.cat(v, dim=1)[0].numpy() for k, v in out.items() if v}
        return self._stream_cache


def compare(ours: np.ndarray, ref: np.ndarray, exact: bool, rtol: float, atol: float) -> tuple[bool, float, int, str]:
    """Returns (ok, max_abs_err, mismatching elements, note)."""
    if ours.shape != ref.shape:
        return False, float("inf"), ref.size, f"shape {ours.shape} != expected {ref.shape}"
    if ref.size == 0:
        return True, 0.0, 0, ""
    diff = np.abs(ours.astype(np.float64) - ref.astype(np.float64))
    if exact:
        bad = int(np.count_nonzero(ours != ref))
        return bad == 0, float(diff.max()), bad, ""
    bad = int(np.count_nonzero(~np.isclose(ours, ref, rtol=rtol, atol=atol)))
    return bad == 0, float(diff.max()), bad, ""


def check_root(root: str | Path, rtol: float = 1e-4, atol: float = 1e-4,
               progress: Callable[[ArrayResult], None] | None = None) -> ConformanceReport:
    """Check every model folder under ``root``; ``progress`` is called with each result."""
    root = Path(root)
    if not (root / "inputs").is_dir():
        raise FileNotFoundError(f"{root}: no inputs/ folder (not a conformance root)")
    dirs = find_model_dirs(root)
    if not dirs:
        raise FileNotFoundError(f"{root}: no model folders (config.json + expected/) found")
    report = ConformanceReport()
    for folder in dirs:
        for r in _check_model(root, folder, rtol, atol):
            report.results.append(r)
            if progress:
                progress(r)
    return report


def _check_model(root: Path, folder: Path, rtol: float, atol: float) -> Iterator[ArrayResult]:
    name = folder.name
    try:
        model = load_model(folder)
    except Exception as exc:  # a model that cannot load fails every array
        yield ArrayResult(name, "*", "load", "fail", note=f"cannot load model: {exc}")
        return
    aliases: dict[str, dict[str, str]] = {}
    manifest = folder / "manifest.json"
    if manifest.exists():
        clips = json.loads(manifest.read_text()).get("clips", {})
        aliases = {c: v.get("aliases", {}) for c, v in clips.items() if isinstance(v, dict)}
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # the reference vectors were made on one thread
    try:
        for npz in sorted((folder / "expected").glob("*.npz")):
            clip = npz.stem
            if clip.startswith("streaming_states"):
                continue  # state snapshots: layout is implementation-specific (debugging aid only)
            with np.load(npz) as z:
                expected = {k: z[k] for k in z.files}
            try:
                data, sr = sf.read(find_input(root, clip), dtype="float32", always_2d=True)
            except (FileNotFoundError, RuntimeError) as exc:
                yield ArrayResult(name, clip, "input", "fail", note=str(exc))
                continue
            if sr != model.sample_rate_input:
                yield ArrayResult(name, clip, "input", "fail", note=f"input is {sr} Hz, expected {model.sample_rate_input}")
                continue
            runner = _ClipRunner(model, data[:, 0], expected)
            # stored arrays, then aliases (arrays not stored because identical to another)
            todo = [(k, k) for k in expected] + [(a, t) for a, t in aliases.get(clip, {}).items()
                                                   if a not in expected and t in expected]
            for key, ref_key in todo:
                mt = _NAME.match(key)
                ours = None
                with torch.inference_mode():
                    if mt and (mt.group(1) != "stream" or model.causal):
                        ours = runner.compute(mt.group(1), mt.group(2))
                label = key if key == ref_key else f"{key} (= {ref_key})"
                if ours is None:
                    yield ArrayResult(name, clip, label, "skip", note="unknown array name: not checked")
                    continue
                what = mt.group(2)
                ok, err, bad, note = compare(ours, expected[ref_key], what in EXACT, rtol, atol)
                yield ArrayResult(name, clip, label, "pass" if ok else "fail", err, bad, expected[ref_key].size, note)
    finally:
        torch.set_num_threads(threads)


def format_result(r: ArrayResult) -> str:
    err = "" if r.max_abs_err is None else f"max|err| {r.max_abs_err:.2e}"
    mism = "" if r.mismatches is None or r.status == "pass" else f" mismatches {r.mismatches}/{r.total}"
    return f"{r.status.upper():4}  {r.model}/{r.clip:<8} {r.key:<42} {err}{mism}  {r.note}".rstrip()
