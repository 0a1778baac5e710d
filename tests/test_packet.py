"""Tests for app.packet (the data-channel wire format)."""

from __future__ import annotations

import hashlib
import struct

import numpy as np
import pytest

from app.packet import (
    AUDIO_HEADER_SIZE,
    COMPACT_AUDIO_HEADER_SIZE,
    COMPACT_ECHO_SIZE,
    ERROR_KINDS,
    FRAME_VERSION,
    HEADER_SIZE,
    MAX_PACKET_SIZE,
    PROTOCOL_VERSION,
    AudioFlags,
    AudioGeometry,
    AudioPacket,
    Bye,
    CompactAudioPacket,
    Heartbeat,
    Hello,
    HelloAck,
    PacketError,
    PacketType,
    Ping,
    Pong,
    Text,
    audio_packet_size,
    check_compatible,
    compact_audio_packet_size,
    is_audio,
    model_hash_prefix,
    parse_packet,
)

HASH = model_hash_prefix(hashlib.sha256(b"model weights").digest())
#: The geometry every compact sample uses (and every parse in the fuzz tests passes).
GEOM = AudioGeometry(11, 4)


def other_hash(name: str) -> bytes:
    return model_hash_prefix(hashlib.sha256(name.encode()).hexdigest())


OFF_VERSION, OFF_TYPE, OFF_LENGTH = 2, 3, 4
# AUDIO field offsets (see the layout table in app/packet.py)
OFF_BITS, OFF_TPC, OFF_COUNTS, OFF_PAYLOAD = 18, 19, 20, 21


def chunk(values: list[int] | None = None, bits: int = 11, seed: int = 0) -> np.ndarray:
    if values is not None:
        return np.array(values, dtype=np.int64)
    return np.random.default_rng(seed).integers(0, 1 << bits, size=4)


def audio(n: int = 1, r: int = 0, bits: int = 11, first: int = 10, **kw: object) -> AudioPacket:
    return AudioPacket(
        kw.pop("seq", 3),  # type: ignore[arg-type]
        first,
        bits,
        4,
        [chunk(bits=bits, seed=i) for i in range(n)],
        [chunk(bits=bits, seed=100 + i) for i in range(r)],
        **kw,  # type: ignore[arg-type]
    )


def compact(n: int = 1, r: int = 0, first: int = 10, geometry: AudioGeometry = GEOM, **kw: object) -> CompactAudioPacket:
    bits = geometry.bits
    return CompactAudioPacket(
        first,
        geometry,
        [chunk(bits=bits, seed=i) for i in range(n)],
        [chunk(bits=bits, seed=100 + i) for i in range(r)],
        **kw,  # type: ignore[arg-type]
    )


def hello(**kw: object) -> Hello:
    fields: dict[str, object] = dict(
        model_id="focalchat-default", model_hash=HASH, bits=11, nickname="Zoë", app_version="0.1.0"
    )
    fields.update(kw)
    return Hello(**fields)  # type: ignore[arg-type]


def samples() -> list[bytes]:
    """One or more valid encoded packets of every type."""
    return [
        audio().encode(),
        audio(4, 3, bits=12, flags=AudioFlags.SILENCE | AudioFlags.TALKSPURT_START).encode(),
        audio(2, 1, bits=16, timestamp_ms=0xFFFFFFFF).encode(),
        AudioPacket(0, 0, 1, 3, [np.array([1, 0, 1])]).encode(),
        compact().encode(),
        compact(8, 3, first=2**32 - 8, flags=AudioFlags.SILENCE | AudioFlags.TALKSPURT_START).encode(),
        compact(6, 0, echo_chunk=0xFFFF, echo_hold_ms=1020).encode(),
        compact(4, 1, first=1, echo_chunk=0, echo_hold_ms=0).encode(),
        hello().encode(),
        hello(nickname="", app_version="", model_id="").encode(),
        HelloAck(True).encode(),
        HelloAck(False, "different model").encode(),
        Ping(7, 123456789).encode(),
        Pong(7, 123456789, 987654321).encode(),
        Heartbeat(2**64 - 1).encode(),
        Bye("hung up").encode(),
        Bye().encode(),
        Text(1, "hello\nworld ✓").encode(),
        Text(2, "").encode(),
    ]


