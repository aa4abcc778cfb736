"""``fuse_node``: thermal + RGB in, fused image, misregistration maps and status out.

A thin lifecycle adapter over :class:`~ros2_regionfuse.inference.pipeline.FusionPipeline`:

* configure: read and validate the parameters, load the models (a missing
  weights file fails here, naming the file), create the publishers;
* activate: subscribe (sensor-data QoS, overridable by ``qos_overrides.*``
  parameters), start the inference worker and the diagnostics timer;
* deactivate / cleanup / shutdown undo those steps.

With ``autostart`` (default) :func:`main` runs configure and activate itself,
so ``ros2 run ros2_regionfuse fuse_node`` just works.

Data flow: subscription callbacks convert each message (bad ones are counted
and reported, never raised), pair frames by stamp
(:class:`~ros2_regionfuse.core.sync.ApproximateTimeSync`) and put the newest
pair in a one-slot :class:`~ros2_regionfuse.core.sync.LatestMailbox`; a
worker thread runs the pipeline and publishes. Callbacks never wait for
inference; an overwritten pair is counted as dropped (``mailbox_overwrite``).
With ``overlap_stages`` (default) the work is split over two threads: one
preprocesses and fuses, hands the frame over
(:class:`~ros2_regionfuse.core.sync.HandoffSlot`, blocking, so finished
work is never discarded) and, once the other has taken it, fuses the newest
pair while the other runs the corrector, postprocesses and publishes; on a
multi-core CPU (or with a GPU) the output rate rises toward one pair per
stage time, with at most one pair per stage in flight.
Topics, parameters and diagnostics are documented in docs/node.md.
"""
from __future__ import annotations

import functools
import logging
import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import numpy as np
import rclpy
from diagnostic_msgs.msg import DiagnosticArray
from rclpy.executors import ExternalShutdownException, SingleThreadedExecutor
from rclpy.lifecycle import LifecycleNode, LifecycleState, TransitionCallbackReturn
from rclpy.qos import QoSProfile, qos_profile_sensor_data
from rclpy.qos_overriding_options import QoSOverridingOptions
from sensor_msgs.msg import CameraInfo, CompressedImage, Image
from std_msgs.msg import Header
from std_srvs.srv import Trigger

from .. import native
from ..core.align import plane_homography
from ..core.allocator import retain_freed_memory
from ..core.calibration import CalibrationConfig, OnlineCalibration
from ..core.checks import ConfigError, RegionFuseError
from ..core.config import NodeConfig
from ..core.sync import (
    PAIR_DROP_REASONS,
    RGB,
    STREAMS,
    THERMAL,
    ApproximateTimeSync,
    DropCounter,
    Frame,
    HandoffSlot,
    LatestMailbox,
    Pair,
    seconds_to_ns,
)
from ..msg import FusionStatus
from . import msg_convert, outputs
from .diagnostics import (
    BadInputLog,
    LatencyStats,
    Snapshot,
    build_statuses,
    diagnostic_array,
)
from .params import ParameterValidator, declare_parameters, read_parameters

if TYPE_CHECKING:
    from ..inference.pipeline import FusedFrame

NODE_NAME = 'regionfuse'
#: Seconds between two identical warnings (bad frames, pipeline errors).
LOG_THROTTLE_S = 5.0
#: The worker wakes this often (s) to notice a stop request.
WORKER_POLL_S = 0.2
#: Seconds to wait for the worker to finish its current pair at stop.
WORKER_JOIN_S = 30.0
#: History depth of the output publishers (overridable: qos_overrides.<topic>.publisher.depth).
OUTPUT_QOS_DEPTH = 5
#: Exit status of main() when the parameters or models are unusable.
EXIT_CONFIG_ERROR = 2

IMAGE_TOPICS = {THERMAL: 'thermal/image_raw', RGB: 'rgb/image_raw'}
INFO_TOPICS = {THERMAL: 'thermal/camera_info', RGB: 'rgb/camera_info'}
COMPRESSED_SUFFIX = '/compressed'
OUT_TOPICS = {'image': 'fused/image', 'camera_info': 'fused/camera_info',
              'misregistration': 'fused/misregistration', 'flow': 'fused/flow',
              'overlay': 'fused/misregistration/overlay', 'status': 'fused/status'}
