"""``/diagnostics`` for fuse_node: input/output rates, latency, drops, staleness, device, models.

The node fills a :class:`Snapshot` from its counters once per
``diagnostics.period``; :func:`build_statuses` turns two consecutive snapshots
into ``DiagnosticStatus`` entries (one per camera, one for the fusion, one
echoing the active parameters) and decides their levels:

* camera: ERROR when silent for more than ``diagnostics.error_timeout``, WARN
  when silent for more than ``diagnostics.stale_timeout`` or when bad frames
  arrived since the last report, else OK;
* fusion: ERROR when the node is not active, WARN when pipeline errors
  happened since the last report or both cameras send but no pair formed for
  ``diagnostics.stale_timeout`` (check ``sync.slop``/``sync.thermal_offset``), else OK.
"""
from __future__ import annotations

import threading
from collections import Counter, deque
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus, KeyValue
from std_msgs.msg import Header

from ..core.config import NodeConfig, to_dict
from ..core.sync import PAIR_DROP_REASONS, RGB, STREAMS, THERMAL, SyncCounters
from .param_docs import format_value

#: Latency samples kept for the percentiles of one report.
LATENCY_WINDOW = 1000


class LatencyStats:
    """Latencies (ms) collected between two diagnostics reports; thread-safe.

    Example:
        >>> s = LatencyStats(); s.add(10.0); s.add(30.0); s.take()['p50_ms']
        20.0
    """

    def __init__(self, window: int = LATENCY_WINDOW) -> None:
        self._lock = threading.Lock()
        self._values: deque[float] = deque(maxlen=window)

    def add(self, ms: float) -> None:
        """Record one latency in milliseconds."""
        with self._lock:
            self._values.append(float(ms))

    def take(self) -> dict[str, float]:
        """Mean, p50, p95 and max (ms) of the samples since the last call (NaN if none), then reset."""
        with self._lock:
            v = np.array(self._values, dtype=np.float64)
            self._values.clear()
        if v.size == 0:
            nan = float('nan')
            return {'mean_ms': nan, 'p50_ms': nan, 'p95_ms': nan, 'max_ms': nan}
        return {'mean_ms': float(v.mean()), 'p50_ms': float(np.percentile(v, 50)),
                'p95_ms': float(np.percentile(v, 95)), 'max_ms': float(v.max())}


@dataclass
class BadInputLog:
    """Bad frames of one camera: counts by error type and the last message; thread-safe."""

    counts: Counter = field(default_factory=Counter)
    last: str = ''
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def record(self, error: BaseException) -> None:
        """Count one bad frame."""
        with self._lock:
            self.counts[type(error).__name__] += 1
            self.last = f'{type(error).__name__}: {error}'

    def snapshot(self) -> tuple[dict[str, int], str]:
        """``({error type: count}, last message)``."""
        with self._lock:
            return dict(self.counts), self.last


@dataclass
class Snapshot:
    """Everything one diagnostics report needs, taken at ``time`` (monotonic s).

    Attributes:
        time: monotonic time of the snapshot (s).
        active: the node is active (subscribed, worker running).
        sync: synchronizer counters.
        processed: pairs that went through the pipeline and were published.
        pair_drops: pairs dropped by reason (see ``PAIR_DROP_REASONS``).
        last_received: per camera, monotonic time of the last frame (None: never).
        since: monotonic time the node became active (staleness before the first frame).
        bad_inputs: per camera, ``({error type: count}, last message)``.
        topics: per camera, the resolved image topic.
        latency: from :meth:`LatencyStats.take`.
        device, backend, fusion_model, corrector_model: what runs the pipeline.
        native_kernels: the fused C kernels' state (``loaded <path>``, ``unavailable: <reason>``,
            ``not loaded`` before the first frame, ``off``).
        last_pair: monotonic time the last pair was formed (None: never).
        alignment: ``(state, summary)`` of the pre-alignment (``align.mode`` or, in auto mode,
            ``collecting`` / ``fixed``).
    """

    time: float
    active: bool
    sync: SyncCounters
    processed: int
    pair_drops: dict[str, int]
    last_received: dict[str, float | None]
    since: float
    bad_inputs: dict[str, tuple[dict[str, int], str]]
    topics: dict[str, str]
    latency: dict[str, float]
    device: str = ''
    backend: str = ''
    fusion_model: str = ''
    corrector_model: str = ''
    last_pair: float | None = None
    native_kernels: str = ''
    alignment: tuple[str, str] = ('', '')


def _kv(key: str, value: Any) -> KeyValue:
    if isinstance(value, float):
        text = 'nan' if value != value else f'{value:.3f}'
    else:
        text = str(value)
    return KeyValue(key=key, value=text)


def _rate(now: int, before: int, dt: float) -> float:
    return (now - before) / dt if dt > 0 else float('nan')


def camera_level(age: float, stale_timeout: float, error_timeout: float, new_bad: int
                 ) -> tuple[bytes, str]:
    """Level and message of one camera from its silence ``age`` (s) and new bad frames.

    Example:
        >>> camera_level(3.0, 2.0, 5.0, 0)[1]
        'stale: no frame for 3.0 s'
    """
    if age > error_timeout:
        return DiagnosticStatus.ERROR, f'no frame for {age:.1f} s'
    if age > stale_timeout:
        return DiagnosticStatus.WARN, f'stale: no frame for {age:.1f} s'
    if new_bad:
        return DiagnosticStatus.WARN, f'{new_bad} bad frame(s) since the last report'
    return DiagnosticStatus.OK, 'ok'


