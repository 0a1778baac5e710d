"""The codec demo's work (runs in a worker thread): input → streaming encode → packets through a simulated
network (loss, bursts, jitter) → jitter buffer → concealing decoder, exactly as ``focalchat demo`` does
(:func:`app.commands.demo.simulate_link`), plus the spectrograms the demo tab draws."""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np


@dataclass
class DemoResult:
    original: np.ndarray  # 16 kHz
    decoded: np.ndarray  # 24 kHz, cut/padded to the original's duration
    rate_in: int
    rate_out: int
    spec_original: np.ndarray  # (frames, bins) dB
    spec_decoded: np.ndarray
    spec_hz: float  # top frequency of both spectrograms
    payload_kbps: float
    packets: int
    net_lost: int
    lost: int
    concealed: int
    recovered: int
    encode_ms: float
    decode_ms: float
    chunk_ms: float

    def summary(self) -> str:
        return (f"{len(self.original) / self.rate_in:.1f} s · payload {self.payload_kbps:.2f} kbps · "
                f"{self.packets} packets, {self.net_lost} lost by the network · {self.lost} chunks lost, "
                f"{self.concealed} concealed, {self.recovered} recovered · encode {self.encode_ms:.1f} ms + "
                f"decode {self.decode_ms:.1f} ms per {self.chunk_ms:.0f} ms chunk")


def spectrogram(x: np.ndarray, rate: int, top_hz: float = 8000.0, n_fft: int = 512, frames: int = 400) -> np.ndarray:
    """Magnitude spectrogram in dB (frames, bins up to ``top_hz``), hop chosen to give about ``frames`` rows."""
    x = np.asarray(x, np.float32)
    if x.size < n_fft:
        x = np.pad(x, (0, n_fft - x.size))
    hop = max(n_fft // 4, (x.size - n_fft) // frames + 1)
    idx = np.arange(0, x.size - n_fft + 1, hop)
    win = np.hanning(n_fft).astype(np.float32)
    seg = np.stack([x[i:i + n_fft] * win for i in idx])
    mag = np.abs(np.fft.rfft(seg, axis=1))
    bins = int(round(top_hz / (rate / 2) * (n_fft // 2))) + 1
    return (20 * np.log10(mag[:, :bins] + 1e-6)).astype(np.float32)


def run_demo(model, sig: np.ndarray, *, loss_pct: float = 0.0, burst: float = 1.0, jitter_ms: float = 0.0,
             progress=None, cancelled=None) -> DemoResult:
    import torch

    from app.commands.demo import simulate_link
    from codec.bitpack import pack_tokens

    progress = progress or (lambda pct, text="": None)
    cs, bits = model.chunk_size, model.bits_per_token
    sig = np.asarray(sig, np.float32)
    n = max(1, -(-len(sig) // cs))
    padded = np.zeros(n * cs, np.float32)
    padded[: len(sig)] = sig
    x = torch.from_numpy(padded)[None]
    enc_ms, tokens, payload = [], [], 0
    state = None
    with torch.inference_mode():
        for i in range(n):
            if cancelled is not None and cancelled():
                raise RuntimeError("cancelled")
            t0 = time.perf_counter()
            toks, state = model.encode_step(x[:, i * cs:(i + 1) * cs], state)
            enc_ms.append(1000 * (time.perf_counter() - t0))
            tok = toks[0].numpy().astype(np.int64)
            tokens.append(tok)
            payload += len(pack_tokens(tok, bits))
            if i % 10 == 0:
                progress(int(60 * i / n), "encoding")
    progress(60, "through the simulated network and the decoder")
    net = simulate_link(model, tokens, loss=loss_pct / 100.0, burst=burst, jitter_ms=jitter_ms, enc_ms=enc_ms)
    rate_in, rate_out = int(model.sample_rate_input), int(model.sample_rate_output)
    n_out = len(sig) * rate_out // rate_in
    out = np.zeros(n_out, np.float32)
    out[: min(n_out, len(net.audio))] = net.audio[:n_out]
    progress(90, "spectrograms")
    chunk_ms = 1000.0 * cs / rate_in
    return DemoResult(original=sig, decoded=out, rate_in=rate_in, rate_out=rate_out,
                      spec_original=spectrogram(sig, rate_in), spec_decoded=spectrogram(out, rate_out),
                      spec_hz=8000.0, payload_kbps=8 * payload / (n * chunk_ms / 1000) / 1000, packets=net.packets,
                      net_lost=net.net_lost, lost=net.lost, concealed=net.concealed, recovered=net.recovered,
                      encode_ms=float(np.median(enc_ms)), decode_ms=float(np.median(net.dec_ms or [0.0])),
                      chunk_ms=chunk_ms)


def load_input(source: str, path: str | None, rate: int, mic_key: str = "", mic_seconds: float = 4.0) -> np.ndarray:
    """The demo's input at ``rate``: ``clip`` (the bundled speech), ``file`` (any sound file) or ``mic``."""
    from app.modelref import SPEECH_SAMPLE
    from codec.audio import load_audio

    if source == "mic":
        from app.gui.devices import record

        return record(mic_key, mic_seconds)
    return load_audio(path if source == "file" and path else SPEECH_SAMPLE, rate)
