"""glibc malloc settings for the frame loop (process-wide; no ROS).

Every frame allocates and frees dozens of full-resolution buffers (1-16 MB:
torch tensors, numpy and OpenCV arrays). glibc serves large blocks with
``mmap`` and returns freed memory to the kernel, so the next frame pays a
page fault on the first touch of every 4 KiB page again. Measured at 640x480
on the 2-vCPU VM (docs/performance.md): 2500-4200 page faults and 12-16 ms of
kernel time per frame. Serving such blocks from the heap and keeping freed
memory for reuse cuts that to ~80 faults and ~5 ms. Peak memory is unchanged
(freed blocks are reused, not added).

The entry points (``fuse_node``, ``regionfuse``) call :func:`retain_freed_memory`
once at start-up. Set ``REGIONFUSE_MALLOC=default`` in the environment to
leave glibc's settings alone.
"""
from __future__ import annotations

import ctypes
import ctypes.util
import logging
import os

log = logging.getLogger(__name__)

# mallopt(3) parameter numbers (glibc malloc.h)
M_TRIM_THRESHOLD = -1
M_TOP_PAD = -2
M_MMAP_THRESHOLD = -3

MIB = 1 << 20


def retain_freed_memory(mmap_threshold: int = 32 * MIB, trim_threshold: int = 512 * MIB,
                        top_pad: int = 64 * MIB) -> bool:
    """Serve blocks up to ``mmap_threshold`` bytes from the heap and keep freed heap memory.

    Args:
        mmap_threshold: blocks at least this large still use ``mmap`` (32 MiB,
            glibc's maximum: larger than a 1280x1024 RGB float32 frame).
        trim_threshold: free memory at the top of the heap kept before it is
            returned to the kernel.
        top_pad: extra bytes requested whenever the heap grows (untouched pages
            cost no memory).

    Returns:
        True when applied; False when the C library is not glibc, or
        ``REGIONFUSE_MALLOC=default`` is set.
    """
    if os.environ.get('REGIONFUSE_MALLOC', '').lower() == 'default':
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library('c') or 'libc.so.6')
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False   # not glibc (musl, macOS, Windows): nothing to tune
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    mallopt.restype = ctypes.c_int
    ok = all(mallopt(p, v) == 1 for p, v in ((M_MMAP_THRESHOLD, mmap_threshold),
                                              (M_TRIM_THRESHOLD, trim_threshold),
                                              (M_TOP_PAD, top_pad)))
    if not ok:
        log.debug('mallopt refused a setting; glibc defaults partly kept')
    return ok
