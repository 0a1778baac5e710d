"""Audio back end: microphone in, speakers out (sounddevice/PortAudio), plus file-backed stand-ins.

The codec side of the app sees only two small interfaces:

* a *source* (:class:`MicSource`, :class:`FileMicSource`): ``read_chunk(timeout) -> (1280,) float32 | None``,
  exact 80 ms chunks at 16 kHz mono whatever the device or file rate;
* a *sink* (:class:`SpeakerSink`, :class:`FileSpeakerSink`, :class:`NullSpeakerSink`): ``write_chunk(x)`` with
  decoded audio at 24 kHz mono.

Real-time design: the PortAudio callback thread does nothing but copy a block into / out of a
:class:`RingBuffer` (single producer, single consumer, no locks on the data path). Resampling between the
device rate and the codec rates runs with a streaming ``soxr`` resampler in the *consumer's* thread
(``read_chunk``) and in the *producer's* thread (``write_chunk``), never in the callback.

Device selection (Debian's PortAudio has no PulseAudio host API; everything goes through the ALSA ``pulse``
plugin): PortAudio lists only ``pulse`` and ``default``, never the individual PulseAudio sinks and sources.
Pick those with ``pulse_source=`` / ``pulse_sink=`` (scoped ``PULSE_SOURCE`` / ``PULSE_SINK`` environment
variables while the stream opens), or set those variables for the whole process. ``device=`` takes a
PortAudio index, a (sub)string of a PortAudio device name, or ``None`` for the default device.

No torch, no Qt. ``sounddevice`` is imported lazily, so the file-backed classes work without PortAudio.
"""

from __future__ import annotations

import contextlib
import math
import os
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol, runtime_checkable

import numpy as np
import soundfile as sf
import soxr

CODEC_RATE = 16000  #: encoder input rate (Hz)
CHUNK = 1280  #: samples per 80 ms chunk at CODEC_RATE
CHUNK_SECONDS = CHUNK / CODEC_RATE
DECODER_RATE = 24000  #: decoder output rate (Hz)
NO_DEVICES_MSG = "no audio devices found: is PulseAudio running?"
_LEVEL_FLOOR_DB = -120.0


class AudioDeviceError(RuntimeError):
    """No usable audio device: PortAudio missing, no audio server, unknown device, stream failed to open."""


# ---------------------------------------------------------------------------------------------------------
# Ring buffer
# ---------------------------------------------------------------------------------------------------------

class RingBuffer:
    """Fixed-size float32 FIFO for exactly one producer thread and one consumer thread.

    Lock-free by construction: the producer only advances ``_written`` and the consumer only advances
    ``_read`` (both monotonically increasing sample counters; a Python int store is atomic under the GIL),
    and each side publishes its counter only after its copy is complete, so the two never touch the same
    samples. Copies are at most two numpy slice assignments (wrap-around), never per-sample Python loops.

    ``write`` drops what does not fit (counted in ``overflows`` / ``overflow_samples``); ``read_into`` fills
    what it can and counts a shortfall in ``underflows`` / ``underflow_samples``. ``clear`` belongs to the
    consumer side.
    """

    def __init__(self, capacity: int, channels: int = 1):
        if capacity <= 0 or channels <= 0:
            raise ValueError("capacity and channels must be positive")
        self.capacity = int(capacity)
        self.channels = int(channels)
        self._buf = np.zeros((self.capacity, self.channels), dtype=np.float32)
        self._written = 0  # total samples ever written (producer-owned)
        self._read = 0  # total samples ever read (consumer-owned)
        self.overflows = 0
        self.overflow_samples = 0
        self.underflows = 0
        self.underflow_samples = 0

    @property
    def available(self) -> int:
        """Samples (frames) ready to read."""
        return self._written - self._read

    @property
    def free(self) -> int:
        return self.capacity - (self._written - self._read)

    @property
    def total_written(self) -> int:
        return self._written

    @property
    def total_read(self) -> int:
        return self._read

    def _as_frames(self, a: np.ndarray) -> np.ndarray:
        if a.ndim == 1:
            if self.channels != 1:
                raise ValueError(f"1-D block for a {self.channels}-channel ring buffer")
            return a.reshape(-1, 1)
        if a.ndim != 2 or a.shape[1] != self.channels:
            raise ValueError(f"block shape {a.shape} does not match {self.channels} channel(s)")
        return a

    def write(self, block: np.ndarray) -> int:
        """Append ``block`` ((n,) or (n, channels)); returns the number of frames stored (the rest is dropped)."""
        src = self._as_frames(block)
        n_in = src.shape[0]
        w = self._written
        n = min(n_in, self.capacity - (w - self._read))
        if n < n_in:
            self.overflows += 1
            self.overflow_samples += n_in - n
        if n > 0:
            start = w % self.capacity
            first = min(n, self.capacity - start)
            self._buf[start:start + first] = src[:first]
            if n > first:
                self._buf[:n - first] = src[first:n]
            self._written = w + n  # publish after the copy
        return n

    def read_into(self, out: np.ndarray) -> int:
        """Fill ``out`` ((m,) or (m, channels)) from the front; returns frames copied (<= m).

        A shortfall (fewer than m available) counts as an underflow; the unfilled tail of ``out`` is left
        untouched. Ask for at most ``available`` frames to poll without counting underflows.
        """
        dst = self._as_frames(out)
        want = dst.shape[0]
        r = self._read
        n = min(want, self._written - r)
        if n < want:
            self.underflows += 1
            self.underflow_samples += want - n
        if n > 0:
            start = r % self.capacity
            first = min(n, self.capacity - start)
            dst[:first] = self._buf[start:start + first]
            if n > first:
                dst[first:n] = self._buf[:n - first]
            self._read = r + n  # publish after the copy
        return n

    def read(self, max_frames: int | None = None) -> np.ndarray:
        """Convenience (allocates): up to ``max_frames`` available frames, without counting an underflow."""
        n = self.available if max_frames is None else min(max_frames, self.available)
        out = np.empty((n,) if self.channels == 1 else (n, self.channels), dtype=np.float32)
        self.read_into(out)
        return out

    def clear(self) -> int:
        """Consumer side: discard everything buffered; returns the number of frames dropped."""
        w = self._written
        n = w - self._read
        self._read = w
        return n

    def skip(self, frames: int) -> int:
        """Consumer side: discard up to ``frames`` of the oldest buffered frames; returns how many."""
        r = self._read
        n = max(0, min(int(frames), self._written - r))
        self._read = r + n
        return n


