"""core.sync: approximate-time pairing, latest-only mailbox and counters (no ROS)."""
from __future__ import annotations

import threading

import numpy as np
import pytest

from ros2_regionfuse.core.checks import ConfigError
from ros2_regionfuse.core.sync import (
    NS_PER_S,
    PAIR_DROP_REASONS,
    UNPAIRED_REASONS,
    ApproximateTimeSync,
    DropCounter,
    HandoffSlot,
    LatestMailbox,
    seconds_to_ns,
)

MS = 1_000_000


def make(slop_ms: float = 10, queue: int = 10, offset_ms: float = 0, jump_s: float = 1.0
         ) -> ApproximateTimeSync:
    return ApproximateTimeSync(slop_ns=int(slop_ms * MS), queue_size=queue,
                               thermal_offset_ns=int(offset_ms * MS),
                               max_backward_jump_ns=int(jump_s * NS_PER_S))


def ids(pairs) -> list[tuple[str, str]]:
    return [(p.thermal.payload, p.rgb.payload) for p in pairs]


def check_invariant(s: ApproximateTimeSync) -> None:
    c = s.counters()
    for sc in (c.thermal, c.rgb):
        assert sc.received == sc.paired + sc.unpaired_total + sc.queued
        assert sc.paired == c.pairs


# -- smoke / cardinality ----------------------------------------------------------------

def test_exact_pair_either_order() -> None:
    s = make()
    assert s.add('thermal', 100 * MS, 't') == []
    pairs = s.add('rgb', 100 * MS, 'r')
    assert ids(pairs) == [('t', 'r')] and pairs[0].dt_ns == 0
    s2 = make()
    assert s2.add('rgb', 100 * MS, 'r') == []
    assert ids(s2.add('thermal', 100 * MS, 't')) == [('t', 'r')]
    check_invariant(s)
    check_invariant(s2)


def test_pair_carries_receipt_time_and_dt() -> None:
    s = make(slop_ms=20)
    s.add('thermal', 107 * MS, 't', received=5.0)
    (p,) = s.add('rgb', 100 * MS, 'r', received=5.5)
    assert p.dt_ns == 7 * MS
    assert p.received == 5.5
    assert (p.thermal.stamp_ns, p.rgb.stamp_ns) == (107 * MS, 100 * MS)


# -- feature: slop and offset -------------------------------------------------------------

@pytest.mark.parametrize('dt_ms, paired', [(0, True), (9, True), (10, True), (11, False), (-11, False)])
def test_slop_boundary(dt_ms: int, paired: bool) -> None:
    s = make(slop_ms=10)
    s.add('rgb', 1000 * MS, 'r')
    pairs = s.add('thermal', (1000 + dt_ms) * MS, 't')
    assert bool(pairs) == paired
    if not paired:
        # once both cameras are past each other's window, the older frame is dropped as no_match
        s.add('rgb', 2000 * MS, 'r2')
        s.add('thermal', 2000 * MS, 't2')
        c = s.counters()
        assert c.thermal.unpaired['no_match'] + c.rgb.unpaired['no_match'] >= 1
        assert c.pairs == 1
    check_invariant(s)


def test_thermal_offset_shifts_pairing() -> None:
    s = make(slop_ms=10, offset_ms=-200)   # thermal clock runs 200 ms ahead
    s.add('thermal', 1200 * MS, 't')
    pairs = s.add('rgb', 1000 * MS, 'r')
    assert ids(pairs) == [('t', 'r')]
    assert pairs[0].dt_ns == 0
    s0 = make(slop_ms=10)                  # without the offset they never pair
    s0.add('thermal', 1200 * MS, 't')
    assert s0.add('rgb', 1000 * MS, 'r') == []


def test_runtime_offset_change() -> None:
    s = make(slop_ms=10)
    pairs = []
    for i in range(3):                       # thermal stamped 200 ms late: nothing pairs
        pairs += s.add('thermal', (1000 * i + 200) * MS, f't{i}')
        pairs += s.add('rgb', 1000 * i * MS, f'r{i}')
    assert pairs == []
    s.add('thermal', 3200 * MS, 't3')        # waits for its partner
    assert s.configure(thermal_offset_ns=-200 * MS) == []
    pairs = s.add('rgb', 3000 * MS, 'r3')    # the queued frame now pairs under the new offset
    assert ids(pairs) == [('t3', 'r3')] and pairs[0].dt_ns == 0
    check_invariant(s)


