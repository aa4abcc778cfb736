"""align.mode auto in the node: the rig's homography estimated from a short stream, held, reported
on /diagnostics, and estimated again through ~/recalibrate."""
from __future__ import annotations

import re
import signal
import threading
import time

import cv2
import numpy as np
import pytest

rclpy = pytest.importorskip('rclpy')

from _node_harness import RosClient, node_executable, start_node, stop_node  # noqa: E402
from diagnostic_msgs.msg import DiagnosticArray  # noqa: E402
from sensor_msgs.msg import Image  # noqa: E402
from std_msgs.msg import Header  # noqa: E402
from std_srvs.srv import Trigger  # noqa: E402

from ros2_regionfuse.core.calibration import _apply  # noqa: E402
from ros2_regionfuse.core.config import FusionConfig  # noqa: E402
from ros2_regionfuse.core.imageio import read_gray, read_rgb  # noqa: E402
from ros2_regionfuse.ros import msg_convert as mc  # noqa: E402
from ros2_regionfuse.ros.launch_args import command_line, default_params_file  # noqa: E402

FUSION = FusionConfig().variant
WH = (160, 120)   # no committed pair is upsampled at this size (full-resolution detail)
TRUTH = np.array([[1.02, 0.01, 6.0], [-0.01, 1.0, -4.0], [0.0, 0.0, 1.0]])   # thermal -> RGB
TIMEOUT_S = 120.0
REPUBLISH_S = 3.0   # s without a new registration before the same scene goes out again


def _stream(test_data) -> list[tuple[np.ndarray, np.ndarray]]:
    out = []
    for stem in ('FLIR_05005', '00537D', 'tno17'):
        rgb = cv2.resize(read_rgb(test_data / 'vi' / f'{stem}.png'), WH, interpolation=cv2.INTER_AREA)
        if rgb.ndim == 2:   # a grey visible image (TNO)
            rgb = np.repeat(rgb[..., None], 3, 2)
        t = cv2.resize(read_gray(test_data / 'ir' / f'{stem}.png', as_uint8=True), WH,
                       interpolation=cv2.INTER_AREA)
        out.append((cv2.warpPerspective(t, TRUTH, WH, flags=cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP), rgb))
    return out


def _alignment(msg: DiagnosticArray) -> tuple[str, str] | None:
    for st in msg.status:
        if st.name.endswith(': alignment'):
            return {kv.key: kv.value for kv in st.values}['state'], st.message
    return None


def _homography(message: str) -> np.ndarray:
    inside = message[message.index('homography [') + len('homography ['):]
    return np.array([float(v) for v in inside[:inside.index(']')].split(',')]).reshape(3, 3)


def test_auto_mode_estimates_holds_and_recalibrates(tmp_path, test_data) -> None:
    import torch

    from ros2_regionfuse.core.weights import save_weights
    from ros2_regionfuse.models.registry import build_fusion
    torch.manual_seed(0)
    ckpt = tmp_path / f'{FUSION}.safetensors'
    save_weights(build_fusion(FUSION), ckpt, {'variant': FUSION})
    cmd = command_line(node_executable(), {'params_file': default_params_file(), 'device': 'cpu',
                                           'namespace': 'aa'})
    cmd += ['-p', f'fusion.checkpoint:={ckpt}', '-p', 'corrector.enabled:=false', '-p', 'threads:=1',
            '-p', 'align.mode:=auto', '-p', 'align.auto_frames:=3', '-p', 'align.auto_every:=1',
            '-p', 'diagnostics.period:=0.25']
    proc = start_node(cmd, tmp_path / 'node.log')
    client = RosClient('auto_client')
    stop = threading.Event()
    try:
        client.subscribe(DiagnosticArray, '/diagnostics', 'diag')
        pt = client.publisher(Image, '/aa/thermal/image_raw')
        pr = client.publisher(Image, '/aa/rgb/image_raw')
        frames = _stream(test_data)

        def registered() -> int:
            """Pairs the node has registered so far (from the last alignment status; -1 before any)."""
            for m in reversed(list(client.collector.msgs['diag'])):   # a copy: the spin thread appends
                a = _alignment(m)
                if a is not None:
                    found = re.search(r'\((\d+) registered\)', a[1])
                    return int(found.group(1)) if found else -1
            return -1

        def play() -> None:
            # One scene at a time: the next scene goes out once the node has registered the last
            # one, so the estimate sees the three scenes whatever the calibration thread's speed
            # (a free-running stream can line up with it and offer one scene every time).
            sec, last_n, last_pub = 1, None, 0.0
            while not stop.is_set():
                n = registered()
                if n != last_n or time.monotonic() - last_pub > REPUBLISH_S:
                    t, rgb = frames[max(n, 0) % len(frames)]
                    h = Header(frame_id='rgb_optical')
                    h.stamp.sec = sec
                    pt.publish(mc.array_to_image(t, 'mono8', h))
                    pr.publish(mc.array_to_image(rgb, 'rgb8', h))
                    sec, last_n, last_pub = sec + 1, n, time.monotonic()
                time.sleep(0.05)
        player = threading.Thread(target=play, daemon=True)
        player.start()

        def state(want: str, after: int = 0):
            def pred():
                for m in client.collector.msgs['diag'][after:]:
                    a = _alignment(m)
                    if a is not None and a[0] == want:
                        return a
                return None
            return client.collector.wait(lambda: pred() or (proc.poll() is not None and ('dead', '')),
                                         TIMEOUT_S)
        assert state('collecting'), 'no alignment status: ' + stop_node(proc)[1][-2000:]
        fixed = state('fixed')
        assert fixed and fixed[0] == 'fixed', stop_node(proc)[1][-3000:]
        h = _homography(fixed[1])
        xs, ys = np.meshgrid(np.linspace(0, WH[0] - 1, 9), np.linspace(0, WH[1] - 1, 7))
        p = np.stack([xs.ravel(), ys.ravel()], 1)
        assert float(np.hypot(*(_apply(h, p) - _apply(TRUTH, p)).T).mean()) < 1.0   # px at 160x120
        # ~/recalibrate: a new estimate (collecting again), then fixed again
        srv = client.node.create_client(Trigger, '/aa/regionfuse/recalibrate')
        assert srv.wait_for_service(timeout_sec=30.0)
        n = client.collector.count('diag')
        future = srv.call_async(Trigger.Request())
        done = client.collector.wait(lambda: future.done(), 30.0)
        assert done and future.result().success, future.result()
        assert state('collecting', n), 'recalibrate did not restart the estimate'
        again = state('fixed', n)
        assert again and again[0] == 'fixed'
    finally:
        stop.set()
        client.close()
        rc, log = stop_node(proc, signal.SIGINT, timeout=20.0)
    assert rc == 0 and 'Traceback' not in log, log[-2000:]
    assert 'align.mode=auto: homography' in log
