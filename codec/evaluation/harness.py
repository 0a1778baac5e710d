"""The benchmark loop: every codec on every utterance of a manifest, scored with every metric.

``evaluate(manifest_tsv, codecs, limit=None)`` returns a dict (also written as ``results.json`` and
``results.md`` when ``out_dir`` is given) with, per codec: payload kbps, PESQ-wb, STOI, WER %, speaker
cosine, DistillMOS, DNSMOS and encode+decode ms per 80 ms of audio; and one row per codec and utterance.

Protocol (so numbers from different runs compare):
- input: the manifest's 16 kHz audio, peak as recorded; every codec gets the same signal;
- the decoded signal is resampled to 16 kHz, then aligned to the input by the codec's known delay, or (for
  neural codecs) by band-log-spectrum cross-correlation, and cut / zero-padded to the input's length;
- PESQ-wb and STOI on the aligned pair; WER (corpus level, normalised text) of the ASR transcript of the
  decoded audio against the manifest's ``asr_transcript`` (or, without that column, against the ASR
  transcript of the clean input); speaker cosine between Resemblyzer embeddings of input and output;
  the MOS models on the decoded audio alone;
- timing: wall time of ``encode_decode`` (resampling to the codec's rate included, metrics excluded) with
  torch limited to ``codec_threads`` threads, divided by the number of 80 ms chunks of audio;
- ``limit`` picks utterances round-robin over speakers (manifest order within a speaker), so a small run
  still covers every speaker.
"""

from __future__ import annotations

import csv
import json
import logging
import math
import os
import platform
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from codec.audio import load_audio, save_audio
from codec.evaluation import metrics as M
from codec.evaluation.baselines import Codec

log = logging.getLogger(__name__)

CHUNK_S = 0.08


@dataclass
class Utterance:
    id: str
    path: str
    duration_s: float
    speaker: str
    transcript: str | None


def read_manifest(manifest_tsv: str | Path, limit: int | None = None) -> list[Utterance]:
    """Rows of a tab-separated manifest (``path`` relative to its folder; optional ``duration_s``,
    ``speaker``, ``asr_transcript``); ``limit`` takes them round-robin over speakers."""
    manifest_tsv = Path(manifest_tsv)
    with open(manifest_tsv, newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f, delimiter="\t"))
    if not rows or "path" not in rows[0]:
        raise ValueError(f"{manifest_tsv}: a tab-separated manifest with a 'path' column is expected")
    utts = []
    for r in rows:
        p = Path(r["path"])
        utts.append(Utterance(
            id=p.stem, path=str(p if p.is_absolute() else manifest_tsv.parent / p),
            duration_s=float(r.get("duration_s") or "nan"), speaker=r.get("speaker") or "?",
            transcript=(r.get("asr_transcript") or r.get("transcript") or r.get("text") or None)))
    if limit is not None and limit < len(utts):
        by_spk: dict[str, list[Utterance]] = {}
        for u in utts:
            by_spk.setdefault(u.speaker, []).append(u)
        queues = list(by_spk.values())
        picked: list[Utterance] = []
        i = 0
        while len(picked) < limit:
            q = queues[i % len(queues)]
            if q:
                picked.append(q.pop(0))
            i += 1
        utts = picked
    return utts


class Evaluators:
    """The evaluator models, loaded once (each only if its metric is asked for)."""

    def __init__(self, metrics: tuple[str, ...], asr: str = M.DEFAULT_ASR) -> None:
        self.metrics = tuple(metrics)
        self.asr = M.WhisperASR(asr) if "wer" in metrics else None
        self.speaker = M.SpeakerSimilarity() if "speaker" in metrics else None
        self.mos = {k: M.MOS_MODELS[k]() for k in ("distillmos", "dnsmos") if k in metrics}
        if "pesq" in metrics:
            M.require("pesq", what="PESQ-wb")
        if "stoi" in metrics:
            M.require("pystoi", what="STOI")
        if "wer" in metrics:
            M.require("jiwer", what="WER")

    def describe(self) -> dict:
        d: dict[str, str] = {}
        if "pesq" in self.metrics:
            d["pesq"] = "PESQ wide-band, ITU-T P.862.2 (pip: pesq), 16 kHz, MOS-LQO 1.04-4.64"
        if "stoi" in self.metrics:
            d["stoi"] = "STOI (pip: pystoi), 16 kHz input resampled to 10 kHz inside"
        if self.asr:
            d["wer"] = self.asr.description + "; text normalised (lower case, punctuation off), jiwer"
        if self.speaker:
            d["speaker"] = self.speaker.description
        for k, m in self.mos.items():
            d[k] = m.description
        return d


