"""Global cross-modal similarity registration of the thermal image to the visible image.

The misregistration of a thermal/visible rig is mostly one smooth field:
rotation, scale and translation from calibration error, plus parallax that
grows toward near objects. On the evaluation pairs a least-squares affine
field explains about 90 % of the synthetic displacement, and image-wide
evidence pins it down far better than local matching, which in low-texture
thermal images is mostly noise. This module estimates that global part
directly, without learned weights, as the first stage of the corrector; the
learned stages then deal with what is left.

**Model.** A similarity field in pixels of the input (x then y), with pixel
coordinates ``(u, v)`` centred on the image centre::

    phi_x(u, v) = tx + a * u - b * v
    phi_y(u, v) = ty + b * u + a * v

``a`` is the relative scale change (``s - 1``), ``b`` the rotation (radians,
small-angle), ``tx, ty`` pixels. ``phi`` follows the package's flow
convention (``models/warp.py``): the thermal content that belongs at ``p``
is found at ``p + phi(p)``.

**Similarity measure.** Thermal and visible intensities are not comparable
(polarity and contrast differ per object), their edges are. Both images are
mapped to a 4-channel edge descriptor (:func:`align_descriptor`):
the doubled-angle gradient orientation ``(gx^2 - gy^2, 2 gx gy) / |g|^2``
(invariant to polarity) and the absolute gradients ``(|gx|, |gy|)``, each
weighted by the gradient magnitude relative to its local mean (contrast
invariant), then blurred to widen the capture range.

**Solver.** Inverse-compositional Gauss-Newton on the sum of squared descriptor
differences ``sum |D_T(W(p; params)) - D_V(p)|^2`` with Levenberg-Marquardt damping,
coarse to fine (1/8 then 1/4 of a 640-px-wide input), a fixed number of iterations
per level, started by an exhaustive image-wide translation search at the coarsest
level (one grouped convolution). ``W(p) = p + phi(p)`` is a similarity transform
(``1 + a + ib`` times the centred coordinate ``u + iv``, plus ``tx + i ty``), so warps
compose and invert exactly. The Jacobian is taken from the gradients of the
*visible* descriptor, which does not move: it and the Gauss-Newton matrix are built
once per level (:func:`steepest_descent`); each iteration warps the thermal
descriptor once, reduces the residual against the fixed Jacobian and composes the
current warp with the inverse of the step (:func:`compose_inverse`). Only tensor
operations (in a traced graph the 4x4 system is solved by an unrolled Cholesky
factorisation), so it runs in ONNX Runtime as well; docs/performance.md has its time
and the comparison with the forward-additive form it replaced.

**Confidence.** ``gain`` is the relative reduction of the descriptor
difference between ``phi = 0`` and the estimate at the finest level;
:func:`gain_gate` scales the field toward zero when it is small (featureless
or unrelated images). On well-registered pairs (RoadScene) the estimate
stays within about 1 px, which the corrector's 2 px dead zone absorbs. On
the TNO/MSRS evaluation pairs it moves the "aligned" thermal images by
4.5 px on average, consistently (the same answer, within about a quarter of
the shift, after a synthetic 8 or 16 px misalignment), and registering by it
raises the pairs' mutual information: most of that is the dataset's own
residual misregistration (README, evaluation of the corrector).
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import cv2
import numpy as np
import torch
import torch.nn.functional as F

from .. import native as native_kernels
from .pyramid import opencv_eligible, window_mean
from .warp import warp_by_flow

_EDGE_EPS = 0.02      # intensity units: floor of the local mean gradient magnitude
_GRAD_EPS = 1e-6      # squared intensity units: floor of |g|^2 in the orientation term
_LOCAL_WINDOW = 7     # cells: window of the local mean gradient magnitude
PARAMS = 4            # tx, ty, a, b
MIN_CELLS = 16        # cells along the height the coarsest level keeps at least


@dataclass(frozen=True)
class GlobalAlignConfig:
    """Hyper-parameters of :func:`estimate_similarity`.

    Attributes:
        coarse_cells: the coarsest level is about this many cells wide: its
            downsampling factor is the largest power of two ``<= W / coarse_cells``
            (8 at 640x480), clamped to [1, 16]; each further level halves it.
        iters: Gauss-Newton iterations per level, coarse to fine. With the
            inverse-compositional solver (8, 4) costs less than a
            forward-additive (6, 3) and matches or beats it on the evaluation
            pairs (docs/performance.md).
        blur: Gaussian sigma (cells of the level) applied to the descriptors.
        damping: Levenberg-Marquardt damping (relative to the diagonal).
        gain_low, gain_high: :func:`gain_gate` ramps from 0 at ``gain_low`` to
            1 at ``gain_high`` (relative reduction of the descriptor difference).
        search: radius (cells of the coarsest level) of the exhaustive
            image-wide translation search that starts the solver (0 = start at
            zero); 4 at 1/8 covers +-32 px.
        margin: border band (fraction of each side) left out of the measure:
            thermal cameras often frame the image (a dark or bright border,
            a shutter edge) that has no visible counterpart and would pull
            the estimate toward a spurious scale change.
    """

    coarse_cells: int = 80
    iters: tuple[int, ...] = (8, 4)

    blur: float = 1.0
    damping: float = 1e-2
    gain_low: float = 0.02
    gain_high: float = 0.06
    search: int = 4
    margin: float = 0.05

    def factors(self, width: int, height: int | None = None) -> list[int]:
        """Downsampling factor of each level, coarse to fine, for an input ``width`` x ``height`` px.

        The coarsest level also keeps at least ``MIN_CELLS`` cells along the height (very
        wide, short images would otherwise be pooled to one or two rows).

        Example:
            >>> GlobalAlignConfig().factors(640), GlobalAlignConfig().factors(256)
            ([8, 4], [2, 1])
            >>> GlobalAlignConfig().factors(1300, 40)
            [2, 1]
        """
        limit = min(16, width / self.coarse_cells)
        if height is not None:
            limit = min(limit, height / MIN_CELLS)
        top = 1
        while top * 2 <= limit:
            top *= 2
        return [max(1, top >> i) for i in range(len(self.iters))]


def gaussian_taps(sigma: float) -> list[float]:
    """Normalised Gaussian taps of radius ``max(1, round(2 sigma))`` (``sigma > 0``).

    Example:
        >>> [round(v, 4) for v in gaussian_taps(0.5)]
        [0.1065, 0.787, 0.1065]
    """
    r = max(1, int(round(2 * sigma)))
    g = [math.exp(-k * k / (2 * sigma * sigma)) for k in range(-r, r + 1)]
    return [v / sum(g) for v in g]


def gaussian_blur(x: torch.Tensor, sigma: float) -> torch.Tensor:
    """Separable Gaussian blur (radius ``2 sigma``, replicate border) of ``(B, C, h, w)``.

    Written as weighted sums of shifted slices: for these few taps on small
    maps it is several times faster than a depthwise convolution on CPU.

    Example:
        >>> x = torch.zeros(1, 1, 5, 5); x[..., 2, 2] = 1.0
        >>> y = gaussian_blur(x, 1.0)
        >>> round(float(y.sum()), 4), bool(y[0, 0, 2, 2] == y.max())
        (1.0, True)
    """
    if sigma <= 0:
        return x
    g = gaussian_taps(sigma)
    r = len(g) // 2
    h, w = x.shape[-2:]
    p = F.pad(x, (r, r, 0, 0), mode='replicate')
    x = sum(g[k] * p[..., :, k:k + w] for k in range(2 * r + 1))
    p = F.pad(x, (0, 0, r, r), mode='replicate')
    return sum(g[k] * p[..., k:k + h, :] for k in range(2 * r + 1))


def central_gradients(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Central differences ``d/dx, d/dy`` (per cell, replicate border) of ``(B, C, h, w)``."""
    gx = F.pad(x[..., :, 2:] - x[..., :, :-2], (1, 1, 0, 0), mode='replicate') * 0.5
    gy = F.pad(x[..., 2:, :] - x[..., :-2, :], (0, 0, 1, 1), mode='replicate') * 0.5
    return gx, gy


