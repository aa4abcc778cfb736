"""Configuration dataclasses: the one place where every default lives.

The shipped ``config/fuse.yaml``, the node's ROS parameters (declared by looping
over these fields, named by their dotted path, e.g. ``sync.slop``) and the CLI
options are all derived from these classes. Each field's ``metadata`` carries
``help`` text, an optional numeric ``range`` (inclusive), ``choices`` and
``read_only`` (True when a change needs a restart of the node).
"""
from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from .checks import ConfigError


def _f(default: Any, help: str, *, range: tuple[float, float] | None = None,
       choices: tuple[str, ...] | None = None, read_only: bool = False,
       length: int | None = None) -> Any:
    """Declare a config field with its documentation and constraints."""
    meta = {'help': help, 'range': range, 'choices': choices,
            'read_only': read_only, 'length': length}
    if isinstance(default, (list, dict)):
        return field(default_factory=lambda d=default: list(d) if isinstance(d, list) else dict(d),
                     metadata=meta)
    return field(default=default, metadata=meta)


@dataclass
class ThermalConfig:
    """Thermal automatic gain control (AGC) for 16-bit and float images."""

    agc: str = _f('percentile', 'Gain control for 16-bit/float thermal: percentile or fixed.',
                  choices=('percentile', 'fixed'))
    percentiles: list = _f([1.0, 99.0], 'Low/high percentiles (%) mapped to 0 and 1 (agc=percentile).',
                           range=(0.0, 100.0), length=2)
    range: list = _f([0.0, 65535.0], 'Low/high raw value mapped to 0 and 1 (agc=fixed); raw counts, '
                     'Kelvin or Celsius as the camera sends.', length=2)
    invert: bool = _f(False, 'Invert the thermal image (black-hot cameras).')


@dataclass
class AlignConfig:
    """Pre-alignment of the thermal image into the RGB frame before fusion."""

    mode: str = _f('none', 'none: resize only; homography: warp by align.homography '
                   '(or align.homography_file); plane: homography induced by a plane at '
                   'align.plane_depth from both camera_infos and align.extrinsic; auto (node): '
                   'estimate the homography from the first align.auto_frames confident pairs '
                   '(as regionfuse calibrate does), then hold it; the ~/recalibrate service '
                   'estimates it again.', choices=('none', 'homography', 'plane', 'auto'))
    homography: list = _f([1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0],
                          'Thermal->RGB homography, 9 values row-major, in pixels of the '
                          'original thermal and RGB images.', length=9)
    homography_file: str = _f('', 'Text/YAML/npy file with the 3x3 thermal->RGB homography '
                              '(overrides align.homography when set).')
    extrinsic: list = _f([0.0, 0.0, 0.0, 0.0, 0.0, 0.0],
                         'Pose of the thermal camera in the RGB camera frame: x y z (m) '
                         'roll pitch yaw (rad), optical frames (plane mode).', length=6)
    plane_depth: float = _f(10.0, 'Depth (m) of the fronto-parallel plane used in plane mode.',
                            range=(0.1, 1000.0))
    auto_frames: int = _f(8, 'auto mode: confident pairs the estimate needs (the last 3x that many '
                          'registered pairs are kept).', range=(3, 100))
    auto_every: int = _f(5, 'auto mode: register every N-th pair while estimating (on a helper '
                         'thread, ~0.1-0.3 s per pair on 2 CPU cores).', range=(1, 1000))


@dataclass
class FusionConfig:
    """The region-adaptive fusion network."""

    variant: str = _f('regionfuse_lite', 'Fusion model variant (shipped weights: regionfuse_lite, the '
                      'region network at 1/16 of a 640x480 frame; regionfuse_fine, at 1/8: slightly '
                      'higher MI, about twice the fusion time).', read_only=True)
    checkpoint: str = _f('', 'Fusion weights (.safetensors); empty = the shipped weights.',
                         read_only=True)
    region_runtime: str = _f('onnxruntime', "Runtime of the fusion's region network in the torch backend "
                             'on the CPU: onnxruntime (one graph for every size, exported when the node '
                             'configures, ~1 s; a session fixed to a size from its second frame, ~35 ms; '
                             'fewer, fused operators: -0.9 ms per 640x480 frame on 2 cores) or torch (a '
                             'TorchScript trace per size). Falls back to torch, with a warning, when the '
                             'export or its check fails.', choices=('onnxruntime', 'torch'), read_only=True)
    contrast: str = _f('percentile', 'Output contrast of the fused luminance: none (as the network '
                       'emits it), minmax (full range per frame) or percentile (the '
                       'fusion.contrast_percentiles of the frame mapped to black and white).',
                       choices=('none', 'minmax', 'percentile'))
    contrast_percentiles: list = _f([0.5, 99.5], 'Low/high percentiles (%) of the fused luminance '
                                    'mapped to 0 and 1 (fusion.contrast=percentile).',
                                    range=(0.0, 100.0), length=2)
    contrast_strength: float = _f(0.5, 'Share of the output contrast stretch applied: 1 = the full '
                                  'minmax/percentile mapping, 0 = none; in between, that mapping blended '
                                  'with the unstretched luminance (one linear map: no extra cost). With '
                                  'fusion.source_mix it sets the trade between contrast (SD, SF, VIF) and '
                                  'structure (SSIM, SCD); docs/evaluation.md measures it.', range=(0.0, 1.0))
    source_mix: float = _f(0.25, "Share of the sources' mean luminance ((thermal + visible) / 2, after "
                           'pre-alignment and, when the corrector re-fuses, after registration) blended '
                           'into the fused luminance before the output contrast; 0 = the network output '
                           'alone. It keeps the structure of both sources (SCD, SSIM) that the network '
                           'trades for contrast and detail.', range=(0.0, 1.0))


