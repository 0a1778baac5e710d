"""Adaptive jitter buffer for codec chunks (one chunk = 4 tokens = 80 ms).

The network side calls :meth:`JitterBuffer.put` (or :meth:`~JitterBuffer.put_packet`)
for every chunk copy that arrives, primary or redundant; the decoder loop calls
:meth:`JitterBuffer.pop` once per chunk period and gets a :class:`PlayoutItem`:

    ``TOKENS``       play ``item.tokens`` (chunk ``item.index``); ``item.recovered``
                     if only a redundant copy arrived; ``item.lost`` > 0 if chunks
                     just before it were declared lost (the preceding EMPTY ticks
                     already stood in for them)
    ``LOSS``         chunk ``item.index`` is missing: conceal one chunk. ``item.lost``
                     chunks (>= 1) were declared lost; the timeline moved past them
    ``EMPTY``        nothing played this tick and the timeline is held: the buffer
                     ran dry (conceal after speech, silence after silence), or a
                     silent tick was inserted to deepen the buffer
    ``BUFFERING``    a stream started (or a talkspurt began): filling to the target
                     depth; play silence
    ``NOT_STARTED``  nothing received yet (or since :meth:`~JitterBuffer.reset`); silence

Everything is chunk-level, deterministic and clock-free: times are passed in
(seconds, any epoch, one clock for ``put`` and ``pop``).

Terms. The playout point ``next_index`` is the next chunk to play. The depth is
``newest buffered index + 1 - next_index`` (holes included), measured at each pop
before playing. The target depth is the depth we want at the *lowest* point
between arrivals (the "low-water mark"): 1 means a chunk arrives just in time,
each extra chunk is 80 ms of protection against jitter. With several chunks per
packet the depth saw-tooths above the low-water mark on its own.

Policy.

* Start: the first chunk received (at time ``a``) anchors the playout point;
  playing starts at the first pop at or after ``a + (target - 1) * 80 ms``, which
  makes the low-water mark equal to the target whatever the packetisation. Chunks
  older than the anchor that arrive during buffering move it back (reordering at
  the start), by at most ``max_depth``.
* Missing chunk at playout: if nothing newer is buffered, the tick is EMPTY and
  the timeline is *held* (we cannot tell loss from delay yet); each held tick
  stands in for the chunk that was due then. Once newer chunks are buffered, the
  missing chunks whose slots have passed (on the timeline from before the hold)
  are declared lost: if the hold covered the whole gap, the first buffered chunk
  plays in this same tick; otherwise this tick is one LOSS (conceal) and the
  playout point moves one chunk past it. So k lost chunks cost exactly k
  concealed ticks and leave the delay as it was. If the awaited chunk arrives
  instead, the held ticks were a delay spike: they count as ``underruns`` and the
  delay has grown by that much (the shrink rule takes it back later).
* Growth (target +1, at most once per chunk period, capped at ``max_depth``):
  a chunk arrives after its slot was concealed (``late``, including a redundant
  copy that came too late to recover its chunk), or a held-for chunk arrives
  (it was delayed, not lost). The target also rises at once to the jitter target
  ``min_depth + round(jitter_margin * J)``, where ``J`` is the RFC 3550
  interarrival jitter estimator (``J += (|D| - J) / 16``) in chunks, from arrival
  times vs sender timestamps (once per packet) or vs chunk indices; ``|D|`` is
  clamped at ``max_depth`` so that one wild sample cannot blow the target up.
  A target above the current depth is reached by inserting EMPTY ticks in front
  of silent chunks (at most one per chunk), and by the holds of underruns.
* Shrink: after ``shrink_after_s`` (2 s) without growth, the target decreases by
  one, not below ``max(min_depth, jitter target)``; the surplus of that window,
  ``low-water mark - target``, is then removed by dropping that many chunks, one
  per tick, each only if it is silence (``silence=`` on put, the packet's SILENCE
  flag, or the ``is_silence`` hook) and the chunk after it is present. A surplus
  of ``force_drop_excess`` chunks or more (default 4 = 320 ms) is dropped whole,
  even during speech.
* DTX: when the buffer runs dry after a silent chunk, the EMPTY ticks are not
  counted as underruns. A chunk flagged ``talkspurt_start`` that follows a gap
  (or a dry buffer) restarts buffering from that chunk: the gap is not counted
  as lost and the delay is re-set to the target. The sender's chunk index must
  keep counting during DTX (it is a media clock).
* Stream restart: a chunk more than ``restart_jump`` (64) chunks behind the
  playout point, or 4 primary chunks in a row more than ``max_depth`` behind it
  (late, or copies of played chunks: no network delay explains that), means the
  peer restarted its stream: the buffer resets and starts again from that chunk
  (the target and jitter estimate are kept: same network). The call engine
  should also call :meth:`JitterBuffer.reset` on a new HELLO. Forward: a chunk
  ``max_ahead`` (256) or more ahead of the playout point is ``foreign`` and
  dropped, unless the buffer is empty or 4 such primary chunks come in a row;
  then the buffer resynchronises on it.
"""

