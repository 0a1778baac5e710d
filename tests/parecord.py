"""``parecord`` of one PulseAudio source with every read of its pipe timestamped: the one recorder that the test
fixture (tests/pulse_fixture.py) and scripts/bench_latency.py share. No pytest here (the benchmark imports it).

Placing a recording on the monotonic clock. Every read of the pipe at monotonic time t holding samples up to n
gives ``T0 <= t - n / rate`` (a sample cannot arrive before it was rendered); the lower envelope, the minimum over
all reads (:attr:`Recorder.t0`, or over the reads of a time window, :meth:`Recorder.t0_between`), is T0 plus
the smallest delivery delay (a fraction of a ms). What "rendered" means for the monitor of a null sink: the sink
renders (mixes) up to its latency (``pactl list sinks``: "configured N usec", the smallest latency any of its
clients asked for) *ahead* of the moment it plays the audio on its own clock, and the monitor hands the audio
out when it is rendered. So, on a monitor, ``T0 + n / rate`` is the time sample n was *played* less the sink's
configured latency: PulseAudio itself reports a monitor recording's latency as negative (``parecord -v``).
scripts/bench_latency.py adds that back to place what a speaker plays (see its docstring).
"""

from __future__ import annotations

import math
import subprocess
import threading
import time

import numpy as np


def stop_process(proc: subprocess.Popen, reader: threading.Thread | None = None, timeout: float = 5.0) -> None:
    """Stop a child process that writes into a pipe read by ``reader``: SIGTERM, then SIGKILL after ``timeout``;
    join the reader (bounded) and close the pipe. Safe to call on a process that has already exited."""
    if proc.poll() is None:
        proc.terminate()
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(timeout=timeout)
    if reader is not None:
        reader.join(timeout=timeout)
    if proc.stdout is not None:
        proc.stdout.close()


class Recorder:
    """A running ``parecord`` on one source (float32 mono at ``rate``); ``stop()`` returns what it captured.

    ``t_start`` is when parecord was started; its first sample comes later (process start, connection: a second
    or more on a loaded machine). ``marks`` holds ``(monotonic time of a read, samples received so far)``;
    :attr:`t0` / :meth:`t0_between` place the recording on the monotonic clock (see the module docstring).
    ``latency_msec`` is parecord's fragment size: how often the server hands data over (it also asks the source
    for that latency, which for a monitor can lower its sink's render-ahead only if it is the smallest ask)."""

    def __init__(self, env: dict[str, str], source: str, rate: int, max_seconds: float = 60.0,
                 latency_msec: int = 10) -> None:
        self.source = source
        self.rate = int(rate)
        self._max_bytes = int(max_seconds * rate) * 4
        self._chunks: list[bytes] = []
        self._n = 0
        self.marks: list[tuple[float, int]] = []
        self.t_start = time.monotonic()
        self._proc = subprocess.Popen(
            ["parecord", f"--device={source}", "--raw", "--format=float32le", f"--rate={self.rate}", "--channels=1",
             f"--latency-msec={int(latency_msec)}"],
            env=env, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, stdin=subprocess.DEVNULL)
        self._thread = threading.Thread(target=self._pump, name=f"parecord-{source}", daemon=True)
        self._thread.start()

    def _pump(self) -> None:
        out = self._proc.stdout
        assert out is not None
        while self._n < self._max_bytes:
            b = out.read1(65536)
            t = time.monotonic()
            if not b:
                break
            self._chunks.append(b)
            self._n += len(b)
            self.marks.append((t, self._n // 4))

    @property
    def seconds(self) -> float:
        return self._n / 4 / self.rate

    def t0_between(self, t_lo: float = -math.inf, t_hi: float = math.inf) -> float:
        """Monotonic time of sample 0 from the reads made between ``t_lo`` and ``t_hi`` (all reads if none fall
        there); ``t_start`` until data has arrived. A window matters when the source's render-ahead changed
        during the recording (a client that asks for another latency connected): the envelope over all reads
        follows the largest one."""
        marks = list(self.marks)
        inside = [(t, n) for t, n in marks if t_lo <= t <= t_hi] or marks
        if not inside:
            return self.t_start
        return min(t - n / self.rate for t, n in inside)

    @property
    def t0(self) -> float:
        """Monotonic time of sample 0, from all reads (see the module docstring)."""
        return self.t0_between()

    def wait_for(self, seconds: float, timeout: float) -> None:
        """Block until ``seconds`` of audio have been captured (or ``timeout`` wall seconds passed)."""
        deadline = time.monotonic() + timeout
        while self.seconds < seconds and time.monotonic() < deadline and self._thread.is_alive():
            time.sleep(0.01)

    def stop(self) -> np.ndarray:
        """Stop parecord (bounded) and return the samples (float32 mono)."""
        stop_process(self._proc, self._thread)
        raw = b"".join(self._chunks)
        return np.frombuffer(raw[: len(raw) // 4 * 4], dtype="<f4").astype(np.float32)
