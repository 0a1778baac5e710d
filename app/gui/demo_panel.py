"""Codec demo tab (no peer needed): bundled clip, a WAV file or the mic → encode → simulated network (loss,
burst, jitter) → decode; A/B playback; waveform and spectrogram of both."""

from __future__ import annotations

import os
from typing import Any

os.environ.setdefault("PYQTGRAPH_QT_LIB", "PySide6")

import numpy as np  # noqa: E402
import pyqtgraph as pg  # noqa: E402
from PySide6.QtCore import Qt  # noqa: E402
from PySide6.QtWidgets import (  # noqa: E402
    QButtonGroup,
    QFileDialog,
    QFormLayout,
    QGridLayout,
    QGroupBox,
    QHBoxLayout,
    QLabel,
    QProgressBar,
    QPushButton,
    QRadioButton,
    QSlider,
    QVBoxLayout,
    QWidget,
)

from app.gui import devices  # noqa: E402
from app.gui.demo_worker import DemoResult, load_input, run_demo  # noqa: E402
from app.gui.settings import Settings  # noqa: E402
from app.gui.widgets import Banner  # noqa: E402
from app.gui.workers import run_task  # noqa: E402

MIC_SECONDS = 4.0


def _slider(lo: int, hi: int, value: float, name: str) -> QSlider:
    s = QSlider(Qt.Horizontal)
    s.setRange(lo, hi)
    s.setValue(int(round(value)))
    s.setAccessibleName(name)
    return s


