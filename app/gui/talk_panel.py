"""Talking and listening during a call: level meters, mute, transmit mode, push-to-talk, volume, record."""

from __future__ import annotations

from typing import Any

from PySide6.QtCore import Qt, QTimer, Signal
from PySide6.QtWidgets import (
    QButtonGroup,
    QGridLayout,
    QGroupBox,
    QHBoxLayout,
    QLabel,
    QPushButton,
    QRadioButton,
    QSlider,
    QWidget,
)

from app.gui.controller import CallController
from app.gui.widgets import LevelMeter

MODES = (("continuous", "&Continuous"), ("ptt", "Push-&to-talk"), ("vad", "&Voice activity"))


class TalkPanel(QGroupBox):
    record_toggled = Signal(bool)

    def __init__(self, controller: CallController, parent: QWidget | None = None) -> None:
        super().__init__("Talk", parent)
        self.c = controller
        s = controller.settings
        g = QGridLayout(self)
        g.setColumnStretch(1, 1)

        g.addWidget(QLabel("Microphone:"), 0, 0)
        self.mic_meter = LevelMeter("Microphone level")
        g.addWidget(self.mic_meter, 0, 1, 1, 2)
        self.tx_label = QLabel("")
        self.tx_label.setAccessibleName("Transmitting")
        self.tx_label.setMinimumWidth(90)
        g.addWidget(self.tx_label, 0, 3)
        g.addWidget(QLabel("Peer's speech:"), 1, 0)
        self.out_meter = LevelMeter("Decoded speech level")
        g.addWidget(self.out_meter, 1, 1, 1, 2)

        modes = QHBoxLayout()
        self.mode_group = QButtonGroup(self)
        self.mode_buttons: dict[str, QRadioButton] = {}
        for key, label in MODES:
            b = QRadioButton(label)
            b.setAccessibleName(f"Transmit mode {label.replace('&', '')}")
            self.mode_group.addButton(b)
            self.mode_buttons[key] = b
            modes.addWidget(b)
        modes.addStretch(1)
        self.mode_buttons.get(s.transmit_mode, self.mode_buttons["continuous"]).setChecked(True)
        g.addWidget(QLabel("Transmit:"), 2, 0)
        g.addLayout(modes, 2, 1, 1, 3)

        self.mute_btn = QPushButton("&Mute")
        self.mute_btn.setCheckable(True)
        self.mute_btn.setAccessibleName("Mute microphone")
        self.mute_btn.setToolTip("Mute your microphone (Ctrl+M)")
        self.ptt_btn = QPushButton(f"Hold to talk ({s.ptt_key})")
        self.ptt_btn.setAccessibleName("Push to talk")
        self.ptt_btn.setToolTip(f"Hold this button, or hold {s.ptt_key}, to talk in push-to-talk mode")
        self.record_btn = QPushButton("● &Record")
        self.record_btn.setCheckable(True)
        self.record_btn.setAccessibleName("Record the call")
        self.record_btn.setToolTip("Record this call (both directions, as codec tokens) (Ctrl+R)")
        self.record_btn.setEnabled(False)
        row = QHBoxLayout()
        row.addWidget(self.mute_btn)
        row.addWidget(self.ptt_btn)
        row.addWidget(self.record_btn)
        row.addStretch(1)
        g.addLayout(row, 3, 0, 1, 4)

        g.addWidget(QLabel("Voice threshold:"), 4, 0)
        self.vad_slider = QSlider(Qt.Horizontal)
        self.vad_slider.setRange(-70, -10)
        self.vad_slider.setValue(int(s.vad_threshold_dbfs))
        self.vad_slider.setAccessibleName("Voice activity threshold")
        self.vad_slider.setToolTip("Voice-activity mode sends audio while the microphone is louder than this "
                                   "(a change applies at once, also during a call)")
        g.addWidget(self.vad_slider, 4, 1, 1, 2)
        self.vad_label = QLabel(f"{int(s.vad_threshold_dbfs)} dBFS")
        g.addWidget(self.vad_label, 4, 3)
        g.addWidget(QLabel("Volume:"), 5, 0)
        self.volume = QSlider(Qt.Horizontal)
        self.volume.setRange(0, 200)
        self.volume.setValue(int(round(100 * s.output_volume)))
        self.volume.setAccessibleName("Output volume")
        g.addWidget(self.volume, 5, 1, 1, 2)
        self.volume_label = QLabel(f"{self.volume.value()} %")
        g.addWidget(self.volume_label, 5, 3)

        self.mute_btn.toggled.connect(self._mute)
        self.ptt_btn.pressed.connect(lambda: self.set_ptt(True))
        self.ptt_btn.released.connect(lambda: self.set_ptt(False))
        self.mode_group.buttonToggled.connect(self._mode)
        self.vad_slider.valueChanged.connect(self._vad)
        self.volume.valueChanged.connect(self._volume)
        self.record_btn.toggled.connect(self._record)
        controller.stats.connect(self.on_stats)
        controller.phase_changed.connect(self._on_phase)
        controller.recording_saved.connect(lambda _: self._reset_record())
        self._last_stats: Any = None
        self._meter_timer = QTimer(self)
        self._meter_timer.setInterval(100)
        self._meter_timer.timeout.connect(self._poll_meters)
        self._update_mode_widgets()

    # ------------------------------------------------------------------ controls
    def _mute(self, on: bool) -> None:
        self.mute_btn.setText("Un&mute" if on else "&Mute")
        self.c.set_muted(on)
        self._poll_meters()

    def toggle_mute(self) -> None:
        self.mute_btn.toggle()

    def set_ptt(self, pressed: bool) -> None:
        self.c.set_ptt(pressed)
        self.ptt_btn.setDown(pressed)

    def _mode(self, button, checked: bool) -> None:
        if not checked:
            return
        for key, b in self.mode_buttons.items():
            if b is button:
                self.c.set_transmit_mode(key)
        self._update_mode_widgets()

    def _update_mode_widgets(self) -> None:
        mode = self.c.settings.transmit_mode
        self.ptt_btn.setEnabled(mode == "ptt")
        self.vad_slider.setEnabled(mode == "vad")

    def _vad(self, v: int) -> None:
        self.vad_label.setText(f"{v} dBFS")
        self.c.set_vad_threshold(float(v))

    def _volume(self, v: int) -> None:
        self.volume_label.setText(f"{v} %")
        self.c.set_output_volume(v / 100.0)

    def _record(self, on: bool) -> None:
        if on:
            path = self.c.start_recording()
            if path is None:
                self.record_btn.setChecked(False)
                return
            self.record_btn.setText("■ Stop &recording")
            self.record_btn.setStyleSheet("QPushButton { color: #c62828; font-weight: bold; }")
        else:
            self.c.stop_recording()
            self._reset_record()
        self.record_toggled.emit(on)

    def _reset_record(self) -> None:
        self.record_btn.blockSignals(True)
        self.record_btn.setChecked(False)
        self.record_btn.blockSignals(False)
        self.record_btn.setText("● &Record")
        self.record_btn.setStyleSheet("")

    def _on_phase(self, phase: str) -> None:
        in_call = phase == "in-call"
        self.record_btn.setEnabled(in_call)
        if in_call:
            self._meter_timer.start()
        elif phase == "idle":
            self._meter_timer.stop()
            self._reset_record()
            self.mic_meter.set_level(-120)
            self.out_meter.set_level(-120)
            self.tx_label.setText("")

    # ------------------------------------------------------------------ meters
    def on_stats(self, st: Any) -> None:
        self._last_stats = st
        self._poll_meters()

    def _poll_meters(self) -> None:
        if not self.c.in_call:
            return
        lin, lout, vad, tx = self.c.levels(self._last_stats)
        self.mic_meter.set_level(lin)
        self.out_meter.set_level(lout)
        if self.c.muted:
            text, color = "muted", "#8e1b1b"
        elif tx is None:
            text, color = "", "#000"
        elif tx:
            text, color = "● sending", "#1b5e20"
        else:
            text, color = "○ not sending", "#7b8794"
        self.tx_label.setText(text)
        self.tx_label.setStyleSheet(f"color: {color};")
