"""The GUI's side of a call: a QObject that drives one :class:`app.session.CallSession` at a time.

* Everything that can block (opening audio devices, ICE gathering in ``create_offer_code``, waiting for a
  peer in ``host``, ``stop``) runs in worker threads (:func:`app.gui.workers.run_task`); results come back
  as signals on the GUI thread.
* :class:`SessionBridge` turns the session's thread-safe event queue into Qt signals (a QTimer drains it
  every 50 ms on the GUI thread) and polls :meth:`CallSession.stats` (a snapshot that never waits for the
  network) four times a second.
* Talk controls, volume, the voice threshold and recording use the session's own methods (``set_muted``,
  ``set_transmit_mode``, ``set_ptt``, ``set_vad_threshold``, ``set_output_volume``; ``start_recording`` /
  ``stop_recording`` record a part of the call straight to its own ``.fcr``, mid-call). Session builds without
  the talk controls or the level fields get the same behaviour from the wrappers in :mod:`app.gui.taps`.

No widgets here: the main window connects the signals to its panels.
"""

from __future__ import annotations

import contextlib
import logging
import queue
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from PySide6.QtCore import QObject, QTimer, Signal

from app.gui import devices
from app.gui.settings import Settings
from app.gui.taps import GatedSource, MeteredSink
from app.gui.workers import Task, run_task

log = logging.getLogger(__name__)

#: What the user reads for the session's error kinds (``app.session.Error.kind``).
ERROR_TEXT = {
    "ice-failed": "No network path to the peer (ICE failed). If you are behind a NAT or a firewall, add a STUN "
                  "server in Settings → Network, or a TURN relay when both sides are behind strict NATs.",
    "connect-timeout": "The peer did not connect in time. Check that the latest codes were pasted on both sides "
                       "(or that host:port is reachable), then try again.",
    "connection-lost": "The connection to the peer was lost.",
    "handshake-timeout": "Connected, but the other side never answered the FocalChat handshake (another program, "
                         "or an incompatible FocalChat version).",
    "audio-input": "The microphone stopped working.",
    "audio-output": "The speakers stopped working.",
}

END_TEXT = {
    "hangup": "Call ended.",
    "peer-hangup": "The peer hung up.",
    "peer-lost": "Lost the peer: nothing was received for several seconds.",
    "refused": "The call was refused.",
    "connect-failed": "Could not connect.",
    "handshake-timeout": "The handshake did not complete.",
    "error": "The call stopped because of an error.",
}


def describe_error(kind: str, message: str) -> str:
    base = ERROR_TEXT.get(kind)
    if base is None:
        return message
    return f"{base} ({message})" if message else base


def describe_refusal(by: str, reason: str) -> str:
    if by == "us":
        return f"Call refused: the peer's codec does not match yours ({reason}). Both sides must use the same model."
    return f"The peer refused the call: {reason}. Both sides must use the same model."


def parse_address(text: str, *, listen: bool) -> tuple[str, int]:
    """``[HOST:]PORT`` (listen) or ``HOST:PORT`` (connect) → (host, port); ValueError with a readable message."""
    text = text.strip()
    host, sep, port = text.rpartition(":")
    if not sep:
        if not listen:
            raise ValueError(f"give HOST:PORT, not {text!r}")
        host, port = "0.0.0.0", text
    host = host.strip("[]") or "0.0.0.0"
    try:
        p = int(port)
    except ValueError:
        raise ValueError(f"bad port in {text!r}") from None
    if not 0 <= p <= 65535 or (not listen and p == 0):
        raise ValueError(f"bad port in {text!r}")
    return host, p


def call_config(settings: Settings, record_path: Path | None, name: str = "gui") -> Any:
    from app.session import CallConfig

    make = {"default": CallConfig, "low-latency": CallConfig.low_latency,
            "low-bandwidth": CallConfig.low_bandwidth}.get(settings.preset, CallConfig)
    extra: dict[str, Any] = {}
    fields = getattr(CallConfig, "__dataclass_fields__", {})
    if "transmit_mode" in fields:
        extra["transmit_mode"] = settings.transmit_mode
    if "output_volume" in fields:
        extra["output_volume"] = float(settings.output_volume)
    if "vad_threshold_dbfs" in fields:
        extra["vad_threshold_dbfs"] = float(settings.vad_threshold_dbfs)
    return make(ice_servers=settings.ice_servers(), local_only=settings.local_only, nickname=settings.nickname,
                connect_timeout_s=float(settings.connect_timeout_s), record_path=record_path, name=name, **extra)


