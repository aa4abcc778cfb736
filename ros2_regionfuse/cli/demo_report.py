"""ROS-free half of ``regionfuse demo``: output bag, mosaics and the summary of one run.

:mod:`ros2_regionfuse.cli.demo` plays the recording and records the node's
outputs as serialised bytes (:class:`Played`, :class:`Received`); this module
turns them into ``OUT/bag``, ``OUT/mosaic/frame_NNNN.png``, ``OUT/demo.gif``
and the summary (counts, accounting of every frame, rates, latency,
misregistration against the recording's ground truth).
"""
from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..core import bagio, convert, encodings
from ..core.checks import RegionFuseError
from ..core.mosaic import compose_mosaic

log = logging.getLogger(__name__)

INPUT_TOPICS = {'thermal': '/thermal/image_raw', 'thermal_info': '/thermal/camera_info',
                'rgb': '/rgb/image_raw', 'rgb_info': '/rgb/camera_info'}
#: Output topic -> message type, as the node publishes them (no namespace).
OUTPUT_TOPICS = {'/fused/image': bagio.IMAGE, '/fused/misregistration/overlay': bagio.IMAGE,
                 '/fused/camera_info': bagio.CAMERA_INFO, '/fused/status': bagio.FUSION_STATUS,
                 '/diagnostics': bagio.DIAGNOSTIC_ARRAY}
MS = 1e-6  # ns -> ms
DEFAULT_TILE_WIDTH = 320


@dataclass
class Played:
    """One input message as published."""

    topic: str
    msgtype: str
    stamp_ns: int  # shifted stamp, as published
    orig_stamp_ns: int  # stamp in the recording
    log_ns: int  # log (receive) time in the recording
    publish_ns: int  # wall clock at publication
    raw: bytes

    @property
    def playback_lag_ns(self) -> int:
        """Publication time minus the recording's receive time on the shifted timeline.

        About 0 at rate 1; grows by ``(1/rate - 1)`` x elapsed time otherwise.
        """
        return self.publish_ns - (self.stamp_ns + self.log_ns - self.orig_stamp_ns)


@dataclass
class Received:
    """One output message as received."""

    topic: str
    receipt_ns: int
    raw: bytes


@dataclass
class RunResult:
    """What happened during one demo run."""

    played: list[Played] = field(default_factory=list)
    received: list[Received] = field(default_factory=list)
    node_exit: int | None = None
    node_died: bool = False
    error: str = ''


def write_bag(path: Path, res: RunResult, source: Path) -> None:
    """Inputs as played and outputs as received, by receipt/publish time."""
    rows: list[tuple[int, str, str, bytes]] = [(p.publish_ns, p.topic, p.msgtype, p.raw) for p in res.played]
    rows += [(r.receipt_ns, r.topic, OUTPUT_TOPICS[r.topic], r.raw) for r in res.received]
    shift = res.played[0].stamp_ns - res.played[0].orig_stamp_ns if res.played else 0
    with bagio.BagWriter(path, compress=True,
                         custom_data={'regionfuse.source_bag': str(source),
                                      'regionfuse.stamp_shift_ns': str(shift)}) as w:
        for t, topic, msgtype, raw in sorted(rows, key=lambda r: r[0]):
            w.write_raw(topic, msgtype, raw, t)


def _diag_values(res: RunResult) -> dict[str, dict[str, str]]:
    """Key/values of the last /diagnostics report, by status name suffix ('thermal input', 'fusion', ...)."""
    last = [r for r in res.received if r.topic == '/diagnostics']
    out: dict[str, dict[str, str]] = {}
    for r in reversed(last):
        arr = bagio.make_typestore().deserialize_cdr(r.raw, bagio.DIAGNOSTIC_ARRAY)
        for st in arr.status:
            key = st.name.rsplit(': ', 1)[-1]
            if key not in out:
                out[key] = {kv.key: kv.value for kv in st.values}
        if {'thermal input', 'rgb input', 'fusion'} <= set(out):
            break
    return out


def _num(d: dict[str, str], key: str) -> float:
    try:
        return float(d.get(key, 'nan'))
    except ValueError:
        return float('nan')


def _nonzero(d: dict[str, str], prefix: str) -> dict[str, int]:
    return {k[len(prefix):]: int(_num(d, k)) for k in d if k.startswith(prefix) and _num(d, k) > 0}