# ---------------------------------------------------------------------------------------------------------
# Devices
# ---------------------------------------------------------------------------------------------------------

def _sd():
    """Import sounddevice lazily, turning a missing PortAudio into AudioDeviceError."""
    try:
        import sounddevice as sd
    except OSError as exc:  # "PortAudio library not found"
        raise AudioDeviceError(f"PortAudio is not available ({exc}); install libportaudio2") from None
    return sd


@dataclass(frozen=True)
class AudioDevice:
    index: int
    name: str
    hostapi: str
    max_input_channels: int
    max_output_channels: int
    default_samplerate: float
    is_default_input: bool = False
    is_default_output: bool = False

    @property
    def is_input(self) -> bool:
        return self.max_input_channels > 0

    @property
    def is_output(self) -> bool:
        return self.max_output_channels > 0


@dataclass(frozen=True)
class DefaultDevices:
    input: AudioDevice | None
    output: AudioDevice | None


def refresh_devices() -> None:
    """Re-enumerate devices. PortAudio lists devices once, at initialisation (import of sounddevice), so a
    PulseAudio started or an environment (PULSE_SERVER, XDG_RUNTIME_DIR) changed later is only seen after
    this. Never call it while streams are open: PortAudio closes them."""
    sd = _sd()
    sd._terminate()
    sd._initialize()


def audio_available() -> bool:
    """True when PortAudio lists at least one device (cheap; use it to pick the file-backed fallback)."""
    try:
        return len(_sd().query_devices()) > 0
    except AudioDeviceError:
        return False


def _default_indices(sd) -> tuple[int, int]:
    d_in, d_out = sd.default.device
    apis = sd.query_hostapis()
    if d_in is None or d_in < 0:
        d_in = next((a["default_input_device"] for a in apis if a["default_input_device"] >= 0), -1)
    if d_out is None or d_out < 0:
        d_out = next((a["default_output_device"] for a in apis if a["default_output_device"] >= 0), -1)
    return int(d_in), int(d_out)


def list_devices(kind: str | None = None) -> list[AudioDevice]:
    """All PortAudio devices (``kind``: None, "input" or "output"). Raises AudioDeviceError when none exist."""
    if kind not in (None, "input", "output"):
        raise ValueError("kind must be None, 'input' or 'output'")
    sd = _sd()
    raw = sd.query_devices()
    if len(raw) == 0:
        raise AudioDeviceError(NO_DEVICES_MSG)
    apis = sd.query_hostapis()
    d_in, d_out = _default_indices(sd)
    devs = [AudioDevice(index=int(d["index"]), name=str(d["name"]), hostapi=str(apis[d["hostapi"]]["name"]),
                        max_input_channels=int(d["max_input_channels"]),
                        max_output_channels=int(d["max_output_channels"]),
                        default_samplerate=float(d["default_samplerate"]),
                        is_default_input=int(d["index"]) == d_in, is_default_output=int(d["index"]) == d_out)
            for d in raw]
    if kind == "input":
        devs = [d for d in devs if d.is_input]
    elif kind == "output":
        devs = [d for d in devs if d.is_output]
    return devs


