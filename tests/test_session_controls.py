"""The call engine's user controls (mute, push-to-talk, VAD, output volume, levels) and DTX, with real aiortc
peers on 127.0.0.1 and file sources/sinks (helpers from tests/test_session.py). Also the VAD, the jitter
buffer's pause items and the decoder's comfort noise on their own. Every wait is bounded; no timing
assertions."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from app.conceal import StreamDecoder
from app.jitter import JitterBuffer, PlayoutKind
from app.modelref import SPEECH_SAMPLE
from app.packet import AudioFlags, AudioGeometry, parse_packet
from app.recording import RECEIVED, SENT
from app.session import CallConfig, CallEnded, PeerLost
from app.vad import LEVEL_FLOOR_DBFS, VoiceActivityDetector, rms_dbfs
from tests.test_session import Pair, model, pairs, recorded, wait_until  # noqa: F401

SR = 16000


def speech(seconds: float) -> np.ndarray:
    x, sr = sf.read(str(SPEECH_SAMPLE), dtype="float32")
    assert sr == SR
    return x[: int(seconds * SR)]


def wav(tmp_path: Path, name: str, x: np.ndarray) -> Path:
    path = tmp_path / name
    sf.write(str(path), x.astype(np.float32), SR, subtype="FLOAT")
    return path


class Sniffer:
    """Wraps a session's transport.send: parses every AUDIO packet it sends (flags, first chunk, count)."""

    def __init__(self, session, model) -> None:  # noqa: F811 - the model fixture, passed in
        self.geometry = AudioGeometry(model.bits_per_token, model.tokens_per_chunk, 80.0)
        self.audio: list[tuple[int, int, int]] = []  # (first chunk, primary chunks, flags)
        tr = session.transport
        self._send = tr.send

        def send(data: bytes) -> bool:
            try:
                pkt = parse_packet(data, self.geometry)
            except Exception:  # noqa: BLE001 - not ours to judge here
                pkt = None
            if pkt is not None and hasattr(pkt, "first_chunk"):
                self.audio.append((pkt.first_chunk, len(pkt.chunks), int(pkt.flags)))
            return self._send(data)

        tr.send = send


# ---------------------------------------------------------------------------------------------------------------
# configuration and argument checks
# ---------------------------------------------------------------------------------------------------------------
def test_config_fields_are_validated():
    c = CallConfig()
    assert (c.transmit_mode, c.output_volume, c.vad_threshold_dbfs) == ("continuous", 1.0, -45.0)
    assert CallConfig(transmit_mode="vad", output_volume=2.0, vad_threshold_dbfs=-60).transmit_mode == "vad"
    for bad in (dict(transmit_mode="always"), dict(transmit_mode=""), dict(output_volume=-0.1),
                dict(output_volume=2.01), dict(output_volume=math.nan), dict(output_volume="1"),
                dict(vad_threshold_dbfs=1.0), dict(vad_threshold_dbfs=-101.0), dict(vad_threshold_dbfs=math.nan),
                dict(vad_threshold_dbfs=True)):
        with pytest.raises(ValueError):
            CallConfig(**bad)
    assert CallConfig.low_latency(transmit_mode="ptt").transmit_mode == "ptt"


def test_presets_choose_the_device_timing_and_cushion():
    from app.audio_io import LOW_LATENCY_TIMING, ROBUST_TIMING, DeviceTiming

    assert CallConfig().device_timing == ROBUST_TIMING and CallConfig().output_cushion_ms == 25.0
    assert CallConfig.low_bandwidth().device_timing == ROBUST_TIMING
    ll = CallConfig.low_latency()
    assert ll.device_timing == LOW_LATENCY_TIMING
    assert ll.device_timing.sink_options()["latency"] <= 0.02  # seconds: a short speaker buffer
    mine = DeviceTiming(output_latency=0.02, output_block_ms=5.0)
    assert CallConfig.low_latency(device_timing=mine).device_timing is mine
    for bad in (dict(device_timing="low"), dict(output_cushion_ms=-1.0), dict(output_cushion_ms=math.nan),
                dict(output_cushion_ms=500.0)):
        with pytest.raises(ValueError):
            CallConfig(**bad)