def node_counts(diag: dict[str, dict[str, str]], last_status: Any | None) -> dict[str, Any]:
    """The node's counters: from its last /diagnostics report, else from its last FusionStatus.

    Returns:
        ``received`` and ``unpaired`` (by reason) and ``left_in_queue`` per
        camera, ``paired``, ``processed`` and ``pair_drops`` (by reason).
    """
    th_d, rgb_d, fusion_d = diag.get('thermal input', {}), diag.get('rgb input', {}), diag.get('fusion', {})
    st = last_status
    return {
        'received': {'thermal': int(_num(th_d, 'received')) if th_d else (st.thermal_received if st else 0),
                     'rgb': int(_num(rgb_d, 'received')) if rgb_d else (st.rgb_received if st else 0)},
        'paired': int(_num(fusion_d, 'paired')) if fusion_d else (st.paired if st else 0),
        'processed': int(_num(fusion_d, 'processed')) if fusion_d else (st.processed if st else 0),
        'unpaired': {'thermal': _nonzero(th_d, 'unpaired.'), 'rgb': _nonzero(rgb_d, 'unpaired.')},
        'left_in_queue': {'thermal': int(_num(th_d, 'queued')) if th_d else 0,
                          'rgb': int(_num(rgb_d, 'queued')) if rgb_d else 0},
        'pair_drops': _nonzero(fusion_d, 'dropped.'),
    }


def is_accounted(counts: dict[str, Any], have_diagnostics: bool) -> bool:
    """True when every frame and pair the node received is explained by its counters.

    Every received frame must be paired, unpaired by a reason or still queued,
    and every pair processed or dropped by a reason; this needs the per-reason
    counters of the diagnostics.

    Example:
        >>> c = {'received': {'thermal': 3, 'rgb': 3}, 'paired': 2, 'processed': 1,
        ...      'unpaired': {'thermal': {'no_match': 1}, 'rgb': {}},
        ...      'left_in_queue': {'thermal': 0, 'rgb': 1}, 'pair_drops': {'mailbox_overwrite': 1}}
        >>> is_accounted(c, True)
        True
    """
    if not have_diagnostics:
        return False
    cams_ok = all(counts['received'][c] == counts['paired'] + sum(counts['unpaired'][c].values())
                  + counts['left_in_queue'][c] for c in ('thermal', 'rgb'))
    return cams_ok and counts['paired'] == counts['processed'] + sum(counts['pair_drops'].values())


def summarise(res: RunResult, bag: Path, rate: float) -> dict[str, Any]:
    """Counts, accounting, rates, latency and misregistration of one run.

    Args:
        res: what was played and received.
        bag: the played recording (its ``ground_truth.json`` is read when present).
        rate: the playback rate.

    Returns:
        A JSON-able dict (see :func:`print_summary`); ``accounted`` as in
        :func:`is_accounted`; ``node.lost_in_transport`` counts frames published
        but never received by the node (DDS loss, counted here). Latency is
        output receipt minus the input's stamp, less the lag a playback rate
        other than 1 adds (:attr:`Played.playback_lag_ns`).
    """
    ts = bagio.make_typestore()
    played = {k: [p for p in res.played if p.topic == t] for k, t in INPUT_TOPICS.items()}
    fused = [r for r in res.received if r.topic == '/fused/image']
    statuses = [ts.deserialize_cdr(r.raw, bagio.FUSION_STATUS)
                for r in res.received if r.topic == '/fused/status']
    rgb_by_stamp = {p.stamp_ns: p for p in played['rgb']}
    lat_ms = []
    for r in fused:
        stamp = bagio.time_to_ns(ts.deserialize_cdr(r.raw, bagio.IMAGE).header.stamp)
        p = rgb_by_stamp.get(stamp)
        lat_ms.append((r.receipt_ns - stamp - (p.playback_lag_ns if p else 0)) * MS)
    diag = _diag_values(res)
    last = statuses[-1] if statuses else None
    counts = node_counts(diag, last)
    n_in = {'thermal': len(played['thermal']), 'rgb': len(played['rgb'])}
    truth = bagio.load_json_beside(bag, 'ground_truth.json').get('misregistration', {})
    shifts = np.array([s.mean_shift_px for s in statuses], np.float64)
    fracs = np.array([s.misaligned_fraction for s in statuses], np.float64)
    node_ms = np.array([s.total_ms for s in statuses], np.float64)
    return {
        'recording': str(bag), 'playback_rate': rate,
        'frames_in': n_in,
        'node': counts | {
            'lost_in_transport': {c: n_in[c] - counts['received'][c] for c in n_in},
            'exit_status': res.node_exit,
            'device': diag.get('fusion', {}).get('device', last.device if last else ''),
            'fusion_model': last.fusion_model if last else '',
            'corrector_model': last.corrector_model if last else ''},
        'accounted': is_accounted(counts, bool(diag)),
        'outputs': {'fused_images': len(fused), 'statuses': len(statuses),
                    'overlays': sum(1 for r in res.received if r.topic == '/fused/misregistration/overlay'),
                    'diagnostics': sum(1 for r in res.received if r.topic == '/diagnostics'),
                    'mosaics': 0, 'bag': ''},
        'rate_hz': {'input_rgb': _rate([p.publish_ns for p in played['rgb']]),
                    'output': _rate([r.receipt_ns for r in fused])},
        'latency_ms': {'p50': _pct(lat_ms, 50), 'p95': _pct(lat_ms, 95),
                       'max': max(lat_ms, default=float('nan')), 'node_total_p50': _pct(node_ms, 50)},
        'misregistration': {'mean_shift_px': _nanmean(shifts), 'misaligned_fraction': _nanmean(fracs),
                            'ground_truth_mean_shift_px': truth.get('flow_mean_px', float('nan'))},
        'error': res.error,
    }


