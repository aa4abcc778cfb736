"""The nine standard image-fusion quality metrics, on 8-bit gray images.

Definitions follow the infrared/visible fusion literature and the MATLAB code
its papers use (VIFB toolbox, the LIVE ``vifp_mscale``, Xydeas-Petrović
``Qabf``, Wang et al. ``ssim_index``); all work on images with values in
[0, 255] held as float64. Every metric is "higher is better".

=====  ======================================================================
EN     entropy (bits) of the 256-bin gray histogram of F
SD     standard deviation of F (population, divisor M*N)
SF     spatial frequency sqrt(RF^2 + CF^2), RF/CF = RMS of horizontal/vertical
       first differences
AG     average gradient: mean of sqrt((gx^2 + gy^2) / 2), central differences
       inside, one-sided at the border (MATLAB ``gradient``)
MI     MI(F, IR) + MI(F, VI), log2, 256x256-bin joint histograms
SCD    corr(F - VI, IR) + corr(F - IR, VI) (Aslantas & Bendes)
VIF    vifp(IR, F) + vifp(VI, F): pixel-domain VIF, 4 scales, Gaussian windows
       of size 2^(5-s)+1 and sigma size/5, sigma_n^2 = 2, 'valid' filtering
Qabf   Xydeas-Petrović edge preservation with 3x3 Sobel (zero padding),
       Tg=0.9994, kg=-15, Dg=0.5, Ta=0.9879, ka=-22, Da=0.8, L=1
SSIM   SSIM(F, IR) + SSIM(F, VI): 11x11 Gaussian window, sigma 1.5,
       K1=0.01, K2=0.03, L=255, mean over the 'valid' SSIM map
=====  ======================================================================

Notes: MI is in bits (some Python code, e.g. ``sklearn.mutual_info_score``,
reports nats). Qabf reproduces the reference MATLAB exactly, including two
quirks: the orientation is ``pi/2`` where the x response is 0, and the
strength ratio of two *equal* strengths is the strength itself rather than 1
(harmless on 8-bit images, whose non-zero Sobel magnitudes are >= 1).
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import cv2
import numpy as np

from .checks import ShapeError, check_image

METRIC_NAMES: tuple[str, ...] = ('EN', 'SD', 'SF', 'AG', 'MI', 'SCD', 'VIF', 'Qabf', 'SSIM')
"""Metric names in their conventional table order."""

_LEVELS = 256  # number of gray levels / histogram bins of an 8-bit image


@dataclass(frozen=True)
class QabfParams:
    """Constants of the Xydeas-Petrović sigmoids (the values every paper uses)."""

    tg: float = 0.9994
    kg: float = -15.0
    dg: float = 0.5
    ta: float = 0.9879
    ka: float = -22.0
    da: float = 0.8
    weight_exp: float = 1.0  # L: exponent of the edge-strength weights


@dataclass(frozen=True)
class SsimParams:
    """Constants of SSIM (Wang et al. 2004)."""

    window: int = 11
    sigma: float = 1.5
    k1: float = 0.01
    k2: float = 0.03
    data_range: float = 255.0


@dataclass(frozen=True)
class VifParams:
    """Constants of pixel-domain VIF (Sheikh & Bovik, ``vifp_mscale``)."""

    scales: int = 4
    sigma_nsq: float = 2.0  # variance of the visual noise
    eps: float = 1e-10


QABF = QabfParams()
SSIM = SsimParams()
VIF = VifParams()


# ---------------------------------------------------------------------------
# helpers
# ---------------------------------------------------------------------------

def _as_float(img: np.ndarray, name: str) -> np.ndarray:
    """Validate a 2-D gray image and return it as float64 in its own units."""
    img = check_image(img, name, channels=(1,))
    return img.astype(np.float64, copy=False)


def _as_levels(img: np.ndarray) -> np.ndarray:
    """Round a [0, 255] image to integer gray levels (int64) for histograms."""
    return np.clip(np.rint(img), 0, _LEVELS - 1).astype(np.int64)


def _gauss_1d(size: int, sigma: float) -> np.ndarray:
    """Normalised 1-D Gaussian kernel of odd ``size`` (MATLAB ``fspecial`` rows)."""
    r = (size - 1) / 2.0
    x = np.arange(size, dtype=np.float64) - r
    k = np.exp(-(x * x) / (2.0 * sigma * sigma))
    return k / k.sum()


def _filter_valid(img: np.ndarray, k1d: np.ndarray) -> np.ndarray:
    """Separable symmetric filter, keeping only the 'valid' part (no padding used).

    Args:
        img: ``(H, W)`` float64.
        k1d: odd-length symmetric 1-D kernel (length n).

    Returns:
        ``(H - n + 1, W - n + 1)`` float64.
    """
    n = k1d.size
    r = n // 2
    out = cv2.sepFilter2D(img, cv2.CV_64F, k1d, k1d, borderType=cv2.BORDER_REFLECT)
    return out[r:img.shape[0] - r, r:img.shape[1] - r]


def _check_same_size(fused: np.ndarray, *sources: np.ndarray) -> None:
    for s in sources:
        if s.shape != fused.shape:
            raise ShapeError(f'metrics: source shape {s.shape} differs from fused shape {fused.shape}')


# ---------------------------------------------------------------------------
# no-reference metrics (of F alone)
# ---------------------------------------------------------------------------

def entropy(img: np.ndarray) -> float:
    """EN: Shannon entropy (bits) of the 256-bin histogram.

    Args:
        img: ``(H, W)`` gray image, values in [0, 255] (rounded to levels).

    Example:
        >>> entropy(np.array([[0, 255], [0, 255]], np.uint8))
        1.0
    """
    h = np.bincount(_as_levels(_as_float(img, 'image')).ravel(), minlength=_LEVELS).astype(np.float64)
    p = h[h > 0] / h.sum()
    return float(-(p * np.log2(p)).sum()) + 0.0


def std_dev(img: np.ndarray) -> float:
    """SD: standard deviation (population) of the gray values.

    Example:
        >>> std_dev(np.array([[0, 2], [0, 2]], np.uint8))
        1.0
    """
    return float(np.std(_as_float(img, 'image')))


def spatial_frequency(img: np.ndarray) -> float:
    """SF: ``sqrt(RF^2 + CF^2)`` with RF/CF the RMS horizontal/vertical first differences.

    Example:
        >>> spatial_frequency(np.array([[0, 3], [0, 3]], np.uint8))
        3.0
    """
    x = _as_float(img, 'image')
    rf2 = float(np.mean(np.diff(x, axis=1) ** 2)) if x.shape[1] > 1 else 0.0
    cf2 = float(np.mean(np.diff(x, axis=0) ** 2)) if x.shape[0] > 1 else 0.0
    return math.sqrt(rf2 + cf2)


def average_gradient(img: np.ndarray) -> float:
    """AG: mean of ``sqrt((gx^2 + gy^2) / 2)`` with MATLAB ``gradient`` differences.

    Example:
        >>> round(average_gradient(np.tile(np.arange(4, dtype=np.uint8) * 2, (3, 1))), 4)
        1.4142
    """
    x = _as_float(img, 'image')
    if min(x.shape) < 2:
        return 0.0
    gy, gx = np.gradient(x)
    return float(np.mean(np.sqrt((gx * gx + gy * gy) * 0.5)))


# ---------------------------------------------------------------------------
# reference metrics (F against one source)
# ---------------------------------------------------------------------------

def mutual_information(a: np.ndarray, b: np.ndarray) -> float:
    """MI(a, b) in bits from the 256x256-bin joint histogram of two gray images.

    Example:
        >>> x = np.array([[0, 255], [0, 255]], np.uint8)
        >>> mutual_information(x, x)
        1.0
    """
    la = _as_levels(_as_float(a, 'a')).ravel()
    lb = _as_levels(_as_float(b, 'b')).ravel()
    if la.size != lb.size:
        raise ShapeError(f'mutual_information: sizes differ ({a.shape} vs {b.shape})')
    joint = np.bincount(la * _LEVELS + lb, minlength=_LEVELS * _LEVELS).astype(np.float64)
    joint = joint.reshape(_LEVELS, _LEVELS) / la.size
    pa = joint.sum(axis=1)
    pb = joint.sum(axis=0)
    nz = joint > 0
    outer = pa[:, None] * pb[None, :]
    return float((joint[nz] * np.log2(joint[nz] / outer[nz])).sum()) + 0.0


def _corr(a: np.ndarray, b: np.ndarray) -> float:
    """Pearson correlation of two arrays; 0 when either is constant."""
    da = a - a.mean()
    db = b - b.mean()
    den = math.sqrt(float((da * da).sum()) * float((db * db).sum()))
    return 0.0 if den == 0.0 else float((da * db).sum()) / den


def vif_pixel(ref: np.ndarray, dist: np.ndarray, params: VifParams = VIF) -> float:
    """Pixel-domain VIF of ``dist`` against ``ref`` (Sheikh & Bovik, ``vifp_mscale``).

    Args:
        ref: ``(H, W)`` reference (a source image), [0, 255].
        dist: ``(H, W)`` test image (the fused image), [0, 255].
        params: VIF constants.

    Returns:
        VIF, 1.0 for ``dist == ref``; 1.0 by convention when ``ref`` carries no
        information at all (a constant image, where the ratio is 0/0).

    Example:
        >>> x = np.random.default_rng(0).integers(0, 256, (64, 64)).astype(np.uint8)
        >>> round(vif_pixel(x, x), 6)
        1.0
    """
    r = _as_float(ref, 'ref')
    d = _as_float(dist, 'dist')
    _check_same_size(d, r)
    # VIF uses only (co)variances: removing the means keeps the result and avoids
    # cancellation noise in E[x^2] - E[x]^2 (a constant image gets exactly zero variance).
    r = r - r.mean()
    d = d - d.mean()
    eps = params.eps
    num = den = 0.0
    for scale in range(1, params.scales + 1):
        n = 2 ** (params.scales - scale + 1) + 1
        k = _gauss_1d(n, n / 5.0)
        if scale > 1:
            if min(r.shape) < n:
                break
            r = _filter_valid(r, k)[::2, ::2]
            d = _filter_valid(d, k)[::2, ::2]
        if min(r.shape) < n:
            break
        mu1 = _filter_valid(r, k)
        mu2 = _filter_valid(d, k)
        s1 = np.maximum(_filter_valid(r * r, k) - mu1 * mu1, 0.0)
        s2 = np.maximum(_filter_valid(d * d, k) - mu2 * mu2, 0.0)
        s12 = _filter_valid(r * d, k) - mu1 * mu2
        g = s12 / (s1 + eps)
        sv = s2 - g * s12
        low1 = s1 < eps
        g[low1] = 0.0
        sv[low1] = s2[low1]
        s1[low1] = 0.0
        low2 = s2 < eps
        g[low2] = 0.0
        sv[low2] = 0.0
        neg = g < 0
        sv[neg] = s2[neg]
        g[neg] = 0.0
        sv = np.maximum(sv, eps)
        num += float(np.log10(1.0 + g * g * s1 / (sv + params.sigma_nsq)).sum())
        den += float(np.log10(1.0 + s1 / params.sigma_nsq).sum())
    return 1.0 if den == 0.0 else num / den


def _sobel(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Edge strength and orientation of a gray image, as the reference MATLAB ``Qabf``.

    ``conv2(x, h, 'same')`` with the Sobel kernels: zero padding, true
    convolution (so the x response has the opposite sign of ``cv2.Sobel``'s),
    orientation ``atan(sy / sx)`` and ``pi/2`` where ``sx == 0``. The sign
    matters only through that ``pi/2`` convention, kept for comparable numbers.
    """
    sx = -cv2.Sobel(x, cv2.CV_64F, 1, 0, ksize=3, borderType=cv2.BORDER_CONSTANT)
    sy = cv2.Sobel(x, cv2.CV_64F, 0, 1, ksize=3, borderType=cv2.BORDER_CONSTANT)
    g = np.sqrt(sx * sx + sy * sy)
    zero = sx == 0
    a = np.where(zero, math.pi / 2, np.arctan(sy / np.where(zero, 1.0, sx)))
    return g, a


