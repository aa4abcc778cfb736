"""Synthetic misregistration: seeding, magnitudes, ground-truth flow convention."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from ros2_regionfuse.core.checks import ConfigError
from ros2_regionfuse.models.warp import warp_by_flow
from ros2_regionfuse.training.perturb import (
    Perturbation,
    PerturbConfig,
    apply_perturbation,
    inverse_flow,
    sample_perturbation,
)

NO_PHOTO = PerturbConfig(blur_prob=0.0, noise_std_max=0.0, identity_prob=0.0)


def _texture(h: int, w: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(3)
    x = torch.rand(1, 1, h // 6 + 1, w // 6 + 1, generator=g)
    return torch.nn.functional.interpolate(x, size=(h, w), mode='bicubic', align_corners=False).clamp(0, 1)


def test_same_seed_same_perturbation():
    a = sample_perturbation(120, 160, np.random.default_rng(5))
    b = sample_perturbation(120, 160, np.random.default_rng(5))
    assert np.array_equal(a.affine, b.affine) and a.gain == b.gain and a.parallax == b.parallax
    c = sample_perturbation(120, 160, np.random.default_rng(6))
    assert not np.array_equal(a.affine, c.affine)


@pytest.mark.parametrize('level', [2.0, 8.0, 16.0])
def test_mean_shift_is_exact(level):
    rng = np.random.default_rng(0)
    for _ in range(5):
        p = sample_perturbation(240, 320, rng, NO_PHOTO, mean_shift=level)
        assert p.stats()[0] == pytest.approx(level, rel=1e-6)


def test_training_magnitudes_within_cap():
    cfg = PerturbConfig()
    rng = np.random.default_rng(1)
    w = 640
    maxes = []
    for _ in range(60):
        p = sample_perturbation(480, w, rng, cfg)
        maxes.append(p.stats()[1])
    assert max(maxes) <= cfg.max_disp_px * w / cfg.reference_width + 1e-6
    assert sum(m == 0.0 for m in maxes) >= 3          # identity samples occur (p = 0.2)
    assert max(maxes) > 15.0                           # large shifts occur too


def test_parallax_grows_toward_bottom():
    p = Perturbation(100, 100, parallax=(10.0, 0.0, 0.4, 1.0))
    ys = torch.tensor([10.0, 30.0, 70.0, 99.0], dtype=torch.float64)
    d = p.displacement(torch.full_like(ys, 50.0), ys)
    assert d[0, 0] == 0.0 and d[0, 1] == 0.0
    assert 0.0 < d[0, 2] < d[0, 3]
    assert d[0, 3] == pytest.approx(10.0)


def test_identity_has_zero_flow_and_unchanged_image():
    t = _texture(48, 64)
    p = sample_perturbation(48, 64, np.random.default_rng(0), NO_PHOTO, identity=True)
    tw, flow, valid = apply_perturbation(t, p)
    assert p.is_identity and bool(valid.all())
    assert torch.count_nonzero(flow) == 0
    assert torch.allclose(tw, t, atol=1e-6)


def test_gt_flow_realigns_the_perturbed_image():
    t = _texture(120, 160)
    rng = np.random.default_rng(2)
    for _ in range(3):
        p = sample_perturbation(120, 160, rng, NO_PHOTO, mean_shift=6.0)
        tw, flow, valid = apply_perturbation(t, p)
        raw_err = (tw - t).abs()[valid].mean()
        back = warp_by_flow(tw, flow)              # corrector convention: out(p) = tw(p + phi(p))
        inner = valid.clone()
        inner[..., :12, :] = False
        inner[..., -12:, :] = False
        inner[..., :, :12] = False
        inner[..., :, -12:] = False
        err = (back - t).abs()[inner].mean()
        assert err < 0.2 * raw_err          # residual: two bilinear interpolations


def test_inverse_flow_fixed_point():
    p = sample_perturbation(64, 64, np.random.default_rng(4), NO_PHOTO, mean_shift=5.0)
    ys, xs = torch.meshgrid(torch.arange(64.0, dtype=torch.float64), torch.arange(64.0, dtype=torch.float64),
                            indexing='ij')
    phi = inverse_flow(p, xs, ys)
    resid = phi + p.displacement(xs + phi[0], ys + phi[1])
    assert float(resid.abs().max()) < 1e-4


def test_window_matches_full_image():
    t = _texture(80, 100)
    p = sample_perturbation(80, 100, np.random.default_rng(7), NO_PHOTO, mean_shift=4.0)
    full, flow_full, _ = apply_perturbation(t, p)
    win, flow_win, _ = apply_perturbation(t, p, (10, 20, 30, 40))
    assert win.shape == (1, 1, 40, 30) and flow_win.shape == (1, 2, 40, 30)
    assert torch.allclose(win, full[..., 20:60, 10:40], atol=1e-5)
    assert torch.allclose(flow_win, flow_full[..., 20:60, 10:40], atol=1e-4)


def test_bad_arguments():
    rng = np.random.default_rng(0)
    with pytest.raises(ConfigError):
        sample_perturbation(0, 10, rng)
    with pytest.raises(ConfigError):
        sample_perturbation(10, 10, rng, mean_shift=-1.0)
    p = sample_perturbation(10, 10, rng)
    with pytest.raises(ConfigError):
        apply_perturbation(torch.zeros(1, 1, 12, 10), p)
    with pytest.raises(ConfigError):
        apply_perturbation(torch.zeros(1, 1, 10, 10), p, (5, 5, 10, 10))