def test_cli_call_opens_the_devices_as_the_preset_says(monkeypatch, capsys):
    """``focalchat call --preset low-latency`` opens the microphone and the speakers with the preset's
    DeviceTiming (the session never opens devices itself)."""
    import argparse

    from app import audio_io
    from app.audio_io import LOW_LATENCY_TIMING, ROBUST_TIMING, AudioDeviceError
    from app.cli import main
    from app.commands import call

    opened: list[tuple[str, dict]] = []

    class Fake:
        def __init__(self, kind, *args, **kwargs):
            opened.append((kind, kwargs))

        def close(self):
            pass

    monkeypatch.setattr(audio_io, "MicSource", lambda *a, **k: Fake("mic", *a, **k))
    monkeypatch.setattr(audio_io, "SpeakerSink", lambda *a, **k: Fake("spk", *a, **k))
    args = argparse.Namespace(input=None, output=None, mic=None, speaker=None, pulse_source="vmic_a",
                              pulse_sink="spk_a")
    call._open_audio(args, LOW_LATENCY_TIMING)
    assert opened == [("mic", dict(pulse_source="vmic_a", **LOW_LATENCY_TIMING.source_options())),
                      ("spk", dict(pulse_sink="spk_a", prebuffer_ms=0.0, **LOW_LATENCY_TIMING.sink_options()))]

    seen = []

    def refuse(args, timing=None):
        seen.append(timing)
        raise AudioDeviceError("no devices here")

    monkeypatch.setattr(call, "_open_audio", refuse)
    for preset, timing in (("low-latency", LOW_LATENCY_TIMING), ("default", ROBUST_TIMING),
                           ("low-bandwidth", ROBUST_TIMING)):
        assert main(["call", "host", "127.0.0.1:0", "--local", "--model", "untrained", "--preset", preset]) == 2
        assert seen[-1] == timing, preset
        assert "no devices here" in capsys.readouterr().err


def test_gui_opens_the_devices_as_the_preset_says(monkeypatch):
    pytest.importorskip("PySide6")
    from app.audio_io import LOW_LATENCY_TIMING, ROBUST_TIMING
    from app.gui import controller, devices
    from app.gui.settings import Settings

    got: list = []
    monkeypatch.setattr(devices, "open_source", lambda key, timing=None: got.append(("mic", timing)) or "mic")
    monkeypatch.setattr(devices, "open_sink", lambda key, gain=1.0, input_rate=24000, timing=None:
                        got.append(("spk", timing)) or "spk")
    for preset, timing in (("low-latency", LOW_LATENCY_TIMING), ("default", ROBUST_TIMING),
                           ("low-bandwidth", ROBUST_TIMING)):
        got.clear()
        s = Settings()
        s.preset = preset
        assert controller.open_devices(s) == ("mic", "spk")
        assert got == [("mic", timing), ("spk", timing)], preset


def test_setters_check_their_arguments(tmp_path, model, pairs):  # noqa: F811
    x = wav(tmp_path, "s.wav", speech(1.0))
    p = Pair(tmp_path, model, input_a=x, input_b=x)
    pairs.append(p)
    s = p.a  # not started: the setters work at any time
    with pytest.raises(ValueError, match="transmit mode"):
        s.set_transmit_mode("loud")
    for bad in (-1, 2.5, math.nan, math.inf, "0.5", None, True):
        with pytest.raises(ValueError, match="volume"):
            s.set_output_volume(bad)
    for setter in (s.set_muted, s.set_ptt):
        for bad in ("yes", 1, None):
            with pytest.raises(TypeError):
                setter(bad)
    s.set_transmit_mode("vad")
    s.set_output_volume(0.25)
    s.set_muted(True)
    s.set_ptt(True)
    st = s.stats()
    assert (st.transmit_mode, st.output_volume, st.muted) == ("vad", 0.25, True)
    assert (s.transmit_mode, s.output_volume, s.muted) == ("vad", 0.25, True)
    assert st.input_level_dbfs == st.output_level_dbfs == LEVEL_FLOOR_DBFS and not st.transmitting


