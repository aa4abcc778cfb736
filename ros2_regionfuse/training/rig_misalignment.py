"""Seeded rig-range misalignments with their exact fields (registration benchmark, tests).

A coarsely mounted thermal/RGB rig misaligns the thermal image by a global
affine map (translation up to +-40 px, rotation +-8 deg, scale 0.9-1.1, a few
percent of anisotropic scale and shear at 640x480) plus a smooth local field
of a few pixels (parallax, lens differences). :func:`sample_rig` draws one,
:func:`displacement` gives its dense field, :func:`apply_zero_padded` deforms an
image with it (zero outside the source frame, as a camera that saw nothing
there) and :func:`exact_flow` inverts it into the package's flow convention.

Convention: the deformed image at pixel ``p`` shows the original at
``p + d(p)``; the exact flow ``phi`` (``models/warp.py``) satisfies
``phi(p) = -d(p + phi(p))``: the corrected image at ``p`` takes the deformed
image's content at ``p + phi(p)``, which is the original at ``p``.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import cv2
import numpy as np


@dataclass(frozen=True)
class RigRange:
    """The misalignment range drawn from; pixel amounts at ``reference_width``, scaled with the width."""

    rotation_deg: float = 8.0
    scale: tuple[float, float] = (0.9, 1.1)
    anisotropy: float = 0.03
    shear: float = 0.03
    translation_px: float = 40.0
    centre_jitter: float = 0.2
    local_px: tuple[float, float] = (2.0, 6.0)
    local_grid: tuple[int, int] = (3, 6)
    reference_width: float = 640.0


@dataclass(frozen=True)
class RigDeformation:
    """One drawn misalignment: ``d(p) = (A - I)(p - c) + t + local(p)``.

    Attributes:
        a: ``(2, 2)`` linear part.
        centre: ``(2,)`` px, the point the linear part acts about.
        shift: ``(2,)`` px translation.
        local: ``(2, gh, gw)`` px, control values of the local field (bicubic over the frame).
    """

    a: np.ndarray
    centre: np.ndarray
    shift: np.ndarray
    local: np.ndarray


def sample_rig(h: int, w: int, rng: np.random.Generator, rig: RigRange | None = None) -> RigDeformation:
    """Draw a misalignment for an ``(h, w)`` frame from ``rig`` (uniform in each parameter)."""
    r = rig or RigRange()
    s = w / r.reference_width
    th = math.radians(rng.uniform(-r.rotation_deg, r.rotation_deg))
    sc = rng.uniform(*r.scale)
    an = rng.uniform(-r.anisotropy, r.anisotropy)
    sh = rng.uniform(-r.shear, r.shear)
    rot = np.array([[math.cos(th), -math.sin(th)], [math.sin(th), math.cos(th)]])
    a = sc * rot @ np.array([[1 + an, sh], [0, 1 - an]])
    c = np.array([(w - 1) / 2, (h - 1) / 2]) * (1 + rng.uniform(-r.centre_jitter, r.centre_jitter, 2))
    t = rng.uniform(-r.translation_px, r.translation_px, 2) * s
    gh, gw = rng.integers(r.local_grid[0], r.local_grid[1], 2)
    v = rng.standard_normal((2, gh, gw))
    v *= rng.uniform(*r.local_px) * s / max(float(np.abs(v).max()), 1e-9)
    return RigDeformation(a, c, t, v)


def displacement(deform: RigDeformation, h: int, w: int) -> np.ndarray:
    """The dense field ``d`` ``(h, w, 2)`` float32 px (x, y) of a misalignment."""
    a, c, t = deform.a, deform.centre, deform.shift
    ys, xs = np.mgrid[0:h, 0:w].astype(np.float64)
    dx = (a[0, 0] - 1) * (xs - c[0]) + a[0, 1] * (ys - c[1]) + t[0]
    dy = a[1, 0] * (xs - c[0]) + (a[1, 1] - 1) * (ys - c[1]) + t[1]
    loc = cv2.resize(deform.local.transpose(1, 2, 0).astype(np.float32), (w, h),
                     interpolation=cv2.INTER_CUBIC)
    return np.stack([dx + loc[..., 0], dy + loc[..., 1]], -1).astype(np.float32)


def _grid(h: int, w: int) -> tuple[np.ndarray, np.ndarray]:
    ys, xs = np.mgrid[0:h, 0:w].astype(np.float32)
    return xs, ys


def exact_flow(d: np.ndarray, iterations: int = 20) -> np.ndarray:
    """The flow ``phi`` with ``phi(p) = -d(p + phi(p))`` (fixed point; ``(h, w, 2)`` float32 px).

    Converges for fields whose Jacobian has norm < 1 (all rig-range fields: |A - I| <= 0.2).

    Example:
        >>> d = np.zeros((4, 5, 2), np.float32); d[..., 0] = 1.5
        >>> float(exact_flow(d)[2, 2, 0])
        -1.5
    """
    h, w = d.shape[:2]
    xs, ys = _grid(h, w)
    phi = -d.copy()
    for _ in range(iterations):
        phi = -cv2.remap(d, xs + phi[..., 0], ys + phi[..., 1], cv2.INTER_LINEAR,
                         borderMode=cv2.BORDER_REPLICATE)
    return phi


def sample_points(field: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(x, y, inside)``: where pixel ``p`` samples, ``p + field(p)``, and whether that is in the frame."""
    h, w = field.shape[:2]
    xs, ys = _grid(h, w)
    mx, my = xs + field[..., 0], ys + field[..., 1]
    inside = (mx >= -0.5) & (mx <= w - 0.5) & (my >= -0.5) & (my <= h - 0.5)
    return mx, my, inside


def apply_zero_padded(img: np.ndarray, field: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``img`` sampled at ``p + field(p)`` (bilinear; 0 outside its frame) and the inside mask.

    Args:
        img: ``(h, w)`` image (any dtype OpenCV remaps; uint8 stays uint8).
        field: ``(h, w, 2)`` float32 px.
    """
    mx, my, inside = sample_points(field)
    out = cv2.remap(img, mx, my, cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT, borderValue=0)
    return out, inside
