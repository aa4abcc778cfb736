"""``regionfuse make-sample-bag``: build the bundled demo recording from real thermal/RGB pairs.

Each chosen pair of a registered dataset (default: three MSRS pairs, MIT
licence) becomes a short clip: a virtual RGB camera (``bgr8``, 640x480) pans
and zooms over the visible image at 10 Hz, and a virtual thermal camera
(``mono16`` raw counts, 320x256, a Boson-like 14-bit range) sees the same scene
through its own lens: a wider vertical field of view (the calibration
homography maps it into the RGB frame) plus a small known misregistration
(shift + rotation) that the corrector should find. Stamps carry a clock
offset between the cameras, jitter and transport delay. The ground truth is
written to ``ground_truth.json`` in the bag directory (and the bag's
``custom_data``), and ``calibration.yaml`` holds the node parameters that
describe the rig (``align.mode: homography``).
"""
from __future__ import annotations

import argparse
import csv
import json
import logging
import math
import shlex
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from ..core import bagio
from ..core.checks import ConfigError
from ..core.paths import REPO_DIR, data_root

log = logging.getLogger(__name__)

REPO = REPO_DIR
DEFAULT_SOURCE = data_root()
#: Dataset licences that allow redistributing derived images (from ../shared/README.md).
REDISTRIBUTABLE = {'MSRS': 'MIT', 'TNO': 'CC BY 4.0 (TNO)'}
THERMAL_TOPIC, THERMAL_INFO_TOPIC = '/thermal/image_raw', '/thermal/camera_info'
RGB_TOPIC, RGB_INFO_TOPIC = '/rgb/image_raw', '/rgb/camera_info'
GROUND_TRUTH_FILE = 'ground_truth.json'
CALIBRATION_FILE = 'calibration.yaml'
COUNTS_MAX = 2 ** 14 - 1  # 14-bit radiometric sensor


def _f(default: Any, help: str) -> Any:
    if isinstance(default, list):
        return field(default_factory=lambda d=default: list(d), metadata={'help': help})
    return field(default=default, metadata={'help': help})


@dataclass
class SampleBagConfig:
    """How the recording is synthesised; every field is a ``--option``."""

    dataset: str = _f('MSRS', 'Dataset folder under --source (MSRS or TNO: licences allow redistribution).')
    pairs: list = _f(['00633D', '00858N', '00881N'], 'Pair stems, one clip each, in order.')
    frames_per_pair: int = _f(10, 'Frames per clip.')
    rate_hz: float = _f(10.0, 'Nominal frame rate of both cameras (Hz).')
    rgb_size: list = _f([448, 336], 'RGB image width height (px).')
    thermal_size: list = _f([320, 256], 'Thermal image width height (px); it sees the full RGB width.')
    rgb_fx: float = _f(420.0, 'RGB focal length (px); the thermal one follows from the size ratio.')
    crop_fraction: list = _f([0.86, 0.76], 'Share of the source width the RGB view covers at the '
                             'start/end of a clip (zoom).')
    pan_px: float = _f(36.0, 'Largest pan of the crop centre over a clip (source px).')
    shake_px: float = _f(0.6, 'Hand-held shake: std of the per-frame crop-centre jitter (source px).')
    misreg_shift: list = _f([6.0, 0.0], 'Known thermal misregistration: shift x y (RGB px).')
    misreg_rotation_deg: float = _f(0.5, 'Known thermal misregistration: rotation about the RGB '
                                    'centre (deg).')
    counts_offset: float = _f(7000.0, 'Raw counts of source value 0 (14-bit, Boson/Lepton-like).')
    counts_gain: float = _f(8.0, 'Raw counts per source grey level.')
    counts_noise: float = _f(3.0, 'Temporal noise std (counts).')
    thermal_blur: float = _f(0.5, 'Gaussian blur sigma of the thermal optics (thermal px).')
    start_time: float = _f(1715700000.0, 'Stamp of the first RGB frame (s since the epoch).')
    thermal_clock_offset_ms: float = _f(4.0, 'Thermal clock minus RGB clock (ms).')
    jitter_ms: float = _f(3.0, 'Uniform stamp jitter half-width of each camera (ms).')
    rgb_delay_ms: list = _f([5.0, 9.0], 'RGB transport delay range: log time minus stamp (ms).')
    thermal_delay_ms: list = _f([2.0, 5.0], 'Thermal transport delay range (ms).')
    rgb_frame: str = _f('rgb_camera_optical_frame', 'frame_id of the RGB images.')
    thermal_frame: str = _f('thermal_camera_optical_frame', 'frame_id of the thermal images.')
    seed: int = _f(0, 'Random seed (noise, jitter, camera path).')


