"""How much phonetic content each stage of a codec holds: a probe per stage, judged by ear (Whisper).

For each stage's features (``enc``: the encoder's output, ``lat``: the compressor's continuous latents,
``q``: the decompressor's output from the binary codes) a small convolutional probe (3 layers of 256
channels, kernel 5 = +-2 tokens) is trained on ``--train-limit`` training utterances to predict the
input's 40-band log-mel spectrum (10 ms hop, two frames per token; the input is level-normalised, as the
encoder cannot hear the level). On the evaluation manifest each predicted envelope shapes a harmonic
excitation at the original's pitch (``where_lost.harmonic_excitation``) and the result is transcribed and
scored with STOI. The rows to compare:

* ``original envelope``: the same synthesis under the true log-mel (the ceiling of the method);
* ``mel16``: a control that knows nothing of the codec: the probe behind a learned 16-dim bottleneck on
  the input's own log-mel, i.e. what 16 continuous numbers per token carry after the same training;
* one row per stage of the codec.

A stage well below ``mel16`` loses content a 16-number code could keep; ``enc`` close to ``lat`` and
``q`` puts the loss in the encoder rather than the bottleneck. The probe is small and briefly trained,
so read the rows against each other, not as what a decoder could reach. Needs the eval extra.

    .venv/bin/python scripts/content_probe.py MODEL [--stages enc,lat,q,mel16] [--steps 3000] [--limit 8]
"""

from __future__ import annotations

import argparse
import time
from collections import deque

import librosa
import numpy as np
import soundfile as sf
import torch
from torch import Tensor, nn
from where_lost import harmonic_excitation, shape_to_band_energies

from codec.evaluation import metrics as M
from codec.evaluation.harness import read_manifest
from codec.pretrained import load_pretrained

SR, N_FFT, HOP, BANDS = 16000, 640, 160, 40  # 40 ms window, 10 ms hop: two frames per 20 ms token
_FB = torch.from_numpy(librosa.filters.mel(sr=SR, n_fft=N_FFT, n_mels=BANDS, norm=None)).float()  # (BANDS, F)
_WIN = torch.hann_window(N_FFT)


def _stft(x: np.ndarray) -> Tensor:
    return torch.stft(torch.as_tensor(x), N_FFT, HOP, window=_WIN, return_complex=True)


def log_mel(x: np.ndarray) -> Tensor:
    """(T,) at 16 kHz -> (frames, BANDS) natural-log mel energies."""
    return torch.log(_FB @ _stft(x).abs() ** 2 + 1e-7).T


def shape_by(e: np.ndarray, lm: Tensor) -> np.ndarray:
    """e (T,) shaped so that its mel energies become ``lm`` (frames, BANDS) -> (T,)."""
    se = _stft(e)
    k = min(se.shape[1], lm.shape[0])
    target = _FB @ se.abs() ** 2 + 1e-9  # frames past the envelope's end keep their own energies
    target[:, :k] = torch.exp(lm[:k].T)
    return torch.istft(shape_to_band_energies(se, target, _FB, max_gain=1e3), N_FFT, HOP, window=_WIN,
                       length=len(e)).numpy()


def stage_features(model, x: np.ndarray) -> tuple[dict[str, Tensor], Tensor]:
    """x (T,) -> ({stage: (N, C)}, target log-mel (N, 2 * BANDS)), N tokens; x is level-normalised."""
    x = (x * 0.05 / max(float(np.sqrt(np.mean(x**2))), 1e-5)).astype(np.float32)
    with torch.no_grad():
        feats = model.sig_to_feats(torch.from_numpy(np.pad(x, (0, -len(x) % model.chunk_size)))[None])
        lats = model.feats_to_lats(feats)
        q = model.codes_to_qfeats(model.lats_to_codes(lats))
    n = q.shape[1]
    lm = log_mel(x)[: 2 * n]  # of the unpadded input: the padding's silence is no target
    lm = torch.cat([lm, lm[-1:].expand(2 * n - len(lm), -1)]).reshape(n, 2 * BANDS)
    return {"enc": feats[0].float(), "lat": lats[0].float(), "q": q[0].float(), "mel16": lm}, lm


class Probe(nn.Module):
    """(N, C) -> (N, 2 * BANDS); ``bottleneck``: a tanh-bounded code of that many numbers per token first."""

    def __init__(self, dim: int, bottleneck: int | None = None) -> None:
        super().__init__()
        pre: list[nn.Module] = [nn.Conv1d(dim, bottleneck, 3, padding=1), nn.Tanh()] if bottleneck else []
        d = bottleneck or dim
        self.net = nn.Sequential(*pre, nn.Conv1d(d, 256, 5, padding=2), nn.GELU(), nn.Conv1d(256, 256, 5, padding=2),
                                 nn.GELU(), nn.Conv1d(256, 256, 5, padding=2), nn.GELU(), nn.Conv1d(256, 2 * BANDS, 1))

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x.T[None])[0].T


