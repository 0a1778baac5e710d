"""Tests for app.jitter (the adaptive jitter buffer)."""

from __future__ import annotations

import numpy as np
import pytest

from app.jitter import JitterBuffer, PlayoutItem, PlayoutKind, PutResult
from app.netsim import NetSim
from app.packet import AudioFlags, AudioPacket, parse_packet

T = 0.08
ARRIVE = 0.01  # chunk k normally arrives at k*T + ARRIVE (sent when it is complete, at (k+1)*T - ...)
POP = 0.05  # the decoder pops at j*T + POP


def tok(k: int) -> np.ndarray:
    return np.array([k % 2048, 1, 2, 3], dtype=np.int64)


def at(k: int, extra: float = 0.0) -> float:
    return k * T + ARRIVE + extra


def play(
    jb: JitterBuffer,
    arrivals: list[tuple[float, int, dict]],
    n_pops: int,
    first_pop: int = 0,
    depths: list[int] | None = None,
) -> list[PlayoutItem]:
    """Feed ``arrivals`` ((time, chunk, put kwargs)) and pop at j*T + POP, in time order (puts first on ties)."""
    events = [(t, 0, k, kw) for t, k, kw in arrivals]
    events += [(j * T + POP, 1, j, {}) for j in range(first_pop, first_pop + n_pops)]
    events.sort(key=lambda e: (e[0], e[1]))
    items = []
    for t, is_pop, k, kw in events:
        if is_pop:
            if depths is not None:
                depths.append(jb.depth)
            items.append(jb.pop(t))
        else:
            jb.put(k, tok(k), t, **kw)
    return items


def codes(items: list[PlayoutItem]) -> list[str]:
    """Compact form: B=buffering N=not started T=tokens R=recovered L=loss(xN) E=empty."""
    out = []
    for it in items:
        if it.kind is PlayoutKind.TOKENS:
            assert it.tokens is not None and it.tokens[0] == it.index % 2048
            out.append(("R" if it.recovered else "T") + str(it.index) + (f"-{it.lost}" if it.lost else ""))
        elif it.kind is PlayoutKind.LOSS:
            out.append(f"L{it.index}x{it.lost}")
        else:
            out.append({"buffering": "B", "not_started": "N", "empty": "E"}[it.kind.value] + str(it.index))
    return out


def steady(chunks, silence: bool | None = None, extra: dict[int, float] | None = None, **kw: object):
    extra = extra or {}
    if silence is not None:
        kw = {"silence": silence, **kw}
    return [(at(k, extra.get(k, 0.0)), k, dict(kw)) for k in chunks]


# --------------------------------------------------------------------------- basics


def test_not_started():
    jb = JitterBuffer()
    assert jb.pop(0.0).kind is PlayoutKind.NOT_STARTED
    assert jb.next_index is None and jb.depth == 0
    st = jb.stats
    assert (st.received, st.played, st.target_depth) == (0, 0, 2)


def test_in_order_stream():
    jb = JitterBuffer(initial_depth=2)
    depths: list[int] = []
    items = play(jb, steady(range(50)), 52, depths=depths)
    assert codes(items) == ["B0"] + [f"T{k}" for k in range(50)] + ["E50"]
    st = jb.stats
    assert (st.played, st.lost, st.late, st.duplicates, st.reordered, st.underruns) == (50, 0, 0, 0, 0, 0)
    assert depths[1:50] == [2] * 49  # the low-water mark equals the target
    # perfectly regular arrivals: the target shrinks to min_depth after 2 s of calm,
    # but speech chunks are never dropped (surplus of 1 < force_drop_excess)
    assert st.jitter == pytest.approx(0.0, abs=1e-9)
    assert st.target_depth == 1 and st.dropped == 0


def test_validation():
    for kw in (
        dict(min_depth=0),
        dict(initial_depth=13),
        dict(min_depth=3, initial_depth=2),
        dict(max_ahead=12),
        dict(restart_jump=0),
        dict(chunk_duration_s=0),
        dict(force_drop_excess=0),
    ):
        with pytest.raises(ValueError):
            JitterBuffer(**kw)  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        JitterBuffer().put(-1, tok(0), 0.0)


# --------------------------------------------------------------------------- reordering, loss, late, duplicates