def _nanmean(xs) -> float:
    xs = [x for x in xs if x is not None and not (isinstance(x, float) and math.isnan(x))]
    return float(np.mean(xs)) if xs else float("nan")


def _set_threads(n: int | None) -> int | None:
    if not n:
        return None
    import torch

    old = torch.get_num_threads()
    torch.set_num_threads(n)
    return old


def evaluate(manifest_tsv: str | Path, codecs: list[Codec], limit: int | None = None, *,
             metrics: tuple[str, ...] = M.ALL_METRICS, asr: str = M.DEFAULT_ASR, out_dir: str | Path | None = None,
             save_wavs: bool = False, codec_threads: int | None = 1, progress: bool = True,
             evaluators: Evaluators | None = None) -> dict:
    """Run every codec on the manifest's utterances and score them; see the module docstring."""
    from tqdm.auto import tqdm

    t_start = time.perf_counter()
    utts = read_manifest(manifest_tsv, limit)
    ev = evaluators or Evaluators(tuple(metrics), asr)
    out = Path(out_dir) if out_dir else None
    rows: list[dict] = []
    ref_texts: dict[str, str] = {}
    ref_source = "manifest asr_transcript"
    bar = tqdm(total=len(utts) * len(codecs), desc="eval", unit="run", disable=not progress, dynamic_ncols=True)
    audio_s = 0.0
    for u in utts:
        x = load_audio(u.path, M.SR)
        dur = len(x) / M.SR
        audio_s += dur
        ref_emb = ev.speaker.embed(x) if ev.speaker else None
        if ev.asr:
            if u.transcript:
                ref_texts[u.id] = u.transcript
            else:
                ref_source = "ASR of the clean input (the manifest has no asr_transcript)"
                ref_texts[u.id] = ev.asr.transcribe(x)
        for c in codecs:
            bar.set_postfix_str(f"{c.name} {u.id}")
            old = _set_threads(codec_threads)
            try:
                t0 = time.perf_counter()
                y, sr, bits = c.encode_decode(x)
                t_codec = time.perf_counter() - t0
            finally:
                _set_threads(old)
            y16 = M.to_16k(y, sr)
            if c.known_delay_s is not None:
                delay, delay_src = int(round(c.known_delay_s * M.SR)), "known"
            else:
                delay, delay_src = M.estimate_delay(x, y16), "band-log-spectra"
            ref, deg = M.align(x, y16, delay)
            row = {"codec": c.name, "utt": u.id, "speaker": u.speaker, "duration_s": round(dur, 3),
                   "payload_bits": int(bits), "kbps": bits / dur / 1000, "output_rate": sr,
                   "delay_ms": 1000 * delay / M.SR, "delay_source": delay_src,
                   "codec_s": t_codec, "ms_per_80ms": 1000 * t_codec / (dur / CHUNK_S)}
            if c.info.get("wire_bits") is not None:
                row["wire_kbps"] = c.info["wire_bits"] / dur / 1000
            if "pesq" in ev.metrics:
                row["pesq"] = M.pesq_wb(ref, deg)
            if "stoi" in ev.metrics:
                row["stoi"] = M.stoi(ref, deg)
            if ev.asr:
                hyp = ev.asr.transcribe(y16)
                row["hyp"] = hyp
                row["wer"] = M.wer([ref_texts[u.id]], [hyp])
            if ev.speaker:
                row["speaker_cos"] = M.SpeakerSimilarity.cosine(ref_emb, ev.speaker.embed(y16))
            for k, m in ev.mos.items():
                row[k] = m(y16)
            rows.append(row)
            if save_wavs and out:
                save_audio(out / "wavs" / c.name / f"{u.id}.wav", np.clip(y, -1, 1), sr)
            bar.update(1)
    bar.close()

    summary: dict[str, dict] = {}
    for c in codecs:
        rs = [r for r in rows if r["codec"] == c.name]
        total_dur = sum(r["duration_s"] for r in rs)
        s = {"label": c.label, "codec": c.describe(), "utterances": len(rs),
             "kbps": sum(r["payload_bits"] for r in rs) / max(total_dur, 1e-9) / 1000,
             "ms_per_80ms": 1000 * sum(r["codec_s"] for r in rs) / max(total_dur / CHUNK_S, 1e-9),
             "delay_ms_median": float(np.median([r["delay_ms"] for r in rs])) if rs else float("nan")}
        if any("wire_kbps" in r for r in rs):
            s["wire_kbps"] = sum(r.get("wire_kbps", 0) * r["duration_s"] for r in rs) / max(total_dur, 1e-9)
        for k in ("pesq", "stoi", "speaker_cos", "distillmos", "dnsmos"):
            if rs and k in rs[0]:
                s[k] = _nanmean([r[k] for r in rs])
        if ev.asr and rs:
            s["wer"] = M.wer([ref_texts[r["utt"]] for r in rs], [r["hyp"] for r in rs])
        summary[c.name] = s

    import torch

    results = {
        "manifest": str(manifest_tsv), "n_utterances": len(utts), "limit": limit,
        "utterances": [asdict(u) for u in utts],
        "audio_s": audio_s,
        "wer_reference": ref_source if ev.asr else None,
        "evaluators": ev.describe(),
        "alignment": "known codec delay where known, else band-log-spectrum cross-correlation (1 ms steps)",
        "codec_threads": codec_threads or "default",
        "platform": {"python": platform.python_version(), "torch": torch.__version__, "cpu": platform.processor()
                     or platform.machine(), "cores": os.cpu_count()},
        "codecs": summary, "rows": rows,
        "elapsed_s": time.perf_counter() - t_start,
    }
    if out:
        write_results(results, out)
    return results


