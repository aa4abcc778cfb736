"""``regionfuse eval-calibration``: ``regionfuse calibrate`` on synthetic rigs with a known homography.

Rigs built from real aligned pairs of the data root (LLVIP test, MSRS, RoadScene
test40; RGB at 640x480): each pair's thermal image is what a thermal camera
mounted with the rig's homography ``H`` (thermal px -> RGB px) sees, zero outside
the RGB view. Two rigs:

* ``same-size``: thermal 640x480, ``H`` a random homography moving the corners
  by 15-40 px;
* ``sub-window``: thermal 320x256 covering ~70 % of the RGB width, rotated and
  shifted (another resolution, another aspect, a narrower lens).

Each rig is calibrated from all its pairs and again with 10 % of the frames
replaced by unrelated (another pair's thermal image, flipped) or blank frames.
Reported per case: the mean reprojection error (RGB px) of a 16x12 grid of
thermal pixels between the estimate and ``H``; the frames used / rejected; and,
fusing the rig's pairs through the shipped pipeline with the written
homography (corrector on), the share of the uncorrected fusion's error removed
(uncorrected: the thermal image only resized; error: mean squared difference
to the fusion with the exact homography, over the pixels the thermal camera
sees). With ``--bag``, also the bundled recording against its
``ground_truth.json``.

Example:
    regionfuse eval-calibration --json docs/bench/eval-calibration-cpu2.json
"""
from __future__ import annotations

import argparse
import json
import sys
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import cv2
import numpy as np
from tqdm import tqdm

from ..core import profiling
from ..core.calibration import Calibration, CalibrationConfig, CalibrationError, _apply, calibrate
from ..core.checks import ConfigError
from ..core.config import PipelineConfig
from ..core.imageio import atomic_write_bytes, read_gray, read_rgb
from ..core.paths import data_root

RGB_WH = (640, 480)


@dataclass(frozen=True)
class CalibrationBenchDefaults:
    """Settings of ``eval-calibration`` and the targets of the calibration issue."""

    pairs: int = 24
    seed: int = 0
    corner_px: tuple[float, float] = (15.0, 40.0)   # same-size rig: corner displacement range
    sub_wh: tuple[int, int] = (320, 256)
    sub_fraction: float = 0.7                        # sub-window rig: thermal view / RGB width
    corrupt_share: float = 0.1
    target_reprojection_px: float = 1.0
    target_removed: float = 0.9


DEFAULTS = CalibrationBenchDefaults()


def grid_error(est: np.ndarray, truth: np.ndarray, thermal_wh: tuple[int, int]) -> float:
    """Mean distance (RGB px) between where ``est`` and ``truth`` put a 16x12 grid of thermal pixels."""
    xs, ys = np.meshgrid(np.linspace(0, thermal_wh[0] - 1, 16), np.linspace(0, thermal_wh[1] - 1, 12))
    p = np.stack([xs.ravel(), ys.ravel()], 1)
    return float(np.hypot(*(_apply(est, p) - _apply(truth, p)).T).mean())


def same_size_rig(rng: np.random.Generator) -> np.ndarray:
    """A thermal->RGB homography at 640x480 whose corners move by 15-40 px (random directions)."""
    w, h = RGB_WH
    src = np.array([[0, 0], [w - 1, 0], [w - 1, h - 1], [0, h - 1]], np.float32)
    lo, hi = DEFAULTS.corner_px
    common = rng.uniform(-0.6, 0.6, 2) * lo                 # a shared shift plus per-corner parts
    ang = rng.uniform(0, 2 * np.pi, 4)
    own = rng.uniform(lo, hi, 4)[:, None] * np.stack([np.cos(ang), np.sin(ang)], 1)
    dst = src + (common + own) * 0.7
    m = cv2.getPerspectiveTransform(src, dst.astype(np.float32))
    return m / m[2, 2]


def sub_window_rig(rng: np.random.Generator) -> np.ndarray:
    """A 320x256 thermal camera seeing ~70 % of the RGB width, rotated by up to 3 deg, off-centre."""
    tw, th = DEFAULTS.sub_wh
    w, h = RGB_WH
    s = DEFAULTS.sub_fraction * w / tw
    a = np.deg2rad(rng.uniform(-3.0, 3.0))
    rot = s * np.array([[np.cos(a), -np.sin(a)], [np.sin(a), np.cos(a)]])
    c_t = np.array([(tw - 1) / 2, (th - 1) / 2])
    c_r = np.array([(w - 1) / 2, (h - 1) / 2]) + rng.uniform(-25, 25, 2)
    m = np.eye(3)
    m[:2, :2] = rot
    m[:2, 2] = c_r - rot @ c_t
    return m


def thermal_view(t_aligned: np.ndarray, h: np.ndarray, thermal_wh: tuple[int, int]) -> np.ndarray:
    """What the rig's thermal camera sees: thermal pixel ``x`` shows the aligned image at ``h x``."""
    return cv2.warpPerspective(t_aligned, h, thermal_wh, flags=cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP,
                               borderMode=cv2.BORDER_CONSTANT)


