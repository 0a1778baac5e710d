"""FocalCodec: the stages wired together, one-shot and streaming.

Stages and shapes (B = batch, T = input samples at 16 kHz, N = frames at 50 Hz, D = bits per token)::

    sig (B, T) --encoder--> feats (B, N, C) --compressor + L2 norm--> lats (B, N, D)
    lats --quantizer--> codes (B, N, D) (+-1/sqrt(D)) <--> toks (B, N) int64
    codes --decompressor (+ refiner)--> qfeats (B, N, C) --decoder--> rec_sig (B, N * hop) at 24 kHz

Streaming: one :class:`EncodeState` / :class:`DecodeState` per stream, passed in and returned by
:meth:`FocalCodec.encode_step` / :meth:`FocalCodec.decode_step`. A state never holds more than the
attention window and the convolution contexts. Passing a state to a step hands it over: keep using
the returned state (``state.clone()`` first to branch a stream).
"""

from __future__ import annotations

import copy
import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .bsq import BinarySphericalQuantizer
from .config import CodecConfig, VocosConfig
from .decoder import Vocos, WaveNeXt
from .focal import FocalDecoder, FocalEncoder
from .wavlm import WavLM, WavLMState

# One-shot encoding of a causal model runs in segments of this many chunks (same result, bounded memory).
_ONESHOT_SEGMENT_CHUNKS = 64


def tensor_digest(key: str, tensor: Tensor) -> bytes:
    """sha256 of a state-dict key and the tensor's float32 bytes."""
    h = hashlib.sha256(key.encode())
    h.update(tensor.detach().to(torch.float32).contiguous().cpu().numpy())  # buffer protocol: no copy
    return h.digest()


def weights_fingerprint(digests: dict[str, bytes]) -> str:
    """sha256 (hex) over the per-key digests in key order."""
    h = hashlib.sha256()
    for k in sorted(digests):
        h.update(digests[k])
    return h.hexdigest()


@dataclass
class EncodeState:
    """Streaming state of one encoder stream (signal -> tokens)."""

    encoder: WavLMState | None = None
    compressor: list | None = None
    num_samples: int = 0  # input samples consumed (16 kHz)

    def clone(self) -> EncodeState:
        return copy.deepcopy(self)


@dataclass
class DecodeState:
    """Streaming state of one decoder stream (tokens -> signal)."""

    decompressor: list | None = None
    decoder: list | None = None
    num_tokens: int = 0

    def clone(self) -> DecodeState:
        return copy.deepcopy(self)