@dataclass
class CorrectorConfig:
    """The post-registration corrector (fuse, then register)."""

    enabled: bool = _f(True, 'Run the post-registration corrector.')
    variant: str = _f('register_refuse', 'Corrector variant: register_refuse registers the thermal '
                      'image to the visible one (rotation, scale and translation search, affine refinement; '
                      'captures +-40 px, +-8 deg, 0.9-1.1 scale at 640x480) and fuses again with the '
                      'registered thermal image; corrector_lite and corrector_multiscale are the learned '
                      'correctors with a global similarity registration (shipped weights).',
                      read_only=True)
    checkpoint: str = _f('', 'Corrector weights (.safetensors); empty = the shipped weights.',
                         read_only=True)
    global_start: bool = _f(True, "Use the variant's global similarity registration of the thermal "
                            'image (corrector_lite and corrector_multiscale: it is the flow; recovers much '
                            'more of a coarse calibration error; 5-7 ms at 640x480 on 2 CPU cores); false = '
                            'the learned stages estimate the flow alone.', read_only=True)
    skip_aligned: bool = _f(True, 'Return a frame unchanged (M = 0, flow = 0) without the learned '
                            'stages when the global registration finds it aligned to within 1 px '
                            '(torch backend; a calibrated rig then costs only the global check); '
                            'false = always run the whole corrector.', read_only=True)
    model: str = _f('affine', 'register_refuse: global motion model (similarity, affine or homography).',
                    choices=('similarity', 'affine', 'homography'), read_only=True)
    search_px: float = _f(64.0, 'register_refuse: translation capture radius (px at 640 px width; '
                          'scales with the image).', range=(4.0, 256.0), read_only=True)
    min_confidence: float = _f(0.09, 'register_refuse: registration confidence (relative reduction of '
                               'the edge-descriptor decorrelation) at and below which the frame passes '
                               'unchanged; aligned LLVIP/MSRS pairs measure 0.02-0.08, misaligned ones '
                               '0.11 (night) to 0.54.', range=(0.0, 1.0))
    full_confidence: float = _f(0.13, 'register_refuse: confidence from which the estimate is applied '
                                'in full (linear ramp from min_confidence).', range=(0.0, 1.0))
    min_correlation: float = _f(0.18, 'register_refuse: edge-descriptor correlation of the estimate at '
                                'and below which the frame passes unchanged (no common structure): '
                                'unrelated pairs measure 0.10-0.21, registered ones 0.25-0.73.',
                                range=(-1.0, 1.0))
    full_correlation: float = _f(0.24, 'register_refuse: correlation from which the estimate is '
                                 'applied in full (linear ramp from min_correlation; multiplies the '
                                 'confidence ramp).', range=(-1.0, 1.0))
    dead_zone_px: float = _f(1.0, 'register_refuse: mean displacement (px) under which a frame counts '
                             'as aligned and passes unchanged.', range=(0.0, 20.0))
    holes: str = _f('uncorrected', 'register_refuse: output where the registered thermal image has no '
                    'data (outside its frame): uncorrected (the fusion without correction; M marks it), '
                    'visible (the visible image, as outside the thermal field of view) or extend (the '
                    "thermal frame's edge pixels extended).", choices=('uncorrected', 'visible', 'extend'),
                    read_only=True)
    align_stage: str = _f('auto', "Pipeline stage that runs the corrector's work that needs only the "
                          'sources (the global registration and the source part of the learned stages): '
                          'correct (with the corrector), fuse (with preprocessing and fusion), or auto: when '
                          'a frame is processed in one go on the CPU with 2 or more threads (the CLI, the '
                          'node with overlap_stages false), on a helper thread during the fusion, which then '
                          'keeps one thread fewer (19.9 vs 25.9 ms per 640x480 frame on 2 cores), '
                          'otherwise as correct. '
                          'The node with overlap_stages runs the two stages on two threads: for '
                          'corrector_lite at 30 Hz input on 2 cores, correct gave the higher output rate in '
                          '4 of 4 alternating 60 s pairs (+0.1 to +2.2 Hz) and fuse the lower p95 latency '
                          'in 4 of 4 (-4 to -14 ms); fuse also suits a heavier corrector.',
                          choices=('auto', 'correct', 'fuse'), read_only=True)


