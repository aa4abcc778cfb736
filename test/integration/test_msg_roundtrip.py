"""The generated FusionStatus message travels over rclpy (loopback only)."""
from __future__ import annotations

import time

import pytest

rclpy = pytest.importorskip('rclpy')


def test_fusion_status_pub_sub() -> None:
    from rclpy.executors import SingleThreadedExecutor
    from rclpy.qos import QoSProfile, ReliabilityPolicy
    from ros2_regionfuse.msg import FusionStatus

    ctx = rclpy.Context()
    rclpy.init(context=ctx)
    try:
        node = rclpy.create_node('status_roundtrip', context=ctx)
        qos = QoSProfile(depth=5, reliability=ReliabilityPolicy.RELIABLE)
        got: list[FusionStatus] = []
        node.create_subscription(FusionStatus, 'fused/status', got.append, qos)
        pub = node.create_publisher(FusionStatus, 'fused/status', qos)
        ex = SingleThreadedExecutor(context=ctx)
        ex.add_node(node)
        msg = FusionStatus()
        msg.header.frame_id = 'rgb_optical'
        msg.header.stamp.sec = 12
        msg.fusion_ms = 7.5
        msg.device = 'cpu'
        msg.processed = 42
        deadline = time.monotonic() + 10.0
        while not got and time.monotonic() < deadline:
            pub.publish(msg)
            ex.spin_once(timeout_sec=0.1)
        assert got, 'no FusionStatus received within 10 s'
        r = got[0]
        assert (r.header.frame_id, r.header.stamp.sec, r.device, r.processed) == \
            ('rgb_optical', 12, 'cpu', 42)
        assert r.fusion_ms == pytest.approx(7.5)
        ex.shutdown()
        node.destroy_node()
    finally:
        rclpy.shutdown(context=ctx)
