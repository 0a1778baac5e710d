"""A real-audio call: speech through PulseAudio virtual devices, both ways, two CallSessions on 127.0.0.1.

A: ``MicSource(pulse_source="vmic_a")`` -> ... aiortc data channel ... -> B: ``SpeakerSink(pulse_sink="spk_b")``,
and B's ``vmic_b`` -> A's ``spk_a`` at the same time. Speech is played into each virtual mic with the fixture
(``paplay`` into ``micfeed_P``), what each speaker plays is recorded from ``spk_P.monitor``.

What "audio arrives" means with the tiny untrained codec (``untrained_model()``): it turns everything, silence
included, into loud noise, so the speaker is never quiet once the call is up. But silence encodes to the same
tokens in every chunk and the decoder is deterministic, so while a mic is silent its peer's speaker plays an
exactly periodic signal (one 80 ms chunk). Speech breaks that period. So, per direction:

* energy: the speaker recording is far above the silence floor (digital zero before the call) during the speech;
* the speech itself: the departure from the 80 ms period (``|y[n] - y[n - 80 ms]|``) is tiny before the speech
  (also while the *other* direction is talking: no crosstalk) and large during it;
* the tokens: every chunk the sender recorded as sent was received and played, bit-exact (the ``.fcr``
  recordings of both sides), the sender's chunks changed while the speech was played (its mic heard it), and the
  receiver's stats show no loss, lateness or malformed packets.

Bounded: every wait has a timeout, the whole test takes ~15 s after the private PulseAudio is up.
"""

from __future__ import annotations

import threading
import time

import numpy as np
import soundfile as sf

from app.modelref import SPEECH_SAMPLE, untrained_model
from app.recording import RECEIVED, SENT, RecordingReader
from app.session import CallConfig, CallSession
from tests.waiting import wait_until

SPK_RATE = 24000
PERIOD = int(0.08 * SPK_RATE)
SPEECH_S = 2.5
STAGGER_S = 1.2  # B starts talking this long after A




def period_departure(y: np.ndarray) -> np.ndarray:
    e = np.zeros_like(y)
    e[PERIOD:] = np.abs(y[PERIOD:] - y[:-PERIOD])
    return e


def span(rec_t0: float, t_from: float, t_to: float, n: int) -> slice:
    """Samples of a recording started at ``rec_t0`` (its first sample comes a little later) between two times."""
    return slice(max(0, int((t_from - rec_t0) * SPK_RATE)), min(n, int((t_to - rec_t0) * SPK_RATE)))


def window(rec_t0: float, t_from: float, t_to: float, n: int) -> slice:
    w = span(rec_t0, t_from, t_to, n)
    assert w.stop - w.start > 0.2 * SPK_RATE, (w, n)
    return w


class UnderrunWatch:
    """Polls the speakers' underrun and trim counters (every 10 ms, in a thread) to know *when* a device ran
    dry or had queued audio dropped: an underrun is a real glitch in the speaker output (the PortAudio
    callback found the ring buffer empty and played zeros), not a fault of the call, and so is a trim (the
    session dropping queued silence to bring the device's queue back to its target after an underrun or a
    stall); both break the 80 ms period just like speech does."""

    def __init__(self, sinks: dict) -> None:
        self.sinks = sinks
        self.events: dict[str, list[float]] = {k: [] for k in sinks}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        last = {k: s.underruns + s.trims for k, s in self.sinks.items()}
        for _ in range(10_000):  # <= 100 s
            if self._stop.wait(0.01):
                return
            for k, s in self.sinks.items():
                n = s.underruns + s.trims
                if n != last[k]:
                    self.events[k].append(time.monotonic())
                    last[k] = n

    def quiet_for(self, seconds: float) -> bool:
        t = time.monotonic()
        return all(not ev or t - ev[-1] >= seconds for ev in self.events.values())

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(2.0)


