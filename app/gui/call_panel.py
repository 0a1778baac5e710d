"""Call setup and status: copy-paste codes or direct host:port, the connection state line, the peer."""

from __future__ import annotations

import time
from typing import Any

from PySide6.QtCore import Qt, QTimer
from PySide6.QtGui import QFontDatabase, QGuiApplication
from PySide6.QtWidgets import (
    QFormLayout,
    QGridLayout,
    QGroupBox,
    QHBoxLayout,
    QLabel,
    QLineEdit,
    QPlainTextEdit,
    QPushButton,
    QTabWidget,
    QVBoxLayout,
    QWidget,
)

from app.gui.controller import END_TEXT, CallController, describe_error, describe_refusal
from app.gui.widgets import Banner, StateChips


def _code_box(name: str, placeholder: str, read_only: bool) -> QPlainTextEdit:
    box = QPlainTextEdit()
    box.setReadOnly(read_only)
    box.setPlaceholderText(placeholder)
    box.setAccessibleName(name)
    box.setFont(QFontDatabase.systemFont(QFontDatabase.FixedFont))
    box.setFixedHeight(64)
    box.setTabChangesFocus(True)
    return box


class CallPanel(QGroupBox):
    """Everything about connecting; talks to the :class:`CallController` only."""

    def __init__(self, controller: CallController, parent: QWidget | None = None) -> None:
        super().__init__("Call", parent)
        self.c = controller
        self._call_t0: float | None = None
        lay = QVBoxLayout(self)

        self.tabs = QTabWidget()
        self.tabs.setAccessibleName("How to connect")
        lay.addWidget(self.tabs)

        # --- copy-paste codes
        codes = QWidget()
        g = QGridLayout(codes)
        g.setContentsMargins(6, 6, 6, 6)
        self.offer_btn = QPushButton("Create &offer code")
        self.offer_btn.setAccessibleName("Create offer code")
        self.offer_btn.setToolTip("Start a call: make a code to send to your peer by any chat")
        g.addWidget(self.offer_btn, 0, 0, 1, 2)
        g.addWidget(QLabel("Your code (send it to your peer):"), 1, 0, 1, 2)
        self.my_code = _code_box("Your code", "Create an offer code, or paste your peer's offer below to get "
                                               "an answer code", True)
        g.addWidget(self.my_code, 2, 0)
        self.copy_btn = QPushButton("&Copy")
        self.copy_btn.setAccessibleName("Copy your code")
        self.copy_btn.setEnabled(False)
        g.addWidget(self.copy_btn, 2, 1, Qt.AlignTop)
        g.addWidget(QLabel("Peer's code (their offer, or their answer to your offer):"), 3, 0, 1, 2)
        self.peer_code = _code_box("Peer's code", "Paste the code your peer sent you", False)
        g.addWidget(self.peer_code, 4, 0)
        side = QVBoxLayout()
        self.paste_btn = QPushButton("&Paste")
        self.paste_btn.setAccessibleName("Paste peer's code")
        self.use_btn = QPushButton("&Use code")
        self.use_btn.setAccessibleName("Use peer's code")
        self.use_btn.setToolTip("An offer code gives you an answer code to send back; an answer code connects")
        side.addWidget(self.paste_btn)
        side.addWidget(self.use_btn)
        side.addStretch(1)
        g.addLayout(side, 4, 1)
        self.tabs.addTab(codes, "Copy-paste codes")

        # --- direct TCP
        direct = QWidget()
        f = QFormLayout(direct)
        self.host_edit = QLineEdit(controller.settings.host_address)
        self.host_edit.setAccessibleName("Listen address")
        self.host_edit.setPlaceholderText("[HOST:]PORT, e.g. 0.0.0.0:7000")
        self.host_btn = QPushButton("&Host")
        self.host_btn.setAccessibleName("Host a call")
        self.host_btn.setToolTip("Wait for one peer on this TCP port (LAN or VPN you trust: no authentication)")
        row = QHBoxLayout()
        row.addWidget(self.host_edit, 1)
        row.addWidget(self.host_btn)
        f.addRow("Host on:", row)
        self.connect_edit = QLineEdit(controller.settings.connect_address)
        self.connect_edit.setAccessibleName("Peer address")
        self.connect_edit.setPlaceholderText("HOST:PORT of a peer that hosts")
        self.connect_btn = QPushButton("Call &peer")
        self.connect_btn.setAccessibleName("Connect to host")
        row = QHBoxLayout()
        row.addWidget(self.connect_edit, 1)
        row.addWidget(self.connect_btn)
        f.addRow("Connect to:", row)
        self.tabs.addTab(direct, "Direct (host:port)")

        # --- status
        self.chips = StateChips()
        lay.addWidget(self.chips)
        info = QHBoxLayout()
        self.peer_label = QLabel("Not in a call")
        self.peer_label.setAccessibleName("Peer")
        self.peer_label.setWordWrap(True)
        self.peer_label.setTextInteractionFlags(Qt.TextSelectableByMouse)
        info.addWidget(self.peer_label, 1)
        self.timer_label = QLabel("")
        self.timer_label.setAccessibleName("Call duration")
        info.addWidget(self.timer_label)
        self.hangup_btn = QPushButton("Hang up")
        self.hangup_btn.setAccessibleName("Hang up")
        self.hangup_btn.setToolTip("End the call (Ctrl+H)")
        self.hangup_btn.setEnabled(False)
        self.hangup_btn.setStyleSheet("QPushButton:enabled { background: #c62828; color: white; font-weight: bold;"
                                      " padding: 4px 14px; border-radius: 4px; }")
        info.addWidget(self.hangup_btn)
        lay.addLayout(info)
        self.banner = Banner("Call message")
        lay.addWidget(self.banner)

        self._tick = QTimer(self)
        self._tick.setInterval(500)
        self._tick.timeout.connect(self._update_timer)

        # wiring
        self.offer_btn.clicked.connect(self._create_offer)
        self.copy_btn.clicked.connect(self.copy_code)
        self.paste_btn.clicked.connect(self._paste)
        self.use_btn.clicked.connect(self.use_peer_code)
        self.host_btn.clicked.connect(self._host)
        self.connect_btn.clicked.connect(self._connect)
        self.hangup_btn.clicked.connect(controller.hang_up)
        c = controller
        c.phase_changed.connect(self._on_phase)
        c.offer_ready.connect(lambda code: self._set_my_code(code, "offer"))
        c.answer_ready.connect(lambda code: self._set_my_code(code, "answer"))
        c.listening.connect(self._on_listening)
        c.failed.connect(lambda msg: self.banner.show_message(msg, "error"))
        c.state_changed.connect(self._on_state)
        c.handshake_ok.connect(self._on_handshake)
        c.refused.connect(lambda by, reason: self.banner.show_message(describe_refusal(by, reason), "error"))
        c.peer_lost.connect(lambda reason: self.banner.show_message(
            f"Lost the peer: nothing was received for a few seconds ({reason}).", "error"))
        c.session_error.connect(self._on_error)
        c.call_ended.connect(self._on_ended)
        self._on_phase(c.phase)

    # ------------------------------------------------------------------ actions
    def _create_offer(self) -> None:
        self.banner.show_message("Gathering network addresses for the offer code…", "info")
        self.chips.reset()
        self.c.create_offer()

    def copy_code(self) -> None:
        code = self.my_code.toPlainText().strip()
        if code:
            QGuiApplication.clipboard().setText(code)
            self.banner.show_message("Code copied to the clipboard: send it to your peer.", "info")

    def _paste(self) -> None:
        text = QGuiApplication.clipboard().text()
        if text:
            self.peer_code.setPlainText(text.strip())

    def use_peer_code(self) -> None:
        code = self.peer_code.toPlainText().strip()
        if not code:
            self.banner.show_message("Paste your peer's code first.", "warning")
            return
        if self.c.offerer and self.c.phase == "connecting":
            self.banner.show_message("Connecting…", "info")
            self.c.accept_answer(code)
        else:
            self.chips.reset()
            self.banner.show_message("Reading the offer and preparing your answer code…", "info")
            self.c.accept_offer(code)

    def _host(self) -> None:
        self.chips.reset()
        self.c.settings.host_address = self.host_edit.text().strip()
        if self.c.host(self.host_edit.text()):
            self.banner.show_message("Opening the audio devices and the port…", "info")

    def _connect(self) -> None:
        self.chips.reset()
        self.c.settings.connect_address = self.connect_edit.text().strip()
        if self.c.connect_to(self.connect_edit.text()):
            self.banner.show_message(f"Calling {self.connect_edit.text().strip()}…", "info")

    # ------------------------------------------------------------------ controller → view
    def _set_my_code(self, code: str, kind: str) -> None:
        self.my_code.setPlainText(code)
        self.copy_btn.setEnabled(True)
        if kind == "offer":
            self.banner.show_message("Offer code ready: copy it to your peer, then paste their answer code "
                                     "below and press Use code.", "info")
        else:
            self.banner.show_message("Answer code ready: copy it back to your peer. The call starts when they "
                                     "use it.", "info")

    def _on_listening(self, host: str, port: int) -> None:
        self.banner.show_message(f"Listening on {host}:{port}: waiting for a peer to call.", "info")

    def _on_phase(self, phase: str) -> None:
        idle = phase == "idle"
        for w in (self.offer_btn, self.host_btn, self.connect_btn, self.host_edit, self.connect_edit):
            w.setEnabled(idle)
        self.use_btn.setEnabled(idle or (phase == "connecting" and self.c.offerer))
        self.hangup_btn.setEnabled(not idle and phase != "ending")
        if phase == "in-call":
            self._call_t0 = time.monotonic()
            self._tick.start()
        elif phase == "idle":
            self._tick.stop()

    def _on_state(self, layer: str, state: str, detail: str) -> None:
        if layer == "ice" and state in ("checking", "completed", "failed", "new"):
            self.chips.set_state("ice", state)
        elif layer in ("signaling", "dtls", "channel", "call"):
            self.chips.set_state(layer, state)
        elif layer == "connection" and state == "failed":
            self.chips.set_state("ice", state)
        if layer == "call" and state == "connecting" and detail:
            self.banner.show_message(detail[0].upper() + detail[1:] + "…", "info")
        if layer == "channel" and state == "open":
            self.banner.show_message("Connected: checking that the peer runs the same codec…", "info")

    def _on_handshake(self, ev: Any) -> None:
        who = ev.peer_nickname or "peer"
        version = f", FocalChat {ev.peer_app_version}" if ev.peer_app_version else ""
        self.peer_label.setText(f"In call with <b>{who}</b> — model {ev.peer_model_id}{version}, "
                                f"{ev.peer_chunks_per_packet} chunk(s)/packet, redundancy {ev.peer_redundancy}")
        self.peer_label.setAccessibleDescription(self.peer_label.text())
        self.banner.show_message(f"In call with {who}.", "ok")

    def _on_error(self, kind: str, message: str) -> None:
        self.banner.show_message(describe_error(kind, message), "error")

    def _on_ended(self, reason: str, message: str) -> None:
        self.chips.set_state("call", "ended")
        self.peer_label.setText("Not in a call")
        self.timer_label.setText("")
        self.copy_btn.setEnabled(False)
        self.my_code.clear()
        if self.banner.kind != "error" or reason in ("hangup", "peer-hangup"):
            text = END_TEXT.get(reason, "Call ended.")
            if message and reason not in ("hangup",):
                text += f" ({message})"
            self.banner.show_message(text, "info" if reason in ("hangup", "peer-hangup") else "error")

    def _update_timer(self) -> None:
        if self._call_t0 is not None:
            s = int(time.monotonic() - self._call_t0)
            self.timer_label.setText(f"{s // 60:02d}:{s % 60:02d}")
