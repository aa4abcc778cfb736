"""Cross-modal registration of a thermal image to a visible image (numpy + OpenCV).

The misalignment of a thermal/RGB rig is one global projective map (calibration
error: tens of pixels of offset, a few degrees of rotation, a few percent of
scale and shear) plus a smooth local field of a few pixels (parallax, lens
differences). This module estimates both, with no learned weights:

1. **Descriptors.** Thermal and visible intensities are not comparable (polarity
   and contrast differ per object), their edges are: both images are mapped to
   a 4-channel polarity- and contrast-invariant edge descriptor
   (:func:`edge_descriptor`) at 1/16, 1/8 and 1/4 of a 640-px-wide frame.
2. **Capture** (:func:`capture`, :func:`tile_capture`): an exhaustive search at
   the coarsest level over rotation and scale hypotheses, each with an
   image-wide translation search by normalised correlation
   (``cv2.matchTemplate``) of ±``search_px``; and a robust affine fit to the
   translations of overlapping tiles at 1/8. The best distinct hypotheses are
   refined and the one that explains the descriptors best is kept.
3. **Global refinement** (:func:`refine_global`): forward-compositional ECC
   (Gauss-Newton on the zero-mean normalised correlation of the descriptors),
   coarse to fine, for a similarity, an affine or a homography (:data:`MODELS`);
   one C pass per iteration (:func:`ros2_regionfuse.native.ecc_terms`).
4. **Local field** (:func:`refine_local`, off by default): Gauss-Newton on the
   displacements of a coarse bilinear control grid (``grid_px`` apart) on top of
   the global map, regularised toward smoothness and toward zero where the
   images carry no evidence.
5. **Confidence** (:attr:`Registration.gain`): the relative reduction of the
   descriptor decorrelation between no motion and the estimate
   (:func:`confidence`). A caller gates the estimate with it (featureless or
   unrelated images give a low gain).

**Convention.** ``Registration.homography`` maps pixel coordinates of the
visible (output) image to pixel coordinates of the thermal image (pixel centre
``i`` at coordinate ``i``); the thermal content that belongs at output pixel
``p`` is found at ``homography @ p + local(p)``. The flow of the package
(``models/warp.py``) is then ``phi(p) = homography @ p + local(p) - p``
(:func:`flow_field`).

A previous estimate (``prior``) starts the refinement directly, skipping the
capture search, when it still explains the new pair (its gain at least
``reuse_gain`` of the previous one, less ``REUSE_SLACK``): a fixed rig's estimate
carries over from frame to frame at a tenth of the cost.
"""
from __future__ import annotations

import functools
import math
from dataclasses import dataclass, field, replace

import cv2
import numpy as np

from .. import native as native_kernels

MODELS = ('similarity', 'affine', 'homography')
_EDGE_EPS = 0.02      # intensity units: floor of the local mean gradient magnitude
_GRAD_EPS = 1e-6      # squared intensity units: floor of |g|^2 in the orientation term
_LOCAL_WINDOW = 7     # cells: window of the local mean gradient magnitude
_MIN_CELLS = 12       # cells along each side the coarsest level keeps at least
_HUBER = 1.0          # Huber threshold on a cell's descriptor residual (descriptor units)
CAPTURE_METHOD = cv2.TM_CCOEFF_NORMED   # zero-mean: the descriptors' mean level does not score
TILE_STEP = 0.35      # tiles of the tile-wise capture start this share of a tile apart (MSRS flow
                      # error 6.5 px at 0.35, 7.4 at 0.5, 10.8 at 0.75; +4 ms at 0.35 against 0.5)
RHO_TOL = 2e-4       # a correlation change below this between iterations: converged
STOP_CELLS = 0.03    # cells: an ECC update that moves no corner further has converged
REFERENCE_HEIGHT = 480.0   # px: the height of the frame the level factors refer to (with reference_width)
DISTINCT_PX = 12.0    # px at 640 width: candidates whose corners lie further apart are distinct
RETILE_FRACTION = 0.5  # of search_px: the residual reach of the second tile-wise capture
REUSE_SLACK = 0.02    # gain a warm start may lose beyond reuse_gain (aligned pairs measure 0.02-0.08)


