"""Approximate-time pairing of thermal and RGB frames, and the latest-only mailbox.

ROS-free: stamps are integer nanoseconds, payloads are opaque. The node feeds
every received frame to :class:`ApproximateTimeSync` from its subscription
callbacks and puts the pairs it returns into a :class:`LatestMailbox` that the
inference worker drains, so a slow device drops (and counts) pairs instead of
building a backlog.

Pairing policy (``slop``, ``queue_size``, ``thermal_offset``):

* A thermal frame is compared under the key ``stamp + thermal_offset``; an RGB
  frame under its stamp.
* Each camera keeps up to ``queue_size`` unpaired frames, in stamp order.
* The oldest queued frame ``x`` (over both cameras) is decided first. Its
  candidate is the oldest queued frame ``b`` of the other camera. When
  ``|key(b) - key(x)| <= slop`` and no other queued frame of ``x``'s camera is
  closer to ``b``, ``(x, b)`` is a pair. When a closer frame exists, or when the
  other camera has already sent a frame newer than ``key(x) + slop`` (so no
  partner can come any more), ``x`` is dropped as ``no_match``. Otherwise the
  decision waits for the other camera. Pairs are formed as soon as both
  cameras have reached the frame's time: no extra latency is added.
* A frame whose stamp equals the newest stamp of its camera is a ``duplicate``;
  an older one is ``out_of_order`` (dropped), unless it is older by more than
  ``max_backward_jump`` (bag loop, clock reset): then every queued frame is
  dropped as ``reset`` and pairing starts afresh with this frame.
* A full queue drops its oldest frame as ``queue_overflow``.

For each camera, at any time: ``received == paired + sum(unpaired.values()) + queued``.
"""
from __future__ import annotations

import threading
from collections import Counter, deque
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

from .checks import ConfigError

T = TypeVar('T')

THERMAL = 'thermal'
RGB = 'rgb'
STREAMS: tuple[str, str] = (THERMAL, RGB)
NS_PER_S = 1_000_000_000

#: Reasons a single frame leaves the synchronizer without being paired.
UNPAIRED_REASONS: tuple[str, ...] = ('bad_input', 'duplicate', 'out_of_order', 'no_match',
                                     'queue_overflow', 'reset')
#: Reasons a formed pair is not processed (counted by the node's worker side).
PAIR_DROP_REASONS: tuple[str, ...] = ('mailbox_overwrite', 'pipeline_error', 'internal_error',
                                      'shutdown')


def seconds_to_ns(seconds: float) -> int:
    """Seconds (float) -> integer nanoseconds, rounded.

    Example:
        >>> seconds_to_ns(0.05)
        50000000
    """
    return int(round(float(seconds) * NS_PER_S))


@dataclass(frozen=True)
class Frame(Generic[T]):
    """One received frame.

    Attributes:
        stream: ``'thermal'`` or ``'rgb'``.
        stamp_ns: header stamp as received (ns).
        payload: anything the caller wants back with the pair (message, array).
        received: caller's receipt time (e.g. ``time.monotonic()``, s).
    """

    stream: str
    stamp_ns: int
    payload: T
    received: float = 0.0


@dataclass(frozen=True)
class Pair(Generic[T]):
    """A thermal and an RGB frame matched by stamp.

    Attributes:
        thermal: the thermal frame.
        rgb: the RGB frame.
        dt_ns: ``thermal stamp + thermal_offset - rgb stamp`` (ns) at pairing time.
    """

    thermal: Frame[T]
    rgb: Frame[T]
    dt_ns: int

    @property
    def received(self) -> float:
        """Receipt time of the later of the two frames (caller's clock, s)."""
        return max(self.thermal.received, self.rgb.received)


@dataclass
class StreamCounters:
    """Counters of one camera (a snapshot; see :meth:`ApproximateTimeSync.counters`)."""

    received: int = 0
    paired: int = 0
    queued: int = 0
    unpaired: dict[str, int] = field(default_factory=dict)

    @property
    def unpaired_total(self) -> int:
        """Frames of this camera that left without a partner, all reasons."""
        return sum(self.unpaired.values())


@dataclass
class SyncCounters:
    """Snapshot of the synchronizer's counters."""

    thermal: StreamCounters
    rgb: StreamCounters
    pairs: int


