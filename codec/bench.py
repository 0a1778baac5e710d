"""Streaming benchmark: latency per 80 ms chunk, memory and quality of reduced-precision modes.

Usage (also ``focalchat bench``)::

    python -m codec.bench                                # full-size 4k causal config, random weights
    python -m codec.bench --modes fp32,bf16,int8 --threads 1,2 --chunks 50 --json bench.json
    python -m codec.bench --config small --chunks 3      # quick run on a tiny config
    python -m codec.bench --model lucadellalib/focalcodec_50hz_4k_causal --profile

What is measured, per (mode, threads) configuration, each in a FRESH subprocess
(``python -m codec.bench --worker timing ...``, which prints one JSON line) so that the peak RSS and
thread pools belong to that configuration alone:

* steady state: the model is first fed enough audio to fill every window (the 512-frame attention
  window / KV caches and the 511-frame global-conv contexts: 128 chunks), quickly, in multi-chunk
  ``encode_step`` / ``decode_step`` calls (``--warmup-block`` chunks each); then a few untimed single-chunk steps; then ``--chunks``
  timed single-chunk steps: 1280 samples -> ``encode_step`` -> 4 tokens -> ``decode_step`` -> 1920
  samples, under ``torch.inference_mode()``;
* p50 / p90 / max ms per chunk for encode, decode and encode+decode; real-time factor
  (enc+dec p50 / 80 ms);
* peak RSS of the worker process over its whole life (model build and warm-up included: what an
  app that builds/loads the model in that mode pays: every mode is built layer by layer by
  ``codec.fastpath.build``, never as a whole fp32 model) and the peak during the timed steps alone;
* bytes of the weights (parameters, buffers and packed quantised weights).

Quality of each non-fp32 mode (one more subprocess, ``--worker quality``): a real speech clip
(``assets/speech_sample.wav``, else a LibriSpeech test-other FLAC, else noise - said so) is streamed
chunk by chunk through the fp32 model and through the mode's model (same seed / checkpoint):
token agreement (% identical tokens) and bit agreement; the fp32 tokens are then decoded by both
and the mode's waveform is compared with fp32's (SNR dB, max abs difference).

Modes: ``fp32`` (exact path), ``bf16`` (weights and activations in bfloat16; tokens come from signs),
``int8`` (every weight matrix in int8 with per-output-channel scales, activations quantised on the
fly; see ``codec.fastpath``), ``compile`` (fp32 with the stateless feed-forward blocks wrapped in ``torch.compile``; ~10 s to
compile, no gain measured here: the step is bound by reading the weights).

Random weights give the same timing as a trained checkpoint, but NOT representative token agreement:
measure quality with ``--model`` on a real checkpoint.

``--profile`` adds, per configuration, a per-module breakdown of a chunk (forward hooks, inclusive
and exclusive ms, weight MB and effective GB/s) and the top operators of ``torch.profiler``.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import re
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parent.parent
RESULT_PREFIX = "BENCH_RESULT "
MODES = ("fp32", "bf16", "int8", "compile")
REFERENCE = {
    "label": "reference implementation (measured by the team earlier; quoted, not measured here)",
    "encdec_ms": 175.0,
    "peak_rss_mb": 1700.0,
    "threads": 2,
}

# A tiny causal config (the shape of the vendored conformance model cb4096_w24) for quick runs and tests.
SMALL_CONFIG: dict[str, Any] = {
    "encoder_config": {
        "hidden_dims": [32, 32, 32, 32, 32, 48, 48], "num_layers": 2, "dim": 96, "ffn_dim": 256,
        "num_heads": 4, "num_buckets": 32, "max_distance": 64, "max_cached_steps": 64, "conv_pos": 32,
        "conv_pos_groups": 4, "causal": True, "window_size": 24, "lookahead_size": 3,
    },
    "compressor_config": {"input_dim": 96, "output_dim": 12, "hidden_dims": [80, 64], "downscale_factors": [1, 1],
                          "causal": True, "window_size": 24},
    "quantizer_config": {"codebook_size": 4096},
    "decompressor_config": {"input_dim": 12, "output_dim": 96, "hidden_dims": [64, 80], "upscale_factors": [1, 1],
                            "causal": True, "window_size": 24, "last_window_size": 24, "lookahead_size": 3},
    "decoder_config": {"input_dim": 96, "num_layers": 3, "dim": 64, "ffn_dim": 128, "kernel_size": 7,
                       "hop_length": 480, "causal": True},
}
CONFIGS = ("full", "small")


def _log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


# ====================================================================== model building (worker side)
def build_model(model: str | None, config: str, seed: int, mode: str = "fp32"):
    """The model in ``mode``, built layer by layer (random weights from ``seed``, or a checkpoint)."""
    from .fastpath import build

    base = "fp32" if mode == "compile" else mode
    if model:
        from .pretrained import load_pretrained

        m = load_pretrained(model, mode=base)
    else:
        from .config import CodecConfig

        cfg = CodecConfig() if config == "full" else CodecConfig.from_dict(SMALL_CONFIG)
        m = build(cfg, base, seed=seed)
    return _compile(m) if mode == "compile" else m


def _compile(m):
    """fp32 with torch.compile on the stateless sub-blocks only (feed-forwards, refiner, ConvNeXt MLPs).

    Blocks that carry streaming state (attention, focal modulation, causal convs) are left eager: their
    state objects change integers (positions, buffer offsets) every step, which makes dynamo recompile.
    Measured on the 2-core CPU box: no gain over fp32 (the step is bound by GEMMs reading the weights),
    also not with ``torch._inductor.config.freezing`` (weight pre-packing; costs ~800 MB more RSS).
    """
    import torch

    from .focal import ChunkFeedForward
    from .layers import FeedForward

    for mod in m.modules():
        if isinstance(mod, (FeedForward, ChunkFeedForward)):
            mod.forward = torch.compile(mod.forward, dynamic=False)
    return m


def act_dtype(mode: str):
    import torch

    return torch.bfloat16 if mode == "bf16" else torch.float32


def weight_bytes(m) -> int:
    """Bytes of parameters, buffers and int8 weights (counted from shapes: unpacking the packed
    int8 weights to measure them would copy them and inflate the peak RSS being measured)."""
    total = 0
    for mod in m.modules():
        if type(mod).__module__.startswith("torch.ao.nn.quantized"):
            if hasattr(mod, "in_features"):  # dynamic int8 Linear: int8 weight + per-channel scale/zero point + bias
                total += mod.in_features * mod.out_features + mod.out_features * (16 + 4)
            continue
        for t in list(mod.parameters(recurse=False)) + list(mod.buffers(recurse=False)):
            total += t.numel() * t.element_size()
    return total


def encode(m, sig, state, dtype):
    return m.encode_step(sig.to(dtype), state)


def decode(m, toks, state, dtype):
    """decode_step with codes in the model's activation dtype (toks_to_codes defaults to float32)."""
    codes = m.quantizer.toks_to_codes(toks, dtype=dtype)
    sig, state = m.decode_codes_step(codes, state)
    return sig.float(), state


