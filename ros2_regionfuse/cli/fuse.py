r"""``regionfuse fuse``: fuse thermal + RGB image files or folders offline.

Builds :class:`~ros2_regionfuse.inference.pipeline.FusionPipeline` from a
:class:`~ros2_regionfuse.core.config.PipelineConfig` (defaults, then
``--config`` YAML, then flags), runs every pair and writes

* ``OUT/<stem>.png``: the colour fused image (corrected unless ``--no-correct``);
* with ``--save-maps``: ``OUT/maps/<stem>_raw.png`` (before correction), and when
  the corrector ran ``<stem>_misreg.png`` (M as 8-bit), ``<stem>_misreg.npy``
  (``(H, W)`` float32 in [0, 1]) and ``<stem>_flow.npy`` (``(H, W, 2)`` float32
  pixels, x then y);
* ``OUT/regionfuse_fuse.json``: the resolved configuration, the model names,
  the pairs and the median stage timings.

Bad input stops the run with exit status 2 and a message naming the file; the
outputs of the failing pair are not written (every file is written through a
temporary file and a rename, and a pair's files are removed again if one of
them cannot be written), the pairs before it keep their complete outputs.

Example:
    regionfuse fuse --thermal test/data/ir --rgb test/data/vi --out out/fused \
        --fusion-checkpoint my.safetensors --no-correct
"""
from __future__ import annotations

import argparse
import json
import logging
import statistics
import sys
from pathlib import Path
from typing import Any

import numpy as np
import yaml
from tqdm import tqdm

from ..core import convert
from ..core.checks import ConfigError, ImageIOError, RegionFuseError
from ..core.config import NodeConfig, PipelineConfig, check_offline, to_dict, update_from_dict
from ..core.imageio import (
    ImagePair,
    atomic_write_bytes,
    encode_npy,
    encode_png,
    match_pairs,
    read_gray,
    read_rgb,
)

log = logging.getLogger(__name__)

_MAX_LISTED = 10  # files named in a message before "... and N more"
MAPS_DIR = 'maps'
RUN_RECORD = 'regionfuse_fuse.json'


def add_arguments(p: argparse.ArgumentParser) -> None:
    """Options of ``regionfuse fuse``; options left unset keep the config file's value."""
    p.add_argument('--thermal', type=Path, required=True, help='thermal image file or folder')
    p.add_argument('--rgb', type=Path, required=True, help='RGB image file or folder')
    p.add_argument('--out', type=Path, required=True, help='output folder')
    p.add_argument('--config', type=Path, metavar='YAML',
                   help='parameter file (the node\'s fuse.yaml, ros__parameters or plain, '
                        'or a flat {name: value} map); flags override it')
    p.add_argument('--device', choices=('auto', 'cpu', 'cuda'), help='inference device (default: auto)')
    p.add_argument('--threads', type=int, metavar='N', help='CPU threads (0 = library default)')
    p.add_argument('--fusion-checkpoint', metavar='FILE', help='fusion weights (.safetensors)')
    p.add_argument('--corrector-checkpoint', metavar='FILE', help='corrector weights (.safetensors)')
    p.add_argument('--no-correct', action='store_true', help='skip the post-registration corrector')
    p.add_argument('--save-maps', action='store_true',
                   help='also write the uncorrected fusion and the misregistration/flow maps to OUT/maps')
    p.add_argument('--skip-unmatched', action='store_true',
                   help='fuse the matched pairs even if some files have no partner (they are listed); '
                        'without it, unmatched files are an error')


def _listing(items: list) -> str:
    shown = ', '.join(str(i) for i in items[:_MAX_LISTED])
    more = len(items) - _MAX_LISTED
    return shown + (f' ... and {more} more' if more > 0 else '')


def load_config_file(path: Path) -> NodeConfig:
    """Read a YAML parameter file into a :class:`NodeConfig` (unknown names are errors).

    Accepts the ROS 2 parameter-file layout (``node_name: {ros__parameters: {...}}``,
    nested or dotted names) and a plain mapping of the same names.

    Raises:
        ConfigError: unreadable file, not a mapping, unknown name or invalid value.
    """
    try:
        data = yaml.safe_load(path.read_text())
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as e:
        raise ConfigError(f'{path}: cannot read the parameter file ({e})') from e
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f'{path}: expected a mapping of parameters, got {type(data).__name__}')
    ros_sections = [v['ros__parameters'] for v in data.values()
                    if isinstance(v, dict) and isinstance(v.get('ros__parameters'), dict)]
    params: dict[str, Any] = {}
    if ros_sections:
        for sec in ros_sections:
            params.update(sec)
    else:
        params = data
    try:
        return update_from_dict(NodeConfig(), params)
    except ConfigError as e:
        raise ConfigError(f'{path}: {e}') from e


def build_config(args: argparse.Namespace) -> PipelineConfig:
    """Defaults, then ``--config``, then the command-line flags."""
    cfg = load_config_file(args.config).pipeline if args.config else PipelineConfig()
    flags = {'device': args.device, 'threads': args.threads,
             'fusion.checkpoint': args.fusion_checkpoint,
             'corrector.checkpoint': args.corrector_checkpoint}
    update_from_dict(cfg, {k: v for k, v in flags.items() if v is not None})
    if args.no_correct:
        cfg.corrector.enabled = False
    check_offline(cfg)
    for name, ckpt in (('--fusion-checkpoint', cfg.fusion.checkpoint),
                       ('--corrector-checkpoint', cfg.corrector.checkpoint if cfg.corrector.enabled else '')):
        if ckpt and not Path(ckpt).is_file():
            raise ConfigError(f'{name}: {ckpt} not found')
    return cfg