from __future__ import annotations

import dataclasses
import enum
import math
import operator
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from app.packet import AudioPacket

__all__ = [
    "CHUNK_DURATION_S",
    "JitterBuffer",
    "JitterStats",
    "PlayoutItem",
    "PlayoutKind",
    "PutResult",
]

#: Duration of one chunk (4 tokens at 50 tokens/s).
CHUNK_DURATION_S = 0.08

_EPS = 1e-9
#: Consecutive late (or foreign) primary chunks that prove a restarted (or jumped) stream.
_RESTART_RUN = 4
_U32 = 1 << 32


class PlayoutKind(enum.Enum):
    NOT_STARTED = "not_started"
    BUFFERING = "buffering"
    TOKENS = "tokens"
    LOSS = "loss"
    EMPTY = "empty"


class PutResult(enum.Enum):
    #: Stored for playout.
    BUFFERED = "buffered"
    #: A copy of a chunk already held or played (ignored).
    DUPLICATE = "duplicate"
    #: Arrived after its playout slot (ignored).
    LATE = "late"
    #: Implausibly far ahead of the playout point (ignored).
    FOREIGN = "foreign"


@dataclass(frozen=True)
class PlayoutItem:
    kind: PlayoutKind
    #: The chunk played (TOKENS), missing (LOSS) or waited for (EMPTY, BUFFERING).
    index: int | None = None
    tokens: np.ndarray | None = None
    #: TOKENS only: the chunk came from a redundant copy (its primary was lost or late).
    recovered: bool = False
    #: Chunks declared lost at this tick (LOSS: >= 1; TOKENS: after a hold).
    lost: int = 0
    #: EMPTY only: the last chunk played was silence (a DTX pause or a silent tick inserted before a silent
    #: chunk): play comfort noise, nothing was lost.
    pause: bool = False
    #: TOKENS only: when the chunk arrived (the ``put`` time) and its position among the primary chunks of its
    #: packet (0 for the first; None for a redundant copy): ``now - arrival_s - position * chunk`` is the time
    #: the packet's first chunk would have waited in the buffer (the packetisation saw-tooth taken out).
    arrival_s: float | None = None
    position: int | None = None
    #: TOKENS only: the chunk is silence (its packet was flagged SILENCE, or ``silence=`` on put).
    silence: bool = False


@dataclass
class JitterStats:
    #: Chunk copies offered to ``put`` (primary and redundant).
    received: int = 0
    #: Primary copies of chunks already held or played (network duplicates).
    duplicates: int = 0
    #: Redundant copies of chunks already held or played (redundancy not needed).
    redundant_unused: int = 0
    #: Copies that arrived after their chunk's slot was concealed.
    late: int = 0
    #: Chunks too far ahead of the playout point, dropped.
    foreign: int = 0
    #: Primary chunks that arrived after a newer primary chunk.
    reordered: int = 0
    #: Chunks played (TOKENS).
    played: int = 0
    #: Chunks declared lost at playout time.
    lost: int = 0
    #: Chunks played from a redundant copy.
    recovered: int = 0
    #: EMPTY ticks spent waiting, during speech, for a chunk that then arrived
    #: (a delay spike; waits that end in a loss count in ``lost`` instead).
    underruns: int = 0
    #: EMPTY ticks inserted (before silence) to deepen the buffer.
    inserted: int = 0
    #: Chunks dropped to shrink the buffer.
    dropped: int = 0
    #: Talkspurts restarted after a DTX gap.
    talkspurts: int = 0
    #: Stream restarts (peer restarted: index jumped back).
    restarts: int = 0
    #: Resynchronisations on a far-ahead index.
    resyncs: int = 0
    #: Current depth in chunks (see module docstring).
    depth: int = 0
    #: Current target depth in chunks.
    target_depth: int = 0
    #: RFC 3550 interarrival jitter estimate, in chunks.
    jitter: float = 0.0


