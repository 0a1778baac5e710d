"""Signaling for :class:`app.transport.PeerTransport`: how the offer and answer SDP get to the other side.

Two ways, both optional and outside the transport:

(a) **Copy-paste codes** (:func:`encode_code` / :func:`decode_code`), for people who can exchange a chat message
    but cannot reach each other's TCP port. A code looks like ``FC1O:2q7Jd...`` (offer) or ``FC1A:...``
    (answer): ``FC`` + format version ``1`` + kind ``O``/``A`` + ``:``, then the body. The body is:

    * the SDP reduced to what a data-channel-only aiortc peer needs (the ``m=``/``c=`` lines, mid, sctp-port,
      max-message-size, candidates, ice-ufrag/pwd, the sha-256 fingerprint, setup). ``v=/o=/s=/t=`` lines,
      BUNDLE, msid-semantic and the sha-384/sha-512 fingerprints are dropped, candidate foundations are renamed
      ``1, 2, ...`` (only their equality matters), and the fingerprint's colons are removed (put back on decode);
    * raw-deflated (zlib, level 9) with a preset dictionary of SDP boilerplate (:data:`_ZDICT`), so the code
      mostly carries the random parts: ICE credentials, the fingerprint, addresses and ports;
    * followed by a CRC-32 over the format version, kind and compressed bytes (a wrong or edited character is
      always caught, including an edited kind letter);
    * written in **base58** (digits and letters without ``0 O I l``), preceded by its own length in two base58
      digits, so a cut-off code is reported as such. Base58 rather than base64/base85: chat apps turn ``_..._``
      and ``*...*`` into italics/bold and ``--`` into dashes, and a double click selects a whole alphanumeric word.

    A loopback offer (one candidate) is about 120 characters; every further candidate adds about 15-25.
    ``decode_code`` ignores whitespace and zero-width characters anywhere (chat apps wrap long words), surrounding
    quotes/backticks, and text before the code (``"here: FC1O:..."``).

(b) **Direct TCP** (:func:`serve` / :func:`connect`): one side listens, the other connects, sends the offer as one
    line of JSON (``{"app": "focalchat", "v": 1, "type": "offer", "sdp": ...}\\n``) and receives the answer the
    same way (or ``{"type": "error", "message": ...}``). asyncio streams on the transport's loop, timeouts on
    every step, and errors worded for people (``nobody is listening on host:port``). The listener accepts one
    peer and then stops listening. There is no authentication: listen on a LAN or a VPN address you trust.

From a thread other than the loop's: ``peer.run_coroutine(signaling.connect(host, port, peer))``.
"""

from __future__ import annotations

import asyncio
import json
import re
import socket
import struct
import zlib
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from app.transport import PeerTransport

FORMAT_VERSION = 1
PROTOCOL_VERSION = 1
APP_ID = "focalchat"
MAX_LINE = 64 * 1024  # bytes per JSON line on the TCP signaling connection
KINDS = {"offer": "O", "answer": "A"}
_KIND_OF_LETTER = {v: k for k, v in KINDS.items()}


class SignalingError(Exception):
    """The code or the signaling exchange is unusable; the message is meant for the user."""


# ---------------------------------------------------------------------------------------------------------------
# (a) copy-paste codes
# ---------------------------------------------------------------------------------------------------------------
# FROZEN for format version 1: changing a single byte makes FC1 codes undecodable. Bump FORMAT_VERSION instead.
# Deflate finds matches anywhere in the dictionary; the most frequent strings sit at the end (shortest distance).
_ZDICT = (
    "a=candidate:3 1 udp 16777215 10.0.0.1 9 typ relay raddr 0.0.0.0 rport 0\n"
    "a=candidate:2 1 udp 1694498815 192.0.2.1 9 typ srflx raddr 0.0.0.0 rport 0\n"
    "a=candidate:1 1 udp 2130706431 fd00::1 9 typ host\n"
    "a=candidate:1 1 udp 2130706431 192.168.1.1 9 typ host\n"
    "a=setup:active\n"
    "m=application 9 UDP/DTLS/SCTP webrtc-datachannel\n"
    "a=mid:0\n"
    "a=sctp-port:5000\n"
    "a=max-message-size:262144\n"
    "a=candidate:1 1 udp 2130706431 127.0.0.1 9 typ host\n"
    "a=end-of-candidates\n"
    "a=ice-ufrag:\n"
    "a=ice-pwd:\n"
    "a=fingerprint:sha-256 \n"
    "a=setup:actpass\n"
).encode("ascii")

