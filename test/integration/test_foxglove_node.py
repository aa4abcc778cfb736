"""The node's Foxglove live view (``viz.foxglove``): a local client receives the fused image."""
from __future__ import annotations

import signal
import socket
import time

import numpy as np
import pytest

rclpy = pytest.importorskip('rclpy')

from _node_harness import RosClient, load_pair, node_executable, start_node, stop_node, thermal_counts  # noqa: E402
from sensor_msgs.msg import Image  # noqa: E402
from std_msgs.msg import Header  # noqa: E402

from ros2_regionfuse.core.config import FusionConfig  # noqa: E402
from ros2_regionfuse.ros import msg_convert as mc  # noqa: E402
from ros2_regionfuse.ros.launch_args import command_line, default_params_file  # noqa: E402

FUSION = FusionConfig().variant
STARTUP_S = 90.0


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(('127.0.0.1', 0))
        return int(s.getsockname()[1])


def test_node_serves_the_fused_image_to_a_foxglove_client(tmp_path, foxglove_client) -> None:
    import threading

    import torch

    from ros2_regionfuse.core.weights import save_weights
    from ros2_regionfuse.models.registry import build_fusion
    torch.manual_seed(0)
    ckpt = tmp_path / f'{FUSION}.safetensors'
    save_weights(build_fusion(FUSION), ckpt, {'variant': FUSION})
    port = _free_port()
    cmd = command_line(node_executable(), {'params_file': default_params_file(), 'device': 'cpu',
                                           'namespace': 'fg'})
    cmd += ['-p', f'fusion.checkpoint:={ckpt}', '-p', 'corrector.enabled:=false', '-p', 'threads:=1',
            '-p', 'viz.foxglove:=true', '-p', f'viz.foxglove_port:={port}', '-p', 'viz.foxglove_rate:=20.0']
    proc = start_node(cmd, tmp_path / 'node.log')
    client = RosClient('fg_client')
    stop = threading.Event()
    try:
        pt = client.publisher(Image, '/fg/thermal/image_raw')
        pr = client.publisher(Image, '/fg/rgb/image_raw')
        t8, rgb = load_pair()
        thermal = thermal_counts(t8)

        def play() -> None:
            sec = 1
            while not stop.is_set():
                h = Header(frame_id='rgb_optical')
                h.stamp.sec = sec
                pt.publish(mc.array_to_image(thermal, 'mono16', h))
                pr.publish(mc.array_to_image(rgb, 'rgb8', h))
                sec += 1
                time.sleep(0.1)
        player = threading.Thread(target=play, daemon=True)
        player.start()
        deadline = time.monotonic() + STARTUP_S
        log = tmp_path / 'node.log'
        while f'ws://127.0.0.1:{port}' not in log.read_text(errors='replace'):   # the logged URL
            assert proc.poll() is None and time.monotonic() < deadline, stop_node(proc)[1][-2000:]
            time.sleep(0.2)
        got = foxglove_client.receive(f'ws://127.0.0.1:{port}', ['/fused/image', '/fused/status'],
                                      timeout=60.0)
        img = foxglove_client.jpeg(got['/fused/image'][0])
        assert img.shape == rgb.shape and float(np.ptp(img)) > 0
        assert b'"fusion"' in got['/fused/status'][0]
    finally:
        stop.set()
        client.close()
        rc, log_text = stop_node(proc, signal.SIGINT, timeout=20.0)
    assert rc == 0 and 'Traceback' not in log_text, log_text[-2000:]