@dataclass
class _Entry:
    tokens: np.ndarray
    redundant: bool
    silence: bool
    talkspurt: bool
    arrival_s: float
    position: int | None = None


class _State(enum.Enum):
    IDLE = 0
    BUFFERING = 1
    PLAYING = 2


class JitterBuffer:
    """Adaptive chunk-level jitter buffer (see the module docstring for the policy).

    Args:
        initial_depth: starting target depth in chunks.
        min_depth, max_depth: bounds of the target depth.
        chunk_duration_s: duration of one chunk.
        is_silence: optional ``tokens -> bool`` used when ``put`` is given no
            ``silence`` flag; chunks not known to be silence are never dropped or
            stretched (unless the surplus reaches ``force_drop_excess``).
        max_ahead: chunks at or beyond ``next_index + max_ahead`` are foreign.
        restart_jump: a chunk further than this behind the playout point restarts the stream.
        shrink_after_s: stable time before the target shrinks by one and the surplus is dropped.
        jitter_margin: jitter target = ``min_depth + round(jitter_margin * J)``.
        force_drop_excess: a surplus this large is dropped during speech too (None: never).
    """

    def __init__(
        self,
        initial_depth: int = 2,
        min_depth: int = 1,
        max_depth: int = 12,
        *,
        chunk_duration_s: float = CHUNK_DURATION_S,
        is_silence: Callable[[np.ndarray], bool] | None = None,
        max_ahead: int = 256,
        restart_jump: int = 64,
        shrink_after_s: float = 2.0,
        jitter_margin: float = 3.0,
        force_drop_excess: int | None = 4,
    ) -> None:
        if not 1 <= min_depth <= initial_depth <= max_depth:
            raise ValueError(
                f"need 1 <= min_depth <= initial_depth <= max_depth, got {min_depth}, {initial_depth}, {max_depth}"
            )
        if max_ahead <= max_depth or restart_jump < 1:
            raise ValueError(
                f"need max_ahead > max_depth and restart_jump >= 1, got {max_ahead}, {restart_jump}"
            )
        if not chunk_duration_s > 0 or not shrink_after_s > 0 or jitter_margin < 0:
            raise ValueError("chunk_duration_s and shrink_after_s must be > 0, jitter_margin >= 0")
        if force_drop_excess is not None and force_drop_excess < 1:
            raise ValueError(f"force_drop_excess must be >= 1 or None, got {force_drop_excess}")
        self.min_depth = min_depth
        self.max_depth = max_depth
        self.chunk_duration_s = chunk_duration_s
        self.is_silence = is_silence
        self.max_ahead = max_ahead
        self.restart_jump = restart_jump
        self.shrink_after_s = shrink_after_s
        self.jitter_margin = jitter_margin
        self.force_drop_excess = force_drop_excess
        self._target = initial_depth
        self._jitter = 0.0
        self._last_growth_s = -math.inf
        self._st = JitterStats()
        self._clear()

    # ------------------------------------------------------------------ state

    def _clear(self) -> None:
        self._state = _State.IDLE
        self._next = 0
        self._buf: dict[int, _Entry] = {}
        # Indices received (>= next - restart_jump after pruning): duplicate detection.
        self._seen: set[int] = set()
        self._max_primary: int | None = None
        self._anchor_arrival_s = 0.0
        # Jitter reference: (arrival_s, sender_ms or None, chunk index) of the last sample.
        self._ref: tuple[float, int | None, int] | None = None
        self._stale_run = 0
        self._foreign_run = 0
        self._held = False
        self._hold_ticks = 0
        self._last_silence = False
        self._window_start_s = 0.0
        self._window_low: int | None = None
        self._drop_budget = 0
        self._force_drop = False
        self._inserted_before = -1

    def reset(self) -> None:
        """Forget the stream (e.g. on a new HELLO); keep the learned target depth and jitter."""
        self._clear()

    def _begin(self, index: int, arrival_s: float) -> None:
        """(Re)start buffering with ``index`` as the playout point."""
        self._state = _State.BUFFERING
        self._next = index
        self._anchor_arrival_s = arrival_s
        self._held = False
        self._hold_ticks = 0

    def _restart(self, index: int, arrival_s: float) -> None:
        self._clear()
        self._begin(index, arrival_s)

    # ------------------------------------------------------------------ properties

    @property
    def next_index(self) -> int | None:
        """Next chunk to play (None before the first chunk)."""
        return None if self._state is _State.IDLE else self._next

    @property
    def depth(self) -> int:
        return max(self._buf) + 1 - self._next if self._buf else 0

    @property
    def target_depth(self) -> int:
        return self._target

    @property
    def next_missing(self) -> bool:
        """Playing, and the chunk due next has not arrived (a pop now would hold, conceal or pause)."""
        return self._state is _State.PLAYING and self._next not in self._buf

    @property
    def talkspurts(self) -> int:
        """Talkspurts restarted after a DTX gap so far (cheap; :attr:`stats` copies every counter)."""
        return self._st.talkspurts

    @property
    def jitter(self) -> float:
        """RFC 3550 interarrival jitter estimate, in chunks."""
        return self._jitter

    @property
    def jitter_target(self) -> int:
        """Target depth the jitter estimate alone asks for."""
        return min(self.max_depth, self.min_depth + int(self.jitter_margin * self._jitter + 0.5))

    @property
    def stats(self) -> JitterStats:
        """A snapshot of the counters and current depths."""
        return dataclasses.replace(self._st, depth=self.depth, target_depth=self._target, jitter=self._jitter)

    # ------------------------------------------------------------------ adaptation

    def _reset_window(self, now_s: float) -> None:
        self._window_start_s = now_s
        self._window_low = None
        self._drop_budget = 0
        self._force_drop = False

    def _grow(self, now_s: float) -> None:
        if now_s - self._last_growth_s >= self.chunk_duration_s - _EPS:
            self._target = min(self.max_depth, self._target + 1)
            self._last_growth_s = now_s
        self._reset_window(now_s)

    def _sample_jitter(self, index: int, arrival_s: float, sender_time_ms: int | None) -> None:
        ref = self._ref
        if ref is not None and sender_time_ms is not None and ref[1] == sender_time_ms:
            return  # another chunk of the same packet
        self._ref = (arrival_s, sender_time_ms, index)
        if ref is None or (ref[1] is None) != (sender_time_ms is None):
            return
        if sender_time_ms is not None:
            d_ms = (sender_time_ms - ref[1] + _U32 // 2) % _U32 - _U32 // 2  # type: ignore[operator]
            d_send = d_ms / 1000.0
        else:
            d_send = (index - ref[2]) * self.chunk_duration_s
        # |D| in chunks, clamped so that one wild sample (a chunk from far ahead, a
        # stall) moves the estimate by at most max_depth / 16 chunks.
        d = min(abs((arrival_s - ref[0]) - d_send) / self.chunk_duration_s, float(self.max_depth))
        self._jitter += (d - self._jitter) / 16.0
        jt = self.jitter_target
        if jt > self._target:
            self._target = jt
            self._reset_window(arrival_s)

    def _track_window(self, now_s: float, depth: int) -> None:
        self._window_low = depth if self._window_low is None else min(self._window_low, depth)
        if now_s - self._window_start_s >= self.shrink_after_s - _EPS:
            floor = max(self.min_depth, self.jitter_target)
            if self._target > floor:
                self._target -= 1
            self._drop_budget = max(0, self._window_low - self._target)
            self._force_drop = (
                self.force_drop_excess is not None and self._drop_budget >= self.force_drop_excess
            )
            self._window_start_s = now_s
            self._window_low = None

    # ------------------------------------------------------------------ input

    def put(
        self,
        chunk_index: int,
        tokens: np.ndarray,
        arrival_time_s: float,
        *,
        redundant: bool = False,
        sender_time_ms: int | None = None,
        silence: bool | None = None,
        talkspurt_start: bool = False,
        position: int | None = None,
    ) -> PutResult:
        """Offer one received chunk copy.

        Args:
            chunk_index: the sender's chunk counter for this chunk.
            tokens: the chunk's tokens (kept as given).
            arrival_time_s: when it arrived.
            redundant: it is a redundant copy (not the chunk's primary transmission).
            sender_time_ms: the packet's sender timestamp (u32 ms); chunks with the
                same value count as one jitter sample. Without it, jitter is
                measured against ``chunk_index * chunk_duration_s`` (exact for one
                chunk per packet).
            silence: the chunk is silence (may be dropped/stretched); None: ask
                ``is_silence``, else assume speech.
            talkspurt_start: the sender resumes after a DTX pause with this chunk.
            position: where the chunk sits among its packet's primary chunks (0 = first), passed back on
                the :class:`PlayoutItem` (see ``PlayoutItem.arrival_s``); None = unknown.
        """
        idx = operator.index(chunk_index)
        if idx < 0:
            raise ValueError(f"chunk_index must be >= 0, got {idx}")
        st = self._st
        st.received += 1
        if self._state is _State.IDLE:
            self._begin(idx, arrival_time_s)
        elif idx < self._next:
            behind = self._next - idx
            if behind > self.restart_jump:
                st.restarts += 1
                self._restart(idx, arrival_time_s)
                return self._store(
                    idx, tokens, arrival_time_s, redundant, sender_time_ms, silence, talkspurt_start, position
                )
            if not redundant and behind > self.max_depth and self._state is _State.PLAYING:
                # A primary chunk this far behind is no network delay: a run of them is a restarted stream.
                self._stale_run += 1
                if self._stale_run >= _RESTART_RUN:
                    st.restarts += 1
                    self._restart(idx, arrival_time_s)
                    return self._store(
                        idx, tokens, arrival_time_s, redundant, sender_time_ms, silence, talkspurt_start
                    )
            if idx in self._seen:
                return self._duplicate(idx, redundant)
            if self._state is _State.BUFFERING and behind <= self.max_depth:
                self._next = idx  # reordering at the start: move the anchor back
            else:
                self._seen.add(idx)
                st.late += 1
                if not redundant:
                    self._sample_jitter(idx, arrival_time_s, sender_time_ms)
                if self._state is _State.PLAYING:
                    self._grow(arrival_time_s)
                return PutResult.LATE
        elif idx in self._buf:
            return self._duplicate(idx, redundant)
        elif idx >= self._next + self.max_ahead:
            if not redundant:
                self._foreign_run += 1
            if self._buf and self._foreign_run < _RESTART_RUN:
                st.foreign += 1
                return PutResult.FOREIGN
            st.resyncs += 1
            self._restart(idx, arrival_time_s)
        return self._store(
            idx, tokens, arrival_time_s, redundant, sender_time_ms, silence, talkspurt_start, position
        )

    def _duplicate(self, idx: int, redundant: bool) -> PutResult:
        if redundant:
            self._st.redundant_unused += 1
        else:
            self._st.duplicates += 1
            entry = self._buf.get(idx)
            if entry is not None:
                entry.redundant = False  # the primary did arrive in time
        return PutResult.DUPLICATE

    def _store(
        self,
        idx: int,
        tokens: np.ndarray,
        arrival_s: float,
        redundant: bool,
        sender_time_ms: int | None,
        silence: bool | None,
        talkspurt_start: bool,
        position: int | None = None,
    ) -> PutResult:
        if silence is None:
            silence = bool(self.is_silence(tokens)) if self.is_silence is not None else False
        self._buf[idx] = _Entry(
            tokens, redundant, bool(silence), bool(talkspurt_start), arrival_s, None if redundant else position
        )
        self._seen.add(idx)
        if not redundant:
            if self._max_primary is not None and idx < self._max_primary:
                self._st.reordered += 1
            self._max_primary = idx if self._max_primary is None else max(self._max_primary, idx)
            self._stale_run = 0
            self._foreign_run = 0
            self._sample_jitter(idx, arrival_s, sender_time_ms)
        if len(self._seen) > 2 * (self.restart_jump + self.max_ahead):
            low = self._next - self.restart_jump
            self._seen = {i for i in self._seen if i >= low}
        return PutResult.BUFFERED

    def put_packet(self, packet: AudioPacket, arrival_time_s: float) -> list[PutResult]:
        """Offer every chunk of an AUDIO packet (redundant copies first, oldest first).

        Primary chunks of a packet flagged SILENCE are silence; others are asked
        of ``is_silence``. The TALKSPURT_START flag applies to the first primary chunk.
        """
        silence = True if packet.silence else None
        return [
            self.put(
                idx,
                tokens,
                arrival_time_s,
                redundant=red,
                sender_time_ms=packet.timestamp_ms,
                silence=None if red else silence,
                talkspurt_start=(not red and idx == packet.first_chunk and packet.talkspurt_start),
                position=None if red else idx - packet.first_chunk,
            )
            for idx, tokens, red in packet.iter_chunks()
        ]

    # ------------------------------------------------------------------ output

    def pop(self, now_s: float) -> PlayoutItem:
        """What to play for the next chunk period (call once per chunk period)."""
        st = self._st
        if self._state is _State.IDLE:
            return PlayoutItem(PlayoutKind.NOT_STARTED)
        if self._state is _State.PLAYING and self._buf:
            entry = self._buf.get(self._next)
            if entry is None:
                first = min(self._buf)
                if self._buf[first].talkspurt:  # DTX gap: those chunks were never sent
                    st.talkspurts += 1
                    self._begin(first, self._buf[first].arrival_s)
            elif entry.talkspurt and self._held:
                st.talkspurts += 1
                self._begin(self._next, entry.arrival_s)
        if self._state is _State.BUFFERING:
            if now_s + _EPS < self._anchor_arrival_s + (self._target - 1) * self.chunk_duration_s:
                return PlayoutItem(PlayoutKind.BUFFERING, self._next)
            self._state = _State.PLAYING
            self._reset_window(now_s)
        depth = self.depth
        self._track_window(now_s, depth)

        entry = self._buf.get(self._next)
        lost = 0
        if entry is None:
            if not self._buf:
                self._held = True
                self._hold_ticks += 1
                return PlayoutItem(PlayoutKind.EMPTY, self._next, pause=self._last_silence)
            # This tick's slot on the timeline from before the hold: the EMPTY
            # ticks of a hold stood in for the chunks that were due then.
            first = min(self._buf)
            slot = self._next + self._hold_ticks
            self._hold_ticks = 0
            self._held = False
            if slot < first:  # chunks next..slot are lost: conceal this tick
                lost = slot + 1 - self._next
                st.lost += lost
                missing = self._next
                self._next = slot + 1
                self._last_silence = False
                return PlayoutItem(PlayoutKind.LOSS, missing, lost=lost)
            lost = first - self._next
            st.lost += lost
            if slot > first and not self._last_silence:  # waited longer than the gap: a delay spike
                st.underruns += slot - first
                self._grow(now_s)
            self._next = first
            entry = self._buf[first]
        elif self._held:
            if not self._last_silence:  # the chunk we waited for came: it was delayed, not lost
                st.underruns += self._hold_ticks
                self._grow(now_s)
        elif depth < self._target and entry.silence and self._inserted_before != self._next:
            self._inserted_before = self._next  # at most once per chunk (the stream may be ending)
            st.inserted += 1
            return PlayoutItem(PlayoutKind.EMPTY, self._next, pause=True)
        elif self._drop_budget > 0 and self._next + 1 in self._buf and (entry.silence or self._force_drop):
            del self._buf[self._next]
            self._next += 1
            self._drop_budget -= 1
            st.dropped += 1
            entry = self._buf[self._next]

        index = self._next
        del self._buf[index]
        self._next += 1
        self._held = False
        self._hold_ticks = 0
        self._last_silence = entry.silence
        st.played += 1
        if entry.redundant:
            st.recovered += 1
        return PlayoutItem(PlayoutKind.TOKENS, index, entry.tokens, recovered=entry.redundant, lost=lost,
                           arrival_s=entry.arrival_s, position=entry.position, silence=entry.silence)