class ApproximateTimeSync(Generic[T]):
    """Pair thermal and RGB frames whose (offset-corrected) stamps differ by at most ``slop``.

    Thread-safe: :meth:`add` and :meth:`reject` may be called from several
    threads. See the module docstring for the policy.

    Args:
        slop_ns: largest stamp difference of a pair (ns), >= 0.
        queue_size: unpaired frames kept per camera, >= 1.
        thermal_offset_ns: added to thermal stamps before comparing (ns).
        max_backward_jump_ns: a stamp older than the camera's newest by more
            than this restarts pairing (ns), >= 0.

    Raises:
        ConfigError: negative slop/jump or queue_size < 1.

    Example:
        >>> s = ApproximateTimeSync(slop_ns=10, queue_size=5)
        >>> s.add('thermal', 100, 'T0')
        []
        >>> [(p.thermal.payload, p.rgb.payload, p.dt_ns) for p in s.add('rgb', 104, 'R0')]
        [('T0', 'R0', -4)]
    """

    def __init__(self, slop_ns: int, queue_size: int, thermal_offset_ns: int = 0,
                 max_backward_jump_ns: int = NS_PER_S) -> None:
        self._lock = threading.Lock()
        self._queues: dict[str, deque[Frame[T]]] = {s: deque() for s in STREAMS}
        self._newest: dict[str, int | None] = {s: None for s in STREAMS}
        self._received: Counter[str] = Counter()
        self._paired: Counter[str] = Counter()
        self._unpaired: dict[str, Counter[str]] = {s: Counter() for s in STREAMS}
        self._pairs = 0
        self.slop_ns = 0
        self.queue_size = 1
        self.thermal_offset_ns = 0
        self.max_backward_jump_ns = 0
        self.configure(slop_ns=slop_ns, queue_size=queue_size, thermal_offset_ns=thermal_offset_ns,
                       max_backward_jump_ns=max_backward_jump_ns)

    # -- configuration ------------------------------------------------------------
    def configure(self, *, slop_ns: int | None = None, queue_size: int | None = None,
                  thermal_offset_ns: int | None = None, max_backward_jump_ns: int | None = None
                  ) -> list[Pair[T]]:
        """Change settings at run time; queued frames are re-examined at once.

        Returns:
            Pairs that became possible under the new settings.

        Raises:
            ConfigError: invalid value (nothing is changed then).
        """
        if slop_ns is not None and slop_ns < 0:
            raise ConfigError(f'sync slop must be >= 0 ns, got {slop_ns}')
        if queue_size is not None and queue_size < 1:
            raise ConfigError(f'sync queue_size must be >= 1, got {queue_size}')
        if max_backward_jump_ns is not None and max_backward_jump_ns < 0:
            raise ConfigError(f'sync max_backward_jump must be >= 0 ns, got {max_backward_jump_ns}')
        with self._lock:
            if slop_ns is not None:
                self.slop_ns = int(slop_ns)
            if thermal_offset_ns is not None:
                self.thermal_offset_ns = int(thermal_offset_ns)
            if max_backward_jump_ns is not None:
                self.max_backward_jump_ns = int(max_backward_jump_ns)
            if queue_size is not None:
                self.queue_size = int(queue_size)
                for s in STREAMS:
                    while len(self._queues[s]) > self.queue_size:
                        self._drop(self._queues[s].popleft(), 'queue_overflow')
            return self._match()

    # -- input ------------------------------------------------------------------------
    def add(self, stream: str, stamp_ns: int, payload: T, received: float = 0.0) -> list[Pair[T]]:
        """Offer one frame; return the pairs completed by it (oldest first, usually 0 or 1).

        Args:
            stream: ``'thermal'`` or ``'rgb'``.
            stamp_ns: header stamp (ns).
            payload: returned inside the pair.
            received: caller's receipt time (s), kept for latency accounting.

        Raises:
            ValueError: unknown stream name (a programming error).
        """
        self._check_stream(stream)
        frame = Frame(stream, int(stamp_ns), payload, received)
        with self._lock:
            self._received[stream] += 1
            newest = self._newest[stream]
            if newest is not None and frame.stamp_ns <= newest:
                if frame.stamp_ns == newest:
                    self._unpaired[stream]['duplicate'] += 1
                    return []
                if newest - frame.stamp_ns <= self.max_backward_jump_ns:
                    self._unpaired[stream]['out_of_order'] += 1
                    return []
                self._reset()
            self._newest[stream] = frame.stamp_ns
            q = self._queues[stream]
            q.append(frame)
            if len(q) > self.queue_size:
                self._drop(q.popleft(), 'queue_overflow')
            return self._match()

    def reject(self, stream: str, reason: str = 'bad_input') -> None:
        """Count a received frame that cannot be used (bad encoding, size...).

        Raises:
            ValueError: unknown stream or reason (a programming error).
        """
        self._check_stream(stream)
        if reason not in UNPAIRED_REASONS:
            raise ValueError(f'unknown unpaired reason {reason!r}; known: {UNPAIRED_REASONS}')
        with self._lock:
            self._received[stream] += 1
            self._unpaired[stream][reason] += 1

    def clear(self, reason: str = 'reset') -> None:
        """Drop every queued frame (counted under ``reason``) and forget the newest stamps."""
        with self._lock:
            self._reset(reason)

    # -- output ---------------------------------------------------------------------
    def counters(self) -> SyncCounters:
        """A consistent snapshot of all counters."""
        with self._lock:
            per = {s: StreamCounters(received=self._received[s], paired=self._paired[s],
                                     queued=len(self._queues[s]),
                                     unpaired={r: self._unpaired[s][r] for r in UNPAIRED_REASONS})
                   for s in STREAMS}
            return SyncCounters(thermal=per[THERMAL], rgb=per[RGB], pairs=self._pairs)

    # -- internals (lock held) --------------------------------------------------------
    @staticmethod
    def _check_stream(stream: str) -> None:
        if stream not in STREAMS:
            raise ValueError(f'unknown stream {stream!r}; expected one of {STREAMS}')

    def _key(self, f: Frame[T]) -> int:
        return f.stamp_ns + self.thermal_offset_ns if f.stream == THERMAL else f.stamp_ns

    def _newest_key(self, stream: str) -> int | None:
        n = self._newest[stream]
        if n is None:
            return None
        return n + self.thermal_offset_ns if stream == THERMAL else n

    def _drop(self, f: Frame[T], reason: str) -> None:
        self._unpaired[f.stream][reason] += 1

    def _reset(self, reason: str = 'reset') -> None:
        for s in STREAMS:
            while self._queues[s]:
                self._drop(self._queues[s].popleft(), reason)
            self._newest[s] = None

    def _match(self) -> list[Pair[T]]:
        out: list[Pair[T]] = []
        tq, rq = self._queues[THERMAL], self._queues[RGB]
        while tq or rq:
            if tq and (not rq or self._key(tq[0]) <= self._key(rq[0])):
                own, other, other_stream = tq, rq, RGB
            else:
                own, other, other_stream = rq, tq, THERMAL
            x = own[0]
            kx = self._key(x)
            if other and self._key(other[0]) - kx <= self.slop_ns:
                b = other[0]
                kb = self._key(b)
                d = kb - kx  # >= 0: x is the oldest queued frame
                if any(abs(self._key(f) - kb) < d for f in _skip_first(own)):
                    self._drop(own.popleft(), 'no_match')  # a later frame of x's camera fits b better
                    continue
                own.popleft()
                other.popleft()
                th, rgb = (x, b) if x.stream == THERMAL else (b, x)
                self._paired[THERMAL] += 1
                self._paired[RGB] += 1
                self._pairs += 1
                out.append(Pair(thermal=th, rgb=rgb, dt_ns=self._key(th) - self._key(rgb)))
                continue
            newest_other = self._newest_key(other_stream)
            if newest_other is not None and newest_other - kx > self.slop_ns:
                self._drop(own.popleft(), 'no_match')  # no partner can arrive any more
                continue
            break
        return out


