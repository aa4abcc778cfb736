"""Fusion metrics: analytic values on synthetic images, and a slow reference port.

The reference functions at the bottom are direct, loop-free-but-unoptimised
transcriptions of the MATLAB definitions (explicit 2-D kernels, sliding
windows, explicit zero padding); the package's vectorised versions must agree
with them to rounding.
"""
from __future__ import annotations

import math

import cv2
import numpy as np
import pytest
from numpy.lib.stride_tricks import sliding_window_view

from ros2_regionfuse.core import metrics as M
from ros2_regionfuse.core.checks import ShapeError, ValueRangeError

# ---------------------------------------------------------------------------
# fixtures
# ---------------------------------------------------------------------------


@pytest.fixture()
def textured(rng) -> np.ndarray:
    """A smooth-ish random 8-bit texture, 64x80."""
    x = rng.integers(0, 256, (64, 80)).astype(np.float64)
    return np.clip(cv2.GaussianBlur(x, (0, 0), 1.2) * 2.0 - 128.0, 0, 255).round().astype(np.uint8)


def _orthogonal_sources(n: int = 64) -> tuple[np.ndarray, np.ndarray]:
    """IR varies by row only, VI by column only: exactly uncorrelated, equal variance."""
    a = (np.arange(n) % 8) * 10.0 + 20.0
    ir = np.repeat(a[:, None], n, axis=1)
    vi = np.repeat(a[None, :], n, axis=0)
    return ir, vi


# ---------------------------------------------------------------------------
# EN / SD / SF / AG
# ---------------------------------------------------------------------------

def test_entropy_known_values():
    two = np.zeros((8, 8), np.uint8)
    two[:, 4:] = 255
    assert M.entropy(two) == pytest.approx(1.0, abs=1e-12)
    four = np.repeat(np.array([0, 50, 100, 200], np.uint8), 16).reshape(8, 8)
    assert M.entropy(four) == pytest.approx(2.0, abs=1e-12)
    assert M.entropy(np.full((5, 7), 42, np.uint8)) == 0.0
    assert M.entropy(np.arange(256, dtype=np.uint8).reshape(16, 16)) == pytest.approx(8.0, abs=1e-12)


def test_std_dev_known_array():
    x = np.array([[1, 2], [3, 4]], np.uint8)
    assert M.std_dev(x) == pytest.approx(math.sqrt(1.25), abs=1e-12)


def test_spatial_frequency_stripes_and_checkerboard():
    a = 30
    stripes = np.tile(np.array([0, a], np.uint8), (6, 5))  # columns alternate: only RF
    assert M.spatial_frequency(stripes) == pytest.approx(a, abs=1e-12)
    checker = ((np.indices((8, 8)).sum(axis=0) % 2) * a).astype(np.uint8)
    assert M.spatial_frequency(checker) == pytest.approx(a * math.sqrt(2.0), abs=1e-12)


def test_average_gradient_ramp():
    c = 3.0
    ramp = np.tile(np.arange(20) * c, (10, 1))
    assert M.average_gradient(ramp) == pytest.approx(c / math.sqrt(2.0), abs=1e-12)
    assert M.average_gradient(np.full((9, 9), 7, np.uint8)) == 0.0


def test_sharper_and_more_contrasty_scores_higher(textured):
    vi = textured
    blurred = cv2.GaussianBlur(vi, (0, 0), 2.0)
    flat = np.clip((vi.astype(np.float64) - 128.0) * 0.5 + 128.0, 0, 255).round().astype(np.uint8)
    ir = np.full_like(vi, 100)
    sharp_m = M.compute_metrics(vi, ir, vi)
    blur_m = M.compute_metrics(blurred, ir, vi)
    flat_m = M.compute_metrics(flat, ir, vi)
    for name in ('SF', 'AG'):
        assert sharp_m[name] > 1.5 * blur_m[name], name
    assert sharp_m['SD'] == pytest.approx(2.0 * flat_m['SD'], rel=0.02)
    assert sharp_m['SF'] == pytest.approx(2.0 * flat_m['SF'], rel=0.05)


