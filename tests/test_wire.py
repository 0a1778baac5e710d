"""On-wire cost of real calls: two :class:`CallSession` objects on 127.0.0.1 (``local_only``: loopback ICE
candidates, ``RTCConfiguration(iceServers=[])``), both talking (the bundled speech sample, looped, paced by the
session's 80 ms clock), with the tiny untrained codec (16-bit tokens: 8 bytes per 80 ms chunk, 0.8 kbps, the
widest chunks of the published models, so the worst case for the wire).

The per-direction wire rate is measured with the DTLS transport's counters (every datagram of the association:
DATA, acknowledgements, control; IPv4+UDP headers added), over a window of whole seconds after both handshakes.
It is a property of the protocol counted in bytes, not a timing, so it is asserted. Every wait is bounded in
time and every loop in count.

``FOCALCHAT_WIRE_SOAK_S`` (default 12) sets the length of the no-stall soak (1 and 4 chunks per packet, both
ends patched); the 60 s figures in the closing note came from ``FOCALCHAT_WIRE_SOAK_S=60``.
"""

from __future__ import annotations

import os
import queue
import time
from pathlib import Path

import numpy as np
import pytest

from app.audio_io import FileMicSource, NullSpeakerSink
from app.modelref import SPEECH_SAMPLE, untrained_model
from app.packet import COMPACT_FRAME_VERSION, FRAME_VERSION
from app.recording import RECEIVED, SENT, RecordingReader
from app.session import CallConfig, CallSession, HandshakeOk
from app.transport import PeerTransport, TransportThread, allow_loopback_candidates
from tests.waiting import wait_until

TARGET_KBPS = 3.0




@pytest.fixture(scope="module")
def model():
    return untrained_model()


class Call:
    """Two connected sessions, both sending the looped speech sample; stopped by close()."""

    def __init__(self, model, cfg: CallConfig, tmp_path: Path | None = None) -> None:
        self.sources = [FileMicSource(SPEECH_SAMPLE, realtime=False, loop=True) for _ in range(2)]
        self.sinks = [NullSpeakerSink(), NullSpeakerSink()]
        self.recs = [tmp_path / "a.fcr", tmp_path / "b.fcr"] if tmp_path is not None else [None, None]
        self.sessions = [
            CallSession(model, src, sink, _named(cfg, name, rec))
            for src, sink, name, rec in zip(self.sources, self.sinks, ("A", "B"), self.recs)
        ]
        self.a, self.b = self.sessions
        self.captured: list[list[bytes]] = [[], []]

    def connect(self, timeout: float = 10.0) -> None:
        self.a.accept_answer_code(self.b.accept_offer_code(self.a.create_offer_code()))
        for s in self.sessions:
            deadline = time.monotonic() + timeout
            for _ in range(100_000):
                try:
                    ev = s.events.get(timeout=max(0.01, deadline - time.monotonic()))
                except queue.Empty:
                    ev = None
                if isinstance(ev, HandshakeOk):
                    break
                assert time.monotonic() < deadline, f"{s.config.name}: no handshake within {timeout} s"

    def tap(self) -> None:
        """Keep a copy of every message each side receives (wrapping the transport's on_message)."""
        for i, s in enumerate(self.sessions):
            tr = s.transport
            inner = tr.on_message

            def wrapped(data: bytes, inner=inner, out=self.captured[i]) -> None:
                out.append(data)
                inner(data)

            tr.on_message = wrapped

    def snapshot(self) -> list[dict]:
        out = []
        for s in self.sessions:
            st, cs = s.transport.stats(), s.stats()
            out.append(dict(t=time.monotonic(), wire=st.wire.ip_bytes_sent(), pkts=st.wire.udp_packets_sent,
                            app=st.bytes_sent, played=cs.played, lost=cs.lost, late=cs.late, drops=cs.send_drops,
                            malformed=cs.malformed, maxbuf=st.max_buffered_amount, buf=st.buffered_amount,
                            sack=st.sack, rtt=cs.rtt_ms, audio_rx=cs.audio_packets_received))
        return out

    def close(self) -> None:
        for s in self.sessions:
            s.stop()
        for x in (*self.sources, *self.sinks):
            x.close()


def _named(cfg: CallConfig, name: str, rec: Path | None) -> CallConfig:
    import dataclasses

    return dataclasses.replace(cfg, name=name, nickname=name.lower(), local_only=True, record_path=rec)


