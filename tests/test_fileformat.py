"""Tests for codec.fileformat (the .fcs file format)."""

from __future__ import annotations

import dataclasses
import hashlib
import io
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest

from codec.bitpack import packed_size
from codec.fileformat import (
    FCS_MAGIC,
    FORMAT_VERSION,
    FcsFormatError,
    FcsHeader,
    decode_fcs_bytes,
    encode_fcs_bytes,
    read_fcs,
    read_fcs_header,
    write_fcs,
)

MODEL_ID = "lucadellalib/focalcodec_50hz_4k_causal"
MODEL_HASH = hashlib.sha256(b"fake model weights").digest()
# Offsets of fixed fields (see the layout table in codec/fileformat.py).
OFF_VERSION, OFF_HEADER_LEN, OFF_BITS, OFF_FR_NUM, OFF_FR_DEN = 4, 6, 10, 11, 13
OFF_NUM_SAMPLES, OFF_NUM_TOKENS, OFF_ID_LEN, OFF_ID = 25, 33, 41, 43


def make_header(num_tokens: int = 100, bits: int = 12, **kw: object) -> FcsHeader:
    fields: dict[str, object] = dict(
        bits=bits,
        num_samples=num_tokens * 320,
        num_tokens=num_tokens,
        model_id=MODEL_ID,
        model_hash=MODEL_HASH,
    )
    fields.update(kw)
    return FcsHeader(**fields)  # type: ignore[arg-type]


def make_tokens(n: int = 100, bits: int = 12, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 1 << bits, size=n, dtype=np.int64)


def header_len(model_id: str = MODEL_ID) -> int:
    return 79 + len(model_id.encode("utf-8"))


def refresh_header_crc(data: bytes) -> bytes:
    """Recompute the header CRC after editing header fields (to reach checks behind it)."""
    (hlen,) = struct.unpack_from("<I", data, OFF_HEADER_LEN)
    crc = zlib.crc32(data[: hlen - 4])
    return data[: hlen - 4] + struct.pack("<I", crc) + data[hlen:]


def patch(data: bytes, offset: int, fmt: str, value: int) -> bytes:
    buf = bytearray(data)
    struct.pack_into(fmt, buf, offset, value)
    return bytes(buf)


@pytest.fixture
def fcs_bytes() -> bytes:
    return encode_fcs_bytes(make_header(), make_tokens())


# --------------------------------------------------------------------------- round trips


@pytest.mark.parametrize("bits", [1, 7, 11, 12, 13, 16, 32])
@pytest.mark.parametrize("n", [0, 1, 3, 4, 1000])
def test_bytes_round_trip(bits: int, n: int) -> None:
    header = make_header(n, bits)
    tokens = make_tokens(n, bits, seed=n + bits)
    data = encode_fcs_bytes(header, tokens)
    assert len(data) == header_len() + packed_size(n, bits) + 4
    header2, tokens2 = decode_fcs_bytes(data)
    assert header2 == header
    assert tokens2.dtype == np.int64
    np.testing.assert_array_equal(tokens2, tokens)


def test_file_round_trip(tmp_path: Path) -> None:
    header = make_header(
        1000,
        13,
        frame_rate_num=25,
        frame_rate_den=2,
        input_sample_rate=16000,
        output_sample_rate=24000,
        chunk_frames=4,
        num_samples=1_234_567,
        model_id="focalchat-default",
    )
    tokens = make_tokens(1000, 13)
    path = tmp_path / "clip.fcs"
    write_fcs(path, header, tokens)
    h, t = read_fcs(path)
    assert h == header
    np.testing.assert_array_equal(t, tokens)
    assert read_fcs_header(path) == header
    assert read_fcs_header(str(path)) == header
    assert path.read_bytes() == encode_fcs_bytes(header, tokens)


def test_file_object_round_trip() -> None:
    header, tokens = make_header(), make_tokens()
    f = io.BytesIO()
    write_fcs(f, header, tokens)
    f.seek(0)
    assert read_fcs_header(f) == header
    assert f.tell() == header_len()  # positioned at the payload
    f.seek(0)
    h, t = read_fcs(f)
    assert h == header
    np.testing.assert_array_equal(t, tokens)


def test_non_ascii_model_id() -> None:
    header = make_header(model_id="modèle-χ")
    data = encode_fcs_bytes(header, make_tokens())
    assert decode_fcs_bytes(data)[0].model_id == "modèle-χ"


