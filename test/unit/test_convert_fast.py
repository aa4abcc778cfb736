"""The OpenCV fast paths of core/convert.py equal the reference numpy formulas."""
from __future__ import annotations

import numpy as np
import pytest

from ros2_regionfuse.core import convert


def _luma_numpy(rgb: np.ndarray) -> np.ndarray:
    return (0.299 * rgb[..., 0] + 0.587 * rgb[..., 1] + 0.114 * rgb[..., 2]).astype(np.float32)


def _replace_numpy(rgb: np.ndarray, y: np.ndarray) -> np.ndarray:
    ycc = convert.rgb_to_ycbcr(rgb)
    ycc[..., 0] = y
    return convert.ycbcr_to_rgb(ycc)


@pytest.mark.parametrize('shape', [(480, 640), (7, 5), (1, 1)])
def test_luminance_matches_numpy(rng, shape):
    rgb = rng.random(shape + (3,), dtype=np.float32)
    y = convert.luminance(rgb)
    assert y.shape == shape and y.dtype == np.float32
    np.testing.assert_allclose(y, _luma_numpy(rgb), atol=1e-6)
    # non-float32 and non-contiguous inputs take the numpy path / a copy and agree too
    np.testing.assert_allclose(convert.luminance(rgb.astype(np.float64)), _luma_numpy(rgb), atol=1e-6)
    np.testing.assert_allclose(convert.luminance(rgb[::-1, ::2]), _luma_numpy(rgb[::-1, ::2]), atol=1e-6)


def test_replace_luminance_matches_ycbcr_roundtrip(rng):
    rgb = rng.random((120, 160, 3), dtype=np.float32)
    y = rng.random((120, 160), dtype=np.float32)
    out = convert.replace_luminance(rgb, y)
    ref = _replace_numpy(rgb, y)
    assert out.shape == rgb.shape and out.dtype == np.float32
    assert np.abs(out - ref).max() < 1e-5  # far inside the 1/255 budget
    assert out.min() >= 0.0 and out.max() <= 1.0
    # the new luminance is the one we put in wherever no channel was clipped
    inside = (ref > 1e-3).all(-1) & (ref < 1 - 1e-3).all(-1)
    np.testing.assert_allclose(convert.luminance(out)[inside], y[inside], atol=1e-5)
    # the input is not modified
    assert not np.shares_memory(out, rgb)


def test_replace_luminance_gray_stays_gray(rng):
    g = np.repeat(rng.random((9, 11, 1), dtype=np.float32), 3, axis=2)
    y = rng.random((9, 11), dtype=np.float32)
    out = convert.replace_luminance(g, y)
    np.testing.assert_allclose(out, np.repeat(y[..., None], 3, axis=2), atol=1e-6)


@pytest.mark.parametrize('shape', [(64, 48, 3), (64, 48), (3, 3, 1)])
def test_unit_to_uint8_matches_numpy_within_one_lsb(rng, shape):
    x = (rng.random(shape, dtype=np.float32) * 1.4 - 0.2)
    out = convert.unit_to_uint8(x)
    ref = np.clip(x * 255.0 + 0.5, 0, 255).astype(np.uint8)
    assert out.shape == ref.shape and out.dtype == np.uint8
    assert np.abs(out.astype(int) - ref.astype(int)).max() <= 1
    assert (out[x <= 0] == 0).all() and (out[x >= 1] == 255).all()
    assert convert.unit_to_uint8(np.array([[0.0, 0.5, 1.0]], np.float32)).tolist() == [[0, 128, 255]]


def test_to_tensor_on_cpu_shares_memory(rng):
    x = rng.random((6, 8), dtype=np.float32)
    t = convert.to_tensor(x)
    assert t.shape == (1, 1, 6, 8) and np.shares_memory(t.numpy(), x)
    np.testing.assert_array_equal(convert.to_numpy(t), x)


