"""Flow warping, bidirectional blend, local correlation and flow composition (values asserted)."""
from __future__ import annotations

import pytest
import torch

from ros2_regionfuse.models.warp import (
    BidirectionalWarp,
    FlowWarp,
    LocalCorrelation,
    affine_fit,
    bidirectional_warp,
    compose_flow,
    correlation_offsets,
    flow_to_grid,
    local_correlation,
    soft_argmax_offset,
    upsample_flow,
    warp_by_flow,
)


def _smooth_image(h: int, w: int, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(1, 1, h // 4 + 1, w // 4 + 1, generator=g)
    return torch.nn.functional.interpolate(x, size=(h, w), mode='bicubic', align_corners=False)


def test_zero_flow_is_identity():
    x = torch.rand(2, 3, 17, 23)
    assert torch.allclose(warp_by_flow(x, torch.zeros(2, 2, 17, 23)), x, atol=1e-6)


@pytest.mark.parametrize('dx,dy', [(3, 0), (0, -2), (5, 4), (-7, 3)])
def test_integer_shift_recovers_image(dx, dy):
    img = torch.rand(1, 1, 40, 50)
    shifted = torch.roll(img, shifts=(dy, dx), dims=(2, 3))   # shifted(p) = img(p - d)
    flow = torch.zeros(1, 2, 40, 50)
    flow[:, 0], flow[:, 1] = dx, dy                           # out(p) = shifted(p + d) = img(p)
    rec = warp_by_flow(shifted, flow)
    inner = (slice(None), slice(None), slice(8, -8), slice(8, -8))
    assert torch.allclose(rec[inner], img[inner], atol=1e-5)


def test_subpixel_shift_is_linear_interpolation():
    img = torch.arange(10.0).view(1, 1, 1, 10).expand(1, 1, 3, 10).contiguous()
    flow = torch.zeros(1, 2, 3, 10)
    flow[:, 0] = 0.25
    out = warp_by_flow(img, flow)
    assert torch.allclose(out[0, 0, 1, :9], torch.arange(9.0) + 0.25, atol=1e-5)
    assert out[0, 0, 1, 9] == pytest.approx(9.0)             # border: clamped


def test_flow_to_grid_pixel_centres():
    g = flow_to_grid(torch.zeros(1, 2, 2, 4))
    assert g[0, 0, :, 0].tolist() == pytest.approx([-0.75, -0.25, 0.25, 0.75])
    assert g[0, :, 0, 1].tolist() == pytest.approx([-0.5, 0.5])


def test_module_matches_function():
    x, f = torch.rand(1, 2, 9, 11), torch.randn(1, 2, 9, 11)
    assert torch.equal(FlowWarp()(x, f), warp_by_flow(x, f))


def test_bidirectional_blend_equals_formula():
    torch.manual_seed(0)
    x = torch.rand(2, 3, 16, 20)
    flow = torch.randn(2, 2, 16, 20) * 3
    m = torch.rand(2, 1, 16, 20)
    expect = m * warp_by_flow(x, flow) + (1 - m) * warp_by_flow(x, -flow)
    assert torch.allclose(bidirectional_warp(x, flow, m), expect, atol=1e-6)
    assert torch.allclose(BidirectionalWarp()(x, flow, m), expect, atol=1e-6)
    # gradient path (training) gives the same values
    fr = flow.clone().requires_grad_(True)
    out = bidirectional_warp(x, fr, m)
    assert torch.allclose(out, expect, atol=1e-6)
    out.sum().backward()
    assert fr.grad is not None and fr.grad.abs().sum() > 0


def test_bidirectional_extremes():
    x = torch.rand(1, 1, 12, 12)
    flow = torch.full((1, 2, 12, 12), 2.0)
    ones, zeros = torch.ones(1, 1, 12, 12), torch.zeros(1, 1, 12, 12)
    assert torch.allclose(bidirectional_warp(x, flow, ones), warp_by_flow(x, flow), atol=1e-6)
    assert torch.allclose(bidirectional_warp(x, flow, zeros), warp_by_flow(x, -flow), atol=1e-6)


def test_correlation_offsets_order():
    offs = correlation_offsets(1)
    assert len(offs) == 9 and offs[4] == (0, 0) and offs[5] == (1, 0) and offs[7] == (0, 1)
    assert len(correlation_offsets(2)) == 25


@pytest.mark.parametrize('dx,dy', [(1, 0), (-1, 1), (0, -1), (1, 1)])
def test_correlation_peaks_at_shift(dx, dy):
    torch.manual_seed(1)
    ref = torch.randn(1, 8, 20, 20)
    other = torch.roll(ref, shifts=(dy, dx), dims=(2, 3))     # other(p + d) = ref(p)
    c = local_correlation(ref, other, 1)
    inner = c[:, :, 3:-3, 3:-3].mean((2, 3))[0]
    k = correlation_offsets(1).index((dx, dy))
    assert int(inner.argmax()) == k
    assert inner[k] == pytest.approx(float((ref[:, :, 3:-3, 3:-3] ** 2).mean()), rel=1e-4)
    assert torch.equal(LocalCorrelation(1)(ref, other), c)


def test_correlation_radius2_value_and_border():
    ref = torch.ones(1, 2, 5, 5)
    c = local_correlation(ref, ref * 3.0, 2)
    assert c.shape == (1, 25, 5, 5)
    assert c[0, 12, 2, 2] == pytest.approx(3.0)             # zero offset: mean of 1 * 3
    k = correlation_offsets(2).index((-2, -2))
    assert c[0, k, 0, 0] == 0.0                              # outside: zero padding


def test_upsample_flow_scales_units():
    f = torch.zeros(1, 2, 3, 4)
    f[:, 0], f[:, 1] = 1.5, -2.0
    up = upsample_flow(f, (6, 12))
    assert up.shape == (1, 2, 6, 12)
    assert torch.allclose(up[:, 0], torch.full((1, 6, 12), 4.5))   # x * 12 / 4
    assert torch.allclose(up[:, 1], torch.full((1, 6, 12), -4.0))  # y * 6 / 3


def test_coarse_to_fine_composition():
    coarse = torch.zeros(1, 2, 4, 4)
    coarse[:, 0], coarse[:, 1] = 3.0, -1.0
    head = torch.zeros(1, 2, 8, 8)
    head[:, 0, 2, 5] = 0.5
    fine = compose_flow(coarse, head)
    assert fine[0, 0, 0, 0] == pytest.approx(6.0)      # 2 * 3
    assert fine[0, 1, 7, 7] == pytest.approx(-2.0)     # 2 * -1
    assert fine[0, 0, 2, 5] == pytest.approx(6.5)      # head + 2 * up(coarse)
    # A linear ramp flow survives composition up to the factor 2 (interior).
    ramp = torch.linspace(0, 3, 4).view(1, 1, 1, 4).expand(1, 2, 4, 4).contiguous()
    fine = compose_flow(ramp, torch.zeros(1, 2, 8, 8))
    assert fine[0, 0, 0, 2:6].tolist() == pytest.approx([1.5, 2.5, 3.5, 4.5], abs=1e-5)


def test_warp_recovers_smooth_image_by_composed_flow():
    img = _smooth_image(64, 64)
    d = 3.0
    shifted = warp_by_flow(img, torch.full((1, 2, 64, 64), -d))     # content moved by +d
    coarse = torch.full((1, 2, 16, 32), d / 2)                      # half-resolution estimate
    flow = compose_flow(coarse, torch.zeros(1, 2, 32, 64))
    flow = torch.nn.functional.interpolate(flow, size=(64, 64), mode='nearest')
    flow[:, 1] = d
    rec = warp_by_flow(shifted, flow)
    assert torch.allclose(rec[..., 8:-8, 8:-8], img[..., 8:-8, 8:-8], atol=1e-5)


def test_soft_argmax_finds_offset():
    torch.manual_seed(2)
    ref = torch.randn(1, 4, 24, 24)
    other = torch.roll(ref, shifts=(-1, 2), dims=(2, 3))      # offset (dx, dy) = (2, -1)
    c = local_correlation(ref, other, 2)
    off = soft_argmax_offset(c, 2, 0.05, window=3)[..., 6:-6, 6:-6].mean((2, 3))[0]
    assert off.tolist() == pytest.approx([2.0, -1.0], abs=0.05)


def test_affine_fit_recovers_affine_and_ignores_outliers():
    ys, xs = torch.meshgrid(torch.arange(12.0), torch.arange(16.0), indexing='ij')
    field = torch.stack([0.05 * xs - 0.02 * ys + 1.5, 0.03 * xs + 0.01 * ys - 2.0])[None]
    noisy = field.clone()
    noisy[0, :, 3:5, 4:6] += 30.0                              # a block of outliers
    w = torch.ones(1, 1, 12, 16)
    assert torch.allclose(affine_fit(field, w), field, atol=0.02)
    robust = affine_fit(noisy, w, iters=3, scale=1.0)
    assert float((robust - field).abs().max()) < 0.3
    plain = affine_fit(noisy, w, iters=0)
    assert float((plain - field).abs().max()) > 1.0             # least squares alone is pulled away
    w0 = w.clone()
    w0[0, :, 3:5, 4:6] = 0.0                                   # zero weight: exact again
    assert torch.allclose(affine_fit(noisy, w0, iters=0), field, atol=0.02)


def test_bidirectional_warp_cv_matches_torch():
    """OpenCV form: exact at integer flows, within its 1/32 px position quantisation elsewhere."""
    import numpy as np

    from ros2_regionfuse.models.warp import bidirectional_warp_cv
    x = torch.cat([_smooth_image(48, 64, seed=1), _smooth_image(48, 64, seed=2)], 1)
    m = torch.rand(1, 1, 48, 64, generator=torch.Generator().manual_seed(3))
    whole = torch.zeros(1, 2, 48, 64)
    whole[:, 0], whole[:, 1] = 3.0, -2.0
    sub = _smooth_image(48, 64, seed=4).repeat(1, 2, 1, 1) * 12 - 6      # smooth, +-6 px
    for flow, tol in ((whole, 1e-6), (sub, 4e-3)):
        expect = bidirectional_warp(x, flow, m)[0].numpy()
        got = bidirectional_warp_cv(x[0].numpy(), flow[0].numpy(), m[0, 0].numpy())
        assert got.shape == expect.shape and got.dtype == np.float32
        assert float(np.abs(got - expect).max()) < tol
    # the blend is the formula: m = 1 -> forward warp only
    ones = np.ones((48, 64), np.float32)
    fwd = warp_by_flow(x, sub)[0].numpy()
    assert float(np.abs(bidirectional_warp_cv(x[0].numpy(), sub[0].numpy(), ones) - fwd).max()) < 4e-3


def test_bidirectional_warp_cv_relative_and_absolute_maps_agree(monkeypatch):
    """OpenCV >= 4.10 path (relative maps) and the older absolute-map path: same values, crops too."""
    import numpy as np

    from ros2_regionfuse.models import warp
    if not warp._RELATIVE_MAP:
        pytest.skip('this OpenCV has no WARP_RELATIVE_MAP: only the absolute-map path exists')
    x = _smooth_image(48, 64, seed=5)[0].numpy()
    big = (_smooth_image(56, 72, seed=6).repeat(1, 2, 1, 1) * 16 - 8)[0].numpy()
    flow = big[:, :48, :64]                      # strided rows, as the corrector passes crops
    m = np.random.default_rng(7).random((48, 64)).astype(np.float32)
    rel = warp.bidirectional_warp_cv(x, flow, m).copy()
    monkeypatch.setattr(warp, '_RELATIVE_MAP', 0)
    absolute = warp.bidirectional_warp_cv(x, flow, m)
    assert float(np.abs(rel - absolute).max()) < 1e-6
    assert float(np.abs(rel - x).max()) > 0.05    # the flow moved the image
