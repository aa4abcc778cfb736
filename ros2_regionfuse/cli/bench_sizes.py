"""``regionfuse bench-sizes``: per-pair cost of a folder of mixed-size pairs against one of fixed size.

Research data (RoadScene-like folders) gives every pair its own size; a camera
gives one. Both folders here hold the same pairs: the *mixed* folder at their
own sizes (or, where the source pairs share one size, at seeded sizes between
:attr:`SizesDefaults.min_scale` and 1 times it), the *fixed* folder resized to
``--size`` (default 640x480). Each folder runs through a fresh
:class:`~ros2_regionfuse.inference.pipeline.FusionPipeline` (shipped defaults,
corrector on) pair by pair, as ``regionfuse fuse`` does: each pair's time is
the whole ``process`` call, one-time builds included. The two folders alternate
in ``--rounds`` rounds in one process, so a drift of the machine's speed
affects both alike; the report gives the mean per-pair time of each, their
ratio per round and the target (mixed <= 3x fixed).

Example:
    regionfuse bench-sizes --pairs 40 --json out/bench-sizes.json
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import torch

from ..core import profiling
from ..core.checks import ConfigError
from ..core.config import PipelineConfig
from ..core.imageio import atomic_write_bytes, match_pairs, read_gray, read_rgb
from ..core.paths import TEST_PAIRS, data_root
from ..inference.benchmark import parse_size


@dataclass(frozen=True)
class SizesDefaults:
    """Defaults of ``bench-sizes`` and its target."""

    size: str = '640x480'
    pairs: int = 40
    rounds: int = 2
    threads: int = 2
    min_scale: float = 0.6      # seeded sizes: each side in [min_scale, 1] x the source size
    seed: int = 0
    target_ratio: float = 3.0   # mixed-size per-pair cost <= this x the fixed-size one


DEFAULTS = SizesDefaults()


def default_source() -> Path:
    """RoadScene (mixed sizes) under the data root when present, else the repository's test pairs."""
    road = data_root() / 'RoadScene'
    return road if (road / 'ir').is_dir() and (road / 'vi').is_dir() else TEST_PAIRS


def load_pairs(folder: Path, n: int) -> list[tuple[np.ndarray, np.ndarray]]:
    """The first ``n`` pairs (by name) of ``folder/ir`` + ``folder/vi``.

    Returns:
        ``(thermal (H, W) uint8, rgb (H, W, 3) uint8)`` per pair.

    Raises:
        ConfigError: no pairs.
    """
    if not (folder / 'ir').is_dir() or not (folder / 'vi').is_dir():
        raise ConfigError(f'{folder}: needs ir/ and vi/ folders')
    pairs, _ = match_pairs(folder / 'ir', folder / 'vi')
    if not pairs:
        raise ConfigError(f'{folder}: no ir/ + vi/ image pairs')
    return [(read_gray(p.thermal, as_uint8=True), read_rgb(p.rgb)) for p in pairs[:n]]


def mixed_sizes(pairs: list[tuple[np.ndarray, np.ndarray]], min_scale: float, seed: int
                ) -> list[tuple[np.ndarray, np.ndarray]]:
    """The pairs at their own sizes; where all share one size, each at a seeded size of its own.

    Each side is drawn in ``[min_scale, 1]`` times the source size (distinct sizes per pair).
    """
    sizes = {p[1].shape[:2] for p in pairs}
    if len(sizes) == len(pairs) or len(sizes) > 1:
        return pairs
    rng = np.random.default_rng(seed)
    out = []
    seen: set[tuple[int, int]] = set()
    for t, v in pairs:
        h0, w0 = v.shape[:2]
        while True:
            w = int(round(w0 * rng.uniform(min_scale, 1.0)))
            h = int(round(h0 * rng.uniform(min_scale, 1.0)))
            if (w, h) not in seen:
                seen.add((w, h))
                break
        out.append((cv2.resize(t, (w, h), interpolation=cv2.INTER_AREA),
                    cv2.resize(v, (w, h), interpolation=cv2.INTER_AREA)))
    return out


def fixed_size(pairs: list[tuple[np.ndarray, np.ndarray]], size: tuple[int, int]
               ) -> list[tuple[np.ndarray, np.ndarray]]:
    """The pairs resized to ``size`` ``(width, height)``."""
    def rs(img: np.ndarray) -> np.ndarray:
        shrink = img.shape[1] > size[0] and img.shape[0] > size[1]
        return cv2.resize(img, size, interpolation=cv2.INTER_AREA if shrink else cv2.INTER_LINEAR)
    return [(rs(t), rs(v)) for t, v in pairs]


def folder_times(cfg: PipelineConfig, pairs: list[tuple[np.ndarray, np.ndarray]]) -> list[float]:
    """Milliseconds of each pair's ``process`` call through a fresh pipeline, in order."""
    from ..inference.pipeline import FusionPipeline
    pipe = FusionPipeline(cfg)
    try:
        out = []
        for t, v in pairs:
            t0 = time.perf_counter()
            pipe.process(t, v)
            out.append((time.perf_counter() - t0) * 1e3)
        return out
    finally:
        pipe.close()


