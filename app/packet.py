"""The FocalChat data-channel wire format, protocol version 2.

Each WebRTC data-channel message is exactly one packet. All integers are
big-endian (network order). Token payloads are packed MSB-first by
:func:`codec.bitpack.pack_tokens`. Every packet starts with the magic
``b"FC"`` and a frame version byte; there are two frame layouts:

* frame version 1, the **framed** packets: every type (AUDIO, HELLO, ...)
  with the 6-byte common header below;
* frame version 2, the **compact AUDIO** frame (:class:`CompactAudioPacket`,
  an 8-byte header, see below), for low-bandwidth calls.

Protocol version 2 (what HELLO announces, :data:`PROTOCOL_VERSION`) means:
reads and writes both frame layouts. Protocol 1 builds only knew frame 1; the
HELLO check refuses them with a clear message on both sides.

Common header (every frame version 1 packet)::

    offset  size  type   field
    ------  ----  -----  ----------------------------------------------------
         0     2  bytes  magic b"FC"
         2     1  u8     frame version (= 1, :data:`FRAME_VERSION`)
         3     1  u8     packet type (:class:`PacketType`)
         4     2  u16    total packet length L in bytes, header included
         6   L-6  bytes  body (layout depends on the type, see below)

The first 3 bytes (magic and version) are frozen for all future versions, so a
reader can always tell "not ours" (``bad_magic``) from "ours, but a version I
cannot read" (``bad_version``). Any change of a body layout bumps the version:
bodies must have exactly the size their fields imply (nothing is ignored).

AUDIO (type 1), the hot path. ``cb = ceil(tokens_per_chunk * bits / 8)`` is
the size of one packed chunk (11 or 12 bits x 4 tokens: 6 bytes; 16 bits: 8)::

    offset  size  type   field
    ------  ----  -----  ----------------------------------------------------
         6     4  u32    sequence number (one per packet, +1 per packet sent)
        10     4  u32    first chunk index F: the sender's chunk counter of the
                         first primary chunk (one chunk = tokens_per_chunk tokens)
        14     4  u32    sender timestamp in ms (any epoch; wraps; for jitter)
        18     1  u8     bits per token (1..32)
        19     1  u8     tokens per chunk (1..255, normally 4)
        20     1  u8     bits 0-2: n, number of primary chunks (1..4)
                         bits 3-4: r, number of redundant chunks (0..3)
                         bits 5-7: flags (:class:`AudioFlags`; unknown bits kept)
        21  r*cb  bytes  redundant chunks F-r .. F-1 (oldest first), cb bytes each
   21+r*cb  n*cb  bytes  primary chunks F .. F+n-1, cb bytes each

Every chunk is packed on its own (zero padding bits at its end must be zero),
so a chunk can be copied between packets (redundancy) without re-packing.
Overhead per AUDIO packet: :data:`AUDIO_HEADER_SIZE` = 21 bytes (6 common +
15 audio), whatever n and r; redundancy costs r*cb bytes more. Packet sizes:
:func:`audio_packet_size`.

Compact AUDIO (frame version 2). The data channel keeps message boundaries,
so no length field; bits per token and tokens per chunk are fixed by the HELLO
handshake, so not repeated (a reader needs the negotiated
:class:`AudioGeometry`); the sequence number is the first chunk index; the
timestamp is the media clock ``first_chunk * chunk duration`` (RFC 3550
style, what the jitter estimate needs), so not sent either::

    offset  size  type   field
    ------  ----  -----  ----------------------------------------------------
         0     2  bytes  magic b"FC"
         2     1  u8     frame version (= 2)
         3     1  u8     bits 0-2: n - 1, n = number of primary chunks (1..8)
                         bits 3-4: r, number of redundant chunks (0..3)
                         bit 5:    E, an RTT echo follows the first chunk index
                         bits 6-7: flags SILENCE (bit 6), TALKSPURT_START (bit 7)
         4     4  u32    first chunk index F (as in AUDIO)
     [   8     2  u16    echo: low 16 bits of the first chunk index of the
                         latest packet received from the peer      (E only)
        10     1  u8     hold: ms between receiving that packet and sending
                         this one, in units of 4 ms, rounded down  (E only) ]
     8/11  r*cb  bytes  redundant chunks F-r .. F-1, then n*cb bytes primary
                         chunks F .. F+n-1 (as in AUDIO)

The message must be exactly ``8 (+3 with E) + (r + n) * cb`` bytes: shorter is
``truncated``, longer ``bad_length``. Overhead: :data:`COMPACT_AUDIO_HEADER_SIZE`
= 8 bytes (11 with an echo) instead of 21. The sender of an echo keeps the send
times of its last packets by first chunk index, so RTT = now - sent - hold
(an overestimate by less than 4 ms): no PING/PONG needed while audio flows.

HELLO (type 2), sent by both sides when the channel opens; ``a``, ``m``, ``k``
are the UTF-8 byte lengths of the strings::

    offset  size  type   field
    ------  ----  -----  ----------------------------------------------------
         6     1  u8     protocol version the sender speaks (1..255)
         7     1  u8     bits per token (1..32)
         8     2  u16    token rate numerator (tokens/s = num/den, e.g. 50/1)
        10     2  u16    token rate denominator
        12     1  u8     tokens per chunk (1..255)
        13     1  u8     chunks per packet the sender uses (1..8; 5..8 only
                         with compact AUDIO frames)
        14     1  u8     redundancy (redundant chunks per packet) it uses (0..3)
        15     4  u32    encoder input sample rate in Hz
        19     4  u32    decoder output sample rate in Hz
        23     8  bytes  model hash: first 8 bytes of sha256(model weights)
        31     1  u8     a; then a bytes: app version (<= 64 bytes, no control chars)
      32+a     1  u8     m; then m bytes: model id (<= 255 bytes, no control chars)
    33+a+m     1  u8     k; then k bytes: nickname (<= 64 bytes, no control chars)

Other types (a string that ends the body takes all bytes up to L)::

    HELLO_ACK (3)  6: u8 accepted (0/1) | 7: UTF-8 reason (<= 255 bytes;
                   required when refused)
    PING      (4)  6: u32 ping id | 10: u64 sender time in microseconds
    PONG      (5)  6: u32 ping id | 10: u64 the ping's time echoed (RTT = now -
                   echo) | 18: u64 responder's time in microseconds
    HEARTBEAT (6)  6: u64 sender time in microseconds
    BYE       (7)  6: UTF-8 reason (<= 255 bytes, may be empty)
    TEXT      (8)  6: u32 message id | 10: UTF-8 text (<= 1000 bytes; tab and
                   newlines allowed, other control characters not)

:func:`parse_packet` raises :class:`PacketError` (a ``ValueError``), and no
other exception, for every malformed message; ``.kind`` says what is wrong:

    ``truncated``    the message is shorter than its header or than its length field
                     (compact AUDIO: than its chunk counts imply)
    ``bad_magic``    not a FocalChat packet (wrong magic; also a text message)
    ``bad_version``  a FocalChat packet of a protocol version this build cannot read
    ``bad_type``     unknown packet type
    ``bad_length``   the length field is impossible (< 6, > MAX_PACKET_SIZE) or
                     smaller than the message, or the body size does not match its
                     fields (inner length prefixes, chunk counts)
    ``bad_field``    a field value is out of range, a string is not valid UTF-8 or
                     has forbidden characters, padding bits are not zero; also a
                     compact AUDIO frame parsed without an :class:`AudioGeometry`
    ``oversized``    the message is longer than :data:`MAX_PACKET_SIZE`

Constructing a packet object with invalid values raises ``PacketError("bad_field")``
too. Encoding is canonical: a message that parses re-encodes to the same bytes.
"""

