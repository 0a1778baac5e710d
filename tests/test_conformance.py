"""The conformance checker on the public reference vectors (exactness of our codec)."""

from __future__ import annotations

import shutil

import numpy as np
import pytest

from app.cli import main
from codec.conformance import check_root

from .conftest import CONFORMANCE_ROOT


def test_public_vectors_pass(capsys):
    rc = main(["conformance", str(CONFORMANCE_ROOT)])
    out = capsys.readouterr().out
    assert rc == 0, out
    last = out.strip().splitlines()[-1]
    assert last.startswith("63 passed, 0 failed"), last
    # every stored array of every clip was checked: one-shot, padded, streaming, forward
    for key in ("oneshot_feats", "oneshot_padded_qfeats", "stream_rec_sig", "stream_fwd_toks",
                "oneshot_fwd_rec_sig (= oneshot_rec_sig)"):
        assert key in out


@pytest.fixture
def tampered(tmp_path):
    root = tmp_path / "conf"
    shutil.copytree(CONFORMANCE_ROOT, root)
    for p in root.rglob("*"):
        p.chmod(0o755 if p.is_dir() else 0o644)
    return root


def _edit(npz_path, fn):
    with np.load(npz_path) as z:
        arrays = {k: z[k].copy() for k in z.files}
    fn(arrays)
    np.savez(npz_path, **arrays)


def test_tampered_vectors_fail(tampered, capsys):
    npz = tampered / "cb4096_w24" / "expected" / "speech.npz"

    def edit(a):
        a["stream_toks"][7] ^= 1  # one token flipped
        a["oneshot_feats"][3, 5] += 1e-2  # one float off by more than the tolerance

    _edit(npz, edit)
    rc = main(["conformance", "-q", str(tampered)])
    out = capsys.readouterr().out
    assert rc == 1
    # the feats error also shows in the lats computed from them (teacher forcing uses the stored feats)
    assert "60 passed, 3 failed" in out
    assert "FAIL  cb4096_w24/speech   stream_toks" in out and "mismatches 1/220" in out
    assert "oneshot_feats" in out and "oneshot_lats" in out


def test_unknown_array_is_reported_not_silently_passed(tampered):
    _edit(tampered / "cb4096_w24" / "expected" / "noise.npz", lambda a: a.update(mystery=np.zeros(3)))
    rep = check_root(tampered)
    assert rep.ok and rep.skipped == 1 and "skipped" in rep.summary()


def test_broken_model_fails_cleanly(tampered, capsys):
    w = tampered / "cb4096_w24" / "model.safetensors"
    w.write_bytes(w.read_bytes()[:1000])
    rc = main(["conformance", str(tampered)])
    out = capsys.readouterr().out
    assert rc == 1 and "cannot load model" in out


def test_not_a_conformance_root(tmp_path, capsys):
    assert main(["conformance", str(tmp_path)]) == 2
    assert "no inputs/" in capsys.readouterr().err
