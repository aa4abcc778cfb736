"""Live view without RViz: the fused image, the misregistration overlay and the status in Foxglove.

A Foxglove WebSocket server (``foxglove-sdk``) on ``127.0.0.1:8765`` by default, with
three channels:

* ``/fused/image``: ``foxglove.CompressedImage`` (JPEG) of the fused colour image;
* ``/fused/misregistration/overlay``: the same with the misregistration heat map;
* ``/fused/status``: JSON (frame count, latency, shift, models).

Open the Foxglove app, *Open connection* -> *Foxglove WebSocket* ->
``ws://127.0.0.1:8765`` (:attr:`FoxgloveView.url`), and add an Image panel on
``/fused/image``. Images are encoded only for channels a client subscribes to, at
most ``rate_hz`` per second, so an idle view costs nothing per frame.

ROS-free: the node (``viz.foxglove``) and ``regionfuse demo --foxglove`` use it; so
can any script (``FoxgloveView().publish(fused_rgb, m, status)``).
"""
from __future__ import annotations

import json
import threading
import time
from typing import Any

import cv2
import numpy as np

from ..core.checks import ConfigError
from ..core.mosaic import misregistration_overlay

IMAGE_TOPIC = '/fused/image'
OVERLAY_TOPIC = '/fused/misregistration/overlay'
STATUS_TOPIC = '/fused/status'
JPEG_QUALITY = 85
STATUS_SCHEMA = {'type': 'object', 'properties': {
    'frame': {'type': 'integer'}, 'latency_ms': {'type': 'number'},
    'misaligned_fraction': {'type': 'number'}, 'shift_mean_px': {'type': 'number'},
    'shift_max_px': {'type': 'number'}, 'fusion': {'type': 'string'}, 'corrector': {'type': 'string'}}}


class _Subscriptions:
    """Which channels have subscribed clients (``foxglove.ServerListener`` callbacks)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._count: dict[int, int] = {}

    def on_subscribe(self, client: Any, channel: Any) -> None:
        with self._lock:
            self._count[channel.id] = self._count.get(channel.id, 0) + 1

    def on_unsubscribe(self, client: Any, channel: Any) -> None:
        with self._lock:
            self._count[channel.id] = max(0, self._count.get(channel.id, 0) - 1)

    def active(self, channel_id: int) -> bool:
        with self._lock:
            return self._count.get(channel_id, 0) > 0


def _listener(subs: _Subscriptions) -> Any:
    import foxglove

    class Listener(foxglove.ServerListener):
        def on_subscribe(self, client: Any, channel: Any) -> None:
            subs.on_subscribe(client, channel)

        def on_unsubscribe(self, client: Any, channel: Any) -> None:
            subs.on_unsubscribe(client, channel)
    return Listener()


class FoxgloveView:
    """A Foxglove WebSocket server publishing the fusion's outputs (module docstring).

    Args:
        host: listen address (``127.0.0.1``: this computer only).
        port: TCP port; 0 picks a free one (:attr:`port` tells which).
        rate_hz: most images per second per channel.
        name: server name shown in the app.

    Raises:
        ConfigError: ``foxglove-sdk`` is not installed, or the server cannot start
            (port in use, bad address).
    """

    def __init__(self, host: str = '127.0.0.1', port: int = 8765, rate_hz: float = 10.0,
                 name: str = 'ros2_regionfuse') -> None:
        try:
            import foxglove
            from foxglove.channels import CompressedImageChannel
        except ImportError as e:
            raise ConfigError('the Foxglove live view needs foxglove-sdk (pip install foxglove-sdk): '
                              f'{e}') from e
        if rate_hz <= 0:
            raise ConfigError(f'Foxglove view: rate_hz must be > 0, got {rate_hz}')
        self._ctx = foxglove.Context()
        self._subs = _Subscriptions()
        try:
            self.server = foxglove.start_server(name=name, host=host, port=port, context=self._ctx,
                                                server_listener=_listener(self._subs))
        except Exception as e:   # noqa: BLE001 - the SDK raises its own error types
            raise ConfigError(f'Foxglove view: cannot listen on {host}:{port}: {e}') from e
        self.host = host
        self.period_s = 1.0 / rate_hz
        self._image = CompressedImageChannel(IMAGE_TOPIC, context=self._ctx)
        self._overlay = CompressedImageChannel(OVERLAY_TOPIC, context=self._ctx)
        self._status = foxglove.Channel(STATUS_TOPIC, schema=STATUS_SCHEMA, message_encoding='json',
                                        context=self._ctx)
        self._last = {IMAGE_TOPIC: 0.0, OVERLAY_TOPIC: 0.0}
        self.sent = {IMAGE_TOPIC: 0, OVERLAY_TOPIC: 0, STATUS_TOPIC: 0}
        self._closed = False

    @property
    def port(self) -> int:
        """The TCP port the server listens on."""
        return int(self.server.port)

    @property
    def url(self) -> str:
        """The connection string for the Foxglove app (*Open connection* -> *Foxglove WebSocket*)."""
        host = '127.0.0.1' if self.host in ('0.0.0.0', '') else self.host
        return f'ws://{host}:{self.port}'

    def _due(self, topic: str, channel: Any, now: float) -> bool:
        if not self._subs.active(channel.id()) or now - self._last[topic] < self.period_s:
            return False
        self._last[topic] = now
        return True

    def _send_jpeg(self, channel: Any, rgb: np.ndarray, stamp_ns: int, frame_id: str) -> None:
        from foxglove.messages import CompressedImage, Timestamp
        ok, buf = cv2.imencode('.jpg', cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR),
                               [cv2.IMWRITE_JPEG_QUALITY, JPEG_QUALITY])
        if not ok:
            return
        ts = Timestamp(sec=int(stamp_ns // 1_000_000_000), nsec=int(stamp_ns % 1_000_000_000))
        channel.log(CompressedImage(timestamp=ts, frame_id=frame_id, data=buf.tobytes(), format='jpeg'),
                    log_time=int(stamp_ns))

    def publish(self, fused_rgb: np.ndarray, misregistration: np.ndarray | None = None,
                status: dict[str, Any] | None = None, stamp_ns: int | None = None,
                frame_id: str = '') -> None:
        """Send one frame to the subscribed clients (rate-limited; nothing is encoded without clients).

        Args:
            fused_rgb: ``(H, W, 3)`` uint8 RGB fused image.
            misregistration: ``(H, W)`` float M in [0, 1], or None (no overlay).
            status: JSON-serialisable values (see :data:`STATUS_SCHEMA`).
            stamp_ns: the frame's stamp (ns); default now.
            frame_id: the image's frame id (the RGB camera's).
        """
        if self._closed:
            return
        stamp = time.time_ns() if stamp_ns is None else int(stamp_ns)
        now = time.monotonic()
        if self._due(IMAGE_TOPIC, self._image, now):
            self._send_jpeg(self._image, fused_rgb, stamp, frame_id)
            self.sent[IMAGE_TOPIC] += 1
        if misregistration is not None and self._due(OVERLAY_TOPIC, self._overlay, now):
            heat = misregistration_overlay(fused_rgb, misregistration)
            self._send_jpeg(self._overlay, heat, stamp, frame_id)
            self.sent[OVERLAY_TOPIC] += 1
        if status is not None and self._subs.active(self._status.id()):
            self._status.log(json.dumps(status).encode(), log_time=stamp)
            self.sent[STATUS_TOPIC] += 1

    def close(self) -> None:
        """Stop the server (idempotent)."""
        if not self._closed:
            self._closed = True
            self.server.stop()