def _skip_first(q: Iterable[Any]) -> Iterable[Any]:
    it = iter(q)
    next(it, None)
    return it


class LatestMailbox(Generic[T]):
    """A one-slot, latest-only hand-over between a producer and one worker thread.

    :meth:`put` never blocks; it replaces (and returns) an item the worker has
    not taken yet, so the caller can count it as dropped.

    Example:
        >>> box = LatestMailbox()
        >>> box.put('a') is None, box.put('b'), box.get(timeout=0.0)
        (True, 'a', 'b')
    """

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._item: T | None = None
        self._full = False
        self._closed = False

    def put(self, item: T) -> T | None:
        """Store ``item``; return the unconsumed item it replaced, or None.

        After :meth:`close`, the item is not stored and is returned as is.
        """
        with self._cond:
            if self._closed:
                return item
            old = self._item if self._full else None
            self._item, self._full = item, True
            self._cond.notify()
            return old

    def get(self, timeout: float | None = None) -> T | None:
        """Take the item, waiting up to ``timeout`` s; None on timeout or when closed."""
        with self._cond:
            if not self._full and not self._closed:
                self._cond.wait(timeout)
            if not self._full or self._closed:
                return None
            item, self._item, self._full = self._item, None, False
            return item

    def close(self) -> T | None:
        """Wake the worker, refuse further items; return the unconsumed item, if any."""
        with self._cond:
            self._closed = True
            old = self._item if self._full else None
            self._item, self._full = None, False
            self._cond.notify_all()
            return old

    @property
    def closed(self) -> bool:
        """True after :meth:`close`."""
        return self._closed

    def __len__(self) -> int:
        """1 while an item waits, else 0."""
        return int(self._full)