@dataclass(frozen=True)
class RegistrationConfig:
    """Hyper-parameters of :func:`register`; pixel amounts refer to a 640-px-wide image.

    Attributes:
        model: global model, one of :data:`MODELS`.
        reference_width: image width (px) at which the pixel amounts below apply; they
            scale with ``width / reference_width``, and so do the level factors.
        search_px: translation capture radius of the search (px).
        angles_deg: rotation hypotheses of the search (degrees).
        scales: scale hypotheses of the search.
        hypotheses: best distinct search results refined at the next level.
        finalists: best of those (with no motion), ranked by their correlation at the finest
            level, refined there; the estimate is chosen among them. Ranking at the finest
            level matters on repetitive scenes: on an MSRS street with a row of cyclists the
            true hypothesis ranks below a false one at 1/8 and above it at 1/4.
        iters: Gauss-Newton iterations of the global model per level (1/8, 1/4).
        grid_px: spacing of the local field's control grid (px); 0 = no local field. Off by
            default: on the rig-range benchmark (``eval-registration --mode rig``) an 80-px
            grid changes the flow error by under 0.1 px on LLVIP and MSRS at +15 ms a frame.
        local_iters: Gauss-Newton iterations of the local field (at 1/4).
        smooth: weight of the local field's smoothness term (relative to the data term).
        shrink: weight of its pull toward zero (relative to the data term).
        margin: border band (fraction of each side) of the visible image left out of the
            measure (thermal cameras often frame the image with a border).
        blur: Gaussian sigma (cells) applied to the descriptors.
        stretch: map each image's 1st / 99th percentiles to 0 / 1 before the descriptors, so
            that a dark (night) visible image's structure is not lost under the descriptors'
            contrast floor: flow error on MSRS 9.0 against 10.6 px, LLVIP 2.80 against 2.93 px.
        tiles: add the tile-wise capture (:func:`tile_capture`) to the search's starts:
            MSRS 7.3 against 9.0 px (frames off by more than 8 px: 7 against 12 of 54) at
            +8 ms; it captures the night scenes whose global search misses.
        retile: run the tile-wise capture once more on the thermal descriptors warped by the
            best finalist (residual reach ``RETILE_FRACTION * search_px``), refine its fit and
            keep it when it correlates better: a residual of a few degrees leaves the tiles
            far better matched than the raw pair. MSRS flow error 6.09 against 6.55 px
            (scene-consistent 3.67 against 4.20 px), RoadScene test40 error removed 67.6
            against 66.8 %, LLVIP unchanged; +6 ms on a cold 640x480 frame (30 against 24 ms), none warm.
        polish_iters: ECC iterations of the final estimate at twice the finest level's
            resolution where that is 1/2 or coarser (1/2 of a 640x480 frame; 0: none). On
            LLVIP test pairs under 7 deg and 35 px the error against the exact field less the
            pair's own offset falls from
            0.4-1.5 to 0.2-0.6 px; rig-range flow error 2.36 against 2.81 px; +5 ms cold,
            +6 ms warm.
        native: compute each refinement iteration's terms in one C pass
            (:func:`ros2_regionfuse.native.ecc_terms`, when the kernels load; same values to
            float rounding) instead of numpy.
        reuse_gain: a prior estimate is refined without a new search when its gain on the
            new pair is at least this share of the gain it had, less ``REUSE_SLACK`` (and the
            refined estimate keeps it); otherwise the search runs again.
    """

    model: str = 'affine'
    reference_width: float = 640.0
    search_px: float = 64.0
    angles_deg: tuple[float, ...] = (-8.0, -6.0, -4.0, -2.0, 0.0, 2.0, 4.0, 6.0, 8.0)
    scales: tuple[float, ...] = (0.92, 1.0, 1.08)
    hypotheses: int = 3
    finalists: int = 2
    iters: tuple[int, ...] = (8, 5)
    grid_px: float = 0.0
    local_iters: int = 3
    smooth: float = 2.0
    shrink: float = 0.05
    margin: float = 0.04
    blur: float = 1.0
    reuse_gain: float = 0.8
    native: bool = True
    stretch: bool = True
    tiles: bool = True
    retile: bool = True
    polish_iters: int = 2

    def factors(self, width: int, height: int) -> tuple[int, int, int]:
        """Downsampling factors ``(search, global, fine)`` of the three levels.

        16, 8, 4 at 640x480: the power of two nearest to 16 times the image's scale against
        640x480 (the smaller of the width and height ratios), keeping at least
        ``_MIN_CELLS`` cells per side at the search level. On RoadScene's 506x330 frames
        (8, 4, 2) measures 5.0 px flow error where (16, 8, 4) measures 11.1 px.

        Example:
            >>> cfg = RegistrationConfig()
            >>> cfg.factors(640, 480), cfg.factors(640, 512), cfg.factors(506, 330), cfg.factors(256, 134)
            ((16, 8, 4), (16, 8, 4), (8, 4, 2), (4, 2, 1))
        """
        top = 16.0 * min(width / self.reference_width, height / REFERENCE_HEIGHT)
        f = 2 ** max(0, int(round(math.log2(max(top, 1.0)))))
        while f > 1 and (width / f < _MIN_CELLS or height / f < _MIN_CELLS):
            f //= 2
        return f, max(1, f // 2), max(1, f // 4)


@dataclass
class Registration:
    """Result of :func:`register` (convention in the module docstring).

    Attributes:
        homography: ``(3, 3)`` float64, visible pixel -> thermal pixel.
        local: ``(gy, gx, 2)`` float32 displacements (px, x then y) of the local field's
            control grid, whose nodes span the image corner to corner; ``(0, 0, 2)`` without one.
        gain: confidence in (-inf, 1]: relative reduction of the descriptor difference
            against no motion at the finest level.
        gain_global: the same for the global model alone.
        size: ``(height, width)`` of the images registered.
        searched: the capture search ran (False: refined from a prior estimate).
        iterations: Gauss-Newton iterations run (global and local).
    """

    homography: np.ndarray
    local: np.ndarray
    gain: float
    gain_global: float
    size: tuple[int, int]
    searched: bool = True
    iterations: int = 0
    extra: dict = field(default_factory=dict)

    @staticmethod
    def identity(size: tuple[int, int]) -> Registration:
        """No motion for an image of ``size`` ``(height, width)``."""
        return Registration(np.eye(3), np.zeros((0, 0, 2), np.float32), 0.0, 0.0, size, False, 0)


# ----------------------------------------------------------------------------- transforms
def pixel_to_cell(f: int) -> np.ndarray:
    """``(3, 3)`` map from pixel coordinates to cell coordinates of a level pooled by ``f``.

    Cell ``j`` averages pixels ``[j f, (j + 1) f)``; its centre is pixel ``j f + (f - 1) / 2``.

    Example:
        >>> (pixel_to_cell(4) @ [5.5, 1.5, 1.0]).tolist()
        [1.0, 0.0, 1.0]
    """
    return np.array([[1.0 / f, 0.0, -(f - 1) / (2.0 * f)], [0.0, 1.0 / f, -(f - 1) / (2.0 * f)],
                     [0.0, 0.0, 1.0]])


def normaliser(size: tuple[int, int]) -> np.ndarray:
    """``(3, 3)`` map from pixel coordinates to centred coordinates scaled by half the larger side."""
    h, w = size
    s = max(h, w) / 2.0
    return np.array([[1.0 / s, 0.0, -(w - 1) / (2.0 * s)], [0.0, 1.0 / s, -(h - 1) / (2.0 * s)],
                     [0.0, 0.0, 1.0]])


@functools.lru_cache(maxsize=8)
def _basis(model: str) -> np.ndarray:
    """``(n, 3, 3)`` generators ``E_k``: a small motion is ``I + sum_k p_k E_k`` in centred coordinates."""
    if model not in MODELS:
        raise ValueError(f'registration model must be one of {MODELS}, got {model!r}')
    e = []
    if model == 'similarity':   # scale, rotation, tx, ty
        e = [[[1, 0, 0], [0, 1, 0], [0, 0, 0]], [[0, -1, 0], [1, 0, 0], [0, 0, 0]],
             [[0, 0, 1], [0, 0, 0], [0, 0, 0]], [[0, 0, 0], [0, 0, 1], [0, 0, 0]]]
    else:
        for r in range(2):
            for c in range(3):
                m = np.zeros((3, 3))
                m[r, c] = 1.0
                e.append(m)
        if model == 'homography':
            for c in range(2):
                m = np.zeros((3, 3))
                m[2, c] = 1.0
                e.append(m)
    return np.asarray(e, np.float64)


def motion(model: str, p: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """``(3, 3)`` pixel-coordinate map of the small-motion parameters ``p`` of ``model`` (``[2, 2] = 1``).

    Example:
        >>> m = motion('affine', np.array([0, 0, 0.01, 0, 0, 0]), (480, 640))
        >>> [round(float(v), 6) for v in m[0]]
        [1.0, 0.0, 3.2]
    """
    n, n_inv = _normalisers(tuple(size))
    g = np.eye(3) + np.tensordot(p, _basis(model), 1)
    m = n_inv @ g @ n
    return m / m[2, 2]


@functools.lru_cache(maxsize=8)
def _normalisers(size: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """:func:`normaliser` of ``size`` and its inverse (cached: :func:`motion` runs every iteration)."""
    n = normaliser(size)
    return n, np.linalg.inv(n)


def compose(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """The map ``p -> a(b(p))`` of two ``(3, 3)`` maps, normalised to ``[2, 2] = 1``."""
    m = a @ b
    return m / m[2, 2]


def invert(a: np.ndarray) -> np.ndarray:
    """The inverse of a ``(3, 3)`` map, normalised to ``[2, 2] = 1``.

    Example:
        >>> h = np.array([[1.02, 0.03, 5.0], [-0.01, 0.98, -3.0], [1e-5, 2e-5, 1.0]])
        >>> bool(np.allclose(compose(h, invert(h)), np.eye(3)))
        True
    """
    m = np.linalg.inv(a)
    return m / m[2, 2]


def similarity_about(angle_deg: float, scale: float, centre: tuple[float, float],
                     shift: tuple[float, float] = (0.0, 0.0)) -> np.ndarray:
    """``(3, 3)`` map ``p -> s R (p - c) + c + shift`` (pixels)."""
    a = math.radians(angle_deg)
    r = scale * np.array([[math.cos(a), -math.sin(a)], [math.sin(a), math.cos(a)]])
    c = np.asarray(centre, np.float64)
    m = np.eye(3)
    m[:2, :2] = r
    m[:2, 2] = c - r @ c + np.asarray(shift, np.float64)
    return m


def project(h: np.ndarray, x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Apply a ``(3, 3)`` map to coordinate arrays (any equal shapes)."""
    d = h[2, 0] * x + h[2, 1] * y + h[2, 2]
    return (h[0, 0] * x + h[0, 1] * y + h[0, 2]) / d, (h[1, 0] * x + h[1, 1] * y + h[1, 2]) / d


def fit_model(src: np.ndarray, dst: np.ndarray, model: str, weights: np.ndarray | None = None) -> np.ndarray:
    """Least-squares ``(3, 3)`` map of ``model`` taking points ``src`` to ``dst`` (``(N, 2)`` px).

    The homography is the direct linear transform on normalised points (no
    iterative refinement); the affine and similarity fits are exact least squares.

    Example:
        >>> src = np.array([[0, 0], [100, 0], [0, 80], [100, 80], [50, 40]], float)
        >>> h = similarity_about(3.0, 1.05, (50, 40), (7, -2))
        >>> dst = np.stack(project(h, src[:, 0], src[:, 1]), 1)
        >>> bool(np.allclose(fit_model(src, dst, 'affine'), h))
        True
    """
    w = np.ones(len(src)) if weights is None else np.asarray(weights, np.float64)
    sw = np.sqrt(w)[:, None]
    x, y = src[:, 0], src[:, 1]
    one, zero = np.ones_like(x), np.zeros_like(x)
    if model == 'similarity':
        a = np.concatenate([np.stack([x, -y, one, zero], 1), np.stack([y, x, zero, one], 1)]) \
            * np.concatenate([sw, sw])
        b = np.concatenate([dst[:, 0], dst[:, 1]]) * np.concatenate([sw, sw])[:, 0]
        s, r, tx, ty = np.linalg.lstsq(a, b, rcond=None)[0]
        return np.array([[s, -r, tx], [r, s, ty], [0, 0, 1.0]])
    if model == 'affine':
        a = np.stack([x, y, one], 1) * sw
        px = np.linalg.lstsq(a, dst[:, 0] * sw[:, 0], rcond=None)[0]
        py = np.linalg.lstsq(a, dst[:, 1] * sw[:, 0], rcond=None)[0]
        return np.array([px, py, [0, 0, 1.0]])
    h, _ = cv2.findHomography(src.astype(np.float64), dst.astype(np.float64), 0)
    if h is None:
        return fit_model(src, dst, 'affine', weights)
    return h / h[2, 2]


# ----------------------------------------------------------------------------- descriptors
def pool(img: np.ndarray, f: int) -> np.ndarray:
    """Block means over ``f x f`` blocks (floor size), float32."""
    if f == 1:
        return np.ascontiguousarray(img, np.float32)
    h, w = img.shape[0] // f, img.shape[1] // f
    return cv2.resize(np.ascontiguousarray(img[:h * f, :w * f], np.float32), (w, h),
                      interpolation=cv2.INTER_AREA)


def gradients(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Central differences (per cell, replicated at the border) of ``(h, w)`` or ``(h, w, c)``."""
    gx = np.empty_like(x)
    gy = np.empty_like(x)
    np.subtract(x[:, 2:], x[:, :-2], out=gx[:, 1:-1])
    gx[:, 0], gx[:, -1] = gx[:, 1], gx[:, -2]
    np.subtract(x[2:], x[:-2], out=gy[1:-1])
    gy[0], gy[-1] = gy[1], gy[-2]
    gx *= 0.5
    gy *= 0.5
    return gx, gy


def gaussian_taps(sigma: float) -> np.ndarray:
    """Normalised Gaussian taps of radius ``max(1, round(2 sigma))``, float32."""
    r = max(1, int(round(2 * sigma)))
    g = np.exp(-np.arange(-r, r + 1) ** 2 / (2.0 * sigma * sigma))
    return (g / g.sum()).astype(np.float32)


def edge_descriptor(img: np.ndarray, blur: float = 1.0) -> np.ndarray:
    """Polarity- and contrast-invariant edge descriptor of an ``(h, w)`` image, ``(h, w, 4)`` float32.

    The doubled-angle gradient orientation ``(gx^2 - gy^2, 2 gx gy) / |g|^2`` (the same
    for a dark-to-bright and a bright-to-dark edge) and the absolute gradients
    ``(|gx|, |gy|) / |g|``, each weighted by the gradient magnitude over its local mean
    (contrast invariant), then blurred by ``blur`` cells. About 1 on the edges of a
    region, 0 in flat areas.

    Example:
        >>> img = np.zeros((8, 8), np.float32); img[:, 4:] = 1.0
        >>> d = edge_descriptor(img, 0.0)
        >>> d.shape, bool(d[3, 4, 0] > 0.5), bool(abs(d[3, 4, 1]) < 1e-6)
        ((8, 8, 4), True, True)
    """
    x = np.ascontiguousarray(img, np.float32)
    if min(x.shape) < 3:
        return np.zeros((*x.shape, 4), np.float32)
    gx, gy = gradients(x)
    mag2 = gx * gx + gy * gy
    mag = np.sqrt(mag2 + _GRAD_EPS * _GRAD_EPS)
    k = (_LOCAL_WINDOW, _LOCAL_WINDOW)
    local = cv2.boxFilter(mag, -1, k, normalize=False, borderType=cv2.BORDER_CONSTANT)
    local /= cv2.boxFilter(np.ones_like(mag), -1, k, normalize=False, borderType=cv2.BORDER_CONSTANT)
    wgt = mag / (local + _EDGE_EPS)
    inv = wgt / (mag2 + _GRAD_EPS)
    ww = wgt / mag
    d = np.stack([(gx * gx - gy * gy) * inv, 2.0 * gx * gy * inv, np.abs(gx) * ww, np.abs(gy) * ww], -1)
    if blur <= 0:
        return d
    g = gaussian_taps(blur)
    return cv2.sepFilter2D(d, -1, g, g, borderType=cv2.BORDER_REPLICATE)


def _stretch(img: np.ndarray, lo: float = 1.0, hi: float = 99.0) -> np.ndarray:
    """``img`` with its ``lo`` / ``hi`` percentiles mapped to 0 / 1 (faint structure counts as much)."""
    a, b = np.percentile(img[::2, ::2], (lo, hi))
    if b - a < 1e-4:
        return img
    return ((img - a) * (1.0 / (b - a))).astype(np.float32)


@dataclass
class _Level:
    """Descriptors of one level: visible ``dv``, thermal ``dt`` ``(h, w, 4)``, factor ``f``.

    ``native``: compute the refinement terms in C. ``cache`` keeps what every refinement
    at this level shares (the zero-mean visible inner cells, the Jacobian maps per model).
    """

    f: int
    dv: np.ndarray
    dt: np.ndarray
    inner: tuple[slice, slice]
    native: bool = False
    cache: dict = field(default_factory=dict)

    @property
    def shape(self) -> tuple[int, int]:
        return self.dv.shape[:2]

    def ref(self) -> tuple[np.ndarray, float]:
        """The visible descriptor over the inner cells, zero mean per channel, and its squared norm."""
        if 'ref' not in self.cache:
            ys, xs = self.inner
            r = self.dv[ys, xs]
            r = np.ascontiguousarray(r - r.reshape(-1, r.shape[-1]).mean(0), np.float32)
            self.cache['ref'] = (r, float(np.vdot(r, r)))
        return self.cache['ref']

    def jacobian(self, size: tuple[int, int], model: str) -> np.ndarray:
        """:func:`_jacobian_maps` of ``model``, computed once per level."""
        key = ('jac', model)
        if key not in self.cache:
            self.cache[key] = np.ascontiguousarray(_jacobian_maps(self, size, model))
        return self.cache[key]


class _Levels(dict):
    """The pyramid's levels by factor, each built on first use (a warm start needs only the finest)."""

    def __init__(self, base: list[np.ndarray], fine: int, cfg: RegistrationConfig) -> None:
        super().__init__()
        self.base, self.fine, self.cfg = base, fine, cfg

    def __missing__(self, f: int) -> _Level:
        lv = self[f] = _level(*(pool(b, f // self.fine) for b in self.base), f, self.cfg)
        return lv


def _levels(visible: np.ndarray, thermal: np.ndarray, cfg: RegistrationConfig) -> dict[int, _Level]:
    """The levels of :meth:`RegistrationConfig.factors` (built lazily, :class:`_Levels`)."""
    h, w = visible.shape
    fine = min(cfg.factors(w, h))
    base = [pool(x, fine) for x in (visible, thermal)]
    if cfg.stretch:
        base = [_stretch(b) for b in base]
    return _Levels(base, fine, cfg)


def _level(v: np.ndarray, t: np.ndarray, f: int, cfg: RegistrationConfig) -> _Level:
    """The :class:`_Level` of the planes ``v``, ``t`` already pooled by ``f``."""
    lh, lw = v.shape
    my, mx = int(round(cfg.margin * lh)), int(round(cfg.margin * lw))
    return _Level(f, edge_descriptor(v, cfg.blur), edge_descriptor(t, cfg.blur),
                  (slice(my, lh - my), slice(mx, lw - mx)), cfg.native and native_kernels.available())


def _warp_level(d: np.ndarray, h_px: np.ndarray, f: int) -> np.ndarray:
    """Sample ``d`` (a level pooled by ``f``) at ``h_px`` of every cell centre (zero outside)."""
    c = pixel_to_cell(f)
    m = c @ h_px @ np.linalg.inv(c)
    lh, lw = d.shape[:2]
    flags = cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP
    if abs(m[2, 0]) < 1e-12 and abs(m[2, 1]) < 1e-12:
        return cv2.warpAffine(d, m[:2] / m[2, 2], (lw, lh), flags=flags, borderMode=cv2.BORDER_CONSTANT)
    return cv2.warpPerspective(d, m, (lw, lh), flags=flags, borderMode=cv2.BORDER_CONSTANT)


# ----------------------------------------------------------------------------- capture
def capture(level: _Level, size: tuple[int, int], cfg: RegistrationConfig) -> list[tuple[float, np.ndarray]]:
    """Exhaustive rotation x scale x translation search at one level.

    Args:
        level: descriptors at the search level.
        size: ``(H, W)`` of the full-resolution images.
        cfg: search ranges.

    Returns:
        Up to ``cfg.hypotheses`` ``(score, homography)`` of distinct hypotheses, best first;
        ``score`` is the normalised correlation of the descriptors (in [-1, 1]).
    """
    hh, ww = size
    f = level.f
    lh, lw = level.shape
    r = max(1, int(math.ceil(cfg.search_px * ww / cfg.reference_width / f)))
    ys, xs = level.inner
    templ = np.ascontiguousarray(level.dv[ys, xs])
    centre = ((ww - 1) / 2.0, (hh - 1) / 2.0)
    found = []
    for angle in cfg.angles_deg:
        for scale in cfg.scales:
            rot = similarity_about(angle, scale, centre)
            dt = _warp_level(level.dt, rot, f)
            pad = cv2.copyMakeBorder(dt, r, r, r, r, cv2.BORDER_CONSTANT, value=0)
            # a shift t (cells) pairs visible cell x with thermal cell x + t of the rotated image
            res = cv2.matchTemplate(pad, templ, CAPTURE_METHOD)
            i, j = np.unravel_index(int(np.argmax(res)), res.shape)
            score = float(res[i, j])
            di, dj = _subcell(res, i, j)
            ty, tx = (i + di) - r - ys.start, (j + dj) - r - xs.start
            shift = np.array([tx * f, ty * f])   # cells -> px (the rotation acts on px)
            found.append((score, compose(rot, _translation(shift)), angle, (tx, ty)))
    found.sort(key=lambda e: -e[0])
    keep: list[tuple[float, np.ndarray, float, tuple[float, float]]] = []
    for cand in found:
        if all(abs(cand[2] - k[2]) > 2.5 or math.hypot(cand[3][0] - k[3][0], cand[3][1] - k[3][1]) > 1.5
               for k in keep):
            keep.append(cand)
        if len(keep) >= cfg.hypotheses:
            break
    return [(s, hm) for s, hm, _, _ in keep]


def tile_capture(level: _Level, size: tuple[int, int], cfg: RegistrationConfig,
                 tile: int = 20, min_score: float = 0.25, min_ratio: float = 1.05,
                 base: np.ndarray | None = None) -> np.ndarray | None:
    """An affine capture from tile-wise translations: a robust fit to local matches.

    The visible descriptor is cut into overlapping tiles (``tile`` cells, half a tile
    apart); each tile's translation is the peak of its normalised correlation in the
    thermal descriptor within the capture range (the translation radius plus what the
    largest rotation and scale change move a tile at the frame's edge), refined to
    sub-cell precision, and kept when the peak is high and distinct (``min_ratio`` over
    the best score 3 or more cells away). A RANSAC affine fit to the kept tiles'
    centre pairs (``cv2.estimateAffine2D``) is the capture. Unlike the global search it
    needs no rotation or scale hypotheses. With ``base`` (visible px -> thermal px), the
    thermal descriptors are first warped by it, the reach is ``RETILE_FRACTION *
    search_px`` and the fit is composed with ``base`` (a residual capture).

    Returns:
        ``(3, 3)`` visible px -> thermal px, or None with fewer than 6 kept tiles or
        no consensus.
    """
    hh, ww = size
    f = level.f
    lh, lw = level.shape
    if lh < tile + 2 or lw < tile + 2:
        return None
    sc = ww / cfg.reference_width
    if base is None:
        reach = cfg.search_px * sc + max(hh, ww) / 2.0 * (math.radians(max(np.abs(cfg.angles_deg)))
                                                          + max(abs(s - 1.0) for s in cfg.scales))
        dt = level.dt
    else:
        reach = RETILE_FRACTION * cfg.search_px * sc
        dt = _warp_level(level.dt, base, f)
    r = int(math.ceil(reach / f))
    pad = cv2.copyMakeBorder(dt, r, r, r, r, cv2.BORDER_CONSTANT, value=0)
    step = max(1, int(round(tile * TILE_STEP)))
    src, dst, wts = [], [], []
    for y0 in range(0, lh - tile + 1, step):
        for x0 in range(0, lw - tile + 1, step):
            templ = np.ascontiguousarray(level.dv[y0:y0 + tile, x0:x0 + tile])
            if float(templ.std()) < 1e-3:
                continue
            win = pad[y0:y0 + tile + 2 * r, x0:x0 + tile + 2 * r]
            res = cv2.matchTemplate(win, templ, cv2.TM_CCOEFF_NORMED)
            i, j = np.unravel_index(int(np.argmax(res)), res.shape)
            best = float(res[i, j])
            if best < min_score:
                continue
            masked = res.copy()
            masked[max(0, i - 2):i + 3, max(0, j - 2):j + 3] = -1.0
            second = float(masked.max())
            if second > 0 and best < min_ratio * second:
                continue
            di, dj = _subcell(res, i, j)
            cy, cx = y0 + (tile - 1) / 2.0, x0 + (tile - 1) / 2.0
            src.append((cx * f + (f - 1) / 2.0, cy * f + (f - 1) / 2.0))
            dst.append(((cx + j + dj - r) * f + (f - 1) / 2.0, (cy + i + di - r) * f + (f - 1) / 2.0))
            wts.append(best)
    if len(src) < 6:
        return None
    a, inliers = cv2.estimateAffine2D(np.asarray(src, np.float32), np.asarray(dst, np.float32),
                                      method=cv2.RANSAC, ransacReprojThreshold=1.5 * f)
    if a is None or inliers is None or int(inliers.sum()) < 6:
        return None
    m = np.vstack([a.astype(np.float64), [0.0, 0.0, 1.0]])
    return m if base is None else compose(base, m)


def _corner_distance(a: np.ndarray, b: np.ndarray, size: tuple[int, int]) -> float:
    """Largest distance (px) between where two maps put the image corners."""
    h, w = size
    x = np.array([0.0, w - 1.0, 0.0, w - 1.0])
    y = np.array([0.0, 0.0, h - 1.0, h - 1.0])
    ax, ay = project(a, x, y)
    bx, by = project(b, x, y)
    return float(np.hypot(ax - bx, ay - by).max())


def _translation(t: np.ndarray) -> np.ndarray:
    m = np.eye(3)
    m[:2, 2] = t
    return m


def _subcell(res: np.ndarray, i: int, j: int) -> tuple[float, float]:
    """Parabolic sub-cell offset of the peak ``(i, j)`` of a score map (0 at the border)."""
    def para(a: float, b: float, c: float) -> float:
        den = a - 2 * b + c
        return 0.0 if den >= 0 else float(np.clip(0.5 * (a - c) / den, -0.5, 0.5))
    di = para(res[i - 1, j], res[i, j], res[i + 1, j]) if 0 < i < res.shape[0] - 1 else 0.0
    dj = para(res[i, j - 1], res[i, j], res[i, j + 1]) if 0 < j < res.shape[1] - 1 else 0.0
    return di, dj


# ----------------------------------------------------------------------------- global refinement
def _jacobian_maps(level: _Level, size: tuple[int, int], model: str) -> np.ndarray:
    """``(n, 2, h, w)``: d(sample position, cells)/d(p_k) at ``p = 0`` for every inner cell."""
    f = level.f
    ys, xs = level.inner
    lh, lw = level.shape
    jj, ii = np.meshgrid(np.arange(lw, dtype=np.float64)[xs], np.arange(lh, dtype=np.float64)[ys])
    px, py = jj * f + (f - 1) / 2.0, ii * f + (f - 1) / 2.0
    n = normaliser(size)
    u, v = n[0, 0] * px + n[0, 2], n[1, 1] * py + n[1, 2]
    s = 1.0 / (n[0, 0] * f)   # centred units -> cells
    out = []
    for e in _basis(model):
        num_x = e[0, 0] * u + e[0, 1] * v + e[0, 2]
        num_y = e[1, 0] * u + e[1, 1] * v + e[1, 2]
        den = e[2, 0] * u + e[2, 1] * v + e[2, 2]
        out.append(np.stack([(num_x - u * den) * s, (num_y - v * den) * s]))
    return np.asarray(out, np.float32)


# similarity parameters (scale, rotation, tx, ty) as affine ones (a00, a01, a02, a10, a11, a12)
_SIMILARITY_IN_AFFINE = np.array([[1, 0, 0, 0], [0, -1, 0, 0], [0, 0, 1, 0], [0, 1, 0, 0], [1, 0, 0, 0],
                                  [0, 0, 0, 1]], np.float64)


def _centred_coords(level: _Level, size: tuple[int, int]) -> tuple[float, float, float, float, float]:
    """``(u0, du, v0, dv, s)`` of :func:`ros2_regionfuse.native.ecc_terms_affine` for ``level``."""
    f = level.f
    ys, xs = level.inner
    n = normaliser(size)
    u0 = n[0, 0] * (xs.start * f + (f - 1) / 2.0) + n[0, 2]
    v0 = n[1, 1] * (ys.start * f + (f - 1) / 2.0) + n[1, 2]
    return u0, n[0, 0] * f, v0, n[1, 1] * f, 1.0 / (n[0, 0] * f)


def ecc_terms(level: _Level, h_px: np.ndarray, model: str | None, size: tuple[int, int]
              ) -> tuple[np.ndarray, np.ndarray, np.ndarray, float, float]:
    """One ECC iteration's terms at ``h_px`` (see :func:`ros2_regionfuse.native.ecc_terms`).

    With ``u = J^T grad(wt)`` per cell and channel (``wt``: the thermal descriptor mapped by
    ``h_px``, ``J``: the Jacobian maps of ``model``; None: statistics only), returns
    ``(sum u u^T, sum u (wt - mean), sum u ref, sum (wt - mean)^2, sum ref wt)`` over the
    inner cells, ``ref`` the zero-mean visible descriptor; ``size`` is the full-resolution
    ``(H, W)``. In C when ``level.native``; for the affine and similarity models from
    moments, without the maps (:func:`ros2_regionfuse.native.ecc_terms_affine`).
    """
    ref, _ = level.ref()
    wt = _warp_level(level.dt, h_px, level.f)
    jac = None
    if model is not None and not (level.native and model in ('affine', 'similarity')):
        jac = level.jacobian(size, model)
    if level.native:
        if model in ('affine', 'similarity'):
            out = native_kernels.ecc_terms_affine(wt, ref, level.inner, _centred_coords(level, size))
            if out is not None and model == 'similarity':
                m = _SIMILARITY_IN_AFFINE
                hess, gw, gr, ww, rw = out
                out = (m.T @ hess @ m, m.T @ gw, m.T @ gr, ww, rw)
        else:
            out = native_kernels.ecc_terms(wt, ref, level.inner, jac)
        if out is not None:
            return out
    ys, xs = level.inner
    iw = wt[ys, xs]
    iw = iw - iw.mean((0, 1))
    ww, rw = float(np.vdot(iw, iw)), float(np.vdot(ref, iw))
    if jac is None:
        z = np.zeros(0)
        return np.zeros((0, 0)), z, z, ww, rw
    gx, gy = gradients(wt)
    gx, gy = gx[ys, xs], gy[ys, xs]
    n = len(jac)
    jx, jy = jac[:, 0].reshape(n, -1), jac[:, 1].reshape(n, -1)
    sxx = np.einsum('hwc,hwc->hw', gx, gx).ravel()
    sxy = np.einsum('hwc,hwc->hw', gx, gy).ravel()
    syy = np.einsum('hwc,hwc->hw', gy, gy).ravel()
    hess = (jx * sxx) @ jx.T + (jx * sxy) @ jy.T + (jy * sxy) @ jx.T + (jy * syy) @ jy.T
    gw = jx @ np.einsum('hwc,hwc->hw', gx, iw).ravel() + jy @ np.einsum('hwc,hwc->hw', gy, iw).ravel()
    gr = jx @ np.einsum('hwc,hwc->hw', gx, ref).ravel() + jy @ np.einsum('hwc,hwc->hw', gy, ref).ravel()
    return hess.astype(np.float64), gw.astype(np.float64), gr.astype(np.float64), ww, rw


def refine_global(level: _Level, size: tuple[int, int], h_px: np.ndarray, model: str, iters: int,
                  damping: float = 1e-3, stop_cells: float = STOP_CELLS) -> tuple[np.ndarray, int]:
    """Maximise the normalised correlation of the descriptors over ``model`` at one level (ECC).

    Enhanced-correlation (ECC) Gauss-Newton steps, forward compositional: each
    iteration warps the thermal descriptor by the current map, takes its gradients,
    and solves for the small motion that best raises the zero-mean normalised
    correlation with the visible descriptor over all channels of the inner cells
    (:func:`ecc_terms`). A step that lowers the correlation is halved (twice at most),
    then the refinement stops; so does one that changes it by less than ``RHO_TOL``.
    Correlation, unlike a sum of squared differences, does not reward moving the
    thermal image's strong-edge areas out of the measured window, so the estimate
    does not drift in scale on aligned pairs.

    Args:
        level: descriptors of the level.
        size: ``(H, W)`` full-resolution size (the parametrisation's normaliser).
        h_px: start ``(3, 3)`` map (visible px -> thermal px).
        model: one of :data:`MODELS`.
        iters: iterations (each one warp of the thermal descriptor).
        damping: Levenberg-Marquardt damping relative to the diagonal.
        stop_cells: stop when an update moves no inner corner by more than this (cells).

    Returns:
        ``(refined map, iterations run)``.
    """
    _, rr = level.ref()
    n = len(_basis(model))
    ys, xs = level.inner
    f = level.f
    cx = np.array([xs.start, xs.stop - 1, xs.start, xs.stop - 1], np.float64) * f + (f - 1) / 2.0
    cy = np.array([ys.start, ys.start, ys.stop - 1, ys.stop - 1], np.float64) * f + (f - 1) / 2.0
    run = 0
    prev = None   # (map before the last step, the step, the correlation there)
    step = np.zeros(n)
    halvings = 0
    while run < iters:
        run += 1
        hess, gw, gr, ww, rw = ecc_terms(level, h_px, model, size)
        rho = rw / max(math.sqrt(ww * rr), 1e-12)
        if prev is not None and abs(rho - prev[2]) < RHO_TOL:   # converged: keep the better one
            h_px = h_px if rho >= prev[2] else prev[0]
            break
        if prev is not None and rho < prev[2]:
            if halvings >= 2:
                h_px = prev[0]
                break
            halvings += 1
            step = prev[1] * 0.5
            h_px = compose(prev[0], motion(model, step, size))
            continue
        halvings = 0
        hess = hess + damping * np.diag(np.diag(hess)) + 1e-9 * np.eye(n)
        hw, hr = np.linalg.solve(hess, gw), np.linalg.solve(hess, gr)
        num = ww - float(gw @ hw)
        den = rw - float(gr @ hw)
        if den > 0:
            step = (num / den) * hr - hw
        else:   # anti-correlated: move toward higher correlation first (ECC's rule)
            lam1 = math.sqrt(max(num, 1e-12) / max(rr - float(gr @ hr), 1e-12))
            lam2 = (rw - float(gr @ hw)) / max(float(gr @ hr), 1e-12)
            step = max(lam1, lam2) * hr - hw
        prev = (h_px, step, rho)
        h_px = compose(h_px, motion(model, step, size))
        mx, my = project(motion(model, step, size), cx, cy)   # the inner corners: the largest moves
        if max(np.abs(mx - cx).max(), np.abs(my - cy).max()) < stop_cells * f:
            break
    return h_px, run


def correlation(level: _Level, h_px: np.ndarray) -> float:
    """Zero-mean normalised correlation of the descriptors over the inner cells after mapping by ``h_px``."""
    _, rr = level.ref()
    _, _, _, ww, rw = ecc_terms(level, h_px, None, (0, 0))
    return rw / max(math.sqrt(ww * rr), 1e-12)


# ----------------------------------------------------------------------------- local field
def _grid_shape(size: tuple[int, int], spacing: float) -> tuple[int, int]:
    h, w = size
    return max(2, int(round((h - 1) / spacing)) + 1), max(2, int(round((w - 1) / spacing)) + 1)


def _bilinear_weights(coord: np.ndarray, length: int, nodes: int) -> tuple[np.ndarray, np.ndarray]:
    """Lower node index and weight of the upper node for pixel coordinates along one axis."""
    t = np.clip(np.asarray(coord, np.float64) / max(length - 1, 1) * (nodes - 1), 0, nodes - 1)
    i0 = np.minimum(np.floor(t).astype(np.int64), nodes - 2)
    return i0, (t - i0).astype(np.float32)


def local_on_grid(local: np.ndarray, size: tuple[int, int], px: np.ndarray, py: np.ndarray) -> np.ndarray:
    """The local field of control displacements ``local`` ``(gy, gx, 2)`` at pixel coordinates.

    Returns:
        ``(*px.shape, 2)`` float32 px.
    """
    if local.size == 0:
        return np.zeros((*px.shape, 2), np.float32)
    h, w = size
    gy, gx = local.shape[:2]
    iy, ty = _bilinear_weights(py, h, gy)
    ix, tx = _bilinear_weights(px, w, gx)
    ty, tx = ty[..., None], tx[..., None]
    return ((1 - ty) * ((1 - tx) * local[iy, ix] + tx * local[iy, ix + 1])
            + ty * ((1 - tx) * local[iy + 1, ix] + tx * local[iy + 1, ix + 1])).astype(np.float32)


def _smoothness(gy: int, gx: int) -> np.ndarray:
    """``(m, gy * gx)`` first differences between neighbouring control nodes."""
    rows = []
    idx = np.arange(gy * gx).reshape(gy, gx)
    pairs = list(zip(idx[:, :-1].ravel(), idx[:, 1:].ravel())) + list(zip(idx[:-1].ravel(), idx[1:].ravel()))
    for a, b in pairs:
        r = np.zeros(gy * gx)
        r[a], r[b] = -1.0, 1.0
        rows.append(r)
    return np.asarray(rows)


def refine_local(level: _Level, size: tuple[int, int], h_px: np.ndarray, cfg: RegistrationConfig,
                 local: np.ndarray | None = None) -> tuple[np.ndarray, int]:
    """Gauss-Newton on the control displacements of the local field, on top of ``h_px``.

    Args:
        level: descriptors at the level (1/4 of a 640-px frame).
        size: ``(H, W)``.
        h_px: the global map.
        cfg: grid spacing, iterations and regularisation weights.
        local: start displacements ``(gy, gx, 2)`` (default zero).

    Returns:
        ``(local (gy, gx, 2) float32 px, iterations run)``.
    """
    hh, ww = size
    sc = ww / cfg.reference_width
    gy, gx = _grid_shape(size, cfg.grid_px * sc)
    if local is None or local.shape[:2] != (gy, gx):
        local = np.zeros((gy, gx, 2), np.float32)
    f = level.f
    lh, lw = level.shape
    ys, xs = level.inner
    jj, ii = np.meshgrid(np.arange(lw, dtype=np.float32)[xs], np.arange(lh, dtype=np.float32)[ys])
    px, py = jj * f + (f - 1) / 2.0, ii * f + (f - 1) / 2.0
    qx, qy = project(h_px, px, py)
    iy, ty = _bilinear_weights(py, hh, gy)
    ix, tx = _bilinear_weights(px, ww, gx)
    nodes = [(iy * gx + ix, (1 - ty) * (1 - tx)), (iy * gx + ix + 1, (1 - ty) * tx),
             ((iy + 1) * gx + ix, ty * (1 - tx)), ((iy + 1) * gx + ix + 1, ty * tx)]
    n = gy * gx
    dv = level.dv[ys, xs]
    dv = dv - dv.mean((0, 1))
    tgx, tgy = gradients(level.dt)
    stack = np.ascontiguousarray(np.concatenate([level.dt, tgx, tgy], -1))
    d = _smoothness(gy, gx)
    lap = d.T @ d
    run = 0
    for _ in range(cfg.local_iters):
        run += 1
        off = local_on_grid(local, size, px, py)
        mx = ((qx + off[..., 0]) - (f - 1) / 2.0) / f
        my = ((qy + off[..., 1]) - (f - 1) / 2.0) / f
        s = cv2.remap(stack, mx.astype(np.float32), my.astype(np.float32), cv2.INTER_LINEAR,
                      borderMode=cv2.BORDER_CONSTANT)
        c = level.dt.shape[-1]
        wt = s[..., :c] - s[..., :c].mean((0, 1))
        # the photometric scale of the correlation: the visible descriptor scaled to the thermal one
        alpha = float(np.vdot(wt, dv)) / max(float(np.vdot(dv, dv)), 1e-12)
        r = wt - max(alpha, 0.0) * dv
        g = [s[..., c:2 * c] / f, s[..., 2 * c:] / f]   # d(descriptor)/d(px)
        a2 = np.einsum('...c,...c->...', r, r)
        wgt = np.where(a2 > _HUBER * _HUBER, _HUBER / np.sqrt(np.maximum(a2, 1e-12)), 1.0)
        gxx = np.einsum('...c,...c->...', g[0], g[0]) * wgt
        gxy = np.einsum('...c,...c->...', g[0], g[1]) * wgt
        gyy = np.einsum('...c,...c->...', g[1], g[1]) * wgt
        bx = np.einsum('...c,...c->...', g[0], r) * wgt
        by = np.einsum('...c,...c->...', g[1], r) * wgt
        axx = np.zeros((n, n))
        axy = np.zeros((n, n))
        ayy = np.zeros((n, n))
        rhs = np.zeros(2 * n)
        for ka, wa in nodes:
            ka = ka.ravel()
            wa = wa.ravel()
            rhs[:n] += np.bincount(ka, wa * bx.ravel(), n)
            rhs[n:] += np.bincount(ka, wa * by.ravel(), n)
            for kb, wb in nodes:
                kb = kb.ravel()
                ww_ = wa * wb.ravel()
                flat = ka * n + kb
                axx += np.bincount(flat, ww_ * gxx.ravel(), n * n).reshape(n, n)
                axy += np.bincount(flat, ww_ * gxy.ravel(), n * n).reshape(n, n)
                ayy += np.bincount(flat, ww_ * gyy.ravel(), n * n).reshape(n, n)
        scale = max(float(np.trace(axx) + np.trace(ayy)) / (2 * n), 1e-9)
        reg = cfg.smooth * scale * lap + cfg.shrink * scale * np.eye(n)
        a = np.block([[axx + reg, axy], [axy.T, ayy + reg]])
        cur = np.concatenate([local[..., 0].ravel(), local[..., 1].ravel()]).astype(np.float64)
        rhs_full = -rhs - np.concatenate([reg @ cur[:n], reg @ cur[n:]])
        step = np.linalg.solve(a, rhs_full)
        local = local + np.stack([step[:n].reshape(gy, gx), step[n:].reshape(gy, gx)], -1).astype(np.float32)
        if np.abs(step).max() < 0.02:
            break
    return local, run


def _local_correlation(level: _Level, size: tuple[int, int], h_px: np.ndarray, local: np.ndarray) -> float:
    """:func:`correlation` with the local field added to ``h_px``."""
    f = level.f
    lh, lw = level.shape
    ys, xs = level.inner
    jj, ii = np.meshgrid(np.arange(lw, dtype=np.float32)[xs], np.arange(lh, dtype=np.float32)[ys])
    px, py = jj * f + (f - 1) / 2.0, ii * f + (f - 1) / 2.0
    qx, qy = project(h_px, px, py)
    off = local_on_grid(local, size, px, py)
    mx = ((qx + off[..., 0]) - (f - 1) / 2.0) / f
    my = ((qy + off[..., 1]) - (f - 1) / 2.0) / f
    b = cv2.remap(level.dt, mx.astype(np.float32), my.astype(np.float32), cv2.INTER_LINEAR,
                  borderMode=cv2.BORDER_CONSTANT)
    a = level.dv[ys, xs]
    a = (a - a.mean((0, 1))).ravel().astype(np.float64)
    b = (b - b.mean((0, 1))).ravel().astype(np.float64)
    return float(a @ b / max(math.sqrt(float(a @ a) * float(b @ b)), 1e-12))


def confidence(rho: float, rho_zero: float) -> float:
    """Relative reduction of the decorrelation ``1 - rho`` against no motion (``rho_zero``).

    Example:
        >>> round(confidence(0.6, 0.2), 3), confidence(0.2, 0.2)
        (0.5, 0.0)
    """
    return 1.0 - (1.0 - rho) / max(1.0 - rho_zero, 1e-9)


# ----------------------------------------------------------------------------- entry point
def register(visible: np.ndarray, thermal: np.ndarray, cfg: RegistrationConfig | None = None,
             prior: Registration | None = None, search: bool = False) -> Registration:
    """Register ``thermal`` to ``visible`` (same size, ``(H, W)`` float32 in [0, 1]).

    Args:
        visible: the reference image (RGB luminance).
        thermal: the image to register.
        cfg: settings.
        prior: an earlier estimate for this rig (warm start, see the module docstring).
        search: run the capture search even when the warm start is kept; the better of
            the two by correlation wins (a periodic check that the rig has not moved).

    Returns:
        The :class:`Registration`; :meth:`Registration.identity` for images smaller
        than the coarsest level needs.
    """
    cfg = cfg or RegistrationConfig()
    hh, ww = visible.shape
    size = (hh, ww)
    if thermal.shape != visible.shape:
        raise ValueError(f'register: thermal {thermal.shape} and visible {visible.shape} differ in size')
    if min(hh, ww) < 4 * _MIN_CELLS:
        return Registration.identity(size)
    fs, fg, ff = cfg.factors(ww, hh)
    levels = _levels(visible, thermal, cfg)
    fine = levels[ff]
    rho_zero = correlation(fine, np.eye(3))
    iterations = 0
    searched = True
    best_h, best_rho = np.eye(3), rho_zero
    runner_up = float('nan')
    polish = cfg.polish_iters > 0 and ff >= 4   # at 1/2 or coarser
    polished = None
    prior_h = prior_local = None
    if prior is not None:
        # another size: the same rig at another resolution (its map rescaled; the check below
        # decides, as for any warm start, whether it still explains the pair)
        prior_h, prior_local = ((prior.homography, prior.local) if prior.size == size
                                else rescale(prior, size))
    if prior is not None:
        # a warm start is near its optimum already: refined where the estimate ends (polish level)
        if polish:
            h0, it = _polish(visible, thermal, size, prior_h, ff // 2, cfg)
            polished = h0
        else:
            h0, it = refine_global(fine, size, prior_h, cfg.model, cfg.iters[1])
        iterations += it
        rho0 = correlation(fine, h0)
        if confidence(rho0, rho_zero) >= cfg.reuse_gain * prior.gain_global - REUSE_SLACK:
            best_h, best_rho, searched = h0, rho0, False
    if searched or search:
        searched = True
        starts = [np.eye(3)] + [h0 for _, h0 in capture(levels[fs], size, cfg)]
        if cfg.tiles:
            ht = tile_capture(levels[fg], size, cfg)
            if ht is not None:
                starts.append(ht)
        refined = []
        for h0 in starts:
            h1, it = refine_global(levels[fg], size, h0, cfg.model, cfg.iters[0])
            iterations += it
            refined.append((correlation(fine, h1), h1))   # scored at the finest level
        refined.sort(key=lambda e: -e[0])
        finals = []
        for _, h1 in refined[:cfg.finalists]:
            h2, it = refine_global(fine, size, h1, cfg.model, cfg.iters[1])
            iterations += it
            finals.append((correlation(fine, h2), h2))
        finals.sort(key=lambda e: -e[0])
        ht = (tile_capture(levels[fg], size, cfg, base=finals[0][1])
              if cfg.retile and finals and finals[0][0] > rho_zero else None)
        if ht is not None:
            h3, it = refine_global(levels[fg], size, ht, cfg.model, cfg.iters[0])
            refined.append((correlation(fine, h3), h3))
            h4, it2 = refine_global(fine, size, h3, cfg.model, cfg.iters[1])
            iterations += it + it2
            finals.append((correlation(fine, h4), h4))
        for rho2, h2 in finals:
            if rho2 > best_rho:
                best_h, best_rho = h2, rho2
        far = DISTINCT_PX * ww / cfg.reference_width
        others = [r for r, h1 in refined if _corner_distance(h1, best_h, size) > far]
        runner_up = max(others, default=rho_zero)
    if polish and best_rho > rho_zero and best_h is not polished:
        best_h, it = _polish(visible, thermal, size, best_h, ff // 2, cfg)
        iterations += it
        best_rho = correlation(fine, best_h)
    gain_global = confidence(best_rho, rho_zero)
    local = np.zeros((0, 0, 2), np.float32)
    gain = gain_global
    if cfg.grid_px > 0 and cfg.local_iters > 0 and gain_global > 0:
        start = prior_local if (prior is not None and not searched) else None
        local, it = refine_local(fine, size, best_h, cfg, start)
        iterations += it
        gain = confidence(_local_correlation(fine, size, best_h, local), rho_zero)
        if gain < gain_global:   # the local field made it worse: keep the global model alone
            local, gain = np.zeros((0, 0, 2), np.float32), gain_global
    return Registration(best_h, local, float(gain), float(gain_global), size, searched, iterations,
                        {'rho': best_rho, 'rho_zero': rho_zero, 'rho_runner_up': runner_up})


def _polish(visible: np.ndarray, thermal: np.ndarray, size: tuple[int, int], h_px: np.ndarray, f: int,
            cfg: RegistrationConfig) -> tuple[np.ndarray, int]:
    """Refine ``h_px`` at the level pooled by ``f`` (finer than the search's); kept when better."""
    base = [pool(x, f) for x in (visible, thermal)]
    if cfg.stretch:
        base = [_stretch(b) for b in base]
    lv = _level(*base, f, cfg)
    h1, it = refine_global(lv, size, h_px, cfg.model, cfg.polish_iters)
    return (h1 if correlation(lv, h1) > correlation(lv, h_px) else h_px), it


def flow_field(reg: Registration, size: tuple[int, int] | None = None, step: int = 1) -> np.ndarray:
    """The package's flow ``phi(p) = homography @ p + local(p) - p`` of a registration.

    Args:
        reg: the registration.
        size: ``(H, W)`` to evaluate on (default ``reg.size``; another size rescales the
            registration to it).
        step: evaluate every ``step`` pixels (at pixel centres ``step * j + (step - 1) / 2``).

    Returns:
        ``(ceil(H / step), ceil(W / step), 2)`` float32 px (x, y).
    """
    hh, ww = size or reg.size
    h_px, local = reg.homography, reg.local
    if (hh, ww) != reg.size:
        h_px, local = rescale(reg, (hh, ww))
    xs = np.arange(0, ww, step, dtype=np.float64) + (step - 1) / 2.0
    ys = np.arange(0, hh, step, dtype=np.float64) + (step - 1) / 2.0
    px, py = np.meshgrid(xs, ys)
    qx, qy = project(h_px, px, py)
    out = np.stack([qx - px, qy - py], -1).astype(np.float32)
    if local.size:
        out += local_on_grid(local, (hh, ww), px.astype(np.float32), py.astype(np.float32))
    return out


def rescale(reg: Registration, size: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """The registration's map and local field for the same images resampled to ``size`` ``(H, W)``."""
    h0, w0 = reg.size
    hh, ww = size
    sx, sy = ww / w0, hh / h0
    # pixel centre convention: x_new = (x_old + 0.5) * s - 0.5
    a = np.array([[sx, 0, 0.5 * sx - 0.5], [0, sy, 0.5 * sy - 0.5], [0, 0, 1.0]])
    h_px = compose(compose(a, reg.homography), invert(a))
    local = reg.local * np.array([sx, sy], np.float32) if reg.local.size else reg.local
    return h_px, local


def with_gate(reg: Registration, gate: float) -> Registration:
    """``reg`` with its motion scaled by ``gate`` in [0, 1] (0: identity; used by confidence gates)."""
    if gate >= 1.0:
        return reg
    n = normaliser(reg.size)
    m = n @ reg.homography @ np.linalg.inv(n)
    m = np.eye(3) + gate * (m / m[2, 2] - np.eye(3))
    h_px = np.linalg.inv(n) @ m @ n
    return replace(reg, homography=h_px / h_px[2, 2], local=reg.local * np.float32(gate))