# ---------------------------------------------------------------------------
# MI / SCD
# ---------------------------------------------------------------------------

def test_mi_identical_images_is_twice_entropy(textured):
    m = M.compute_metrics(textured, textured, textured)
    assert m['MI'] == pytest.approx(2.0 * M.entropy(textured), abs=1e-9)
    assert m['EN'] == pytest.approx(M.entropy(textured), abs=1e-12)


def test_mi_invariant_to_bijection_and_zero_for_constant(textured):
    inverted = 255 - textured
    assert M.mutual_information(inverted, textured) == pytest.approx(M.entropy(textured), abs=1e-9)
    assert M.mutual_information(textured, np.full_like(textured, 9)) == pytest.approx(0.0, abs=1e-12)


def test_mi_independent_images_small(rng):
    a = rng.integers(0, 4, (256, 256)).astype(np.uint8) * 60
    b = rng.integers(0, 4, (256, 256)).astype(np.uint8) * 60
    assert M.mutual_information(a, b) < 0.01 < M.entropy(a)


def test_scd_sum_of_sources_is_two():
    ir, vi = _orthogonal_sources()
    fused = ir + vi  # F - VI = IR and F - IR = VI exactly
    assert M.compute_metrics(fused, ir, vi)['SCD'] == pytest.approx(2.0, abs=1e-12)


def test_scd_sign_behaviour():
    ir, vi = _orthogonal_sources()
    # F = VI: corr(0, IR) = 0, corr(VI - IR, VI) = 1/sqrt(2) for uncorrelated equal-variance sources
    assert M.compute_metrics(vi, ir, vi)['SCD'] == pytest.approx(1.0 / math.sqrt(2.0), abs=1e-12)
    # thermal contrast inverted: F = 200 - IR
    # -> corr(200 - IR - VI, IR) = -1/sqrt(2), corr(200 - 2 IR, VI) = 0
    assert M.compute_metrics(200.0 - ir, ir, vi)['SCD'] == pytest.approx(-1.0 / math.sqrt(2.0), abs=1e-12)


# ---------------------------------------------------------------------------
# VIF / SSIM / Qabf
# ---------------------------------------------------------------------------

def test_vif_identity_is_one_per_source(textured):
    assert M.vif_pixel(textured, textured) == pytest.approx(1.0, abs=1e-9)
    assert M.compute_metrics(textured, textured, textured)['VIF'] == pytest.approx(2.0, abs=1e-9)


def test_vif_noise_lowers_contrast_stretch_raises(textured, rng):
    x = textured.astype(np.float64)
    noisy = np.clip(x + rng.normal(0, 20, x.shape), 0, 255)
    stretched = np.clip((x - x.mean()) * 1.3 + x.mean(), 0, 255)  # linear contrast enhancement
    assert M.vif_pixel(x, noisy) < 0.8
    assert M.vif_pixel(x, stretched) > 1.05  # VIF rewards contrast enhancement (Sheikh & Bovik)


def test_vif_constant_reference_convention(textured):
    assert M.vif_pixel(np.full_like(textured, 80), textured) == 1.0


def test_ssim_identity_and_degradations(textured, rng):
    assert M.ssim(textured, textured) == pytest.approx(1.0, abs=1e-12)
    noisy = np.clip(textured + rng.normal(0, 25, textured.shape), 0, 255)
    assert M.ssim(noisy, textured) < 0.9
    assert M.ssim(255 - textured.astype(np.float64), textured) < 0.0
    assert M.ssim(noisy, textured) == pytest.approx(M.ssim(textured, noisy), abs=1e-12)


