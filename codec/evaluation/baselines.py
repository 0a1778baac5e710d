"""Codecs under one interface: ``encode_decode(sig16k) -> (signal at its own rate, sample rate, payload bits)``.

- Codec2 700C / 1300 / 3200 (``pycodec2``, a wheel that bundles libcodec2; 8 kHz, resampled with soxr);
- Opus 6 kbps (PyAV's bundled libopus, 20 ms frames, ``voip``, VBR; its decoder outputs 48 kHz);
- the 16 kHz original (the ceiling: 16-bit PCM);
- any :class:`codec.model.FocalCodec` (one-shot on the signal zero-padded to whole chunks, which equals
  streaming; or, with ``streaming=True``, the chunk-by-chunk path the app runs).

``payload_bits`` counts the bits the codec's bitstream holds (Codec2: its bits per frame, not the byte-
padded frame; Opus: the packet bytes; FocalCodec: tokens x bits per token, as the bit packer stores them).
``known_delay_s`` is the codec's delay when it is known (used to align before PESQ/STOI); ``None`` means
the harness estimates it from band log-spectra.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from codec.audio import resample
from codec.evaluation import require

SR_IN = 16000


@dataclass
class Codec:
    """Base class: a named codec with a nominal rate. ``info`` holds per-call extras (wire bits, etc.)."""

    name: str
    label: str
    nominal_kbps: float
    known_delay_s: float | None = None
    info: dict = field(default_factory=dict)

    def encode_decode(self, sig16k: np.ndarray) -> tuple[np.ndarray, int, int]:  # pragma: no cover
        raise NotImplementedError

    def describe(self) -> dict:
        return {"name": self.name, "label": self.label, "nominal_kbps": self.nominal_kbps,
                "known_delay_ms": None if self.known_delay_s is None else 1000 * self.known_delay_s}


class Original(Codec):
    """The 16 kHz input itself, counted as 16-bit PCM."""

    def __init__(self) -> None:
        super().__init__("original", "original 16 kHz (ceiling)", 256.0, 0.0)

    def encode_decode(self, sig16k):
        x = np.asarray(sig16k, dtype=np.float32)
        return x.copy(), SR_IN, 16 * len(x)


# Codec2: mode -> (label, measured delay of the 16k -> 8k -> Codec2 -> 8k chain on LibriSpeech, in seconds)
CODEC2_MODES = {
    700: ("Codec2 700C", 0.030),
    1200: ("Codec2 1200", None),
    1300: ("Codec2 1300", 0.020),
    1400: ("Codec2 1400", None),
    1600: ("Codec2 1600", None),
    2400: ("Codec2 2400", None),
    3200: ("Codec2 3200", 0.019),
}


def _to_int16(x: np.ndarray) -> np.ndarray:
    return np.clip(np.round(np.asarray(x, dtype=np.float64) * 32767.0), -32768, 32767).astype(np.int16)


class Codec2(Codec):
    """Codec2 at 8 kHz through pycodec2; the signal is zero-padded to whole frames."""

    SR = 8000

    def __init__(self, mode: int) -> None:
        if mode not in CODEC2_MODES:
            raise ValueError(f"Codec2 mode {mode} (choose from {sorted(CODEC2_MODES)})")
        label, delay = CODEC2_MODES[mode]
        super().__init__(f"codec2-{mode}c" if mode == 700 else f"codec2-{mode}", label, mode / 1000, delay)
        self.mode = mode
        self._pycodec2 = require("pycodec2", what="the Codec2 baselines")

    def encode_decode(self, sig16k):
        c2 = self._pycodec2.Codec2(self.mode)  # fresh state per utterance
        spf, bits_pf = c2.samples_per_frame(), c2.bits_per_frame()
        x = _to_int16(resample(sig16k, SR_IN, self.SR))
        x = np.pad(x, (0, -len(x) % spf))
        n_frames = len(x) // spf
        frames = [c2.encode(x[i * spf:(i + 1) * spf]) for i in range(n_frames)]
        y = np.concatenate([c2.decode(f) for f in frames]) if frames else np.zeros(0, np.int16)
        self.info = {"frames": n_frames, "frame_ms": 1000 * spf / self.SR, "bits_per_frame": bits_pf,
                     "wire_bits": 8 * sum(len(f) for f in frames)}
        return y.astype(np.float32) / 32768.0, self.SR, bits_pf * n_frames


class Opus(Codec):
    """Opus through PyAV's libopus: 16 kHz mono in, ``voip``, VBR, fixed frame length; 48 kHz out."""

    def __init__(self, kbps: float = 6.0, frame_ms: int = 20) -> None:
        super().__init__(f"opus{kbps:g}", f"Opus {kbps:g} kbps ({frame_ms} ms)", kbps, 0.0065)
        self.kbps, self.frame_ms = kbps, frame_ms
        self._av = require("av", what="the Opus baseline")

    def encode_decode(self, sig16k):
        av = self._av
        enc = av.CodecContext.create("libopus", "w")
        enc.sample_rate, enc.layout, enc.format = SR_IN, "mono", "s16"
        enc.bit_rate = int(self.kbps * 1000)
        enc.options = {"application": "voip", "frame_duration": str(self.frame_ms), "vbr": "on"}
        enc.open()
        n = SR_IN * self.frame_ms // 1000
        x = _to_int16(sig16k)
        x = np.pad(x, (0, -len(x) % n))
        packets = []
        for i in range(0, len(x), n):
            frame = av.AudioFrame.from_ndarray(x[None, i:i + n], format="s16", layout="mono")
            frame.sample_rate, frame.pts = SR_IN, i
            packets += enc.encode(frame)
        packets += enc.encode(None)
        dec = av.CodecContext.create("libopus", "r")
        dec.sample_rate, dec.layout = SR_IN, "mono"
        out, sr_out = [], 48000
        for p in packets:
            for fr in dec.decode(p):
                a = fr.to_ndarray()
                sr_out = fr.sample_rate
                a = a.reshape(-1) if a.ndim == 1 or a.shape[0] == 1 else a.mean(axis=0)
                out.append(a.astype(np.float32) / (32768.0 if a.dtype == np.int16 else 1.0))
        y = np.concatenate(out) if out else np.zeros(0, np.float32)
        bits = 8 * sum(p.size for p in packets)
        self.info = {"packets": len(packets), "wire_bits": bits, "output_rate": sr_out}
        return y, sr_out, bits


