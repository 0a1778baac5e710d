"""The headless call engine: :class:`CallSession` (used by ``focalchat call`` now, by the GUI later).

One direction of a call, as this module wires it::

    source.read_chunk (80 ms, 16 kHz)                                   [encoder worker thread]
      -> model.encode_step -> 4 tokens -> record SENT
      -> every ``chunks_per_packet`` chunks: AudioPacket (+ ``redundancy`` previous chunks)
      -> (optional NetSim) -> PeerTransport.send                       [queued onto the loop thread]
    ~~ aiortc data channel (unordered, no retransmits) ~~
    PeerTransport.on_message -> parse_packet -> JitterBuffer.put_packet [loop thread, jitter lock]
    JitterBuffer.pop(now) every 80 ms (monotonic clock)                [playout worker thread]
      -> StreamDecoder.decode(tokens | None) -> limiter -> sink.write_chunk; record RECEIVED

Threads: the transport's asyncio loop thread (aiortc, packet parsing, control timers), one encoder worker
and one playout/decoder worker (torch, ``torch.set_num_threads(1)`` once at :meth:`CallSession.start`,
process-wide). They meet at the jitter buffer (a lock), the transport's thread-safe ``send`` and a few
counters (a lock). Nothing here runs on a GUI thread and nothing blocks the loop thread. Events leave
through the thread-safe :attr:`CallSession.events` queue (and the optional ``on_event`` callback, which
runs on whichever session thread raised the event: keep it short, e.g. emit a Qt signal);
:meth:`CallSession.stats` returns a :class:`CallStats` snapshot and is safe from any thread.

Decisions (documented here because the GUI and CLI depend on them):

* **Handshake.** When the channel opens both sides send HELLO (repeated every 0.5 s until the peer's
  accepting HELLO_ACK arrives: the channel is unreliable). A HELLO is checked with
  :func:`app.packet.check_compatible`; an incompatible one is answered ``HelloAck(accepted=False, reason)``,
  both sides get a :class:`HandshakeRefused` event with the reason and the call ends. The call is up
  (``in-call``) once we accepted the peer's HELLO and the peer accepted ours; only then does the encoder read
  the source and send audio (a source that is not real-time, e.g. ``FileMicSource(realtime=False)``, is paced
  by the session's own 80 ms clock from that moment; a microphone is flushed of stale audio first).
  AUDIO packets from a peer whose HELLO we have not accepted are dropped (counted as ``unexpected``).
* **Liveness.** Every packet received counts as a sign of life. PING goes out every ``ping_interval_s``
  (RTT from the PONG, smoothed as in RFC 6298; with ``rtt_echo_interval_s`` also from the echoes that compact
  AUDIO frames carry, which is how :meth:`CallConfig.low_bandwidth` measures it without pings); HEARTBEAT
  only when nothing else was sent for
  ``heartbeat_interval_s`` (so with pings every second it is rarely needed). Nothing received for
  ``dead_peer_timeout_s`` (3 s) -> :class:`PeerLost`. With ``end_on_peer_lost`` (default) the call then
  ends (a data channel cannot be resumed without new signaling); otherwise the session keeps waiting and
  emits ``StateChanged("call", "in-call", "peer is back")`` if packets return. A channel that closes without
  a BYE is also a :class:`PeerLost`.
* **Recording.** RECEIVED chunks are recorded **as they are played** (TOKENS items of the jitter buffer,
  redundant recoveries included), so a recording is what the listener heard; lost chunks are absent and
  are concealed again on export. SENT chunks are recorded when encoded.
  ``CallConfig.record_path`` records the whole call; :meth:`CallSession.start_recording` /
  :meth:`~CallSession.stop_recording` record a part of it (mid-call, into its own ``.fcr``, times from its
  start), independently of the whole-call one.
* **Simulated network** (``CallConfig.netsim``, outgoing only): AUDIO packets go through a
  :class:`app.netsim.NetSim` with all its settings; control packets go through a second one with the same
  delay and jitter but no loss, duplicates or reordering, so RTT includes the simulated delay while the
  handshake, pings and dead-peer detection stay meaningful. The AUDIO loss pattern depends only on the
  seed and the packet number (deterministic for tests).
* **Text chat** is best effort over the unreliable channel: each message is sent twice, the receiver drops
  repeated message ids.
* **Counting.** Every message that fails :func:`app.packet.parse_packet` is counted under its
  ``PacketError.kind``; AUDIO packets with the wrong token geometry under ``foreign``; valid packets that
  make no sense now (audio before the handshake, a PONG for no ping) under ``unexpected``. All of them
  add up in ``CallStats.malformed`` and are dropped. Nothing a peer sends can raise out of the handler.
* **Transmission, VAD and DTX.** Every chunk the encoder takes goes through an energy voice activity
  detector (:class:`app.vad.VoiceActivityDetector`: 20 ms frames against ``vad_threshold_dbfs`` and a
  tracked noise floor, 300 ms hangover). The *gate* is open when not muted (:meth:`CallSession.set_muted`)
  and: always (``continuous``), while the push-to-talk key is down (``ptt``, :meth:`CallSession.set_ptt`)
  or while the VAD is active (``vad``). Muted or PTT released, the encoder gets zeros instead of the
  microphone. While the gate is open, packets whose primary chunks are all VAD-silent are flagged SILENCE
  (the peer's jitter buffer may drop or stretch them: that is how it shrinks in speech pauses). When the
  gate closes, the packet being filled is completed on its normal schedule, then one all-silent packet
  flagged SILENCE goes out, then nothing (DTX; heartbeats keep the peer from declaring us lost). The chunk
  counter keeps counting (a media clock); the first packet of the next talkspurt is flagged
  TALKSPURT_START, so the peer restarts its buffer there, counts nothing as lost and plays comfort noise
  (:meth:`app.conceal.StreamDecoder.pause`) in between. In ``vad`` mode with 2+ chunks per packet the
  chunk before the onset leads the first packet (pre-roll, at no cost in delay). Untransmitted chunks are
  not recorded.
* **Playout clock.** The playout worker ticks every 80 ms with its phase locked to the arrivals: while
  nothing plays it waits for the first AUDIO packet of a stream and ticks a few ms after it, and it locks
  again on the first arrival after each pause of the peer; when ~2 s of chunks have all waited well beyond
  that margin (the lock came from a late first arrival) the tick moves earlier (see
  :meth:`CallSession._playout_loop`).
* **Devices.** The session never opens audio devices; ``CallConfig.device_timing`` says how whoever does
  should (PortAudio block and buffer; the low-latency preset's speaker buffer is 20 ms instead of ~40).
* **Output queue.** What a device sink holds ahead of each write is kept near the cushion
  (``CallConfig.output_cushion_ms``, 25 ms): a device
  that stalled or underran (or runs slower than our clock) leaves more queued, which would otherwise delay
  every later chunk for the rest of the call. The surplus is dropped where it is not heard: queued silence or
  comfort noise (``sink.trim``), a chunk the peer flagged silent, or after ~5 s without either, 40 ms cuts
  out of speech, crossfaded (:class:`_QueueGuard`; counted in ``CallStats.output_trims``).
* **Concealment accounting.** ``concealed`` counts playout ticks the decoder filled by concealment: LOSS
  ticks plus EMPTY ticks (buffer ran dry) after speech started, except pauses (an EMPTY tick after a
  chunk flagged SILENCE), which are comfort noise and counted in ``comfort``. Invariant:
  ``concealed == lost + underruns + waiting + pause_concealed`` where ``waiting`` are EMPTY ticks not
  resolved yet (the peer went quiet or stopped sending) and ``pause_concealed`` EMPTY ticks that a
  TALKSPURT_START later showed to be a pause (its SILENCE packet was lost). ``played`` counts every chunk
  played, ``recovered`` the subset played from a redundant copy; ``played + lost + dropped`` = chunks the
  timeline moved past, DTX gaps excepted.
* **The session never closes the source or the sink** it was given; its owner does, after :meth:`stop`.
"""

from __future__ import annotations

import contextlib
import dataclasses
import enum
import logging
import math
import queue
import threading
import time
from collections import Counter, deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path
from typing import Any

import numpy as np

from app.audio_io import LOW_LATENCY_TIMING, ROBUST_TIMING, AudioSink, AudioSource, DeviceTiming
from app.conceal import StreamDecoder
from app.jitter import JitterBuffer, PlayoutKind
from app.netsim import NetSim
from app.packet import (
    ECHO_HOLD_UNIT_MS,
    MAX_CHUNKS,
    MAX_COMPACT_CHUNKS,
    MAX_ECHO_HOLD_MS,
    AudioFlags,
    AudioGeometry,
    AudioPacket,
    Bye,
    CompactAudioPacket,
    Heartbeat,
    Hello,
    HelloAck,
    PacketError,
    Ping,
    Pong,
    Text,
    check_compatible,
    is_audio,
    model_hash_prefix,
    parse_packet,
)
from app.recording import RECEIVED, SENT, RecordingHeader, RecordingWriter
from app.transport import (
    ChannelClosed,
    ChannelOpen,
    ConnectionStateChanged,
    DtlsStateChanged,
    IceConnectionStateChanged,
    IceGatheringStateChanged,
    IceServer,
    PeerTransport,
    SignalingStateChanged,
    TransportEvent,
    TransportFailed,
    TransportThread,
    allow_loopback_candidates,
    sack_bytes_per_message,
    wire_bytes_per_message,
)
from app.vad import LEVEL_FLOOR_DBFS, VoiceActivityDetector, rms_dbfs

log = logging.getLogger(__name__)

__all__ = [
    "CallConfig",
    "CallEnded",
    "CallEvent",
    "CallSession",
    "CallState",
    "CallStats",
    "Error",
    "HandshakeOk",
    "HandshakeRefused",
    "LatencyBreakdown",
    "NetSimSettings",
    "PeerLost",
    "SourceEnded",
    "StateChanged",
    "TextReceived",
]

_TICK_S = 0.1  # control timer on the loop thread (pings, heartbeats, dead-peer check)
_HELLO_RETRY_S = 0.5
_RATE_WINDOW_S = 2.0  # live bitrates are measured over this window
_TIMING_WINDOW = 50  # encode/decode p50 over the last N chunks
_EVENT_QUEUE_MAX = 1000
_TEXT_REPEATS = 2
_REFUSE_LINGER_S = 0.3  # after refusing, let the HELLO_ACK leave before closing
_BYE_LINGER_S = 0.1  # after BYE, let it leave before the transport closes
_MAX_CATCHUP_TICKS = 6  # playout behind by more than this many chunks: resynchronise the clock
TRANSMIT_MODES = ("continuous", "ptt", "vad")
_VAD_HANGOVER_S = 0.3
_LOCK_MARGIN_S = 0.01  # playout tick this long after the arrival it is locked to
_GRACE_S = 0.02  # at a tick whose chunk is missing, wait this long for it (the sink cushion covers the wait)
_RELOCK_WINDOW = 25  # played chunks (~2 s): all waited > _LOCK_MARGIN_S + _RELOCK_SLACK_S -> tick moves earlier
_RELOCK_SLACK_S = 0.01
_CUSHION_S = 0.025  # default CallConfig.output_cushion_ms: silence queued in a device sink ahead of a stream's
# first chunk (absorbs tick lateness); the output queue guard (_QueueGuard) keeps what is queued near it
_TRIM_WINDOW = 12  # writes (~1 s): the queue must stay over its target this long before it is trimmed
_TRIM_SLACK_S = 0.01  # "over": the queue's minimum over the window exceeds the target by more than this
_TRIM_FORCE_TICKS = 50  # (~4 s more) over target with no quiet audio to drop: cut speech (crossfaded)
_TRIM_MAX_CUT_S = 0.04  # at most this much cut out of one speech chunk
_TRIM_BACKOFF_S = 0.015  # an underrun soon after a trim: the device needs more, the target grows by this
_TRIM_MAX_TARGET_S = 0.1
_XFADE_S = 0.005  # crossfade of a cut inside a chunk


