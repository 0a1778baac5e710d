"""The desktop app's widgets and main-window flows, offscreen (pytest-qt), against real CallSessions on
127.0.0.1 with file-backed audio (the real-audio, real-window test is tests/test_gui_e2e.py)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

import pytest

from tests.gui_helpers import FakeSession, drain, headless_peer, make_window

pytest.importorskip("PySide6")
pytest.importorskip("pyqtgraph")

from PySide6.QtCore import Qt  # noqa: E402
from PySide6.QtWidgets import (  # noqa: E402
    QAbstractButton,
    QAbstractSlider,
    QComboBox,
    QLineEdit,
    QPlainTextEdit,
)

from app.modelref import untrained_model  # noqa: E402

WAIT_MS = 20000


@pytest.fixture(scope="module")
def model():
    return untrained_model()


def close(w, qtbot):
    w.close()
    qtbot.waitUntil(lambda: w.controller.session is None, timeout=WAIT_MS)


# ---------------------------------------------------------------------------------------------------------------
# settings
# ---------------------------------------------------------------------------------------------------------------
def test_settings_round_trip_and_bad_values(tmp_path):
    from app.gui.settings import Settings, load_settings, save_settings

    p = tmp_path / "s.json"
    assert load_settings(p) == Settings()  # missing file: defaults
    s = Settings(nickname="ann", preset="low-bandwidth", stun_url="stun:example.org:3478", output_volume=1.5)
    save_settings(s, p)
    back = load_settings(p)
    assert back == s and not back.problems
    assert back.ice_servers() == ("stun:example.org:3478",)
    p.write_text(json.dumps({"nickname": 5, "preset": "warp", "output_volume": 9, "unknown": 1}))
    bad = load_settings(p)
    assert bad.nickname == "" and bad.preset == "default" and bad.output_volume == 2.0
    assert len(bad.problems) == 2
    p.write_text("{not json")
    assert load_settings(p).problems


def test_settings_of_the_first_version_move_from_the_old_default_precision(tmp_path):
    """Files written before precision "auto" existed hold the old default "fp32" (which misses real time on the
    embedded model): they load as "auto"; a file of this version keeps an "fp32" chosen in the dialog."""
    from app.gui.settings import SETTINGS_VERSION, Settings, load_settings, save_settings

    p = tmp_path / "s.json"
    p.write_text(json.dumps({"nickname": "ann", "mode": "fp32"}))
    old = load_settings(p)
    assert old.mode == "auto" and old.nickname == "ann" and not old.problems
    save_settings(Settings(mode="fp32"), p)
    assert json.loads(p.read_text())["version"] == SETTINGS_VERSION
    assert load_settings(p).mode == "fp32"
    p.write_text(json.dumps({"mode": "int8"}))
    assert load_settings(p).mode == "int8"


def test_address_parsing():
    from app.gui.controller import parse_address

    assert parse_address("7000", listen=True) == ("0.0.0.0", 7000)
    assert parse_address("127.0.0.1:0", listen=True) == ("127.0.0.1", 0)
    assert parse_address("[::1]:7000", listen=False) == ("::1", 7000)
    for bad, listen in (("7000", False), ("host:x", False), ("h:0", False), ("h:70000", True)):
        with pytest.raises(ValueError):
            parse_address(bad, listen=listen)


# ---------------------------------------------------------------------------------------------------------------
# the window
# ---------------------------------------------------------------------------------------------------------------
def test_model_loads_in_background_and_untrained_warning_is_shown(qtbot, tmp_path, monkeypatch):
    import app.modelref

    monkeypatch.setattr(app.modelref, "default_model_available", lambda: False)
    w = make_window(qtbot, tmp_path, autoload=True)
    progress = []
    w.model_bar.progress.valueChanged.connect(progress.append)
    qtbot.waitUntil(lambda: w.controller.model is not None, timeout=WAIT_MS)
    assert w.model_bar.info.untrained
    assert w.banner.isVisible() and "UNTRAINED" in w.banner.text()
    assert "0.80 kbps" in w.model_bar.kbps_label.text()  # the tiny model: 16-bit tokens
    # precision 'auto' runs a stand-in in fp32 (int8 is for the embedded model), and the bar says so
    assert w.model_bar.info.mode == "fp32" and "· fp32 ·" in w.model_bar.status.text()
    assert w.demo.run_btn.isEnabled()
    assert progress and progress[-1] == 100
    close(w, qtbot)


def test_published_choices_show_their_bitrate(qtbot, tmp_path):
    w = make_window(qtbot, tmp_path)
    for spec, kbps in (("2k", "0.55"), ("4k", "0.60"), ("65k", "0.80")):
        w.model_bar.select_spec(spec)
        assert w.model_bar.current_spec() == spec
        assert kbps in w.model_bar.box.currentText() and kbps in w.model_bar.kbps_label.text()
    w.model_bar.box.setEditText("some-org/some-model")
    assert w.model_bar.current_spec() == "some-org/some-model"
    close(w, qtbot)


def test_a_model_that_fails_to_load_is_reported(qtbot, tmp_path):
    w = make_window(qtbot, tmp_path)
    w.model_bar.load(str(tmp_path / "no-such-folder"))
    qtbot.waitUntil(lambda: w.banner.kind == "error", timeout=WAIT_MS)
    assert "could not load model" in w.banner.text()
    assert w.model_bar.load_btn.isEnabled()
    close(w, qtbot)


def test_offer_answer_call_with_chat_stats_recording_and_hang_up(qtbot, tmp_path, model):
    from app import session as s

    w = make_window(qtbot, tmp_path, model)
    cp = w.call_panel
    qtbot.mouseClick(cp.offer_btn, Qt.LeftButton)
    qtbot.waitUntil(lambda: cp.my_code.toPlainText().startswith("FC1O:"), timeout=WAIT_MS)
    assert cp.copy_btn.isEnabled() and not cp.offer_btn.isEnabled()
    qtbot.mouseClick(cp.copy_btn, Qt.LeftButton)
    from PySide6.QtGui import QGuiApplication

    assert QGuiApplication.clipboard().text() == cp.my_code.toPlainText()

    peer, src, sink = headless_peer(model, nickname="bob")
    try:
        answer = peer.accept_offer_code(cp.my_code.toPlainText())
        cp.peer_code.setPlainText(answer)
        qtbot.mouseClick(cp.use_btn, Qt.LeftButton)
        qtbot.waitUntil(lambda: w.controller.phase == "in-call", timeout=WAIT_MS)
        assert "bob" in cp.peer_label.text() and model.model_id in cp.peer_label.text()
        assert cp.chips.states.get("channel") == "open" and cp.chips.states.get("call") == "in-call"
        assert cp.hangup_btn.isEnabled() and w.talk.record_btn.isEnabled()
        qtbot.waitUntil(lambda: w.stats_panel.last is not None and w.stats_panel.last.payload_kbps > 0,
                        timeout=WAIT_MS)
        assert "payload" in w.stats_panel.summary.text() and "mouth-to-ear" in w.stats_panel.summary.text()
        qtbot.waitUntil(lambda: w.talk.mic_meter.value() > -60, timeout=WAIT_MS)  # the clip is speech

        # chat both ways
        peer.send_text("hello from bob")
        qtbot.waitUntil(lambda: "hello from bob" in w.chat.log.toPlainText(), timeout=WAIT_MS)
        w.chat.entry.setText("hi bob")
        qtbot.keyClick(w.chat.entry, Qt.Key_Return)
        ev = drain(peer, s.TextReceived)
        assert ev.text == "hi bob" and ev.nickname == "gui"

        # record two seconds of the call
        qtbot.mouseClick(w.talk.record_btn, Qt.LeftButton)
        assert w.controller.recording
        qtbot.wait(2000)
        qtbot.mouseClick(w.talk.record_btn, Qt.LeftButton)
        qtbot.waitUntil(lambda: w.recordings.list.count() == 1, timeout=WAIT_MS)
        from app.recording import RECEIVED, SENT, RecordingReader

        rec = RecordingReader(w.recordings.selected_path()).streams()
        assert len(rec[SENT]) >= 15 and len(rec[RECEIVED]) >= 15

        qtbot.mouseClick(cp.hangup_btn, Qt.LeftButton)
        qtbot.waitUntil(lambda: w.controller.phase == "idle", timeout=WAIT_MS)
        assert drain(peer, s.CallEnded).reason == "peer-hangup"
        assert cp.offer_btn.isEnabled() and "Call ended" in cp.banner.text()
        # no leftovers of the private whole-call recording
        assert sorted(p.name for p in (tmp_path / "recordings").iterdir()) == \
            [os.path.basename(w.recordings.selected_path())]

        # export the recording to WAV from the Recordings tab
        out = tmp_path / "call.wav"
        w.recordings.export(str(out))
        qtbot.waitUntil(lambda: "Exported" in w.recordings.banner.text(), timeout=WAIT_MS)
        import soundfile as sf

        info = sf.info(str(out))
        assert info.channels == 2 and info.duration > 1.5
    finally:
        peer.stop()
        src.close()
        sink.close()
    close(w, qtbot)


def test_host_and_connect_then_peer_hangs_up(qtbot, tmp_path, model):
    w = make_window(qtbot, tmp_path, model)
    cp = w.call_panel
    cp.tabs.setCurrentIndex(1)
    ports = []
    w.controller.listening.connect(lambda h, p: ports.append(p))
    cp.host_edit.setText("127.0.0.1:0")
    qtbot.mouseClick(cp.host_btn, Qt.LeftButton)
    qtbot.waitUntil(lambda: bool(ports), timeout=WAIT_MS)
    assert f"127.0.0.1:{ports[0]}" in cp.banner.text()
    peer, src, sink = headless_peer(model, nickname="carol")
    try:
        peer.connect("127.0.0.1", ports[0])
        qtbot.waitUntil(lambda: w.controller.phase == "in-call", timeout=WAIT_MS)
        assert "carol" in cp.peer_label.text()
        peer.stop()
        qtbot.waitUntil(lambda: w.controller.phase == "idle", timeout=WAIT_MS)
        assert "peer hung up" in cp.banner.text()
    finally:
        peer.stop()
        src.close()
        sink.close()
    close(w, qtbot)


def test_bad_code_is_shown_and_nothing_starts(qtbot, tmp_path, model):
    w = make_window(qtbot, tmp_path, model)
    cp = w.call_panel
    cp.peer_code.setPlainText("FC1O:this-is-not-a-code")
    qtbot.mouseClick(cp.use_btn, Qt.LeftButton)
    assert cp.banner.kind == "error" and "code" in cp.banner.text().lower()
    assert w.controller.phase == "idle"
    cp.peer_code.clear()
    qtbot.mouseClick(cp.use_btn, Qt.LeftButton)
    assert "Paste your peer's code first" in cp.banner.text()
    close(w, qtbot)


def test_connecting_to_nobody_is_reported(qtbot, tmp_path, model):
    import socket

    with socket.socket() as sock:  # a port that is certainly closed
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    w = make_window(qtbot, tmp_path, model, connect_timeout_s=3.0)
    cp = w.call_panel
    cp.tabs.setCurrentIndex(1)
    cp.connect_edit.setText(f"127.0.0.1:{port}")
    qtbot.mouseClick(cp.connect_btn, Qt.LeftButton)
    qtbot.waitUntil(lambda: cp.banner.kind == "error", timeout=WAIT_MS)
    assert "listening" in cp.banner.text().lower() or "connect" in cp.banner.text().lower()
    qtbot.waitUntil(lambda: w.controller.phase == "idle", timeout=WAIT_MS)
    assert cp.connect_btn.isEnabled()
    cp.connect_edit.setText("nonsense")
    qtbot.mouseClick(cp.connect_btn, Qt.LeftButton)
    assert "HOST:PORT" in cp.banner.text()
    close(w, qtbot)


def test_a_peer_with_another_model_is_refused_with_a_clear_message(qtbot, tmp_path, model):
    w = make_window(qtbot, tmp_path, model)
    cp = w.call_panel
    qtbot.mouseClick(cp.offer_btn, Qt.LeftButton)
    qtbot.waitUntil(lambda: cp.my_code.toPlainText().startswith("FC1O:"), timeout=WAIT_MS)
    other = untrained_model(seed=1)
    peer, src, sink = headless_peer(other)
    try:
        cp.peer_code.setPlainText(peer.accept_offer_code(cp.my_code.toPlainText()))
        qtbot.mouseClick(cp.use_btn, Qt.LeftButton)
        qtbot.waitUntil(lambda: w.controller.phase == "idle", timeout=WAIT_MS)
        text = cp.banner.text()
        assert cp.banner.kind == "error" and "refused" in text.lower() and "same model" in text
    finally:
        peer.stop()
        src.close()
        sink.close()
    close(w, qtbot)


@pytest.mark.parametrize("events, expected", [
    ([("Error", dict(kind="ice-failed", message="no candidate pair")),
      ("CallEnded", dict(reason="connect-failed", message="no candidate pair"))], "ICE failed"),
    ([("PeerLost", dict(reason="nothing received for 3.0 s", silent_s=3.0)),
      ("CallEnded", dict(reason="peer-lost", message="nothing received"))], "Lost the peer"),
    ([("Error", dict(kind="connect-timeout", message="10 s")),
      ("CallEnded", dict(reason="connect-failed", message=""))], "did not connect in time"),
])
def test_session_errors_are_explained(qtbot, tmp_path, model, events, expected):
    from app import session as s

    w = make_window(qtbot, tmp_path, model)
    fake = FakeSession()
    c = w.controller
    c.session = fake
    c._set_phase("connecting")
    c._attach(fake)
    fake.events.put(s.StateChanged(layer="ice", state="checking"))
    for name, kw in events:
        fake.events.put(getattr(s, name)(**kw))
    qtbot.waitUntil(lambda: c.phase == "idle", timeout=WAIT_MS)
    assert expected in w.call_panel.banner.text() and w.call_panel.banner.kind == "error"
    assert w.call_panel.chips.states["ice"] == "checking"
    w.close()


def test_talk_controls_and_push_to_talk_key(qtbot, tmp_path, model):
    w = make_window(qtbot, tmp_path, model, ptt_key="F8")
    c = w.controller
    fake = FakeSession()
    c.session = fake
    c._set_phase("in-call")
    qtbot.mouseClick(w.talk.mode_buttons["ptt"], Qt.LeftButton)
    assert ("set_transmit_mode", "ptt") in fake.calls and w.talk.ptt_btn.isEnabled()
    w.activateWindow()
    qtbot.waitUntil(w.isActiveWindow, timeout=5000)
    qtbot.keyPress(w, Qt.Key_F8)
    assert c.ptt_pressed and ("set_ptt", True) in fake.calls
    qtbot.keyRelease(w, Qt.Key_F8)
    assert not c.ptt_pressed and ("set_ptt", False) in fake.calls
    qtbot.mousePress(w.talk.ptt_btn, Qt.LeftButton)
    assert c.ptt_pressed
    qtbot.mouseRelease(w.talk.ptt_btn, Qt.LeftButton)
    assert not c.ptt_pressed
    w.act_mute.trigger()  # Ctrl+M
    assert c.muted and ("set_muted", True) in fake.calls and w.talk.mute_btn.isChecked()
    w.talk.volume.setValue(150)
    assert ("set_output_volume", 1.5) in fake.calls and w.settings.output_volume == 1.5
    qtbot.mouseClick(w.talk.mode_buttons["vad"], Qt.LeftButton)
    assert w.talk.vad_slider.isEnabled() and not w.talk.ptt_btn.isEnabled()
    w.talk.vad_slider.setValue(-52)  # applied to the call in progress, and kept for the next calls
    assert ("set_vad_threshold", -52.0) in fake.calls and w.settings.vad_threshold_dbfs == -52.0
    assert "during a call" in w.talk.vad_slider.toolTip()
    c.session = None
    c._set_phase("idle")
    w.close()


def test_gated_source_fallback():
    import numpy as np

    from app.gui.taps import GatedSource

    class Src:
        sample_rate = 16000

        def read_chunk(self, timeout=None):
            return np.full(1280, 0.1, np.float32)

    g = GatedSource(Src())
    assert g.sample_rate == 16000 and g.read_chunk().any() and g.transmitting
    g.muted = True
    assert not g.read_chunk().any()
    g.muted, g.mode = False, "ptt"
    assert not g.read_chunk().any()
    g.ptt = True
    assert g.read_chunk().any()
    g.mode, g.vad_threshold_dbfs = "vad", -10.0  # 0.1 = -20 dBFS: below the threshold
    for _ in range(GatedSource.VAD_HOLD_CHUNKS + 1):
        x = g.read_chunk()
    assert not x.any() and not g.vad_active
    g.vad_threshold_dbfs = -30.0
    assert g.read_chunk().any() and g.vad_active


def test_codec_demo_tab(qtbot, tmp_path, model):
    w = make_window(qtbot, tmp_path, model)
    d = w.demo
    w.tabs.setCurrentWidget(d)
    d.loss.setValue(20)
    d.burst.setValue(20)
    d.jitter.setValue(30)
    assert d.loss_label.text() == "20 %" and d.burst_label.text() == "2.0 pkts"
    qtbot.mouseClick(d.run_btn, Qt.LeftButton)
    qtbot.waitUntil(lambda: d.result is not None, timeout=WAIT_MS)
    r = d.result
    assert r.net_lost > 0 and r.concealed > 0 and abs(r.payload_kbps - 0.8) < 0.05
    assert len(r.decoded) == len(r.original) * 24000 // 16000
    assert "payload 0.80 kbps" in d.summary.text()
    assert d.play_orig_btn.isEnabled() and d.play_dec_btn.isEnabled()
    assert d.img_orig.image is not None and d.img_dec.image is not None
    assert w.settings.demo_loss_pct == 20.0
    w.close()


def test_every_control_has_an_accessible_name(qtbot, tmp_path):
    w = make_window(qtbot, tmp_path)
    missing = []
    for cls in (QAbstractButton, QLineEdit, QComboBox, QAbstractSlider, QPlainTextEdit):
        for widget in w.findChildren(cls):
            if type(widget).__name__ in ("QScrollBar",) or widget.parent() is None:
                continue
            if type(widget).__name__ == "QLineEdit" and isinstance(widget.parent(), QComboBox):
                continue  # the editable combo's own line edit: the combo has the name
            name = widget.accessibleName() or (widget.text() if isinstance(widget, QAbstractButton) else "")
            if not name.replace("&", "").strip() and widget.isVisibleTo(w):
                missing.append(f"{type(widget).__name__} {widget.objectName()} {widget.toolTip()!r}")
    assert not missing, missing
    shortcuts = {a.shortcut().toString() for a in (w.act_mute, w.act_record, w.act_hangup, w.act_chat,
                                                    w.act_settings)}
    assert {"Ctrl+M", "Ctrl+R", "Ctrl+H", "Ctrl+L", "Ctrl+,"} <= shortcuts
    w.close()


def test_settings_are_saved_on_close_and_restored(qtbot, tmp_path):
    from app.gui.main_window import MainWindow
    from app.gui.settings import load_settings

    w = make_window(qtbot, tmp_path, nickname="zoe")
    w.talk.volume.setValue(80)
    w.tabs.setCurrentIndex(2)
    w.close()
    saved = load_settings(tmp_path / "settings.json")
    assert saved.nickname == "zoe" and saved.output_volume == 0.8 and saved.window_tab == 2
    w2 = MainWindow(saved, tmp_path / "settings.json", autoload=False)
    qtbot.addWidget(w2)
    assert w2.talk.volume.value() == 80 and w2.tabs.currentIndex() == 2
    w2.close()


def test_settings_dialog_applies(qtbot, tmp_path):
    from app.gui.settings import Settings
    from app.gui.settings_dialog import SettingsDialog

    s = Settings()
    dlg = SettingsDialog(s)
    qtbot.addWidget(dlg)
    dlg.nickname.setText("ann")
    dlg.stun.setText("stun:stun.example.org:3478")
    dlg.turn.setText("turn:turn.example.org:3478")
    dlg.turn_user.setText("u")
    dlg.turn_pass.setText("p")
    dlg.preset.setCurrentIndex(dlg.preset.findData("low-bandwidth"))
    dlg.apply()
    assert s.nickname == "ann" and s.preset == "low-bandwidth"
    stun, turn = s.ice_servers()
    assert stun == "stun:stun.example.org:3478" and turn.username == "u" and turn.credential == "p"


def test_focalchat_gui_smoke_test_exits_cleanly(tmp_path):
    env = {**os.environ, "QT_QPA_PLATFORM": "offscreen", "XDG_CONFIG_HOME": str(tmp_path / "cfg"),
           "XDG_DATA_HOME": str(tmp_path / "data")}
    t0 = time.monotonic()
    p = subprocess.run([sys.executable, "-m", "app.cli", "gui", "--model", "untrained", "--smoke-test", "60"],
                       env=env, capture_output=True, text=True, timeout=120)
    assert p.returncode == 0, p.stderr
    assert (tmp_path / "cfg" / "focalchat" / "settings.json").exists()
    assert time.monotonic() - t0 < 60
    for marker in ("Traceback", "Fatal Python error", "ModuleNotFoundError"):
        assert marker not in p.stderr