def kind_of(data: bytes | str) -> str:
    with pytest.raises(PacketError) as info:
        parse_packet(data)
    assert info.value.kind in ERROR_KINDS
    assert isinstance(info.value, ValueError)
    return info.value.kind


def patch(data: bytes, offset: int, new: bytes) -> bytes:
    return data[:offset] + new + data[offset + len(new) :]


def with_length(data: bytes, length: int) -> bytes:
    return patch(data, OFF_LENGTH, struct.pack(">H", length))


def frame(ptype: int, body: bytes, version: int = FRAME_VERSION) -> bytes:
    return struct.pack(">2sBBH", b"FC", version, ptype, HEADER_SIZE + len(body)) + body


# --------------------------------------------------------------------------- layout


def test_known_audio_packet_bytes():
    p = AudioPacket(
        seq=1,
        first_chunk=5,
        bits=12,
        tokens_per_chunk=4,
        chunks=[np.array([0xABC, 0x123, 0x456, 0x789])],
        redundant=[np.array([0x001, 0x002, 0x003, 0xFFF])],
        timestamp_ms=0x01020304,
        flags=AudioFlags.SILENCE,
    )
    data = p.encode()
    expected = bytes.fromhex(
        "4643 01 01 0021"  # magic "FC", version 1, type AUDIO, length 33
        " 00000001 00000005 01020304"  # seq 1, first chunk 5, timestamp
        " 0c 04 29"  # 12 bits, 4 tokens/chunk, n=1 | r=1 << 3 | SILENCE << 5
        " 001002003fff"  # redundant chunk 4
        " abc123456789"  # primary chunk 5
    )
    assert data == expected
    assert len(data) == p.size == 33
    assert parse_packet(data) == p


def test_audio_header_is_21_bytes_and_sizes():
    assert AUDIO_HEADER_SIZE == 21
    # (bits, n, r) -> total bytes: 21 + (n + r) * ceil(4 * bits / 8)
    expected = {
        (11, 1, 0): 27, (11, 2, 0): 33, (11, 4, 0): 45, (11, 1, 1): 33, (11, 2, 1): 39, (11, 4, 3): 63,
        (12, 1, 0): 27, (12, 2, 0): 33, (12, 4, 0): 45, (12, 1, 1): 33, (12, 2, 1): 39, (12, 4, 3): 63,
        (16, 1, 0): 29, (16, 2, 0): 37, (16, 4, 0): 53, (16, 1, 1): 37, (16, 2, 1): 45, (16, 4, 3): 77,
    }  # fmt: skip
    for (bits, n, r), size in expected.items():
        p = audio(n, r, bits=bits)
        assert audio_packet_size(n, r, bits) == size
        assert len(p.encode()) == p.size == size, (bits, n, r)


def test_11_bit_chunks_are_packed_separately():
    p = audio(2, 1, bits=11)
    data = p.encode()
    assert p.chunk_bytes == 6
    body = data[OFF_PAYLOAD:]
    assert len(body) == 3 * 6
    from codec.bitpack import pack_tokens

    assert body == b"".join(pack_tokens(c, 11) for c in [*p.redundant, *p.chunks])


def test_largest_valid_packet_fits():
    big = [np.full(255, 2**32 - 1, dtype=np.uint64)] * 4
    p = AudioPacket(0, 3, 32, 255, big, big[:3])
    data = p.encode()
    assert len(data) == 21 + 7 * 1020 <= MAX_PACKET_SIZE
    assert parse_packet(data) == p


def test_audio_chunk_indices_and_flags():
    p = audio(2, 2, first=10, flags=AudioFlags.TALKSPURT_START)
    assert [(i, red) for i, _, red in p.iter_chunks()] == [(8, True), (9, True), (10, False), (11, False)]
    assert p.talkspurt_start and not p.silence
    q = parse_packet(audio(flags=7).encode())  # unknown flag bit 4 is kept
    assert isinstance(q, AudioPacket) and int(q.flags) == 7