# ---------------------------------------------------------------------------------------------------------------
# configuration
# ---------------------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class NetSimSettings:
    """Simulated outgoing network (see :class:`app.netsim.NetSim`); zero = perfect link."""

    loss: float = 0.0
    burst: float = 1.0
    jitter_ms: float = 0.0
    delay_ms: float = 0.0
    reorder: float = 0.0
    duplicate: float = 0.0
    reorder_delay_ms: float = 100.0
    seed: int = 0

    def audio_sim(self) -> NetSim:
        return NetSim(self.loss, self.burst, self.jitter_ms, self.reorder, self.duplicate, self.delay_ms,
                      self.seed, reorder_delay_ms=self.reorder_delay_ms)

    def control_sim(self) -> NetSim:
        return NetSim(0.0, 1.0, self.jitter_ms, 0.0, 0.0, self.delay_ms, self.seed + 1)


@dataclass(frozen=True)
class CallConfig:
    """Settings of one call (both sides choose their own; the peer adapts to our packetisation).

    Presets: :meth:`low_bandwidth` (at most 3 kbps on the wire per direction) and :meth:`low_latency`.
    """

    #: Primary chunks (80 ms each) per AUDIO packet, 1..4 (1..8 with ``compact_audio``): latency vs wire cost.
    chunks_per_packet: int = 1
    #: Previous chunks repeated in every AUDIO packet, 0..3 (recovers single packet losses).
    redundancy: int = 0
    jitter_min_depth: int = 1
    jitter_max_depth: int = 12
    jitter_initial_depth: int = 2
    #: HEARTBEAT when nothing else was sent for this long.
    heartbeat_interval_s: float = 1.0
    #: PING period for RTT (0 disables pings).
    ping_interval_s: float = 1.0
    #: Nothing received for this long -> PeerLost.
    dead_peer_timeout_s: float = 3.0
    #: End the call when the peer is lost (else keep waiting for it).
    end_on_peer_lost: bool = True
    #: Seconds from "both descriptions known" to "channel open" (offerer / direct connections).
    connect_timeout_s: float = 10.0
    #: The answerer's connect clock in copy-paste mode also covers the time the answer code takes to reach
    #: the offerer (a person copying it), so it is longer.
    answer_relay_timeout_s: float = 120.0
    #: Channel open -> both HELLOs accepted.
    handshake_timeout_s: float = 5.0
    #: STUN/TURN servers (URL strings or :class:`app.transport.IceServer`); empty = host candidates only.
    ice_servers: tuple[str | IceServer, ...] = ()
    #: Gather only 127.0.0.1 candidates (tests, two processes on one machine).
    local_only: bool = False
    nickname: str = ""
    #: Record both directions' tokens to this ``.fcr`` file.
    record_path: str | Path | None = None
    #: Simulated outgoing network (demo and tests).
    netsim: NetSimSettings | None = None
    #: Pace the source with the session's 80 ms clock. None: pace sources that say ``realtime = False``.
    pace_source: bool | None = None
    #: Output limiter ceiling (linear peak).
    limiter_ceiling: float = 0.97
    #: Name used in transport events and logs.
    name: str = "me"
    #: Send AUDIO as compact frames (8-byte header instead of 21; :class:`app.packet.CompactAudioPacket`).
    compact_audio: bool = False
    #: Put an RTT echo on a compact AUDIO frame at most this often (0: never); RTT then needs no pings.
    rtt_echo_interval_s: float = 0.0
    #: How we acknowledge what we receive: "immediate" (stock aiortc), "delayed", "bundled" (app.transport).
    sack_policy: str = "immediate"
    #: Delayed-ack timer of the "delayed" / "bundled" SACK policies (0 < s <= 0.5).
    sack_delay_s: float = 0.2
    #: When audio is sent: "continuous", "ptt" (only while :meth:`CallSession.set_ptt` says pressed) or "vad"
    #: (only while the voice activity detector hears speech, 300 ms hangover). Changeable during the call.
    transmit_mode: str = "continuous"
    #: Gain on what we hear, 0.0..2.0, applied before the limiter (:meth:`CallSession.set_output_volume`).
    output_volume: float = 1.0
    #: Voice activity threshold (dBFS, RMS of 20 ms frames): used by "vad" mode to gate, in every mode to
    #: flag silent packets (the peer's jitter buffer may then drop or stretch them).
    vad_threshold_dbfs: float = -45.0
    #: How the audio devices are opened (PortAudio callback blocks and buffers, :class:`app.audio_io.DeviceTiming`).
    #: The session never opens devices: whoever does (``focalchat call``, the GUI, scripts/bench_latency.py)
    #: passes ``device_timing.source_options()`` / ``sink_options()`` to MicSource / SpeakerSink.
    device_timing: DeviceTiming = ROBUST_TIMING
    #: Silence queued in a device sink ahead of a stream's first chunk, and what the output queue guard then
    #: keeps queued ahead of each write (ms): room for playout ticks that run late or wait (up to 20 ms) for a
    #: late chunk. All of it is delay.
    output_cushion_ms: float = _CUSHION_S * 1000.0

    @classmethod
    def low_bandwidth(cls, **overrides: Any) -> CallConfig:
        """At most 3 kbps on the wire per direction (IPv4, both sides talking; measured on loopback with the
        DTLS counters, see ``scripts/bench_wire.py``): 6 chunks (480 ms) per compact AUDIO frame, no
        redundancy, SACKs bundled into our own packets (the 0.5 s delayed-ack timer outlasts our 480 ms
        packet interval), RTT from echoes on the audio (one a second) instead of pings; heartbeats only go
        out when no audio does (as always). The price is 400 ms more packetisation delay than one chunk per
        packet. Every field can be overridden."""
        fields: dict[str, Any] = dict(chunks_per_packet=6, redundancy=0, compact_audio=True,
                                      sack_policy="bundled", sack_delay_s=0.5, ping_interval_s=0.0,
                                      rtt_echo_interval_s=1.0)
        fields.update(overrides)
        return cls(**fields)

    @classmethod
    def low_latency(cls, **overrides: Any) -> CallConfig:
        """Lowest delay: one chunk per packet, a jitter buffer that starts one chunk deep, one redundant
        chunk per packet (a single lost packet costs nothing), and the devices opened with
        :data:`app.audio_io.LOW_LATENCY_TIMING` (a 20 ms speaker buffer in 5 ms blocks instead of ~40 ms in
        10 ms blocks). Every field can be overridden."""
        fields: dict[str, Any] = dict(chunks_per_packet=1, jitter_initial_depth=1, redundancy=1,
                                      device_timing=LOW_LATENCY_TIMING)
        fields.update(overrides)
        return cls(**fields)

    def __post_init__(self) -> None:
        max_cpp = MAX_COMPACT_CHUNKS if self.compact_audio else MAX_CHUNKS
        if not 1 <= self.chunks_per_packet <= max_cpp:
            raise ValueError(f"chunks_per_packet must be 1..{max_cpp}"
                             f"{'' if self.compact_audio else ' (1..8 with compact_audio)'}, "
                             f"got {self.chunks_per_packet}")
        if self.rtt_echo_interval_s < 0 or (self.rtt_echo_interval_s > 0 and not self.compact_audio):
            raise ValueError("rtt_echo_interval_s must be >= 0, and > 0 only with compact_audio")
        if self.sack_policy not in ("immediate", "delayed", "bundled"):
            raise ValueError(f"sack_policy must be immediate, delayed or bundled, got {self.sack_policy!r}")
        if not 0 < self.sack_delay_s <= 0.5:
            raise ValueError("sack_delay_s must be in (0, 0.5] (RFC 4960 6.2)")
        if not 0 <= self.redundancy <= 3:
            raise ValueError(f"redundancy must be 0..3, got {self.redundancy}")
        if not 1 <= self.jitter_min_depth <= self.jitter_initial_depth <= self.jitter_max_depth:
            raise ValueError("need 1 <= jitter_min_depth <= jitter_initial_depth <= jitter_max_depth")
        for name in ("heartbeat_interval_s", "dead_peer_timeout_s", "connect_timeout_s", "handshake_timeout_s",
                     "answer_relay_timeout_s"):
            if not getattr(self, name) > 0:
                raise ValueError(f"{name} must be > 0")
        if self.ping_interval_s < 0:
            raise ValueError("ping_interval_s must be >= 0 (0 disables pings)")
        if not 0 < self.limiter_ceiling <= 1:
            raise ValueError("limiter_ceiling must be in (0, 1]")
        if self.transmit_mode not in TRANSMIT_MODES:
            raise ValueError(f"transmit_mode must be one of {', '.join(TRANSMIT_MODES)}, got {self.transmit_mode!r}")
        _check_volume(self.output_volume, "output_volume")
        _check_threshold(self.vad_threshold_dbfs, "vad_threshold_dbfs")
        if not isinstance(self.device_timing, DeviceTiming):
            raise ValueError(f"device_timing must be an app.audio_io.DeviceTiming, got {self.device_timing!r:.60}")
        if not 0.0 <= self.output_cushion_ms <= _TRIM_MAX_TARGET_S * 1000.0:  # also NaN
            raise ValueError(f"output_cushion_ms must be in [0, {_TRIM_MAX_TARGET_S * 1000.0:g}], "
                             f"got {self.output_cushion_ms!r}")


def _check_threshold(dbfs: object, what: str) -> float:
    if (isinstance(dbfs, bool) or not isinstance(dbfs, (int, float, np.floating, np.integer))
            or not LEVEL_FLOOR_DBFS <= float(dbfs) <= 0.0):  # also rejects NaN
        raise ValueError(f"{what} must be a number in [{LEVEL_FLOOR_DBFS:g}, 0] dBFS, got {dbfs!r:.40}")
    return float(dbfs)


def _check_volume(gain: object, what: str) -> float:
    if isinstance(gain, bool) or not isinstance(gain, (int, float, np.floating, np.integer)):
        raise ValueError(f"{what} must be a number in [0, 2], got {gain!r:.40}")
    g = float(gain)
    if not 0.0 <= g <= 2.0:  # also rejects NaN
        raise ValueError(f"{what} must be in [0, 2], got {g!r}")
    return g


# ---------------------------------------------------------------------------------------------------------------
# events
# ---------------------------------------------------------------------------------------------------------------
class CallState(enum.Enum):
    IDLE = "idle"  # created, not started
    READY = "ready"  # started: threads run, no connection yet
    CONNECTING = "connecting"  # signaling done / in progress, waiting for the channel
    HANDSHAKE = "handshake"  # channel open, exchanging HELLOs
    IN_CALL = "in-call"
    ENDED = "ended"


@dataclass(frozen=True, kw_only=True)
class CallEvent:
    """Base of all session events; ``t`` is ``time.monotonic()`` when it happened."""

    t: float = field(default_factory=time.monotonic)


@dataclass(frozen=True, kw_only=True)
class StateChanged(CallEvent):
    """``layer``: ``call`` (the session's :class:`CallState`) or a transport layer: ``signaling``,
    ``ice-gathering``, ``ice``, ``dtls``, ``connection``, ``channel``."""

    layer: str
    state: str
    detail: str = ""


@dataclass(frozen=True, kw_only=True)
class HandshakeOk(CallEvent):
    peer_nickname: str
    peer_model_id: str
    peer_chunks_per_packet: int
    peer_redundancy: int
    peer_app_version: str = ""


@dataclass(frozen=True, kw_only=True)
class HandshakeRefused(CallEvent):
    """``by``: ``"us"`` (the peer's HELLO is incompatible) or ``"peer"`` (it refused ours)."""

    by: str
    reason: str


@dataclass(frozen=True, kw_only=True)
class PeerLost(CallEvent):
    reason: str
    silent_s: float


@dataclass(frozen=True, kw_only=True)
class TextReceived(CallEvent):
    text: str
    message_id: int
    nickname: str = ""


@dataclass(frozen=True, kw_only=True)
class Error(CallEvent):
    """``kind``: ``connect-timeout``, ``ice-failed``, ``connection-lost``, ``handshake-timeout``,
    ``audio-input``, ``audio-output``, ``internal``."""

    kind: str
    message: str


@dataclass(frozen=True, kw_only=True)
class SourceEnded(CallEvent):
    """The local source (e.g. an input file) has no more audio; the call goes on (heartbeats)."""

    chunks_sent: int


