"""glibc malloc settings: applied, can be opted out of, and freed frame buffers stop page-faulting."""
from __future__ import annotations

import resource
import sys

import numpy as np
import pytest

from ros2_regionfuse.core.allocator import retain_freed_memory

glibc_only = pytest.mark.skipif(not sys.platform.startswith('linux'), reason='glibc mallopt')


# This thread's faults only: threads left by earlier tests in the same process (ROS executors, thread
# pools) fault now and then too, and counting them made the test fail at random (300 of 300 once).
_WHO = getattr(resource, 'RUSAGE_THREAD', resource.RUSAGE_SELF)


def _faults_for_frame_buffers(n: int = 20) -> int:
    """Minor page faults of n rounds of allocating, filling and freeing 640x480 float32 buffers."""
    r0 = resource.getrusage(_WHO).ru_minflt
    for _ in range(n):
        bufs = [np.empty((480, 640), np.float32) for _ in range(4)]
        for b in bufs:
            b.fill(1.0)
        del bufs
    return resource.getrusage(_WHO).ru_minflt - r0


@glibc_only
def test_freed_frame_buffers_are_reused_without_page_faults(monkeypatch):
    monkeypatch.delenv('REGIONFUSE_MALLOC', raising=False)
    assert retain_freed_memory() is True
    _faults_for_frame_buffers(2)          # the heap grows once
    # glibc's defaults: ~1500 faults here (measured); every buffer from fresh pages: ~24000
    assert _faults_for_frame_buffers(20) < 300


def test_opt_out(monkeypatch):
    monkeypatch.setenv('REGIONFUSE_MALLOC', 'default')
    assert retain_freed_memory() is False
