"""Training pipeline: config, data, losses, the multi-stage trainer, checkpoints and resume (tiny models)."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch

from codec.config import ConfigError
from codec.presets import tiny_config
from codec.training.config import AugmentConfig, DataConfig, StageConfig, TeacherConfig, TrainConfig
from codec.training.data import CropSampler, Utterance, load_corpus, read_manifest, split_by_speaker
from codec.training.losses import (
    LoudnessLoss,
    MultiResolutionLoss,
    PhaseDerivativeLoss,
    bsq_entropy_loss,
    feature_matching_loss,
    frame_locked_share,
    frame_position_modulation,
    hinge_d_loss,
    hinge_g_loss,
    mel_filterbank,
    straight_through,
)
from codec.training.trainer import Trainer, lr_at

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture
def manifest(tmp_path, speech_16k) -> Path:
    """Four 'speakers', each a slice of the bundled clip at a different gain."""
    folder = tmp_path / "data"
    folder.mkdir()
    rows = ["path\tduration_s\tspeaker\tgender"]
    n = speech_16k.shape[0] // 2
    for i in range(4):
        x = speech_16k[(i % 2) * n // 2 : (i % 2) * n // 2 + n] * (0.5 + 0.2 * i)
        sf.write(folder / f"s{i}.flac", x, 16000)
        rows.append(f"s{i}.flac\t{n / 16000:.3f}\t{100 + i}\tF")
    m = folder / "train.tsv"
    m.write_text("\n".join(rows) + "\n")
    return m


def _cfg(manifest: Path, stages: list[StageConfig], **kw) -> TrainConfig:
    data = DataConfig(manifests=(str(manifest),), valid_fraction=0.25, segment_chunks=4, batch_size=2)
    return TrainConfig(model=tiny_config(bits=16), stages=tuple(stages), data=data, threads=1, log_every=1,
                       valid_every=2, checkpoint_every=1000, **kw)


E2E = StageConfig(name="e2e", kind="e2e", steps=3, lr=1e-3, warmup_steps=1, mel_weight=1.0, commit_weight=0.02)
GAN = StageConfig(name="gan", kind="decoder", steps=2, lr=1e-4, warmup_steps=1, adversarial=True, segment_chunks=3,
                  phase_weight=1.0, loss_ffts=(64, 256, 1024), frame_mod_weight=1.0, loudness_weight=1.0)


# ---------------------------------------------------------------------------------------------- config
def test_config_json_round_trip(tmp_path, manifest):
    cfg = _cfg(manifest, [E2E, GAN])
    cfg.save(tmp_path / "c.json")
    again = TrainConfig.load(tmp_path / "c.json")
    assert again == cfg


@pytest.mark.parametrize("path", sorted((REPO / "codec" / "training" / "configs").glob("*.json")), ids=lambda p: p.stem)
def test_every_bundled_config_loads(path):
    cfg = TrainConfig.load(path)  # validates every part and stage
    assert cfg.stages
    if path.stem.startswith("small_cpu"):  # the small recipe's variants train the shipped model's architecture
        assert cfg.model == TrainConfig.load(path.parent / "small_cpu.json").model


def test_bundled_config_loads_and_fits_the_shipping_limits():
    cfg = TrainConfig.load(REPO / "codec" / "training" / "configs" / "small_cpu.json")
    from codec.model import FocalCodec

    model = FocalCodec(cfg.model)
    assert model.num_params() * 2 <= 20e6  # fp16 weights within the 20 MB budget
    assert model.bits_per_token == 16 and model.causal and model.chunk_size == 1280
    kinds = [s.kind for s in cfg.stages]
    first_decoder = kinds.index("decoder")  # end to end first, then the decoder alone, adversarially
    assert set(kinds[:first_decoder]) == {"e2e"} and set(kinds[first_decoder:]) == {"decoder"}
    assert cfg.stages[first_decoder - 1].level_invariant
    assert all(s.adversarial and s.level_invariant for s in cfg.stages[first_decoder:])


@pytest.mark.parametrize("mutate, message", [
    (lambda d: d["stages"][0].update(kind="bogus"), "kind must be one of"),
    (lambda d: d["stages"][0].update(colour="red"), "unknown keys"),
    (lambda d: d["stages"].append(dict(d["stages"][0])), "unique"),
    (lambda d: d["stages"][0].update(kind="encoder"), "needs a teacher"),
    (lambda d: d.pop("stages"), "missing"),
    (lambda d: d["stages"][0].update(freeze=["wings"]), "unknown parts"),
    (lambda d: d["stages"][0].update(loss_ffts=[8, 512]), "loss_ffts"),
    (lambda d: d["stages"][0].update(loss_ffts=[]), "loss_ffts"),
    (lambda d: d["teacher"].update(kind="oracle"), "teacher.kind"),
])
def test_config_errors_are_clear(manifest, mutate, message):
    d = _cfg(manifest, [E2E]).to_dict()
    mutate(d)
    with pytest.raises(ConfigError, match=message):
        TrainConfig.from_dict(d)


def test_missing_or_broken_config_file(tmp_path):
    with pytest.raises(ConfigError, match="no such"):
        TrainConfig.load(tmp_path / "nope.json")
    (tmp_path / "bad.json").write_text("{not json")
    with pytest.raises(ConfigError, match="not valid JSON"):
        TrainConfig.load(tmp_path / "bad.json")


# ---------------------------------------------------------------------------------------------- data
def test_manifest_and_speaker_split(manifest):
    rows = read_manifest(manifest)
    assert len(rows) == 4 and all(Path(p).exists() for p, _ in rows)
    utts = load_corpus([str(manifest)])
    train, valid = split_by_speaker(utts, 0.25, seed=0)
    assert len(valid) == 1 and len(train) == 3
    assert not {u.speaker for u in train} & {u.speaker for u in valid}


def test_manifest_without_path_column(tmp_path):
    (tmp_path / "m.tsv").write_text("file\tspeaker\nx.flac\t1\n")
    with pytest.raises(ValueError, match="'path' column"):
        read_manifest(tmp_path / "m.tsv")


def test_crops_shapes_levels_and_determinism(speech_16k):
    utts = [Utterance("a", "1", speech_16k)]
    aug = AugmentConfig(noise_prob=0.5, reverb_prob=0.5)
    a = CropSampler(utts, 2560, aug, out_rate=24000, seed=3)
    x, y = a.batch(6)
    assert x.shape == (6, 2560) and y.shape == (6, 3840)
    assert x.dtype == np.float32 and y.dtype == np.float32
    assert np.all(np.abs(x) <= 0.99 + 1e-6)
    rms = 10 * np.log10(np.mean(x**2, axis=1))
    assert np.all(rms <= aug.gain_dbfs[1] + 0.5) and np.all(rms >= aug.gain_dbfs[0] - 12)  # peak limit may lower it
    # the target is the same signal at 24 kHz: equal energy per second (band-limited resampling)
    assert np.allclose(np.mean(x**2, axis=1), np.mean(y**2, axis=1), rtol=0.2)
    b = CropSampler(utts, 2560, aug, out_rate=24000, seed=3)
    assert np.array_equal(b.batch(6)[0], x)


def test_short_utterance_is_padded():
    utts = [Utterance("a", "1", (np.random.default_rng(0).standard_normal(500) * 0.1).astype(np.float32))]
    x, y = CropSampler(utts, 1280, AugmentConfig(), seed=0).batch(2, augment=False)
    assert x.shape == (2, 1280) and np.all(x[:, 600:] == 0)


# ---------------------------------------------------------------------------------------------- losses
def test_mel_filterbank_shape_and_coverage():
    fb = mel_filterbank(24000, 1024, 80, 0.0, 12000)
    assert fb.shape == (80, 513) and np.all(fb >= 0)
    assert np.all(fb.sum(axis=1) > 0)  # no empty band


def test_multiresolution_loss():
    loss = MultiResolutionLoss(24000)
    x = torch.randn(2, 24000) * 0.1
    mel, stft = loss(x, x)
    assert float(mel) == pytest.approx(0, abs=1e-6) and float(stft) == pytest.approx(0, abs=1e-6)
    mel2, stft2 = loss(x * 0.5, x)
    assert float(mel2) > 0.5 and float(stft2) > 0.5


def test_loudness_loss_weighs_added_loudness_more_and_loud_parts_most(speech_16k):
    loss = LoudnessLoss(16000, asymmetry=2.0)
    x = torch.from_numpy(speech_16k[:32000])[None]
    assert float(loss(x, x)) == pytest.approx(0, abs=1e-6)
    louder, quieter = x * 1.5, x * 0.5
    symmetric = LoudnessLoss(16000, asymmetry=1.0)
    # an excess costs ``asymmetry`` times what the same excess costs without it; a deficit the same
    assert float(loss(louder, x)) == pytest.approx(2 * float(symmetric(louder, x)), rel=1e-4)
    assert float(loss(quieter, x)) == pytest.approx(float(symmetric(quieter, x)), rel=1e-4)
    # the loud parts dominate: noise 40 dB under the speech's RMS costs less than a 3 dB error on the speech
    noise = torch.randn_like(x) * float(x.std()) * 0.01
    assert float(loss(x + noise, x)) < float(loss(x * 1.41, x))
    # in the targets' band only: a tone above band_limit is not loudness
    banded = LoudnessLoss(24000, band_limit=8000)
    t = torch.arange(24000) / 24000
    y = torch.randn(1, 24000) * 0.1
    assert float(banded(y + 0.1 * torch.sin(2 * torch.pi * 10000 * t)[None], y)) < 0.01


def test_frame_locked_modulation_is_seen_only_by_windows_shorter_than_a_frame():
    """Noise whose every 480-sample frame has the same energy shape (a frame-rate buzz) has the spectrum of
    plain noise over long windows: only short windows and the frame-position measure see it."""
    g = torch.Generator().manual_seed(0)
    target, plain, carrier = (torch.randn(4, 24000, generator=g) * 0.1 for _ in range(3))
    shape = torch.hann_window(480, periodic=True).repeat(50)  # a fixed envelope per 20 ms frame
    env = shape / shape.pow(2).mean().sqrt()
    buzz = carrier * env  # same power as the plain noise
    assert float(frame_position_modulation(plain, 480)) < 0.2  # the estimate's noise over 200 frames: ~0.1
    assert float(frame_position_modulation(buzz, 480)) > 0.5
    # as a loss it pulls every position's energy to the mean
    x = buzz.clone().requires_grad_(True)
    frame_position_modulation(x, 480).backward()
    step = -x.grad * torch.sign(x.detach())  # d energy at each position: negative where there is too much
    assert float((step * (env > 1.2)).sum()) < 0 < float((step * (env < 0.8)).sum())
    long, short = MultiResolutionLoss(24000, ffts=(2048,)), MultiResolutionLoss(24000, ffts=(64, 128))
    assert float(long(buzz, target)[0]) < 1.2 * float(long(plain, target)[0])
    assert float(short(buzz, target)[0]) > 2 * float(short(plain, target)[0])


def test_frame_locked_share_finds_a_waveform_repeated_every_frame():
    g = torch.Generator().manual_seed(1)
    plain = torch.randn(4, 24000, generator=g) * 0.1  # 200 frames of 480 samples
    pulse = torch.randn(480, generator=g) * 0.1
    level = torch.rand(4, 50, 1, generator=g) + 0.5  # the same shape every frame, at varying positive level
    locked = (level * pulse).reshape(4, 24000)
    assert float(frame_locked_share(plain, 480)) < 3 / 200
    assert float(frame_locked_share(locked, 480)) > 0.9
    assert 0.3 < float(frame_locked_share(plain + locked, 480)) < 0.7
    # as a loss it removes the repeated waveform, not the rest
    x = (plain + locked).clone().requires_grad_(True)
    frame_locked_share(x, 480).backward()
    assert float(torch.nn.functional.cosine_similarity(x.grad.reshape(-1, 480).mean(0), pulse, dim=0)) > 0.9


def test_band_limited_loss_ignores_the_empty_band_but_wants_it_silent():
    torch.manual_seed(0)
    spec = torch.fft.rfft(torch.randn(2, 24000) * 0.1)
    spec[:, 8000:] = 0  # 24 kHz rate, content below 8 kHz only (16 kHz speech resampled)
    target = torch.fft.irfft(spec, 24000)
    hiss = torch.fft.irfft(torch.cat([torch.zeros(2, 8100), torch.fft.rfft(torch.randn(2, 24000))[:, 8100:]], 1), 24000)
    full, limited = MultiResolutionLoss(24000), MultiResolutionLoss(24000, band_limit=8000)
    assert [float(v) for v in limited(target, target)] == pytest.approx([0, 0], abs=1e-6)
    # a faint hiss above the band: the full-band log loss calls it a disaster, the band-limited loss a
    # small out-of-band term that still points towards silence
    faint = target + 1e-4 * hiss
    assert float(full(faint, target)[1]) > 1.0
    mel, stft = limited(faint, target)
    assert float(mel) < 0.01 and 0 < float(stft) < 0.05
    assert float(limited(target + 1e-2 * hiss, target)[1]) > float(stft)


def test_phase_derivative_loss_wants_coherent_sinusoids_not_the_absolute_phase():
    sr = 24000
    t = torch.arange(sr) / sr
    f0 = 100 + 40 * t  # gliding harmonic tone, like a voiced vowel
    phase = 2 * math.pi * torch.cumsum(f0, 0) / sr
    tone = sum(torch.sin(k * phase) / k for k in range(1, 20))[None] * 0.1
    loss = PhaseDerivativeLoss()
    assert float(loss(tone, tone)) == pytest.approx(0, abs=1e-5)
    assert float(loss(-tone, tone)) == pytest.approx(0, abs=1e-5)  # polarity / constant phase: free
    assert float(loss(torch.roll(tone, 12, 1), tone)) < 0.02  # 0.5 ms of delay: nearly free
    # the same magnitudes with random phase (noise-excited) cost a lot
    win = torch.hann_window(1024)
    spec = torch.stft(tone, 1024, 256, window=win, return_complex=True)
    torch.manual_seed(0)
    noisy = torch.istft(torch.polar(spec.abs(), torch.rand_like(spec.real) * 2 * math.pi), 1024, 256,
                        window=win, length=tone.shape[1])
    assert float(loss(noisy, tone)) > 0.3
    # and the gradient points back towards coherent phase
    x = noisy.clone().requires_grad_(True)
    opt = torch.optim.Adam([x], lr=1e-3)
    first = None
    for _ in range(30):
        opt.zero_grad()
        v = loss(x, tone)
        first = first if first is not None else float(v.detach())
        v.backward()
        opt.step()
    assert float(loss(x, tone).detach()) < first - 0.05


def test_entropy_loss_rewards_used_confident_bits():
    torch.manual_seed(0)
    spread = torch.nn.functional.normalize(torch.randn(4, 64, 16), dim=-1)  # every bit half the time
    _, usage = bsq_entropy_loss(spread)
    assert float(usage) > 15.5
    stuck = torch.nn.functional.normalize(torch.ones(4, 64, 16) + 0.01 * torch.randn(4, 64, 16), dim=-1)
    loss_stuck, usage_stuck = bsq_entropy_loss(stuck)
    loss_spread, _ = bsq_entropy_loss(spread)
    assert float(usage_stuck) < 3.0 and float(loss_stuck) > float(loss_spread)


def test_straight_through_passes_gradient():
    lats = torch.randn(3, 5, requires_grad=True)
    codes = torch.sign(lats.detach())
    out = straight_through(lats, codes)
    assert torch.equal(out, codes)
    out.sum().backward()
    assert torch.equal(lats.grad, torch.ones(3, 5))


def test_gan_losses():
    real, fake = [torch.full((2, 4), 2.0)], [torch.full((2, 4), -2.0)]
    assert float(hinge_d_loss(real, fake)) == 0.0 and float(hinge_g_loss(fake)) == 3.0
    f = [[torch.ones(2, 3)]]
    assert float(feature_matching_loss(f, f)) == 0.0


def test_lr_schedule():
    st = StageConfig(name="s", kind="e2e", steps=100, lr=1.0, warmup_steps=10, min_lr_ratio=0.1)
    assert lr_at(st, 0) == pytest.approx(0.1)
    assert lr_at(st, 10) == pytest.approx(1.0, rel=0.03)
    assert lr_at(st, 100) == pytest.approx(0.1)
    assert lr_at(st, 50, rewarm_from=50) < lr_at(st, 49)


# ---------------------------------------------------------------------------------------------- trainer
def _weights(trainer: Trainer) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in trainer.model.state_dict().items()}


def test_stages_train_only_their_parts(tmp_path, manifest):
    cfg = _cfg(manifest, [E2E, GAN])
    tr = Trainer(cfg, tmp_path / "run", progress=False)
    before = _weights(tr)
    assert tr.run() is True
    after = _weights(tr)
    changed = {k.split(".")[0] for k in before if not torch.equal(before[k], after[k])}
    assert changed == {"encoder", "compressor", "decompressor", "decoder"}
    # every finished stage leaves a loadable snapshot of the model as it was then
    from codec.model import FocalCodec

    snap = FocalCodec.from_pretrained(tmp_path / "run" / "stages" / "e2e")
    assert set(snap.state_dict()) == set(tr.model.state_dict())
    assert (tmp_path / "run" / "stages" / "gan" / "model.safetensors").exists()
    # the decoder stage alone leaves everything but the decoder untouched
    tr2 = Trainer(_cfg(manifest, [GAN]), tmp_path / "run2", progress=False)
    b2 = _weights(tr2)
    tr2.run()
    a2 = _weights(tr2)
    assert {k.split(".")[0] for k in b2 if not torch.equal(b2[k], a2[k])} == {"decoder"}
    log = [json.loads(line) for line in (tmp_path / "run" / "train.log.jsonl").read_text().splitlines()]
    assert [r["stage"] for r in log].count("e2e") == 3
    gan = [r for r in log if r["stage"] == "gan"]
    assert gan and all(k in gan[-1] for k in ("adv_g", "adv_d", "fm", "mel", "phase", "loudness", "val_mel", "val_phase",
                                              "frame_mod", "frame_locked", "val_frame_mod", "val_frame_locked"))
    # the stage's own loss resolutions; validation keeps the default ones, comparable across stages
    assert set(tr._spec_losses) == {(512, 1024, 2048), (64, 256, 1024)}
    assert tr.spec_loss.ffts == (512, 1024, 2048)
    assert all(np.isfinite(r["loss"]) for r in log)


def test_exact_resume_matches_uninterrupted_run(tmp_path, manifest):
    stages = [replace(E2E, steps=4)]
    full = Trainer(_cfg(manifest, stages), tmp_path / "full", progress=False)
    full.run()
    part = Trainer(_cfg(manifest, stages), tmp_path / "part", progress=False)
    part.run(max_minutes=0.0)  # stops after the first step, with a checkpoint
    assert (tmp_path / "part" / "last.pt").exists() and part.pos.step == 1
    resumed = Trainer(_cfg(manifest, stages), tmp_path / "part", progress=False)
    assert resumed.run(resume=tmp_path / "part") is True
    a, b = full.model.state_dict(), resumed.model.state_dict()
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=1e-5, atol=1e-6, msg=k)


def test_compact_checkpoint_resumes_and_exports(tmp_path, manifest):
    cfg = _cfg(manifest, [replace(E2E, steps=2), GAN])
    tr = Trainer(cfg, tmp_path / "run", progress=False)
    tr.run(max_minutes=0.0)
    compact = tmp_path / "run" / "compact"
    assert (compact / "model.safetensors").exists() and (compact / "trainer.json").exists()
    assert (compact / "model.safetensors").stat().st_size < 0.6 * (tmp_path / "run" / "last.pt").stat().st_size
    (tmp_path / "run" / "last.pt").unlink()  # as after a fresh clone: only the committed compact folder
    again = Trainer(cfg, tmp_path / "run", progress=False)
    assert again.run(resume=compact) is True
    assert again.pos.stage == 1 and (compact / "discriminators.safetensors").exists()
    folder = again.export(tmp_path / "model")
    from codec.pretrained import load_pretrained

    model = load_pretrained(folder)
    sig = torch.randn(1, 2 * 1280) * 0.1
    toks, state = model.encode_step(sig)
    out, _ = model.decode_step(toks)
    assert toks.shape == (1, 8) and out.shape == (1, 2 * 1920) and torch.isfinite(out).all()


def test_discriminator_width_change_restarts_only_the_discriminators(tmp_path, manifest, caplog):
    """A compact checkpoint's discriminators are loaded when they fit the stage's ``disc_channels``; after a
    change of width they start afresh (logged), and the generator still resumes."""
    gan = replace(GAN, steps=3, disc_channels=8)
    tr = Trainer(_cfg(manifest, [gan]), tmp_path / "run", progress=False)
    tr.run(max_minutes=0.0)
    compact = tmp_path / "run" / "compact"
    saved = {k: v.clone() for k, v in tr.discs.state_dict().items()}
    same = Trainer(_cfg(manifest, [gan]), tmp_path / "same", progress=False)
    same.load(compact)
    assert same.discs.channels == 8 and same._discs_loaded
    for k, v in same.discs.state_dict().items():  # stored as fp16
        torch.testing.assert_close(v, saved[k], rtol=1e-3, atol=1e-3, msg=k)
    wider = Trainer(_cfg(manifest, [replace(gan, disc_channels=12)]), tmp_path / "wider", progress=False)
    with caplog.at_level("WARNING"):
        assert wider.run(resume=compact) is True
    assert wider.discs.channels == 12 and not wider._discs_loaded and "start afresh" in caplog.text
    with pytest.raises(ConfigError, match="disc_channels"):
        replace(gan, disc_channels=0).validate("stage")


def test_resume_from_nothing_is_a_clear_error(tmp_path, manifest):
    tr = Trainer(_cfg(manifest, [E2E]), tmp_path / "run", progress=False)
    with pytest.raises(FileNotFoundError, match="nothing|no last.pt"):
        tr.run(resume=tmp_path / "empty")


def test_training_reduces_the_reconstruction_loss(tmp_path, manifest):
    """A few dozen steps on one speaker's crops: the validation mel distance falls."""
    stage = replace(E2E, steps=40, lr=3e-3, warmup_steps=5)
    cfg = _cfg(manifest, [stage])
    cfg = replace(cfg, data=replace(cfg.data, augment=AugmentConfig(speed=(1.0, 1.0), noise_prob=0, reverb_prob=0)),
                  valid_every=40, log_every=40)
    tr = Trainer(cfg, tmp_path / "run", progress=False)
    first = tr.validate()["val_mel"]
    tr.run()
    assert tr.validate()["val_mel"] < first - 0.3