def default_devices() -> DefaultDevices:
    """The default input and output device (either may be None). Raises AudioDeviceError when none exist."""
    devs = list_devices()
    return DefaultDevices(input=next((d for d in devs if d.is_default_input and d.is_input), None),
                          output=next((d for d in devs if d.is_default_output and d.is_output), None))


def find_device(device: int | str | None, kind: str) -> AudioDevice:
    """Resolve ``device`` (index, exact name or unique substring of a name, None = default) for ``kind``."""
    devs = list_devices()
    ok = [d for d in devs if (d.is_input if kind == "input" else d.is_output)]
    if device is None:
        for d in ok:
            if d.is_default_input if kind == "input" else d.is_default_output:
                return d
        if ok:
            return ok[0]
    elif isinstance(device, int):
        for d in ok:
            if d.index == device:
                return d
    else:
        exact = [d for d in ok if d.name == device]
        if len(exact) == 1:
            return exact[0]
        sub = [d for d in ok if device.lower() in d.name.lower()]
        if len(sub) == 1:
            return sub[0]
        if len(sub) > 1:
            raise AudioDeviceError(f"{kind} device {device!r} is ambiguous: {[d.name for d in sub]}")
    names = ", ".join(f"{d.index}: {d.name}" for d in ok) or "none"
    raise AudioDeviceError(f"no {kind} device {device!r} (available {kind} devices: {names})")


_env_lock = threading.Lock()


@contextlib.contextmanager
def _scoped_env(name: str, value: str | None) -> Iterator[None]:
    """Set an environment variable while a stream opens (the ALSA pulse plugin reads PULSE_SOURCE /
    PULSE_SINK when it creates its PulseAudio context, i.e. at open time)."""
    if value is None:
        yield
        return
    with _env_lock:
        old = os.environ.get(name)
        os.environ[name] = value
        try:
            yield
        finally:
            if old is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = old


def _level_db(x: np.ndarray) -> tuple[float, float]:
    if x.size == 0:
        return _LEVEL_FLOOR_DB, _LEVEL_FLOOR_DB
    x64 = x.astype(np.float64, copy=False)
    rms = math.sqrt(float(np.mean(x64 * x64)))
    peak = float(np.max(np.abs(x64)))
    to_db = lambda v: max(_LEVEL_FLOOR_DB, 20.0 * math.log10(v)) if v > 0 else _LEVEL_FLOOR_DB
    return to_db(rms), to_db(peak)


def _resampler(rate_in: float, rate_out: float, quality: str) -> soxr.ResampleStream | None:
    if rate_in == rate_out:
        return None
    return soxr.ResampleStream(rate_in, rate_out, 1, dtype="float32", quality=quality)


# ---------------------------------------------------------------------------------------------------------
# Interfaces
# ---------------------------------------------------------------------------------------------------------

@runtime_checkable
class AudioSource(Protocol):
    sample_rate: int  # always CODEC_RATE

    def read_chunk(self, timeout: float | None = None) -> np.ndarray | None: ...
    @property
    def level_dbfs(self) -> tuple[float, float]: ...
    @property
    def overflows(self) -> int: ...
    @property
    def finished(self) -> bool: ...
    def close(self) -> None: ...


@runtime_checkable
class AudioSink(Protocol):
    input_rate: int

    def write_chunk(self, x: np.ndarray) -> int: ...
    @property
    def buffered_ms(self) -> float: ...
    @property
    def underruns(self) -> int: ...
    gain: float

    def close(self) -> None: ...


class _Closable:
    _closed = False

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    @property
    def closed(self) -> bool:
        return self._closed

    def close(self) -> None:  # pragma: no cover - overridden
        self._closed = True


