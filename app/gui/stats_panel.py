"""The live view of a call (pyqtgraph): bitrates, latency, jitter buffer, compute, and the counters."""

from __future__ import annotations

import os
import time
from collections import deque
from typing import Any

os.environ.setdefault("PYQTGRAPH_QT_LIB", "PySide6")

import pyqtgraph as pg  # noqa: E402
from PySide6.QtWidgets import QGridLayout, QGroupBox, QLabel, QVBoxLayout, QWidget  # noqa: E402

HISTORY_S = 60.0

pg.setConfigOptions(antialias=True, background="w", foreground="#37474f")


def _plot(title: str, unit: str, name: str) -> pg.PlotWidget:
    w = pg.PlotWidget()
    w.setAccessibleName(name)
    w.setTitle(title, size="10pt")
    w.setLabel("left", unit)
    w.setLabel("bottom", "s")
    w.showGrid(x=True, y=True, alpha=0.25)
    w.addLegend(offset=(6, 4), labelTextSize="8pt")
    w.setMouseEnabled(x=False, y=False)
    w.hideButtons()
    w.setMenuEnabled(False)
    w.setMinimumHeight(130)
    return w


class StatsPanel(QGroupBox):
    """Fed with :class:`app.session.CallStats` snapshots (``add``); keeps the last minute."""

    SERIES = {
        "rate": (("payload", "payload kbps", "#1565c0"), ("wire", "on-wire kbps", "#ef6c00")),
        "latency": (("m2e", "mouth-to-ear ms", "#6a1b9a"), ("rtt", "RTT ms", "#2e7d32")),
        "buffer": (("depth", "buffered chunks", "#00838f"), ("target", "target", "#9e9e9e")),
        "compute": (("enc", "encode ms", "#c62828"), ("dec", "decode ms", "#283593")),
    }

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__("Live view", parent)
        lay = QVBoxLayout(self)
        grid = QGridLayout()
        grid.setSpacing(6)
        self.plots = {
            "rate": _plot("Bitrate (sent)", "kbps", "Bitrate plot"),
            "latency": _plot("Latency", "ms", "Latency plot"),
            "buffer": _plot("Jitter buffer", "chunks", "Jitter buffer plot"),
            "compute": _plot("Codec time per 80 ms chunk", "ms", "Codec time plot"),
        }
        for i, key in enumerate(("rate", "latency", "buffer", "compute")):
            grid.addWidget(self.plots[key], i // 2, i % 2)
        lay.addLayout(grid, 1)
        self.curves: dict[str, Any] = {}
        self.data: dict[str, deque[float]] = {}
        self.times: deque[float] = deque(maxlen=512)
        for key, series in self.SERIES.items():
            for sid, label, color in series:
                style = pg.mkPen(color, width=2, style=pg.QtCore.Qt.DashLine if sid == "target" else
                                 pg.QtCore.Qt.SolidLine)
                self.curves[sid] = self.plots[key].plot([], [], pen=style, name=label)
                self.data[sid] = deque(maxlen=512)
        self.summary = QLabel("No call yet.")
        self.summary.setAccessibleName("Call statistics")
        self.summary.setWordWrap(True)
        self.summary.setStyleSheet("QLabel { font-family: monospace; font-size: 11px; }")
        lay.addWidget(self.summary)
        self._t0: float | None = None
        self.last: Any = None

    def reset(self) -> None:
        self._t0 = None
        self.times.clear()
        for d in self.data.values():
            d.clear()
        for c in self.curves.values():
            c.setData([], [])

    def add(self, st: Any) -> None:
        now = time.monotonic()
        if self._t0 is None:
            self._t0 = now
        self.last = st
        self.times.append(now - self._t0)
        rtt = st.rtt_ms if st.rtt_ms is not None else float("nan")
        values = {"payload": st.payload_kbps, "wire": st.wire_kbps, "m2e": st.mouth_to_ear_ms, "rtt": rtt,
                  "depth": float(st.jitter_depth), "target": float(st.jitter_target), "enc": st.encode_ms,
                  "dec": st.decode_ms}
        for sid, v in values.items():
            self.data[sid].append(float(v))
        t = list(self.times)
        while t and t[-1] - t[0] > HISTORY_S:
            self.times.popleft()
            for d in self.data.values():
                d.popleft()
            t.pop(0)
        for sid, curve in self.curves.items():
            curve.setData(t, list(self.data[sid]), connect="finite")
        self.summary.setText(self.describe(st))

    @staticmethod
    def describe(st: Any) -> str:
        lat = st.latency
        rtt = f"{st.rtt_ms:.0f} ms" if st.rtt_ms is not None else "—"
        return (f"payload {st.payload_kbps:.2f} kbps · on the wire {st.wire_kbps:.1f} kbps ({st.wire_source}) · "
                f"RTT {rtt}\n"
                f"played {st.played} · lost {st.lost} · late {st.late} · concealed {st.concealed} · "
                f"recovered {st.recovered} · malformed {st.malformed} · buffer {st.jitter_depth}/{st.jitter_target}\n"
                f"mouth-to-ear ≈ {st.mouth_to_ear_ms:.0f} ms = chunk {lat.chunk_ms:.0f} + encode {lat.encode_ms:.1f} "
                f"+ packets {lat.packetization_ms:.0f} + network {lat.network_ms:.1f} + buffer {lat.jitter_ms:.0f} "
                f"+ decode {lat.decode_ms:.1f} + device {lat.device_ms:.0f}")