def align_descriptor(img: torch.Tensor) -> torch.Tensor:
    """Polarity- and contrast-invariant edge descriptor used for registration.

    Args:
        img: ``(B, 1, h, w)`` in [0, 1].

    Returns:
        ``(B, 4, h, w)``: doubled-angle orientation (2) and absolute gradients
        (2), weighted by the gradient magnitude over its local mean; 0 in flat
        areas, about 1 on the edges of a region.

    Example:
        >>> img = torch.zeros(1, 1, 8, 8); img[..., 4:] = 1.0     # vertical edge
        >>> d = align_descriptor(img)
        >>> d.shape, bool(d[0, 0, 3, 4] > 0.5), bool(d[0, 1, 3, 4].abs() < 1e-6)
        (torch.Size([1, 4, 8, 8]), True, True)
    """
    gx, gy = central_gradients(img)
    mag2 = gx * gx + gy * gy
    mag = torch.sqrt(mag2 + _GRAD_EPS * _GRAD_EPS)
    local = window_mean(mag, _LOCAL_WINDOW)   # = avg_pool2d(count_include_pad=False), faster
    w = mag / (local + _EDGE_EPS)
    inv = w / (mag2 + _GRAD_EPS)
    return torch.cat([(gx * gx - gy * gy) * inv, 2.0 * gx * gy * inv,
                      gx.abs() * w / mag, gy.abs() * w / mag], 1)