def test_reordering_within_depth():
    jb = JitterBuffer(initial_depth=2)
    # chunk 5 arrives after chunk 6 but before its playout (pop at 0.53)
    items = play(jb, steady(range(12), extra={5: 0.10}), 13)
    assert codes(items) == ["B0"] + [f"T{k}" for k in range(12)]
    st = jb.stats
    assert (st.reordered, st.lost, st.late) == (1, 0, 0)


def test_lost_chunk_is_concealed_and_late_copy_grows_target():
    jb = JitterBuffer(initial_depth=2)
    # chunk 5 is due at 0.53 but only arrives at 0.60
    items = play(jb, steady(range(12), extra={5: 0.19}), 13)
    assert codes(items) == ["B0", "T0", "T1", "T2", "T3", "T4", "L5x1"] + [f"T{k}" for k in range(6, 12)]
    st = jb.stats
    assert (st.lost, st.late, st.played, st.target_depth) == (1, 1, 11, 3)
    assert jb.put(5, tok(5), 1.0) is PutResult.DUPLICATE  # a second late copy is a duplicate


def test_loss_recovered_by_redundancy():
    jb = JitterBuffer(initial_depth=2)
    for k in range(12):
        if k == 5:
            continue  # packet 5 lost
        red = [tok(k - 1)] if k else []
        pkt = parse_packet(AudioPacket(k, k, 11, 4, [tok(k)], red, timestamp_ms=k * 80).encode())
        assert isinstance(pkt, AudioPacket)
        jb.put_packet(pkt, at(k))
        if k == 6:
            assert jb.stats.redundant_unused == 4  # copies of 0..3 were not needed
    items = [jb.pop(j * T + POP) for j in range(13)]
    assert codes(items) == ["B0", "T0", "T1", "T2", "T3", "T4", "R5"] + [f"T{k}" for k in range(6, 11)] + [
        "T11"
    ]
    st = jb.stats
    assert (st.recovered, st.lost, st.late, st.played) == (1, 0, 0, 12)
    assert st.redundant_unused == 9  # every redundant copy (packets 1..11 but 5) except chunk 5's
    assert st.received == 11 + 10


def test_redundancy_too_late_grows_target():
    jb = JitterBuffer(initial_depth=1)
    arrivals = [(at(k), k, {}) for k in range(10) if k != 5]
    arrivals += [(at(8) + 0.001, 5, {"redundant": True})]  # copy of 5 rides with packet 8: too late
    items = play(jb, arrivals, 10)
    assert codes(items)[:7] == ["T0", "T1", "T2", "T3", "T4", "E5", "T6-1"]
    st = jb.stats
    assert (st.lost, st.late, st.recovered, st.target_depth) == (1, 1, 0, 2)


def test_duplicates_are_ignored():
    jb = JitterBuffer()
    assert jb.put(0, tok(0), 0.0) is PutResult.BUFFERED
    assert jb.put(0, tok(0), 0.01) is PutResult.DUPLICATE
    assert jb.put(1, tok(1), 0.08) is PutResult.BUFFERED
    assert jb.put(1, tok(1), 0.09, redundant=True) is PutResult.DUPLICATE
    assert jb.pop(0.1).index == 0
    assert jb.put(0, tok(0), 0.11) is PutResult.DUPLICATE  # already played: not late
    st = jb.stats
    assert (st.duplicates, st.redundant_unused, st.late, st.received) == (2, 1, 0, 5)


def test_primary_after_redundant_copy_is_not_a_recovery():
    jb = JitterBuffer()
    jb.put(0, tok(0), 0.0)
    jb.put(1, tok(1), 0.0, redundant=True)
    jb.put(1, tok(1), 0.01)
    items = [jb.pop(0.1), jb.pop(0.18)]
    assert codes(items) == ["T0", "T1"]
    assert jb.stats.recovered == 0


def test_burst_loss_keeps_the_timeline():
    jb = JitterBuffer(initial_depth=2)
    depths: list[int] = []
    items = play(jb, steady([k for k in range(25) if not 10 <= k <= 14]), 22, depths=depths)
    expected = (
        ["B0"] + [f"T{k}" for k in range(10)] + ["E10"] * 4 + ["L10x5"] + [f"T{k}" for k in range(15, 21)]
    )
    assert codes(items) == expected
    st = jb.stats
    assert (st.lost, st.underruns, st.late, st.target_depth) == (5, 0, 0, 2)
    # chunk 15 is played at its original slot: the delay did not grow
    assert depths[-6:] == [2] * 6


