"""The playout side's output queue: what a device sink holds ahead of each write is kept near the cushion
(app.session._QueueGuard, CallSession._keep_queue, SpeakerSink.trim).

The situation it fixes: a device that stalls (the audio server did not run for a while, an underrun restarted
the stream) keeps the audio written meanwhile queued, and since the playout tick writes exactly one chunk per
period for the rest of the call, every later chunk waits that much longer. It is provoked deterministically
with :class:`StalledDevice`, a device sink stand-in whose clock is the writer's (it plays one chunk period per
write), so what it reports queued does not depend on the machine's load. Every wait is bounded; no timing
assertions.
"""

from __future__ import annotations

import math
import threading
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from app import session as session_mod
from app.session import _CUSHION_S, _TRIM_MAX_CUT_S, _TRIM_SLACK_S, _TRIM_WINDOW, _QueueGuard, _shorten
from tests.test_session import Pair, model, pairs, wait_until  # noqa: F401

SR_OUT = 24000
PERIOD = 1920  # one 80 ms chunk at 24 kHz
TARGET_MS = _CUSHION_S * 1000.0
OVER_MS = TARGET_MS + _TRIM_SLACK_S * 1000.0


class StalledDevice:
    """A device sink stand-in (it reports ``stream_latency_ms``, so the session treats it as a device). Its
    clock is the writer's: after each write (but the first, the cushion, which comes in the same tick as the
    stream's first chunk) it plays one chunk period, less what a :meth:`stall` holds back, so the queue it reports (``buffered_ms``) is exact whatever the load. ``stall(ms)``: the device
    plays nothing for that long; as with PulseAudio after an underrun, that much more stays queued from then
    on unless the writer drops some. ``trim(keep_ms)`` (unless ``can_trim=False``) drops the oldest queued
    audio at once, as SpeakerSink's callback does on its next run."""

    input_rate = SR_OUT
    device_rate = float(SR_OUT)
    blocksize = 240
    stream_latency_ms = 40.0
    gain = 1.0

    def __init__(self, can_trim: bool = True) -> None:
        self._lock = threading.Lock()
        self._queued = 0  # frames
        self._held = 0  # frames of a stall still to come
        self.sizes: list[int] = []  # size of every write
        self.before: list[float] = []  # ms queued before every write
        self.underruns = 0
        self.trims = 0
        self.stalls = 0
        if not can_trim:
            self.trim = None  # the session then cuts the chunks it writes instead

    def write_chunk(self, x: np.ndarray) -> int:
        n = int(np.asarray(x).size)
        with self._lock:
            self.before.append(1000.0 * self._queued / SR_OUT)
            self._queued += n
            if self.sizes:  # the device plays one period before the next write (the first write is the
                held = min(self._held, PERIOD)  # cushion, in the same tick as the stream's first chunk)
                self._held -= held
                played = PERIOD - held
                if played > self._queued:
                    self.underruns += 1
                self._queued = max(0, self._queued - played)
            self.sizes.append(n)
        return n

    def stall(self, ms: float) -> None:
        with self._lock:
            self._held += int(ms * SR_OUT / 1000.0)
            self.stalls += 1

    def trim(self, keep_ms: float) -> float:  # noqa: F811 - replaced by None with can_trim=False
        with self._lock:
            drop = self._queued - int(round(keep_ms * SR_OUT / 1000.0))
            if drop <= 0:
                return 0.0
            self._queued -= drop
            self.trims += 1
        return 1000.0 * drop / SR_OUT

    @property
    def buffered_ms(self) -> float:
        with self._lock:
            return 1000.0 * self._queued / SR_OUT

    @property
    def writes(self) -> int:
        with self._lock:
            return len(self.sizes)

    def drain(self, timeout: float = 0.0) -> bool:
        return True

    def close(self) -> None:
        pass


def wav(tmp_path: Path, name: str, x: np.ndarray) -> Path:
    path = tmp_path / name
    sf.write(str(path), x.astype(np.float32), 16000, subtype="FLOAT")
    return path