def test_level_invariant_losses_ignore_the_crop_level_but_anchor_it(tmp_path, manifest):
    """The encoder cannot hear the input level, so a level-invariant stage scores the decoded crop scaled
    to the target's RMS; only the small level term sees the level."""
    stage = replace(E2E, level_invariant=True, level_weight=0.1)
    tr = Trainer(_cfg(manifest, [stage]), tmp_path / "run", progress=False)
    tr._setup_stage()
    x, y = (torch.from_numpy(a) for a in tr._sampler(4).batch(2, augment=False))
    torch.manual_seed(0)
    _, quiet, _, _ = tr.compute_losses(x, y, stage)
    torch.manual_seed(0)
    _, loud, _, _ = tr.compute_losses(x * 4, y * 4, stage)  # the same speech 12 dB louder: same output
    # equal but for the log floors (-100 dB), which do not scale
    assert loud["mel"] == pytest.approx(quiet["mel"], rel=0.02)
    assert loud["stft"] == pytest.approx(quiet["stft"], rel=0.02)
    # |log RMS ratio| moves by log 4 (towards or away from 0, as the untrained output was loud or quiet)
    assert min(abs(loud["level"] - abs(quiet["level"] - math.log(4))),
               abs(loud["level"] - (quiet["level"] + math.log(4)))) < 0.01
    plain = replace(stage, level_invariant=False)
    torch.manual_seed(0)
    _, a, _, _ = tr.compute_losses(x, y, plain)
    torch.manual_seed(0)
    _, b, _, _ = tr.compute_losses(x * 4, y * 4, plain)
    assert abs(b["mel"] - a["mel"]) > 0.3 and "level" not in a  # without it, the level is most of the loss
    assert "val_mel_level_invariant" in tr.validate()
    # the spectral losses have no gradient along the output level (else it drifts: log-spectral losses
    # want a level other than the RMS match); only the level term has
    rec = torch.randn(2, 4800, requires_grad=True)
    tgt = torch.randn(2, 4800) * 0.1
    from codec.training.trainer import rms

    mel, stft = tr.spec_loss(rec / (rms(rec) / rms(tgt)), tgt)
    (g,) = torch.autograd.grad(mel + stft, rec)
    r = rec.detach()
    assert abs(float((g * r).sum())) < 1e-3 * float(g.norm() * r.norm())