def test_single_loss_at_depth_one_costs_one_tick():
    jb = JitterBuffer(initial_depth=1)
    items = play(jb, steady([k for k in range(10) if k != 4]), 10)
    assert codes(items) == ["T0", "T1", "T2", "T3", "E4", "T5-1", "T6", "T7", "T8", "T9"]
    assert (jb.stats.lost, jb.stats.underruns, jb.target_depth) == (1, 0, 1)


def test_delay_spike_is_held_and_grows_target():
    jb = JitterBuffer(initial_depth=2)
    # the link stalls: chunks 10..16 are queued and all arrive at 1.30
    extra = {k: 1.30 - at(k) for k in range(10, 17)}
    depths: list[int] = []
    items = play(jb, steady(range(25), extra=extra), 22, depths=depths)
    assert codes(items) == ["B0"] + [f"T{k}" for k in range(10)] + ["E10"] * 5 + [
        f"T{k}" for k in range(10, 16)
    ]
    st = jb.stats
    assert (st.lost, st.late, st.underruns) == (0, 0, 5)
    assert st.target_depth >= 3  # +1 for the hold; the jitter estimate saw the stall too
    assert depths[16] == 2 + 5  # the delay grew by the 5 held ticks


def test_overtaken_chunks_are_lost_then_late():
    jb = JitterBuffer(initial_depth=2)
    # chunks 10..14 are stuck until 1.30, but chunk 15 (1.21) overtakes them
    extra = {k: 1.30 - at(k) for k in range(10, 15)}
    items = play(jb, steady(range(25), extra=extra), 22)
    assert codes(items)[11:17] == ["E10"] * 4 + ["L10x5", "T15"]
    st = jb.stats
    assert (st.lost, st.late, st.restarts, st.underruns) == (5, 5, 0, 0)
    assert st.target_depth == 3


# --------------------------------------------------------------------------- adaptation


def test_silence_drop_shrinks_surplus_delay():
    jb = JitterBuffer(initial_depth=2)
    depths: list[int] = []
    items = play(jb, steady(range(60), silence=True), 60, depths=depths)
    st = jb.stats
    assert st.target_depth == 1 and st.dropped == 1 and st.lost == 0
    played = [it.index for it in items if it.kind is PlayoutKind.TOKENS]
    assert len(played) == 59 and played[-1] == 59
    assert sorted(np.diff(played).tolist()) == [1] * 57 + [2]  # one jump over the dropped chunk
    assert depths[-5:] == [1] * 5


def test_large_surplus_is_dropped_during_speech():
    jb = JitterBuffer(initial_depth=2)
    extra = {k: 1.30 - at(k) for k in range(10, 17)}  # 5-tick stall, then calm
    depths: list[int] = []
    play(jb, steady(range(120), extra=extra), 115, depths=depths)
    st = jb.stats
    assert st.dropped >= 4 and st.lost == 0
    assert max(depths[-10:]) <= st.target_depth + 3


def test_depth_grows_with_jitter_and_shrinks_after_calm():
    jb = JitterBuffer(initial_depth=2, max_depth=8)
    # chunks 20..79 arrive alternately on time and 150 ms late; calm before and after
    extra = {k: 0.15 for k in range(20, 80) if k % 2}
    depths: list[int] = []
    targets: list[int] = []
    arrivals = steady(range(400), silence=True, extra=extra)
    events = sorted([(t, 0, k) for t, k, _ in arrivals] + [(j * T + POP, 1, j) for j in range(400)])
    for t, is_pop, k in events:
        if is_pop:
            depths.append(jb.depth)
            targets.append(jb.target_depth)
            jb.pop(t)
        else:
            jb.put(k, tok(k), t, silence=True)
    st = jb.stats
    peak = max(targets)
    assert peak >= 5
    assert max(depths[60:120]) >= peak - 1  # the buffer really deepened (silence inserted)
    assert st.inserted >= 3
    assert targets[-1] == 1 and depths[-1] <= 2  # back to minimum after calm
    assert st.dropped >= 3
    assert st.jitter < 0.05