class SessionBridge(QObject):
    """Session events → Qt signals, and periodic stats (GUI thread only)."""

    state_changed = Signal(str, str, str)  # layer, state, detail
    handshake_ok = Signal(object)  # app.session.HandshakeOk
    refused = Signal(str, str)  # by, reason
    peer_lost = Signal(str)
    text_received = Signal(str, str)  # nickname, text
    error = Signal(str, str)  # kind, message
    source_ended = Signal()
    ended = Signal(str, str)  # reason, message
    stats = Signal(object)  # app.session.CallStats

    def __init__(self, session: Any, parent: QObject | None = None, *, event_ms: int = 50, stats_ms: int = 250):
        super().__init__(parent)
        self.session = session
        self._done = False
        self._timer = QTimer(self)
        self._timer.setInterval(event_ms)
        self._timer.timeout.connect(self.poll)
        self._stats_timer = QTimer(self)
        self._stats_timer.setInterval(stats_ms)
        self._stats_timer.timeout.connect(self.poll_stats)
        self._timer.start()
        self._stats_timer.start()

    def poll(self) -> None:
        from app import session as s

        for _ in range(200):
            try:
                ev = self.session.events.get_nowait()
            except queue.Empty:
                return
            if isinstance(ev, s.StateChanged):
                self.state_changed.emit(ev.layer, ev.state, ev.detail)
            elif isinstance(ev, s.HandshakeOk):
                self.handshake_ok.emit(ev)
            elif isinstance(ev, s.HandshakeRefused):
                self.refused.emit(ev.by, ev.reason)
            elif isinstance(ev, s.PeerLost):
                self.peer_lost.emit(ev.reason)
            elif isinstance(ev, s.TextReceived):
                self.text_received.emit(ev.nickname, ev.text)
            elif isinstance(ev, s.Error):
                self.error.emit(ev.kind, ev.message)
            elif isinstance(ev, s.SourceEnded):
                self.source_ended.emit()
            elif isinstance(ev, s.CallEnded):
                self.poll_stats()
                self.stop()
                self.ended.emit(ev.reason, ev.message)
                return

    def poll_stats(self) -> None:
        if self.session.in_call:
            try:
                self.stats.emit(self.session.stats())
            except Exception:  # noqa: BLE001 - a stats hiccup must not take the window down
                log.debug("stats failed", exc_info=True)

    def stop(self) -> None:
        self._done = True
        self._timer.stop()
        self._stats_timer.stop()


AudioFactory = Callable[[Settings], tuple[Any, Any]]


def open_devices(settings: Settings) -> tuple[Any, Any]:
    """The default audio factory: the devices chosen in the settings, opened as the call preset wants them
    (``CallConfig.device_timing``; raises AudioDeviceError)."""
    timing = getattr(call_config(settings, None), "device_timing", None)
    source = devices.open_source(settings.input_device, timing=timing)
    try:
        sink = devices.open_sink(settings.output_device, gain=1.0, timing=timing)
    except BaseException:
        source.close()
        raise
    return source, sink