def test_cli_reports_bad_config(tmp_path):
    (tmp_path / "bad.json").write_text(json.dumps({"stages": []}))
    r = subprocess.run([sys.executable, "-m", "app.cli", "train", str(tmp_path / "bad.json")],
                       capture_output=True, text=True, cwd=REPO)
    assert r.returncode == 2 and "focalchat train:" in r.stderr
    r = subprocess.run([sys.executable, "-m", "app.cli", "train", "no_such_config"], capture_output=True, text=True, cwd=REPO)
    assert r.returncode == 2 and "small_cpu" in r.stderr
    r = subprocess.run([sys.executable, "-m", "app.cli", "train", "small_cpu", "--threads", "0"],
                       capture_output=True, text=True, cwd=REPO)
    assert r.returncode == 2 and "--threads must be >= 1" in r.stderr


def test_teacher_stage_needs_a_source(tmp_path, manifest):
    cfg = _cfg(manifest, [E2E], teacher=TeacherConfig(kind="checkpoint", source=""))
    with pytest.raises(ValueError, match="needs a source"):
        Trainer(cfg, tmp_path / "run", progress=False)


def test_distillation_stages_with_a_checkpoint_teacher(tmp_path, manifest):
    """Paper stages 3-5 (encoder, quantizer, joint) against a full-context teacher's features."""
    from codec.model import FocalCodec

    teacher_cfg = replace(tiny_config(bits=16), encoder_config=replace(tiny_config().encoder_config, causal=False))
    teacher = FocalCodec(teacher_cfg)
    teacher.save_pretrained(tmp_path / "teacher")
    stages = [StageConfig(name="enc", kind="encoder", steps=2, warmup_steps=1),
              StageConfig(name="q", kind="quantizer", steps=2, warmup_steps=1),
              StageConfig(name="joint", kind="joint", steps=2, warmup_steps=1),
              StageConfig(name="dec", kind="decoder", steps=1, warmup_steps=1)]
    cfg = _cfg(manifest, stages, teacher=TeacherConfig(kind="checkpoint", source=str(tmp_path / "teacher")))
    tr = Trainer(cfg, tmp_path / "run", progress=False, init_from=tmp_path / "teacher")
    # initialised from the teacher where names and shapes agree
    torch.testing.assert_close(tr.model.decoder.state_dict(), teacher.decoder.state_dict())
    before = _weights(tr)
    assert tr.run() is True
    after = _weights(tr)
    changed = {k.split(".")[0] for k in before if not torch.equal(before[k], after[k])}
    assert changed == {"encoder", "compressor", "decompressor", "decoder"}
    log = [json.loads(line) for line in (tmp_path / "run" / "train.log.jsonl").read_text().splitlines()]
    assert {r["stage"] for r in log if "feature" in r} == {"enc", "q", "joint"}


