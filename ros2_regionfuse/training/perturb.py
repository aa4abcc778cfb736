"""Seeded synthetic misregistration of the thermal image, with its ground-truth flow.

A :class:`Perturbation` is a smooth displacement field ``d`` on an image of
size ``(H, W)``: the perturbed thermal is ``T'(p) = T(p + d(p))`` (backward
sampling, pixel coordinates, pixel centre ``i`` at coordinate ``i``, bilinear
with ``align_corners=False``). ``d`` is the sum of

* a random **affine** map: rotation (±``rotation_deg``) and scale
  (``scale_range``) about a point near the image centre, plus a translation
  (±``translation_px``, in pixels of a ``reference_width``-wide image, scaled
  with the image width);
* optionally a **depth-like parallax** field: a mostly horizontal shift that
  is zero above a random horizon row and grows toward the image bottom (near
  ground), modulated smoothly across columns (objects at different depths);
* optionally a random low-frequency **elastic** field (a coarse grid of random
  vectors, bicubic-interpolated).

The field is scaled down so its largest displacement stays below
``max_disp_px`` (width-scaled); in training its mean magnitude is also
randomly re-drawn (``rescale_prob``) to cover small and large shifts evenly,
and evaluation sets the mean magnitude exactly (``mean_shift``).

The **ground-truth corrector flow** ``phi`` follows the corrector's
convention (``models/warp.py``): the aligned content at ``p`` is found at
``p + phi(p)`` of the perturbed image, i.e. ``phi(p) + d(p + phi(p)) = 0``,
solved by fixed-point iteration on the analytic field (exact for the smooth
fields used here, whose gradients stay well below 1).

Identity samples have ``d = 0``. Every sample (identity or not) may get a
mild Gaussian blur and noise on the thermal image, so blur is no cue for
"aligned".
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F

from ..core.checks import ConfigError
from ..core.config import _f

_FIXED_POINT_ITERS = 12
_STATS_STEP = 8  # pixel stride of the grid used for mean/max displacement statistics
_FIELD_STEP = 4  # pixel stride of the sampled field used to warp and to invert (smooth fields)


@dataclass
class PerturbConfig:
    """Distribution of the synthetic misregistration (training and evaluation)."""

    identity_prob: float = _f(0.2, 'Share of identity samples (no displacement).', range=(0.0, 1.0))
    reference_width: float = _f(640.0, 'Image width (px) at which the pixel amounts below apply; '
                                'they scale with width / reference_width.', range=(1.0, 10000.0))
    rotation_deg: float = _f(3.0, 'Largest rotation (degrees).', range=(0.0, 45.0))
    translation_px: float = _f(16.0, 'Largest translation per axis (px).', range=(0.0, 500.0))
    scale_range: list = _f([0.95, 1.08], 'Range of the affine scale factor.', range=(0.5, 2.0), length=2)
    centre_jitter: float = _f(0.2, 'Rotation/scale centre offset from the image centre '
                              '(fraction of the size).', range=(0.0, 0.5))
    parallax_prob: float = _f(0.5, 'Probability of adding a depth-like parallax field.',
                              range=(0.0, 1.0))
    parallax_px: float = _f(24.0, 'Largest parallax shift at the image bottom (px).',
                            range=(0.0, 500.0))
    elastic_prob: float = _f(0.5, 'Probability of adding a low-frequency elastic field.',
                             range=(0.0, 1.0))
    elastic_px: float = _f(8.0, 'Largest elastic displacement (px).', range=(0.0, 500.0))
    elastic_grid: list = _f([3.0, 6.0], 'Range of the elastic control grid size (nodes per side).',
                            range=(2.0, 32.0), length=2)
    max_disp_px: float = _f(32.0, 'Cap on the largest displacement (px).', range=(0.0, 1000.0))
    rescale_prob: float = _f(0.5, 'Training: probability of re-drawing the mean displacement '
                             'uniformly from rescale_mean_px.', range=(0.0, 1.0))
    rescale_mean_px: list = _f([1.0, 20.0], 'Training: range of the re-drawn mean displacement (px, '
                               'not width-scaled).', range=(0.0, 500.0), length=2)
    blur_prob: float = _f(0.5, 'Probability of a Gaussian blur of the thermal image.',
                          range=(0.0, 1.0))
    blur_sigma_max: float = _f(1.0, 'Largest blur sigma (px).', range=(0.0, 10.0))
    noise_std_max: float = _f(0.01, 'Largest std of additive Gaussian noise on the thermal image.',
                              range=(0.0, 0.5))


@dataclass
class Perturbation:
    """A smooth displacement field on a ``(height, width)`` image (see module docstring).

    Attributes:
        height, width: image size (px).
        affine: ``(2, 3)`` float64: ``d_aff(p) = affine[:, :2] @ p + affine[:, 2]``.
        parallax: ``(bx, by, horizon, gamma)`` or None: ``d_par = (bx, by) * ramp(y) * mod(x)``.
        parallax_mod: ``(1, 1, 1, K)`` column modulation control points (around 1) or None.
        elastic: ``(1, 2, gh, gw)`` control vectors (px) or None.
        gain: global factor applied to the whole field.
        blur_sigma, noise_std: photometric degradation of the thermal image.
        seed: seed of the noise.
    """

    height: int
    width: int
    affine: np.ndarray = field(default_factory=lambda: np.zeros((2, 3)))
    parallax: tuple[float, float, float, float] | None = None
    parallax_mod: torch.Tensor | None = None
    elastic: torch.Tensor | None = None
    gain: float = 1.0
    blur_sigma: float = 0.0
    noise_std: float = 0.0
    seed: int = 0

    @property
    def is_identity(self) -> bool:
        """True when the field is zero everywhere."""
        return self.gain == 0.0 or (not np.any(self.affine) and self.parallax is None
                                    and self.elastic is None)

    def displacement(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """Evaluate ``d`` at pixel coordinates.

        Args:
            x, y: same-shape float tensors, pixel coordinates (centre of pixel i at i).

        Returns:
            ``(2, *x.shape)`` displacement (px), x then y.
        """
        a = torch.as_tensor(self.affine, dtype=x.dtype, device=x.device)
        dx = a[0, 0] * x + a[0, 1] * y + a[0, 2]
        dy = a[1, 0] * x + a[1, 1] * y + a[1, 2]
        if self.parallax is not None:
            bx, by, horizon, gamma = self.parallax
            ramp = ((y / max(self.height - 1, 1) - horizon) / (1.0 - horizon)).clamp(0.0, 1.0) ** gamma
            if self.parallax_mod is not None:
                ramp = ramp * _interp(self.parallax_mod.to(x), x, y, self.width, self.height)[0]
            dx = dx + bx * ramp
            dy = dy + by * ramp
        if self.elastic is not None:
            e = _interp(self.elastic.to(x), x, y, self.width, self.height)
            dx = dx + e[0]
            dy = dy + e[1]
        return torch.stack([dx, dy]) * self.gain

    def stats(self) -> tuple[float, float]:
        """Mean and max displacement magnitude (px) over the image (sampled every few pixels)."""
        ys, xs = torch.meshgrid(torch.arange(0, self.height, _STATS_STEP, dtype=torch.float64),
                                torch.arange(0, self.width, _STATS_STEP, dtype=torch.float64),
                                indexing='ij')
        mag = torch.linalg.vector_norm(self.displacement(xs, ys), dim=0)
        return float(mag.mean()), float(mag.max())


def _interp(ctrl: torch.Tensor, x: torch.Tensor, y: torch.Tensor, width: int, height: int) -> torch.Tensor:
    """Bicubic interpolation of a control grid spanning the image (corners on corner pixels)."""
    gx = x / max(width - 1, 1) * 2.0 - 1.0
    gy = y / max(height - 1, 1) * 2.0 - 1.0
    grid = torch.stack([gx, gy], -1).reshape(1, 1, -1, 2)
    out = F.grid_sample(ctrl, grid, mode='bicubic', padding_mode='border', align_corners=True)
    return out.reshape(ctrl.shape[1], *x.shape)


def sample_perturbation(height: int, width: int, rng: np.random.Generator,
                        cfg: PerturbConfig | None = None, *, mean_shift: float | None = None,
                        identity: bool | None = None) -> Perturbation:
    """Draw one random perturbation for a ``(height, width)`` image.

    Args:
        height, width: image size (px).
        rng: seeded generator (the only source of randomness).
        cfg: distribution; defaults to :class:`PerturbConfig`.
        mean_shift: evaluation mode: scale the field so its mean magnitude is
            exactly this many pixels (no cap, no identity samples).
        identity: force (True) or forbid (False) an identity sample; None
            draws it with ``cfg.identity_prob``.

    Returns:
        The perturbation (field parameters and photometric degradation).

    Raises:
        ConfigError: a negative ``mean_shift`` or an empty image.

    Example:
        >>> p = sample_perturbation(48, 64, np.random.default_rng(0), mean_shift=5.0)
        >>> round(p.stats()[0], 3)
        5.0
    """
    cfg = cfg or PerturbConfig()
    if height < 1 or width < 1:
        raise ConfigError(f'perturbation: empty image size {height}x{width}')
    if mean_shift is not None and mean_shift < 0:
        raise ConfigError(f'perturbation: mean_shift must be >= 0, got {mean_shift}')
    s = width / cfg.reference_width
    blur = float(rng.uniform(0.0, cfg.blur_sigma_max)) if rng.random() < cfg.blur_prob else 0.0
    noise = float(rng.uniform(0.0, cfg.noise_std_max))
    seed = int(rng.integers(0, 2**31 - 1))
    if identity is None:
        identity = mean_shift is None and rng.random() < cfg.identity_prob
    if identity or mean_shift == 0.0:
        return Perturbation(height, width, blur_sigma=blur, noise_std=noise, seed=seed)
    # Affine about a point near the centre: d(p) = (sR - I)(p - c) + t.
    th = math.radians(rng.uniform(-cfg.rotation_deg, cfg.rotation_deg))
    sc = rng.uniform(*cfg.scale_range)
    rot = sc * np.array([[math.cos(th), -math.sin(th)], [math.sin(th), math.cos(th)]]) - np.eye(2)
    c = np.array([(width - 1) / 2, (height - 1) / 2]) * (1 + rng.uniform(-1, 1, 2) * cfg.centre_jitter)
    t = rng.uniform(-1, 1, 2) * cfg.translation_px * s
    affine = np.concatenate([rot, (t - rot @ c)[:, None]], axis=1)
    pert = Perturbation(height, width, affine=affine, blur_sigma=blur, noise_std=noise, seed=seed)
    if rng.random() < cfg.parallax_prob:
        bx = rng.uniform(-1, 1) * cfg.parallax_px * s
        by = rng.uniform(-0.3, 0.3) * abs(bx)
        pert.parallax = (float(bx), float(by), float(rng.uniform(0.3, 0.6)), float(rng.uniform(1.0, 2.0)))
        k = int(rng.integers(3, 7))
        pert.parallax_mod = torch.from_numpy(1.0 + 0.3 * rng.uniform(-1, 1, (1, 1, 1, k)))
    if rng.random() < cfg.elastic_prob:
        lo, hi = int(cfg.elastic_grid[0]), int(cfg.elastic_grid[1])
        gh, gw = int(rng.integers(lo, hi + 1)), int(rng.integers(lo, hi + 1))
        v = rng.standard_normal((1, 2, gh, gw))
        v *= rng.uniform(0.3, 1.0) * cfg.elastic_px * s / max(np.abs(v).max(), 1e-6)
        pert.elastic = torch.from_numpy(v)
    mean, mx = pert.stats()
    if mean_shift is not None:
        pert.gain = mean_shift / max(mean, 1e-9)
        return pert
    if rng.random() < cfg.rescale_prob:
        pert.gain = rng.uniform(*cfg.rescale_mean_px) / max(mean, 1e-9)
    cap = cfg.max_disp_px * s
    if mx * pert.gain > cap:
        pert.gain = cap / mx
    return pert


def inverse_flow(pert: Perturbation, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Ground-truth corrector flow ``phi`` at pixel coordinates: ``phi(p) + d(p + phi(p)) = 0``.

    Args:
        pert: the perturbation.
        x, y: same-shape float tensors, pixel coordinates.

    Returns:
        ``(2, *x.shape)`` flow (px), x then y.
    """
    phi = -pert.displacement(x, y)
    if pert.is_identity:
        return phi
    for _ in range(_FIXED_POINT_ITERS):
        phi = -pert.displacement(x + phi[0], y + phi[1])
    return phi