@dataclass
class PipelineConfig:
    """Everything the ROS-free pipeline needs: device, models, preprocessing."""

    device: str = _f('auto', 'auto (CUDA if available), cpu or cuda.',
                     choices=('auto', 'cpu', 'cuda'), read_only=True)
    backend: str = _f('torch', 'Inference runtime: torch or onnxruntime.',
                      choices=('torch', 'onnxruntime'), read_only=True)
    threads: int = _f(0, 'CPU threads for inference (0 = automatic: all cores, split between the '
                      'two stages when the node runs with overlap_stages).',
                      range=(0, 256), read_only=True)
    native_kernels: bool = _f(True, 'Run the fusion\'s pyramid blending, the corrector\'s global '
                              'registration and full-resolution step and the 8-bit colour steps as fused C '
                              'kernels (torch backend, CPU), compiled once with the '
                              "machine's C compiler (cc, ~1 s; cached in ~/.cache/ros2_regionfuse). "
                              'Falls back to the torch/OpenCV code, with a warning, when no compiler is '
                              'found or the build fails.', read_only=True)
    thermal: ThermalConfig = field(default_factory=ThermalConfig)
    align: AlignConfig = field(default_factory=AlignConfig)
    fusion: FusionConfig = field(default_factory=FusionConfig)
    corrector: CorrectorConfig = field(default_factory=CorrectorConfig)


@dataclass
class SyncConfig:
    """Approximate-time pairing of thermal and RGB frames by header stamp."""

    backend: str = _f('internal', 'Pairing implementation: internal or message_filters '
                      '(only where a ROS install provides it).',
                      choices=('internal', 'message_filters'), read_only=True)
    slop: float = _f(0.05, 'Largest stamp difference (s) of a pair.', range=(0.0, 10.0))
    queue_size: int = _f(10, 'Frames kept per camera while waiting for a partner.',
                         range=(1, 1000))
    thermal_offset: float = _f(0.0, 'Constant offset (s) added to thermal stamps before pairing.',
                               range=(-10.0, 10.0))
    max_backward_jump: float = _f(1.0, 'A stamp this much (s) older than the newest of its camera '
                                  'restarts the pairing (bag loop, clock reset); smaller backward '
                                  'steps are dropped as out of order.', range=(0.0, 3600.0))


@dataclass
class InputConfig:
    """Input subscriptions."""

    transport: str = _f('raw', 'raw: sensor_msgs/Image on .../image_raw; compressed: '
                        'sensor_msgs/CompressedImage on .../image_raw/compressed.',
                        choices=('raw', 'compressed'), read_only=True)


@dataclass
class OutputConfig:
    """Output image format and size."""

    encoding: str = _f('bgr8', 'Encoding of fused/image.', choices=('bgr8', 'rgb8'))
    width: int = _f(0, 'Output width (px); 0 = RGB input width.', range=(0, 16384))
    height: int = _f(0, 'Output height (px); 0 = RGB input height.', range=(0, 16384))


@dataclass
class PublishConfig:
    """Switches for the optional outputs."""

    camera_info: bool = _f(True, 'Publish fused/camera_info.')
    misregistration: bool = _f(True, 'Publish fused/misregistration (32FC1).')
    flow: bool = _f(True, 'Publish fused/flow (32FC2, pixels).')
    overlay: bool = _f(True, 'Publish fused/misregistration/overlay (bgr8).')
    status: bool = _f(True, 'Publish fused/status (FusionStatus).')


@dataclass
class DiagnosticsConfig:
    """Diagnostics on /diagnostics."""

    period: float = _f(1.0, 'Diagnostics publish period (s).', range=(0.05, 60.0))
    stale_timeout: float = _f(2.0, 'A camera silent for longer (s) is reported as stale (WARN).',
                              range=(0.1, 3600.0))
    error_timeout: float = _f(5.0, 'A camera silent for longer (s) is reported as ERROR; '
                              'must be >= diagnostics.stale_timeout.', range=(0.1, 3600.0))


