"""Recorded calls (``.fcr``): both directions' codec tokens with timestamps, written chunk by chunk.

Layout (little-endian)::

    offset  size  field
         0     4  magic b"FCR\\x00"
         4     2  format version (= 1)
         6     4  header length H (bytes of the JSON header that follows)
        10     H  header: UTF-8 JSON (model id and hash, bits per token, tokens per chunk, token rate,
                  sample rates, creation time, names of the two directions)
      10+H     4  CRC32 of bytes [0, 10+H)
    then records, each:
         0     1  record type (1 = chunk, 2 = text message, 3 = end of recording)
         1     1  direction (0 = sent by us, 1 = received from the peer)
         2     4  chunk index (u32, the sender's chunk counter; 0 for text/end)
         6     4  time since the recording started (u32 ms)
        10     2  payload length P
        12     P  payload: packed tokens of one chunk (codec.bitpack), or UTF-8 text
      12+P     4  CRC32 of the record's bytes [0, 12+P)

Each record is written and flushed as it happens, so a killed process leaves a readable file. A reader
stops at the first truncated or corrupt record and says where (:class:`RecordingDamage`); everything
before it plays.
"""

from __future__ import annotations

import json
import struct
import time
import zlib
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import BinaryIO

import numpy as np

from codec.bitpack import pack_tokens, packed_size, unpack_tokens

MAGIC = b"FCR\x00"
VERSION = 1
EXTENSION = ".fcr"
_PREFIX = struct.Struct("<4sHI")
_REC = struct.Struct("<BBIIH")
_CRC = struct.Struct("<I")
CHUNK, TEXT, END = 1, 2, 3
SENT, RECEIVED = 0, 1
_MAX_HEADER = 1 << 20


class RecordingError(ValueError):
    """A recording cannot be read at all (not a recording, unsupported version, damaged header)."""


@dataclass
class RecordingHeader:
    model_id: str
    model_hash: str  # hex
    bits: int
    tokens_per_chunk: int = 4
    token_rate: float = 50.0
    sample_rate_input: int = 16000
    sample_rate_output: int = 24000
    created: str = field(default_factory=lambda: time.strftime("%Y-%m-%dT%H:%M:%S%z"))
    directions: tuple[str, str] = ("me", "peer")

    @property
    def chunk_ms(self) -> float:
        return 1000.0 * self.tokens_per_chunk / self.token_rate


@dataclass
class Record:
    kind: int
    direction: int
    chunk_index: int
    time_ms: int
    tokens: np.ndarray | None = None
    text: str | None = None


@dataclass
class RecordingDamage:
    """Where and why reading stopped early."""

    offset: int
    records_read: int
    reason: str

    def __str__(self) -> str:
        return (f"the recording is damaged at byte {self.offset} ({self.reason}); "
                f"the {self.records_read} records before it are intact")


