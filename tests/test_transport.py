"""PeerTransport + signaling over 127.0.0.1 only.

Every peer uses ``RTCConfiguration(iceServers=[])`` (the transport's default) and gathers candidates under
``allow_loopback_candidates()``, so the only ICE candidate is 127.0.0.1 (asserted on every offer/answer).
Every wait is bounded in time and every loop in count.
"""

from __future__ import annotations

import json
import os
import queue
import select
import socket
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import aioice.ice
import aiortc
import aiortc.rtcsctptransport as sctp
import pytest

from app import signaling
from app.signaling import SignalingError, decode_code, encode_code
from app.transport import (
    FAIL_HINT,
    ChannelClosed,
    ChannelOpen,
    ConnectionStateChanged,
    PeerTransport,
    SignalingStateChanged,
    TransportError,
    TransportEvent,
    TransportFailed,
    TransportThread,
    allow_loopback_candidates,
    install_sack_policy,
    loopback_candidates_enabled,
    sack_bytes_per_message,
    sack_patch_problem,
    sack_policy_of,
    serialize_bundled_packet,
    uninstall_sack_policy,
    wire_bytes_per_message,
)
from tests.waiting import wait_until as _wait_until

REPO = Path(__file__).resolve().parent.parent

# An aiortc 1.16 offer (loopback candidate), for the pure code tests.
SAMPLE_OFFER = (
    "v=0\r\no=- 4004603623 4004603623 IN IP4 0.0.0.0\r\ns=-\r\nt=0 0\r\na=group:BUNDLE 0\r\n"
    "a=msid-semantic:WMS *\r\nm=application 54662 UDP/DTLS/SCTP webrtc-datachannel\r\nc=IN IP4 127.0.0.1\r\n"
    "a=mid:0\r\na=sctp-port:5000\r\na=max-message-size:262144\r\n"
    "a=candidate:16572de626da4e5384a0ce2d0d93678a 1 udp 2130706431 127.0.0.1 54662 typ host\r\n"
    "a=end-of-candidates\r\na=ice-ufrag:BDWP\r\na=ice-pwd:vj0JizsyxXaYu8MJi246dr\r\n"
    "a=fingerprint:sha-256 6E:6A:ED:07:B9:7D:F4:90:FB:C9:AC:C5:B0:43:69:7C:5E:32:C7:2B:15:6C:D4:77:B3:12:AA:39:"
    "DE:5D:E4:F2\r\n"
    "a=fingerprint:sha-384 D9:90:27:3E:4E:1F:0D:43:9E:9A:E4:32:F4:45:A2:A2:23:F8:F1:70:93:6B:73:74:B8:23:89:05:"
    "4B:0E:83:1F:40:F7:EE:3F:62:D6:A4:A7:B8:C4:C4:F5:75:E8:9E:B9\r\n"
    "a=setup:actpass\r\n"
)


# ---------------------------------------------------------------------------------------------------------------
# helpers
# ---------------------------------------------------------------------------------------------------------------

def wait_until(pred, timeout: float, step: float = 0.01) -> bool:
    return _wait_until(pred, timeout, step)


def drain(q: queue.Queue, limit: int = 10_000) -> list:
    out = []
    for _ in range(limit):
        try:
            out.append(q.get_nowait())
        except queue.Empty:
            break
    return out


class EventLog:
    """Collects one transport's events (the queue is drained into a list; bounded waits)."""

    def __init__(self) -> None:
        self.q: queue.Queue[TransportEvent] = queue.Queue()
        self.seen: list[TransportEvent] = []

    def wait_for(self, pred: Callable[[TransportEvent], bool], timeout: float) -> TransportEvent | None:
        deadline = time.monotonic() + timeout
        for _ in range(100_000):
            for ev in self.seen:
                if pred(ev):
                    return ev
            left = deadline - time.monotonic()
            if left <= 0:
                return None
            try:
                self.seen.append(self.q.get(timeout=min(left, 0.05)))
            except queue.Empty:
                pass
        return None

    def all(self) -> list[TransportEvent]:
        self.seen.extend(drain(self.q))
        return self.seen


def assert_loopback_only(sdp: str) -> None:
    cands = [ln for ln in sdp.splitlines() if ln.startswith("a=candidate:")]
    assert cands, "no ICE candidate at all"
    for ln in cands:
        assert ln.split()[4] == "127.0.0.1", ln


def index_of(events: list[TransportEvent], pred: Callable[[TransportEvent], bool]) -> int:
    for i, ev in enumerate(events):
        if pred(ev):
            return i
    raise AssertionError(f"event not found in {[type(e).__name__ for e in events]}")


@pytest.fixture
def loopback():
    with allow_loopback_candidates():
        yield


@pytest.fixture
def net():
    th = TransportThread(name="test-net").start()
    yield th
    th.stop(timeout=5.0)
    assert not th._thread.is_alive()