@pytest.mark.skipif(not __import__('torch').cuda.is_available(), reason='needs CUDA')
def test_to_tensor_cuda_pinned_staging_round_trip(rng):
    frames = [rng.random((32, 48), dtype=np.float32) for _ in range(6)]
    ts = [convert.to_tensor(f, 'cuda') for f in frames]  # more uploads than ring slots
    for f, t in zip(frames, ts, strict=True):
        assert t.is_cuda
        np.testing.assert_array_equal(convert.to_numpy(t), f)


def test_replace_luminance_keeps_gray_exactly_gray():
    """A gray RGB frame stays exactly gray for any new luminance (one difference on all channels)."""
    rng = np.random.default_rng(0)
    g = rng.random((37, 53), dtype=np.float32)
    y = rng.random((37, 53), dtype=np.float32)
    out = convert.replace_luminance(np.repeat(g[..., None], 3, -1), y)
    assert np.array_equal(out[..., 0], out[..., 1]) and np.array_equal(out[..., 1], out[..., 2])
    assert float(np.abs(out[..., 0] - y).max()) < 1e-6   # gray: the new luminance itself


def test_unclipped_replace_luminance_gives_the_same_bytes(rng):
    """The pipeline skips replace_luminance's clip: unit_to_uint8 saturates the same way."""
    rgb = rng.random((48, 64, 3)).astype(np.float32)
    y_old = convert.luminance(rgb)
    for _ in range(5):
        y = (rng.random((48, 64)) * 1.6 - 0.3).astype(np.float32)    # out of [0, 1] on purpose
        loose = convert.replace_luminance(rgb, y, y_old, clip=False)
        assert loose.min() < 0.0 and loose.max() > 1.0
        tight = convert.replace_luminance(rgb, y)
        assert np.array_equal(convert.unit_to_uint8(loose), convert.unit_to_uint8(tight))


@pytest.mark.parametrize('shape', [(480, 640), (7, 5), (1, 1)])
def test_unit_luminance_of_8bit_rgb_matches_float_path(rng, shape):
    rgb = rng.integers(0, 256, shape + (3,), dtype=np.uint8)
    y = convert.unit_luminance(rgb)
    assert y.shape == shape and y.dtype == np.float32
    np.testing.assert_allclose(y, _luma_numpy(rgb.astype(np.float32) / 255), atol=1e-6)
    # float input in [0, 1] is plain luminance
    f = convert.rgb_to_unit(rgb)
    assert np.array_equal(convert.unit_luminance(f), convert.luminance(f))


@pytest.mark.parametrize('shape', [(480, 640), (9, 13)])
def test_recolour_uint8_matches_the_float_colour_step(rng, shape):
    """8-bit planes plus the luminance change (saturating) = unit_to_uint8(replace_luminance(...))
    to 1 LSB on exact halves; gray stays gray; out-of-range luminance saturates."""
    rgb = rng.integers(0, 256, shape + (3,), dtype=np.uint8)
    rgb[0, 0] = (90, 90, 90)   # a gray pixel
    y_new = (rng.random(shape, dtype=np.float32) * 1.4 - 0.2).astype(np.float32)   # some outside [0, 1]
    y_new[-1, -1], y_new[0, -1] = 2.0, -1.0   # far outside: every channel saturates
    reference = convert.unit_to_uint8(convert.replace_luminance(convert.rgb_to_unit(rgb), y_new))
    for y_old in (None, convert.unit_luminance(rgb)):
        out = convert.recolour_uint8(rgb, y_new, y_old)
        assert out.dtype == np.uint8 and out.shape == shape + (3,)
        diff = np.abs(out.astype(int) - reference)
        assert diff.max() <= 1 and (diff > 0).mean() < 1e-3
    assert len(set(out[0, 0].tolist())) == 1                      # gray in, gray out
    assert out[-1, -1].tolist() == [255] * 3 and out[0, -1].tolist() == [0] * 3   # saturation
    # float RGB takes the float path, bit for bit
    f = convert.rgb_to_unit(rgb)
    assert np.array_equal(convert.recolour_uint8(f, y_new), reference)