def load_pairs(root: Path, n: int) -> list[tuple[np.ndarray, np.ndarray]]:
    """``n`` aligned pairs (thermal uint8, RGB) at 640x480, taken in turn from the dev sets.

    Raises:
        ConfigError: the data root lacks the sets, or has fewer than ``n`` pairs.
    """
    from .eval_rig import dev_sets
    sets = [list(s.pairs) for s in dev_sets(root)]
    order = []
    while any(sets) and len(order) < n:
        for s in sets:
            if s and len(order) < n:
                order.append(s.pop(0))
    if len(order) < n:
        raise ConfigError(f'eval-calibration: {len(order)} pairs under {root}, need {n}')
    out = []
    for t, v in order:
        rgb = read_rgb(v)
        if rgb.ndim == 2:
            rgb = np.repeat(rgb[..., None], 3, 2)
        out.append((cv2.resize(read_gray(t, as_uint8=True), RGB_WH, interpolation=cv2.INTER_AREA),
                    cv2.resize(rgb, RGB_WH, interpolation=cv2.INTER_AREA)))
    return out


def corrupt(frames: list[tuple[np.ndarray, np.ndarray]], share: float, rng: np.random.Generator
            ) -> list[tuple[np.ndarray, np.ndarray]]:
    """``frames`` with ``share`` of them (at least one) replaced by unrelated or blank thermal frames."""
    out = list(frames)
    k = max(1, int(round(share * len(out))))
    for j, i in enumerate(rng.choice(len(out), k, replace=False)):
        t, v = out[i]
        if j % 2:
            t = np.full_like(t, int(t.mean()))
        else:
            other = out[(i + len(out) // 2) % len(out)][0]
            t = np.ascontiguousarray(other[::-1, ::-1])
        out[i] = (t, v)
    return out


def fusion_removed(pairs: list[tuple[np.ndarray, np.ndarray]], truth: np.ndarray, est: np.ndarray,
                   thermal_wh: tuple[int, int]) -> dict[str, float]:
    """Error removed by fusing with ``est`` (corrector on) against the thermal image only resized.

    Reference: the same pipeline with the exact homography ``truth`` (corrector off), so
    all three go through the same resampling of the thermal image; error: mean squared
    difference of the fused colour images over the RGB pixels the thermal camera sees.
    """
    from ..inference.pipeline import FusionPipeline
    cfg = PipelineConfig()
    off = replace(cfg.corrector, enabled=False)

    def with_h(c: PipelineConfig, h: np.ndarray) -> PipelineConfig:
        return replace(c, align=replace(c.align, mode='homography', homography=list(h.ravel())))
    pipes = {'reference': FusionPipeline(with_h(replace(cfg, corrector=off), truth)),
             'none': FusionPipeline(replace(cfg, corrector=off)),
             'calibrated': FusionPipeline(with_h(cfg, est))}
    err = {'none': 0.0, 'calibrated': 0.0}
    try:
        for t_al, rgb in pairs:
            cover = thermal_view(np.full(t_al.shape, 255, np.uint8), truth, thermal_wh)
            seen = cv2.warpPerspective(cover, truth, RGB_WH, flags=cv2.INTER_NEAREST) > 128
            t_cam = thermal_view(t_al, truth, thermal_wh)
            out = {k: p.process(t_cam, rgb).fused.astype(np.float32) for k, p in pipes.items()}
            for name in err:
                d = (out[name] - out['reference']) * (1.0 / 255.0)
                err[name] += float((d * d).mean(-1)[seen].mean())
    finally:
        for p in pipes.values():
            p.close()
    return {'mse_none': err['none'], 'mse_calibrated': err['calibrated'],
            'removed': 1.0 - err['calibrated'] / err['none'] if err['none'] > 0 else float('nan')}


def _case(name: str, pairs: list[tuple[np.ndarray, np.ndarray]], truth: np.ndarray,
          thermal_wh: tuple[int, int], rng: np.random.Generator, fuse: bool, progress: bool
          ) -> list[dict[str, Any]]:
    rows = []
    clean = [(thermal_view(t, truth, thermal_wh), v) for t, v in pairs]
    bad = corrupt(clean, DEFAULTS.corrupt_share, rng)
    for variant, frames in (('clean', clean), ('10 % corrupted', bad)):
        row: dict[str, Any] = {'rig': name, 'frames': variant, 'thermal_size': list(thermal_wh),
                               'truth': truth.ravel().tolist()}
        try:
            cal: Calibration = calibrate(tqdm(frames, desc=f'{name} ({variant})', disable=not progress,
                                              dynamic_ncols=True, leave=False), CalibrationConfig())
        except CalibrationError as e:
            row.update({'error': str(e), 'pass': False})
            rows.append(row)
            continue
        row.update({'reprojection_px': grid_error(cal.homography, truth, thermal_wh), 'used': cal.used,
                    'low_confidence': cal.low_confidence, 'outliers': cal.outliers,
                    'spread_px': cal.spread_px, 'estimate': cal.homography.ravel().tolist()})
        if fuse and variant == 'clean':
            row.update(fusion_removed(pairs, truth, cal.homography, thermal_wh))
        rows.append(row)
    return rows


def demo_recording(bag: Path) -> dict[str, Any]:
    """The bundled recording: calibrate it and compare with its ``ground_truth.json``."""
    from .calibrate import bag_pairs
    gt = json.loads((bag / 'ground_truth.json').read_text())
    h_cal = np.asarray(gt['calibration']['homography_thermal_to_rgb'], np.float64).reshape(3, 3)
    t = np.vstack([np.asarray(gt['misregistration']['affine_rgb'], np.float64).reshape(2, 3), [0, 0, 1]])
    # the scene point seen at RGB pixel p shows in the calibrated thermal image at T(p): thermal
    # pixel x, put at H_cal x by the calibration, shows the scene point of RGB pixel T^-1 H_cal x
    truth = np.linalg.inv(t) @ h_cal
    pairs = bag_pairs(bag, '/thermal/image_raw', '/rgb/image_raw', 0.05, 60)
    th = pairs[0][0].shape
    row: dict[str, Any] = {'rig': 'bundled recording', 'frames': f'{len(pairs)} pairs',
                           'thermal_size': [th[1], th[0]], 'truth': truth.ravel().tolist()}
    try:
        cal = calibrate(pairs, CalibrationConfig())
    except CalibrationError as e:
        row.update({'error': str(e), 'pass': False})
        return row
    row.update({'reprojection_px': grid_error(cal.homography, truth, (th[1], th[0])), 'used': cal.used,
                'low_confidence': cal.low_confidence, 'outliers': cal.outliers, 'spread_px': cal.spread_px})
    return row


def run_eval(args: argparse.Namespace) -> dict[str, Any]:
    """All cases; the JSON-ready report."""
    rng = np.random.default_rng(args.seed)
    pairs = load_pairs(Path(args.data_root), args.pairs)
    rows = _case('same-size', pairs, same_size_rig(rng), RGB_WH, rng, not args.no_fusion, args.progress)
    rows += _case('sub-window', pairs, sub_window_rig(rng), DEFAULTS.sub_wh, rng, not args.no_fusion,
                  args.progress)
    if args.bag is not None:
        rows.append(demo_recording(Path(args.bag)))
    for r in rows:
        if 'reprojection_px' in r:
            r['pass'] = bool(r['reprojection_px'] <= DEFAULTS.target_reprojection_px
                             and r.get('removed', 1.0) >= DEFAULTS.target_removed)
    return {'command': ' '.join(['regionfuse', *sys.argv[1:]]), 'machine': profiling.machine_info(),
            'pairs': len(pairs), 'seed': args.seed,
            'targets': {'reprojection_px': f'<= {DEFAULTS.target_reprojection_px:g}',
                        'removed': f'>= {DEFAULTS.target_removed:.0%}'}, 'cases': rows}


def to_markdown(rep: dict[str, Any]) -> str:
    """The report as a Markdown table."""
    lines = ['| rig | frames | reprojection px | used / low conf. / outliers | spread px | error removed '
             '| pass |',
             '|---|---|---:|---|---:|---:|---|']
    for r in rep['cases']:
        if 'error' in r:
            lines.append(f"| {r['rig']} | {r['frames']} | refused: {r['error']} | | | | no |")
            continue
        rem = f"{100 * r['removed']:.1f} %" if 'removed' in r else '–'
        lines.append(f"| {r['rig']} | {r['frames']} | {r['reprojection_px']:.2f} | {r['used']} / "
                     f"{r['low_confidence']} / {r['outliers']} | {r['spread_px']:.2f} | {rem} | "
                     f"{'yes' if r['pass'] else 'no'} |")
    return '\n'.join(lines)


def add_arguments(p: argparse.ArgumentParser) -> None:
    """Options of ``regionfuse eval-calibration``."""
    d = DEFAULTS
    p.add_argument('--data-root', type=Path, default=data_root(),
                   help='.../data/ivif with LLVIP, MSRS, RoadScene (default: $REGIONFUSE_DATA or ../shared)')
    p.add_argument('--pairs', type=int, default=d.pairs, help='real pairs per rig (>= 20 for the targets)')
    p.add_argument('--seed', type=int, default=d.seed, help='seed of the rigs and the corrupted frames')
    p.add_argument('--bag', type=Path, default=None,
                   help='also a recording with ground_truth.json (e.g. the bundled sample_demo)')
    p.add_argument('--no-fusion', action='store_true', help='skip fusing the rigs with the estimate')
    p.add_argument('--progress', action='store_true', help='progress bars')
    p.add_argument('--json', type=Path, help='write the report as JSON')


def run(args: argparse.Namespace) -> int:
    """Evaluate, print the table, write the JSON."""
    if args.pairs < 4:
        raise ConfigError('--pairs must be >= 4')
    rep = run_eval(args)
    print(to_markdown(rep))
    if args.json:
        atomic_write_bytes(args.json, json.dumps(rep, indent=1).encode())
        print(f'report written to {args.json}')
    return 0