class FocalCodecModel(Codec):
    """A loaded :class:`codec.model.FocalCodec`: 16 kHz in, its output rate out (24 kHz)."""

    def __init__(self, model, name: str = "focalcodec", label: str | None = None, streaming: bool = False,
                 mode: str = "fp32") -> None:
        bits = model.bits_per_token
        kbps = bits * float(model.config.token_rate) / 1000
        label = label or f"FocalCodec {model.model_id or 'model'} ({bits} bits, {kbps:g} kbps" + (
            f", {mode})" if mode != "fp32" else ")")
        super().__init__(name, label + (" streaming" if streaming else ""), kbps, None)
        self.model, self.streaming, self.mode = model, streaming, mode

    def describe(self) -> dict:
        d = super().describe()
        d.update(model_id=self.model.model_id, bits_per_token=self.model.bits_per_token,
                 token_rate=float(self.model.config.token_rate), streaming=self.streaming,
                 num_params=self.model.num_params(), precision=self.mode)
        return d

    def encode_decode(self, sig16k):
        from codec.compress import decode_tokens, encode_signal

        m = self.model
        sig = np.asarray(sig16k, dtype=np.float32)
        if self.streaming and m.causal:
            y, n_toks = self._streaming(sig)
        else:
            toks = encode_signal(m, sig)
            n_toks = len(toks)
            y = decode_tokens(m, toks, len(sig))
        self.info = {"tokens": int(n_toks)}
        return y, m.sample_rate_output, int(n_toks) * m.bits_per_token

    def _streaming(self, sig: np.ndarray) -> tuple[np.ndarray, int]:
        import torch

        m = self.model
        x = np.pad(sig, (0, -len(sig) % m.chunk_size))
        enc_state = dec_state = None
        out, n = [], 0
        with torch.inference_mode():
            for i in range(0, len(x), m.chunk_size):
                toks, enc_state = m.encode_step(torch.from_numpy(x[None, i:i + m.chunk_size]), enc_state)
                y, dec_state = m.decode_step(toks, dec_state)
                n += toks.shape[1]
                out.append(y[0].numpy())
        y = np.concatenate(out) if out else np.zeros(0, np.float32)
        return y[: len(sig) * m.sample_rate_output // m.sample_rate_input], n


BASELINE_NAMES = ("original", "codec2-700c", "codec2-1300", "codec2-3200", "opus6")


def make_baseline(name: str) -> Codec:
    """A baseline codec by name: original, codec2-700c, codec2-<mode>, opus<kbps>."""
    key = name.strip().lower()
    if key == "original":
        return Original()
    if key.startswith("codec2-"):
        mode = key.removeprefix("codec2-").removesuffix("c")
        if not mode.isdigit():
            raise ValueError(f"unknown codec {name!r}")
        return Codec2(int(mode))
    if key.startswith("opus"):
        try:
            return Opus(float(key.removeprefix("opus") or 6))
        except ValueError:
            raise ValueError(f"unknown codec {name!r}") from None
    raise ValueError(f"unknown codec {name!r} (baselines: {', '.join(BASELINE_NAMES)})")
