"""app.audio_io: ring buffer, file-backed I/O, and the real PortAudio -> PulseAudio path (private server)."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import soxr

from app.audio_io import (
    CHUNK,
    LOW_LATENCY_TIMING,
    ROBUST_TIMING,
    AudioDeviceError,
    AudioSink,
    AudioSource,
    DeviceTiming,
    FileMicSource,
    FileSpeakerSink,
    NullSpeakerSink,
    RingBuffer,
)
from tests.waiting import wait_until as _wait_until

REPO = Path(__file__).resolve().parent.parent
SPEECH = REPO / "assets" / "speech_sample.wav"
EXCERPT_S = 2.5


@pytest.fixture(scope="module")
def speech() -> np.ndarray:
    x, sr = sf.read(str(SPEECH), dtype="float32")
    assert sr == 16000 and x.ndim == 1
    return x[: int(EXCERPT_S * sr)]


def best_lag(rec: np.ndarray, ref: np.ndarray) -> tuple[int, float]:
    """Lag of ``ref`` inside ``rec`` (argmax of the cross-correlation) and the normalised correlation there."""
    n = len(rec) + len(ref)
    nfft = 1 << (n - 1).bit_length()
    c = np.fft.irfft(np.fft.rfft(rec, nfft) * np.conj(np.fft.rfft(ref, nfft)), nfft)[: len(rec)]
    lag = int(np.argmax(c))
    seg = rec[lag: lag + len(ref)].astype(np.float64)
    r = ref[: len(seg)].astype(np.float64)
    return lag, float(np.dot(seg, r) / np.sqrt(np.dot(seg, seg) * np.dot(r, r) + 1e-20))


def os_threads() -> int:
    return len(os.listdir("/proc/self/task"))



def wait_until(pred, timeout: float, step: float = 0.01) -> bool:
    return _wait_until(pred, timeout, step)


# ---------------------------------------------------------------------------------------------------------
# RingBuffer
# ---------------------------------------------------------------------------------------------------------

def test_ringbuffer_wraparound_keeps_order():
    rb = RingBuffer(8)
    out = np.empty(8, dtype=np.float32)
    seq = np.arange(100, dtype=np.float32)
    pos_w = pos_r = 0
    for w, r in [(5, 3), (5, 6), (6, 4), (3, 6), (7, 7), (8, 8), (1, 1)]:  # wraps several times
        assert rb.write(seq[pos_w: pos_w + w]) == w
        pos_w += w
        n = rb.read_into(out[:r])
        assert n == r
        np.testing.assert_array_equal(out[:r], seq[pos_r: pos_r + r])
        pos_r += r
        assert rb.available == pos_w - pos_r
    assert rb.overflows == rb.underflows == 0
    assert rb.total_written == pos_w and rb.total_read == pos_r


def test_ringbuffer_overflow_and_underflow_are_counted():
    rb = RingBuffer(10)
    assert rb.write(np.ones(7, np.float32)) == 7
    assert rb.write(np.full(5, 2, np.float32)) == 3  # 2 dropped (newest)
    assert (rb.overflows, rb.overflow_samples) == (1, 2)
    assert rb.free == 0
    out = np.full(12, -1, np.float32)
    assert rb.read_into(out) == 10  # asked 12: underflow of 2, tail untouched
    np.testing.assert_array_equal(out[:10], [1] * 7 + [2] * 3)
    np.testing.assert_array_equal(out[10:], [-1, -1])
    assert (rb.underflows, rb.underflow_samples) == (1, 2)
    assert rb.read_into(out[:0]) == 0 and rb.underflows == 1  # asking for nothing is no underflow
    assert rb.read_into(out[:3]) == 0 and rb.underflow_samples == 5
    rb.write(np.arange(4, dtype=np.float32))
    assert rb.clear() == 4 and rb.available == 0


def test_ringbuffer_channels_and_shapes():
    rb = RingBuffer(6, channels=2)
    block = np.arange(8, dtype=np.float32).reshape(4, 2)
    assert rb.write(block) == 4
    out = np.empty((3, 2), np.float32)
    assert rb.read_into(out) == 3
    np.testing.assert_array_equal(out, block[:3])
    with pytest.raises(ValueError):
        rb.write(np.zeros(4, np.float32))  # 1-D into a 2-channel buffer
    with pytest.raises(ValueError):
        rb.write(np.zeros((4, 3), np.float32))
    np.testing.assert_array_equal(rb.read(), block[3:])


def test_ringbuffer_spsc_two_threads():
    rb = RingBuffer(257)
    total = 60_000
    src = np.arange(total, dtype=np.float32)
    got = np.empty(total, np.float32)
    rng = np.random.default_rng(0)
    sizes = rng.integers(1, 200, size=2000)

    def producer():
        i = k = 0
        deadline = time.monotonic() + 10
        while i < total and time.monotonic() < deadline:
            n = min(int(sizes[k % len(sizes)]), total - i, rb.free)
            k += 1
            if n == 0:
                time.sleep(0.0002)
                continue
            i += rb.write(src[i: i + n])

    t = threading.Thread(target=producer)
    t.start()
    j = 0
    deadline = time.monotonic() + 10
    while j < total and time.monotonic() < deadline:
        n = min(rb.available, total - j, 300)
        if n == 0:
            time.sleep(0.0002)
            continue
        j += rb.read_into(got[j: j + n])
    t.join(timeout=10)
    assert j == total
    np.testing.assert_array_equal(got, src)
    assert rb.overflows == 0 and rb.underflows == 0


# ---------------------------------------------------------------------------------------------------------
# File-backed source and sinks
# ---------------------------------------------------------------------------------------------------------

def test_file_mic_source_resamples_44k_stereo_to_exact_chunks(tmp_path, speech):
    x44 = soxr.resample(speech, 16000, 44100).astype(np.float32)
    stereo = np.stack([x44, 0.5 * x44], axis=1)
    path = tmp_path / "in44k.wav"
    sf.write(str(path), stereo, 44100, subtype="FLOAT")
    mono = stereo.mean(axis=1, dtype=np.float32)
    ref = soxr.resample(mono, 44100, 16000)  # one-shot reference

    with FileMicSource(path, realtime=False) as src:
        assert isinstance(src, AudioSource)
        chunks = list(src.chunks())
        assert src.finished and src.read_chunk() is None
        assert src.level_dbfs[0] < 0 and src.overflows == 0
    assert len(chunks) == -(-len(ref) // CHUNK)
    assert all(c.shape == (CHUNK,) and c.dtype == np.float32 for c in chunks)
    y = np.concatenate(chunks)
    np.testing.assert_allclose(y[: len(ref)], ref, atol=1e-4)
    assert not np.any(y[len(ref):])  # last chunk zero-padded
    # content preserved against the original 16 kHz speech (0.75 = mean of the two channel gains)
    lag, corr = best_lag(y, 0.75 * speech)
    assert abs(lag) <= 1 and corr > 0.999


def test_file_mic_source_16k_is_bit_exact(speech, tmp_path):
    path = tmp_path / "in16k.wav"
    sf.write(str(path), speech, 16000, subtype="FLOAT")
    with FileMicSource(path, realtime=False) as src:
        y = np.concatenate(list(src.chunks()))
    np.testing.assert_array_equal(y[: len(speech)], speech)


def test_file_mic_source_realtime_pacing_with_fake_clock(tmp_path):
    path = tmp_path / "tone.wav"
    sf.write(str(path), 0.1 * np.ones(CHUNK * 3, np.float32), 16000)
    now = [100.0]
    sleeps: list[float] = []

    def sleep(s: float) -> None:
        sleeps.append(s)
        now[0] += s

    src = FileMicSource(path, realtime=True, clock=lambda: now[0], sleep=sleep)
    assert src.read_chunk(timeout=0.05) is None  # first chunk is due 80 ms after open
    c = src.read_chunk()
    assert c is not None and now[0] == pytest.approx(100.08)
    now[0] += 0.5  # a late reader catches up without waiting
    n_sleeps = len(sleeps)
    assert src.read_chunk() is not None and src.read_chunk() is not None
    assert len(sleeps) == n_sleeps
    assert src.read_chunk() is None and src.finished
    rms_db, peak_db = src.level_dbfs
    assert rms_db == pytest.approx(-20.0, abs=0.01) and peak_db == pytest.approx(-20.0, abs=0.01)
    src.close()
    src.close()  # idempotent


def test_file_mic_source_loop_and_errors(tmp_path):
    path = tmp_path / "short.wav"
    sf.write(str(path), np.linspace(-0.5, 0.5, 1000, dtype=np.float32), 8000)
    with FileMicSource(path, realtime=False, loop=True) as src:
        for _ in range(10):  # 10 chunks = 0.8 s from a 0.125 s file
            assert src.read_chunk() is not None
        assert not src.finished
    assert src.finished and src.read_chunk() is None
    with pytest.raises(AudioDeviceError):
        FileMicSource(tmp_path / "missing.wav")


def test_file_speaker_sink_writes_resampled_wav(tmp_path, speech):
    x24 = soxr.resample(speech, 16000, 24000).astype(np.float32)
    out = tmp_path / "sub" / "out.wav"
    sink = FileSpeakerSink(out, rate=16000, gain=0.5)
    assert isinstance(sink, AudioSink)
    for i in range(0, len(x24), 1920):
        sink.write_chunk(x24[i: i + 1920])
    assert sink.buffered_ms == 0.0 and sink.underruns == 0
    sink.close()
    sink.close()
    assert sink.write_chunk(x24[:100]) == 0
    y, sr = sf.read(str(out), dtype="float32")
    assert sr == 16000 and len(y) == sink.frames_written == pytest.approx(len(speech), abs=2)
    ref = soxr.resample(0.5 * x24, 24000, 16000)
    np.testing.assert_allclose(y[: len(ref)], ref[: len(y)], atol=1e-4)


def test_null_speaker_sink():
    with NullSpeakerSink() as sink:
        assert isinstance(sink, AudioSink)
        assert sink.write_chunk(np.zeros(1920, np.float32)) == 1920
        assert sink.frames_written == 1920 and sink.drain()
    assert sink.closed and sink.write_chunk(np.zeros(10)) == 0


# ---------------------------------------------------------------------------------------------------------
# No audio server
# ---------------------------------------------------------------------------------------------------------

def test_no_devices_gives_audio_device_error(tmp_path):
    code = textwrap.dedent("""
        from app.audio_io import AudioDeviceError, MicSource, SpeakerSink, audio_available, list_devices
        assert not audio_available()
        for f in (list_devices, MicSource, SpeakerSink):
            try:
                f()
            except AudioDeviceError as exc:
                print("ERR", exc)
            else:
                raise SystemExit(f"{f.__name__} did not raise")
    """)
    env = {k: v for k, v in os.environ.items() if not k.startswith("PULSE_")}
    env.update(PULSE_SERVER=f"unix:{tmp_path}/no-such-socket", XDG_RUNTIME_DIR=str(tmp_path), HOME=str(tmp_path),
               PYTHONPATH=str(REPO))
    p = subprocess.run([sys.executable, "-c", code], env=env, cwd=REPO, capture_output=True, text=True, timeout=30)
    assert p.returncode == 0, p.stdout + p.stderr
    errs = [ln for ln in p.stdout.splitlines() if ln.startswith("ERR")]
    assert errs == ["ERR no audio devices found: is PulseAudio running?"] * 3


# ---------------------------------------------------------------------------------------------------------
# Real path: PortAudio -> ALSA pulse plugin -> private PulseAudio
# ---------------------------------------------------------------------------------------------------------

def test_pulse_devices_listed(pulse):  # noqa: F811
    from app.audio_io import default_devices, find_device, list_devices

    devs = list_devices()
    names = {d.name for d in devs}
    assert "pulse" in names and all(d.hostapi == "ALSA" for d in devs)
    pulse_dev = find_device("pulse", "input")
    assert pulse_dev.default_samplerate > 0 and pulse_dev.is_output
    dd = default_devices()
    assert dd.input is not None and dd.output is not None
    with pytest.raises(AudioDeviceError, match="no input device"):
        find_device("no-such-device", "input")
    assert "vmic_b" in pulse.pactl("list", "short", "sources")


@pytest.mark.parametrize("rate", [16000, None], ids=["16k-bit-exact", "device-rate-resampled"])
def test_mic_source_captures_speech_from_virtual_mic(pulse, speech, tmp_path, rate):  # noqa: F811
    """The speech played into the virtual mic comes out of MicSource whole, in place on the capture's
    timeline, and (at 16 kHz) bit-exact. Robust to load: the player hands the whole file to the server at
    once (it cannot underrun and put gaps into the speech, see ``play_into_mic``), and the capture runs until
    the player has finished plus a tail, however late it started; the speech's place is checked against
    when the player was started and when it finished, not against a fixed start delay."""
    from app.audio_io import MicSource

    wav = tmp_path / "speech.wav"
    sf.write(str(wav), speech, 16000, subtype="FLOAT")
    threads_before = os_threads()
    tail_s = 0.3  # captured past the player's exit: the last samples on their way through the server
    chunks, other = [], []
    with MicSource("pulse", rate, pulse_source=pulse.mic_source("a")) as mic, \
            MicSource("pulse", 16000, pulse_source=pulse.mic_source("b")) as mic_b:
        t_open = time.monotonic()  # the capture's first sample: about now (the stream started in the constructor)
        time.sleep(0.2)  # some silence before the speech (the ring buffer holds 2 s)
        t_play = time.monotonic()
        player = pulse.play_into_mic("a", wav, wait=False)
        t_done = None
        for _ in range(int(60 / 0.08)):  # bounded: 60 s of audio
            c = mic.read_chunk(timeout=5.0)
            assert c is not None, "capture stalled"
            chunks.append(c)
            while (cb := mic_b.read_chunk(timeout=0)) is not None:
                other.append(cb)
            if t_done is None and player.poll() is not None:
                t_done = time.monotonic()
            if t_done is not None and len(chunks) * 0.08 >= t_done - t_open + tail_s:  # captured past the exit
                break
        assert t_done is not None, "the player did not finish"
        assert player.wait(timeout=10) == 0
        assert mic.overflows == 0
        assert mic.device_rate == (rate or mic.device.default_samplerate)
    assert mic.closed and mic.read_chunk(0.01) is None
    mic.close()
    rec = np.concatenate(chunks)
    assert all(c.shape == (CHUNK,) for c in chunks)
    lag, corr = best_lag(rec, speech)
    # sample i of ``rec`` was captured at about t_open + i / 16000: the speech starts after the player was
    # started and has been played when it exits (its exit is seen within a chunk or two)
    start_s = lag / 16000
    assert start_s >= t_play - t_open - 0.03, (start_s, t_play - t_open)
    assert start_s + EXCERPT_S <= t_done - t_open + 0.2, (start_s, t_done - t_open)
    assert lag + len(speech) <= len(rec), "the capture lacks the end of the speech"
    assert corr > 0.95
    if rate == 16000:  # the 16 kHz float32 path through PulseAudio is bit-exact
        np.testing.assert_allclose(rec[lag: lag + len(speech)], speech, atol=1e-6)
    # peer b's microphone heard nothing of it
    assert other and float(np.max(np.abs(np.concatenate(other)))) == 0.0
    assert wait_until(lambda: os_threads() <= threads_before, 5.0), "stream threads left behind"


@pytest.mark.parametrize("rate", [24000, None], ids=["24k-no-resampling", "device-rate-resampled"])
def test_speaker_sink_plays_into_null_sink(pulse, speech, rate):  # noqa: F811
    from app.audio_io import SpeakerSink

    x24 = soxr.resample(speech, 16000, 24000).astype(np.float32)
    rec = pulse.start_recording(f"{pulse.speaker_sink('a')}.monitor", pulse.spk_rate, max_seconds=30)
    rec.wait_for(0.2, timeout=10)  # recorder running
    threads_before = os_threads()
    with SpeakerSink("pulse", rate, pulse_sink=pulse.speaker_sink("a"), buffer_seconds=EXCERPT_S + 1) as spk:
        assert spk.underruns == 0  # nothing written yet: silence is no underrun
        t_write = time.monotonic()
        queued = sum(spk.write_chunk(x24[i: i + 1920]) for i in range(0, len(x24), 1920))
        # everything was queued at once (the callback plays it meanwhile: how much is left depends on the load)
        assert abs(queued - len(x24) * spk.device_rate / 24000) < 0.01 * spk.device_rate  # (resampler delay)
        assert spk.buffered_ms > 0 and spk.stream_latency_ms > 0
        assert spk.overflows == 0
        assert spk.drain(timeout=EXCERPT_S + 10)
        assert wait_until(lambda: spk.underruns >= 1, 5.0)
        assert spk.underruns == 1  # ran dry exactly once: at the end
        assert spk.buffered_ms == 0.0
        rec.wait_for(rec.seconds + 0.3, timeout=10)  # the end of it reaches the recording
    y = rec.stop()
    assert wait_until(lambda: os_threads() <= threads_before, 5.0), "stream threads left behind"
    lag, corr = best_lag(y, x24)
    expected = (t_write - rec.t0) * 24000  # rec.t0: when the recording's first sample was rendered
    assert expected - 0.05 * 24000 <= lag <= expected + 0.4 * 24000, (lag / 24000, expected / 24000)
    assert corr > 0.95
    if rate == 24000:  # no resampling anywhere: 24 kHz float32 null sink
        np.testing.assert_allclose(y[lag: lag + len(x24)], x24, atol=1e-5)


def test_speaker_sink_gain_and_record_speaker(pulse):  # noqa: F811
    from app.audio_io import SpeakerSink

    tone = (0.5 * np.sin(2 * np.pi * 440 * np.arange(24000) / 24000)).astype(np.float32)
    with SpeakerSink("pulse", 24000, pulse_sink=pulse.speaker_sink("b"), gain=0.5, buffer_seconds=2) as spk:
        spk.write_chunk(tone)
        y = pulse.record_speaker("b", 0.6)
        spk.close()
        spk.close()
    assert len(y) == int(0.6 * pulse.spk_rate)
    peak = float(np.max(np.abs(y)))
    assert 0.24 < peak < 0.26  # 0.5 * gain 0.5


def test_device_timing_options_and_checks():
    assert ROBUST_TIMING == DeviceTiming()
    assert ROBUST_TIMING.sink_options() == {"blocksize_ms": 10.0, "latency": "high"}
    assert ROBUST_TIMING.source_options() == {"blocksize_ms": 10.0, "latency": "low"}
    assert LOW_LATENCY_TIMING.sink_options() == {"blocksize_ms": 5.0, "latency": 0.020}
    assert LOW_LATENCY_TIMING.source_options() == ROBUST_TIMING.source_options()
    for bad in (dict(output_latency="lowest"), dict(output_latency=0.0), dict(output_latency=2.0),
                dict(input_latency=True), dict(output_block_ms=0.1), dict(input_block_ms=200.0),
                dict(output_latency=float("nan"))):
        with pytest.raises(ValueError):
            DeviceTiming(**bad)


def _click_delay_ms(pulse, timing: DeviceTiming, clicks: int = 3) -> tuple[float, dict]:
    """Write 80 ms chunks every 80 ms (as the playout tick does) into a SpeakerSink opened with ``timing``, a
    click in some of them: the median delay from the write to the click at spk_b's monitor (its render time,
    the same for both timings), and what the sink reports."""
    from app.audio_io import SpeakerSink

    rec = pulse.start_recording("spk_b.monitor", 24000, max_seconds=20)
    rec.wait_for(0.2, timeout=10)
    writes = []
    with SpeakerSink("pulse", 24000, pulse_sink=pulse.speaker_sink("b"), **timing.sink_options()) as spk:
        info = dict(blocksize=spk.blocksize, stream_ms=spk.stream_latency_ms)
        spk.write_chunk(np.zeros(600, np.float32))  # a 25 ms cushion, as the session writes
        nxt = time.monotonic()
        for i in range(6 * clicks + 3):
            time.sleep(max(0.0, nxt - time.monotonic()))
            nxt += 0.08
            x = np.zeros(1920, np.float32)
            if i % 6 == 3:
                x[500:740] = 0.5
            t = time.monotonic()
            spk.write_chunk(x)
            if i % 6 == 3:
                writes.append(t + 500 / 24000)
        info["output_delay_ms"] = spk.output_delay_ms
        time.sleep(0.3)
    y = rec.stop()
    t0 = rec.t0
    hot = np.flatnonzero(np.abs(y) > 0.25)
    onsets = [t0 + i / 24000 for k, i in enumerate(hot) if k == 0 or i - hot[k - 1] > 2400]
    delays = [1000.0 * (min((o for o in onsets if o > t - 0.01), default=np.inf) - t) for t in writes]
    return float(np.median(delays)), info


def test_speaker_sink_honours_its_buffer_setting(pulse):  # noqa: F811
    """The low-latency timing (a 20 ms output buffer in 5 ms blocks) is what the stream gets, what the stream
    reports as its delay, and what is heard: ~25 ms sooner than the robust default (a 40 ms buffer)."""
    robust_ms, robust = _click_delay_ms(pulse, ROBUST_TIMING)
    low_ms, low = _click_delay_ms(pulse, LOW_LATENCY_TIMING)
    assert (robust["blocksize"], low["blocksize"]) == (240, 120)  # 10 ms and 5 ms at 24 kHz
    assert low["stream_ms"] <= 22.0 and robust["stream_ms"] >= 30.0, (low, robust)
    assert 0.0 < low["output_delay_ms"] < robust["output_delay_ms"] - 10.0, (low, robust)
    assert np.isfinite(low_ms) and np.isfinite(robust_ms), (low_ms, robust_ms)
    assert low_ms < robust_ms - 12.0, (low_ms, robust_ms)  # measured: ~44 vs ~69 ms (the cushion included)


def test_start_pulse_is_idempotent(pulse):  # noqa: F811
    pids_file = pulse.runtime_dir / "focalchat-pulse.pids"
    before = pids_file.read_text()
    env = {**os.environ, "AUDIO_RUNTIME_DIR": str(pulse.runtime_dir)}
    p = subprocess.run(["bash", str(REPO / "scripts" / "start_pulse.sh")], env=env, capture_output=True,
                       text=True, timeout=30)
    assert p.returncode == 0, p.stderr
    assert "already running" in p.stderr
    assert f"export PULSE_SERVER={pulse.server} " in p.stdout
    assert pids_file.read_text() == before