from __future__ import annotations

import enum
import struct
from dataclasses import dataclass, field
from typing import ClassVar

import numpy as np

from codec.bitpack import MAX_BITS, pack_tokens, packed_size, unpack_tokens

__all__ = [
    "AUDIO_HEADER_SIZE",
    "COMPACT_AUDIO_HEADER_SIZE",
    "COMPACT_ECHO_SIZE",
    "COMPACT_FRAME_VERSION",
    "ECHO_HOLD_UNIT_MS",
    "ERROR_KINDS",
    "FRAME_VERSION",
    "HEADER_SIZE",
    "MAGIC",
    "MAX_CHUNKS",
    "MAX_COMPACT_CHUNKS",
    "MAX_PACKET_SIZE",
    "MAX_REDUNDANT",
    "MAX_TEXT_BYTES",
    "MODEL_HASH_SIZE",
    "PROTOCOL_VERSION",
    "AudioFlags",
    "AudioGeometry",
    "AudioPacket",
    "Bye",
    "CompactAudioPacket",
    "Heartbeat",
    "Hello",
    "HelloAck",
    "Packet",
    "PacketError",
    "PacketType",
    "Ping",
    "Pong",
    "Text",
    "audio_packet_size",
    "check_compatible",
    "compact_audio_packet_size",
    "is_audio",
    "model_hash_prefix",
    "parse_packet",
]

MAGIC = b"FC"
#: The protocol this build speaks (announced in HELLO): frame versions 1 and 2.
PROTOCOL_VERSION = 2
#: Frame version byte of the framed packets (all types, common 6-byte header).
FRAME_VERSION = 1
#: Frame version byte of the compact AUDIO frame.
COMPACT_FRAME_VERSION = 2
#: Size of the common header (magic, version, type, length).
HEADER_SIZE = 6
#: Largest message accepted or produced. The largest valid packet (AUDIO with
#: 4 + 3 chunks of 255 32-bit tokens) is 7161 bytes.
MAX_PACKET_SIZE = 8192
#: Primary chunks in a framed AUDIO packet.
MAX_CHUNKS = 4
#: Primary chunks in a compact AUDIO frame.
MAX_COMPACT_CHUNKS = 8
MAX_REDUNDANT = 3
#: Compact AUDIO header without / extra with the RTT echo.
COMPACT_AUDIO_HEADER_SIZE = 8
COMPACT_ECHO_SIZE = 3
#: Unit of the compact echo's hold time (u8: 0..1020 ms).
ECHO_HOLD_UNIT_MS = 4
MAX_ECHO_HOLD_MS = 255 * ECHO_HOLD_UNIT_MS
MODEL_HASH_SIZE = 8
MAX_APP_VERSION_BYTES = 64
MAX_MODEL_ID_BYTES = 255
MAX_NICKNAME_BYTES = 64
MAX_REASON_BYTES = 255
MAX_TEXT_BYTES = 1000

ERROR_KINDS = ("truncated", "bad_magic", "bad_version", "bad_type", "bad_length", "bad_field", "oversized")

_HEADER = struct.Struct(">2sBBH")
# seq, first chunk, timestamp ms, bits, tokens per chunk, n | r << 3 | flags << 5
_AUDIO = struct.Struct(">IIIBBB")
#: Bytes of an AUDIO packet before the token payload (the per-packet overhead).
AUDIO_HEADER_SIZE = HEADER_SIZE + _AUDIO.size
# protocol version, bits, rate num, rate den, tokens/chunk, chunks/packet, redundancy, in sr, out sr, hash
_HELLO = struct.Struct(">BBHHBBBII8s")
_U8 = struct.Struct(">B")
_U32 = struct.Struct(">I")
_U64 = struct.Struct(">Q")
_PING = struct.Struct(">IQ")
_PONG = struct.Struct(">IQQ")

_U16_MAX = 0xFFFF
_U32_MAX = 0xFFFF_FFFF
_U64_MAX = 0xFFFF_FFFF_FFFF_FFFF
_FLAG_BITS = 3


class PacketError(ValueError):
    """A malformed packet (or invalid values for one). ``kind`` is one of :data:`ERROR_KINDS`."""

    def __init__(self, kind: str, message: str) -> None:
        if kind not in ERROR_KINDS:
            raise AssertionError(f"unknown PacketError kind {kind!r}")
        super().__init__(message)
        self.kind = kind


class PacketType(enum.IntEnum):
    AUDIO = 1
    HELLO = 2
    HELLO_ACK = 3
    PING = 4
    PONG = 5
    HEARTBEAT = 6
    BYE = 7
    TEXT = 8