class RecordingWriter:
    """Appends records to a new ``.fcr`` file, flushing each one. Thread-compatible: one writer thread."""

    def __init__(self, path: str | Path, header: RecordingHeader) -> None:
        self.path = Path(path)
        self.header = header
        self._f: BinaryIO | None = open(self.path, "wb")  # noqa: SIM115 (kept open for the call)
        self._t0 = time.monotonic()
        self._chunk_bytes = packed_size(header.tokens_per_chunk, header.bits)
        data = json.dumps(asdict(header)).encode()
        head = _PREFIX.pack(MAGIC, VERSION, len(data)) + data
        self._f.write(head + _CRC.pack(zlib.crc32(head)))
        self._f.flush()
        self.records = 0

    def _now_ms(self) -> int:
        return int((time.monotonic() - self._t0) * 1000) & 0xFFFFFFFF

    def _write(self, kind: int, direction: int, index: int, payload: bytes, time_ms: int | None) -> None:
        if self._f is None:
            raise RecordingError("the recording is closed")
        t = self._now_ms() if time_ms is None else time_ms
        rec = _REC.pack(kind, direction, index & 0xFFFFFFFF, t, len(payload)) + payload
        self._f.write(rec + _CRC.pack(zlib.crc32(rec)))
        self._f.flush()
        self.records += 1

    def add_chunk(self, direction: int, chunk_index: int, tokens: np.ndarray, time_ms: int | None = None) -> None:
        """One chunk of ``tokens_per_chunk`` tokens sent (SENT) or received (RECEIVED)."""
        if len(tokens) != self.header.tokens_per_chunk:
            raise ValueError(f"a chunk holds {self.header.tokens_per_chunk} tokens, got {len(tokens)}")
        self._write(CHUNK, direction, chunk_index, pack_tokens(np.asarray(tokens), self.header.bits), time_ms)

    def add_text(self, direction: int, text: str, time_ms: int | None = None) -> None:
        self._write(TEXT, direction, 0, text.encode()[:65535], time_ms)

    def close(self) -> None:
        if self._f is not None:
            self._write(END, 0, 0, b"", None)
            self._f.close()
            self._f = None

    def __enter__(self) -> RecordingWriter:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class RecordingReader:
    """Reads a ``.fcr`` file; iterating yields records up to the end or the first damage."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        try:
            self.data = self.path.read_bytes()
        except FileNotFoundError:
            raise RecordingError(f"{path}: no such file") from None
        d = self.data
        if len(d) < _PREFIX.size or d[:4] != MAGIC:
            raise RecordingError(f"{path}: not a FocalChat recording (bad magic)")
        _, version, hlen = _PREFIX.unpack_from(d)
        if version != VERSION:
            raise RecordingError(f"{path}: recording format version {version}; this build reads version {VERSION}")
        if hlen > _MAX_HEADER or len(d) < _PREFIX.size + hlen + 4:
            raise RecordingError(f"{path}: truncated header")
        end = _PREFIX.size + hlen
        if _CRC.unpack_from(d, end)[0] != zlib.crc32(d[:end]):
            raise RecordingError(f"{path}: header checksum mismatch (corrupt header)")
        try:
            meta = json.loads(d[_PREFIX.size:end])
            meta["directions"] = tuple(meta.get("directions", ("me", "peer")))
            self.header = RecordingHeader(**meta)
        except (ValueError, TypeError) as e:
            raise RecordingError(f"{path}: unreadable header ({e})") from None
        self._start = end + 4
        self.damage: RecordingDamage | None = None
        self.complete = False  # an END record was found

    def __iter__(self) -> Iterator[Record]:
        d, pos, n = self.data, self._start, 0
        self.damage, self.complete = None, False
        cb = packed_size(self.header.tokens_per_chunk, self.header.bits)
        while pos < len(d):
            if pos + _REC.size > len(d):
                self.damage = RecordingDamage(pos, n, "truncated record header")
                return
            kind, direction, index, t, plen = _REC.unpack_from(d, pos)
            stop = pos + _REC.size + plen
            if stop + 4 > len(d):
                self.damage = RecordingDamage(pos, n, "truncated record")
                return
            if _CRC.unpack_from(d, stop)[0] != zlib.crc32(d[pos:stop]):
                self.damage = RecordingDamage(pos, n, "record checksum mismatch")
                return
            payload = d[pos + _REC.size : stop]
            pos = stop + 4
            n += 1
            if kind == CHUNK and direction in (SENT, RECEIVED) and plen == cb:
                toks = unpack_tokens(payload, self.header.bits, self.header.tokens_per_chunk)
                yield Record(kind, direction, index, t, tokens=toks)
            elif kind == TEXT:
                yield Record(kind, direction, index, t, text=payload.decode(errors="replace"))
            elif kind == END:
                self.complete = True
                return
            else:
                self.damage = RecordingDamage(pos - plen - _REC.size - 4, n - 1, f"unknown record (type {kind})")
                return

    def streams(self) -> dict[int, dict[int, np.ndarray]]:
        """Tokens per direction, keyed by chunk index."""
        out: dict[int, dict[int, np.ndarray]] = {SENT: {}, RECEIVED: {}}
        for r in self:
            if r.kind == CHUNK:
                out[r.direction][r.chunk_index] = r.tokens
        return out


def export_wav(reader: RecordingReader, model, out_path: str | Path, layout: str = "stereo") -> dict:
    """Decode a recording to a WAV at the model's output rate.

    ``layout``: ``stereo`` (left = sent, right = received, aligned on the recording clock), ``mix``
    (both summed, mono), ``sent`` or ``received`` (one direction). Missing chunks are concealed as in a
    call. Returns a summary (chunks per direction, concealed, damage).
    """
    from codec.audio import save_audio

    from .conceal import StreamDecoder

    h = reader.header
    streams: dict[int, dict[int, tuple[int, np.ndarray]]] = {SENT: {}, RECEIVED: {}}
    for r in reader:
        if r.kind == CHUNK:
            streams[r.direction][r.chunk_index] = (r.time_ms, r.tokens)
    sr = model.sample_rate_output
    tracks, summary = {}, {"damage": str(reader.damage) if reader.damage else None, "complete": reader.complete}
    for d, chunks in streams.items():
        if not chunks:
            continue
        first, last = min(chunks), max(chunks)
        dec = StreamDecoder(model)
        audio = np.concatenate([dec.decode(chunks[i][1] if i in chunks else None) for i in range(first, last + 1)])
        start_ms = chunks[first][0]
        tracks[d] = (int(start_ms * sr / 1000), audio)
        summary[h.directions[d]] = {"chunks": len(chunks), "concealed": dec.concealed}
    if not tracks:
        raise RecordingError(f"{reader.path}: the recording holds no audio chunks")
    wanted = {"stereo": (SENT, RECEIVED), "mix": (SENT, RECEIVED), "sent": (SENT,), "received": (RECEIVED,)}
    if layout not in wanted:
        raise ValueError(f"layout must be one of {sorted(wanted)}")
    dirs = wanted[layout]
    length = max((o + len(a) for d, (o, a) in tracks.items() if d in dirs), default=0)
    if length == 0:
        raise RecordingError(f"{reader.path}: no audio for layout {layout!r}")
    out = np.zeros((length, 2 if layout == "stereo" else 1), np.float32)
    for col, d in enumerate(dirs):
        if d in tracks:
            o, a = tracks[d]
            out[o : o + len(a), col if layout == "stereo" else 0] += a
    import soundfile as sf

    Path(out_path).parent.mkdir(parents=True, exist_ok=True)
    if out.shape[1] == 1:
        save_audio(out_path, out[:, 0], sr)
    else:
        sf.write(str(out_path), np.clip(out, -1, 1), sr, subtype="PCM_16")
    summary["seconds"] = length / sr
    return summary
