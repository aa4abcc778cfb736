"""``regionfuse demo``: play the bundled recording through ``fuse_node`` and summarise.

The README's main job (``make demo``). Steps:

1. start ``fuse_node`` (the executable next to ``sys.executable``) in a
   subprocess with the command line ``launch/fuse.launch.py`` would run
   (``ros/launch_args.py``: ``config/fuse.yaml``, remaps, node name) plus the
   recording's ``calibration.yaml``, on loopback-only DDS
   (``ROS_AUTOMATIC_DISCOVERY_RANGE=LOCALHOST``, the shared-memory + loopback
   Fast DDS profile) and a ROS domain of its own;
2. once the node has subscribed, publish the recording's serialised messages
   with rclpy at the recorded rate. Header stamps are shifted by one constant
   to the wall clock (all differences between stamps are kept), so the
   end-to-end latency ``output receipt - input stamp`` is meaningful;
3. record the node's outputs (``fused/image``, ``fused/misregistration/overlay``,
   ``fused/camera_info``, ``fused/status``, ``/diagnostics``) and the played
   inputs into ``OUT/bag`` (mcap);
4. wait for the last outputs (bounded), stop the node with SIGINT, write one
   mosaic PNG per fused frame (thermal | RGB | fused | misregistration
   overlay), an animated GIF and ``summary.json``, and print the summary.

Exit status 0 when the node processed frames and every input frame is
accounted for (processed, or dropped with a counted reason); 1 when the node
died, produced nothing, or frames went missing without being counted.
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..core import bagio
from ..core.checks import ConfigError
from ..core.paths import BUNDLED_RECORDING
from .demo_report import (
    DEFAULT_TILE_WIDTH,
    INPUT_TOPICS,
    OUTPUT_TOPICS,
    Played,
    Received,
    RunResult,
    print_summary,
    summarise,
    write_bag,
    write_mosaics,
)

log = logging.getLogger(__name__)

BUNDLED_BAG = BUNDLED_RECORDING
#: Domains picked for demos when --domain-id is not given: 200 + pid % span (Fast DDS allows <= 232).
DOMAIN_BASE, DOMAIN_SPAN = 200, 30
SETTLE_S = 0.5  # after discovery, before the first frame (shared-memory path set-up)
POLL_S = 0.05
PREPARE_S = 1.0  # head start for re-stamping the recording before the first frame is due
RECORD_DEPTH = 200  # history of the recorder's subscriptions (messages)


@dataclass
class DemoOptions:
    """Timeouts and output settings of one demo run (all seconds unless noted)."""

    startup_timeout: float = 120.0
    drain_timeout: float = 60.0
    idle_timeout: float = 5.0
    stop_timeout: float = 30.0
    tile_width: int = DEFAULT_TILE_WIDTH
    gif: bool = True


def add_arguments(p: argparse.ArgumentParser) -> None:
    """Options of ``regionfuse demo``."""
    d = DemoOptions()
    p.add_argument('--out', type=Path, default=Path('out/demo'), help='output directory')
    p.add_argument('--bag', type=Path, default=BUNDLED_BAG, help='recording to play (default: bundled)')
    p.add_argument('--rate', type=float, default=1.0, help='playback rate (1.0 = recorded rate)')
    p.add_argument('--max-frames', type=int, default=0, help='play only the first N frames per camera')
    p.add_argument('--params-file', action='append', type=Path, default=[],
                   help='extra node parameter files (after config/fuse.yaml and the '
                        'recording\'s calibration.yaml)')
    p.add_argument('--fusion-checkpoint', default=None, help='node parameter fusion.checkpoint')
    p.add_argument('--corrector-checkpoint', default=None, help='node parameter corrector.checkpoint')
    p.add_argument('--device', default=None, choices=('auto', 'cpu', 'cuda'), help='node parameter device')
    p.add_argument('--param', '-p', action='append', default=[], metavar='NAME:=VALUE',
                   help='extra node parameter, ROS syntax (repeatable)')
    p.add_argument('--domain-id', type=int, default=None,
                   help=f'ROS_DOMAIN_ID (default: {DOMAIN_BASE} + pid %% {DOMAIN_SPAN})')
    p.add_argument('--startup-timeout', type=float, default=d.startup_timeout,
                   help='seconds to wait for the node to subscribe')
    p.add_argument('--drain-timeout', type=float, default=d.drain_timeout,
                   help='seconds to wait for outputs after the last input')
    p.add_argument('--idle-timeout', type=float, default=d.idle_timeout,
                   help='stop waiting when no output arrived for this long after the last input')
    p.add_argument('--tile-width', type=int, default=d.tile_width, help='mosaic tile width (px)')
    p.add_argument('--no-gif', action='store_true', help='skip the animated GIF')
    p.add_argument('--foxglove', action='store_true',
                   help='live view: the node serves the fused image, overlay and status to the Foxglove '
                        'app on 127.0.0.1 (viz.foxglove); the demo prints where to connect')
    p.add_argument('--foxglove-port', type=int, default=None,
                   help='port of that server (default: viz.foxglove_port of the parameters)')
    p.add_argument('--foxglove-wait', type=float, default=5.0,
                   help='seconds between printing the connection string and playing (time to connect)')


# ---------------------------------------------------------------------------
# Paths and the node process
# ---------------------------------------------------------------------------

def ros_environment(domain_id: int) -> dict[str, str]:
    """Environment for every rclpy process of the demo.

    The launch file's default DDS setup (``dds:=host``: shared memory, loopback-only
    discovery) and a ROS domain of its own.
    """
    from ..ros import launch_args
    env = dict(os.environ)
    env.update(launch_args.dds_environment(launch_args.DDS_HOST))
    env['ROS_DOMAIN_ID'] = str(domain_id)
    env.pop('ROS_STATIC_PEERS', None)
    env['PYTHONUNBUFFERED'] = '1'
    return env


def node_command(extra_params_files: Sequence[Path], params: Sequence[str]) -> list[str]:
    """Command line of ``fuse_node`` exactly as ``launch/fuse.launch.py`` runs it, plus extras.

    Args:
        extra_params_files: parameter files after ``config/fuse.yaml`` (later files win).
        params: ``name:=value`` overrides.

    Raises:
        ConfigError: the ``fuse_node`` executable is missing.
    """
    from ..ros import launch_args
    exe = Path(sys.executable).with_name(launch_args.EXECUTABLE)
    if not exe.is_file():
        raise ConfigError(f'{exe} not found: run `make setup` (installs the fuse_node console script)')
    cmd = launch_args.command_line(str(exe), {'thermal_topic': INPUT_TOPICS['thermal'],
                                              'rgb_topic': INPUT_TOPICS['rgb']})
    for f in extra_params_files:
        cmd += ['--params-file', str(f)]
    for p in params:
        cmd += ['-p', p]
    return cmd


class NodeProcess:
    """``fuse_node`` in a subprocess, its output in a log file."""

    def __init__(self, cmd: list[str], env: dict[str, str], log_path: Path) -> None:
        self.cmd = cmd
        self.log_path = log_path
        self._log = log_path.open('wb')
        self.proc = subprocess.Popen(cmd, env=env, stdout=self._log, stderr=subprocess.STDOUT)
        self.stopped_by_us = False

    def alive(self) -> bool:
        """True while the process runs."""
        return self.proc.poll() is None

    def tail(self, lines: int = 25) -> str:
        """Last lines of the node's output."""
        if not self._log.closed:
            self._log.flush()
        text = self.log_path.read_text(errors='replace').splitlines()
        return '\n'.join(text[-lines:])

    def stop(self, timeout: float) -> int:
        """SIGINT, wait; SIGTERM, wait; SIGKILL. Returns the exit status."""
        if self.alive():
            self.stopped_by_us = True
            for sig, wait in ((signal.SIGINT, timeout), (signal.SIGTERM, timeout / 3), (signal.SIGKILL, 5.0)):
                self.proc.send_signal(sig)
                try:
                    self.proc.wait(wait)
                    break
                except subprocess.TimeoutExpired:
                    log.warning('fuse_node did not exit %.0f s after %s', wait, sig.name)
        self._log.close()
        return int(self.proc.returncode)


