"""The ``.fcs`` compressed-audio file format (FocalChat codec stream), version 1.

An ``.fcs`` file holds one stream of codec tokens (one token per codec frame)
plus what is needed to decode it: the token width, the frame rate, the sample
rates, the streaming chunk size, the original length and the identity of the
model that produced the tokens. All integers are little-endian.

Byte layout (``n`` = byte length of the UTF-8 model id, ``H`` = header length)::

    offset   size  type    field
    ------   ----  ------  ---------------------------------------------------
         0      4  bytes   magic  b"FCS\\x00"
         4      2  u16     format version (= 1)
         6      4  u32     header length H in bytes, magic to header CRC inclusive
        10      1  u8      bits per token (1..32)
        11      2  u16     frame rate numerator   (frames per second = num/den)
        13      2  u16     frame rate denominator
        15      4  u32     input sample rate in Hz  (e.g. 16000)
        19      4  u32     output sample rate in Hz (e.g. 24000)
        23      2  u16     chunk size in frames (streaming granularity, e.g. 4)
        25      8  u64     number of original input samples (at the input rate)
        33      8  u64     number of tokens
        41      2  u16     model id length n in bytes
        43      n  utf-8   model id (e.g. "lucadellalib/focalcodec_50hz_4k_causal")
      43+n     32  bytes   model hash (sha256 of the model weights)
      75+n  H-79-n bytes   reserved for fields appended later in version 1 (ignored)
       H-4      4  u32     header CRC32 of bytes [0, H-4)
         H      P  bytes   payload: tokens packed by ``codec.bitpack.pack_tokens``,
                           P = ceil(num_tokens * bits / 8)
       H+P      4  u32     payload CRC32 of bytes [H, H+P)
     H+P+4                 end of file (anything after it is an error)

``H`` is 79 + n for files written by this module. Readers skip bytes between
the model hash and the header CRC, so later revisions can append header fields
without bumping the version; an incompatible layout change bumps the version,
and this reader refuses versions other than :data:`FORMAT_VERSION`.

Every malformed input raises :class:`FcsFormatError` (a ``ValueError``).
``read_fcs(..., allow_partial=True)`` instead decodes a file whose payload was
cut short up to the damage: it returns the whole tokens that are present, with
``num_tokens`` reduced to their count and ``num_samples`` capped at the audio
they cover (one token per frame).
"""

from __future__ import annotations

import dataclasses
import io
import os
import struct
import zlib
from dataclasses import dataclass
from typing import BinaryIO

import numpy as np

from codec.bitpack import MAX_BITS, pack_tokens, packed_size, unpack_tokens

__all__ = [
    "FCS_EXTENSION",
    "FCS_MAGIC",
    "FORMAT_VERSION",
    "FcsFormatError",
    "FcsHeader",
    "decode_fcs_bytes",
    "encode_fcs_bytes",
    "read_fcs",
    "read_fcs_header",
    "write_fcs",
]

FCS_MAGIC = b"FCS\x00"
FORMAT_VERSION = 1
FCS_EXTENSION = ".fcs"

# magic, version, header length
_PREFIX = struct.Struct("<4sHI")
# bits, frame rate num/den, input sr, output sr, chunk frames, num samples, num tokens, model id length
_FIELDS = struct.Struct("<BHHIIHQQH")
_U32 = struct.Struct("<I")
_HASH_SIZE = 32
_CRC_SIZE = 4
#: Header length with an empty model id (and no reserved bytes).
_MIN_HEADER_LEN = _PREFIX.size + _FIELDS.size + _HASH_SIZE + _CRC_SIZE
#: Upper bound on a plausible header length; guards against huge reads on corrupt input.
_MAX_HEADER_LEN = 1 << 20

#: Largest single read; bounds memory use before the real file size is known.
_READ_CHUNK = 1 << 20

_U16_MAX = 0xFFFF
_U32_MAX = 0xFFFF_FFFF
_U64_MAX = 0xFFFF_FFFF_FFFF_FFFF

PathOrFile = str | os.PathLike[str] | BinaryIO


class FcsFormatError(ValueError):
    """An ``.fcs`` file (or header/tokens to be written) is malformed."""