def test_rfc3550_jitter_with_sender_timestamps():
    jb = JitterBuffer(initial_depth=4)
    # 4 chunks per packet (same sender time = one sample), 320 ms apart
    ts = [2**32 - 320, 0, 320]  # the u32 millisecond clock wraps
    arrivals = [1.0, 1.32 + 0.04, 1.64]
    for p, (s, a) in enumerate(zip(ts, arrivals)):
        for c in range(4):
            jb.put(4 * p + c, tok(4 * p + c), a, sender_time_ms=s)
    # D1 = +40 ms = 0.5 chunk -> J = 0.5/16; D2 = -40 ms -> J += (0.5 - J)/16
    j1 = 0.5 / 16
    assert jb.jitter == pytest.approx(j1 + (0.5 - j1) / 16)


def test_jitter_from_chunk_indices():
    jb = JitterBuffer()
    for k, a in enumerate([0.0, 0.08, 0.20, 0.24]):
        jb.put(k, tok(k), a)
    j = 0.0
    for d in (0.0, 0.5, 0.5):  # |D| in chunks: 0, +40 ms, -40 ms
        j += (d - j) / 16
    assert jb.jitter == pytest.approx(j)


# --------------------------------------------------------------------------- DTX, restart, foreign


def test_dtx_gap_and_talkspurt_start():
    jb = JitterBuffer(initial_depth=2, min_depth=2)
    arrivals = steady(range(20), silence=False) + steady(range(20, 30), silence=True)
    arrivals += steady(range(80, 100), silence=False)
    arrivals[30] = (arrivals[30][0], 80, {"silence": False, "talkspurt_start": True})
    items = play(jb, arrivals, 101)
    c = codes(items)
    # the buffer drains at the end of the talkspurt: one silent tick is inserted before the last chunk
    assert c[:32] == ["B0"] + [f"T{k}" for k in range(29)] + ["E29", "T29"]
    assert set(c[32:80]) == {"E30"}  # DTX: nothing sent, nothing lost
    assert c[80:83] == ["B80", "T80", "T81"]  # delay re-set to the target at the talkspurt
    st = jb.stats
    assert (st.lost, st.underruns, st.inserted, st.talkspurts, st.target_depth) == (0, 0, 1, 1, 2)


def test_talkspurt_start_with_packets():
    jb = JitterBuffer(initial_depth=2, min_depth=2)
    items = []
    for j in range(50):
        k = j
        if k < 10 or k >= 40:
            flags = AudioFlags.SILENCE if 5 <= k < 10 else 0
            if k == 40:
                flags = AudioFlags.TALKSPURT_START
            jb.put_packet(AudioPacket(k, k, 11, 4, [tok(k)], [], k * 80, flags), at(k))
        items.append(jb.pop(j * T + POP))
    c = codes(items)
    assert c[40:] == ["B40"] + [f"T{k}" for k in range(40, 49)]
    assert jb.stats.lost == 0 and jb.stats.talkspurts == 1 and jb.stats.underruns == 0


def test_stream_restart_big_jump_back():
    jb = JitterBuffer(initial_depth=2, min_depth=2)
    items = play(jb, steady(range(100)), 101)
    assert items[-1].index == 99
    # the peer restarts its stream at 0, 10 s later
    t0 = 10.0
    for k in range(5):
        assert jb.put(k, tok(k), t0 + k * T) is PutResult.BUFFERED
    got = [jb.pop(t0 + 0.05 + j * T) for j in range(4)]
    assert codes(got) == ["B0", "T0", "T1", "T2"]
    st = jb.stats
    assert st.restarts == 1 and st.late == 0


def test_stream_restart_small_jump_back():
    jb = JitterBuffer(initial_depth=2, min_depth=2)
    play(jb, steady(range(40)), 41)
    assert jb.next_index == 40
    t0 = 4.0
    res = [jb.put(k, tok(k), t0 + k * T) for k in range(6)]
    # 40 chunks back (< restart_jump): chunks 0..2 look like copies of played ones, the 4th proves a restart
    assert res == [PutResult.DUPLICATE] * 3 + [PutResult.BUFFERED] * 3
    assert jb.stats.restarts == 1 and jb.next_index == 3
    got = [jb.pop(t0 + 0.35 + j * T) for j in range(3)]
    assert codes(got) == ["T3", "T4", "T5"]


