"""WebRTC data-channel transport for codec packets (aiortc on its own asyncio thread).

Layout (aiortc-style split):

* :class:`TransportThread` owns one asyncio event loop running in a dedicated thread. The UI (Qt) thread and the
  audio (PortAudio) threads never run asyncio; they talk to the loop with :meth:`TransportThread.call_soon`
  (``loop.call_soon_threadsafe``) and :meth:`TransportThread.run_coroutine` (``asyncio.run_coroutine_threadsafe``).
  See docs: platform-notes section 4.4 (a UI stall under qasync becomes a network stall; a thread does not).
* :class:`PeerTransport` wraps one ``RTCPeerConnection`` and one data channel. It knows nothing about how the
  SDP travels: :mod:`app.signaling` has the copy-paste codes and the direct TCP exchange.

Threading contract of :class:`PeerTransport`:

* ``send(data)`` may be called from **any** thread. It never blocks: it queues the packet onto the loop with
  ``call_soon_threadsafe`` or drops it and counts the drop (channel not open, too many sends queued because the
  loop is stalled, or more than ``max_buffered_bytes`` waiting in the SCTP send buffer).
* ``on_message(bytes)`` and ``on_event(event)`` callbacks run **on the loop thread**: keep them short and hand
  the data over (Qt signal, ``queue.Queue``, jitter buffer with its own lock). Without ``on_message``, received
  packets go to the bounded ``incoming`` queue (``queue.Queue``; overflow is counted in ``receive_drops``).
* State changes arrive as small frozen dataclasses (:class:`TransportEvent` subclasses, each with a
  ``time.monotonic()`` timestamp ``t`` and the transport's ``peer`` name) in the thread-safe ``events`` queue
  and through ``on_event``.
* ``create_offer`` / ``accept_offer`` / ``accept_answer`` / ``close`` block the calling thread until the loop has
  done the work; the ``a``-prefixed coroutines (``acreate_offer`` ...) are the same for code already on the loop.
  Calling a blocking method from the loop thread raises ``RuntimeError`` instead of deadlocking.

Data channel: label ``"focalchat"``, **negotiated out of band** (``negotiated=True, id=0``), ``ordered=False,
maxRetransmits=0``. Both sides create the channel themselves, so there is no DCEP open handshake (one round trip
less, no ``datachannel`` event race) and the channel opens as soon as the SCTP association is up. The price is
that both sides must agree on id and parameters, which is fine as both sides run this code.

Connect timeout: the clock starts when a side has both descriptions (the offerer in ``accept_answer``, the
answerer in ``accept_offer``), not while a person is still relaying a copy-paste code. aiortc itself never
reports ``failed`` when there is no usable candidate pair (it stays in ``new``/``checking``; platform-notes 3.1),
so the transport emits :class:`TransportFailed` with reason ``"timeout"`` after ``connect_timeout`` seconds
(default 10) and closes the connection. With copy-paste codes the answerer's clock also covers the time the
answer code takes to reach the offerer, so give the answerer a longer ``connect_timeout`` there.

On-wire cost (measured on loopback with the DTLS transport's counters, aiortc 1.16, which negotiates
DTLS 1.2 ``ECDHE-ECDSA-AES128-GCM-SHA256``): one data-channel message of P bytes is one UDP packet of
``P + 16 (SCTP DATA chunk header) + 12 (SCTP common header) + 37 (DTLS 1.2 record: 13 header + 8 explicit
nonce + 16 GCM tag)`` bytes, plus 28 bytes of IPv4+UDP header (48 with IPv6); P is padded to a multiple of 4.
aiortc does not bundle chunks and SACKs **every** DATA packet at once (no delayed SACK), so every message
also costs the reverse direction one 65-byte (UDP payload) SACK packet, i.e. 93 bytes at the IPv4 level.
An 8-byte packet every 80 ms therefore costs 101 B one way + 93 B back = 194 B per message, about 10 kbps
upstream and 9.3 kbps downstream; in a two-way call each direction carries its own DATA plus the SACKs for the
other side's: about 19.4 kbps each way. ICE consent checks (STUN, every ~5 s) are not in the DTLS counters.
:func:`wire_bytes_per_message` is this model; :attr:`TransportStats.wire` has the measured counters.

SCTP acknowledgement policy (``PeerTransport(sack_policy=...)``; see :func:`install_sack_policy`):

* ``"immediate"`` (default): stock aiortc, one SACK packet per DATA packet received.
* ``"delayed"``: RFC 4960 section 6.2 delayed SACK: acknowledge at least every second DATA packet, and
  otherwise when the delayed-ack timer (``sack_delay_s``, default 200 ms, at most 500 ms) fires; at once
  when a packet shows a gap or a duplicate.
* ``"bundled"``: delayed, and a pending SACK rides in the next outgoing packet that carries DATA (or
  FORWARD TSN) instead of a packet of its own (RFC 4960 section 6.10: control chunks first). In a two-way
  call where each side sends within the delay, every SACK costs 16 bytes instead of a 93-byte packet. To get
  there when both sides send at the same rate (send-time jitter then often lets two of the peer's packets in
  before our next one), the "every second packet" rule (a SHOULD) is relaxed to every
  :data:`BUNDLED_ACK_EVERY` packets; the timer (the MUST) still bounds every SACK's delay.

The policy is a per-connection patch of aiortc internals (the instance's class is swapped for a subclass of
``RTCSctpTransport``), checked against :data:`SACK_PATCH_VERIFIED_AIORTC`: another aiortc release makes
``PeerTransport`` refuse a non-immediate policy with a :class:`TransportError` instead of misbehaving
silently. The peer needs no patch: a stock aiortc parses bundled packets (``parse_packet`` loops over
chunks) and its retransmission timer (RTO at least 1 s) never fires on a SACK delayed by at most 500 ms;
with ``maxRetransmits=0`` a late SACK only delays the growth of the congestion window, which a few small
messages in flight never fill.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import inspect
import logging
import math
import queue
import struct
import threading
import time
from collections.abc import Callable, Coroutine, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar

import aioice.ice
import aiortc
import aiortc.rtcsctptransport as _sctp_mod
from aiortc import RTCConfiguration, RTCIceServer, RTCPeerConnection, RTCSessionDescription
from aiortc.rtcsctptransport import RTCSctpTransport

log = logging.getLogger(__name__)

T = TypeVar("T")

CHANNEL_LABEL = "focalchat"
CHANNEL_ID = 0  # negotiated out of band: both sides create stream 0 themselves
DEFAULT_CONNECT_TIMEOUT = 10.0
FAIL_HINT = (
    "ICE failed: no route between the peers; check both are on the same network "
    "or configure a STUN/TURN server"
)

# --- on-wire overhead model (see module docstring; constants measured with aiortc 1.16 on loopback) ---
IPV4_HEADER = 20
IPV6_HEADER = 40
UDP_HEADER = 8
DTLS12_GCM_RECORD = 37  # 13 record header + 8 explicit nonce + 16 AES-GCM tag
SCTP_COMMON_HEADER = 12
SCTP_DATA_CHUNK_HEADER = 16
SCTP_SACK_CHUNK = 16  # without gap blocks / duplicate TSNs


def wire_bytes_per_message(payload_len: int, *, ipv6: bool = False) -> tuple[int, int]:
    """IP-level bytes of (the DATA packet one way, the SACK packet back) for one data-channel message."""
    ip = (IPV6_HEADER if ipv6 else IPV4_HEADER) + UDP_HEADER
    padded = (payload_len + 3) // 4 * 4
    data = ip + DTLS12_GCM_RECORD + SCTP_COMMON_HEADER + SCTP_DATA_CHUNK_HEADER + padded
    sack = ip + DTLS12_GCM_RECORD + SCTP_COMMON_HEADER + SCTP_SACK_CHUNK
    return data, sack


def sack_bytes_per_message(
    policy: str,
    *,
    recv_interval_s: float,
    send_interval_s: float | None = None,
    sack_delay_s: float | None = None,
    ipv6: bool = False,
) -> float:
    """Modelled IP-level bytes this side spends acknowledging one DATA packet it receives.

    ``recv_interval_s``: time between the peer's packets; ``send_interval_s``: between ours (None: we send
    nothing). ``immediate``: one SACK packet each. ``delayed``: a SACK packet per packet when they come further
    apart than the delay, else one per :data:`DELAYED_ACK_EVERY`. ``bundled``: a SACK chunk (16 bytes) in our
    next DATA packet, one per packet of ours, when that leaves within the delay (with both sides' packets
    evenly spaced, a fraction ``delay / send_interval`` of them); otherwise a SACK packet when the timer fires
    or :data:`BUNDLED_ACK_EVERY` packets are unacknowledged. Losses (gap reports) are not modelled.
    """
    _, sack_packet = wire_bytes_per_message(0, ipv6=ipv6)
    if policy == "immediate":
        return float(sack_packet)
    if policy not in SACK_POLICIES:
        raise ValueError(f"sack_policy must be one of {SACK_POLICIES}, got {policy!r}")
    delay = DEFAULT_SACK_DELAY if sack_delay_s is None else sack_delay_s
    every = DELAYED_ACK_EVERY if policy == "delayed" else BUNDLED_ACK_EVERY
    # a SACK packet when the timer (started by the first unacknowledged packet) fires or `every` packets came
    covered = min(every, 1 + math.floor(delay / recv_interval_s + 1e-9)) if recv_interval_s > 0 else every
    standalone = sack_packet / covered
    if policy == "delayed" or send_interval_s is None or send_interval_s <= 0:
        return standalone
    share = min(1.0, delay / send_interval_s)  # our next packet leaves before the timer fires
    bundled = SCTP_SACK_CHUNK * min(1.0, recv_interval_s / send_interval_s)  # one SACK chunk per packet of ours
    return share * bundled + (1.0 - share) * standalone


class TransportError(RuntimeError):
    """A transport operation failed (bad SDP, wrong call order, closed transport...)."""


# ---------------------------------------------------------------------------------------------------------------
# SCTP acknowledgement policy: an opt-in, per-connection patch of aiortc's RTCSctpTransport
# ---------------------------------------------------------------------------------------------------------------
SACK_POLICIES = ("immediate", "delayed", "bundled")
DEFAULT_SACK_DELAY = 0.2
#: RFC 4960 section 6.2: an acknowledgement MUST NOT be delayed by more than 500 ms.
MAX_SACK_DELAY = 0.5
#: aiortc releases (major.minor) whose RTCSctpTransport internals the SACK patch was checked against.
SACK_PATCH_VERIFIED_AIORTC = ("1.16",)
#: A pending SACK is bundled only if the SCTP packet stays this small (aiortc's DATA fragments are <= 1200).
MAX_BUNDLED_SCTP_PACKET = 1200
#: "delayed" acknowledges at least every second DATA packet (RFC 4960 6.2, a SHOULD); "bundled" lets a SACK
#: wait for our next outgoing DATA (or the timer) until this many packets are unacknowledged.
DELAYED_ACK_EVERY = 2
BUNDLED_ACK_EVERY = 4

# what the patch uses of aiortc: methods it overrides or calls, and instance attributes it reads
_SCTP_METHODS = ("_handle_data", "_send_sack", "_send_chunk", "_receive_data_chunk", "_receive_forward_tsn_chunk",
                 "_set_state")
_SCTP_ATTRIBUTES = ("_sack_needed", "_sack_duplicates", "_sack_misordered", "_association_state", "_local_port",
                    "_remote_port", "_remote_verification_tag", "_loop")
_SCTP_MODULE_NAMES = ("DataChunk", "ForwardTsnChunk", "SackChunk", "crc32c", "parse_packet")


def sack_patch_problem() -> str | None:
    """Why the SACK policy patch cannot be used with the installed aiortc (None: it can)."""
    version = getattr(aiortc, "__version__", "?")
    if ".".join(version.split(".")[:2]) not in SACK_PATCH_VERIFIED_AIORTC:
        return (
            f"sack_policy other than 'immediate' patches aiortc internals checked with aiortc "
            f"{', '.join(SACK_PATCH_VERIFIED_AIORTC)}.x, but aiortc {version} is installed: re-check "
            "app/transport.py (_PolicySctpTransport) against it and extend SACK_PATCH_VERIFIED_AIORTC, "
            "or use sack_policy='immediate'"
        )
    missing = [m for m in _SCTP_METHODS if not callable(getattr(RTCSctpTransport, m, None))]
    missing += [n for n in _SCTP_MODULE_NAMES if not hasattr(_sctp_mod, n)]
    if missing:
        return f"aiortc {version} lacks what the SACK policy patch needs: {', '.join(missing)}"
    try:  # the patch defers the SACK that _handle_data sends through _send_sack
        source = inspect.getsource(RTCSctpTransport._handle_data)
    except (OSError, TypeError):
        source = None
    if source is not None and "self._send_sack()" not in source:
        return f"aiortc {version}: RTCSctpTransport._handle_data no longer sends SACKs through _send_sack"
    return None


def serialize_bundled_packet(
    source_port: int, destination_port: int, verification_tag: int, chunks: Sequence[Any]
) -> bytes:
    """One SCTP packet with several chunks (RFC 4960 section 3): the common header, then every chunk padded
    to 4 bytes (aiortc's ``bytes(chunk)`` pads), CRC32c over the whole packet with the checksum field zeroed.
    aiortc's own ``serialize_packet`` takes one chunk; its ``parse_packet`` reads any number."""
    if not chunks:
        raise ValueError("an SCTP packet needs at least one chunk")
    header = struct.pack("!HHL", source_port, destination_port, verification_tag)
    body = b"".join(bytes(c) for c in chunks)
    checksum = _sctp_mod.crc32c(header + b"\x00\x00\x00\x00" + body)
    return header + struct.pack("<L", checksum) + body


@dataclass(frozen=True)
class SackStats:
    """What the SACK policy patch did on this connection (acknowledgements this side sent)."""

    policy: str
    delay_s: float
    standalone: int  # SACKs in packets of their own (timer, every Nth packet, gaps, duplicates...)
    bundled: int  # SACKs that rode in a packet with DATA or FORWARD TSN
    timer: int  # standalone SACKs sent because the delayed-ack timer fired
    forced: int  # standalone SACKs sent at once: a 2nd (bundled: 4th) unacknowledged packet, a gap, a duplicate


class _PolicySctpTransport(RTCSctpTransport):
    """``RTCSctpTransport`` with delayed and bundled SACKs. Never constructed: :func:`install_sack_policy`
    swaps the class of an existing instance (no state is added to aiortc's own, only ``_fc_*`` attributes).

    aiortc's ``_handle_data`` handles every chunk of a received packet, then calls ``_send_sack`` if a DATA or
    FORWARD TSN chunk set ``_sack_needed``. Here ``_send_sack`` decides: send now (stock code) or start the
    delayed-ack timer; ``_send_chunk`` puts the pending SACK in front of an outgoing DATA / FORWARD TSN chunk.
    The SACK itself is always built by aiortc's ``_send_sack`` (captured instead of sent when bundling)."""

    _fc_policy: str
    _fc_delay: float
    _fc_timer: asyncio.TimerHandle | None
    _fc_pending: int  # DATA-carrying packets received since the last SACK
    _fc_new_data: bool  # the packet being handled carried DATA / FORWARD TSN
    _fc_capture: list[Any] | None
    _fc_counts: dict[str, int]

    def _fc_setup(self, policy: str, delay: float) -> None:
        self._fc_policy = policy
        self._fc_delay = delay
        self._fc_timer = None
        self._fc_pending = 0
        self._fc_new_data = False
        self._fc_capture = None
        self._fc_counts = {"standalone": 0, "bundled": 0, "timer": 0, "forced": 0}

    def _fc_stats(self) -> SackStats:
        c = self._fc_counts
        return SackStats(self._fc_policy, self._fc_delay, c["standalone"], c["bundled"], c["timer"], c["forced"])

    def _fc_established(self) -> bool:
        return self._association_state == RTCSctpTransport.State.ESTABLISHED

    def _fc_cancel_timer(self) -> None:
        if self._fc_timer is not None:
            self._fc_timer.cancel()
            self._fc_timer = None

    # --- receiving
    async def _receive_data_chunk(self, chunk: Any) -> None:
        self._fc_new_data = True
        await super()._receive_data_chunk(chunk)

    async def _receive_forward_tsn_chunk(self, chunk: Any) -> None:
        self._fc_new_data = True
        await super()._receive_forward_tsn_chunk(chunk)

    async def _send_sack(self) -> None:
        """Called by ``_handle_data`` after each packet that left a SACK pending."""
        if self._fc_capture is not None:  # building a SACK to bundle (see _fc_take_sack)
            await super()._send_sack()
            return
        if self._fc_new_data:
            self._fc_new_data = False
            self._fc_pending += 1
        every = BUNDLED_ACK_EVERY if self._fc_policy == "bundled" else DELAYED_ACK_EVERY
        if (
            not self._fc_established()
            or self._fc_pending >= every  # RFC 4960 6.2: at least every second packet (relaxed when bundling)
            or self._sack_duplicates  # a duplicate: at once
            or self._sack_misordered  # a gap: at once (lets the sender abandon/retransmit early)
        ):
            self._fc_counts["forced"] += 1
            await self._fc_send_now()
        elif self._fc_timer is None:
            self._fc_timer = self._loop.call_later(self._fc_delay, self._fc_timer_fired)

    async def _fc_send_now(self) -> None:
        self._fc_cancel_timer()
        self._fc_pending = 0
        self._fc_counts["standalone"] += 1
        await super()._send_sack()

    def _fc_timer_fired(self) -> None:
        self._fc_timer = None
        task = asyncio.ensure_future(self._fc_timer_send())
        task.add_done_callback(_ignore_send_error)

    async def _fc_timer_send(self) -> None:
        if self._sack_needed and self._fc_established():  # not bundled away meanwhile
            self._fc_counts["timer"] += 1
            await self._fc_send_now()

    async def _fc_take_sack(self) -> Any:
        """Build the pending SACK with aiortc's code (which also clears ``_sack_needed`` and the duplicates)
        without sending it. ``_send_sack`` only awaits ``_send_chunk``, which returns at once while capturing,
        so nothing else runs in between."""
        self._fc_capture = []
        try:
            await RTCSctpTransport._send_sack(self)
            captured = self._fc_capture
        finally:
            self._fc_capture = None
        self._fc_cancel_timer()
        self._fc_pending = 0
        if len(captured) != 1 or not isinstance(captured[0], _sctp_mod.SackChunk):
            raise TransportError(f"aiortc's _send_sack sent {captured!r}, expected one SACK chunk")
        return captured[0]

    # --- sending
    async def _send_chunk(self, chunk: Any) -> None:
        if self._fc_capture is not None:
            self._fc_capture.append(chunk)
            return
        if (
            self._fc_policy == "bundled"
            and self._sack_needed
            and self._fc_established()
            and isinstance(chunk, (_sctp_mod.DataChunk, _sctp_mod.ForwardTsnChunk))
        ):
            sack = await self._fc_take_sack()
            packet = serialize_bundled_packet(
                self._local_port, self._remote_port, self._remote_verification_tag, [sack, chunk]
            )
            if len(packet) <= MAX_BUNDLED_SCTP_PACKET:
                self._fc_counts["bundled"] += 1
                await self.transport._send_data(packet)
                return
            self._fc_counts["standalone"] += 1
            await super()._send_chunk(sack)
        await super()._send_chunk(chunk)

    def _set_state(self, state: Any) -> None:
        super()._set_state(state)
        if not self._fc_established():
            self._fc_cancel_timer()


def _ignore_send_error(task: asyncio.Future[Any]) -> None:
    if not task.cancelled() and task.exception() is not None:
        log.debug("delayed SACK not sent: %r", task.exception())


def _check_sack_policy(policy: str, delay_s: float) -> None:
    if policy not in SACK_POLICIES:
        raise ValueError(f"sack_policy must be one of {SACK_POLICIES}, got {policy!r}")
    if not 0 < delay_s <= MAX_SACK_DELAY:
        raise ValueError(f"sack_delay_s must be in (0, {MAX_SACK_DELAY}] s (RFC 4960 6.2), got {delay_s}")
    if policy != "immediate":
        problem = sack_patch_problem()
        if problem is not None:
            raise TransportError(problem)


def install_sack_policy(sctp: RTCSctpTransport, policy: str, delay_s: float = DEFAULT_SACK_DELAY) -> None:
    """Give one aiortc SCTP transport the ``policy`` (see the module docstring); on its loop thread.

    ``"immediate"`` undoes the patch (:func:`uninstall_sack_policy`). Raises :class:`TransportError` if the
    installed aiortc is not one the patch was checked against, ``ValueError`` for a bad policy or delay.
    """
    _check_sack_policy(policy, delay_s)
    if policy == "immediate":
        uninstall_sack_policy(sctp)
        return
    if type(sctp) is _PolicySctpTransport:
        sctp._fc_policy, sctp._fc_delay = policy, delay_s
        return
    if type(sctp) is not RTCSctpTransport:
        raise TransportError(f"cannot patch an SCTP transport of class {type(sctp).__qualname__}")
    missing = [a for a in _SCTP_ATTRIBUTES if not hasattr(sctp, a)]
    if missing:
        raise TransportError(f"aiortc's RTCSctpTransport lacks {', '.join(missing)}: cannot patch the SACK policy")
    sctp.__class__ = _PolicySctpTransport
    sctp._fc_setup(policy, delay_s)


def uninstall_sack_policy(sctp: RTCSctpTransport) -> None:
    """Give the transport back its stock class (on its loop thread); a pending SACK is sent at once."""
    if type(sctp) is not _PolicySctpTransport:
        return
    sctp._fc_cancel_timer()
    pending = sctp._sack_needed and sctp._fc_established()
    sctp.__class__ = RTCSctpTransport
    if pending:
        task = asyncio.ensure_future(sctp._send_sack())
        task.add_done_callback(_ignore_send_error)


def sack_policy_of(sctp: RTCSctpTransport | None) -> SackStats | None:
    """The patch's counters for this SCTP transport (None when it runs stock aiortc)."""
    return sctp._fc_stats() if type(sctp) is _PolicySctpTransport else None


# ---------------------------------------------------------------------------------------------------------------
# Loopback-only ICE (tests and ``--local``)
# ---------------------------------------------------------------------------------------------------------------
_loopback_lock = threading.Lock()
_loopback_depth = 0
_original_get_host_addresses: Callable[..., list[str]] | None = None


def _loopback_host_addresses(use_ipv4: bool, use_ipv6: bool) -> list[str]:
    """Stand-in for ``aioice.ice.get_host_addresses``: offer only the IPv4 loopback address.

    aioice calls it with keywords (``use_ipv4=..., use_ipv6=...``), so the parameter names must stay.
    """
    return ["127.0.0.1"] if use_ipv4 else []


def enable_loopback_candidates() -> None:
    """Make ICE gather only ``127.0.0.1`` host candidates (process-wide, reference counted).

    aioice normally skips 127.0.0.1 and offers every other interface address. This swaps
    ``aioice.ice.get_host_addresses`` (looked up at call time by ``Connection.gather_candidates``) for
    :func:`_loopback_host_addresses`. It only matters while candidates are gathered, i.e. during
    ``create_offer`` / ``accept_offer``. Undo with :func:`disable_loopback_candidates`; nested enables are
    counted and the original function comes back when the count drops to zero.
    """
    global _loopback_depth, _original_get_host_addresses
    with _loopback_lock:
        if _loopback_depth == 0:
            original = aioice.ice.get_host_addresses
            params = set(inspect.signature(original).parameters)
            # if aioice changed this API, the stand-in would break gathering: refuse instead
            if not {"use_ipv4", "use_ipv6"} <= params:
                raise TransportError(
                    f"aioice.ice.get_host_addresses has unexpected parameters {sorted(params)}"
                )
            _original_get_host_addresses = original
            aioice.ice.get_host_addresses = _loopback_host_addresses
        _loopback_depth += 1


def disable_loopback_candidates() -> None:
    """Undo one :func:`enable_loopback_candidates` (restores aioice's function after the last one)."""
    global _loopback_depth, _original_get_host_addresses
    with _loopback_lock:
        if _loopback_depth == 0:
            return
        _loopback_depth -= 1
        if _loopback_depth == 0 and _original_get_host_addresses is not None:
            aioice.ice.get_host_addresses = _original_get_host_addresses
            _original_get_host_addresses = None


def loopback_candidates_enabled() -> bool:
    return aioice.ice.get_host_addresses is _loopback_host_addresses


@contextlib.contextmanager
def allow_loopback_candidates() -> Iterator[None]:
    """Context manager: loopback-only ICE host candidates inside the block (see :func:`enable_loopback_candidates`)."""
    enable_loopback_candidates()
    try:
        yield
    finally:
        disable_loopback_candidates()


# ---------------------------------------------------------------------------------------------------------------
# Events and counters
# ---------------------------------------------------------------------------------------------------------------
@dataclass(frozen=True, kw_only=True)
class TransportEvent:
    """Base of every state event. ``t`` is ``time.monotonic()`` when it happened; ``peer`` the transport's name."""

    peer: str
    t: float = field(default_factory=time.monotonic)


@dataclass(frozen=True, kw_only=True)
class SignalingStateChanged(TransportEvent):
    state: str  # stable, have-local-offer, have-remote-offer, closed


@dataclass(frozen=True, kw_only=True)
class IceGatheringStateChanged(TransportEvent):
    state: str  # new, gathering, complete


@dataclass(frozen=True, kw_only=True)
class IceConnectionStateChanged(TransportEvent):
    state: str  # new, checking, completed, failed, closed


@dataclass(frozen=True, kw_only=True)
class DtlsStateChanged(TransportEvent):
    state: str  # new, connecting, connected, closed, failed


@dataclass(frozen=True, kw_only=True)
class ConnectionStateChanged(TransportEvent):
    state: str  # new, connecting, connected, failed, closed (RTCPeerConnection.connectionState)


@dataclass(frozen=True, kw_only=True)
class ChannelOpen(TransportEvent):
    setup_s: float  # seconds from "both descriptions known" (connect clock start) to channel open


@dataclass(frozen=True, kw_only=True)
class ChannelClosed(TransportEvent):
    pass


@dataclass(frozen=True, kw_only=True)
class TransportFailed(TransportEvent):
    reason: str  # "timeout", "ice-failed", "connection-lost"
    message: str  # human-readable, ready for the status bar


@dataclass(frozen=True)
class IceServer:
    """A STUN/TURN server: ``urls`` like ``"stun:host:3478"`` or ``"turn:host:3478?transport=udp"``."""

    urls: str | tuple[str, ...]
    username: str | None = None
    credential: str | None = None


@dataclass(frozen=True)
class WireCounters:
    """The DTLS transport's counters: every UDP datagram of the association except ICE/STUN ones."""

    udp_bytes_sent: int
    udp_packets_sent: int
    udp_bytes_received: int
    udp_packets_received: int

    def ip_bytes_sent(self, *, ipv6: bool = False) -> int:
        return self.udp_bytes_sent + self.udp_packets_sent * (
            (IPV6_HEADER if ipv6 else IPV4_HEADER) + UDP_HEADER
        )

    def ip_bytes_received(self, *, ipv6: bool = False) -> int:
        hdr = (IPV6_HEADER if ipv6 else IPV4_HEADER) + UDP_HEADER
        return self.udp_bytes_received + self.udp_packets_received * hdr


@dataclass(frozen=True)
class TransportStats:
    messages_sent: int
    bytes_sent: int
    messages_received: int
    bytes_received: int
    drops_not_open: int  # send() while the channel was not open
    drops_backpressure: int  # SCTP send buffer above max_buffered_bytes
    drops_queue_full: int  # too many send() calls queued for a stalled loop
    drops_error: int  # the channel raised on send
    receive_drops: int  # incoming queue full (only without on_message)
    wire: WireCounters | None  # None before the connection exists / if aiortc does not expose it
    buffered_amount: int = 0  # bytes waiting in the data channel's send buffer now
    max_buffered_amount: int = 0  # the most seen before a send (a growing backlog shows up here)
    sack: SackStats | None = None  # the SACK policy patch's counters (None: stock aiortc, "immediate")

    @property
    def send_drops(self) -> int:
        return self.drops_not_open + self.drops_backpressure + self.drops_queue_full + self.drops_error


def _build_ice_servers(servers: Sequence[IceServer | RTCIceServer | str]) -> list[RTCIceServer]:
    out: list[RTCIceServer] = []
    for s in servers:
        if isinstance(s, RTCIceServer):
            out.append(s)
            continue
        if isinstance(s, str):
            s = IceServer(urls=s)
        urls = [s.urls] if isinstance(s.urls, str) else list(s.urls)
        for url in urls:
            if not url.startswith(("stun:", "stuns:", "turn:", "turns:")):
                raise ValueError(
                    f"ICE server URL must start with stun:, stuns:, turn: or turns: (got {url!r})"
                )
        out.append(RTCIceServer(urls=urls, username=s.username, credential=s.credential))
    return out


def _count_candidates(sdp: str) -> int:
    return sum(1 for line in sdp.splitlines() if line.startswith("a=candidate:"))


# ---------------------------------------------------------------------------------------------------------------
# The loop thread
# ---------------------------------------------------------------------------------------------------------------
class TransportThread:
    """A dedicated asyncio event loop in a daemon thread.

    ``start()`` returns once the loop runs. ``stop()`` closes every :class:`PeerTransport` using this thread
    (in creation order), then stops the loop, cancels leftover tasks, closes the loop and joins the thread.
    """

    def __init__(self, name: str = "focalchat-net") -> None:
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._ready = threading.Event()
        self._peers: list[PeerTransport] = []
        self._peers_lock = threading.Lock()
        self._stopped = False

    # -- lifecycle
    def start(self, timeout: float = 5.0) -> TransportThread:
        if not self._thread.is_alive() and not self._stopped:
            self._thread.start()
        if not self._ready.wait(timeout):
            raise TransportError("the network thread did not start")
        return self

    def _run(self) -> None:
        asyncio.set_event_loop(self.loop)
        self.loop.call_soon(self._ready.set)
        try:
            self.loop.run_forever()
        finally:
            try:
                pending = asyncio.all_tasks(self.loop)
                for task in pending:
                    task.cancel()
                if pending:
                    self.loop.run_until_complete(asyncio.wait(pending, timeout=2.0))
                self.loop.run_until_complete(self.loop.shutdown_asyncgens())
                self.loop.run_until_complete(self.loop.shutdown_default_executor())
            except Exception:  # pragma: no cover - best effort during shutdown
                log.exception("error while shutting down the network loop")
            finally:
                self.loop.close()

    def stop(self, timeout: float = 5.0) -> None:
        """Close the peers, stop the loop and join the thread (idempotent; not from the loop thread)."""
        if self.in_loop_thread():
            raise RuntimeError("TransportThread.stop() called from its own loop thread")
        if self._stopped:
            return
        self._stopped = True
        if not self._thread.is_alive():
            if not self.loop.is_closed():
                self.loop.close()
            return
        with self._peers_lock:
            peers = list(self._peers)
        for peer in peers:
            try:
                peer._close_on(self, timeout)
            except Exception:
                log.exception("closing %s", peer.name)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(timeout)
        if self._thread.is_alive():
            log.warning("network thread did not stop within %.1f s", timeout)

    def __enter__(self) -> TransportThread:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- helpers
    @property
    def running(self) -> bool:
        return self._thread.is_alive() and not self._stopped

    def in_loop_thread(self) -> bool:
        return threading.current_thread() is self._thread

    def call_soon(self, fn: Callable[..., Any], *args: Any) -> asyncio.Handle:
        """Schedule ``fn(*args)`` on the loop from any thread (``loop.call_soon_threadsafe``)."""
        return self.loop.call_soon_threadsafe(fn, *args)

    def submit(self, coro: Coroutine[Any, Any, T]) -> concurrent.futures.Future[T]:
        """Start ``coro`` on the loop from any thread; returns a ``concurrent.futures.Future``."""
        if not self.running:
            coro.close()
            raise TransportError("the network thread is not running")
        return asyncio.run_coroutine_threadsafe(coro, self.loop)

    def run_coroutine(self, coro: Coroutine[Any, Any, T], timeout: float | None = 30.0) -> T:
        """Run ``coro`` on the loop and wait for its result (from any thread except the loop's own)."""
        if self.in_loop_thread():
            coro.close()
            raise RuntimeError(
                "run_coroutine() from the loop thread would deadlock; await the coroutine instead"
            )
        fut = self.submit(coro)
        try:
            return fut.result(timeout)
        except concurrent.futures.TimeoutError:
            fut.cancel()
            raise TimeoutError(f"network operation did not finish within {timeout} s") from None

    def _register(self, peer: PeerTransport) -> None:
        with self._peers_lock:
            self._peers.append(peer)

    def _unregister(self, peer: PeerTransport) -> None:
        with self._peers_lock:
            if peer in self._peers:
                self._peers.remove(peer)


# ---------------------------------------------------------------------------------------------------------------
# The peer transport
# ---------------------------------------------------------------------------------------------------------------
class PeerTransport:
    """One ``RTCPeerConnection`` with the ``focalchat`` data channel. Single use: one per call.

    Parameters
    ----------
    name: shows up in events and logs (``"me"``, ``"offerer"``...).
    thread: a started :class:`TransportThread` to share; by default the transport starts its own and stops it
        in :meth:`close`.
    ice_servers: STUN/TURN servers (:class:`IceServer`, URL strings or ``RTCIceServer``); default none, i.e.
        host candidates only and no traffic to any third party.
    connect_timeout: seconds from "both descriptions known" to "channel open" before :class:`TransportFailed`.
    on_message: called with each received packet (``bytes``) **on the loop thread**.
    on_event: called with each :class:`TransportEvent` **on the loop thread** (events also go to ``events``).
    max_buffered_bytes: ``send`` drops while the SCTP send buffer holds more than this (stale audio is useless).
    max_pending_sends: ``send`` drops while this many packets wait for the loop (loop stalled).
    sack_policy: ``"immediate"`` (stock aiortc), ``"delayed"`` or ``"bundled"``: how this side acknowledges
        what it receives (module docstring; the peer may run anything). Checked here: a non-immediate policy
        with an aiortc release the patch was not checked against raises :class:`TransportError`.
    sack_delay_s: the delayed-ack timer of ``"delayed"`` / ``"bundled"`` (0 < delay <= 0.5 s).
    """

    def __init__(
        self,
        *,
        name: str = "peer",
        thread: TransportThread | None = None,
        ice_servers: Sequence[IceServer | RTCIceServer | str] = (),
        connect_timeout: float = DEFAULT_CONNECT_TIMEOUT,
        on_message: Callable[[bytes], None] | None = None,
        on_event: Callable[[TransportEvent], None] | None = None,
        events: queue.Queue[TransportEvent] | None = None,
        max_buffered_bytes: int = 4096,
        max_pending_sends: int = 64,
        incoming_maxsize: int = 1024,
        max_message_bytes: int = 16384,
        ordered: bool = False,
        max_retransmits: int | None = 0,
        sack_policy: str = "immediate",
        sack_delay_s: float = DEFAULT_SACK_DELAY,
    ) -> None:
        _check_sack_policy(sack_policy, sack_delay_s)
        self.name = name
        self.sack_policy = sack_policy
        self.sack_delay_s = float(sack_delay_s)
        self.connect_timeout = float(connect_timeout)
        self.on_message = on_message
        self.on_event = on_event
        self.events: queue.Queue[TransportEvent] = events if events is not None else queue.Queue()
        self.incoming: queue.Queue[bytes] = queue.Queue(maxsize=incoming_maxsize)
        self.max_buffered_bytes = max_buffered_bytes
        self.max_pending_sends = max_pending_sends
        self.max_message_bytes = max_message_bytes
        self._ice_servers = _build_ice_servers(ice_servers)
        self._ordered = ordered
        self._max_retransmits = max_retransmits

        self._owns_thread = thread is None
        self._thread = thread if thread is not None else TransportThread(name=f"focalchat-net-{name}").start()
        if not self._thread.running:
            raise TransportError("the TransportThread must be started first")
        self._thread._register(self)

        self._pc: RTCPeerConnection | None = None
        self._channel: Any = None
        self._role: str | None = None  # "offerer" / "answerer"
        self._answer_accepted = False
        self._open = False  # channel open and not closing; read by send() from any thread
        self._ever_open = False
        self._closed_emitted = False
        self._closed = False
        self._failed = False
        self._clock_start: float | None = None  # loop.time() when the connect clock started
        self._timeout_handle: asyncio.TimerHandle | None = None
        self._local_candidates = 0
        self._remote_candidates = 0
        self._close_task: asyncio.Task[None] | None = None

        self._lock = threading.Lock()
        self._pending = 0
        self._messages_sent = self._bytes_sent = 0
        self._messages_received = self._bytes_received = 0
        self._drops_not_open = self._drops_backpressure = self._drops_queue_full = self._drops_error = 0
        self._receive_drops = 0
        self._max_buffered = 0

    # ------------------------------------------------------------------ properties
    @property
    def thread(self) -> TransportThread:
        return self._thread

    @property
    def loop(self) -> asyncio.AbstractEventLoop:
        return self._thread.loop

    @property
    def is_open(self) -> bool:
        return self._open

    @property
    def role(self) -> str | None:
        return self._role

    def run_coroutine(self, coro: Coroutine[Any, Any, T], timeout: float | None = 30.0) -> T:
        """Run ``coro`` on this transport's loop and wait (e.g. ``peer.run_coroutine(signaling.connect(...))``)."""
        return self._thread.run_coroutine(coro, timeout)

    def call_soon(self, fn: Callable[..., Any], *args: Any) -> asyncio.Handle:
        return self._thread.call_soon(fn, *args)

    # ------------------------------------------------------------------ blocking API (any thread but the loop's)
    def create_offer(self, timeout: float = 30.0) -> str:
        """Create the connection and return the offer SDP, with every ICE candidate already in it."""
        return self.run_coroutine(self.acreate_offer(), timeout)

    def accept_offer(self, sdp: str, timeout: float = 30.0, *, connect_timeout: float | None = None) -> str:
        """Answer a remote offer; returns the answer SDP and starts connecting (and the connect clock)."""
        return self.run_coroutine(self.aaccept_offer(sdp, connect_timeout=connect_timeout), timeout)

    def accept_answer(self, sdp: str, timeout: float = 30.0, *, connect_timeout: float | None = None) -> None:
        """Give the offerer the remote answer; starts connecting (and the connect clock)."""
        self.run_coroutine(self.aaccept_answer(sdp, connect_timeout=connect_timeout), timeout)

    def close(self, timeout: float = 5.0) -> None:
        """Close the connection (and stop the thread if this transport started it). Idempotent."""
        self._close_on(self._thread, timeout)
        if self._owns_thread:
            self._thread.stop(timeout)

    def _close_on(self, thread: TransportThread, timeout: float) -> None:
        if thread.running and not self.loop.is_closed():
            try:
                thread.run_coroutine(self.aclose(timeout), timeout + 1.0)
            except (TimeoutError, TransportError):
                log.warning("%s: close did not finish cleanly", self.name)
        self._open = False
        self._closed = True
        thread._unregister(self)

    # ------------------------------------------------------------------ coroutine API (on the loop)
    async def acreate_offer(self) -> str:
        if self._role is not None:
            raise TransportError(f"create_offer: this transport is already the {self._role}")
        self._check_not_closed()
        self._role = "offerer"
        pc = self._make_pc()
        # aiortc gathers all candidates inside setLocalDescription (no trickle ICE), so the SDP is complete.
        await pc.setLocalDescription(await pc.createOffer())
        sdp = pc.localDescription.sdp
        self._local_candidates = _count_candidates(sdp)
        if not self._local_candidates:
            log.warning("%s: the offer has no ICE candidates (no usable network address)", self.name)
        return sdp

    async def aaccept_offer(self, sdp: str, *, connect_timeout: float | None = None) -> str:
        if self._role is not None:
            raise TransportError(f"accept_offer: this transport is already the {self._role}")
        self._check_not_closed()
        self._role = "answerer"
        pc = self._make_pc()
        self._remote_candidates = _count_candidates(sdp)
        try:
            await pc.setRemoteDescription(RTCSessionDescription(sdp=sdp, type="offer"))
        except Exception as exc:
            raise TransportError(f"the offer is not usable: {exc}") from exc
        await pc.setLocalDescription(await pc.createAnswer())
        answer = pc.localDescription.sdp
        self._local_candidates = _count_candidates(answer)
        self._start_connect_clock(connect_timeout)
        return answer

    async def aaccept_answer(self, sdp: str, *, connect_timeout: float | None = None) -> None:
        if self._role != "offerer":
            raise TransportError(
                "accept_answer: call create_offer first (only the offerer accepts an answer)"
            )
        if self._answer_accepted:
            raise TransportError("accept_answer: an answer was already accepted")
        self._check_not_closed()
        self._answer_accepted = True
        self._remote_candidates = _count_candidates(sdp)
        assert self._pc is not None
        self._start_connect_clock(connect_timeout)
        try:
            await self._pc.setRemoteDescription(RTCSessionDescription(sdp=sdp, type="answer"))
        except Exception as exc:
            self._cancel_connect_clock()
            raise TransportError(f"the answer is not usable: {exc}") from exc

    async def aclose(self, timeout: float = 5.0) -> None:
        """Close the connection (idempotent; concurrent callers share one close). Emits ChannelClosed if open."""
        task = self._start_close(timeout)
        await asyncio.wait({task}, timeout=timeout + 0.5)

    def _start_close(self, timeout: float = 5.0) -> asyncio.Task[None]:
        if self._close_task is None:
            self._cancel_connect_clock()
            with self._lock:
                self._open = False
            self._closed = True
            self._close_task = self.loop.create_task(self._do_close(timeout))
        return self._close_task

    async def _do_close(self, timeout: float) -> None:
        if self._pc is not None:
            try:
                await asyncio.wait_for(self._pc.close(), timeout)
            except Exception:  # a timeout or anything else: log it and keep closing
                log.warning("%s: RTCPeerConnection.close() failed or timed out", self.name, exc_info=True)
        self._emit_channel_closed()

    # ------------------------------------------------------------------ sending (any thread)
    def send(self, data: bytes) -> bool:
        """Queue one packet; returns False (and counts a drop) instead of ever blocking. Thread-safe."""
        if not isinstance(data, bytes | bytearray | memoryview):
            raise TypeError(f"send() takes bytes, not {type(data).__name__}")
        data = bytes(data)
        if len(data) > self.max_message_bytes:
            raise ValueError(
                f"packet of {len(data)} bytes exceeds max_message_bytes={self.max_message_bytes}"
            )
        with self._lock:
            if not self._open:
                self._drops_not_open += 1
                return False
            if self._pending >= self.max_pending_sends:
                self._drops_queue_full += 1
                return False
            self._pending += 1
        try:
            self.loop.call_soon_threadsafe(self._send_on_loop, data)
        except RuntimeError:  # loop closed meanwhile
            with self._lock:
                self._pending -= 1
                self._drops_not_open += 1
            return False
        return True

    def _send_on_loop(self, data: bytes) -> None:
        ch = self._channel
        with self._lock:
            self._pending -= 1
            if ch is None or not self._open or ch.readyState != "open":
                self._drops_not_open += 1
                return
            buffered = ch.bufferedAmount
            self._max_buffered = max(self._max_buffered, buffered)
            if buffered > self.max_buffered_bytes:
                self._drops_backpressure += 1
                return
        try:
            ch.send(data)
        except Exception:
            log.debug("%s: send failed", self.name, exc_info=True)
            with self._lock:
                self._drops_error += 1
            return
        with self._lock:
            self._messages_sent += 1
            self._bytes_sent += len(data)

    # ------------------------------------------------------------------ counters (any thread)
    def stats(self) -> TransportStats:
        """A snapshot of the counters. Safe from any thread (reads plain ints; never waits for the loop)."""
        ch, pc = self._channel, self._pc
        buffered = int(getattr(ch, "bufferedAmount", 0) or 0) if ch is not None else 0
        sack = sack_policy_of(pc.sctp) if pc is not None else None
        with self._lock:
            return TransportStats(
                messages_sent=self._messages_sent,
                bytes_sent=self._bytes_sent,
                messages_received=self._messages_received,
                bytes_received=self._bytes_received,
                drops_not_open=self._drops_not_open,
                drops_backpressure=self._drops_backpressure,
                drops_queue_full=self._drops_queue_full,
                drops_error=self._drops_error,
                receive_drops=self._receive_drops,
                wire=self._wire_counters(),
                buffered_amount=buffered,
                max_buffered_amount=max(self._max_buffered, buffered),
                sack=sack,
            )

    def _wire_counters(self) -> WireCounters | None:
        # RTCDtlsTransport keeps byte/packet counters for every datagram it sends or receives and reports them
        # through its (private) _get_stats(); aiortc's public getStats() only covers RTP senders/receivers.
        pc = self._pc
        try:
            dtls = pc.sctp.transport if pc is not None and pc.sctp is not None else None
            report = dtls._get_stats() if dtls is not None else None
        except Exception:
            return None
        if not report:
            return None
        s = next(iter(report.values()))
        return WireCounters(
            udp_bytes_sent=s.bytesSent,
            udp_packets_sent=s.packetsSent,
            udp_bytes_received=s.bytesReceived,
            udp_packets_received=s.packetsReceived,
        )

    # ------------------------------------------------------------------ internals (loop thread)
    def _check_not_closed(self) -> None:
        if self._closed:
            raise TransportError("this transport is closed; create a new PeerTransport for a new call")

    def _make_pc(self) -> RTCPeerConnection:
        # iceServers=[] explicitly: aiortc's default (None) means Google's public STUN server.
        pc = RTCPeerConnection(RTCConfiguration(iceServers=list(self._ice_servers)))
        self._pc = pc
        pc.on(
            "signalingstatechange",
            lambda: self._emit(SignalingStateChanged(peer=self.name, state=pc.signalingState)),
        )
        pc.on(
            "icegatheringstatechange",
            lambda: self._emit(IceGatheringStateChanged(peer=self.name, state=pc.iceGatheringState)),
        )
        pc.on("iceconnectionstatechange", lambda: self._on_ice_state(pc.iceConnectionState))
        pc.on("connectionstatechange", lambda: self._on_connection_state(pc.connectionState))
        ch = pc.createDataChannel(
            CHANNEL_LABEL,
            ordered=self._ordered,
            maxRetransmits=self._max_retransmits,
            negotiated=True,
            id=CHANNEL_ID,
        )
        self._channel = ch
        if self.sack_policy != "immediate" and pc.sctp is not None:
            install_sack_policy(pc.sctp, self.sack_policy, self.sack_delay_s)
        ch.on("open", self._on_channel_open)
        ch.on("close", self._emit_channel_closed)
        ch.on("message", self._on_channel_message)
        dtls = pc.sctp.transport if pc.sctp is not None else None
        if dtls is not None:
            dtls.on("statechange", lambda: self._emit(DtlsStateChanged(peer=self.name, state=dtls.state)))
        return pc

    def _emit(self, ev: TransportEvent) -> None:
        self.events.put_nowait(ev)
        if self.on_event is not None:
            try:
                self.on_event(ev)
            except Exception:
                log.exception("%s: on_event callback failed", self.name)

    def _start_connect_clock(self, connect_timeout: float | None) -> None:
        timeout = self.connect_timeout if connect_timeout is None else float(connect_timeout)
        self._cancel_connect_clock()
        self._clock_start = self.loop.time()
        self._timeout_handle = self.loop.call_later(timeout, self._on_connect_timeout, timeout)

    def _cancel_connect_clock(self) -> None:
        if self._timeout_handle is not None:
            self._timeout_handle.cancel()
            self._timeout_handle = None

    def _failure_detail(self) -> str:
        notes = []
        if self._local_candidates == 0:
            notes.append("this computer offered no network address")
        if self._remote_candidates == 0:
            notes.append("the peer's description has no network address")
        return f" [{'; '.join(notes)}]" if notes else ""

    def _fail(self, reason: str, message: str) -> None:
        if self._failed or self._closed:
            return
        self._failed = True
        self._cancel_connect_clock()
        log.warning("%s: %s", self.name, message)
        self._emit(TransportFailed(peer=self.name, reason=reason, message=message))
        self._start_close()

    def _on_connect_timeout(self, timeout: float) -> None:
        self._timeout_handle = None
        if not self._ever_open:
            self._fail(
                "timeout", f"could not connect within {timeout:g} s ({FAIL_HINT}){self._failure_detail()}"
            )

    def _on_ice_state(self, state: str) -> None:
        self._emit(IceConnectionStateChanged(peer=self.name, state=state))

    def _on_connection_state(self, state: str) -> None:
        self._emit(ConnectionStateChanged(peer=self.name, state=state))
        if state == "failed":
            if self._ever_open:
                self._fail(
                    "connection-lost", "the connection to the peer was lost (no reply to consent checks)"
                )
            else:
                elapsed = self.loop.time() - self._clock_start if self._clock_start is not None else 0.0
                self._fail(
                    "ice-failed",
                    f"could not connect after {elapsed:.1f} s ({FAIL_HINT}){self._failure_detail()}",
                )

    def _on_channel_open(self) -> None:
        if self._closed:
            return
        self._cancel_connect_clock()
        with self._lock:
            self._open = True
        self._ever_open = True
        start = self._clock_start if self._clock_start is not None else self.loop.time()
        self._emit(ChannelOpen(peer=self.name, setup_s=self.loop.time() - start))

    def _emit_channel_closed(self) -> None:
        with self._lock:
            self._open = False
            emit = self._ever_open and not self._closed_emitted
            self._closed_emitted = self._closed_emitted or emit
        if emit:
            self._emit(ChannelClosed(peer=self.name))

    def _on_channel_message(self, message: bytes | str) -> None:
        data = message.encode("utf-8") if isinstance(message, str) else bytes(message)
        with self._lock:
            self._messages_received += 1
            self._bytes_received += len(data)
        if self.on_message is not None:
            try:
                self.on_message(data)
            except Exception:
                log.exception("%s: on_message callback failed", self.name)
            return
        try:
            self.incoming.put_nowait(data)
        except queue.Full:
            with self._lock:
                self._receive_drops += 1


__all__ = [
    "CHANNEL_ID",
    "CHANNEL_LABEL",
    "DEFAULT_SACK_DELAY",
    "MAX_SACK_DELAY",
    "SACK_PATCH_VERIFIED_AIORTC",
    "SACK_POLICIES",
    "SackStats",
    "ChannelClosed",
    "ChannelOpen",
    "ConnectionStateChanged",
    "DEFAULT_CONNECT_TIMEOUT",
    "DtlsStateChanged",
    "FAIL_HINT",
    "IceConnectionStateChanged",
    "IceGatheringStateChanged",
    "IceServer",
    "PeerTransport",
    "SignalingStateChanged",
    "TransportError",
    "TransportEvent",
    "TransportFailed",
    "TransportStats",
    "TransportThread",
    "WireCounters",
    "allow_loopback_candidates",
    "disable_loopback_candidates",
    "enable_loopback_candidates",
    "install_sack_policy",
    "loopback_candidates_enabled",
    "sack_bytes_per_message",
    "sack_patch_problem",
    "sack_policy_of",
    "serialize_bundled_packet",
    "uninstall_sack_policy",
    "wire_bytes_per_message",
]
