"""Global similarity registration (models/global_align.py) and its use in the corrector."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from ros2_regionfuse.core import convert
from ros2_regionfuse.core.imageio import read_gray, read_rgb
from ros2_regionfuse.models.corrector import Corrector, CorrectorArchitecture
from ros2_regionfuse.models.global_align import (
    GlobalAlignConfig,
    centred_coords,
    compose_inverse,
    estimate_similarity,
    field_on_grid,
    gain_gate,
    similarity_field,
    similarity_flow,
    solve_spd,
    steepest_descent,
)
from ros2_regionfuse.models.warp import warp_by_flow


def _pair(test_data, stem: str) -> tuple[torch.Tensor, torch.Tensor]:
    th = read_gray(test_data / 'ir' / f'{stem}.png', as_uint8=True).astype(np.float32) / 255.0
    vis = convert.luminance(convert.rgb_to_unit(read_rgb(test_data / 'vi' / f'{stem}.png')))
    return convert.to_tensor(vis), convert.to_tensor(th)


def _field(params: list[float], h: int, w: int) -> torch.Tensor:
    u, v = centred_coords(h, w, h, w, torch.zeros(1))
    return similarity_field(torch.tensor([params]), u, v)


def test_solve_spd_matches_linalg():
    g = torch.Generator().manual_seed(0)
    m = torch.randn(3, 4, 4, generator=g)
    a = m @ m.transpose(1, 2) + 0.5 * torch.eye(4)
    b = torch.randn(3, 4, generator=g)
    expected = torch.linalg.solve(a, b.unsqueeze(-1)).squeeze(-1)
    assert torch.allclose(solve_spd(a, b), expected, atol=1e-4)


def test_steepest_descent_matches_autograd_jacobian():
    """The Jacobian of the linearised residual r(p) = r0 + jx phi_x(p) + jy phi_y(p), against
    autograd through similarity_field (independent of the closed form)."""
    g = torch.Generator().manual_seed(1)
    jx, jy, r = (torch.randn(2, 3, 5, 7, generator=g, dtype=torch.float64) for _ in range(3))
    u, v = centred_coords(5, 7, 40, 56, jx)
    jac = steepest_descent(jx, jy, u, v)
    assert jac.shape == (2, 4, 3 * 5 * 7)
    for i in range(2):
        def residual(p: torch.Tensor, i: int = i) -> torch.Tensor:
            phi = similarity_field(p.view(1, 4), u, v)
            return (r[i] + jx[i] * phi[0, 0] + jy[i] * phi[0, 1]).reshape(-1)
        expected = torch.autograd.functional.jacobian(residual, torch.zeros(4, dtype=torch.float64))
        assert torch.allclose(jac[i], expected.t(), rtol=1e-9, atol=1e-9)


def _similarity_matrix(p: list[float]) -> np.ndarray:
    tx, ty, a, b = p
    return np.array([[1 + a, -b, tx], [b, 1 + a, ty], [0.0, 0.0, 1.0]])


def test_compose_inverse_is_the_composed_warp():
    """W(p) o W(s)^-1 as 3x3 matrices on centred coordinates (W(x) = x + phi(x)), in torch and numpy."""
    from ros2_regionfuse.models.global_align import _compose_inverse_np
    rng = np.random.default_rng(4)
    for _ in range(5):
        p = rng.normal(0, [5, 5, 0.03, 0.03]).tolist()
        st = rng.normal(0, [2, 2, 0.01, 0.01]).tolist()
        m = _similarity_matrix(p) @ np.linalg.inv(_similarity_matrix(st))
        expected = [m[0, 2], m[1, 2], m[0, 0] - 1, m[1, 0]]
        assert m[1, 1] == pytest.approx(m[0, 0]) and m[0, 1] == pytest.approx(-m[1, 0])   # still a similarity
        got = compose_inverse(torch.tensor([p], dtype=torch.float64), torch.tensor([st], dtype=torch.float64))
        np.testing.assert_allclose(got[0].numpy(), expected, rtol=1e-10, atol=1e-12)
        np.testing.assert_allclose(_compose_inverse_np(np.array(p), np.array(st)), expected,
                                   rtol=1e-10, atol=1e-12)
    # the field of the composition moves every pixel like the two warps in turn
    p, st = [4.0, -3.0, 0.02, -0.01], [1.0, 0.5, 0.005, 0.003]
    u, v = centred_coords(6, 8, 60, 80, torch.zeros(1, dtype=torch.float64))
    x = torch.stack([u, v]).reshape(2, -1)
    inv_st = torch.linalg.solve(torch.tensor(_similarity_matrix(st)), torch.cat([x, torch.ones(1, x.shape[1],
                                                                                               dtype=x.dtype)]))
    moved = torch.tensor(_similarity_matrix(p)) @ inv_st
    field = similarity_field(compose_inverse(torch.tensor([p], dtype=torch.float64),
                                             torch.tensor([st], dtype=torch.float64)), u, v).reshape(2, -1)
    assert torch.allclose(x + field, moved[:2], atol=1e-9)


def test_similarity_field_is_rotation_scale_translation():
    # centre pixel of a 5x5 image has u = v = 0 (coordinates of pixel centres, origin at the image centre)
    f = _field([2.0, -1.0, 0.1, 0.05], 5, 5)
    assert f[0, :, 2, 2].tolist() == pytest.approx([2.0, -1.0])
    # one pixel right of the centre (u = 1, v = 0): + (a, b)
    assert f[0, :, 2, 3].tolist() == pytest.approx([2.1, -0.95])
    # one pixel below (u = 0, v = 1): + (-b, a)
    assert f[0, :, 3, 2].tolist() == pytest.approx([1.95, -0.9])


@pytest.mark.parametrize('stem', ['tno17', 'FLIR_05005', '00537D'])
def test_recovers_known_similarity_on_real_pair(test_data, stem):
    """A known similarity applied to the thermal image is recovered on top of the pair's own
    residual misregistration (up to ~2 px on these pairs: the estimate on the pair as given)."""
    vis, th = _pair(test_data, stem)
    h, w = vis.shape[-2:]
    truth = _field([6.0, -4.0, 0.02, 0.015], h, w)
    # thermal content that belongs at p is found at p + truth(p) (the corrector's convention)
    moved = warp_by_flow(th, -truth)
    with torch.no_grad():
        params, gain = estimate_similarity(vis, moved)
        params_aligned, gain_aligned = estimate_similarity(vis, th)
        est = similarity_flow(vis, moved)
        est_aligned = field_on_grid(params_aligned, (h, w))
    shift = float(torch.linalg.vector_norm(truth, dim=1).mean())
    own = float(torch.linalg.vector_norm(est_aligned, dim=1).mean())
    assert own < 3.0   # the pairs are nearly registered
    err = float(torch.linalg.vector_norm(est - truth, dim=1).mean())
    consistent = float(torch.linalg.vector_norm(est - est_aligned - truth, dim=1).mean())
    assert (params - params_aligned)[0, :2].tolist() == pytest.approx([6.0, -4.0], abs=1.0)
    assert consistent < 0.12 * shift, (consistent, shift)
    assert err < 0.12 * shift + own, (err, shift, own)
    # the misaligned pair's descriptor difference drops far more than the aligned pair's
    assert float(gain) > float(gain_aligned) + 0.1
    assert float(gain) > GlobalAlignConfig().gain_high   # not gated away


def test_flat_input_gives_zero_without_nan():
    flat = torch.full((1, 1, 64, 96), 0.4)
    params, gain = estimate_similarity(flat, flat)
    assert torch.isfinite(params).all() and torch.isfinite(gain).all()
    assert params.abs().max() < 1e-3
    assert float(similarity_flow(flat, flat).abs().max()) < 1e-3
    tiny = torch.rand(1, 1, 8, 8)
    assert estimate_similarity(tiny, tiny)[0].abs().max() == 0.0   # below the minimum size


def test_gain_gate_ramps():
    cfg = GlobalAlignConfig(gain_low=0.1, gain_high=0.3)
    assert gain_gate(torch.tensor([0.0, 0.1, 0.2, 0.3, 0.9]), cfg).tolist() == pytest.approx(
        [0.0, 0.0, 0.5, 1.0, 1.0])


@pytest.mark.parametrize('h,w', [(134, 256), (120, 150)])
def test_corrector_starts_from_global_flow(test_data, h, w):
    """refine=False: the corrector's flow is the gated similarity field, through padding and
    upsampling (no dead zone: min_shift 0)."""
    vis, th = _pair(test_data, 'FLIR_05005')
    vis, th = vis[..., :h, :w], th[..., :h, :w]
    truth = _field([5.0, 3.0, 0.01, -0.01], h, w)
    moved = warp_by_flow(th, -truth)
    model = Corrector(CorrectorArchitecture(global_align=True, refine=False, min_shift=0.0)).eval()
    with torch.no_grad():
        out = model(vis, vis, moved)
        ref = similarity_flow(vis, moved)
    inner = (slice(None), slice(None), slice(16, h - 16), slice(16, w - 16))
    assert float(ref.abs().max()) > 3.0
    assert torch.allclose(out.flow[inner], ref[inner], atol=0.05)


def test_corrector_init_flow_replaces_start():
    model = Corrector(CorrectorArchitecture(refine=False, min_shift=0.0)).eval()
    x = torch.rand(1, 1, 64, 96, generator=torch.Generator().manual_seed(3))
    init = _field([4.0, -2.0, 0.0, 0.0], 64, 96)
    with torch.no_grad():
        out = model(x, x, x, init_flow=init)
        zero = model(x, x, x)
    assert torch.allclose(out.flow, init, atol=1e-4)
    assert float(zero.flow.abs().max()) < 1e-6   # untrained heads, no global start: zero flow


def test_translation_search_finds_integer_shift_per_batch_item():
    from ros2_regionfuse.models.global_align import _translation_search
    g = torch.Generator().manual_seed(5)
    dv = torch.nn.functional.avg_pool2d(torch.rand(2, 4, 40, 48, generator=g), 3, 1, 1)
    shifts = [(2, -3), (-1, 4)]   # (dx, dy) cells: dt(p + d) = dv(p)
    dt = torch.stack([torch.roll(dv[i], (dy, dx), (1, 2)) for i, (dx, dy) in enumerate(shifts)])
    inner = torch.zeros(1, 1, 40, 48)
    inner[..., 6:-6, 6:-6] = 1.0   # leave the wrapped-around border out, as the solver's margin does
    start = _translation_search(dv * inner, dt, radius=4, down=8)
    assert start[:, :2].tolist() == [[16.0, -24.0], [-8.0, 32.0]]
    assert start[:, 2:].abs().max() == 0.0
    # no evidence (flat descriptors): zero, not the first offset
    flat = torch.zeros(1, 4, 40, 48)
    assert _translation_search(flat, flat, radius=4, down=8).abs().max() == 0.0


@pytest.mark.parametrize('stem', ['tno17', 'FLIR_05005', '00537D'])
def test_opencv_solver_matches_torch_on_real_pairs(test_data, stem):
    """estimate_similarity_cv against the torch solver, on an aligned and a moved real pair."""
    from ros2_regionfuse.models.global_align import estimate_similarity_cv
    vis, th = _pair(test_data, stem)
    h, w = vis.shape[-2:]
    moved = warp_by_flow(th, -_field([6.0, -4.0, 0.02, 0.015], h, w))
    for t in (th, moved):
        with torch.no_grad():
            p_torch, g_torch = estimate_similarity(vis, t)
        p_cv, g_cv = estimate_similarity_cv(vis[0, 0].numpy(), t[0, 0].numpy())
        f_torch = similarity_flow(vis, t)
        f_cv = similarity_flow(vis, t, opencv=True)
        assert p_cv.dtype == np.float32 and p_cv.shape == (4,)
        # the fields agree to a small fraction of a pixel (OpenCV samples at 1/32 cell)
        assert float(torch.linalg.vector_norm(f_cv - f_torch, dim=1).max()) < 0.02
        assert float(torch.linalg.vector_norm(_field(p_cv.tolist(), h, w) - _field(p_torch[0].tolist(), h, w),
                                              dim=1).max()) < 0.02
        assert g_cv == pytest.approx(float(g_torch), abs=2e-3)
    assert float(torch.linalg.vector_norm(f_cv, dim=1).mean()) > 3.0   # the moved pair was registered


def test_opencv_steepest_descent_matches_torch():
    """The OpenCV solver's Jacobian (channels last, per input px) and Gauss-Newton matrix against torch."""
    from ros2_regionfuse.models.global_align import _steepest_descent_cv
    g = torch.Generator().manual_seed(2)
    gx, gy, r = (torch.randn(1, 4, 6, 9, generator=g) for _ in range(3))
    u, v = centred_coords(6, 9, 48, 72, gx)
    down = 8
    jac = steepest_descent(gx / down, gy / down, u, v)[0].double()
    to_hwc = lambda x: np.ascontiguousarray(x[0].permute(1, 2, 0).numpy())  # noqa: E731
    sd, hess = _steepest_descent_cv(to_hwc(gx), to_hwc(gy), u[0, 0, 0].numpy().astype(np.float64),
                                    v[0, 0, :, 0].numpy().astype(np.float64), down)
    assert sd.dtype == np.float32 and sd.shape == (4, 6 * 9 * 4) and hess.dtype == np.float64
    np.testing.assert_allclose(hess, (jac @ jac.t()).numpy(), rtol=1e-4, atol=1e-3)
    np.testing.assert_allclose(sd.astype(np.float64) @ to_hwc(r).reshape(-1),
                               (jac @ r.reshape(-1).double()).numpy(), rtol=1e-4, atol=1e-3)


