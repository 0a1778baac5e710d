"""``focalchat demo``: headless streaming codec demo on a speech file (the bundled clip by default)."""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np


def register(sub) -> None:
    p = sub.add_parser("demo", help="stream a speech file through the codec chunk by chunk and report",
                       description="Headless codec demo: 80 ms chunks -> streaming encoder -> bit-packed tokens -> "
                                   "streaming decoder; writes the original and decoded WAVs for A/B listening.")
    p.add_argument("--input", default=None, help="speech file (default: the bundled assets/speech_sample.wav)")
    p.add_argument("--model", default="default", help="default | 2k | 4k | 65k | hub id | checkpoint folder")
    p.add_argument("--mode", default="fp32", choices=("fp32", "bf16", "int8"),
                   help="fp32 = exact; bf16 / int8 = faster, slightly different tokens (see focalchat bench)")
    p.add_argument("--out", default="out/demo", help="folder for original.wav and decoded.wav")
    p.add_argument("--threads", type=int, default=1, help="torch threads (the app uses 1 per stream)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import torch

    from app.modelref import SPEECH_SAMPLE, load_model
    from codec.audio import AudioFileError, load_audio, save_audio
    from codec.bitpack import pack_tokens, unpack_tokens
    from codec.pretrained import CheckpointError

    torch.set_num_threads(args.threads)
    try:
        model = load_model(args.model, allow_untrained=args.model == "default", mode=args.mode)
        src = Path(args.input) if args.input else SPEECH_SAMPLE
        sig = load_audio(src, model.sample_rate_input)
    except (CheckpointError, AudioFileError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if not model.causal:
        print("error: this model is full-context and cannot stream; use `focalchat encode`", file=sys.stderr)
        return 2
    cs, bits = model.chunk_size, model.bits_per_token
    n_chunks = -(-len(sig) // cs)
    padded = np.zeros(n_chunks * cs, np.float32)
    padded[: len(sig)] = sig
    enc_ms, dec_ms, payload = [], [], 0
    est = dst = None
    out = np.empty(n_chunks * model.output_chunk_size, np.float32)
    x = torch.from_numpy(padded)[None]
    with torch.inference_mode():
        for i in range(n_chunks):
            t0 = time.perf_counter()
            toks, est = model.encode_step(x[:, i * cs : (i + 1) * cs], est)
            packet = pack_tokens(toks[0].numpy(), bits)
            t1 = time.perf_counter()
            rx = torch.from_numpy(unpack_tokens(packet, bits, toks.shape[1]))[None]
            y, dst = model.decode_step(rx, dst)
            t2 = time.perf_counter()
            out[i * model.output_chunk_size : (i + 1) * model.output_chunk_size] = y[0].numpy()
            enc_ms.append(1e3 * (t1 - t0))
            dec_ms.append(1e3 * (t2 - t1))
            payload += len(packet)
    out = out[: len(sig) * model.sample_rate_output // model.sample_rate_input]
    odir = Path(args.out)
    save_audio(odir / "original.wav", sig, model.sample_rate_input)
    save_audio(odir / "decoded.wav", out, model.sample_rate_output)
    dur = len(sig) / model.sample_rate_input
    tot = np.add(enc_ms, dec_ms)
    chunk_ms = 1000 * cs / model.sample_rate_input
    print(f"model        {model.model_id} ({model.num_params() / 1e6:.1f} M params, {bits} bits/token, "
          f"{model.config.token_rate:g} tokens/s)")
    print(f"input        {src} ({dur:.2f} s, {n_chunks} chunks of {chunk_ms:.0f} ms)")
    print(f"payload      {payload} bytes = {8 * payload / dur / 1000:.3f} kbps "
          f"(codec rate {model.config.bitrate / 1000:.2f} kbps; byte-packed per chunk)")
    print(f"encode       p50 {np.percentile(enc_ms, 50):.2f} ms  p90 {np.percentile(enc_ms, 90):.2f} ms per chunk")
    print(f"decode       p50 {np.percentile(dec_ms, 50):.2f} ms  p90 {np.percentile(dec_ms, 90):.2f} ms per chunk")
    print(f"enc+dec      p50 {np.percentile(tot, 50):.2f} ms per {chunk_ms:.0f} ms chunk "
          f"(real-time factor {np.percentile(tot, 50) / chunk_ms:.3f}, {args.threads} thread(s))")
    print(f"latency      {model.latency:.0f} ms algorithmic + {np.percentile(tot, 50):.1f} ms compute")
    print(f"wrote        {odir / 'original.wav'} (16 kHz) and {odir / 'decoded.wav'} "
          f"({model.sample_rate_output // 1000} kHz)")
    return 0