def test_speech_both_ways_through_virtual_devices(pulse, tmp_path):  # noqa: F811
    from app.audio_io import MicSource, SpeakerSink

    x, sr = sf.read(str(SPEECH_SAMPLE), dtype="float32")
    assert sr == 16000
    clips = {}
    for peer, start in (("a", 0.0), ("b", SPEECH_S)):
        clips[peer] = tmp_path / f"speech_{peer}.wav"
        sf.write(str(clips[peer]), x[int(start * sr): int((start + SPEECH_S) * sr)], sr, subtype="FLOAT")

    model = untrained_model()
    recs = {p: pulse.start_recording(f"spk_{p}.monitor", SPK_RATE, max_seconds=40) for p in ("a", "b")}
    for r in recs.values():
        r.wait_for(0.1, timeout=5)
    devices: list = []
    sessions: list[CallSession] = []
    try:
        # A -> B as `focalchat call` opens devices (their default rate: resampled in the app and in PulseAudio),
        # B -> A at the codec's rates (16 kHz in, 24 kHz out: no resampling anywhere)
        mic_a = MicSource(None, pulse_source="vmic_a")
        devices.append(mic_a)
        spk_b = SpeakerSink(None, pulse_sink="spk_b", prebuffer_ms=0.0)
        devices.append(spk_b)
        mic_b = MicSource(None, 16000, pulse_source="vmic_b")
        devices.append(mic_b)
        spk_a = SpeakerSink(None, SPK_RATE, pulse_sink="spk_a", prebuffer_ms=0.0)
        devices.append(spk_a)
        a = CallSession(model, mic_a, spk_a, CallConfig(name="A", nickname="a", local_only=True,
                                                        record_path=tmp_path / "a.fcr"))
        sessions.append(a)
        b = CallSession(model, mic_b, spk_b, CallConfig(name="B", nickname="b", local_only=True,
                                                        record_path=tmp_path / "b.fcr"))
        sessions.append(b)
        a.accept_answer_code(b.accept_offer_code(a.create_offer_code()))
        assert wait_until(lambda: a.in_call and b.in_call, 10.0), (a.state, b.state, a.end_reason, b.end_reason)
        t_up = time.monotonic()
        watch = UnderrunWatch({"a": spk_a, "b": spk_b})
        # the decoders reach their steady (periodic) output for the silent mics (~0.5 s), and the speakers stop
        # running dry: with prebuffer 0 (as `focalchat call` opens them) a device at 44.1 kHz underruns a few
        # times in the first ~1.5 s, until its ring buffer holds enough to ride out the callback's burstiness
        time.sleep(0.8)
        wait_until(lambda: watch.quiet_for(0.8), 6.0)
        t_quiet = time.monotonic()
        time.sleep(1.2)  # the quiet reference span: both mics silent

        t_play = {"a": time.monotonic()}
        player_a = pulse.play_into_mic("a", clips["a"], wait=False)
        time.sleep(STAGGER_S)
        t_play["b"] = time.monotonic()
        player_b = pulse.play_into_mic("b", clips["b"], wait=False)
        assert player_a.wait(timeout=30) == 0 and player_b.wait(timeout=30) == 0
        # the last of the speech reaches the speakers: each side has played what the other had sent by now,
        # and a few chunks more (decoded, through the sink and the server)
        sent = {"a": a.stats().chunks_sent, "b": b.stats().chunks_sent}
        for receiver, sender in ((b, "a"), (a, "b")):
            assert wait_until(lambda r=receiver, n=sent[sender]: r.stats().played + r.stats().dropped >= n + 3, 10.0), \
                receiver.stats().line()
        assert a.in_call and b.in_call
        stats = {"a": a.stats(), "b": b.stats()}
        call_s = time.monotonic() - t_up
        for s in sessions:
            s.stop()
        assert all(s.ended for s in sessions)
        watch.stop()
    finally:
        for s in sessions:
            s.stop()
        for d in devices:
            d.close()
        heard = {p: (r.stop(), r.t0) for p, r in recs.items()}  # t0: when the recording's first sample played

    # ---- tokens and stats: everything the sender encoded was played by the receiver, bit-exact
    streams = {}
    for p in ("a", "b"):
        reader = RecordingReader(tmp_path / f"{p}.fcr")
        streams[p] = reader.streams()
        assert reader.damage is None and reader.complete
    for sender, receiver in (("a", "b"), ("b", "a")):
        sent, got = streams[sender][SENT], streams[receiver][RECEIVED]
        n = len(sent)
        assert n >= call_s / 0.08 - 3, (n, call_s)  # the mic delivered the whole call, chunk after chunk
        assert sorted(sent) == list(range(n))
        st = stats[receiver]
        # every chunk played, save the last few (in flight at hang-up), the silent ones the jitter buffer
        # dropped to shrink its delay (packets flagged SILENCE by the sender's VAD), and the few that a stall of
        # this busy machine (two cores: two sessions, four codec streams, PulseAudio) delayed past their playout
        # tick: those were concealed (``lost``) and counted ``late`` when they came; more than a short burst
        # (5 % of the call) would be a fault, on loopback
        missing = set(range(n - 4)) - set(got)
        assert set(got) <= set(sent) and len(missing) <= st.dropped + st.lost, \
            (n, sorted(missing), st.dropped, st.lost)
        assert st.lost <= max(3, 0.05 * n) and st.late <= st.lost, (n, sorted(missing), st.line())
        for i in got:
            assert np.array_equal(got[i], sent[i]), i
        assert st.malformed == 0 and st.send_drops == 0, st.line()
        assert st.played >= stats[sender].chunks_sent - 4 - st.dropped - st.lost, \
            (st.played, stats[sender].chunks_sent)
        # the sender's mic heard the speech: its tokens left the silence token pattern
        silence_tokens = sent[0]
        changed = [i for i in sorted(sent) if not np.array_equal(sent[i], silence_tokens)]
        assert len(changed) >= 0.6 * SPEECH_S / 0.08, len(changed)

    # ---- audio at each speaker
    for sender, receiver in (("a", "b"), ("b", "a")):
        y, rec_t0 = heard[receiver]
        assert np.isfinite(y).all() and len(y) > (time.monotonic() - rec_t0 - 5) * SPK_RATE
        floor = float(np.sqrt(np.mean(y[: int(0.05 * SPK_RATE)] ** 2)))  # before the call: digital silence
        t0 = t_play[sender]
        speech = window(rec_t0, t0 + 0.5, t0 + SPEECH_S, len(y))
        quiet = window(rec_t0, t_quiet, t0, len(y))
        if sender == "b":  # the span while A talked, up to B's speech, must stay quiet at spk_a
            assert quiet.stop - quiet.start > 0.9 * STAGGER_S * SPK_RATE
        rms = float(np.sqrt(np.mean(y[speech] ** 2)))
        assert rms > 1e-3 and rms > 100 * floor, (rms, floor)
        e = period_departure(y)
        ok = np.zeros(len(y), bool)
        ok[quiet] = True
        for t in watch.events[receiver]:  # leave out the glitch of a device underrun (and the period after it)
            ok[span(rec_t0, t - 0.15, t + 0.4, len(y))] = False
        if np.count_nonzero(ok) < 0.3 * SPK_RATE:  # underruns all over the span: judge it whole
            ok[quiet] = True
        # the median, not the max: on a busy machine a few glitches the watch cannot see (PulseAudio's own
        # buffer running dry, a silent chunk the jitter buffer dropped or stretched) break the period for
        # ~0.1-0.2 s each; leakage of the other side's speech would fill the span
        before, during = float(np.median(e[ok])), float(np.mean(e[speech]))
        print(f"\n{sender} -> {receiver}: rms {20 * np.log10(rms):.1f} dBFS (floor {floor:.1e}); departure from the "
              f"80 ms period: median {before:.1e} before the speech, mean {during:.1e} during it; "
              f"{len(watch.events[receiver])} device underrun(s) at {receiver}; output trims "
              f"{stats[receiver].output_trims}, playout relocks {getattr(stats[receiver], 'playout_relocks', 0)}")
        assert before < 1e-3, before
        assert during > 1e-2 and during > 30 * before, (before, during)


