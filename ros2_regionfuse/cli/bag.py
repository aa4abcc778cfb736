"""``regionfuse bag``: fuse a whole ROS 2 recording offline (no DDS, no rclpy).

Reads the thermal and RGB image topics of a bag in log-time order, pairs the
frames by header stamp with the node's synchronizer
(:class:`~ros2_regionfuse.core.sync.ApproximateTimeSync`), runs
:class:`~ros2_regionfuse.inference.pipeline.FusionPipeline` on every pair and
writes ``fused/image``, ``fused/misregistration`` (32FC1), ``fused/flow``
(32FC2), ``fused/misregistration/overlay``, ``fused/camera_info`` and
``fused/status`` (FusionStatus) with headers copied from the RGB input. The
output messages' log time is when a single worker, processing every pair in
order, would have published them: ``max(pair available, previous output) +
measured processing time`` (offline, no pair is dropped).
"""
from __future__ import annotations

import argparse
import logging
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..core import bagio, encodings
from ..core.align import plane_homography
from ..core.checks import ConfigError, RegionFuseError
from ..core.config import NodeConfig, SyncConfig, check_offline, field_specs, flatten_dict, set_value
from ..core.mosaic import misregistration_overlay
from ..core.sync import ApproximateTimeSync, seconds_to_ns

log = logging.getLogger(__name__)

#: ROS parameters a params file may hold that are not fields of NodeConfig.
_FOREIGN_PARAMS = ('qos_overrides', 'use_sim_time', 'start_type_description_service')


def add_arguments(p: argparse.ArgumentParser) -> None:
    """Options of ``regionfuse bag``."""
    sync = SyncConfig()
    p.add_argument('--in', dest='inp', required=True, type=Path, help='input bag (rosbag2 directory or file)')
    p.add_argument('--out', required=True, type=Path, help='output bag directory (must not exist)')
    p.add_argument('--thermal-topic', default='/thermal/image_raw', help='thermal sensor_msgs/Image topic')
    p.add_argument('--rgb-topic', default='/rgb/image_raw', help='RGB sensor_msgs/Image topic')
    p.add_argument('--thermal-info-topic', default=None,
                   help='thermal CameraInfo topic (default: sibling camera_info of --thermal-topic)')
    p.add_argument('--rgb-info-topic', default=None,
                   help='RGB CameraInfo topic (default: sibling camera_info of --rgb-topic)')
    p.add_argument('--out-prefix', default='/fused', help='namespace of the output topics')
    p.add_argument('--params-file', action='append', default=[], type=Path,
                   help='ROS parameters YAML of fuse_node (repeatable; later files win), '
                        'e.g. config/fuse.yaml and the recording\'s calibration.yaml')
    p.add_argument('--slop', type=float, default=None,
                   help=f'pairing slop (s); default from params or {sync.slop}')
    p.add_argument('--thermal-offset', type=float, default=None, help='sync.thermal_offset (s)')
    p.add_argument('--queue-size', type=int, default=None, help='sync.queue_size')
    p.add_argument('--no-correct', action='store_true', help='skip the post-registration corrector')
    p.add_argument('--fusion-checkpoint', default=None, help='fusion weights (.safetensors)')
    p.add_argument('--corrector-checkpoint', default=None, help='corrector weights (.safetensors)')
    p.add_argument('--device', default=None, choices=('auto', 'cpu', 'cuda'), help='inference device')
    p.add_argument('--max-pairs', type=int, default=0, help='stop after this many pairs (0 = all)')
    p.add_argument('--no-compress', action='store_true', help='do not zstd-compress the output bag')
    p.add_argument('--no-progress', action='store_true', help='no progress bar')


def sibling_info_topic(image_topic: str) -> str:
    """``/ns/image_raw`` -> ``/ns/camera_info`` (the image_transport convention).

    Example:
        >>> sibling_info_topic('/thermal/image_raw')
        '/thermal/camera_info'
    """
    head, _, _ = image_topic.rstrip('/').rpartition('/')
    return f'{head}/camera_info'


