"""The call engine (app/session.py) with real aiortc peers on 127.0.0.1.

Two :class:`CallSession` objects in this process connect through copy-paste codes (candidates gathered with
``allow_loopback_candidates()`` via ``CallConfig.local_only``; ICE servers empty), each sending a speech file
(``FileMicSource(realtime=False)``, paced by the session from call start) and writing what it hears to a WAV
(``FileSpeakerSink``). The tiny random codec (``untrained_model()``, 16-bit tokens, 0.8 kbps) keeps them fast.
Every wait is bounded in time and every loop in count.
"""

from __future__ import annotations

import contextlib
import os
import queue
import random
import select
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from app.audio_io import FileMicSource, FileSpeakerSink
from app.modelref import SPEECH_SAMPLE, untrained_model
from app.packet import (
    AudioGeometry,
    AudioPacket,
    CompactAudioPacket,
    HelloAck,
    PacketError,
    Pong,
    parse_packet,
)
from app.recording import RECEIVED, SENT, RecordingReader
from app.session import (
    CallConfig,
    CallEnded,
    CallEvent,
    CallSession,
    HandshakeOk,
    HandshakeRefused,
    NetSimSettings,
    PeerLost,
    SourceEnded,
    TextReceived,
)
from app.signaling import decode_code
from tests.waiting import wait_until

REPO = Path(__file__).resolve().parent.parent
CHUNK = 1280


# ---------------------------------------------------------------------------------------------------------------
# helpers
# ---------------------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def model():
    return untrained_model()


def clip(tmp_path: Path, seconds: float) -> Path:
    """The first ``seconds`` of the bundled speech sample (16 kHz) as a WAV."""
    x, sr = sf.read(str(SPEECH_SAMPLE), dtype="float32")
    path = tmp_path / f"clip_{seconds:g}s.wav"
    sf.write(str(path), x[: int(seconds * sr)], sr)
    return path


def n_chunks(path: Path) -> int:
    src = FileMicSource(path, realtime=False)
    try:
        for n in range(100_000):
            if src.read_chunk() is None:
                return n
        raise AssertionError("endless file")
    finally:
        src.close()


class EventLog:
    """Collects one session's events (bounded waits)."""

    def __init__(self, session: CallSession) -> None:
        self.q = session.events
        self.seen: list[CallEvent] = []

    def _pull(self, timeout: float) -> None:
        try:
            self.seen.append(self.q.get(timeout=timeout))
        except queue.Empty:
            pass
        for _ in range(10_000):
            try:
                self.seen.append(self.q.get_nowait())
            except queue.Empty:
                break

    def wait_for(self, pred: Callable[[CallEvent], bool], timeout: float) -> CallEvent | None:
        deadline = time.monotonic() + timeout
        for _ in range(100_000):
            for ev in self.seen:
                if pred(ev):
                    return ev
            left = deadline - time.monotonic()
            if left <= 0:
                return None
            self._pull(min(left, 0.05))
        return None

    def all(self) -> list[CallEvent]:
        self._pull(0.0)
        return self.seen

    def of(self, cls: type) -> list:
        return [e for e in self.all() if isinstance(e, cls)]




def loopback_only(code: str) -> None:
    _, sdp = decode_code(code)
    cands = [ln.split()[4] for ln in sdp.splitlines() if ln.startswith("a=candidate:")]
    assert cands and set(cands) == {"127.0.0.1"}, cands


class Pair:
    """Two connected sessions A (offerer) and B (answerer) with file audio; stopped at teardown."""

    def __init__(self, tmp_path: Path, model, *, input_a: Path, input_b: Path, model_b=None,
                 cfg: dict | None = None, cfg_a: dict | None = None, cfg_b: dict | None = None,
                 sink_b=None, loop_a: bool = False) -> None:
        self.tmp = tmp_path
        self.sources = [FileMicSource(input_a, realtime=False, loop=loop_a), FileMicSource(input_b, realtime=False)]
        self.out_a, self.out_b = tmp_path / "heard_by_a.wav", tmp_path / "heard_by_b.wav"
        self.rec_a, self.rec_b = tmp_path / "a.fcr", tmp_path / "b.fcr"
        self.sinks = [FileSpeakerSink(self.out_a), sink_b if sink_b is not None else FileSpeakerSink(self.out_b)]
        base = dict(local_only=True, **(cfg or {}))
        self.a = CallSession(model, self.sources[0], self.sinks[0],
                             CallConfig(name="A", nickname="alice", record_path=self.rec_a, **base, **(cfg_a or {})))
        self.b = CallSession(model_b or model, self.sources[1], self.sinks[1],
                             CallConfig(name="B", nickname="bob", record_path=self.rec_b, **base, **(cfg_b or {})))
        self.la, self.lb = EventLog(self.a), EventLog(self.b)

    def connect(self) -> None:
        offer = self.a.create_offer_code()
        loopback_only(offer)
        answer = self.b.accept_offer_code(offer)
        loopback_only(answer)
        self.a.accept_answer_code(answer)

    def wait_call_up(self, timeout: float = 5.0) -> None:
        for log in (self.la, self.lb):
            assert log.wait_for(lambda e: isinstance(e, HandshakeOk), timeout), [repr(e) for e in log.all()]

    def close(self) -> None:
        for s in (self.a, self.b):
            s.stop()
        for x in (*self.sources, *self.sinks):
            x.close()