# ---------------------------------------------------------------------------------------------------------
# Stream timing
# ---------------------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class DeviceTiming:
    """How :class:`MicSource` and :class:`SpeakerSink` open their PortAudio streams: the callback block
    (``*_block_ms``) and the buffer PortAudio is asked for (``*_latency``: ``"low"``, ``"high"`` or seconds).
    Whoever opens the devices for a call passes ``source_options()`` / ``sink_options()`` on; the call presets
    carry one (``CallConfig.device_timing``).

    What they cost and buy (PulseAudio through the ALSA ``pulse`` plugin at 16/24 kHz; measured with the
    private PulseAudio of scripts/start_pulse.sh on a 2-core machine busy with training, see
    scripts/bench_latency.py):

    * **Output buffer**: the callback keeps PortAudio's buffer full, so all of it is delay: ``"high"`` (40 ms
      with 10 ms blocks) puts ~50 ms between the sink's ring and what the speaker plays, 20 ms in 5 ms blocks
      ~20 ms, 10 ms in 5 ms blocks ~15 ms (as the stream's DAC times say, :attr:`SpeakerSink.output_delay_ms`).
      What it buys is time for the callback thread: PortAudio underflows when the callback (a Python
      function: it needs the GIL) runs later than the buffer lasts, and through the pulse plugin that
      leaves the audio queued behind the gap late for the rest of the stream (+26 ms seen with 20 ms in two
      10 ms blocks), out of the reach of the session's queue guard. In full calls on the loaded machine
      (scripts/bench_latency.py, 6 calls of ~25 s each): 10 ms in 5 ms blocks underflowed 13 times, 15 ms 3
      times (3 calls), 20 ms in 5 ms blocks and the 40 ms default never.
    * **Output block**: the granularity of the callback; smaller blocks let a small buffer hold more of them.
    * **Input buffer and block**: neither adds delay at the codec rate (the 80 ms chunk is 8 or 16 whole
      blocks, so it is complete when the block holding its last sample arrives); what a chunk waits beyond
      its own 80 ms is the audio server's delivery (a few ms, set when the stream opens). The buffer is head
      room for a late callback before input overflows.

    The default is the robust one (a 40 ms output buffer); :data:`LOW_LATENCY_TIMING` (20 ms in 5 ms blocks,
    ~30 ms less delay) is the tightest that did not underflow in those measurements.
    """

    input_block_ms: float = 10.0
    input_latency: str | float = "low"
    output_block_ms: float = 10.0
    output_latency: str | float = "high"

    def __post_init__(self) -> None:
        for name in ("input_block_ms", "output_block_ms"):
            v = getattr(self, name)
            if not (isinstance(v, (int, float)) and 0.5 <= v <= 100.0):
                raise ValueError(f"{name} must be in [0.5, 100] ms, got {v!r}")
        for name in ("input_latency", "output_latency"):
            v = getattr(self, name)
            if isinstance(v, str) and v in ("low", "high"):
                continue
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not 0.0 < v <= 1.0:
                raise ValueError(f"{name} must be 'low', 'high' or seconds in (0, 1], got {v!r}")

    def source_options(self) -> dict[str, str | float]:
        """Keyword arguments for :class:`MicSource`."""
        return {"blocksize_ms": self.input_block_ms, "latency": self.input_latency}

    def sink_options(self) -> dict[str, str | float]:
        """Keyword arguments for :class:`SpeakerSink`."""
        return {"blocksize_ms": self.output_block_ms, "latency": self.output_latency}


#: The robust default: 10 ms blocks, PortAudio's "high" output buffer (~40 ms through ALSA pulse).
ROBUST_TIMING = DeviceTiming()
#: The low-latency preset's: a 20 ms output buffer in 5 ms blocks (~30 ms less delay than the default).
LOW_LATENCY_TIMING = DeviceTiming(output_block_ms=5.0, output_latency=0.020)


# ---------------------------------------------------------------------------------------------------------
# Microphone
# ---------------------------------------------------------------------------------------------------------

class _ChunkAssembler:
    """Consumer-side: device-rate blocks -> streaming resample -> exact CHUNK-sample pieces."""

    def __init__(self, rate_in: float, quality: str):
        self.rs = _resampler(rate_in, CODEC_RATE, quality)
        self.pending = np.zeros(0, dtype=np.float32)

    def push(self, x: np.ndarray, last: bool = False) -> None:
        if self.rs is not None:
            x = self.rs.resample_chunk(x, last=last)
        if x.size:
            self.pending = np.concatenate([self.pending, x.astype(np.float32, copy=False)])

    def pop(self) -> np.ndarray | None:
        if self.pending.size < CHUNK:
            return None
        out = self.pending[:CHUNK].copy()
        self.pending = self.pending[CHUNK:]
        return out

    def clear(self) -> None:
        self.pending = np.zeros(0, dtype=np.float32)
        if self.rs is not None:
            self.rs.clear()


def _abort_and_close(stream) -> None:
    """Stop a PortAudio stream at once and close it; errors from a dead device are ignored."""
    if stream is not None:
        with contextlib.suppress(Exception):
            stream.abort(ignore_errors=True)
        with contextlib.suppress(Exception):
            stream.close(ignore_errors=True)