def connect_pair(
    net: TransportThread, la: EventLog, lb: EventLog, **kw
) -> tuple[PeerTransport, PeerTransport]:
    a = PeerTransport(name="A", thread=net, events=la.q, **kw)
    b = PeerTransport(name="B", thread=net, events=lb.q, **kw)
    offer = a.create_offer()
    assert_loopback_only(offer)
    answer = b.accept_offer(offer)
    assert_loopback_only(answer)
    a.accept_answer(answer)
    assert wait_until(lambda: a.is_open and b.is_open, 5.0), "channel did not open within 5 s"
    return a, b


# ---------------------------------------------------------------------------------------------------------------
# loopback patch
# ---------------------------------------------------------------------------------------------------------------
def test_loopback_patch_is_scoped_and_reversible():
    original = aioice.ice.get_host_addresses
    assert not loopback_candidates_enabled()
    with allow_loopback_candidates():
        assert aioice.ice.get_host_addresses(use_ipv4=True, use_ipv6=True) == ["127.0.0.1"]
        assert aioice.ice.get_host_addresses(use_ipv4=False, use_ipv6=True) == []
        with allow_loopback_candidates():  # nested: still patched after the inner block
            pass
        assert loopback_candidates_enabled()
    assert aioice.ice.get_host_addresses is original
    with pytest.raises(RuntimeError), allow_loopback_candidates():
        raise RuntimeError("boom")
    assert aioice.ice.get_host_addresses is original


# ---------------------------------------------------------------------------------------------------------------
# in-process: copy-paste codes, 200 messages each way, clean close
# ---------------------------------------------------------------------------------------------------------------
@pytest.mark.usefixtures("loopback")
def test_copy_paste_connect_exchange_and_close(net):
    la, lb = EventLog(), EventLog()
    a = PeerTransport(name="A", thread=net, events=la.q)
    b = PeerTransport(name="B", thread=net, events=lb.q)

    offer = a.create_offer()
    assert_loopback_only(offer)
    offer_code = encode_code(offer, "offer")
    assert offer_code.startswith("FC1O:") and len(offer_code) < 200
    kind, offer_sdp = decode_code(offer_code, expect="offer")
    assert kind == "offer"
    answer = b.accept_offer(offer_sdp)
    assert_loopback_only(answer)
    answer_code = encode_code(answer, "answer")
    assert answer_code.startswith("FC1A:") and len(answer_code) < 200
    # as a chat app would deliver it: wrapped lines, a zero-width space, some text in front
    mangled = "here is mine:\n" + "\n".join(answer_code[i : i + 30] for i in range(0, len(answer_code), 30))
    mangled = mangled[:50] + "\u200b" + mangled[50:]
    kind, answer_sdp = decode_code(mangled, expect="answer")
    assert kind == "answer"
    a.accept_answer(answer_sdp)

    assert la.wait_for(lambda e: isinstance(e, ChannelOpen), 5.0), la.all()
    assert lb.wait_for(lambda e: isinstance(e, ChannelOpen), 5.0), lb.all()
    assert a.is_open and b.is_open
    wire0 = a.stats().wire
    assert wire0 is not None

    n = 200
    sent_a = [b"A>B %03d " % i + os.urandom(i % 40) for i in range(n)]
    sent_b = [b"B>A %03d " % i + os.urandom((i * 7) % 40) for i in range(n)]
    for start in range(0, n, 20):  # bursts of 20 every 5 ms: gentle on the shared CPU
        for i in range(start, start + 20):
            assert a.send(sent_a[i])
            assert b.send(sent_b[i])
        time.sleep(0.005)
    assert wait_until(lambda: b.incoming.qsize() >= n and a.incoming.qsize() >= n, 5.0)
    time.sleep(0.1)  # let the last SACKs land before reading the wire counters
    got_b = drain(b.incoming)
    got_a = drain(a.incoming)
    assert Counter(got_b) == Counter(sent_a)  # unordered channel: compare as multisets
    assert Counter(got_a) == Counter(sent_b)

    sa, sb = a.stats(), b.stats()
    assert (sa.messages_sent, sa.messages_received, sa.send_drops) == (n, n, 0)
    assert (sb.messages_sent, sb.messages_received, sb.send_drops) == (n, n, 0)
    assert sa.bytes_sent == sum(map(len, sent_a)) and sb.bytes_received == sa.bytes_sent

    # on-wire model check: A sent one DATA packet per message and one SACK per message from B
    assert sa.wire is not None
    d_bytes = sa.wire.udp_bytes_sent - wire0.udp_bytes_sent
    d_pkts = sa.wire.udp_packets_sent - wire0.udp_packets_sent
    model = sum(wire_bytes_per_message(len(p))[0] - 28 for p in sent_a) + n * (
        wire_bytes_per_message(0)[1] - 28
    )
    assert d_pkts >= n
    assert abs(d_bytes - model) <= 0.05 * model, (d_bytes, d_pkts, model)

    a.close()
    assert la.wait_for(lambda e: isinstance(e, ChannelClosed), 3.0)
    assert lb.wait_for(lambda e: isinstance(e, ChannelClosed), 3.0), "remote close did not reach B"
    assert lb.wait_for(lambda e: isinstance(e, ConnectionStateChanged) and e.state == "closed", 3.0)
    assert not a.send(b"late") and not b.send(b"late")
    assert a.stats().drops_not_open == 1 and b.stats().drops_not_open == 1

    for log in (la, lb):
        evs = log.all()
        assert not [e for e in evs if isinstance(e, TransportFailed)], evs
        assert all(e2.t >= e1.t for e1, e2 in zip(evs, evs[1:])), "timestamps go backwards"
        i_conn = index_of(evs, lambda e: isinstance(e, ConnectionStateChanged) and e.state == "connected")
        i_open = index_of(evs, lambda e: isinstance(e, ChannelOpen))
        i_closed = index_of(evs, lambda e: isinstance(e, ChannelClosed))
        i_pc_closed = index_of(evs, lambda e: isinstance(e, ConnectionStateChanged) and e.state == "closed")
        assert i_conn < i_open < i_closed < i_pc_closed
        assert sum(isinstance(e, ChannelOpen) for e in evs) == 1
        assert sum(isinstance(e, ChannelClosed) for e in evs) == 1
        opened = evs[i_open]
        assert isinstance(opened, ChannelOpen) and 0 < opened.setup_s < 5.0
    first_a = la.all()[0]
    assert isinstance(first_a, SignalingStateChanged) and first_a.state == "have-local-offer"
    b.close()