OUT_TYPES = {'image': Image, 'camera_info': CameraInfo, 'misregistration': Image, 'flow': Image,
             'overlay': Image, 'status': FusionStatus}
DIAGNOSTICS_TOPIC = '/diagnostics'
#: align.mode auto: the service that estimates the rig's homography again (node-private).
RECALIBRATE_SERVICE = '~/recalibrate'


def _transition(fn: Callable[..., TransitionCallbackReturn]) -> Callable[..., TransitionCallbackReturn]:
    """Log unexpected exceptions of a lifecycle callback (rclpy swallows them silently)."""
    @functools.wraps(fn)
    def wrapper(self: RegionFuseNode, state: LifecycleState) -> TransitionCallbackReturn:
        try:
            return fn(self, state)
        except Exception as e:  # noqa: BLE001 - report, then let the lifecycle go to ErrorProcessing
            self.get_logger().error(f'{fn.__name__} failed: {type(e).__name__}: {e}')
            raise
    return wrapper


class RegionFuseNode(LifecycleNode):
    """The ``regionfuse`` lifecycle node (see the module docstring)."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(NODE_NAME, **kwargs)
        self._specs = declare_parameters(self)
        self.cfg = NodeConfig()
        try:
            self.cfg = read_parameters(self, self._specs)
        except ConfigError:
            pass  # on_configure reads them again and reports the error
        self._validator = ParameterValidator(self.cfg, self._specs, self._check_change,
                                             self._apply_change)
        self.add_on_set_parameters_callback(self._validator.on_set)
        self.add_post_set_parameters_callback(self._validator.on_post_set)
        self.pipeline: Any = None
        self.sync: ApproximateTimeSync | None = None
        self.mailbox: LatestMailbox[Pair] = LatestMailbox()
        self.pair_drops = DropCounter(PAIR_DROP_REASONS)
        self._processed = 0
        self._count_lock = threading.Lock()
        self._pubs: dict[str, Any] = {}
        self._subs: list[Any] = []
        self._mf_sync: Any = None
        self._timer: Any = None
        self._workers: list[threading.Thread] = []
        self._handoff: HandoffSlot | None = None
        self._infos: dict[str, CameraInfo | None] = {THERMAL: None, RGB: None}
        self._plane_key: tuple | None = None
        self._last_rx: dict[str, float | None] = {THERMAL: None, RGB: None}
        self._last_pair: float | None = None
        self._since = time.monotonic()
        self._bad = {s: BadInputLog() for s in STREAMS}
        self._latency = LatencyStats()
        self._prev_snapshot: Snapshot | None = None
        self._active = False
        self._view: Any = None   # viz.foxglove: a FoxgloveView
        self._auto: OnlineCalibration | None = None   # align.mode auto
        self._auto_lock = threading.Lock()
        self._auto_busy = False
        self._auto_offered = 0
        self._auto_pool: Any = None
        self._recalibrate: Any = None

    # -- lifecycle ---------------------------------------------------------------------------
    @_transition
    def on_configure(self, state: LifecycleState) -> TransitionCallbackReturn:
        log = self.get_logger()
        try:
            self.cfg = read_parameters(self, self._specs)
        except ConfigError as e:
            log.error(f'invalid parameters: {e}')
            return TransitionCallbackReturn.FAILURE
        self._validator.cfg = self.cfg
        if self.cfg.sync.backend == 'message_filters' and not _message_filters_available():
            log.error('sync.backend=message_filters needs the ROS message_filters package, which '
                      'is not installed here; use sync.backend: internal')
            return TransitionCallbackReturn.FAILURE
        from ..inference.pipeline import FusionPipeline, stage_threads
        if self.cfg.overlap_stages and self.cfg.pipeline.threads == 0:
            import torch
            # The two stages share the cores. Set before the models are built: the ONNX Runtime
            # backend sizes its sessions from torch's thread count when threads is 0.
            torch.set_num_threads(stage_threads(2))
        try:
            self.pipeline = FusionPipeline(self.cfg.pipeline)
        except (RegionFuseError, ImportError) as e:
            log.error(f'cannot load the models: {e} (set fusion.checkpoint / corrector.checkpoint '
                      'to a .safetensors file, or corrector.enabled:=false)')
            return TransitionCallbackReturn.FAILURE
        self._plane_key = None          # a new pipeline: plane mode recomputes its homography
        self._update_plane_homography()
        self._auto_mode()
        self._warm_up()
        if self.cfg.viz.foxglove and not self._start_view():
            return TransitionCallbackReturn.FAILURE
        c = self.cfg.sync
        self.sync = ApproximateTimeSync(seconds_to_ns(c.slop), c.queue_size,
                                        seconds_to_ns(c.thermal_offset),
                                        seconds_to_ns(c.max_backward_jump))
        qos = QoSProfile(depth=OUTPUT_QOS_DEPTH)
        self._pubs = {key: self.create_publisher(
            OUT_TYPES[key], topic, qos, qos_overriding_options=QoSOverridingOptions.with_default_policies())
            for key, topic in OUT_TOPICS.items()}
        self._pubs['diagnostics'] = self.create_publisher(DiagnosticArray, DIAGNOSTICS_TOPIC, qos)
        self._recalibrate = self.create_service(Trigger, RECALIBRATE_SERVICE, self._on_recalibrate)
        p = self.pipeline
        pc = self.cfg.pipeline
        log.info(f'configured: device {p.device}, backend {pc.backend}, fusion {p.fusion_name}, '
                 f'corrector {p.corrector_name or "(not loaded)"} {"on" if pc.corrector.enabled else "off"}, '
                 f'align {pc.align.mode}, '
                 f'{"two overlapped stages" if self.cfg.overlap_stages else "one worker"} '
                 f'with {_intra_op_threads()} thread(s) each')
        return TransitionCallbackReturn.SUCCESS

    def _start_view(self) -> bool:
        """viz.foxglove: start the Foxglove server (logged with its connection string); False on failure."""
        from ..viz.foxglove_view import FoxgloveView
        v = self.cfg.viz
        try:
            self._view = FoxgloveView(v.foxglove_host, v.foxglove_port, v.foxglove_rate)
        except RegionFuseError as e:
            self.get_logger().error(f'viz.foxglove: {e}')
            return False
        self.get_logger().info(f'Foxglove live view: open connection {self._view.url} in the Foxglove app '
                               '(channels /fused/image, /fused/misregistration/overlay, /fused/status)')
        return True

    def _warm_up(self) -> None:
        """One synthetic pair at ``warmup_width`` x ``warmup_height`` (if set), logged; failures warn only."""
        w, h = self.cfg.warmup_width, self.cfg.warmup_height
        if not (w and h) or self.pipeline is None:
            return
        out_w, out_h = outputs.output_size(self.cfg.output, (h, w, 3))
        try:
            ms = self.pipeline.warm_up((out_w, out_h))   # the models run at the output size
        except RegionFuseError as e:
            self.get_logger().warn(f'warm-up at {w}x{h} failed: {e}')
            return
        self.get_logger().info(f'warm-up at {out_w}x{out_h}: {ms:.0f} ms')

    @_transition
    def on_activate(self, state: LifecycleState) -> TransitionCallbackReturn:
        self.mailbox = LatestMailbox()
        self._handoff = HandoffSlot() if self.cfg.overlap_stages else None
        self._since = time.monotonic()
        self._subscribe()
        self._workers = [threading.Thread(target=self._work, name='regionfuse-worker', daemon=True)]
        if self._handoff is not None:
            self._workers.append(threading.Thread(target=self._work_finish, name='regionfuse-finish',
                                                  daemon=True))
        for w in self._workers:
            w.start()
        self._start_timer()
        self._active = True
        self.get_logger().info(
            'active: ' + ', '.join(self.resolve_topic_name(self._image_topic(s)) for s in STREAMS)
            + ' -> ' + self.resolve_topic_name(OUT_TOPICS['image']))
        return TransitionCallbackReturn.SUCCESS

    @_transition
    def on_deactivate(self, state: LifecycleState) -> TransitionCallbackReturn:
        self._deactivate()
        return TransitionCallbackReturn.SUCCESS

    @_transition
    def on_cleanup(self, state: LifecycleState) -> TransitionCallbackReturn:
        self._cleanup()
        return TransitionCallbackReturn.SUCCESS

    @_transition
    def on_shutdown(self, state: LifecycleState) -> TransitionCallbackReturn:
        self.stop()
        return TransitionCallbackReturn.SUCCESS

    def stop(self) -> None:
        """Stop everything (worker joined, subscriptions and publishers destroyed); idempotent."""
        self._deactivate()
        self._cleanup()

    def _deactivate(self) -> None:
        self._active = False
        for s in self._subs:
            self.destroy_subscription(s)
        self._subs = []
        self._mf_sync = None
        if self._timer is not None:
            self.destroy_timer(self._timer)
            self._timer = None
        left = self.mailbox.close()
        if left is not None:
            self.pair_drops.add('shutdown')
        # First stage first: its last frame is still handed over and finished by the second.
        for w in self._workers[:1]:
            self._join(w)
        if self._handoff is not None:
            self._handoff.close()
        for w in self._workers[1:]:
            self._join(w)
        self._workers = []

    def _join(self, worker: threading.Thread) -> None:
        worker.join(timeout=WORKER_JOIN_S)
        if worker.is_alive():
            self.get_logger().warn(f'{worker.name} still busy after {WORKER_JOIN_S} s')

    def _cleanup(self) -> None:
        if self._view is not None:
            self._view.close()
            self._view = None
        if self._recalibrate is not None:
            self.destroy_service(self._recalibrate)
            self._recalibrate = None
        if self._auto_pool is not None:
            self._auto_pool.shutdown(wait=True)
            self._auto_pool = None
        self._auto = None
        for pub in self._pubs.values():
            self.destroy_publisher(pub)
        self._pubs = {}
        if self.pipeline is not None:
            self.pipeline.close()   # its helper thread (align_stage auto), if started
        if self.pipeline is not None and getattr(self.pipeline.device, 'type', '') == 'cuda':
            import torch
            self.pipeline = None
            torch.cuda.empty_cache()
        self.pipeline = None

    # -- subscriptions ---------------------------------------------------------------------------
    def _image_topic(self, stream: str) -> str:
        suffix = COMPRESSED_SUFFIX if self.cfg.input.transport == 'compressed' else ''
        return IMAGE_TOPICS[stream] + suffix

    def _subscribe(self) -> None:
        compressed = self.cfg.input.transport == 'compressed'
        msg_type = CompressedImage if compressed else Image
        mc = msg_convert
        conv = {THERMAL: mc.thermal_from_compressed if compressed else mc.thermal_from_image,
                RGB: mc.rgb_from_compressed if compressed else mc.rgb_from_image}
        qos = qos_profile_sensor_data
        opts = QoSOverridingOptions.with_default_policies
        for s in STREAMS:
            self._subs.append(self.create_subscription(
                CameraInfo, INFO_TOPICS[s], functools.partial(self._on_info, s), qos,
                qos_overriding_options=opts()))
        if self.cfg.sync.backend == 'message_filters':
            self._subscribe_message_filters(msg_type, conv, qos)
            return
        for s in STREAMS:
            self._subs.append(self.create_subscription(
                msg_type, self._image_topic(s), functools.partial(self._on_image, s, conv[s]), qos,
                qos_overriding_options=opts()))

    def _subscribe_message_filters(self, msg_type: type, conv: dict[str, Callable], qos: Any) -> None:
        """sync.backend=message_filters: pair with ROS's ApproximateTimeSynchronizer.

        Only frames it pairs reach the node, so the unpaired counters stay 0
        and sync.thermal_offset is not applied.
        """
        import message_filters
        subs = [message_filters.Subscriber(self, msg_type, self._image_topic(s), qos_profile=qos)
                for s in STREAMS]
        c = self.cfg.sync
        self._mf_sync = message_filters.ApproximateTimeSynchronizer(subs, c.queue_size, c.slop)
        self._mf_sync.registerCallback(functools.partial(self._on_mf_pair, conv))
        self._subs += [s.sub for s in subs]
        if c.thermal_offset != 0.0:
            self.get_logger().warn('sync.thermal_offset is ignored with sync.backend=message_filters')

    def _on_image(self, stream: str, convert: Callable[[Any], np.ndarray], msg: Any) -> None:
        now = time.monotonic()
        self._last_rx[stream] = now
        sync = self.sync
        if sync is None:
            return
        try:
            img = convert(msg)
        except RegionFuseError as e:
            sync.reject(stream)
            self._bad[stream].record(e)
            self.get_logger().warn(f'{stream}: bad frame dropped: {e}', throttle_duration_sec=LOG_THROTTLE_S)
            return
        stamp = msg_convert.stamp_to_ns(msg.header.stamp)
        self._offer(sync.add(stream, stamp, (msg.header, img), now))

    def _on_mf_pair(self, conv: dict[str, Callable], t_msg: Any, r_msg: Any) -> None:
        now = time.monotonic()
        frames = {}
        for s, m in ((THERMAL, t_msg), (RGB, r_msg)):
            self._last_rx[s] = now
            try:
                img = conv[s](m)
            except RegionFuseError as e:
                self._bad[s].record(e)
                self.get_logger().warn(f'{s}: bad frame dropped: {e}', throttle_duration_sec=LOG_THROTTLE_S)
                return
            frames[s] = Frame(s, msg_convert.stamp_to_ns(m.header.stamp), (m.header, img), now)
        dt = frames[THERMAL].stamp_ns - frames[RGB].stamp_ns
        self._offer([Pair(thermal=frames[THERMAL], rgb=frames[RGB], dt_ns=dt)])

    def _offer(self, pairs: list[Pair]) -> None:
        for p in pairs:
            self._last_pair = time.monotonic()
            old = self.mailbox.put(p)
            if old is not None:
                self.pair_drops.add('shutdown' if self.mailbox.closed else 'mailbox_overwrite')

    def _on_info(self, stream: str, msg: CameraInfo) -> None:
        self._infos[stream] = msg
        if self.cfg.pipeline.align.mode == 'plane':
            self._update_plane_homography()

    def _update_plane_homography(self) -> None:
        a = self.cfg.pipeline.align
        t_info, r_info = self._infos[THERMAL], self._infos[RGB]
        if a.mode != 'plane' or t_info is None or r_info is None or self.pipeline is None:
            return
        key = (tuple(t_info.k), tuple(r_info.k), tuple(a.extrinsic), a.plane_depth)
        if key == self._plane_key:
            return
        try:
            h = plane_homography(msg_convert.camera_matrix(t_info), msg_convert.camera_matrix(r_info),
                                 a.extrinsic, a.plane_depth)
            self.pipeline.set_homography(h)
        except RegionFuseError as e:
            self.get_logger().warn(f'align.mode=plane: {e}', throttle_duration_sec=LOG_THROTTLE_S)
            return
        self._plane_key = key
        self.get_logger().info(f'plane homography (depth {a.plane_depth} m): {np.round(h, 4).tolist()}')

    # -- align.mode auto -------------------------------------------------------------------------------
    def _auto_mode(self) -> None:
        """Start (align.mode auto) or stop the online calibration."""
        a = self.cfg.pipeline.align
        if a.mode != 'auto':
            with self._auto_lock:
                self._auto = None
            return
        with self._auto_lock:
            if self._auto is not None:
                return
            self._auto = OnlineCalibration(CalibrationConfig(), frames=a.auto_frames,
                                           window=3 * a.auto_frames)
            self._auto_offered = 0
        if self._auto_pool is None:
            from concurrent.futures import ThreadPoolExecutor
            self._auto_pool = ThreadPoolExecutor(1, thread_name_prefix='regionfuse-calibrate')
        self.get_logger().info(f'align.mode=auto: estimating the thermal->RGB homography from '
                               f'{a.auto_frames} confident pairs (every {a.auto_every}-th pair); '
                               'resizing only until then')

    def _auto_offer(self, thermal: np.ndarray, rgb: np.ndarray) -> None:
        """Hand every auto_every-th pair to the calibration thread while it estimates (never waits)."""
        with self._auto_lock:
            auto = self._auto
            if auto is None or auto.state == 'fixed' or self._auto_busy or self._auto_pool is None:
                return
            self._auto_offered += 1
            if (self._auto_offered - 1) % self.cfg.pipeline.align.auto_every:
                return
            self._auto_busy = True
        self._auto_pool.submit(self._auto_register, auto, thermal.copy(), rgb.copy())

    def _auto_register(self, auto: OnlineCalibration, thermal: np.ndarray, rgb: np.ndarray) -> None:
        try:
            cal = auto.add(thermal, rgb)
        except Exception as e:  # noqa: BLE001 - a bad frame must not end the estimation
            self.get_logger().warn(f'align.mode=auto: registration failed: {type(e).__name__}: {e}',
                                   throttle_duration_sec=LOG_THROTTLE_S)
            cal = None
        finally:
            with self._auto_lock:
                self._auto_busy = False
        with self._auto_lock:
            current = auto is self._auto and self.cfg.pipeline.align.mode == 'auto'
        if cal is not None and current and self.pipeline is not None:
            self.pipeline.set_homography(cal.homography)
            self.get_logger().info(f'align.mode=auto: homography {np.round(cal.homography, 5).tolist()} '
                                   f'held ({auto.summary()})')

    def _on_recalibrate(self, request: Any, response: Any) -> Any:
        """~/recalibrate (std_srvs/Trigger): estimate the homography again; the held one stays until then."""
        with self._auto_lock:
            auto = self._auto
            if auto is None:
                response.success = False
                response.message = f'align.mode is {self.cfg.pipeline.align.mode!r}, not auto'
                return response
            auto.restart()
            self._auto_offered = 0
        response.success = True
        response.message = 'estimating the homography again; the current one stays until then'
        self.get_logger().info('align.mode=auto: ' + response.message)
        return response

    def alignment_state(self) -> tuple[str, str]:
        """``(state, summary)`` of the pre-alignment for diagnostics."""
        a = self.cfg.pipeline.align
        h = self.pipeline.homography() if self.pipeline is not None else None
        values = '' if h is None else ', '.join(f'{v:.6g}' for v in (h / h[2, 2]).ravel())
        with self._auto_lock:
            auto = self._auto
        if a.mode == 'auto' and auto is not None:
            return auto.state, auto.summary() + (f'; homography [{values}]' if values else '')
        return a.mode, f'homography [{values}]' if values else 'resize only'

    # -- worker -------------------------------------------------------------------------------------
    def _work(self) -> None:
        """First (or only) worker: take the newest pair, fuse it, then finish it or hand it over."""
        box, handoff = self.mailbox, self._handoff
        while True:
            pair = box.get(timeout=WORKER_POLL_S)
            if pair is None:
                if box.closed:
                    return
                continue
            frame = self._guarded(self._fuse, pair)
            if frame is None:
                continue
            if handoff is None:
                self._guarded(self._finish, pair, frame)
                continue
            while not handoff.put((pair, frame), timeout=WORKER_POLL_S):
                if handoff.closed:
                    self.pair_drops.add('shutdown')
                    break
            # Take the next pair only when the second stage has started on this one: a pair fused
            # earlier would wait in the slot (latency) while a fresher one arrives.
            while not handoff.wait_empty(timeout=WORKER_POLL_S) and not handoff.closed:
                pass

    def _work_finish(self) -> None:
        """Second worker (``overlap_stages``): corrector, postprocessing and publishing."""
        handoff = self._handoff
        assert handoff is not None
        while True:
            item = handoff.get(timeout=WORKER_POLL_S)
            if item is None:
                if handoff.closed:
                    return
                continue
            self._guarded(self._finish, *item)

    def _guarded(self, fn: Callable[..., Any], *args: Any) -> Any:
        """Run one stage; an unexpected exception is counted and logged, never raised."""
        try:
            return fn(*args)
        except Exception as e:  # noqa: BLE001 - one bad pair must never stop a worker
            if not self._active or not rclpy.ok(context=self.context):
                return None
            self.pair_drops.add('internal_error')
            self.get_logger().error(f'internal error while processing a pair: {type(e).__name__}: {e}',
                                    throttle_duration_sec=LOG_THROTTLE_S)
            return None

    def _fuse(self, pair: Pair) -> FusedFrame | None:
        """Preprocess and fuse one pair; None (counted, logged) when the pipeline rejects it."""
        (_, thermal), (_, rgb) = pair.thermal.payload, pair.rgb.payload
        self._auto_offer(thermal, rgb)
        if self.cfg.pipeline.align.mode == 'plane' and self.pipeline.homography() is None:
            self.get_logger().warn('align.mode=plane: waiting for thermal/camera_info and rgb/camera_info; '
                                   'resizing only', throttle_duration_sec=LOG_THROTTLE_S)
        try:
            # one worker: finish() follows in this thread, so align_stage auto may overlap the fusion
            return self.pipeline.fuse(thermal, rgb, out_size=outputs.output_size(self.cfg.output, rgb.shape),
                                      whole_frame=not self.cfg.overlap_stages)
        except RegionFuseError as e:
            self.pair_drops.add('pipeline_error')
            self.get_logger().warn(f'pair dropped: {e}', throttle_duration_sec=LOG_THROTTLE_S)
            return None

    def _finish(self, pair: Pair, frame: FusedFrame) -> None:
        """Corrector, postprocessing and publishing of one fused pair."""
        cfg = self.cfg
        r_hdr = pair.rgb.payload[0]
        try:
            res = self.pipeline.finish(frame)
        except RegionFuseError as e:
            self.pair_drops.add('pipeline_error')
            self.get_logger().warn(f'pair dropped: {e}', throttle_duration_sec=LOG_THROTTLE_S)
            return
        with self._count_lock:
            self._processed += 1
            processed = self._processed
        header = msg_convert.copy_header(r_hdr)
        pubs, pub = self._pubs, cfg.publish
        pubs['image'].publish(outputs.fused_image(res, header, cfg.output.encoding))
        info = self._infos[RGB]
        if pub.camera_info and info is not None and info.width > 0 and info.height > 0:
            pubs['camera_info'].publish(outputs.fused_camera_info(info, res, header))
        maps = (('misregistration', pub.misregistration, outputs.misregistration_image),
                ('flow', pub.flow, outputs.flow_image), ('overlay', pub.overlay, outputs.overlay_image))
        for name, enabled, build in maps:
            if enabled and pubs[name].get_subscription_count() > 0:
                msg = build(res, header)
                if msg is not None:
                    pubs[name].publish(msg)
        total_ms = (time.monotonic() - pair.received) * 1e3
        self._latency.add(total_ms)
        if self._view is not None:
            self._view.publish(res.fused, res.misregistration, outputs.view_status(res, total_ms, processed,
                                                                                   self.pipeline),
                               r_hdr.stamp.sec * 1_000_000_000 + r_hdr.stamp.nanosec, r_hdr.frame_id)
        if pub.status:
            p = self.pipeline
            pubs['status'].publish(outputs.status_message(
                header, pair, res, total_ms, cfg, self.sync.counters(), processed,
                self.pair_drops.total, str(p.device), p.fusion_name, p.corrector_name))

    # -- diagnostics ---------------------------------------------------------------------------------
    def _start_timer(self) -> None:
        if self._timer is not None:
            self.destroy_timer(self._timer)
        self._timer = self.create_timer(self.cfg.diagnostics.period, self._publish_diagnostics)

    def snapshot(self) -> Snapshot:
        """Counters and state for a diagnostics report."""
        p = self.pipeline
        with self._count_lock:
            processed = self._processed
        return Snapshot(
            time=time.monotonic(), active=self._active, sync=self.sync.counters(), processed=processed,
            pair_drops=self.pair_drops.snapshot(), last_received=dict(self._last_rx), since=self._since,
            bad_inputs={s: self._bad[s].snapshot() for s in STREAMS},
            topics={s: self.resolve_topic_name(self._image_topic(s)) for s in STREAMS},
            latency=self._latency.take(), device=str(p.device) if p else '',
            backend=self.cfg.pipeline.backend, fusion_model=p.fusion_name if p else '',
            corrector_model=p.corrector_name if p else '', last_pair=self._last_pair,
            native_kernels=native.status() if self.cfg.pipeline.native_kernels else 'off',
            alignment=self.alignment_state())

    def _publish_diagnostics(self) -> None:
        if self.sync is None or 'diagnostics' not in self._pubs:
            return
        snap = self.snapshot()
        statuses = build_statuses(self.get_name(), snap, self._prev_snapshot, self.cfg)
        self._prev_snapshot = snap
        header = Header(stamp=self.get_clock().now().to_msg())
        self._pubs['diagnostics'].publish(diagnostic_array(statuses, header))

    # -- parameters -----------------------------------------------------------------------------------
    def _check_change(self, cand: NodeConfig, changed: set[str]) -> str | None:
        """Node-specific acceptance of a run-time change (the corrector must be loadable)."""
        if 'corrector.enabled' in changed and cand.pipeline.corrector.enabled and self.pipeline is not None:
            try:
                self.pipeline.ensure_corrector()
            except (RegionFuseError, ImportError) as e:
                return f'corrector.enabled: cannot load the corrector: {e}'
        return None

    def _apply_change(self, changed: set[str]) -> None:
        """Propagate accepted parameter changes that need more than the config update."""
        c = self.cfg.sync
        if self.sync is not None and any(n.startswith('sync.') for n in changed):
            self._offer(self.sync.configure(
                slop_ns=seconds_to_ns(c.slop), queue_size=c.queue_size,
                thermal_offset_ns=seconds_to_ns(c.thermal_offset),
                max_backward_jump_ns=seconds_to_ns(c.max_backward_jump)))
        if any(n.startswith('align.') for n in changed):
            self._plane_key = None
            self._update_plane_homography()
            if 'align.mode' in changed:
                self._auto_mode()
        if 'diagnostics.period' in changed and self._timer is not None:
            self._start_timer()
        self.get_logger().info('parameters changed: ' + ', '.join(sorted(changed)))


def _intra_op_threads() -> int:
    import torch
    return torch.get_num_threads()


def _message_filters_available() -> bool:
    try:
        import message_filters  # noqa: F401
    except ImportError:
        return False
    return True


class RosLogHandler(logging.Handler):
    """Forward the library's Python logging (``ros2_regionfuse.*``) to the node's ROS logger."""

    def __init__(self, ros_logger: Any) -> None:
        super().__init__()
        self._ros = ros_logger

    def emit(self, record: logging.LogRecord) -> None:
        msg = f'{record.name}: {record.getMessage()}'
        if record.levelno >= logging.ERROR:
            self._ros.error(msg)
        elif record.levelno >= logging.WARNING:
            self._ros.warn(msg)
        elif record.levelno >= logging.INFO:
            self._ros.info(msg)
        else:
            self._ros.debug(msg)


def main(args: list[str] | None = None) -> int:
    """Run fuse_node until SIGINT/SIGTERM; returns the exit status (0 on a clean stop)."""
    from rclpy.exceptions import (
        InvalidParameterTypeException,
        InvalidParameterValueException,
        ParameterException,
    )
    retain_freed_memory()   # glibc: reuse freed frame buffers instead of page-faulting them in again
    rclpy.init(args=args)
    node: RegionFuseNode | None = None
    code = 0
    try:
        node = RegionFuseNode()
        lib_log = logging.getLogger('ros2_regionfuse')
        lib_log.addHandler(RosLogHandler(node.get_logger()))
        lib_log.setLevel(logging.INFO)
        lib_log.propagate = False
        if node.get_parameter('autostart').value:
            if node.trigger_configure() != TransitionCallbackReturn.SUCCESS:
                return EXIT_CONFIG_ERROR
            if node.trigger_activate() != TransitionCallbackReturn.SUCCESS:
                return EXIT_CONFIG_ERROR
        executor = SingleThreadedExecutor()
        executor.add_node(node)
        executor.spin()
    except (KeyboardInterrupt, ExternalShutdownException):
        pass
    except (InvalidParameterTypeException, InvalidParameterValueException, ParameterException) as e:
        rclpy.logging.get_logger(NODE_NAME).error(f'invalid parameter: {e}')
        code = EXIT_CONFIG_ERROR
    except Exception:  # noqa: BLE001 - a signal during start-up invalidates the context: not an error
        if rclpy.ok():
            raise
    finally:
        if node is not None:
            node.stop()
            node.destroy_node()
        rclpy.try_shutdown()
    return code