def kbps(b0: dict, b1: dict, key: str = "wire") -> float:
    return (b1[key] - b0[key]) * 8 / (b1["t"] - b0["t"]) / 1000.0


# ---------------------------------------------------------------------------------------------------------------
# presets
# ---------------------------------------------------------------------------------------------------------------
def test_presets():
    lb = CallConfig.low_bandwidth()
    assert (lb.chunks_per_packet, lb.redundancy, lb.compact_audio, lb.sack_policy) == (6, 0, True, "bundled")
    assert lb.ping_interval_s == 0 and lb.rtt_echo_interval_s == 1.0 and lb.sack_delay_s == 0.5
    # the SACK timer outlasts our packet interval, so each SACK catches our next packet
    assert lb.sack_delay_s >= lb.chunks_per_packet * 0.08
    ll = CallConfig.low_latency()
    assert (ll.chunks_per_packet, ll.jitter_initial_depth, ll.redundancy) == (1, 1, 1)
    assert CallConfig.low_bandwidth(name="x", chunks_per_packet=8).chunks_per_packet == 8
    assert CallConfig.low_latency(nickname="z").nickname == "z"
    with pytest.raises(ValueError, match="1..4"):
        CallConfig(chunks_per_packet=5)  # framed AUDIO packets carry at most 4
    with pytest.raises(ValueError, match="1..8"):
        CallConfig.low_bandwidth(chunks_per_packet=9)
    with pytest.raises(ValueError, match="compact_audio"):
        CallConfig(rtt_echo_interval_s=1.0)
    for bad in (dict(sack_policy="lazy"), dict(sack_delay_s=0.0), dict(sack_delay_s=0.7)):
        with pytest.raises(ValueError):
            CallConfig(**bad)


# ---------------------------------------------------------------------------------------------------------------
# the low-bandwidth setting: at most 3 kbps on the wire per direction
# ---------------------------------------------------------------------------------------------------------------
def test_low_bandwidth_call_is_at_most_3_kbps_per_direction(model, tmp_path):
    call = Call(model, CallConfig.low_bandwidth(), tmp_path)
    try:
        call.connect()
        call.tap()
        time.sleep(1.5)  # past the handshake and the first packets
        b0 = call.snapshot()
        time.sleep(9.6)  # 20 packets of 480 ms each way
        b1 = call.snapshot()
    finally:
        call.close()
    due = 9.6 / 0.08
    for s0, s1, name in zip(b0, b1, "AB"):
        wire = kbps(s0, s1)
        print(f"\n{name}: wire {wire:.2f} kbps, app {kbps(s0, s1, 'app'):.2f} kbps, "
              f"{s1['pkts'] - s0['pkts']} datagrams, sacks {s1['sack']}, rtt {s1['rtt']}")
        assert wire <= TARGET_KBPS, f"{name} sends {wire:.2f} kbps on the wire"
        assert wire > 1.5  # the counters did count: 20 packets of ~165 bytes
        # no stall: the other side's audio kept playing, nothing lost, nothing waiting to be sent
        assert s1["played"] - s0["played"] >= 0.9 * due, (s0, s1)
        assert s1["lost"] == s0["lost"] and s1["late"] == s0["late"] and s1["drops"] == s0["drops"] == 0
        assert s1["malformed"] == 0 and s1["maxbuf"] <= 64 and s1["buf"] == 0
        # every datagram but a couple carried DATA: SACKs rode along (bundled), no pings
        assert s1["sack"].bundled - s0["sack"].bundled >= 14  # one may cover two packets
        assert s1["sack"].standalone - s0["sack"].standalone <= 2
        assert s1["pkts"] - s0["pkts"] <= 23
        # RTT without pings: echoed on the audio
        assert s1["rtt"] is not None and 0 < s1["rtt"] < 100
    # on the wire: compact frames of 8 + 6 x 8 bytes (an echo: +3) and no PING/PONG at all
    for got in call.captured:
        audio = [m for m in got if m[2] == COMPACT_FRAME_VERSION]
        assert len(audio) >= 20
        assert {len(m) for m in audio} <= {56, 59}
        assert any(len(m) == 59 for m in audio)  # echoes
        control_types = {m[3] for m in got if m[2] == FRAME_VERSION}
        assert not control_types & {4, 5}  # no PING (4) / PONG (5)
    # every chunk played is the one that was sent
    for sent_rec, got_rec in ((call.recs[0], call.recs[1]), (call.recs[1], call.recs[0])):
        sent, got = RecordingReader(sent_rec).streams()[SENT], RecordingReader(got_rec).streams()[RECEIVED]
        assert len(got) >= 100
        for i, toks in got.items():
            assert np.array_equal(sent[i], toks), i


