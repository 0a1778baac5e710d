"""Screenshot of the whole X screen ($DISPLAY) as PNG: ``python tests/xshot.py OUT.png`` (Qt's xcb plugin).

Grabs the X server's framebuffer, i.e. what a person would see, not a widget's own rendering."""

import os
import sys

os.environ["QT_QPA_PLATFORM"] = "xcb"
from PySide6.QtGui import QGuiApplication  # noqa: E402

app = QGuiApplication(sys.argv[:1])
ok = app.primaryScreen().grabWindow(0).save(sys.argv[1])
sys.exit(0 if ok else 1)