# ---------------------------------------------------------------------------------------------------------------
# two processes: TCP signaling on 127.0.0.1 (ephemeral port)
# ---------------------------------------------------------------------------------------------------------------
CHILD = r"""
import json, sys, time
from app import signaling
from app.transport import PeerTransport, allow_loopback_candidates

n = int(sys.argv[1])
got = []
with allow_loopback_candidates():
    peer = PeerTransport(name="child", on_message=got.append)  # on_message runs on the loop thread
    try:
        def listening(port):
            print(f"PORT {port}", flush=True)
        offer = peer.run_coroutine(
            signaling.serve("127.0.0.1", 0, peer, timeout=20.0, on_listening=listening), timeout=25.0
        )
        cands = [ln.split()[4] for ln in offer.splitlines() if ln.startswith("a=candidate:")]
        t0 = time.monotonic()
        while not peer.is_open and time.monotonic() - t0 < 10:
            time.sleep(0.01)
        for i in range(n):
            peer.send(b"child %d" % i)
            if i % 10 == 9:
                time.sleep(0.005)
        echoed = 0
        t0 = time.monotonic()
        while echoed < n and time.monotonic() - t0 < 10:
            while echoed < min(len(got), n):
                peer.send(b"echo " + got[echoed])
                echoed += 1
            time.sleep(0.005)
        t0 = time.monotonic()
        while peer.is_open and time.monotonic() - t0 < 10:  # until the parent hangs up
            time.sleep(0.01)
        print("RESULT " + json.dumps({"received": len(got), "echoed": echoed, "offer_candidates": cands,
                                      "stats": peer.stats().messages_sent}), flush=True)
    finally:
        peer.close()
"""


def read_line(proc: subprocess.Popen, timeout: float) -> str:
    assert proc.stdout is not None
    ready, _, _ = select.select([proc.stdout], [], [], timeout)
    if not ready:
        return ""
    return proc.stdout.readline().strip()


@pytest.mark.usefixtures("loopback")
def test_two_processes_over_tcp_signaling(net, tmp_path):
    n = 50
    env = dict(os.environ, PYTHONPATH=str(REPO))
    errlog = (tmp_path / "child.stderr").open("w")
    proc = subprocess.Popen(
        [sys.executable, "-c", CHILD, str(n)],
        cwd=REPO,
        env=env,
        stdout=subprocess.PIPE,
        stderr=errlog,
        text=True,
    )
    peer = None
    try:
        line = read_line(proc, 20.0)
        assert line.startswith("PORT "), (
            f"child did not start: {line!r} {(tmp_path / 'child.stderr').read_text()}"
        )
        port = int(line.split()[1])
        got: list[bytes] = []
        lock = threading.Lock()

        def on_message(data: bytes) -> None:
            with lock:
                got.append(data)

        peer = PeerTransport(name="parent", thread=net, on_message=on_message)
        t0 = time.perf_counter()
        answer = peer.run_coroutine(signaling.connect("127.0.0.1", port, peer, timeout=10.0), timeout=15.0)
        assert_loopback_only(answer)
        assert wait_until(lambda: peer.is_open, 5.0)
        setup_ms = (time.perf_counter() - t0) * 1000
        for i in range(n):
            assert peer.send(b"parent %d" % i)
            if i % 10 == 9:
                time.sleep(0.005)
        expected = Counter([b"child %d" % i for i in range(n)] + [b"echo parent %d" % i for i in range(n)])
        assert wait_until(lambda: len(got) >= 2 * n, 10.0), f"got {len(got)} of {2 * n}"
        with lock:
            assert Counter(got) == expected
        peer.close()
        result = read_line(proc, 15.0)
        assert result.startswith("RESULT "), (result, (tmp_path / "child.stderr").read_text())
        res = json.loads(result[len("RESULT ") :])
        assert res["received"] == n and res["echoed"] == n
        assert res["offer_candidates"] == ["127.0.0.1"]
        assert proc.wait(timeout=15) == 0
        assert setup_ms < 5000
    finally:
        if peer is not None:
            peer.close()
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=5)
        if proc.stdout is not None:
            proc.stdout.close()
        errlog.close()