def test_round_trip_every_type():
    for data in samples():
        p = parse_packet(data, GEOM)
        assert p.encode() == data
        assert parse_packet(p.encode(), GEOM) == p
    assert isinstance(parse_packet(bytearray(Ping(1, 2).encode())), Ping)
    assert isinstance(parse_packet(memoryview(Ping(1, 2).encode())), Ping)


def test_control_packet_layouts():
    assert Ping(7, 1).encode() == frame(4, struct.pack(">IQ", 7, 1))
    assert Pong(7, 1, 2).encode() == frame(5, struct.pack(">IQQ", 7, 1, 2))
    assert Heartbeat(5).encode() == frame(6, struct.pack(">Q", 5))
    assert Bye("x").encode() == frame(7, b"x")
    assert Text(9, "é").encode() == frame(8, struct.pack(">I", 9) + "é".encode())
    assert HelloAck(False, "no").encode() == frame(3, b"\x00no")
    assert len(Ping(0, 0).encode()) == 18
    assert len(Pong(0, 0, 0).encode()) == 26


def test_hello_layout_and_fields():
    h = hello(chunks_per_packet=2, redundancy=1, token_rate_num=25, token_rate_den=2)
    data = h.encode()
    assert len(data) == 6 + 25 + 3 + len("0.1.0") + len("focalchat-default") + len("Zoë".encode())
    assert data[OFF_TYPE] == PacketType.HELLO
    assert data[23:31] == HASH
    back = parse_packet(data)
    assert back == h and isinstance(back, Hello)
    assert back.token_rate == 12.5 and back.chunk_duration_s == pytest.approx(0.32)


def test_ping_pong_rtt():
    ping = Ping(42, 1_000_000)
    pong = parse_packet(ping.reply(5_000_000).encode())
    assert isinstance(pong, Pong)
    assert (pong.ping_id, pong.echo_time_us, pong.time_us) == (42, 1_000_000, 5_000_000)
    assert pong.rtt_us(1_080_000) == 80_000


def test_model_hash_prefix():
    digest = hashlib.sha256(b"w").digest()
    assert model_hash_prefix(digest) == digest[:8]
    assert model_hash_prefix(digest.hex()) == digest[:8]  # FocalCodec.fingerprint() is hex
    for bad in ("not hex", "abcd", b"short", digest + b"x"):
        with pytest.raises(PacketError):
            model_hash_prefix(bad)


# --------------------------------------------------------------------------- compatibility


def test_check_compatible():
    local = hello()
    assert (
        check_compatible(
            local,
            hello(
                nickname="Bob",
                chunks_per_packet=4,
                redundancy=3,
                input_sample_rate=48000,
                output_sample_rate=16000,
            ),
        )
        is None
    )
    # same rate written differently
    assert check_compatible(local, hello(token_rate_num=100, token_rate_den=2)) is None

    assert PROTOCOL_VERSION == 2
    reason = check_compatible(local, hello(protocol_version=3, nickname="Bob", app_version="9.0"))
    assert reason and "newer" in reason and "version 3" in reason and "'Bob'" in reason and "9.0" in reason
    reason = check_compatible(local, hello(protocol_version=1))  # a build from before compact frames
    assert reason and "older" in reason and "version 1" in reason
    reason = check_compatible(local, hello(model_hash=other_hash("other"), model_id="other-model"))
    assert (
        reason
        and "different codec model" in reason
        and "other-model" in reason
        and "focalchat-default" in reason
    )
    reason = check_compatible(local, hello(bits=12))
    assert reason and "12-bit" in reason and "11-bit" in reason
    reason = check_compatible(local, hello(token_rate_num=25))
    assert reason and "25 tokens/s" in reason and "50 tokens/s" in reason
    reason = check_compatible(local, hello(tokens_per_chunk=2))
    assert reason and "2 tokens" in reason
    # the most fundamental mismatch is reported
    reason = check_compatible(local, hello(bits=16, model_hash=other_hash("x")))
    assert reason and "model" in reason