def load_params_files(cfg: NodeConfig, paths: list[Path]) -> NodeConfig:
    """Apply ROS parameter YAML files (``<node or /**>: ros__parameters: ...``) to ``cfg``.

    Parameters of other nodes than ``fuse_node``/``/**`` and ROS-internal ones
    (QoS overrides, use_sim_time) are ignored.

    Raises:
        ConfigError: unreadable file, unknown parameter or invalid value.
    """
    import yaml
    specs = field_specs(cfg)
    for path in paths:
        try:
            doc = yaml.safe_load(Path(path).read_text()) or {}
        except (OSError, yaml.YAMLError) as e:
            raise ConfigError(f'params file {path}: {e}') from e
        for node, body in doc.items():
            if str(node).lstrip('/') not in ('**', 'fuse_node', 'regionfuse'):
                continue
            params = flatten_dict((body or {}).get('ros__parameters', {}) or {})
            for name, value in params.items():
                if name.split('.')[0] in _FOREIGN_PARAMS:
                    continue
                if name not in specs:
                    raise ConfigError(f'params file {path}: unknown parameter {name!r}')
                set_value(cfg, name, value)
    return cfg


def build_config(args: argparse.Namespace) -> NodeConfig:
    """NodeConfig from the dataclass defaults, ``--params-file`` files and explicit options."""
    cfg = load_params_files(NodeConfig(), args.params_file)
    check_offline(cfg.pipeline)
    overrides = {'sync.slop': args.slop, 'sync.thermal_offset': args.thermal_offset,
                 'sync.queue_size': args.queue_size, 'fusion.checkpoint': args.fusion_checkpoint,
                 'corrector.checkpoint': args.corrector_checkpoint, 'device': args.device}
    for name, value in overrides.items():
        if value is not None:
            set_value(cfg, name, value)
    if args.no_correct:
        set_value(cfg, 'corrector.enabled', False)
    return cfg


@dataclass
class _Camera:
    """Latest CameraInfo of one camera (rosbags message) and its size."""

    info: Any = None


@dataclass
class BagFuseStats:
    """Counts and timings of one offline run."""

    received: Counter = field(default_factory=Counter)
    bad_input: Counter = field(default_factory=Counter)
    processed: int = 0
    pipeline_errors: int = 0
    total_ms: list = field(default_factory=list)
    flow_mean: list = field(default_factory=list)
    flow_jitter: list = field(default_factory=list)
    _last_flow: np.ndarray | None = None

    def add_flow(self, flow: np.ndarray | None) -> None:
        """Record a pair's flow ``(H, W, 2)`` px: its mean magnitude and its mean change from the last."""
        if flow is None:
            self._last_flow = None
            return
        f = flow[::4, ::4]
        self.flow_mean.append(float(np.hypot(f[..., 0], f[..., 1]).mean()))
        if self._last_flow is not None and self._last_flow.shape == f.shape:
            d = f - self._last_flow
            self.flow_jitter.append(float(np.hypot(d[..., 0], d[..., 1]).mean()))
        self._last_flow = f

    def as_dict(self, sync: ApproximateTimeSync) -> dict[str, Any]:
        """Summary as plain values (counters of the synchronizer included)."""
        c = sync.counters()
        ms = np.asarray(self.total_ms, np.float64)
        return {'thermal_received': self.received['thermal'], 'rgb_received': self.received['rgb'],
                'paired': c.pairs, 'processed': self.processed, 'pipeline_errors': self.pipeline_errors,
                'unpaired_thermal': {k: v for k, v in c.thermal.unpaired.items() if v},
                'unpaired_rgb': {k: v for k, v in c.rgb.unpaired.items() if v},
                'left_in_queue': {'thermal': c.thermal.queued, 'rgb': c.rgb.queued},
                'pipeline_ms_median': float(np.median(ms)) if ms.size else float('nan'),
                'pipeline_ms_p95': float(np.percentile(ms, 95)) if ms.size else float('nan'),
                'flow_mean_px': float(np.mean(self.flow_mean)) if self.flow_mean else float('nan'),
                'flow_jitter_px': float(np.mean(self.flow_jitter)) if self.flow_jitter else float('nan'),
                'flow_jitter_max_px': float(np.max(self.flow_jitter)) if self.flow_jitter else float('nan')}


def scaled_camera_info(info: Any, width: int, height: int) -> Any:
    """A copy of a rosbags CameraInfo for the image resized to ``width`` x ``height``."""
    sx, sy = width / info.width, height / info.height
    scale = np.array([sx, sy, 1.0])[:, None]
    k = np.asarray(info.k, np.float64).reshape(3, 3) * scale
    p = np.asarray(info.p, np.float64).reshape(3, 4) * scale
    out = bagio.camera_info_msg(bagio.time_to_ns(info.header.stamp), info.header.frame_id, width, height,
                                k, d=info.d, distortion_model=info.distortion_model)
    out.p = p.reshape(-1)
    out.r = np.asarray(info.r, np.float64)
    return out


