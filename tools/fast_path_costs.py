"""Cost of each CPU path of the steps that have fused C kernels, on one real 640x480 pair.

Prints the median time (2 torch threads, OpenCV single-threaded) and the largest difference
from the plain-torch forward for: the fusion network, the learned corrector ``corrector_lite``
(thermal moved 5 px) and its global registration, each as torch (the reference), OpenCV (the
fallback where the C kernels cannot be built) and the C kernels. ``docs/architecture.md`` cites
its output.

Usage: ``.venv/bin/python tools/fast_path_costs.py``
"""
from __future__ import annotations

from collections.abc import Callable

import cv2
import numpy as np
import torch

from ros2_regionfuse.core import convert, profiling
from ros2_regionfuse.core.imageio import read_gray, read_rgb
from ros2_regionfuse.core.paths import TEST_PAIRS
from ros2_regionfuse.models.corrector import correct, global_params
from ros2_regionfuse.models.fusion_net import fuse
from ros2_regionfuse.models.loading import load_model
from ros2_regionfuse.models.warp import warp_by_flow

PATHS = [('torch', {}), ('opencv', {'opencv': True}), ('native', {'opencv': True, 'native': True})]


def median_ms(f: Callable[[], object], repeats: int = 25) -> float:
    """Median wall time of ``f()`` in ms after three warm-up calls."""
    return float(np.median(profiling.time_call(f, repeats, warmup=3)))


def main() -> None:
    torch.set_num_threads(2)
    cv2.setNumThreads(1)
    th = cv2.resize(read_gray(TEST_PAIRS / 'ir' / '00537D.png', as_uint8=True), (640, 480))
    rgb = cv2.resize(read_rgb(TEST_PAIRS / 'vi' / '00537D.png'), (640, 480))
    t = convert.to_tensor(th.astype(np.float32) / 255.0)
    v = convert.to_tensor(cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY).astype(np.float32) / 255.0)
    cpu = torch.device('cpu')
    fusion, _ = load_model('fusion', 'regionfuse_lite', '', cpu)
    corrector, _ = load_model('corrector', 'corrector_lite', '', cpu)
    shift = torch.zeros(1, 2, 480, 640)
    shift[:, 0] = 5.0
    moved = warp_by_flow(t, -shift)
    fused = (0.5 * (moved + v)).clamp(0, 1)
    with torch.inference_mode():
        ref_f, ref_c = fusion(t, v), corrector(fused, v, moved)
        for name, kw in PATHS:
            d = float((fuse(fusion, t, v, **kw) - ref_f).abs().max())
            print(f'fusion          {name:7s} {median_ms(lambda kw=kw: fuse(fusion, t, v, **kw)):6.2f} ms  '
                  f'max diff {d:.1e}')
        for name, kw in PATHS:
            d = float((correct(corrector, fused, v, moved, **kw).image - ref_c.image).abs().max())
            ms = median_ms(lambda kw=kw: correct(corrector, fused, v, moved, **kw))
            reg = median_ms(lambda kw=kw: global_params(corrector, v, moved, **kw))
            print(f'corrector_lite  {name:7s} {ms:6.2f} ms  max diff {d:.1e}  '
                  f'(global registration {reg:5.2f} ms)')


if __name__ == '__main__':
    main()
