"""Vectorised bit packing of fixed-width integer tokens.

A token stream of ``count`` tokens, each ``bits`` bits wide (1 <= bits <= 32),
is stored as a dense big-endian bit string: token 0's most significant bit is
the most significant bit of byte 0, tokens follow each other with no gaps, and
the last byte is zero-padded on the right. The packed size is therefore
``ceil(count * bits / 8)`` bytes.

Example: 12-bit tokens ``[0xABC, 0x123]`` pack to ``b"\\xAB\\xC1\\x23"``.

Everything is done with numpy array operations; there are no Python loops over
tokens or bits.
"""

from __future__ import annotations

import numpy as np

__all__ = ["MAX_BITS", "pack_tokens", "packed_size", "unpack_tokens"]

#: Widest token supported, in bits.
MAX_BITS = 32


def _check_bits(bits: int) -> int:
    if isinstance(bits, bool) or not isinstance(bits, (int, np.integer)):
        raise ValueError(f"bits must be an integer in 1..{MAX_BITS}, got {bits!r}")
    bits = int(bits)
    if not 1 <= bits <= MAX_BITS:
        raise ValueError(f"bits must be in 1..{MAX_BITS}, got {bits}")
    return bits


def _check_count(count: int) -> int:
    if isinstance(count, bool) or not isinstance(count, (int, np.integer)):
        raise ValueError(f"count must be a non-negative integer, got {count!r}")
    count = int(count)
    if count < 0:
        raise ValueError(f"count must be non-negative, got {count}")
    return count


def packed_size(count: int, bits: int) -> int:
    """Size in bytes of ``count`` tokens of ``bits`` bits each: ``ceil(count * bits / 8)``."""
    count = _check_count(count)
    bits = _check_bits(bits)
    return (count * bits + 7) // 8


def pack_tokens(tokens: np.ndarray, bits: int) -> bytes:
    """Pack a 1-D array of tokens into bytes, ``bits`` bits per token, MSB first.

    Args:
        tokens: 1-D integer array (or sequence) of token values in ``[0, 2**bits)``.
        bits: token width in bits, 1..32.

    Returns:
        ``packed_size(len(tokens), bits)`` bytes; the final byte is zero-padded.

    Raises:
        ValueError: on a bad ``bits``, non-1-D or non-integer input, or a token
            value outside ``[0, 2**bits)``.
    """
    bits = _check_bits(bits)
    arr = np.asarray(tokens)
    if arr.ndim != 1:
        raise ValueError(f"tokens must be a 1-D array, got shape {arr.shape}")
    if arr.size == 0:
        return b""
    if arr.dtype.kind not in "iub":
        raise ValueError(f"tokens must have an integer dtype, got {arr.dtype}")
    lo, hi = int(arr.min()), int(arr.max())
    if lo < 0 or hi >= (1 << bits):
        bad = lo if lo < 0 else hi
        idx = int(np.argmax(arr < 0)) if lo < 0 else int(np.argmax(arr))
        raise ValueError(
            f"token value {bad} at index {idx} does not fit in {bits} bits (valid range 0..{(1 << bits) - 1})"
        )
    # Each token as 4 big-endian bytes -> (N, 32) bit matrix, MSB first; keep
    # the low `bits` columns and pack the flattened bit string.
    be_bytes = arr.astype(">u4").view(np.uint8).reshape(-1, 4)
    bit_matrix = np.unpackbits(be_bytes, axis=1)[:, MAX_BITS - bits :]
    return np.packbits(bit_matrix.reshape(-1)).tobytes()


def _as_uint8(data: bytes | bytearray | memoryview | np.ndarray) -> np.ndarray:
    if isinstance(data, np.ndarray):
        if data.dtype != np.uint8:
            raise ValueError(f"packed data array must have dtype uint8, got {data.dtype}")
        return data.reshape(-1)
    try:
        return np.frombuffer(data, dtype=np.uint8)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"packed data must be bytes-like, got {type(data).__name__}") from exc


def unpack_tokens(data: bytes | bytearray | memoryview | np.ndarray, bits: int, count: int) -> np.ndarray:
    """Unpack ``count`` tokens of ``bits`` bits each from packed bytes.

    Args:
        data: packed bytes (bytes-like, or a uint8 numpy array). Bytes beyond
            the first ``packed_size(count, bits)`` are ignored, as are the
            padding bits of the last used byte.
        bits: token width in bits, 1..32.
        count: number of tokens to read.

    Returns:
        1-D int64 array of ``count`` tokens.

    Raises:
        ValueError: if ``data`` holds fewer than ``packed_size(count, bits)`` bytes,
            or on a bad ``bits``/``count``.
    """
    bits = _check_bits(bits)
    count = _check_count(count)
    buf = _as_uint8(data)
    need = packed_size(count, bits)
    if buf.size < need:
        raise ValueError(
            f"packed data too short: {count} tokens of {bits} bits need {need} bytes, got {buf.size}"
        )
    if count == 0:
        return np.zeros(0, dtype=np.int64)
    # (count, bits) bit matrix, left-padded with zero columns to 32 bits, then
    # packed back into 4 big-endian bytes per token.
    bit_matrix = np.zeros((count, MAX_BITS), dtype=np.uint8)
    bit_matrix[:, MAX_BITS - bits :] = np.unpackbits(buf[:need], count=count * bits).reshape(count, bits)
    return np.packbits(bit_matrix, axis=1).view(">u4").reshape(-1).astype(np.int64)
