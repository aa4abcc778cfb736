"""core.mosaic: tile layout, letterboxing, labels, misregistration overlay (no ROS)."""
from __future__ import annotations

import numpy as np
import pytest

from ros2_regionfuse.core.checks import EncodingError, ShapeError
from ros2_regionfuse.core.mosaic import (
    OverlayStyle,
    compose_mosaic,
    fit_tile,
    misregistration_overlay,
)


def _flat(value: int, shape: tuple[int, ...]) -> np.ndarray:
    return np.full(shape, value, np.uint8)


def test_row_layout_puts_each_image_in_its_tile() -> None:
    tiles = [('', _flat(40, (30, 40))), ('', _flat(80, (30, 40, 3))),
             ('', _flat(120, (60, 80, 3))), ('', _flat(160, (15, 20)))]
    m = compose_mosaic(tiles, (40, 30))
    assert m.shape == (30, 160, 3) and m.dtype == np.uint8
    for i, v in enumerate((40, 80, 120, 160)):
        tile = m[:, i * 40:(i + 1) * 40]
        assert (tile == v).all(), f'tile {i} holds {np.unique(tile)}'


def test_grid_layout_and_empty_cells() -> None:
    tiles = [('', _flat(10 * (i + 1), (8, 8))) for i in range(3)]
    m = compose_mosaic(tiles, (8, 8), columns=2)
    assert m.shape == (16, 16, 3)
    assert m[0:8, 0:8].min() == 10 and m[0:8, 8:16].min() == 20 and m[8:16, 0:8].min() == 30
    assert (m[8:16, 8:16] == 0).all()  # no fourth tile


def test_fit_tile_keeps_aspect_with_black_bars() -> None:
    img = _flat(200, (256, 320))  # 5:4 thermal into a 4:3 tile
    t = fit_tile(img, (320, 240))
    assert t.shape == (240, 320, 3)
    cols = np.where(t[120, :, 0] == 200)[0]
    assert cols.size == 300 and cols[0] == 10  # 320 * 240/256 = 300 px wide, centred
    assert (t[:, :10] == 0).all() and (t[:, 310:] == 0).all()


def test_label_changes_only_the_corner() -> None:
    img = _flat(128, (120, 160, 3))
    plain = compose_mosaic([('', img)], (160, 120))
    labelled = compose_mosaic([('fused', img)], (160, 120))
    diff = np.any(labelled != plain, axis=2)
    ys, xs = np.nonzero(diff)
    assert ys.size > 0
    assert ys.max() < 40 and xs.max() < 120  # confined to the top-left label box


def test_overlay_zero_probability_is_identity(rng) -> None:
    img = rng.integers(0, 256, (24, 32, 3), dtype=np.uint8)
    np.testing.assert_array_equal(misregistration_overlay(img, np.zeros((24, 32), np.float32)), img)
    # NaN (invalid) is not drawn either
    np.testing.assert_array_equal(misregistration_overlay(img, np.full((24, 32), np.nan, np.float32)), img)


def test_overlay_marks_the_misregistered_region_only() -> None:
    img = _flat(100, (40, 40, 3))
    prob = np.zeros((20, 20), np.float32)  # half resolution: resized to the image
    prob[5:15, 5:15] = 1.0
    out = misregistration_overlay(img, prob, OverlayStyle(alpha=0.5, threshold=0.1))
    assert out.shape == (40, 40, 3)
    centre = out[20, 20].astype(int)
    assert np.abs(centre - 100).max() > 30  # blended with the heat colour
    assert (out[0:5, :] == 100).all() and (out[:, 35:] == 100).all()  # far outside untouched
    outline = (out[8:32, 8:32] == 255).all(axis=2)
    assert outline.any()  # the 0.5 iso-line is drawn in white


def test_errors() -> None:
    with pytest.raises(ShapeError):
        compose_mosaic([], (8, 8))
    with pytest.raises(ShapeError):
        compose_mosaic([('', _flat(1, (4, 4)))], (8, 8), columns=0)
    with pytest.raises(ShapeError):
        fit_tile(_flat(1, (4, 4)), (0, 8))
    with pytest.raises(EncodingError):
        compose_mosaic([('', np.zeros((4, 4), np.float32))], (8, 8))
    with pytest.raises(ShapeError):
        misregistration_overlay(_flat(1, (4, 4, 3)), np.zeros((4, 4, 2), np.float32))
    with pytest.raises(ShapeError):
        misregistration_overlay(_flat(1, (4, 4, 2)), np.zeros((4, 4), np.float32))
