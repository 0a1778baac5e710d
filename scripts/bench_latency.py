#!/usr/bin/env python3
"""Mouth-to-ear latency of a FocalChat call, measured through PulseAudio virtual devices.

    .venv/bin/python scripts/bench_latency.py [--device-rates] [--runs 3] [--clicks 12] [--settle 4]
        [--settings low-latency,default,4-per-packet,low-bandwidth] [--json FILE]
        [--output-latency S --output-block-ms MS --input-latency S --input-block-ms MS --cushion-ms MS]

Takes ~5 min with the defaults (12 calls of ~25 s). Prints two markdown tables: the measured figures (p50/p90
over all clicks of all runs) and, next to them, the latency breakdown that the receiving side's
``CallSession.stats()`` estimates (``LatencyBreakdown``).

Setup. A private PulseAudio (scripts/start_pulse.sh, as the test fixture starts it; stopped at the end) with
peers a and b: ``micfeed_P`` (null sink) -> ``vmic_P`` (virtual mic), ``spk_P`` (null sink = speakers). Two
:class:`app.session.CallSession` objects in this process connect over 127.0.0.1 (``local_only``: loopback ICE
candidates only, no ICE servers). A: ``MicSource(pulse_source="vmic_a")`` -> encoder -> packets -> aiortc data
channel -> B: jitter buffer -> decoder -> ``SpeakerSink(pulse_sink="spk_b")`` (and the other direction the same
way on vmic_b/spk_a: a full-duplex call). The devices are opened as ``focalchat call`` opens them: at the
codec's rates (16 kHz in, 24 kHz out: no resampling anywhere), with the setting's ``CallConfig.device_timing``
(PortAudio blocks and buffers: the low-latency preset's speaker buffer is 20 ms, the others' ~40 ms);
``--device-rates`` opens them at the device's default rate instead (44.1 kHz for ALSA ``pulse``: resampled in
the app, ~22-31 ms held back by each streaming soxr resampler, and in PulseAudio). The experiment flags
(``--output-latency`` ...) override what the presets choose, to find out what a machine can take. Settings: the
``CallConfig`` factories that ``focalchat call --preset`` uses (``low-latency`` -> ``CallConfig.low_latency()``,
``low-bandwidth`` -> ``CallConfig.low_bandwidth()``, ``default`` -> ``CallConfig()``).

Stimulus. A click train (``--clicks`` 10 ms noise bursts ~1.5 s apart, the spacing stepped by 13 ms so that the
clicks fall at different phases of the 80 ms chunk grid) is played with ``paplay`` into ``micfeed_a``, i.e. into
A's microphone, ``--settle`` seconds after the call is up.

Detection. The embedded default model is used when ``assets/default_model`` holds one; otherwise the tiny
untrained codec, which turns *everything*, silence included, into loud noise, so "energy after silence" cannot be
seen at B's speaker. But silence encodes to the same tokens every chunk and the decoder is deterministic, so while
A's mic is silent B's speaker plays an exactly periodic signal (period = one 80 ms chunk). The click is found at
the speaker as the first sample that departs from that period, ``|y[n] - y[n - 80 ms]|`` above a threshold, after
150 ms of steady output (a click with no steady output before it, e.g. right after a device underrun, is dropped
and counted). At the mic the click is the first non-zero sample after silence (the feed is exact zeros).

Shared clock. Two ``parecord`` processes (tests/parecord.py, the recorder the test fixture uses) record
``micfeed_a.monitor`` (16 kHz, what A's mic is fed) and ``spk_b.monitor`` (24 kHz, what B's speakers play), both
started before the call. Null sinks are clocked by the system monotonic clock, so sample n of a recording maps
to ``T0 + n / rate``. ``T0`` is estimated per recording from the arrival of its data: every read of the pipe at
monotonic time t holding samples up to N gives ``T0 <= t - N / rate``; the lower envelope (the minimum over the
reads made while the clicks play, a few hundred of 10 ms) is when the samples were *rendered* by the null sink,
plus the smallest delivery delay (a fraction of a ms). A null sink renders up to its render-ahead R (its
"configured latency" in ``pactl list sinks``: the smallest latency any of its clients, monitor recorders
included, asked for) before it plays on its own clock, and a monitor hands audio out when it is rendered, i.e.
up to R *before* it is played (PulseAudio reports a monitor recording's latency as negative, ``parecord -v``).
So, with R read from pactl while the clicks play: the ear is what spk_b *plays*, ``T0 + n / rate + R_spk_b``
(without it the figure would be R_spk_b, ~2.5-5 ms, too short); the mouth is when the click entered micfeed_a,
i.e. was rendered there, which a render block of R_micfeed_a leaves uniform in ``[T0 + n / rate, + R]``: placed
at ``+ R / 2`` (unbiased; +-R/2 per click, ~2.5 ms, which averages out over clicks at different phases). Only
the reads made while the clicks play count, so that a render-ahead that changed when the call's streams
connected (a client asking for less) does not skew T0. The recorders' own fragment (``--latency-msec=10``)
sets how often data is handed over, not where the envelope lies, and asks its source for more latency than
the keep-alive streams do, so it does not change the sinks' render-ahead. Calibration (printed first): the same
clicks recorded at once by two recorders on ``micfeed_a.monitor`` (their difference is the error of the mapping
itself: a few hundredths of a ms; its median is subtracted) and by one on ``vmic_a`` (the remap source that A's
MicSource reads: ~5 ms later, one render block of micfeed_a: the virtual mic's own latency, part of the capture
path like a real mic's, and not subtracted). The virtual devices' own latency in every figure is therefore that
~5 ms plus R_spk_b; the table prints it.

Chunk alignment. A chunk codec delays a click by the same amount wherever it falls in its 80 ms chunk: the click
at offset k of chunk i is replayed at offset k of output chunk i. The untrained codec's output changes for the
whole chunk, so the speaker sees the change at the output chunk's *start*, k too early. Passive taps on A's
source and on B's sink (they only look at the audio and the monotonic time as it passes) give k (where the click
starts in the chunk the encoder got) and the offset of the change in the chunk the decoder wrote, so the figure
reported is the chunk-aligned one: ``(speaker onset - change offset) - (mic onset - k)``, i.e. chunk start to
chunk start; the raw onset delay (first audible change - click) is shown too. Near a chunk edge the chunk that
changes first can be a neighbour: a click in the last ~15-20 ms of its chunk only reaches the *next* chunk's
tokens (the streaming encoder's strided convolutions need samples past the chunk end before they emit the
chunk's last frame; seen offline with the untrained weights), and a click in the first few ms of a chunk can
change the *previous* one (the resamplers' pre-ringing, far below the click, is enough for the untrained
encoder). Such a click's aligned figure is one chunk off, so only clicks with 10 <= k <= 50 ms count in the
aligned figures (the others: "near a chunk edge"). For a trained, time-aligned codec the hand-over at the end of
a chunk would mean up to ~15 ms more algorithmic delay, which this measurement cannot see.

Parts. The taps also split the aligned figure into capture (chunk start at the mic -> the chunk in the encoder's
hands; 80 ms of it is the chunk itself), app (encode, packetise, data channel, jitter buffer, decode: chunk
read -> decoded chunk written) and output (written by the decoder -> heard in spk_b: the sink's ring buffer and
the PortAudio/ALSA-plugin/PulseAudio buffers). The jitter-buffer wait depends on the phase between A's capture
clock and B's playout clock, which is fixed for a call and random between calls: hence several runs (calls) per
setting, each with fresh sessions and devices.

Glitches. A setting is only as good as it is glitch-free, so each run also counts, on B's speaker side: device
underruns (the SpeakerSink's ring buffer ran dry), PortAudio output underflows (the stream's own buffer ran dry:
PulseAudio played silence, and the audio queued behind it stays late), dropouts (runs of >= 1 ms of exact
zeros in what spk_b played while the clicks played: the decoder never outputs exact zeros, so these are gaps
whatever their cause) and the least audio queued in the sink before a write (how close it came to running dry).

Output trims. After a device underrun or stall the receiving session drops the audio queued in the speakers
beyond its 25 ms cushion (``CallStats.output_trims``; see ``app.session._QueueGuard``): without that, one
underrun left ~15-40 ms more in the output part for the rest of the call. The table counts them per setting.

"audio I/O only" is a reference: A's MicSource chunks resampled straight into B's SpeakerSink (no codec, no
network, no jitter buffer); its output is paced by the mic, so it underruns more than a call does.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import soundfile as sf

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from tests.parecord import Recorder  # noqa: E402  (the parecord recorder the test fixture uses too)

MIC_RATE, SPK_RATE = 16000, 24000
CHUNK_S = 0.08
CLICK_S = 0.010
CLICK_AMP = 0.5
IN_THR = 0.02  # mic side: |x| above this is the click (the feed is exact zeros otherwise)
OUT_THR = 0.01  # speaker side: departure from the 80 ms period above this is the click
QUIET_S = 0.3  # a click at the mic needs this much silence before it
STEADY_S = 0.15  # a change at the speaker needs this much periodic (steady) output before it
EDGE_MS = 10.0  # clicks this close to the start of their chunk may change the previous chunk first (Click)
LATE_MS = 30.0  # clicks this close to the end of their chunk may change the next chunk first (Click)


def _config(preset: str | None = None, **fields):
    """A factory of CallConfig: ``CallConfig.<preset>(**fields)`` when session.py has that preset, else
    ``CallConfig(**fields)`` with ``fallback`` fields standing in for it."""

    def make(fallback: dict | None = None, **overrides):
        from app.session import CallConfig

        factory = getattr(CallConfig, preset, None) if preset else None
        if factory is not None:
            return factory(**fields, **overrides)
        return CallConfig(**fields, **(fallback or {}), **overrides)

    return make


#: The settings measured: name -> (what it is, CallConfig factory, fields used when the preset is missing).
SETTINGS: dict[str, tuple[str, object, dict]] = {
    "low-latency": ("CallConfig.low_latency(): 1 chunk/packet, jitter buffer 1 deep",
                    _config("low_latency"), dict(chunks_per_packet=1, jitter_initial_depth=1)),
    "default": ("CallConfig(): 1 chunk/packet, jitter buffer 2 deep", _config(), {}),
    "2-per-packet": ("CallConfig(chunks_per_packet=2)", _config(chunks_per_packet=2), {}),
    "4-per-packet": ("CallConfig(chunks_per_packet=4): 4 chunks/packet, jitter buffer 2 deep",
                     _config(chunks_per_packet=4), {}),
    "low-bandwidth": ("CallConfig.low_bandwidth() (the <= 3 kbps preset)", _config("low_bandwidth"),
                      dict(chunks_per_packet=4)),
}


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


# ---------------------------------------------------------------------------------------------------------------
# private PulseAudio
# ---------------------------------------------------------------------------------------------------------------
class PrivatePulse:
    """scripts/start_pulse.sh in a fresh runtime dir; the process environment points at it until stop()."""

    def __init__(self) -> None:
        for tool in ("pulseaudio", "pactl", "paplay", "parecord", "pacat"):
            if shutil.which(tool) is None:
                raise SystemExit(f"{tool} not found: apt-get install pulseaudio pulseaudio-utils libasound2-plugins")
        self.run_dir = Path(tempfile.mkdtemp(prefix="fc-bl-", dir="/tmp"))
        env = {**os.environ, "AUDIO_RUNTIME_DIR": str(self.run_dir), "MIC_RATE": str(MIC_RATE),
               "SPK_RATE": str(SPK_RATE), "AUDIO_PEERS": "a b"}
        p = subprocess.run(["bash", str(REPO / "scripts" / "start_pulse.sh")], env=env, capture_output=True,
                           text=True, timeout=60)
        if p.returncode != 0:
            self.stop()
            raise SystemExit(f"start_pulse.sh failed ({p.returncode}):\n{p.stderr}")
        exports: dict[str, str] = {}
        for line in p.stdout.splitlines():
            if line.startswith("export "):
                for item in line[len("export "):].split():
                    k, _, v = item.partition("=")
                    exports[k] = v
        for k in ("PULSE_SERVER", "XDG_RUNTIME_DIR", "PULSE_COOKIE"):
            os.environ[k] = exports[k]
        os.environ.pop("PULSE_SINK", None)
        os.environ.pop("PULSE_SOURCE", None)
        self.env = {**os.environ, "HOME": str(self.run_dir / "home")}

    def stop(self) -> None:
        subprocess.run(["bash", str(REPO / "scripts" / "stop_pulse.sh"), str(self.run_dir)], capture_output=True,
                       timeout=30)
        shutil.rmtree(self.run_dir, ignore_errors=True)

    def play(self, sink: str, wav: Path, timeout: float) -> dict[str, str]:
        """Play ``wav`` into ``sink`` (returns when it has been played); returns the sinks' latencies as pactl
        shows them while it plays (see :func:`sink_latencies`)."""
        p = subprocess.Popen(["paplay", f"--device={sink}", "--latency-msec=20", str(wav)], env=self.env,
                             stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        try:
            time.sleep(0.5)
            sinks = sink_latencies(self)
            _, err = p.communicate(timeout=timeout)
        finally:
            if p.poll() is None:
                p.kill()
                p.wait(timeout=5)
        if p.returncode != 0:
            raise RuntimeError(f"paplay failed: {err.decode(errors='replace')}")
        return sinks


class TimedRecorder(Recorder):
    """tests/parecord.py's recorder (shared with the test fixture); ``stop()`` also returns T0."""

    def stop(self) -> tuple[np.ndarray, float]:  # type: ignore[override]
        """(samples, T0): sample n was rendered at monotonic time ``T0 + n / rate``."""
        x = super().stop()
        if not self.marks:
            raise RuntimeError(f"parecord {self.source} delivered nothing")
        return x, self.t0


