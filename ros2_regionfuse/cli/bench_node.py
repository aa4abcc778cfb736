"""``regionfuse bench-node``: the running node end to end over loopback DDS.

Starts ``fuse_node`` in a subprocess exactly as ``regionfuse demo`` does (the
launch file's command line, loopback-only DDS with the shared-memory profile,
a ROS domain of its own), publishes pairs of the bundled recording at
``--rate`` Hz (default 30) for ``--duration`` seconds with fresh stamps (the
stamp is the publish time, so latency = receipt of ``fused/image`` minus input
stamp is end to end, pairing wait included), and reports:

* output rate of ``fused/image`` (Hz) over the measured window,
* end-to-end latency p50 / p95 / max (ms),
* drop counts by reason, from the node's last ``/diagnostics`` report (pair
  drops of the worker mailbox, unpaired frames per camera, bad inputs) and the
  balance ``published - processed - counted drops`` (frames lost in transport),
* the node's resident memory (RSS, MiB) after warm-up and at the end, and its growth.

Targets (issue 5): >= 20 Hz output at 30 Hz input, p95 latency <= 100 ms,
RSS growth < 5 % over 5 minutes (``--duration 300``), every drop counted.

RGB frames are resized to ``--size`` (default 640x480; encoded bgr8) and the
recording's calibration homography is scaled to match; thermal frames keep the
recording's mono16 format and size. Without weights (no checkpoint given and no
shipped weights) randomly initialised weights are written to a temporary folder
and passed to the node (timing only; the report says so).
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import struct
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from ..core import bagio, profiling
from ..core.checks import ConfigError
from ..core.weights import save_weights, shipped_weights
from ..inference.benchmark import parse_size
from ..models.register_refuse import NAME as REGISTER_REFUSE
from . import demo

log = logging.getLogger(__name__)

FUSED_TOPIC = '/fused/image'
DIAGNOSTICS_TOPIC = '/diagnostics'
NS = 1_000_000_000
MS = 1e-6  # ns -> ms
CDR_STAMP_OFFSET = 4  # CDR encapsulation header; the message starts with header.stamp (int32 sec, uint32 ns)
RSS_PERIOD_S = 1.0


@dataclass(frozen=True)
class NodeBenchDefaults:
    """Defaults of ``bench-node`` and the issue's targets."""

    rate: float = 30.0
    duration: float = 60.0
    warmup: float = 5.0
    size: str = '640x480'
    frames: int = 10
    drain: float = 3.0
    startup_timeout: float = 180.0
    target_rate_hz: float = 20.0
    target_p95_ms: float = 100.0
    target_rss_growth_pct: float = 5.0


DEFAULTS = NodeBenchDefaults()


@dataclass
class Frame:
    """One input pair, serialised (stamps patched at publish time)."""

    thermal: bytearray
    rgb: bytearray


@dataclass
class Measurements:
    """What the player and the recorder saw (ns wall-clock times)."""

    published: list[int] = field(default_factory=list)        # stamps of published pairs
    late: int = 0                                              # publish slots skipped (player behind)
    received: list[tuple[int, int]] = field(default_factory=list)  # (receipt, stamp) of fused/image
    diagnostics: Any = None                                    # last DiagnosticArray
    rss: list[tuple[float, float]] = field(default_factory=list)   # (monotonic s, MiB)


