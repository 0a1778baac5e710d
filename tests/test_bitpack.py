"""Tests for codec.bitpack."""

from __future__ import annotations

import numpy as np
import pytest

from codec.bitpack import MAX_BITS, pack_tokens, packed_size, unpack_tokens

ALL_BITS = list(range(1, MAX_BITS + 1))
LENGTHS = [0, 1, 3, 4, 7, 8, 1000]


def _reference_pack(tokens: list[int], bits: int) -> bytes:
    """Slow, obviously-correct reference: concatenate binary strings."""
    s = "".join(format(t, f"0{bits}b") for t in tokens)
    s += "0" * (-len(s) % 8)
    return bytes(int(s[i : i + 8], 2) for i in range(0, len(s), 8))


@pytest.mark.parametrize("bits", ALL_BITS)
@pytest.mark.parametrize("n", LENGTHS)
def test_round_trip_random(bits: int, n: int) -> None:
    rng = np.random.default_rng(bits * 10_007 + n)
    tokens = rng.integers(0, 1 << bits, size=n, dtype=np.int64)
    data = pack_tokens(tokens, bits)
    assert isinstance(data, bytes)
    assert len(data) == packed_size(n, bits)
    out = unpack_tokens(data, bits, n)
    assert out.dtype == np.int64
    assert out.shape == (n,)
    np.testing.assert_array_equal(out, tokens)


@pytest.mark.parametrize("bits", [1, 7, 11, 12, 13, 16, 32])
@pytest.mark.parametrize("n", LENGTHS)
@pytest.mark.parametrize("fill", ["zeros", "ones"])
def test_round_trip_extremes(bits: int, n: int, fill: str) -> None:
    value = 0 if fill == "zeros" else (1 << bits) - 1
    tokens = np.full(n, value, dtype=np.int64)
    data = pack_tokens(tokens, bits)
    np.testing.assert_array_equal(unpack_tokens(data, bits, n), tokens)
    if fill == "zeros":
        assert data == bytes(len(data))


@pytest.mark.parametrize("bits", [1, 7, 11, 12, 13, 16, 32])
def test_matches_reference(bits: int) -> None:
    rng = np.random.default_rng(bits)
    tokens = rng.integers(0, 1 << bits, size=37, dtype=np.int64)
    assert pack_tokens(tokens, bits) == _reference_pack(tokens.tolist(), bits)


def test_hand_computed_12_bit() -> None:
    assert pack_tokens(np.array([0xABC, 0x123]), 12) == b"\xab\xc1\x23"
    np.testing.assert_array_equal(unpack_tokens(b"\xab\xc1\x23", 12, 2), [0xABC, 0x123])


def test_hand_computed_odd_widths() -> None:
    # 1-bit: MSB first, zero padded.
    assert pack_tokens(np.array([1, 0, 1]), 1) == b"\xa0"
    # 7-bit: 1111111 0000001 -> 11111110 000001(00)
    assert pack_tokens(np.array([0x7F, 0x01]), 7) == b"\xfe\x04"
    # 13-bit: 1000000000001 -> 10000000 00001(000)
    assert pack_tokens(np.array([0x1001]), 13) == b"\x80\x08"
    # 16-bit is plain big-endian.
    assert pack_tokens(np.array([0x1234, 0xFFFF]), 16) == b"\x12\x34\xff\xff"
    assert pack_tokens(np.array([0xDEADBEEF]), 32) == b"\xde\xad\xbe\xef"


@pytest.mark.parametrize(
    ("count", "bits", "size"),
    [(4, 11, 6), (4, 12, 6), (4, 16, 8), (0, 13, 0), (1, 1, 1), (9, 1, 2), (3, 13, 5), (1, 32, 4)],
)
def test_packed_size(count: int, bits: int, size: int) -> None:
    assert packed_size(count, bits) == size


@pytest.mark.parametrize("dtype", [np.uint8, np.int16, np.uint16, np.int32, np.uint32, np.int64, np.uint64])
def test_accepts_integer_dtypes(dtype: type) -> None:
    tokens = np.array([0, 1, 100, 127], dtype=dtype)
    np.testing.assert_array_equal(unpack_tokens(pack_tokens(tokens, 7), 7, 4), tokens.astype(np.int64))


def test_accepts_list_and_bytes_like_inputs() -> None:
    data = pack_tokens([5, 6, 7], 3)  # type: ignore[arg-type]
    for buf in (data, bytearray(data), memoryview(data), np.frombuffer(data, dtype=np.uint8)):
        np.testing.assert_array_equal(unpack_tokens(buf, 3, 3), [5, 6, 7])


def test_unpack_ignores_extra_bytes() -> None:
    data = pack_tokens(np.array([0xABC, 0x123]), 12) + b"\xff\xff"
    np.testing.assert_array_equal(unpack_tokens(data, 12, 2), [0xABC, 0x123])
    np.testing.assert_array_equal(unpack_tokens(data, 12, 1), [0xABC])


@pytest.mark.parametrize("bits", [1, 7, 11, 12, 13, 16, 32])
def test_out_of_range_high(bits: int) -> None:
    tokens = np.array([0, 1 << bits, 1], dtype=np.int64)
    with pytest.raises(ValueError, match=r"token value .* at index 1 does not fit in"):
        pack_tokens(tokens, bits)


def test_out_of_range_negative() -> None:
    with pytest.raises(ValueError, match=r"token value -1 at index 2"):
        pack_tokens(np.array([0, 1, -1]), 12)


@pytest.mark.parametrize("bits", [0, -1, 33, 64, 1.5, True, "12", None])
def test_bad_bits(bits: object) -> None:
    with pytest.raises(ValueError, match="bits"):
        pack_tokens(np.array([0]), bits)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="bits"):
        unpack_tokens(b"\x00\x00\x00\x00", bits, 1)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="bits"):
        packed_size(1, bits)  # type: ignore[arg-type]


def test_bad_shape_and_dtype() -> None:
    with pytest.raises(ValueError, match="1-D"):
        pack_tokens(np.zeros((2, 2), dtype=np.int64), 8)
    with pytest.raises(ValueError, match="1-D"):
        pack_tokens(np.int64(3), 8)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="integer dtype"):
        pack_tokens(np.array([1.0, 2.0]), 8)


def test_unpack_too_short() -> None:
    data = pack_tokens(np.arange(10), 12)  # 15 bytes
    with pytest.raises(ValueError, match=r"10 tokens of 12 bits need 15 bytes, got 14"):
        unpack_tokens(data[:-1], 12, 10)
    with pytest.raises(ValueError, match="too short"):
        unpack_tokens(b"", 1, 1)


def test_bad_count() -> None:
    with pytest.raises(ValueError, match="count"):
        unpack_tokens(b"", 8, -1)
    with pytest.raises(ValueError, match="count"):
        packed_size(-1, 8)


def test_unpack_bad_array_dtype() -> None:
    with pytest.raises(ValueError, match="uint8"):
        unpack_tokens(np.zeros(4, dtype=np.int32), 8, 1)


def test_empty() -> None:
    assert pack_tokens(np.array([], dtype=np.int64), 13) == b""
    assert pack_tokens(np.array([]), 13) == b""
    out = unpack_tokens(b"", 13, 0)
    assert out.dtype == np.int64 and out.shape == (0,)