def test_period_departure_helper():
    """The detector the call test relies on: zero for a periodic signal, non-zero where it changes."""
    rng = np.random.default_rng(1)
    y = np.tile(rng.standard_normal(PERIOD).astype(np.float32), 10)
    assert float(np.max(period_departure(y))) == 0.0
    y[5 * PERIOD + 7] += 0.5
    e = period_departure(y)
    assert int(np.flatnonzero(e > 0.1)[0]) == 5 * PERIOD + 7



# ---------------------------------------------------------------------------------------------------------------
# focalchat play: a recording through the speakers
# ---------------------------------------------------------------------------------------------------------------
def write_recording(path, model, *, received: bool = True, missing: tuple[int, ...] = ()) -> int:
    """A recording of the first 2 s of speech: SENT chunks from t = 0, and (``received``) the same chunks as
    RECEIVED from t = 1 s, less ``missing``. Returns the number of chunks per direction."""
    import torch

    from app.recording import RecordingHeader, RecordingWriter

    x, sr = sf.read(str(SPEECH_SAMPLE), dtype="float32")
    sig = torch.from_numpy(x[: 2 * sr])[None]
    cs = model.chunk_size
    h = RecordingHeader(model_id=model.model_id, model_hash=model.fingerprint(), bits=model.bits_per_token,
                        tokens_per_chunk=model.tokens_per_chunk, directions=("alice", "bob"))
    est = None
    n = sig.shape[1] // cs
    with RecordingWriter(path, h) as w, torch.inference_mode():
        for i in range(n):
            toks, est = model.encode_step(sig[:, i * cs:(i + 1) * cs], est)
            w.add_chunk(SENT, i, toks[0].numpy(), time_ms=80 * i)
            if received and i not in missing:
                w.add_chunk(RECEIVED, i, toks[0].numpy(), time_ms=1000 + 80 * i)
    return n