def test_layout_is_as_documented(fcs_bytes: bytes) -> None:
    hlen = header_len()
    assert fcs_bytes[:4] == FCS_MAGIC
    assert struct.unpack_from("<H", fcs_bytes, OFF_VERSION)[0] == FORMAT_VERSION == 1
    assert struct.unpack_from("<I", fcs_bytes, OFF_HEADER_LEN)[0] == hlen
    fields = struct.unpack_from("<BHHIIHQQH", fcs_bytes, OFF_BITS)
    assert fields == (12, 50, 1, 16000, 24000, 4, 32000, 100, len(MODEL_ID))
    assert fcs_bytes[OFF_ID : OFF_ID + len(MODEL_ID)] == MODEL_ID.encode()
    assert fcs_bytes[OFF_ID + len(MODEL_ID) : hlen - 4] == MODEL_HASH
    assert struct.unpack_from("<I", fcs_bytes, hlen - 4)[0] == zlib.crc32(fcs_bytes[: hlen - 4])
    payload = fcs_bytes[hlen:-4]
    assert len(payload) == 150
    assert struct.unpack("<I", fcs_bytes[-4:])[0] == zlib.crc32(payload)


def test_header_properties() -> None:
    h = make_header(bits=12, num_samples=48000, input_sample_rate=16000)
    assert h.bitrate_bps == 600
    assert h.frame_rate == 50
    assert h.duration_s == 3.0
    assert make_header(bits=13, frame_rate_num=25, frame_rate_den=2).bitrate_bps == 162.5


def test_reserved_header_bytes_are_skipped(fcs_bytes: bytes) -> None:
    # A later revision of version 1 may append header fields before the CRC.
    hlen = header_len()
    extra = b"\x01\x02\x03\x04\x05"
    body = fcs_bytes[: hlen - 4] + extra
    body = patch(body, OFF_HEADER_LEN, "<I", hlen + len(extra))
    data = body + struct.pack("<I", zlib.crc32(body)) + fcs_bytes[hlen:]
    h, t = decode_fcs_bytes(data)
    assert h == make_header()
    np.testing.assert_array_equal(t, make_tokens())


# --------------------------------------------------------------------------- write-side validation


def test_write_count_mismatch() -> None:
    with pytest.raises(FcsFormatError, match="header declares 100 tokens, got 99"):
        encode_fcs_bytes(make_header(100), make_tokens(99))


def test_write_out_of_range_token() -> None:
    tokens = make_tokens()
    tokens[5] = 4096
    with pytest.raises(FcsFormatError, match="4096 at index 5 does not fit in 12 bits"):
        encode_fcs_bytes(make_header(), tokens)


def test_write_not_1d() -> None:
    with pytest.raises(FcsFormatError, match="1-D"):
        encode_fcs_bytes(make_header(4), np.zeros((2, 2), dtype=np.int64))


@pytest.mark.parametrize(
    ("kw", "match"),
    [
        ({"bits": 0}, r"bits per token must be in 1\.\.32, got 0"),
        ({"bits": 33}, r"bits per token must be in 1\.\.32, got 33"),
        ({"frame_rate_num": 0}, "frame rate must be non-zero"),
        ({"frame_rate_den": 0}, "frame rate must be non-zero"),
        ({"input_sample_rate": 0}, "input sample rate"),
        ({"chunk_frames": 0}, "chunk size"),
        ({"num_tokens": -1, "num_samples": 0}, "number of tokens"),
        ({"num_samples": -1}, "number of samples"),
        ({"frame_rate_num": 70000}, "frame rate numerator"),
        ({"model_hash": b"short"}, "model_hash must be 32 bytes"),
        ({"model_id": "x" * 70000}, "model_id is too long"),
    ],
)
def test_invalid_header_fields(kw: dict[str, object], match: str) -> None:
    with pytest.raises(FcsFormatError, match=match):
        make_header(**kw)  # type: ignore[arg-type]


def test_error_type_is_value_error() -> None:
    assert issubclass(FcsFormatError, ValueError)


# --------------------------------------------------------------------------- read-side errors


def test_bad_magic(fcs_bytes: bytes, tmp_path: Path) -> None:
    bad = b"RIFF" + fcs_bytes[4:]
    with pytest.raises(FcsFormatError, match="not an FCS file"):
        decode_fcs_bytes(bad)
    path = tmp_path / "x.wav"
    path.write_bytes(bad)
    with pytest.raises(FcsFormatError, match="not an FCS file"):
        read_fcs_header(path)
    with pytest.raises(FcsFormatError, match="not an FCS file"):
        read_fcs(path)
    with pytest.raises(FcsFormatError, match="empty"):
        decode_fcs_bytes(b"")
    with pytest.raises(FcsFormatError, match="bad magic"):
        decode_fcs_bytes(b"X")