def run_bench_sizes(args: argparse.Namespace) -> dict[str, Any]:
    """Both folders, alternating in rounds; the JSON-ready report."""
    size = parse_size(args.size)
    source = Path(args.data) if args.data else default_source()
    pairs = load_pairs(source, args.pairs)
    mixed = mixed_sizes(pairs, args.min_scale, args.seed)
    fixed = fixed_size(pairs, size)
    if args.threads:
        torch.set_num_threads(args.threads)
    cfg = replace(PipelineConfig(), threads=args.threads)
    # one untimed pair first: imports and process-wide one-time set-up (C kernels, ONNX Runtime)
    folder_times(cfg, fixed[:1])
    rounds: list[dict[str, Any]] = []
    for _ in range(args.rounds):
        r: dict[str, Any] = {}
        for name, folder in (('fixed', fixed), ('mixed', mixed)):
            ms = folder_times(cfg, folder)
            r[name] = {'mean_ms': statistics.fmean(ms), 'median_ms': statistics.median(ms),
                       'first_ms': ms[0], 'max_ms': max(ms)}
        r['ratio'] = r['mixed']['mean_ms'] / r['fixed']['mean_ms']
        rounds.append(r)
    ratios = [r['ratio'] for r in rounds]
    ratio = statistics.median(ratios)
    return {
        'command': ' '.join(['regionfuse', *sys.argv[1:]]),
        'machine': profiling.machine_info(),
        'source': str(source), 'pairs': len(pairs), 'threads': torch.get_num_threads(),
        'fixed_size': list(size), 'mixed_distinct_sizes': len({p[1].shape[:2] for p in mixed}),
        'rounds': rounds,
        'ratio_median': ratio,
        'target': {'mixed_vs_fixed_per_pair': f'<= {DEFAULTS.target_ratio:g}x',
                   'pass': bool(ratio <= DEFAULTS.target_ratio)},
    }


def format_report(r: dict[str, Any]) -> str:
    """The report as text."""
    w, h = r['fixed_size']
    lines = [f"bench-sizes: {r['pairs']} pairs of {r['source']}, {r['threads']} thread(s); "
             f"mixed folder: {r['mixed_distinct_sizes']} distinct sizes; fixed folder: {w}x{h}"]
    for i, rd in enumerate(r['rounds'], 1):
        f, m = rd['fixed'], rd['mixed']
        lines.append(f"  round {i}: fixed {f['mean_ms']:7.1f} ms/pair (median {f['median_ms']:.1f}, first "
                     f"{f['first_ms']:.0f}), mixed {m['mean_ms']:7.1f} ms/pair (median {m['median_ms']:.1f}, "
                     f"first {m['first_ms']:.0f}): {rd['ratio']:.2f}x")
    verdict = 'PASS' if r['target']['pass'] else 'FAIL'
    lines.append(f"mixed / fixed per pair: {r['ratio_median']:.2f}x (median of rounds; target "
                 f"{r['target']['mixed_vs_fixed_per_pair']}) {verdict}")
    return '\n'.join(lines)


def add_arguments(p: argparse.ArgumentParser) -> None:
    """Options of ``regionfuse bench-sizes``."""
    d = DEFAULTS
    p.add_argument('--data', type=Path, help='folder with ir/ and vi/ (default: RoadScene under the data '
                   'root, $REGIONFUSE_DATA or ../shared/data/ivif, else test/data)')
    p.add_argument('--pairs', type=int, default=d.pairs, help='pairs per folder (>= 2)')
    p.add_argument('--size', default=d.size, help='size of the fixed-size folder, WxH')
    p.add_argument('--rounds', type=int, default=d.rounds, help='alternating rounds (>= 1)')
    p.add_argument('--threads', type=int, default=d.threads, help='CPU threads (0 = library default)')
    p.add_argument('--min-scale', type=float, default=d.min_scale,
                   help='seeded sizes (when the source pairs share one size): each side in [s, 1] x it')
    p.add_argument('--seed', type=int, default=d.seed, help='seed of those sizes')
    p.add_argument('--json', type=Path, help='write the report as JSON to this file')


def run(args: argparse.Namespace) -> int:
    """Run, print the report, write the JSON."""
    if args.pairs < 2 or args.rounds < 1 or args.threads < 0 or not 0.1 <= args.min_scale <= 1.0:
        raise ConfigError('--pairs must be >= 2, --rounds >= 1, --threads >= 0, --min-scale in [0.1, 1]')
    report = run_bench_sizes(args)
    print(format_report(report))
    if args.json:
        atomic_write_bytes(args.json, json.dumps(report, indent=1).encode())
        print(f'report written to {args.json}')
    return 0