class MicSource(_Closable):
    """Microphone capture: ``sd.InputStream`` -> RingBuffer -> (consumer) resample -> 80 ms chunks at 16 kHz.

    ``device``: PortAudio index / name (substring) / None for the default input. ``samplerate``: stream rate;
    None = the device's default rate (44.1 kHz for ALSA ``pulse``), 16000 = no resampling at all.
    ``pulse_source``: PulseAudio source name (e.g. ``"vmic_a"``) for the ALSA pulse plugin. The stream opens
    and starts in the constructor; ``close()`` (or the ``with`` block) stops it.
    """

    sample_rate = CODEC_RATE

    def __init__(self, device: int | str | None = None, samplerate: float | None = None, *,
                 pulse_source: str | None = None, blocksize_ms: float = 10.0, buffer_seconds: float = 2.0,
                 channels: int = 1, latency: str | float = "low", quality: str = "HQ"):
        sd = _sd()
        dev = find_device(device, "input")
        self.device = dev
        self.device_rate = float(samplerate or dev.default_samplerate)
        self.channels = int(channels)
        self.blocksize = max(1, round(self.device_rate * blocksize_ms / 1000.0))
        self._rb = RingBuffer(max(int(self.device_rate * buffer_seconds), 4 * self.blocksize), self.channels)
        self._scratch = np.empty((self._rb.capacity, self.channels), dtype=np.float32)
        self._asm = _ChunkAssembler(self.device_rate, quality)
        self._data_ready = threading.Event()
        self._status_overflows = 0
        self._last_level = (_LEVEL_FLOOR_DB, _LEVEL_FLOOR_DB)
        self.chunks_read = 0
        self._lock = threading.Lock()  # consumer-side + close; never taken by the callback
        self._stream = None
        try:
            with _scoped_env("PULSE_SOURCE", pulse_source):
                self._stream = sd.InputStream(device=dev.index, samplerate=self.device_rate,
                                              blocksize=self.blocksize, channels=self.channels,
                                              dtype="float32", latency=latency, callback=self._callback)
                self._stream.start()
        except (sd.PortAudioError, ValueError) as exc:
            self._close_stream()
            self._closed = True
            raise AudioDeviceError(f"cannot open input {dev.name!r} at {self.device_rate:g} Hz: {exc}") from None

    # PortAudio thread: copy only.
    def _callback(self, indata, frames, time_info, status) -> None:
        if status.input_overflow:
            self._status_overflows += 1
        self._rb.write(indata)
        self._data_ready.set()

    def _drain_ring(self) -> None:
        n = self._rb.available
        if n <= 0:
            return
        got = self._rb.read_into(self._scratch[:n])
        block = self._scratch[:got]
        mono = block[:, 0] if self.channels == 1 else block.mean(axis=1, dtype=np.float32)
        self._asm.push(np.ascontiguousarray(mono))

    def read_chunk(self, timeout: float | None = None) -> np.ndarray | None:
        """Next 80 ms chunk ((1280,) float32 at 16 kHz), or None when none is complete within ``timeout``
        seconds (None = wait as long as the stream runs). Raises AudioDeviceError if the stream has died."""
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._lock:
            while True:
                if self._closed:
                    return None
                self._data_ready.clear()
                self._drain_ring()
                chunk = self._asm.pop()
                if chunk is not None:
                    self.chunks_read += 1
                    self._last_level = _level_db(chunk)
                    return chunk
                if self._stream is None or not self._stream.active:
                    raise AudioDeviceError(f"input stream on {self.device.name!r} stopped")
                wait = 0.1 if deadline is None else min(0.1, deadline - time.monotonic())
                if wait <= 0:
                    return None
                self._data_ready.wait(wait)

    def chunks(self, timeout: float | None = 1.0) -> Iterator[np.ndarray]:
        """Iterate over chunks until the source is closed or a read times out."""
        while (c := self.read_chunk(timeout)) is not None:
            yield c

    def flush(self) -> int:
        """Drop buffered audio (e.g. after un-muting); returns device-rate frames dropped."""
        with self._lock:
            n = self._rb.clear()
            self._asm.clear()
            return n

    @property
    def level_dbfs(self) -> tuple[float, float]:
        """(RMS, peak) of the last chunk returned, in dBFS (floor -120)."""
        return self._last_level

    @property
    def overflows(self) -> int:
        """Input overflows: PortAudio-reported plus ring-buffer overruns (consumer too slow)."""
        return self._status_overflows + self._rb.overflows

    @property
    def dropped_frames(self) -> int:
        return self._rb.overflow_samples

    @property
    def buffered_ms(self) -> float:
        return 1000.0 * (self._rb.available / self.device_rate + self._asm.pending.size / CODEC_RATE)

    @property
    def stream_latency_ms(self) -> float:
        return 1000.0 * float(self._stream.latency) if self._stream is not None else 0.0

    @property
    def finished(self) -> bool:
        return self._closed

    def _close_stream(self) -> None:
        stream, self._stream = self._stream, None
        _abort_and_close(stream)

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self._data_ready.set()
        with self._lock:
            self._close_stream()


# ---------------------------------------------------------------------------------------------------------
# Speakers
# ---------------------------------------------------------------------------------------------------------