def _edge_preservation(g_s: np.ndarray, a_s: np.ndarray, g_f: np.ndarray, a_f: np.ndarray,
                       p: QabfParams) -> np.ndarray:
    """Q^{SF}: per-pixel edge preservation of source S in F (product of two sigmoids)."""
    lo = np.minimum(g_s, g_f)
    hi = np.maximum(g_s, g_f)
    # Reference behaviour: equal strengths give the strength itself, not 1 (see module notes).
    ratio = np.where(g_s == g_f, g_f, lo / np.where(hi > 0, hi, 1.0))
    orient = 1.0 - np.abs(a_s - a_f) / (math.pi / 2)
    qg = p.tg / (1.0 + np.exp(p.kg * (ratio - p.dg)))
    qa = p.ta / (1.0 + np.exp(p.ka * (orient - p.da)))
    return qg * qa


def qabf(fused: np.ndarray, ir: np.ndarray, vi: np.ndarray, params: QabfParams = QABF) -> float:
    """Qabf: Xydeas-Petrović gradient-based edge preservation of both sources in F.

    Returns:
        Value in [0, ~0.975]: perfect preservation (equal strength and
        orientation, strengths >= 1) scores ``Tg * Ta / (1 + exp(ka * (1 - Da)))``
        = 0.9753; 0 when neither source has any edge.

    Example:
        >>> x = np.random.default_rng(0).integers(0, 256, (32, 32)).astype(np.uint8)
        >>> round(qabf(x, np.zeros_like(x), x), 4)
        0.9753
    """
    f = _as_float(fused, 'fused')
    a = _as_float(ir, 'ir')
    b = _as_float(vi, 'vi')
    _check_same_size(f, a, b)
    gf, af = _sobel(f)
    ga, aa = _sobel(a)
    gb, ab = _sobel(b)
    wa = ga ** params.weight_exp
    wb = gb ** params.weight_exp
    den = float((wa + wb).sum())
    if den == 0.0:
        return 0.0
    num = float((_edge_preservation(ga, aa, gf, af, params) * wa).sum()
                + (_edge_preservation(gb, ab, gf, af, params) * wb).sum())
    return num / den


