#!/usr/bin/env python3
"""On-wire cost of a FocalChat call per direction, measured on loopback and modelled.

    .venv/bin/python scripts/bench_wire.py [--seconds 8] [--bits 16] [--cpp 1,2,4] [--redundancy 0,1]
                                           [--sack immediate,delayed,bundled] [--format v1,compact]
                                           [--no-presets] [--only-presets] [--json out.json]

Each row is a real call: two :class:`app.session.CallSession` objects in this process, connected over 127.0.0.1
(``local_only``: loopback ICE candidates only, ``RTCConfiguration(iceServers=[])``), both sending the bundled
speech sample in a loop (``FileMicSource(realtime=False, loop=True)``, paced by the session's 80 ms clock),
with the tiny untrained codec (``--bits 16``: 4 tokens x 16 bits = 8 bytes per 80 ms chunk, 0.8 kbps; ``--bits
12``: 6 bytes, 0.6 kbps, the size of the 4k published model's chunks). Once both handshakes are done and one
second has passed, every counter is read, again ``--seconds`` later, and the rates are over that window, for
each side; the table shows the mean of the two directions (they differ by a few bytes).

Columns (kbps = 1000 bit/s, per direction):

* payload: codec bits of the primary chunks (tokens x bits), no packet overhead, no redundancy.
* app: every data-channel message we sent (audio + control), i.e. what ``PeerTransport.send`` was given.
* wire: IP-level bytes we sent, from the DTLS transport's counters (UDP payloads) + 28 bytes of IPv4/UDP
  header per datagram: our DATA packets and our acknowledgements of the peer's. STUN consent checks (ICE,
  every ~5 s) do not go through DTLS and are not in it: the ``stun`` column counts them separately
  (``aioice`` ``send_stun`` on both sides / 2; noisy over a short window).
* model: :func:`app.transport.wire_bytes_per_message` per message we send (from our own counts of audio and
  control messages) + :func:`app.transport.sack_bytes_per_message` per message received (SACK policy model).
* sacks: SCTP acknowledgements we sent in packets of their own (of which: the delayed-ack timer fired + sent at
  once for a second packet, a gap or a duplicate) / inside our DATA packets (SACK policy patch counters, mean
  of the two sides; ``-`` with stock aiortc, which sends one packet per DATA packet received).
* delay: the packetisation delay this setting adds to the 80 ms chunk ((chunks per packet - 1) x 80 ms;
  acknowledgements never hold data back), and the session's mouth-to-ear estimate at the end of the window
  (chunk + encode + packetisation + RTT/2 + jitter-buffer wait + decode; no audio device here).
* ok: no stall: the receiver played at least 90 % of the chunks due in the window, nothing lost or dropped
  on send, the data channel's send buffer never held more than one message.

``--format``: ``v1`` is the framed AUDIO packet (21-byte header) with a PING every second (the default
``CallConfig``); ``compact`` is the compact AUDIO frame (8-byte header) with the RTT echoed on the audio once a
second instead of pings. Presets (unless ``--no-presets``): ``CallConfig.low_bandwidth()`` and
``CallConfig.low_latency()``, plus, for reference, low_bandwidth at 4 and 5 chunks per packet.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
import time
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

import aioice.ice  # noqa: E402

from app.audio_io import FileMicSource, NullSpeakerSink  # noqa: E402
from app.modelref import SPEECH_SAMPLE  # noqa: E402
from app.packet import (  # noqa: E402
    AUDIO_HEADER_SIZE,
    COMPACT_AUDIO_HEADER_SIZE,
    COMPACT_ECHO_SIZE,
)
from app.session import CallConfig, CallSession, HandshakeOk  # noqa: E402
from app.transport import sack_bytes_per_message, wire_bytes_per_message  # noqa: E402

PING_BYTES, PONG_BYTES = 18, 26


# ---------------------------------------------------------------------------------------------------------------
# STUN bytes (not in the DTLS counters)
# ---------------------------------------------------------------------------------------------------------------
class StunMeter:
    """Counts the bytes of every STUN message aioice sends in this process (both peers), IPv4+UDP included."""

    def __init__(self) -> None:
        self.bytes = 0
        self._orig = None

    def __enter__(self) -> StunMeter:
        self._orig = orig = aioice.ice.StunProtocol.send_stun
        meter = self

        def send_stun(proto, message, addr):  # noqa: ANN001
            meter.bytes += len(bytes(message)) + 28
            return orig(proto, message, addr)

        aioice.ice.StunProtocol.send_stun = send_stun
        return self

    def __exit__(self, *exc: object) -> None:
        aioice.ice.StunProtocol.send_stun = self._orig


# ---------------------------------------------------------------------------------------------------------------
# the model
# ---------------------------------------------------------------------------------------------------------------
def modelled_kbps(cfg: CallConfig, chunk_bytes: int, chunk_s: float = 0.08) -> float:
    """Per-direction IP kbps of a symmetric call with ``cfg`` on both sides (no loss, audio flowing)."""
    cpp, red = cfg.chunks_per_packet, cfg.redundancy
    pps = 1.0 / (cpp * chunk_s)
    if cfg.compact_audio:
        audio_len = COMPACT_AUDIO_HEADER_SIZE + (cpp + red) * chunk_bytes
        echo_per_s = 1.0 / cfg.rtt_echo_interval_s if cfg.rtt_echo_interval_s > 0 else 0.0
    else:
        audio_len = AUDIO_HEADER_SIZE + (cpp + red) * chunk_bytes
        echo_per_s = 0.0
    data_bps = pps * wire_bytes_per_message(audio_len)[0]
    # an echo adds 3 bytes to that packet (the SCTP chunk is padded to 4: count the padded difference)
    data_bps += echo_per_s * (wire_bytes_per_message(audio_len + COMPACT_ECHO_SIZE)[0]
                              - wire_bytes_per_message(audio_len)[0])
    ctrl = 0.0
    if cfg.ping_interval_s > 0:  # our PING and our PONG to the peer's PING
        data_bps += (wire_bytes_per_message(PING_BYTES)[0] + wire_bytes_per_message(PONG_BYTES)[0]) / cfg.ping_interval_s
        ctrl = 2.0 / cfg.ping_interval_s
    interval = 1.0 / pps
    if cfg.sack_policy == "immediate" or interval < cfg.sack_delay_s:
        # packets closer than the SACK timer: every message counts towards "acknowledge every Nth packet"
        msgs = pps + ctrl
        sack_bps = msgs * sack_bytes_per_message(cfg.sack_policy, recv_interval_s=1.0 / msgs,
                                                 send_interval_s=1.0 / msgs, sack_delay_s=cfg.sack_delay_s)
    else:
        # sparse audio: a control message shares the SACK of an audio packet that comes within the timer
        per = sack_bytes_per_message(cfg.sack_policy, recv_interval_s=interval, send_interval_s=interval,
                                     sack_delay_s=cfg.sack_delay_s)
        sack_bps = pps * per + ctrl * per * (1.0 - min(1.0, cfg.sack_delay_s / interval))
    return (data_bps + sack_bps) * 8 / 1000.0


# ---------------------------------------------------------------------------------------------------------------
# one measured call
# ---------------------------------------------------------------------------------------------------------------
@dataclass
class Row:
    name: str
    cpp: int
    red: int
    fmt: str
    sack: str
    payload: float
    app: float
    wire: float
    model: float
    stun: float
    sacks: str
    added_ms: float
    m2e_ms: float
    rtt_ms: float | None
    ok: bool
    note: str


def _snapshot(s: CallSession) -> dict:
    st = s.transport.stats()
    cs = s.stats()
    return dict(t=time.monotonic(), wire=st.wire.ip_bytes_sent() if st.wire else 0, app=st.bytes_sent,
                payload_bits=cs.chunks_sent * s.tokens_per_chunk * s.bits, played=cs.played, lost=cs.lost,
                drops=cs.send_drops, sack=st.sack, maxbuf=st.max_buffered_amount, m2e=cs.mouth_to_ear_ms,
                rtt=cs.rtt_ms, model=s._model_wire_sent, malformed=cs.malformed)


def measure(model, wav: Path, cfg_kw: dict, *, name: str, seconds: float, warmup: float = 1.0) -> Row:
    cfgs = [CallConfig(name=n, nickname=n.lower(), local_only=True, **cfg_kw) for n in ("A", "B")]
    sources = [FileMicSource(wav, realtime=False, loop=True) for _ in range(2)]
    sinks = [NullSpeakerSink() for _ in range(2)]
    sessions = [CallSession(model, src, sink, cfg) for src, sink, cfg in zip(sources, sinks, cfgs)]
    a, b = sessions
    try:
        with StunMeter() as stun:
            b_code = b.accept_offer_code(a.create_offer_code())
            a.accept_answer_code(b_code)
            for s in sessions:
                deadline = time.monotonic() + 10.0
                for _ in range(100_000):
                    ev = s.events.get(timeout=max(0.01, deadline - time.monotonic()))
                    if isinstance(ev, HandshakeOk):
                        break
                    if time.monotonic() > deadline:
                        raise RuntimeError(f"{name}: no handshake")
            time.sleep(warmup)
            s0 = [_snapshot(s) for s in sessions]
            stun0 = stun.bytes
            time.sleep(seconds)
            s1 = [_snapshot(s) for s in sessions]
            stun1 = stun.bytes
    finally:
        for s in sessions:
            s.stop()
        for x in (*sources, *sinks):
            x.close()
    dt = [e["t"] - s["t"] for s, e in zip(s0, s1)]

    def rate(key: str, bits: bool = False) -> float:
        vals = [(e[key] - s[key]) * (1 if bits else 8) / d / 1000.0 for s, e, d in zip(s0, s1, dt)]
        return sum(vals) / len(vals)

    cfg = cfgs[0]
    due = seconds / a.chunk_s
    ok = all(e["played"] - s["played"] >= 0.9 * due and e["lost"] == s["lost"] and e["drops"] == s["drops"]
             and e["maxbuf"] <= 64 and e["malformed"] == 0 for s, e in zip(s0, s1))
    sack_txt = "-"
    if s1[0]["sack"] is not None:
        d = {k: sum(getattr(e["sack"], k) - getattr(s["sack"], k) for s, e in zip(s0, s1)) / 2
             for k in ("standalone", "bundled", "timer", "forced")}
        sack_txt = f"{d['standalone']:g} ({d['timer']:g}+{d['forced']:g}) / {d['bundled']:g}"
    rtts = [e["rtt"] for e in s1 if e["rtt"] is not None]
    return Row(
        name=name, cpp=cfg.chunks_per_packet, red=cfg.redundancy, fmt="compact" if cfg.compact_audio else "v1",
        sack=cfg.sack_policy, payload=rate("payload_bits", bits=True), app=rate("app"), wire=rate("wire"),
        model=modelled_kbps(cfg, a.geometry.chunk_bytes, a.chunk_s),
        stun=(stun1 - stun0) * 8 / (sum(dt) / len(dt)) / 1000.0 / 2,
        sacks=sack_txt, added_ms=(cfg.chunks_per_packet - 1) * a.chunk_s * 1000.0,
        m2e_ms=sum(e["m2e"] for e in s1) / 2, rtt_ms=sum(rtts) / len(rtts) if rtts else None, ok=ok,
        note="" if ok else f"played {[e['played'] - s['played'] for s, e in zip(s0, s1)]} of {due:.0f}",
    )


def build_model(bits: int):
    import torch

    from app.modelref import untrained_model

    if bits == 16:
        return untrained_model()
    from codec.model import FocalCodec
    from codec.presets import tiny_config

    torch.manual_seed(0)
    model = FocalCodec(tiny_config(bits=bits))
    model.model_id = f"untrained-tiny-{bits}bit"
    return model


def fmt_table(rows: list[Row]) -> str:
    head = ("| setting | cpp | red | header | sack | payload | app | wire (meas.) | wire (model) | stun | "
            "sacks alone (timer+forced) / bundled | +delay ms | m2e ms | rtt ms | ok |")
    sep = "|" + "|".join("---" for _ in range(head.count("|") - 1)) + "|"
    out = [head, sep]
    for r in rows:
        rtt = f"{r.rtt_ms:.1f}" if r.rtt_ms is not None else "-"
        out.append(f"| {r.name} | {r.cpp} | {r.red} | {r.fmt} | {r.sack} | {r.payload:.2f} | {r.app:.2f} | "
                   f"**{r.wire:.2f}** | {r.model:.2f} | {r.stun:.2f} | {r.sacks} | {r.added_ms:.0f} | "
                   f"{r.m2e_ms:.0f} | {rtt} | {'yes' if r.ok else 'NO ' + r.note} |")
    return "\n".join(out)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seconds", type=float, default=8.0, help="measurement window per call (default 8)")
    ap.add_argument("--bits", type=int, default=16, choices=(11, 12, 16), help="token width of the codec")
    ap.add_argument("--cpp", default="1,2,4", help="chunks per packet to measure (default 1,2,4)")
    ap.add_argument("--redundancy", default="0,1")
    ap.add_argument("--sack", default="immediate,delayed,bundled")
    ap.add_argument("--format", default="v1,compact", help="v1 (21-byte header, pings) and/or compact (8, echo)")
    ap.add_argument("--no-presets", action="store_true")
    ap.add_argument("--only-presets", action="store_true")
    ap.add_argument("--json", type=Path, help="also write the rows as JSON")
    args = ap.parse_args(argv)

    import logging

    logging.basicConfig(level=logging.WARNING)
    model = build_model(args.bits)
    rows: list[Row] = []
    plan: list[tuple[str, dict]] = []
    if not args.only_presets:
        for fmt in args.format.split(","):
            for cpp in map(int, args.cpp.split(",")):
                for red in map(int, args.redundancy.split(",")):
                    for sack in args.sack.split(","):
                        kw = dict(chunks_per_packet=cpp, redundancy=red, sack_policy=sack)
                        if fmt == "compact":
                            kw.update(compact_audio=True, ping_interval_s=0.0, rtt_echo_interval_s=1.0)
                        plan.append(("matrix", kw))
    if not args.no_presets:
        lb = CallConfig.low_bandwidth()
        base = {k: getattr(lb, k) for k in ("chunks_per_packet", "redundancy", "compact_audio", "sack_policy",
                                            "sack_delay_s", "ping_interval_s", "rtt_echo_interval_s")}
        plan.append(("low_bandwidth()", base))
        plan.append(("low_bandwidth(cpp=5)", dict(base, chunks_per_packet=5)))
        plan.append(("low_bandwidth(cpp=4)", dict(base, chunks_per_packet=4)))
        ll = CallConfig.low_latency()
        plan.append(("low_latency()", {k: getattr(ll, k) for k in ("chunks_per_packet", "redundancy",
                                                                   "jitter_initial_depth")}))
    for i, (name, kw) in enumerate(plan):
        row = measure(model, SPEECH_SAMPLE, kw, name=name, seconds=args.seconds)
        rows.append(row)
        print(f"[{i + 1}/{len(plan)}] {name} cpp={row.cpp} red={row.red} {row.fmt} {row.sack}: "
              f"wire {row.wire:.2f} kbps (model {row.model:.2f}) {'ok' if row.ok else 'STALL ' + row.note}",
              file=sys.stderr, flush=True)
    print(f"\nper direction, both sides talking, {args.bits}-bit tokens, {args.seconds:g} s per call, "
          f"loopback IPv4; kbps = 1000 bit/s\n")
    print(fmt_table(rows))
    if args.json:
        args.json.write_text(json.dumps([r.__dict__ for r in rows], indent=1))
    return 0 if all(r.ok for r in rows) else 1


if __name__ == "__main__":
    with contextlib.suppress(KeyboardInterrupt):
        sys.exit(main())
