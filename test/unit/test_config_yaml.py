"""config/fuse.yaml, docs/node.md's parameter table and config/fuse.rviz match the code."""
from __future__ import annotations

import re
import subprocess
import sys

import pytest
import yaml

from ros2_regionfuse.core.config import NodeConfig, flatten_dict, iter_fields, to_dict
from ros2_regionfuse.ros.param_docs import TABLE_BEGIN, TABLE_END, markdown_table, params_yaml


@pytest.fixture(scope='module')
def fuse_yaml(repo) -> dict:
    data = yaml.safe_load((repo / 'config' / 'fuse.yaml').read_text())
    assert list(data) == ['/**'] and list(data['/**']) == ['ros__parameters']
    return flatten_dict(data['/**']['ros__parameters'])


def test_yaml_equals_dataclass_defaults_key_for_key(fuse_yaml) -> None:
    defaults = to_dict(NodeConfig())
    assert list(fuse_yaml) == list(defaults)          # same keys, same order
    for name, value in defaults.items():
        assert fuse_yaml[name] == value, name


def test_yaml_types_are_what_rclpy_declares(fuse_yaml) -> None:
    # rclpy rejects an integer for a double parameter: floats must be written as floats
    for spec, _ in iter_fields(NodeConfig()):
        v = fuse_yaml[spec.name]
        if spec.type is list:
            assert all(type(x) is float for x in v), spec.name
        else:
            assert type(v) is spec.type, (spec.name, type(v))


def test_every_parameter_has_a_comment(repo) -> None:
    lines = (repo / 'config' / 'fuse.yaml').read_text().splitlines()
    keyed = [(i, ln) for i, ln in enumerate(lines)
             if re.match(r'^\s+\w+: \S', ln) and 'ros__parameters' not in ln]
    assert len(keyed) == len(to_dict(NodeConfig()))
    for i, ln in keyed:
        assert lines[i - 1].strip().startswith('#'), f'no comment above {ln.strip()!r}'


def test_yaml_is_generated_text(repo) -> None:
    text = (repo / 'config' / 'fuse.yaml').read_text()
    body = text[text.index('/**:'):]
    assert body == params_yaml()[params_yaml().index('/**:'):], 'run tools/gen_param_table.py'


def test_docs_table_matches_dataclass(repo) -> None:
    doc = (repo / 'docs' / 'node.md').read_text()
    table = doc.split(TABLE_BEGIN, 1)[1].split(TABLE_END, 1)[0].strip()
    assert table == markdown_table(), 'docs/node.md is stale: run tools/gen_param_table.py'
    names = [row.split('|')[1].strip().strip('`') for row in table.splitlines()[2:]]
    assert names == list(to_dict(NodeConfig()))


def test_gen_param_table_check_mode(repo) -> None:
    res = subprocess.run([sys.executable, str(repo / 'tools' / 'gen_param_table.py'), '--check'],
                         cwd=repo, capture_output=True, text=True, timeout=60)
    assert res.returncode == 0, res.stderr


def test_rviz_config_shows_fused_and_overlay(repo) -> None:
    rviz = yaml.safe_load((repo / 'config' / 'fuse.rviz').read_text())
    displays = rviz['Visualization Manager']['Displays']
    images = {d['Topic']['Value'] for d in displays if d['Class'] == 'rviz_default_plugins/Image'}
    assert images == {'fused/image', 'fused/misregistration/overlay'}