def warmup_chunks(cfg) -> int:
    """Chunks that fill every window / context of a causal config (128 for the 512-frame models)."""
    e, c, d = cfg.encoder_config, cfg.compressor_config, cfg.decompressor_config
    frames = max(e.window_size, c.window_size, d.window_size, d.last_window_size, e.conv_pos)
    return math.ceil(frames / e.chunk_frames)


# ====================================================================== memory
def _proc_status_kb(field: str) -> int | None:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1])
    except OSError:
        pass
    return None


def _reset_peak_rss() -> bool:
    """Reset the kernel's peak-RSS mark (VmHWM) of this process (Linux)."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def _malloc_trim() -> None:
    try:
        import ctypes

        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


def _lifetime_peak_rss_mb() -> float:
    import resource

    kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # kB on Linux; ignores clear_refs
    return kb / 1024.0


# ====================================================================== timing worker
def _pct(xs: list[float], q: float) -> float:
    s = sorted(xs)
    if not s:
        return float("nan")
    k = (len(s) - 1) * q
    lo, hi = math.floor(k), math.ceil(k)
    return s[lo] + (s[hi] - s[lo]) * (k - lo)


def _stats(xs: list[float]) -> dict[str, float]:
    return {"p50": _pct(xs, 0.5), "p90": _pct(xs, 0.9), "max": max(xs), "mean": sum(xs) / len(xs)}


def _set_threads(threads: int) -> None:
    import torch

    torch.set_num_threads(threads)
    try:
        torch.set_num_interop_threads(1)
    except RuntimeError:
        pass


def worker_timing(args) -> dict[str, Any]:
    import gc

    import torch
    from tqdm import tqdm

    _set_threads(args.threads)
    t0 = time.perf_counter()
    mode = args.mode
    m = build_model(args.model, args.config, args.seed, mode)
    build_s = time.perf_counter() - t0
    dtype = act_dtype(mode)
    cfg = m.config
    cs, tpc = m.chunk_size, m.tokens_per_chunk
    nwarm = args.warmup_chunks if args.warmup_chunks is not None else warmup_chunks(cfg)
    gen = torch.Generator().manual_seed(args.seed + 1)
    nprof = max(3, min(args.chunks, 20)) if args.profile else 0
    total = nwarm + args.extra_warmup + args.chunks + 2 * nprof
    sig = 0.1 * torch.randn(1, total * cs, generator=gen)
    enc_ms: list[float] = []
    dec_ms: list[float] = []
    tw = time.perf_counter()
    with torch.inference_mode():
        # fast fill: one chunk first, then blocks of --warmup-block chunks per call (a block of at most
        # 64 frames keeps codec.stream.History's buffers at the size a chunk-by-chunk stream gets;
        # one 512-frame call would leave them ~140 MB larger for the rest of the stream)
        es = ds = None
        pos = 0
        while pos < nwarm * cs:
            k = 1 if pos == 0 else min(args.warmup_block, nwarm - pos // cs)
            toks, es = encode(m, sig[:, pos : pos + k * cs], es, dtype)
            _, ds = decode(m, toks, ds, dtype)
            pos += k * cs
        for _ in range(args.extra_warmup):  # untimed single-chunk steps (allocator / kernel caches)
            toks, es = encode(m, sig[:, pos : pos + cs], es, dtype)
            _, ds = decode(m, toks, ds, dtype)
            pos += cs
        warm_s = time.perf_counter() - tw
        gc.collect()
        _malloc_trim()  # give the warm-up's freed heap back, so the stream peak is what streaming needs
        reset_ok = _reset_peak_rss()
        rss_before = (_proc_status_kb("VmRSS") or 0) / 1024.0
        for _ in tqdm(range(args.chunks), desc=f"{mode} x{args.threads} threads", unit="chunk",
                      leave=False, file=sys.stderr, disable=args.quiet):
            chunk = sig[:, pos : pos + cs]
            pos += cs
            a = time.perf_counter()
            toks, es = encode(m, chunk, es, dtype)
            b = time.perf_counter()
            out, ds = decode(m, toks, ds, dtype)
            c = time.perf_counter()
            enc_ms.append(1000.0 * (b - a))
            dec_ms.append(1000.0 * (c - b))
        assert toks.shape == (1, tpc) and out.shape == (1, m.output_chunk_size), (toks.shape, out.shape)
        stream_peak = _proc_status_kb("VmHWM") / 1024.0 if reset_ok and _proc_status_kb("VmHWM") else None
        res: dict[str, Any] = {
            "mode": mode,
            "threads": args.threads,
            "torch_threads": torch.get_num_threads(),
            "chunks": args.chunks,
            "warmup_chunks": nwarm,
            "chunk_ms": 1000.0 * cs / m.sample_rate_input,
            "samples_in": cs,
            "tokens_out": tpc,
            "samples_out": m.output_chunk_size,
            "kv_frames": _kv_frames(es),
            "num_params": m.num_params(),
            "weight_bytes": weight_bytes(m),
            "build_s": build_s,
            "warmup_s": warm_s,
            "encode_ms": _stats(enc_ms),
            "decode_ms": _stats(dec_ms),
            "encdec_ms": _stats([x + y for x, y in zip(enc_ms, dec_ms)]),
            "raw_encode_ms": [round(x, 3) for x in enc_ms],
            "raw_decode_ms": [round(x, 3) for x in dec_ms],
            "rss_before_stream_mb": rss_before,
            "stream_peak_rss_mb": stream_peak,
            "peak_rss_mb": _lifetime_peak_rss_mb(),
            "model": args.model or f"random:{args.config}:seed{args.seed}",
        }
        res["rtf"] = res["encdec_ms"]["p50"] / res["chunk_ms"]
        if args.profile:
            res["profile"] = _profile(m, sig[:, pos:], es, ds, dtype, nprof)
    return res


def _kv_frames(es) -> int | None:
    """Frames held in the first attention layer's key cache (informative; None if the layout is unknown)."""
    enc = getattr(es, "encoder", None)
    try:
        if getattr(enc, "kv", None):  # History buffers (codec.stream.History)
            k = enc.kv[0][0]
            return int(k.length) if hasattr(k, "length") else int(k.shape[2])
        if getattr(enc, "keys", None):  # plain tensors
            return int(enc.keys[0].shape[2])
    except Exception:
        pass
    return None