# ---------------------------------------------------------------------------------------------------------------
# the guard and the cut on their own
# ---------------------------------------------------------------------------------------------------------------
def test_queue_guard_waits_a_window_and_ignores_single_readings():
    g = _QueueGuard(25.0, slack_ms=10.0, window=4, force_after=3, backoff_ms=15.0, max_target_ms=100.0)
    assert all(g.observe(q) == 0.0 for q in [25, 20, 24, 25, 18, 25, 25, 25])  # at target: never
    assert all(g.observe(q) == 0.0 for q in [90, 90, 20, 90, 90, 90])  # one low reading resets the window
    assert g.observe(90) == pytest.approx(65.0)  # 4 readings in a row over 35 ms: the minimum less the target
    assert g.observe(80) == pytest.approx(55.0) and not g.overdue
    g.trimmed(55.0)
    assert (g.trims, g.trimmed_ms) == (1, 55.0)
    assert [g.observe(40) for _ in range(4)] == [0.0, 0.0, 0.0, pytest.approx(15.0)]  # a new window first
    assert not g.overdue
    for _ in range(3):
        g.observe(40)
    assert g.overdue  # over target for force_after more writes with nothing dropped


def test_queue_guard_backs_off_when_a_trim_starves_the_device():
    g = _QueueGuard(25.0, slack_ms=10.0, window=4, force_after=3, backoff_ms=15.0, max_target_ms=60.0)
    g.observe(25.0, underruns=3)  # underruns before any trim (a stall, the start): no backoff
    g.observe(25.0, underruns=4)
    assert g.target_ms == 25.0
    for k in range(4):  # trim, then the device runs dry again: the target grows, up to the cap
        g.trimmed(10.0)
        g.observe(20.0, underruns=5 + k)
    assert (g.target_ms, g.backoffs) == (60.0, 3)
    g.trimmed(10.0)
    for _ in range(2 * g.window + 1):  # an underrun long after a trim is no sign of a trim that went too far
        g.observe(70.0, underruns=9)
    g.observe(70.0, underruns=10)
    assert g.backoffs == 3
    with pytest.raises(ValueError):
        _QueueGuard(25.0, window=0)
    with pytest.raises(ValueError):
        _QueueGuard(200.0)


def test_shorten_cuts_with_a_crossfade():
    ramp = np.linspace(-1.0, 1.0, PERIOD, dtype=np.float32)
    out = _shorten(ramp, 480, 120)
    assert out.dtype == np.float32 and out.size == PERIOD - 480
    assert np.array_equal(out[:100], ramp[:100]) and np.array_equal(out[-100:], ramp[-100:])
    assert float(np.max(np.abs(np.diff(out)))) < 480 * 2.0 / PERIOD / 120 * 1.01 + 2.0 / PERIOD  # no step
    flat = np.full(PERIOD, 0.3, np.float32)
    np.testing.assert_allclose(_shorten(flat, 700, 120), 0.3, rtol=1e-6)  # a constant stays constant
    assert _shorten(flat, 10 ** 6, 120).size == 120  # capped: the crossfade still fits
    assert _shorten(flat, 0, 120) is flat


# ---------------------------------------------------------------------------------------------------------------
# a stalled device in a call
# ---------------------------------------------------------------------------------------------------------------
def _stalled_call(tmp_path: Path, model, pairs, sink: StalledDevice, source: np.ndarray, stall_ms: float,  # noqa: F811
                  timeout: float, monkeypatch) -> tuple:
    # the playout tick stays where it locked (a move to the arrivals drops the surplus of the early write at
    # once, and would drop the stall's with it: test_playout_tick_moves_to_the_earliest_arrivals)
    monkeypatch.setattr(session_mod, "_RELOCK_SLACK_S", math.inf)
    x = wav(tmp_path, "a.wav", source)
    p = Pair(tmp_path, model, input_a=x, input_b=wav(tmp_path, "b.wav", np.zeros(16000, np.float32)),
             sink_b=sink, loop_a=True)
    pairs.append(p)
    p.connect()
    p.wait_call_up()
    # steady playout first: a full guard window of writes, nothing dropped
    assert wait_until(lambda: sink.writes >= 2 * _TRIM_WINDOW + 2, 10.0), p.b.stats().line()
    st = p.b.stats()
    assert st.output_trims == 0 and st.output_target_ms == pytest.approx(TARGET_MS), st
    assert max(sink.before[2:]) <= TARGET_MS + 1e-6, sink.before  # the cushion, and nothing more
    n_before = sink.writes
    sink.stall(stall_ms)
    assert wait_until(lambda: sink.buffered_ms > TARGET_MS + stall_ms - 1.0, 5.0), sink.before[n_before:]
    # the surplus is dropped: the queue comes back to the cushion and stays there
    assert wait_until(lambda: p.b.stats().output_trims >= 1 and sink.buffered_ms <= OVER_MS, timeout), \
        (p.b.stats().line(), sink.before[n_before:])
    n_after = sink.writes
    assert wait_until(lambda: sink.writes >= n_after + 4, 5.0)
    assert max(sink.before[n_after + 1:]) <= OVER_MS, sink.before[n_after:]
    st = p.b.stats()
    assert st.output_trimmed_ms == pytest.approx(stall_ms, abs=_TRIM_SLACK_S * 1000.0), st
    assert sink.underruns == 0 and st.lost == 0 and p.a.in_call and p.b.in_call
    return p, n_before, st