def select_pairs(thermal: Path, rgb: Path, skip_unmatched: bool) -> list[ImagePair]:
    """Match the inputs; unmatched files are an error unless ``skip_unmatched``.

    Raises:
        ImageIOError: unmatched files (listed), or no pair at all.
    """
    pairs, unmatched = match_pairs(thermal, rgb)
    if unmatched:
        msg = f'{len(unmatched)} file(s) without a partner: {_listing(unmatched)}'
        if not skip_unmatched:
            raise ImageIOError(f'{msg} (nothing written; use --skip-unmatched to fuse the '
                               f'{len(pairs)} matched pair(s))')
        log.warning('%s; skipped', msg)
    if not pairs:
        raise ImageIOError(f'no thermal/RGB pairs found in {thermal} and {rgb}')
    return pairs


def check_no_overwrite(pairs: list[ImagePair], out: Path) -> None:
    """Refuse to run when an output file would replace one of the input images.

    Raises:
        ConfigError: naming the input that would be overwritten.
    """
    inputs = {p.resolve() for pair in pairs for p in (pair.thermal, pair.rgb)}
    for pair in pairs:
        for target in (out / f'{pair.stem}.png', out / MAPS_DIR / f'{pair.stem}_raw.png'):
            if target.resolve() in inputs:
                raise ConfigError(f'--out {out}: the output {target} would overwrite an input image; '
                                  f'choose another folder')


def pair_outputs(pair: ImagePair, res: Any, out: Path, save_maps: bool) -> list[tuple[Path, bytes]]:
    """Encode every output file of one pair (nothing is written here).

    Args:
        pair: the input pair (its stem names the outputs).
        res: the :class:`~ros2_regionfuse.inference.pipeline.FusionResult`.
        out: output folder.
        save_maps: include the raw fusion and the corrector's maps.

    Returns:
        ``[(path, bytes)]``, the main image last.
    """
    files: list[tuple[Path, bytes]] = []
    if save_maps:
        maps = out / MAPS_DIR
        files.append((maps / f'{pair.stem}_raw.png', encode_png(res.fused_raw, 'fused_raw')))
        if res.misregistration is not None:
            m = np.asarray(res.misregistration, dtype=np.float32)
            files.append((maps / f'{pair.stem}_misreg.png', encode_png(convert.unit_to_uint8(m), 'misreg')))
            files.append((maps / f'{pair.stem}_misreg.npy', encode_npy(m)))
        if res.flow is not None:
            files.append((maps / f'{pair.stem}_flow.npy', encode_npy(np.asarray(res.flow, dtype=np.float32))))
    files.append((out / f'{pair.stem}.png', encode_png(res.fused, 'fused')))
    return files


def write_pair(files: list[tuple[Path, bytes]]) -> None:
    """Write a pair's files; if one fails, remove those already written and re-raise."""
    done: list[Path] = []
    try:
        for path, data in files:
            atomic_write_bytes(path, data)
            done.append(path)
    except BaseException:
        for path in done:
            path.unlink(missing_ok=True)
        raise


def fuse_pair(pipe: Any, pair: ImagePair, correct: bool) -> Any:
    """Read one pair and run the pipeline; errors are re-raised naming the files.

    Raises:
        RegionFuseError: unreadable/empty/NaN input (the message names the file).
    """
    thermal = read_gray(pair.thermal)
    rgb = read_rgb(pair.rgb)
    try:
        return pipe.process(thermal, rgb, correct=correct)
    except RegionFuseError as e:
        raise type(e)(f'{pair.thermal} + {pair.rgb}: {e}') from e


def run(args: argparse.Namespace) -> int:
    """Fuse every pair; returns 0 (bad input raises RegionFuseError -> exit status 2)."""
    from ..inference.pipeline import FusionPipeline  # torch import only when this command runs
    cfg = build_config(args)
    pairs = select_pairs(args.thermal, args.rgb, args.skip_unmatched)
    if args.out.exists() and not args.out.is_dir():
        raise ImageIOError(f'--out: {args.out} exists and is not a folder')
    check_no_overwrite(pairs, args.out)
    correct = cfg.corrector.enabled
    if args.save_maps and not correct:
        log.info('--save-maps with --no-correct: only the raw fusion is saved (no misregistration maps)')
    pipe = FusionPipeline(cfg)
    log.info('fusion %s, corrector %s, device %s, %d pair(s)', pipe.fusion_name,
             pipe.corrector_name or 'off', pipe.device, len(pairs))
    timings: dict[str, list[float]] = {}
    for pair in tqdm(pairs, desc='fuse', unit='pair', disable=True if len(pairs) < 2 else None):
        res = fuse_pair(pipe, pair, correct)
        write_pair(pair_outputs(pair, res, args.out, args.save_maps))
        for k, v in res.timings_ms.items():
            timings.setdefault(k, []).append(v)
    record = {'command': ['regionfuse', 'fuse', *sys.argv[2:]] if sys.argv[1:2] == ['fuse'] else None,
              'config': to_dict(cfg), 'fusion': pipe.fusion_name,
              'corrector': pipe.corrector_name if correct else None, 'device': str(pipe.device),
              'pairs': [{'stem': p.stem, 'thermal': str(p.thermal), 'rgb': str(p.rgb)} for p in pairs],
              'median_ms': {k: statistics.median(v) for k, v in timings.items()}}
    atomic_write_bytes(args.out / RUN_RECORD, (json.dumps(record, indent=1) + '\n').encode())
    sys.stdout.write(f'fused {len(pairs)} pair(s) into {args.out} '
                     f'(median total {record["median_ms"].get("total", float("nan")):.1f} ms per pair)\n')
    return 0