def band_coherence(a: np.ndarray, b: np.ndarray, hi: float, band: float = 1000.0) -> list[float]:
    """|sum A B*| / sqrt(sum |A|^2 sum |B|^2) over each ``band`` Hz of the spectrum below ``hi``: 1 for the same
    signal through any filter whose gain and phase are smooth over a band (a resampler's, say)."""
    sa, sb = np.fft.rfft(a.astype(np.float64)), np.fft.rfft(b.astype(np.float64))
    f = np.fft.rfftfreq(len(a), 1 / SPK_RATE)
    out = []
    for lo in np.arange(0.0, hi, band):
        m = (f >= lo) & (f < lo + band)
        out.append(float(np.abs(np.sum(sa[m] * np.conj(sb[m])))
                         / np.sqrt(np.sum(np.abs(sa[m]) ** 2) * np.sum(np.abs(sb[m]) ** 2) + 1e-30)))
    return out


def best_lag(rec: np.ndarray, ref: np.ndarray) -> tuple[int, float]:
    """Lag of ``ref`` inside ``rec`` (argmax of the cross-correlation) and the normalised correlation there."""
    n = len(rec) + len(ref)
    nfft = 1 << (n - 1).bit_length()
    c = np.fft.irfft(np.fft.rfft(rec, nfft) * np.conj(np.fft.rfft(ref, nfft)), nfft)[: len(rec)]
    lag = int(np.argmax(c))
    seg = rec[lag: lag + len(ref)].astype(np.float64)
    r = ref[: len(seg)].astype(np.float64)
    return lag, float(np.dot(seg, r) / np.sqrt(np.dot(seg, seg) * np.dot(r, r) + 1e-20))


