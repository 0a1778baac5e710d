"""Recordings tab: the ``.fcr`` call recordings in the recordings folder; replay and export to WAV."""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

import numpy as np
from PySide6.QtCore import Qt, QUrl
from PySide6.QtGui import QDesktopServices
from PySide6.QtWidgets import (
    QComboBox,
    QFileDialog,
    QHBoxLayout,
    QLabel,
    QListWidget,
    QListWidgetItem,
    QPushButton,
    QVBoxLayout,
    QWidget,
)

from app.gui import devices
from app.gui.settings import Settings
from app.gui.widgets import Banner
from app.gui.workers import run_task


def describe_recording(path: Path) -> tuple[str, str]:
    """(one-line label, details) of a recording; never raises."""
    from app.recording import CHUNK, RecordingError, RecordingReader

    try:
        r = RecordingReader(path)
        n = {0: 0, 1: 0}
        texts = 0
        last_ms = 0
        for rec in r:
            if rec.kind == CHUNK:
                n[rec.direction] += 1
            else:
                texts += 1
            last_ms = max(last_ms, rec.time_ms)
        h = r.header
        dur = last_ms / 1000.0
        label = f"{path.name} — {dur:.0f} s, with {h.directions[1]}"
        details = (f"{path}\ncreated {h.created} · model {h.model_id} ({h.bits} bits/token) · sent {n[0]} chunks · "
                   f"received {n[1]} chunks · {texts} chat lines" + (f"\n⚠ {r.damage}" if r.damage else ""))
        return label, details
    except (RecordingError, OSError) as exc:
        return f"{path.name} — unreadable", str(exc)


def _export(path: str, model: Any, out: str, layout: str) -> dict:
    from app.recording import RecordingError, RecordingReader, export_wav

    reader = RecordingReader(path)
    if reader.header.model_hash != model.fingerprint():
        raise RecordingError(f"this call used model {reader.header.model_id!r}, not the loaded "
                             f"{model.model_id!r}: load that model to play or export it")
    return export_wav(reader, model, out, layout=layout)