def ssim(a: np.ndarray, b: np.ndarray, params: SsimParams = SSIM) -> float:
    """Mean SSIM of two gray images (Gaussian window, 'valid' map, no downsampling).

    Example:
        >>> x = np.random.default_rng(0).integers(0, 256, (32, 32)).astype(np.uint8)
        >>> round(ssim(x, x), 6)
        1.0
    """
    x = _as_float(a, 'a')
    y = _as_float(b, 'b')
    _check_same_size(x, y)
    if min(x.shape) < params.window:
        raise ShapeError(f'ssim: image {x.shape} smaller than the {params.window}x{params.window} window')
    k = _gauss_1d(params.window, params.sigma)
    c1 = (params.k1 * params.data_range) ** 2
    c2 = (params.k2 * params.data_range) ** 2
    mx = _filter_valid(x, k)
    my = _filter_valid(y, k)
    sxx = _filter_valid(x * x, k) - mx * mx
    syy = _filter_valid(y * y, k) - my * my
    sxy = _filter_valid(x * y, k) - mx * my
    m = ((2 * mx * my + c1) * (2 * sxy + c2)) / ((mx * mx + my * my + c1) * (sxx + syy + c2))
    return float(m.mean())


# ---------------------------------------------------------------------------
# the full set
# ---------------------------------------------------------------------------