# --------------------------------------------------------------------------- errors


def test_truncated():
    data = audio(2, 1).encode()
    assert kind_of(b"") == "truncated"
    assert kind_of(b"F") == "truncated"
    assert kind_of(b"FC") == "truncated"
    assert kind_of(b"FC\x01") == "truncated"
    assert kind_of(b"FC\x01\x01\x00") == "truncated"
    for cut in range(1, len(data)):
        assert kind_of(data[:cut]) == "truncated", cut
    assert kind_of(with_length(Ping(1, 2).encode(), 19)) == "truncated"  # length larger than the message


def test_bad_magic():
    assert kind_of(b"X") == "bad_magic"
    assert kind_of(b"FX\x01\x01\x00\x06") == "bad_magic"
    assert kind_of(b"fc" + Ping(1, 1).encode()[2:]) == "bad_magic"
    assert kind_of("FC hello") == "bad_magic"  # a data-channel text message
    with pytest.raises(TypeError):
        parse_packet(None)  # type: ignore[arg-type]


def test_bad_version():
    data = Ping(1, 1).encode()
    for v in (0, 3, 255):
        assert kind_of(patch(data, OFF_VERSION, bytes([v]))) == "bad_version"
    assert kind_of(b"FC\x03") == "bad_version"  # known as soon as the version byte is there
    with pytest.raises(PacketError, match="frame version 3"):
        parse_packet(b"FC\x03\x01")


def test_bad_type():
    data = Ping(1, 1).encode()
    for t in (0, 9, 200, 255):
        assert kind_of(patch(data, OFF_TYPE, bytes([t]))) == "bad_type"


def test_bad_length():
    data = Ping(1, 1).encode()
    assert kind_of(with_length(data, 0)) == "bad_length"
    assert kind_of(with_length(data, 5)) == "bad_length"
    assert kind_of(with_length(data, MAX_PACKET_SIZE + 1)) == "bad_length"
    assert kind_of(with_length(data, 0xFFFF)) == "bad_length"
    assert kind_of(with_length(data, len(data) - 1)) == "bad_length"  # trailing byte
    assert kind_of(data + b"\x00") == "bad_length"
    # body sizes that do not match the fields
    assert kind_of(frame(4, struct.pack(">IQ", 1, 1) + b"\x00")) == "bad_length"
    assert kind_of(frame(4, b"\x00" * 11)) == "bad_length"
    assert kind_of(frame(5, b"\x00" * 12)) == "bad_length"
    assert kind_of(frame(6, b"")) == "bad_length"
    assert kind_of(frame(8, b"\x00\x00\x00")) == "bad_length"
    assert kind_of(frame(3, b"")) == "bad_length"
    assert kind_of(frame(1, b"\x00" * 14)) == "bad_length"  # shorter than the AUDIO header
    au = audio(2, 1).encode()
    assert kind_of(frame(1, au[HEADER_SIZE:-1])) == "bad_length"  # one payload byte short
    assert kind_of(frame(1, au[HEADER_SIZE:] + b"\x00")) == "bad_length"
    assert kind_of(frame(1, au[HEADER_SIZE:-6])) == "bad_length"  # a whole chunk missing
    # HELLO: inner string length overruns the body, or bytes left over
    h = hello().encode()
    assert kind_of(frame(2, h[HEADER_SIZE:] + b"x")) == "bad_length"
    assert kind_of(frame(2, h[HEADER_SIZE:-1])) == "bad_length"
    assert kind_of(frame(2, patch(h, 31, b"\xff")[HEADER_SIZE:])) == "bad_length"


