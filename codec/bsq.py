"""Binary spherical quantizer: L2-normalised latents (B, N, D) -> sign codes +-1/sqrt(D) and D-bit tokens.

Token bit order: latent dimension 0 is the most significant bit; bit = 1 <=> latent > 0
(an exact zero maps to the negative code).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from .config import BSQConfig


class BinarySphericalQuantizer(nn.Module):
    def __init__(self, cfg: BSQConfig) -> None:
        super().__init__()
        self.dim = cfg.dim
        self.codebook_size = cfg.codebook_size
        self.codebook_value = 1.0 / math.sqrt(self.dim)
        self.register_buffer("mask", 2 ** torch.arange(self.dim - 1, -1, -1, dtype=torch.int64, device="cpu"), persistent=False)

    def lats_to_codes(self, lats: Tensor) -> Tensor:
        v = torch.tensor(self.codebook_value, dtype=lats.dtype, device=lats.device)
        return torch.where(lats > 0, v, -v)

    def lats_to_toks(self, lats: Tensor) -> Tensor:
        """(B, N, D) -> (B, N) int64 in [0, 2**D)."""
        return ((lats > 0) * self.mask).sum(-1)

    def codes_to_toks(self, codes: Tensor) -> Tensor:
        return self.lats_to_toks(codes)

    def toks_to_codes(self, toks: Tensor, dtype: torch.dtype = torch.float32) -> Tensor:
        """(B, N) int -> (B, N, D) codes +-1/sqrt(D)."""
        if toks.dtype != torch.int64:
            toks = toks.long()
        if toks.numel():
            lo, hi = (int(v) for v in torch.aminmax(toks))
            if lo < 0 or hi >= self.codebook_size:
                raise ValueError(f"tokens must lie in [0, {self.codebook_size}), got [{lo}, {hi}]")
        bits = (toks.unsqueeze(-1) & self.mask) != 0
        codes = torch.where(bits, self.codebook_value, -self.codebook_value)  # float32, exactly +-1/sqrt(D)
        return codes if codes.dtype == dtype else codes.to(dtype)

    @property
    def codebook(self) -> Tensor:
        """(2**D, D) all codes in token order."""
        return self.toks_to_codes(torch.arange(self.codebook_size, device=self.mask.device))
