r"""``regionfuse calibrate``: the rig's thermal->RGB homography from its own recordings.

Registers every pair (image folders or a bag) with the corrector's cross-modal
registration and aggregates the per-frame estimates robustly
(:mod:`ros2_regionfuse.core.calibration`); writes a parameter file that
``regionfuse fuse --config``, ``regionfuse bag --params-file`` and the node's
``--params-file`` accept as is. Exits 2 with the reason when the frames do not
agree on one rig geometry.

Example:
    regionfuse calibrate --bag ros2_regionfuse/data/sample_demo --out rig.yaml
    regionfuse calibrate --thermal recordings/ir --rgb recordings/vi --out rig.yaml --model affine
"""
from __future__ import annotations

import argparse
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import numpy as np
from tqdm import tqdm

from ..core import bagio, encodings
from ..core.calibration import MODELS, CalibrationConfig, calibrate, params_yaml
from ..core.checks import ConfigError
from ..core.imageio import atomic_write_bytes, match_pairs, read_gray, read_rgb


def add_arguments(p: argparse.ArgumentParser) -> None:
    """Options of ``regionfuse calibrate``."""
    p.add_argument('--thermal', type=Path, help='folder (or file) of thermal images')
    p.add_argument('--rgb', type=Path, help='folder (or file) of RGB images, paired by name')
    p.add_argument('--bag', type=Path, help='a recording (rosbag2 directory or file) instead of folders')
    p.add_argument('--thermal-topic', default='/thermal/image_raw')
    p.add_argument('--rgb-topic', default='/rgb/image_raw')
    p.add_argument('--slop', type=float, default=0.05, help='bag: largest stamp difference of a pair (s)')
    p.add_argument('--out', type=Path, required=True, help='parameter file to write (YAML)')
    p.add_argument('--model', choices=MODELS, default=CalibrationConfig().model)
    p.add_argument('--max-frames', type=int, default=60, help='pairs used at most, spread over the input')
    p.add_argument('--no-progress', action='store_true')


def _spread(items: list, n: int) -> list:
    if n <= 0 or len(items) <= n:
        return items
    idx = np.linspace(0, len(items) - 1, n).round().astype(int)
    return [items[i] for i in sorted(set(idx.tolist()))]


def folder_pairs(thermal: Path, rgb: Path, max_frames: int) -> list[tuple[Path, Path]]:
    """``(thermal, rgb)`` files paired by name, at most ``max_frames`` spread over the set."""
    pairs, _ = match_pairs(thermal, rgb)
    if not pairs:
        raise ConfigError(f'calibrate: no image pairs in {thermal} and {rgb}')
    return _spread([(p.thermal, p.rgb) for p in pairs], max_frames)


def bag_pairs(path: Path, thermal_topic: str, rgb_topic: str, slop_s: float, max_frames: int
              ) -> list[tuple[np.ndarray, np.ndarray]]:
    """Pairs of a recording: each RGB frame with the thermal frame nearest in stamp (within ``slop_s``)."""
    topics = bagio.bag_topics(path)
    for t in (thermal_topic, rgb_topic):
        if t not in topics:
            raise bagio.BagError(f'{path} has no topic {t}; it has {sorted(topics)}')
    th: list[tuple[int, np.ndarray]] = []
    rgb: list[tuple[int, np.ndarray]] = []
    for m in bagio.read_messages(path, [thermal_topic, rgb_topic]):
        msg = m.decode()
        stamp = bagio.time_to_ns(msg.header.stamp)
        img = bagio.image_array(msg, copy=True)
        if m.topic == thermal_topic:
            th.append((stamp, encodings.thermal_input(img, msg.encoding)))
        else:
            rgb.append((stamp, encodings.rgb_input(img, msg.encoding)))
    out = []
    if th:
        stamps = np.array([s for s, _ in th])
        for s, img in rgb:
            i = int(np.argmin(np.abs(stamps - s)))
            if abs(int(stamps[i]) - s) <= slop_s * 1e9:
                out.append((th[i][1], img))
    if not out:
        raise ConfigError(f'calibrate: no thermal/RGB pairs within {slop_s} s in {path}')
    return _spread(out, max_frames)


def _iter_pairs(args: argparse.Namespace) -> tuple[Iterator[tuple[np.ndarray, np.ndarray]], int, str]:
    if args.bag is not None:
        pairs = bag_pairs(args.bag, args.thermal_topic, args.rgb_topic, args.slop, args.max_frames)
        return iter(pairs), len(pairs), str(args.bag)
    if args.thermal is None or args.rgb is None:
        raise ConfigError('calibrate: give --bag, or --thermal and --rgb')
    files = folder_pairs(args.thermal, args.rgb, args.max_frames)
    return ((read_gray(t), read_rgb(r)) for t, r in files), len(files), f'{args.thermal} + {args.rgb}'


def run(args: argparse.Namespace) -> int:
    """Calibrate, print the summary, write the parameter file."""
    if args.max_frames < 1:
        raise ConfigError('--max-frames must be >= 1')
    pairs, n, source = _iter_pairs(args)
    cfg = replace(CalibrationConfig(), model=args.model)
    cal = calibrate(tqdm(pairs, total=n, desc='calibrate', disable=args.no_progress, dynamic_ncols=True), cfg)
    atomic_write_bytes(args.out, params_yaml(cal, source).encode())
    h = cal.homography
    print(f'calibrate: {cal.frames} pairs, {cal.used} used, {cal.low_confidence} not confident, '
          f'{cal.outliers} outliers; residual spread {cal.spread_px:.2f} px RMS')
    print('align.homography (thermal -> RGB px): [' + ', '.join(f'{v:.6g}' for v in h.ravel()) + ']')
    print(f'wrote {args.out} (use: regionfuse fuse --config {args.out} / regionfuse bag --params-file '
          f'{args.out} / fuse_node --ros-args --params-file {args.out})')
    return 0