def test_stalled_device_queue_is_trimmed_in_silence(tmp_path, model, pairs, monkeypatch):  # noqa: F811
    """A's mic is silent: B plays chunks flagged SILENCE, and the surplus queued after the stall is dropped
    from what the sink holds (``sink.trim``) with no chunk cut short."""
    sink = StalledDevice()
    _, n_before, _ = _stalled_call(tmp_path, model, pairs, sink, np.zeros(16000, np.float32), 150.0, 10.0,
                                   monkeypatch)
    assert sink.trims >= 1
    assert set(sink.sizes[1:]) == {PERIOD}, sorted(set(sink.sizes))  # after the cushion: whole chunks only


@pytest.mark.parametrize("can_trim", [False, True], ids=["no-sink-trim-quiet-chunks-cut", "speech-cut"])
def test_stalled_device_queue_is_trimmed(tmp_path, model, pairs, can_trim, monkeypatch):  # noqa: F811
    """No ``sink.trim`` (a sink that cannot drop what it holds): quiet chunks are written short instead.
    Speech that never pauses: the sink's queue is never all quiet, so after ~5 s over target the surplus is cut
    out of speech chunks, 40 ms at most each, crossfaded."""
    rng = np.random.default_rng(0)
    if can_trim:  # noise, 20 ms loud and 20 ms soft: the VAD's noise floor stays low, every chunk is voiced
        env = np.repeat(np.tile(np.float32([0.3, 0.01]), 25), 320)
        source = (env * rng.standard_normal(16000)).astype(np.float32)
        stall, timeout = 100.0, 25.0
    else:
        source, stall, timeout = np.zeros(16000, np.float32), 150.0, 10.0
    sink = StalledDevice(can_trim=can_trim)
    _, n_before, st = _stalled_call(tmp_path, model, pairs, sink, source, stall, timeout, monkeypatch)
    cut = [n for n in sink.sizes[n_before:] if n != PERIOD]
    assert sink.trims == 0 and cut, sink.sizes[n_before:]
    if can_trim:  # speech: several cuts, none longer than the cap
        assert len(cut) >= math.ceil(stall / (_TRIM_MAX_CUT_S * 1000.0)) and st.output_trims == len(cut)
        assert min(cut) >= PERIOD - int(_TRIM_MAX_CUT_S * SR_OUT), cut
    assert sum(PERIOD - n for n in cut) == pytest.approx(stall * SR_OUT / 1000.0, abs=_TRIM_SLACK_S * SR_OUT)


class DelayedDevice(StalledDevice):
    """A StalledDevice whose stream reports its own delay, as SpeakerSink.output_delay_ms does."""

    output_delay_ms = 12.0