def test_bundled_full_size_recipe_is_valid():
    cfg = TrainConfig.load(REPO / "codec" / "training" / "configs" / "full_gpu.json")
    assert [s.kind for s in cfg.stages] == ["decoder", "encoder", "quantizer", "joint"]
    assert cfg.teacher.kind == "focalcodec" and cfg.model.bits_per_token == 12


@pytest.mark.parametrize("stage", [
    replace(E2E, name="frozen-encoder", freeze=("encoder",)),
    StageConfig(name="q", kind="quantizer", steps=3, warmup_steps=1),
])
def test_parts_after_a_frozen_encoder_still_train(tmp_path, manifest, stage):
    tr = Trainer(_cfg(manifest, [stage]), tmp_path / "run", progress=False)
    before = _weights(tr)
    tr.run()
    after = _weights(tr)
    changed = {k.split(".")[0] for k in before if not torch.equal(before[k], after[k])}
    expected = {"compressor", "decompressor"} | ({"decoder"} if stage.kind == "e2e" else set())
    assert changed == expected


def test_entropy_loss_usage_only():
    lats = torch.nn.functional.normalize(torch.randn(2, 32, 12), dim=-1)
    loss, usage = bsq_entropy_loss(lats, sample_weight=0.0)
    assert float(loss) == pytest.approx(-float(usage) * math.log(2) / 12, rel=1e-5)