def centred_coords(h: int, w: int, full_h: int, full_w: int, like: torch.Tensor
                   ) -> tuple[torch.Tensor, torch.Tensor]:
    """Centred input-pixel coordinates ``(u, v)`` of the cell centres of a grid.

    The ``h x w`` grid spans a ``full_h x full_w`` image; coordinates are
    relative to the image centre; each ``(1, 1, h, w)``.
    """
    ys = (torch.arange(h, dtype=like.dtype, device=like.device) + 0.5) * (full_h / h) - full_h / 2
    xs = (torch.arange(w, dtype=like.dtype, device=like.device) + 0.5) * (full_w / w) - full_w / 2
    return xs.view(1, 1, 1, w).expand(1, 1, h, w), ys.view(1, 1, h, 1).expand(1, 1, h, w)


def similarity_field(params: torch.Tensor, u: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """Flow of similarity parameters at centred coordinates.

    Args:
        params: ``(B, 4)``: ``tx, ty`` (px), ``a`` (scale - 1), ``b`` (rotation, rad).
        u, v: ``(1, 1, h, w)`` centred pixel coordinates (:func:`centred_coords`).

    Returns:
        ``(B, 2, h, w)`` pixels (x, y).

    Example:
        >>> u, v = centred_coords(1, 3, 1, 3, torch.zeros(1))
        >>> f = similarity_field(torch.tensor([[1.0, 0.0, 0.1, 0.0]]), u, v)
        >>> [round(x, 4) for x in f[0, 0, 0].tolist()]
        [0.9, 1.0, 1.1]
    """
    p = params.view(-1, PARAMS, 1, 1)
    tx, ty, a, b = p[:, 0:1], p[:, 1:2], p[:, 2:3], p[:, 3:4]
    return torch.cat([tx + a * u - b * v, ty + b * u + a * v], 1)


def solve_spd(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Solve ``a @ x = b`` for small symmetric positive definite ``a`` (unrolled Cholesky).

    Elementwise operations only, so it exports to ONNX (``torch.linalg`` solvers do not).

    Args:
        a: ``(B, n, n)`` SPD.
        b: ``(B, n)``.

    Returns:
        ``(B, n)``.

    Example:
        >>> a = torch.tensor([[[4.0, 1, 0, 0], [1, 3, 1, 0], [0, 1, 2, 0], [0, 0, 0, 1]]])
        >>> b = torch.tensor([[1.0, 2, 3, 4]])
        >>> bool(torch.allclose(solve_spd(a, b), torch.linalg.solve(a, b), atol=1e-5))
        True
    """
    n = a.shape[-1]
    lo: list[list[torch.Tensor]] = [[a[:, 0, 0]] * n for _ in range(n)]
    for j in range(n):
        d = a[:, j, j] - sum((lo[j][k] * lo[j][k] for k in range(j)), torch.zeros_like(a[:, 0, 0]))
        lo[j][j] = torch.sqrt(d.clamp_min(1e-30))
        for i in range(j + 1, n):
            s = a[:, i, j] - sum((lo[i][k] * lo[j][k] for k in range(j)), torch.zeros_like(a[:, 0, 0]))
            lo[i][j] = s / lo[j][j]
    y: list[torch.Tensor] = []
    for i in range(n):
        y.append((b[:, i] - sum((lo[i][k] * y[k] for k in range(i)), torch.zeros_like(b[:, 0]))) / lo[i][i])
    x: list[torch.Tensor] = [b[:, 0]] * n
    for i in reversed(range(n)):
        x[i] = (y[i] - sum((lo[k][i] * x[k] for k in range(i + 1, n)), torch.zeros_like(b[:, 0]))) / lo[i][i]
    return torch.stack(x, 1)


def steepest_descent(jx: torch.Tensor, jy: torch.Tensor, u: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """Jacobian of residuals with respect to the similarity parameters, ``(B, 4, N)``.

    The Jacobian row of a residual is ``[jx, jy, jx u + jy v, jy u - jx v]``
    (``jx, jy = d r / d phi``, :func:`similarity_field`).

    Args:
        jx, jy: ``(B, C, h, w)``.
        u, v: ``(1, 1, h, w)`` centred coordinates of the grid (:func:`centred_coords`).

    Returns:
        ``(B, 4, C * h * w)``.
    """
    b = jx.shape[0]
    return torch.stack([jx, jy, jx * u + jy * v, jy * u - jx * v], 1).reshape(b, PARAMS, -1)


def compose_inverse(params: torch.Tensor, step: torch.Tensor) -> torch.Tensor:
    """Parameters of ``W(params) o W(step)^-1`` (the inverse-compositional update), ``(B, 4)``.

    With centred coordinates as complex numbers ``x = u + iv``, ``W(x) = z x + t`` where
    ``z = 1 + a + ib`` and ``t = tx + i ty`` (:func:`similarity_field`: ``W(x) = x + phi(x)``),
    so the result is ``z = z1 / z2``, ``t = t1 - z t2``. Elementwise operations only (ONNX).

    Example:
        >>> p = torch.tensor([[3.0, -2.0, 0.01, 0.02]])
        >>> bool(compose_inverse(p, p).abs().max() < 1e-6), bool(torch.allclose(compose_inverse(p, 0 * p), p))
        (True, True)
    """
    t1x, t1y, a1, b1 = params.unbind(1)
    t2x, t2y, a2, b2 = step.unbind(1)
    p1, p2 = 1.0 + a1, 1.0 + a2
    n = p2 * p2 + b2 * b2
    zr, zi = (p1 * p2 + b1 * b2) / n, (b1 * p2 - p1 * b2) / n    # z1 * conj(z2) / |z2|^2
    tx = t1x - (zr * t2x - zi * t2y)
    ty = t1y - (zr * t2y + zi * t2x)
    return torch.stack([tx, ty, zr - 1.0, zi], 1)


def _inner_mask(u: torch.Tensor, v: torch.Tensor, big: int, bigw: int, margin: float) -> torch.Tensor:
    """``(1, 1, h, w)`` 1 inside, 0 within ``margin`` (fraction of the size) of the image border."""
    inside = (u.abs() < bigw * (0.5 - margin)) & (v.abs() < big * (0.5 - margin))
    return inside.to(u.dtype)


def _translation_search(dv: torch.Tensor, dt: torch.Tensor, radius: int, down: int) -> torch.Tensor:
    """Start parameters from an exhaustive search of the image-wide translation.

    Correlates the descriptors at every offset within ``radius`` cells and
    takes the best (integer cells; zero unless another offset scores higher);
    ``(B, 4)`` with the translation in input px.
    """
    b, c, h, w = dv.shape
    r = radius
    pad = F.pad(dt, (r, r, r, r))
    if torch.jit.is_tracing():   # ONNX Conv needs a kernel of known shape: the shifted products
        scores = torch.stack([(dv * pad[..., r + dy:r + dy + h, r + dx:r + dx + w]).mean((1, 2, 3))
                              for dy in range(-r, r + 1) for dx in range(-r, r + 1)], 1)
    else:   # the same scores from one grouped convolution with dv as the kernel (~1 ms less)
        scores = F.conv2d(pad.reshape(1, b * c, h + 2 * r, w + 2 * r), dv, groups=b).reshape(b, -1) \
            / (c * h * w)
    best = scores.argmax(1)
    centre = (2 * r + 1) * r + r   # index of offset (0, 0)
    # ties (flat images) and non-improvements keep zero
    best = torch.where(scores.amax(1) > scores[:, centre] * (1 + 1e-4) + 1e-12, best,
                       torch.full_like(best, centre))
    tx = (best % (2 * r + 1) - r).to(dv.dtype) * down
    ty = (best // (2 * r + 1) - r).to(dv.dtype) * down
    zeros = torch.zeros_like(tx)
    return torch.stack([tx, ty, zeros, zeros], 1)


def _pooled_levels(visible: torch.Tensor, thermal: torch.Tensor, factors: list[int]
                   ) -> dict[int, torch.Tensor]:
    """``{factor: (2B, 1, H / factor, W / factor)}`` visible then thermal, average-pooled.

    The full-resolution images are pooled once, to the finest factor; coarser
    levels pool that (the mean of equal blocks' means is the block mean, to
    float rounding; floor sizes agree since ``floor(floor(n / a) / b) = floor(n / (a b))``).
    """
    fine = min(factors)
    base = torch.cat([F.avg_pool2d(x, fine) if fine > 1 else x for x in (visible, thermal)], 0)
    return {f: (F.avg_pool2d(base, f // fine) if f > fine else base) for f in factors}


def _level_descriptors(pooled: torch.Tensor, blur: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Blurred descriptors of one level's pooled ``(2B, 1, h, w)`` images: ``(visible, thermal)``."""
    d = gaussian_blur(align_descriptor(pooled), blur)
    b = pooled.shape[0] // 2
    return d[:b], d[b:]


def estimate_similarity(visible: torch.Tensor, thermal: torch.Tensor,
                        cfg: GlobalAlignConfig | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Similarity parameters that register ``thermal`` to ``visible``, and their confidence.

    Args:
        visible, thermal: ``(B, 1, H, W)`` in [0, 1]; inputs smaller than 16 px
            return zeros.
        cfg: solver settings.

    Returns:
        ``(params (B, 4), gain (B,))``: parameters as in :func:`similarity_field`
        (field in pixels of the input); ``gain`` in (-inf, 1], the relative
        reduction of the descriptor difference at the finest level (see the
        module docstring).
    """
    cfg = cfg or GlobalAlignConfig()
    b = visible.shape[0]
    big, bigw = visible.shape[-2:]
    params = torch.zeros(b, PARAMS, dtype=visible.dtype, device=visible.device)
    gain = torch.zeros(b, dtype=visible.dtype, device=visible.device)
    if min(big, bigw) < 16 and not torch.jit.is_tracing():
        return params, gain
    eye = torch.eye(PARAMS, dtype=visible.dtype, device=visible.device)
    factors = cfg.factors(bigw, big)
    pooled = _pooled_levels(visible, thermal, factors)
    for lvl, (down, iters) in enumerate(zip(factors, cfg.iters)):
        dv, dt = _level_descriptors(pooled[down], cfg.blur)
        h, w = dv.shape[-2:]
        u, v = centred_coords(h, w, big, bigw, dv)
        scale = 1.0 / down   # input px -> cells of this level
        mask = _inner_mask(u, v, big, bigw, cfg.margin)
        dvm = dv * mask
        if lvl == 0 and cfg.search > 0:
            params = _translation_search(dvm, dt, cfg.search, down)
        # Inverse compositional: the Jacobian from the fixed visible descriptor, per input px
        gx, gy = central_gradients(dv)
        sm = mask * scale
        jac = steepest_descent(gx * sm, gy * sm, u, v)
        hess = jac @ jac.transpose(1, 2)
        hess = hess + cfg.damping * hess * eye + 1e-9 * eye
        for _ in range(iters):
            wt = warp_by_flow(dt, similarity_field(params, u, v) * scale)
            grad = (jac @ (wt * mask - dvm).reshape(b, -1, 1)).squeeze(-1)
            if torch.jit.is_tracing():
                step = solve_spd(hess, grad)
            else:   # same result, one call instead of ~60 small ops
                step = torch.linalg.solve(hess, grad.unsqueeze(-1)).squeeze(-1)
            params = compose_inverse(params, step)
    # Confidence at the finest level: descriptor difference at the estimate vs at phi = 0.
    r = (warp_by_flow(dt, similarity_field(params, u, v) * scale) - dv) * mask
    at_zero = (((dt - dv) * mask) ** 2).mean((1, 2, 3))
    gain = 1.0 - (r * r).mean((1, 2, 3)) / at_zero.clamp_min(1e-12)
    return params, gain


def gain_gate(gain: torch.Tensor, cfg: GlobalAlignConfig) -> torch.Tensor:
    """Weight in [0, 1] of an estimate with confidence ``gain``.

    A linear ramp from 0 at ``cfg.gain_low`` to 1 at ``cfg.gain_high``.

    Example:
        >>> gain_gate(torch.tensor([0.0, 0.04, 0.5]), GlobalAlignConfig()).tolist()
        [0.0, 0.5, 1.0]
    """
    return ((gain - cfg.gain_low) / max(cfg.gain_high - cfg.gain_low, 1e-9)).clamp(0.0, 1.0)


def gated_similarity(visible: torch.Tensor, thermal: torch.Tensor, cfg: GlobalAlignConfig | None = None,
                     opencv: bool = False, native: bool = False) -> torch.Tensor:
    """Similarity parameters scaled by their confidence gate (:func:`gain_gate`), ``(B, 4)``.

    ``opencv`` computes them with :func:`estimate_similarity_cv`, ``native`` with
    :func:`estimate_similarity_native` when the fused C kernels are available (else
    ``opencv`` decides); both in eager CPU float32 inference only (see
    :func:`~.pyramid.opencv_eligible`), otherwise the torch solver runs.
    """
    cfg = cfg or GlobalAlignConfig()
    if (opencv or native) and opencv_eligible(visible) and opencv_eligible(thermal):
        use_c = native and native_kernels.available()
        solve = estimate_similarity_native if use_c else estimate_similarity_cv
        rows = [solve(v[0].numpy(), t[0].numpy(), cfg) for v, t in zip(visible, thermal)]
        params = torch.from_numpy(np.stack([p for p, _ in rows])).to(visible.dtype)
        gain = torch.tensor([g for _, g in rows], dtype=visible.dtype)
    else:
        params, gain = estimate_similarity(visible, thermal, cfg)
    return params * gain_gate(gain, cfg).view(-1, 1)


def estimate_similarity_native(visible: np.ndarray, thermal: np.ndarray, cfg: GlobalAlignConfig | None = None
                               ) -> tuple[np.ndarray, float]:
    """:func:`estimate_similarity` of one pair in one call of the fused C kernels.

    (:func:`ros2_regionfuse.native.similarity`: the same levels, descriptor, search, steps and
    confidence, exact bilinear sampling.) Arguments and result as :func:`estimate_similarity_cv`,
    to which it falls back for a descriptor blur wider than the kernel takes (``blur > 7.5``).
    """
    cfg = cfg or GlobalAlignConfig()
    if min(visible.shape) < 16:
        return np.zeros(PARAMS, np.float32), 0.0
    big, bigw = visible.shape
    taps = gaussian_taps(cfg.blur) if cfg.blur > 0 else []
    if len(taps) > 31:
        return estimate_similarity_cv(visible, thermal, cfg)
    params, gain = native_kernels.similarity(
        np.ascontiguousarray(visible, np.float32), np.ascontiguousarray(thermal, np.float32),
        cfg.factors(bigw, big), list(cfg.iters), taps, cfg.damping, cfg.search, cfg.margin)
    return params.astype(np.float32), gain


# ---------------------------------------------------------------------------------------------
# The same solver on numpy arrays with OpenCV (CPU inference). Images are (h, w) float32,
# descriptors (h, w, 4) float32 (channels last, as OpenCV takes them).

def _pool_cv(img: np.ndarray, f: int) -> np.ndarray:
    """Block mean over ``f x f`` blocks, floor size: ``F.avg_pool2d(x, f)`` (to float rounding)."""
    if f == 1:
        return img
    h, w = img.shape[0] // f, img.shape[1] // f
    return cv2.resize(img[:h * f, :w * f], (w, h), interpolation=cv2.INTER_AREA)


def _gradients_cv(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """:func:`central_gradients` of an ``(h, w)`` or ``(h, w, c)`` array (``h, w >= 3``)."""
    gx = np.empty_like(x)
    gy = np.empty_like(x)
    np.subtract(x[:, 2:], x[:, :-2], out=gx[:, 1:-1])
    gx[:, 0], gx[:, -1] = gx[:, 1], gx[:, -2]
    np.subtract(x[2:], x[:-2], out=gy[1:-1])
    gy[0], gy[-1] = gy[1], gy[-2]
    gx *= 0.5
    gy *= 0.5
    return gx, gy


def _window_mean_cv(x: np.ndarray, k: int) -> np.ndarray:
    """:func:`~.pyramid.window_mean` of an ``(h, w)`` array (mean over the in-image pixels)."""
    s = cv2.boxFilter(x, -1, (k, k), normalize=False, borderType=cv2.BORDER_CONSTANT)
    n = cv2.boxFilter(np.ones_like(x), -1, (k, k), normalize=False, borderType=cv2.BORDER_CONSTANT)
    return s / n


def _descriptor_cv(img: np.ndarray, blur: float) -> np.ndarray:
    """:func:`align_descriptor` then :func:`gaussian_blur` of an ``(h, w)`` image: ``(h, w, 4)``."""
    gx, gy = _gradients_cv(img)
    mag2 = gx * gx + gy * gy
    mag = np.sqrt(mag2 + _GRAD_EPS * _GRAD_EPS)
    wgt = mag / (_window_mean_cv(mag, _LOCAL_WINDOW) + _EDGE_EPS)
    inv = wgt / (mag2 + _GRAD_EPS)
    ww = wgt / mag
    d = np.stack([(gx * gx - gy * gy) * inv, 2.0 * gx * gy * inv, np.abs(gx) * ww, np.abs(gy) * ww], -1)
    if blur <= 0:
        return d
    g = np.asarray(gaussian_taps(blur), np.float32)
    return cv2.sepFilter2D(d, -1, g, g, borderType=cv2.BORDER_REPLICATE)


def _sample_matrix(params: np.ndarray, h: int, w: int, big: int, bigw: int, down: int) -> np.ndarray:
    """``(2, 3)`` map from a level's cell ``(j, i)`` to where the similarity field samples it (cells).

    Cell ``j`` is centred on input coordinate ``u = (j + 0.5) bigw / w - bigw / 2``
    (:func:`centred_coords`); the field is converted to cells by ``1 / down`` as in
    :func:`estimate_similarity`, so the sample lies at ``j + phi_x(u, v) / down``, affine in ``(j, i)``.
    """
    tx, ty, a, b = (float(p) for p in params)
    sx, sy = bigw / w, big / h   # input px per cell
    u0, v0 = 0.5 * sx - bigw / 2, 0.5 * sy - big / 2   # centred coordinates of cell (0, 0)
    # phi_x = tx + a u - b v, phi_y = ty + b u + a v with u = u0 + j sx, v = v0 + i sy
    return np.array([[1 + a * sx / down, -b * sy / down, (tx + a * u0 - b * v0) / down],
                     [b * sx / down, 1 + a * sy / down, (ty + b * u0 + a * v0) / down]], np.float64)


def _warp_cv(d: np.ndarray, params: np.ndarray, big: int, bigw: int, down: int) -> np.ndarray:
    """``warp_by_flow(d, field / down)`` of an ``(h, w, c)`` descriptor (bilinear, border clamp)."""
    h, w = d.shape[:2]
    return cv2.warpAffine(d, _sample_matrix(params, h, w, big, bigw, down), (w, h),
                          flags=cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP, borderMode=cv2.BORDER_REPLICATE)


def estimate_similarity_cv(visible: np.ndarray, thermal: np.ndarray, cfg: GlobalAlignConfig | None = None
                           ) -> tuple[np.ndarray, float]:
    """:func:`estimate_similarity` of one pair with numpy and OpenCV (CPU inference, no gradient).

    The same descriptor, levels, search, Gauss-Newton steps and confidence;
    ``cv2.warpAffine`` replaces ``grid_sample`` (sampling positions quantised to
    1/32 cell), ``cv2.matchTemplate`` the search's convolution. Parameters agree with
    the torch solver to a small fraction of a pixel on real pairs (test_global_align).

    Args:
        visible, thermal: ``(H, W)`` float32 in [0, 1].
        cfg: solver settings.

    Returns:
        ``(params (4,) float32, gain)`` as in :func:`estimate_similarity`.
    """
    cfg = cfg or GlobalAlignConfig()
    big, bigw = visible.shape
    params = np.zeros(PARAMS, np.float64)
    if min(big, bigw) < 16:
        return params.astype(np.float32), 0.0
    factors = cfg.factors(bigw, big)
    fine = min(factors)
    base = [_pool_cv(np.ascontiguousarray(x, np.float32), fine) for x in (visible, thermal)]
    for lvl, (down, iters) in enumerate(zip(factors, cfg.iters)):
        dv, dt = (_descriptor_cv(_pool_cv(x, down // fine), cfg.blur) for x in base)
        h, w = dv.shape[:2]
        u = (np.arange(w) + 0.5) * (bigw / w) - bigw / 2
        v = (np.arange(h) + 0.5) * (big / h) - big / 2
        # the mask of the torch solver is a rectangle: work on that crop instead of multiplying
        cols = np.flatnonzero(np.abs(u.astype(np.float32)) < bigw * (0.5 - cfg.margin))
        rows = np.flatnonzero(np.abs(v.astype(np.float32)) < big * (0.5 - cfg.margin))
        inner = (slice(rows[0], rows[-1] + 1), slice(cols[0], cols[-1] + 1)) if len(rows) and len(cols) \
            else (slice(0, 0), slice(0, 0))
        u, v = u[inner[1]], v[inner[0]]
        dvi = dv[inner]
        if lvl == 0 and cfg.search > 0:
            dvm = np.zeros_like(dv)
            dvm[inner] = dvi
            params = _translation_search_cv(dvm, dt, cfg.search, down)
        gx, gy = _gradients_cv(dv)   # inverse compositional: the fixed visible descriptor's
        sd, hess = _steepest_descent_cv(gx[inner], gy[inner], u, v, down)
        hess += cfg.damping * np.diag(np.diag(hess)) + 1e-9 * np.eye(PARAMS)
        sd_t = torch.from_numpy(sd)
        res = np.empty(dvi.shape, np.float32)
        for _ in range(iters):
            np.subtract(_warp_cv(dt, params, big, bigw, down)[inner], dvi, out=res)
            # J^T r in torch: its threads, not a second (BLAS) thread pool on the same cores
            grad = torch.mv(sd_t, torch.from_numpy(res).view(-1)).double().numpy()
            params = _compose_inverse_np(params, np.linalg.solve(hess, grad))
    r = _warp_cv(dt, params, big, bigw, down)[inner] - dvi
    at_zero = float(np.sum((dt[inner] - dvi) ** 2, dtype=np.float64))
    gain = 1.0 - float(np.sum(r * r, dtype=np.float64)) / max(at_zero, 1e-12 * dv.size)
    return params.astype(np.float32), gain


def _steepest_descent_cv(gx: np.ndarray, gy: np.ndarray, u: np.ndarray, v: np.ndarray, down: int
                         ) -> tuple[np.ndarray, np.ndarray]:
    """:func:`steepest_descent` of one level (per input px) and its Gauss-Newton matrix.

    Args:
        gx, gy: ``(h, w, c)`` float32 gradients (per cell) of the visible descriptor.
        u, v: ``(w,)`` and ``(h,)`` centred input coordinates of the columns and rows.
        down: input px per cell.

    Returns:
        ``(J (4, h * w * c) float32, J J^T (4, 4) float64)``.
    """
    s = np.float32(1.0 / down)
    uu = u.astype(np.float32)[None, :, None]
    vv = v.astype(np.float32)[:, None, None]
    jx, jy = gx * s, gy * s
    sd = np.stack([jx, jy, jx * uu + jy * vv, jy * uu - jx * vv]).reshape(PARAMS, -1)
    sd_t = torch.from_numpy(sd)
    return sd, (sd_t @ sd_t.t()).double().numpy()


def _compose_inverse_np(params: np.ndarray, step: np.ndarray) -> np.ndarray:
    """:func:`compose_inverse` of ``(4,)`` float64 arrays."""
    z = complex(1.0 + params[2], params[3]) / complex(1.0 + step[2], step[3])
    t = complex(params[0], params[1]) - z * complex(step[0], step[1])
    return np.array([t.real, t.imag, z.real - 1.0, z.imag])


def _translation_search_cv(dvm: np.ndarray, dt: np.ndarray, radius: int, down: int) -> np.ndarray:
    """:func:`_translation_search` for one pair: ``(4,)`` start parameters (translation in input px)."""
    h, w, c = dt.shape
    r = radius
    pad = cv2.copyMakeBorder(dt, r, r, r, r, cv2.BORDER_CONSTANT, value=0)
    scores = cv2.matchTemplate(pad, dvm, cv2.TM_CCORR).reshape(-1) / (c * h * w)
    centre = (2 * r + 1) * r + r
    best = int(np.argmax(scores))
    if not scores[best] > scores[centre] * (1 + 1e-4) + 1e-12:
        best = centre
    return np.array([(best % (2 * r + 1) - r) * down, (best // (2 * r + 1) - r) * down, 0.0, 0.0])


def field_on_grid(params: torch.Tensor, image_hw: tuple[int, int], size: tuple[int, int] | None = None,
                  cell: float | None = None) -> torch.Tensor:
    """Similarity field of ``params`` for an ``image_hw`` input, evaluated on a grid.

    Args:
        params: ``(B, 4)`` as in :func:`similarity_field`.
        image_hw: ``(H, W)`` of the input the parameters belong to.
        size: ``(h, w)`` grid (values still in **input pixels**); default ``(H, W)``.
        cell: input pixels per grid cell; default ``H / h`` (the grid spans
            the image). Set it when the grid covers a padded image.

    Returns:
        ``(B, 2, h, w)`` pixels of the input (x, y).
    """
    big, bigw = image_hw
    h, w = size or (big, bigw)
    c = cell if cell is not None else big / h
    u, v = centred_coords(h, w, h * c, w * c, params)
    u, v = u + (w * c - bigw) / 2, v + (h * c - big) / 2
    return similarity_field(params, u, v)


def max_shift(params: torch.Tensor, image_hw: tuple[int, int]) -> torch.Tensor:
    """Largest displacement (px) of the similarity field over an ``(H, W)`` image, ``(B,)``.

    The field is affine, so its length is largest at a corner of the image
    (the outermost pixel centres).

    Example:
        >>> max_shift(torch.tensor([[3.0, 4.0, 0.0, 0.0]]), (10, 20)).tolist()
        [5.0]
    """
    big, bigw = image_hw
    hx, hy = (bigw - 1) / 2, (big - 1) / 2
    u = torch.tensor([-hx, hx, -hx, hx], dtype=params.dtype, device=params.device).view(1, 1, 1, 4)
    v = torch.tensor([-hy, -hy, hy, hy], dtype=params.dtype, device=params.device).view(1, 1, 1, 4)
    return torch.linalg.vector_norm(similarity_field(params, u, v), dim=1).flatten(1).amax(1)


def similarity_flow(visible: torch.Tensor, thermal: torch.Tensor, cfg: GlobalAlignConfig | None = None,
                    size: tuple[int, int] | None = None, cell: float | None = None, opencv: bool = False,
                    native: bool = False) -> torch.Tensor:
    """Gated similarity flow registering ``thermal`` to ``visible``.

    Args:
        visible, thermal: ``(B, 1, H, W)`` in [0, 1].
        cfg: solver settings.
        size, cell: the grid to evaluate the field on (:func:`field_on_grid`).
        opencv, native: solve with :func:`estimate_similarity_cv` or :func:`estimate_similarity_native`
            (see :func:`gated_similarity`).

    Returns:
        ``(B, 2, h, w)`` pixels of the input (x, y).
    """
    return field_on_grid(gated_similarity(visible, thermal, cfg, opencv=opencv, native=native),
                         tuple(visible.shape[-2:]), size, cell)