# ---------------------------------------------------------------------------------------------------------------
# mute: nothing audible goes out, the peer hears a pause (not a loss), the call stays up
# ---------------------------------------------------------------------------------------------------------------
def test_mute_is_a_pause_not_a_loss(tmp_path, model, pairs):  # noqa: F811
    x = wav(tmp_path, "s.wav", speech(6.0))
    # a short dead-peer timeout: a mute longer than it proves that heartbeats keep the call alive
    cfg = dict(dead_peer_timeout_s=1.0, heartbeat_interval_s=0.25)
    p = Pair(tmp_path, model, input_a=x, input_b=x, cfg=cfg)
    pairs.append(p)
    p.connect()
    p.wait_call_up()
    sniff = Sniffer(p.a, model)
    assert wait_until(lambda: p.b.stats().played >= 8, 5.0)
    assert p.a.stats().transmitting and not p.a.stats().muted
    p.a.set_muted(True)
    assert wait_until(lambda: not p.a.stats().transmitting, 2.0)
    assert wait_until(lambda: p.b.stats().comfort >= 3, 3.0), p.b.stats().line()
    sent_muted = p.a.stats().chunks_sent
    played_muted = p.b.stats().played
    assert wait_until(lambda: p.b.stats().comfort >= 18, 4.0), p.b.stats().line()  # > 1.4 s of pause
    mid_a, mid_b = p.a.stats(), p.b.stats()
    assert mid_a.muted and not mid_a.transmitting
    assert mid_a.chunks_sent == sent_muted and mid_b.played == played_muted  # nothing sent, nothing played
    assert mid_a.input_level_dbfs > LEVEL_FLOOR_DBFS  # the meter still shows the microphone
    assert p.a.in_call and p.b.in_call and not p.la.of(PeerLost) and not p.lb.of(PeerLost)
    p.a.set_muted(False)
    assert wait_until(lambda: p.b.stats().played >= played_muted + 5, 3.0), p.b.stats().line()
    end_b = p.b.stats()
    assert end_b.talkspurts == 1 and end_b.lost == 0 and end_b.late == 0 and end_b.malformed == 0
    assert end_b.concealed == end_b.lost + end_b.underruns + end_b.waiting + end_b.pause_concealed
    assert p.a.stats().transmitting
    assert not p.lb.of(CallEnded)
    # on the wire: the talkspurt ended with one packet flagged SILENCE, the next one starts a talkspurt
    flags = [f for _, _, f in sniff.audio]
    silent = [i for i, f in enumerate(flags) if f & AudioFlags.SILENCE]
    spurt = [i for i, f in enumerate(flags) if f & AudioFlags.TALKSPURT_START]
    assert len(spurt) == 1 and silent and silent[-1] == spurt[0] - 1
    gap = sniff.audio[spurt[0]][0] - sniff.audio[spurt[0] - 1][0]
    assert gap > 10  # the chunk counter kept counting through the pause (a media clock)
    p.close()
    # the recordings hold what was sent / played: no chunk from the muted stretch
    sent, got = recorded(p.rec_a)[SENT], recorded(p.rec_b)[RECEIVED]
    assert set(got) <= set(sent) and len(sent) - len(got) <= 3  # the last ones may be in flight at hang-up
    idx = sorted(sent)
    assert any(b - a > 10 for a, b in zip(idx, idx[1:]))


# ---------------------------------------------------------------------------------------------------------------
# push-to-talk
# ---------------------------------------------------------------------------------------------------------------
def test_push_to_talk_sends_only_while_pressed(tmp_path, model, pairs):  # noqa: F811
    x = wav(tmp_path, "s.wav", speech(6.0))
    p = Pair(tmp_path, model, input_a=x, input_b=x, cfg_a=dict(transmit_mode="ptt"))
    pairs.append(p)
    p.connect()
    p.wait_call_up()
    assert wait_until(lambda: p.a.stats().played >= 8, 5.0)  # B -> A flows (continuous)
    st_a, st_b = p.a.stats(), p.b.stats()
    assert st_a.chunks_sent == 0 and st_a.audio_packets_sent == 0 and not st_a.transmitting
    assert st_b.played == 0 and st_b.lost == 0 and st_b.concealed == 0
    assert st_a.input_level_dbfs > LEVEL_FLOOR_DBFS  # the microphone is read (meters, VAD) even when not sending
    p.a.set_ptt(True)
    assert wait_until(lambda: p.b.stats().played >= 6, 3.0), p.b.stats().line()
    assert p.a.stats().transmitting
    p.a.set_ptt(False)
    assert wait_until(lambda: p.b.stats().comfort >= 3, 3.0), p.b.stats().line()
    frozen = p.a.stats().chunks_sent
    assert wait_until(lambda: p.b.stats().comfort >= 8, 3.0)
    assert p.a.stats().chunks_sent == frozen and not p.a.stats().transmitting
    p.a.set_ptt(True)
    played = p.b.stats().played
    assert wait_until(lambda: p.b.stats().played >= played + 4, 3.0)
    st_b = p.b.stats()
    assert st_b.lost == 0 and st_b.talkspurts == 1
    assert st_b.concealed == st_b.lost + st_b.underruns + st_b.waiting + st_b.pause_concealed
    # switching to continuous transmits whatever the key says
    p.a.set_ptt(False)
    p.a.set_transmit_mode("continuous")
    assert wait_until(lambda: p.a.stats().transmitting, 2.0)