class SpeakerSink(_Closable):
    """Playback: ``write_chunk(x)`` (24 kHz) -> resample to the device rate in the caller's thread ->
    RingBuffer -> ``sd.OutputStream`` callback (copy out; silence when starved).

    ``samplerate``: stream rate, None = device default (44.1 kHz for ALSA ``pulse``); equal to
    ``input_rate`` = no resampling. ``pulse_sink``: PulseAudio sink name (e.g. ``"spk_a"``).
    ``prebuffer_ms``: after start and after every underrun, stay silent until this much audio is buffered
    (0 = play as soon as anything is there). Chunks arrive 80 ms at a time, so a real jitter cushion needs
    ``prebuffer_ms`` > 80, e.g. 100-120. ``gain``: linear output volume, applied in ``write_chunk`` (a change
    is heard after what is already buffered). ``latency`` and ``blocksize_ms``: PortAudio's output buffer and
    callback block (see :class:`DeviceTiming`): ``"high"`` (~40 ms with ALSA pulse, 10 ms blocks) by default,
    the robust choice; every ms of it is delay. "low" in 10 ms blocks (20 ms) underruns at 44.1/48 kHz through
    the pulse plugin and was seen to underflow at 24 kHz under load; 20 ms in 5 ms blocks
    (:data:`LOW_LATENCY_TIMING`) did not. The constructor returns once ``settle_ms`` of silence has
    been played (audio handed over right at stream start is occasionally lost).

    :attr:`output_delay_ms` is what the stream itself says about its delay: from the DAC time PortAudio gives
    each callback (for ALSA pulse: the PulseAudio stream's latency, the sink's own included), so it follows
    the real buffer rather than the nominal ``stream_latency_ms``.
    """

    def __init__(self, device: int | str | None = None, samplerate: float | None = None, *,
                 pulse_sink: str | None = None, input_rate: int = DECODER_RATE, blocksize_ms: float = 10.0,
                 buffer_seconds: float = 2.0, prebuffer_ms: float = 0.0, gain: float = 1.0,
                 channels: int = 1, latency: str | float = "high", quality: str = "HQ", settle_ms: float = 100.0):
        sd = _sd()
        dev = find_device(device, "output")
        self.device = dev
        self.input_rate = int(input_rate)
        self.device_rate = float(samplerate or dev.default_samplerate)
        self.channels = int(channels)
        self.blocksize = max(1, round(self.device_rate * blocksize_ms / 1000.0))
        self.gain = float(gain)
        self._rb = RingBuffer(max(int(self.device_rate * buffer_seconds), 4 * self.blocksize))
        self._rs = _resampler(self.input_rate, self.device_rate, quality)
        self._prebuffer = int(self.device_rate * prebuffer_ms / 1000.0)
        self._priming = True
        self._starved = False
        self._underruns = 0
        self.underrun_frames = 0
        self._status_underflows = 0
        self._clear_request = False
        self._skip_to = 0  # trim(): the callback drops queued frames up to this ring position
        self.trims = 0  # trims done by the callback (each dropped some queued audio)
        self.trimmed_frames = 0
        self.frames_out = 0  # frames handed to PortAudio (silence included)
        self._dac_s = math.nan  # DAC time - callback time of the last callback's first frame (PortAudio's figure)
        self._wlock = threading.Lock()
        self._stream = None
        try:
            with _scoped_env("PULSE_SINK", pulse_sink):
                self._stream = sd.OutputStream(device=dev.index, samplerate=self.device_rate,
                                               blocksize=self.blocksize, channels=self.channels,
                                               dtype="float32", latency=latency, callback=self._callback)
                self._stream.start()
        except (sd.PortAudioError, ValueError) as exc:
            self._close_stream()
            self._closed = True
            raise AudioDeviceError(f"cannot open output {dev.name!r} at {self.device_rate:g} Hz: {exc}") from None
        # Let the stream settle: with the ALSA pulse plugin, audio handed over in the first few callbacks after
        # start is occasionally lost (~2 ms seen). Wait until settle_ms of silence has gone out (max 1 s).
        settle = self.device_rate * settle_ms / 1000.0 + self.device_rate * self.stream_latency_ms / 1000.0
        deadline = time.monotonic() + 1.0
        while self.frames_out < settle and time.monotonic() < deadline and self._stream.active:
            time.sleep(0.005)

    # PortAudio thread: copy only.
    def _callback(self, outdata, frames, time_info, status) -> None:
        if status.output_underflow:
            self._status_underflows += 1
        self.frames_out += frames
        self._dac_s = time_info.outputBufferDacTime - time_info.currentTime
        rb = self._rb
        if self._clear_request:
            rb.clear()
            self._clear_request = False
            self._priming = True
        if self._skip_to > rb.total_read:  # trim(): drop the oldest queued frames (a counter compare, a move)
            n = rb.skip(self._skip_to - rb.total_read)
            if n:
                self.trims += 1
                self.trimmed_frames += n
        out = outdata[:, 0]
        if self._priming:
            avail = rb.available
            if avail == 0 or avail < self._prebuffer:
                outdata.fill(0.0)
                return
            self._priming = False
        n = rb.read_into(out[:min(frames, rb.available)])
        if n < frames:
            out[n:] = 0.0
            self.underrun_frames += frames - n
            if not self._starved:
                self._underruns += 1
                self._starved = True
            if self._prebuffer > 0:
                self._priming = True
        else:
            self._starved = False
        if self.channels > 1:
            outdata[:, 1:] = outdata[:, :1]

    def write_chunk(self, x: np.ndarray) -> int:
        """Queue decoded audio (mono, ``input_rate``); returns device-rate frames queued (overflow drops the rest)."""
        if self._closed:
            return 0
        x = np.asarray(x, dtype=np.float32).reshape(-1)
        if self.gain != 1.0:
            x = x * np.float32(self.gain)
        with self._wlock:
            y = x if self._rs is None else self._rs.resample_chunk(x)
            return self._rb.write(y)

    def clear(self) -> None:
        """Drop everything queued (done by the callback, the ring's consumer, on its next run)."""
        self._clear_request = True

    def trim(self, keep_ms: float) -> float:
        """Drop the oldest queued audio so that only the newest ``keep_ms`` of what is queued *now* stays (done
        by the callback, the ring's consumer, on its next run; what the callback plays before then counts as
        dropped, audio written after this call is never dropped). Returns the ms requested to be dropped (0:
        nothing over ``keep_ms``). What PortAudio and the audio server already hold is out of reach. For a
        writer that knows what is queued is silence or comfort noise: the cut is not smoothed."""
        keep_ms = float(keep_ms)
        if not keep_ms >= 0.0:  # also NaN
            raise ValueError(f"keep_ms must be >= 0, got {keep_ms!r}")
        with self._wlock:
            target = self._rb.total_written - int(round(keep_ms * self.device_rate / 1000.0))
            excess = target - self._rb.total_read
            if excess <= 0:
                return 0.0
            self._skip_to = max(self._skip_to, target)
        return 1000.0 * excess / self.device_rate

    def drain(self, timeout: float = 5.0) -> bool:
        """Wait until everything queued has been handed to PortAudio (not counting its own latency)."""
        deadline = time.monotonic() + timeout
        while self._rb.available > 0 and not self._closed:
            if self._stream is None or not self._stream.active or time.monotonic() >= deadline:
                return False
            time.sleep(0.005)
        return True

    @property
    def buffered_ms(self) -> float:
        """Audio queued in the ring buffer (ms), i.e. latency added by this sink on top of the device's."""
        return 1000.0 * self._rb.available / self.device_rate

    @property
    def stream_latency_ms(self) -> float:
        """Output latency PortAudio reports for the open stream (ms)."""
        return 1000.0 * float(self._stream.latency) if self._stream is not None else 0.0

    @property
    def output_delay_ms(self) -> float:
        """How long audio handed to PortAudio now takes to be played (ms): the last callback's DAC time less its
        current time, as the host API reports it (for ALSA pulse it includes PulseAudio's buffer and the sink's
        own latency); ``stream_latency_ms`` when the host API gives no usable DAC time. Add ``buffered_ms``
        for audio written to this sink now."""
        d = self._dac_s
        if self._stream is None or not 0.0 < d < 2.0:  # NaN (no callback yet), 0 or garbage: not reported
            return self.stream_latency_ms
        return 1000.0 * d

    @property
    def latency_ms(self) -> float:
        return self.buffered_ms + self.output_delay_ms

    @property
    def underruns(self) -> int:
        """Times playback ran dry after audio had started (each starvation episode counts once)."""
        return self._underruns

    @property
    def overflows(self) -> int:
        return self._rb.overflows

    @property
    def status_underflows(self) -> int:
        """Output underflows reported by PortAudio itself."""
        return self._status_underflows

    def _close_stream(self) -> None:
        stream, self._stream = self._stream, None
        _abort_and_close(stream)

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        with self._wlock:
            self._close_stream()


