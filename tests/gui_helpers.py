"""Shared pieces of the GUI tests: offscreen Qt, a window factory with file-backed audio, a headless peer."""

from __future__ import annotations

import os
import queue
import time
from typing import Any

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")
os.environ.setdefault("PYQTGRAPH_QT_LIB", "PySide6")

from app.modelref import SPEECH_SAMPLE  # noqa: E402


def file_audio(settings) -> tuple[Any, Any]:
    """Audio factory for tests: the bundled clip as the microphone (looped), a sink that discards."""
    from app.audio_io import FileMicSource, NullSpeakerSink

    return FileMicSource(SPEECH_SAMPLE, realtime=False, loop=True), NullSpeakerSink()


def make_window(qtbot, tmp_path, model=None, *, autoload: bool = False, audio_factory=file_audio, **settings_kw):
    from app.gui.main_window import MainWindow
    from app.gui.settings import Settings

    kw = dict(recordings_dir=str(tmp_path / "recordings"), local_only=True, nickname="gui")
    kw.update(settings_kw)
    s = Settings(**kw)
    w = MainWindow(s, tmp_path / "settings.json", audio_factory=audio_factory, autoload=autoload)
    qtbot.addWidget(w)
    w.show()
    if model is not None:
        w.controller.set_model(model)
        w.demo.set_model(model)
        w.recordings.set_model(model)
    return w


def headless_peer(model, nickname: str = "peer", **cfg):
    """A CallSession on file audio (the other end of a GUI call)."""
    from app.audio_io import FileMicSource, NullSpeakerSink
    from app.session import CallConfig, CallSession

    source = FileMicSource(SPEECH_SAMPLE, realtime=False, loop=True)
    sink = NullSpeakerSink()
    config = CallConfig(name="peer", nickname=nickname, local_only=True, **cfg)
    return CallSession(model, source, sink, config), source, sink


def drain(session, kind, timeout: float = 10.0):
    """Wait for the next event of ``kind`` from a headless session (other events are dropped)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            ev = session.events.get(timeout=0.05)
        except queue.Empty:
            continue
        if isinstance(ev, kind):
            return ev
    raise AssertionError(f"no {kind.__name__} within {timeout} s")


class FakeSession:
    """Stands in for CallSession where a test injects events (ICE failure, a lost peer) or checks calls."""

    def __init__(self) -> None:
        self.events: queue.Queue = queue.Queue()
        self.in_call = False
        self.ended = False
        self.calls: list[tuple[str, Any]] = []

    def stats(self):  # pragma: no cover - only polled while in_call
        raise RuntimeError("no stats")

    def stop(self, *a, **k) -> None:
        self.calls.append(("stop", None))

    def set_muted(self, v) -> None:
        self.calls.append(("set_muted", v))

    def set_transmit_mode(self, v) -> None:
        self.calls.append(("set_transmit_mode", v))

    def set_ptt(self, v) -> None:
        self.calls.append(("set_ptt", v))

    def set_output_volume(self, v) -> None:
        self.calls.append(("set_output_volume", v))

    def set_vad_threshold(self, v) -> None:
        self.calls.append(("set_vad_threshold", v))
