"""``regionfuse bench``: time the pipeline stages against reference configurations.

The command line of :mod:`ros2_regionfuse.inference.benchmark` (what is measured, on
which inputs, and why: see there); this module parses the options, prints the report
and writes the JSON.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from ..core.checks import ConfigError
from ..core.config import PipelineConfig, field_specs
from ..inference.benchmark import DEFAULTS, STAGES, parse_size, run_bench

__all__ = ['add_arguments', 'format_report', 'parse_size', 'run']


def format_report(rep: dict[str, Any]) -> str:
    """Human-readable tables of a :func:`run_bench` report."""
    m = rep['machine']
    c = rep['config']
    lines = [f"machine: {m['cpu']}, {m['cpus_available']} CPUs, torch {m['torch']} "
             f"({c['threads']} threads), device {c['device']}, backend {c['backend']}, "
             f"precision {c['precision']}",
             f"native kernels: {c.get('native_kernels', 'n/a')}",
             f"data: {rep['data']['source']} ({len(rep['data']['frames'])} frames, thermal "
             f"{rep['data']['thermal_size'][0]}x{rep['data']['thermal_size'][1]})",
             f"fusion: {rep['models']['fusion']['name']} ({rep['models']['fusion']['weights']}); "
             f"corrector: {rep['models']['corrector']['name']} ({rep['models']['corrector']['weights']})",
             '']
    for key, res in rep['sizes'].items():
        st = res.get('stages_ms')
        if st:
            lines.append(f'{key}: pipeline stages, ms (n={st["total"]["n"]})')
            lines.append(f'  {"stage":<12s} {"median":>9s} {"p95":>9s}')
            for k in STAGES:
                lines.append(f'  {k:<12s} {st[k]["median"]:9.2f} {st[k]["p95"]:9.2f}')
            if 'align_concurrent' in st:
                ga = st['align_concurrent']['median']
                lines.append(f"  (the corrector's source-only work, {ga:.2f} ms (its registration; for a "
                             "learned corrector also its learned stages' source part), ran on a helper "
                             'thread during the fusion: corrector.align_stage auto)')
            u = res.get('corrector_unchanged')
            if u:
                lines.append(f'  (corrector left {u["frames"]} of {u["of"]} timed frames unchanged: found '
                             'aligned or not confidently registered)')
            for kind, cost in res['cost'].items():
                lines.append(f'  {kind:<12s} {cost["gflops"]:9.2f} GFLOPs {cost["params"]:>9,d} params')
        for name, r in res.get('references', {}).items():
            lines.append(f'  ref {name:<18s} median {r["median"]:10.1f} ms (n={r["n"]}, {r["layout"]}), '
                         f'{r["gflops"]:.1f} GFLOPs, {r["params"]:,d} params')
        for name, v in res.get('ratios', {}).items():
            by_round = res.get('ratios_by_round', {}).get(name)
            rounds = f"   (by round: {', '.join(f'{x:.1f}x' for x in by_round)})" if by_round else ''
            lines.append(f'  {name:<30s} {v:8.1f}x{rounds}')
        lines.append('')
    lines.append(f"peak RSS: {rep['peak_rss_mb_pipeline']:.0f} MiB (pipeline), "
                 f"{rep['peak_rss_mb_total']:.0f} MiB (with references)")
    tg = rep['targets']
    lines.append(f"targets at {tg['size']}:")
    for k, v in tg.items():
        if isinstance(v, dict):
            val = 'not measured' if v['value'] is None else f"{v['value']:.2f}"
            verdict = {None: '-', True: 'PASS', False: 'FAIL'}[v['pass']]
            lines.append(f'  {k:<30s} {val:>12s} (target {v["target"]}) {verdict}')
    return '\n'.join(lines)


# ---------------------------------------------------------------------------
# CLI
# ---------------------------------------------------------------------------

def add_arguments(p: argparse.ArgumentParser) -> None:
    """Options of ``regionfuse bench``."""
    specs = field_specs(PipelineConfig())
    d = DEFAULTS
    p.add_argument('--size', action='append', metavar='WxH',
                   help=f'frame size to time (repeatable; default {" ".join(d.sizes)})')
    p.add_argument('--threads', type=int, default=2,
                   help='CPU threads for inference (default 2: the robot budget; 0 = library default)')
    p.add_argument('--device', default='cpu', choices=specs['device'].choices, help=specs['device'].help)
    p.add_argument('--backend', default='torch', choices=specs['backend'].choices,
                   help=specs['backend'].help)
    if 'precision' in specs:
        p.add_argument('--precision', default=specs['precision'].default, choices=specs['precision'].choices,
                       help=specs['precision'].help)
    p.add_argument('--repeats', type=int, default=d.repeats, help='timed pipeline runs per size (>= 1)')
    p.add_argument('--warmup', type=int, default=d.warmup, help='untimed pipeline runs per size first')
    p.add_argument('--reference-repeats', type=int, default=d.reference_repeats,
                   help='timed runs of each reference (they take seconds each)')
    p.add_argument('--rounds', type=int, default=d.rounds,
                   help='rounds in which the pipeline and the references alternate at the reference '
                        'size (at most --reference-repeats and --repeats), so a drift of the machine '
                        'speed affects both sides of the ratios alike')
    p.add_argument('--reference-sizes', action='append', metavar='WxH',
                   help='sizes at which the references are timed (default: the first --size)')
    p.add_argument('--no-reference', action='store_true', help='skip the reference models')
    p.add_argument('--no-native', action='store_true',
                   help="time the pipeline without its fused C kernels (native_kernels: false), "
                        "for comparison")
    p.add_argument('--fusion-variant', default=specs['fusion.variant'].default, help='fusion variant')
    p.add_argument('--corrector-variant', default=specs['corrector.variant'].default,
                   help='corrector variant')
    p.add_argument('--fusion-checkpoint', default='', help='fusion weights (default: shipped, else random)')
    p.add_argument('--corrector-checkpoint', default='',
                   help='corrector weights (default: shipped, else random)')
    p.add_argument('--data', type=Path, help='frames: folder with ir/ and vi/, or a ROS 2 bag '
                   '(default: the bundled recording, else test/data, else ../shared MSRS)')
    p.add_argument('--pairs', type=int, default=d.max_pairs, help='distinct frames cycled through')
    p.add_argument('--seed', type=int, default=d.seed, help='seed of random initialisations')
    p.add_argument('--json', type=Path, help='write the full report as JSON to this file')


def run(args: argparse.Namespace) -> int:
    """Run the benchmark, print the tables, write the JSON."""
    if args.repeats < 1 or args.reference_repeats < 1 or args.warmup < 0 or args.pairs < 1 or args.rounds < 1:
        raise ConfigError('--repeats, --reference-repeats, --rounds and --pairs must be >= 1, --warmup >= 0')
    if args.threads < 0:
        raise ConfigError('--threads must be >= 0')
    args.argv = sys.argv[sys.argv.index('bench') + 1:] if 'bench' in sys.argv[1:] else []
    report = run_bench(args)
    print(format_report(report))
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        tmp = args.json.with_name(args.json.name + '.tmp')
        tmp.write_text(json.dumps(report, indent=1, default=str))
        tmp.replace(args.json)
        print(f'report written to {args.json}')
    return 0