# ---------------------------------------------------------------------------------------------------------------
# stimulus and detection
# ---------------------------------------------------------------------------------------------------------------
def click_train(path: Path, clicks: int, spacing_s: float, step_s: float = 0.013, lead_s: float = 0.3) -> float:
    """Write the click train (16 kHz float WAV); returns its duration."""
    rng = np.random.default_rng(1)
    starts = [lead_s + i * (spacing_s + step_s) for i in range(clicks)]
    dur = starts[-1] + 0.3
    x = np.zeros(int(dur * MIC_RATE), np.float32)
    n = int(CLICK_S * MIC_RATE)
    burst = (CLICK_AMP * np.sign(rng.standard_normal(n)) * rng.uniform(0.6, 1.0, n)).astype(np.float32)
    for s in starts:
        i = int(round(s * MIC_RATE))
        x[i:i + n] = burst
    sf.write(str(path), x, MIC_RATE, subtype="FLOAT")
    return dur


def energy_onsets(x: np.ndarray, rate: int, thr: float = IN_THR, quiet_s: float = QUIET_S) -> list[int]:
    """Indices where |x| first exceeds ``thr`` after at least ``quiet_s`` below it."""
    hot = np.flatnonzero(np.abs(x) > thr)
    out: list[int] = []
    last = -10 ** 12
    for i in hot:
        if i - last > quiet_s * rate:
            out.append(int(i))
        last = i
    return out


