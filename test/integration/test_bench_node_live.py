"""``regionfuse bench-node`` end to end: node subprocess, rclpy player, rates, latency, drops, RSS."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip('rclpy')

pytestmark = [pytest.mark.ros, pytest.mark.slow]

TIMEOUT_S = 600


def test_bench_node_short_run(tmp_path) -> None:
    out = tmp_path / 'bench_node.json'
    cmd = [str(Path(sys.executable).with_name('regionfuse')), 'bench-node', '--duration', '3',
           '--warmup', '2', '--rate', '10', '--size', '320x240', '--frames', '3', '--device', 'cpu',
           '--threads', '1', '--drain', '5', '--json', str(out), '--workdir', str(tmp_path / 'work')]
    env = dict(os.environ, OMP_NUM_THREADS='1')
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=TIMEOUT_S, env=env)
    log = (tmp_path / 'work' / 'node.log').read_text(errors='replace') if (tmp_path / 'work').exists() else ''
    assert out.is_file(), res.stdout + res.stderr + log
    r = json.loads(out.read_text())
    assert res.returncode in (0, 1) and not r['error'], res.stdout + res.stderr + log
    assert r['pairs_published_total'] >= 40 and r['input_rate_hz'] == 10.0
    assert r['outputs_total'] > 0 and r['node_counters']['processed'] > 0
    lat = r['latency_ms']
    assert 0 < lat['p50'] <= lat['p95'] <= lat['max'] < 60_000
    assert r['rss_mb']['start'] > 50 and r['rss_mb']['end'] > 50
    # every pair the node formed is processed, dropped with a reason, or still in flight
    n = r['node_counters']
    drops = sum(v for k, v in r['drops'].items() if k.startswith('pair.'))
    assert n['paired'] == n['processed'] + drops + r['uncounted_pairs']
    assert all(v is not None and v >= 0 for v in r['lost_in_transport'].values())
    assert 'bench-node: 320x240 RGB at 10 Hz' in res.stdout