class AudioFlags(enum.IntFlag):
    """Flag bits of an AUDIO packet (3 bits on the wire; unknown bits are kept, not rejected)."""

    #: The sender's voice activity detector says the primary chunks are silence:
    #: the receiver may drop or stretch them to adapt its delay.
    SILENCE = 1
    #: The first primary chunk starts a talkspurt after a pause in which the
    #: sender sent nothing (DTX): the chunks before it were not lost, just not sent.
    TALKSPURT_START = 2


# --------------------------------------------------------------------------- helpers


def _check_int(value: object, name: str, lo: int, hi: int) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise PacketError("bad_field", f"{name} must be an integer, got {value!r:.60}")
    if not lo <= value <= hi:
        raise PacketError("bad_field", f"{name} must be in {lo}..{hi}, got {value}")
    return int(value)


def _check_str(value: object, name: str, max_bytes: int, allowed_controls: str = "") -> bytes:
    """Validate a text field; return its UTF-8 encoding."""
    if not isinstance(value, str):
        raise PacketError("bad_field", f"{name} must be a str, got {type(value).__name__}")
    try:
        raw = value.encode("utf-8")
    except UnicodeEncodeError as exc:  # lone surrogates
        raise PacketError("bad_field", f"{name} cannot be encoded as UTF-8 ({exc})") from exc
    if len(raw) > max_bytes:
        raise PacketError("bad_field", f"{name} is too long: {len(raw)} bytes in UTF-8, at most {max_bytes}")
    for ch in value:
        if (ch < " " or ch == "\x7f") and ch not in allowed_controls:
            raise PacketError("bad_field", f"{name} contains the control character {ch!r}")
    return raw


def _decode_str(raw: bytes, name: str, max_bytes: int, allowed_controls: str = "") -> str:
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise PacketError(
            "bad_field", f"{name} is not valid UTF-8 ({exc.reason} at byte {exc.start})"
        ) from exc
    _check_str(text, name, max_bytes, allowed_controls)
    return text


class _Reader:
    """Sequential reads from a packet body; running out of bytes is a ``bad_length``."""

    def __init__(self, body: bytes, what: str) -> None:
        self.body = body
        self.pos = 0
        self.what = what

    def take(self, n: int) -> bytes:
        if self.pos + n > len(self.body):
            raise PacketError(
                "bad_length",
                f"{self.what} body is {len(self.body)} bytes, too short for its fields "
                f"(needs more than {self.pos + n - 1})",
            )
        out = self.body[self.pos : self.pos + n]
        self.pos += n
        return out

    def unpack(self, st: struct.Struct) -> tuple:
        return st.unpack(self.take(st.size))

    def short_str(self) -> bytes:
        (n,) = self.unpack(_U8)
        return self.take(n)

    def rest(self) -> bytes:
        out = self.body[self.pos :]
        self.pos = len(self.body)
        return out

    def end(self) -> None:
        if self.pos != len(self.body):
            raise PacketError(
                "bad_length",
                f"{self.what} body is {len(self.body)} bytes but its fields use {self.pos}",
            )


def _frame(ptype: PacketType, body: bytes) -> bytes:
    total = HEADER_SIZE + len(body)
    if total > MAX_PACKET_SIZE:
        raise PacketError("oversized", f"{ptype.name} packet would be {total} bytes, max {MAX_PACKET_SIZE}")
    return _HEADER.pack(MAGIC, FRAME_VERSION, int(ptype), total) + body


def audio_packet_size(n: int, r: int = 0, bits: int = 12, tokens_per_chunk: int = 4) -> int:
    """Size in bytes of an AUDIO packet with ``n`` primary and ``r`` redundant chunks."""
    return AUDIO_HEADER_SIZE + (n + r) * packed_size(tokens_per_chunk, bits)


def compact_audio_packet_size(
    n: int, r: int = 0, bits: int = 12, tokens_per_chunk: int = 4, *, echo: bool = False
) -> int:
    """Size in bytes of a compact AUDIO frame with ``n`` primary and ``r`` redundant chunks."""
    head = COMPACT_AUDIO_HEADER_SIZE + (COMPACT_ECHO_SIZE if echo else 0)
    return head + (n + r) * packed_size(tokens_per_chunk, bits)


def model_hash_prefix(fingerprint: str | bytes) -> bytes:
    """The 8-byte model hash sent in HELLO: the first 8 bytes of the model's sha256.

    Takes the fingerprint as a hex string (``FocalCodec.fingerprint()``) or as a
    32-byte digest. Raises ``PacketError("bad_field")`` on anything else.
    """
    if isinstance(fingerprint, str):
        try:
            digest = bytes.fromhex(fingerprint)
        except ValueError as exc:
            raise PacketError("bad_field", f"model fingerprint is not hex: {fingerprint!r:.80}") from exc
    else:
        digest = bytes(fingerprint)
    if len(digest) != 32:
        raise PacketError(
            "bad_field", f"model fingerprint must be a sha256 (32 bytes), got {len(digest)} bytes"
        )
    return digest[:MODEL_HASH_SIZE]


# --------------------------------------------------------------------------- AUDIO


def _as_chunk(tokens: object, bits: int, tokens_per_chunk: int, what: str) -> np.ndarray:
    try:
        arr = np.asarray(tokens)
    except (TypeError, ValueError) as exc:
        raise PacketError("bad_field", f"{what} is not an array of tokens ({exc})") from exc
    if arr.ndim != 1 or arr.shape[0] != tokens_per_chunk:
        raise PacketError(
            "bad_field", f"{what} must be a 1-D array of {tokens_per_chunk} tokens, got shape {arr.shape}"
        )
    if arr.dtype.kind not in "iu":
        raise PacketError("bad_field", f"{what} must have an integer dtype, got {arr.dtype}")
    if int(arr.min()) < 0 or int(arr.max()) >= (1 << bits):
        raise PacketError("bad_field", f"{what} has a token outside 0..{(1 << bits) - 1} ({bits} bits)")
    return arr.astype(np.int64)