_KEEP_PREFIXES = (
    "m=",
    "a=mid:",
    "a=sctp-port:",
    "a=max-message-size:",
    "a=candidate:",
    "a=end-of-candidates",
    "a=ice-ufrag:",
    "a=ice-pwd:",
    "a=ice-lite",
    "a=fingerprint:",
    "a=setup:",
)
_REQUIRED = ("m=application", "a=ice-ufrag:", "a=ice-pwd:", "a=fingerprint:", "a=setup:")
_SDP_HEADER = "v=0\r\no=- 0 0 IN IP4 0.0.0.0\r\ns=-\r\nt=0 0\r\n"

_B58 = "123456789ABCDEFGHJKLMNPQRSTUVWXYZabcdefghijkmnopqrstuvwxyz"
_B58_INDEX = {c: i for i, c in enumerate(_B58)}
_LEN_DIGITS = 2  # body length in base58 digits (up to 58**2 - 1 = 3363 characters)
_PREFIX_RE = re.compile(r"FC(\d+)([A-Za-z]):", re.IGNORECASE)
_INVISIBLE = dict.fromkeys(map(ord, "\u200b\u200c\u200d\u2060\ufeff\u00ad"))
_WRAPPERS = "`'\"<>\u201c\u201d\u2018\u2019\u00ab\u00bb()[]"


def _b58encode(data: bytes) -> str:
    n = int.from_bytes(data, "big")
    digits = []
    while n:
        n, r = divmod(n, 58)
        digits.append(_B58[r])
    zeros = len(data) - len(data.lstrip(b"\0"))
    return "1" * zeros + "".join(reversed(digits))