def test_default_call_for_comparison(model):
    """The defaults (framed AUDIO, one chunk per packet, stock SACKs, pings) cost ~25 kbps per direction."""
    call = Call(model, CallConfig())
    try:
        call.connect()
        time.sleep(1.0)
        b0 = call.snapshot()
        time.sleep(3.0)
        b1 = call.snapshot()
    finally:
        call.close()
    for s0, s1 in zip(b0, b1):
        assert 20.0 <= kbps(s0, s1) <= 30.0
        assert s1["sack"] is None  # stock aiortc


# ---------------------------------------------------------------------------------------------------------------
# no stall over a long call (transport level; both ends bundled)
# ---------------------------------------------------------------------------------------------------------------
def test_soak_bundled_sacks_never_stall():
    """Two calls at once for FOCALCHAT_WIRE_SOAK_S seconds: 1 chunk per packet (80 ms, 200 ms SACK timer) and 4
    chunks per packet (320 ms, 500 ms timer), both directions, sizes of compact frames. Every message arrives,
    the send buffers never hold more than one message, SACKs ride along, RTO-driven abandonment never
    happens (no FORWARD TSN: our SACKs are never late enough)."""
    seconds = float(os.environ.get("FOCALCHAT_WIRE_SOAK_S", "12"))
    net = TransportThread(name="soak").start()
    pairs: list[tuple[PeerTransport, PeerTransport, float, int]] = []
    try:
        with allow_loopback_candidates():
            for interval, size, delay in ((0.08, 16, 0.2), (0.32, 40, 0.5)):
                a = PeerTransport(name=f"A{interval}", thread=net, sack_policy="bundled", sack_delay_s=delay)
                b = PeerTransport(name=f"B{interval}", thread=net, sack_policy="bundled", sack_delay_s=delay)
                a.accept_answer(b.accept_offer(a.create_offer()))
                pairs.append((a, b, interval, size))
        assert wait_until(lambda: all(a.is_open and b.is_open for a, b, _, _ in pairs), 5.0)
        t0 = time.monotonic()
        sent = {id(p): 0 for pair in pairs for p in pair[:2]}
        next_due = {id(p): t0 + (0.0 if i % 2 == 0 else pair[2] / 2)
                    for pair in pairs for i, p in enumerate(pair[:2])}
        max_buf = 0
        for _ in range(int(seconds / 0.005) + 10):
            now = time.monotonic()
            if now - t0 >= seconds:
                break
            for a, b, interval, size in pairs:
                for p in (a, b):
                    if now >= next_due[id(p)]:
                        assert p.send(bytes([sent[id(p)] % 256]) * size)
                        sent[id(p)] += 1
                        next_due[id(p)] += interval
                    max_buf = max(max_buf, p.stats().buffered_amount)
            time.sleep(0.005)
        # the last messages arrive (bounded wait on the condition, not a fixed pause)
        assert wait_until(lambda: all(rx.stats().messages_received == sent[id(tx)]
                                      for a, b, _, _ in pairs for tx, rx in ((a, b), (b, a))), 10.0)
        for a, b, interval, size in pairs:
            for tx, rx in ((a, b), (b, a)):
                st_tx, st_rx = tx.stats(), rx.stats()
                assert st_rx.messages_received == sent[id(tx)], (interval, st_rx.messages_received, sent[id(tx)])
                assert st_tx.send_drops == 0 and st_tx.max_buffered_amount <= size
                # SACKs rode along: hardly any packet of its own (one SACK may cover several packets)
                assert st_tx.sack.standalone <= 0.05 * sent[id(rx)] + 2, (interval, st_tx.sack)
                assert st_tx.sack.bundled >= 0.5 * sent[id(rx)], (interval, st_tx.sack)
        assert max_buf <= 40
        # no retransmission-timer expiry: the sender never had to abandon a message and skip it
        for a, b, _, _ in pairs:
            for p in (a, b):
                assert p._pc.sctp._forward_tsn_chunk is None
                assert p._pc.sctp._advanced_peer_ack_tsn == p._pc.sctp._last_sacked_tsn
    finally:
        for a, b, _, _ in pairs:
            a.close()
            b.close()
        net.stop()