class _ChunkedAudio:
    """What both AUDIO layouts share: primary chunks from ``first_chunk``, redundant ones before it, flags."""

    first_chunk: int
    chunks: list[np.ndarray]
    redundant: list[np.ndarray]
    flags: int

    def _validate_chunks(self, max_chunks: int, what: str, bits: int, tokens_per_chunk: int) -> None:
        """Check the chunk lists and the first index, and normalise every chunk to an int array."""
        if isinstance(self.chunks, np.ndarray) or not isinstance(self.chunks, (list, tuple)):
            raise PacketError("bad_field", "chunks must be a list of token arrays")
        if isinstance(self.redundant, np.ndarray) or not isinstance(self.redundant, (list, tuple)):
            raise PacketError("bad_field", "redundant must be a list of token arrays")
        n, r = len(self.chunks), len(self.redundant)
        if not 1 <= n <= max_chunks:
            raise PacketError("bad_field", f"{what} carries 1..{max_chunks} chunks, got {n}")
        if r > MAX_REDUNDANT:
            raise PacketError("bad_field", f"{what} carries 0..{MAX_REDUNDANT} redundant chunks, got {r}")
        # Redundant chunks F-r..F-1 must exist (F >= r) and the last primary index must fit in a u32.
        self.first_chunk = _check_int(
            self.first_chunk, f"first chunk index (with {r} redundant and {n} primary chunks)", r, _U32_MAX - n + 1
        )
        self.chunks = [
            _as_chunk(c, bits, tokens_per_chunk, f"chunk {self.first_chunk + i}") for i, c in enumerate(self.chunks)
        ]
        self.redundant = [
            _as_chunk(c, bits, tokens_per_chunk, f"redundant chunk {self.first_chunk - r + i}")
            for i, c in enumerate(self.redundant)
        ]

    @property
    def silence(self) -> bool:
        return bool(self.flags & AudioFlags.SILENCE)

    @property
    def talkspurt_start(self) -> bool:
        return bool(self.flags & AudioFlags.TALKSPURT_START)

    def iter_chunks(self) -> list[tuple[int, np.ndarray, bool]]:
        """``(chunk_index, tokens, is_redundant)`` for every chunk, oldest first."""
        r = len(self.redundant)
        out = [(self.first_chunk - r + i, c, True) for i, c in enumerate(self.redundant)]
        out += [(self.first_chunk + i, c, False) for i, c in enumerate(self.chunks)]
        return out


@dataclass(eq=False)
class AudioPacket(_ChunkedAudio):
    """An AUDIO packet: ``chunks`` are chunks ``first_chunk ..`` and ``redundant``
    are copies of the ``len(redundant)`` chunks just before ``first_chunk`` (oldest first).

    Chunks are normalised to int64 arrays of ``tokens_per_chunk`` tokens. Equality
    compares all fields and token values.
    """

    PACKET_TYPE: ClassVar[PacketType] = PacketType.AUDIO

    seq: int
    first_chunk: int
    bits: int
    tokens_per_chunk: int
    chunks: list[np.ndarray]
    redundant: list[np.ndarray] = field(default_factory=list)
    timestamp_ms: int = 0
    flags: int = 0

    def __post_init__(self) -> None:
        self._validate()

    def _validate(self) -> None:
        self.seq = _check_int(self.seq, "sequence number", 0, _U32_MAX)
        self.bits = _check_int(self.bits, "bits per token", 1, MAX_BITS)
        self.tokens_per_chunk = _check_int(self.tokens_per_chunk, "tokens per chunk", 1, 255)
        self.timestamp_ms = _check_int(self.timestamp_ms, "timestamp", 0, _U32_MAX)
        self.flags = AudioFlags(_check_int(self.flags, "flags", 0, (1 << _FLAG_BITS) - 1))
        self._validate_chunks(MAX_CHUNKS, "an AUDIO packet", self.bits, self.tokens_per_chunk)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, AudioPacket):
            return NotImplemented
        return (
            (self.seq, self.first_chunk, self.bits, self.tokens_per_chunk, self.timestamp_ms, int(self.flags))
            == (
                other.seq,
                other.first_chunk,
                other.bits,
                other.tokens_per_chunk,
                other.timestamp_ms,
                int(other.flags),
            )
            and len(self.chunks) == len(other.chunks)
            and len(self.redundant) == len(other.redundant)
            and all(np.array_equal(a, b) for a, b in zip(self.chunks, other.chunks))
            and all(np.array_equal(a, b) for a, b in zip(self.redundant, other.redundant))
        )

    __hash__ = None  # type: ignore[assignment]

    @property
    def chunk_bytes(self) -> int:
        """Size of one packed chunk in bytes."""
        return packed_size(self.tokens_per_chunk, self.bits)

    @property
    def size(self) -> int:
        """Encoded size in bytes."""
        return audio_packet_size(len(self.chunks), len(self.redundant), self.bits, self.tokens_per_chunk)

    def encode(self) -> bytes:
        self._validate()
        n, r = len(self.chunks), len(self.redundant)
        fields = _AUDIO.pack(
            self.seq,
            self.first_chunk,
            self.timestamp_ms,
            self.bits,
            self.tokens_per_chunk,
            n | (r << 3) | (int(self.flags) << 5),
        )
        payload = b"".join(pack_tokens(c, self.bits) for c in [*self.redundant, *self.chunks])
        return _frame(PacketType.AUDIO, fields + payload)

    @classmethod
    def _parse_body(cls, body: bytes) -> AudioPacket:
        if len(body) < _AUDIO.size:
            raise PacketError(
                "bad_length", f"AUDIO body is {len(body)} bytes, shorter than its {_AUDIO.size}-byte header"
            )
        seq, first, ts, bits, tpc, counts = _AUDIO.unpack_from(body)
        n, r, flags = counts & 0b111, (counts >> 3) & 0b11, counts >> 5
        _check_int(bits, "bits per token", 1, MAX_BITS)
        _check_int(tpc, "tokens per chunk", 1, 255)
        _check_int(n, "number of chunks", 1, MAX_CHUNKS)
        _check_int(
            first, f"first chunk index (with {r} redundant and {n} primary chunks)", r, _U32_MAX - n + 1
        )
        cb = packed_size(tpc, bits)
        expected = _AUDIO.size + (n + r) * cb
        if len(body) != expected:
            raise PacketError(
                "bad_length",
                f"AUDIO body is {len(body)} bytes but {n}+{r} chunks of {tpc} {bits}-bit tokens need {expected}",
            )
        arrays = _unpack_chunks(body, _AUDIO.size, n + r, bits, tpc, "AUDIO")
        return cls(seq, first, bits, tpc, arrays[r:], arrays[:r], ts, flags)


