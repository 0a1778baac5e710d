"""Audio devices for the GUI: what to list in the device boxes, and opening the chosen one.

Debian's PortAudio reaches PulseAudio only through the ALSA ``pulse`` device, so the individual PulseAudio
sources and sinks are listed with ``pactl`` and opened through that device with ``pulse_source=`` /
``pulse_sink=`` (:class:`app.audio_io.MicSource` / :class:`app.audio_io.SpeakerSink`). A device is stored
in the settings as a key: ``""`` (the system default), ``"pulse:NAME"`` or ``"pa:NAME"`` (a PortAudio device).
Monitor sources (what a sink plays) are never offered as microphones.

No Qt here. Listing runs ``pactl`` (a few ms); opening a device can take up to ~1 s (the speaker settles),
so the GUI opens devices in worker threads only.
"""

from __future__ import annotations

import json
import logging
import shutil
import subprocess
from dataclasses import dataclass

import numpy as np

log = logging.getLogger(__name__)

CODEC_IN_RATE = 16000
CODEC_OUT_RATE = 24000


@dataclass(frozen=True)
class DeviceChoice:
    key: str  # "" | "pulse:NAME" | "pa:NAME"
    label: str


DEFAULT_CHOICE_LABEL = "System default"


def describe_key(key: str) -> str:
    if not key:
        return DEFAULT_CHOICE_LABEL
    kind, _, name = key.partition(":")
    return {"pulse": f"PulseAudio {name}", "pa": name, "file": f"file {name}"}.get(kind, key)


def _pactl_list(kind: str) -> list[dict]:
    """``pactl --format=json list sources|sinks`` (PulseAudio >= 16), else the short listing."""
    if shutil.which("pactl") is None:
        return []
    try:
        out = subprocess.run(["pactl", "--format=json", "list", kind], capture_output=True, text=True, timeout=3)
        if out.returncode == 0 and out.stdout.strip().startswith("["):
            return [d for d in json.loads(out.stdout) if isinstance(d, dict)]
        out = subprocess.run(["pactl", "list", "short", kind], capture_output=True, text=True, timeout=3)
    except (OSError, subprocess.SubprocessError, ValueError):
        return []
    if out.returncode != 0:
        return []
    items = []
    for line in out.stdout.splitlines():
        parts = line.split("\t")
        if len(parts) >= 2:
            items.append({"name": parts[1], "description": parts[1]})
    return items


def list_choices(kind: str) -> list[DeviceChoice]:
    """Choices for ``kind`` ("input" or "output"): the default first, then PulseAudio, then PortAudio."""
    choices = [DeviceChoice("", DEFAULT_CHOICE_LABEL)]
    for d in _pactl_list("sources" if kind == "input" else "sinks"):
        name = str(d.get("name", ""))
        if not name or (kind == "input" and (name.endswith(".monitor") or
                                             d.get("properties", {}).get("device.class") == "monitor")):
            continue
        desc = str(d.get("description") or name)
        choices.append(DeviceChoice(f"pulse:{name}", f"{desc} (PulseAudio {name})" if desc != name else
                                    f"PulseAudio {name}"))
    try:
        from app.audio_io import list_devices

        for dev in list_devices(kind):
            if dev.name in ("default",):
                continue
            choices.append(DeviceChoice(f"pa:{dev.name}", f"{dev.name} ({dev.hostapi})"))
    except Exception as exc:  # noqa: BLE001 - no PortAudio / no devices: the default entry stays
        log.debug("no PortAudio devices: %s", exc)
    return choices


def _split(key: str) -> tuple[str | None, str | None]:
    """(PortAudio device, PulseAudio name) of a key."""
    if key.startswith("pulse:"):
        return None, key[len("pulse:"):]
    if key.startswith("pa:"):
        return key[len("pa:"):], None
    return None, None


def _at_rate(open_device, rate: int):
    try:
        return open_device(rate)
    except Exception as exc:  # noqa: BLE001 - PortAudio reports an unsupported rate in several ways
        log.info("device refused %d Hz (%s); using its default rate", rate, exc)
        return open_device(None)


def open_source(key: str, timing=None):
    """A :class:`app.audio_io.MicSource` for a device key (at 16 kHz when the device accepts it), opened with
    ``timing`` (an :class:`app.audio_io.DeviceTiming`, e.g. the call preset's; None: the default);
    ``"file:PATH"`` sends a sound file instead (paced by the call's 80 ms clock)."""
    from app.audio_io import FileMicSource, MicSource

    if key.startswith("file:"):
        return FileMicSource(key[len("file:"):], realtime=False)
    device, pulse = _split(key)
    opts = timing.source_options() if timing is not None else {}
    return _at_rate(lambda sr: MicSource(device, sr, pulse_source=pulse, **opts), CODEC_IN_RATE)


def open_sink(key: str, gain: float = 1.0, input_rate: int = CODEC_OUT_RATE, timing=None):
    """A :class:`app.audio_io.SpeakerSink` for a device key (at the input rate when the device accepts it),
    opened with ``timing`` (as :func:`open_source`); ``"file:PATH"`` writes a WAV instead, ``"null"``
    discards the audio."""
    from app.audio_io import FileSpeakerSink, NullSpeakerSink, SpeakerSink

    if key.startswith("file:"):
        return FileSpeakerSink(key[len("file:"):], input_rate=input_rate, rate=input_rate, gain=gain)
    if key == "null":
        return NullSpeakerSink(input_rate=input_rate, gain=gain)
    device, pulse = _split(key)
    opts = timing.sink_options() if timing is not None else {}
    return _at_rate(lambda sr: SpeakerSink(device, sr, pulse_sink=pulse, input_rate=input_rate, gain=gain,
                                           prebuffer_ms=0.0, **opts), input_rate)


def record(key: str, seconds: float, stop=None) -> np.ndarray:
    """Record ``seconds`` from an input device at 16 kHz (for the device test and the codec demo)."""
    from app.audio_io import CHUNK_SECONDS, AudioDeviceError

    n = max(1, int(round(seconds / CHUNK_SECONDS)))
    out = []
    with open_source(key) as mic:
        mic.flush()
        for _ in range(n):
            if stop is not None and stop():
                break
            c = mic.read_chunk(timeout=2.0)
            if c is None:
                raise AudioDeviceError("the microphone delivered no audio for 2 s")
            out.append(c)
    return np.concatenate(out) if out else np.zeros(0, np.float32)


def play(key: str, audio: np.ndarray, rate: int, gain: float = 1.0, stop=None) -> None:
    """Play ``audio`` (mono float32 at ``rate``) on an output device and wait until it has been played."""
    import time

    sink = open_sink(key, gain=gain, input_rate=rate)
    try:
        step = max(1, rate // 20)  # 50 ms blocks, paced a little ahead of the device
        t0 = time.monotonic()
        for i in range(0, len(audio), step):
            if stop is not None and stop():
                return
            due = t0 + i / rate - 0.2
            wait = due - time.monotonic()
            if wait > 0:
                time.sleep(wait)
            sink.write_chunk(np.ascontiguousarray(audio[i:i + step], dtype=np.float32))
        sink.drain(timeout=len(audio) / rate + 2.0)
        time.sleep(min(0.5, sink.stream_latency_ms / 1000.0 + 0.05))  # the device's own buffer
    finally:
        sink.close()
