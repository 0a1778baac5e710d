"""Text chat beside the call (best effort over the call's data channel)."""

from __future__ import annotations

import html
import time

from PySide6.QtWidgets import (
    QGroupBox,
    QHBoxLayout,
    QLineEdit,
    QPushButton,
    QTextBrowser,
    QVBoxLayout,
    QWidget,
)

from app.gui.controller import CallController

MAX_CHARS = 500


class ChatPanel(QGroupBox):
    def __init__(self, controller: CallController, parent: QWidget | None = None) -> None:
        super().__init__("Chat", parent)
        self.c = controller
        lay = QVBoxLayout(self)
        self.log = QTextBrowser()
        self.log.setAccessibleName("Chat messages")
        self.log.setOpenExternalLinks(False)
        lay.addWidget(self.log, 1)
        row = QHBoxLayout()
        self.entry = QLineEdit()
        self.entry.setAccessibleName("Chat message")
        self.entry.setPlaceholderText("Type a message and press Enter (Ctrl+L)")
        self.entry.setMaxLength(MAX_CHARS)
        self.send_btn = QPushButton("&Send")
        self.send_btn.setAccessibleName("Send message")
        row.addWidget(self.entry, 1)
        row.addWidget(self.send_btn)
        lay.addLayout(row)
        self.entry.returnPressed.connect(self.send)
        self.send_btn.clicked.connect(self.send)
        controller.text_received.connect(self.add_received)
        controller.phase_changed.connect(self._on_phase)
        controller.handshake_ok.connect(lambda ev: self._system(f"call with {ev.peer_nickname or 'peer'} started"))
        controller.call_ended.connect(lambda reason, msg: self._system("call ended"))
        self._on_phase(controller.phase)

    def _on_phase(self, phase: str) -> None:
        on = phase == "in-call"
        self.entry.setEnabled(on)
        self.send_btn.setEnabled(on)

    def _line(self, who: str, text: str, color: str) -> None:
        t = time.strftime("%H:%M")
        self.log.append(f'<span style="color:#7b8794">{t}</span> <b style="color:{color}">{html.escape(who)}</b> '
                        f"{html.escape(text)}")

    def _system(self, text: str) -> None:
        self.log.append(f'<i style="color:#7b8794">{time.strftime("%H:%M")} — {html.escape(text)}</i>')

    def send(self) -> None:
        text = self.entry.text().strip()
        if not text:
            return
        if self.c.send_text(text):
            self._line(self.c.settings.nickname or "me", text, "#1565c0")
            self.entry.clear()

    def add_received(self, nickname: str, text: str) -> None:
        self._line(nickname or "peer", text, "#2e7d32")