def add_arguments(p: argparse.ArgumentParser) -> None:
    """Options: ``--out``, ``--source`` and one per :class:`SampleBagConfig` field."""
    p.add_argument('--out', required=True, type=Path, help='output bag directory (must not exist)')
    p.add_argument('--source', type=Path, default=DEFAULT_SOURCE,
                   help='folder holding <dataset>/ir, <dataset>/vi and PROVENANCE.csv')
    p.add_argument('--no-compress', action='store_true', help='do not zstd-compress the mcap chunks')
    for f in fields(SampleBagConfig):
        default = f.default_factory() if callable(f.default_factory) else f.default  # type: ignore[misc]
        opt = '--' + f.name.replace('_', '-')
        if isinstance(default, list):
            typ = str if default and isinstance(default[0], str) else float
            p.add_argument(opt, nargs='+', type=typ, default=default, help=f.metadata['help'])
        else:
            p.add_argument(opt, type=type(default), default=default, help=f.metadata['help'])


def _config_from_args(args: argparse.Namespace) -> SampleBagConfig:
    cfg = SampleBagConfig(**{f.name: getattr(args, f.name) for f in fields(SampleBagConfig)})
    cfg.rgb_size = [int(v) for v in cfg.rgb_size]
    cfg.thermal_size = [int(v) for v in cfg.thermal_size]
    for name in ('rgb_size', 'thermal_size', 'crop_fraction', 'misreg_shift', 'rgb_delay_ms',
                 'thermal_delay_ms'):
        if len(getattr(cfg, name)) != 2:
            raise ConfigError(f'--{name.replace("_", "-")}: expected 2 values')
    if cfg.dataset not in REDISTRIBUTABLE:
        raise ConfigError(f'--dataset {cfg.dataset}: only {sorted(REDISTRIBUTABLE)} have a licence '
                          'that allows shipping derived images')
    if cfg.frames_per_pair < 1 or not cfg.pairs:
        raise ConfigError('need at least one pair and one frame per pair')
    return cfg


# ---------------------------------------------------------------------------
# Geometry: all maps in pixel-centre-at-integer coordinates, as OpenCV warps use.
# ---------------------------------------------------------------------------

def affine3(m: np.ndarray) -> np.ndarray:
    """2x3 affine -> 3x3 matrix."""
    return np.vstack([m, [0.0, 0.0, 1.0]])


def calibration_homography(rgb_wh: tuple[int, int], thermal_wh: tuple[int, int]) -> np.ndarray:
    """Thermal->RGB homography of the virtual rig (same optical centre, thermal sees the full RGB width).

    The thermal pixel grid is ``s = W_rgb / W_t`` times coarser; its vertical
    field of view is centred on the RGB one.

    Example:
        >>> calibration_homography((640, 480), (320, 256)).round(2).tolist()
        [[2.0, 0.0, 0.5], [0.0, 2.0, -15.5], [0.0, 0.0, 1.0]]
    """
    s = rgb_wh[0] / thermal_wh[0]
    ty = (s - 1.0) / 2.0 + (rgb_wh[1] - thermal_wh[1] * s) / 2.0
    return np.array([[s, 0.0, (s - 1.0) / 2.0], [0.0, s, ty], [0.0, 0.0, 1.0]])


def misregistration_affine(rgb_wh: tuple[int, int], shift: tuple[float, float],
                           rotation_deg: float) -> np.ndarray:
    """3x3 map T: RGB pixel p of a scene point -> where its thermal content appears (RGB px).

    Rotation by ``rotation_deg`` about the image centre, then ``shift``. The
    corrector's flow ground truth is ``phi(p) = T(p) - p``.
    """
    c = np.array([(rgb_wh[0] - 1) / 2.0, (rgb_wh[1] - 1) / 2.0])
    a = math.radians(rotation_deg)
    r = np.array([[math.cos(a), -math.sin(a)], [math.sin(a), math.cos(a)]])
    t = c - r @ c + np.asarray(shift, np.float64)
    return affine3(np.hstack([r, t[:, None]]))