@dataclass(frozen=True, kw_only=True)
class FcsHeader:
    """Metadata of an ``.fcs`` stream. Validated on construction (raises :class:`FcsFormatError`)."""

    #: Token width in bits (1..32).
    bits: int
    #: Number of original input samples, at ``input_sample_rate``.
    num_samples: int
    #: Number of tokens in the payload (one per codec frame).
    num_tokens: int
    #: Identifier of the codec model (UTF-8, at most 65535 bytes).
    model_id: str
    #: sha256 digest (32 bytes) of the model weights.
    model_hash: bytes
    #: Frame rate numerator; frames per second = ``frame_rate_num / frame_rate_den``.
    frame_rate_num: int = 50
    #: Frame rate denominator.
    frame_rate_den: int = 1
    #: Sample rate of the encoder input, in Hz.
    input_sample_rate: int = 16000
    #: Sample rate of the decoder output, in Hz.
    output_sample_rate: int = 24000
    #: Streaming chunk size, in frames.
    chunk_frames: int = 4

    def __post_init__(self) -> None:
        if isinstance(self.model_hash, (bytearray, memoryview)):
            object.__setattr__(self, "model_hash", bytes(self.model_hash))
        self._validate()

    def _validate(self) -> None:
        def check_int(name: str, lo: int, hi: int, what: str | None = None) -> None:
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, (int, np.integer)):
                raise FcsFormatError(f"{what or name} must be an integer, got {v!r}")
            if not lo <= v <= hi:
                raise FcsFormatError(f"{what or name} must be in {lo}..{hi}, got {v}")

        check_int("bits", 1, MAX_BITS, "bits per token")
        if self.frame_rate_num == 0 or self.frame_rate_den == 0:
            raise FcsFormatError(
                f"frame rate must be non-zero, got {self.frame_rate_num}/{self.frame_rate_den}"
            )
        check_int("frame_rate_num", 1, _U16_MAX, "frame rate numerator")
        check_int("frame_rate_den", 1, _U16_MAX, "frame rate denominator")
        check_int("input_sample_rate", 1, _U32_MAX, "input sample rate")
        check_int("output_sample_rate", 1, _U32_MAX, "output sample rate")
        check_int("chunk_frames", 1, _U16_MAX, "chunk size in frames")
        check_int("num_samples", 0, _U64_MAX, "number of samples")
        check_int("num_tokens", 0, _U64_MAX, "number of tokens")
        if not isinstance(self.model_id, str):
            raise FcsFormatError(f"model_id must be a str, got {type(self.model_id).__name__}")
        id_len = len(self.model_id.encode("utf-8"))
        if id_len > _U16_MAX:
            raise FcsFormatError(f"model_id is too long ({id_len} bytes in UTF-8, max {_U16_MAX})")
        if not isinstance(self.model_hash, bytes) or len(self.model_hash) != _HASH_SIZE:
            raise FcsFormatError(
                f"model_hash must be {_HASH_SIZE} bytes (a sha256 digest), got {self.model_hash!r:.80}"
            )

    @property
    def frame_rate(self) -> float:
        """Codec frames (= tokens) per second."""
        return self.frame_rate_num / self.frame_rate_den

    @property
    def bitrate_bps(self) -> float:
        """Payload bit rate in bits per second: ``bits * frame_rate``."""
        return self.bits * self.frame_rate_num / self.frame_rate_den

    @property
    def duration_s(self) -> float:
        """Duration of the original audio in seconds: ``num_samples / input_sample_rate``."""
        return self.num_samples / self.input_sample_rate

    @property
    def payload_size(self) -> int:
        """Size of the packed token payload in bytes (without its CRC)."""
        return packed_size(self.num_tokens, self.bits)


# --------------------------------------------------------------------------- encoding


def _encode_header(header: FcsHeader) -> bytes:
    model_id = header.model_id.encode("utf-8")
    header_len = _MIN_HEADER_LEN + len(model_id)
    body = b"".join(
        (
            _PREFIX.pack(FCS_MAGIC, FORMAT_VERSION, header_len),
            _FIELDS.pack(
                header.bits,
                header.frame_rate_num,
                header.frame_rate_den,
                header.input_sample_rate,
                header.output_sample_rate,
                header.chunk_frames,
                header.num_samples,
                header.num_tokens,
                len(model_id),
            ),
            model_id,
            header.model_hash,
        )
    )
    return body + _U32.pack(zlib.crc32(body))