def test_play_recording_through_the_speakers(pulse, tmp_path, capsys):  # noqa: F811
    from app.cli import main

    model = untrained_model()
    rec_path = tmp_path / "call.fcr"
    n = write_recording(rec_path, model, missing=(7, 8))
    ref = tmp_path / "received.wav"
    assert main(["export", str(rec_path), str(ref), "--layout", "received", "--model", "untrained"]) == 0
    expected, _ = sf.read(str(ref), dtype="float32")
    expected = expected[int(1.0 * SPK_RATE):]  # export starts at the recording's t = 0; play at the first chunk
    assert len(expected) == n * 1920

    rec = pulse.start_recording("spk_a.monitor", SPK_RATE, max_seconds=20)
    rec.wait_for(0.1, timeout=5)
    t_before = time.monotonic()
    try:
        rc = main(["play", str(rec_path), "--pulse-sink", "spk_a", "--direction", "received", "--model", "untrained"])
        took = time.monotonic() - t_before
        time.sleep(0.2)
    finally:
        y = rec.stop()
    out = capsys.readouterr()
    assert rc == 0, out.err
    assert "playing" in out.out and "bob: 23 chunks" in out.out and "chunks concealed: bob 2" in out.out
    assert took >= n * 0.08 - 0.3  # paced in real time, not dumped at once
    # the speakers played the recording: energy where there was digital silence, and the very signal `export`
    # decodes (through two resamplers: 24 -> 44.1 kHz in the app, back to 24 kHz in PulseAudio)
    assert float(np.sqrt(np.mean(y[: int(0.05 * SPK_RATE)] ** 2))) == 0.0
    lag, _ = best_lag(y, expected)
    seg = y[lag: lag + len(expected)]
    assert float(np.sqrt(np.mean(seg ** 2))) > 0.1, "no energy at the speaker"
    # the resamplers cut the untrained decoder's noise above ~10 kHz and shift its phase a little (not a pure
    # delay: a plain correlation tops out near 0.95), so compare band by band below 7 kHz
    coh = band_coherence(seg, expected[: len(seg)], 7000.0)
    assert min(coh) > 0.97, coh


def test_play_both_directions_and_a_damaged_recording(pulse, tmp_path, capsys):  # noqa: F811
    from app.cli import main

    model = untrained_model()
    rec_path = tmp_path / "call.fcr"
    n = write_recording(rec_path, model)
    data = rec_path.read_bytes()
    cut = tmp_path / "cut.fcr"
    cut.write_bytes(data[: len(data) * 2 // 3])  # a killed process leaves a truncated file
    rec = pulse.start_recording("spk_a.monitor", SPK_RATE, max_seconds=20)
    rec.wait_for(0.1, timeout=5)
    try:
        rc = main(["play", str(cut), "--pulse-sink", "spk_a", "--model", "untrained"])
        time.sleep(0.2)
    finally:
        y = rec.stop()
    out = capsys.readouterr()
    assert rc == 0, out.err
    assert "damaged" in out.err and "playing up to the damage" in out.err
    # both directions, mixed: alice from t = 0, bob from t = 1 s, less what the damage took
    m = next(ln for ln in out.out.splitlines() if ln.startswith("playing"))
    seconds = float(m.split(": ")[1].split(" s")[0])
    assert 1.0 < seconds < 1.0 + n * 0.08
    assert "alice" in m and "bob" in m
    hot = np.flatnonzero(np.abs(y) > 0.05)
    assert hot.size and (hot[-1] - hot[0]) / SPK_RATE > seconds - 0.3


def test_play_errors_are_clear(tmp_path, capsys):
    from app.cli import main

    model = untrained_model()
    rec_path = tmp_path / "sent_only.fcr"
    write_recording(rec_path, model, received=False)
    assert main(["play", str(rec_path), "--direction", "received", "--model", "untrained"]) == 2
    assert "no audio for direction 'received'" in capsys.readouterr().err
    assert main(["play", str(tmp_path / "nope.fcr"), "--model", "untrained"]) == 2
    assert "no such file" in capsys.readouterr().err
    other = untrained_model(seed=1)  # another model: refused unless --force
    other_path = tmp_path / "other.fcr"
    write_recording(other_path, other)
    assert main(["play", str(other_path), "--model", "untrained"]) == 2
    assert "pass --model, or --force" in capsys.readouterr().err