class BagFuser:
    """Pairs, fuses and writes; one instance per output bag."""

    def __init__(self, cfg: NodeConfig, writer: bagio.BagWriter, prefix: str) -> None:
        from ..inference.pipeline import FusionPipeline
        self.cfg = cfg
        self.pipe = FusionPipeline(cfg.pipeline)
        self.sync: ApproximateTimeSync = ApproximateTimeSync(
            slop_ns=seconds_to_ns(cfg.sync.slop), queue_size=cfg.sync.queue_size,
            thermal_offset_ns=seconds_to_ns(cfg.sync.thermal_offset))
        self.writer = writer
        self.prefix = prefix.rstrip('/')
        self.cams = {'thermal': _Camera(), 'rgb': _Camera()}
        self.stats = BagFuseStats()
        self._busy_until = 0  # log time (ns) at which the simulated worker is free again

    def on_info(self, stream: str, msg: Any) -> None:
        """Keep the newest CameraInfo; in plane mode, (re)compute the homography."""
        self.cams[stream].info = msg
        a = self.cfg.pipeline.align
        th, rgb = self.cams['thermal'].info, self.cams['rgb'].info
        if a.mode == 'plane' and th is not None and rgb is not None and self.pipe.homography() is None:
            k_t = np.asarray(th.k, np.float64).reshape(3, 3)
            k_r = np.asarray(rgb.k, np.float64).reshape(3, 3)
            self.pipe.set_homography(plane_homography(k_t, k_r, a.extrinsic, a.plane_depth))

    def on_image(self, stream: str, m: bagio.BagMessage) -> int:
        """Decode one image, offer it to the synchronizer, process completed pairs; return pairs done."""
        self.stats.received[stream] += 1
        try:
            msg = m.decode()
            raw = bagio.image_array(msg)
            img = (encodings.thermal_input(raw, msg.encoding) if stream == 'thermal'
                   else encodings.rgb_input(raw, msg.encoding))
        except RegionFuseError as e:
            log.warning('%s frame at %d ns rejected: %s', stream, m.log_ns, e)
            self.sync.reject(stream, 'bad_input')
            return 0
        pairs = self.sync.add(stream, bagio.time_to_ns(msg.header.stamp), (msg, img), received=m.log_ns)
        for pair in pairs:
            self._process(pair)
        return len(pairs)

    def _process(self, pair: Any) -> None:
        (_, thermal), (rgb_msg, rgb) = pair.thermal.payload, pair.rgb.payload
        o = self.cfg.output
        out_size = (o.width or rgb.shape[1], o.height or rgb.shape[0])
        try:
            res = self.pipe.process(thermal, rgb, out_size=out_size)
        except RegionFuseError as e:
            log.warning('pair at %d ns failed: %s', pair.rgb.stamp_ns, e)
            self.stats.pipeline_errors += 1
            return
        self.stats.processed += 1
        self.stats.total_ms.append(res.timings_ms['total'])
        self.stats.add_flow(res.flow)
        stamp, frame = bagio.time_to_ns(rgb_msg.header.stamp), rgb_msg.header.frame_id
        # one worker processing pairs in order: it starts when the pair is there and the previous is done
        t_out = max(int(pair.received), self._busy_until) + int(res.timings_ms['total'] * 1e6)
        self._busy_until = t_out
        pre = self.prefix
        w = self.writer
        w.write(f'{pre}/image', bagio.image_msg(encodings.from_rgb8(res.fused, o.encoding), o.encoding,
                                                stamp, frame), t_out)
        if res.misregistration is not None:
            w.write(f'{pre}/misregistration',
                    bagio.image_msg(res.misregistration.astype(np.float32), '32FC1', stamp, frame), t_out)
            overlay = misregistration_overlay(res.fused, res.misregistration)
            w.write(f'{pre}/misregistration/overlay',
                    bagio.image_msg(encodings.from_rgb8(overlay, 'bgr8'), 'bgr8', stamp, frame), t_out)
        if res.flow is not None:
            w.write(f'{pre}/flow', bagio.image_msg(res.flow.astype(np.float32), '32FC2', stamp, frame), t_out)
        info = self.cams['rgb'].info
        if info is not None:
            w.write(f'{pre}/camera_info', scaled_camera_info(info, *out_size) if
                    (info.width, info.height) != out_size else _restamped(info, stamp, frame), t_out)
        w.write(f'{pre}/status', self._status(pair, res, stamp, frame), t_out)

    def _status(self, pair: Any, res: Any, stamp: int, frame: str) -> Any:
        c = self.sync.counters()
        ms = res.timings_ms
        mean_shift, max_shift = res.shift_stats
        dropped = (c.thermal.unpaired_total + c.rgb.unpaired_total + self.stats.pipeline_errors)
        pc = self.cfg.pipeline
        return bagio.fusion_status_msg(
            stamp, frame, thermal_stamp=pair.thermal.stamp_ns, rgb_stamp=pair.rgb.stamp_ns,
            pair_dt=pair.dt_ns / bagio.NS_PER_S, preprocess_ms=ms['preprocess'], fusion_ms=ms['fusion'],
            corrector_ms=ms['corrector'], postprocess_ms=ms['postprocess'], total_ms=ms['total'],
            misaligned_fraction=res.misaligned_fraction, mean_shift_px=mean_shift, max_shift_px=max_shift,
            corrector_enabled=res.misregistration is not None, device=str(self.pipe.device),
            backend=pc.backend, fusion_model=self.pipe.fusion_name, corrector_model=self.pipe.corrector_name,
            thermal_received=c.thermal.received, rgb_received=c.rgb.received, paired=c.pairs,
            processed=self.stats.processed, dropped=dropped)


