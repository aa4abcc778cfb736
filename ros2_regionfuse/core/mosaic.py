"""Visualisation: misregistration overlay and labelled mosaics (thermal | RGB | fused | overlay).

Every image here is uint8 **RGB** ``(H, W, 3)`` (or gray ``(H, W)`` on input);
convert to BGR only when writing with OpenCV.
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import cv2
import numpy as np

from .checks import EncodingError, ShapeError, check_image


@dataclass(frozen=True)
class OverlayStyle:
    """Look of the misregistration overlay.

    Attributes:
        alpha: opacity of the heat colour at probability 1 (0..1).
        threshold: probabilities below it are not drawn (0..1).
        colormap: OpenCV colormap id for the heat colour.
        contour_level: probability whose iso-line is outlined (0..1).
        contour_rgb: outline colour, RGB.
    """

    alpha: float = 0.6
    threshold: float = 0.1
    colormap: int = cv2.COLORMAP_JET
    contour_level: float = 0.5
    contour_rgb: tuple[int, int, int] = (255, 255, 255)


@dataclass(frozen=True)
class LabelStyle:
    """Tile label text: OpenCV Hershey font, scaled with the tile height.

    Attributes:
        height_fraction: text height as a fraction of the tile height.
        margin_px: padding around the text (px).
        text_rgb: text colour.
        box_rgb: background box colour.
        box_alpha: opacity of the background box.
    """

    height_fraction: float = 0.055
    margin_px: int = 4
    text_rgb: tuple[int, int, int] = (255, 255, 255)
    box_rgb: tuple[int, int, int] = (0, 0, 0)
    box_alpha: float = 0.55


def as_rgb(img: np.ndarray) -> np.ndarray:
    """uint8 gray ``(H, W)`` or RGB ``(H, W, 3)`` -> RGB ``(H, W, 3)``.

    Raises:
        ShapeError: not ``(H, W)``/``(H, W, 3)`` or empty.
        EncodingError: not uint8.

    Example:
        >>> as_rgb(np.zeros((2, 3), np.uint8)).shape
        (2, 3, 3)
    """
    img = check_image(img, 'tile', channels=(1, 3))
    if img.dtype != np.uint8:
        raise EncodingError(f'tile: expected uint8, got {img.dtype}')
    return np.repeat(img[:, :, None], 3, axis=2) if img.ndim == 2 else img


def misregistration_overlay(image: np.ndarray, prob: np.ndarray,
                            style: OverlayStyle = OverlayStyle()) -> np.ndarray:
    """Blend a heat map of the misregistration probability over an image.

    Args:
        image: ``(H, W, 3)`` uint8 RGB (or ``(H, W)`` gray), e.g. the fused image.
        prob: ``(h, w)`` float probability in [0, 1]; resized to the image size.
            NaN (invalid) pixels are not drawn.
        style: colours and thresholds.

    Returns:
        ``(H, W, 3)`` uint8 RGB: the image where ``prob < threshold``, else
        blended with the colormap at opacity ``alpha * prob``, and the
        ``contour_level`` iso-line outlined.

    Raises:
        ShapeError: bad image or probability map.

    Example:
        >>> img = np.full((4, 4, 3), 100, np.uint8)
        >>> out = misregistration_overlay(img, np.zeros((4, 4), np.float32))
        >>> bool((out == img).all())
        True
    """
    rgb = as_rgb(image)
    if not isinstance(prob, np.ndarray) or prob.ndim != 2 or prob.size == 0:
        raise ShapeError(f'misregistration: expected a (H, W) array, got {getattr(prob, "shape", None)}')
    h, w = rgb.shape[:2]
    p = prob.astype(np.float32, copy=False)
    if p.shape != (h, w):
        p = cv2.resize(p, (w, h), interpolation=cv2.INTER_LINEAR)
    p = np.clip(np.nan_to_num(p, nan=0.0), 0.0, 1.0)
    heat_bgr = cv2.applyColorMap((p * 255.0 + 0.5).astype(np.uint8), style.colormap)
    heat = heat_bgr[:, :, ::-1].astype(np.float32)
    a = (style.alpha * p * (p >= style.threshold))[:, :, None]
    out = rgb.astype(np.float32) * (1.0 - a) + heat * a
    out = np.clip(out + 0.5, 0, 255).astype(np.uint8)
    mask = (p >= style.contour_level).astype(np.uint8)
    if mask.any():
        contours, _ = cv2.findContours(mask, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
        out = np.ascontiguousarray(out)
        cv2.drawContours(out, contours, -1, style.contour_rgb, 1)
    return out


def fit_tile(img: np.ndarray, tile_wh: tuple[int, int]) -> np.ndarray:
    """Resize ``img`` to fit ``tile_wh`` keeping its aspect ratio, centred on black.

    Args:
        img: uint8 gray or RGB.
        tile_wh: ``(width, height)`` of the tile.

    Returns:
        ``(height, width, 3)`` uint8 RGB.

    Example:
        >>> fit_tile(np.full((10, 20), 255, np.uint8), (20, 20))[:, 0, 0].tolist()[4:6]
        [0, 255]
    """
    rgb = as_rgb(img)
    tw, th = int(tile_wh[0]), int(tile_wh[1])
    if tw <= 0 or th <= 0:
        raise ShapeError(f'tile size must be positive, got {tile_wh}')
    h, w = rgb.shape[:2]
    s = min(tw / w, th / h)
    nw, nh = max(1, round(w * s)), max(1, round(h * s))
    interp = cv2.INTER_AREA if s < 1.0 else cv2.INTER_LINEAR
    small = cv2.resize(rgb, (nw, nh), interpolation=interp) if (nw, nh) != (w, h) else rgb
    out = np.zeros((th, tw, 3), np.uint8)
    y0, x0 = (th - nh) // 2, (tw - nw) // 2
    out[y0:y0 + nh, x0:x0 + nw] = small
    return out


def draw_label(tile: np.ndarray, text: str, style: LabelStyle = LabelStyle()) -> np.ndarray:
    """Write ``text`` in the top-left corner of an RGB tile on a translucent box (in place).

    Returns:
        The same array.
    """
    if not text:
        return tile
    font = cv2.FONT_HERSHEY_SIMPLEX
    base_h = cv2.getTextSize('Ag', font, 1.0, 1)[0][1]
    scale = max(0.3, style.height_fraction * tile.shape[0] / base_h)
    thick = max(1, round(scale))
    (tw, th), baseline = cv2.getTextSize(text, font, scale, thick)
    m = style.margin_px
    x1, y1 = min(tile.shape[1], tw + 2 * m), min(tile.shape[0], th + baseline + 2 * m)
    region = tile[:y1, :x1].astype(np.float32)
    box = np.array(style.box_rgb, np.float32)
    tile[:y1, :x1] = np.clip(region * (1 - style.box_alpha) + box * style.box_alpha + 0.5,
                             0, 255).astype(np.uint8)
    cv2.putText(tile, text, (m, m + th), font, scale, style.text_rgb, thick, cv2.LINE_AA)
    return tile


def compose_mosaic(tiles: Sequence[tuple[str, np.ndarray]], tile_wh: tuple[int, int],
                   columns: int | None = None, label_style: LabelStyle = LabelStyle()) -> np.ndarray:
    """Lay labelled images out on a grid of equal tiles (row-major).

    Args:
        tiles: ``(label, image)`` pairs; images uint8 gray or RGB of any size
            (letterboxed into the tile, aspect kept). An empty label draws none.
        tile_wh: ``(width, height)`` of each tile (px).
        columns: tiles per row; default all in one row.
        label_style: text look.

    Returns:
        ``(rows * height, columns * width, 3)`` uint8 RGB.

    Raises:
        ShapeError: no tiles, bad tile size or bad images.

    Example:
        >>> m = compose_mosaic([('a', np.zeros((4, 4), np.uint8))] * 4, (8, 6), columns=2)
        >>> m.shape
        (12, 16, 3)
    """
    if not tiles:
        raise ShapeError('compose_mosaic: no tiles')
    cols = len(tiles) if columns is None else int(columns)
    if cols <= 0:
        raise ShapeError(f'compose_mosaic: columns must be > 0, got {columns}')
    rows = -(-len(tiles) // cols)
    tw, th = int(tile_wh[0]), int(tile_wh[1])
    out = np.zeros((rows * th, cols * tw, 3), np.uint8)
    for i, (label, img) in enumerate(tiles):
        r, c = divmod(i, cols)
        tile = fit_tile(img, (tw, th))
        draw_label(tile, label, label_style)
        out[r * th:(r + 1) * th, c * tw:(c + 1) * tw] = tile
    return out
