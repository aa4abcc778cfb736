"""Helpers for the live fuse_node tests: start/stop the node process, a client node, test images.

The node runs as a subprocess with the same executable, params file and remaps
the launch file uses (ros2_regionfuse.ros.launch_args.command_line); the
environment comes from test/conftest.py (own ROS_DOMAIN_ID, LOCALHOST
discovery, loopback Fast DDS profile). Every wait is bounded.
"""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path
from typing import Any

import cv2
import numpy as np

REPO = Path(__file__).resolve().parents[2]
TEST_DATA = REPO / 'test' / 'data'
SHARED = REPO.parent / 'shared' / 'data' / 'ivif'


def node_executable() -> str:
    """The ``fuse_node`` console script of the running interpreter's environment."""
    exe = Path(sys.executable).with_name('fuse_node')
    if not exe.is_file():
        raise FileNotFoundError(f'{exe} not found: run make setup')
    return str(exe)


def start_node(cmd: list[str], log: Path) -> subprocess.Popen:
    """Start the node; stdout and stderr go to ``log`` (no pipe that could fill up)."""
    fh = open(log, 'w')  # noqa: SIM115 - closed by stop_node
    env = dict(os.environ, PYTHONUNBUFFERED='1', OMP_NUM_THREADS='1', RCUTILS_COLORIZED_OUTPUT='0')
    proc = subprocess.Popen(cmd, stdout=fh, stderr=subprocess.STDOUT, env=env, cwd=REPO)
    proc._log_handle = fh  # type: ignore[attr-defined]
    proc._log_path = log  # type: ignore[attr-defined]
    return proc


def stop_node(proc: subprocess.Popen, sig: int = signal.SIGINT, timeout: float = 30.0) -> tuple[int, str]:
    """Signal the node, wait (bounded), kill if needed; return ``(returncode, log text)``."""
    if proc.poll() is None:
        proc.send_signal(sig)
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)
    proc._log_handle.close()  # type: ignore[attr-defined]
    return proc.returncode, Path(proc._log_path).read_text()  # type: ignore[attr-defined]


def wait_exit(proc: subprocess.Popen, timeout: float) -> tuple[int | None, str]:
    """Wait for the node to exit by itself (bounded); kill it if it does not."""
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        pass
    rc = proc.poll()
    if rc is None:
        proc.kill()
        proc.wait(timeout=10)
    proc._log_handle.close()  # type: ignore[attr-defined]
    return rc, Path(proc._log_path).read_text()  # type: ignore[attr-defined]


def load_pair(name: str = '00537D') -> tuple[np.ndarray, np.ndarray]:
    """A small real pair: thermal ``(H, W)`` uint8 and RGB ``(H, W, 3)`` uint8 (RGB order).

    test/data when present; else a 160x120 crop of the same MSRS pair from ../shared.
    """
    for root in (TEST_DATA, SHARED / 'MSRS'):
        ir, vi = root / 'ir' / f'{name}.png', root / 'vi' / f'{name}.png'
        if ir.is_file() and vi.is_file():
            t = cv2.imread(str(ir), cv2.IMREAD_GRAYSCALE)
            v = cv2.imread(str(vi), cv2.IMREAD_COLOR)[:, :, ::-1]
            if t.shape[1] > 160:
                t = cv2.resize(t, (160, 120), interpolation=cv2.INTER_AREA)
                v = cv2.resize(v, (160, 120), interpolation=cv2.INTER_AREA)
            return np.ascontiguousarray(t), np.ascontiguousarray(v)
    raise FileNotFoundError('no test pair in test/data or ../shared/data/ivif/MSRS')


def thermal_counts(t8: np.ndarray) -> np.ndarray:
    """8-bit thermal -> plausible 16-bit raw counts (what a radiometric camera sends)."""
    return (t8.astype(np.uint16) * 40 + 21000).astype(np.uint16)


class Collector:
    """Thread-safe store of received messages by key, with bounded waits."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self.msgs: dict[str, list[Any]] = defaultdict(list)

    def callback(self, key: str) -> Callable[[Any], None]:
        def cb(msg: Any) -> None:
            with self._cond:
                self.msgs[key].append(msg)
                self._cond.notify_all()
        return cb

    def wait(self, pred: Callable[[], Any], timeout: float) -> Any:
        """Wait until ``pred()`` is truthy (called under the lock); return its value or None."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                v = pred()
                if v:
                    return v
                left = deadline - time.monotonic()
                if left <= 0:
                    return None
                self._cond.wait(min(left, 0.1))

    def by_stamp(self, key: str, sec: int, nanosec: int = 0) -> Any:
        """The first message of ``key`` whose header stamp is ``sec.nanosec`` (or None)."""
        for m in self.msgs[key]:
            if m.header.stamp.sec == sec and m.header.stamp.nanosec == nanosec:
                return m
        return None

    def count(self, key: str) -> int:
        with self._cond:
            return len(self.msgs[key])


class RosClient:
    """A client node in its own rclpy context, spun in a background thread."""

    def __init__(self, name: str) -> None:
        import rclpy
        from rclpy.executors import SingleThreadedExecutor
        self.rclpy = rclpy
        self.context = rclpy.Context()
        rclpy.init(context=self.context)
        self.node = rclpy.create_node(name, context=self.context)
        self.collector = Collector()
        self.executor = SingleThreadedExecutor(context=self.context)
        self.executor.add_node(self.node)
        self._thread = threading.Thread(target=self._spin, daemon=True)
        self._thread.start()

    def _spin(self) -> None:
        from rclpy.executors import ExternalShutdownException
        try:
            self.executor.spin()
        except ExternalShutdownException:
            pass

    def subscribe(self, msg_type: type, topic: str, key: str, depth: int = 200,
                  best_effort: bool = False) -> Any:
        from rclpy.qos import QoSProfile, ReliabilityPolicy
        qos = QoSProfile(depth=depth, reliability=ReliabilityPolicy.BEST_EFFORT if best_effort
                         else ReliabilityPolicy.RELIABLE)
        return self.node.create_subscription(msg_type, topic, self.collector.callback(key), qos)

    def publisher(self, msg_type: type, topic: str, depth: int = 100) -> Any:
        from rclpy.qos import QoSProfile, ReliabilityPolicy
        return self.node.create_publisher(msg_type, topic, QoSProfile(
            depth=depth, reliability=ReliabilityPolicy.RELIABLE))

    def close(self) -> None:
        self.executor.shutdown(timeout_sec=5.0)
        self.node.destroy_node()
        self.rclpy.try_shutdown(context=self.context)
        self._thread.join(timeout=10.0)
