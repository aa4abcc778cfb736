"""``regionfuse demo`` end to end: node subprocess, rclpy player/recorder, bag, mosaics, summary."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest

pytest.importorskip('rclpy')
pytest.importorskip('rosbags')

from ros2_regionfuse.core import bagio  # noqa: E402
from ros2_regionfuse.core.config import CorrectorConfig, FusionConfig  # noqa: E402
from ros2_regionfuse.core.weights import save_weights, shipped_weights  # noqa: E402

CORRECTOR = CorrectorConfig().variant   # the default corrector variant
FUSION = FusionConfig().variant   # the default fusion variant

pytestmark = [pytest.mark.ros, pytest.mark.slow]

FRAMES = 10
TILE_W = 160
TIMEOUT_S = 600


@pytest.fixture(scope='module')
def checkpoint_args(tmp_path_factory) -> list[str]:
    """The shipped weights when both exist, else untrained checkpoints passed as node parameters."""
    from ros2_regionfuse.models.registry import build_corrector, build_fusion, needs_weights
    corrector = needs_weights('corrector', CORRECTOR)
    if shipped_weights(FUSION).is_file() and (not corrector or shipped_weights(CORRECTOR).is_file()):
        return []
    import torch
    d = tmp_path_factory.mktemp('ckpt')
    torch.manual_seed(0)
    save_weights(build_fusion(FUSION), d / 'f.safetensors', {'variant': FUSION})
    args = ['--fusion-checkpoint', str(d / 'f.safetensors')]
    if corrector:
        save_weights(build_corrector(CORRECTOR), d / 'c.safetensors', {'variant': CORRECTOR})
        args += ['--corrector-checkpoint', str(d / 'c.safetensors')]
    return args


@pytest.fixture(scope='module')
def demo_run(tmp_path_factory, checkpoint_args) -> tuple[subprocess.CompletedProcess, Path]:
    out = tmp_path_factory.mktemp('demo')
    cmd = [str(Path(sys.executable).with_name('regionfuse')), 'demo', '--out', str(out),
           '--max-frames', str(FRAMES), '--tile-width', str(TILE_W), '--device', 'cpu',
           '--param', 'threads:=1', *checkpoint_args]
    env = dict(os.environ, OMP_NUM_THREADS='1')
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=TIMEOUT_S, env=env)
    return res, out


def test_demo_exits_zero_and_accounts_for_every_frame(demo_run) -> None:
    res, out = demo_run
    assert res.returncode == 0, res.stdout + res.stderr + (out / 'node.log').read_text()
    s = json.loads((out / 'summary.json').read_text())
    assert s['frames_in'] == {'thermal': FRAMES, 'rgb': FRAMES}
    n = s['node']
    for cam in ('thermal', 'rgb'):
        assert n['received'][cam] + n['lost_in_transport'][cam] == FRAMES
        assert n['received'][cam] == n['paired'] + sum(n['unpaired'][cam].values()) + n['left_in_queue'][cam]
    assert n['paired'] == n['processed'] + sum(n['pair_drops'].values())
    assert s['accounted'] is True
    assert n['processed'] >= 1 and n['exit_status'] == 0
    # the node warmed up at the recording's RGB size while configuring, so the first seconds of
    # pairs are not dropped behind the first pair's one-time builds (without: 6 of 25 processed)
    assert 'warm-up at 448x336' in (out / 'node.log').read_text()
    assert n['processed'] >= max(1, n['paired'] // 2), n
    assert s['outputs']['fused_images'] == n['processed']  # reliable recorder: every output kept
    assert s['outputs']['statuses'] == n['processed']
    assert s['outputs']['diagnostics'] >= 1
    lat = s['latency_ms']
    assert 0.0 < lat['p50'] <= lat['p95'] < 60_000.0
    assert np.isfinite(s['misregistration']['mean_shift_px'])
    assert s['misregistration']['ground_truth_mean_shift_px'] == pytest.approx(6.11, abs=0.01)
    assert 'paired' in res.stdout and 'latency' in res.stdout and 'processed' in res.stdout


def test_output_bag_headers_copy_the_rgb_input(demo_run) -> None:
    res, out = demo_run
    assert res.returncode == 0
    topics = bagio.bag_topics(out / 'bag')
    assert topics['/rgb/image_raw'].count == FRAMES and topics['/thermal/image_raw'].count == FRAMES
    rgb = {}
    fused = []
    for m in bagio.read_messages(out / 'bag', ['/rgb/image_raw', '/fused/image', '/fused/status']):
        msg = m.decode()
        stamp = (bagio.time_to_ns(msg.header.stamp), msg.header.frame_id)
        if m.topic == '/rgb/image_raw':
            rgb[stamp] = bagio.image_array(msg)
        elif m.topic == '/fused/image':
            fused.append((stamp, msg))
    assert fused
    for stamp, msg in fused:
        assert stamp in rgb, f'fused/image header {stamp} matches no RGB input'
        assert (msg.width, msg.height, msg.encoding) == (rgb[stamp].shape[1], rgb[stamp].shape[0], 'bgr8')


def test_mosaics_and_gif(demo_run) -> None:
    res, out = demo_run
    assert res.returncode == 0
    s = json.loads((out / 'summary.json').read_text())
    pngs = sorted((out / 'mosaic').glob('frame_*.png'))
    assert len(pngs) == s['outputs']['mosaics'] == s['outputs']['fused_images']
    img = cv2.imread(str(pngs[0]))
    assert img.shape == (round(TILE_W * 336 / 448), 4 * TILE_W, 3)  # thermal | RGB | fused | overlay
    tiles = [img[:, i * TILE_W:(i + 1) * TILE_W] for i in range(4)]
    assert all(t.std() > 1.0 for t in tiles)  # every tile holds an image
    assert (out / 'demo.gif').stat().st_size > 0


def test_demo_fails_clearly_when_the_node_cannot_start(tmp_path) -> None:
    cmd = [str(Path(sys.executable).with_name('regionfuse')), 'demo', '--out', str(tmp_path),
           '--max-frames', '2', '--fusion-checkpoint', str(tmp_path / 'missing.safetensors')]
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=TIMEOUT_S)
    assert res.returncode == 1
    assert 'FAILED' in res.stderr and 'missing.safetensors' in res.stderr
