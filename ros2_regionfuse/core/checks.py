"""Input validation helpers and the package's error hierarchy.

Every error raised for bad input is a :class:`RegionFuseError`, so callers (the
node, the CLI) can catch one type, report it and carry on with the next frame.
"""
from __future__ import annotations

from collections.abc import Sequence

import numpy as np


class RegionFuseError(Exception):
    """Base class of every error this package raises for bad input or config."""


class ShapeError(RegionFuseError, ValueError):
    """An array has the wrong number of dimensions, channels or an empty size."""


class EncodingError(RegionFuseError, ValueError):
    """An image encoding or dtype is unsupported or inconsistent with the data."""


class ValueRangeError(RegionFuseError, ValueError):
    """An array holds NaN/Inf or values outside the allowed range."""


class ConfigError(RegionFuseError, ValueError):
    """A configuration value is invalid (out of range, unknown choice, ...)."""


class WeightsError(RegionFuseError, RuntimeError):
    """A checkpoint file is missing, corrupt or does not match the model."""


class ImageIOError(RegionFuseError, OSError):
    """An image file is missing, empty, not decodable or cannot be written; names the file."""


def check_image(img: np.ndarray, name: str, channels: Sequence[int] = (1, 3)) -> np.ndarray:
    """Validate an image array and return it as ``(H, W)`` or ``(H, W, C)``.

    Args:
        img: image array, ``(H, W)`` or ``(H, W, C)``.
        name: name used in error messages (e.g. ``"thermal"``).
        channels: allowed channel counts; ``1`` also admits a 2-D array.

    Returns:
        The same array; a ``(H, W, 1)`` array is squeezed to ``(H, W)``.

    Raises:
        ShapeError: not an array, wrong ndim, wrong channel count or zero size.
        ValueRangeError: a float image containing NaN or Inf.

    Example:
        >>> check_image(np.zeros((4, 5), np.uint8), 'thermal').shape
        (4, 5)
    """
    if not isinstance(img, np.ndarray):
        raise ShapeError(f'{name}: expected a numpy array, got {type(img).__name__}')
    if img.ndim == 3 and img.shape[2] == 1:
        img = img[:, :, 0]
    if img.ndim not in (2, 3):
        raise ShapeError(f'{name}: expected (H, W) or (H, W, C), got shape {img.shape}')
    if img.shape[0] == 0 or img.shape[1] == 0:
        raise ShapeError(f'{name}: empty image, shape {img.shape}')
    c = 1 if img.ndim == 2 else img.shape[2]
    if c not in channels:
        raise ShapeError(f'{name}: expected {tuple(channels)} channels, got {c} (shape {img.shape})')
    if img.dtype.kind == 'f' and not np.isfinite(img).all():
        bad = int((~np.isfinite(img)).sum())
        raise ValueRangeError(f'{name}: {bad} NaN/Inf values')
    if img.dtype.kind not in 'uif':
        raise EncodingError(f'{name}: unsupported dtype {img.dtype}')
    return img


def check_choice(value: str, choices: Sequence[str], name: str) -> str:
    """Return ``value`` if it is one of ``choices``, else raise :class:`ConfigError`.

    Example:
        >>> check_choice('cpu', ('auto', 'cpu', 'cuda'), 'device')
        'cpu'
    """
    if value not in choices:
        raise ConfigError(f'{name}: {value!r} is not one of {list(choices)}')
    return value
