r"""``regionfuse eval``: the nine fusion metrics of one or more folders of fused images.

For every fused folder (one per method) the metrics of each fused image
against its thermal and visible sources are averaged over the pairs, and the
methods are ranked per metric (1 = best; higher is better for all nine). The
result is printed as a Markdown table and optionally written as CSV and JSON
(JSON also holds the per-image values).

Example:
    regionfuse eval --thermal ../shared/data/ivif/TNO/ir --rgb ../shared/data/ivif/TNO/vi \
        --fused ../shared/data/ivif/TNO/fused/DIDFuse --fused out/tno \
        --list ../shared/data/ivif/TNO/splits/tno_didfuse_auif_test40.txt
"""
from __future__ import annotations

import argparse
import csv
import io
import json
import logging
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from tqdm import tqdm

from ..core.checks import ConfigError, ImageIOError, ShapeError
from ..core.classical_fusion import REFERENCE_METHODS
from ..core.imageio import (
    ImagePair,
    atomic_write_bytes,
    image_files,
    match_pairs,
    read_fused_gray,
    read_gray,
    read_stem_list,
    restrict_pairs,
)
from ..core.metrics import METRIC_NAMES, compute_metrics, mean_ranks

log = logging.getLogger(__name__)

_MAX_LISTED = 10  # files named in an error message before "... and N more"


@dataclass
class MethodResult:
    """Metrics of one fused folder."""

    name: str
    folder: Path | None
    files: dict[str, Path]
    per_image: dict[str, dict[str, float]] = field(default_factory=dict)
    #: a reference row computed from the sources (``fuse(ir, vi)`` on [0, 1] grey) instead of a folder
    fuse: Callable[[np.ndarray, np.ndarray], np.ndarray] | None = None

    def means(self) -> dict[str, float]:
        """Mean of each metric over the evaluated images."""
        return {k: float(np.mean([v[k] for v in self.per_image.values()])) for k in METRIC_NAMES}


def add_arguments(p: argparse.ArgumentParser) -> None:
    """Options of ``regionfuse eval``."""
    p.add_argument('--thermal', type=Path, required=True, help='folder (or file) of thermal source images')
    p.add_argument('--rgb', type=Path, required=True, help='folder (or file) of visible source images')
    p.add_argument('--fused', type=Path, action='extend', nargs='+', required=True, metavar='DIR',
                   help='folder of fused images, one per method (repeat the option or list several)')
    p.add_argument('--names', nargs='+', metavar='NAME',
                   help='method names for the fused folders, in order (default: folder names)')
    p.add_argument('--list', type=Path, dest='stem_list', metavar='FILE',
                   help='split file: evaluate only the images it lists (one name per line, '
                        'with or without extension)')
    p.add_argument('--skip-unmatched', action='store_true',
                   help='evaluate the matched pairs even if some source files have no partner '
                        '(they are listed); without it, unmatched source files are an error')
    p.add_argument('--reference', nargs='+', default=[], choices=sorted(REFERENCE_METHODS), metavar='NAME',
                   help='classical reference rows computed from the sources: '
                        + ', '.join(sorted(REFERENCE_METHODS)) + ' (core/classical_fusion.py)')
    p.add_argument('--csv', type=Path, metavar='OUT', help='write the table (means, mean rank) as CSV')
    p.add_argument('--json', type=Path, metavar='OUT', help='write means, ranks and per-image values as JSON')


def _listing(items: list, limit: int = _MAX_LISTED) -> str:
    shown = ', '.join(str(i) for i in items[:limit])
    return shown + (f' ... and {len(items) - limit} more' if len(items) > limit else '')


def select_pairs(thermal: Path, rgb: Path, stem_list: Path | None, skip_unmatched: bool) -> list[ImagePair]:
    """Match the source pairs and apply the split list.

    Raises:
        ImageIOError: unmatched source files (unless ``skip_unmatched``), images
            of the list without a source pair, or no pair at all.
    """
    pairs, unmatched = match_pairs(thermal, rgb)
    if stem_list is not None:
        pairs, missing = restrict_pairs(pairs, read_stem_list(stem_list))
        if missing:
            raise ImageIOError(f'{stem_list}: {len(missing)} listed image(s) have no thermal/visible pair '
                               f'in {thermal} and {rgb}: {_listing(missing)}')
    elif unmatched:
        msg = f'{len(unmatched)} source file(s) without a partner: {_listing(unmatched)}'
        if not skip_unmatched:
            raise ImageIOError(msg + ' (use --skip-unmatched to evaluate the matched pairs only)')
        log.warning('%s; skipped', msg)
    if not pairs:
        raise ImageIOError(f'no thermal/visible pairs found in {thermal} and {rgb}')
    return pairs