def test_qabf_fused_equals_visible_with_constant_ir(textured):
    p = M.QABF
    perfect = p.tg * p.ta / (1.0 + math.exp(p.ka * (1.0 - p.da)))
    q = M.qabf(textured, np.zeros_like(textured), textured)
    assert q == pytest.approx(perfect, abs=1e-3)
    assert 0.97 < q < 1.0


def test_qabf_symmetric_in_sources_and_zero_for_flat_fusion(textured):
    zero = np.zeros_like(textured)
    assert M.qabf(textured, textured, zero) == pytest.approx(M.qabf(textured, zero, textured), abs=1e-12)
    assert M.qabf(zero, textured, np.full_like(textured, 1)) < 1e-3
    assert M.qabf(zero, zero, zero) == 0.0


def test_qabf_prefers_fusion_keeping_both_sources(textured):
    ir = np.zeros_like(textured)
    ir[16:48, 8:30] = 200  # a warm object on the left
    vi = np.zeros_like(textured)
    vi[:, 40:] = textured[:, 40:]  # texture on the right only
    both = np.maximum(ir, vi)
    q_both = M.qabf(both, ir, vi)
    assert q_both > 0.9
    assert q_both > M.qabf(vi, ir, vi) + 0.05
    assert q_both > M.qabf(ir, ir, vi) + 0.05


# ---------------------------------------------------------------------------
# interface and bad input
# ---------------------------------------------------------------------------

def test_compute_metrics_names_order_and_finite(textured):
    ir = np.clip(textured.astype(int) + 40, 0, 255).astype(np.uint8)
    m = M.compute_metrics(textured, ir, textured)
    assert tuple(m) == M.METRIC_NAMES == ('EN', 'SD', 'SF', 'AG', 'MI', 'SCD', 'VIF', 'Qabf', 'SSIM')
    assert all(isinstance(v, float) and math.isfinite(v) for v in m.values())


def test_bad_input_raises_typed_errors(textured):
    with pytest.raises(ShapeError, match='differs'):
        M.compute_metrics(textured, textured[:-1], textured)
    with pytest.raises(ShapeError, match='channels'):
        M.compute_metrics(np.dstack([textured] * 3), textured, textured)
    bad = textured.astype(np.float32)
    bad[3, 3] = np.nan
    with pytest.raises(ValueRangeError, match='NaN'):
        M.compute_metrics(bad, textured, textured)
    with pytest.raises(ShapeError, match='empty'):
        M.entropy(np.zeros((0, 4), np.uint8))
    with pytest.raises(ShapeError, match='window'):
        M.ssim(np.zeros((8, 8)), np.zeros((8, 8)))


# ---------------------------------------------------------------------------
# agreement with a slow, direct transcription of the MATLAB definitions
# ---------------------------------------------------------------------------

def _fspecial(n: int, s: float) -> np.ndarray:
    r = (n - 1) / 2
    y, x = np.ogrid[-r:r + 1, -r:r + 1]
    h = np.exp(-(x * x + y * y) / (2 * s * s))
    return h / h.sum()


def _filter2_valid(img: np.ndarray, w: np.ndarray) -> np.ndarray:
    return np.einsum('ijkl,kl->ij', sliding_window_view(img, w.shape), w)


def _ref_vifp(ref: np.ndarray, dist: np.ndarray) -> float:
    ref, dist = ref.astype(float), dist.astype(float)
    num = den = 0.0
    for scale in range(1, 5):
        n = 2 ** (5 - scale) + 1
        w = _fspecial(n, n / 5)
        if scale > 1:
            ref = _filter2_valid(ref, w)[::2, ::2]
            dist = _filter2_valid(dist, w)[::2, ::2]
        mu1, mu2 = _filter2_valid(ref, w), _filter2_valid(dist, w)
        s1 = _filter2_valid(ref * ref, w) - mu1 ** 2
        s2 = _filter2_valid(dist * dist, w) - mu2 ** 2
        s12 = _filter2_valid(ref * dist, w) - mu1 * mu2
        s1[s1 < 0] = 0
        s2[s2 < 0] = 0
        g = s12 / (s1 + 1e-10)
        sv = s2 - g * s12
        g[s1 < 1e-10] = 0
        sv[s1 < 1e-10] = s2[s1 < 1e-10]
        s1[s1 < 1e-10] = 0
        g[s2 < 1e-10] = 0
        sv[s2 < 1e-10] = 0
        sv[g < 0] = s2[g < 0]
        g[g < 0] = 0
        sv[sv <= 1e-10] = 1e-10
        num += np.sum(np.log10(1 + g ** 2 * s1 / (sv + 2)))
        den += np.sum(np.log10(1 + s1 / 2))
    return num / den