def set_stamp(buf: bytearray, stamp_ns: int) -> None:
    """Write ``stamp_ns`` into the header stamp of a serialised (CDR, little-endian) stamped message.

    Example:
        >>> b = bytearray(16); set_stamp(b, 3 * 10**9 + 7); read_stamp(bytes(b))
        3000000007
    """
    struct.pack_into('<iI', buf, CDR_STAMP_OFFSET, stamp_ns // NS, stamp_ns % NS)


def read_stamp(raw: bytes) -> int:
    """Header stamp (ns) of a serialised stamped message (see :func:`set_stamp`)."""
    sec, nsec = struct.unpack_from('<iI', raw, CDR_STAMP_OFFSET)
    return sec * NS + nsec


def load_frames(bag: Path, n: int, size: tuple[int, int]) -> tuple[list[Frame], np.ndarray | None]:
    """``n`` input pairs of the recording, RGB resized to ``size`` (bgr8); scaled homography.

    Returns:
        ``(frames, homography)``; the homography (3x3, thermal -> resized RGB) comes
        from the recording's ``calibration.yaml`` (None without one).

    Raises:
        BagError: unreadable recording.
        ConfigError: no frames.
    """
    import yaml
    ts = bagio.make_typestore()
    thermal, rgb = [], []
    src_size = None
    for m in bagio.read_messages(bag, [demo.INPUT_TOPICS['thermal'], demo.INPUT_TOPICS['rgb']]):
        if m.topic == demo.INPUT_TOPICS['thermal'] and len(thermal) < n:
            thermal.append(bytearray(m.raw))
        elif m.topic == demo.INPUT_TOPICS['rgb'] and len(rgb) < n:
            msg = m.decode()
            img = bagio.image_array(msg, copy=True)
            src_size = (int(msg.width), int(msg.height))
            if img.ndim == 2:
                img = cv2.cvtColor(img, cv2.COLOR_GRAY2BGR)
            elif msg.encoding.startswith('rgb'):
                img = cv2.cvtColor(img[..., :3], cv2.COLOR_RGB2BGR)
            img = np.ascontiguousarray(img[..., :3])
            if (img.shape[1], img.shape[0]) != size:
                img = cv2.resize(img, size, interpolation=cv2.INTER_LINEAR)
            out = bagio.image_msg(img, 'bgr8', 0, msg.header.frame_id)
            rgb.append(bytearray(ts.serialize_cdr(out, bagio.IMAGE)))
        if len(thermal) >= n and len(rgb) >= n:
            break
    k = min(len(thermal), len(rgb))
    if k == 0:
        raise ConfigError(f'{bag}: no thermal/RGB frames')
    hom = None
    calib = bag / 'calibration.yaml'
    if calib.is_file() and src_size is not None:
        params = yaml.safe_load(calib.read_text()).get('/**', {}).get('ros__parameters', {})
        values = params.get('align', {}).get('homography')
        if values is not None:
            s = np.diag([size[0] / src_size[0], size[1] / src_size[1], 1.0])
            hom = s @ np.asarray(values, np.float64).reshape(3, 3)
            hom /= hom[2, 2]
    return [Frame(t, r) for t, r in zip(thermal[:k], rgb[:k], strict=True)], hom


class Player:
    """rclpy side: publishes the inputs, records fused/image receipts and /diagnostics."""

    def __init__(self, meas: Measurements) -> None:
        import rclpy
        from diagnostic_msgs.msg import DiagnosticArray
        from rclpy.executors import SingleThreadedExecutor
        from rclpy.qos import qos_profile_sensor_data
        from sensor_msgs.msg import Image
        self.rclpy = rclpy
        self.meas = meas
        self.ctx = rclpy.Context()
        rclpy.init(args=[sys.argv[0]], context=self.ctx)   # our CLI flags are not ROS arguments
        self.node = rclpy.create_node('regionfuse_bench_node', context=self.ctx)
        self.pub_t = self.node.create_publisher(Image, demo.INPUT_TOPICS['thermal'], qos_profile_sensor_data)
        self.pub_r = self.node.create_publisher(Image, demo.INPUT_TOPICS['rgb'], qos_profile_sensor_data)
        self._image_type, self._diag_type = Image, DiagnosticArray
        self._lock = threading.Lock()
        self.sub_img = None
        self.sub_diag = None
        self.executor = SingleThreadedExecutor(context=self.ctx)
        self.executor.add_node(self.node)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._spin, name='bench-spin', daemon=True)
        self._thread.start()

    def _spin(self) -> None:
        while not self._stop.is_set() and self.ctx.ok():
            self.executor.spin_once(timeout_sec=0.05)

    def node_ready(self) -> bool:
        """The node subscribes to both inputs and publishes fused/image."""
        return (self.pub_t.get_subscription_count() > 0 and self.pub_r.get_subscription_count() > 0
                and bool(self.node.get_publishers_info_by_topic(FUSED_TOPIC)))

    def subscribe(self) -> None:
        """Subscribe to fused/image (raw bytes, the publisher's reliability) and /diagnostics."""
        from rclpy.qos import QoSProfile, ReliabilityPolicy
        infos = self.node.get_publishers_info_by_topic(FUSED_TOPIC)
        reliable = bool(infos) and all(i.qos_profile.reliability == ReliabilityPolicy.RELIABLE for i in infos)
        qos = QoSProfile(depth=10, reliability=(ReliabilityPolicy.RELIABLE if reliable
                                                else ReliabilityPolicy.BEST_EFFORT))
        self.sub_img = self.node.create_subscription(self._image_type, FUSED_TOPIC, self._on_image, qos,
                                                     raw=True)
        self.sub_diag = self.node.create_subscription(self._diag_type, DIAGNOSTICS_TOPIC, self._on_diag,
                                                      QoSProfile(depth=10))

    def subscribed(self) -> bool:
        """The fused/image subscription is matched."""
        return self.sub_img is not None and self.sub_img.get_publisher_count() > 0

    def _on_image(self, raw: bytes) -> None:
        now = time.time_ns()
        with self._lock:
            self.meas.received.append((now, read_stamp(raw)))

    def _on_diag(self, msg: Any) -> None:
        with self._lock:
            self.meas.diagnostics = msg

    def publish(self, frame: Frame, stamp_ns: int) -> None:
        """Publish one pair with header stamp ``stamp_ns`` (thermal first, as a camera pair arrives)."""
        set_stamp(frame.thermal, stamp_ns)
        set_stamp(frame.rgb, stamp_ns)
        self.pub_t.publish(bytes(frame.thermal))
        self.pub_r.publish(bytes(frame.rgb))

    def close(self) -> None:
        """Stop spinning, destroy the node, shut the context down."""
        self._stop.set()
        self._thread.join(timeout=5.0)
        self.executor.shutdown()
        self.node.destroy_node()
        self.rclpy.shutdown(context=self.ctx)


