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
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import inspect
import logging
import queue
import threading
import time
from collections.abc import Callable, Coroutine, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar

import aioice.ice
from aiortc import RTCConfiguration, RTCIceServer, RTCPeerConnection, RTCSessionDescription

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


class TransportError(RuntimeError):
    """A transport operation failed (bad SDP, wrong call order, closed transport...)."""


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
    ) -> None:
        self.name = name
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
            if ch.bufferedAmount > self.max_buffered_bytes:
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
    "loopback_candidates_enabled",
    "wire_bytes_per_message",
]
