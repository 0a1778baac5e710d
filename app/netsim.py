"""A simulated lossy, jittery network link for demos and tests.

``NetSim.send(packet, now_s)`` schedules a packet (or loses it);
``NetSim.deliver(now_s)`` returns the packets whose delivery time has come, in
delivery order (ties in sending order). Time is passed in; nothing sleeps.

Per packet sent, in this order:

* Loss. ``burst <= 1``: each packet is lost independently with probability
  ``loss`` (Bernoulli; its mean loss-run length is ``1 / (1 - loss)``, e.g. 1.05
  at 5 %). ``burst > 1``: a two-state Gilbert-Elliott chain (Good: delivered,
  Bad: lost) with P(Good->Bad) = ``loss / (burst * (1 - loss))`` and
  P(Bad->Good) = ``1 / burst``: the stationary loss rate is ``loss`` and loss runs
  are geometric with mean ``burst`` packets. The chain starts in its stationary
  distribution.
* Delay: ``delay_ms + N(0, jitter_ms)`` (jitter is a standard deviation), clipped
  at 0. With probability ``reorder`` the packet is held back by a further
  ``reorder_delay_ms``, so the packets sent just after it overtake it.
* With probability ``duplicate`` a second copy is delivered, with its own delay.

Each phenomenon draws from its own random stream derived from ``seed``, so for a
given seed the loss pattern does not depend on the jitter or duplicate settings.
Counters: :attr:`NetSim.stats` (a :class:`NetStats`).
"""

from __future__ import annotations

import dataclasses
import heapq
import random
from dataclasses import dataclass

__all__ = ["NetSim", "NetStats"]


@dataclass
class NetStats:
    #: Packets given to ``send``.
    sent: int = 0
    #: Packets lost.
    lost: int = 0
    #: Runs of consecutive lost packets.
    loss_bursts: int = 0
    #: Extra copies scheduled.
    duplicated: int = 0
    #: Packets given the extra reorder delay.
    reorder_held: int = 0
    #: Packets (originals, not extra copies) delivered after a packet sent later.
    reordered: int = 0
    #: Packets handed out by ``deliver`` (copies included).
    delivered: int = 0
    bytes_sent: int = 0
    bytes_delivered: int = 0

    @property
    def loss_rate(self) -> float:
        return self.lost / self.sent if self.sent else 0.0

    @property
    def mean_burst(self) -> float:
        """Mean length of a run of lost packets (0 if none was lost)."""
        return self.lost / self.loss_bursts if self.loss_bursts else 0.0


class NetSim:
    """A deterministic (for a seed) simulated network link; see the module docstring."""

    def __init__(
        self,
        loss: float = 0.05,
        burst: float = 1.0,
        jitter_ms: float = 20.0,
        reorder: float = 0.01,
        duplicate: float = 0.01,
        delay_ms: float = 40.0,
        seed: int = 0,
        *,
        reorder_delay_ms: float = 100.0,
    ) -> None:
        for name, p in (("loss", loss), ("reorder", reorder), ("duplicate", duplicate)):
            if not 0.0 <= p <= 1.0:
                raise ValueError(f"{name} must be a probability in [0, 1], got {p}")
        if burst < 1.0:
            raise ValueError(f"burst (mean loss-run length in packets) must be >= 1, got {burst}")
        if min(jitter_ms, delay_ms, reorder_delay_ms) < 0:
            raise ValueError("delay_ms, jitter_ms and reorder_delay_ms must be >= 0")
        self.loss = loss
        self.burst = burst
        self.jitter_ms = jitter_ms
        self.reorder = reorder
        self.duplicate = duplicate
        self.delay_ms = delay_ms
        self.reorder_delay_ms = reorder_delay_ms
        self.seed = seed
        self._gilbert = burst > 1.0
        if self._gilbert:
            if loss >= 1.0:
                raise ValueError("loss must be < 1 with burst > 1")
            self._p_good_bad = loss / (burst * (1.0 - loss))
            self._p_bad_good = 1.0 / burst
            if self._p_good_bad > 1.0:
                raise ValueError(
                    f"loss {loss} with mean bursts of {burst} packets is impossible "
                    f"(needs burst >= loss / (1 - loss) = {loss / (1 - loss):.3f})"
                )
        self._rng_loss = random.Random(f"netsim-loss-{seed}")
        self._rng_delay = random.Random(f"netsim-delay-{seed}")
        self._rng_reorder = random.Random(f"netsim-reorder-{seed}")
        self._rng_dup = random.Random(f"netsim-dup-{seed}")
        self._bad = self._gilbert and self._rng_loss.random() < loss
        self._prev_lost = False
        # (delivery time, sequence, send number, is an extra copy, packet)
        self._queue: list[tuple[float, int, int, bool, bytes]] = []
        self._push_seq = 0
        self._max_delivered = -1
        self.stats = NetStats()

    def _lost(self) -> bool:
        u = self._rng_loss.random()
        if not self._gilbert:
            return u < self.loss
        if self._bad:
            self._bad = u >= self._p_bad_good
        else:
            self._bad = u < self._p_good_bad
        return self._bad

    def _delay_s(self) -> float:
        return max(0.0, self.delay_ms + self._rng_delay.gauss(0.0, self.jitter_ms)) / 1000.0

    def _push(self, when: float, number: int, copy: bool, packet: bytes) -> None:
        heapq.heappush(self._queue, (when, self._push_seq, number, copy, packet))
        self._push_seq += 1

    def send(self, packet: bytes, now_s: float) -> None:
        """Send one packet at time ``now_s`` (seconds)."""
        data = bytes(packet)
        st = self.stats
        number = st.sent
        st.sent += 1
        st.bytes_sent += len(data)
        lost = self._lost()
        held = self._rng_reorder.random() < self.reorder
        dup = self._rng_dup.random() < self.duplicate
        if lost:
            st.lost += 1
            if not self._prev_lost:
                st.loss_bursts += 1
            self._prev_lost = True
            return
        self._prev_lost = False
        when = now_s + self._delay_s()
        if held:
            st.reorder_held += 1
            when += self.reorder_delay_ms / 1000.0
        self._push(when, number, False, data)
        if dup:
            st.duplicated += 1
            self._push(now_s + self._delay_s(), number, True, data)

    def deliver_timed(self, now_s: float) -> list[tuple[float, bytes]]:
        """Like :meth:`deliver`, with each packet's exact delivery time."""
        out: list[tuple[float, bytes]] = []
        st = self.stats
        while self._queue and self._queue[0][0] <= now_s:
            when, _, number, copy, data = heapq.heappop(self._queue)
            if not copy:
                if number < self._max_delivered:
                    st.reordered += 1
                self._max_delivered = max(self._max_delivered, number)
            st.delivered += 1
            st.bytes_delivered += len(data)
            out.append((when, data))
        return out

    def deliver(self, now_s: float) -> list[bytes]:
        """Packets whose delivery time is <= ``now_s``, in delivery order."""
        return [data for _, data in self.deliver_timed(now_s)]

    def next_delivery_s(self) -> float | None:
        """Delivery time of the next packet in flight (None if none)."""
        return self._queue[0][0] if self._queue else None

    @property
    def in_flight(self) -> int:
        return len(self._queue)

    def snapshot(self) -> NetStats:
        """A copy of the counters."""
        return dataclasses.replace(self.stats)
