"""The main window: model bar, then tabs (Call, Audio, Codec demo, Recordings); menus and shortcuts; the
push-to-talk key; settings saved on close."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from PySide6.QtCore import QByteArray, QEvent, QObject, Qt
from PySide6.QtGui import QAction, QCloseEvent, QIcon, QKeySequence
from PySide6.QtWidgets import (
    QApplication,
    QLabel,
    QMainWindow,
    QMessageBox,
    QSplitter,
    QTabWidget,
    QVBoxLayout,
    QWidget,
)

from app.gui.audio_panel import AudioPanel
from app.gui.call_panel import CallPanel
from app.gui.chat_panel import ChatPanel
from app.gui.controller import AudioFactory, CallController
from app.gui.demo_panel import DemoPanel
from app.gui.model_bar import ModelBar
from app.gui.model_loader import ModelInfo
from app.gui.recordings_panel import RecordingsPanel
from app.gui.settings import Settings, save_settings
from app.gui.settings_dialog import SettingsDialog
from app.gui.stats_panel import StatsPanel
from app.gui.talk_panel import TalkPanel
from app.gui.widgets import Banner

log = logging.getLogger(__name__)

ICON = Path(__file__).resolve().parent.parent.parent / "packaging" / "focalchat.svg"


class PttFilter(QObject):
    """Application-wide: holding the push-to-talk key talks (ignores auto-repeat; only while the window is
    active and the transmit mode is push-to-talk)."""

    def __init__(self, window: MainWindow) -> None:
        super().__init__(window)
        self.window = window

    def eventFilter(self, obj: QObject, ev: QEvent) -> bool:  # noqa: N802 - Qt API
        t = ev.type()
        if t in (QEvent.KeyPress, QEvent.KeyRelease) and not ev.isAutoRepeat():
            w = self.window
            if w.controller.settings.transmit_mode == "ptt" and w.isActiveWindow() and w.ptt_matches(ev):
                w.talk.set_ptt(t == QEvent.KeyPress)
                return True
        return False


class MainWindow(QMainWindow):
    def __init__(self, settings: Settings, config_path: str | Path | None = None, *,
                 audio_factory: AudioFactory | None = None, autoload: bool = True) -> None:
        super().__init__()
        self.settings = settings
        self.config_path = config_path
        self.setWindowTitle("FocalChat")
        if ICON.exists():
            self.setWindowIcon(QIcon(str(ICON)))
        self.setAccessibleName("FocalChat")
        self.controller = CallController(settings, audio_factory, self)

        central = QWidget()
        outer = QVBoxLayout(central)
        outer.setContentsMargins(8, 6, 8, 4)
        self.model_bar = ModelBar(settings)
        outer.addWidget(self.model_bar)
        self.banner = Banner("Application message")
        outer.addWidget(self.banner)

        self.tabs = QTabWidget()
        self.tabs.setAccessibleName("Sections")
        outer.addWidget(self.tabs, 1)

        # Call tab
        self.call_panel = CallPanel(self.controller)
        self.talk = TalkPanel(self.controller)
        self.stats_panel = StatsPanel()
        self.chat = ChatPanel(self.controller)
        left = QWidget()
        ll = QVBoxLayout(left)
        ll.setContentsMargins(0, 0, 0, 0)
        ll.addWidget(self.call_panel)
        ll.addWidget(self.talk)
        ll.addStretch(1)
        right = QSplitter(Qt.Vertical)
        right.addWidget(self.stats_panel)
        right.addWidget(self.chat)
        right.setStretchFactor(0, 3)
        right.setStretchFactor(1, 1)
        split = QSplitter(Qt.Horizontal)
        split.addWidget(left)
        split.addWidget(right)
        split.setStretchFactor(0, 0)
        split.setStretchFactor(1, 1)
        split.setCollapsible(0, False)
        left.setMinimumWidth(470)
        left.setMaximumWidth(640)
        self.split = split
        self.tabs.addTab(split, "&Call")

        self.audio = AudioPanel(settings)
        audio_tab = QWidget()
        al = QVBoxLayout(audio_tab)
        al.addWidget(self.audio)
        al.addStretch(1)
        self.tabs.addTab(audio_tab, "&Audio")
        self.demo = DemoPanel(settings)
        self.tabs.addTab(self.demo, "Codec &demo")
        self.recordings = RecordingsPanel(settings)
        self.tabs.addTab(self.recordings, "Reco&rdings")
        self.setCentralWidget(central)

        self.status_phase = QLabel("Idle")
        self.status_phase.setAccessibleName("Call phase")
        self.statusBar().addWidget(self.status_phase, 1)
        self.status_model = QLabel("no model")
        self.status_model.setAccessibleName("Loaded model")
        self.statusBar().addPermanentWidget(self.status_model)

        self._menus()
        self.model_bar.loaded.connect(self._model_loaded)
        self.model_bar.failed.connect(self._model_failed)
        self.model_bar.loading.connect(self._model_loading)
        c = self.controller
        c.phase_changed.connect(self._on_phase)
        c.stats.connect(self.stats_panel.add)
        c.handshake_ok.connect(lambda ev: self.stats_panel.reset())
        c.recording_saved.connect(self._recording_saved)
        self.ptt_filter = PttFilter(self)
        QApplication.instance().installEventFilter(self.ptt_filter)

        if settings.problems:
            self.banner.show_message("\n".join(settings.problems), "warning")
        if settings.window_geometry:
            self.restoreGeometry(QByteArray.fromBase64(settings.window_geometry.encode()))
        else:
            self.resize(1280, 820)
        self.split.setSizes([560, max(400, self.width() - 560)])
        self.tabs.setCurrentIndex(min(max(0, settings.window_tab), self.tabs.count() - 1))
        self._closed = False
        if autoload:
            self.model_bar.load(settings.model)

    # ------------------------------------------------------------------ menus and keys
    def _menus(self) -> None:
        mb = self.menuBar()
        fm = mb.addMenu("&File")
        self.act_settings = QAction("&Settings…", self)
        self.act_settings.setShortcut(QKeySequence("Ctrl+,"))
        self.act_settings.triggered.connect(self.open_settings)
        fm.addAction(self.act_settings)
        fm.addSeparator()
        quit_act = QAction("&Quit", self)
        quit_act.setShortcut(QKeySequence.Quit)
        quit_act.triggered.connect(self.close)
        fm.addAction(quit_act)
        cm = mb.addMenu("&Call")
        self.act_mute = QAction("&Mute microphone", self)
        self.act_mute.setShortcut(QKeySequence("Ctrl+M"))
        self.act_mute.triggered.connect(self.talk.toggle_mute)
        self.act_record = QAction("&Record / stop recording", self)
        self.act_record.setShortcut(QKeySequence("Ctrl+R"))
        self.act_record.triggered.connect(lambda: self.talk.record_btn.isEnabled() and self.talk.record_btn.toggle())
        self.act_hangup = QAction("&Hang up", self)
        self.act_hangup.setShortcut(QKeySequence("Ctrl+H"))
        self.act_hangup.triggered.connect(self.controller.hang_up)
        self.act_chat = QAction("&Chat", self)
        self.act_chat.setShortcut(QKeySequence("Ctrl+L"))
        self.act_chat.triggered.connect(lambda: (self.tabs.setCurrentIndex(0), self.chat.entry.setFocus()))
        for a in (self.act_mute, self.act_record, self.act_hangup, self.act_chat):
            cm.addAction(a)
        hm = mb.addMenu("&Help")
        about = QAction("&About FocalChat", self)
        about.triggered.connect(self._about)
        hm.addAction(about)

    def ptt_matches(self, ev: Any) -> bool:
        seq = QKeySequence(self.settings.ptt_key)
        if seq.isEmpty():
            return False
        combo = seq[0]
        return ev.key() == combo.key() and ev.modifiers() == combo.keyboardModifiers()

    def open_settings(self) -> None:
        dlg = SettingsDialog(self.settings, self)
        if dlg.exec():
            old_mode = self.settings.mode
            dlg.apply()
            self.talk.ptt_btn.setText(f"Hold to talk ({self.settings.ptt_key})")
            self.recordings.refresh()
            self.save()
            if self.settings.mode != old_mode:
                self.model_bar.load(self.model_bar.current_spec())

    def _about(self) -> None:
        QMessageBox.about(self, "About FocalChat",
                          "FocalChat: voice calls at 0.55–0.80 kbps of payload over a WebRTC data channel, on the "
                          "streaming neural speech codec FocalCodec-Stream.")

    # ------------------------------------------------------------------ model
    def _model_loading(self, spec: str) -> None:
        self.status_model.setText(f"loading {spec}…")
        if self.banner.kind == "warning" and "UNTRAINED" in self.banner.text():
            self.banner.clear_message()

    def _model_loaded(self, model: Any, info: ModelInfo) -> None:
        if self.controller.busy:  # a call keeps the model it started with
            self.banner.show_message("The new model is used from the next call on.", "info")
        self.controller.set_model(model)
        self.demo.set_model(model)
        self.recordings.set_model(model)
        self.status_model.setText(f"{info.model_id} · {info.payload_kbps:.2f} kbps")
        if info.untrained:
            self.banner.show_message("⚠ " + info.warning, "warning")
        elif self.banner.kind == "error":
            self.banner.clear_message()

    def _model_failed(self, message: str) -> None:
        self.status_model.setText("no model")
        self.banner.show_message(message, "error")

    # ------------------------------------------------------------------ call
    def _on_phase(self, phase: str) -> None:
        text = {"idle": "Idle", "preparing": "Opening the audio devices…", "connecting": "Connecting…",
                "in-call": "In call", "ending": "Hanging up…"}.get(phase, phase)
        self.status_phase.setText(text)
        self.model_bar.load_btn.setEnabled(phase == "idle")
        self.audio.setEnabled(phase == "idle")

    def _recording_saved(self, path: str) -> None:
        self.statusBar().showMessage(f"Recording saved: {path}", 8000)
        self.recordings.refresh(select=path)

    # ------------------------------------------------------------------ closing
    def save(self) -> None:
        self.settings.window_geometry = bytes(self.saveGeometry().toBase64()).decode()
        self.settings.window_tab = self.tabs.currentIndex()
        try:
            save_settings(self.settings, self.config_path)
        except OSError as exc:
            log.warning("could not save the settings: %s", exc)

    def closeEvent(self, ev: QCloseEvent) -> None:  # noqa: N802 - Qt API
        if not self._closed:
            self._closed = True
            self.save()
            QApplication.instance().removeEventFilter(self.ptt_filter)
            self.controller.shutdown()
            self.model_bar.wait(30000)
        super().closeEvent(ev)
