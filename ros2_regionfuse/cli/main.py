"""``regionfuse``: the package's command-line tool.

Each subcommand lives in its own module of this package, exposing
``add_arguments(parser)`` and ``run(args) -> int``; modules are imported only
when their subcommand runs (so ``regionfuse --help`` stays fast and ROS-free).
"""
from __future__ import annotations

import argparse
import importlib
import logging
import sys

from ..core.allocator import retain_freed_memory
from ..core.checks import RegionFuseError

# subcommand -> (module in ros2_regionfuse.cli, one-line help)
SUBCOMMANDS: dict[str, tuple[str, str]] = {
    'fuse': ('fuse', 'fuse thermal+RGB image files or folders'),
    'eval': ('evaluate', 'fusion quality metrics (EN SD SF AG MI SCD VIF Qabf SSIM) of folders'),
    'eval-registration': ('eval_registration', 'corrector vs ECC vs none on synthetic misalignment'),
    'train-fusion': ('train_fusion', 'train the region-adaptive fusion network'),
    'train-corrector': ('train_corrector', 'train the post-registration corrector'),
    'bench': ('bench', 'time the pipeline stages against reference configurations'),
    'bench-node': ('bench_node', 'time the running node end to end over loopback DDS'),
    'bench-sizes': ('bench_sizes', 'per-pair cost of a mixed-size folder against a fixed-size one'),
    'export-onnx': ('export_onnx', 'export fusion and corrector to ONNX'),
    'bag': ('bag', 'fuse a whole ROS 2 bag offline'),
    'calibrate': ('calibrate', "the rig's thermal->RGB homography from its own recordings"),
    'eval-calibration': ('eval_calibration', 'calibrate on synthetic rigs with a known homography'),
    'make-sample-bag': ('make_sample_bag', 'build the bundled demo recording from ../shared data'),
    'demo': ('demo', 'play the bundled recording through the node and summarise'),
}


def build_parser() -> argparse.ArgumentParser:
    """The top-level parser; subcommand options are added on demand."""
    p = argparse.ArgumentParser(prog='regionfuse', description=__doc__.splitlines()[0])
    p.add_argument('-v', '--verbose', action='store_true', help='debug logging')
    sub = p.add_subparsers(dest='command', metavar='COMMAND')
    for name, (_, help_) in SUBCOMMANDS.items():
        sub.add_parser(name, help=help_, add_help=False)
    return p


def main(argv: list[str] | None = None) -> int:
    """Entry point; returns the process exit status (2 for bad input/config)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    top = build_parser()
    ns, rest = top.parse_known_args(argv)
    logging.basicConfig(level=logging.DEBUG if ns.verbose else logging.INFO,
                        format='%(levelname)s %(name)s: %(message)s')
    if ns.command is None:
        top.print_help()
        return 0
    retain_freed_memory()   # glibc: reuse freed frame buffers instead of page-faulting them in again
    mod_name, help_ = SUBCOMMANDS[ns.command]
    mod = importlib.import_module(f'{__package__}.{mod_name}')
    p = argparse.ArgumentParser(prog=f'regionfuse {ns.command}', description=help_)
    mod.add_arguments(p)
    args = p.parse_args(rest)
    try:
        return int(mod.run(args) or 0)
    except RegionFuseError as e:
        print(f'regionfuse {ns.command}: error: {e}', file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f'regionfuse {ns.command}: interrupted', file=sys.stderr)
        return 130


if __name__ == '__main__':
    sys.exit(main())