def test_export_calibrates_the_output_level(tmp_path, manifest):
    tr = Trainer(_cfg(manifest, [replace(E2E, steps=1)]), tmp_path / "run", progress=False)
    tr.run()
    with torch.no_grad():
        tr.model.decoder.head.proj.weight.mul_(0.1)  # a model that comes out 20 dB quiet
        tr.model.decoder.head.proj.bias.mul_(0.1)
    before = {k: v.clone() for k, v in tr.model.state_dict().items()}
    folder = tr.export(tmp_path / "model")
    from codec.pretrained import load_pretrained

    model = load_pretrained(folder)
    x, y = tr._sampler(16).batch(4, augment=False)
    with torch.no_grad():
        rec = model.sig_to_sig(torch.from_numpy(x))[:, : y.shape[1]]
    ratio_db = 10 * np.log10(float(rec.pow(2).mean()) / float(np.mean(y**2)))
    assert abs(ratio_db) < 3.0
    for k, v in tr.model.state_dict().items():  # the run itself is untouched
        assert torch.equal(v, before[k]), k


def test_cli_export_only(tmp_path, manifest):
    cfg = _cfg(manifest, [replace(E2E, steps=1)])
    cfg.save(tmp_path / "c.json")
    Trainer(cfg, tmp_path / "run", progress=False).run()
    r = subprocess.run([sys.executable, "-m", "app.cli", "train", str(tmp_path / "c.json"), "--resume",
                        str(tmp_path / "run"), "--export-only", "--export", str(tmp_path / "model")],
                       capture_output=True, text=True, cwd=REPO)
    assert r.returncode == 0, r.stderr
    assert (tmp_path / "model" / "config.json").exists() and (tmp_path / "model" / "model.safetensors").exists()
    # a stage snapshot (a plain model folder) exports the same way, level-calibrated
    r = subprocess.run([sys.executable, "-m", "app.cli", "train", str(tmp_path / "c.json"), "--init-from",
                        str(tmp_path / "run" / "stages" / "e2e"), "--out", str(tmp_path / "run2"), "--export-only",
                        "--export", str(tmp_path / "model2")], capture_output=True, text=True, cwd=REPO)
    assert r.returncode == 0, r.stderr
    assert (tmp_path / "model2" / "model.safetensors").exists()
    r = subprocess.run([sys.executable, "-m", "app.cli", "train", str(tmp_path / "c.json"), "--export-only",
                        "--export", str(tmp_path / "model3"), "--out", str(tmp_path / "run3")],
                       capture_output=True, text=True, cwd=REPO)
    assert r.returncode == 2 and "--init-from" in r.stderr