# ---------------------------------------------------------------------------------------------------------------
# VAD: silence is not sent, speech is; the receiver counts no loss
# ---------------------------------------------------------------------------------------------------------------
def test_vad_sends_speech_only(tmp_path, model, pairs):  # noqa: F811
    gap = np.zeros(int(1.6 * SR), np.float32)
    x = wav(tmp_path, "s.wav", np.concatenate([gap, speech(2.4), gap]))
    total = int(math.ceil((len(gap) * 2 + 2.4 * SR) / 1280))
    p = Pair(tmp_path, model, input_a=x, input_b=x, cfg=dict(chunks_per_packet=2),
             cfg_a=dict(transmit_mode="vad"))
    pairs.append(p)
    p.connect()
    p.wait_call_up()
    sniff = Sniffer(p.a, model)
    assert wait_until(lambda: p.a.stats().vad_active, 4.0)
    assert wait_until(lambda: p.b.stats().comfort >= 5, 6.0), p.b.stats().line()  # the pause after the speech
    st_a, st_b = p.a.stats(), p.b.stats()
    p.close()
    assert 0 < st_a.chunks_sent < total - 25  # the two 1.6 s silences (40 chunks) were mostly not sent
    assert st_b.lost == 0 and st_b.late == 0 and st_b.malformed == 0
    assert st_b.concealed == st_b.lost + st_b.underruns + st_b.waiting + st_b.pause_concealed
    sent = sorted(recorded(p.rec_a)[SENT])
    assert sent[0] >= 15  # the leading silence (20 chunks) was not sent, save the pre-roll
    assert sent == list(range(sent[0], sent[-1] + 1)) or len(sniff.audio) > 2
    # first packet: talkspurt start (chunks before it were never sent); the last one: SILENCE
    first, _, flags0 = sniff.audio[0]
    assert flags0 & AudioFlags.TALKSPURT_START and first == sent[0]
    assert sniff.audio[-1][2] & AudioFlags.SILENCE


def test_continuous_mode_flags_silent_packets(tmp_path, model, pairs):  # noqa: F811
    gap = np.zeros(int(1.2 * SR), np.float32)
    x = wav(tmp_path, "s.wav", np.concatenate([speech(1.5), gap, speech(1.5)]))
    p = Pair(tmp_path, model, input_a=x, input_b=x)
    pairs.append(p)
    p.connect()
    p.wait_call_up()
    sniff = Sniffer(p.a, model)
    assert wait_until(lambda: p.b.stats().played >= 45, 8.0), p.b.stats().line()
    p.close()
    flags = [f for _, _, f in sniff.audio]
    assert any(f & AudioFlags.SILENCE for f in flags)  # the gap, after the hangover
    assert not any(f & AudioFlags.TALKSPURT_START for f in flags)  # continuous: no DTX
    firsts = [a for a, _, _ in sniff.audio]
    assert firsts == list(range(firsts[0], firsts[0] + len(firsts)))  # every chunk sent


# ---------------------------------------------------------------------------------------------------------------
# output volume and meters
# ---------------------------------------------------------------------------------------------------------------
def test_output_volume_and_levels(tmp_path, model, pairs):  # noqa: F811
    x = wav(tmp_path, "s.wav", speech(5.0))
    p = Pair(tmp_path, model, input_a=x, input_b=x, cfg_b=dict(output_volume=0.0))
    pairs.append(p)
    p.connect()
    p.wait_call_up()
    assert wait_until(lambda: p.b.stats().played >= 5, 4.0)
    assert p.b.stats().output_level_dbfs == LEVEL_FLOOR_DBFS  # volume 0: digital silence
    assert p.a.stats().output_level_dbfs > -60  # the untrained codec's output is loud noise
    assert p.a.stats().input_level_dbfs > LEVEL_FLOOR_DBFS
    p.b.set_output_volume(1.0)
    assert wait_until(lambda: p.b.stats().output_level_dbfs > -60, 2.0)
    p.a.set_output_volume(0.5)
    n = p.a.stats().played
    assert wait_until(lambda: p.a.stats().played >= n + 3, 2.0)
    assert p.a.stats().output_level_dbfs < 0.0


