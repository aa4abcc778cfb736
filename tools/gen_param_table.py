#!/usr/bin/env python3
"""Regenerate the parameter table of docs/node.md and config/fuse.yaml from core/config.py.

Both are rendered from the same field specs the node declares its ROS
parameters from (ros2_regionfuse/ros/param_docs.py), so they cannot drift.

Usage:
    .venv/bin/python tools/gen_param_table.py           # rewrite both files
    .venv/bin/python tools/gen_param_table.py --check   # exit 1 if either is out of date
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from ros2_regionfuse.ros.param_docs import (  # noqa: E402
    TABLE_BEGIN,
    TABLE_END,
    markdown_table,
    params_yaml,
)

DOC = REPO / 'docs' / 'node.md'
YAML = REPO / 'config' / 'fuse.yaml'
YAML_HEADER = """\
Parameters of ros2_regionfuse's fuse_node, every one with its default (the defaults of
ros2_regionfuse/core/config.py NodeConfig; tools/gen_param_table.py writes this file and
test/unit/test_config_yaml.py checks it). Change values here or override them with
`--ros-args -p name:=value`; see docs/node.md for topics, QoS overrides and examples.
`/**` applies these to the node under any name and namespace."""


def doc_with_table(text: str) -> str:
    """Return ``text`` (docs/node.md) with the generated table between the markers.

    Raises:
        SystemExit: the markers are missing.
    """
    if TABLE_BEGIN not in text or TABLE_END not in text:
        raise SystemExit(f'{DOC}: markers {TABLE_BEGIN!r} / {TABLE_END!r} not found')
    head, rest = text.split(TABLE_BEGIN, 1)
    _, tail = rest.split(TABLE_END, 1)
    return f'{head}{TABLE_BEGIN}\n{markdown_table()}\n{TABLE_END}{tail}'


def expected_yaml() -> str:
    return params_yaml(header=YAML_HEADER)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument('--check', action='store_true', help='only check, exit 1 when out of date')
    args = p.parse_args(argv)
    targets = {DOC: doc_with_table(DOC.read_text()), YAML: expected_yaml()}
    stale = [path for path, text in targets.items() if not path.is_file() or path.read_text() != text]
    if args.check:
        for path in stale:
            sys.stderr.write(f'{path.relative_to(REPO)} is out of date: run tools/gen_param_table.py\n')
        return 1 if stale else 0
    for path in stale:
        path.write_text(targets[path])
        sys.stdout.write(f'wrote {path.relative_to(REPO)}\n')
    return 0


if __name__ == '__main__':
    sys.exit(main())