COLUMNS = [("kbps", "kbps", "{:.2f}"), ("pesq", "PESQ-wb", "{:.2f}"), ("stoi", "STOI", "{:.3f}"),
           ("wer", "WER %", "{:.1f}"), ("speaker_cos", "speaker cos", "{:.3f}"),
           ("distillmos", "DistillMOS", "{:.2f}"), ("dnsmos", "DNSMOS OVRL", "{:.2f}"),
           ("ms_per_80ms", "ms / 80 ms", "{:.2f}")]


def markdown_table(results: dict) -> str:
    summary = results["codecs"]
    cols = [c for c in COLUMNS if any(c[0] in s for s in summary.values())]
    lines = ["| codec | " + " | ".join(h for _, h, _ in cols) + " |", "|---|" + "---:|" * len(cols)]
    for s in summary.values():
        cells = []
        for key, _, fmt in cols:
            v = s.get(key)
            cells.append("–" if v is None or (isinstance(v, float) and math.isnan(v)) else fmt.format(v))
        lines.append(f"| {s['label']} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def markdown_report(results: dict) -> str:
    ev = results["evaluators"]
    parts = [f"# Codec evaluation: {Path(results['manifest']).name}, {results['n_utterances']} utterances "
             f"({results['audio_s']:.1f} s of audio)", "", markdown_table(results), ""]
    parts.append(f"- alignment before PESQ/STOI: {results['alignment']}")
    if results.get("wer_reference"):
        parts.append(f"- WER reference: {results['wer_reference']}")
    for k, v in ev.items():
        parts.append(f"- {k}: {v}")
    parts.append(f"- codec timing: encode+decode wall time per 80 ms of audio, torch threads "
                 f"{results['codec_threads']}, {results['platform']['cores']} cores")
    parts.append(f"- run time {results['elapsed_s']:.0f} s")
    return "\n".join(parts) + "\n"


def write_results(results: dict, out_dir: str | Path) -> tuple[Path, Path]:
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    js, md = out / "results.json", out / "results.md"

    def _clean(o):
        if isinstance(o, float) and (math.isnan(o) or math.isinf(o)):
            return None
        if isinstance(o, dict):
            return {k: _clean(v) for k, v in o.items()}
        if isinstance(o, list):
            return [_clean(v) for v in o]
        if isinstance(o, np.generic):
            return o.item()
        return o

    js.write_text(json.dumps(_clean(results), indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
    md.write_text(markdown_report(results), encoding="utf-8")
    return js, md
