"""Audio devices: input and output per direction, each with a test (record 2 s and play it back / play a
speech clip), and the level of the test recording."""

from __future__ import annotations

import numpy as np
from PySide6.QtCore import Signal
from PySide6.QtWidgets import (
    QComboBox,
    QFormLayout,
    QGroupBox,
    QHBoxLayout,
    QLabel,
    QPushButton,
    QVBoxLayout,
    QWidget,
)

from app.gui import devices
from app.gui.settings import Settings
from app.gui.taps import level_dbfs
from app.gui.widgets import Banner, LevelMeter
from app.gui.workers import run_task

TEST_SECONDS = 2.0


class AudioPanel(QGroupBox):
    """Device choice is stored in the settings (used by the next call)."""

    devices_changed = Signal()

    def __init__(self, settings: Settings, parent: QWidget | None = None) -> None:
        super().__init__("Audio devices", parent)
        self.settings = settings
        lay = QVBoxLayout(self)
        f = QFormLayout()
        self.input_box = QComboBox()
        self.input_box.setAccessibleName("Input device")
        self.output_box = QComboBox()
        self.output_box.setAccessibleName("Output device")
        self.test_in_btn = QPushButton("Test &microphone")
        self.test_in_btn.setAccessibleName("Test microphone")
        self.test_in_btn.setToolTip("Record 2 s from this input, then play it back on the output")
        self.test_out_btn = QPushButton("Test &speakers")
        self.test_out_btn.setAccessibleName("Test speakers")
        self.test_out_btn.setToolTip("Play 2 s of speech on this output")
        row = QHBoxLayout()
        row.addWidget(self.input_box, 1)
        row.addWidget(self.test_in_btn)
        f.addRow("Input (microphone):", row)
        row = QHBoxLayout()
        row.addWidget(self.output_box, 1)
        row.addWidget(self.test_out_btn)
        f.addRow("Output (speakers):", row)
        self.test_meter = LevelMeter("Test recording level")
        f.addRow("Test level:", self.test_meter)
        lay.addLayout(f)
        bottom = QHBoxLayout()
        self.refresh_btn = QPushButton("Re&fresh devices")
        self.refresh_btn.setAccessibleName("Refresh devices")
        bottom.addWidget(self.refresh_btn)
        hint = QLabel("Use headphones: FocalChat has no echo cancellation.")
        hint.setStyleSheet("color: #5f6b76;")
        bottom.addWidget(hint, 1)
        lay.addLayout(bottom)
        self.banner = Banner("Audio message")
        lay.addWidget(self.banner)

        self.refresh_btn.clicked.connect(self.refresh)
        self.input_box.currentIndexChanged.connect(self._choose_input)
        self.output_box.currentIndexChanged.connect(self._choose_output)
        self.test_in_btn.clicked.connect(self.test_input)
        self.test_out_btn.clicked.connect(self.test_output)
        self._task = None
        self.refresh()

    def refresh(self) -> None:
        for box, kind, key in ((self.input_box, "input", self.settings.input_device),
                               (self.output_box, "output", self.settings.output_device)):
            box.blockSignals(True)
            box.clear()
            choices = devices.list_choices(kind)
            if key and not any(c.key == key for c in choices):
                choices.append(devices.DeviceChoice(key, f"{devices.describe_key(key)} (not found now)"))
            for c in choices:
                box.addItem(c.label, c.key)
            box.setCurrentIndex(max(0, box.findData(key)))
            box.blockSignals(False)
        if self.input_box.count() <= 1 and self.output_box.count() <= 1:
            self.banner.show_message("Only the system default devices are known (is PulseAudio running?).",
                                     "warning")

    def _choose_input(self, i: int) -> None:
        self.settings.input_device = self.input_box.itemData(i) or ""
        self.devices_changed.emit()

    def _choose_output(self, i: int) -> None:
        self.settings.output_device = self.output_box.itemData(i) or ""
        self.devices_changed.emit()

    def _busy(self, on: bool) -> None:
        self.test_in_btn.setEnabled(not on)
        self.test_out_btn.setEnabled(not on)

    def test_input(self) -> None:
        in_key, out_key, gain = self.settings.input_device, self.settings.output_device, self.settings.output_volume

        def work(progress) -> float:
            progress(0, "recording")
            x = devices.record(in_key, TEST_SECONDS)
            lvl = level_dbfs(x)
            progress(50, f"{lvl:.1f}")
            devices.play(out_key, x, devices.CODEC_IN_RATE, gain=gain)
            return lvl

        self._run(work, f"Recording {TEST_SECONDS:.0f} s from the microphone, then playing it back…")

    def test_output(self) -> None:
        out_key, gain = self.settings.output_device, self.settings.output_volume

        def work(progress) -> float:
            from app.modelref import SPEECH_SAMPLE
            from codec.audio import load_audio

            x = load_audio(SPEECH_SAMPLE, devices.CODEC_IN_RATE)[: int(TEST_SECONDS * devices.CODEC_IN_RATE)]
            x = np.ascontiguousarray(x, dtype=np.float32)
            progress(0, "playing")
            devices.play(out_key, x, devices.CODEC_IN_RATE, gain=gain)
            return level_dbfs(x)

        self._run(work, f"Playing {TEST_SECONDS:.0f} s of speech on the output…")

    def _run(self, work, message: str) -> None:
        self._busy(True)
        self.banner.show_message(message, "info")

        def progress(pct: int, text: str) -> None:
            if pct == 50:
                self.test_meter.set_level(float(text))
                self.banner.show_message(f"Recorded (level {float(text):.0f} dBFS); playing it back…", "info")

        def done(lvl: float) -> None:
            self._busy(False)
            self.test_meter.set_level(lvl)
            quiet = lvl < -55
            self.banner.show_message("Test done." + (" The recording was nearly silent: check the input device "
                                                     "and its volume." if quiet else ""),
                                     "warning" if quiet else "ok")

        def failed(exc: BaseException) -> None:
            self._busy(False)
            self.banner.show_message(f"Audio test failed: {exc}", "error")

        self._task = run_task(work, name="audio-test", on_done=done, on_failed=failed, on_progress=progress)