class DemoPanel(QWidget):
    def __init__(self, settings: Settings, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.settings = settings
        self.model: Any = None
        self.result: DemoResult | None = None
        self.file_path: str | None = None
        self._task = None
        self._play_task = None
        outer = QHBoxLayout(self)

        # --- controls
        left = QVBoxLayout()
        src = QGroupBox("Input")
        sl = QVBoxLayout(src)
        self.src_group = QButtonGroup(self)
        self.src_clip = QRadioButton("Bundled speech clip")
        self.src_file = QRadioButton("Sound file…")
        self.src_mic = QRadioButton(f"Microphone ({MIC_SECONDS:.0f} s)")
        for b, name in ((self.src_clip, "Input: bundled clip"), (self.src_file, "Input: sound file"),
                        (self.src_mic, "Input: microphone")):
            b.setAccessibleName(name)
            self.src_group.addButton(b)
            sl.addWidget(b)
        self.src_clip.setChecked(True)
        self.file_label = QLabel("no file chosen")
        self.file_label.setStyleSheet("color: #5f6b76;")
        self.file_label.setWordWrap(True)
        sl.addWidget(self.file_label)
        self.browse_btn = QPushButton("&Browse…")
        self.browse_btn.setAccessibleName("Choose a sound file")
        sl.addWidget(self.browse_btn)
        left.addWidget(src)

        net = QGroupBox("Simulated network")
        nf = QFormLayout(net)
        self.loss = _slider(0, 50, settings.demo_loss_pct, "Packet loss percent")
        self.burst = _slider(10, 100, 10 * settings.demo_burst, "Mean loss burst length")
        self.jitter = _slider(0, 200, settings.demo_jitter_ms, "Network jitter milliseconds")
        self.loss_label, self.burst_label, self.jitter_label = QLabel(), QLabel(), QLabel()
        for label, slider, lab in (("Loss", self.loss, self.loss_label), ("Burst", self.burst, self.burst_label),
                                   ("Jitter", self.jitter, self.jitter_label)):
            row = QHBoxLayout()
            row.addWidget(slider, 1)
            lab.setMinimumWidth(70)
            row.addWidget(lab)
            nf.addRow(label + ":", row)
            slider.valueChanged.connect(self._labels)
        self._labels()
        left.addWidget(net)

        self.run_btn = QPushButton("▶ &Run demo")
        self.run_btn.setAccessibleName("Run codec demo")
        self.run_btn.setStyleSheet("QPushButton { font-weight: bold; padding: 6px; }")
        left.addWidget(self.run_btn)
        self.progress = QProgressBar()
        self.progress.setAccessibleName("Demo progress")
        self.progress.setRange(0, 100)
        self.progress.setValue(0)
        left.addWidget(self.progress)
        ab = QGroupBox("Listen (A/B)")
        al = QHBoxLayout(ab)
        self.play_orig_btn = QPushButton("Play &original")
        self.play_orig_btn.setAccessibleName("Play original")
        self.play_dec_btn = QPushButton("Play &decoded")
        self.play_dec_btn.setAccessibleName("Play decoded")
        for b in (self.play_orig_btn, self.play_dec_btn):
            b.setEnabled(False)
            al.addWidget(b)
        left.addWidget(ab)
        self.banner = Banner("Demo message")
        left.addWidget(self.banner)
        self.summary = QLabel("Run the demo to hear and see what the codec does to speech.")
        self.summary.setAccessibleName("Demo results")
        self.summary.setWordWrap(True)
        left.addWidget(self.summary)
        left.addStretch(1)
        lw = QWidget()
        lw.setLayout(left)
        lw.setMaximumWidth(340)
        outer.addWidget(lw)

        # --- plots
        grid = QGridLayout()
        self.wave_orig = self._wave_plot("Original (16 kHz)", "Original waveform")
        self.wave_dec = self._wave_plot("Decoded (24 kHz)", "Decoded waveform")
        self.wave_dec.setXLink(self.wave_orig)
        self.spec_orig, self.img_orig = self._spec_plot("Original spectrogram", "Original spectrogram")
        self.spec_dec, self.img_dec = self._spec_plot("Decoded spectrogram", "Decoded spectrogram")
        grid.addWidget(self.wave_orig, 0, 0)
        grid.addWidget(self.spec_orig, 0, 1)
        grid.addWidget(self.wave_dec, 1, 0)
        grid.addWidget(self.spec_dec, 1, 1)
        outer.addLayout(grid, 1)

        self.browse_btn.clicked.connect(self._browse)
        self.run_btn.clicked.connect(self.run)
        self.play_orig_btn.clicked.connect(lambda: self.play("original"))
        self.play_dec_btn.clicked.connect(lambda: self.play("decoded"))
        self.set_model(None)

    @staticmethod
    def _wave_plot(title: str, name: str) -> pg.PlotWidget:
        w = pg.PlotWidget()
        w.setAccessibleName(name)
        w.setTitle(title, size="10pt")
        w.setLabel("bottom", "s")
        w.setYRange(-1, 1)
        w.setMouseEnabled(y=False)
        w.hideButtons()
        w.setMinimumHeight(150)
        return w

    @staticmethod
    def _spec_plot(title: str, name: str):
        w = pg.PlotWidget()
        w.setAccessibleName(name)
        w.setTitle(title, size="10pt")
        w.setLabel("bottom", "s")
        w.setLabel("left", "kHz")
        w.hideButtons()
        w.setMouseEnabled(x=False, y=False)
        img = pg.ImageItem(axisOrder="row-major")
        img.setColorMap(pg.colormap.get("viridis"))
        w.addItem(img)
        w.setMinimumHeight(150)
        return w, img

    def _labels(self) -> None:
        self.loss_label.setText(f"{self.loss.value()} %")
        self.burst_label.setText(f"{self.burst.value() / 10:.1f} pkts")
        self.jitter_label.setText(f"{self.jitter.value()} ms")
        self.settings.demo_loss_pct = float(self.loss.value())
        self.settings.demo_burst = self.burst.value() / 10
        self.settings.demo_jitter_ms = float(self.jitter.value())

    def _browse(self) -> None:
        path, _ = QFileDialog.getOpenFileName(self, "Choose a sound file", "",
                                              "Sound files (*.wav *.flac *.ogg *.mp3);;All files (*)")
        if path:
            self.set_file(path)

    def set_file(self, path: str) -> None:
        self.file_path = path
        self.file_label.setText(os.path.basename(path))
        self.src_file.setChecked(True)

    def set_model(self, model: Any) -> None:
        self.model = model
        self.run_btn.setEnabled(model is not None and not (self._task is not None and self._task.running))
        if model is None:
            self.run_btn.setToolTip("Waiting for the model to load")
        else:
            self.run_btn.setToolTip("Encode, send through the simulated network and decode")

    # ------------------------------------------------------------------ run
    def run(self) -> None:
        if self.model is None or (self._task is not None and self._task.running):
            return
        source = "mic" if self.src_mic.isChecked() else ("file" if self.src_file.isChecked() else "clip")
        if source == "file" and not self.file_path:
            self.banner.show_message("Choose a sound file first.", "warning")
            return
        model, path, mic_key = self.model, self.file_path, self.settings.input_device
        loss, burst, jitter = float(self.loss.value()), self.burst.value() / 10, float(self.jitter.value())

        def work(progress, cancelled) -> DemoResult:
            if source == "mic":
                progress(0, f"recording {MIC_SECONDS:.0f} s from the microphone")
            sig = load_input(source, path, int(model.sample_rate_input), mic_key, MIC_SECONDS)
            return run_demo(model, sig, loss_pct=loss, burst=burst, jitter_ms=jitter, progress=progress,
                            cancelled=cancelled)

        self.run_btn.setEnabled(False)
        self.progress.setValue(0)
        self.banner.show_message("Recording from the microphone…" if source == "mic" else "Running…", "info")
        self._task = run_task(work, name="demo", on_done=self._done, on_failed=self._failed,
                              on_progress=lambda p, t: self.progress.setValue(p))

    def _done(self, res: DemoResult) -> None:
        self.result = res
        self.progress.setValue(100)
        self.run_btn.setEnabled(self.model is not None)
        self.banner.clear_message()
        self.summary.setText(res.summary())
        for b in (self.play_orig_btn, self.play_dec_btn):
            b.setEnabled(True)
        self._draw(res)

    def _failed(self, exc: BaseException) -> None:
        self.run_btn.setEnabled(self.model is not None)
        self.progress.setValue(0)
        self.banner.show_message(f"The demo failed: {exc}", "error")

    def _draw(self, res: DemoResult) -> None:
        for plot, x, rate in ((self.wave_orig, res.original, res.rate_in), (self.wave_dec, res.decoded, res.rate_out)):
            plot.clear()
            step = max(1, len(x) // 4000)  # an envelope of ~4000 points is plenty on screen
            n = len(x) // step * step
            if n:
                blocks = x[:n].reshape(-1, step)
                t = np.arange(blocks.shape[0]) * step / rate
                plot.plot(t, blocks.max(axis=1), pen=pg.mkPen("#1565c0", width=1))
                plot.plot(t, blocks.min(axis=1), pen=pg.mkPen("#1565c0", width=1))
        dur = len(res.original) / res.rate_in
        for img, spec in ((self.img_orig, res.spec_original), (self.img_dec, res.spec_decoded)):
            top = float(spec.max()) if spec.size else 0.0
            img.setImage(spec.T, levels=(top - 80.0, top))
            img.setRect(0.0, 0.0, dur, res.spec_hz / 1000.0)

    # ------------------------------------------------------------------ A/B
    def play(self, which: str) -> None:
        res = self.result
        if res is None:
            return
        audio, rate = (res.original, res.rate_in) if which == "original" else (res.decoded, res.rate_out)
        key, gain = self.settings.output_device, self.settings.output_volume
        self.banner.show_message(f"Playing the {which} audio…", "info")

        def done(_: Any) -> None:
            self.banner.clear_message()

        self._play_task = run_task(devices.play, key, audio, rate, gain, name="demo-play", on_done=done,
                                   on_failed=lambda e: self.banner.show_message(f"Playback failed: {e}", "error"))