@dataclass(frozen=True, kw_only=True)
class CallEnded(CallEvent):
    """The last event of a session. ``reason``: ``hangup`` (we stopped), ``peer-hangup`` (BYE),
    ``peer-lost``, ``refused``, ``connect-failed``, ``handshake-timeout``, ``error``."""

    reason: str
    message: str = ""


# ---------------------------------------------------------------------------------------------------------------
# stats
# ---------------------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class LatencyBreakdown:
    """Mouth-to-ear estimate for the audio we hear (the peer's mouth to our ear), in ms.

    Our own capture and encode figures stand in for the peer's (the same app on a similar machine).

    * ``chunk_ms``: the chunk itself (80 ms: its first sample waits for its last).
    * ``capture_ms``: from the chunk's last sample entering the microphone to the encoder: one device callback
      block (the audio server hands a source's audio over a period at a time, and PulseAudio's source runs at
      the smallest period asked of it: ours) plus the audio already waiting behind the chunk when the encoder
      took it (median); 0 for file sources. Measured through the virtual mic of scripts/start_pulse.sh at
      10 ms blocks: 6-12 ms, ~5 of them the virtual mic's own; the rest depends on the phase between the
      server's periods and ours, fixed when the stream opens. PortAudio's input latency figure (the whole
      buffer: 20 ms for "low" through ALSA ``pulse``) is not used.
    * ``encode_ms``: our encode p50.
    * ``packetization_ms``: ``(peer's chunks per packet - 1) x 80 ms`` (from its HELLO).
    * ``network_ms``: RTT / 2 (0 until the first RTT sample).
    * ``jitter_ms``: measured wait in the jitter buffer, median over the last ~2 s of played chunks of
      ``tick - arrival - position x 80 ms`` (position = the chunk's place in its packet: the packetisation
      saw-tooth is already in ``packetization_ms``); before any chunk played, ``(L - 0.5) x 80`` ms from the
      low-water mark L of the depth.
    * ``decode_ms``: our decode p50.
    * ``device_ms``: output: the audio queued in the sink ahead of a chunk when it is written plus the
      stream's own delay at that moment (``SpeakerSink.output_delay_ms``: PortAudio's DAC time, which for
      ALSA pulse includes PulseAudio's buffer and the sink's latency), median over ~2 s: when the chunk's
      first sample is played. Sinks without ``output_delay_ms``: the queue plus half a callback block plus the
      nominal ``stream_latency_ms``; sinks without those report their ``latency_ms`` / ``buffered_ms``.
    """

    chunk_ms: float
    encode_ms: float
    packetization_ms: float
    network_ms: float
    jitter_ms: float
    decode_ms: float
    device_ms: float
    capture_ms: float = 0.0

    @property
    def total_ms(self) -> float:
        return (self.chunk_ms + self.capture_ms + self.encode_ms + self.packetization_ms + self.network_ms
                + self.jitter_ms + self.decode_ms + self.device_ms)


@dataclass(frozen=True)
class CallStats:
    """A snapshot of a call (see :meth:`CallSession.stats`). Rates are over the last ~2 s (``*_kbps``)
    and over the whole call since it came up (``*_kbps_avg``); all in kilobits per second, one direction
    (what we send) unless the name says ``recv``."""

    state: str
    call_s: float
    peer_nickname: str
    # bitrates
    payload_kbps: float  # primary codec bits sent (tokens x bits), no packet overhead, no redundancy
    payload_kbps_avg: float
    audio_app_kbps: float  # AUDIO packet bytes sent (headers and redundancy included)
    app_kbps: float  # all data-channel message bytes sent (audio + control)
    app_kbps_avg: float
    app_recv_kbps: float
    wire_kbps: float  # IP-level bytes sent: DATA packets + our SACKs for what we receive (+ DTLS/ICE-less)
    wire_recv_kbps: float
    wire_kbps_avg: float
    wire_source: str  # "measured" (DTLS transport counters + IPv4/UDP headers) or "model" (wire_bytes_per_message)
    wire_model_kbps: float  # the wire model on the same window, for comparison
    # network
    rtt_ms: float | None  # smoothed (RFC 6298)
    rtt_last_ms: float | None
    # playout
    jitter_depth: int  # chunks buffered after the last playout tick
    jitter_low_water: int  # lowest depth before a playout tick over the last ~2 s (see LatencyBreakdown)
    jitter_target: int
    jitter_estimate_ms: float
    played: int
    lost: int
    late: int
    concealed: int
    recovered: int
    duplicates: int
    underruns: int
    waiting: int
    dropped: int
    redundant_unused: int
    # packets
    audio_packets_sent: int
    audio_packets_received: int
    chunks_sent: int
    send_drops: int
    malformed: int
    malformed_by_kind: dict[str, int]
    netsim_lost: int
    # compute
    encode_ms: float  # p50 over the last ~50 chunks
    decode_ms: float
    latency: LatencyBreakdown
    mic_level_dbfs: float
    # levels and transmission (for meters and indicators; cheap to poll)
    input_level_dbfs: float = LEVEL_FLOOR_DBFS  # RMS of the last chunk from the source (before muting), floor -100
    output_level_dbfs: float = LEVEL_FLOOR_DBFS  # RMS of the last chunk handed to the sink (after volume/limiter)
    vad_active: bool = False  # the voice activity detector hears speech (hangover included), in every mode
    transmitting: bool = False  # audio packets are going out (not muted, and the mode's gate is open)
    muted: bool = False
    transmit_mode: str = "continuous"
    output_volume: float = 1.0
    vad_threshold_dbfs: float = -45.0
    # DTX (see the module docstring)
    comfort: int = 0  # playout ticks filled with comfort noise during the peer's pauses (not concealment)
    talkspurts: int = 0  # talkspurts the peer resumed after a pause
    pause_concealed: int = 0  # concealed ticks that turned out to be a pause whose silent tail was lost
    # the device sink's queue kept near its target (see CallSession._keep_queue)
    output_trims: int = 0  # times queued or written audio was dropped to bring the device queue back
    output_trimmed_ms: float = 0.0  # how much, in all
    output_target_ms: float = 0.0  # what a device sink should hold ahead of each write (0: not a device sink)
    playout_relocks: int = 0  # times the playout tick moved earlier to the arrivals (a late first arrival)

    @property
    def mouth_to_ear_ms(self) -> float:
        return self.latency.total_ms

    def line(self) -> str:
        """One human-readable status line."""
        rtt = f"{self.rtt_ms:.0f}" if self.rtt_ms is not None else "-"
        mal = f" malformed {self.malformed}" if self.malformed else ""
        return (f"payload {self.payload_kbps:.2f} kbps | app {self.app_kbps:.2f} | wire {self.wire_kbps:.1f} "
                f"({self.wire_source}) | rtt {rtt} ms | buf {self.jitter_depth}/{self.jitter_target} | "
                f"lost {self.lost} late {self.late} conc {self.concealed} rec {self.recovered}{mal} | "
                f"enc {self.encode_ms:.1f} dec {self.decode_ms:.1f} ms | m2e {self.mouth_to_ear_ms:.0f} ms")


# ---------------------------------------------------------------------------------------------------------------
# helpers
# ---------------------------------------------------------------------------------------------------------------
def _now_us() -> int:
    return time.monotonic_ns() // 1000


def _app_version() -> str:
    try:
        from importlib.metadata import version

        return version("focalchat")[:64]
    except Exception:
        return ""


def _p50(values: deque[float]) -> float:
    return float(np.median(np.fromiter(values, np.float64))) if values else 0.0


class _Limiter:
    """Per-chunk peak limiter: the gain moves linearly across a chunk to ``ceiling / peak`` (attack within one
    chunk), recovers by ``release`` per chunk, and a final clip catches what the ramp let through."""

    def __init__(self, ceiling: float, release: float = 0.1) -> None:
        self.ceiling = float(ceiling)
        self.release = release
        self.gain = 1.0
        self.engaged = 0  # chunks where the gain was below 1

    def __call__(self, y: np.ndarray) -> np.ndarray:
        peak = float(np.max(np.abs(y))) if y.size else 0.0
        target = min(1.0, self.ceiling / peak) if peak > 0 else 1.0
        new = target if target < self.gain else min(target, self.gain + self.release)
        if new == 1.0 and self.gain == 1.0:
            return np.clip(y, -1.0, 1.0, out=y) if peak > 1.0 else y
        ramp = np.linspace(self.gain, new, y.size, dtype=np.float32)
        self.gain = new
        self.engaged += 1
        return np.clip(y * ramp, -self.ceiling, self.ceiling)


class _QueueGuard:
    """Keeps the audio queued in a device sink ahead of each write near ``target_ms`` (the playout worker's
    cushion). Deterministic and clock-free: :meth:`observe` is fed once per write with what the sink has
    queued and its underrun count, and says how much is surplus.

    Why: the playout tick writes one chunk per period, the device plays one chunk per period, so whatever the
    queue holds stays for the rest of the call. A device that stalls (an audio server that did not run for a
    while, an underrun that restarts the stream) or that runs a little slower than our clock leaves more
    queued than the cushion, and every later chunk waits that much longer (40+ ms seen after one underrun).

    The queue is *over* once its minimum over the last ``window`` writes exceeds ``target + slack`` (the
    minimum: a callback that pulls in bursts makes single readings jump); the surplus is that minimum less the
    target. The session then drops it where nobody hears it: queued silence or comfort noise, or a quiet chunk
    being written; after ``force_after`` more writes over target with no quiet audio, out of speech chunks
    (crossfaded, at most ``_TRIM_MAX_CUT_S`` a chunk). An underrun within ``2 * window`` writes of a trim
    means the device needs more than the target (a bursty callback): it grows by ``backoff_ms`` (up to
    ``max_target_ms``), so trims and underruns cannot alternate for long."""

    def __init__(self, target_ms: float, *, slack_ms: float = _TRIM_SLACK_S * 1000.0, window: int = _TRIM_WINDOW,
                 force_after: int = _TRIM_FORCE_TICKS, backoff_ms: float = _TRIM_BACKOFF_S * 1000.0,
                 max_target_ms: float = _TRIM_MAX_TARGET_S * 1000.0) -> None:
        if window < 1 or force_after < 0 or not 0 <= target_ms <= max_target_ms:
            raise ValueError("need window >= 1, force_after >= 0, 0 <= target_ms <= max_target_ms")
        self.target_ms = float(target_ms)
        self.slack_ms = float(slack_ms)
        self.window = int(window)
        self.force_after = int(force_after)
        self.backoff_ms = float(backoff_ms)
        self.max_target_ms = float(max_target_ms)
        self._lows: deque[float] = deque(maxlen=self.window)
        self._over = 0  # consecutive writes with a full window over target
        self._underruns: int | None = None
        self._since_trim: int | None = None
        self.trims = 0
        self.trimmed_ms = 0.0
        self.backoffs = 0

    def observe(self, queued_ms: float, underruns: int = 0) -> float:
        """Before a write: ``queued_ms`` in the sink, its underrun count. Returns the surplus (ms) that has
        lasted a whole window (0: none)."""
        if (self._underruns is not None and underruns > self._underruns and self._since_trim is not None
                and self._since_trim <= 2 * self.window):
            grown = min(self.max_target_ms, self.target_ms + self.backoff_ms)
            self.backoffs += grown > self.target_ms
            self.target_ms = grown
            self._since_trim = None
        self._underruns = underruns
        if self._since_trim is not None:
            self._since_trim += 1
        self._lows.append(float(queued_ms))
        if len(self._lows) < self.window or (low := min(self._lows)) <= self.target_ms + self.slack_ms:
            self._over = 0
            return 0.0
        self._over += 1
        return low - self.target_ms

    @property
    def overdue(self) -> bool:
        """Over target for ``force_after`` writes past the first full window: cut speech if need be."""
        return self._over > self.force_after

    def trimmed(self, ms: float) -> None:
        """``ms`` were dropped: start a new window."""
        self.trims += 1
        self.trimmed_ms += float(ms)
        self._lows.clear()
        self._over = 0
        self._since_trim = 0