class HandoffSlot(Generic[T]):
    """A one-slot, blocking hand-over between two worker stages.

    Unlike :class:`LatestMailbox`, :meth:`put` waits until the consumer has
    taken the previous item (back-pressure: work already done is never
    thrown away; the producer stalls and the input mailbox drops instead).

    Example:
        >>> slot = HandoffSlot()
        >>> slot.put('a', timeout=0.0), slot.put('b', timeout=0.0), slot.get(timeout=0.0)
        (True, False, 'a')
        >>> slot.wait_empty(timeout=0.0)
        True
    """

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._item: T | None = None
        self._full = False
        self._closed = False

    def put(self, item: T, timeout: float | None = None) -> bool:
        """Store ``item`` once the slot is free, waiting up to ``timeout`` s.

        Returns:
            True when stored; False on timeout or when closed (the caller
            still owns ``item``).
        """
        with self._cond:
            if not self._cond.wait_for(lambda: not self._full or self._closed, timeout):
                return False
            if self._closed:
                return False
            self._item, self._full = item, True
            self._cond.notify_all()
            return True

    def get(self, timeout: float | None = None) -> T | None:
        """Take the item, waiting up to ``timeout`` s; None on timeout or when closed and empty.

        An item stored before :meth:`close` is still handed out (so it can be
        finished or counted).
        """
        with self._cond:
            if not self._cond.wait_for(lambda: self._full or self._closed, timeout):
                return None
            if not self._full:
                return None
            item, self._item, self._full = self._item, None, False
            self._cond.notify_all()
            return item

    def wait_empty(self, timeout: float | None = None) -> bool:
        """Wait up to ``timeout`` s until the consumer has taken the item; True when empty.

        A producer that waits here before starting new work keeps at most one
        item per stage in flight, so no finished item ages in the slot.
        """
        with self._cond:
            return self._cond.wait_for(lambda: not self._full, timeout)

    def close(self) -> None:
        """Refuse further items and wake both sides."""
        with self._cond:
            self._closed = True
            self._cond.notify_all()

    @property
    def closed(self) -> bool:
        """True after :meth:`close`."""
        return self._closed

    def __len__(self) -> int:
        """1 while an item waits, else 0."""
        return int(self._full)


class DropCounter:
    """Thread-safe counter of events by reason (processed pairs, dropped pairs...).

    Example:
        >>> c = DropCounter(('a', 'b'))
        >>> c.add('a'); c.add('a', 2); c.snapshot()
        {'a': 3, 'b': 0}
    """

    def __init__(self, reasons: Iterable[str]) -> None:
        self._reasons = tuple(reasons)
        self._lock = threading.Lock()
        self._counts: Counter[str] = Counter()

    def add(self, reason: str, n: int = 1) -> None:
        """Count ``n`` events of ``reason``.

        Raises:
            ValueError: unknown reason (a programming error).
        """
        if reason not in self._reasons:
            raise ValueError(f'unknown reason {reason!r}; known: {self._reasons}')
        with self._lock:
            self._counts[reason] += n

    def snapshot(self) -> dict[str, int]:
        """``{reason: count}`` for every known reason."""
        with self._lock:
            return {r: self._counts[r] for r in self._reasons}

    @property
    def total(self) -> int:
        """Sum over all reasons."""
        with self._lock:
            return sum(self._counts.values())