def diagnostics_values(msg: Any) -> dict[str, dict[str, str]]:
    """``{status name suffix: {key: value}}`` of a DiagnosticArray ('fusion', 'thermal input', ...)."""
    if msg is None:
        return {}
    out = {}
    for st in msg.status:
        name = st.name.split(': ', 1)[-1]
        if name == 'parameters':
            continue
        out[name] = {kv.key: kv.value for kv in st.values}
    return out


def drop_counts(diag: dict[str, dict[str, str]]) -> dict[str, int]:
    """Counted drops by reason: ``fusion.dropped.*``, ``<camera>.unpaired.*``, ``<camera>.bad_input.*``."""
    out: dict[str, int] = {}
    for status, values in diag.items():
        prefix = 'pair' if status == 'fusion' else status.replace(' input', '')
        for k, v in values.items():
            if k.startswith(('dropped.', 'unpaired.', 'bad_input.')):
                try:
                    out[f'{prefix}.{k}'] = int(float(v))
                except ValueError:
                    continue
    return out


def _counter(diag: dict[str, dict[str, str]], status: str, key: str) -> int | None:
    try:
        return int(float(diag[status][key]))
    except (KeyError, ValueError):
        return None


def summarise(meas: Measurements, t_start_ns: int, t_end_ns: int, rate: float) -> dict[str, Any]:
    """Rates, latency, drops and memory of one run; the measured window is ``[t_start, t_end)`` (stamps)."""
    d = DEFAULTS
    window_s = (t_end_ns - t_start_ns) / NS
    pub = [s for s in meas.published if t_start_ns <= s < t_end_ns]
    lat = np.array([(r - s) * MS for r, s in meas.received if t_start_ns <= s < t_end_ns])
    diag = diagnostics_values(meas.diagnostics)
    drops = drop_counts(diag)
    processed = _counter(diag, 'fusion', 'processed')
    rss = [m for _, m in meas.rss]
    rss_start, rss_end = (rss[0], rss[-1]) if rss else (float('nan'), float('nan'))
    growth = 100.0 * (rss_end - rss_start) / rss_start if rss else float('nan')
    pct = (lambda q: float(np.percentile(lat, q))) if lat.size else (lambda q: float('nan'))
    total_pub = len(meas.published)
    pair_drops = sum(v for k, v in drops.items() if k.startswith('pair.'))
    paired = _counter(diag, 'fusion', 'paired')
    recv = {cam: _counter(diag, f'{cam} input', 'received') for cam in ('thermal', 'rgb')}
    res = {
        'input_rate_hz': rate, 'window_s': window_s,
        'pairs_published_window': len(pub), 'pairs_published_total': total_pub,
        'publish_slots_missed': meas.late,
        'outputs_window': int(lat.size), 'outputs_total': len(meas.received),
        'output_rate_hz': lat.size / window_s if window_s > 0 else float('nan'),
        'latency_ms': {'p50': pct(50), 'p95': pct(95), 'max': float(lat.max()) if lat.size else float('nan'),
                       'mean': float(lat.mean()) if lat.size else float('nan')},
        'node_counters': {'processed': processed, 'paired': paired,
                          'thermal_received': recv['thermal'], 'rgb_received': recv['rgb']},
        'drops': drops,
        # frames the node never saw (DDS), and pairs neither processed nor dropped with a reason
        'lost_in_transport': {cam: (None if n is None else total_pub - n) for cam, n in recv.items()},
        'uncounted_pairs': (None if processed is None or paired is None else
                            paired - processed - pair_drops),
        'rss_mb': {'start': rss_start, 'end': rss_end, 'max': max(rss) if rss else float('nan'),
                   'growth_pct': growth},
    }
    res['targets'] = {
        'output_rate_hz': {'value': res['output_rate_hz'], 'target': f'>= {d.target_rate_hz:g}',
                           'pass': bool(res['output_rate_hz'] >= d.target_rate_hz)},
        'latency_p95_ms': {'value': res['latency_ms']['p95'], 'target': f'<= {d.target_p95_ms:g}',
                           'pass': bool(res['latency_ms']['p95'] <= d.target_p95_ms)},
        'rss_growth_pct': {'value': growth, 'target': f'< {d.target_rss_growth_pct:g}',
                           'pass': bool(growth < d.target_rss_growth_pct)},
    }
    return res