def expected_flow(t: np.ndarray, rgb_wh: tuple[int, int]) -> np.ndarray:
    """Ground-truth flow ``T(p) - p`` over the RGB image: ``(H, W, 2)`` float32 (px, x then y)."""
    w, h = rgb_wh
    xs, ys = np.meshgrid(np.arange(w, dtype=np.float64), np.arange(h, dtype=np.float64))
    fx = t[0, 0] * xs + t[0, 1] * ys + t[0, 2] - xs
    fy = t[1, 0] * xs + t[1, 1] * ys + t[1, 2] - ys
    return np.stack([fx, fy], axis=-1).astype(np.float32)


def camera_path(cfg: SampleBagConfig, src_wh: tuple[int, int], rng: np.random.Generator
                ) -> list[np.ndarray]:
    """Per-frame 3x3 maps RGB px -> source px of one clip (zoom + pan + shake).

    Returns:
        ``frames_per_pair`` similarity transforms.
    """
    n = cfg.frames_per_pair
    rgb_w, rgb_h = cfg.rgb_size
    ang = rng.uniform(0.0, 2.0 * math.pi)
    pan = cfg.pan_px * np.array([math.cos(ang), math.sin(ang)])
    centre = np.array([(src_wh[0] - 1) / 2.0, (src_wh[1] - 1) / 2.0])
    out = []
    for i in range(n):
        u = i / max(1, n - 1)
        frac = cfg.crop_fraction[0] + (cfg.crop_fraction[1] - cfg.crop_fraction[0]) * u
        s = frac * src_wh[0] / rgb_w
        c = centre + (u - 0.5) * pan + rng.normal(0.0, cfg.shake_px, 2)
        rgb_c = np.array([(rgb_w - 1) / 2.0, (rgb_h - 1) / 2.0])
        m = np.array([[s, 0.0, c[0] - s * rgb_c[0]], [0.0, s, c[1] - s * rgb_c[1]], [0.0, 0.0, 1.0]])
        out.append(m)
    return out


def render_rgb(vi_bgr: np.ndarray, rgb_to_src: np.ndarray, rgb_wh: tuple[int, int]) -> np.ndarray:
    """Sample the visible source through the RGB camera: ``(H, W, 3)`` uint8 BGR."""
    return cv2.warpAffine(vi_bgr, rgb_to_src[:2], tuple(rgb_wh),
                          flags=cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP, borderMode=cv2.BORDER_REFLECT_101)


def render_thermal(ir: np.ndarray, rgb_to_src: np.ndarray, cal: np.ndarray, t_mis: np.ndarray,
                   cfg: SampleBagConfig, rng: np.random.Generator) -> np.ndarray:
    """Sample the IR source through the thermal camera and convert to raw counts.

    Thermal pixel q sees the scene point at RGB position ``T^-1(cal(q))``,
    i.e. source position ``rgb_to_src(T^-1(cal(q)))``. Rendered at twice the
    resolution and area-averaged (sensor integration), blurred (optics), then
    ``counts = offset + gain * value + noise``, clipped to 14 bit.

    Returns:
        ``(H_t, W_t)`` uint16 raw counts.
    """
    tw, th = cfg.thermal_size
    half = np.array([[0.5, 0.0, -0.25], [0.0, 0.5, -0.25], [0.0, 0.0, 1.0]])  # 2x grid -> thermal px
    m = rgb_to_src @ np.linalg.inv(t_mis) @ cal @ half
    hi = cv2.warpAffine(ir.astype(np.float32), m[:2], (2 * tw, 2 * th),
                        flags=cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP, borderMode=cv2.BORDER_REFLECT_101)
    val = cv2.resize(hi, (tw, th), interpolation=cv2.INTER_AREA)
    if cfg.thermal_blur > 0:
        val = cv2.GaussianBlur(val, (0, 0), cfg.thermal_blur)
    counts = cfg.counts_offset + cfg.counts_gain * val + rng.normal(0.0, cfg.counts_noise, val.shape)
    return np.clip(np.rint(counts), 0, COUNTS_MAX).astype(np.uint16)


