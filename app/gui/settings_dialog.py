"""Settings dialog: name, call preset, network (STUN/TURN, local only), push-to-talk key, recordings folder."""

from __future__ import annotations

from PySide6.QtGui import QKeySequence
from PySide6.QtWidgets import (
    QCheckBox,
    QComboBox,
    QDialog,
    QDialogButtonBox,
    QDoubleSpinBox,
    QFileDialog,
    QFormLayout,
    QGroupBox,
    QHBoxLayout,
    QKeySequenceEdit,
    QLineEdit,
    QPushButton,
    QVBoxLayout,
    QWidget,
)

from app.gui.settings import PRESETS, Settings
from app.precision import MODES

MODE_LABELS = {"auto": "Automatic (int8 for the embedded model)", "fp32": "fp32 (exact)", "bf16": "bf16",
               "int8": "int8 (fastest)"}
PRESET_LABELS = {"default": "Default (1 chunk per packet)",
                 "low-latency": "Low latency (1 chunk, 1 redundant copy)",
                 "low-bandwidth": "Low bandwidth (480 ms packets, ≤ 3 kbps on the wire)"}


class SettingsDialog(QDialog):
    def __init__(self, settings: Settings, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.setWindowTitle("FocalChat settings")
        self.setAccessibleName("Settings")
        self.settings = settings
        lay = QVBoxLayout(self)

        you = QGroupBox("You")
        f = QFormLayout(you)
        self.nickname = QLineEdit(settings.nickname)
        self.nickname.setAccessibleName("Nickname")
        self.nickname.setMaxLength(64)
        f.addRow("&Nickname (shown to the peer):", self.nickname)
        self.preset = QComboBox()
        self.preset.setAccessibleName("Call preset")
        for p in PRESETS:
            self.preset.addItem(PRESET_LABELS[p], p)
        self.preset.setCurrentIndex(max(0, self.preset.findData(settings.preset)))
        f.addRow("Call &preset:", self.preset)
        self.mode = QComboBox()
        self.mode.setAccessibleName("Model precision")
        for m in MODES:
            self.mode.addItem(MODE_LABELS.get(m, m), m)
        self.mode.setCurrentIndex(max(0, self.mode.findData(settings.mode)))
        f.addRow("Model p&recision:", self.mode)
        self.ptt_key = QKeySequenceEdit(QKeySequence(settings.ptt_key))
        self.ptt_key.setAccessibleName("Push-to-talk key")
        f.addRow("Push-to-&talk key:", self.ptt_key)
        lay.addWidget(you)

        net = QGroupBox("Network")
        f = QFormLayout(net)
        self.stun = QLineEdit(settings.stun_url)
        self.stun.setAccessibleName("STUN server")
        self.stun.setPlaceholderText("stun:stun.example.org:3478 (empty: direct addresses only)")
        f.addRow("&STUN server:", self.stun)
        self.turn = QLineEdit(settings.turn_url)
        self.turn.setAccessibleName("TURN server")
        self.turn.setPlaceholderText("turn:turn.example.org:3478?transport=udp")
        f.addRow("T&URN server:", self.turn)
        self.turn_user = QLineEdit(settings.turn_username)
        self.turn_user.setAccessibleName("TURN user name")
        f.addRow("TURN user:", self.turn_user)
        self.turn_pass = QLineEdit(settings.turn_password)
        self.turn_pass.setAccessibleName("TURN password")
        self.turn_pass.setEchoMode(QLineEdit.Password)
        f.addRow("TURN password:", self.turn_pass)
        self.local_only = QCheckBox("Only this machine (127.0.0.1): two instances on one computer")
        self.local_only.setAccessibleName("Local only")
        self.local_only.setChecked(settings.local_only)
        f.addRow(self.local_only)
        self.timeout = QDoubleSpinBox()
        self.timeout.setAccessibleName("Connect timeout")
        self.timeout.setRange(2, 120)
        self.timeout.setSuffix(" s")
        self.timeout.setValue(settings.connect_timeout_s)
        f.addRow("Connect &timeout:", self.timeout)
        lay.addWidget(net)

        rec = QGroupBox("Recordings")
        f = QFormLayout(rec)
        row = QHBoxLayout()
        self.rec_dir = QLineEdit(str(settings.recordings_path()))
        self.rec_dir.setAccessibleName("Recordings folder")
        browse = QPushButton("…")
        browse.setAccessibleName("Choose recordings folder")
        browse.clicked.connect(self._browse)
        row.addWidget(self.rec_dir, 1)
        row.addWidget(browse)
        f.addRow("&Folder:", row)
        lay.addWidget(rec)

        buttons = QDialogButtonBox(QDialogButtonBox.Ok | QDialogButtonBox.Cancel)
        buttons.accepted.connect(self.accept)
        buttons.rejected.connect(self.reject)
        lay.addWidget(buttons)

    def _browse(self) -> None:
        d = QFileDialog.getExistingDirectory(self, "Recordings folder", self.rec_dir.text())
        if d:
            self.rec_dir.setText(d)

    def apply(self) -> None:
        s = self.settings
        s.nickname = self.nickname.text().strip()
        s.preset = self.preset.currentData()
        s.mode = self.mode.currentData()
        key = self.ptt_key.keySequence().toString()
        s.ptt_key = key.split(",")[0].strip() or s.ptt_key
        s.stun_url = self.stun.text().strip()
        s.turn_url = self.turn.text().strip()
        s.turn_username = self.turn_user.text()
        s.turn_password = self.turn_pass.text()
        s.local_only = self.local_only.isChecked()
        s.connect_timeout_s = float(self.timeout.value())
        s.recordings_dir = self.rec_dir.text().strip()