def test_future_version(fcs_bytes: bytes) -> None:
    data = patch(fcs_bytes, OFF_VERSION, "<H", 7)
    with pytest.raises(FcsFormatError, match="unsupported FCS format version 7: this build reads version 1"):
        decode_fcs_bytes(data)
    with pytest.raises(FcsFormatError, match="version 7"):
        read_fcs_header(io.BytesIO(data))


@pytest.mark.parametrize("cut", [1, 3, 4, 5, 9, 10, 20, 42, 60, 116])
def test_truncated_header(fcs_bytes: bytes, cut: int) -> None:
    assert cut < header_len()
    with pytest.raises(FcsFormatError, match="truncated header"):
        decode_fcs_bytes(fcs_bytes[:cut])
    with pytest.raises(FcsFormatError, match="truncated header"):
        read_fcs_header(io.BytesIO(fcs_bytes[:cut]))
    # allow_partial does not cover header damage.
    with pytest.raises(FcsFormatError, match="truncated header"):
        decode_fcs_bytes(fcs_bytes[:cut], allow_partial=True)


@pytest.mark.parametrize(
    "offset",
    [
        OFF_BITS,
        OFF_FR_NUM,
        OFF_FR_DEN + 1,
        20,
        OFF_NUM_SAMPLES,
        OFF_NUM_TOKENS + 2,
        OFF_ID + 3,
        100,
        113,
        116,
    ],
)
def test_header_crc_mismatch(fcs_bytes: bytes, offset: int) -> None:
    data = bytearray(fcs_bytes)
    data[offset] ^= 0x40
    with pytest.raises(FcsFormatError, match="header CRC mismatch"):
        decode_fcs_bytes(bytes(data))
    with pytest.raises(FcsFormatError, match="header CRC mismatch"):
        read_fcs_header(io.BytesIO(bytes(data)))


def test_any_header_byte_flip_is_detected(fcs_bytes: bytes) -> None:
    for offset in range(header_len()):
        data = bytearray(fcs_bytes)
        data[offset] ^= 0xFF
        with pytest.raises(FcsFormatError):
            decode_fcs_bytes(bytes(data))


def test_implausible_header_length(fcs_bytes: bytes) -> None:
    for value in (0, 78, 0xFFFF_FFFF):
        with pytest.raises(FcsFormatError, match="implausible header length"):
            decode_fcs_bytes(patch(fcs_bytes, OFF_HEADER_LEN, "<I", value))


def test_model_id_length_overflows_header(fcs_bytes: bytes) -> None:
    data = refresh_header_crc(patch(fcs_bytes, OFF_ID_LEN, "<H", 1000))
    with pytest.raises(FcsFormatError, match="model id length 1000 does not fit"):
        decode_fcs_bytes(data)


def test_model_id_bad_utf8(fcs_bytes: bytes) -> None:
    data = bytearray(fcs_bytes)
    data[OFF_ID] = 0xFF
    with pytest.raises(FcsFormatError, match="UTF-8"):
        decode_fcs_bytes(refresh_header_crc(bytes(data)))


@pytest.mark.parametrize("bits", [0, 33, 255])
def test_bits_out_of_range_in_file(fcs_bytes: bytes, bits: int) -> None:
    data = refresh_header_crc(patch(fcs_bytes, OFF_BITS, "<B", bits))
    with pytest.raises(FcsFormatError, match=rf"bits per token must be in 1\.\.32, got {bits}"):
        decode_fcs_bytes(data)


@pytest.mark.parametrize("offset", [OFF_FR_NUM, OFF_FR_DEN])
def test_zero_frame_rate_in_file(fcs_bytes: bytes, offset: int) -> None:
    data = refresh_header_crc(patch(fcs_bytes, offset, "<H", 0))
    with pytest.raises(FcsFormatError, match="frame rate must be non-zero"):
        decode_fcs_bytes(data)