# ====================================================================== profiling (worker side)
def _profile(m, sig, es, ds, dtype, n: int) -> dict[str, Any]:
    """Per-module inclusive/exclusive time per chunk over ``n`` chunks (forward hooks), then
    torch.profiler top operators over ``n`` more chunks; ``sig`` holds at least 2 n chunks."""
    cs = m.chunk_size
    names = {mod: name for name, mod in m.named_modules() if name}
    incl: dict[str, float] = {}
    excl: dict[str, float] = {}
    calls: dict[str, int] = {}
    depth: dict[str, int] = {}
    stack: list[list] = []  # [name, start, time spent in called children]

    def pre(mod, _inp):
        stack.append([names[mod], time.perf_counter(), 0.0])

    def post(mod, _inp, _out):
        name, t, child = stack.pop()
        dt = time.perf_counter() - t
        incl[name] = incl.get(name, 0.0) + dt
        excl[name] = excl.get(name, 0.0) + dt - child
        calls[name] = calls.get(name, 0) + 1
        depth[name] = len(stack)
        if stack:
            stack[-1][2] += dt

    handles = []
    for mod in names:
        handles.append(mod.register_forward_pre_hook(pre))
        handles.append(mod.register_forward_hook(post))
    pos = 0
    step_s = {"encode": 0.0, "decode": 0.0}
    try:
        for _ in range(n):
            chunk = sig[:, pos : pos + cs]
            pos += cs
            a = time.perf_counter()
            toks, es = encode(m, chunk, es, dtype)
            b = time.perf_counter()
            _, ds = decode(m, toks, ds, dtype)
            step_s["encode"] += b - a
            step_s["decode"] += time.perf_counter() - b
    finally:
        for h in handles:
            h.remove()
    # aggregate by pattern (layer indices -> *), keep module order
    params: dict[str, int] = {}
    for name, mod in m.named_modules():
        if name:
            params[name] = sum(v.numel() * v.element_size() for v in _own_tensors(mod))
    rows: dict[str, dict[str, float]] = {}
    for name in names.values():
        if name not in incl:
            continue
        pat = re.sub(r"\.\d+(?=\.|$)", ".*", name, count=1)  # the block index; deeper indices stay
        r = rows.setdefault(pat, {"incl": 0.0, "excl": 0.0, "calls": 0, "bytes": 0, "depth": depth[name]})
        r["incl"] += incl[name]
        r["excl"] += excl[name]
        r["calls"] += calls[name]
        r["bytes"] += params[name]
    for r in rows.values():
        r["incl_ms"] = 1000.0 * r.pop("incl") / n
        r["excl_ms"] = 1000.0 * r.pop("excl") / n
        r["calls"] = r["calls"] / n
    top = {k: 1000.0 * v / n for k, v in step_s.items()}
    top_level = sum(1000.0 * incl.get(k, 0.0) / n for k in ("encoder", "compressor", "decompressor", "decoder"))
    top["outside_modules"] = top["encode"] + top["decode"] - top_level
    # torch.profiler operator table
    ops_table = None
    ops: list[dict[str, Any]] = []
    try:
        from torch.profiler import ProfilerActivity, profile

        with profile(activities=[ProfilerActivity.CPU], record_shapes=True) as prof:
            for _ in range(n):
                chunk = sig[:, pos : pos + cs]
                pos += cs
                toks, es = encode(m, chunk, es, dtype)
                _, ds = decode(m, toks, ds, dtype)
        ka = prof.key_averages()
        ops_table = ka.table(sort_by="self_cpu_time_total", row_limit=25)
        for e in sorted(ka, key=lambda e: -e.self_cpu_time_total)[:40]:
            ops.append({"op": e.key, "self_ms": e.self_cpu_time_total / 1000.0 / n,
                        "total_ms": e.cpu_time_total / 1000.0 / n, "calls": e.count / n})
        ka_shapes = prof.key_averages(group_by_input_shape=True)
        shapes = []
        for e in sorted(ka_shapes, key=lambda e: -e.self_cpu_time_total)[:30]:
            shapes.append({"op": e.key, "shapes": str(e.input_shapes)[:160], "self_ms": e.self_cpu_time_total / 1000.0 / n,
                           "calls": e.count / n})
    except Exception as e:  # pragma: no cover - profiler availability
        ops_table = f"torch.profiler failed: {e!r}"
        shapes = []
    return {"chunks": n, "step_ms": top, "modules": rows, "ops": ops, "ops_by_shape": shapes, "ops_table": ops_table}


