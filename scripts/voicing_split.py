"""Where a codec with a harmonic source loses naturalness: voiced against unvoiced speech, and the source's
parameters against ones measured on the original.

For each utterance the original's voiced frames (YIN, ``codec.training.pitch.track_pitch``) give a mask
(linear between 20 ms frames), and the no-reference MOS estimators score:

- ``model``: the decoded speech;
- ``model voiced + original unvoiced``, ``original voiced + model unvoiced``: the two parts swapped in;
- ``source + original unvoiced``: the harmonic source alone in voiced frames;
- ``measured envelope + original unvoiced``: the source driven by the model's pitch but the original's
  harmonic amplitudes (``harmonic_amplitudes`` at the tracked pitch, read onto the source's band points);
- ``measured pitch and envelope + original unvoiced``: the same synthesis with the original's pitch too:
  what the synthesis itself allows;
- ``measured envelope shape (model level)`` / ``measured level (model shape)``: the measured envelope less
  its mean over the bands plus the model's, and the other way round (voiced source frames, + original
  unvoiced): whether the shape or the level of the envelope is what is heard;
- ``model, original in silence`` / ``model, original in unvoiced speech``: the unvoiced frames split into
  silence (35 dB below the utterance's loudest 20 ms) and the rest, each swapped in alone;
- ``model, original magnitudes + random phase in unvoiced speech`` / ``model magnitudes + original phase in
  unvoiced speech``: which half of the model's unvoiced speech (STFT, 32 ms windows) is heard.

    .venv/bin/python scripts/voicing_split.py MODEL [--limit 10]
"""

from __future__ import annotations

import argparse
import math

import numpy as np
import soundfile as sf
import soxr
import torch

from codec.evaluation.harness import read_manifest
from codec.evaluation.metrics import DNSMOS, DistillMOS
from codec.pretrained import load_pretrained
from codec.training.pitch import harmonic_amplitudes, harmonics_to_bands, track_pitch


def voiced_mask(x: np.ndarray, sr: int = 16000, hop: int = 320) -> np.ndarray:
    """Per-sample voicing of the original (T,) in [0, 1], linear between the tracker's frames."""
    _, voiced, _ = track_pitch(torch.from_numpy(x)[None], sr, hop)
    return np.interp(np.arange(len(x)), np.arange(voiced.shape[1]) * hop, voiced[0].float().numpy()).astype(np.float32)