# ---------------------------------------------------------------------------
# Recording in memory
# ---------------------------------------------------------------------------

def load_inputs(bag: Path, max_frames: int) -> list[bagio.BagMessage]:
    """The recording's input messages in log order; ``max_frames`` > 0 keeps the first N per topic.

    Raises:
        BagError: missing bag or topics.
    """
    msgs = list(bagio.read_messages(bag, INPUT_TOPICS.values()))
    if max_frames > 0:
        seen: dict[str, int] = {}
        kept = []
        for m in msgs:
            seen[m.topic] = seen.get(m.topic, 0) + 1
            if seen[m.topic] <= max_frames:
                kept.append(m)
        msgs = kept
    return msgs


def warmup_params(msgs: Sequence[bagio.BagMessage]) -> list[str]:
    """``warmup_width/height`` node parameters for the recording's RGB size (none without RGB frames).

    The node then builds its per-size models while configuring, before the recording plays,
    instead of dropping the first seconds of pairs while the first one is processed.
    """
    for m in msgs:
        if m.topic == INPUT_TOPICS['rgb']:
            img = m.decode()
            return [f'warmup_width:={int(img.width)}', f'warmup_height:={int(img.height)}']
    return []


def restamp(m: bagio.BagMessage, shift_ns: int) -> tuple[bytes, int, int]:
    """Serialised copy of ``m`` with ``header.stamp`` moved by ``shift_ns``: ``(raw, new, old)`` stamps."""
    ts = bagio.make_typestore()
    msg = m.decode()
    old = bagio.time_to_ns(msg.header.stamp)
    msg.header.stamp = bagio.ns_to_time(old + shift_ns)
    return bytes(ts.serialize_cdr(msg, m.msgtype)), old + shift_ns, old