def _own_tensors(mod):
    """Parameters/buffers (incl. packed quantised weights) of a module and its children."""
    import torch

    out = []
    seen = set()
    for v in mod.state_dict(keep_vars=True).values():
        vs = v if isinstance(v, (tuple, list)) else (v,)
        for x in vs:
            if isinstance(x, torch.Tensor) and id(x) not in seen:
                seen.add(id(x))
                out.append(x)
    return out


# ====================================================================== quality worker
def load_clip(path: str | None, seconds: float, sr: int = 16000):
    """(samples float32 numpy, description). assets/speech_sample.wav, else a LibriSpeech FLAC, else noise."""
    import numpy as np

    cands: list[Path] = []
    if path:
        cands.append(Path(path))
    else:
        cands.append(REPO_ROOT / "assets" / "speech_sample.wav")
        ls = Path("/work/shared/data/librispeech/test-other")
        if ls.is_dir():
            cands.extend(sorted(ls.rglob("*.flac"))[:200])
    import soundfile as sf

    best = None
    for p in cands:
        if not p.is_file():
            continue
        try:
            info = sf.info(str(p))
        except Exception:
            continue
        if best is None or info.duration > best[1]:
            best = (p, info.duration)
        if info.duration >= seconds or p.name == "speech_sample.wav" or path:
            best = (p, info.duration)
            break
    if best is None:
        if path:
            raise FileNotFoundError(path)
        rng = np.random.default_rng(0)
        return (0.05 * rng.standard_normal(int(seconds * sr))).astype(np.float32), \
            "SYNTHETIC NOISE (no speech clip found: assets/speech_sample.wav, librispeech test-other)"
    x, fs = sf.read(str(best[0]), dtype="float32", always_2d=True)
    x = x.mean(axis=1)
    if fs != sr:
        import soxr

        x = soxr.resample(x, fs, sr).astype(np.float32)
    x = x[: int(seconds * sr)]
    return x, f"{best[0]} ({len(x) / sr:.2f} s)"


