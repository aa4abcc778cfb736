"""``regionfuse export-onnx``: export the fusion network and the corrector to ONNX (dynamic H/W).

Files go next to the weights (``NAME.level3.onnx``, ``NAME.level4.onnx`` for the
fusion network, one graph per pyramid level needed by ``--size``;
``NAME.onnx`` for the corrector, each traced at the first ``--size`` it serves)
or into ``--out DIR``. Each graph is checked
against torch on random input at its traced size (above ``--tolerance`` is an
error) and at a padded size of the same level; a graph that is not valid at
other sizes is complemented by fixed-size graphs ``NAME.HxW.onnx`` for each
``--size``.
With ``backend: onnxruntime`` the node and the CLI find these files by the
weights' name and SHA-256 (see :mod:`ros2_regionfuse.inference.onnx_runtime`).
"""
from __future__ import annotations

import argparse
import logging
from pathlib import Path

import torch

from ..core.checks import ConfigError, RegionFuseError
from ..core.config import PipelineConfig, field_specs
from ..inference import onnx_runtime as ox
from ..models.register_refuse import NAME as REGISTER_REFUSE

log = logging.getLogger(__name__)

DEFAULT_SIZES = ('640x480', '1280x1024')
TOLERANCE = 1e-4  # max abs difference ONNX vs torch on [0, 1] images


def export_model(kind: str, variant: str, checkpoint: str, sizes: list[tuple[int, int]],
                 out_dir: Path | None, tolerance: float = TOLERANCE) -> list[dict]:
    """Export the graphs ``kind``/``variant`` needs for ``sizes`` ((W, H) pairs) and check them.

    One dynamic graph per graph key (fusion level); when a graph fails the
    dynamic-size check, fixed-size graphs for each requested size are written too.

    Returns:
        One dict per file: ``path``, ``key``, ``sample``, ``bytes``, ``dynamic``,
        ``max_abs_diff`` (traced size) and ``max_abs_diff_dynamic`` (a padded size), both
        :func:`~ros2_regionfuse.inference.onnx_runtime.session_parity` differences.

    Raises:
        WeightsError: missing or corrupt weights.
        RegionFuseError: a graph differs from torch by more than ``tolerance`` at its traced size.
    """
    om = ox.OnnxModel(kind, variant, checkpoint, torch.device('cpu'))
    if om.weights is None:  # only without weights (a custom module), never here
        raise ConfigError(f'{variant}: no weights file to export')
    folder = out_dir or om.weights.parent
    rows = []

    def write(key: int, hw: tuple[int, int], fixed: bool) -> dict:
        data, meta = ox.export_onnx(om.model, kind, hw, om.export_metadata(), check_dynamic=not fixed)
        path = folder / ox.onnx_filename(om.stem, key, hw if fixed else None)
        ox.write_atomic(path, data)
        d0 = float(meta['max_abs_diff'])
        if not d0 <= tolerance:
            raise RegionFuseError(f'{path}: ONNX Runtime differs from torch by {d0:.3g} (> {tolerance:g})')
        row = {'kind': kind, 'variant': variant, 'path': str(path), 'key': key,
               'sample': f'{hw[1]}x{hw[0]}', 'bytes': path.stat().st_size,
               'dynamic': meta.get('dynamic_hw') == 'true', 'max_abs_diff': d0,
               'max_abs_diff_dynamic': float(meta.get('max_abs_diff_dynamic', 'nan'))}
        rows.append(row)
        return row

    for key in sorted({ox.graph_key(om.model, h, w) for w, h in sizes}):
        sample = next((h, w) for w, h in sizes if ox.graph_key(om.model, h, w) == key)
        row = write(key, sample, fixed=False)
        if not row['dynamic']:
            fixed = [(h, w) for w, h in sizes if ox.graph_key(om.model, h, w) == key and (h, w) != sample]
            log.warning('%s: graph %d is not valid at other sizes than the traced one (max diff %.3g): '
                        'fixed-size graphs for %s', variant, key, row['max_abs_diff_dynamic'],
                        ', '.join(f'{w}x{h}' for h, w in fixed) or 'no other size')
            for hw in fixed:
                write(key, hw, fixed=True)
    return rows


def add_arguments(p: argparse.ArgumentParser) -> None:
    """Options of ``regionfuse export-onnx``."""
    specs = field_specs(PipelineConfig())
    p.add_argument('--fusion-variant', default=specs['fusion.variant'].default)
    p.add_argument('--fusion-checkpoint', default='', help='fusion weights (default: the shipped weights)')
    p.add_argument('--corrector-variant', default=specs['corrector.variant'].default)
    p.add_argument('--corrector-checkpoint', default='',
                   help='corrector weights (default: the shipped weights)')
    p.add_argument('--only', choices=('fusion', 'corrector'), help='export one model only')
    p.add_argument('--size', action='append', metavar='WxH',
                   help=f'frame sizes the graphs must serve (repeatable; default {" ".join(DEFAULT_SIZES)})')
    p.add_argument('--out', type=Path, help='output folder (default: next to the weights)')
    p.add_argument('--tolerance', type=float, default=TOLERANCE,
                   help='largest allowed abs difference ONNX vs torch')


def run(args: argparse.Namespace) -> int:
    """Export, check and list the files."""
    from ..inference.benchmark import parse_size
    sizes = [parse_size(s) for s in (args.size or DEFAULT_SIZES)]
    if args.out is not None:
        if args.out.exists() and not args.out.is_dir():
            raise ConfigError(f'--out {args.out} is not a folder')
        args.out.mkdir(parents=True, exist_ok=True)
    jobs = []
    if args.only in (None, 'fusion'):
        jobs.append(('fusion', args.fusion_variant, args.fusion_checkpoint))
    if args.only in (None, 'corrector'):
        if args.corrector_variant == REGISTER_REFUSE:   # numpy/OpenCV: nothing to export
            print(f'{REGISTER_REFUSE}: no network to export (the corrector registers in numpy/OpenCV '
                  'and fuses again with the fusion model)')
        else:
            jobs.append(('corrector', args.corrector_variant, args.corrector_checkpoint))
    for kind, variant, ckpt in jobs:
        for r in export_model(kind, variant, ckpt, sizes, args.out, args.tolerance):
            dyn = (f"dynamic H/W (max |onnx - torch| {r['max_abs_diff_dynamic']:.2e} at a padded size)"
                   if r['dynamic'] else f"{r['sample']} only")
            print(f"{r['path']}: {r['bytes'] / 1e6:.2f} MB, graph {r['key']}, traced at {r['sample']}, "
                  f"max |onnx - torch| {r['max_abs_diff']:.2e}; serves {dyn}")
    return 0