# ---------------------------------------------------------------------------------------------------------
# File-backed stand-ins
# ---------------------------------------------------------------------------------------------------------

class FileMicSource(_Closable):
    """A "microphone" that plays a file: any format/rate/channel count libsndfile reads, mixed to mono and
    resampled (streaming soxr) to 16 kHz, delivered as exact 80 ms chunks (the last one zero-padded).

    ``realtime=True`` paces chunks like a capture device: chunk i is ready at open time + (i+1) * 80 ms
    (a late reader catches up at once, as with a buffered mic); ``realtime=False`` returns them as fast as
    asked. ``loop=True`` repeats the file forever. After the end, ``read_chunk`` returns None and
    ``finished`` is True. ``clock``/``sleep`` are injectable for tests.
    """

    sample_rate = CODEC_RATE

    def __init__(self, path: str | Path, realtime: bool = True, *, loop: bool = False, block_seconds: float = 0.5,
                 quality: str = "HQ", clock: Callable[[], float] = time.monotonic,
                 sleep: Callable[[float], None] = time.sleep):
        self.path = Path(path)
        try:
            self._f = sf.SoundFile(str(self.path))
        except Exception as exc:  # libsndfile error, missing file
            raise AudioDeviceError(f"{self.path}: cannot open audio file ({exc})") from None
        self.realtime = realtime
        self.loop = loop
        self.file_rate = int(self._f.samplerate)
        self._block = max(1, int(self.file_rate * block_seconds))
        self._asm = _ChunkAssembler(self.file_rate, quality)
        self._eof = False
        self._finished = False
        self._clock, self._sleep = clock, sleep
        self._t0 = clock()
        self.chunks_read = 0
        self._last_level = (_LEVEL_FLOOR_DB, _LEVEL_FLOOR_DB)

    def _fill(self) -> None:
        while self._asm.pending.size < CHUNK and not self._eof:
            data = self._f.read(self._block, dtype="float32", always_2d=True)
            if data.shape[0] == 0:
                if self.loop and self._f.frames > 0:
                    self._f.seek(0)
                    continue
                self._asm.push(np.zeros(0, dtype=np.float32), last=True)
                self._eof = True
                break
            last = data.shape[0] < self._block and not self.loop
            mono = data[:, 0] if data.shape[1] == 1 else data.mean(axis=1, dtype=np.float32)
            self._asm.push(np.ascontiguousarray(mono, dtype=np.float32), last=last)
            if last:
                self._eof = True

    def read_chunk(self, timeout: float | None = None) -> np.ndarray | None:
        if self._closed or self._finished:
            return None
        if self.realtime:
            due = self._t0 + (self.chunks_read + 1) * CHUNK_SECONDS
            wait = due - self._clock()
            if wait > 0:
                if timeout is not None and wait > timeout:
                    self._sleep(max(0.0, timeout))
                    return None
                self._sleep(wait)
        self._fill()
        chunk = self._asm.pop()
        if chunk is None:
            rest = self._asm.pending
            if rest.size == 0:
                self._finished = True
                return None
            chunk = np.zeros(CHUNK, dtype=np.float32)
            chunk[:rest.size] = rest
            self._asm.pending = np.zeros(0, dtype=np.float32)
        self.chunks_read += 1
        self._last_level = _level_db(chunk)
        return chunk

    def chunks(self, timeout: float | None = None) -> Iterator[np.ndarray]:
        while (c := self.read_chunk(timeout)) is not None:
            yield c

    def flush(self) -> int:
        return 0

    @property
    def level_dbfs(self) -> tuple[float, float]:
        return self._last_level

    @property
    def overflows(self) -> int:
        return 0

    @property
    def buffered_ms(self) -> float:
        return 0.0

    @property
    def finished(self) -> bool:
        return self._finished or self._closed

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self._f.close()