def _stream(m, x, dtype):
    """Stream a clip chunk by chunk: tokens (N,) int64."""
    import torch

    cs = m.chunk_size
    es = None
    toks = []
    for i in range(0, x.shape[1], cs):
        t, es = encode(m, x[:, i : i + cs], es, dtype)
        toks.append(t)
    return torch.cat(toks, dim=1)


def _decode_stream(m, toks, dtype):
    import torch

    tpc = m.tokens_per_chunk
    ds = None
    out = []
    for i in range(0, toks.shape[1], tpc):
        s, ds = decode(m, toks[:, i : i + tpc], ds, dtype)
        out.append(s)
    return torch.cat(out, dim=1)


def worker_quality(args) -> dict[str, Any]:
    import numpy as np
    import torch
    from tqdm import tqdm

    _set_threads(args.threads)
    x, desc = load_clip(args.clip, args.clip_seconds)
    modes = [mm for mm in args.mode.split(",") if mm != "fp32"]
    with torch.inference_mode():
        ref = build_model(args.model, args.config, args.seed, "fp32")
        cs = ref.chunk_size
        n = (len(x) // cs) * cs
        sig = torch.from_numpy(np.ascontiguousarray(x[:n]))[None]
        bar = tqdm(total=2 * (1 + len(modes)), desc="quality", unit="pass", leave=False, file=sys.stderr,
                   disable=args.quiet)
        ref_toks = _stream(ref, sig, torch.float32)
        bar.update()
        ref_wav = _decode_stream(ref, ref_toks, torch.float32)
        bar.update()
        bits = ref.bits_per_token
        del ref
        out: dict[str, Any] = {"clip": desc, "clip_seconds": n / 16000.0, "num_tokens": int(ref_toks.numel()),
                               "modes": {}}
        for mode in modes:
            try:
                m = build_model(args.model, args.config, args.seed, mode)
                dtype = act_dtype(mode)
                toks = _stream(m, sig, dtype)
                bar.update()
                wav = _decode_stream(m, ref_toks, dtype)
                bar.update()
            except Exception as e:  # report, keep going
                out["modes"][mode] = {"error": repr(e)}
                continue
            diff = (toks ^ ref_toks)
            bit_err = sum(int(((diff >> b) & 1).sum()) for b in range(bits))
            err = wav - ref_wav
            p_ref = float(ref_wav.square().sum())
            p_err = float(err.square().sum())
            out["modes"][mode] = {
                "token_agreement": 100.0 * float((toks == ref_toks).float().mean()),
                "bit_agreement": 100.0 * (1.0 - bit_err / (toks.numel() * bits)),
                "snr_db": float("inf") if p_err == 0 else 10.0 * math.log10(max(p_ref, 1e-30) / p_err),
                "max_abs": float(err.abs().max()),
            }
            del m
        bar.close()
    return out


# ====================================================================== parent
def _worker_cmd(args, task: str, mode: str, threads: int) -> list[str]:
    cmd = [sys.executable, "-m", "codec.bench", "--worker", task, "--mode", mode, "--threads-one", str(threads),
           "--chunks", str(args.chunks), "--config", args.config, "--seed", str(args.seed),
           "--extra-warmup", str(args.extra_warmup), "--warmup-block", str(args.warmup_block), "--clip-seconds", str(args.clip_seconds)]
    if args.model:
        cmd += ["--model", args.model]
    if args.warmup_chunks is not None:
        cmd += ["--warmup-chunks", str(args.warmup_chunks)]
    if args.clip:
        cmd += ["--clip", args.clip]
    if args.profile:
        cmd += ["--profile"]
    if args.quiet:
        cmd += ["--quiet"]
    return cmd


def _run_worker(cmd: list[str], threads: int, timeout: float | None) -> dict[str, Any]:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(REPO_ROOT) + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    for k in ("OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        env[k] = str(threads)
    env.setdefault("PYTHONWARNINGS", "ignore::DeprecationWarning")
    try:
        p = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=None, text=True, env=env, cwd=str(REPO_ROOT),
                           timeout=timeout)
    except subprocess.TimeoutExpired:
        return {"error": f"timed out after {timeout:.0f} s"}
    for line in reversed(p.stdout.splitlines()):
        if line.startswith(RESULT_PREFIX):
            return json.loads(line[len(RESULT_PREFIX):])
    return {"error": f"worker exited with {p.returncode} and no result", "stdout_tail": p.stdout[-2000:]}


def _f(x: float | None, nd: int = 1) -> str:
    return "-" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:.{nd}f}"