def compute_metrics(fused_gray: np.ndarray, ir_gray: np.ndarray, vi_gray: np.ndarray) -> dict[str, float]:
    """All nine metrics of one fused image against its two sources.

    Args:
        fused_gray: ``(H, W)`` fused image, uint8 (or any real dtype in [0, 255]).
        ir_gray: ``(H, W)`` infrared source, same scale.
        vi_gray: ``(H, W)`` visible source (luma), same scale.

    Returns:
        ``{name: value}`` in :data:`METRIC_NAMES` order.

    Raises:
        ShapeError: not 2-D, empty, or sizes differ.
        ValueRangeError: NaN/Inf in a float image.

    Example:
        >>> x = np.random.default_rng(0).integers(0, 256, (48, 64)).astype(np.uint8)
        >>> m = compute_metrics(x, x, x)
        >>> list(m) == list(METRIC_NAMES), round(m['SSIM'], 6), round(m['VIF'], 6)
        (True, 2.0, 2.0)
    """
    f = _as_float(fused_gray, 'fused')
    a = _as_float(ir_gray, 'ir')
    b = _as_float(vi_gray, 'vi')
    _check_same_size(f, a, b)
    return {
        'EN': entropy(f),
        'SD': std_dev(f),
        'SF': spatial_frequency(f),
        'AG': average_gradient(f),
        'MI': mutual_information(f, a) + mutual_information(f, b),
        'SCD': _corr(f - b, a) + _corr(f - a, b),
        'VIF': vif_pixel(a, f) + vif_pixel(b, f),
        'Qabf': qabf(f, a, b),
        'SSIM': ssim(f, a) + ssim(f, b),
    }


def mean_ranks(means: dict[str, dict[str, float]], names: tuple[str, ...] = METRIC_NAMES) -> dict[str, float]:
    """Mean rank of each method over the metrics (1 = best; higher value is better for every metric).

    Ties share the average of the ranks they span; a NaN value ranks last.

    Args:
        means: ``{method: {metric: value}}``.
        names: metrics to rank on.

    Returns:
        ``{method: mean rank}`` in the order of ``means``.

    Example:
        >>> mean_ranks({'a': {'EN': 7.0, 'SD': 30.0}, 'b': {'EN': 6.0, 'SD': 30.0}}, ('EN', 'SD'))
        {'a': 1.25, 'b': 1.75}
    """
    methods = list(means)
    total = dict.fromkeys(methods, 0.0)
    for metric in names:
        vals = {m: means[m][metric] for m in methods}
        key = {m: (-math.inf if math.isnan(v) else v) for m, v in vals.items()}
        for m in methods:
            better = sum(1 for o in methods if key[o] > key[m])
            equal = sum(1 for o in methods if key[o] == key[m])  # includes m itself
            total[m] += better + (equal + 1) / 2.0
    return {m: total[m] / len(names) for m in methods}