class FileSpeakerSink(_Closable):
    """A "speaker" that records: decoded audio (``input_rate``, 24 kHz) is resampled to ``rate`` and written
    to a sound file (WAV by default, 32-bit float unless ``subtype`` says otherwise). Data is streamed to
    disk as it arrives; the file is complete once ``close()`` has run."""

    def __init__(self, path: str | Path, rate: int = DECODER_RATE, *, input_rate: int = DECODER_RATE,
                 subtype: str = "FLOAT", gain: float = 1.0, quality: str = "HQ"):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.rate = int(rate)
        self.input_rate = int(input_rate)
        self.gain = float(gain)
        self._rs = _resampler(self.input_rate, self.rate, quality)
        self._f = sf.SoundFile(str(self.path), "w", self.rate, 1, subtype=subtype)
        self.frames_written = 0
        self._lock = threading.Lock()

    def write_chunk(self, x: np.ndarray) -> int:
        if self._closed:
            return 0
        x = np.asarray(x, dtype=np.float32).reshape(-1)
        if self.gain != 1.0:
            x = x * np.float32(self.gain)
        with self._lock:
            y = x if self._rs is None else self._rs.resample_chunk(x)
            if y.size:
                self._f.write(y)
                self.frames_written += y.size
            return int(y.size)

    @property
    def buffered_ms(self) -> float:
        return 0.0

    @property
    def underruns(self) -> int:
        return 0

    def drain(self, timeout: float = 0.0) -> bool:
        return True

    def close(self) -> None:
        with self._lock:
            if self._closed:
                return
            self._closed = True
            if self._rs is not None:
                tail = self._rs.resample_chunk(np.zeros(0, dtype=np.float32), last=True)
                if tail.size:
                    self._f.write(tail)
                    self.frames_written += tail.size
            self._f.close()


class NullSpeakerSink(_Closable):
    """Discards audio (counts it). For headless runs and benchmarks."""

    def __init__(self, input_rate: int = DECODER_RATE, gain: float = 1.0):
        self.input_rate = int(input_rate)
        self.gain = float(gain)
        self.frames_written = 0

    def write_chunk(self, x: np.ndarray) -> int:
        if self._closed:
            return 0
        n = int(np.asarray(x).size)
        self.frames_written += n
        return n

    @property
    def buffered_ms(self) -> float:
        return 0.0

    @property
    def underruns(self) -> int:
        return 0

    def drain(self, timeout: float = 0.0) -> bool:
        return True

    def close(self) -> None:
        self._closed = True