def test_bad_field_audio():
    data = audio(1, 0, bits=11).encode()
    counts = data[OFF_COUNTS]
    for n in (0, 5, 6, 7):
        assert kind_of(patch(data, OFF_COUNTS, bytes([(counts & ~7) | n]))) == "bad_field", n
    for bits in (0, 33, 255):
        assert kind_of(patch(data, OFF_BITS, bytes([bits]))) == "bad_field", bits
    assert kind_of(patch(data, OFF_TPC, b"\x00")) == "bad_field"
    # r redundant chunks before chunk 1 do not exist
    r2 = audio(1, 2, first=2).encode()
    assert kind_of(patch(r2, 10, struct.pack(">I", 1))) == "bad_field"
    # non-zero padding bits (11 bits x 4 = 44 bits: the last 4 bits of the chunk are padding)
    assert kind_of(data[:-1] + bytes([data[-1] | 1])) == "bad_field"


def test_bad_field_strings_and_values():
    assert kind_of(frame(8, struct.pack(">I", 1) + b"\xff\xfe")) == "bad_field"
    assert kind_of(frame(8, struct.pack(">I", 1) + b"a" * 1001)) == "bad_field"
    assert kind_of(frame(8, struct.pack(">I", 1) + b"a\x00b")) == "bad_field"
    assert parse_packet(frame(8, struct.pack(">I", 1) + b"a" * 1000)) == Text(1, "a" * 1000)
    assert kind_of(frame(7, b"\xc3")) == "bad_field"  # cut multi-byte sequence
    assert kind_of(frame(7, b"a" * 256)) == "bad_field"
    assert kind_of(frame(3, b"\x02")) == "bad_field"  # accepted flag must be 0/1
    assert kind_of(frame(3, b"\x00")) == "bad_field"  # refused without a reason
    assert kind_of(frame(3, b"\x01\xff")) == "bad_field"
    h = hello(nickname="abc").encode()
    assert kind_of(h[:-1] + b"\xff") == "bad_field"  # nickname not UTF-8
    assert kind_of(h[:-1] + b"\n") == "bad_field"  # control character in nickname
    for offset, bad in ((6, 0), (7, 0), (7, 33), (8, 0), (12, 0), (13, 0), (13, 9), (14, 4)):
        field_bytes = b"\x00\x00" if offset == 8 else bytes([bad])
        assert kind_of(patch(h, offset, field_bytes)) == "bad_field", offset
    long_nick = hello(nickname="n" * 64).encode()
    body = long_nick[HEADER_SIZE:-65] + b"\x41" + b"n" * 65
    assert kind_of(frame(2, body)) == "bad_field"  # 65-byte nickname


def test_oversized():
    assert kind_of(b"FC" + b"\x00" * (MAX_PACKET_SIZE - 1)) == "oversized"
    assert kind_of(b"\x00" * 100_000) == "oversized"
    with pytest.raises(PacketError) as info:
        parse_packet(b"\x00" * MAX_PACKET_SIZE)
    assert info.value.kind == "bad_magic"


def test_constructor_validation():
    bad_audio = [
        dict(chunks=[chunk([1, 2, 3, 2048])]),  # does not fit in 11 bits
        dict(chunks=[chunk([1, 2, 3, -1])]),
        dict(chunks=[chunk([1, 2, 3])]),  # wrong length
        dict(chunks=[np.zeros((2, 2), dtype=np.int64)]),
        dict(chunks=[np.zeros(4)]),  # float
        dict(chunks=[np.zeros(4, dtype=bool)]),
        dict(chunks=[[1, [2], 3, 4]]),  # ragged
        dict(chunks=[]),
        dict(chunks=[chunk([0] * 4)] * 5),
        dict(redundant=[chunk([0] * 4)] * 4),
        dict(redundant=[chunk([0] * 4)] * 3, first_chunk=2),  # chunk -1 does not exist
        dict(first_chunk=2**32 - 1, chunks=[chunk([0] * 4)] * 2),  # last index overflows u32
        dict(bits=0),
        dict(bits=33),
        dict(tokens_per_chunk=0),
        dict(seq=-1),
        dict(seq=2**32),
        dict(timestamp_ms=2**32),
        dict(flags=8),
        dict(seq=True),
        dict(chunks=np.zeros((1, 4), dtype=np.int64)),
    ]
    for kw in bad_audio:
        fields: dict[str, object] = dict(
            seq=0, first_chunk=5, bits=11, tokens_per_chunk=4, chunks=[chunk([0] * 4)], redundant=[]
        )
        fields.update(kw)
        with pytest.raises(PacketError) as info:
            AudioPacket(**fields)  # type: ignore[arg-type]
        assert info.value.kind == "bad_field", kw
    p = audio()
    p.chunks.append(chunk([5000, 0, 0, 0]))  # mutated after construction: encode re-validates
    with pytest.raises(PacketError):
        p.encode()

    bad_other = [
        lambda: hello(model_hash=b"\x00" * 32),
        lambda: hello(nickname="n" * 65),
        lambda: hello(nickname="a\tb"),
        lambda: hello(app_version="\udc80"),  # lone surrogate
        lambda: hello(bits=12.0),
        lambda: hello(redundancy=4),
        lambda: hello(chunks_per_packet=0),
        lambda: HelloAck(False),
        lambda: HelloAck(1),  # type: ignore[arg-type]
        lambda: Ping(2**32, 0),
        lambda: Ping(0, -1),
        lambda: Pong(0, 2**64, 0),
        lambda: Heartbeat(2**64),
        lambda: Bye("x" * 256),
        lambda: Bye(b"bytes"),  # type: ignore[arg-type]
        lambda: Text(0, "é" * 501),  # 1002 bytes
        lambda: Text(0, "bell\x07"),
    ]
    for make in bad_other:
        with pytest.raises(PacketError) as info:
            make()
        assert info.value.kind == "bad_field"
    Text(0, "é" * 500)  # exactly 1000 bytes is fine