def _random_weights(folder: Path) -> dict[str, str]:
    """Write randomly initialised default weights where shipped ones are missing; node params."""
    from ..core.config import PipelineConfig
    from ..models.registry import build_corrector, build_fusion
    cfg = PipelineConfig()
    params = {}
    for kind, variant in (('fusion', cfg.fusion.variant), ('corrector', cfg.corrector.variant)):
        if shipped_weights(variant).is_file() or (kind == 'corrector' and variant == REGISTER_REFUSE):
            continue
        model = build_fusion(variant) if kind == 'fusion' else build_corrector(variant)
        path = folder / f'{variant}.random.safetensors'
        save_weights(model, path, {'variant': variant, 'note': 'random initialisation (bench-node)'})
        params[f'{kind}.checkpoint'] = str(path)
        log.warning('%s: no shipped weights: the node runs random weights (timing only)', variant)
    return params


def run_bench_node(args: argparse.Namespace, workdir: Path) -> dict[str, Any]:
    """Start the node, play, measure, stop; the JSON-ready report."""
    size = parse_size(args.size)
    frames, hom = load_frames(args.bag, args.frames, size)
    params: dict[str, str] = {}
    if hom is not None:
        params['align.mode'] = 'homography'
        params['align.homography'] = '[' + ','.join(repr(float(v)) for v in hom.ravel()) + ']'  # all doubles
    for name in ('device', 'backend', 'threads'):
        if getattr(args, name) is not None:
            params[name] = str(getattr(args, name))
    weights_note = 'shipped weights'
    if args.fusion_checkpoint:
        params['fusion.checkpoint'] = args.fusion_checkpoint
        weights_note = 'given checkpoints'
    if args.corrector_checkpoint:
        params['corrector.checkpoint'] = args.corrector_checkpoint
        weights_note = 'given checkpoints'
    rand = {k: v for k, v in _random_weights(workdir).items() if k not in params}
    if rand:
        weights_note = f'random initialisation for {sorted(rand)}'
    params.update(rand)
    plist = [f'{k}:={v}' for k, v in params.items()] + list(args.param)
    domain = args.domain_id
    if domain is None:
        domain = demo.DOMAIN_BASE + os.getpid() % demo.DOMAIN_SPAN
    env = demo.ros_environment(domain)
    os.environ.update({k: env[k] for k in ('ROS_AUTOMATIC_DISCOVERY_RANGE', 'FASTDDS_DEFAULT_PROFILES_FILE',
                                           'ROS_DOMAIN_ID')})
    os.environ.pop('ROS_STATIC_PEERS', None)
    cmd = demo.node_command(list(args.params_file), plist)
    log_path = workdir / 'node.log'
    meas = Measurements()
    node = demo.NodeProcess(cmd, env, log_path)
    player = None
    error = ''
    t_start = t_end = 0
    try:
        player = Player(meas)
        print(f'bench-node: waiting for fuse_node (up to {args.startup_timeout:.0f} s; log {log_path})...',
              flush=True)
        ok = demo._wait(player.node_ready, args.startup_timeout, node)
        if ok:
            player.subscribe()
            ok = demo._wait(player.subscribed, args.startup_timeout, node)
        if not ok:
            raise ConfigError('fuse_node did not start: ' + (node.tail() if not node.alive() else 'timeout'))
        import psutil
        proc = psutil.Process(node.proc.pid)
        period = 1.0 / args.rate
        total = args.warmup + args.duration
        print(f'bench-node: publishing {len(frames)} pairs at {args.rate:g} Hz for {total:.0f} s '
              f'({args.warmup:g} s warm-up)...', flush=True)
        t0 = time.monotonic()
        next_rss = t0 + args.warmup
        i = 0
        while True:
            due = t0 + i * period
            now = time.monotonic()
            if due - t0 >= total:
                break
            if due > now:
                time.sleep(due - now)
            elif now - due > period:  # more than a period behind: skip the slot, count it
                meas.late += 1
                i += 1
                continue
            stamp = time.time_ns()
            if not t_start and due - t0 >= args.warmup:
                t_start = stamp
            player.publish(frames[i % len(frames)], stamp)
            meas.published.append(stamp)
            i += 1
            if time.monotonic() >= next_rss:
                meas.rss.append((time.monotonic(), proc.memory_info().rss / 2 ** 20))
                next_rss += RSS_PERIOD_S
            if not node.alive():
                error = 'fuse_node died during the run'
                break
        t_end = time.time_ns()
        time.sleep(args.drain)  # last outputs and one more diagnostics report
        if node.alive():
            meas.rss.append((time.monotonic(), proc.memory_info().rss / 2 ** 20))
    finally:
        if player is not None:
            player.close()
        exit_status = node.stop(demo.DemoOptions().stop_timeout)
    res = summarise(meas, t_start or t_end, t_end, args.rate)
    res.update(command='regionfuse bench-node ' + ' '.join(args.argv), node_params=plist,
               weights=weights_note, size=args.size, frames=len(frames), machine=profiling.machine_info(),
               node_exit_status=exit_status, error=error, node_log=str(log_path))
    return res