def intrinsics(cfg: SampleBagConfig, cal: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Plausible pinhole K of both cameras, consistent with ``cal = K_rgb K_t^-1``."""
    w, h = cfg.rgb_size
    k_rgb = np.array([[cfg.rgb_fx, 0.0, (w - 1) / 2.0], [0.0, cfg.rgb_fx, (h - 1) / 2.0], [0, 0, 1.0]])
    return k_rgb, np.linalg.inv(cal) @ k_rgb


def _provenance(source: Path, dataset: str, stems: list[str]) -> list[dict[str, str]]:
    prov = source / 'PROVENANCE.csv'
    rows: dict[str, dict[str, str]] = {}
    if prov.is_file():
        with prov.open(newline='') as f:
            rows = {r['staged_path']: r for r in csv.DictReader(f)}
    out = []
    for stem in stems:
        for mod in ('ir', 'vi'):
            rel = next((k for k in rows if k.startswith(f'{dataset}/{mod}/{stem}.')), None)
            r = rows.get(rel or '', {})
            out.append({'file': rel or f'{dataset}/{mod}/{stem}', 'source': r.get('source_repo@commit', ''),
                        'source_path': r.get('source_path', ''), 'licence': REDISTRIBUTABLE[dataset]})
    return out


def _load_pair(source: Path, dataset: str, stem: str) -> tuple[np.ndarray, np.ndarray]:
    def find(mod: str) -> Path:
        hits = sorted((source / dataset / mod).glob(f'{stem}.*'))
        if not hits:
            raise ConfigError(f'{source / dataset / mod}: no image named {stem}.*')
        return hits[0]
    ir = cv2.imread(str(find('ir')), cv2.IMREAD_GRAYSCALE)
    vi = cv2.imread(str(find('vi')), cv2.IMREAD_COLOR)
    if ir is None or vi is None or ir.shape[:2] != vi.shape[:2]:
        raise ConfigError(f'{dataset}/{stem}: unreadable or unequal IR/VI images')
    return ir, vi


def build_sample_bag(cfg: SampleBagConfig, source: Path, out: Path, *, compress: bool = True,
                     command: str = '') -> dict[str, Any]:
    """Write the recording to ``out`` and return its ground truth (also saved as JSON).

    Raises:
        ConfigError: missing source images or bad settings.
        BagError: ``out`` exists.
    """
    rng = np.random.default_rng(cfg.seed)
    rgb_wh = (cfg.rgb_size[0], cfg.rgb_size[1])
    th_wh = (cfg.thermal_size[0], cfg.thermal_size[1])
    cal = calibration_homography(rgb_wh, th_wh)
    t_mis = misregistration_affine(rgb_wh, tuple(cfg.misreg_shift), cfg.misreg_rotation_deg)
    flow = expected_flow(t_mis, rgb_wh)
    mag = np.hypot(flow[..., 0], flow[..., 1])
    k_rgb, k_th = intrinsics(cfg, cal)
    period = 1.0 / cfg.rate_hz
    t0 = int(round(cfg.start_time * bagio.NS_PER_S))
    ms = 1_000_000
    frames: list[dict[str, Any]] = []
    truth: dict[str, Any] = {
        'description': 'Demo recording synthesised by `regionfuse make-sample-bag` from real '
                       'registered thermal/visible pairs; see README.md.',
        'topics': {'thermal': THERMAL_TOPIC, 'thermal_info': THERMAL_INFO_TOPIC,
                   'rgb': RGB_TOPIC, 'rgb_info': RGB_INFO_TOPIC},
        'calibration': {'homography_thermal_to_rgb': cal.reshape(-1).tolist(),
                        'k_rgb': k_rgb.reshape(-1).tolist(), 'k_thermal': k_th.reshape(-1).tolist()},
        'misregistration': {
            'shift_px': list(cfg.misreg_shift), 'rotation_deg': cfg.misreg_rotation_deg,
            'affine_rgb': t_mis[:2].reshape(-1).tolist(),
            'meaning': 'after the calibration homography, the thermal content of the scene point '
                       'seen at RGB pixel p appears at T(p); the ideal corrector flow is '
                       'phi(p) = T(p) - p',
            'flow_mean_px': float(mag.mean()), 'flow_max_px': float(mag.max()),
            'flow_mean_xy_px': [float(flow[..., 0].mean()), float(flow[..., 1].mean())]},
        'thermal_counts': {'offset': cfg.counts_offset, 'gain_per_level': cfg.counts_gain,
                           'noise_std': cfg.counts_noise, 'bits': 14},
        'config': asdict(cfg), 'command': command,
        'sources': _provenance(source, cfg.dataset, list(cfg.pairs)),
        'frames': frames,
    }
    pairs = [_load_pair(source, cfg.dataset, stem) for stem in cfg.pairs]  # fail before writing
    with bagio.BagWriter(out, compress=compress) as w:
        idx = 0
        msgs: list[tuple[int, str, Any]] = []
        for stem, (ir, vi) in zip(cfg.pairs, pairs, strict=True):
            for i, m in enumerate(camera_path(cfg, (ir.shape[1], ir.shape[0]), rng)):
                nominal = t0 + int(round(idx * period * bagio.NS_PER_S))
                rgb_ns = nominal + int(rng.uniform(-cfg.jitter_ms, cfg.jitter_ms) * ms)
                th_ns = nominal + int((cfg.thermal_clock_offset_ms
                                       + rng.uniform(-cfg.jitter_ms, cfg.jitter_ms)) * ms)
                rgb_log = rgb_ns + int(rng.uniform(*cfg.rgb_delay_ms) * ms)
                th_log = th_ns + int(rng.uniform(*cfg.thermal_delay_ms) * ms)
                rgb = render_rgb(vi, m, rgb_wh)
                th = render_thermal(ir, m, cal, t_mis, cfg, rng)
                msgs += [
                    (rgb_log, RGB_TOPIC, bagio.image_msg(rgb, 'bgr8', rgb_ns, cfg.rgb_frame)),
                    (rgb_log, RGB_INFO_TOPIC, bagio.camera_info_msg(rgb_ns, cfg.rgb_frame, *rgb_wh, k_rgb)),
                    (th_log, THERMAL_TOPIC, bagio.image_msg(th, 'mono16', th_ns, cfg.thermal_frame)),
                    (th_log, THERMAL_INFO_TOPIC,
                     bagio.camera_info_msg(th_ns, cfg.thermal_frame, *th_wh, k_th))]
                frames.append({'index': idx, 'pair': stem, 'clip_frame': i, 'rgb_stamp_ns': rgb_ns,
                               'thermal_stamp_ns': th_ns, 'rgb_log_ns': rgb_log, 'thermal_log_ns': th_log,
                               'rgb_to_source': m[:2].reshape(-1).tolist()})
                idx += 1
        for log_ns, topic, msg in sorted(msgs, key=lambda x: (x[0], x[1])):
            w.write(topic, msg, log_ns)
    (out / GROUND_TRUTH_FILE).write_text(json.dumps(truth, indent=1))
    (out / CALIBRATION_FILE).write_text(
        '# Node parameters describing the demo rig (pass as a second --params-file).\n'
        '/**:\n  ros__parameters:\n    align:\n      mode: homography\n'
        f'      homography: [{", ".join(repr(round(float(v), 9)) for v in cal.reshape(-1))}]\n')
    return truth


def _command_line(args: argparse.Namespace, cfg: SampleBagConfig) -> str:
    """The command reproducing this run (options that differ from the defaults only)."""
    parts = ['regionfuse', 'make-sample-bag', '--out', str(args.out)]
    if Path(args.source).resolve() != DEFAULT_SOURCE.resolve():
        parts += ['--source', str(args.source)]
    if args.no_compress:
        parts.append('--no-compress')
    ref = SampleBagConfig()
    for f in fields(SampleBagConfig):
        v = getattr(cfg, f.name)
        if v != getattr(ref, f.name):
            parts += ['--' + f.name.replace('_', '-')] + [str(x) for x in (v if isinstance(v, list) else [v])]
    return ' '.join(shlex.quote(p) for p in parts)


def run(args: argparse.Namespace) -> int:
    """Build the recording; print its topics and size."""
    cfg = _config_from_args(args)
    command = _command_line(args, cfg)
    truth = build_sample_bag(cfg, args.source, args.out, compress=not args.no_compress, command=command)
    size = sum(p.stat().st_size for p in args.out.rglob('*') if p.is_file())
    for topic, info in bagio.bag_topics(args.out).items():
        print(f'{topic:24s} {info.msgtype:32s} {info.count:4d} messages')
    print(f'{len(truth["frames"])} frames, {size / 1e6:.2f} MB in {args.out}; expected flow '
          f'mean {truth["misregistration"]["flow_mean_px"]:.2f} px')
    return 0