@dataclass
class VizConfig:
    """Live view without RViz: a Foxglove WebSocket server in the node (``foxglove-sdk``)."""

    foxglove: bool = _f(False, 'Serve the fused image, the misregistration overlay and the status to '
                        'the Foxglove app (open connection ws://<foxglove_host>:<foxglove_port>).',
                        read_only=True)
    foxglove_host: str = _f('127.0.0.1', 'Address the Foxglove server listens on (127.0.0.1: this '
                            'computer only; 0.0.0.0 exposes it to the network).', read_only=True)
    foxglove_port: int = _f(8765, 'TCP port of the Foxglove server (0: any free port, logged).',
                            range=(0, 65535), read_only=True)
    foxglove_rate: float = _f(10.0, 'Most images per second sent to the Foxglove clients (JPEG).',
                              range=(0.1, 120.0))


@dataclass
class NodeConfig:
    """All parameters of ``fuse_node``."""

    pipeline: PipelineConfig = field(default_factory=PipelineConfig)
    sync: SyncConfig = field(default_factory=SyncConfig)
    input: InputConfig = field(default_factory=InputConfig)
    output: OutputConfig = field(default_factory=OutputConfig)
    publish: PublishConfig = field(default_factory=PublishConfig)
    diagnostics: DiagnosticsConfig = field(default_factory=DiagnosticsConfig)
    viz: VizConfig = field(default_factory=VizConfig)
    overlap_stages: bool = _f(True, 'Run preprocessing + fusion of the next pair on one thread while '
                              'the corrector, postprocessing and publishing of the current pair run on '
                              'another: a higher output rate on multi-core CPUs and with a GPU, at a '
                              'somewhat higher latency per pair where the stages share few cores '
                              '(false: one worker). With threads: 0 the stages split the cores.',
                              read_only=True)
    autostart: bool = _f(True, 'Configure and activate the (lifecycle) node at start; false: stay '
                         'unconfigured until a lifecycle transition is requested.', read_only=True)
    warmup_width: int = _f(0, 'RGB width (px) of the pair the node runs through the pipeline while '
                           'configuring (with warmup_height; the output size follows output.*): the '
                           'first camera pair then runs on the fast path of its size (without, the first '
                           'pair of a size runs on the fallbacks and the second builds the fast path: '
                           '~35 ms for the default models, ~0.5 s per TorchScript trace of a learned '
                           'corrector). 0 = no warm-up.', range=(0, 16384), read_only=True)
    warmup_height: int = _f(0, 'RGB height (px) of the warm-up pair; 0 = no warm-up.',
                            range=(0, 16384), read_only=True)


def check_offline(cfg: PipelineConfig) -> None:
    """Refuse settings only the node can honour (offline tools: fuse, bag).

    Raises:
        ConfigError: ``align.mode: auto`` (the node's online estimate).
    """
    if cfg.align.mode == 'auto':
        raise ConfigError('align.mode auto estimates the rig in the running node; offline, run '
                          '`regionfuse calibrate` once and pass the file it writes (align.mode: homography)')


# ---------------------------------------------------------------------------
# Generic helpers: flatten to dotted names, set from dotted names, validate.
# ---------------------------------------------------------------------------

@dataclass(frozen=True)
class FieldSpec:
    """One leaf field of a config tree, named by its dotted path."""

    name: str
    default: Any
    type: type
    help: str
    range: tuple[float, float] | None
    choices: tuple[str, ...] | None
    read_only: bool
    length: int | None


def iter_fields(cfg: Any, prefix: str = '') -> Iterator[tuple[FieldSpec, Any]]:
    """Yield ``(spec, current_value)`` for every leaf field of a config instance.

    Nested dataclasses are flattened with dots; the node's ``pipeline.*`` group
    is flattened without its prefix (``pipeline.device`` -> ``device``), so the
    ROS parameter names are ``device``, ``fusion.checkpoint``, ``sync.slop``...

    Example:
        >>> [s.name for s, _ in iter_fields(SyncConfig())][:2]
        ['backend', 'slop']
    """
    for f in dataclasses.fields(cfg):
        value = getattr(cfg, f.name)
        if dataclasses.is_dataclass(value):
            sub = '' if (f.name == 'pipeline' and prefix == '') else f'{prefix}{f.name}.'
            yield from iter_fields(value, sub)
            continue
        m = f.metadata
        default = (f.default_factory() if f.default is dataclasses.MISSING  # type: ignore[misc]
                   else f.default)
        yield (FieldSpec(name=prefix + f.name, default=default, type=type(default),
                         help=m.get('help', ''), range=m.get('range'), choices=m.get('choices'),
                         read_only=m.get('read_only', False), length=m.get('length')), value)