def test_packet_error_kind_is_checked():
    with pytest.raises(AssertionError):
        PacketError("nonsense", "x")


# --------------------------------------------------------------------------- fuzzing


def check_parse(data: bytes) -> str:
    """Parse ``data`` (with :data:`GEOM`): a PacketError or a packet that re-encodes to exactly ``data``."""
    try:
        p = parse_packet(data, GEOM)
    except PacketError as exc:
        assert exc.kind in ERROR_KINDS
        return exc.kind
    assert p.encode() == data
    return "ok"


def test_fuzz_random_bytes():
    rng = np.random.default_rng(20240601)
    kinds: dict[str, int] = {}
    for i in range(20_000):
        size = int(rng.integers(0, 80))
        data = rng.integers(0, 256, size=size, dtype=np.uint8).tobytes()
        if i % 4 == 1:  # a plausible header so that the body parsers are reached
            head = struct.pack(">2sBBH", b"FC", 1, int(rng.integers(0, 10)), HEADER_SIZE + size)
            data = head + data
        elif i % 4 == 3:  # a compact AUDIO frame with a size that fits its counts (about one in four)
            counts = int(rng.integers(0, 256))
            n, r, echo = (counts & 7) + 1, (counts >> 3) & 3, bool(counts & 32)
            size = COMPACT_AUDIO_HEADER_SIZE + echo * COMPACT_ECHO_SIZE + (n + r) * 6 + int(rng.integers(-1, 2))
            data = b"FC\x02" + bytes([counts]) + rng.integers(0, 256, size=max(0, size - 4), dtype=np.uint8).tobytes()
        k = check_parse(data)
        kinds[k] = kinds.get(k, 0) + 1
    assert {"bad_magic", "bad_type", "bad_length", "bad_field", "truncated", "ok"} <= kinds.keys(), kinds


def test_fuzz_truncations_and_mutations():
    rng = np.random.default_rng(7)
    seen: set[str] = set()
    for data in samples():
        for cut in range(len(data)):
            assert check_parse(data[:cut]) == "truncated"
        for offset in range(len(data)):
            values = {0, 255, data[offset] ^ 0xFF, data[offset] ^ 1, data[offset] ^ 0x80}
            values |= {int(v) for v in rng.integers(0, 256, size=6)}
            for v in values - {data[offset]}:
                seen.add(check_parse(patch(data, offset, bytes([v]))))
        for length in [*range(0, len(data) + 12), MAX_PACKET_SIZE, MAX_PACKET_SIZE + 1, 0xFFFF]:
            seen.add(check_parse(with_length(data, length)))
            seen.add(check_parse(with_length(data, length) + b"\x00" * 3))
        for size in (1, 2, 5, 40):  # random tails
            seen.add(check_parse(data + rng.integers(0, 256, size=size, dtype=np.uint8).tobytes()))
    assert set(ERROR_KINDS) - {"oversized"} <= seen, seen