# ---------------------------------------------------------------------------
# rclpy player + recorder (the only rclpy code of the CLI)
# ---------------------------------------------------------------------------

class RosSide:
    """One rclpy context with the player's publishers and the recorder's subscriptions."""

    def __init__(self) -> None:
        import rclpy
        from rclpy.executors import SingleThreadedExecutor
        from rclpy.qos import QoSProfile, ReliabilityPolicy, qos_profile_sensor_data
        from sensor_msgs.msg import CameraInfo, Image
        self.rclpy = rclpy
        self.ctx = rclpy.Context()
        rclpy.init(args=[sys.argv[0]], context=self.ctx)   # our CLI flags are not ROS arguments
        self.node = rclpy.create_node('regionfuse_demo', context=self.ctx)
        info_qos = QoSProfile(depth=10, reliability=ReliabilityPolicy.RELIABLE)
        self.pubs = {INPUT_TOPICS['thermal']: self.node.create_publisher(Image, INPUT_TOPICS['thermal'],
                                                                         qos_profile_sensor_data),
                     INPUT_TOPICS['rgb']: self.node.create_publisher(Image, INPUT_TOPICS['rgb'],
                                                                     qos_profile_sensor_data),
                     INPUT_TOPICS['thermal_info']: self.node.create_publisher(
                         CameraInfo, INPUT_TOPICS['thermal_info'], info_qos),
                     INPUT_TOPICS['rgb_info']: self.node.create_publisher(
                         CameraInfo, INPUT_TOPICS['rgb_info'], info_qos)}
        self.received: list[Received] = []
        self._lock = threading.Lock()
        self.last_receipt = 0.0
        self.subs: dict[str, Any] = {}
        self.executor = SingleThreadedExecutor(context=self.ctx)
        self.executor.add_node(self.node)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._spin, name='demo-spin', daemon=True)
        self._thread.start()

    def start_recording(self) -> None:
        """Subscribe to the outputs, matching each publisher's reliability (no loss when reliable)."""
        from rclpy.qos import HistoryPolicy, QoSProfile, ReliabilityPolicy
        for topic, msgtype in OUTPUT_TOPICS.items():
            infos = self.node.get_publishers_info_by_topic(topic)
            reliable = bool(infos) and all(i.qos_profile.reliability == ReliabilityPolicy.RELIABLE
                                           for i in infos)
            rel = ReliabilityPolicy.RELIABLE if reliable else ReliabilityPolicy.BEST_EFFORT
            qos = QoSProfile(depth=RECORD_DEPTH, history=HistoryPolicy.KEEP_LAST, reliability=rel)
            self.subs[topic] = self.node.create_subscription(_ros_type(msgtype), topic, self._recorder(topic),
                                                             qos, raw=True)

    def recording(self) -> bool:
        """The recorder is matched with the node's fused/image publisher."""
        return '/fused/image' in self.subs and self.subs['/fused/image'].get_publisher_count() > 0

    def _recorder(self, topic: str) -> Any:
        def cb(raw: bytes) -> None:
            now = time.time_ns()
            with self._lock:
                self.received.append(Received(topic, now, bytes(raw)))
                self.last_receipt = time.monotonic()
        return cb

    def _spin(self) -> None:
        while not self._stop.is_set() and self.ctx.ok():
            self.executor.spin_once(timeout_sec=POLL_S)

    def count(self, topic: str) -> int:
        """Messages received so far on ``topic``."""
        with self._lock:
            return sum(1 for r in self.received if r.topic == topic)

    def node_ready(self) -> bool:
        """The node subscribes to both image topics and publishes fused/image."""
        return (all(self.pubs[INPUT_TOPICS[k]].get_subscription_count() > 0 for k in ('thermal', 'rgb'))
                and bool(self.node.get_publishers_info_by_topic('/fused/image')))

    def publish(self, topic: str, raw: bytes) -> None:
        """Publish serialised bytes on one of the input topics."""
        self.pubs[topic].publish(raw)

    def close(self) -> None:
        """Stop spinning and shut the context down."""
        self._stop.set()
        self._thread.join(timeout=5.0)
        self.executor.shutdown()
        self.node.destroy_node()
        self.rclpy.shutdown(context=self.ctx)