def period_change(y: np.ndarray, rate: int, lo: int, hi: int, thr: float = OUT_THR,
                  dropouts: bool = True) -> tuple[int | None, str]:
    """First index in [lo, hi) where ``y`` departs from its own 80 ms period, after ``STEADY_S`` of steady
    output. ``dropouts``: reject a change with >= 1 ms of exact zeros around it (a device underrun, not the
    click; only meaningful when the output is never silent). Returns (index or None, why not)."""
    p = int(round(CHUNK_S * rate))
    q = int(STEADY_S * rate)
    a = max(lo - q, p)
    hi = min(hi, len(y))
    if hi - lo <= p or lo - a < q // 2:
        return None, "outside the recording"
    e = np.abs(y[a:hi] - y[a - p:hi - p])
    if float(np.max(e[:lo - a])) > thr / 4:
        return None, "speaker output not steady before the click"
    hot = np.flatnonzero(e[lo - a:] > thr)
    if not hot.size:
        return None, "no change at the speaker"
    i = lo + int(hot[0])
    if not dropouts:
        return i, ""
    z = (y[max(0, i - rate // 200):i + p] == 0.0).astype(np.int8)  # a run of >= 1 ms of exact zeros: dropout
    run = np.convolve(z, np.ones(rate // 1000, np.int8), "valid")
    if run.size and int(run.max()) >= rate // 1000:
        return None, "dropout (device underrun) at the speaker, not the click"
    return i, ""


# ---------------------------------------------------------------------------------------------------------------
# passive taps
# ---------------------------------------------------------------------------------------------------------------
class SourceTap:
    """Wraps a source: passes chunks through unchanged; notes where a click starts (chunk, offset, time)."""

    def __init__(self, src) -> None:
        self._src = src
        self.events: list[tuple[float, int, int]] = []  # (monotonic when returned, chunk number, offset)
        self._n = 0
        self._quiet = 0  # samples since the last hot one

    def __getattr__(self, name):
        return getattr(self._src, name)

    def read_chunk(self, timeout=None):
        x = self._src.read_chunk(timeout)
        if x is None:
            return None
        t = time.monotonic()
        hot = np.flatnonzero(np.abs(x) > IN_THR)
        if hot.size:
            if self._quiet + hot[0] > QUIET_S * MIC_RATE:
                self.events.append((t, self._n, int(hot[0])))
            self._quiet = len(x) - 1 - int(hot[-1])
        else:
            self._quiet += len(x)
        self._n += 1
        return x


class SinkTap:
    """Wraps a sink: passes chunks through unchanged; notes where the written stream departs from its own 80 ms
    period (the stream as written, so chunk sizes need not be constant)."""

    def __init__(self, sink, rate: int = SPK_RATE) -> None:
        self._sink = sink
        self.rate = rate
        self.events: list[tuple[float, int, int]] = []  # (monotonic before the write, chunk number, offset)
        self.ahead: list[tuple[float, float]] = []  # (monotonic before the write, ms queued in the sink then)
        self._p = int(round(CHUNK_S * rate))
        self._hist = np.zeros(0, np.float32)  # the last period written
        self._steady = 0
        self._n = 0

    def __getattr__(self, name):
        return getattr(self._sink, name)

    def write_chunk(self, x):
        t = time.monotonic()
        ahead = getattr(self._sink, "buffered_ms", None)
        if isinstance(ahead, (int, float)):
            self.ahead.append((t, float(ahead)))
        y = np.asarray(x, dtype=np.float32).reshape(-1)
        s = np.concatenate([self._hist, y])
        if len(s) > self._p:
            ref = s[: len(s) - self._p][-len(y):]
            cur = y[len(y) - len(ref):]
            d = np.flatnonzero(np.abs(cur - ref) > OUT_THR)
            if d.size:
                off = len(y) - len(ref) + int(d[0])
                if self._steady + off >= STEADY_S * self.rate:
                    self.events.append((t, self._n, off))
                self._steady = len(ref) - 1 - int(d[-1])
            else:
                self._steady += len(y)
        self._hist = s[-self._p:]
        self._n += 1
        return self._sink.write_chunk(x)


def first_after(events: list[tuple[float, int, int]], t: float, within: float) -> tuple[float, int, int] | None:
    for ev in events:
        if t <= ev[0] <= t + within:
            return ev
    return None


# ---------------------------------------------------------------------------------------------------------------
# one run
# ---------------------------------------------------------------------------------------------------------------
@dataclasses.dataclass
class Click:
    raw_ms: float  # speaker onset - mic onset
    aligned_ms: float  # chunk-aligned mouth-to-ear (the figure reported)
    capture_ms: float | None = None  # mic onset - k .. chunk in the encoder's hands (80 ms chunk included)
    app_ms: float | None = None  # .. decoded chunk handed to the sink
    output_ms: float | None = None  # .. heard at spk_b
    k_ms: float = 0.0  # where the click starts in its 80 ms chunk (as the encoder got it)

    @property
    def carried(self) -> bool:
        """A click near a chunk edge may first change a neighbouring chunk (see the module docstring), which
        makes its chunk-aligned figure one chunk off. Left out of the aligned statistics (the raw onset keeps
        it)."""
        return not EDGE_MS <= self.k_ms <= CHUNK_S * 1000.0 - LATE_MS


@dataclasses.dataclass
class Run:
    setting: str
    clicks: list[Click]
    dropped: list[str]
    breakdown: dict | None = None  # B's CallStats.latency at the end of the run
    stats_line: str = ""
    played: int = 0
    lost: int = 0
    late: int = 0
    underruns: int = 0
    device_underruns: int = 0  # B's SpeakerSink ran dry (PortAudio callback found its ring buffer empty)
    sinks: dict | None = None  # pactl's sink latencies during the run
    config: str = ""  # the CallConfig that was used, in words
    output_trims: int = 0  # B's session dropped audio queued in the speakers beyond its target (CallStats)
    output_trimmed_ms: float = 0.0
    dropouts: int = 0  # runs of >= 1 ms of exact zeros in what spk_b played while the clicks played
    dropout_ms: float = 0.0
    pa_underflows: int = 0  # output underflows PortAudio reported on B's speaker stream
    min_ahead_ms: float | None = None  # least audio queued in B's sink before a write while the clicks played
    render_ahead_ms: dict | None = None  # the sinks' render-ahead (configured latency) while the clicks played
    relocks: int = 0  # B's playout tick moved earlier to the arrivals (CallStats.playout_relocks)


def render_ahead_s(sinks: dict[str, str] | None, name: str) -> float:
    """A null sink's render-ahead (s): its configured latency as ``pactl list sinks`` shows it."""
    m = re.search(r"configured (\d+) usec", (sinks or {}).get(name, ""))
    if m is None:
        raise RuntimeError(f"no configured latency for {name} in {sinks}")
    return int(m.group(1)) / 1e6


def zero_runs(y: np.ndarray, rate: int, min_s: float = 0.001) -> list[int]:
    """Lengths (samples) of the runs of exact zeros at least ``min_s`` long."""
    z = np.concatenate([[0], (y == 0.0).astype(np.int8), [0]])
    d = np.diff(z)
    starts, ends = np.flatnonzero(d == 1), np.flatnonzero(d == -1)
    return [int(n) for n in ends - starts if n >= min_s * rate]


@dataclasses.dataclass
class Measured:
    clicks: list[Click]
    dropped: list[str]
    extra: object  # what start_audio's stop() returned
    render_ahead_ms: dict[str, float]  # micfeed_a / spk_b while the clicks played
    dropouts: list[int]  # zero runs (samples) in what spk_b played while the clicks played
    min_ahead_ms: float | None


def measure(pa: PrivatePulse, wav: Path, wav_s: float, start_audio, settle_s: float, cal_ms: float,
            codec: bool = True) -> Measured:
    """Record both monitors, start the audio pipeline (``start_audio() -> (stop, taps)``), play the clicks,
    stop. ``codec=False`` (the audio-I/O reference): the click itself comes out, so the raw delay is the figure
    and silence is no dropout.

    Placing the two recordings on the monotonic clock (tests/parecord.py): each from the reads made while the
    clicks played, so that T0 + n / rate is when sample n was rendered by its null sink, i.e. played less the
    sink's render-ahead R (its configured latency, read with pactl while the clicks play). Ear: what spk_b
    *plays*, so R_spk_b is added (a monitor hands audio out R early: PulseAudio reports a monitor recording's
    latency as negative). Mouth: when the click entered micfeed_a, i.e. was rendered there; a render covers R,
    so the click was rendered between T0 + n / rate and R later, uniformly: R_micfeed_a / 2 is added (unbiased,
    +-R/2 per click)."""
    rec_in = TimedRecorder(pa.env, "micfeed_a.monitor", MIC_RATE, max_seconds=wav_s + settle_s + 30)
    rec_out = TimedRecorder(pa.env, "spk_b.monitor", SPK_RATE, max_seconds=wav_s + settle_s + 30)
    try:
        rec_in.wait_for(0.2, 5.0)
        rec_out.wait_for(0.2, 5.0)
        stop, src_tap, sink_tap = start_audio()
        try:
            time.sleep(settle_s)
            t_play = time.monotonic()
            sinks = pa.play("micfeed_a", wav, timeout=wav_s + 20)
            t_played = time.monotonic()
            time.sleep(1.2)
        finally:
            extra = stop()
    finally:
        x, _ = rec_in.stop()
        y, _ = rec_out.stop()
    window = (t_play - 0.2, t_played + 1.2)
    t0_in, t0_out = rec_in.t0_between(*window), rec_out.t0_between(*window)
    ahead_in, ahead_out = render_ahead_s(sinks, "micfeed_a"), render_ahead_s(sinks, "spk_b")
    t0_in += ahead_in / 2.0
    t0_out += ahead_out
    lo, hi = (int(max(0.0, (t - t0_out) * SPK_RATE)) for t in (t_play, t_played + 0.5))
    dropouts = zero_runs(y[lo:hi], SPK_RATE) if codec else []
    aheads = [a for t, a in sink_tap.ahead if window[0] <= t <= window[1]]
    clicks: list[Click] = []
    dropped: list[str] = []
    for i in energy_onsets(x, MIC_RATE):
        t_mic = t0_in + i / MIC_RATE - cal_ms / 1000.0
        ev_in = first_after(src_tap.events, t_mic - 0.01, 0.5)
        # the change it makes at the sink comes before the next click reaches the encoder (else it is that one's)
        later = [ev[0] for ev in src_tap.events if ev_in is not None and ev[0] > ev_in[0]]
        within = min(1.5, later[0] - ev_in[0]) if later else 1.5
        ev_out = first_after(sink_tap.events, ev_in[0], within) if ev_in else None
        if ev_in is None or ev_out is None:
            dropped.append(f"click not seen by the {'source' if ev_in is None else 'sink'} tap")
            continue
        # the click cannot be heard before the decoder wrote it: search from there (less 10 ms of clock error)
        lo = int(round((ev_out[0] - 0.01 - t0_out) * SPK_RATE))
        j, why = period_change(y, SPK_RATE, lo, lo + int(0.6 * SPK_RATE), dropouts=codec)
        if j is None:
            dropped.append(why)
            continue
        t_spk = t0_out + j / SPK_RATE
        start_in = t_mic - ev_in[2] / MIC_RATE  # where the click's chunk starts at the mic
        start_out = t_spk - ev_out[2] / sink_tap.rate  # where the chunk that carries it starts at the speaker
        if not codec:  # the click itself is heard: no chunk alignment
            start_out = t_spk - (t_mic - start_in)
        clicks.append(Click(raw_ms=(t_spk - t_mic) * 1000.0, aligned_ms=(start_out - start_in) * 1000.0,
                            capture_ms=(ev_in[0] - start_in) * 1000.0, app_ms=(ev_out[0] - ev_in[0]) * 1000.0,
                            output_ms=(start_out - ev_out[0]) * 1000.0, k_ms=ev_in[2] / MIC_RATE * 1000.0))
    return Measured(clicks, dropped, extra, {"micfeed_a": 1000.0 * ahead_in, "spk_b": 1000.0 * ahead_out},
                    dropouts, min(aheads) if aheads else None)


def open_devices(native: bool, timing=None):
    """mic_a, spk_b, mic_b, spk_a, opened as ``focalchat call`` opens them for a preset whose
    ``CallConfig.device_timing`` is ``timing`` (None: the default)."""
    from app.audio_io import ROBUST_TIMING, MicSource, SpeakerSink

    timing = timing or ROBUST_TIMING
    opened = []
    try:
        for kind, name in (("mic", "vmic_a"), ("spk", "spk_b"), ("mic", "vmic_b"), ("spk", "spk_a")):
            if kind == "mic":
                opened.append(MicSource(None, MIC_RATE if native else None, pulse_source=name,
                                        **timing.source_options()))
            else:  # as focalchat call opens it
                opened.append(SpeakerSink(None, SPK_RATE if native else None, pulse_sink=name, prebuffer_ms=0.0,
                                          **timing.sink_options()))
    except BaseException:
        for d in opened:
            d.close()
        raise
    return opened


def setting_config(setting: str, tweaks: dict | None = None, **fields):
    """The CallConfig of a setting, with ``tweaks`` (``device_timing``: a dict of DeviceTiming fields replacing
    the preset's; ``output_cushion_ms``) applied."""
    _, make, fallback = SETTINGS[setting]
    extra: dict = {}
    tweaks = tweaks or {}
    if tweaks.get("device_timing"):
        extra["device_timing"] = dataclasses.replace(make(fallback).device_timing, **tweaks["device_timing"])
    if tweaks.get("output_cushion_ms") is not None:
        extra["output_cushion_ms"] = tweaks["output_cushion_ms"]
    return make(fallback, **extra, **fields)


def run_call(pa: PrivatePulse, model, setting: str, wav: Path, wav_s: float, native: bool, cal_ms: float,
             settle_s: float, tweaks: dict | None = None) -> Run:
    from app.session import CallSession

    holder: dict = {}

    def start():
        cfg_a = setting_config(setting, tweaks, name="A", nickname="a", local_only=True)
        cfg_b = setting_config(setting, tweaks, name="B", nickname="b", local_only=True)
        mic_a, spk_b, mic_b, spk_a = open_devices(native, cfg_b.device_timing)
        holder["devices"] = (mic_a, spk_b, mic_b, spk_a)
        src_tap, sink_tap = SourceTap(mic_a), SinkTap(spk_b)
        a = CallSession(model, src_tap, spk_a, cfg_a)
        b = CallSession(model, mic_b, sink_tap, cfg_b)
        holder["config"] = b.config
        holder["sessions"] = (a, b)
        a.accept_answer_code(b.accept_offer_code(a.create_offer_code()))
        deadline = time.monotonic() + 10.0
        while not (a.in_call and b.in_call):
            if time.monotonic() > deadline or a.ended or b.ended:
                raise RuntimeError(f"the call did not come up: {a.end_reason} {b.end_reason}")
            time.sleep(0.02)

        def stop():
            st = b.stats()
            holder["sinks"] = sink_latencies(pa)
            holder["dev_underruns"] = spk_b.underruns
            holder["pa_underflows"] = spk_b.status_underflows
            for s in (a, b):
                s.stop()
            return st

        return stop, src_tap, sink_tap

    try:
        m = measure(pa, wav, wav_s, start, settle_s=settle_s, cal_ms=cal_ms)
    finally:
        for s in holder.get("sessions", ()):
            s.stop()
        for d in holder.get("devices", ()):
            d.close()
    st = m.extra
    return Run(setting, m.clicks, m.dropped,
               breakdown=dataclasses.asdict(st.latency) | {"total_ms": st.mouth_to_ear_ms},
               stats_line=st.line(), played=st.played, lost=st.lost, late=st.late, underruns=st.underruns,
               device_underruns=holder.get("dev_underruns", 0), sinks=holder.get("sinks"),
               config=describe(holder["config"]) if "config" in holder else "",
               output_trims=getattr(st, "output_trims", 0), output_trimmed_ms=getattr(st, "output_trimmed_ms", 0.0),
               dropouts=len(m.dropouts), dropout_ms=1000.0 * sum(m.dropouts) / SPK_RATE,
               pa_underflows=holder.get("pa_underflows", 0), min_ahead_ms=m.min_ahead_ms,
               render_ahead_ms=m.render_ahead_ms, relocks=getattr(st, "playout_relocks", 0))


def describe(cfg) -> str:
    compact = " compact frames," if getattr(cfg, "compact_audio", False) else ""
    text = (f"{cfg.chunks_per_packet} chunk(s)/packet,{compact} redundancy {cfg.redundancy}, jitter buffer "
            f"{cfg.jitter_initial_depth} deep (min {cfg.jitter_min_depth})")
    t = getattr(cfg, "device_timing", None)
    if t is not None:
        text += (f", output buffer {t.output_latency} in {t.output_block_ms:g} ms blocks, input {t.input_latency}"
                 f" in {t.input_block_ms:g} ms blocks, cushion {cfg.output_cushion_ms:g} ms")
    return text


def run_passthrough(pa: PrivatePulse, wav: Path, wav_s: float, native: bool, cal_ms: float, timing=None) -> Run:
    """Reference: A's mic chunks straight into B's speaker (resampled 16 -> 24 kHz), no codec, no network; the
    devices opened with ``timing`` (the first setting's)."""
    import soxr

    holder: dict = {}

    def start():
        mic_a, spk_b, mic_b, spk_a = open_devices(native, timing)
        holder["devices"] = (mic_a, spk_b, mic_b, spk_a)
        src_tap, sink_tap = SourceTap(mic_a), SinkTap(spk_b)
        stop_ev = threading.Event()
        rs = soxr.ResampleStream(MIC_RATE, SPK_RATE, 1, dtype="float32", quality="HQ")

        def pump():
            mic_a.flush()
            for _ in range(10_000):
                if stop_ev.is_set():
                    break
                x = src_tap.read_chunk(timeout=0.2)
                if x is not None:
                    sink_tap.write_chunk(rs.resample_chunk(x))

        th = threading.Thread(target=pump, daemon=True)
        th.start()

        def stop():
            holder["dev_underruns"] = spk_b.underruns
            holder["pa_underflows"] = spk_b.status_underflows
            stop_ev.set()
            th.join(5.0)

        return stop, src_tap, sink_tap

    try:
        m = measure(pa, wav, wav_s, start, settle_s=1.0, cal_ms=cal_ms, codec=False)
    finally:
        for d in holder.get("devices", ()):
            d.close()
    return Run("audio I/O only", m.clicks, m.dropped, device_underruns=holder.get("dev_underruns", 0),
               pa_underflows=holder.get("pa_underflows", 0), min_ahead_ms=m.min_ahead_ms,
               render_ahead_ms=m.render_ahead_ms)


def calibrate(pa: PrivatePulse, wav: Path, wav_s: float) -> tuple[list[float], list[float]]:
    """The same clicks recorded at once by two recorders on micfeed_a.monitor and one on vmic_a (the virtual
    mic, a remap of that monitor). Returns (recorder 2 - recorder 1: the error of the clock mapping itself,
    vmic_a - monitor: the virtual mic's own delivery delay, part of the capture path), in ms per click."""
    recs = [TimedRecorder(pa.env, s, MIC_RATE, max_seconds=wav_s + 20)
            for s in ("micfeed_a.monitor", "micfeed_a.monitor", "vmic_a")]
    for r in recs:
        r.wait_for(0.2, 5.0)
    pa.play("micfeed_a", wav, timeout=wav_s + 20)
    time.sleep(0.3)
    onsets = []
    for r in recs:
        x, t0 = r.stop()
        onsets.append([t0 + i / MIC_RATE for i in energy_onsets(x, MIC_RATE)])
    diff = lambda a, b: [1000.0 * (v - u) for u, v in zip(a, b, strict=False)]
    return diff(onsets[0], onsets[1]), diff(onsets[0], onsets[2])


def sink_latencies(pa: PrivatePulse) -> dict[str, str]:
    """``pactl list sinks``: each sink's current and configured latency (a null sink renders that far ahead)."""
    out: dict[str, str] = {}
    try:
        text = subprocess.run(["pactl", "list", "sinks"], env=pa.env, capture_output=True, text=True,
                              timeout=10).stdout
    except (OSError, subprocess.SubprocessError):
        return out
    name = None
    for line in text.splitlines():
        line = line.strip()
        if line.startswith("Name:"):
            name = line.split(":", 1)[1].strip()
        elif line.startswith("Latency:") and name:
            out[name] = line.split(":", 1)[1].strip()
    return out


# ---------------------------------------------------------------------------------------------------------------
# report
# ---------------------------------------------------------------------------------------------------------------
def pct(v: list[float], q: float) -> float:
    return float(np.percentile(v, q)) if v else float("nan")


def aligned(run_or_clicks) -> list[Click]:
    clicks = run_or_clicks.clicks if isinstance(run_or_clicks, Run) else run_or_clicks
    return [c for c in clicks if not c.carried]


def summarize(name: str, runs: list[Run], codec: bool = True) -> dict:
    all_clicks = [c for r in runs for c in r.clicks]
    clicks = aligned(all_clicks) if codec else all_clicks
    al = [c.aligned_ms for c in clicks]
    raw = [c.raw_ms for c in all_clicks]

    def med(attr):
        v = [getattr(c, attr) for c in clicks if getattr(c, attr) is not None]
        return pct(v, 50)

    bds = [r.breakdown for r in runs if r.breakdown]
    bd = {k: float(np.mean([b[k] for b in bds])) for k in bds[0]} if bds else None
    return dict(setting=name, config=next((r.config for r in runs if r.config), ""), clicks=len(clicks),
                carried=len(all_clicks) - len(clicks), dropped=sum(len(r.dropped) for r in runs),
                p50=pct(al, 50), p90=pct(al, 90), raw_p50=pct(raw, 50), raw_p90=pct(raw, 90),
                capture=med("capture_ms"), app=med("app_ms"), output=med("output_ms"),
                per_run=[pct([c.aligned_ms for c in (aligned(r) if codec else r.clicks)], 50) for r in runs],
                clicks_ms=[[(round(c.aligned_ms, 1), round(c.k_ms, 1)) for c in r.clicks] for r in runs],
                parts_ms=[[(round(c.capture_ms, 1), round(c.app_ms, 1), round(c.output_ms, 1)) for c in r.clicks]
                          for r in runs],
                lost=sum(r.lost for r in runs), late=sum(r.late for r in runs),
                underruns=sum(r.underruns for r in runs), device_underruns=sum(r.device_underruns for r in runs),
                output_trims=sum(r.output_trims for r in runs),
                dropouts=sum(r.dropouts for r in runs), dropout_ms=sum(r.dropout_ms for r in runs),
                pa_underflows=sum(r.pa_underflows for r in runs),
                min_ahead=min((r.min_ahead_ms for r in runs if r.min_ahead_ms is not None), default=None),
                render_ahead={k: float(np.median([r.render_ahead_ms[k] for r in runs if r.render_ahead_ms]))
                              for k in ("micfeed_a", "spk_b")} if any(r.render_ahead_ms for r in runs) else None,
                breakdown=bd,
                why_dropped=sorted({w for r in runs for w in r.dropped}))


def print_table(rows: list[dict], cal: tuple[list[float], list[float]], model_id: str, native: bool,
                sinks: dict | None) -> None:
    f = lambda v: "-" if v is None or (isinstance(v, float) and np.isnan(v)) else f"{v:.0f}"
    err, vmic = cal
    print(f"\nmodel {model_id}; devices at {'16/24 kHz (native)' if native else 'their default rate'}.")
    print(f"calibration ({len(err)} clicks): two recorders on one source differ by {np.median(err):+.2f} ms "
          f"(spread {np.ptp(err):.2f}; subtracted); vmic_a delivers {np.median(vmic):.1f} ms after "
          f"micfeed_a.monitor (the virtual mic's own latency: kept, it is part of the capture path)")
    if sinks:
        print("sink latencies during a call (pactl): " + ", ".join(f"{k} {v}" for k, v in sorted(sinks.items())))
    print("settings: " + "; ".join(f"{r['setting']} = {r['config']}" for r in rows if r["config"]))
    print("\nThe virtual devices' own latency, part of every figure below (a real microphone and speaker have their "
          "own instead): the virtual mic's delivery delay (calibration) + the virtual speaker's render-ahead "
          "(spk_b's configured latency while the clicks played; the mouth is placed R/2 into micfeed_a's "
          "render-ahead R):")
    for r in rows:
        ra = r.get("render_ahead")
        if ra:
            print(f"  {r['setting']}: {np.median(vmic):.1f} + {ra['spk_b']:.1f} = {np.median(vmic) + ra['spk_b']:.1f} ms "
                  f"(micfeed_a R = {ra['micfeed_a']:.1f} ms)")
    print("\nmouth-to-ear = chunk-aligned (see the method); raw = speaker onset - mic onset; capture / app / "
          "output: medians of the parts (ms). Glitches: device underruns (B's SpeakerSink ring ran dry), PortAudio "
          "output underflows, dropouts (>= 1 ms of exact zeros in what spk_b played while the clicks played, total "
          "ms); min queued: the least audio in B's sink before a write then (ms)\n")
    print("| setting | clicks | mouth-to-ear p50 | p90 | raw onset p50 | capture | app | output | per-run p50 "
          "| device underruns | PA underflows | dropouts | min queued | output trims |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        n = f"{r['clicks']}" + (f" (+{r['carried']} near a chunk edge)" if r["carried"] else "") \
            + (f" (+{r['dropped']} dropped)" if r["dropped"] else "")
        drops = f"{r.get('dropouts', 0)}" + (f" ({r['dropout_ms']:.0f} ms)" if r.get("dropouts") else "")
        print(f"| {r['setting']} | {n} | {f(r['p50'])} ms | {f(r['p90'])} ms | {f(r['raw_p50'])} ms | {f(r['capture'])} | {f(r['app'])} "
              f"| {f(r['output'])} | {', '.join(f(v) for v in r['per_run'])} | {r['device_underruns']} "
              f"| {r.get('pa_underflows', 0)} | {drops} | {f(r.get('min_ahead'))} | {r.get('output_trims', 0)} |")
    print("\nCallStats latency breakdown (B's estimate at the end of each run, mean over runs), ms:\n")
    print("| setting | chunk | capture | encode | packetisation | network | jitter buffer | decode | device "
          "| estimate | measured p50 | lost/late/underruns |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        b = r["breakdown"]
        if not b:
            continue
        print(f"| {r['setting']} | {b['chunk_ms']:.0f} | {b.get('capture_ms', 0.0):.1f} | {b['encode_ms']:.1f} | "
              f"{b['packetization_ms']:.0f} | {b['network_ms']:.1f} | {b['jitter_ms']:.0f} | {b['decode_ms']:.1f} | "
              f"{b['device_ms']:.0f} | {b['total_ms']:.0f} | {f(r['p50'])} | {r['lost']}/{r['late']}/{r['underruns']} |")
    print("\nSummary (focalchat call --preset NAME uses the same CallConfig factory):\n")
    print("| preset | mouth-to-ear p50 | p90 | session estimate |")
    print("|---|---|---|---|")
    for r in rows:
        b = r["breakdown"]
        if b:
            print(f"| {r['setting']} | {f(r['p50'])} ms | {f(r['p90'])} ms | {b['total_ms']:.0f} ms |")
    for r in rows:
        if r["why_dropped"]:
            print(f"\n{r['setting']}: dropped clicks: {'; '.join(r['why_dropped'])}")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--runs", type=int, default=3, help="calls per setting (fresh sessions and devices)")
    ap.add_argument("--clicks", type=int, default=12, help="clicks per call")
    ap.add_argument("--spacing", type=float, default=1.5, help="seconds between clicks")
    ap.add_argument("--settle", type=float, default=4.0,
                    help="seconds from call up to the first click (the first seconds of a call are often a chunk "
                         "slower, and the speakers underrun until their buffer has settled)")
    ap.add_argument("--settings", default="low-latency,default,4-per-packet,low-bandwidth",
                    help="comma-separated, from: " + "; ".join(f"{k} = {v[0]}" for k, v in SETTINGS.items()))
    ap.add_argument("--no-reference", action="store_true", help="skip the audio-I/O-only reference")
    ap.add_argument("--native-rates", action="store_true", default=True,
                    help="open the devices at 16/24 kHz, as focalchat call does (the default)")
    ap.add_argument("--device-rates", dest="native_rates", action="store_false",
                    help="open the devices at their default rate (44.1 kHz for ALSA pulse: resampled)")
    ap.add_argument("--model", default="default", help="default (embedded if present, else untrained) | untrained")
    tw = ap.add_argument_group("experiments: override what the presets choose (app.audio_io.DeviceTiming, "
                               "CallConfig.output_cushion_ms)")
    tw.add_argument("--output-latency", help="output buffer: low | high | seconds")
    tw.add_argument("--output-block-ms", type=float, help="output callback block (ms)")
    tw.add_argument("--input-latency", help="input buffer: low | high | seconds")
    tw.add_argument("--input-block-ms", type=float, help="input callback block (ms)")
    tw.add_argument("--cushion-ms", type=float, help="silence queued in the speakers ahead of the first chunk (ms)")
    ap.add_argument("--json", metavar="FILE", help="also write the results as JSON")
    args = ap.parse_args(argv)
    names = [s.strip() for s in args.settings.split(",") if s.strip()]
    bad = [n for n in names if n not in SETTINGS]
    if bad or not 1 <= args.runs <= 20 or not 2 <= args.clicks <= 50 or not 0.7 <= args.spacing <= 5 \
            or not 0.5 <= args.settle <= 30:
        ap.error(f"bad arguments (unknown settings: {bad})" if bad else
                 "runs 1..20, clicks 2..50, spacing 0.7..5 s, settle 0.5..30 s")

    as_latency = lambda v: v if v in ("low", "high") else float(v)
    timing = {k: f(v) for k, v, f in (("output_latency", args.output_latency, as_latency),
                                       ("output_block_ms", args.output_block_ms, float),
                                       ("input_latency", args.input_latency, as_latency),
                                       ("input_block_ms", args.input_block_ms, float)) if v is not None}
    tweaks = {"device_timing": timing, "output_cushion_ms": args.cushion_ms}
    pa = PrivatePulse()
    try:
        import torch

        from app.modelref import load_model

        torch.set_num_threads(1)
        model = load_model(args.model, allow_untrained=True)
        tmp = Path(tempfile.mkdtemp(prefix="fc-bl-wav-"))
        try:
            wav = tmp / "clicks.wav"
            wav_s = click_train(wav, args.clicks, args.spacing)
            cal_wav = tmp / "cal.wav"
            cal_s = click_train(cal_wav, 6, 0.5)
            cal = calibrate(pa, cal_wav, cal_s)
            if not cal[0] or not cal[1]:
                raise SystemExit("calibration found no clicks")
            cal_ms = float(np.median(cal[0]))
            log(f"calibration: mapping error {', '.join(f'{c:+.2f}' for c in cal[0])} ms; "
                f"vmic_a after the monitor by {', '.join(f'{c:.2f}' for c in cal[1])} ms")
            rows = []
            sinks = None
            if not args.no_reference:
                ref = run_passthrough(pa, wav, wav_s, args.native_rates, cal_ms,
                                      setting_config(names[0], tweaks).device_timing)
                rows.append(summarize(ref.setting, [ref], codec=False))
                log(f"audio I/O only: p50 {rows[-1]['p50']:.0f} ms"
                    f"{' dropped: ' + '; '.join(ref.dropped) if ref.dropped else ''}")
            for name in names:
                runs = []
                for i in range(args.runs):
                    r = run_call(pa, model, name, wav, wav_s, args.native_rates, cal_ms, args.settle, tweaks)
                    runs.append(r)
                    sinks = sinks or r.sinks
                    med = pct([c.aligned_ms for c in aligned(r)], 50)
                    log(f"{name} run {i + 1}: {len(r.clicks)} clicks, p50 {med:.0f} ms, "
                        f"device underruns {r.device_underruns}, PortAudio underflows {r.pa_underflows}, "
                        f"dropouts {r.dropouts}, output trims {r.output_trims} ({r.output_trimmed_ms:.0f} ms), "
                        f"playout relocks {r.relocks}"
                        f"{' dropped: ' + '; '.join(r.dropped) if r.dropped else ''} | {r.stats_line}")
                rows.append(summarize(name, runs))
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        print_table(rows, cal, model.model_id, args.native_rates, sinks)
        if args.json:
            Path(args.json).write_text(json.dumps(dict(model=model.model_id, native_rates=args.native_rates,
                                                       calibration_ms=cal, rows=rows), indent=1))
    finally:
        pa.stop()
        with contextlib.suppress(Exception):  # while the environment still names the (dead) private server,
            from app.audio_io import refresh_devices  # as tests/pulse_fixture does: PortAudio ends up empty

            refresh_devices()
    return 0


if __name__ == "__main__":
    sys.exit(main())
