"""Session-scoped private PulseAudio for tests (scripts/start_pulse.sh / stop_pulse.sh).

tests/conftest.py registers this module (``pytest_plugins``), so every test can just ask for ``pulse``:
one server for the whole session. Do not import the fixture into test modules (that starts one per module).

While the fixture is alive, ``PULSE_SERVER``, ``XDG_RUNTIME_DIR`` and ``PULSE_COOKIE`` in ``os.environ``
point at the private server and PortAudio has been re-initialised, so ``sounddevice`` lists the ALSA
``pulse``/``default`` devices (the change lasts until the end of the test session).
Per peer ``p`` ("a", "b"): ``vmic_p`` (virtual mic, fed through the ``micfeed_p`` sink) and ``spk_p``
(speakers; recorded through ``spk_p.monitor``). Skips only when the pulseaudio binary is missing; any
other start-up failure is an error.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from tests.parecord import Recorder

__all__ = ["PulseServer", "Recorder", "pulse"]

REPO = Path(__file__).resolve().parent.parent
START = REPO / "scripts" / "start_pulse.sh"
STOP = REPO / "scripts" / "stop_pulse.sh"


def _refresh_portaudio() -> None:
    try:
        import sounddevice as sd
    except OSError:  # no PortAudio: the audio tests will say so themselves
        return
    sd._terminate()
    sd._initialize()


class PulseServer:
    """Handle on the running private server (what the ``pulse`` fixture yields)."""

    def __init__(self, runtime_dir: Path, server: str, mic_rate: int, spk_rate: int, peers: tuple[str, ...]):
        self.runtime_dir = runtime_dir
        self.server = server
        self.mic_rate = mic_rate
        self.spk_rate = spk_rate
        self.peers = peers
        # environment for client tools (private HOME so nothing lands in the real one)
        self.env = {**os.environ, "PULSE_SERVER": server, "XDG_RUNTIME_DIR": str(runtime_dir),
                    "HOME": str(runtime_dir / "home"), "PULSE_COOKIE": str(runtime_dir / "home/.config/pulse/cookie")}
        for k in ("PULSE_SINK", "PULSE_SOURCE"):
            self.env.pop(k, None)

    @staticmethod
    def mic_source(peer: str) -> str:
        return f"vmic_{peer}"

    @staticmethod
    def speaker_sink(peer: str) -> str:
        return f"spk_{peer}"

    @staticmethod
    def mic_feed(peer: str) -> str:
        return f"micfeed_{peer}"

    def pactl(self, *args: str) -> str:
        return subprocess.run(["pactl", *args], env=self.env, check=True, capture_output=True, text=True,
                              timeout=10).stdout

    def play_into_mic(self, peer: str, wav_path: str | Path, *, wait: bool = True,
                      latency_msec: int | None = None) -> subprocess.Popen | None:
        """Play a sound file into peer's virtual mic (``paplay --device=micfeed_<peer>``). With
        ``wait=False`` returns the running process (the caller waits on it); it exits once the server has
        played the whole file.

        ``latency_msec`` (paplay's buffer in the server) defaults to the whole file: paplay hands the file over
        at once and the server plays it on its own clock, so a paplay process that does not get the CPU for a
        while (a loaded machine) cannot underrun. With a short buffer (paplay's 20 ms, say) it can, and the
        server then plays silence until data comes: a gap *inside* the speech, which shifts everything after
        it (seen as a capture that correlates at 0.4 with the file, or lacks its last samples)."""
        if latency_msec is None:
            latency_msec = int(1000 * sf.info(str(wav_path)).duration) + 500
        proc = subprocess.Popen(
            ["paplay", f"--device={self.mic_feed(peer)}", f"--latency-msec={latency_msec}", str(wav_path)],
            env=self.env, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        if not wait:
            return proc
        _, err = proc.communicate(timeout=120)
        if proc.returncode != 0:
            raise RuntimeError(f"paplay failed ({proc.returncode}): {err.decode(errors='replace')}")
        return None

    def start_recording(self, source: str, rate: int | None = None, max_seconds: float = 60.0) -> Recorder:
        """Start ``parecord`` on any source (e.g. ``"spk_a.monitor"``); ``.stop()`` returns the samples."""
        return Recorder(self.env, source, rate or self.spk_rate, max_seconds)

    def record_speaker(self, peer: str, seconds: float) -> np.ndarray:
        """Record ``seconds`` of what peer's speakers play (``spk_<peer>.monitor``), at ``spk_rate``."""
        rec = self.start_recording(f"{self.speaker_sink(peer)}.monitor", self.spk_rate, max_seconds=seconds)
        rec.wait_for(seconds, timeout=seconds + 5.0)
        return rec.stop()[: int(seconds * self.spk_rate)]


def _parse_exports(stdout: str) -> dict[str, str]:
    env: dict[str, str] = {}
    for line in stdout.splitlines():
        if line.startswith("export "):
            for item in line[len("export "):].split():
                k, _, v = item.partition("=")
                env[k] = v
    return env


@pytest.fixture(scope="session")
def pulse() -> Iterator[PulseServer]:
    missing = [t for t in ("pulseaudio", "pactl", "paplay", "parecord", "pacat") if shutil.which(t) is None]
    if "pulseaudio" in missing:
        pytest.skip("pulseaudio binary not found: apt-get install pulseaudio pulseaudio-utils libasound2-plugins")
    if missing:
        raise RuntimeError(f"pulseaudio is installed but {missing} are missing: apt-get install pulseaudio-utils")
    # short path on purpose: the unix socket path must stay under 108 bytes
    run = Path(tempfile.mkdtemp(prefix="fc-pa-", dir="/tmp" if os.path.isdir("/tmp") else None))
    mic_rate, spk_rate, peers = 16000, 24000, ("a", "b")
    env = {**os.environ, "AUDIO_RUNTIME_DIR": str(run), "MIC_RATE": str(mic_rate), "SPK_RATE": str(spk_rate),
           "AUDIO_PEERS": " ".join(peers)}
    proc = subprocess.run(["bash", str(START)], env=env, capture_output=True, text=True, timeout=60)
    if proc.returncode != 0:
        subprocess.run(["bash", str(STOP), str(run)], capture_output=True, timeout=30)
        shutil.rmtree(run, ignore_errors=True)
        raise RuntimeError(f"start_pulse.sh failed ({proc.returncode}):\n{proc.stderr}")
    exports = _parse_exports(proc.stdout)
    server = PulseServer(run, exports["PULSE_SERVER"], mic_rate, spk_rate, peers)

    saved = {k: os.environ.get(k)
             for k in ("PULSE_SERVER", "XDG_RUNTIME_DIR", "PULSE_COOKIE", "PULSE_SINK", "PULSE_SOURCE")}
    for k in ("PULSE_SERVER", "XDG_RUNTIME_DIR", "PULSE_COOKIE"):  # PULSE_COOKIE: keep ~/.config/pulse untouched
        os.environ[k] = exports[k]
    os.environ.pop("PULSE_SINK", None)
    os.environ.pop("PULSE_SOURCE", None)
    _refresh_portaudio()  # PortAudio enumerates devices only at initialisation
    try:
        yield server
    finally:
        subprocess.run(["bash", str(STOP), str(run)], capture_output=True, timeout=30)
        # Re-enumerate while the environment still names the (now dead) private server: PortAudio ends up
        # with an empty device list. Doing it after restoring the environment would make libpulse look for
        # the user's default server and create ~/.config/pulse and /tmp/pulse-* when there is none.
        _refresh_portaudio()
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
        shutil.rmtree(run, ignore_errors=True)
