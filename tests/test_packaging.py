"""packaging/: the desktop entry and icon are well-formed, the launcher runs, and (when a bundle was built
with packaging/build.sh, e.g. by `make bundle`) the built app passes its headless smoke test."""

from __future__ import annotations

import configparser
import os
import subprocess
import sys
from pathlib import Path
from xml.etree import ElementTree

import pytest

REPO = Path(__file__).resolve().parent.parent
PKG = REPO / "packaging"


def test_desktop_entry():
    cp = configparser.ConfigParser(interpolation=None)
    cp.optionxform = str
    cp.read(PKG / "focalchat.desktop", encoding="utf-8")
    e = cp["Desktop Entry"]
    assert e["Type"] == "Application" and e["Name"] == "FocalChat" and e["Icon"] == "focalchat"
    assert e["Exec"].split()[:2] == ["focalchat", "gui"] and e["Terminal"] == "false"
    assert e["Categories"].endswith(";") and "Network" in e["Categories"]


def test_icon_is_svg():
    root = ElementTree.parse(PKG / "focalchat.svg").getroot()
    assert root.tag.endswith("svg") and root.get("viewBox") == "0 0 256 256"


def test_recipe_names_files_that_exist():
    spec = (PKG / "focalchat.spec").read_text()
    for rel in ("assets", "packaging/focalchat.svg", "packaging/launcher.py"):
        assert (REPO / rel).exists()
        assert rel.split("/")[-1] in spec
    for script in ("build.sh", "smoke_test.sh", "install.sh"):
        assert os.access(PKG / script, os.X_OK), script


def test_launcher_is_the_command_line():
    p = subprocess.run([sys.executable, str(PKG / "launcher.py"), "--help"], capture_output=True, text=True,
                       timeout=60, cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO)})
    assert p.returncode == 0 and "gui" in p.stdout


@pytest.mark.skipif(not (REPO / "dist" / "focalchat" / "focalchat").exists(),
                    reason="no bundle built (make bundle / packaging/build.sh)")
def test_built_bundle_smoke_test():
    p = subprocess.run(["bash", str(PKG / "smoke_test.sh")], capture_output=True, text=True, timeout=300, cwd=REPO)
    assert p.returncode == 0, p.stdout + p.stderr