def format_report(res: dict[str, Any]) -> str:
    lines = []
    meta = res["meta"]
    lines.append(f"## FocalCodec streaming benchmark: {meta['model']}")
    lines.append("")
    lines.append(f"{meta['num_params'] / 1e6:.1f} M params; chunk = {meta.get('samples_in')} samples (80 ms) in -> "
                 f"{meta.get('tokens_out')} tokens -> {meta.get('samples_out')} samples out; "
                 f"{meta['chunks']} timed chunks after {meta.get('warmup_chunks')} warm-up chunks "
                 f"(KV cache {meta.get('kv_frames')} frames); torch {meta['torch']}, {meta['cpu']}")
    lines.append("")
    q = res.get("quality") or {}
    qm = q.get("modes", {})
    hdr = ("| mode | threads | enc p50 / p90 ms | dec p50 / p90 ms | enc+dec p50 / p90 / max ms | RTF | "
           "peak RSS MB (stream) | weights MB | token agreement % |")
    lines += [hdr, "|---" * (hdr.count("|") - 1) + "|"]
    for r in res["results"]:
        if "error" in r:
            lines.append(f"| {r.get('mode')} | {r.get('threads')} | error: {r['error']} | | | | | | |")
            continue
        e, d, ed = r["encode_ms"], r["decode_ms"], r["encdec_ms"]
        agr = "100 (reference)" if r["mode"] == "fp32" else _f(qm.get(r["mode"], {}).get("token_agreement"), 2)
        lines.append(
            f"| {r['mode']} | {r['threads']} | {_f(e['p50'])} / {_f(e['p90'])} | {_f(d['p50'])} / {_f(d['p90'])} | "
            f"{_f(ed['p50'])} / {_f(ed['p90'])} / {_f(ed['max'])} | {_f(r['rtf'], 2)} | "
            f"{_f(r['peak_rss_mb'], 0)} ({_f(r['stream_peak_rss_mb'], 0)}) | {_f(r['weight_bytes'] / 2**20, 0)} | {agr} |")
    ref = REFERENCE
    lines.append(f"| *{ref['label']}* | {ref['threads']} | | | {ref['encdec_ms']:.0f} | "
                 f"{ref['encdec_ms'] / 80:.2f} | {ref['peak_rss_mb']:.0f} | | |")
    lines.append("")
    lines.append("RTF = enc+dec p50 / 80 ms (< 1 keeps up with real time). Peak RSS = whole worker process "
                 "(model build and warm-up included); in parentheses the peak during the timed steps only "
                 "(after the warm-up's freed heap is returned with malloc_trim).")
    if q:
        lines.append("")
        if "error" in q:
            lines.append(f"Quality: error: {q['error']}")
        else:
            lines.append(f"Quality vs fp32 on {q['clip']}, streamed chunk by chunk ({q['num_tokens']} tokens); "
                         "waveform compared on fp32's tokens decoded by each mode:")
            lines.append("")
            lines += ["| mode | token agreement % | bit agreement % | waveform SNR dB | max abs diff |",
                      "|---|---|---|---|---|"]
            for mode, v in qm.items():
                if "error" in v:
                    lines.append(f"| {mode} | error: {v['error']} | | | |")
                else:
                    lines.append(f"| {mode} | {v['token_agreement']:.2f} | {v['bit_agreement']:.2f} | "
                                 f"{v['snr_db']:.1f} | {v['max_abs']:.4f} |")
    for r in res["results"]:
        if "profile" in r:
            lines.append("")
            lines.append(format_profile(r))
    return "\n".join(lines)