def _coarse_field(pert: Perturbation, dtype: torch.dtype) -> torch.Tensor:
    """``d`` sampled every ``_FIELD_STEP`` pixels (plus the last row/column), ``(1, 2, gh, gw)``."""
    xs = torch.arange(0, pert.width - 1 + _FIELD_STEP, _FIELD_STEP, dtype=dtype)
    ys = torch.arange(0, pert.height - 1 + _FIELD_STEP, _FIELD_STEP, dtype=dtype)
    yy, xx = torch.meshgrid(ys, xs, indexing='ij')
    return pert.displacement(xx, yy)[None]


def _sample_coarse(dmap: torch.Tensor, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Bilinear sample of a :func:`_coarse_field` map at pixel coordinates -> ``(2, *x.shape)``."""
    gh, gw = dmap.shape[-2:]
    gx = x / (_FIELD_STEP * (gw - 1)) * 2.0 - 1.0
    gy = y / (_FIELD_STEP * (gh - 1)) * 2.0 - 1.0
    grid = torch.stack([gx, gy], -1).reshape(1, 1, -1, 2)
    out = F.grid_sample(dmap, grid, mode='bilinear', padding_mode='border', align_corners=True)
    return out.reshape(2, *x.shape)


def _gaussian_blur(img: torch.Tensor, sigma: float) -> torch.Tensor:
    """Separable Gaussian blur of ``(1, 1, H, W)`` (reflect border)."""
    if sigma <= 0.05:
        return img
    r = max(1, int(math.ceil(3 * sigma)))
    k = torch.exp(-torch.arange(-r, r + 1, dtype=img.dtype) ** 2 / (2 * sigma**2))
    k = (k / k.sum()).to(img.device)
    img = F.conv2d(F.pad(img, (r, r, 0, 0), mode='reflect'), k.view(1, 1, 1, -1))
    return F.conv2d(F.pad(img, (0, 0, r, r), mode='reflect'), k.view(1, 1, -1, 1))


def apply_perturbation(thermal: torch.Tensor, pert: Perturbation,
                       window: tuple[int, int, int, int] | None = None
                       ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Perturb the thermal image (optionally only inside a window) and return the GT flow.

    Args:
        thermal: ``(1, 1, H, W)`` float32 in [0, 1], the aligned thermal image
            (``H, W`` = ``pert.height, pert.width``).
        pert: from :func:`sample_perturbation`.
        window: ``(x0, y0, w, h)`` crop in pixels; default the whole image.
            Content from outside the window (inside the image) is used.

    Returns:
        ``(thermal_perturbed (1, 1, h, w) in [0, 1], phi (1, 2, h, w) px,
        valid (1, 1, h, w) bool)``; ``valid`` marks pixels whose perturbed
        value comes from inside the image.

    Raises:
        ConfigError: image size differs from the perturbation's, or a window
            outside the image.
    """
    _, _, hh, ww = thermal.shape
    if (hh, ww) != (pert.height, pert.width):
        raise ConfigError(f'perturbation made for {pert.height}x{pert.width}, image is {hh}x{ww}')
    x0, y0, w, h = window or (0, 0, ww, hh)
    if x0 < 0 or y0 < 0 or x0 + w > ww or y0 + h > hh or w < 1 or h < 1:
        raise ConfigError(f'window {window} outside the {hh}x{ww} image')
    dt = thermal.dtype
    ys, xs = torch.meshgrid(torch.arange(y0, y0 + h, dtype=dt),
                            torch.arange(x0, x0 + w, dtype=dt), indexing='ij')
    dmap = _coarse_field(pert, dt)
    d = _sample_coarse(dmap, xs, ys)
    sx, sy = xs + d[0], ys + d[1]
    valid = (sx >= -0.5) & (sx <= ww - 0.5) & (sy >= -0.5) & (sy <= hh - 0.5)
    grid = torch.stack([(2 * sx + 1) / ww - 1, (2 * sy + 1) / hh - 1], -1)[None].to(dt)
    src = _gaussian_blur(thermal, pert.blur_sigma)
    out = F.grid_sample(src, grid, mode='bilinear', padding_mode='border', align_corners=False)
    if pert.noise_std > 0:
        g = torch.Generator().manual_seed(pert.seed)
        out = out + pert.noise_std * torch.randn(out.shape, generator=g, dtype=dt)
    phi = -d
    if not pert.is_identity:
        for _ in range(_FIXED_POINT_ITERS):
            phi = -_sample_coarse(dmap, xs + phi[0], ys + phi[1])
    return out.clamp(0.0, 1.0), phi[None].to(dt), valid[None, None]