class RecordingsPanel(QWidget):
    def __init__(self, settings: Settings, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.settings = settings
        self.model: Any = None
        self._task = None
        lay = QVBoxLayout(self)
        top = QHBoxLayout()
        self.folder_label = QLabel()
        self.folder_label.setTextInteractionFlags(Qt.TextSelectableByMouse)
        top.addWidget(self.folder_label, 1)
        self.refresh_btn = QPushButton("Re&fresh")
        self.refresh_btn.setAccessibleName("Refresh recordings")
        self.open_btn = QPushButton("Open &folder")
        self.open_btn.setAccessibleName("Open recordings folder")
        top.addWidget(self.refresh_btn)
        top.addWidget(self.open_btn)
        lay.addLayout(top)
        self.list = QListWidget()
        self.list.setAccessibleName("Recordings")
        lay.addWidget(self.list, 1)
        self.details = QLabel("Record a call with the Record button (Ctrl+R) during the call.")
        self.details.setAccessibleName("Recording details")
        self.details.setWordWrap(True)
        self.details.setTextInteractionFlags(Qt.TextSelectableByMouse)
        lay.addWidget(self.details)
        row = QHBoxLayout()
        self.layout_box = QComboBox()
        self.layout_box.setAccessibleName("Export layout")
        for key, label in (("stereo", "Stereo (left: me, right: peer)"), ("mix", "Mono mix"),
                           ("sent", "Only me"), ("received", "Only the peer")):
            self.layout_box.addItem(label, key)
        self.play_btn = QPushButton("▶ &Play")
        self.play_btn.setAccessibleName("Play recording")
        self.export_btn = QPushButton("&Export WAV…")
        self.export_btn.setAccessibleName("Export recording to WAV")
        row.addWidget(self.play_btn)
        row.addWidget(self.export_btn)
        row.addWidget(QLabel("Layout:"))
        row.addWidget(self.layout_box)
        row.addStretch(1)
        lay.addLayout(row)
        self.banner = Banner("Recordings message")
        lay.addWidget(self.banner)

        self.refresh_btn.clicked.connect(self.refresh)
        self.open_btn.clicked.connect(self._open_folder)
        self.list.currentItemChanged.connect(self._selected)
        self.play_btn.clicked.connect(self.play_selected)
        self.export_btn.clicked.connect(self._export_dialog)
        self.refresh()

    def set_model(self, model: Any) -> None:
        self.model = model
        self._selected(self.list.currentItem())

    def refresh(self, select: str | None = None) -> None:
        d = self.settings.recordings_path()
        self.folder_label.setText(f"Folder: {d}")
        self.list.clear()
        files = sorted(d.glob("*.fcr"), key=lambda p: p.stat().st_mtime, reverse=True) if d.is_dir() else []
        for p in files:
            label, details = describe_recording(p)
            item = QListWidgetItem(label)
            item.setData(Qt.UserRole, str(p))
            item.setData(Qt.UserRole + 1, details)
            self.list.addItem(item)
            if select is not None and str(p) == select:
                self.list.setCurrentItem(item)
        if self.list.currentItem() is None and self.list.count():
            self.list.setCurrentRow(0)
        self._selected(self.list.currentItem())

    def _selected(self, item: QListWidgetItem | None, _prev: Any = None) -> None:
        on = item is not None and self.model is not None
        self.play_btn.setEnabled(on)
        self.export_btn.setEnabled(on)
        if item is not None:
            self.details.setText(item.data(Qt.UserRole + 1))

    def selected_path(self) -> str | None:
        item = self.list.currentItem()
        return item.data(Qt.UserRole) if item is not None else None

    def _open_folder(self) -> None:
        d = self.settings.recordings_path()
        d.mkdir(parents=True, exist_ok=True)
        QDesktopServices.openUrl(QUrl.fromLocalFile(str(d)))

    def _export_dialog(self) -> None:
        path = self.selected_path()
        if path is None:
            return
        out, _ = QFileDialog.getSaveFileName(self, "Export to WAV", str(Path(path).with_suffix(".wav")),
                                             "WAV files (*.wav)")
        if out:
            self.export(out)

    def export(self, out: str) -> None:
        path, model, layout = self.selected_path(), self.model, self.layout_box.currentData()
        if path is None or model is None:
            return
        self.banner.show_message("Exporting…", "info")
        run_task(_export, path, model, out, layout, name="export",
                 on_done=lambda s: self.banner.show_message(f"Exported {s['seconds']:.1f} s to {out}.", "ok"),
                 on_failed=lambda e: self.banner.show_message(f"Export failed: {e}", "error"))

    def play_selected(self) -> None:
        path, model = self.selected_path(), self.model
        if path is None or model is None:
            return
        key, gain = self.settings.output_device, self.settings.output_volume

        def work() -> float:
            import soundfile as sf

            with tempfile.TemporaryDirectory(prefix="focalchat-play-") as tmp:
                wav = Path(tmp) / "rec.wav"
                _export(path, model, str(wav), "mix")
                audio, rate = sf.read(str(wav), dtype="float32")
            devices.play(key, np.ascontiguousarray(audio), int(rate), gain=gain)
            return len(audio) / rate

        self.play_btn.setEnabled(False)
        self.banner.show_message("Playing the recording (both sides mixed)…", "info")

        def done(sec: float) -> None:
            self.play_btn.setEnabled(True)
            self.banner.show_message(f"Played {sec:.1f} s.", "ok")

        def failed(e: BaseException) -> None:
            self.play_btn.setEnabled(True)
            self.banner.show_message(f"Playback failed: {e}", "error")

        self._task = run_task(work, name="rec-play", on_done=done, on_failed=failed)