def test_nearest_partner_wins_when_rates_differ() -> None:
    # thermal at 60 Hz, RGB at 30 Hz, arriving interleaved by time: every RGB frame gets
    # the thermal frame closest to it, the others are dropped as no_match.
    s = make(slop_ms=20, queue=20)
    th = [int(i * 1000 / 60 * MS) for i in range(12)]
    rgb = [int((i * 1000 / 30 + 1) * MS) for i in range(6)]
    events = sorted([(t, 'thermal', t) for t in th] + [(t, 'rgb', t) for t in rgb])
    pairs = []
    for _, stream, stamp in events:
        pairs += s.add(stream, stamp, stamp)
    assert len(pairs) == 6
    for p in pairs:
        best = min(th, key=lambda t: abs(t - p.rgb.payload))
        assert p.thermal.payload == best
    check_invariant(s)


def test_later_closer_frame_is_preferred() -> None:
    s = make(slop_ms=50)
    s.add('thermal', 0, 't0')
    s.add('thermal', 33 * MS, 't1')
    pairs = s.add('rgb', 30 * MS, 'r')   # t1 (3 ms) beats t0 (30 ms)
    assert ids(pairs) == [('t1', 'r')]
    assert s.counters().thermal.unpaired['no_match'] == 1


# -- exceptions and odd stamps ----------------------------------------------------------------

def test_duplicate_and_out_of_order_are_counted() -> None:
    s = make(slop_ms=5)
    s.add('thermal', 100 * MS, 't0')
    s.add('thermal', 100 * MS, 't0dup')
    s.add('thermal', 90 * MS, 'old')
    c = s.counters().thermal
    assert c.unpaired['duplicate'] == 1 and c.unpaired['out_of_order'] == 1
    assert ids(s.add('rgb', 100 * MS, 'r')) == [('t0', 'r')]
    s.add('rgb', 100 * MS, 'rdup')     # duplicate of a stamp already paired
    assert s.counters().rgb.unpaired['duplicate'] == 1
    check_invariant(s)


def test_large_backward_jump_resets() -> None:
    s = make(slop_ms=5, jump_s=1.0)
    s.add('thermal', 50 * NS_PER_S, 'a')
    s.add('thermal', 51 * NS_PER_S, 'b')
    s.add('thermal', 2 * NS_PER_S, 'loop')          # bag looped: 49 s back
    c = s.counters().thermal
    assert c.unpaired['reset'] == 2 and c.queued == 1
    assert ids(s.add('rgb', 2 * NS_PER_S, 'r')) == [('loop', 'r')]
    check_invariant(s)


def test_queue_overflow_when_partner_silent() -> None:
    s = make(slop_ms=5, queue=3)
    for i in range(10):
        s.add('thermal', i * 100 * MS, i)
    c = s.counters().thermal
    assert (c.queued, c.unpaired['queue_overflow']) == (3, 7)
    s.configure(queue_size=1)
    assert s.counters().thermal.unpaired['queue_overflow'] == 9
    check_invariant(s)


def test_reject_counts_bad_input() -> None:
    s = make()
    s.reject('rgb')
    s.reject('rgb', 'bad_input')
    c = s.counters().rgb
    assert c.received == 2 and c.unpaired['bad_input'] == 2
    check_invariant(s)
    with pytest.raises(ValueError):
        s.reject('rgb', 'weird')
    with pytest.raises(ValueError):
        s.add('depth', 0, None)


def test_clear_drops_queue() -> None:
    s = make()
    s.add('rgb', 5, 'r')
    s.clear()
    assert s.counters().rgb.unpaired['reset'] == 1
    check_invariant(s)


@pytest.mark.parametrize('kwargs', [dict(slop_ns=-1), dict(queue_size=0), dict(max_backward_jump_ns=-5)])
def test_invalid_settings_raise(kwargs: dict) -> None:
    s = make()
    with pytest.raises(ConfigError):
        s.configure(**kwargs)
    with pytest.raises(ConfigError):
        ApproximateTimeSync(**{'slop_ns': 1, 'queue_size': 1, **kwargs})


def test_seconds_to_ns() -> None:
    assert seconds_to_ns(0.05) == 50 * MS
    assert seconds_to_ns(-0.2) == -200 * MS


# -- randomised property test ------------------------------------------------------------------