def _ros_type(msgtype: str) -> Any:
    pkg, _, name = msgtype.split('/')
    module = __import__(f'{pkg}.msg', fromlist=[name])
    return getattr(module, name)


# ---------------------------------------------------------------------------
# Run
# ---------------------------------------------------------------------------

def _clean_out(out: Path) -> None:
    """Remove the outputs of a previous demo run in ``out`` (only files this command writes)."""
    bag = out / 'bag'
    if (bag / 'metadata.yaml').is_file() or (bag.is_dir() and not any(bag.iterdir())):
        shutil.rmtree(bag)
    for p in list((out / 'mosaic').glob('frame_*.png')) + [out / 'demo.gif', out / 'summary.json',
                                                          out / 'node.log']:
        p.unlink(missing_ok=True)


def _wait(cond: Any, timeout: float, node: NodeProcess) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if cond():
            return True
        if not node.alive():
            return False
        time.sleep(POLL_S)
    return bool(cond())


def play_and_record(msgs: list[bagio.BagMessage], node: NodeProcess, rate: float,
                    opts: DemoOptions) -> RunResult:
    """Publish ``msgs`` at ``rate`` x the recorded pace while recording the outputs."""
    res = RunResult()
    ros = RosSide()
    try:
        print(f'demo: waiting for fuse_node (loads the models; up to {opts.startup_timeout:.0f} s)...',
              flush=True)
        ready = _wait(ros.node_ready, opts.startup_timeout, node)
        if ready:
            ros.start_recording()
            ready = _wait(ros.recording, opts.startup_timeout, node)
        if not ready:
            res.node_died = not node.alive()
            res.error = ('fuse_node exited during start-up' if res.node_died else
                         f'fuse_node did not subscribe/publish within {opts.startup_timeout:.0f} s')
            return res
        time.sleep(SETTLE_S)
        log0 = msgs[0].log_ns
        # All stamps move by one constant: at rate 1 a frame is published (log - stamp) after its
        # stamp, as the recording's camera delivered it. Re-serialised before the clock starts.
        start_wall = time.time_ns() + int(PREPARE_S * 1e9)
        start_mono = time.monotonic() + PREPARE_S
        prepared = [(m, *restamp(m, start_wall - log0)) for m in msgs]
        n_rgb = sum(1 for m in msgs if m.topic == INPUT_TOPICS['rgb'])
        dur = (msgs[-1].log_ns - log0) * 1e-9 / rate
        print(f'demo: playing {n_rgb} frame pairs ({dur:.1f} s at rate {rate})...', flush=True)
        for m, raw, new, old in prepared:
            delay = start_mono + (m.log_ns - log0) * 1e-9 / rate - time.monotonic()
            if delay > 0:
                time.sleep(delay)
            if not node.alive():
                res.node_died = True
                res.error = 'fuse_node died during playback'
                break
            ros.publish(m.topic, raw)
            res.played.append(Played(m.topic, m.msgtype, new, old, m.log_ns, time.time_ns(), raw))
        if not res.node_died:
            last_input = time.monotonic()

            def drained() -> bool:
                if ros.count('/fused/image') >= n_rgb:
                    return True
                idle_since = max(ros.last_receipt, last_input)
                return time.monotonic() - idle_since > opts.idle_timeout
            print('demo: waiting for the last outputs...', flush=True)
            _wait(drained, opts.drain_timeout, node)
            # one more diagnostics report carries the final counters
            n_diag = ros.count('/diagnostics')
            _wait(lambda: ros.count('/diagnostics') > n_diag, opts.idle_timeout, node)
            if not node.alive():
                res.node_died = True
                res.error = 'fuse_node died while processing'
    finally:
        res.received = list(ros.received)
        ros.close()
    return res