class FocalCodec(nn.Module):
    def __init__(self, config: CodecConfig | dict[str, Any] | None = None) -> None:
        super().__init__()
        if config is None:
            config = CodecConfig()
        elif isinstance(config, dict):
            config = CodecConfig.from_dict(config)
        self.config = config
        self.encoder = WavLM(config.encoder_config)
        self.compressor = FocalEncoder(config.compressor_config)
        self.quantizer = BinarySphericalQuantizer(config.quantizer_config)
        self.decompressor = FocalDecoder(config.decompressor_config)
        if isinstance(config.decoder_config, VocosConfig):
            self.decoder: nn.Module = Vocos(config.decoder_config)
        else:
            self.decoder = WaveNeXt(config.decoder_config)
        self.model_id: str | None = None  # set by from_pretrained
        self.compute_dtype = torch.float32  # activations of the streaming steps (see codec.fastpath)
        self.mode = "fp32"
        self._fingerprint: str | None = None
        self.eval()

    # ------------------------------------------------------------------ properties
    @property
    def causal(self) -> bool:
        return self.config.causal

    @property
    def sample_rate_input(self) -> int:
        return self.config.sample_rate_input

    @property
    def sample_rate_output(self) -> int:
        return self.config.sample_rate_output

    @property
    def chunk_size(self) -> int:
        """Input samples per streaming step (1280 = 80 ms)."""
        return self.config.chunk_size

    @property
    def output_chunk_size(self) -> int:
        """Output samples per streaming step (1920 at 24 kHz)."""
        return self.config.output_chunk_size

    @property
    def tokens_per_chunk(self) -> int:
        return self.config.tokens_per_chunk

    @property
    def bits_per_token(self) -> int:
        return self.config.bits_per_token

    @property
    def latency(self) -> float | None:
        """Algorithmic latency in ms (chunk length), None for full-context models."""
        return self.config.latency_ms

    @property
    def codebook(self) -> Tensor:
        return self.quantizer.codebook

    def fingerprint(self) -> str:
        """sha256 (hex) identifying the weights (see :func:`weights_fingerprint`).

        Identifies the model in compressed files and call handshakes. A model built by
        :func:`codec.fastpath.build` gets it from the checkpoint tensors, so every mode of one
        checkpoint has the same fingerprint. Cached until :meth:`load_state_dict`.
        """
        if self._fingerprint is None:
            if self.mode == "int8":
                raise RuntimeError("the fingerprint of an int8 model is taken when it is built (codec.fastpath.build)")
            self._fingerprint = weights_fingerprint({k: tensor_digest(k, v) for k, v in self.state_dict().items()})
        return self._fingerprint

    def load_state_dict(self, *args: Any, **kwargs: Any):  # type: ignore[override]
        self._fingerprint = None
        return super().load_state_dict(*args, **kwargs)

    def num_params(self) -> int:
        """Weights and buffers, counted by element (an int8 model's packed weights too)."""
        n = 0
        for v in self.state_dict().values():  # int8 layers hold (weight, bias) tuples and their dtype
            for t in v if isinstance(v, tuple) else (v,):
                n += t.numel() if isinstance(t, torch.Tensor) else 0
        return n

    # ------------------------------------------------------------------ checkpoints
    @classmethod
    def from_pretrained(cls, source: str | Path, **kwargs: Any) -> FocalCodec:
        """Load from a local folder / config.json path or a hub id (see :mod:`codec.pretrained`)."""
        from .pretrained import load_pretrained

        return load_pretrained(source, **kwargs)

    def save_pretrained(self, folder: str | Path, dtype: torch.dtype | None = None) -> Path:
        from .pretrained import save_pretrained

        return save_pretrained(self, folder, dtype=dtype)

    # ------------------------------------------------------------------ stages (one-shot, optionally stateful)
    def sig_to_feats(self, sig: Tensor, state: WavLMState | None = None, return_state: bool = False):
        """sig (B, T) -> feats (B, ceil(T / 320), C)."""
        if sig.dim() != 2:
            raise ValueError(f"expected a signal of shape (batch, samples), got {tuple(sig.shape)}")
        if sig.dtype != self.compute_dtype:
            sig = sig.to(self.compute_dtype)
        seg = _ONESHOT_SEGMENT_CHUNKS * self.chunk_size
        if not self.causal or sig.shape[1] <= seg:
            feats, state = self.encoder(sig, state)
        else:  # identical to a single call; bounds the attention matrices on long inputs
            parts = []
            for i in range(0, sig.shape[1], seg):
                f, state = self.encoder(sig[:, i : i + seg], state)
                parts.append(f)
            feats = torch.cat(parts, dim=1)
        return (feats, state) if return_state else feats

    def feats_to_lats(self, feats: Tensor, state: list | None = None, return_state: bool = False):
        """feats (B, N, C) -> L2-normalised latents (B, N, D)."""
        lats, state = self.compressor(feats, state)
        lats = lats / torch.linalg.vector_norm(lats, dim=-1, keepdim=True).clamp_min(1e-12)  # = F.normalize
        return (lats, state) if return_state else lats

    def lats_to_codes(self, lats: Tensor) -> Tensor:
        return self.quantizer.lats_to_codes(lats)

    def lats_to_toks(self, lats: Tensor) -> Tensor:
        return self.quantizer.lats_to_toks(lats)

    def codes_to_toks(self, codes: Tensor) -> Tensor:
        return self.quantizer.codes_to_toks(codes)

    def toks_to_codes(self, toks: Tensor) -> Tensor:
        return self.quantizer.toks_to_codes(toks, dtype=self.compute_dtype)

    def codes_to_qfeats(self, codes: Tensor, state: list | None = None, return_state: bool = False):
        """codes (B, N, D) -> reconstructed features (B, N, C)."""
        if codes.dtype != self.compute_dtype:
            codes = codes.to(self.compute_dtype)
        qfeats, state = self.decompressor(codes, state)
        return (qfeats, state) if return_state else qfeats

    def feats_to_sig(self, feats: Tensor, state: list | None = None, return_state: bool = False):
        """features (B, N, C) -> waveform (B, N * hop) at the output rate."""
        sig, state = self.decoder(feats, state)
        if sig.dtype != torch.float32:
            sig = sig.float()
        return (sig, state) if return_state else sig

    qfeats_to_sig = feats_to_sig

    # compositions
    def sig_to_lats(self, sig: Tensor) -> Tensor:
        return self.feats_to_lats(self.sig_to_feats(sig))

    def sig_to_toks(self, sig: Tensor) -> Tensor:
        return self.lats_to_toks(self.sig_to_lats(sig))

    def sig_to_codes(self, sig: Tensor) -> Tensor:
        return self.lats_to_codes(self.sig_to_lats(sig))

    def sig_to_qfeats(self, sig: Tensor) -> Tensor:
        return self.codes_to_qfeats(self.sig_to_codes(sig))

    def feats_to_toks(self, feats: Tensor) -> Tensor:
        return self.lats_to_toks(self.feats_to_lats(feats))

    def feats_to_codes(self, feats: Tensor) -> Tensor:
        return self.lats_to_codes(self.feats_to_lats(feats))

    def feats_to_qfeats(self, feats: Tensor) -> Tensor:
        return self.codes_to_qfeats(self.feats_to_codes(feats))

    def lats_to_qfeats(self, lats: Tensor) -> Tensor:
        return self.codes_to_qfeats(self.lats_to_codes(lats))

    def toks_to_qfeats(self, toks: Tensor) -> Tensor:
        return self.codes_to_qfeats(self.toks_to_codes(toks))

    def codes_to_sig(self, codes: Tensor) -> Tensor:
        return self.feats_to_sig(self.codes_to_qfeats(codes))

    def toks_to_sig(self, toks: Tensor) -> Tensor:
        return self.codes_to_sig(self.toks_to_codes(toks))

    def sig_to_sig(self, sig: Tensor) -> Tensor:
        return self.codes_to_sig(self.sig_to_codes(sig))

    def forward(self, sig: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """sig (B, T) -> (toks (B, N), codes (B, N, D), rec_sig (B, int(T * out_rate / in_rate)))."""
        lats = self.sig_to_lats(sig)
        toks, codes = self.lats_to_toks(lats), self.lats_to_codes(lats)
        rec = self.codes_to_sig(codes)
        length = sig.shape[1] * self.sample_rate_output // self.sample_rate_input
        if rec.shape[1] >= length:
            rec = rec[:, :length]
        else:
            rec = F.pad(rec, (0, length - rec.shape[1]), mode="replicate") if rec.shape[1] else \
                rec.new_zeros(rec.shape[0], length)
        return toks, codes, rec

    # ------------------------------------------------------------------ streaming
    def _check_streaming(self) -> None:
        if not self.causal:
            raise RuntimeError("this is a full-context (non-causal) model: it cannot stream")

    def encode_step(self, sig: Tensor, state: EncodeState | None = None) -> tuple[Tensor, EncodeState]:
        """sig (B, k * chunk_size) -> toks (B, k * tokens_per_chunk); returns the new state."""
        self._check_streaming()
        if sig.dim() != 2 or sig.shape[1] == 0 or sig.shape[1] % self.chunk_size:
            raise ValueError(f"encode_step takes (batch, k * {self.chunk_size}) samples, got {tuple(sig.shape)}")
        state = state or EncodeState()
        feats, enc = self.sig_to_feats(sig, state.encoder, return_state=True)
        lats, comp = self.feats_to_lats(feats, state.compressor, return_state=True)
        return self.lats_to_toks(lats), EncodeState(enc, comp, state.num_samples + sig.shape[1])

    def encode_flush(self, sig: Tensor, state: EncodeState | None = None) -> tuple[Tensor, EncodeState]:
        """Encode a final partial chunk (B, 0 < t <= chunk_size samples), zero-padded to a whole chunk."""
        if sig.shape[1] == 0:
            return sig.new_zeros(sig.shape[0], 0, dtype=torch.long), state or EncodeState()
        pad = -sig.shape[1] % self.chunk_size
        return self.encode_step(F.pad(sig, (0, pad)), state)

    def decode_step(self, toks: Tensor, state: DecodeState | None = None) -> tuple[Tensor, DecodeState]:
        """toks (B, k * tokens_per_chunk) -> sig (B, k * output_chunk_size); returns the new state."""
        self._check_streaming()
        if toks.dim() != 2 or toks.shape[1] == 0 or toks.shape[1] % self.tokens_per_chunk:
            raise ValueError(f"decode_step takes (batch, k * {self.tokens_per_chunk}) tokens, got {tuple(toks.shape)}")
        state = state or DecodeState()
        return self.decode_codes_step(self.toks_to_codes(toks), state)

    def decode_codes_step(self, codes: Tensor, state: DecodeState | None = None) -> tuple[Tensor, DecodeState]:
        """codes (B, k * tokens_per_chunk, D) -> sig; lets concealment feed soft codes."""
        state = state or DecodeState()
        qfeats, dec = self.codes_to_qfeats(codes, state.decompressor, return_state=True)
        sig, wav = self.feats_to_sig(qfeats, state.decoder, return_state=True)
        return sig, DecodeState(dec, wav, state.num_tokens + codes.shape[1])

    def info(self) -> dict[str, Any]:
        c = self.config
        return {
            "model_id": self.model_id,
            "causal": self.causal,
            "sample_rate_input": self.sample_rate_input,
            "sample_rate_output": self.sample_rate_output,
            "chunk_size": self.chunk_size if self.causal else None,
            "latency_ms": self.latency,
            "bits_per_token": c.bits_per_token,
            "token_rate": c.token_rate,
            "bitrate_bps": c.bitrate,
            "num_params": self.num_params(),
        }