def _nanmean(a: np.ndarray) -> float:
    a = a[np.isfinite(a)]
    return float(a.mean()) if a.size else float('nan')


def _pct(a: Sequence[float] | np.ndarray, q: float) -> float:
    return float(np.percentile(a, q)) if len(a) else float('nan')


def _rate(t_ns: Sequence[int]) -> float:
    """Events per second over integer-nanosecond times (exact differences, no float rounding)."""
    if len(t_ns) < 2:
        return float('nan')
    return (len(t_ns) - 1) / ((int(t_ns[-1]) - int(t_ns[0])) * 1e-9)


def write_mosaics(res: RunResult, out: Path, tile_width: int = DEFAULT_TILE_WIDTH, gif: bool = True) -> int:
    """One PNG per fused frame (thermal | RGB | fused | overlay) and the GIF; returns the PNG count.

    The thermal tile is the input the node paired with the frame (from
    ``fused/status``), shown with percentile AGC; the RGB tile the input with
    the frame's stamp; the overlay the node's ``fused/misregistration/overlay``.
    """
    import cv2
    ts = bagio.make_typestore()
    fused = [r for r in res.received if r.topic == '/fused/image']
    statuses = [ts.deserialize_cdr(r.raw, bagio.FUSION_STATUS)
                for r in res.received if r.topic == '/fused/status']
    by_stamp: dict[tuple[str, int], Played] = {(p.topic, p.stamp_ns): p for p in res.played}
    overlays = {}
    for r in res.received:
        if r.topic == '/fused/misregistration/overlay':
            m = ts.deserialize_cdr(r.raw, bagio.IMAGE)
            overlays[bagio.time_to_ns(m.header.stamp)] = m
    th_of = {bagio.time_to_ns(s.header.stamp): bagio.time_to_ns(s.thermal_stamp) for s in statuses}
    thermal_played = [p for p in res.played if p.topic == INPUT_TOPICS['thermal']]
    mdir = out / 'mosaic'
    mdir.mkdir(parents=True, exist_ok=True)
    frames = []
    for i, r in enumerate(fused):
        try:
            fmsg = ts.deserialize_cdr(r.raw, bagio.IMAGE)
            stamp = bagio.time_to_ns(fmsg.header.stamp)
            rgb_p = by_stamp.get((INPUT_TOPICS['rgb'], stamp))
            th_stamp = th_of.get(stamp)
            th_p = (by_stamp.get((INPUT_TOPICS['thermal'], th_stamp)) if th_stamp is not None else
                    min(thermal_played, key=lambda p: abs(p.stamp_ns - stamp), default=None))
            tiles = [_thermal_tile(th_p), _image_tile(rgb_p.raw if rgb_p else None, 'RGB'),
                     ('fused', encodings.to_rgb8(bagio.image_array(fmsg), fmsg.encoding)),
                     _overlay_tile(overlays.get(stamp))]
            ref_h, ref_w = tiles[2][1].shape[:2]
            tile_wh = (tile_width, max(1, round(tile_width * ref_h / ref_w)))
            mosaic = compose_mosaic(tiles, tile_wh)
        except RegionFuseError as e:
            log.warning('mosaic of frame %d skipped: %s', i, e)
            continue
        cv2.imwrite(str(mdir / f'frame_{i:04d}.png'), mosaic[:, :, ::-1])
        frames.append(mosaic)
    if gif and frames:
        import imageio.v2 as imageio
        imageio.mimsave(out / 'demo.gif', frames, duration=_gif_frame_ms(fused), loop=0)
    return len(frames)