def foxglove_params(args: argparse.Namespace) -> tuple[list[str], str]:
    """``--foxglove``: the node parameters of the live view and its connection string (none without).

    Raises:
        ConfigError: a port outside [1, 65535].

    Example:
        >>> foxglove_params(argparse.Namespace(foxglove=True, foxglove_port=9000))
        (['viz.foxglove:=true', 'viz.foxglove_port:=9000'], 'ws://127.0.0.1:9000')
    """
    if not getattr(args, 'foxglove', False):
        return [], ''
    from ..core.config import VizConfig
    port = VizConfig().foxglove_port if args.foxglove_port is None else args.foxglove_port
    if not 1 <= port <= 65535:
        raise ConfigError(f'--foxglove-port must be in [1, 65535], got {port}')
    return ['viz.foxglove:=true', f'viz.foxglove_port:={port}'], f'ws://127.0.0.1:{port}'


def run(args: argparse.Namespace) -> int:
    """Run the demo; print the summary; 0 on success."""
    opts = DemoOptions(startup_timeout=args.startup_timeout, drain_timeout=args.drain_timeout,
                       idle_timeout=args.idle_timeout, tile_width=args.tile_width, gif=not args.no_gif)
    if args.rate <= 0:
        raise ConfigError(f'--rate must be > 0, got {args.rate}')
    out: Path = args.out
    out.mkdir(parents=True, exist_ok=True)
    _clean_out(out)
    msgs = load_inputs(args.bag, args.max_frames)
    if not msgs:
        raise bagio.BagError(f'{args.bag}: no input messages')
    params_files = []
    if (args.bag / 'calibration.yaml').is_file():
        params_files.append(args.bag / 'calibration.yaml')
    params_files += args.params_file
    params = warmup_params(msgs) + list(args.param)   # later -p overrides win
    for name, value in (('fusion.checkpoint', args.fusion_checkpoint),
                        ('corrector.checkpoint', args.corrector_checkpoint), ('device', args.device)):
        if value is not None:
            params.append(f'{name}:={value}')
    view_params, view_url = foxglove_params(args)
    params += view_params
    domain = args.domain_id if args.domain_id is not None else DOMAIN_BASE + os.getpid() % DOMAIN_SPAN
    env = ros_environment(domain)
    os.environ.update({k: env[k] for k in ('ROS_AUTOMATIC_DISCOVERY_RANGE', 'FASTDDS_DEFAULT_PROFILES_FILE',
                                           'ROS_DOMAIN_ID')})
    os.environ.pop('ROS_STATIC_PEERS', None)
    cmd = node_command(params_files, params)
    print(f'demo: {len(msgs)} messages from {args.bag} at rate {args.rate}; ROS_DOMAIN_ID={domain}; '
          f'node log {out / "node.log"}', flush=True)
    node = NodeProcess(cmd, env, out / 'node.log')
    try:
        if view_url:
            print('demo: live view: in the Foxglove app, Open connection -> Foxglove WebSocket -> '
                  f'{view_url} (Image panels on /fused/image and /fused/misregistration/overlay); playing in '
                  f'{args.foxglove_wait:g} s', flush=True)
            time.sleep(max(0.0, args.foxglove_wait))
        res = play_and_record(msgs, node, args.rate, opts)
    finally:
        res_exit = node.stop(opts.stop_timeout)
    res.node_exit = res_exit
    if not res.played:
        print(f'demo: FAILED: {res.error or "nothing was played"} (exit status {res_exit})\n'
              f'--- last lines of {out / "node.log"} ---\n{node.tail()}', file=sys.stderr)
        return 1
    write_bag(out / 'bag', res, args.bag)
    summary = summarise(res, args.bag, args.rate)
    summary['outputs']['mosaics'] = write_mosaics(res, out, opts.tile_width, opts.gif)
    summary['outputs']['bag'] = str(out / 'bag')
    summary['outputs']['mosaic_dir'] = str(out / 'mosaic')
    summary['outputs']['gif'] = str(out / 'demo.gif') if (out / 'demo.gif').is_file() else ''
    (out / 'summary.json').write_text(json.dumps(summary, indent=2, default=float))
    print_summary(summary)
    if res.error or summary['outputs']['fused_images'] == 0:
        reason = res.error or 'the node produced no fused image'
        print(f'demo: FAILED: {reason}\n--- last lines of {out / "node.log"} ---\n{node.tail()}',
              file=sys.stderr)
        return 1
    if not summary['accounted']:
        print('demo: FAILED: some frames are neither processed nor counted as dropped', file=sys.stderr)
        return 1
    return 0