def test_content_head_reads_the_log_mel_out_of_the_tokens(tmp_path, manifest):
    """content_weight: a linear read-out of the decompressed features learns the input's log-mel (its L1
    falls), trains with the stage, resumes exactly from last.pt, and is never part of the exported model."""
    from codec.training.losses import ContentHead

    head = ContentHead(96, tiny_config(16).encoder_config)  # a CNN encoder: the default 80-band log-mel
    sig = torch.randn(2, 2560) * 0.1
    loss = head(torch.randn(2, 8, 96), sig).detach()
    assert head.proj.out_features == 160 and loss.ndim == 0 and float(loss) > 0
    stage = replace(E2E, steps=30, lr=3e-3, warmup_steps=2, content_weight=1.0)
    cfg = replace(_cfg(manifest, [stage]), valid_every=100)
    tr = Trainer(cfg, tmp_path / "run", progress=False)
    assert tr.content is not None
    tr.run()
    trained = {id(p) for g in tr.opt.param_groups for p in g["params"]}
    assert all(id(q) in trained for q in tr.content.parameters())
    log = [json.loads(line) for line in (tmp_path / "run" / "train.log.jsonl").read_text().splitlines()]
    content = [r["content"] for r in log if "content" in r]
    assert len(content) == 30 and np.mean(content[-5:]) < np.mean(content[:5]) - 0.1, (content[:5], content[-5:])
    resumed = Trainer(cfg, tmp_path / "run", progress=False)
    resumed.load(tmp_path / "run")
    for k, v in tr.content.state_dict().items():
        assert torch.equal(resumed.content.state_dict()[k], v), k
    out = resumed.export(tmp_path / "model", calibrate=False)
    from safetensors.torch import load_file

    assert not any("content" in k or k.startswith("proj") for k in load_file(str(out / "model.safetensors")))
    # stages without it build no head
    assert Trainer(_cfg(manifest, [E2E]), tmp_path / "plain", progress=False).content is None