def encode_fcs_bytes(header: FcsHeader, tokens: np.ndarray) -> bytes:
    """Serialise ``header`` and ``tokens`` to the bytes of an ``.fcs`` file.

    Raises:
        FcsFormatError: if ``tokens`` is not 1-D, its length differs from
            ``header.num_tokens``, or a token does not fit in ``header.bits`` bits.
    """
    arr = np.asarray(tokens)
    if arr.ndim != 1:
        raise FcsFormatError(f"tokens must be a 1-D array, got shape {arr.shape}")
    if arr.shape[0] != header.num_tokens:
        raise FcsFormatError(
            f"token count mismatch: header declares {header.num_tokens} tokens, got {arr.shape[0]}"
        )
    try:
        payload = pack_tokens(arr, header.bits)
    except ValueError as exc:
        raise FcsFormatError(f"cannot pack tokens: {exc}") from exc
    return _encode_header(header) + payload + _U32.pack(zlib.crc32(payload))


def write_fcs(path_or_file: PathOrFile, header: FcsHeader, tokens: np.ndarray) -> None:
    """Write an ``.fcs`` file to a path or a binary file object (see :func:`encode_fcs_bytes`)."""
    data = encode_fcs_bytes(header, tokens)
    if hasattr(path_or_file, "write"):
        path_or_file.write(data)  # type: ignore[union-attr]
    else:
        with open(path_or_file, "wb") as f:  # type: ignore[arg-type]
            f.write(data)


# --------------------------------------------------------------------------- decoding


def _read_exact(f: BinaryIO, n: int) -> bytes:
    """Read up to ``n`` bytes, stopping early only at end of file."""
    parts: list[bytes] = []
    remaining = n
    while remaining > 0:
        # Bounded reads: a hostile header may declare an enormous payload.
        chunk = f.read(min(remaining, _READ_CHUNK))
        if not chunk:
            break
        parts.append(chunk)
        remaining -= len(chunk)
    return b"".join(parts)


def _read_header_from(f: BinaryIO) -> tuple[FcsHeader, int]:
    """Read and check the header from ``f``; return it and the header length in bytes.

    Leaves ``f`` positioned at the start of the payload.
    """
    prefix = _read_exact(f, _PREFIX.size)
    if not prefix:
        raise FcsFormatError("not an FCS file: the file is empty")
    magic = prefix[: len(FCS_MAGIC)]
    if magic != FCS_MAGIC[: len(magic)]:
        raise FcsFormatError(f"not an FCS file: bad magic {magic!r} (expected {FCS_MAGIC!r})")
    if len(prefix) < _PREFIX.size:
        raise FcsFormatError(
            f"truncated header: file ends after {len(prefix)} bytes, inside the fixed header prefix"
        )
    _, version, header_len = _PREFIX.unpack(prefix)
    if version != FORMAT_VERSION:
        raise FcsFormatError(
            f"unsupported FCS format version {version}: this build reads version {FORMAT_VERSION}"
        )
    if not _MIN_HEADER_LEN <= header_len <= _MAX_HEADER_LEN:
        raise FcsFormatError(
            f"corrupt header: implausible header length {header_len} "
            f"(expected {_MIN_HEADER_LEN}..{_MAX_HEADER_LEN} bytes)"
        )
    rest = _read_exact(f, header_len - _PREFIX.size)
    raw = prefix + rest
    if len(raw) < header_len:
        raise FcsFormatError(
            f"truncated header: header is {header_len} bytes but the file ends after {len(raw)}"
        )
    (stored_crc,) = _U32.unpack_from(raw, header_len - _CRC_SIZE)
    computed_crc = zlib.crc32(raw[: header_len - _CRC_SIZE])
    if stored_crc != computed_crc:
        raise FcsFormatError(
            f"header CRC mismatch (stored 0x{stored_crc:08x}, computed 0x{computed_crc:08x}): "
            "the header is corrupt"
        )
    (bits, fr_num, fr_den, in_sr, out_sr, chunk, num_samples, num_tokens, id_len) = _FIELDS.unpack_from(
        raw, _PREFIX.size
    )
    id_start = _PREFIX.size + _FIELDS.size
    hash_start = id_start + id_len
    if hash_start + _HASH_SIZE > header_len - _CRC_SIZE:
        raise FcsFormatError(
            f"corrupt header: model id length {id_len} does not fit in a {header_len}-byte header"
        )
    try:
        model_id = raw[id_start:hash_start].decode("utf-8")
    except UnicodeDecodeError as exc:
        raise FcsFormatError(f"corrupt header: model id is not valid UTF-8 ({exc})") from exc
    header = FcsHeader(
        bits=bits,
        frame_rate_num=fr_num,
        frame_rate_den=fr_den,
        input_sample_rate=in_sr,
        output_sample_rate=out_sr,
        chunk_frames=chunk,
        num_samples=num_samples,
        num_tokens=num_tokens,
        model_id=model_id,
        model_hash=raw[hash_start : hash_start + _HASH_SIZE],
    )
    return header, header_len


