"""Test-wide setup: ROS isolation (own domain, loopback only), paths, fixtures.

Every pytest process gets its own ``ROS_DOMAIN_ID`` (derived from the PID),
``ROS_AUTOMATIC_DISCOVERY_RANGE=LOCALHOST`` and the shipped loopback +
shared-memory Fast DDS profile, *before* anything imports rclpy, so no test
sends traffic off 127.0.0.0/8. Subprocesses started by tests inherit them.
"""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / 'shared' / 'data' / 'ivif'
TEST_DATA = Path(__file__).resolve().parent / 'data'

os.environ['ROS_AUTOMATIC_DISCOVERY_RANGE'] = 'LOCALHOST'
os.environ.setdefault('ROS_DOMAIN_ID', str(100 + os.getpid() % 100))
os.environ['FASTDDS_DEFAULT_PROFILES_FILE'] = str(REPO / 'config' / 'fastdds_loopback.xml')
os.environ.pop('ROS_STATIC_PEERS', None)


@pytest.fixture(scope='session')
def repo() -> Path:
    """Repository root."""
    return REPO


@pytest.fixture(scope='session')
def test_data() -> Path:
    """Folder of the small committed test pairs (see test/data/README.md)."""
    return TEST_DATA


@pytest.fixture(scope='session')
def shared_data() -> Path:
    """../shared/data/ivif; tests that need it are skipped when it is absent."""
    if not SHARED_DATA.is_dir():
        pytest.skip('../shared/data/ivif not present')
    return SHARED_DATA


@pytest.fixture()
def rng() -> np.random.Generator:
    """Seeded numpy generator."""
    return np.random.default_rng(1234)


@pytest.fixture(autouse=True)
def _restore_torch_threads():
    """Each test starts with the process's intra-op thread count: pipelines built with
    ``threads: N`` set it process-wide, and some code paths depend on it (the fusion runner's
    single-threaded OpenCV form), so a test must not inherit another test's setting."""
    import torch
    n = torch.get_num_threads()
    yield
    if torch.get_num_threads() != n:
        torch.set_num_threads(n)


class FoxgloveClient:
    """A minimal Foxglove WebSocket client (protocol ``foxglove.sdk.v1``) for the live-view tests."""

    SUBPROTOCOL = 'foxglove.sdk.v1'
    MESSAGE_DATA = 0x01   # binary opcode: uint8 op, uint32 subscription id, uint64 log time, payload

    @staticmethod
    def jpeg(payload: bytes) -> np.ndarray:
        """The JPEG inside a protobuf ``foxglove.CompressedImage`` payload, decoded (BGR)."""
        import cv2
        i, j = payload.find(b'\xff\xd8'), payload.rfind(b'\xff\xd9')
        assert 0 <= i < j, 'no JPEG in the message'
        img = cv2.imdecode(np.frombuffer(payload[i:j + 2], np.uint8), cv2.IMREAD_COLOR)
        assert img is not None
        return img

    def receive(self, url: str, topics: list[str], timeout: float = 20.0) -> dict[str, list[bytes]]:
        """Connect, subscribe to ``topics`` and return the first message of each (bounded wait)."""
        import asyncio
        return asyncio.run(self._receive(url, topics, timeout))

    async def _receive(self, url: str, topics: list[str], timeout: float) -> dict[str, list[bytes]]:
        import asyncio
        import json
        import struct
        import time

        import websockets
        got: dict[str, list[bytes]] = {t: [] for t in topics}
        deadline = time.monotonic() + timeout

        def left() -> float:
            return max(0.1, deadline - time.monotonic())
        async with websockets.connect(url, subprotocols=[self.SUBPROTOCOL], open_timeout=timeout) as ws:
            channels: dict[str, int] = {}
            while not all(t in channels for t in topics):
                msg = json.loads(await asyncio.wait_for(ws.recv(), left()))
                if msg['op'] == 'advertise':
                    channels.update({c['topic']: c['id'] for c in msg['channels']})
            subs = dict(enumerate(topics))
            await ws.send(json.dumps({'op': 'subscribe', 'subscriptions': [
                {'id': i, 'channelId': channels[t]} for i, t in subs.items()]}))
            while not all(got.values()):
                msg = await asyncio.wait_for(ws.recv(), left())
                if isinstance(msg, bytes) and msg[0] == self.MESSAGE_DATA:
                    _, sid, _ = struct.unpack_from('<BIQ', msg)
                    got[subs[sid]].append(msg[13:])
        return got


@pytest.fixture()
def foxglove_client() -> FoxgloveClient:
    """A Foxglove WebSocket client (loopback servers only)."""
    return FoxgloveClient()