def test_pitch_loss_trains_the_harmonic_source(tmp_path, manifest):
    model = tiny_config(bits=16)
    model = model.replace(decoder_config=replace(model.decoder_config, head="istft", source="harmonic"))
    stage = replace(E2E, steps=2, pitch_weight=1.0, envelope_weight=1.0, source_lr_scale=10.0)
    cfg = replace(_cfg(manifest, [stage]), model=model)
    tr = Trainer(cfg, tmp_path / "run", progress=False)
    before = tr.model.decoder.source.proj.weight.detach().clone()
    tr.run()
    (fast,) = [g for g in tr.opt.param_groups if g["lr_scale"] == 10.0]  # the source alone learns 10x faster
    assert {id(q) for q in fast["params"]} == {id(q) for q in tr.model.decoder.source.parameters()}
    assert sum(len(g["params"]) for g in tr.opt.param_groups) == len(
        [q for q in tr.model.parameters() if q.requires_grad]) + len(list(tr.content.parameters() if tr.content else []))
    last = tr.history[-1]
    for key in ("pitch_f0", "pitch_voicing", "pitch_gross", "pitch_voiced", "pitch_envelope", "val_pitch_octaves",
                "val_pitch_gross", "val_envelope"):
        assert key in last and math.isfinite(last[key]), key
    assert 0.0 < last["pitch_voiced"] <= 1.0  # the bundled clip is speech: some frames are voiced
    assert not torch.equal(tr.model.decoder.source.proj.weight, before)
    # a stage without pitch or envelope weight leaves them out of the loss and the log
    tr2 = Trainer(replace(cfg, stages=(replace(E2E, steps=1),)), tmp_path / "run2", progress=False)
    tr2.run()
    assert "pitch_f0" not in tr2.history[-1] and "pitch_envelope" not in tr2.history[-1]
    assert "val_pitch_octaves" in tr2.history[-1]