@pytest.mark.parametrize("keep", [0, 1, 75, 149, 150, 151, 153])
def test_truncated_payload(fcs_bytes: bytes, keep: int, tmp_path: Path) -> None:
    # 100 tokens x 12 bits = 150 payload bytes + 4 CRC bytes = 154 after the header.
    data = fcs_bytes[: header_len() + keep]
    msg = rf"truncated payload: expected 100 tokens of 12 bits .* but only {keep} bytes are present"
    with pytest.raises(FcsFormatError, match=msg):
        decode_fcs_bytes(data)
    path = tmp_path / "cut.fcs"
    path.write_bytes(data)
    with pytest.raises(FcsFormatError, match=msg):
        read_fcs(path)
    # The header alone is still readable (for `focalchat info`).
    assert read_fcs_header(path) == make_header()


@pytest.mark.parametrize("offset", [0, 1, 74, 149])
def test_payload_crc_mismatch(fcs_bytes: bytes, offset: int) -> None:
    data = bytearray(fcs_bytes)
    data[header_len() + offset] ^= 0x01
    with pytest.raises(FcsFormatError, match="payload CRC mismatch.*corrupt"):
        decode_fcs_bytes(bytes(data))
    # allow_partial is about truncation, not corruption.
    with pytest.raises(FcsFormatError, match="payload CRC mismatch"):
        decode_fcs_bytes(bytes(data), allow_partial=True)


def test_payload_crc_field_corrupt(fcs_bytes: bytes) -> None:
    data = bytearray(fcs_bytes)
    data[-1] ^= 0x80
    with pytest.raises(FcsFormatError, match="payload CRC mismatch"):
        decode_fcs_bytes(bytes(data))


@pytest.mark.parametrize("extra", [b"\x00", b"garbage", bytes(1000)])
def test_trailing_garbage(fcs_bytes: bytes, extra: bytes, tmp_path: Path) -> None:
    data = fcs_bytes + extra
    with pytest.raises(FcsFormatError, match=rf"trailing garbage: {len(extra)} unexpected bytes"):
        decode_fcs_bytes(data)
    with pytest.raises(FcsFormatError, match="trailing garbage"):
        decode_fcs_bytes(data, allow_partial=True)
    path = tmp_path / "long.fcs"
    path.write_bytes(data)
    with pytest.raises(FcsFormatError, match="trailing garbage"):
        read_fcs(path)


# --------------------------------------------------------------------------- allow_partial


@pytest.mark.parametrize(
    ("keep", "expected_tokens"),
    [(0, 0), (1, 0), (2, 1), (3, 2), (74, 49), (75, 50), (149, 99), (150, 100), (153, 100)],
)
def test_allow_partial(fcs_bytes: bytes, keep: int, expected_tokens: int, tmp_path: Path) -> None:
    tokens = make_tokens()
    data = fcs_bytes[: header_len() + keep]
    for header, out in (
        decode_fcs_bytes(data, allow_partial=True),
        _read_path(tmp_path, data),
    ):
        assert header.num_tokens == expected_tokens
        assert out.dtype == np.int64
        np.testing.assert_array_equal(out, tokens[:expected_tokens])
        # 320 input samples per 50 Hz frame at 16 kHz.
        assert header.num_samples == expected_tokens * 320
        assert header == dataclasses.replace(
            make_header(), num_tokens=expected_tokens, num_samples=expected_tokens * 320
        )


def _read_path(tmp_path: Path, data: bytes) -> tuple[FcsHeader, np.ndarray]:
    path = tmp_path / "partial.fcs"
    path.write_bytes(data)
    return read_fcs(path, allow_partial=True)


def test_allow_partial_complete_file_is_unchanged(fcs_bytes: bytes) -> None:
    h, t = decode_fcs_bytes(fcs_bytes, allow_partial=True)
    assert h == make_header()
    np.testing.assert_array_equal(t, make_tokens())


def test_allow_partial_keeps_num_samples_when_shorter() -> None:
    # num_samples smaller than what the surviving tokens cover stays as it was.
    header = make_header(100, num_samples=1000)
    data = encode_fcs_bytes(header, make_tokens())
    h, t = decode_fcs_bytes(data[: header_len() + 30], allow_partial=True)
    assert (h.num_tokens, h.num_samples, len(t)) == (20, 1000, 20)


def test_huge_declared_payload_is_truncation_not_memory_error(fcs_bytes: bytes, tmp_path: Path) -> None:
    data = refresh_header_crc(patch(fcs_bytes, OFF_NUM_TOKENS, "<Q", 2**64 - 1))
    path = tmp_path / "huge.fcs"
    path.write_bytes(data)
    with pytest.raises(FcsFormatError, match="truncated payload"):
        read_fcs(path)
    h, t = read_fcs(path, allow_partial=True)
    assert h.num_tokens == len(t) == (150 + 4) * 8 // 12
