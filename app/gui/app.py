"""Starting the desktop app: ``focalchat gui`` (see :mod:`app.commands.gui`)."""

from __future__ import annotations

import logging
import os
import signal
import sys
from pathlib import Path

log = logging.getLogger(__name__)


def create_app(argv: list[str] | None = None):
    """The QApplication (created once per process)."""
    os.environ.setdefault("PYQTGRAPH_QT_LIB", "PySide6")
    from PySide6.QtWidgets import QApplication

    app = QApplication.instance()
    if app is None:
        app = QApplication(argv or [sys.argv[0]])
    app.setApplicationName("FocalChat")
    app.setOrganizationName("FocalChat")
    app.setDesktopFileName("focalchat")
    return app


def run(config: str | None = None, model: str | None = None, host: str | None = None, connect: str | None = None,
        smoke_test: float | None = None) -> int:
    """Open the main window; returns the exit status. ``smoke_test``: load the model, then quit (status 0 when
    it loaded) after at most that many seconds."""
    from PySide6.QtCore import QTimer

    from app.gui.main_window import MainWindow
    from app.gui.settings import default_config_path, load_settings

    app = create_app()
    path = Path(config) if config else default_config_path()
    settings = load_settings(path)
    if model:
        settings.model = model
    win = MainWindow(settings, path)
    win.show()
    status = {"code": 0}

    # Ctrl+C / SIGTERM close the window in order (hang up, close devices, save settings)
    def on_signal(signum, _frame) -> None:
        log.info("signal %d: closing", signum)
        QTimer.singleShot(0, win.close)

    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, on_signal)
    wake = QTimer()
    wake.start(200)  # lets Python run its signal handlers while Qt waits
    wake.timeout.connect(lambda: None)

    c = win.controller
    c.phase_changed.connect(lambda p: log.info("call phase: %s", p))
    c.state_changed.connect(lambda layer, s, d: log.info("%s: %s%s", layer, s, f" ({d})" if d else ""))
    c.listening.connect(lambda h, p: log.info("listening on %s:%d", h, p))
    c.failed.connect(lambda m: log.warning("%s", m))
    c.session_error.connect(lambda k, m: log.warning("error (%s): %s", k, m))
    c.call_ended.connect(lambda r, m: log.info("call ended: %s %s", r, m))

    def after_load(_model, info) -> None:
        log.info("model %s", info.summary())
        if info.untrained:
            log.warning("%s", info.warning)
        if smoke_test is not None:
            QTimer.singleShot(300, win.close)
        elif host:
            c.host(host)
        elif connect:
            c.connect_to(connect)

    def load_failed(msg: str) -> None:
        log.error("%s", msg)
        if smoke_test is not None:
            status["code"] = 1
            QTimer.singleShot(0, win.close)

    win.model_bar.loaded.connect(after_load)
    win.model_bar.failed.connect(load_failed)
    if smoke_test is not None:
        def too_slow() -> None:
            log.error("smoke test: the model did not load within %.0f s", smoke_test)
            status["code"] = 1
            win.close()
        QTimer.singleShot(int(smoke_test * 1000), too_slow)
    code = app.exec()
    wake.stop()
    return status["code"] or int(code)