def _resolve(cfg: Any, name: str) -> tuple[Any, str]:
    parts = name.split('.')
    obj = cfg
    if parts[0] not in {f.name for f in dataclasses.fields(obj)} and hasattr(obj, 'pipeline'):
        obj = obj.pipeline
    for p in parts[:-1]:
        if not hasattr(obj, p) or not dataclasses.is_dataclass(getattr(obj, p)):
            raise ConfigError(f'unknown parameter {name!r}')
        obj = getattr(obj, p)
    if not hasattr(obj, parts[-1]) or dataclasses.is_dataclass(getattr(obj, parts[-1])):
        raise ConfigError(f'unknown parameter {name!r}')
    return obj, parts[-1]


def validate_value(spec: FieldSpec, value: Any) -> Any:
    """Check one value against its field spec and return it with the field's type.

    Raises:
        ConfigError: wrong type, unknown choice, out of range or wrong length,
            with a message that names the parameter and the allowed values.

    Example:
        >>> spec = {s.name: s for s, _ in iter_fields(SyncConfig())}['slop']
        >>> validate_value(spec, 0.1)
        0.1
    """
    t = spec.type
    if t is bool:
        if not isinstance(value, bool):
            raise ConfigError(f'{spec.name}: expected true/false, got {value!r}')
    elif t is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f'{spec.name}: expected an integer, got {value!r}')
    elif t is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f'{spec.name}: expected a number, got {value!r}')
        value = float(value)
    elif t is str:
        if not isinstance(value, str):
            raise ConfigError(f'{spec.name}: expected a string, got {value!r}')
    elif t is list:
        if not isinstance(value, (list, tuple)) or not all(
                isinstance(v, (int, float)) and not isinstance(v, bool) for v in value):
            raise ConfigError(f'{spec.name}: expected a list of numbers, got {value!r}')
        value = [float(v) for v in value]
        if spec.length is not None and len(value) != spec.length:
            raise ConfigError(f'{spec.name}: expected {spec.length} values, got {len(value)}')
    if spec.choices is not None and value not in spec.choices:
        raise ConfigError(f'{spec.name}: {value!r} is not one of {list(spec.choices)}')
    if spec.range is not None:
        lo, hi = spec.range
        vals = value if isinstance(value, list) else [value]
        for v in vals:
            if not lo <= v <= hi:
                raise ConfigError(f'{spec.name}: {v} is outside [{lo}, {hi}]')
    if spec.name.endswith('percentiles') and value[0] >= value[1]:  # thermal., fusion.contrast_
        raise ConfigError(f'{spec.name}: low {value[0]} must be below high {value[1]}')
    if spec.name == 'thermal.range' and value[0] >= value[1]:
        raise ConfigError(f'{spec.name}: low {value[0]} must be below high {value[1]}')
    return value


def field_specs(cfg: Any) -> dict[str, FieldSpec]:
    """Map dotted name -> :class:`FieldSpec` for every leaf of ``cfg``."""
    return {s.name: s for s, _ in iter_fields(cfg)}


def set_value(cfg: Any, name: str, value: Any) -> None:
    """Validate ``value`` and assign it to the field named ``name`` (dotted path).

    Raises:
        ConfigError: unknown name or invalid value.
    """
    specs = field_specs(cfg)
    if name not in specs:
        raise ConfigError(f'unknown parameter {name!r}')
    obj, attr = _resolve(cfg, name)
    setattr(obj, attr, validate_value(specs[name], value))


def update_from_dict(cfg: Any, values: dict[str, Any]) -> Any:
    """Apply a flat ``{dotted name: value}`` or nested dict to ``cfg`` in place.

    Returns:
        ``cfg``, for chaining.
    """
    for name, value in flatten_dict(values).items():
        set_value(cfg, name, value)
    return cfg


def flatten_dict(d: dict[str, Any], prefix: str = '') -> dict[str, Any]:
    """Flatten a nested dict to dotted keys; lists stay values."""
    out: dict[str, Any] = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(flatten_dict(v, f'{prefix}{k}.'))
        else:
            out[f'{prefix}{k}'] = v
    return out


def to_dict(cfg: Any) -> dict[str, Any]:
    """Return the flat ``{dotted name: value}`` dict of a config instance."""
    return {s.name: v for s, v in iter_fields(cfg)}