# --------------------------------------------------------------------------- compact AUDIO (frame version 2)


def test_known_compact_audio_bytes():
    g = AudioGeometry(12, 4)
    p = CompactAudioPacket(
        first_chunk=5,
        geometry=g,
        chunks=[np.array([0xABC, 0x123, 0x456, 0x789])],
        redundant=[np.array([0x001, 0x002, 0x003, 0xFFF])],
        flags=AudioFlags.SILENCE,
    )
    data = p.encode()
    expected = bytes.fromhex(
        "4643 02"  # magic "FC", frame version 2
        " 48"  # n - 1 = 0 | r = 1 << 3 | no echo | SILENCE << 6
        " 00000005"  # first chunk 5
        " 001002003fff"  # redundant chunk 4
        " abc123456789"  # primary chunk 5
    )
    assert data == expected
    assert len(data) == p.size == 20 == 33 - 13  # 13 bytes less than the same AUDIO packet
    assert parse_packet(data, g) == p
    # with an echo of the peer's chunk 0x1234 held 480 ms, and TALKSPURT_START
    q = CompactAudioPacket(7, g, [np.array([1, 2, 3, 4])], flags=AudioFlags.TALKSPURT_START,
                           echo_chunk=0x1234, echo_hold_ms=480)
    assert q.encode() == bytes.fromhex("4643 02 a0 00000007 1234 78 001002003004")
    assert parse_packet(q.encode(), g) == q


def test_compact_audio_interface_and_sizes():
    g = AudioGeometry(11, 4, chunk_ms=80.0)
    p = compact(6, 2, first=100, flags=AudioFlags.TALKSPURT_START, geometry=g)
    assert is_audio(p) and is_audio(audio()) and not is_audio(Ping(1, 2))
    assert (p.seq, p.bits, p.tokens_per_chunk, p.chunk_bytes) == (100, 11, 4, 6)
    assert p.timestamp_ms == 8000  # the media clock: chunk 100 x 80 ms
    assert CompactAudioPacket(2**32 - 1, g, [chunk([0] * 4)]).timestamp_ms == (2**32 - 1) * 80 % 2**32
    assert p.talkspurt_start and not p.silence
    assert [(i, red) for i, _, red in p.iter_chunks()] == [(98, True), (99, True)] + [(100 + k, False) for k in range(6)]
    assert COMPACT_AUDIO_HEADER_SIZE == 8 and COMPACT_ECHO_SIZE == 3
    for bits, cb in ((11, 6), (12, 6), (16, 8)):
        geo = AudioGeometry(bits, 4)
        for n in range(1, 9):
            for r in range(4):
                for echo in (False, True):
                    kw = dict(echo_chunk=3, echo_hold_ms=8) if echo else {}
                    q = compact(n, r, first=10, geometry=geo, **kw)
                    size = 8 + 3 * echo + (n + r) * cb
                    assert len(q.encode()) == q.size == compact_audio_packet_size(n, r, bits, echo=echo) == size
    # the low-bandwidth packet: 6 chunks of 4 x 12 bits in 44 bytes, 4 x 16 bits in 56 (SCTP pads to 4)
    assert compact_audio_packet_size(6, 0, 12) == 44 and compact_audio_packet_size(6, 0, 16) == 56
    # a compact frame never equals a framed one
    assert compact() != audio()
    assert AudioGeometry.from_hello(hello(bits=16, tokens_per_chunk=4)) == AudioGeometry(16, 4, 80.0)