def measured_params(ref: torch.Tensor, src, hop: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Original at the output rate (1, T) -> (f0 (1, N), voiced (1, N), envelope (1, N, bands)) per source frame."""
    f0, voiced, _ = track_pitch(ref, src.sample_rate, hop, src.f0_min, src.f0_min * math.exp(src.log_range))
    k = max(1, int(src.fmax / src.f0_min))
    amps = harmonic_amplitudes(ref, f0, src.sample_rate, hop, k).clamp_min(1e-7).log()
    env = harmonics_to_bands(amps, f0, src.bands, src.fmax).float()
    # source frame n reaches its values at sample (n + 1) * hop: the tracker frame centred there
    return f0[:, 1:], voiced[:, 1:], env[:, 1:]


def silence_mask(x: np.ndarray, hop: int = 320, below_db: float = 35.0) -> np.ndarray:
    """Per-sample silence of x (T,) in [0, 1]: 20 ms frames ``below_db`` under the loudest, linear between."""
    n = len(x) // hop
    level = 10 * np.log10(np.mean(x[: n * hop].reshape(n, hop) ** 2, 1) + 1e-10)
    quiet = (level < level.max() - below_db).astype(np.float32)
    return np.interp(np.arange(len(x)), np.arange(n) * hop + hop // 2, quiet).astype(np.float32)


def swap_stft(x: np.ndarray, y: np.ndarray, keep: str, seed: int = 0) -> np.ndarray:
    """x's magnitudes with random phases (``keep="x-mag"``) or y's magnitudes with x's phases (``"y-mag"``)."""
    win = torch.hann_window(512)
    sx, sy = (torch.stft(torch.from_numpy(a), 512, 128, window=win, return_complex=True) for a in (x, y))
    if keep == "x-mag":
        g = torch.Generator().manual_seed(seed)
        z = torch.polar(sx.abs(), 2 * math.pi * torch.rand(sx.shape, generator=g))
    else:
        z = torch.polar(sy.abs(), sx.angle())
    return torch.istft(z, 512, 128, window=win, length=len(x)).numpy()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("model", help="model folder, hub id or alias (its decoder needs the harmonic source)")
    ap.add_argument("--manifest", default="../shared/data/librispeech/test-other.tsv")
    ap.add_argument("--limit", type=int, default=10)
    args = ap.parse_args()
    torch.set_num_threads(2)
    model = load_pretrained(args.model).eval()
    dec = model.decoder
    src = dec.source
    if src is None:
        raise SystemExit(f"{args.model}: the decoder has no harmonic source")
    rate, hop = src.sample_rate, dec.cfg.hop_length
    override: dict[str, torch.Tensor | str] = {}
    taken: dict[str, torch.Tensor] = {}

    def set_params(mod, inputs, out):  # replace the source's per-frame pitch / voicing / envelope
        if not override:
            return out
        out = out.clone()
        n = out.shape[1]
        fit = {k: torch.cat([v, v[:, -1:].expand(-1, n - v.shape[1], *v.shape[2:])], 1)[:, :n]
               if v.shape[1] < n else v[:, :n] for k, v in override.items() if isinstance(v, torch.Tensor)}
        env = fit["envelope"]
        if "keep" in override:  # mix: the measured envelope's shape or level with the model's other half
            own = out[..., 2:]
            shape, level = env - env.mean(-1, keepdim=True), own.mean(-1, keepdim=True)
            if override["keep"] == "level":
                shape, level = own - level, env.mean(-1, keepdim=True)
            env = torch.where(fit["voiced"][..., None], shape + level, own)
        else:
            out[..., 1] = torch.where(fit["voiced"], 8.0, -8.0)
        out[..., 2:] = env
        if "f0" in fit:
            q = (torch.log(fit["f0"] / src.f0_min) / src.log_range).clamp(1e-4, 1 - 1e-4)
            out[..., 0] = torch.where(fit["voiced"], torch.log(q / (1 - q)), out[..., 0])
        return out

    src.proj.register_forward_hook(set_params)
    src.register_forward_hook(lambda mod, inputs, out: taken.__setitem__("source", out[0][0]))
    judges = {"DistillMOS": DistillMOS(), "DNSMOS": DNSMOS()}
    scores: dict[str, list[list[float]]] = {}

    def score(name: str, z: np.ndarray) -> None:
        scores.setdefault(name, []).append([judge(z.astype(np.float32)) for judge in judges.values()])

    def decode(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        with torch.inference_mode():
            y = model.sig_to_sig(torch.from_numpy(x)[None])[0].numpy()
        fit = lambda a: np.pad(a, (0, max(0, len(x) - len(a))))[: len(x)]  # noqa: E731
        return fit(soxr.resample(y, rate, 16000)), fit(soxr.resample(taken["source"].numpy(), rate, 16000))

    for utt in read_manifest(args.manifest, args.limit):
        x, sr = sf.read(utt.path, dtype="float32")
        if sr != 16000:
            x = soxr.resample(x, sr, 16000).astype(np.float32)
        v = voiced_mask(x)
        override.clear()
        y, s = decode(x)
        score("model", y)
        score("model voiced + original unvoiced", y * v + x * (1 - v))
        score("original voiced + model unvoiced", x * v + y * (1 - v))
        score("source + original unvoiced", s * v + x * (1 - v))
        f0, voiced, env = measured_params(torch.from_numpy(soxr.resample(x, 16000, rate))[None], src, hop)
        override.update(voiced=voiced, envelope=env)
        score("measured envelope + original unvoiced", decode(x)[1] * v + x * (1 - v))
        override["f0"] = f0
        score("measured pitch and envelope + original unvoiced", decode(x)[1] * v + x * (1 - v))
        del override["f0"]
        for keep, name in (("shape", "measured envelope shape (model level)"), ("level", "measured level (model shape)")):
            override["keep"] = keep
            score(f"{name} + original unvoiced", decode(x)[1] * v + x * (1 - v))
        sil = silence_mask(x) * (1 - v)
        unv = (1 - v) - sil
        score("model, original in silence", y * (1 - sil) + x * sil)
        score("model, original in unvoiced speech", y * (1 - unv) + x * unv)
        for keep, name in (("x-mag", "original magnitudes + random phase"), ("y-mag", "model magnitudes + original phase")):
            score(f"model, {name} in unvoiced speech", y * (1 - unv) + swap_stft(x, y, keep) * unv)
    print(f"{args.model}, {len(scores['model'])} utterances of {args.manifest}")
    for name, rows in scores.items():
        means = np.mean(rows, 0)
        print(f"  {name:62s} " + "  ".join(f"{j} {m:.2f}" for j, m in zip(judges, means)))


if __name__ == "__main__":
    main()