def test_opencv_solver_flat_and_tiny_inputs():
    from ros2_regionfuse.models.global_align import estimate_similarity_cv
    flat = np.full((64, 96), 0.4, np.float32)
    p, gain = estimate_similarity_cv(flat, flat)
    assert np.isfinite(p).all() and np.isfinite(gain)
    assert np.abs(p).max() < 1e-3
    tiny = np.random.default_rng(0).random((2, 8, 8), dtype=np.float32)
    p, gain = estimate_similarity_cv(tiny[0], tiny[1])
    assert np.abs(p).max() == 0.0 and gain == 0.0


@pytest.mark.parametrize('hw', [(16, 2000), (40, 1300), (60, 1920)])
def test_wide_short_frames_keep_enough_rows(hw):
    """Very wide, short inputs (e.g. a panoramic strip) used to be pooled to 1-2 rows at the
    coarsest level: a crash in torch, NaN in OpenCV. Both solvers now return finite values that agree."""
    from ros2_regionfuse.models.global_align import estimate_similarity_cv
    g = torch.Generator().manual_seed(hw[1])
    v = torch.nn.functional.avg_pool2d(torch.rand(1, 1, *hw, generator=g), 3, 1, 1)
    t = torch.roll(v, 3, dims=3)
    assert hw[0] // GlobalAlignConfig().factors(hw[1], hw[0])[0] >= 16   # rows at the coarsest level
    with torch.no_grad():
        p_torch, g_torch = estimate_similarity(v, t)
    p_cv, g_cv = estimate_similarity_cv(v[0, 0].numpy(), t[0, 0].numpy())
    assert torch.isfinite(p_torch).all() and np.isfinite(p_cv).all()
    assert np.isfinite(g_cv) and bool(torch.isfinite(g_torch).all())
    np.testing.assert_allclose(p_cv[:2], p_torch[0, :2].numpy(), atol=0.05)
    assert p_cv[:2].tolist() == pytest.approx([3.0, 0.0], abs=0.1)   # the 3 px roll is found
