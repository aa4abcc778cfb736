"""eval-calibration: the synthetic rigs, the corrupted frames, the reprojection measure."""
from __future__ import annotations

import numpy as np

from ros2_regionfuse.cli import eval_calibration as ec
from ros2_regionfuse.core.calibration import _apply


def test_rigs_lie_in_the_issue_range() -> None:
    w, h = ec.RGB_WH
    corners = np.array([[0, 0], [w - 1, 0], [w - 1, h - 1], [0, h - 1]], float)
    for seed in range(5):
        m = ec.same_size_rig(np.random.default_rng(seed))
        moved = np.hypot(*(_apply(m, corners) - corners).T)
        assert 5.0 < moved.min() and moved.max() < 60.0 and moved.mean() > 12.0
        sub = ec.sub_window_rig(np.random.default_rng(seed))
        tw, th = ec.DEFAULTS.sub_wh
        c = _apply(sub, np.array([[0, 0], [tw - 1, th - 1]], float))
        width = c[1, 0] - c[0, 0]
        assert 0.6 * w < width < 0.8 * w                       # ~70 % of the RGB width
        assert (c >= 0).all() and c[1, 0] < w and c[1, 1] < h   # inside the RGB view


def test_grid_error_and_the_thermal_view() -> None:
    m = np.array([[1.0, 0.0, 3.0], [0.0, 1.0, -4.0], [0.0, 0.0, 1.0]])
    assert ec.grid_error(m, np.eye(3), (64, 48)) == 5.0
    img = np.zeros((48, 64), np.uint8)
    img[20, 30] = 255
    view = ec.thermal_view(img, m, (64, 48))    # thermal pixel x shows the image at m x
    assert view[24, 27] == 255


def test_corrupt_replaces_a_share_with_blank_or_unrelated_frames() -> None:
    rng = np.random.default_rng(0)
    frames = [(np.full((8, 8), i * 10 + 5, np.uint8), np.zeros((8, 8, 3), np.uint8)) for i in range(20)]
    frames = [(f[0] + np.arange(8, dtype=np.uint8)[None], f[1]) for f in frames]   # not flat
    out = ec.corrupt(frames, 0.1, rng)
    changed = [i for i, (a, b) in enumerate(zip(frames, out)) if not np.array_equal(a[0], b[0])]
    assert len(changed) == 2
    assert any(np.ptp(out[i][0]) == 0 for i in changed)          # a blank frame
    assert all(out[i][1] is frames[i][1] for i in range(20))    # RGB untouched