def format_profile(r: dict[str, Any], max_depth: int = 6, min_ms: float = 0.05) -> str:
    p = r["profile"]
    s = p["step_ms"]
    out = [f"### Profile: {r['mode']}, {r['threads']} thread(s), mean of {p['chunks']} chunks (hooks add a little)",
           "", f"encode {s['encode']:.1f} ms, decode {s['decode']:.1f} ms, outside any module (states, "
           f"quantizer, toks->codes) {s['outside_modules']:.2f} ms", "",
           "| module (block index -> *, summed over blocks) | calls | incl ms | excl ms | weights MB | GB/s |",
           "|---|---|---|---|---|---|"]
    for name, v in p["modules"].items():
        if v["depth"] > max_depth or v["incl_ms"] < min_ms:
            continue
        gbs = v["bytes"] / (v["incl_ms"] / 1000.0) / 1e9 if v["incl_ms"] > 0 and v["bytes"] else None
        out.append(f"| {'&nbsp;&nbsp;' * v['depth']}{name} | {v['calls']:.0f} | {v['incl_ms']:.2f} | "
                   f"{v['excl_ms']:.2f} | {v['bytes'] / 2**20:.1f} | {_f(gbs, 1)} |")
    if p.get("ops_table"):
        out += ["", "torch.profiler, top operators by self CPU time (totals over "
                f"{p['chunks']} chunks):", "", "```", p["ops_table"].rstrip(), "```"]
    if p.get("ops_by_shape"):
        out += ["", "Top operators by input shape (ms per chunk):", "", "| op | shapes | self ms | calls |",
                "|---|---|---|---|"]
        for o in p["ops_by_shape"][:20]:
            out.append(f"| {o['op']} | {o['shapes']} | {o['self_ms']:.2f} | {o['calls']:.0f} |")
    return "\n".join(out)


def run_bench(args) -> dict[str, Any]:
    import platform

    import torch
    from tqdm import tqdm

    modes = [m.strip() for m in args.modes.split(",") if m.strip()]
    for mm in modes:
        if mm not in MODES:
            raise SystemExit(f"unknown mode {mm!r} (known: {', '.join(MODES)})")
    threads = [int(t) for t in str(args.threads).split(",") if t.strip()]
    configs = [(mm, t) for mm in modes for t in threads]
    results = []
    bar = tqdm(configs, desc="bench", unit="config", file=sys.stderr, disable=args.quiet)
    for mode, t in bar:
        bar.set_postfix_str(f"{mode} x{t}")
        r = _run_worker(_worker_cmd(args, "timing", mode, t), t, args.timeout)
        r.setdefault("mode", mode)
        r.setdefault("threads", t)
        results.append(r)
        if "error" not in r:
            tqdm.write(f"  {mode:>11} x{t}: enc+dec p50 {r['encdec_ms']['p50']:.1f} ms, RTF {r['rtf']:.2f}, "
                       f"peak RSS {r['peak_rss_mb']:.0f} MB", file=sys.stderr)
        else:
            tqdm.write(f"  {mode} x{t}: {r['error']}", file=sys.stderr)
    quality = None
    others = [mm for mm in modes if mm != "fp32"]
    if others and not args.no_quality:
        bar.set_postfix_str("quality")
        quality = _run_worker(_worker_cmd(args, "quality", ",".join(["fp32", *others]), max(threads)),
                              max(threads), args.timeout)
    bar.close()
    ok = [r for r in results if "error" not in r]
    first = ok[0] if ok else {}
    meta = {
        "model": first.get("model", args.model or f"random:{args.config}:seed{args.seed}"),
        "num_params": first.get("num_params", 0),
        "chunks": args.chunks,
        "warmup_chunks": first.get("warmup_chunks"),
        "kv_frames": first.get("kv_frames"),
        "samples_in": first.get("samples_in"),
        "tokens_out": first.get("tokens_out"),
        "samples_out": first.get("samples_out"),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "cpu": _cpu_name(),
        "cores": os.cpu_count(),
    }
    return {"meta": meta, "results": results, "quality": quality, "reference": REFERENCE}


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return f"{line.split(':', 1)[1].strip()} ({os.cpu_count()} cores)"
    except OSError:
        pass
    import platform

    return platform.processor() or "unknown CPU"