# ---------------------------------------------------------------------------------------------------------------
# the parts on their own
# ---------------------------------------------------------------------------------------------------------------
def test_vad_onset_hangover_and_noise_floor():
    vad = VoiceActivityDetector(-45.0, hangover_s=0.3, chunk_s=0.08)
    quiet = np.zeros(1280, np.float32)
    loud = np.full(1280, 0.1, np.float32)
    assert not vad.update(quiet) and vad.level_dbfs == LEVEL_FLOOR_DBFS
    onset = quiet.copy()
    onset[-200:] = 0.1  # a short onset at the end of a chunk: found in its 20 ms frame
    assert vad.update(onset) and vad.onset and vad.voiced
    assert vad.update(loud) and not vad.onset
    states = [vad.update(quiet) for _ in range(6)]
    assert states == [True] * 4 + [False] * 2  # 300 ms hangover = 4 chunks
    # a steady hum above the threshold is learned as the noise floor and stops counting as speech
    rng = np.random.default_rng(0)
    hum = (0.02 * rng.standard_normal(1280 * 200)).astype(np.float32).reshape(200, 1280)  # ~ -34 dBFS
    decisions = [vad.update(c) for c in hum]
    assert decisions[0] and not any(decisions[-20:])
    assert vad.update(hum[0] * 10)  # speech well above the hum still counts
    assert rms_dbfs(np.zeros(0)) == rms_dbfs(np.zeros(5)) == LEVEL_FLOOR_DBFS
    assert rms_dbfs(np.full(10, np.nan)) == LEVEL_FLOOR_DBFS
    assert rms_dbfs(np.ones(10)) == pytest.approx(0.0)
    with pytest.raises(ValueError):
        VoiceActivityDetector(5.0)
    with pytest.raises(ValueError):
        vad.update(np.zeros(2, np.float32))


def test_jitter_pause_items_and_arrival_info():
    jb = JitterBuffer(initial_depth=1, min_depth=1)
    tok = np.arange(4)
    jb.put(0, tok, 0.01, position=0)
    jb.put(1, tok, 0.01, position=1)
    it = jb.pop(0.02)
    assert it.kind is PlayoutKind.TOKENS and it.arrival_s == 0.01 and it.position == 0
    it = jb.pop(0.10)
    assert it.position == 1 and not it.pause
    empty = jb.pop(0.18)  # dry after speech: not a pause
    assert empty.kind is PlayoutKind.EMPTY and not empty.pause
    jb2 = JitterBuffer(initial_depth=1, min_depth=1)
    jb2.put(0, tok, 0.01, silence=True)
    assert jb2.pop(0.02).kind is PlayoutKind.TOKENS
    pause = jb2.pop(0.10)
    assert pause.kind is PlayoutKind.EMPTY and pause.pause
    jb2.put(10, tok, 0.75, talkspurt_start=True)
    it = jb2.pop(0.76)
    assert it.kind is PlayoutKind.TOKENS and it.index == 10
    assert jb2.talkspurts == 1 and jb2.stats.lost == 0 and jb2.stats.underruns == 0


def test_decoder_pause_is_comfort_noise(model):  # noqa: F811
    dec = StreamDecoder(model)
    toks = np.zeros(model.tokens_per_chunk, np.int64)
    y0 = dec.decode(toks)
    assert dec.last_rms > 0
    first = dec.pause()
    later = [dec.pause() for _ in range(3)]
    assert dec.comfort == 4 and dec.concealed == 0
    assert first.shape == y0.shape and np.isfinite(first).all()
    for y in later:  # noise at the last chunk's level, clamped to -80..-50 dBFS
        assert -81.0 <= rms_dbfs(y) <= -49.0
    y1 = dec.decode(toks)  # the talkspurt fades back in
    assert np.isfinite(y1).all() and dec.gain == 1.0