@pytest.fixture
def pairs():
    made: list[Pair] = []
    yield made
    for p in made:
        p.close()
        for s in (p.a, p.b):
            assert s.ended
            for th in (s._encoder_thread, s._playout_thread):
                assert th is None or not th.is_alive()


def predicted_losses(settings: NetSimSettings, n: int) -> tuple[list[bool], int, int]:
    """NetSim's loss pattern for ``n`` AUDIO packets, and the chunks that redundancy 1 cannot / can recover."""
    sim = settings.audio_sim()
    lost = []
    for i in range(n):
        before = sim.stats.lost
        sim.send(b"x", float(i))
        lost.append(sim.stats.lost > before)
    unrecoverable = sum(lost[i] and (i + 1 == n or lost[i + 1]) for i in range(n))
    recovered = sum(lost[i] and i + 1 < n and not lost[i + 1] for i in range(n))
    return lost, unrecoverable, recovered


def pick_seed(n: int, loss: float, start: int) -> NetSimSettings:
    """A seed whose pattern has a double loss (a chunk redundancy cannot save), and no loss in the first
    and the last two packets (a loss there cannot be detected by the receiver)."""
    for seed in range(start, start + 500):
        s = NetSimSettings(loss=loss, seed=seed)
        lost, unrec, rec = predicted_losses(s, n)
        if unrec >= 1 and rec >= 2 and not (lost[0] or lost[-1] or lost[-2]):
            return s
    raise AssertionError("no suitable seed")


def recorded(path: Path) -> dict[int, dict[int, np.ndarray]]:
    r = RecordingReader(path)
    streams = r.streams()
    assert r.damage is None and r.complete, r.damage
    return streams