def test_output_cushion_from_config_and_device_delay_in_the_estimate(tmp_path, model, pairs):  # noqa: F811
    """``CallConfig.output_cushion_ms`` is the silence written ahead of the first chunk and the queue guard's
    target; the latency estimate's device term is what is queued ahead of a write plus the stream's own
    delay (``output_delay_ms``), not the nominal stream latency."""
    sink = DelayedDevice()
    x = wav(tmp_path, "a.wav", np.zeros(16000, np.float32))
    p = Pair(tmp_path, model, input_a=x, input_b=wav(tmp_path, "b.wav", np.zeros(16000, np.float32)),
             sink_b=sink, loop_a=True, cfg_b=dict(output_cushion_ms=10.0))
    pairs.append(p)
    p.connect()
    p.wait_call_up()
    assert wait_until(lambda: sink.writes >= 6, 10.0), p.b.stats().line()
    assert sink.sizes[0] == 240  # 10 ms at 24 kHz
    assert max(sink.before[2:]) <= 10.0 + 1e-6, sink.before
    st = p.b.stats()
    assert st.output_target_ms == pytest.approx(10.0)
    queued = float(np.median(sink.before[1:]))
    assert st.latency.device_ms == pytest.approx(queued + DelayedDevice.output_delay_ms, abs=1.0), st.latency
    assert st.latency.device_ms < 10.0 + DelayedDevice.stream_latency_ms  # the nominal 40 ms is not used


def test_playout_tick_moves_to_the_earliest_arrivals(tmp_path, model, pairs):  # noqa: F811
    """The playout tick locks to the first arrival of a stream. When that one came late (here: held back 30 ms
    on the way; on a loaded machine the first encode, a scheduling delay), every later chunk would wait that
    much longer in the jitter buffer for the rest of the call; once a whole window of chunks has waited
    longer than the lock margin plus slack, the tick moves earlier by the excess.

    The hold (30 ms) sits well inside the period: on a loaded machine the first encode and the timer add
    ~20 ms more, and a first arrival late by a whole period or more is the jitter buffer's surplus (a wait
    of 88 ms counts as one chunk of depth plus 8 ms), not the tick's."""
    from app.packet import is_audio, parse_packet

    sink = StalledDevice()
    rng = np.random.default_rng(0)  # voiced noise: no chunk is flagged silent (those may be dropped or stretched)
    env = np.repeat(np.tile(np.float32([0.3, 0.01]), 25), 320)
    x = wav(tmp_path, "a.wav", (env * rng.standard_normal(16000)).astype(np.float32))
    p = Pair(tmp_path, model, input_a=x, input_b=wav(tmp_path, "b.wav", np.zeros(16000, np.float32)),
             sink_b=sink, loop_a=True, cfg=dict(jitter_initial_depth=1))
    pairs.append(p)
    send, held = p.a._send_via, []

    def hold_first_audio(sim, data):
        if not held and is_audio(parse_packet(data)):
            held.append(threading.Timer(0.03, send, (sim, data)))
            held[0].start()
            return
        send(sim, data)

    p.a._send_via = hold_first_audio
    p.connect()
    p.wait_call_up()
    assert wait_until(lambda: p.b.stats().playout_relocks >= 1, 15.0), (p.b.stats().line(), list(p.b._waits))
    n = sink.writes
    assert wait_until(lambda: sink.writes >= n + 30, 10.0)  # a full stats window after the move
    st = p.b.stats()
    assert st.latency.jitter_ms < 30.0, (st.latency, st.line())  # was ~40 ms (30 held back + the 10 ms margin)


# ---------------------------------------------------------------------------------------------------------------
# SpeakerSink.trim through PulseAudio
# ---------------------------------------------------------------------------------------------------------------
def test_speaker_sink_trim_drops_the_oldest_queued_audio(pulse):  # noqa: F811
    from app.audio_io import SpeakerSink

    with SpeakerSink("pulse", SR_OUT, pulse_sink=pulse.speaker_sink("a"), buffer_seconds=3) as spk:
        with pytest.raises(ValueError):
            spk.trim(-1.0)
        with pytest.raises(ValueError):
            spk.trim(math.nan)
        assert spk.trim(0.0) == 0.0  # nothing queued
        spk.write_chunk(np.full(2 * SR_OUT, 0.1, np.float32))  # 2 s
        requested = spk.trim(200.0)
        assert 1500.0 < requested <= 2000.0
        assert wait_until(lambda: spk.trims == 1, 5.0)
        assert spk.buffered_ms <= 200.0
        assert spk.trimmed_frames >= (requested - 300.0) * SR_OUT / 1000.0  # less what played before the callback
        assert spk.trim(500.0) == 0.0  # under the mark: nothing to drop
        spk.write_chunk(np.full(SR_OUT // 2, 0.1, np.float32))  # written after a trim: never dropped by it
        assert spk.buffered_ms > 400.0 and spk.trims == 1
