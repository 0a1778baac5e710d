"""``focalchat demo``: the simulated call path (packets -> NetSim -> jitter buffer -> concealing decoder) and
the microphone input (through the private PulseAudio)."""

from __future__ import annotations

import numpy as np
import pytest
import soundfile as sf
import torch

from app.cli import main
from app.commands.demo import simulate_link
from app.modelref import SPEECH_SAMPLE, untrained_model
from app.netsim import NetSim


@pytest.fixture(scope="module")
def model():
    return untrained_model()


@pytest.fixture(scope="module")
def clip(model):
    """Tokens of the first 3.2 s of the bundled speech (40 chunks) and the direct decode of them."""
    x, sr = sf.read(str(SPEECH_SAMPLE), dtype="float32")
    x = torch.from_numpy(x[: int(3.2 * sr)])[None]
    cs = model.chunk_size
    tokens, ys, est, dst = [], [], None, None
    with torch.inference_mode():
        for i in range(x.shape[1] // cs):
            toks, est = model.encode_step(x[:, i * cs:(i + 1) * cs], est)
            y, dst = model.decode_step(toks, dst)
            tokens.append(toks[0].numpy().astype(np.int64))
            ys.append(y[0].numpy())
    return tokens, np.concatenate(ys)


def predicted(n: int, cpp: int, red: int, loss: float, burst: float, seed: int) -> tuple[int, int, int]:
    """(packets lost, chunks lost, chunks recovered) for a perfect-timing link: NetSim's loss pattern depends
    only on the seed and the packet number. Chunk c travels in its own packet and, as a redundant copy, in the
    packets whose first ``red`` preceding chunks include it; it is lost when every copy is."""
    n_pk = -(-n // cpp)
    sim = NetSim(loss, burst, 0.0, 0.0, 0.0, 0.0, seed)
    lost_pk = []
    for i in range(n_pk):
        before = sim.stats.lost
        sim.send(b"x", float(i))
        lost_pk.append(sim.stats.lost > before)
    chunks_lost = recovered = 0
    for c in range(n):
        own = c // cpp
        copies = [p for p in range(own + 1, n_pk) if p * cpp - min(red, p * cpp) <= c < p * cpp]
        if lost_pk[own]:
            if all(lost_pk[p] for p in copies):
                chunks_lost += 1
            else:
                recovered += 1
    return sum(lost_pk), chunks_lost, recovered


def test_perfect_link_is_transparent(model, clip):
    tokens, direct = clip
    for cpp, red in ((1, 0), (4, 2)):
        r = simulate_link(model, tokens, chunks_per_packet=cpp, redundancy=red)
        assert (r.net_lost, r.lost, r.recovered, r.late, r.underruns, r.concealed, r.malformed) == (0,) * 7
        assert r.played == len(tokens) and r.packets == -(-len(tokens) // cpp)
        np.testing.assert_array_equal(r.audio, direct)  # bit-exact: the packets carried every token as sent
        # packetisation + jitter buffer (2 chunks deep, playout half a chunk after capture): 120 ms for one chunk
        # per packet, 3 more chunks of waiting for four
        assert np.median(r.delay_ms) == pytest.approx(120 + (cpp - 1) * 80, abs=1)


@pytest.mark.parametrize(("cpp", "red", "loss", "burst", "seed"),
                         [(1, 1, 0.15, 1.0, 1), (2, 1, 0.2, 1.0, 2), (1, 2, 0.2, 2.0, 3), (4, 0, 0.1, 1.0, 4),
                          (1, 0, 0.3, 3.0, 5)])
def test_losses_recoveries_and_concealment_add_up(model, clip, cpp, red, loss, burst, seed):
    tokens, _ = clip
    n = len(tokens)
    pk_lost, ch_lost, rec = predicted(n, cpp, red, loss, burst, seed)
    assert pk_lost > 0
    r = simulate_link(model, tokens, chunks_per_packet=cpp, redundancy=red, loss=loss, burst=burst, seed=seed)
    assert r.net_lost == pk_lost
    assert (r.lost, r.recovered) == (ch_lost, rec), (r.lost, r.recovered, ch_lost, rec)
    assert r.played + r.lost + r.dropped == n
    assert r.played == n - ch_lost and r.late == 0
    # every lost chunk costs exactly one concealed tick (a hold, a LOSS tick or a tail loss) and nothing else
    assert r.concealed == r.lost + r.underruns
    assert np.isfinite(r.audio).all() and len(r.audio) >= n * model.output_chunk_size


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_jitter_delays_but_loses_nothing_it_need_not(model, clip, seed):
    tokens, _ = clip
    n = len(tokens)
    r = simulate_link(model, tokens, jitter_ms=40.0, delay_ms=30.0, seed=seed, loss=0.05)
    assert r.played + r.lost + r.dropped == n
    assert r.concealed == r.lost + r.underruns
    # a chunk the network did not lose is played unless it came after its slot (late) or was dropped to shrink
    _, ch_lost, _ = predicted(n, 1, 0, 0.05, 1.0, seed)
    assert r.lost <= ch_lost + r.late + r.underruns
    assert min(r.delay_ms) >= 30.0  # nothing plays before it could arrive


def test_demo_cli_with_network(tmp_path, capsys):
    assert main(["demo", "--model", "untrained", "--out", str(tmp_path), "--loss", "20", "--redundancy", "1",
                 "--chunks-per-packet", "2", "--jitter-ms", "10", "--seed", "7"]) == 0
    out = capsys.readouterr().out
    assert "kbps" in out and "real-time factor" in out
    line = next(ln for ln in out.splitlines() if ln.startswith("playout"))
    assert "recovered" in line and "lost" in line and "concealed" in line
    net = next(ln for ln in out.splitlines() if ln.startswith("network"))
    assert "loss 20%" in net and "of 41 packets lost" in net
    x, sr = sf.read(tmp_path / "original.wav")
    y, sr_y = sf.read(tmp_path / "decoded.wav")
    assert (sr, sr_y) == (16000, 24000) and len(y) == len(x) * 3 // 2
    assert np.abs(y).max() > 0


def test_demo_cli_rejects_bad_network_settings(tmp_path, capsys):
    assert main(["demo", "--model", "untrained", "--out", str(tmp_path), "--loss", "100"]) == 2
    assert "--loss" in capsys.readouterr().err
    # 90 % loss in bursts of 2 packets on average is impossible (NetSim says why)
    assert main(["demo", "--model", "untrained", "--out", str(tmp_path), "--loss", "90", "--burst", "2"]) == 2
    assert "impossible" in capsys.readouterr().err
    assert not (tmp_path / "decoded.wav").exists()


def test_demo_from_the_microphone(pulse, tmp_path, capsys):  # noqa: F811
    x, sr = sf.read(str(SPEECH_SAMPLE), dtype="float32")
    wav = tmp_path / "speech.wav"
    sf.write(str(wav), x[: int(3.0 * sr)], sr, subtype="FLOAT")
    player = pulse.play_into_mic("a", wav, wait=False)
    try:
        rc = main(["demo", "--model", "untrained", "--out", str(tmp_path / "out"), "--mic", "2",
                   "--pulse-source", "vmic_a", "--loss", "10", "--redundancy", "1"])
    finally:
        assert player.wait(timeout=15) == 0
    out = capsys.readouterr().out
    assert rc == 0, out
    assert "microphone (PulseAudio source vmic_a)" in out and "(2.00 s, 25 chunks" in out
    rec, rec_sr = sf.read(tmp_path / "out" / "original.wav", dtype="float32")
    assert rec_sr == 16000 and len(rec) == 25 * 1280
    assert float(np.sqrt(np.mean(rec ** 2))) > 0.01  # the speech played into the virtual mic was captured
    y, _ = sf.read(tmp_path / "out" / "decoded.wav")
    assert len(y) == len(rec) * 3 // 2


def test_demo_microphone_error_is_clear(tmp_path, capsys, monkeypatch):
    import app.commands.demo as demo
    from app.audio_io import AudioDeviceError

    def no_mic(*a, **k):
        raise AudioDeviceError("no audio devices found: is PulseAudio running?")

    monkeypatch.setattr(demo, "record_mic", no_mic)
    assert main(["demo", "--model", "untrained", "--out", str(tmp_path), "--mic", "1"]) == 2
    assert "no audio devices" in capsys.readouterr().err
