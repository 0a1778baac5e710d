"""Small reusable widgets: a level meter, a message banner, state chips."""

from __future__ import annotations

from PySide6.QtCore import Qt
from PySide6.QtWidgets import QFrame, QHBoxLayout, QLabel, QProgressBar, QSizePolicy, QWidget

METER_FLOOR_DB = -60


class LevelMeter(QProgressBar):
    """A dBFS bar (−60..0): green, amber above −12 dBFS, red above −3 dBFS. A screen reader reads its value."""

    def __init__(self, name: str, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.setRange(METER_FLOOR_DB, 0)
        self.setValue(METER_FLOOR_DB)
        self.setTextVisible(True)
        self.setFormat("silent")
        self.setAccessibleName(name)
        self.setMinimumWidth(140)
        self.setMaximumHeight(18)
        self._style = ""
        self.set_level(-120.0)

    def set_level(self, dbfs: float) -> None:
        v = int(max(METER_FLOOR_DB, min(0.0, dbfs)))
        self.setValue(v)
        self.setFormat("silent" if dbfs <= METER_FLOOR_DB else f"{dbfs:.0f} dBFS")
        color = "#2e9d4f" if dbfs < -12 else ("#d69a00" if dbfs < -3 else "#c62828")
        if color != self._style:
            self._style = color
            self.setStyleSheet(f"QProgressBar {{ border: 1px solid #9aa4ad; border-radius: 3px; background: #f4f6f8;"
                               f" text-align: center; font-size: 11px; }}"
                               f" QProgressBar::chunk {{ background: {color}; border-radius: 2px; }}")

    def level_text(self) -> str:
        return self.format()


class Banner(QLabel):
    """A coloured one-paragraph message (kind: info, ok, warning, error); hidden when empty."""

    COLORS = {"info": ("#e8f1fb", "#1f4e79"), "ok": ("#e7f5ea", "#1b5e20"),
              "warning": ("#fff4d6", "#7a4f00"), "error": ("#fdeaea", "#8e1b1b")}

    def __init__(self, name: str, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.setWordWrap(True)
        self.setTextInteractionFlags(Qt.TextSelectableByMouse)
        self.setAccessibleName(name)
        self.kind = ""
        self.hide()

    def show_message(self, text: str, kind: str = "info") -> None:
        if not text:
            self.clear_message()
            return
        bg, fg = self.COLORS.get(kind, self.COLORS["info"])
        self.kind = kind
        self.setText(text)
        self.setAccessibleDescription(text)
        self.setStyleSheet(f"QLabel {{ background: {bg}; color: {fg}; border: 1px solid {fg}; border-radius: 4px;"
                           f" padding: 6px 8px; }}")
        self.show()

    def clear_message(self) -> None:
        self.kind = ""
        self.setText("")
        self.hide()


class StateChips(QFrame):
    """The connection state line: one chip per layer (signaling → ICE → DTLS → channel → call)."""

    LAYERS = (("signaling", "Signaling"), ("ice", "ICE"), ("dtls", "DTLS"), ("channel", "Channel"),
              ("call", "Call"))
    GOOD = {"stable", "connected", "completed", "open", "in-call", "have-local-offer", "have-remote-offer"}
    BAD = {"failed", "closed", "ended", "disconnected"}

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        lay = QHBoxLayout(self)
        lay.setContentsMargins(0, 0, 0, 0)
        lay.setSpacing(2)
        self.chips: dict[str, QLabel] = {}
        self.states: dict[str, str] = {}
        for i, (key, title) in enumerate(self.LAYERS):
            if i:
                arrow = QLabel("›")
                arrow.setStyleSheet("color: #7b8794; font-size: 11px;")
                lay.addWidget(arrow)
            chip = QLabel()
            chip.setSizePolicy(QSizePolicy.Minimum, QSizePolicy.Fixed)  # never cut a state off
            chip.setAccessibleName(f"{title} state")
            self.chips[key] = chip
            lay.addWidget(chip)
        lay.addStretch(1)
        self.reset()

    def reset(self) -> None:
        self.states = {}
        for key, _ in self.LAYERS:
            self._paint(key, "—")

    def set_state(self, layer: str, state: str) -> None:
        if layer not in self.chips:
            return
        self.states[layer] = state
        self._paint(layer, state)

    def _paint(self, layer: str, state: str) -> None:
        title = dict(self.LAYERS)[layer]
        if state in self.GOOD:
            bg, fg = "#e7f5ea", "#1b5e20"
        elif state in self.BAD:
            bg, fg = "#fdeaea", "#8e1b1b"
        elif state == "—":
            bg, fg = "#f1f3f5", "#7b8794"
        else:
            bg, fg = "#fff4d6", "#7a4f00"
        chip = self.chips[layer]
        chip.setText(f"{title}: {state}")
        chip.setAccessibleDescription(f"{title} {state}")
        chip.setStyleSheet(f"QLabel {{ background: {bg}; color: {fg}; border-radius: 8px; padding: 1px 5px;"
                           f" font-size: 11px; }}")

    def text(self) -> str:
        return " › ".join(self.chips[k].text() for k, _ in self.LAYERS)