# ---------------------------------------------------------------------------------------------------------------
# mid-call: recording a part of the call, changing the VAD threshold
# ---------------------------------------------------------------------------------------------------------------
def test_record_part_of_a_call(tmp_path, model, pairs):  # noqa: F811
    x = wav(tmp_path, "s.wav", speech(6.0))
    p = Pair(tmp_path, model, input_a=x, input_b=x)
    pairs.append(p)
    s = p.a
    assert s.stop_recording() is None and s.recording_path is None  # nothing to stop
    with pytest.raises(TypeError):
        s.start_recording(None)
    p.connect()
    p.wait_call_up()
    assert wait_until(lambda: p.a.stats().played >= 10 and p.a.stats().chunks_sent >= 10, 5.0)
    with pytest.raises(OSError):
        s.start_recording(x / "not-a-dir" / "part.fcr")  # the input WAV is a file, not a folder
    part = tmp_path / "part.fcr"
    assert s.start_recording(str(part)) == part and s.recording_path == part
    with pytest.raises(RuntimeError, match="already recording"):
        s.start_recording(tmp_path / "other.fcr")
    s.send_text("during the part")
    sent0, played0 = s.stats().chunks_sent, s.stats().played
    assert wait_until(lambda: p.a.stats().played >= played0 + 15 and p.a.stats().chunks_sent >= sent0 + 15, 5.0)
    assert s.stop_recording() == part and s.recording_path is None
    assert s.stop_recording() is None
    from app.recording import RecordingReader

    whole = RecordingReader(p.rec_a).streams()  # still being written: read up to its last record
    got = recorded(part)
    reader = RecordingReader(part)
    assert reader.header.directions == ("alice", "bob")
    assert any(r.text == "during the part" for r in reader)
    for d in (SENT, RECEIVED):
        idx = sorted(got[d])
        assert len(idx) >= 12 and idx[0] >= 8, (d, idx)  # a part: not from the start of the call
        assert idx == list(range(idx[0], idx[-1] + 1))  # nothing missing inside it
        assert all(np.array_equal(got[d][i], whole[d][i]) for i in idx)  # what the whole-call recording holds
    s.stop()
    with pytest.raises(RuntimeError, match="ended"):
        s.start_recording(tmp_path / "late.fcr")


def test_part_recording_is_closed_when_the_call_ends(tmp_path, model, pairs):  # noqa: F811
    x = wav(tmp_path, "s.wav", speech(3.0))
    p = Pair(tmp_path, model, input_a=x, input_b=x)
    pairs.append(p)
    p.connect()
    p.wait_call_up()
    assert wait_until(lambda: p.b.stats().played >= 5, 5.0)
    part = p.b.start_recording(tmp_path / "b-part.fcr")
    assert wait_until(lambda: p.b.stats().played >= 10, 5.0)
    p.a.stop()  # the peer hangs up: B's call ends with the part still recording
    assert p.b.wait(5.0)
    assert recorded(part)[RECEIVED]  # complete (END record) and readable
    assert p.b.stop_recording() == part  # the owner may still "stop" it: same file, nothing more to do


def test_vad_threshold_changes_mid_call(tmp_path, model, pairs):  # noqa: F811
    x = wav(tmp_path, "s.wav", speech(4.0))
    p = Pair(tmp_path, model, input_a=x, input_b=x, cfg_a=dict(transmit_mode="vad"), loop_a=True)
    pairs.append(p)
    s = p.a
    for bad in (1.0, -101.0, math.nan, "x", None, True):
        with pytest.raises(ValueError, match="vad threshold"):
            s.set_vad_threshold(bad)
    p.connect()
    p.wait_call_up()
    assert wait_until(lambda: s.stats().transmitting, 5.0)
    s.set_vad_threshold(0.0)  # nothing is that loud: the talkspurt ends, nothing is sent any more
    assert s.vad_threshold_dbfs == 0.0 and s.stats().vad_threshold_dbfs == 0.0
    assert wait_until(lambda: not s.stats().transmitting and not s.stats().vad_active, 3.0)
    src = p.sources[0]
    sent, read = s.stats().chunks_sent, src.chunks_read
    assert wait_until(lambda: src.chunks_read >= read + 15, 5.0)  # 1.2 s of speech read...
    assert s.stats().chunks_sent == sent  # ...and none of it sent
    s.set_vad_threshold(-60.0)
    assert wait_until(lambda: s.stats().chunks_sent > sent, 5.0)
    assert s.in_call and p.b.stats().lost == 0


def test_vad_set_threshold_lowers_the_noise_floor():
    rng = np.random.default_rng(1)
    soft = (0.003 * rng.standard_normal(1280)).astype(np.float32)  # ~ -50 dBFS: speech for -60, not for -30
    vad = VoiceActivityDetector(-30.0)
    assert not vad.update(np.zeros(1280, np.float32))  # digital silence: the floor stays where -30 put it (-39)
    vad.set_threshold(-60.0)  # lower: applies at once (a floor of -39 would hold the threshold at -30)
    assert vad.effective_threshold_dbfs == -60.0
    assert vad.update(soft) and vad.onset
    vad.set_threshold(-20.0)
    assert vad.threshold_dbfs == -20.0 and vad.effective_threshold_dbfs >= -20.0
    with pytest.raises(ValueError):
        vad.set_threshold(math.nan)