class CallController(QObject):
    """One call at a time; see the module docstring. ``phase``: idle → preparing → connecting → in-call →
    ending → idle."""

    phase_changed = Signal(str)
    offer_ready = Signal(str)
    answer_ready = Signal(str)
    listening = Signal(str, int)
    failed = Signal(str)  # an action failed (bad code, device, address): the message is for the user
    # from the session
    state_changed = Signal(str, str, str)
    handshake_ok = Signal(object)
    refused = Signal(str, str)
    peer_lost = Signal(str)
    text_received = Signal(str, str)
    session_error = Signal(str, str)
    stats = Signal(object)
    call_ended = Signal(str, str)  # reason, message (after the devices were closed)
    recording_saved = Signal(str)
    _session_ready = Signal(object)  # worker -> GUI thread: attach the bridge at once

    def __init__(self, settings: Settings, audio_factory: AudioFactory | None = None,
                 parent: QObject | None = None) -> None:
        super().__init__(parent)
        self.settings = settings
        self.audio_factory = audio_factory or open_devices
        self.model: Any = None
        self.session: Any = None
        self.bridge: SessionBridge | None = None
        self.source: Any = None
        self.sink: Any = None
        self.gate: GatedSource | None = None
        self.meter: MeteredSink | None = None
        self.phase = "idle"
        self.offerer = False
        self.peer_info: Any = None
        self.task: Task | None = None
        self._recording_to: Path | None = None
        self.ptt_pressed = False
        self.muted = False
        self._session_ready.connect(self._attach)

    # ------------------------------------------------------------------ state
    def _set_phase(self, phase: str) -> None:
        if phase != self.phase:
            self.phase = phase
            self.phase_changed.emit(phase)

    @property
    def busy(self) -> bool:
        return self.phase != "idle"

    @property
    def in_call(self) -> bool:
        return self.phase == "in-call"

    def set_model(self, model: Any) -> None:
        self.model = model

    # ------------------------------------------------------------------ starting a call
    def _prepare(self, name: str) -> Any:
        """Worker thread: open the audio, build and start the session (returned)."""
        from app.session import CallSession

        if self.model is None:
            raise RuntimeError("no model is loaded yet")
        source, sink = self.audio_factory(self.settings)
        try:
            probe = CallSession.__dict__
            if "set_transmit_mode" not in probe or "set_muted" not in probe:
                source = GatedSource(source)
            if "output_level_dbfs" not in getattr(__import__("app.session", fromlist=["CallStats"]).CallStats,
                                                  "__dataclass_fields__", {}):
                sink = MeteredSink(sink)
            cfg = call_config(self.settings, None, name=name)  # the record button: session.start_recording
            session = CallSession(self.model, source, sink, cfg)
            session.start()
        except BaseException:
            for d in (source, sink):
                with contextlib.suppress(Exception):
                    d.close()
            raise
        self.source, self.sink = source, sink
        self.gate = source if isinstance(source, GatedSource) else None
        self.meter = sink if isinstance(sink, MeteredSink) else None
        self.session = session
        self._apply_talk_controls()
        self._session_ready.emit(session)
        return session

    def _attach(self, session: Any) -> None:
        """GUI thread: start listening to the session."""
        if self.bridge is not None and self.bridge.session is session:
            return
        b = SessionBridge(session, self)
        b.state_changed.connect(self._on_state)
        b.handshake_ok.connect(self._on_handshake)
        b.refused.connect(self.refused)
        b.peer_lost.connect(self.peer_lost)
        b.text_received.connect(self.text_received)
        b.error.connect(self.session_error)
        b.stats.connect(self.stats)
        b.ended.connect(self._on_ended)
        self.bridge = b

    def _run(self, name: str, fn: Callable[[], Any], on_done: Callable[[Any], None]) -> None:
        def failed(exc: BaseException) -> None:
            self.failed.emit(self._message(exc))
            if self.session is not None and self.session.ended is False and self.phase != "in-call":
                self.hang_up()
            elif self.session is None:
                self._set_phase("idle")

        def done(result: Any) -> None:
            if self.session is not None:
                self._attach(self.session)
            on_done(result)

        self.task = run_task(fn, name=name, on_done=done, on_failed=failed)

    @staticmethod
    def _message(exc: BaseException) -> str:
        name = type(exc).__name__
        text = str(exc) or name
        if name == "AudioDeviceError":
            return f"Audio device problem: {text}. Pick other devices in the Audio panel."
        if name == "SignalingError":
            return text[0].upper() + text[1:] if text else text
        if name in ("TransportError", "TimeoutError"):
            return f"Could not connect: {text}"
        return text

    def _start(self, name: str, op: Callable[[Any], Any], on_done: Callable[[Any], None], offerer: bool) -> bool:
        if self.busy:
            self.failed.emit("A call is already in progress: hang up first.")
            return False
        self.offerer = offerer
        self.peer_info = None
        self._set_phase("preparing")

        def work() -> Any:
            session = self._prepare(name)
            return op(session)

        self._run(name, work, on_done)
        return True

    def create_offer(self) -> bool:
        """Copy-paste mode, caller: ``offer_ready(code)`` follows."""
        def done(code: str) -> None:
            self._set_phase("connecting")
            self.offer_ready.emit(code)
        return self._start("offer", lambda s: s.create_offer_code(), done, True)

    def accept_offer(self, code: str) -> bool:
        """Copy-paste mode, callee: ``answer_ready(code)`` follows."""
        from app.signaling import SignalingError, decode_code

        try:
            decode_code(code, expect="offer")
        except SignalingError as exc:
            self.failed.emit(self._message(exc))
            return False

        def done(answer: str) -> None:
            self._set_phase("connecting")
            self.answer_ready.emit(answer)
        return self._start("answer", lambda s: s.accept_offer_code(code), done, False)

    def accept_answer(self, code: str) -> bool:
        """Copy-paste mode, caller: the peer's answer code; connecting starts."""
        from app.signaling import SignalingError, decode_code

        if self.session is None or not self.offerer or self.phase != "connecting":
            self.failed.emit("Create an offer code first, then paste the peer's answer code.")
            return False
        try:
            decode_code(code, expect="answer")
        except SignalingError as exc:
            self.failed.emit(self._message(exc))
            return False
        session = self.session
        self._run("accept-answer", lambda: session.accept_answer_code(code), lambda _: None)
        return True

    def host(self, address: str, wait_s: float = 300.0) -> bool:
        """Direct mode: listen on ``[HOST:]PORT`` for one peer (``listening(host, port)`` once bound)."""
        try:
            host, port = parse_address(address, listen=True)
        except ValueError as exc:
            self.failed.emit(str(exc))
            return False

        def op(session: Any) -> None:
            session.host(host, port, timeout=wait_s, on_listening=lambda p: self.listening.emit(host, int(p)))

        return self._start("host", op, lambda _: None, False)

    def connect_to(self, address: str) -> bool:
        """Direct mode: call a peer that listens on ``HOST:PORT``."""
        try:
            host, port = parse_address(address, listen=False)
        except ValueError as exc:
            self.failed.emit(str(exc))
            return False
        timeout = float(self.settings.connect_timeout_s)
        return self._start("connect", lambda s: s.connect(host, port, timeout=timeout), lambda _: None, True)

    # ------------------------------------------------------------------ during the call
    def _on_state(self, layer: str, state: str, detail: str) -> None:
        if layer == "call" and state in ("connecting", "handshake") and self.phase == "preparing":
            self._set_phase("connecting")
        if layer == "call" and state == "in-call":
            self._set_phase("in-call")
        self.state_changed.emit(layer, state, detail)

    def _on_handshake(self, ev: Any) -> None:
        self.peer_info = ev
        self._set_phase("in-call")
        self.handshake_ok.emit(ev)

    def send_text(self, text: str) -> bool:
        if self.session is None or not self.in_call:
            self.failed.emit("Chat works during a call.")
            return False
        try:
            self.session.send_text(text)
        except (ValueError, RuntimeError) as exc:
            self.failed.emit(f"Message not sent: {exc}")
            return False
        return True

    def _apply_talk_controls(self) -> None:
        s = self.session
        st = self.settings
        if s is None:
            return
        if hasattr(s, "set_transmit_mode"):
            with contextlib.suppress(Exception):
                s.set_transmit_mode(st.transmit_mode)
            with contextlib.suppress(Exception):
                s.set_muted(self.muted)
            with contextlib.suppress(Exception):
                s.set_ptt(self.ptt_pressed)
        if self.gate is not None:
            self.gate.mode = st.transmit_mode
            self.gate.muted = self.muted
            self.gate.ptt = self.ptt_pressed
            self.gate.vad_threshold_dbfs = st.vad_threshold_dbfs
        self.set_output_volume(st.output_volume)

    def set_muted(self, muted: bool) -> None:
        self.muted = bool(muted)
        if self.session is not None and hasattr(self.session, "set_muted"):
            self.session.set_muted(self.muted)
        if self.gate is not None:
            self.gate.muted = self.muted

    def set_transmit_mode(self, mode: str) -> None:
        self.settings.transmit_mode = mode
        if self.session is not None and hasattr(self.session, "set_transmit_mode"):
            self.session.set_transmit_mode(mode)
        if self.gate is not None:
            self.gate.mode = mode

    def set_ptt(self, pressed: bool) -> None:
        self.ptt_pressed = bool(pressed)
        if self.session is not None and hasattr(self.session, "set_ptt"):
            self.session.set_ptt(self.ptt_pressed)
        if self.gate is not None:
            self.gate.ptt = self.ptt_pressed

    def set_vad_threshold(self, dbfs: float) -> None:
        """Stored for the next calls and applied to the call in progress at once."""
        self.settings.vad_threshold_dbfs = float(dbfs)
        if self.session is not None:
            self.session.set_vad_threshold(float(dbfs))
        if self.gate is not None:
            self.gate.vad_threshold_dbfs = float(dbfs)

    def set_output_volume(self, gain: float) -> None:
        gain = min(2.0, max(0.0, float(gain)))
        self.settings.output_volume = gain
        if self.session is not None and hasattr(self.session, "set_output_volume"):
            self.session.set_output_volume(gain)
        elif self.sink is not None and hasattr(self.sink, "gain"):
            inner = getattr(self.sink, "_inner", self.sink)
            inner.gain = gain

    def levels(self, st: Any) -> tuple[float, float, bool | None, bool | None]:
        """(input dBFS, output dBFS, voice active, transmitting) from a stats snapshot or the wrappers."""
        lin = getattr(st, "input_level_dbfs", None)
        if lin is None:
            lin = self.gate.input_level_dbfs if self.gate is not None else getattr(st, "mic_level_dbfs", -120.0)
        lout = getattr(st, "output_level_dbfs", None)
        if lout is None:
            lout = self.meter.output_level_dbfs if self.meter is not None else -120.0
        vad = getattr(st, "vad_active", None)
        tx = getattr(st, "transmitting", None)
        if self.gate is not None:
            vad, tx = self.gate.vad_active, self.gate.transmitting
        return float(lin), float(lout), vad, tx

    # ------------------------------------------------------------------ recording
    @property
    def recording(self) -> bool:
        return self._recording_to is not None

    def start_recording(self) -> Path | None:
        if self.session is None or not self.in_call or self.recording:
            return None
        d = self.settings.recordings_path()
        d.mkdir(parents=True, exist_ok=True)
        peer = (getattr(self.peer_info, "peer_nickname", "") or "peer").replace("/", "_")[:32]
        path = d / f"call-{time.strftime('%Y%m%d-%H%M%S')}-{peer}.fcr"
        try:
            self.session.start_recording(path)
        except (OSError, RuntimeError) as exc:
            self.failed.emit(f"The recording could not be started: {exc}")
            return None
        self._recording_to = path
        return path

    def stop_recording(self) -> Path | None:
        path, self._recording_to = self._recording_to, None
        if path is None:
            return None
        try:
            if self.session is not None:
                self.session.stop_recording()
        except Exception as exc:  # noqa: BLE001
            self.failed.emit(f"The recording could not be saved: {exc}")
            return None
        self.recording_saved.emit(str(path))
        return path

    # ------------------------------------------------------------------ ending
    def hang_up(self) -> None:
        if self.session is None:
            if self.task is not None and self.task.running:
                self.task.cancel()
            self._set_phase("idle")
            return
        if self.recording:
            self.stop_recording()
        self._set_phase("ending")
        session = self.session
        if self.bridge is None:
            self._attach(session)
        run_task(session.stop, name="hang-up")

    def _on_ended(self, reason: str, message: str) -> None:
        if self.recording:
            self.stop_recording()
        self._set_phase("ending")
        session, source, sink = self.session, self.source, self.sink

        def cleanup() -> None:
            with contextlib.suppress(Exception):
                session.stop()
            for d in (source, sink):
                with contextlib.suppress(Exception):
                    d.close()

        def finished(_: Any = None) -> None:
            self.session = self.source = self.sink = self.gate = self.meter = None
            self.bridge = None
            self._set_phase("idle")
            self.call_ended.emit(reason, message)

        run_task(cleanup, name="cleanup", on_done=finished, on_failed=finished)

    def shutdown(self, timeout: float = 10.0) -> None:
        """Blocking: end any call and close the devices (used when the window closes)."""
        if self.recording:
            self.stop_recording()
        if self.task is not None and self.task.running:
            self.task.cancel()
        s = self.session
        if s is not None:
            with contextlib.suppress(Exception):
                s.stop(timeout=timeout)
        for d in (self.source, self.sink):
            if d is not None:
                with contextlib.suppress(Exception):
                    d.close()
        if self.bridge is not None:
            self.bridge.stop()
        self.session = self.source = self.sink = None