def _shorten(y: np.ndarray, n: int, fade: int) -> np.ndarray:
    """``y`` less ``n`` samples cut out of its middle, the two sides crossfaded over ``fade`` samples
    (``n`` is capped so that the crossfade fits)."""
    size = y.size
    fade = max(1, min(int(fade), size // 4))
    n = max(0, min(int(n), size - fade))
    if n == 0:
        return y
    a = (size - n - fade) // 2
    r = np.linspace(0.0, 1.0, fade, dtype=np.float32)
    xf = y[a:a + fade] * (np.float32(1.0) - r) + y[a + n:a + n + fade] * r
    return np.concatenate([y[:a], xf, y[a + n + fade:]]).astype(np.float32, copy=False)


# ---------------------------------------------------------------------------------------------------------------
# the session
# ---------------------------------------------------------------------------------------------------------------
class CallSession:
    """One call: ``CallSession(model, source, sink, config)``, connect with one of
    :meth:`create_offer_code` / :meth:`accept_offer_code` / :meth:`accept_answer_code` / :meth:`host` /
    :meth:`connect`, watch :attr:`events` and :meth:`stats`, end with :meth:`stop` (or a ``with`` block).

    ``on_event(event)`` (optional) is called for every event, on the session thread that raised it (the
    network loop or a worker): keep it short and never call blocking session methods from it
    (:meth:`stop` from there is turned into an asynchronous stop).
    """

    def __init__(self, model: Any, source: AudioSource, sink: AudioSink, config: CallConfig | None = None,
                 *, on_event: Callable[[CallEvent], None] | None = None) -> None:
        self.model = model
        self.source = source
        self.sink = sink
        self.config = config or CallConfig()
        self.on_event = on_event
        if not getattr(model, "causal", True):
            raise ValueError("this model is full-context and cannot stream: a call needs a streaming model")
        if getattr(source, "sample_rate", model.sample_rate_input) != model.sample_rate_input:
            raise ValueError(f"the source delivers {source.sample_rate} Hz, the model takes "
                             f"{model.sample_rate_input} Hz")
        if getattr(sink, "input_rate", model.sample_rate_output) != model.sample_rate_output:
            raise ValueError(f"the sink takes {sink.input_rate} Hz, the model outputs {model.sample_rate_output} Hz")
        self.events: queue.Queue[CallEvent] = queue.Queue(maxsize=_EVENT_QUEUE_MAX)
        self.events_dropped = 0

        self.bits = int(model.bits_per_token)
        self.tokens_per_chunk = int(model.tokens_per_chunk)
        self.chunk_s = model.chunk_size / model.sample_rate_input
        # compact AUDIO frames leave these out: the handshake makes the peer's equal to ours
        self.geometry = AudioGeometry(self.bits, self.tokens_per_chunk, self.chunk_s * 1000.0)
        rate = Fraction(float(model.config.token_rate)).limit_denominator(0xFFFF)
        cfg = self.config
        self.local_hello = Hello(
            model_id=(model.model_id or "unnamed")[:255],
            model_hash=model_hash_prefix(model.fingerprint()),
            bits=self.bits,
            nickname=cfg.nickname,
            app_version=_app_version(),
            token_rate_num=rate.numerator,
            token_rate_den=rate.denominator,
            tokens_per_chunk=self.tokens_per_chunk,
            input_sample_rate=int(model.sample_rate_input),
            output_sample_rate=int(model.sample_rate_output),
            chunks_per_packet=cfg.chunks_per_packet,
            redundancy=cfg.redundancy,
        )
        self._hello_bytes = self.local_hello.encode()

        self._lock = threading.RLock()  # state, counters
        self._jb_lock = threading.Lock()
        self.jitter = JitterBuffer(cfg.jitter_initial_depth, cfg.jitter_min_depth, cfg.jitter_max_depth,
                                   chunk_duration_s=self.chunk_s)
        self._decoder = StreamDecoder(model)
        self._limiter = _Limiter(cfg.limiter_ceiling)
        self._state = CallState.IDLE
        self._started = False
        self._stop_event = threading.Event()  # workers: stop now
        self._call_up = threading.Event()
        self._ended = threading.Event()  # CallEnded emitted and everything released
        self._shutdown_lock = threading.Lock()
        self._shutdown_started = False
        self._closer: threading.Thread | None = None
        self._end_reason: tuple[str, str] | None = None

        self._net: TransportThread | None = None
        self._transport: PeerTransport | None = None
        self._encoder_thread: threading.Thread | None = None
        self._playout_thread: threading.Thread | None = None
        self._tick_handle: Any = None
        self._pump_handle: Any = None
        self._pump_at: float | None = None
        self._recording: RecordingWriter | None = None  # CallConfig.record_path: the whole call
        self._part: RecordingWriter | None = None  # start_recording(): part of the call
        self._part_path: Path | None = None
        self._rec_lock = threading.Lock()

        # netsim (outgoing)
        self._netsim_lock = threading.Lock()
        self._audio_sim: NetSim | None = cfg.netsim.audio_sim() if cfg.netsim else None
        self._control_sim: NetSim | None = cfg.netsim.control_sim() if cfg.netsim else None

        # handshake / liveness (loop thread, read elsewhere under _lock)
        self._channel_open_t: float | None = None
        self._remote_hello: Hello | None = None
        self._remote_ok = False  # we accepted the peer's HELLO
        self._local_ok = False  # the peer accepted ours
        self._last_hello_sent = -math.inf
        self._last_rx = 0.0
        self._last_tx = 0.0
        self._peer_lost = False
        self._last_ping_t = -math.inf
        self._ping_id = 0
        self._pings: dict[int, int] = {}
        self._srtt_ms: float | None = None
        self._rtt_last_ms: float | None = None
        self._bye_received = False
        self._text_id = 0
        self._texts_seen: deque[int] = deque(maxlen=256)
        self._reset_decoder = False
        self._call_up_t: float | None = None
        self._call_base: tuple[float, tuple[float, ...]] | None = None  # counters when the call came up
        # RTT echoes on compact AUDIO frames
        self._echo_src: tuple[int, float] | None = None  # (low 16 bits of a received first chunk, when)
        self._last_echo_sent = -math.inf
        self._sent_at: dict[int, float] = {}  # low 16 bits of our first chunk -> when sent (last 64)

        # counters
        self._malformed: Counter[str] = Counter()
        self._chunks_sent = 0
        self._audio_packets_sent = 0
        self._audio_bytes_sent = 0
        self._payload_bits_sent = 0
        self._audio_packets_received = 0
        self._model_wire_sent = 0  # modelled IP bytes we put on the wire: DATA + SACKs for received messages
        self._model_wire_recv = 0
        self._concealed = 0
        self._waiting = 0
        self._enc_ms: deque[float] = deque(maxlen=_TIMING_WINDOW)
        self._dec_ms: deque[float] = deque(maxlen=_TIMING_WINDOW)
        self._depths: deque[int] = deque(maxlen=int(round(_RATE_WINDOW_S / self.chunk_s)))
        window = int(round(_RATE_WINDOW_S / self.chunk_s))
        self._waits: deque[float] = deque(maxlen=window)  # jitter-buffer waits of played chunks (s)
        self._ahead: deque[float] = deque(maxlen=window)  # ms queued in the sink before each write
        self._outq: deque[float] = deque(maxlen=window)  # ... plus the stream's own delay then (ms)
        self._backlog: deque[float] = deque(maxlen=window)  # ms waiting in the source behind each chunk read
        # user controls (any thread; read by the workers once per chunk)
        self._muted = False
        self._mode = cfg.transmit_mode
        self._ptt = False
        self._volume = float(cfg.output_volume)
        self._vad_threshold = float(cfg.vad_threshold_dbfs)
        self._in_level = LEVEL_FLOOR_DBFS
        self._out_level = LEVEL_FLOOR_DBFS
        self._vad_active = False
        self._transmitting = False
        self._comfort = 0
        self._pause_concealed = 0
        self._arrived = threading.Event()  # an AUDIO packet arrived (wakes the playout worker to lock its tick)
        # the output queue guard (playout worker only; see _QueueGuard)
        self._guard: _QueueGuard | None = None
        self._quiet_ms = 0.0  # ms of quiet audio (silence, comfort noise, silent chunks) at the end of what was written
        self._settle = False
        self._trims = 0
        self._trimmed_ms = 0.0
        self._relocks = 0
        self._arrival_t = 0.0
        self._rate_samples: deque[tuple[float, tuple[float, ...]]] = deque(maxlen=64)

    # ------------------------------------------------------------------ lifecycle
    def start(self) -> CallSession:
        """Start the network thread and the workers (idempotent). Connection methods call it themselves."""
        with self._lock:
            if self._started:
                return self
            if self._shutdown_started:
                raise RuntimeError("this call has ended; create a new CallSession")
            self._started = True
        import torch

        torch.set_num_threads(1)  # process-wide: one thread per worker, the app runs several streams
        try:
            self._start_parts()
        except BaseException:
            self._begin_shutdown("error", "the call could not start")
            self._shutdown()
            raise
        self._set_state(CallState.READY)
        return self

    def _start_parts(self) -> None:
        cfg = self.config
        if cfg.record_path is not None:
            self._recording = RecordingWriter(cfg.record_path, self._recording_header("peer"))
        self._net = TransportThread(name=f"focalchat-net-{cfg.name}").start()
        self._transport = PeerTransport(name=cfg.name, thread=self._net, ice_servers=cfg.ice_servers,
                                        connect_timeout=cfg.connect_timeout_s, on_message=self._on_message,
                                        on_event=self._on_transport_event, sack_policy=cfg.sack_policy,
                                        sack_delay_s=cfg.sack_delay_s)
        self._encoder_thread = threading.Thread(target=self._encoder_main, name=f"focalchat-enc-{cfg.name}",
                                                daemon=True)
        self._playout_thread = threading.Thread(target=self._playout_main, name=f"focalchat-play-{cfg.name}",
                                                daemon=True)
        self._encoder_thread.start()
        self._playout_thread.start()
        self._net.call_soon(self._schedule_tick)

    def stop(self, reason: str = "hangup", message: str = "", timeout: float = 10.0) -> None:
        """Hang up: BYE to the peer, stop the workers, close the transport and the recording, join every
        thread. Idempotent and safe from any thread; from a session thread (e.g. an ``on_event`` callback)
        it only starts the shutdown, in a helper thread."""
        if self._in_session_thread():
            self._end_async(reason, message)
            return
        if self._begin_shutdown(reason, message):
            self._shutdown()
            return
        closer = self._closer
        if closer is not None and closer is not threading.current_thread():
            closer.join(timeout)
        if not self._ended.wait(timeout):
            log.warning("%s: shutdown did not finish within %.1f s", self.config.name, timeout)

    def close(self) -> None:
        self.stop()

    def __enter__(self) -> CallSession:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def wait(self, timeout: float | None = None) -> bool:
        """Block until the call has ended (True) or ``timeout`` passed (False)."""
        return self._ended.wait(timeout)

    @property
    def ended(self) -> bool:
        return self._ended.is_set()

    @property
    def state(self) -> CallState:
        return self._state

    @property
    def in_call(self) -> bool:
        return self._call_up.is_set() and not self._shutdown_started

    @property
    def end_reason(self) -> tuple[str, str] | None:
        """``(reason, message)`` of the :class:`CallEnded` event, once the call has ended."""
        return self._end_reason

    @property
    def transport(self) -> PeerTransport | None:
        return self._transport

    @property
    def peer_hello(self) -> Hello | None:
        return self._remote_hello

    def _in_session_thread(self) -> bool:
        cur = threading.current_thread()
        if self._net is not None and self._net.in_loop_thread():
            return True
        return cur in (self._encoder_thread, self._playout_thread)

    def _begin_shutdown(self, reason: str, message: str) -> bool:
        with self._shutdown_lock:
            if self._shutdown_started:
                return False
            self._shutdown_started = True
            self._end_reason = (reason, message)
        return True

    def _end_async(self, reason: str, message: str = "") -> None:
        """End the call from a session thread: the shutdown runs in a helper thread."""
        if not self._begin_shutdown(reason, message):
            return
        self._stop_event.set()
        closer = threading.Thread(target=self._shutdown, name=f"focalchat-close-{self.config.name}", daemon=True)
        closer.start()
        self._closer = closer  # published once started: stop() may join it from another thread

    def _shutdown(self) -> None:
        """The ordered shutdown (runs once, in the caller of stop() or in the closer thread)."""
        reason, message = self._end_reason or ("hangup", "")
        tr, net = self._transport, self._net
        try:
            if tr is not None and tr.is_open and reason in ("hangup", "error", "handshake-timeout"):
                bye = Bye(message[:200] if message else "").encode()
                for _ in range(2):  # the channel is unreliable: twice (a lost BYE costs the peer 3 s)
                    self._send_direct(bye)
                time.sleep(_BYE_LINGER_S)
            elif tr is not None and tr.is_open and reason == "refused":
                time.sleep(_REFUSE_LINGER_S)  # let our HELLO_ACK(accepted=False) reach the peer
            self._stop_event.set()
            for th in (self._encoder_thread, self._playout_thread):
                if th is not None and th.ident is not None and th is not threading.current_thread():
                    th.join(5.0)
                    if th.is_alive():
                        log.warning("%s: %s did not stop", self.config.name, th.name)
            if net is not None and net.running:
                with contextlib.suppress(Exception):
                    net.run_coroutine(self._cancel_timers(), timeout=2.0)
            if tr is not None:
                tr.close(timeout=3.0)
            if net is not None:
                net.stop(timeout=3.0)
        except Exception:
            log.exception("%s: error during shutdown", self.config.name)
        finally:
            with self._rec_lock:
                for w in (self._recording, self._part):
                    if w is not None:
                        with contextlib.suppress(Exception):
                            w.close()
                self._part = None  # its path stays: stop_recording() still returns it
            self._set_state(CallState.ENDED)
            self._emit(CallEnded(reason=reason, message=message))
            self._ended.set()

    async def _cancel_timers(self) -> None:
        for h in (self._tick_handle, self._pump_handle):
            if h is not None:
                h.cancel()
        self._tick_handle = self._pump_handle = None

    # ------------------------------------------------------------------ connecting
    def _need_transport(self) -> PeerTransport:
        self.start()
        if self._transport is None or self._shutdown_started:
            raise RuntimeError("this call has ended; create a new CallSession")
        return self._transport

    def _gathering(self):
        return allow_loopback_candidates() if self.config.local_only else contextlib.nullcontext()

    def create_offer_code(self) -> str:
        """Offerer, copy-paste mode: the offer code to send to the peer (by any chat)."""
        from app.signaling import encode_code

        tr = self._need_transport()
        with self._gathering():
            sdp = tr.create_offer()
        self._set_state(CallState.CONNECTING, "waiting for the answer code")
        return encode_code(sdp, "offer")

    def accept_offer_code(self, code: str) -> str:
        """Answerer, copy-paste mode: take the peer's offer code, return the answer code to send back.
        Raises :class:`app.signaling.SignalingError` (a message for the user) on a bad code."""
        from app.signaling import decode_code, encode_code

        _, sdp = decode_code(code, expect="offer")
        tr = self._need_transport()
        with self._gathering():
            answer = tr.accept_offer(sdp, connect_timeout=self.config.answer_relay_timeout_s)
        self._set_state(CallState.CONNECTING, "waiting for the peer to connect")
        return encode_code(answer, "answer")

    def accept_answer_code(self, code: str) -> None:
        """Offerer, copy-paste mode: take the peer's answer code; connecting starts."""
        from app.signaling import decode_code

        _, sdp = decode_code(code, expect="answer")
        tr = self._need_transport()
        self._set_state(CallState.CONNECTING, "connecting")
        tr.accept_answer(sdp)

    def host(self, host: str, port: int, *, timeout: float = 60.0,
             on_listening: Callable[[int], None] | None = None) -> None:
        """Direct mode, answerer: listen on ``host:port`` (TCP) for one peer, answer its offer. Blocks until a
        peer connected (or ``timeout``; :class:`app.signaling.SignalingError`). ``on_listening(port)`` is
        called (on the network thread) once listening, useful with ``port=0``."""
        from app import signaling

        tr = self._need_transport()

        def listening(bound: int) -> None:
            self._set_state(CallState.CONNECTING, f"listening on {host}:{bound}")
            if on_listening is not None:
                on_listening(bound)

        with self._gathering():
            tr.run_coroutine(signaling.serve(host, port, tr, timeout=timeout, on_listening=listening),
                             timeout=timeout + 15.0)

    def connect(self, host: str, port: int, *, timeout: float = 10.0) -> None:
        """Direct mode, offerer: connect to a peer listening on ``host:port`` (TCP) and exchange the SDP."""
        from app import signaling

        tr = self._need_transport()
        self._set_state(CallState.CONNECTING, f"calling {host}:{port}")
        with self._gathering():
            tr.run_coroutine(signaling.connect(host, port, tr, timeout=timeout), timeout=timeout + 15.0)

    # ------------------------------------------------------------------ user actions
    def set_muted(self, muted: bool) -> None:
        """Mute / unmute the microphone (any thread, cheap; from the next chunk on). Muted, nothing audible
        is sent: the current packet is completed with silence, one packet flagged SILENCE ends the
        talkspurt, then no audio packets go out (the peer hears comfort noise, not a loss; heartbeats keep
        the call alive)."""
        if not isinstance(muted, (bool, np.bool_)):
            raise TypeError(f"muted must be a bool, got {type(muted).__name__}")
        self._muted = bool(muted)

    def set_transmit_mode(self, mode: str) -> None:
        """``"continuous"``, ``"ptt"`` (send only while :meth:`set_ptt` says pressed) or ``"vad"`` (send only
        while the voice activity detector hears speech). Any thread, cheap; from the next chunk on."""
        if mode not in TRANSMIT_MODES:
            raise ValueError(f"transmit mode must be one of {', '.join(TRANSMIT_MODES)}, got {mode!r:.40}")
        self._mode = str(mode)

    def set_ptt(self, pressed: bool) -> None:
        """Push-to-talk key state (used in ``"ptt"`` mode; remembered in the others). Any thread, cheap."""
        if not isinstance(pressed, (bool, np.bool_)):
            raise TypeError(f"pressed must be a bool, got {type(pressed).__name__}")
        self._ptt = bool(pressed)

    def set_vad_threshold(self, dbfs: float) -> None:
        """Voice activity threshold in dBFS (RMS of 20 ms frames), -100..0: gates ``"vad"`` mode and flags silent
        packets in every mode. Any thread, cheap; from the next chunk on (the detector's learned noise floor
        is lowered with it, so a lower threshold applies at once)."""
        self._vad_threshold = _check_threshold(dbfs, "vad threshold")

    def set_output_volume(self, gain: float) -> None:
        """Gain on what we hear, 0.0..2.0 (1.0 = unchanged), applied before the limiter. Any thread, cheap;
        from the next played chunk on."""
        self._volume = _check_volume(gain, "output volume")

    @property
    def muted(self) -> bool:
        return self._muted

    @property
    def transmit_mode(self) -> str:
        return self._mode

    @property
    def output_volume(self) -> float:
        return self._volume

    @property
    def vad_threshold_dbfs(self) -> float:
        return self._vad_threshold

    def send_text(self, text: str) -> int:
        """Send a chat message (best effort, sent twice); returns its message id. Raises ``ValueError``
        (``PacketError``) for text that is too long (1000 UTF-8 bytes) or has control characters."""
        with self._lock:
            self._text_id = (self._text_id + 1) & 0xFFFFFFFF
            mid = self._text_id
        data = Text(mid, text).encode()
        if not self.in_call:
            raise RuntimeError("not in a call")
        for _ in range(_TEXT_REPEATS):
            self._send_control(data)
        self._record_text(SENT, text)
        return mid

    # ------------------------------------------------------------------ events
    def _emit(self, ev: CallEvent) -> None:
        try:
            self.events.put_nowait(ev)
        except queue.Full:
            self.events_dropped += 1
        if self.on_event is not None:
            try:
                self.on_event(ev)
            except Exception:
                log.exception("%s: on_event callback failed", self.config.name)

    def _set_state(self, state: CallState, detail: str = "") -> None:
        order = list(CallState)
        with self._lock:  # states only move forward (a late "connecting" never hides "in-call")
            if order.index(state) <= order.index(self._state):
                return
            self._state = state
        log.debug("%s: call %s %s", self.config.name, state.value, detail)
        self._emit(StateChanged(layer="call", state=state.value, detail=detail))

    def _on_transport_event(self, ev: TransportEvent) -> None:  # loop thread
        layers = {SignalingStateChanged: "signaling", IceGatheringStateChanged: "ice-gathering",
                  IceConnectionStateChanged: "ice", DtlsStateChanged: "dtls", ConnectionStateChanged: "connection"}
        layer = layers.get(type(ev))
        if layer is not None:
            self._emit(StateChanged(layer=layer, state=ev.state))  # type: ignore[attr-defined]
        elif isinstance(ev, ChannelOpen):
            self._emit(StateChanged(layer="channel", state="open", detail=f"{ev.setup_s * 1000:.0f} ms to connect"))
            self._on_channel_open()
        elif isinstance(ev, ChannelClosed):
            self._emit(StateChanged(layer="channel", state="closed"))
            if not self._shutdown_started and not self._bye_received:  # the channel is gone: the call ends
                msg = "the connection was closed without a goodbye"
                if not self._peer_lost:
                    self._peer_lost = True
                    silent = time.monotonic() - self._last_rx if self._last_rx else 0.0
                    self._emit(PeerLost(reason=msg, silent_s=silent))
                self._end_async("peer-lost", msg)
        elif isinstance(ev, TransportFailed):
            kind = {"timeout": "connect-timeout"}.get(ev.reason, ev.reason)
            self._emit(Error(kind=kind, message=ev.message))
            if ev.reason == "connection-lost":
                self._emit(PeerLost(reason=ev.message, silent_s=time.monotonic() - self._last_rx))
                self._end_async("peer-lost", ev.message)
            else:
                self._end_async("connect-failed", ev.message)

    # ------------------------------------------------------------------ sending
    def _send_direct(self, data: bytes) -> bool:
        tr = self._transport
        if tr is None:
            return False
        ok = tr.send(data)
        if ok:
            dbytes, _ = wire_bytes_per_message(len(data))
            with self._lock:
                self._model_wire_sent += dbytes
                self._last_tx = time.monotonic()
        return ok

    def _send_via(self, sim: NetSim | None, data: bytes) -> None:
        if sim is None:
            self._send_direct(data)
            return
        with self._netsim_lock:
            sim.send(data, time.monotonic())
        with self._lock:
            self._last_tx = time.monotonic()
        net = self._net
        if net is not None and net.running:
            with contextlib.suppress(RuntimeError):
                net.call_soon(self._pump_netsim)

    def _send_control(self, data: bytes) -> None:
        self._send_via(self._control_sim, data)

    def _pump_netsim(self) -> None:  # loop thread
        if self._stop_event.is_set():
            return
        now = time.monotonic()
        with self._netsim_lock:
            out: list[tuple[float, bytes]] = []
            nxt = None
            for sim in (self._audio_sim, self._control_sim):
                if sim is None:
                    continue
                out.extend(sim.deliver_timed(now))
                n = sim.next_delivery_s()
                if n is not None:
                    nxt = n if nxt is None else min(nxt, n)
        out.sort(key=lambda x: x[0])
        for _, data in out:
            self._send_direct(data)
        if nxt is not None and (self._pump_at is None or nxt < self._pump_at - 1e-4 or self._pump_handle is None):
            if self._pump_handle is not None:
                self._pump_handle.cancel()
            self._pump_at = nxt
            self._pump_handle = self._net.loop.call_later(max(0.0, nxt - now), self._pump_fired)

    def _pump_fired(self) -> None:
        self._pump_handle = None
        self._pump_at = None
        self._pump_netsim()

    # ------------------------------------------------------------------ control (loop thread)
    def _on_channel_open(self) -> None:
        now = time.monotonic()
        self._channel_open_t = now
        self._last_rx = now
        self._set_state(CallState.HANDSHAKE)
        self._send_hello(now)

    def _send_hello(self, now: float) -> None:
        self._last_hello_sent = now
        self._send_control(self._hello_bytes)

    def _schedule_tick(self) -> None:
        if self._stop_event.is_set() or self._net is None:
            return
        self._tick_handle = self._net.loop.call_later(_TICK_S, self._tick)

    def _tick(self) -> None:
        try:
            self._tick_body()
        except Exception:
            log.exception("%s: control tick failed", self.config.name)
        self._schedule_tick()

    def _tick_body(self) -> None:
        now = time.monotonic()
        self._sample_rates(now)
        if self._shutdown_started or self._channel_open_t is None:
            return
        cfg = self.config
        if not self._call_up.is_set():
            if now - self._channel_open_t > cfg.handshake_timeout_s:
                msg = (f"no handshake with the peer within {cfg.handshake_timeout_s:g} s "
                       "(is it a compatible FocalChat?)")
                self._emit(Error(kind="handshake-timeout", message=msg))
                self._end_async("handshake-timeout", msg)
                return
            if not self._local_ok and now - self._last_hello_sent >= _HELLO_RETRY_S:
                self._send_hello(now)
        silent = now - self._last_rx
        if silent > cfg.dead_peer_timeout_s:
            if not self._peer_lost:
                self._peer_lost = True
                msg = f"nothing received from the peer for {silent:.1f} s"
                self._emit(PeerLost(reason=msg, silent_s=silent))
                if cfg.end_on_peer_lost:
                    self._end_async("peer-lost", msg)
                    return
        if cfg.ping_interval_s > 0 and now - self._last_ping_t >= cfg.ping_interval_s:
            self._last_ping_t = now
            self._ping_id = (self._ping_id + 1) & 0xFFFFFFFF
            t_us = _now_us()
            self._pings[self._ping_id] = t_us
            if len(self._pings) > 16:
                self._pings.pop(next(iter(self._pings)))
            self._send_control(Ping(self._ping_id, t_us).encode())
        if now - self._last_tx >= cfg.heartbeat_interval_s:
            self._send_control(Heartbeat(_now_us()).encode())

    def _on_message(self, data: bytes) -> None:  # loop thread
        if self._shutdown_started:
            return
        now = time.monotonic()
        sack = self._model_sack_bytes()
        dbytes, _ = wire_bytes_per_message(len(data))
        with self._lock:
            self._model_wire_sent += sack  # our acknowledgement of this DATA packet (SACK policy)
            self._model_wire_recv += dbytes
        try:
            pkt = parse_packet(data, self.geometry)
        except PacketError as exc:
            self._count_malformed(exc.kind)
            return
        except Exception:  # never let a peer crash the loop
            log.exception("%s: parse_packet raised", self.config.name)
            self._count_malformed("internal")
            return
        self._last_rx = now
        if self._peer_lost and not self.config.end_on_peer_lost:
            self._peer_lost = False
            self._emit(StateChanged(layer="call", state=self._state.value, detail="peer is back"))
        try:
            self._dispatch(pkt, now)
        except Exception:
            log.exception("%s: handling a %s packet failed", self.config.name, type(pkt).__name__)
            self._count_malformed("internal")

    def _count_malformed(self, kind: str) -> None:
        with self._lock:
            self._malformed[kind] += 1

    def _model_sack_bytes(self) -> float:
        """Modelled IP bytes we spend acknowledging one received DATA packet (app.transport model)."""
        cfg = self.config
        if cfg.sack_policy == "immediate":
            return float(wire_bytes_per_message(0)[1])
        peer = self._remote_hello
        recv_cpp = peer.chunks_per_packet if peer is not None else cfg.chunks_per_packet
        return sack_bytes_per_message(cfg.sack_policy, recv_interval_s=recv_cpp * self.chunk_s,
                                      send_interval_s=cfg.chunks_per_packet * self.chunk_s,
                                      sack_delay_s=cfg.sack_delay_s)

    def _dispatch(self, pkt: Any, now: float) -> None:
        if is_audio(pkt):
            if pkt.bits != self.bits or pkt.tokens_per_chunk != self.tokens_per_chunk:
                self._count_malformed("foreign")
                return
            if not self._remote_ok:
                self._count_malformed("unexpected")
                return
            with self._jb_lock:
                self.jitter.put_packet(pkt, now)
            with self._lock:
                self._audio_packets_received += 1
                self._arrival_t = now
            self._arrived.set()
            with self._lock:
                if isinstance(pkt, CompactAudioPacket):
                    self._echo_src = (pkt.first_chunk & 0xFFFF, now)
                    sent = self._sent_at.get(pkt.echo_chunk) if pkt.echo_chunk is not None else None
                    if sent is not None and (rtt := (now - sent) * 1000.0 - pkt.echo_hold_ms) >= 0:
                        self._rtt_last_ms = rtt
                        self._srtt_ms = rtt if self._srtt_ms is None else 0.875 * self._srtt_ms + 0.125 * rtt
        elif isinstance(pkt, Ping):
            self._send_control(pkt.reply(_now_us()).encode())
        elif isinstance(pkt, Pong):
            sent = self._pings.pop(pkt.ping_id, None)
            if sent is None or sent != pkt.echo_time_us:
                self._count_malformed("unexpected")
                return
            rtt = (_now_us() - sent) / 1000.0
            with self._lock:
                self._rtt_last_ms = rtt
                self._srtt_ms = rtt if self._srtt_ms is None else 0.875 * self._srtt_ms + 0.125 * rtt
        elif isinstance(pkt, Heartbeat):
            pass
        elif isinstance(pkt, Hello):
            self._on_hello(pkt)
        elif isinstance(pkt, HelloAck):
            self._on_hello_ack(pkt)
        elif isinstance(pkt, Bye):
            self._bye_received = True
            msg = "the peer hung up" + (f" ({pkt.reason})" if pkt.reason else "")
            self._end_async("peer-hangup", msg)
        elif isinstance(pkt, Text):
            if not self._remote_ok:
                self._count_malformed("unexpected")
                return
            if pkt.message_id in self._texts_seen:
                return
            self._texts_seen.append(pkt.message_id)
            nick = self._remote_hello.nickname if self._remote_hello else ""
            self._record_text(RECEIVED, pkt.text)
            self._emit(TextReceived(text=pkt.text, message_id=pkt.message_id, nickname=nick))

    def _on_hello(self, hello: Hello) -> None:
        reason = check_compatible(self.local_hello, hello)
        if reason is not None:
            # direct, not through the simulated network: the call ends at once, and the peer must hear why
            self._send_direct(HelloAck(False, reason[:255]).encode())
            if not self._shutdown_started:
                self._emit(HandshakeRefused(by="us", reason=reason))
                self._end_async("refused", f"call refused: {reason}")
            return
        self._send_control(HelloAck(True).encode())
        if self._remote_hello != hello:
            if self._remote_hello is not None:  # the peer restarted its stream with new settings
                with self._jb_lock:
                    self.jitter.reset()
                self._reset_decoder = True
            self._remote_hello = hello
        self._remote_ok = True
        self._check_call_up()

    def _on_hello_ack(self, ack: HelloAck) -> None:
        if not ack.accepted:
            if not self._shutdown_started:
                self._emit(HandshakeRefused(by="peer", reason=ack.reason))
                self._end_async("refused", f"the peer refused the call: {ack.reason}")
            return
        self._local_ok = True
        self._check_call_up()

    def _check_call_up(self) -> None:
        if self._call_up.is_set() or not (self._remote_ok and self._local_ok):
            return
        h = self._remote_hello
        assert h is not None
        self._call_up_t = time.monotonic()
        base = (self._call_up_t, self._counters())
        with self._lock:
            self._call_base = base
        self._call_up.set()
        self._emit(HandshakeOk(peer_nickname=h.nickname, peer_model_id=h.model_id,
                               peer_chunks_per_packet=h.chunks_per_packet, peer_redundancy=h.redundancy,
                               peer_app_version=h.app_version))
        self._set_state(CallState.IN_CALL, f"with {h.nickname!r}" if h.nickname else "")

    # ------------------------------------------------------------------ recording
    def _recording_header(self, peer_name: str) -> RecordingHeader:
        return RecordingHeader(model_id=self.local_hello.model_id, model_hash=self.model.fingerprint(),
                               bits=self.bits, tokens_per_chunk=self.tokens_per_chunk,
                               token_rate=float(self.model.config.token_rate),
                               sample_rate_input=int(self.model.sample_rate_input),
                               sample_rate_output=int(self.model.sample_rate_output),
                               directions=(self.config.nickname or "me", peer_name or "peer"))

    def start_recording(self, path: str | Path) -> Path:
        """Record the call from now on to ``path`` (``.fcr``, both directions, times from now) until
        :meth:`stop_recording` or the end of the call; independent of ``CallConfig.record_path``. Any thread.
        Raises ``RuntimeError`` while another part is being recorded or after the call ended, ``OSError`` when
        the file cannot be created."""
        if isinstance(path, bool) or not isinstance(path, (str, Path)) or not str(path):
            raise TypeError(f"path must be a file path, got {path!r:.60}")
        target = Path(path)
        with self._rec_lock:
            if self._shutdown_started:
                raise RuntimeError("this call has ended")
            if self._part is not None:
                raise RuntimeError(f"already recording to {self._part_path}; stop_recording() first")
            peer = self._remote_hello
            self._part = RecordingWriter(target, self._recording_header(peer.nickname if peer is not None else ""))
            self._part_path = target
        return target

    def stop_recording(self) -> Path | None:
        """Finish the recording :meth:`start_recording` began and return its path (None when there was none).
        The file is complete when this returns. Any thread; also fine after the call ended (the recording was
        closed then)."""
        with self._rec_lock:
            part, path = self._part, self._part_path
            self._part = None
            self._part_path = None
        if part is not None:
            part.close()
        return path

    @property
    def recording_path(self) -> Path | None:
        """Where :meth:`start_recording` records now (None when not recording)."""
        return self._part_path

    def _record_chunk(self, direction: int, index: int, tokens: np.ndarray) -> None:
        if self._recording is None and self._part is None:
            return
        with self._rec_lock:
            for attr in ("_recording", "_part"):
                w = getattr(self, attr)
                if w is None:
                    continue
                try:
                    w.add_chunk(direction, index, tokens)
                except Exception as exc:  # disk full...: stop this recording, keep the call
                    self._emit(Error(kind="internal", message=f"recording stopped: {exc}"))
                    with contextlib.suppress(Exception):
                        w.close()
                    setattr(self, attr, None)

    def _record_text(self, direction: int, text: str) -> None:
        with self._rec_lock:
            for w in (self._recording, self._part):
                if w is not None:
                    with contextlib.suppress(Exception):
                        w.add_text(direction, text)

    # ------------------------------------------------------------------ encoder worker
    def _encoder_main(self) -> None:
        try:
            self._encoder_loop()
        except Exception as exc:
            kind = "audio-input" if type(exc).__name__ == "AudioDeviceError" else "internal"
            log.exception("%s: encoder stopped", self.config.name)
            self._emit(Error(kind=kind, message=f"{'microphone' if kind == 'audio-input' else 'encoder'}: {exc}"))
            self._end_async("error", str(exc))

    def _encoder_loop(self) -> None:
        import torch

        cfg = self.config
        stop = self._stop_event
        while not self._call_up.is_set():
            if stop.wait(0.05):
                return
        pace = cfg.pace_source if cfg.pace_source is not None else (getattr(self.source, "realtime", True) is False)
        flush = getattr(self.source, "flush", None)
        if callable(flush) and not pace:
            flush()  # drop the audio captured while connecting
        cpp, red = cfg.chunks_per_packet, cfg.redundancy
        tpc, bits = self.tokens_per_chunk, self.bits
        n_in = int(self.model.chunk_size)
        zeros = np.zeros(n_in, np.float32)
        vad = VoiceActivityDetector(cfg.vad_threshold_dbfs, _VAD_HANGOVER_S, self.chunk_s)
        history: deque[np.ndarray] = deque(maxlen=max(red, 1))
        pending: list[tuple[np.ndarray, bool]] = []  # (tokens, silent) of the packet being filled
        pending_first = 0
        state = None
        index = 0
        seq = 0
        talking = False  # the gate is open (this chunk is sent as part of a talkspurt)
        tail = False  # the gate closed: finishing the packet, then one all-silent packet, then DTX
        last_sent = -1  # index of the last chunk sent
        prev_tok: np.ndarray | None = None  # the chunk before this one (pre-roll in "vad" mode)
        talkspurt_flag = False
        t0 = time.monotonic()
        next_due = t0 + self.chunk_s
        ended = False
        with torch.inference_mode():
            while not stop.is_set():
                if pace:
                    wait = next_due - time.monotonic()
                    if wait > 0 and stop.wait(wait):
                        break
                    next_due += self.chunk_s
                x = self.source.read_chunk(timeout=0.2)
                if x is None:
                    if getattr(self.source, "finished", False):
                        ended = True
                        break
                    continue
                x = np.asarray(x, dtype=np.float32).reshape(-1)
                if x.size != n_in:
                    raise ValueError(f"the audio source returned a chunk of {x.size} samples, expected {n_in}")
                if not np.isfinite(x).all():
                    x = np.nan_to_num(x, nan=0.0, posinf=1.0, neginf=-1.0)
                backlog = float(getattr(self.source, "buffered_ms", 0.0) or 0.0)
                # the gate (user controls are read once per chunk)
                muted, mode, ptt = self._muted, self._mode, self._ptt
                if self._vad_threshold != vad.threshold_dbfs:
                    vad.set_threshold(self._vad_threshold)
                active = vad.update(x)
                audible = not muted and (mode != "ptt" or ptt)
                gate = audible and (mode != "vad" or active)
                ts = time.perf_counter()
                sig = torch.from_numpy(np.ascontiguousarray(x if audible else zeros)).reshape(1, -1)
                toks, state = self.model.encode_step(sig, state)
                tok = toks[0].numpy().astype(np.int64)
                enc_ms = (time.perf_counter() - ts) * 1000.0
                send_now: list[tuple[np.ndarray, bool]] = []
                if gate:
                    if not talking and not tail:  # a talkspurt starts (the call's first, or after DTX)
                        if mode == "vad" and cpp >= 2 and prev_tok is not None and last_sent < index - 1:
                            # pre-roll: the chunk before the onset leads the first packet (free with >= 2
                            # chunks per packet: the packet goes out when it would have anyway)
                            pending, pending_first = [(prev_tok, True)], index - 1
                        else:
                            pending_first = index
                        talkspurt_flag = pending_first > last_sent + 1
                    talking, tail = True, False
                    if not pending:
                        pending_first = index
                    pending.append((tok, not active))
                elif talking or tail:  # the talkspurt ends: complete the packet, then one all-silent packet
                    talking, tail = False, True
                    if not pending:
                        pending_first = index
                    pending.append((tok, True))
                if pending and (len(pending) >= cpp):
                    send_now, pending = pending[:cpp], pending[cpp:]
                with self._lock:
                    self._enc_ms.append(enc_ms)
                    self._backlog.append(backlog)
                    self._in_level = vad.level_dbfs
                    self._vad_active = active
                    self._transmitting = gate
                if send_now:
                    first = pending_first
                    silent = all(sil for _, sil in send_now)
                    flags = (AudioFlags.SILENCE if silent else 0) | (AudioFlags.TALKSPURT_START if talkspurt_flag else 0)
                    chunks = [t for t, _ in send_now]
                    for j, t in enumerate(chunks):
                        self._record_chunk(SENT, first + j, t)
                    seq = self._send_audio(seq, first, chunks, history, red, tpc, bits, t0, int(flags))
                    history.extend(chunks)
                    last_sent = first + len(chunks) - 1
                    pending_first = last_sent + 1
                    talkspurt_flag = False
                    if tail and silent:  # the silent packet is out: DTX (nothing sent until the gate opens)
                        tail = False
                        history.clear()
                        pending = []
                prev_tok = tok
                index += 1
        if ended and pending and not stop.is_set():
            chunks = [t for t, _ in pending]
            silent = all(sil for _, sil in pending)
            flags = (AudioFlags.SILENCE if silent else 0) | (AudioFlags.TALKSPURT_START if talkspurt_flag else 0)
            for j, t in enumerate(chunks):
                self._record_chunk(SENT, pending_first + j, t)
            self._send_audio(seq, pending_first, chunks, history, red, tpc, bits, t0, int(flags))
        if ended:
            self._emit(SourceEnded(chunks_sent=index))

    def _send_audio(self, seq: int, first: int, chunks: list[np.ndarray], history: deque[np.ndarray], red: int,
                    tpc: int, bits: int, t0: float, flags: int = 0) -> int:
        r = min(red, len(history), first)
        redundant = list(history)[len(history) - r:] if r else []
        cfg = self.config
        if cfg.compact_audio:
            now = time.monotonic()
            echo, hold = None, 0
            with self._lock:
                src = self._echo_src
                echo_due = cfg.rtt_echo_interval_s > 0 and now - self._last_echo_sent >= cfg.rtt_echo_interval_s
                if echo_due and src is not None:
                    held = int((now - src[1]) * 1000.0) // ECHO_HOLD_UNIT_MS * ECHO_HOLD_UNIT_MS  # rounded down
                    if held <= MAX_ECHO_HOLD_MS:
                        echo, hold = src[0], held
                        self._last_echo_sent = now
                        self._echo_src = None  # each received packet is echoed at most once
                self._sent_at[first & 0xFFFF] = now
                if len(self._sent_at) > 64:
                    del self._sent_at[next(iter(self._sent_at))]
            pkt: AudioPacket | CompactAudioPacket = CompactAudioPacket(first, self.geometry, list(chunks), redundant,
                                                                      flags, echo_chunk=echo, echo_hold_ms=hold)
        else:
            ts_ms = int((time.monotonic() - t0) * 1000) & 0xFFFFFFFF
            pkt = AudioPacket(seq & 0xFFFFFFFF, first, bits, tpc, list(chunks), redundant, ts_ms, flags)
        data = pkt.encode()
        with self._lock:
            self._audio_packets_sent += 1
            self._chunks_sent += len(chunks)
            self._audio_bytes_sent += len(data)
            self._payload_bits_sent += len(chunks) * tpc * bits
        self._send_via(self._audio_sim, data)
        return seq + 1

    # ------------------------------------------------------------------ playout worker
    def _playout_main(self) -> None:
        try:
            self._playout_loop()
        except Exception as exc:
            log.exception("%s: playout stopped", self.config.name)
            self._emit(Error(kind="audio-output", message=f"playback: {exc}"))
            self._end_async("error", str(exc))

    def _playout_loop(self) -> None:
        """One playout tick per chunk period. The tick's phase is locked to the arrivals: while nothing
        plays (before the first chunk, after a jitter-buffer reset) the worker waits for an AUDIO packet and
        puts its next tick ``_LOCK_MARGIN_S`` after that arrival, so a chunk that arrives waits a few ms
        for its tick instead of up to a whole period (on average half of one). Nothing has been written to
        the sink then, so the output device starts right behind the chunk: a device sink first gets
        ``output_cushion_ms`` of silence, so that a tick that waits up to ``_GRACE_S`` for a chunk a few ms late
        (instead of concealing, or holding the timeline by a whole chunk) does not starve the device.

        The lock is released when the peer pauses (the buffer ran dry after a silent chunk: DTX, or a delay
        spike in silence): the ticks go on at the old phase, playing comfort noise, and the first arrival of
        the next talkspurt locks them again. That tick comes less than a period after the last one, so the
        comfort noise still queued in the sink beyond the cushion is dropped right then (``sink.trim``).
        Otherwise a device sink's queue is watched by a :class:`_QueueGuard` (see there and :meth:`_write`).

        A lock taken on a late first arrival (the first encode, a scheduling delay on a loaded machine) would
        make every later chunk wait that much longer for the rest of a talkspurt (40+ ms seen). So once
        ``_RELOCK_WINDOW`` chunks in a row (~2 s) have all waited more than ``_LOCK_MARGIN_S + _RELOCK_SLACK_S``
        for their tick beyond whole chunk periods (those are the jitter buffer's depth, which it manages
        itself), the tick moves earlier by the least of those excesses less the margin (counted in
        ``CallStats.playout_relocks``); the next write then comes early, and what that adds to the sink's
        queue is dropped as after a re-lock (quiet audio at once, else by the queue guard)."""
        import torch

        stop = self._stop_event
        period = self.chunk_s
        silence = np.zeros(self.model.output_chunk_size, np.float32)
        started = False  # audio has started: EMPTY ticks are concealed
        hold = 0  # EMPTY ticks not resolved yet
        locked = False  # the tick phase is locked to the arrivals of the current stream
        talkspurts = 0
        # a device sink (it reports its stream latency) gets a short cushion of silence before a stream's first
        # chunk, so that a tick a few ms late (or waiting _GRACE_S for its chunk) does not starve the device
        device = isinstance(getattr(self.sink, "stream_latency_ms", None), (int, float))
        cushion_s = self.config.output_cushion_ms / 1000.0
        n_cushion = int(round(cushion_s * self.model.sample_rate_output)) if device else 0
        cushion_block = np.zeros(n_cushion, np.float32) if n_cushion else None
        cushion = cushion_block
        self._guard = _QueueGuard(self.config.output_cushion_ms) if device else None
        early: deque[float] = deque(maxlen=_RELOCK_WINDOW)  # wait phases of the chunks played since the tick moved
        next_tick = time.monotonic() + period
        with torch.inference_mode():
            while not stop.is_set():
                if not locked and self._arrived.wait(max(0.0, next_tick - time.monotonic())):
                    with self._lock:
                        arrival = self._arrival_t
                    self._arrived.clear()
                    next_tick = max(time.monotonic(), arrival + _LOCK_MARGIN_S)
                    locked = True
                    early.clear()
                    self._settle = started  # re-locked after a pause: drop the comfort noise queued beyond the cushion
                wait = next_tick - time.monotonic()
                if wait > 0 and stop.wait(wait):
                    break
                if locked:  # the chunk due now is late by a few ms: wait for it rather than conceal a whole chunk
                    grace_end = time.monotonic() + _GRACE_S
                    for _ in range(100):
                        self._arrived.clear()
                        with self._jb_lock:
                            missing = self.jitter.next_missing
                        left = grace_end - time.monotonic()
                        if not missing or left <= 0 or stop.is_set():
                            break
                        self._arrived.wait(left)
                now = time.monotonic()
                if now - next_tick > _MAX_CATCHUP_TICKS * period:
                    next_tick = now  # fell far behind (machine suspended, heavy load): do not burst
                next_tick += period
                if self._reset_decoder:
                    self._reset_decoder = False
                    self._decoder.reset()
                    started = False
                    hold = 0
                with self._jb_lock:
                    depth = self.jitter.depth
                    item = self.jitter.pop(now)
                    n_ts = self.jitter.talkspurts
                kind = item.kind
                # it arrived just before this tick (not a pause tick: that one waits for the next talkspurt)
                if not locked and kind is not PlayoutKind.NOT_STARTED and kind is not PlayoutKind.EMPTY:
                    locked = True
                    self._arrived.clear()
                    early.clear()
                if cushion is not None and kind is not PlayoutKind.NOT_STARTED:
                    self.sink.write_chunk(cushion)  # the stream's first write: a device sink starts behind it
                    self._quiet_ms += 1000.0 * cushion.size / self.model.sample_rate_output
                    cushion = None
                if kind in (PlayoutKind.TOKENS, PlayoutKind.LOSS, PlayoutKind.EMPTY):
                    with self._lock:
                        self._depths.append(depth)
                if n_ts != talkspurts:  # the peer resumed after a pause: a hold was that pause
                    talkspurts = n_ts
                    if hold:
                        with self._lock:
                            self._pause_concealed += hold
                        hold = 0
                if kind is PlayoutKind.NOT_STARTED:
                    if started:  # the jitter buffer was reset (new stream)
                        self._decoder.reset()
                        started = False
                    if locked:  # lock the tick to the new stream's first arrival
                        locked = False
                        self._arrived.clear()
                        cushion = cushion_block
                    continue
                if kind is PlayoutKind.BUFFERING:
                    self._write(self._decoder.pause() if started else silence, comfort=started, quiet=True)
                    continue
                ts = time.perf_counter()
                quiet = False
                if kind is PlayoutKind.TOKENS:
                    y = self._decoder.decode(item.tokens)
                    started = True
                    hold = 0
                    quiet = item.silence
                    if item.arrival_s is not None and item.position is not None:
                        waited = now - item.arrival_s - item.position * period
                        with self._lock:
                            self._waits.append(waited)
                        early.append(waited % period)  # the phase: whole chunks waited are the buffer's depth
                        lead = min(early) - _LOCK_MARGIN_S
                        if locked and len(early) == early.maxlen and lead > _RELOCK_SLACK_S:
                            next_tick -= lead  # every chunk of the window waited: tick earlier
                            early.clear()
                            self._settle = True  # the early write's surplus in the sink is dropped
                            with self._lock:
                                self._relocks += 1
                    self._record_chunk(RECEIVED, int(item.index), np.asarray(item.tokens))
                elif kind is PlayoutKind.LOSS:
                    y = self._decoder.decode(None)
                    hold = 0
                else:  # EMPTY: the buffer ran dry (or a silent tick was inserted)
                    if not started:
                        self._write(silence, quiet=True)
                        continue
                    if item.pause:  # the peer paused after a silent chunk (DTX): comfort noise, not a loss
                        if locked and depth == 0:  # nothing buffered: lock the tick to the next talkspurt
                            locked = False
                            self._arrived.clear()
                        self._write(self._decoder.pause(), comfort=True, quiet=True)
                        continue
                    y = self._decoder.decode(None)
                    hold += 1
                dec_ms = (time.perf_counter() - ts) * 1000.0
                with self._lock:
                    self._dec_ms.append(dec_ms)
                    self._concealed = self._decoder.concealed
                    self._waiting = hold
                self._write(y, quiet=quiet)

    def _write(self, y: np.ndarray, comfort: bool = False, quiet: bool = False) -> None:
        """Volume, limiter, level meter, the output queue guard, then the sink (playout worker). ``quiet``: the
        chunk is silence, comfort noise or a chunk the peer flagged silent (it may be cut short)."""
        y = np.asarray(y, dtype=np.float32)
        vol = self._volume
        if vol != 1.0:
            y = y * np.float32(vol)
        y = self._limiter(y)
        ahead = getattr(self.sink, "buffered_ms", None)
        delay = getattr(self.sink, "output_delay_ms", None)
        level = rms_dbfs(y)
        if self._guard is not None and isinstance(ahead, (int, float)):
            y = self._keep_queue(self._guard, float(ahead), y, quiet)
        with self._lock:
            self._out_level = level
            if comfort:
                self._comfort += 1
            if isinstance(ahead, (int, float)):
                self._ahead.append(float(ahead))
                if isinstance(delay, (int, float)):
                    self._outq.append(float(ahead) + float(delay))
        self.sink.write_chunk(y)
        chunk_ms = 1000.0 * y.size / self.model.sample_rate_output
        self._quiet_ms = self._quiet_ms + chunk_ms if quiet else 0.0

    def _keep_queue(self, guard: _QueueGuard, ahead: float, y: np.ndarray, quiet: bool) -> np.ndarray:
        """Drop what a device sink holds beyond its target (see :class:`_QueueGuard`): queued audio that is all
        quiet is dropped in the sink (``sink.trim``, when it has one); else a quiet chunk being written is cut
        short; after ``force_after`` writes with neither, a speech chunk (crossfaded). Returns the chunk to write."""
        underruns = getattr(self.sink, "underruns", 0)
        excess = guard.observe(ahead, underruns if isinstance(underruns, int) else 0)
        if self._settle:  # re-locked after a pause: the queue is over by what the early tick added
            self._settle = False
            if ahead - guard.target_ms > 1.0:
                excess = max(excess, ahead - guard.target_ms)
        if excess <= 0.0:
            return y
        trim = getattr(self.sink, "trim", None)
        if callable(trim) and self._quiet_ms >= ahead:  # all that is queued is silence or comfort noise
            dropped = float(trim(max(guard.target_ms, ahead - excess)) or 0.0)
            if dropped > 0.0:
                guard.trimmed(dropped)
                self._count_trim(dropped)
            return y
        if not quiet and not guard.overdue:
            return y
        rate = self.model.sample_rate_output
        cap = y.size if quiet else int(_TRIM_MAX_CUT_S * rate)
        n = min(int(excess * rate / 1000.0), cap)
        if n <= 0:
            return y
        out = _shorten(y, n, int(_XFADE_S * rate))
        dropped = 1000.0 * (y.size - out.size) / rate
        guard.trimmed(dropped)
        self._count_trim(dropped)
        return out

    def _count_trim(self, ms: float) -> None:
        with self._lock:
            self._trims += 1
            self._trimmed_ms += ms

    # ------------------------------------------------------------------ stats
    def _counters(self) -> tuple[float, ...]:
        tr = self._transport
        ts = tr.stats() if tr is not None else None
        wire = ts.wire if ts is not None else None
        with self._lock:
            return (
                float(self._payload_bits_sent),
                float(self._audio_bytes_sent),
                float(ts.bytes_sent if ts else 0),
                float(ts.bytes_received if ts else 0),
                float(wire.ip_bytes_sent() if wire else -1),
                float(wire.ip_bytes_received() if wire else -1),
                float(self._model_wire_sent),
                float(self._model_wire_recv),
            )

    def _sample_rates(self, now: float) -> None:
        sample = (now, self._counters())
        with self._lock:
            self._rate_samples.append(sample)

    def stats(self) -> CallStats:
        """A snapshot of the call (safe from any thread; never waits for the network loop)."""
        now = time.monotonic()
        cur = self._counters()
        with self._lock:
            samples = list(self._rate_samples)
            call_t0 = self._call_up_t
            call_base = self._call_base

        def ref(i: int, avg: bool) -> tuple[float, float] | None:
            """(time, value) of counter ``i`` at the start of the window. Live: the newest sample at least
            ``_RATE_WINDOW_S`` old, else the oldest one (samples taken before the counter existed, negative,
            are skipped). Average: the counters when the call came up."""
            if avg:
                if call_base is None or call_base[1][i] < 0:
                    return None
                return call_base[0], call_base[1][i]
            best = None
            for t, c in samples:
                if c[i] >= 0 and (now - t >= _RATE_WINDOW_S or best is None):
                    best = (t, c[i])
            return best

        def rate(i: int, avg: bool = False) -> float:
            r = ref(i, avg)
            if r is None or cur[i] < 0 or now - r[0] <= 0.05:
                return 0.0
            return (cur[i] - r[1]) * (1.0 if i == 0 else 8.0) / (now - r[0]) / 1000.0

        measured = cur[4] >= 0
        with self._jb_lock:
            js = self.jitter.stats
        tr = self._transport
        send_drops = tr.stats().send_drops if tr is not None else 0
        with self._lock:
            enc, dec = _p50(self._enc_ms), _p50(self._dec_ms)
            srtt, last_rtt = self._srtt_ms, self._rtt_last_ms
            malformed = dict(self._malformed)
            concealed, waiting = self._concealed, self._waiting
            low_water = min(self._depths) if self._depths else 0
            counts = (self._audio_packets_sent, self._audio_packets_received, self._chunks_sent)
            wait_ms = _p50(self._waits) * 1000.0 if self._waits else None
            ahead_ms = _p50(self._ahead) if self._ahead else None
            outq_ms = _p50(self._outq) if self._outq else None
            backlog_ms = _p50(self._backlog)
            levels = (self._in_level, self._out_level, self._vad_active, self._transmitting)
            comfort, pause_concealed = self._comfort, self._pause_concealed
            trims, trimmed_ms = self._trims, self._trimmed_ms
            relocks = self._relocks
        guard = self._guard
        with self._netsim_lock:
            netsim_lost = self._audio_sim.stats.lost if self._audio_sim is not None else 0
        peer = self._remote_hello
        cpp_peer = peer.chunks_per_packet if peer is not None else self.config.chunks_per_packet
        chunk_ms = self.chunk_s * 1000.0
        stream_ms = getattr(self.sink, "stream_latency_ms", None)
        if outq_ms is not None:  # the sink says how long its stream delays audio (PortAudio's DAC times)
            device_ms = outq_ms
        elif ahead_ms is not None and isinstance(stream_ms, (int, float)):
            device_ms = ahead_ms + float(stream_ms)
            sblock, srate = getattr(self.sink, "blocksize", None), getattr(self.sink, "device_rate", None)
            if isinstance(sblock, (int, float)) and isinstance(srate, (int, float)) and srate > 0:
                device_ms += 500.0 * sblock / srate  # a chunk waits half a callback block on average
        else:
            device_ms = float(getattr(self.sink, "latency_ms", None) or getattr(self.sink, "buffered_ms", 0.0) or 0.0)
        capture_ms = 0.0
        block, dev_rate = getattr(self.source, "blocksize", None), getattr(self.source, "device_rate", None)
        if isinstance(block, (int, float)) and isinstance(dev_rate, (int, float)) and dev_rate > 0:
            capture_ms = 1000.0 * block / dev_rate + backlog_ms
        jitter_ms = max(0.0, wait_ms) if wait_ms is not None else max(0.0, low_water - 0.5) * chunk_ms
        lat = LatencyBreakdown(chunk_ms=chunk_ms, encode_ms=enc, packetization_ms=(cpp_peer - 1) * chunk_ms,
                               network_ms=(srtt or 0.0) / 2.0, jitter_ms=jitter_ms, decode_ms=dec,
                               device_ms=device_ms, capture_ms=capture_ms)
        level = getattr(self.source, "level_dbfs", (-120.0, -120.0))
        return CallStats(
            state=self._state.value,
            call_s=(now - call_t0) if call_t0 is not None else 0.0,
            peer_nickname=peer.nickname if peer is not None else "",
            payload_kbps=rate(0),
            payload_kbps_avg=rate(0, avg=True),
            audio_app_kbps=rate(1),
            app_kbps=rate(2),
            app_kbps_avg=rate(2, avg=True),
            app_recv_kbps=rate(3),
            wire_kbps=rate(4 if measured else 6),
            wire_recv_kbps=rate(5 if measured else 7),
            wire_kbps_avg=rate(4 if measured else 6, avg=True),
            wire_source="measured" if measured else "model",
            wire_model_kbps=rate(6),
            rtt_ms=srtt,
            rtt_last_ms=last_rtt,
            jitter_depth=js.depth,
            jitter_low_water=low_water,
            jitter_target=js.target_depth,
            jitter_estimate_ms=js.jitter * chunk_ms,
            played=js.played,
            lost=js.lost,
            late=js.late,
            concealed=concealed,
            recovered=js.recovered,
            duplicates=js.duplicates,
            underruns=js.underruns,
            waiting=waiting,
            dropped=js.dropped,
            redundant_unused=js.redundant_unused,
            audio_packets_sent=counts[0],
            audio_packets_received=counts[1],
            chunks_sent=counts[2],
            send_drops=send_drops,
            malformed=sum(malformed.values()),
            malformed_by_kind=malformed,
            netsim_lost=netsim_lost,
            encode_ms=enc,
            decode_ms=dec,
            latency=lat,
            mic_level_dbfs=float(level[0]) if isinstance(level, Sequence) and level else -120.0,
            input_level_dbfs=levels[0],
            output_level_dbfs=levels[1],
            vad_active=levels[2],
            transmitting=levels[3],
            muted=self._muted,
            transmit_mode=self._mode,
            output_volume=self._volume,
            vad_threshold_dbfs=self._vad_threshold,
            comfort=comfort,
            talkspurts=js.talkspurts,
            pause_concealed=pause_concealed,
            output_trims=trims,
            output_trimmed_ms=trimmed_ms,
            output_target_ms=guard.target_ms if guard is not None else 0.0,
            playout_relocks=relocks,
        )

    def stats_dict(self) -> dict[str, Any]:
        """:meth:`stats` as plain data (for ``-v`` logs and JSON)."""
        s = self.stats()
        d = dataclasses.asdict(s)
        d["mouth_to_ear_ms"] = s.mouth_to_ear_ms
        return d