def format_report(r: dict[str, Any]) -> str:
    """Human-readable summary of a bench-node report."""
    lat = r['latency_ms']
    lines = [f"bench-node: {r['size']} RGB at {r['input_rate_hz']:g} Hz for {r['window_s']:.0f} s "
             f"({r['weights']})",
             f"  output rate      {r['output_rate_hz']:7.1f} Hz ({r['outputs_window']} fused images from "
             f"{r['pairs_published_window']} pairs)",
             f"  latency (ms)     p50 {lat['p50']:.1f}  p95 {lat['p95']:.1f}  max {lat['max']:.1f}",
             f"  node counters    {r['node_counters']}",
             f"  drops (non-zero) {({k: v for k, v in r['drops'].items() if v}) or 'none'}",
             f"  accounting       uncounted pairs {r['uncounted_pairs']}; lost in transport "
             f"{r['lost_in_transport']}; player missed {r['publish_slots_missed']} slots",
             f"  node RSS (MiB)   start {r['rss_mb']['start']:.0f}  end {r['rss_mb']['end']:.0f}  "
             f"growth {r['rss_mb']['growth_pct']:+.2f} %"]
    for k, v in r['targets'].items():
        lines.append(f"  target {k:<16s} {v['value']:8.2f} ({v['target']}) {'PASS' if v['pass'] else 'FAIL'}")
    if r['error']:
        lines.append(f"  error: {r['error']}")
    return '\n'.join(lines)