def _gif_frame_ms(fused: list[Received]) -> float:
    t = np.array([r.receipt_ns for r in fused], np.float64)
    return float(np.median(np.diff(t)) * MS) if len(t) > 1 else 100.0


def _thermal_tile(p: Played | None) -> tuple[str, np.ndarray]:
    if p is None:
        return 'thermal (missing)', np.zeros((1, 1), np.uint8)
    msg = bagio.make_typestore().deserialize_cdr(p.raw, bagio.IMAGE)
    img = encodings.thermal_input(bagio.image_array(msg), msg.encoding)
    unit = convert.thermal_to_unit(img) if img.dtype != np.uint8 else img.astype(np.float32) / 255.0
    return f'thermal {msg.width}x{msg.height} {msg.encoding}', convert.unit_to_uint8(unit)


def _image_tile(raw: bytes | None, label: str) -> tuple[str, np.ndarray]:
    if raw is None:
        return f'{label} (missing)', np.zeros((1, 1), np.uint8)
    msg = bagio.make_typestore().deserialize_cdr(raw, bagio.IMAGE)
    return f'{label} {msg.width}x{msg.height}', encodings.rgb_input(bagio.image_array(msg), msg.encoding)


def _overlay_tile(msg: Any) -> tuple[str, np.ndarray]:
    if msg is None:
        return 'misregistration (none)', np.zeros((1, 1), np.uint8)
    return 'misregistration', encodings.to_rgb8(bagio.image_array(msg), msg.encoding)


def print_summary(s: dict[str, Any]) -> None:
    """Human-readable summary on stdout."""
    n, fin = s['node'], s['frames_in']
    lat, mis = s['latency_ms'], s['misregistration']
    print('\n=== regionfuse demo summary ===')
    print(f'recording        {s["recording"]}')
    print(f'frames in        thermal {fin["thermal"]}, rgb {fin["rgb"]}  (node received thermal '
          f'{n["received"]["thermal"]}, rgb {n["received"]["rgb"]})')
    print(f'paired           {n["paired"]}')
    print(f'processed        {n["processed"]}')
    drops = {f'unpaired thermal {k}': v for k, v in n['unpaired']['thermal'].items()}
    drops |= {f'unpaired rgb {k}': v for k, v in n['unpaired']['rgb'].items()}
    drops |= {f'pair {k}': v for k, v in n['pair_drops'].items()}
    drops |= {f'lost before the node ({k})': v for k, v in n['lost_in_transport'].items() if v}
    drops |= {f'waiting in queue ({k})': v for k, v in n['left_in_queue'].items() if v}
    print('dropped          ' + (', '.join(f'{k}: {v}' for k, v in drops.items()) if drops else 'none'))
    print(f'all accounted    {"yes" if s["accounted"] else "NO"}')
    rate = s['rate_hz']
    print(f'rate             input rgb {rate["input_rgb"]:.2f} Hz, output {rate["output"]:.2f} Hz')
    print(f'latency          p50 {lat["p50"]:.1f} ms, p95 {lat["p95"]:.1f} ms (input stamp -> output '
          f'receipt; node pipeline p50 {lat["node_total_p50"]:.1f} ms)')
    print(f'misregistration  mean shift {mis["mean_shift_px"]:.2f} px (ground truth '
          f'{mis["ground_truth_mean_shift_px"]:.2f} px), misaligned area {mis["misaligned_fraction"]:.1%}')
    print(f'device / models  {n["device"]} / {n["fusion_model"]} + {n["corrector_model"]}')
    o = s['outputs']
    print(f'outputs          {o["fused_images"]} fused images, {o["overlays"]} overlays, {o["statuses"]} '
          f'statuses, {o["diagnostics"]} diagnostics -> {o["bag"]}')
    print(f'mosaics          {o["mosaics"]} PNG (thermal | RGB | fused | misregistration) in '
          f'{o.get("mosaic_dir", "")}, animation {o.get("gif", "") or "none"}')
    print(f'node exit        {n["exit_status"]}')