def _unpack_chunks(data: bytes, offset: int, count: int, bits: int, tpc: int, what: str) -> list[np.ndarray]:
    """``count`` separately packed chunks from ``data[offset:]`` (the size was checked by the caller)."""
    cb = packed_size(tpc, bits)
    pad_mask = (1 << (cb * 8 - tpc * bits)) - 1
    arrays = []
    for i in range(count):
        off = offset + i * cb
        if data[off + cb - 1] & pad_mask:
            raise PacketError("bad_field", f"{what} chunk {i} has non-zero padding bits")
        arrays.append(unpack_tokens(data[off : off + cb], bits, tpc))
    return arrays


# --------------------------------------------------------------------------- compact AUDIO (frame version 2)

_COMPACT = struct.Struct(">2sBBI")  # magic, frame version, counts, first chunk
_ECHO = struct.Struct(">HB")  # echoed chunk index (low 16 bits), hold in 4 ms units
_ECHO_BIT = 1 << 5
_COMPACT_FLAG_SHIFT = 6
_COMPACT_FLAGS = int(AudioFlags.SILENCE | AudioFlags.TALKSPURT_START)


@dataclass(frozen=True)
class AudioGeometry:
    """What the HELLO handshake fixed and compact AUDIO frames do not repeat: bits per token, tokens per
    chunk and the chunk duration (for the media-clock timestamp). Both sides of an accepted call have the
    same geometry (:func:`check_compatible`), so a receiver passes its own."""

    bits: int
    tokens_per_chunk: int
    chunk_ms: float = 80.0

    def __post_init__(self) -> None:
        object.__setattr__(self, "bits", _check_int(self.bits, "bits per token", 1, MAX_BITS))
        object.__setattr__(
            self, "tokens_per_chunk", _check_int(self.tokens_per_chunk, "tokens per chunk", 1, 255)
        )
        try:
            ok = float(self.chunk_ms) > 0 and float(self.chunk_ms) < 1e6
        except (TypeError, ValueError):
            ok = False
        if not ok:
            raise PacketError("bad_field", f"chunk duration must be > 0 ms, got {self.chunk_ms!r:.40}")
        object.__setattr__(self, "chunk_ms", float(self.chunk_ms))

    @classmethod
    def from_hello(cls, hello: Hello) -> AudioGeometry:
        return cls(hello.bits, hello.tokens_per_chunk, hello.chunk_duration_s * 1000.0)

    @property
    def chunk_bytes(self) -> int:
        return packed_size(self.tokens_per_chunk, self.bits)