def _restamped(info: Any, stamp: int, frame: str) -> Any:
    info.header = bagio.header(stamp, frame)
    return info


def run(args: argparse.Namespace) -> int:
    """Fuse the recording; print a summary."""
    from tqdm import tqdm
    cfg = build_config(args)
    topics = bagio.bag_topics(args.inp)
    th_info = args.thermal_info_topic or sibling_info_topic(args.thermal_topic)
    rgb_info = args.rgb_info_topic or sibling_info_topic(args.rgb_topic)
    for t in (args.thermal_topic, args.rgb_topic):
        if t not in topics:
            raise bagio.BagError(f'{args.inp} has no topic {t}; it has {sorted(topics)}')
        bagio.check_image_msgtype(t, topics[t].msgtype)
    wanted = {args.thermal_topic: 'thermal', args.rgb_topic: 'rgb'}
    infos = {t: s for t, s in ((th_info, 'thermal'), (rgb_info, 'rgb')) if t in topics}
    total = sum(topics[t].count for t in list(wanted) + list(infos))
    t0 = time.perf_counter()
    with bagio.BagWriter(args.out, compress=not args.no_compress,
                         custom_data={'regionfuse.source_bag': str(args.inp)}) as writer:
        fuser = BagFuser(cfg, writer, args.out_prefix)
        bar = tqdm(total=total, unit='msg', disable=args.no_progress, desc='fusing')
        for m in bagio.read_messages(args.inp, list(wanted) + list(infos)):
            bar.update(1)
            if m.topic in infos:
                fuser.on_info(infos[m.topic], m.decode())
                continue
            fuser.on_image(wanted[m.topic], m)
            bar.set_postfix(pairs=fuser.stats.processed)
            if args.max_pairs and fuser.stats.processed >= args.max_pairs:
                break
        bar.close()
    summary = fuser.stats.as_dict(fuser.sync)
    wall = time.perf_counter() - t0
    print(f'{args.inp} -> {args.out}: thermal {summary["thermal_received"]}, rgb {summary["rgb_received"]} '
          f'frames in; {summary["paired"]} paired, {summary["processed"]} processed, '
          f'{summary["pipeline_errors"]} pipeline errors; unpaired thermal {summary["unpaired_thermal"]}, '
          f'rgb {summary["unpaired_rgb"]}, left waiting at the end {summary["left_in_queue"]}; '
          f'pipeline {summary["pipeline_ms_median"]:.1f} ms median, {wall:.1f} s wall')
    if np.isfinite(summary['flow_mean_px']):
        print(f'corrector flow: mean |flow| {summary["flow_mean_px"]:.2f} px; frame-to-frame change '
              f'(jitter) {summary["flow_jitter_px"]:.3f} px mean, {summary["flow_jitter_max_px"]:.3f} px max')
    return 0 if summary['processed'] > 0 else 1