# ---------------------------------------------------------------------------------------------------------------
# 1. a clean call both ways: every token arrives as sent
# ---------------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize(("cpp", "red"), [(1, 0), (4, 1)])
def test_clean_call_every_token_arrives(tmp_path, model, pairs, cpp, red):
    speech = SPEECH_SAMPLE
    total = n_chunks(speech)
    p = Pair(tmp_path, model, input_a=speech, input_b=speech, cfg=dict(chunks_per_packet=cpp, redundancy=red))
    pairs.append(p)
    p.connect()
    p.wait_call_up()
    assert p.a.in_call and p.b.in_call

    assert wait_until(lambda: p.a.stats().call_s > 3.0, 6.0)
    mid = (p.a.stats(), p.b.stats())
    mid_id = p.a.send_text("hello bob\tüñí")
    # each side hears the whole file: every chunk played (bounded: 6.4 s of audio + buffering)
    for log in (p.la, p.lb):
        assert log.wait_for(lambda e: isinstance(e, SourceEnded), 10.0)
    assert wait_until(lambda: p.a.stats().played >= total and p.b.stats().played >= total, 3.0), \
        (p.a.stats().line(), p.b.stats().line())
    text = p.lb.wait_for(lambda e: isinstance(e, TextReceived), 2.0)
    assert isinstance(text, TextReceived) and text.text == "hello bob\tüñí" and text.message_id == mid_id
    assert text.nickname == "alice"
    end = (p.a.stats(), p.b.stats())
    p.close()

    for st in end:
        assert st.played == total and st.lost == 0 and st.recovered == 0 and st.late == 0
        assert st.malformed == 0 and st.send_drops == 0
        assert st.chunks_sent == total and st.audio_packets_sent == -(-total // cpp)
        assert st.audio_packets_received == st.audio_packets_sent
        assert st.concealed == st.lost + st.underruns + st.waiting
    for st in mid:
        # 16-bit tokens x 50 / s = 0.8 kbps, measured over ~2 s in whole packets of cpp x 64 bits
        assert abs(st.payload_kbps - 0.8) <= 0.05 + 0.035 * cpp, st
        assert st.audio_app_kbps > st.payload_kbps
        assert st.app_kbps >= st.audio_app_kbps
        assert st.wire_source == "measured" and st.wire_kbps > st.app_kbps
        assert abs(st.wire_kbps - st.wire_model_kbps) <= 0.15 * st.wire_model_kbps, st
        assert st.rtt_ms is not None and 0 < st.rtt_ms < 200
        assert 0 < st.encode_ms < 80 and 0 < st.decode_ms < 80
        lat = st.latency
        assert lat.packetization_ms == (cpp - 1) * 80 and lat.chunk_ms == 80
        assert lat.capture_ms == 0.0  # a file source has no capture buffering
        assert st.mouth_to_ear_ms == pytest.approx(80 + lat.capture_ms + lat.encode_ms + lat.packetization_ms
                                                   + lat.network_ms + lat.jitter_ms + lat.decode_ms + lat.device_ms)
    print(f"\n[cpp={cpp} red={red}] " + mid[0].line())

    # tokens: what A sent is exactly what B played, and the other way round
    ra, rb = recorded(p.rec_a), recorded(p.rec_b)
    for sent, got in ((ra[SENT], rb[RECEIVED]), (rb[SENT], ra[RECEIVED])):
        assert sorted(sent) == list(range(total))
        assert sorted(got) == sorted(sent)
        for i in sent:
            assert np.array_equal(sent[i], got[i]), i
    # decoded audio was written: one 1920-sample chunk per played tick, plus buffering silence
    for out in (p.out_a, p.out_b):
        info = sf.info(str(out))
        assert info.samplerate == 24000 and info.frames >= total * 1920
        audio, _ = sf.read(str(out), dtype="float32")
        assert np.isfinite(audio).all() and np.abs(audio).max() <= 1.0 and audio.std() > 0


# ---------------------------------------------------------------------------------------------------------------
# 2. simulated loss: the call goes on, the counts add up
# ---------------------------------------------------------------------------------------------------------------
def test_lossy_call_counts_are_consistent(tmp_path, model, pairs):
    speech = clip(tmp_path, 3.2)
    total = n_chunks(speech)
    assert total == 40
    sim_a, sim_b = pick_seed(total, 0.1, 0), pick_seed(total, 0.1, 1000)
    p = Pair(tmp_path, model, input_a=speech, input_b=speech, cfg=dict(redundancy=1),
             cfg_a=dict(netsim=sim_a), cfg_b=dict(netsim=sim_b))
    pairs.append(p)
    p.connect()
    p.wait_call_up()
    for log in (p.la, p.lb):
        assert log.wait_for(lambda e: isinstance(e, SourceEnded), 6.0)

    def settled(s: CallSession) -> bool:
        st = s.stats()
        return st.played + st.lost + st.dropped >= total and st.waiting > 0

    assert wait_until(lambda: settled(p.a) and settled(p.b), 3.0), (p.a.stats().line(), p.b.stats().line())
    st_a, st_b = p.a.stats(), p.b.stats()
    assert p.a.in_call and p.b.in_call  # the call went on to the end
    p.close()

    for receiver, sender_sim, st_sender in ((st_b, sim_a, st_a), (st_a, sim_b, st_b)):
        lost_pkts, unrecoverable, recoverable = predicted_losses(sender_sim, total)
        assert st_sender.netsim_lost == sum(lost_pkts)
        assert receiver.audio_packets_received == total - sum(lost_pkts)
        assert receiver.played + receiver.lost + receiver.dropped == total
        assert receiver.lost == unrecoverable >= 1
        assert receiver.recovered == recoverable >= 2
        assert receiver.late == 0 and receiver.malformed == 0
        # every concealed tick stands for a lost chunk, a delay spike, or the wait after the stream ended
        assert receiver.concealed == receiver.lost + receiver.underruns + receiver.waiting
    for sent, got in ((recorded(p.rec_a)[SENT], recorded(p.rec_b)[RECEIVED]),
                      (recorded(p.rec_b)[SENT], recorded(p.rec_a)[RECEIVED])):
        assert len(sent) == total
        for i, toks in got.items():
            assert np.array_equal(sent[i], toks)


# ---------------------------------------------------------------------------------------------------------------
# 3. fuzzed packets on the live data channel: counted, dropped, the call plays on
# ---------------------------------------------------------------------------------------------------------------
def fuzz_messages(model, rng: random.Random) -> tuple[list[bytes], Counter]:
    """Malformed or foreign messages and the count the receiving session should report per kind."""
    bits, tpc = model.bits_per_token, model.tokens_per_chunk
    geometry = AudioGeometry(bits, tpc, 80.0)  # what the session parses with
    good = AudioPacket(7, 3, bits, tpc, [np.arange(tpc)], [np.arange(tpc) + 1], 1234).encode()
    good_compact = CompactAudioPacket(3, geometry, [np.arange(tpc)] * 2, [np.arange(tpc) + 1]).encode()
    msgs: list[bytes] = []
    msgs += [bytes(rng.randrange(256) for _ in range(rng.randrange(1, 120))) for _ in range(25)]
    msgs += [good[:n] for n in range(1, len(good))]  # every truncation
    msgs += [good_compact[:n] for n in range(1, len(good_compact), 3)]  # compact frames cut short
    msgs.append(good_compact + b"\x00")  # a compact frame with a byte too many
    for v in (0, 3, 255):  # wrong frame versions
        msgs.append(good[:2] + bytes([v]) + good[3:])
    for length in (0, 5, 0xFFFF, 8193, len(good) - 1, len(good) + 40):  # impossible / lying length fields
        msgs.append(good[:4] + length.to_bytes(2, "big") + good[6:])
    msgs.append(good[:3] + bytes([99]) + good[4:])  # unknown type
    msgs.append(b"FC" + bytes([1, 1]) + (9000).to_bytes(2, "big") + bytes(8994))  # oversized message
    msgs.append(HelloAck(True).encode()[:6] + b"\x05")  # accepted flag out of range
    msgs.append(good[:-1] + bytes([good[-1] | 1]) if (tpc * bits) % 8 else good[:20] + b"\xff" + good[21:])
    msgs.append(AudioPacket(1, 0, 12, tpc, [np.arange(tpc)]).encode())  # another codec's tokens: foreign
    msgs.append(Pong(424242, 1, 2).encode())  # a PONG for no ping: unexpected
    expected: Counter = Counter()
    for m in msgs:
        try:
            pkt = parse_packet(m, geometry)
        except PacketError as exc:
            expected[exc.kind] += 1
            continue
        if isinstance(pkt, AudioPacket) and pkt.bits != bits:
            expected["foreign"] += 1
        elif isinstance(pkt, Pong):
            expected["unexpected"] += 1
        else:  # a random message that happens to be valid: not part of this test
            raise AssertionError(f"unexpectedly valid fuzz message {m!r}")
    return msgs, expected


def test_fuzzed_packets_are_counted_and_dropped(tmp_path, model, pairs):
    msgs, expected = fuzz_messages(model, random.Random(1234))
    assert set(expected) >= {"truncated", "bad_magic", "bad_version", "bad_type", "bad_length", "bad_field",
                             "oversized", "foreign", "unexpected"}
    speech = clip(tmp_path, 4.0)
    p = Pair(tmp_path, model, input_a=speech, input_b=speech)
    pairs.append(p)
    p.connect()
    p.wait_call_up()
    assert wait_until(lambda: p.a.stats().played >= 5, 3.0)
    before = p.a.stats()
    peer = p.b.transport
    drops0 = peer.stats().send_drops
    for m in msgs:  # through B's real data channel into A's receive path
        assert peer.send(m)
        time.sleep(0.005)
    assert wait_until(lambda: p.a.stats().malformed >= len(msgs), 3.0), p.a.stats().malformed_by_kind
    assert peer.stats().send_drops == drops0
    mid = p.a.stats()
    assert wait_until(lambda: p.a.stats().played >= mid.played + 5, 2.0)  # still playing
    after = p.a.stats()
    assert after.malformed_by_kind == dict(expected)
    assert after.malformed == len(msgs)
    assert after.played > before.played and after.lost == 0
    assert p.a.in_call and not p.la.of(PeerLost) and not p.la.of(CallEnded)
    assert p.b.stats().malformed == 0


# ---------------------------------------------------------------------------------------------------------------
# 4. dead peer
# ---------------------------------------------------------------------------------------------------------------
def test_dead_peer_detected_within_3_s(tmp_path, model, pairs):
    speech = clip(tmp_path, 2.0)
    # (a) the peer goes silent (as if its process froze or its network vanished): heartbeat timeout
    p = Pair(tmp_path, model, input_a=speech, input_b=speech)
    pairs.append(p)
    p.connect()
    p.wait_call_up()
    time.sleep(0.3)
    p.b.transport.send = lambda data: False  # everything B sends from now on is dropped
    t_silent = time.monotonic()
    # declared once nothing came for dead_peer_timeout_s (3 s; a 0.1 s control tick checks, a loaded machine
    # may be late: the wait is generous, only "not before the timeout" is asserted)
    lost = p.la.wait_for(lambda e: isinstance(e, PeerLost), 8.0)
    assert isinstance(lost, PeerLost), [repr(e) for e in p.la.all()]
    assert lost.t - t_silent >= 2.9, lost.t - t_silent
    assert "nothing received" in lost.reason and lost.silent_s >= 3.0
    ended = p.la.wait_for(lambda e: isinstance(e, CallEnded), 3.0)
    assert isinstance(ended, CallEnded) and ended.reason == "peer-lost"
    assert p.a.wait(3.0) and p.a.end_reason[0] == "peer-lost"

    # (b) the peer's connection is closed without a BYE
    sub = tmp_path / "b"
    sub.mkdir()
    q = Pair(sub, model, input_a=speech, input_b=speech)
    pairs.append(q)
    q.connect()
    q.wait_call_up()
    q.b.transport.close()
    lost = q.la.wait_for(lambda e: isinstance(e, PeerLost), 8.0)  # the channel closing, or the 3 s timeout
    assert isinstance(lost, PeerLost), [repr(e) for e in q.la.all()]
    ended = q.la.wait_for(lambda e: isinstance(e, CallEnded), 3.0)
    assert isinstance(ended, CallEnded) and ended.reason == "peer-lost"


# ---------------------------------------------------------------------------------------------------------------
# 5. incompatible peer
# ---------------------------------------------------------------------------------------------------------------
def test_incompatible_handshake_is_refused_on_both_sides(tmp_path, model, pairs):
    other = untrained_model(seed=1)
    assert other.fingerprint() != model.fingerprint()
    speech = clip(tmp_path, 1.0)
    p = Pair(tmp_path, model, input_a=speech, input_b=speech, model_b=other)
    pairs.append(p)
    p.connect()
    for log in (p.la, p.lb):
        ended = log.wait_for(lambda e: isinstance(e, CallEnded), 6.0)
        assert isinstance(ended, CallEnded), [repr(e) for e in log.all()]
        assert ended.reason == "refused"
        refusals = log.of(HandshakeRefused)
        assert refusals and all("different codec model" in r.reason for r in refusals), refusals
        assert not log.of(HandshakeOk)
    # each side names both models in its reason
    reason_a = p.la.of(HandshakeRefused)[0].reason
    assert model.model_id in reason_a and other.model_id in reason_a
    for s in (p.a, p.b):
        st = s.stats()
        assert st.played == 0 and st.audio_packets_sent == 0 and st.chunks_sent == 0


# ---------------------------------------------------------------------------------------------------------------
# 6. `focalchat call` in two processes (host / connect on 127.0.0.1)
# ---------------------------------------------------------------------------------------------------------------
def _readline(proc: subprocess.Popen, timeout: float) -> str:
    assert proc.stdout is not None
    ready, _, _ = select.select([proc.stdout], [], [], timeout)
    return proc.stdout.readline().strip() if ready else ""


def test_cli_call_two_processes(tmp_path):
    speech = clip(tmp_path, 3.0)
    env = dict(os.environ, PYTHONPATH=str(REPO))
    common = ["--local", "--model", "untrained", "--input", str(speech), "--duration", "3"]
    cmd = [sys.executable, "-m", "app.cli", "call"]
    host_err = (tmp_path / "host.err").open("w")
    conn_err = (tmp_path / "connect.err").open("w")
    host = subprocess.Popen([*cmd, "host", "127.0.0.1:0", *common, "--output", str(tmp_path / "host.wav"),
                             "--record", str(tmp_path / "host.fcr"), "--nickname", "hoster"],
                            cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=host_err, text=True)
    conn = None
    try:
        line = _readline(host, 30.0)
        assert line.startswith("listening on 127.0.0.1:"), (line, (tmp_path / "host.err").read_text())
        port = int(line.rsplit(":", 1)[1])
        conn = subprocess.Popen([*cmd, "connect", f"127.0.0.1:{port}", *common,
                                 "--output", str(tmp_path / "connect.wav"), "--chunks-per-packet", "2"],
                                cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=conn_err, text=True)
        rc_conn = conn.wait(timeout=40)
        rc_host = host.wait(timeout=15)
        errs = (tmp_path / "host.err").read_text(), (tmp_path / "connect.err").read_text()
        assert (rc_host, rc_conn) == (0, 0), errs
        for err in errs:
            assert "call: in-call" in err and "call ended" in err and "payload" in err, err
        assert "connected with 'hoster'" in errs[1]
        for name in ("host.wav", "connect.wav"):
            info = sf.info(str(tmp_path / name))
            assert info.frames > 24000, name  # more than a second of decoded audio
        streams = recorded(tmp_path / "host.fcr")
        assert len(streams[SENT]) >= 20 and len(streams[RECEIVED]) >= 20
    finally:
        for proc in (host, conn):
            if proc is not None and proc.poll() is None:
                proc.kill()
                proc.wait(timeout=5)
        if host.stdout is not None:
            host.stdout.close()
        host_err.close()
        conn_err.close()


def test_cli_call_talk_flags(tmp_path, capsys):
    """--mute, --transmit, --vad-threshold and --volume reach the session: a muted host sends no audio at all,
    and at volume 0 hears digital silence while its peer talks. Bad values are refused with the flag's name."""
    from app.cli import main

    for bad, msg in ((["--volume", "2.5"], "--volume must be in [0, 2]"),
                     (["--vad-threshold", "5"], "--vad-threshold must be in [-100, 0]"),
                     (["--vad-threshold", "nan"], "--vad-threshold"),
                     (["--transmit", "loud"], "invalid choice")):
        with pytest.raises(SystemExit) if bad[0] == "--transmit" else contextlib.nullcontext():
            rc = main(["call", "host", "127.0.0.1:0", "--local", "--model", "untrained", "--output", "none",
                       "--input", str(clip(tmp_path, 1.0)), *bad])
            assert rc == 2
        assert msg in capsys.readouterr().err

    speech = clip(tmp_path, 3.0)
    env = dict(os.environ, PYTHONPATH=str(REPO))
    common = ["--local", "--model", "untrained", "--input", str(speech), "--duration", "2.5"]
    cmd = [sys.executable, "-m", "app.cli", "call"]
    host_err = (tmp_path / "host.err").open("w")
    conn_err = (tmp_path / "connect.err").open("w")
    host = subprocess.Popen([*cmd, "host", "127.0.0.1:0", *common, "--output", str(tmp_path / "host.wav"), "--mute",
                             "--transmit", "vad", "--vad-threshold", "-30", "--volume", "0",
                             "--record", str(tmp_path / "host.fcr")],
                            cwd=REPO, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=host_err,
                            text=True)
    conn = None
    try:
        line = _readline(host, 30.0)
        assert line.startswith("listening on 127.0.0.1:"), (line, (tmp_path / "host.err").read_text())
        port = int(line.rsplit(":", 1)[1])
        conn = subprocess.Popen([*cmd, "connect", f"127.0.0.1:{port}", *common, "--output", "none",
                                 "--record", str(tmp_path / "conn.fcr")],
                                cwd=REPO, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                stderr=conn_err, text=True)
        rc_conn = conn.wait(timeout=40)
        rc_host = host.wait(timeout=15)
        errs = (tmp_path / "host.err").read_text(), (tmp_path / "connect.err").read_text()
        assert (rc_host, rc_conn) == (0, 0), errs
        assert "muted: type m and Enter to unmute" in errs[0]
        assert not recorded(tmp_path / "host.fcr").get(SENT)  # muted from the start: not one chunk sent
        assert len(recorded(tmp_path / "conn.fcr")[SENT]) >= 20  # the other way the call went on
        assert len(recorded(tmp_path / "host.fcr")[RECEIVED]) >= 20
        heard, _ = sf.read(str(tmp_path / "host.wav"), dtype="float32")
        assert heard.size > 24000 and float(np.max(np.abs(heard))) == 0.0  # what it played, at volume 0
    finally:
        for proc in (host, conn):
            if proc is not None and proc.poll() is None:
                proc.kill()
                proc.wait(timeout=5)
        if host.stdout is not None:
            host.stdout.close()
        host_err.close()
        conn_err.close()