def _ref_ssim(a: np.ndarray, b: np.ndarray) -> float:
    a, b = a.astype(float), b.astype(float)
    w = _fspecial(11, 1.5)
    c1, c2 = (0.01 * 255) ** 2, (0.03 * 255) ** 2
    m1, m2 = _filter2_valid(a, w), _filter2_valid(b, w)
    s1 = _filter2_valid(a * a, w) - m1 ** 2
    s2 = _filter2_valid(b * b, w) - m2 ** 2
    s12 = _filter2_valid(a * b, w) - m1 * m2
    return float(np.mean((2 * m1 * m2 + c1) * (2 * s12 + c2) / ((m1 ** 2 + m2 ** 2 + c1) * (s1 + s2 + c2))))


def _ref_qabf(f: np.ndarray, a: np.ndarray, b: np.ndarray) -> float:
    h1 = np.array([[1, 2, 1], [0, 0, 0], [-1, -2, -1]], float)
    h3 = np.array([[-1, 0, 1], [-2, 0, 2], [-1, 0, 1]], float)

    def conv2_same(img, h):
        return _filter2_valid(np.pad(img, 1), h[::-1, ::-1])

    def strength_angle(img):
        img = img.astype(float)
        sx, sy = conv2_same(img, h3), conv2_same(img, h1)
        ang = np.full_like(img, math.pi / 2)
        nz = sx != 0
        ang[nz] = np.arctan(sy[nz] / sx[nz])
        return np.sqrt(sx * sx + sy * sy), ang

    def q(ga, aa, gf, af):
        g = np.zeros_like(ga)
        m = ga > gf
        g[m] = gf[m] / ga[m]
        m = ga == gf
        g[m] = gf[m]
        m = ga < gf
        g[m] = ga[m] / gf[m]
        orient = 1 - np.abs(aa - af) / (math.pi / 2)
        return 0.9994 / (1 + np.exp(-15 * (g - 0.5))) * 0.9879 / (1 + np.exp(-22 * (orient - 0.8)))

    ga, aa = strength_angle(a)
    gb, ab = strength_angle(b)
    gf, af = strength_angle(f)
    return float(np.sum(q(ga, aa, gf, af) * ga + q(gb, ab, gf, af) * gb) / np.sum(ga + gb))


def test_matches_direct_reference_on_real_pair(test_data):
    ir = cv2.imread(str(test_data / 'ir' / '00537D.png'), cv2.IMREAD_GRAYSCALE)
    vi = cv2.cvtColor(cv2.imread(str(test_data / 'vi' / '00537D.png')), cv2.COLOR_BGR2GRAY)
    fused = np.maximum(ir, vi)
    assert M.vif_pixel(ir, fused) == pytest.approx(_ref_vifp(ir, fused), rel=1e-9)
    assert M.vif_pixel(vi, fused) == pytest.approx(_ref_vifp(vi, fused), rel=1e-9)
    assert M.ssim(fused, ir) == pytest.approx(_ref_ssim(fused, ir), rel=1e-9)
    assert M.qabf(fused, ir, vi) == pytest.approx(_ref_qabf(fused, ir, vi), rel=1e-9)