def method_names(folders: list[Path], names: list[str] | None) -> list[str]:
    """Names of the methods: ``names`` if given (one per folder), else the folder names.

    Raises:
        ConfigError: wrong number of names, or names that are not unique.
    """
    if names is not None:
        if len(names) != len(folders):
            raise ConfigError(f'--names: {len(names)} name(s) for {len(folders)} --fused folder(s)')
        out = list(names)
    else:
        out = [f.resolve().name for f in folders]
        if len(set(out)) != len(out):  # e.g. a/out and b/out: use parent/name
            out = [f'{f.resolve().parent.name}/{f.resolve().name}' for f in folders]
    if len(set(out)) != len(out):
        raise ConfigError(f'method names must be unique, got {out}')
    return out


def prepare_methods(folders: list[Path], names: list[str], pairs: list[ImagePair]) -> list[MethodResult]:
    """Check that every fused folder holds an image for every pair.

    Raises:
        ImageIOError: a folder is missing, or lacks some pairs (named).
    """
    methods = []
    for name, folder in zip(names, folders, strict=True):
        files = image_files(folder)
        missing = [p.stem for p in pairs if p.stem not in files]
        if missing:
            raise ImageIOError(f'{folder}: no fused image for {len(missing)} of {len(pairs)} pair(s): '
                               f'{_listing(missing)}')
        methods.append(MethodResult(name, folder, files))
    return methods


def evaluate(pairs: list[ImagePair], methods: list[MethodResult], progress: bool = True) -> None:
    """Compute the metrics of every method on every pair (fills ``per_image``).

    Raises:
        ImageIOError, ValueRangeError: unreadable images (named).
        ShapeError: a fused image or the visible image differs in size from the thermal one.
    """
    for pair in tqdm(pairs, desc='eval', unit='pair', disable=not progress or None):
        ir = read_gray(pair.thermal, as_uint8=True)
        vi = read_gray(pair.rgb, as_uint8=True)
        if vi.shape != ir.shape:
            raise ShapeError(f'{pair.rgb}: size {vi.shape[::-1]} differs from {pair.thermal} '
                             f'{ir.shape[::-1]} (sources must be registered and of equal size)')
        for m in methods:
            if m.fuse is not None:
                out = m.fuse(ir.astype(np.float32) / 255.0, vi.astype(np.float32) / 255.0)
                m.per_image[pair.stem] = compute_metrics(np.rint(out * 255.0).astype(np.uint8), ir, vi)
                continue
            path = m.files[pair.stem]
            fused = read_fused_gray(path)
            if fused.shape != ir.shape:
                raise ShapeError(f'{path}: size {fused.shape[::-1]} differs from its sources '
                                 f'{ir.shape[::-1]} ({pair.thermal})')
            m.per_image[pair.stem] = compute_metrics(fused, ir, vi)


def format_table(means: dict[str, dict[str, float]], ranks: dict[str, float]) -> str:
    """Markdown table: one row per method, the nine metrics and the mean rank."""
    head = '| method | ' + ' | '.join(METRIC_NAMES) + ' | mean rank |'
    sep = '|---|' + '---:|' * (len(METRIC_NAMES) + 1)
    rows = [f'| {name} | ' + ' | '.join(f'{means[name][k]:.4f}' for k in METRIC_NAMES)
            + f' | {ranks[name]:.2f} |' for name in means]
    return '\n'.join([head, sep, *rows])


def _csv_text(means: dict[str, dict[str, float]], ranks: dict[str, float], n_pairs: int) -> str:
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator='\n')
    w.writerow(['method', *METRIC_NAMES, 'mean_rank', 'pairs'])
    for name, vals in means.items():
        w.writerow([name, *(f'{vals[k]:.6f}' for k in METRIC_NAMES), f'{ranks[name]:.4f}', n_pairs])
    return buf.getvalue()


def run(args: argparse.Namespace) -> int:
    """Evaluate; print the table; write CSV/JSON. Returns 0 (errors raise RegionFuseError)."""
    names = method_names(list(args.fused), args.names)
    pairs = select_pairs(args.thermal, args.rgb, args.stem_list, args.skip_unmatched)
    methods = prepare_methods(list(args.fused), names, pairs)
    for ref in getattr(args, 'reference', []):
        if ref in names:
            raise ConfigError(f'--reference {ref}: a --fused folder already has that name')
        methods.append(MethodResult(ref, None, {}, fuse=REFERENCE_METHODS[ref]))
    evaluate(pairs, methods)
    means = {m.name: m.means() for m in methods}
    ranks = mean_ranks(means)
    table = format_table(means, ranks)
    sys.stdout.write(f'{len(pairs)} pairs ({args.thermal} + {args.rgb})\n\n{table}\n')
    if args.csv:
        atomic_write_bytes(args.csv, _csv_text(means, ranks, len(pairs)).encode())
    if args.json:
        doc = {'metrics': list(METRIC_NAMES), 'thermal': str(args.thermal), 'rgb': str(args.rgb),
               'list': str(args.stem_list) if args.stem_list else None,
               'pairs': [p.stem for p in pairs],
               'methods': {m.name: {'folder': str(m.folder) if m.folder else f'reference {m.name}',
                                    'mean': means[m.name],
                                    'mean_rank': ranks[m.name], 'per_image': m.per_image}
                           for m in methods}}
        atomic_write_bytes(args.json, (json.dumps(doc, indent=1) + '\n').encode())
    return 0