# ---------------------------------------------------------------------------------------------------------------
# connect timeout
# ---------------------------------------------------------------------------------------------------------------
def _point_candidates_at(sdp: str, port: int) -> str:
    out = []
    for ln in sdp.split("\r\n"):
        if ln.startswith("a=candidate:"):
            parts = ln.split(" ")
            parts[5] = str(port)
            ln = " ".join(parts)
        elif ln.startswith("m=application "):
            parts = ln.split(" ")
            parts[1] = str(port)
            ln = " ".join(parts)
        out.append(ln)
    return "\r\n".join(out)


@pytest.mark.usefixtures("loopback")
def test_connect_timeout_when_candidates_are_unreachable(net):
    # a UDP socket that never answers: ICE checks sent to it vanish (no ICMP error, no reply)
    hole = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    hole.bind(("127.0.0.1", 0))
    hole_port = hole.getsockname()[1]
    la, lc = EventLog(), EventLog()
    a = PeerTransport(name="offerer", thread=net, events=la.q, connect_timeout=1.0)
    b = PeerTransport(name="gone", thread=net)
    c = PeerTransport(name="answerer", thread=net, events=lc.q, connect_timeout=1.0)
    d = PeerTransport(name="silent", thread=net)
    try:
        # offerer: gets an answer whose only candidate is the black hole (and whose owner closed already)
        answer = b.accept_offer(a.create_offer())
        b.close()
        t0 = time.monotonic()
        a.accept_answer(_point_candidates_at(answer, hole_port))
        # answerer: gets an offer whose only candidate is the black hole; the offerer never hears back
        c.accept_offer(_point_candidates_at(d.create_offer(), hole_port))
        t1 = time.monotonic()
        for log, start in ((la, t0), (lc, t1)):
            ev = log.wait_for(lambda e: isinstance(e, TransportFailed), 4.0)
            assert isinstance(ev, TransportFailed), log.all()
            assert ev.reason == "timeout"
            assert ev.message.startswith("could not connect within 1 s (")
            assert FAIL_HINT in ev.message
            assert 0.8 <= ev.t - start <= 3.0, ev.t - start
            # the failed connection is closed, and never reported open
            assert log.wait_for(lambda e: isinstance(e, ConnectionStateChanged) and e.state == "closed", 3.0)
            assert not any(isinstance(e, ChannelOpen | ChannelClosed) for e in log.all())
        assert not a.send(b"x") and not c.send(b"x")
    finally:
        for p in (a, b, c, d):
            p.close()
        hole.close()


# ---------------------------------------------------------------------------------------------------------------
# codes: error cases (no network)
# ---------------------------------------------------------------------------------------------------------------
def test_code_round_trip_and_whitespace_tolerance():
    code = encode_code(SAMPLE_OFFER, "offer")
    assert code.startswith("FC1O:")
    assert code[5:].isalnum(), "base58 body: letters and digits only"
    kind, sdp = decode_code(code)
    assert kind == "offer"
    for needed in (
        "a=ice-ufrag:BDWP",
        "a=ice-pwd:vj0JizsyxXaYu8MJi246dr",
        "a=setup:actpass",
        "m=application 54662 UDP/DTLS/SCTP webrtc-datachannel",
        "c=IN IP4 127.0.0.1",
        "a=fingerprint:sha-256 6E:6A:ED:07:B9:7D:F4:90:FB:C9:AC:C5:B0:43:69:7C:5E:32:C7:2B:15:6C:D4:77:"
        "B3:12:AA:39:DE:5D:E4:F2",
        "1 udp 2130706431 127.0.0.1 54662 typ host",
    ):
        assert needed in sdp
    assert "sha-384" not in sdp
    variants = [
        "  " + code + "\n",
        "\n".join(code[i : i + 16] for i in range(0, len(code), 16)),
        " ".join(code[i : i + 7] for i in range(0, len(code), 7)),
        "`" + code + "`",
        "\u201c" + code + "\u201d",
        code[:20] + "\u200b\u00a0" + code[20:] + "\r\n",
        "Here's my code: " + code,
        "fc1o:" + code[5:],
    ]
    for v in variants:
        assert decode_code(v, expect="offer") == ("offer", sdp), repr(v)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("", "empty"),
        ("hello world, this is not a code", "not a FocalChat connection code"),
        (SAMPLE_OFFER, "raw SDP"),
        ("FC1", "cut off"),
        ("FC1O:", "cut off right after its prefix"),
        ("FC2O:2tMrSB5b8NByEveMaLZ5jChAuwfNW4Mqt", "format 2"),
        ("FC1X:2tMrSB5b8NByEveMaLZ5jChAuwfNW4Mqt", "unknown code kind"),
    ],
)
def test_decode_rejects_garbage(text, message):
    with pytest.raises(SignalingError, match=message):
        decode_code(text)