def train_probe(data: list[tuple[dict[str, Tensor], Tensor]], stage: str, steps: int, mean: Tensor,
                rng: np.random.Generator, batch: int = 8, crop: int = 100) -> tuple[Probe, float]:
    """L1 on log-mel, AdamW with a cosine schedule; crops of ``crop`` tokens -> (probe, last 100 steps' loss)."""
    probe = Probe(data[0][0][stage].shape[1], 16 if stage == "mel16" else None)
    opt = torch.optim.AdamW(probe.parameters(), 2e-3)
    recent: deque[float] = deque(maxlen=100)
    for step in range(steps):
        loss = torch.zeros(())
        for _ in range(batch):
            f, lm = data[rng.integers(len(data))]
            s = int(rng.integers(max(1, len(lm) - crop)))
            loss = loss + (probe(f[stage][s:s + crop]) + mean - lm[s:s + crop]).abs().mean() / batch
        for g in opt.param_groups:
            g["lr"] = 2e-3 * 0.5 * (1 + np.cos(np.pi * step / steps))
        opt.zero_grad()
        loss.backward()
        opt.step()
        recent.append(float(loss.detach()))
    return probe.eval(), float(np.mean(recent))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("model", help="model folder, hub id or alias (see focalchat --model)")
    ap.add_argument("--train-manifest", default="../shared/data/librispeech/train-clean-100.tsv")
    ap.add_argument("--train-limit", type=int, default=120)
    ap.add_argument("--manifest", default="../shared/data/librispeech/test-other.tsv")
    ap.add_argument("--limit", type=int, default=8)
    ap.add_argument("--stages", default="enc,lat,q,mel16")
    ap.add_argument("--steps", type=int, default=3000, help="training steps per probe (batch of 8 crops)")
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    stages = args.stages.split(",")
    unknown = set(stages) - {"enc", "lat", "q", "mel16"}
    if unknown:
        raise SystemExit(f"unknown stage(s) {sorted(unknown)}: choose from enc, lat, q, mel16")
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    rng = np.random.default_rng(0)
    model = load_pretrained(args.model).eval()
    t0 = time.time()
    data = []
    for u in read_manifest(args.train_manifest, limit=args.train_limit):
        x, sr = sf.read(u.path, dtype="float32")
        if sr != SR:
            raise SystemExit(f"{u.path}: {sr} Hz, 16 kHz expected")
        data.append(stage_features(model, x))
    mean = torch.cat([lm for _, lm in data]).mean(0)
    print(f"features of {len(data)} utterances in {time.time() - t0:.0f} s", flush=True)
    probes = {}
    for stage in stages:
        t0 = time.time()
        probes[stage] = train_probe(data, stage, args.steps, mean, rng)
        print(f"probe {stage}: L1 {probes[stage][1]:.3f} nats after {args.steps} steps ({time.time() - t0:.0f} s)",
              flush=True)
    asr = M.WhisperASR(cpu_threads=args.threads)
    rows: dict[str, tuple[list[str], list[str], list[float]]] = {}
    for u in read_manifest(args.manifest, limit=args.limit):
        x, _ = sf.read(u.path, dtype="float32")
        feats, lm = stage_features(model, x)
        x = x[: 2 * HOP * len(lm)]
        e = harmonic_excitation(x, SR)
        envelopes = {"original envelope": lm}
        with torch.no_grad():
            for stage, (probe, _) in probes.items():
                envelopes[stage] = probe(feats[stage]) + mean
        for name, env in envelopes.items():
            z = shape_by(e, env.reshape(-1, BANDS))
            z = z * float(np.sqrt(np.mean(x**2) / max(np.mean(z**2), 1e-12)))
            refs, hyps, stois = rows.setdefault(name, ([], [], []))
            refs.append(u.transcript or "")
            hyps.append(asr.transcribe(z))
            stois.append(M.stoi(x, z))
        print(u.id, flush=True)
    print(f"\n{args.model}: probes trained {args.steps} steps on {len(data)} utterances of {args.train_manifest}; "
          f"{args.limit} utterances of {args.manifest}")
    print("| envelope from | probe L1 (nats) | WER % | STOI |\n|---|---:|---:|---:|")
    for name, (refs, hyps, stois) in rows.items():
        l1 = f"{probes[name][1]:.3f}" if name in probes else "-"
        print(f"| {name} | {l1} | {M.wer(refs, hyps):.1f} | {np.mean(stois):.3f} |")


if __name__ == "__main__":
    main()