def add_arguments(p: argparse.ArgumentParser) -> None:
    """Options of ``regionfuse bench-node``."""
    d = DEFAULTS
    p.add_argument('--rate', type=float, default=d.rate, help='input pair rate (Hz)')
    p.add_argument('--duration', type=float, default=d.duration,
                   help='measured seconds (after --warmup); 300 for the memory-growth target')
    p.add_argument('--warmup', type=float, default=d.warmup, help='seconds published before measuring')
    p.add_argument('--size', default=d.size, help='RGB frame size WxH published (thermal keeps its size)')
    p.add_argument('--bag', type=Path, default=demo.BUNDLED_BAG, help='recording whose frames are published')
    p.add_argument('--frames', type=int, default=d.frames, help='distinct pairs cycled through')
    p.add_argument('--device', default=None, choices=('auto', 'cpu', 'cuda'), help='node parameter device')
    p.add_argument('--backend', default=None, choices=('torch', 'onnxruntime'), help='node parameter backend')
    p.add_argument('--threads', type=int, default=None, help='node parameter threads')
    p.add_argument('--fusion-checkpoint', default='', help='node parameter fusion.checkpoint')
    p.add_argument('--corrector-checkpoint', default='', help='node parameter corrector.checkpoint')
    p.add_argument('--params-file', action='append', type=Path, default=[],
                   help='extra node parameter files (after config/fuse.yaml)')
    p.add_argument('--param', '-p', action='append', default=[], metavar='NAME:=VALUE',
                   help='extra node parameter, ROS syntax (repeatable)')
    p.add_argument('--drain', type=float, default=d.drain, help='seconds to wait for the last outputs')
    p.add_argument('--startup-timeout', type=float, default=d.startup_timeout,
                   help='seconds to wait for the node to subscribe')
    p.add_argument('--domain-id', type=int, default=None, help='ROS_DOMAIN_ID (default: per process)')
    p.add_argument('--json', type=Path, help='write the report as JSON')
    p.add_argument('--workdir', type=Path, help='folder for node.log (default: a temporary folder)')


def run(args: argparse.Namespace) -> int:
    """Run; print the summary; 0 when the node ran and every pair is accounted for, else 1."""
    import sys
    if args.rate <= 0 or args.duration <= 0 or args.warmup < 0 or args.frames < 1:
        raise ConfigError('--rate and --duration must be > 0, --warmup >= 0, --frames >= 1')
    args.argv = sys.argv[sys.argv.index('bench-node') + 1:] if 'bench-node' in sys.argv[1:] else []
    with tempfile.TemporaryDirectory(prefix='regionfuse-bench-node-') as tmp:
        workdir = args.workdir or Path(tmp)
        workdir.mkdir(parents=True, exist_ok=True)
        report = run_bench_node(args, workdir)
        print(format_report(report))
        if args.workdir is None and report['error']:
            print((workdir / 'node.log').read_text(errors='replace')[-3000:])
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(report, indent=1, default=str))
        print(f'report written to {args.json}')
    ok = not report['error'] and report['outputs_total'] > 0 and report['uncounted_pairs'] == 0
    return 0 if ok else 1
