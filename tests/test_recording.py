"""Recorded calls: round trip, damage handling, export; loss concealment."""

from __future__ import annotations

import numpy as np
import pytest
import soundfile as sf
import torch

from app.conceal import StreamDecoder
from app.recording import (
    RECEIVED,
    SENT,
    RecordingError,
    RecordingHeader,
    RecordingReader,
    RecordingWriter,
    export_wav,
)
from codec.model import FocalCodec
from codec.presets import tiny_config


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return FocalCodec(tiny_config(12))


def _header():
    return RecordingHeader(model_id="test", model_hash="ab" * 32, bits=12)


def _write(path, n=30, skip=()):
    rng = np.random.default_rng(0)
    sent = {i: rng.integers(0, 4096, 4) for i in range(n)}
    recv = {i: rng.integers(0, 4096, 4) for i in range(100, 100 + n) if i not in skip}
    with RecordingWriter(path, _header()) as w:
        for i in range(n):
            w.add_chunk(SENT, i, sent[i], time_ms=80 * i)
            if 100 + i in recv:
                w.add_chunk(RECEIVED, 100 + i, recv[100 + i], time_ms=80 * i + 45)
        w.add_text(RECEIVED, "hello", time_ms=500)
    return sent, recv


def test_round_trip(tmp_path):
    p = tmp_path / "call.fcr"
    sent, recv = _write(p)
    r = RecordingReader(p)
    assert r.header.model_id == "test" and r.header.bits == 12 and r.header.chunk_ms == 80
    recs = list(r)
    assert r.complete and r.damage is None
    texts = [x.text for x in recs if x.text is not None]
    assert texts == ["hello"]
    s = r.streams()
    assert set(s[SENT]) == set(sent) and all(np.array_equal(s[SENT][i], sent[i]) for i in sent)
    assert all(np.array_equal(s[RECEIVED][i], recv[i]) for i in recv)
    # 21 bytes per 12-bit chunk record on disk: small enough to record every call
    assert p.stat().st_size < 400 + 2 * 30 * 22


def test_killed_writer_leaves_a_readable_file(tmp_path):
    p = tmp_path / "killed.fcr"
    w = RecordingWriter(p, _header())
    for i in range(10):
        w.add_chunk(SENT, i, np.arange(4) + i)
    # no close(): as if the process died; every record was flushed
    r = RecordingReader(p)
    assert len(r.streams()[SENT]) == 10 and not r.complete and r.damage is None


@pytest.mark.parametrize("cut", [5, 40, 61])
def test_truncated_and_corrupt(tmp_path, cut):
    p = tmp_path / "call.fcr"
    _write(p)
    data = p.read_bytes()
    start = len(data) - 22 * cut
    (tmp_path / "cut.fcr").write_bytes(data[: start + 9])
    r = RecordingReader(tmp_path / "cut.fcr")
    n = sum(len(v) for v in r.streams().values())
    assert r.damage is not None and "truncated" in r.damage.reason and n > 0
    assert "intact" in str(r.damage)
    bad = bytearray(data)
    bad[start + 3] ^= 0x40
    (tmp_path / "bad.fcr").write_bytes(bytes(bad))
    r = RecordingReader(tmp_path / "bad.fcr")
    r.streams()
    assert r.damage is not None and "checksum" in r.damage.reason


def test_not_a_recording(tmp_path):
    (tmp_path / "x.fcr").write_bytes(b"RIFF....")
    with pytest.raises(RecordingError, match="not a FocalChat recording"):
        RecordingReader(tmp_path / "x.fcr")
    p = tmp_path / "v.fcr"
    _write(p)
    d = bytearray(p.read_bytes())
    d[4] = 9
    (tmp_path / "v2.fcr").write_bytes(bytes(d))
    with pytest.raises(RecordingError, match="version 9"):
        RecordingReader(tmp_path / "v2.fcr")


def test_export(tmp_path, model):
    p = tmp_path / "call.fcr"
    _write(p, n=20, skip={105, 106, 107})
    out = tmp_path / "call.wav"
    summary = export_wav(RecordingReader(p), model, out)
    y, sr = sf.read(out)
    assert sr == 24000 and y.shape[1] == 2
    assert abs(y.shape[0] - (20 * 1920 + int(0.045 * 24000))) <= 1
    assert summary["peer"]["concealed"] == 3 and summary["me"]["chunks"] == 20
    assert np.abs(y[:, 1]).max() > 0
    mono = export_wav(RecordingReader(p), model, tmp_path / "mix.wav", layout="mix")
    assert sf.info(tmp_path / "mix.wav").channels == 1 and mono["seconds"] > 0.8


def test_concealment_fades_to_noise_and_back(model):
    dec = StreamDecoder(model, fade_chunks=2)
    rng = np.random.default_rng(0)
    toks = [rng.integers(0, 4096, 4) for _ in range(3)]
    good = [dec.decode(t) for t in toks]
    lost = [dec.decode(None) for _ in range(4)]
    back = dec.decode(toks[0])
    assert all(x.shape == (1920,) and x.dtype == np.float32 for x in good + lost + [back])
    rms = [float(np.sqrt(np.mean(x**2))) for x in lost]
    assert rms[0] > rms[2] and rms[2] < 0.01 and rms[3] < 0.01  # faded to comfort noise
    assert dec.concealed == 4 and dec.lost_run == 0 and dec.gain == 1.0
    assert abs(float(back[0])) < 0.01  # fade-in starts from the comfort-noise level


def test_export_cli(tmp_path, capsys):
    from app.cli import main
    from codec.pretrained import save_pretrained

    torch.manual_seed(0)
    m = FocalCodec(tiny_config(12))
    save_pretrained(m, tmp_path / "m")
    p = tmp_path / "call.fcr"
    h = RecordingHeader(model_id="m", model_hash=m.fingerprint(), bits=12)
    with RecordingWriter(p, h) as w:
        for i in range(10):
            w.add_chunk(RECEIVED, i, np.arange(4) * 100 + i)
    data = p.read_bytes()
    p.write_bytes(data[:-30])  # damaged tail
    assert main(["export", str(p), str(tmp_path / "o.wav"), "--model", str(tmp_path / "m")]) == 0
    cap = capsys.readouterr()
    assert "damaged" in cap.err and "peer: 9 chunks" in cap.out
    torch.manual_seed(1)
    save_pretrained(FocalCodec(tiny_config(12)), tmp_path / "other")
    assert main(["export", str(p), str(tmp_path / "o.wav"), "--model", str(tmp_path / "other")]) == 2
    assert "the call used model" in capsys.readouterr().err
