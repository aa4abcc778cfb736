"""The Foxglove live view: a local WebSocket client subscribes and receives the fused image."""
from __future__ import annotations

import json
import threading
import time

import numpy as np
import pytest

from ros2_regionfuse.core.checks import ConfigError
from ros2_regionfuse.viz import foxglove_view as fv


def test_a_local_client_receives_the_fused_image_overlay_and_status(foxglove_client) -> None:
    view = fv.FoxgloveView(port=0, rate_hz=50.0)
    assert view.url == f'ws://127.0.0.1:{view.port}' and view.port > 0
    img = np.zeros((120, 160, 3), np.uint8)
    img[:, :80] = (255, 0, 0)                                    # left half red (RGB)
    m = np.zeros((120, 160), np.float32)
    m[:, 120:] = 1.0
    assert view.sent == {fv.IMAGE_TOPIC: 0, fv.OVERLAY_TOPIC: 0, fv.STATUS_TOPIC: 0}
    view.publish(img, m, {'frame': 0})                           # no client: nothing is encoded
    assert sum(view.sent.values()) == 0
    stop = threading.Event()

    def play() -> None:
        while not stop.is_set():
            view.publish(img, m, {'frame': 1, 'latency_ms': 12.5}, frame_id='color')
            time.sleep(0.02)
    t = threading.Thread(target=play, daemon=True)
    t.start()
    try:
        got = foxglove_client.receive(view.url, [fv.IMAGE_TOPIC, fv.OVERLAY_TOPIC, fv.STATUS_TOPIC])
    finally:
        stop.set()
        t.join(5)
        view.close()
    fused = foxglove_client.jpeg(got[fv.IMAGE_TOPIC][0])
    assert fused.shape == (120, 160, 3)
    assert np.abs(fused[60, 20].astype(int) - [0, 0, 255]).max() < 12      # red, as BGR
    assert np.abs(fused[60, 140].astype(int)).max() < 12                    # black
    overlay = foxglove_client.jpeg(got[fv.OVERLAY_TOPIC][0])
    assert np.abs(overlay[60, 140].astype(int)).max() > 40                  # the heat map where M = 1
    assert json.loads(got[fv.STATUS_TOPIC][0]) == {'frame': 1, 'latency_ms': 12.5}
    view.close()                                                             # idempotent


def test_rate_limit_and_a_port_in_use() -> None:
    view = fv.FoxgloveView(port=0, rate_hz=2.0)
    try:
        assert view.period_s == pytest.approx(0.5)
        with pytest.raises(ConfigError, match='cannot listen'):
            fv.FoxgloveView(port=view.port)
    finally:
        view.close()
    with pytest.raises(ConfigError):
        fv.FoxgloveView(port=0, rate_hz=0.0)


def test_demo_turns_the_view_on_and_names_the_connection() -> None:
    import argparse

    from ros2_regionfuse.cli import demo
    assert demo.foxglove_params(argparse.Namespace(foxglove=False, foxglove_port=None)) == ([], '')
    params, url = demo.foxglove_params(argparse.Namespace(foxglove=True, foxglove_port=None))
    assert params == ['viz.foxglove:=true', 'viz.foxglove_port:=8765'] and url == 'ws://127.0.0.1:8765'
    with pytest.raises(ConfigError):
        demo.foxglove_params(argparse.Namespace(foxglove=True, foxglove_port=70000))