@pytest.mark.parametrize('seed', range(5))
def test_random_streams_invariants(seed: int) -> None:
    rng = np.random.default_rng(seed)
    slop = int(rng.integers(2, 30)) * MS
    s = ApproximateTimeSync(slop_ns=slop, queue_size=int(rng.integers(1, 8)))
    rates = rng.uniform(5, 60, 2)
    th = np.cumsum(rng.uniform(0.5, 1.5, 80) / rates[0] * NS_PER_S).astype(np.int64)
    rgb = np.cumsum(rng.uniform(0.5, 1.5, 80) / rates[1] * NS_PER_S).astype(np.int64)
    # arrival = stamp + per-camera latency with jitter (in order per camera); some duplicates
    events = []
    for name, stamps in (('thermal', th), ('rgb', rgb)):
        arrival = stamps + (rng.uniform(0, 0.03) + rng.uniform(0, 0.005, len(stamps))) * NS_PER_S
        arrival = np.maximum.accumulate(arrival)
        events += [(a, name, int(t)) for a, t in zip(arrival, stamps, strict=True)]
    events += [(a + 1, 'rgb', t) for a, name, t in events[len(th)::7]]
    events.sort()
    pairs = []
    for _, stream, stamp in events:
        pairs += s.add(stream, stamp, stamp)
        check_invariant(s)
    used_t = [p.thermal.payload for p in pairs]
    used_r = [p.rgb.payload for p in pairs]
    assert len(set(used_t)) == len(used_t) and len(set(used_r)) == len(used_r)
    assert all(abs(p.dt_ns) <= slop for p in pairs)
    c = s.counters()
    assert c.rgb.unpaired['duplicate'] == len(rgb[::7])
    assert c.thermal.received == len(th)


# -- mailbox and counters ------------------------------------------------------------------------

def test_mailbox_latest_only() -> None:
    box: LatestMailbox[int] = LatestMailbox()
    assert box.put(1) is None
    assert box.put(2) == 1                   # 1 was overwritten: the caller counts it as dropped
    assert len(box) == 1
    assert box.get(timeout=0.0) == 2
    assert box.get(timeout=0.01) is None     # empty: times out
    box.put(3)
    assert box.close() == 3                  # unconsumed item handed back on close
    assert box.put(4) == 4 and box.get(timeout=0.0) is None and box.closed


def test_mailbox_wakes_waiting_worker() -> None:
    box: LatestMailbox[str] = LatestMailbox()
    got: list[str | None] = []
    t = threading.Thread(target=lambda: got.append(box.get(timeout=10.0)))
    t.start()
    box.put('pair')
    t.join(timeout=10.0)
    assert got == ['pair']
    t2 = threading.Thread(target=lambda: got.append(box.get(timeout=10.0)))
    t2.start()
    box.close()
    t2.join(timeout=10.0)
    assert not t2.is_alive() and got[-1] is None


def test_handoff_slot_blocks_until_taken_and_drains_on_close() -> None:
    slot: HandoffSlot[int] = HandoffSlot()
    assert slot.put(1, timeout=0.0) and len(slot) == 1
    assert not slot.put(2, timeout=0.01)         # full: the producer waits, nothing is overwritten
    done: list[bool] = []
    t = threading.Thread(target=lambda: done.append(slot.put(2, timeout=10.0)))
    t.start()
    assert slot.get(timeout=1.0) == 1            # taking 1 frees the slot: the waiting put stores 2
    t.join(timeout=10.0)
    assert done == [True] and slot.get(timeout=1.0) == 2
    assert slot.get(timeout=0.01) is None        # empty: times out
    slot.put(3, timeout=0.0)
    slot.close()
    assert slot.closed and not slot.put(4, timeout=0.0)
    assert slot.get(timeout=0.0) == 3            # stored before close: still handed out
    assert slot.get(timeout=0.0) is None


def test_handoff_slot_close_wakes_both_sides() -> None:
    slot: HandoffSlot[str] = HandoffSlot()
    slot.put('a', timeout=0.0)
    res: list = []
    producer = threading.Thread(target=lambda: res.append(slot.put('b', timeout=10.0)))
    producer.start()
    slot.close()
    producer.join(timeout=10.0)
    assert not producer.is_alive() and res == [False]
    empty: HandoffSlot[str] = HandoffSlot()
    consumer = threading.Thread(target=lambda: res.append(empty.get(timeout=10.0)))
    consumer.start()
    empty.close()
    consumer.join(timeout=10.0)
    assert not consumer.is_alive() and res[-1] is None


def test_drop_counter() -> None:
    c = DropCounter(PAIR_DROP_REASONS)
    c.add('mailbox_overwrite')
    c.add('pipeline_error', 3)
    assert c.total == 4
    assert c.snapshot()['pipeline_error'] == 3
    with pytest.raises(ValueError):
        c.add('nope')
    assert set(UNPAIRED_REASONS).isdisjoint(PAIR_DROP_REASONS)