def test_foreign_chunks_and_resync():
    jb = JitterBuffer(initial_depth=1, jitter_margin=0)
    jb.put(0, tok(0), 0.0)
    jb.put(1, tok(1), 0.08)
    assert jb.put(256, tok(256), 0.09) is PutResult.FOREIGN
    assert jb.put(255, tok(255), 0.09) is PutResult.BUFFERED  # just inside the window
    assert jb.stats.foreign == 1
    assert codes([jb.pop(0.1), jb.pop(0.18)]) == ["T0", "T1"]
    # buffer dry (only the far chunk 255 left, then played out below): a far jump resyncs
    jb2 = JitterBuffer()
    play(jb2, steady(range(10)), 12)
    assert jb2.depth == 0
    assert jb2.put(5000, tok(5000), 2.0) is PutResult.BUFFERED
    assert jb2.stats.resyncs == 1
    assert codes([jb2.pop(2.05), jb2.pop(2.13)]) == ["B5000", "T5000"]
    # four foreign chunks in a row also resync, even with data buffered
    jb3 = JitterBuffer()
    jb3.put(0, tok(0), 0.0)
    res = [jb3.put(1000 + k, tok(1000 + k), 0.01) for k in range(4)]
    assert res == [PutResult.FOREIGN] * 3 + [PutResult.BUFFERED]
    assert jb3.next_index == 1003 and jb3.stats.resyncs == 1


def test_reordered_start_moves_anchor_back():
    jb = JitterBuffer(initial_depth=2)
    jb.put(3, tok(3), 0.0)
    jb.put(2, tok(2), 0.01)
    assert codes([jb.pop(0.05), jb.pop(0.13), jb.pop(0.21)]) == ["B2", "T2", "T3"]


def test_reset_keeps_adaptation():
    jb = JitterBuffer(initial_depth=3)
    play(jb, steady(range(5)), 5)
    jb.reset()
    assert jb.pop(1.0).kind is PlayoutKind.NOT_STARTED
    assert jb.target_depth == 3 and jb.stats.played > 0


# --------------------------------------------------------------------------- end to end


def run_call(redundancy: int, chunks_per_packet: int, seconds: float = 30.0, seed: int = 1):
    """Sender -> packets -> NetSim -> parse -> JitterBuffer -> pops, on a 5 ms clock."""
    net = NetSim(loss=0.05, burst=1.0, jitter_ms=20, reorder=0.01, duplicate=0.01, delay_ms=40, seed=seed)
    jb = JitterBuffer()
    n, r = chunks_per_packet, redundancy
    total = int(seconds / T)
    pending: list[int] = []
    next_chunk, seq, next_pop = 0, 0, 0.037
    kinds: dict[PlayoutKind, int] = {}
    for step in range(int(seconds / 0.005)):
        now = step * 0.005
        while next_chunk < total and (next_chunk + 1) * T <= now + 1e-9:
            pending.append(next_chunk)
            next_chunk += 1
            if len(pending) == n:
                first = pending[0]
                red = [tok(i) for i in range(max(0, first - r), first)]
                pkt = AudioPacket(seq, first, 11, 4, [tok(i) for i in pending], red, int(now * 1000))
                net.send(pkt.encode(), now)
                seq, pending = seq + 1, []
        for when, data in net.deliver_timed(now):
            packet = parse_packet(data)
            assert isinstance(packet, AudioPacket)
            jb.put_packet(packet, when)
        if now + 1e-9 >= next_pop:
            item = jb.pop(now)
            kinds[item.kind] = kinds.get(item.kind, 0) + 1
            next_pop += T
    return jb, net, kinds


@pytest.mark.parametrize("n,r", [(1, 0), (1, 1), (4, 0), (2, 2)])
def test_end_to_end_call(n, r):
    jb, net, kinds = run_call(r, n)
    st = jb.stats
    # every chunk from the first to the playout point was played, declared lost or dropped
    assert jb.next_index == st.played + st.lost + st.dropped
    assert st.restarts == st.resyncs == st.foreign == 0
    assert jb.next_index >= 30 / T - 10  # the playout kept pace with the sender
    if r == 0:
        # every lost packet costs its n chunks (the last one may not be due yet); late ones add a few
        assert n * (net.stats.lost - 1) <= st.lost <= n * net.stats.lost + st.late + 2
        assert st.recovered == 0
    else:
        assert st.lost / (st.played + st.lost) < 0.02 and st.recovered > 0
    assert 1 <= st.target_depth <= 4