def build_statuses(node_name: str, cur: Snapshot, prev: Snapshot | None, cfg: NodeConfig
                   ) -> list[DiagnosticStatus]:
    """DiagnosticStatus entries for one report.

    Args:
        node_name: prefix of the status names (``"<node>: thermal input"``).
        cur: the snapshot now.
        prev: the previous report's snapshot (rates are deltas against it), or None.
        cfg: the active configuration (levels' timeouts; echoed values).
    """
    dt = cur.time - prev.time if prev is not None else 0.0
    d = cfg.diagnostics
    out: list[DiagnosticStatus] = []
    per = {THERMAL: cur.sync.thermal, RGB: cur.sync.rgb}
    per_prev = ({THERMAL: prev.sync.thermal, RGB: prev.sync.rgb} if prev is not None else None)
    for stream in STREAMS:
        sc = per[stream]
        last = cur.last_received.get(stream)
        age = cur.time - (last if last is not None else cur.since)
        bad_counts, bad_last = cur.bad_inputs.get(stream, ({}, ''))
        bad_total = sum(bad_counts.values())
        prev_bad = sum(prev.bad_inputs.get(stream, ({}, ''))[0].values()) if prev is not None else 0
        level, msg = camera_level(age, d.stale_timeout, d.error_timeout, bad_total - prev_bad)
        if not cur.active:
            level, msg = DiagnosticStatus.STALE, 'node not active'
        values = [_kv('topic', cur.topics.get(stream, '')),
                  _kv('rate_hz', _rate(sc.received, per_prev[stream].received, dt)
                      if per_prev else float('nan')),
                  _kv('seconds_since_last_frame', age if last is not None else float('nan')),
                  _kv('received', sc.received), _kv('paired', sc.paired), _kv('queued', sc.queued),
                  _kv('unpaired', sc.unpaired_total)]
        values += [_kv(f'unpaired.{r}', n) for r, n in sc.unpaired.items()]
        values += [_kv(f'bad_input.{k}', n) for k, n in sorted(bad_counts.items())]
        values.append(_kv('last_bad_input', bad_last))
        out.append(DiagnosticStatus(level=level, name=f'{node_name}: {stream} input',
                                    message=msg, hardware_id=cur.topics.get(stream, ''),
                                    values=values))
    out.append(_fusion_status(node_name, cur, prev, dt, cfg))
    state, summary = cur.alignment
    if state:
        out.append(DiagnosticStatus(level=DiagnosticStatus.OK, name=f'{node_name}: alignment',
                                    message=summary, hardware_id=cur.device,
                                    values=[_kv('mode', cfg.pipeline.align.mode), _kv('state', state)]))
    params = [KeyValue(key=k, value=v if isinstance(v, str) else format_value(v))
              for k, v in to_dict(cfg).items()]
    out.append(DiagnosticStatus(level=DiagnosticStatus.OK, name=f'{node_name}: parameters',
                                message='active parameter values', hardware_id=cur.device,
                                values=params))
    return out


def _fusion_status(node_name: str, cur: Snapshot, prev: Snapshot | None, dt: float,
                   cfg: NodeConfig) -> DiagnosticStatus:
    drops = cur.pair_drops
    new_errors = 0
    if prev is not None:
        new_errors = sum(drops.get(r, 0) - prev.pair_drops.get(r, 0)
                         for r in ('pipeline_error', 'internal_error'))
    stale = cfg.diagnostics.stale_timeout
    both_alive = all(t is not None and cur.time - t <= stale for t in cur.last_received.values())
    no_pairs = (cur.last_pair is None or cur.time - cur.last_pair > stale) and cur.time - cur.since > stale
    if not cur.active:
        level, msg = DiagnosticStatus.ERROR, 'node not active'
    elif new_errors:
        level, msg = DiagnosticStatus.WARN, f'{new_errors} pipeline error(s) since the last report'
    elif both_alive and no_pairs:
        level, msg = (DiagnosticStatus.WARN,
                      f'both cameras send but no pair formed for {stale:.1f} s: '
                      'check sync.slop and sync.thermal_offset')
    else:
        level, msg = DiagnosticStatus.OK, 'ok'
    rate = _rate(cur.processed, prev.processed, dt) if prev is not None else float('nan')
    lat = cur.latency
    values = [_kv('output_rate_hz', rate), _kv('paired', cur.sync.pairs),
              _kv('processed', cur.processed), _kv('dropped', sum(drops.values()))]
    values += [_kv(f'dropped.{r}', drops.get(r, 0)) for r in PAIR_DROP_REASONS]
    values += [_kv(f'latency_{k}', v) for k, v in lat.items()]
    values += [_kv('device', cur.device), _kv('backend', cur.backend),
               _kv('fusion_model', cur.fusion_model), _kv('corrector_model', cur.corrector_model),
               _kv('corrector_enabled', cfg.pipeline.corrector.enabled),
               _kv('native_kernels', cur.native_kernels)]
    return DiagnosticStatus(level=level, name=f'{node_name}: fusion', message=msg,
                            hardware_id=cur.device, values=values)


def diagnostic_array(statuses: list[DiagnosticStatus], header: Header) -> DiagnosticArray:
    """Wrap statuses into the message published on ``/diagnostics``."""
    return DiagnosticArray(header=header, status=statuses)
