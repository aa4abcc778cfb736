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