def test_compact_audio_needs_the_geometry():
    data = compact(2, 1).encode()
    assert kind_of(data) == "bad_field"  # no geometry given
    with pytest.raises(PacketError, match="negotiated geometry"):
        parse_packet(data)
    assert isinstance(parse_packet(data, GEOM), CompactAudioPacket)
    # framed packets do not need it, and ignore it
    assert parse_packet(Ping(1, 2).encode(), GEOM) == Ping(1, 2)
    with pytest.raises(TypeError):
        parse_packet(data, (11, 4))  # type: ignore[arg-type]
    # another geometry reads the same bytes as another size: counted, never a crash
    with pytest.raises(PacketError) as info:
        parse_packet(data, AudioGeometry(16, 4))
    assert info.value.kind == "truncated"


def test_compact_audio_errors():
    data = compact(2, 1, first=5).encode()
    for cut in range(len(data)):
        assert kind_of_g(data[:cut]) == "truncated", cut
    assert kind_of_g(data + b"\x00") == "bad_length"
    assert kind_of_g(data[:3] + bytes([data[3] | 0x20]) + data[4:]) == "truncated"  # an echo flag: 3 bytes short
    # r = 1 redundant chunk before chunk 0 does not exist
    assert kind_of_g(data[:4] + struct.pack(">I", 0) + data[8:]) == "bad_field"
    # last index overflows u32
    assert kind_of_g(data[:4] + struct.pack(">I", 2**32 - 1) + data[8:]) == "bad_field"
    # non-zero padding bits (11 bits x 4: the last 4 bits of every chunk)
    assert kind_of_g(data[:-1] + bytes([data[-1] | 1])) == "bad_field"
    assert kind_of_g(data[:13] + bytes([data[13] | 8]) + data[14:]) == "bad_field"  # the redundant chunk's


def kind_of_g(data: bytes) -> str:
    with pytest.raises(PacketError) as info:
        parse_packet(data, GEOM)
    return info.value.kind


def test_compact_audio_constructor_validation():
    bad = [
        dict(chunks=[]),
        dict(chunks=[chunk([0] * 4)] * 9),
        dict(redundant=[chunk([0] * 4)] * 4),
        dict(redundant=[chunk([0] * 4)] * 3, first_chunk=2),
        dict(first_chunk=-1),
        dict(first_chunk=2**32 - 1, chunks=[chunk([0] * 4)] * 2),
        dict(chunks=[chunk([1, 2, 3, 2048])]),  # 11 bits
        dict(chunks=[chunk([1, 2, 3])]),
        dict(flags=4),  # only SILENCE and TALKSPURT_START fit
        dict(echo_chunk=2**16),
        dict(echo_chunk=-1),
        dict(echo_chunk=1, echo_hold_ms=1024),
        dict(echo_chunk=1, echo_hold_ms=6),  # not a multiple of 4 ms
        dict(echo_hold_ms=4),  # a hold without an echo
        dict(geometry=(11, 4)),
    ]
    for kw in bad:
        fields: dict[str, object] = dict(first_chunk=5, geometry=GEOM, chunks=[chunk([0] * 4)])
        fields.update(kw)
        with pytest.raises(PacketError) as info:
            CompactAudioPacket(**fields)  # type: ignore[arg-type]
        assert info.value.kind == "bad_field", kw
    for bad_geo in (dict(bits=0), dict(bits=33), dict(tokens_per_chunk=0), dict(chunk_ms=0), dict(chunk_ms="x")):
        fields = dict(bits=11, tokens_per_chunk=4)
        fields.update(bad_geo)
        with pytest.raises(PacketError) as info:
            AudioGeometry(**fields)  # type: ignore[arg-type]
        assert info.value.kind == "bad_field", bad_geo
    big = AudioGeometry(32, 255)
    full = [np.full(255, 1, dtype=np.int64)]
    p = CompactAudioPacket(3, big, full * 8, full * 3)  # 8 + 11 x 1020 bytes: too big
    with pytest.raises(PacketError) as info:
        p.encode()
    assert info.value.kind == "oversized"
    # HELLO: up to 8 chunks per packet (5..8 only in compact frames)
    assert parse_packet(hello(chunks_per_packet=8).encode()) == hello(chunks_per_packet=8)
    with pytest.raises(PacketError):
        hello(chunks_per_packet=9)
