"""Measuring cost: FLOPs, parameters, timing statistics, memory, machine description.

Used by ``regionfuse bench`` and ``regionfuse bench-node``; no ROS imports.
FLOPs are counted with :class:`torch.utils.flop_counter.FlopCounterMode`
(matrix products and convolutions, 2 FLOPs per multiply-add; elementwise
operations are not counted, as in the papers' GFLOPs figures).
"""
from __future__ import annotations

import os
import platform
import resource
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from .paths import REPO_DIR

_REPO = REPO_DIR


def count_params(model: nn.Module) -> int:
    """Number of parameters of ``model`` (buffers excluded).

    Example:
        >>> count_params(nn.Conv2d(2, 4, 3))
        76
    """
    return sum(p.numel() for p in model.parameters())


def count_flops(fn: Callable[..., Any], *args: Any) -> float:
    """FLOPs of one call ``fn(*args)`` (inference mode), counted by ``FlopCounterMode``.

    Returns:
        FLOPs (not GFLOPs), 2 per multiply-add of convolutions and matrix products.

    Example:
        >>> conv = nn.Conv2d(1, 1, 3, padding=1, bias=False)
        >>> count_flops(conv, torch.zeros(1, 1, 4, 4))  # 16 px * 9 MACs * 2
        288.0
    """
    from torch.utils.flop_counter import FlopCounterMode
    counter = FlopCounterMode(display=False)
    with torch.inference_mode(), counter:
        fn(*args)
    return float(counter.get_total_flops())


def summarize_ms(samples: Sequence[float]) -> dict[str, float]:
    """Median, 95th percentile, mean, min, max and count of timings in ms.

    Example:
        >>> summarize_ms([1.0, 2.0, 3.0])['median']
        2.0
    """
    a = np.asarray(samples, dtype=np.float64)
    if a.size == 0:
        nan = float('nan')
        return {'median': nan, 'p95': nan, 'mean': nan, 'min': nan, 'max': nan, 'n': 0}
    return {'median': float(np.median(a)), 'p95': float(np.percentile(a, 95)),
            'mean': float(a.mean()), 'min': float(a.min()), 'max': float(a.max()), 'n': int(a.size)}


def time_call(fn: Callable[[], Any], repeats: int, warmup: int,
              sync: Callable[[], None] | None = None) -> list[float]:
    """Call ``fn`` ``warmup`` times untimed, then ``repeats`` times timed.

    Args:
        fn: the work to time (no arguments).
        repeats: timed calls (>= 1).
        warmup: untimed calls first (kernel set-up, allocator warm-up).
        sync: called after ``fn`` inside the timed region (e.g.
            ``torch.cuda.synchronize`` on CUDA), so asynchronous work is counted.

    Returns:
        Wall-clock times in ms, one per timed call.
    """
    for _ in range(warmup):
        fn()
        if sync is not None:
            sync()
    out = []
    for _ in range(max(1, repeats)):
        t0 = time.perf_counter()
        fn()
        if sync is not None:
            sync()
        out.append((time.perf_counter() - t0) * 1e3)
    return out


def device_sync(device: torch.device) -> Callable[[], None] | None:
    """A synchronisation function for timing work on ``device`` (None on the CPU)."""
    if device.type == 'cuda':
        return torch.cuda.synchronize
    return None


def peak_rss_mb() -> float:
    """Peak resident set size of this process so far, MiB (``getrusage``; KiB on Linux)."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / (1024.0 * 1024.0) if sys.platform == 'darwin' else peak / 1024.0


def rss_mb(pid: int | None = None) -> float:
    """Current resident set size of process ``pid`` (default: this one), MiB."""
    import psutil
    return psutil.Process(pid or os.getpid()).memory_info().rss / (1024.0 * 1024.0)


def cpu_model() -> str:
    """CPU model name from ``/proc/cpuinfo`` (platform string elsewhere)."""
    try:
        for line in Path('/proc/cpuinfo').read_text().splitlines():
            if line.startswith('model name'):
                return line.split(':', 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def cpu_flags() -> set[str]:
    """CPU feature flags from ``/proc/cpuinfo`` (empty set when unavailable)."""
    try:
        for line in Path('/proc/cpuinfo').read_text().splitlines():
            if line.startswith('flags'):
                return set(line.split(':', 1)[1].split())
    except OSError:
        pass
    return set()


def bf16_hardware() -> dict[str, bool]:
    """Which bf16 instruction sets the CPU has (AMX tiles, AVX-512 BF16)."""
    flags = cpu_flags()
    return {'amx_bf16': 'amx_bf16' in flags, 'avx512_bf16': 'avx512_bf16' in flags}


def git_revision() -> str:
    """Short git revision of the source tree ('' outside a checkout), '+dirty' if modified."""
    try:
        rev = subprocess.run(['git', '-C', str(_REPO), 'rev-parse', '--short', 'HEAD'],
                             capture_output=True, text=True, timeout=5, check=True).stdout.strip()
        dirty = subprocess.run(['git', '-C', str(_REPO), 'status', '--porcelain', '--untracked-files=no'],
                               capture_output=True, text=True, timeout=5, check=True).stdout.strip()
        return rev + ('+dirty' if dirty else '')
    except (OSError, subprocess.SubprocessError):
        return ''


def machine_info() -> dict[str, Any]:
    """CPU model, logical CPUs usable by this process, library versions and git revision."""
    import cv2
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, 'sched_getaffinity') else os.cpu_count()
    info: dict[str, Any] = {
        'cpu': cpu_model(),
        'cpus_available': cpus,
        'torch_threads': torch.get_num_threads(),
        'python': platform.python_version(),
        'torch': torch.__version__,
        'numpy': np.__version__,
        'opencv': cv2.__version__,
        'cuda': torch.cuda.get_device_name(0) if torch.cuda.is_available() else '',
        'git': git_revision(),
        **bf16_hardware(),
    }
    try:
        import onnxruntime
        info['onnxruntime'] = onnxruntime.__version__
    except ImportError:
        info['onnxruntime'] = ''
    try:
        info['load_average_1min'] = os.getloadavg()[0]
    except OSError:
        pass
    return info