def _decode_payload(header: FcsHeader, data: bytes, allow_partial: bool) -> tuple[FcsHeader, np.ndarray]:
    """Decode the payload + CRC bytes that follow the header."""
    size = header.payload_size
    expected = size + _CRC_SIZE
    if len(data) < expected:
        if not allow_partial:
            raise FcsFormatError(
                f"truncated payload: expected {header.num_tokens} tokens of {header.bits} bits "
                f"({size} bytes + {_CRC_SIZE}-byte CRC = {expected} bytes), "
                f"but only {len(data)} bytes are present after the header"
            )
        # The CRC sits at the end and is gone (or incomplete): keep the whole
        # tokens present, unverified, and shorten the header to match.
        count = min(header.num_tokens, len(data) * 8 // header.bits)
        covered = count * header.input_sample_rate * header.frame_rate_den // header.frame_rate_num
        partial = dataclasses.replace(header, num_tokens=count, num_samples=min(header.num_samples, covered))
        return partial, unpack_tokens(data, header.bits, count)
    if len(data) > expected:
        raise FcsFormatError(
            f"trailing garbage: {len(data) - expected} unexpected bytes after the payload CRC "
            f"(payload of {header.num_tokens} tokens is {size} bytes + {_CRC_SIZE}-byte CRC)"
        )
    payload = data[:size]
    (stored_crc,) = _U32.unpack_from(data, size)
    computed_crc = zlib.crc32(payload)
    if stored_crc != computed_crc:
        raise FcsFormatError(
            f"payload CRC mismatch (stored 0x{stored_crc:08x}, computed 0x{computed_crc:08x}): "
            "the token data is corrupt"
        )
    return header, unpack_tokens(payload, header.bits, header.num_tokens)


def _read_from(f: BinaryIO, allow_partial: bool) -> tuple[FcsHeader, np.ndarray]:
    header, _ = _read_header_from(f)
    # Read at most one byte past the expected end: enough to detect trailing garbage.
    rest = _read_exact(f, header.payload_size + _CRC_SIZE + 1)
    return _decode_payload(header, rest, allow_partial)


def decode_fcs_bytes(
    data: bytes | bytearray | memoryview, *, allow_partial: bool = False
) -> tuple[FcsHeader, np.ndarray]:
    """Parse the bytes of an ``.fcs`` file into its header and int64 tokens.

    With ``allow_partial=True`` a file whose payload is cut short yields the
    whole tokens present (unverified, as the payload CRC is lost), with
    ``num_tokens`` reduced to their count and ``num_samples`` capped at the
    duration they cover. Header damage, a payload CRC mismatch and trailing
    bytes still raise.

    Raises:
        FcsFormatError: on any malformed input.
    """
    buf = bytes(data)
    header, header_len = _read_header_from(io.BytesIO(buf))
    return _decode_payload(header, buf[header_len:], allow_partial)


def read_fcs(path_or_file: PathOrFile, *, allow_partial: bool = False) -> tuple[FcsHeader, np.ndarray]:
    """Read an ``.fcs`` file from a path or binary file object (see :func:`decode_fcs_bytes`)."""
    if hasattr(path_or_file, "read"):
        return _read_from(path_or_file, allow_partial)  # type: ignore[arg-type]
    with open(path_or_file, "rb") as f:  # type: ignore[arg-type]
        return _read_from(f, allow_partial)


def read_fcs_header(path_or_file: PathOrFile) -> FcsHeader:
    """Read and verify only the header of an ``.fcs`` file (the payload is not read).

    A file object is left positioned at the start of the payload.

    Raises:
        FcsFormatError: on a bad magic, unsupported version, truncated or corrupt header.
    """
    if hasattr(path_or_file, "read"):
        return _read_header_from(path_or_file)[0]  # type: ignore[arg-type]
    with open(path_or_file, "rb") as f:  # type: ignore[arg-type]
        return _read_header_from(f)[0]
