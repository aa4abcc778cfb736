"""Output messages of fuse_node built from a :class:`FusionResult` (no publishing here).

Every output carries the RGB input's header (stamp and frame_id). Float maps
follow the ROS conventions: ``32FC1`` misregistration probability in [0, 1],
``32FC2`` flow in pixels (x, y). When the corrector is off there are no maps:
:func:`misregistration_image`, :func:`flow_image` and :func:`overlay_image`
return None and the node publishes nothing on those topics.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np
from sensor_msgs.msg import CameraInfo, Image
from std_msgs.msg import Header

from ..core import encodings
from ..core.config import NodeConfig, OutputConfig
from ..core.mosaic import misregistration_overlay
from ..core.sync import Pair, SyncCounters
from ..msg import FusionStatus
from . import msg_convert

if TYPE_CHECKING:  # the pipeline (torch) is imported when the node configures, not at start-up
    from ..inference.pipeline import FusionResult

#: Encoding of fused/misregistration/overlay (RViz shows it as is).
OVERLAY_ENCODING = 'bgr8'


def output_size(out: OutputConfig, rgb_shape: tuple[int, ...]) -> tuple[int, int]:
    """Output ``(width, height)``: ``output.width/height``, the RGB size for 0.

    When only one of them is set, the other follows the RGB aspect ratio.

    Example:
        >>> output_size(OutputConfig(width=320), (240, 640, 3))
        (320, 120)
    """
    h0, w0 = int(rgb_shape[0]), int(rgb_shape[1])
    w, h = int(out.width), int(out.height)
    if w == 0 and h == 0:
        return w0, h0
    if w == 0:
        w = max(1, round(h * w0 / h0))
    elif h == 0:
        h = max(1, round(w * h0 / w0))
    return w, h


def fused_image(res: FusionResult, header: Header, encoding: str) -> Image:
    """fused/image: the fused RGB uint8 image in ``encoding`` (bgr8 or rgb8)."""
    return msg_convert.rgb_to_image(res.fused, encoding, header)


def fused_camera_info(rgb_info: CameraInfo, res: FusionResult, header: Header) -> CameraInfo:
    """fused/camera_info: the RGB camera's info scaled to the output size."""
    h, w = res.fused.shape[:2]
    return msg_convert.scale_camera_info(rgb_info, w, h, header)


def misregistration_image(res: FusionResult, header: Header) -> Image | None:
    """fused/misregistration: ``32FC1`` probability map, or None without corrector."""
    if res.misregistration is None:
        return None
    m = np.ascontiguousarray(res.misregistration, dtype=np.float32)
    return msg_convert.array_to_image(m, '32FC1', header)


def flow_image(res: FusionResult, header: Header) -> Image | None:
    """fused/flow: ``32FC2`` flow (x, y) in output pixels, or None without corrector."""
    if res.flow is None:
        return None
    f = np.ascontiguousarray(res.flow, dtype=np.float32)
    return msg_convert.array_to_image(f, '32FC2', header)


def overlay_image(res: FusionResult, header: Header) -> Image | None:
    """fused/misregistration/overlay: the fused image with the misregistration heat map (bgr8)."""
    if res.misregistration is None:
        return None
    rgb = misregistration_overlay(res.fused, res.misregistration)
    return msg_convert.array_to_image(encodings.from_rgb8(rgb, OVERLAY_ENCODING), OVERLAY_ENCODING,
                                      header)


def status_message(header: Header, pair: Pair, res: FusionResult, total_ms: float, cfg: NodeConfig,
                   counters: SyncCounters, processed: int, dropped: int, device: str,
                   fusion_model: str, corrector_model: str) -> FusionStatus:
    """fused/status for one processed pair (see msg/FusionStatus.msg)."""
    t = res.timings_ms
    mean_shift, max_shift = res.shift_stats
    t_hdr, r_hdr = pair.thermal.payload[0], pair.rgb.payload[0]
    return FusionStatus(
        header=header, thermal_stamp=t_hdr.stamp, rgb_stamp=r_hdr.stamp,
        pair_dt=pair.dt_ns / msg_convert.NS_PER_S,
        preprocess_ms=float(t.get('preprocess', float('nan'))),
        fusion_ms=float(t.get('fusion', float('nan'))),
        corrector_ms=float(t.get('corrector', float('nan'))),
        postprocess_ms=float(t.get('postprocess', float('nan'))),
        total_ms=float(total_ms),
        misaligned_fraction=res.misaligned_fraction, mean_shift_px=mean_shift,
        max_shift_px=max_shift, corrector_enabled=res.misregistration is not None,
        device=device, backend=cfg.pipeline.backend, fusion_model=fusion_model,
        corrector_model=corrector_model,
        thermal_received=counters.thermal.received, rgb_received=counters.rgb.received,
        paired=counters.pairs, processed=processed, dropped=dropped)


def view_status(res: FusionResult, total_ms: float, processed: int, pipeline: Any) -> dict[str, Any]:
    """The live view's status record (JSON: NaN becomes null)."""
    mean, peak = res.shift_stats

    def num(x: float) -> float | None:
        return None if x != x else round(float(x), 3)
    return {'frame': int(processed), 'latency_ms': num(total_ms),
            'misaligned_fraction': num(res.misaligned_fraction), 'shift_mean_px': num(mean),
            'shift_max_px': num(peak), 'fusion': pipeline.fusion_name,
            'corrector': pipeline.corrector_name or ''}