@dataclass(eq=False)
class CompactAudioPacket(_ChunkedAudio):
    """AUDIO in the compact frame (frame version 2, see the module docstring).

    Used like :class:`AudioPacket` (``first_chunk``, ``chunks``, ``redundant``, ``iter_chunks()``,
    ``silence``, ``talkspurt_start``, ``timestamp_ms``, ``seq``, ``bits``, ``tokens_per_chunk``), so the
    jitter buffer takes either. ``seq`` is the first chunk index and ``timestamp_ms`` the media clock
    ``round(first_chunk * chunk_ms)`` (u32, wraps): neither is on the wire. ``echo_chunk`` / ``echo_hold_ms``:
    the optional RTT echo (``echo_hold_ms`` a multiple of :data:`ECHO_HOLD_UNIT_MS`, 0 without an echo).
    """

    PACKET_TYPE: ClassVar[PacketType] = PacketType.AUDIO

    first_chunk: int
    geometry: AudioGeometry
    chunks: list[np.ndarray]
    redundant: list[np.ndarray] = field(default_factory=list)
    flags: int = 0
    echo_chunk: int | None = None
    echo_hold_ms: int = 0

    def __post_init__(self) -> None:
        self._validate()

    def _validate(self) -> None:
        if not isinstance(self.geometry, AudioGeometry):
            raise PacketError("bad_field", f"geometry must be an AudioGeometry, got {self.geometry!r:.60}")
        self.flags = AudioFlags(_check_int(self.flags, "flags", 0, _COMPACT_FLAGS))
        if self.echo_chunk is None:
            if self.echo_hold_ms != 0:
                raise PacketError("bad_field", "echo_hold_ms must be 0 without an echo")
        else:
            self.echo_chunk = _check_int(self.echo_chunk, "echoed chunk index", 0, _U16_MAX)
            self.echo_hold_ms = _check_int(self.echo_hold_ms, "echo hold time", 0, MAX_ECHO_HOLD_MS)
            if self.echo_hold_ms % ECHO_HOLD_UNIT_MS:
                raise PacketError(
                    "bad_field", f"echo hold time must be a multiple of {ECHO_HOLD_UNIT_MS} ms, got {self.echo_hold_ms}"
                )
        self._validate_chunks(MAX_COMPACT_CHUNKS, "a compact AUDIO frame", self.geometry.bits,
                              self.geometry.tokens_per_chunk)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, CompactAudioPacket):
            return NotImplemented
        return (
            (self.first_chunk, self.geometry, int(self.flags), self.echo_chunk, self.echo_hold_ms)
            == (other.first_chunk, other.geometry, int(other.flags), other.echo_chunk, other.echo_hold_ms)
            and len(self.chunks) == len(other.chunks)
            and len(self.redundant) == len(other.redundant)
            and all(np.array_equal(a, b) for a, b in zip(self.chunks, other.chunks))
            and all(np.array_equal(a, b) for a, b in zip(self.redundant, other.redundant))
        )

    __hash__ = None  # type: ignore[assignment]

    # --- the AudioPacket interface
    @property
    def seq(self) -> int:
        return self.first_chunk

    @property
    def bits(self) -> int:
        return self.geometry.bits

    @property
    def tokens_per_chunk(self) -> int:
        return self.geometry.tokens_per_chunk

    @property
    def timestamp_ms(self) -> int:
        """The media clock of the first primary chunk in ms (u32, wraps)."""
        return int(round(self.first_chunk * self.geometry.chunk_ms)) & _U32_MAX

    @property
    def chunk_bytes(self) -> int:
        return self.geometry.chunk_bytes

    @property
    def has_echo(self) -> bool:
        return self.echo_chunk is not None

    @property
    def size(self) -> int:
        """Encoded size in bytes."""
        return compact_audio_packet_size(
            len(self.chunks), len(self.redundant), self.bits, self.tokens_per_chunk, echo=self.has_echo
        )

    def encode(self) -> bytes:
        self._validate()
        n, r = len(self.chunks), len(self.redundant)
        counts = (n - 1) | (r << 3) | (int(self.flags) << _COMPACT_FLAG_SHIFT)
        echo = b""
        if self.echo_chunk is not None:
            counts |= _ECHO_BIT
            echo = _ECHO.pack(self.echo_chunk, self.echo_hold_ms // ECHO_HOLD_UNIT_MS)
        payload = b"".join(pack_tokens(c, self.bits) for c in [*self.redundant, *self.chunks])
        data = _COMPACT.pack(MAGIC, COMPACT_FRAME_VERSION, counts, self.first_chunk) + echo + payload
        if len(data) > MAX_PACKET_SIZE:
            raise PacketError("oversized", f"compact AUDIO frame would be {len(data)} bytes, max {MAX_PACKET_SIZE}")
        return data

    @classmethod
    def _parse(cls, data: bytes, geometry: AudioGeometry | None) -> CompactAudioPacket:
        if len(data) < COMPACT_AUDIO_HEADER_SIZE:
            raise PacketError(
                "truncated",
                f"compact AUDIO frame is {len(data)} bytes, shorter than its {COMPACT_AUDIO_HEADER_SIZE}-byte header",
            )
        if geometry is None:
            raise PacketError(
                "bad_field",
                "a compact AUDIO frame can only be read with the negotiated geometry (bits, tokens per chunk)",
            )
        _, _, counts, first = _COMPACT.unpack_from(data)
        n, r = (counts & 0b111) + 1, (counts >> 3) & 0b11
        flags = counts >> _COMPACT_FLAG_SHIFT
        head = COMPACT_AUDIO_HEADER_SIZE
        echo_chunk, hold = None, 0
        if counts & _ECHO_BIT:
            head += COMPACT_ECHO_SIZE
            if len(data) < head:
                raise PacketError(
                    "truncated", f"compact AUDIO frame is {len(data)} bytes, shorter than its {head}-byte header"
                )
            echo_chunk, units = _ECHO.unpack_from(data, COMPACT_AUDIO_HEADER_SIZE)
            hold = units * ECHO_HOLD_UNIT_MS
        _check_int(
            first, f"first chunk index (with {r} redundant and {n} primary chunks)", r, _U32_MAX - n + 1
        )
        expected = head + (n + r) * geometry.chunk_bytes
        if len(data) != expected:
            raise PacketError(
                "truncated" if len(data) < expected else "bad_length",
                f"compact AUDIO frame is {len(data)} bytes but {n}+{r} chunks of {geometry.tokens_per_chunk} "
                f"{geometry.bits}-bit tokens need {expected}",
            )
        arrays = _unpack_chunks(data, head, n + r, geometry.bits, geometry.tokens_per_chunk, "compact AUDIO")
        return cls(first, geometry, arrays[r:], arrays[:r], flags, echo_chunk, hold)


def is_audio(packet: object) -> bool:
    """True for an AUDIO packet in either frame (:class:`AudioPacket`, :class:`CompactAudioPacket`)."""
    return isinstance(packet, (AudioPacket, CompactAudioPacket))


# --------------------------------------------------------------------------- HELLO / HELLO_ACK


@dataclass(frozen=True, kw_only=True)
class Hello:
    """What a peer announces when the channel opens (see :func:`check_compatible`)."""

    PACKET_TYPE: ClassVar[PacketType] = PacketType.HELLO

    #: Identifier of the codec model (informational; the hash decides).
    model_id: str
    #: First 8 bytes of the sha256 of the model weights (:func:`model_hash_prefix`).
    model_hash: bytes
    #: Token width in bits.
    bits: int
    nickname: str = ""
    app_version: str = ""
    protocol_version: int = PROTOCOL_VERSION
    token_rate_num: int = 50
    token_rate_den: int = 1
    tokens_per_chunk: int = 4
    input_sample_rate: int = 16000
    output_sample_rate: int = 24000
    #: Primary chunks per AUDIO packet the sender uses (5..8 only in compact AUDIO frames).
    chunks_per_packet: int = 1
    #: Redundant chunks per AUDIO packet the sender uses.
    redundancy: int = 0

    def __post_init__(self) -> None:
        if isinstance(self.model_hash, (bytearray, memoryview)):
            object.__setattr__(self, "model_hash", bytes(self.model_hash))
        for name, lo, hi in (
            ("protocol_version", 1, 255),
            ("bits", 1, MAX_BITS),
            ("token_rate_num", 1, _U16_MAX),
            ("token_rate_den", 1, _U16_MAX),
            ("tokens_per_chunk", 1, 255),
            ("chunks_per_packet", 1, MAX_COMPACT_CHUNKS),
            ("redundancy", 0, MAX_REDUNDANT),
            ("input_sample_rate", 1, _U32_MAX),
            ("output_sample_rate", 1, _U32_MAX),
        ):
            object.__setattr__(self, name, _check_int(getattr(self, name), name, lo, hi))
        if not isinstance(self.model_hash, bytes) or len(self.model_hash) != MODEL_HASH_SIZE:
            raise PacketError(
                "bad_field",
                f"model_hash must be {MODEL_HASH_SIZE} bytes (use model_hash_prefix), got {self.model_hash!r:.60}",
            )
        self._encoded_strings()

    def _encoded_strings(self) -> tuple[bytes, bytes, bytes]:
        return (
            _check_str(self.app_version, "app version", MAX_APP_VERSION_BYTES),
            _check_str(self.model_id, "model id", MAX_MODEL_ID_BYTES),
            _check_str(self.nickname, "nickname", MAX_NICKNAME_BYTES),
        )

    @property
    def token_rate(self) -> float:
        """Tokens per second."""
        return self.token_rate_num / self.token_rate_den

    @property
    def chunk_duration_s(self) -> float:
        return self.tokens_per_chunk * self.token_rate_den / self.token_rate_num

    def encode(self) -> bytes:
        strings = self._encoded_strings()
        fixed = _HELLO.pack(
            self.protocol_version,
            self.bits,
            self.token_rate_num,
            self.token_rate_den,
            self.tokens_per_chunk,
            self.chunks_per_packet,
            self.redundancy,
            self.input_sample_rate,
            self.output_sample_rate,
            self.model_hash,
        )
        return _frame(PacketType.HELLO, fixed + b"".join(_U8.pack(len(s)) + s for s in strings))

    @classmethod
    def _parse_body(cls, body: bytes) -> Hello:
        rd = _Reader(body, "HELLO")
        (proto, bits, num, den, tpc, cpp, red, in_sr, out_sr, mhash) = rd.unpack(_HELLO)
        app_version = _decode_str(rd.short_str(), "app version", MAX_APP_VERSION_BYTES)
        model_id = _decode_str(rd.short_str(), "model id", MAX_MODEL_ID_BYTES)
        nickname = _decode_str(rd.short_str(), "nickname", MAX_NICKNAME_BYTES)
        rd.end()
        return cls(
            protocol_version=proto,
            bits=bits,
            token_rate_num=num,
            token_rate_den=den,
            tokens_per_chunk=tpc,
            chunks_per_packet=cpp,
            redundancy=red,
            input_sample_rate=in_sr,
            output_sample_rate=out_sr,
            model_hash=mhash,
            app_version=app_version,
            model_id=model_id,
            nickname=nickname,
        )


@dataclass(frozen=True)
class HelloAck:
    """The answer to a HELLO: accepted, or refused with a human-readable reason."""

    PACKET_TYPE: ClassVar[PacketType] = PacketType.HELLO_ACK

    accepted: bool
    reason: str = ""

    def __post_init__(self) -> None:
        if not isinstance(self.accepted, (bool, np.bool_)):
            raise PacketError("bad_field", f"accepted must be a bool, got {self.accepted!r:.60}")
        object.__setattr__(self, "accepted", bool(self.accepted))
        _check_str(self.reason, "reason", MAX_REASON_BYTES)
        if not self.accepted and not self.reason:
            raise PacketError("bad_field", "a refusing HELLO_ACK must give a reason")

    def encode(self) -> bytes:
        return _frame(PacketType.HELLO_ACK, _U8.pack(int(self.accepted)) + self.reason.encode("utf-8"))

    @classmethod
    def _parse_body(cls, body: bytes) -> HelloAck:
        rd = _Reader(body, "HELLO_ACK")
        (accepted,) = rd.unpack(_U8)
        if accepted > 1:
            raise PacketError("bad_field", f"HELLO_ACK accepted flag must be 0 or 1, got {accepted}")
        return cls(bool(accepted), _decode_str(rd.rest(), "reason", MAX_REASON_BYTES))


def _fmt_rate(h: Hello) -> str:
    return f"{h.token_rate_num}" if h.token_rate_den == 1 else f"{h.token_rate_num}/{h.token_rate_den}"


def check_compatible(local: Hello, remote: Hello) -> str | None:
    """``None`` if we can decode what ``remote`` sends, else a human-readable reason.

    Checked, in this order: protocol version, model hash, bits per token, token
    rate, tokens per chunk. Sample rates, chunks per packet and redundancy are
    not: they are the sender's business (the receiver adapts to them).
    """
    who = f"{remote.nickname!r}" if remote.nickname else "the other side"
    if remote.protocol_version != local.protocol_version:
        newer = "newer" if remote.protocol_version > local.protocol_version else "older"
        app = f" (FocalChat {remote.app_version})" if remote.app_version else ""
        return (
            f"{who} uses a {newer} FocalChat protocol (version {remote.protocol_version}{app}) "
            f"than this app (version {local.protocol_version}); both sides need the same version"
        )
    if remote.model_hash != local.model_hash:
        return (
            f"{who} uses a different codec model: {remote.model_id!r} (hash {remote.model_hash.hex()}) "
            f"vs our {local.model_id!r} (hash {local.model_hash.hex()}); both sides need the same model"
        )
    if remote.bits != local.bits:
        return f"{who} sends {remote.bits}-bit tokens but our model uses {local.bits}-bit tokens"
    if remote.token_rate_num * local.token_rate_den != local.token_rate_num * remote.token_rate_den:
        return f"{who}'s codec runs at {_fmt_rate(remote)} tokens/s but ours at {_fmt_rate(local)} tokens/s"
    if remote.tokens_per_chunk != local.tokens_per_chunk:
        return f"{who} streams chunks of {remote.tokens_per_chunk} tokens but we use {local.tokens_per_chunk}"
    return None


# --------------------------------------------------------------------------- small control packets


def _time_us(value: object, name: str = "time_us") -> int:
    return _check_int(value, name, 0, _U64_MAX)


@dataclass(frozen=True)
class Ping:
    PACKET_TYPE: ClassVar[PacketType] = PacketType.PING

    ping_id: int
    #: Sender's clock in microseconds (any epoch).
    time_us: int

    def __post_init__(self) -> None:
        object.__setattr__(self, "ping_id", _check_int(self.ping_id, "ping id", 0, _U32_MAX))
        object.__setattr__(self, "time_us", _time_us(self.time_us))

    def reply(self, time_us: int) -> Pong:
        """The PONG answering this ping, stamped with the responder's ``time_us``."""
        return Pong(self.ping_id, self.time_us, time_us)

    def encode(self) -> bytes:
        return _frame(PacketType.PING, _PING.pack(self.ping_id, self.time_us))

    @classmethod
    def _parse_body(cls, body: bytes) -> Ping:
        rd = _Reader(body, "PING")
        ping_id, t = rd.unpack(_PING)
        rd.end()
        return cls(ping_id, t)


@dataclass(frozen=True)
class Pong:
    PACKET_TYPE: ClassVar[PacketType] = PacketType.PONG

    ping_id: int
    #: The PING's ``time_us``, echoed: round-trip time = now - echo_time_us (same clock).
    echo_time_us: int
    #: Responder's clock in microseconds when it answered.
    time_us: int

    def __post_init__(self) -> None:
        object.__setattr__(self, "ping_id", _check_int(self.ping_id, "ping id", 0, _U32_MAX))
        object.__setattr__(self, "echo_time_us", _time_us(self.echo_time_us, "echo_time_us"))
        object.__setattr__(self, "time_us", _time_us(self.time_us))

    def rtt_us(self, now_us: int) -> int:
        """Round-trip time, given the pinger's clock now (the clock it stamped the PING with)."""
        return now_us - self.echo_time_us

    def encode(self) -> bytes:
        return _frame(PacketType.PONG, _PONG.pack(self.ping_id, self.echo_time_us, self.time_us))

    @classmethod
    def _parse_body(cls, body: bytes) -> Pong:
        rd = _Reader(body, "PONG")
        ping_id, echo, t = rd.unpack(_PONG)
        rd.end()
        return cls(ping_id, echo, t)


@dataclass(frozen=True)
class Heartbeat:
    PACKET_TYPE: ClassVar[PacketType] = PacketType.HEARTBEAT

    time_us: int

    def __post_init__(self) -> None:
        object.__setattr__(self, "time_us", _time_us(self.time_us))

    def encode(self) -> bytes:
        return _frame(PacketType.HEARTBEAT, _U64.pack(self.time_us))

    @classmethod
    def _parse_body(cls, body: bytes) -> Heartbeat:
        rd = _Reader(body, "HEARTBEAT")
        (t,) = rd.unpack(_U64)
        rd.end()
        return cls(t)


@dataclass(frozen=True)
class Bye:
    PACKET_TYPE: ClassVar[PacketType] = PacketType.BYE

    reason: str = ""

    def __post_init__(self) -> None:
        _check_str(self.reason, "reason", MAX_REASON_BYTES)

    def encode(self) -> bytes:
        return _frame(PacketType.BYE, self.reason.encode("utf-8"))

    @classmethod
    def _parse_body(cls, body: bytes) -> Bye:
        return cls(_decode_str(body, "reason", MAX_REASON_BYTES))


_TEXT_CONTROLS = "\t\n\r"


@dataclass(frozen=True)
class Text:
    PACKET_TYPE: ClassVar[PacketType] = PacketType.TEXT

    message_id: int
    text: str

    def __post_init__(self) -> None:
        object.__setattr__(self, "message_id", _check_int(self.message_id, "message id", 0, _U32_MAX))
        _check_str(self.text, "text", MAX_TEXT_BYTES, _TEXT_CONTROLS)

    def encode(self) -> bytes:
        return _frame(PacketType.TEXT, _U32.pack(self.message_id) + self.text.encode("utf-8"))

    @classmethod
    def _parse_body(cls, body: bytes) -> Text:
        rd = _Reader(body, "TEXT")
        (message_id,) = rd.unpack(_U32)
        return cls(message_id, _decode_str(rd.rest(), "text", MAX_TEXT_BYTES, _TEXT_CONTROLS))


Packet = AudioPacket | CompactAudioPacket | Hello | HelloAck | Ping | Pong | Heartbeat | Bye | Text

_PARSERS = {
    cls.PACKET_TYPE: cls._parse_body
    for cls in (AudioPacket, Hello, HelloAck, Ping, Pong, Heartbeat, Bye, Text)
}


# --------------------------------------------------------------------------- parsing


def parse_packet(
    data: bytes | bytearray | memoryview | str, geometry: AudioGeometry | None = None
) -> Packet:
    """Parse one data-channel message.

    ``geometry``: the negotiated :class:`AudioGeometry`, needed to read compact AUDIO frames (without it they
    are a ``bad_field``); framed packets do not need it.

    Raises:
        PacketError: for every malformed message (see the module docstring for
            the ``kind`` values). A ``str`` (a data-channel text message) is a
            ``bad_magic``: FocalChat packets are binary.
        TypeError: if ``data`` is neither bytes-like nor a str, or ``geometry`` not an
            :class:`AudioGeometry` (programming errors).
    """
    if isinstance(data, str):
        raise PacketError("bad_magic", "not a FocalChat packet: got a text message, packets are binary")
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise TypeError(f"parse_packet needs bytes, got {type(data).__name__}")
    if geometry is not None and not isinstance(geometry, AudioGeometry):
        raise TypeError(f"geometry must be an AudioGeometry, got {type(geometry).__name__}")
    data = bytes(data)
    size = len(data)
    if size > MAX_PACKET_SIZE:
        raise PacketError(
            "oversized", f"message is {size} bytes, larger than the {MAX_PACKET_SIZE}-byte maximum"
        )
    head = data[: len(MAGIC)]
    if head != MAGIC[: len(head)]:
        raise PacketError("bad_magic", f"not a FocalChat packet: starts with {head!r}, expected {MAGIC!r}")
    if size <= len(MAGIC):
        raise PacketError(
            "truncated", f"message is only {size} bytes, shorter than the {HEADER_SIZE}-byte header"
        )
    version = data[len(MAGIC)]
    if version == COMPACT_FRAME_VERSION:
        return CompactAudioPacket._parse(data, geometry)
    if version != FRAME_VERSION:
        raise PacketError(
            "bad_version",
            f"peer sends FocalChat frame version {version}, this build (protocol {PROTOCOL_VERSION}) "
            f"reads frame versions {FRAME_VERSION} and {COMPACT_FRAME_VERSION}",
        )
    if size < HEADER_SIZE:
        raise PacketError(
            "truncated", f"message is only {size} bytes, shorter than the {HEADER_SIZE}-byte header"
        )
    _, _, ptype, length = _HEADER.unpack_from(data)
    parser = _PARSERS.get(ptype)  # type: ignore[call-overload]
    if parser is None:
        raise PacketError("bad_type", f"unknown packet type {ptype}")
    if not HEADER_SIZE <= length <= MAX_PACKET_SIZE:
        raise PacketError(
            "bad_length", f"impossible packet length field {length} (valid: {HEADER_SIZE}..{MAX_PACKET_SIZE})"
        )
    if length > size:
        raise PacketError(
            "truncated", f"{PacketType(ptype).name} packet declares {length} bytes but the message has {size}"
        )
    if length < size:
        raise PacketError(
            "bad_length",
            f"{PacketType(ptype).name} packet declares {length} bytes but the message has {size}",
        )
    return parser(data[HEADER_SIZE:])