def test_decode_errors_are_specific():
    code = encode_code(SAMPLE_OFFER, "offer")
    with pytest.raises(SignalingError, match="offer code, but an answer code was expected"):
        decode_code(code, expect="answer")
    answer_code = "FC1A:" + code[5:]  # an edited kind letter fails the checksum (it covers the kind)
    with pytest.raises(SignalingError, match="damaged"):
        decode_code(answer_code)
    with pytest.raises(SignalingError, match="incomplete"):
        decode_code(code[:-12])
    with pytest.raises(SignalingError, match="incomplete"):
        decode_code(code[: len(code) // 2])
    with pytest.raises(SignalingError, match="extra characters"):
        decode_code(code + "abc")
    i = len(code) // 2
    swapped = code[:i] + ("2" if code[i] != "2" else "3") + code[i + 1 :]
    with pytest.raises(SignalingError, match="damaged"):
        decode_code(swapped)
    with pytest.raises(SignalingError, match="cannot be in a code"):
        decode_code(code[:i] + "0" + code[i + 1 :])  # '0' is not base58
    with pytest.raises(SignalingError, match="2 codes"):
        decode_code(code + " " + code)
    with pytest.raises(ValueError):
        encode_code(SAMPLE_OFFER, "pranswer")
    no_candidates = "\r\n".join(ln for ln in SAMPLE_OFFER.split("\r\n") if not ln.startswith("a=candidate"))
    with pytest.raises(SignalingError, match="no ICE candidates"):
        encode_code(no_candidates, "offer")


# ---------------------------------------------------------------------------------------------------------------
# TCP signaling: errors and a stray client (no WebRTC)
# ---------------------------------------------------------------------------------------------------------------
def _closed_port() -> int:
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def test_tcp_connect_to_closed_port_says_nobody_listens(net):
    port = _closed_port()
    with pytest.raises(SignalingError, match=rf"nobody is listening on 127\.0\.0\.1:{port}"):
        net.run_coroutine(signaling.request_answer("127.0.0.1", port, SAMPLE_OFFER, timeout=2.0), timeout=5.0)


def test_tcp_server_ignores_stray_client_then_answers_one_peer(net):
    async def scenario() -> tuple[str, str, bytes, str]:
        server = await signaling.SignalingServer("127.0.0.1", 0, io_timeout=2.0).start()
        port = server.port

        async def answer_fn(offer: str) -> str:
            return "ANSWER for " + offer

        waiter = net.loop.create_task(server.answer_one(answer_fn, timeout=5.0))
        # a stray client speaking HTTP gets a JSON error line and is ignored
        import asyncio

        r, w = await asyncio.open_connection("127.0.0.1", port)
        w.write(b"GET / HTTP/1.0\r\n\r\n")
        stray = await asyncio.wait_for(r.readline(), 2.0)
        w.close()
        answer = await signaling.request_answer("127.0.0.1", port, "OFFER", timeout=2.0)
        offer = await asyncio.wait_for(waiter, 5.0)
        # the listener is gone after one peer
        try:
            await signaling.request_answer("127.0.0.1", port, "OFFER2", timeout=2.0)
            late = "connected?!"
        except SignalingError as exc:
            late = str(exc)
        return offer, answer, stray, late

    offer, answer, stray, late = net.run_coroutine(scenario(), timeout=15.0)
    assert offer == "OFFER" and answer == "ANSWER for OFFER"
    msg = json.loads(stray)
    assert msg["type"] == "error" and "not a FocalChat peer" in msg["message"]
    assert "nobody is listening" in late


def test_tcp_server_times_out_when_nobody_connects(net):
    async def scenario() -> None:
        server = await signaling.SignalingServer("127.0.0.1", 0).start()

        async def answer_fn(offer: str) -> str:
            return offer

        await server.answer_one(answer_fn, timeout=0.3)

    with pytest.raises(SignalingError, match="nobody connected to 127.0.0.1:"):
        net.run_coroutine(scenario(), timeout=5.0)


# ---------------------------------------------------------------------------------------------------------------
# send() from other threads: never blocks, drops are counted
# ---------------------------------------------------------------------------------------------------------------
def _timed_sends(peer: PeerTransport, count: int) -> tuple[list[bool], float]:
    results: list[bool] = []
    worst = [0.0]

    def worker() -> None:
        for i in range(count):
            t = time.perf_counter()
            results.append(peer.send(b"pkt %d" % i))
            worst[0] = max(worst[0], time.perf_counter() - t)

    th = threading.Thread(target=worker)
    th.start()
    th.join(10.0)
    assert not th.is_alive()
    return results, worst[0]


def test_send_never_blocks_and_counts_drops_when_not_open(net):
    p = PeerTransport(name="lonely", thread=net)
    try:
        results, worst = _timed_sends(p, 1000)
        assert results == [False] * 1000
        assert worst < 0.05, f"a send() took {worst * 1000:.1f} ms"
        st = p.stats()
        assert st.drops_not_open == 1000 and st.send_drops == 1000 and st.messages_sent == 0
        with pytest.raises(TypeError):
            p.send("text")  # type: ignore[arg-type]
        with pytest.raises(ValueError):
            p.send(bytes(p.max_message_bytes + 1))

        async def blocking_call_from_loop() -> None:
            p.create_offer()

        with pytest.raises(RuntimeError, match="deadlock"):
            net.run_coroutine(blocking_call_from_loop(), timeout=5.0)
    finally:
        p.close()


@pytest.mark.usefixtures("loopback")
def test_send_never_blocks_while_the_loop_is_stalled(net):
    la, lb = EventLog(), EventLog()
    a, b = connect_pair(net, la, lb, max_pending_sends=32)
    try:
        stalled = threading.Event()
        net.call_soon(lambda: (stalled.set(), time.sleep(0.4)))  # a 400 ms stall of the network loop
        assert stalled.wait(2.0)
        results, worst = _timed_sends(a, 200)
        assert worst < 0.05, f"a send() took {worst * 1000:.1f} ms during a loop stall"
        assert sum(results) == 32  # the first 32 queue up for the loop, the rest are dropped at once
        assert wait_until(lambda: b.incoming.qsize() >= 32, 3.0)
        st = a.stats()
        assert st.drops_queue_full == 168 and st.messages_sent == 32
        assert st.messages_sent + st.send_drops == 200
    finally:
        a.close()
        b.close()


# ---------------------------------------------------------------------------------------------------------------
# SCTP acknowledgement policy (delayed / bundled SACKs): serializer, guard, interop with a stock peer
# ---------------------------------------------------------------------------------------------------------------
def test_bundled_packet_is_what_aiortc_parses():
    sack = sctp.SackChunk()
    sack.cumulative_tsn, sack.advertised_rwnd = 0x01020304, 1 << 20
    sack.gaps, sack.duplicates = [(2, 3)], [0x01020300]
    data = sctp.DataChunk(flags=sctp.SCTP_DATA_UNORDERED | 3)
    data.tsn, data.stream_id, data.stream_seq, data.protocol = 0x01020310, 0, 0, 53
    fwd = sctp.ForwardTsnChunk()
    fwd.cumulative_tsn, fwd.streams = 0x0102030F, []
    for odd in (b"x", b"hello", b"12345678"):  # 1, 5 and 8 bytes: padded to 4, 8, 8
        data.user_data = odd
        packet = serialize_bundled_packet(5000, 5001, 0xDEADBEEF, [sack, data, fwd])
        assert len(packet) == 12 + 24 + 16 + (len(odd) + 3) // 4 * 4 + 8
        src, dst, tag, chunks = sctp.parse_packet(packet)  # aiortc's own parser: checks the CRC32c
        assert (src, dst, tag) == (5000, 5001, 0xDEADBEEF)
        assert [type(c) for c in chunks] == [sctp.SackChunk, sctp.DataChunk, sctp.ForwardTsnChunk]
        got_sack, got_data, got_fwd = chunks
        assert (got_sack.cumulative_tsn, got_sack.advertised_rwnd) == (0x01020304, 1 << 20)
        assert got_sack.gaps == [(2, 3)] and got_sack.duplicates == [0x01020300]
        assert (got_data.tsn, got_data.flags, got_data.protocol, got_data.user_data) == (0x01020310, data.flags, 53, odd)
        assert got_fwd.cumulative_tsn == 0x0102030F
        # one chunk: byte for byte what aiortc's single-chunk serializer makes
        assert serialize_bundled_packet(5000, 5001, 7, [data]) == sctp.serialize_packet(5000, 5001, 7, data)
        corrupt = packet[:-1] + bytes([packet[-1] ^ 1])
        with pytest.raises(ValueError, match="checksum"):
            sctp.parse_packet(corrupt)
    with pytest.raises(ValueError):
        serialize_bundled_packet(1, 2, 3, [])


def test_sack_policy_checks(net, monkeypatch):
    for bad in (dict(sack_policy="lazy"), dict(sack_policy="delayed", sack_delay_s=0.6),
                dict(sack_policy="bundled", sack_delay_s=0)):
        with pytest.raises(ValueError):
            PeerTransport(name="x", thread=net, **bad)
    assert sack_patch_problem() is None  # the installed aiortc is one the patch was checked against
    monkeypatch.setattr(aiortc, "__version__", "1.17.0")
    problem = sack_patch_problem()
    assert problem and "1.17.0" in problem and "1.16" in problem
    with pytest.raises(TransportError, match="1.17.0"):
        PeerTransport(name="x", thread=net, sack_policy="bundled")
    PeerTransport(name="stock", thread=net).close()  # the default needs no patch: any aiortc
    monkeypatch.setattr(aiortc, "__version__", "1.16.0")
    monkeypatch.delattr(sctp.RTCSctpTransport, "_send_sack")
    assert "_send_sack" in (sack_patch_problem() or "")


@pytest.mark.usefixtures("loopback")
def test_sack_policy_patch_is_per_connection_and_reversible(net):
    a = PeerTransport(name="A", thread=net, sack_policy="bundled", sack_delay_s=0.3)
    b = PeerTransport(name="B", thread=net)
    try:
        b.accept_offer(a.create_offer())
        assert type(a._pc.sctp).__name__ == "_PolicySctpTransport"
        assert isinstance(a._pc.sctp, sctp.RTCSctpTransport)
        assert type(b._pc.sctp) is sctp.RTCSctpTransport  # the class itself is untouched
        assert sctp.RTCSctpTransport._send_sack.__qualname__ == "RTCSctpTransport._send_sack"
        st = a.stats().sack
        assert st is not None and (st.policy, st.delay_s, st.standalone, st.bundled) == ("bundled", 0.3, 0, 0)
        assert b.stats().sack is None

        async def flip() -> list[str]:
            seen = []
            install_sack_policy(a._pc.sctp, "delayed", 0.1)
            seen.append(sack_policy_of(a._pc.sctp).policy)
            uninstall_sack_policy(a._pc.sctp)
            seen.append(type(a._pc.sctp).__name__)
            install_sack_policy(a._pc.sctp, "bundled", 0.2)
            seen.append(sack_policy_of(a._pc.sctp).policy)
            install_sack_policy(a._pc.sctp, "immediate")
            seen.append(type(a._pc.sctp).__name__)
            return seen

        assert net.run_coroutine(flip(), timeout=5.0) == ["delayed", "RTCSctpTransport", "bundled", "RTCSctpTransport"]
    finally:
        a.close()
        b.close()


def _exchange(a: PeerTransport, b: PeerTransport, n: int, interval: float, size: int = 30) -> None:
    """n messages each way, A and B alternating every interval / 2 (as two talking peers)."""
    for i in range(n):
        assert a.send(b"A%03d" % i + bytes(size - 4))
        time.sleep(interval / 2)
        assert b.send(b"B%03d" % i + bytes(size - 4))
        time.sleep(interval / 2)


@pytest.mark.usefixtures("loopback")
@pytest.mark.parametrize("policy", ["delayed", "bundled"])
def test_patched_peer_interoperates_with_stock_aiortc(net, policy):
    """A (patched) and B (stock aiortc 1.16) exchange 40 messages each way at 80 ms: everything arrives, B's
    parser takes A's bundled packets, A sends fewer packets, nobody's send buffer grows."""
    la, lb = EventLog(), EventLog()
    a = PeerTransport(name="A", thread=net, events=la.q, sack_policy=policy)
    b = PeerTransport(name="B", thread=net, events=lb.q)
    try:
        a.accept_answer(b.accept_offer(a.create_offer()))
        assert wait_until(lambda: a.is_open and b.is_open, 5.0)
        time.sleep(0.3)  # the channel-open handshake's own SACKs
        wa0, wb0, sack0 = a.stats().wire, b.stats().wire, a.stats().sack
        n = 40
        _exchange(a, b, n, 0.08)
        assert wait_until(lambda: a.incoming.qsize() >= n and b.incoming.qsize() >= n, 3.0)
        time.sleep(0.5)  # the last delayed SACK (200 ms timer)
        got_a, got_b = drain(a.incoming), drain(b.incoming)
        assert sorted(got_b) == sorted(b"A%03d" % i + bytes(26) for i in range(n))
        assert sorted(got_a) == sorted(b"B%03d" % i + bytes(26) for i in range(n))
        sa, sb = a.stats(), b.stats()
        for st in (sa, sb):
            assert st.send_drops == 0 and st.max_buffered_amount <= 30 and st.buffered_amount == 0
        a_pkts = sa.wire.udp_packets_sent - wa0.udp_packets_sent
        b_pkts = sb.wire.udp_packets_sent - wb0.udp_packets_sent
        assert b_pkts == 2 * n  # stock: a DATA packet and a SACK packet per message
        sacks = (sa.sack.standalone - sack0.standalone, sa.sack.bundled - sack0.bundled)
        if policy == "bundled":
            assert sacks[1] >= n - 2 and sacks[0] <= 2, sacks  # nearly every SACK rode on our DATA
            assert a_pkts <= n + 2
        else:  # 80 ms apart < 200 ms timer: one SACK per two packets
            assert sacks[1] == 0 and n / 2 - 1 <= sacks[0] <= n / 2 + 2, sacks
            assert a_pkts <= n + n / 2 + 2
        # the modelled bytes match what the DTLS counters saw (±5 %)
        d_bytes = sa.wire.ip_bytes_sent() - wa0.ip_bytes_sent()
        model = n * (wire_bytes_per_message(30)[0]
                     + sack_bytes_per_message(policy, recv_interval_s=0.08, send_interval_s=0.08))
        assert abs(d_bytes - model) <= 0.05 * model, (d_bytes, model)
    finally:
        a.close()
        b.close()


@pytest.mark.usefixtures("loopback")
def test_bundled_sacks_survive_loss_without_stalling(net):
    """A stock sender loses every 5th packet it sends (dropped before the wire). B (bundled SACKs) reports
    the gaps at once; A abandons the lost messages (maxRetransmits=0) and moves on: no stall, no growing
    send buffer, and once the loss stops every message arrives again."""
    la, lb = EventLog(), EventLog()
    a = PeerTransport(name="A", thread=net, events=la.q)
    b = PeerTransport(name="B", thread=net, events=lb.q, sack_policy="bundled", sack_delay_s=0.5)
    try:
        a.accept_answer(b.accept_offer(a.create_offer()))
        assert wait_until(lambda: a.is_open and b.is_open, 5.0)
        dtls = a._pc.sctp.transport
        real_send = dtls._send_data
        calls = {"n": 0, "dropped": 0}

        async def lossy_send(data: bytes) -> None:
            calls["n"] += 1
            if calls["n"] % 5 == 0:
                calls["dropped"] += 1
                return
            await real_send(data)

        dtls._send_data = lossy_send
        n = 50
        _exchange(a, b, n, 0.08)
        time.sleep(1.5)  # A's retransmission timer (>= 1 s) abandons what is still unacknowledged
        dtls._send_data = real_send
        lost_phase = drain(b.incoming)
        assert calls["dropped"] >= 10
        assert n - calls["dropped"] <= len(lost_phase) < n  # messages were lost, the rest came
        assert len(drain(a.incoming)) == n  # B -> A was not lossy (only some of A's SACKs were)
        # after the loss: every message arrives, promptly, in both directions
        _exchange(a, b, 10, 0.08)
        assert wait_until(lambda: b.incoming.qsize() >= 10 and a.incoming.qsize() >= 10, 2.0)
        assert sorted(drain(b.incoming)) == sorted(b"A%03d" % i + bytes(26) for i in range(10))
        for st in (a.stats(), b.stats()):
            assert st.send_drops == 0 and st.max_buffered_amount <= 64 and st.buffered_amount == 0
        assert b.stats().sack.forced >= 5  # gaps were reported at once
        assert a.is_open and b.is_open
        assert not [e for e in la.all() + lb.all() if isinstance(e, TransportFailed)]
    finally:
        a.close()
        b.close()


def test_sack_bytes_model():
    _, sack_packet = wire_bytes_per_message(0)
    assert sack_packet == 93
    assert sack_bytes_per_message("immediate", recv_interval_s=0.08) == 93
    assert sack_bytes_per_message("delayed", recv_interval_s=0.08) == 46.5  # every second packet
    assert sack_bytes_per_message("delayed", recv_interval_s=0.32) == 93  # timer fires first
    assert sack_bytes_per_message("bundled", recv_interval_s=0.08, send_interval_s=0.08) == 16
    assert sack_bytes_per_message("bundled", recv_interval_s=0.48, send_interval_s=0.48, sack_delay_s=0.5) == 16
    # 320 ms packets, 200 ms timer: 5/8 of the SACKs catch our next packet, 3/8 go alone
    assert sack_bytes_per_message("bundled", recv_interval_s=0.32, send_interval_s=0.32) == pytest.approx(
        0.625 * 16 + 0.375 * 93)
    assert sack_bytes_per_message("bundled", recv_interval_s=0.32, send_interval_s=None) == 93
    # timer started by the first unacknowledged packet: 150 ms apart, a 200 ms timer covers two of them
    assert sack_bytes_per_message("delayed", recv_interval_s=0.15) == 46.5
    # bundled, nothing to bundle into: the timer covers three 80 ms packets (the limit is four)
    assert sack_bytes_per_message("bundled", recv_interval_s=0.08) == 31
    # the peer sends twice as often as we do: one SACK chunk in each of our packets covers two of its packets
    assert sack_bytes_per_message("bundled", recv_interval_s=0.08, send_interval_s=0.16) == 8
    with pytest.raises(ValueError):
        sack_bytes_per_message("lazy", recv_interval_s=1.0)