# ====================================================================== CLI
def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", default=None, help="checkpoint folder / config.json / hub id (FocalCodec.from_pretrained); "
                                                 "default: random weights of --config")
    p.add_argument("--config", choices=CONFIGS, default="full",
                   help="random-weight config: full = focalcodec_50hz_4k_causal (249 M params), small = tiny test config")
    p.add_argument("--chunks", type=int, default=50, help="timed single-chunk steps per configuration (default 50)")
    p.add_argument("--modes", default="fp32,bf16,int8", help=f"comma-separated, of {', '.join(MODES)} (default fp32,bf16,int8)")
    p.add_argument("--threads", default="1,2", help="comma-separated torch thread counts (default 1,2)")
    p.add_argument("--json", metavar="OUT", default=None, help="also write all results as JSON")
    p.add_argument("--seed", type=int, default=0, help="seed of the random weights and input (default 0)")
    p.add_argument("--warmup-chunks", type=int, default=None,
                   help="chunks fed (in one call) before timing; default: enough to fill every window (128)")
    p.add_argument("--warmup-block", type=int, default=4,
                   help="warm-up chunks per call (default 4; larger fills the window faster but its temporaries "
                        "raise the lifetime peak RSS above what a chunk-by-chunk call needs)")
    p.add_argument("--extra-warmup", type=int, default=3, help="untimed single-chunk steps before timing (default 3)")
    p.add_argument("--clip", default=None, help="speech clip for the quality check (default: assets/speech_sample.wav, "
                                                "else LibriSpeech test-other)")
    p.add_argument("--clip-seconds", type=float, default=10.0, help="trim the quality clip to this (default 10)")
    p.add_argument("--no-quality", action="store_true", help="skip the token agreement / SNR check")
    p.add_argument("--profile", action="store_true", help="add a per-module and per-operator profile of each configuration")
    p.add_argument("--timeout", type=float, default=1800.0, help="seconds per worker before giving up (default 1800)")
    p.add_argument("--quiet", action="store_true", help="no progress bars")


def main_from_args(args) -> int:
    res = run_bench(args)
    print(format_report(res))
    if args.json:
        Path(args.json).write_text(json.dumps(res, indent=2, default=str) + "\n")
        _log(f"wrote {args.json}")
    bad = [r for r in res["results"] if "error" in r]
    return 1 if bad or not res["results"] else 0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m codec.bench", description=__doc__.split("\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    add_arguments(p)
    p.add_argument("--worker", choices=("timing", "quality"), default=None, help=argparse.SUPPRESS)
    p.add_argument("--mode", default="fp32", help=argparse.SUPPRESS)
    p.add_argument("--threads-one", type=int, default=1, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.worker:
        args.threads = args.threads_one
        import warnings

        warnings.filterwarnings("ignore", category=DeprecationWarning)
        try:
            res = worker_timing(args) if args.worker == "timing" else worker_quality(args)
        except Exception as e:
            import traceback

            traceback.print_exc()
            res = {"error": repr(e), "mode": args.mode, "threads": args.threads}
        print(RESULT_PREFIX + json.dumps(res, default=str), flush=True)
        return 0 if "error" not in res else 1
    return main_from_args(args)


if __name__ == "__main__":
    sys.exit(main())