def _b58decode(text: str) -> bytes:
    n = 0
    for ch in text:
        n = n * 58 + _B58_INDEX[ch]
    zeros = len(text) - len(text.lstrip("1"))
    return b"\0" * zeros + n.to_bytes((n.bit_length() + 7) // 8, "big")


def _b58_fixed(n: int, width: int) -> str:
    out = []
    for _ in range(width):
        n, r = divmod(n, 58)
        out.append(_B58[r])
    return "".join(reversed(out))


def minimize_sdp(sdp: str) -> str:
    """The lines of ``sdp`` that a data-channel-only aiortc peer needs, ``\\n``-separated (see module doc)."""
    lines = [ln.strip() for ln in sdp.splitlines() if ln.strip()]
    media = [ln for ln in lines if ln.startswith("m=")]
    if len(media) != 1 or not media[0].startswith("m=application"):
        raise SignalingError("codes only carry a data-channel connection (exactly one m=application section)")
    fingerprints = [ln for ln in lines if ln.startswith("a=fingerprint:")]
    sha256 = [ln for ln in fingerprints if ln.lower().startswith("a=fingerprint:sha-256 ")]
    keep_fp = set(sha256[:1] or fingerprints)
    foundations: dict[str, str] = {}
    out = []
    for ln in lines:
        if not ln.startswith(_KEEP_PREFIXES):
            continue
        if ln.startswith("a=fingerprint:"):
            if ln not in keep_fp:
                continue
            algo, _, value = ln[len("a=fingerprint:") :].partition(" ")
            ln = f"a=fingerprint:{algo.lower()} {value.replace(':', '').upper()}"
        elif ln.startswith("m="):
            # aiortc writes the first candidate's address into m= and c=; expand_sdp() rebuilds both from it
            kind, _, rest = ln.partition(" ")
            ln = f"{kind} 9 {rest.partition(' ')[2]}"
        elif ln.startswith("a=candidate:"):
            foundation, _, rest = ln[len("a=candidate:") :].partition(" ")
            short = foundations.setdefault(foundation, str(len(foundations) + 1))
            ln = f"a=candidate:{short} {rest}"
        out.append(ln)
    text = "\n".join(out)
    missing = [r for r in _REQUIRED if r not in text]
    if missing:
        raise SignalingError(f"the SDP lacks {', '.join(missing)}")
    if "a=candidate:" not in text:
        raise SignalingError(
            "the SDP has no ICE candidates: this computer has no usable network address (is the network up?)"
        )
    return text


def expand_sdp(minimal: str) -> str:
    """Inverse of :func:`minimize_sdp`: a complete SDP (CRLF line ends) that aiortc accepts.

    The ``m=`` port and the ``c=`` line come from the first candidate, as aiortc writes them.
    """
    lines = minimal.split("\n")
    host, port = "0.0.0.0", "9"
    for ln in lines:
        if ln.startswith("a=candidate:"):
            parts = ln.split()
            if len(parts) >= 6:
                host, port = parts[4], parts[5]
            break
    out = []
    for ln in lines:
        if ln.startswith("a=fingerprint:"):
            algo, _, value = ln[len("a=fingerprint:") :].partition(" ")
            if ":" not in value and len(value) % 2 == 0:
                value = ":".join(value[i : i + 2] for i in range(0, len(value), 2))
            ln = f"a=fingerprint:{algo} {value}"
        elif ln.startswith("m="):
            kind, _, rest = ln.partition(" ")
            out.append(f"{kind} {port} {rest.partition(' ')[2]}")
            ln = f"c=IN {'IP6' if ':' in host else 'IP4'} {host}"
        elif ln.startswith("c="):
            continue
        out.append(ln)
    return _SDP_HEADER + "\r\n".join(out) + "\r\n"


def _split_fingerprint(minimal: str) -> tuple[str, bytes]:
    """Take the fingerprint's hex value out of the text as raw bytes (deflate would spend 8 bits per hex digit)."""
    lines = minimal.split("\n")
    for i, ln in enumerate(lines):
        if ln.startswith("a=fingerprint:"):
            algo, _, value = ln[len("a=fingerprint:") :].partition(" ")
            if re.fullmatch(r"(?:[0-9A-F]{2}){1,64}", value):
                lines[i] = f"a=fingerprint:{algo} "
                return "\n".join(lines), bytes.fromhex(value)
            break
    return minimal, b""


def _join_fingerprint(text: str, fp: bytes) -> str:
    if not fp:
        return text
    lines = text.split("\n")
    for i, ln in enumerate(lines):
        if ln.startswith("a=fingerprint:") and ln.endswith(" "):
            lines[i] = ln + fp.hex().upper()
            return "\n".join(lines)
    raise SignalingError("the code is damaged (fingerprint without its line)")


def _checksum(letter: str, comp: bytes) -> bytes:
    return struct.pack(">I", zlib.crc32(f"FC{FORMAT_VERSION}{letter}".encode() + comp))


def encode_code(sdp: str, kind: str) -> str:
    """A short text code carrying ``sdp`` (``kind`` is ``"offer"`` or ``"answer"``); see the module doc."""
    if kind not in KINDS:
        raise ValueError(f"kind must be 'offer' or 'answer', not {kind!r}")
    letter = KINDS[kind]
    text, fp = _split_fingerprint(minimize_sdp(sdp))
    co = zlib.compressobj(9, zlib.DEFLATED, -15, 9, zlib.Z_DEFAULT_STRATEGY, _ZDICT)
    blob = bytes([len(fp)]) + fp + co.compress(text.encode("utf-8")) + co.flush()
    body = _b58encode(blob + _checksum(letter, blob))
    if len(body) >= 58**_LEN_DIGITS:
        raise SignalingError("this connection description is too long for a code; use a direct connection")
    return f"FC{FORMAT_VERSION}{letter}:{_b58_fixed(len(body), _LEN_DIGITS)}{body}"


def _clean(text: str) -> str:
    if not isinstance(text, str):
        raise SignalingError("a code is text")
    text = "".join(text.translate(_INVISIBLE).split())  # every whitespace / zero-width character, anywhere
    return text.strip(_WRAPPERS)


def decode_code(text: str, expect: str | None = None) -> tuple[str, str]:
    """Decode a code made by :func:`encode_code`; returns ``(kind, sdp)``.

    ``expect`` (``"offer"``/``"answer"``) turns a code of the other kind into a :class:`SignalingError` that tells
    the user what went wrong. Whitespace, line breaks, zero-width characters, wrapping quotes and text before the
    code are ignored.
    """
    if expect is not None and expect not in KINDS:
        raise ValueError(f"expect must be 'offer', 'answer' or None, not {expect!r}")
    cleaned = _clean(text)
    if not cleaned:
        raise SignalingError("the code is empty: paste the whole code your peer sent (it starts with FC1)")
    matches = list(_PREFIX_RE.finditer(cleaned))
    if not matches:
        if re.fullmatch(r"FC\d*[OA]?", cleaned, re.IGNORECASE):
            raise SignalingError("the code is cut off right after its first characters; copy the whole code")
        if cleaned.startswith("v=0"):
            raise SignalingError("this is a raw SDP, not a FocalChat code (codes start with FC1O: or FC1A:)")
        raise SignalingError("this is not a FocalChat connection code (codes start with FC1O: or FC1A:)")
    if len(matches) > 1:
        raise SignalingError(f"the text contains {len(matches)} codes; paste only one")
    m = matches[0]
    version, letter = int(m.group(1)), m.group(2).upper()
    if version != FORMAT_VERSION:
        raise SignalingError(
            f"this code is format {version}, but this FocalChat reads format {FORMAT_VERSION}: "
            "both sides need compatible FocalChat versions"
        )
    if letter not in _KIND_OF_LETTER:
        raise SignalingError(f"unknown code kind {letter!r} (expected O for an offer or A for an answer)")
    kind = _KIND_OF_LETTER[letter]
    if expect is not None and kind != expect:
        if expect == "answer":
            raise SignalingError(
                "this is an offer code, but an answer code was expected: paste the code your peer sent back "
                "after entering your offer (not your own offer, and not a new offer from them)"
            )
        raise SignalingError(
            "this is an answer code, but an offer code was expected: the person who starts the call creates "
            "the offer; paste that one here"
        )
    rest = cleaned[m.end() :]
    bad = sorted({ch for ch in rest if ch not in _B58_INDEX})
    if bad:
        shown = " ".join(repr(c) for c in bad[:6])
        raise SignalingError(
            f"the code contains characters that cannot be in a code ({shown}); copy it again"
        )
    if len(rest) < _LEN_DIGITS:
        raise SignalingError("the code is cut off right after its prefix; copy the whole code")
    declared = 0
    for ch in rest[:_LEN_DIGITS]:
        declared = declared * 58 + _B58_INDEX[ch]
    body = rest[_LEN_DIGITS:]
    if len(body) < declared:
        raise SignalingError(
            f"the code is incomplete: {len(body)} of {declared} characters after the prefix arrived "
            "(it was cut off while copying); copy the whole code again"
        )
    if len(body) > declared:
        raise SignalingError(
            f"the code has {len(body) - declared} extra characters at the end; copy exactly the code, nothing after it"
        )
    blob = _b58decode(body)
    if len(blob) < 5 or blob[-4:] != _checksum(letter, blob[:-4]):
        raise SignalingError(
            "the code is damaged (checksum mismatch): a character was changed; copy it again"
        )
    blob = blob[:-4]
    fp_len = blob[0]
    try:
        if len(blob) < 1 + fp_len:
            raise zlib.error("too short")
        do = zlib.decompressobj(-15, _ZDICT)
        raw = do.decompress(blob[1 + fp_len :], 1 << 16)
        if do.unconsumed_tail or not do.eof:
            raise zlib.error("incomplete or oversized stream")
        minimal = _join_fingerprint(raw.decode("utf-8"), blob[1 : 1 + fp_len])
    except (zlib.error, UnicodeDecodeError) as exc:
        raise SignalingError(f"the code is damaged ({exc})") from exc
    missing = [r for r in _REQUIRED if r not in minimal]
    if missing:
        raise SignalingError(f"the code decodes, but the connection description lacks {', '.join(missing)}")
    return kind, expand_sdp(minimal)


# ---------------------------------------------------------------------------------------------------------------
# (b) direct TCP
# ---------------------------------------------------------------------------------------------------------------
def _hp(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def _dump(msg: dict[str, Any]) -> bytes:
    return (json.dumps({"app": APP_ID, "v": PROTOCOL_VERSION, **msg}, separators=(",", ":")) + "\n").encode()


def _parse(line: bytes, where: str) -> dict[str, Any]:
    """One JSON line from the other side; SignalingError if it is not a FocalChat message."""
    try:
        msg = json.loads(line.decode("utf-8"))
    except (UnicodeDecodeError, ValueError):
        raise SignalingError(
            f"{where} is not a FocalChat peer (it sent something that is not FocalChat JSON)"
        ) from None
    if not isinstance(msg, dict) or msg.get("app") != APP_ID or not isinstance(msg.get("type"), str):
        raise SignalingError(f"{where} is not a FocalChat peer (unexpected message)")
    if msg.get("v") != PROTOCOL_VERSION:
        raise SignalingError(
            f"{where} speaks signaling version {msg.get('v')!r}, this FocalChat speaks {PROTOCOL_VERSION}: "
            "both sides need compatible FocalChat versions"
        )
    return msg


async def _close_writer(writer: asyncio.StreamWriter) -> None:
    writer.close()
    try:
        await asyncio.wait_for(writer.wait_closed(), 1.0)
    except Exception:  # reset by peer, timeout: the connection is gone either way
        pass


async def request_answer(host: str, port: int, offer_sdp: str, *, timeout: float = 10.0) -> str:
    """Connect to a :func:`serve` listener, send ``offer_sdp``, return the answer SDP. Raises SignalingError."""
    where = _hp(host, port)
    try:
        reader, writer = await asyncio.wait_for(asyncio.open_connection(host, port, limit=MAX_LINE), timeout)
    except ConnectionRefusedError:
        raise SignalingError(
            f"nobody is listening on {where} (connection refused): start the other side first "
            "and check the address and port"
        ) from None
    except TimeoutError:
        raise SignalingError(
            f"could not reach {where} within {timeout:g} s (no reply: wrong address, firewall, or the computer is off)"
        ) from None
    except socket.gaierror as exc:
        raise SignalingError(f"unknown host {host!r} ({exc.strerror})") from None
    except OSError as exc:
        raise SignalingError(f"cannot connect to {where}: {exc.strerror or exc}") from None
    try:
        writer.write(_dump({"type": "offer", "sdp": offer_sdp}))
        await asyncio.wait_for(writer.drain(), timeout)
        line = await asyncio.wait_for(reader.readline(), timeout)
    except TimeoutError:
        raise SignalingError(f"connected to {where}, but it did not answer within {timeout:g} s") from None
    except (ValueError, asyncio.LimitOverrunError):
        raise SignalingError(
            f"{where} sent a reply longer than {MAX_LINE} bytes (not a FocalChat peer?)"
        ) from None
    except OSError as exc:
        raise SignalingError(f"the connection to {where} broke: {exc.strerror or exc}") from None
    finally:
        await _close_writer(writer)
    if not line:
        raise SignalingError(
            f"{where} closed the connection without answering (is it a FocalChat peer, and idle?)"
        )
    msg = _parse(line, where)
    if msg["type"] == "error":
        raise SignalingError(f"{where} refused the call: {msg.get('message', 'no reason given')}")
    if msg["type"] != "answer" or not isinstance(msg.get("sdp"), str):
        raise SignalingError(f"{where} sent an unexpected {msg['type']!r} message instead of an answer")
    return msg["sdp"]


async def connect(host: str, port: int, peer: PeerTransport, *, timeout: float = 10.0) -> str:
    """Offerer side: create the offer on ``peer``, exchange it over TCP, accept the answer. Returns the answer.

    Runs on the peer's loop (``peer.run_coroutine(connect(...))`` from another thread).
    """
    offer = await peer.acreate_offer()
    answer = await request_answer(host, port, offer, timeout=timeout)
    await peer.aaccept_answer(answer)
    return answer


@dataclass
class _Outcome:
    offer: str
    answer: str


class SignalingServer:
    """Listens on ``host:port`` (``port=0``: an ephemeral port, see :attr:`port`) for one peer's offer.

    ``answer_fn(offer_sdp) -> answer_sdp`` (a coroutine function, typically ``peer.aaccept_offer``) makes the
    answer. Connections that do not speak FocalChat (port scanners, browsers) get an error line and are
    ignored, up to ``max_bad`` of them; the first valid offer is answered, then the listener closes.
    """

    def __init__(self, host: str, port: int, *, io_timeout: float = 10.0, max_bad: int = 8) -> None:
        self.host = host
        self.requested_port = port
        self.io_timeout = io_timeout
        self.max_bad = max_bad
        self._server: asyncio.Server | None = None
        self._answer_fn: Callable[[str], Awaitable[str]] | None = None
        self._result: asyncio.Future[_Outcome] | None = None
        self._busy = asyncio.Lock()
        self._bad = 0

    @property
    def port(self) -> int:
        if self._server is None or not self._server.sockets:
            raise SignalingError("the signaling server is not listening")
        return self._server.sockets[0].getsockname()[1]

    async def start(self) -> SignalingServer:
        try:
            self._server = await asyncio.start_server(
                self._handle, self.host, self.requested_port, limit=MAX_LINE
            )
        except OSError as exc:
            raise SignalingError(
                f"cannot listen on {_hp(self.host, self.requested_port)}: {exc.strerror or exc}"
                + (" (another program uses this port)" if exc.errno in (98, 48, 10048) else "")
            ) from None
        self._result = asyncio.get_running_loop().create_future()
        return self

    async def answer_one(self, answer_fn: Callable[[str], Awaitable[str]], *, timeout: float = 60.0) -> str:
        """Wait up to ``timeout`` s for a peer, answer its offer with ``answer_fn``; returns the offer SDP."""
        if self._server is None or self._result is None:
            await self.start()
        assert self._result is not None
        self._answer_fn = answer_fn
        try:
            outcome = await asyncio.wait_for(asyncio.shield(self._result), timeout)
        except TimeoutError:
            raise SignalingError(
                f"nobody connected to {_hp(self.host, self.port)} within {timeout:g} s"
            ) from None
        finally:
            self.close()
        return outcome.offer

    def close(self) -> None:
        if self._server is not None:
            self._server.close()

    async def __aenter__(self) -> SignalingServer:
        return await self.start()

    async def __aexit__(self, *exc: object) -> None:
        self.close()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        peername = writer.get_extra_info("peername")
        where = _hp(str(peername[0]), int(peername[1])) if peername else "the peer"
        try:
            if self._result is None or self._result.done() or self._busy.locked():
                writer.write(_dump({"type": "error", "message": "busy: this FocalChat already has a peer"}))
                await asyncio.wait_for(writer.drain(), self.io_timeout)
                return
            async with self._busy:
                await self._handle_offer(reader, writer, where)
        except (OSError, TimeoutError):
            pass  # the caller gave up or vanished; keep listening
        finally:
            await _close_writer(writer)

    async def _handle_offer(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, where: str
    ) -> None:
        assert self._result is not None
        try:
            line = await asyncio.wait_for(reader.readline(), self.io_timeout)
            msg = _parse(line, where)
            if msg["type"] != "offer" or not isinstance(msg.get("sdp"), str):
                raise SignalingError(f"{where} sent {msg['type']!r} instead of an offer")
        except (SignalingError, ValueError, asyncio.LimitOverrunError) as exc:
            # not a (compatible) FocalChat peer: tell it, and wait for the real one
            self._bad += 1
            reason = str(exc) if isinstance(exc, SignalingError) else "message too long"
            writer.write(_dump({"type": "error", "message": reason}))
            await asyncio.wait_for(writer.drain(), self.io_timeout)
            if self._bad >= self.max_bad and not self._result.done():
                self._result.set_exception(SignalingError(f"gave up after {self._bad} invalid connections"))
            return
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.io_timeout
        # the offer may arrive before answer_one() was called
        while self._answer_fn is None and loop.time() < deadline:
            await asyncio.sleep(0.01)
        if self._answer_fn is None:
            raise TimeoutError
        try:
            answer = await asyncio.wait_for(self._answer_fn(msg["sdp"]), self.io_timeout)
        except Exception as exc:
            writer.write(_dump({"type": "error", "message": f"cannot use your offer: {exc}"}))
            await asyncio.wait_for(writer.drain(), self.io_timeout)
            if not self._result.done():
                self._result.set_exception(SignalingError(f"the offer from {where} is not usable: {exc}"))
            return
        writer.write(_dump({"type": "answer", "sdp": answer}))
        await asyncio.wait_for(writer.drain(), self.io_timeout)
        if not self._result.done():
            self._result.set_result(_Outcome(offer=msg["sdp"], answer=answer))


async def serve(
    host: str,
    port: int,
    peer: PeerTransport,
    *,
    timeout: float = 60.0,
    on_listening: Callable[[int], None] | None = None,
) -> str:
    """Answerer side: listen on ``host:port``, answer the first peer's offer with ``peer``. Returns the offer.

    ``on_listening(port)`` is called once listening (useful with ``port=0``). Runs on the peer's loop.
    """
    server = await SignalingServer(host, port).start()
    try:
        if on_listening is not None:
            on_listening(server.port)
        return await server.answer_one(peer.aaccept_offer, timeout=timeout)
    finally:
        server.close()


__all__ = [
    "FORMAT_VERSION",
    "PROTOCOL_VERSION",
    "SignalingError",
    "SignalingServer",
    "connect",
    "decode_code",
    "encode_code",
    "expand_sdp",
    "minimize_sdp",
    "request_answer",
    "serve",
]
