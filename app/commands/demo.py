"""``focalchat demo``: headless streaming codec demo on a speech file (the bundled clip by default) or the
microphone, optionally through a simulated network.

The audio goes the way of a call, minus aiortc: 80 ms chunks -> streaming encoder -> AUDIO packets
(``--chunks-per-packet``, ``--redundancy``; :class:`app.packet.AudioPacket`, encoded to bytes) ->
:class:`app.netsim.NetSim` (``--loss``, ``--burst``, ``--jitter-ms``, ``--delay-ms``; a perfect link by default)
-> :func:`app.packet.parse_packet` -> :class:`app.jitter.JitterBuffer` -> :class:`app.conceal.StreamDecoder`
(loss concealment), one playout tick per 80 ms, as :class:`app.session.CallSession` plays a peer.

Time is simulated (the whole clip runs as fast as the CPU allows, figures are per chunk): chunk ``i`` is
complete at ``(i + 1) x 80 ms``, a packet leaves when its last chunk is complete (plus the measured encode
time of that chunk), and the playout clock ticks half a chunk after the capture clock (the average phase of
two free-running 80 ms clocks). ``decoded.wav`` is what the listener hears from the first chunk played on:
concealed chunks included, an underrun (a tick the buffer ran dry) stretches the timeline by one chunk, as in
a call; it is cut or padded to the length of ``original.wav`` for A/B listening. The output limiter of a call
is not applied.
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from app.precision import MODE_HELP, MODES


def register(sub) -> None:
    p = sub.add_parser("demo", help="stream a speech file (or the mic) through the codec, optionally over a "
                                    "simulated network, and report",
                       description="Headless codec demo: 80 ms chunks -> streaming encoder -> packets -> simulated "
                                   "network -> jitter buffer -> streaming decoder with loss concealment, as in a "
                                   "call; writes the original and decoded WAVs for A/B listening.")
    p.add_argument("--input", default=None, help="speech file (default: the bundled assets/speech_sample.wav)")
    p.add_argument("--model", default="default", help="default | 2k | 4k | 65k | hub id | checkpoint folder")
    p.add_argument("--mode", default="auto", choices=MODES, help=MODE_HELP)
    p.add_argument("--out", default="out/demo", help="folder for original.wav and decoded.wav")
    p.add_argument("--threads", type=int, default=1, help="torch threads (the app uses 1 per stream)")
    mic = p.add_argument_group("microphone (instead of a file)")
    mic.add_argument("--mic", type=float, default=None, metavar="SECONDS",
                     help="record this many seconds from the microphone and use that as the input")
    mic.add_argument("--mic-device", default=None, help="input device (PortAudio index or name)")
    mic.add_argument("--pulse-source", default=None, help="PulseAudio source for the microphone")
    net = p.add_argument_group("packets and simulated network (as in `focalchat call`)")
    net.add_argument("--chunks-per-packet", type=int, default=1, choices=(1, 2, 3, 4),
                     help="80 ms chunks per packet")
    net.add_argument("--redundancy", type=int, default=0, choices=(0, 1, 2, 3),
                     help="previous chunks repeated in every packet (recovers single losses)")
    net.add_argument("--loss", type=float, default=0.0, metavar="PCT", help="packet loss (percent)")
    net.add_argument("--burst", type=float, default=1.0, help="mean loss-burst length (packets, >= 1)")
    net.add_argument("--jitter-ms", type=float, default=0.0, help="network jitter (standard deviation, ms)")
    net.add_argument("--delay-ms", type=float, default=0.0, help="one-way network delay (ms)")
    net.add_argument("--jitter-depth", type=int, default=2, metavar="CHUNKS",
                     help="initial jitter-buffer depth (as CallConfig.jitter_initial_depth)")
    net.add_argument("--seed", type=int, default=0, help="seed of the simulated network")
    p.set_defaults(func=run)


# ---------------------------------------------------------------------------------------------------------------
# the call path, simulated
# ---------------------------------------------------------------------------------------------------------------
@dataclass
class NetResult:
    """What :func:`simulate_link` did."""

    audio: np.ndarray  # decoded output from the first chunk played on (not cut to the input length)
    packets: int = 0
    packet_bytes: int = 0  # AUDIO packets as sent (headers and redundancy included)
    net_lost: int = 0  # packets the network lost
    played: int = 0
    lost: int = 0  # chunks declared lost by the jitter buffer (tail losses included)
    tail_lost: int = 0  # lost at the very end (no later chunk came to reveal them)
    recovered: int = 0  # played from a redundant copy
    late: int = 0
    underruns: int = 0
    dropped: int = 0
    concealed: int = 0  # playout ticks filled by concealment
    malformed: int = 0
    dec_ms: list[float] = field(default_factory=list)
    delay_ms: list[float] = field(default_factory=list)  # chunk complete -> played (packetisation + net + buffer)


def simulate_link(model, tokens: list[np.ndarray], *, chunks_per_packet: int = 1, redundancy: int = 0,
                  loss: float = 0.0, burst: float = 1.0, jitter_ms: float = 0.0, delay_ms: float = 0.0,
                  seed: int = 0, jitter_depth: int = 2, enc_ms: list[float] | None = None) -> NetResult:
    """Send ``tokens`` (one (tokens_per_chunk,) array per chunk) through packets, a NetSim, the jitter buffer
    and the concealing decoder, on a simulated clock. ``loss`` is a probability."""
    import torch

    from app.conceal import StreamDecoder
    from app.jitter import JitterBuffer, PlayoutKind
    from app.netsim import NetSim
    from app.packet import AudioPacket, PacketError, parse_packet

    if not 1 <= chunks_per_packet <= 4 or not 0 <= redundancy <= 3:
        raise ValueError("chunks per packet must be 1..4 and redundancy 0..3")
    n = len(tokens)
    chunk_s = model.chunk_size / model.sample_rate_input
    bits, tpc = int(model.bits_per_token), int(model.tokens_per_chunk)
    sim = NetSim(loss, burst, jitter_ms, 0.0, 0.0, delay_ms, seed)  # ValueError on impossible settings
    jb = JitterBuffer(jitter_depth, 1, max(12, jitter_depth), chunk_duration_s=chunk_s)
    dec = StreamDecoder(model)
    res = NetResult(audio=np.zeros(0, np.float32))

    # packets, as CallSession._send_audio builds them: a packet leaves when its last chunk is encoded
    sends: list[tuple[float, bytes]] = []
    for seq, first in enumerate(range(0, n, chunks_per_packet)):
        last = min(first + chunks_per_packet, n) - 1
        r = min(redundancy, first)
        t = (last + 1) * chunk_s + (enc_ms[last] / 1000.0 if enc_ms else 0.0)
        pkt = AudioPacket(seq=seq, first_chunk=first, bits=bits, tokens_per_chunk=tpc,
                          chunks=[tokens[i] for i in range(first, last + 1)],
                          redundant=[tokens[i] for i in range(first - r, first)], timestamp_ms=int(t * 1000))
        data = pkt.encode()
        sends.append((t, data))
        res.packet_bytes += len(data)
    res.packets = len(sends)

    out: list[np.ndarray] = []
    silence = np.zeros(model.output_chunk_size, np.float32)
    started = False
    si = 0
    max_ticks = n + 4 * jb.max_depth + int((delay_ms + 6 * jitter_ms) / 1000.0 / chunk_s) + 50
    with torch.inference_mode():
        for k in range(max_ticks):
            now = (k + 1.5) * chunk_s
            while si < len(sends) and sends[si][0] <= now:
                sim.send(sends[si][1], sends[si][0])
                si += 1
            for when, data in sim.deliver_timed(now):
                try:
                    jb.put_packet(parse_packet(data), when)
                except PacketError:
                    res.malformed += 1
            st = jb.stats
            if si == len(sends) and sim.in_flight == 0 and st.depth == 0 and (started or st.received == 0):
                break  # nothing left to come: what is still missing was lost at the end
            item = jb.pop(now)
            kind = item.kind
            if kind is PlayoutKind.NOT_STARTED:
                continue
            if kind is PlayoutKind.BUFFERING:
                if started:
                    out.append(silence)
                continue
            if kind is PlayoutKind.EMPTY and not started:
                continue
            ts = time.perf_counter()
            y = dec.decode(item.tokens if kind is PlayoutKind.TOKENS else None)
            if kind is PlayoutKind.TOKENS:
                res.dec_ms.append(1e3 * (time.perf_counter() - ts))
                res.delay_ms.append(1e3 * (now - (int(item.index) + 1) * chunk_s))
                started = True
            out.append(np.asarray(y, np.float32))
        st = jb.stats
        res.tail_lost = max(0, n - (st.played + st.lost + st.dropped))
        for _ in range(res.tail_lost):
            out.append(np.asarray(dec.decode(None), np.float32))
    res.audio = np.concatenate(out) if out else np.zeros(0, np.float32)
    res.net_lost = sim.stats.lost
    res.played, res.lost, res.recovered = st.played, st.lost + res.tail_lost, st.recovered
    res.late, res.underruns, res.dropped = st.late, st.underruns, st.dropped
    res.concealed = dec.concealed
    return res


def record_mic(seconds: float, device, pulse_source: str | None) -> np.ndarray:
    """``seconds`` of microphone audio at 16 kHz (raises AudioDeviceError)."""
    from app.audio_io import CHUNK_SECONDS, AudioDeviceError, MicSource

    n = max(1, math.ceil(seconds / CHUNK_SECONDS))
    chunks = []
    with MicSource(device, pulse_source=pulse_source) as mic:
        mic.flush()
        for _ in range(n):
            c = mic.read_chunk(timeout=2.0)
            if c is None:
                raise AudioDeviceError("the microphone delivered no audio for 2 s")
            chunks.append(c)
    return np.concatenate(chunks)


# ---------------------------------------------------------------------------------------------------------------
# the command
# ---------------------------------------------------------------------------------------------------------------
def run(args: argparse.Namespace) -> int:
    import torch

    from app.audio_io import AudioDeviceError
    from app.modelref import SPEECH_SAMPLE, load_model
    from codec.audio import AudioFileError, load_audio, save_audio
    from codec.bitpack import pack_tokens
    from codec.pretrained import CheckpointError

    if not 0 <= args.loss < 100:
        print("error: --loss is a percentage in [0, 100)", file=sys.stderr)
        return 2
    if args.mic is not None and not 0 < args.mic <= 600:
        print("error: --mic takes 0 < SECONDS <= 600", file=sys.stderr)
        return 2
    if not 1 <= args.jitter_depth <= 12:
        print("error: --jitter-depth is 1..12 chunks", file=sys.stderr)
        return 2
    torch.set_num_threads(args.threads)
    try:
        model = load_model(args.model, allow_untrained=args.model == "default", mode=args.mode)
        if args.mic is not None:
            device = int(args.mic_device) if args.mic_device and args.mic_device.isdigit() else args.mic_device
            sig = record_mic(args.mic, device, args.pulse_source)
            src = f"microphone{f' {args.mic_device}' if args.mic_device else ''}" \
                  f"{f' (PulseAudio source {args.pulse_source})' if args.pulse_source else ''}"
        else:
            src = Path(args.input) if args.input else SPEECH_SAMPLE
            sig = load_audio(src, model.sample_rate_input)
    except (CheckpointError, AudioFileError, AudioDeviceError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if not model.causal:
        print("error: this model is full-context and cannot stream; use `focalchat encode`", file=sys.stderr)
        return 2
    cs, bits = model.chunk_size, model.bits_per_token
    n_chunks = -(-len(sig) // cs)
    padded = np.zeros(n_chunks * cs, np.float32)
    padded[: len(sig)] = sig
    enc_ms, payload, tokens = [], 0, []
    est = None
    x = torch.from_numpy(padded)[None]
    with torch.inference_mode():
        for i in range(n_chunks):
            t0 = time.perf_counter()
            toks, est = model.encode_step(x[:, i * cs : (i + 1) * cs], est)
            tok = toks[0].numpy().astype(np.int64)
            enc_ms.append(1e3 * (time.perf_counter() - t0))
            tokens.append(tok)
            payload += len(pack_tokens(tok, bits))
    try:
        net = simulate_link(model, tokens, chunks_per_packet=args.chunks_per_packet, redundancy=args.redundancy,
                            loss=args.loss / 100.0, burst=args.burst, jitter_ms=args.jitter_ms,
                            delay_ms=args.delay_ms, seed=args.seed, jitter_depth=args.jitter_depth, enc_ms=enc_ms)
    except ValueError as exc:  # impossible network settings
        print(f"error: {exc}", file=sys.stderr)
        return 2
    n_out = len(sig) * model.sample_rate_output // model.sample_rate_input
    out = np.zeros(n_out, np.float32)
    out[: min(n_out, len(net.audio))] = net.audio[:n_out]
    odir = Path(args.out)
    save_audio(odir / "original.wav", sig, model.sample_rate_input)
    save_audio(odir / "decoded.wav", out, model.sample_rate_output)

    dur = len(sig) / model.sample_rate_input
    chunk_ms = 1000 * cs / model.sample_rate_input
    dec_ms = net.dec_ms or [0.0]
    enc50, dec50 = float(np.percentile(enc_ms, 50)), float(np.percentile(dec_ms, 50))
    tot = enc50 + dec50
    print(f"model        {model.model_id} ({model.num_params() / 1e6:.1f} M params, {bits} bits/token, "
          f"{model.config.token_rate:g} tokens/s)")
    print(f"input        {src} ({dur:.2f} s, {n_chunks} chunks of {chunk_ms:.0f} ms)")
    print(f"payload      {payload} bytes = {8 * payload / dur / 1000:.3f} kbps "
          f"(codec rate {model.config.bitrate / 1000:.2f} kbps; byte-packed per chunk)")
    print(f"packets      {net.packets} AUDIO packets, {net.packet_bytes} bytes = "
          f"{8 * net.packet_bytes / dur / 1000:.3f} kbps ({args.chunks_per_packet} chunk(s)/packet, redundancy "
          f"{args.redundancy}; headers included, no SCTP/DTLS/UDP/IP)")
    link = "perfect link" if not (args.loss or args.jitter_ms or args.delay_ms) else \
        (f"loss {args.loss:g}% (mean burst {args.burst:g}), jitter {args.jitter_ms:g} ms, delay {args.delay_ms:g} ms, "
         f"seed {args.seed}")
    print(f"network      {link}: {net.net_lost} of {net.packets} packets lost")
    print(f"playout      {net.played} chunks played, {net.recovered} recovered (redundancy), {net.lost} lost, "
          f"{net.late} late, {net.underruns} underrun ticks, {net.dropped} dropped; {net.concealed} ticks concealed"
          + (f"; {net.malformed} malformed" if net.malformed else ""))
    if net.delay_ms:
        print(f"buffering    p50 {np.percentile(net.delay_ms, 50):.0f} ms from chunk complete to played "
              f"(packetisation + network + jitter buffer, simulated clock)")
    print(f"encode       p50 {enc50:.2f} ms  p90 {np.percentile(enc_ms, 90):.2f} ms per chunk")
    print(f"decode       p50 {dec50:.2f} ms  p90 {np.percentile(dec_ms, 90):.2f} ms per chunk")
    print(f"enc+dec      p50 {tot:.2f} ms per {chunk_ms:.0f} ms chunk "
          f"(real-time factor {tot / chunk_ms:.3f}, {args.threads} thread(s))")
    print(f"latency      {model.latency:.0f} ms algorithmic + {tot:.1f} ms compute")
    print(f"wrote        {odir / 'original.wav'} (16 kHz) and {odir / 'decoded.wav'} "
          f"({model.sample_rate_output // 1000} kHz)")
    return 0
