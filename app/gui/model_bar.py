"""Model choice: the embedded default, a published checkpoint (2k / 4k / 65k), a hub id or a local folder;
loaded in the background (:class:`app.gui.model_loader.ModelLoader`) with progress and its bitrate shown."""

from __future__ import annotations

from typing import Any

from PySide6.QtCore import Signal
from PySide6.QtWidgets import (
    QComboBox,
    QFileDialog,
    QHBoxLayout,
    QLabel,
    QProgressBar,
    QPushButton,
    QWidget,
)

from app.gui.model_loader import MODEL_CHOICES, ModelInfo, ModelLoader, expected_kbps
from app.gui.settings import Settings


class ModelBar(QWidget):
    loaded = Signal(object, object)  # model, ModelInfo
    failed = Signal(str)
    loading = Signal(str)  # spec

    def __init__(self, settings: Settings, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.settings = settings
        self.loader: ModelLoader | None = None
        self.model: Any = None
        self.info: ModelInfo | None = None
        lay = QHBoxLayout(self)
        lay.setContentsMargins(0, 0, 0, 0)
        lay.addWidget(QLabel("Model:"))
        self.box = QComboBox()
        self.box.setEditable(True)
        self.box.setAccessibleName("Model")
        self.box.setToolTip("The embedded default, a published checkpoint, a Hugging Face hub id or a checkpoint "
                            "folder. Both sides of a call need the same model.")
        self.box.setMinimumWidth(260)
        for spec, label in MODEL_CHOICES:
            kbps = expected_kbps(spec)
            self.box.addItem(f"{label}" + (f" — {kbps:.2f} kbps" if kbps else ""), spec)
        self.select_spec(settings.model)
        lay.addWidget(self.box)
        self.folder_btn = QPushButton("Folder…")
        self.folder_btn.setAccessibleName("Choose a checkpoint folder")
        lay.addWidget(self.folder_btn)
        self.load_btn = QPushButton("&Load")
        self.load_btn.setAccessibleName("Load model")
        lay.addWidget(self.load_btn)
        self.progress = QProgressBar()
        self.progress.setAccessibleName("Model loading progress")
        self.progress.setRange(0, 100)
        self.progress.setMaximumWidth(160)
        self.progress.setTextVisible(True)
        lay.addWidget(self.progress)
        self.status = QLabel("")
        self.status.setAccessibleName("Model status")
        lay.addWidget(self.status, 1)
        self.kbps_label = QLabel("")
        self.kbps_label.setAccessibleName("Payload bitrate")
        self.kbps_label.setStyleSheet("QLabel { font-weight: bold; color: #1565c0; }")
        lay.addWidget(self.kbps_label)
        self.folder_btn.clicked.connect(self._folder)
        self.load_btn.clicked.connect(lambda: self.load(self.current_spec()))
        self.box.currentIndexChanged.connect(self._show_expected)

    def select_spec(self, spec: str) -> None:
        i = self.box.findData(spec)
        if i >= 0:
            self.box.setCurrentIndex(i)
        else:
            self.box.setEditText(spec)

    def current_spec(self) -> str:
        text = self.box.currentText().strip()
        i = self.box.findText(text)
        if i >= 0 and self.box.itemData(i):
            return str(self.box.itemData(i))
        return text or "default"

    def _show_expected(self) -> None:
        kbps = expected_kbps(self.current_spec())
        if kbps is not None:
            self.kbps_label.setText(f"{kbps:.2f} kbps payload")

    def _folder(self) -> None:
        d = QFileDialog.getExistingDirectory(self, "Checkpoint folder (config.json + model.safetensors)")
        if d:
            self.box.setEditText(d)
            self.load(d)

    def load(self, spec: str) -> None:
        if self.loader is not None and self.loader.isRunning():
            return
        self.settings.model = spec
        self.load_btn.setEnabled(False)
        self.box.setEnabled(False)
        self.progress.setValue(0)
        self.status.setText(f"loading {spec}…")
        kbps = expected_kbps(spec)
        self.kbps_label.setText(f"{kbps:.2f} kbps payload" if kbps else "")
        self.loading.emit(spec)
        loader = ModelLoader(spec, self.settings.mode, self)
        loader.progress.connect(self._progress)
        loader.loaded.connect(self._loaded)
        loader.failed.connect(self._failed)
        self.loader = loader
        loader.start()

    def _progress(self, pct: int, text: str) -> None:
        self.progress.setValue(pct)
        self.status.setText(text)

    def _loaded(self, model: Any, info: ModelInfo) -> None:
        self.model, self.info = model, info
        self.load_btn.setEnabled(True)
        self.box.setEnabled(True)
        self.progress.setValue(100)
        self.status.setText(f"{info.model_id} · {info.params_m:.1f} M params · {info.mode} · enc {info.encode_ms:.1f} + "
                            f"dec {info.decode_ms:.1f} ms / {info.chunk_ms:.0f} ms"
                            + (" · UNTRAINED" if info.untrained else ""))
        self.status.setToolTip(info.summary())
        self.kbps_label.setText(f"{info.payload_kbps:.2f} kbps payload")
        self.loaded.emit(model, info)

    def _failed(self, message: str) -> None:
        self.load_btn.setEnabled(True)
        self.box.setEnabled(True)
        self.progress.setValue(0)
        self.status.setText("not loaded")
        self.failed.emit(message)

    def wait(self, ms: int = 60000) -> None:
        if self.loader is not None:
            self.loader.wait(ms)