def test_envelope_gan_trains_its_discriminator_and_resumes(tmp_path, manifest):
    model = tiny_config(bits=16)
    model = model.replace(decoder_config=replace(model.decoder_config, head="istft", source="harmonic"))
    stage = replace(GAN, adversarial=False, steps=2, pitch_weight=1.0, envelope_weight=1.0, envelope_adv_weight=1.0,
                    envelope_fm_weight=1.0, envelope_disc_channels=4, segment_chunks=8)
    cfg = replace(_cfg(manifest, [stage]), model=model)
    tr = Trainer(cfg, tmp_path / "run", progress=False)
    tr._setup_stage()
    before = {k: v.clone() for k, v in tr.env_disc.state_dict().items()}
    tr.run()
    last = tr.history[-1]
    for key in ("env_adv_g", "env_fm", "env_adv_d", "pitch_spread", "pitch_spread_ref", "val_envelope_spread"):
        assert key in last and math.isfinite(last[key]), key
    after = tr.env_disc.state_dict()
    assert any(not torch.equal(after[k], before[k]) for k in before)  # the discriminator learnt
    assert tr.discs is None  # the waveform discriminators stay out of it
    compact = tmp_path / "run" / "compact"
    assert (compact / "envelope_discriminator.safetensors").exists()
    again = Trainer(cfg, tmp_path / "again", progress=False)
    again.load(compact)
    for k, v in again.env_disc.state_dict().items():  # stored as fp16
        torch.testing.assert_close(v, after[k], rtol=1e-3, atol=1e-3, msg=k)
    exact = Trainer(cfg, tmp_path / "exact", progress=False)
    exact.load(tmp_path / "run")
    assert all(torch.equal(v, after[k]) for k, v in exact.env_disc.state_dict().items())
    assert exact.opt_e is not None and exact.opt_e.state_dict()["state"]
    with pytest.raises(ConfigError, match="envelope_weight"):
        replace(stage, envelope_weight=0.0).validate("stage")
