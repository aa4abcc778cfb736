"""Classical multi-scale fusion methods, written from their papers, as reference rows for ``regionfuse eval``.

The dev sets' peers are all learned methods; the classical multi-scale methods
that lead public benchmarks are the ones to beat on structure (SSIM, SCD) and
have no outputs in ``../shared``. Grey images in, grey image out, float32 in
[0, 1], ``(H, W)``:

* :func:`laplacian_fusion`: Laplacian pyramid (Burt & Adelson, 1983; as a
  fusion rule in Burt & Kolczynski, 1993): detail coefficients chosen by the
  larger magnitude, the coarsest level averaged.
* :func:`guided_filter_fusion`: GFF (Li, Kang & Hu, "Image fusion with guided
  filtering", IEEE TIP 2013): a two-scale decomposition (31x31 mean), saliency
  ``|Laplacian| * Gaussian(r=5, sigma=5)``, binary weight maps refined by the
  guided filter (He et al., 2010) with ``r1=45, eps1=0.3`` for the base and
  ``r2=7, eps2=1e-6`` for the detail layer.
"""
from __future__ import annotations

from collections.abc import Callable

import cv2
import numpy as np

from .checks import ShapeError


def _check(a: np.ndarray, b: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    if a.shape != b.shape or a.ndim != 2:
        raise ShapeError(f'classical fusion needs two grey images of one size, got {a.shape} and {b.shape}')
    return np.asarray(a, np.float32), np.asarray(b, np.float32)


def box_mean(img: np.ndarray, r: int) -> np.ndarray:
    """Mean over the ``(2r+1) x (2r+1)`` window (borders reflected), float32."""
    return cv2.boxFilter(img, cv2.CV_32F, (2 * r + 1, 2 * r + 1), borderType=cv2.BORDER_REFLECT)


def guided_filter(guide: np.ndarray, src: np.ndarray, r: int, eps: float) -> np.ndarray:
    """He et al.'s guided filter: ``src`` filtered edge-aware along ``guide`` (both ``(H, W)`` float32).

    Example:
        >>> g = np.tile(np.r_[np.zeros(8), np.ones(8)].astype(np.float32), (16, 1))
        >>> out = guided_filter(g, g, 2, 1e-6)
        >>> float(np.abs(out - g).max()) < 1e-3     # an edge of the guide is kept
        True
    """
    mi, mp = box_mean(guide, r), box_mean(src, r)
    var = box_mean(guide * guide, r) - mi * mi
    cov = box_mean(guide * src, r) - mi * mp
    a = cov / (var + eps)
    b = mp - a * mi
    return box_mean(a, r) * guide + box_mean(b, r)


def guided_filter_fusion(ir: np.ndarray, vi: np.ndarray) -> np.ndarray:
    """GFF (Li et al., 2013) of two grey images in [0, 1]; ``(H, W)`` float32 in [0, 1]."""
    srcs = _check(ir, vi)
    base = [cv2.blur(s, (31, 31), borderType=cv2.BORDER_REFLECT) for s in srcs]
    detail = [s - b for s, b in zip(srcs, base)]
    sal = [cv2.GaussianBlur(np.abs(cv2.Laplacian(s, cv2.CV_32F, ksize=3)), (11, 11), 5.0) for s in srcs]
    p = [(sal[0] >= sal[1]).astype(np.float32), (sal[1] > sal[0]).astype(np.float32)]
    wb = [np.clip(guided_filter(s, q, 45, 0.3), 0.0, 1.0) for s, q in zip(srcs, p)]
    wd = [np.clip(guided_filter(s, q, 7, 1e-6), 0.0, 1.0) for s, q in zip(srcs, p)]
    nb, nd = wb[0] + wb[1] + 1e-6, wd[0] + wd[1] + 1e-6
    out = (wb[0] * base[0] + wb[1] * base[1]) / nb + (wd[0] * detail[0] + wd[1] * detail[1]) / nd
    return np.clip(out, 0.0, 1.0).astype(np.float32)


def laplacian_fusion(ir: np.ndarray, vi: np.ndarray, levels: int = 4) -> np.ndarray:
    """Laplacian-pyramid fusion: larger-magnitude detail, averaged base; ``(H, W)`` float32 in [0, 1]."""
    srcs = _check(ir, vi)
    pyr = []
    for s in srcs:
        g, lap = s, []
        for _ in range(levels):
            if min(g.shape) < 8:
                break
            down = cv2.pyrDown(g)
            lap.append(g - cv2.pyrUp(down, dstsize=g.shape[::-1]))
            g = down
        pyr.append((lap, g))
    (la, ga), (lb, gb) = pyr
    out = 0.5 * (ga + gb)
    for da, db in zip(reversed(la), reversed(lb)):
        out = cv2.pyrUp(out, dstsize=da.shape[::-1]) + np.where(np.abs(da) >= np.abs(db), da, db)
    return np.clip(out, 0.0, 1.0).astype(np.float32)


#: Reference rows of ``regionfuse eval --reference``: name -> ``fuse(ir, vi)``.
REFERENCE_METHODS: dict[str, Callable[[np.ndarray, np.ndarray], np.ndarray]] = {
    'GFF': guided_filter_fusion,
    'LP': laplacian_fusion,
}
