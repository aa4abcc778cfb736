"""Flow warping, the M-gated bidirectional blend and local correlation.

Flow convention (used by the whole package):

* A flow ``phi`` is a ``(B, 2, H, W)`` float tensor in **pixels** of the
  image it is applied to, channel 0 = x (columns, to the right), channel 1 =
  y (rows, downwards).
* :func:`warp_by_flow` samples **backwards**: ``out(p) = img(p + phi(p))``,
  bilinear, with PyTorch's ``align_corners=False`` pixel model (pixel ``i``
  covers ``[i, i + 1)`` and its centre is at ``i + 0.5``; the normalised
  coordinate of pixel centre ``i`` is ``(2 i + 1) / W - 1``). Samples outside
  the image take the nearest border value (``padding_mode='border'``).
* The corrector's output at pixel ``p`` takes the IR-derived content found at
  ``p + phi(p)`` of the uncorrected fused image.

Example:
    >>> img = torch.arange(16.0).view(1, 1, 4, 4)
    >>> flow = torch.zeros(1, 2, 4, 4); flow[:, 0] = 1.0     # take the pixel to the right
    >>> warp_by_flow(img, flow)[0, 0, 0].tolist()
    [1.0, 2.0, 3.0, 3.0]
"""
from __future__ import annotations

import threading
from collections.abc import Sequence

import cv2
import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .pyramid import window_mean

_GRID_CACHE: dict[tuple, torch.Tensor] = {}
_GRID_CACHE_MAX = 16
_PIXEL_GRID_CACHE: dict[tuple[int, int], tuple[np.ndarray, np.ndarray]] = {}
_SCRATCH = threading.local()


def base_grid(h: int, w: int, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    """Normalised coordinates of the pixel centres, ``(1, H, W, 2)`` (x, y) in (-1, 1).

    Cached per size, device and dtype (created outside inference mode, so the
    cached tensor can also be used in training).

    Example:
        >>> base_grid(1, 2, torch.device('cpu'), torch.float32)[0, 0].tolist()
        [[-0.5, 0.0], [0.5, 0.0]]
    """
    key = (h, w, device, dtype)
    g = _GRID_CACHE.get(key)
    if g is None:
        with torch.inference_mode(False), torch.no_grad():
            xs = (2.0 * torch.arange(w, device=device, dtype=dtype) + 1.0) / w - 1.0
            ys = (2.0 * torch.arange(h, device=device, dtype=dtype) + 1.0) / h - 1.0
            g = torch.stack(torch.meshgrid(xs, ys, indexing='xy'), dim=-1)[None].contiguous()
        if len(_GRID_CACHE) >= _GRID_CACHE_MAX:
            _GRID_CACHE.clear()
        _GRID_CACHE[key] = g
    return g


def flow_to_grid(flow: torch.Tensor) -> torch.Tensor:
    """Convert a pixel flow to a ``grid_sample`` grid (``align_corners=False``).

    Args:
        flow: ``(B, 2, H, W)`` pixels (x, y).

    Returns:
        ``(B, H, W, 2)`` normalised sampling positions of ``p + flow(p)``.
    """
    if torch.jit.is_tracing():
        return _traced_grid(flow)
    _, _, h, w = flow.shape
    scale = torch.tensor([2.0 / w, 2.0 / h], device=flow.device, dtype=flow.dtype)
    return base_grid(h, w, flow.device, flow.dtype) + flow.permute(0, 2, 3, 1) * scale


def _traced_grid(flow: torch.Tensor) -> torch.Tensor:
    """:func:`flow_to_grid` from tensor ops only, so a traced (ONNX) graph serves every size."""
    ones = torch.ones_like(flow[:, :1])
    w = ones.sum(3, keepdim=True)
    h = ones.sum(2, keepdim=True)
    gx = (2.0 * ones.cumsum(3) - 1.0 + 2.0 * flow[:, :1]) / w - 1.0
    gy = (2.0 * ones.cumsum(2) - 1.0 + 2.0 * flow[:, 1:]) / h - 1.0
    return torch.cat([gx, gy], 1).permute(0, 2, 3, 1)


def warp_by_flow(img: torch.Tensor, flow: torch.Tensor, padding_mode: str = 'border') -> torch.Tensor:
    """Backward-warp ``img`` by ``flow``: ``out(p) = img(p + flow(p))`` (bilinear).

    Args:
        img: ``(B, C, H, W)`` float.
        flow: ``(B, 2, H, W)`` pixels (x, y) of ``img``'s grid.
        padding_mode: ``grid_sample`` padding for samples outside the image.

    Returns:
        ``(B, C, H, W)``, same dtype as ``img``.

    Example:
        >>> x = torch.rand(1, 3, 5, 7)
        >>> bool(torch.allclose(warp_by_flow(x, torch.zeros(1, 2, 5, 7)), x, atol=1e-6))
        True
    """
    return F.grid_sample(img, flow_to_grid(flow), mode='bilinear', padding_mode=padding_mode,
                         align_corners=False)


class FlowWarp(nn.Module):
    """Module form of :func:`warp_by_flow` (no parameters)."""

    def __init__(self, padding_mode: str = 'border') -> None:
        super().__init__()
        self.padding_mode = padding_mode

    def forward(self, img: torch.Tensor, flow: torch.Tensor) -> torch.Tensor:
        return warp_by_flow(img, flow, self.padding_mode)


def bidirectional_warp(img: torch.Tensor, flow: torch.Tensor, m: torch.Tensor) -> torch.Tensor:
    """M-gated bidirectional warp: ``m * warp(img, +flow) + (1 - m) * warp(img, -flow)``.

    Both warps run in one ``grid_sample`` call (the two grids side by side).

    Args:
        img: ``(B, C, H, W)``.
        flow: ``(B, 2, H, W)`` pixels (x, y).
        m: ``(B, 1, H, W)`` gate in [0, 1] (misregistration probability).

    Returns:
        ``(B, C, H, W)``.

    Example:
        >>> x, f = torch.rand(1, 1, 4, 4), torch.zeros(1, 2, 4, 4)
        >>> bool(torch.allclose(bidirectional_warp(x, f, torch.full((1, 1, 4, 4), 0.3)), x))
        True
    """
    if torch.jit.is_tracing():   # tensor ops only (flow_to_grid): the traced graph serves every size
        grid = torch.cat([flow_to_grid(flow), flow_to_grid(-flow)], 2)
    else:
        _, _, h, w = flow.shape
        scale = torch.tensor([2.0 / w, 2.0 / h], device=flow.device, dtype=flow.dtype)
        g = flow.permute(0, 2, 3, 1) * scale
        base = base_grid(h, w, flow.device, flow.dtype)
        # Both sampling grids side by side: one grid_sample call, no copy of the image.
        if g.requires_grad:
            grid = torch.cat([base + g, base - g], 2)
        else:  # eager inference: write both halves in place (saves a full-resolution copy)
            grid = torch.empty(g.shape[0], h, 2 * w, 2, device=g.device, dtype=g.dtype)
            torch.add(base, g, out=grid[:, :, :w])
            torch.sub(base, g, out=grid[:, :, w:])
    both = F.grid_sample(img, grid, mode='bilinear', padding_mode='border', align_corners=False)
    fwd, bwd = both.chunk(2, -1)
    return torch.lerp(bwd, fwd, m)


_RELATIVE_MAP = getattr(cv2, 'WARP_RELATIVE_MAP', 0)   # OpenCV >= 4.10


def pixel_grid(h: int, w: int) -> tuple[np.ndarray, np.ndarray]:
    """Pixel coordinates ``(x, y)``: two ``(H, W)`` float32 arrays (column, row), cached (read-only)."""
    g = _PIXEL_GRID_CACHE.get((h, w))
    if g is None:
        xs, ys = np.meshgrid(np.arange(w, dtype=np.float32), np.arange(h, dtype=np.float32))
        for a in (xs, ys):
            a.flags.writeable = False
        g = (xs, ys)
        if len(_PIXEL_GRID_CACHE) >= _GRID_CACHE_MAX:
            _PIXEL_GRID_CACHE.clear()
        _PIXEL_GRID_CACHE[(h, w)] = g
    return g


def scratch(name: str, shape: tuple[int, ...]) -> np.ndarray:
    """A float32 work array for ``name``, reused by the calling thread (contents undefined).

    The OpenCV paths write their intermediates into these instead of fresh
    arrays: a fresh full-resolution array costs page faults on every first
    touch, which on the 2-vCPU VM doubled the corrector's full-resolution step
    (docs/performance.md). Per thread, so concurrent pipelines never share one.
    """
    bufs = getattr(_SCRATCH, 'bufs', None)
    if bufs is None:
        bufs = _SCRATCH.bufs = {}
    a = bufs.get(name)
    if a is None or a.shape != shape:
        a = bufs[name] = np.empty(shape, np.float32)
    return a


def bidirectional_warp_cv(img: np.ndarray | Sequence[np.ndarray], flow: np.ndarray, m: np.ndarray,
                          out: np.ndarray | None = None) -> np.ndarray:
    """:func:`bidirectional_warp` on numpy arrays with OpenCV (CPU inference only, no gradients).

    Same pixel model and border rule as the torch function (``cv2.remap``,
    bilinear, ``BORDER_REPLICATE``), but OpenCV quantises sampling positions
    to 1/32 px, so values differ from the torch function by at most about
    1/64 of the local intensity step (< 0.016 on [0, 1] images; ~4e-5 on
    average on real frames). Intermediates live in :func:`scratch` arrays.

    Args:
        img: ``(C, H, W)`` float32, or a sequence of C ``(H, W)`` float32 planes.
        flow: ``(2, H, W)`` float32 pixels (x, y); rows may be strided (a crop).
        m: ``(H, W)`` float32 gate in [0, 1].
        out: ``(C, H, W)`` float32 array to write into (default: a new one).

    Returns:
        ``(C, H, W)`` float32 ``m * warp(img, +flow) + (1 - m) * warp(img, -flow)``.

    Example:
        >>> x = np.random.rand(2, 4, 5).astype(np.float32)
        >>> f = np.zeros((2, 4, 5), np.float32)
        >>> bool(np.allclose(bidirectional_warp_cv(x, f, np.full((4, 5), 0.3, np.float32)), x))
        True
    """
    h, w = img[0].shape
    mx, my = scratch('warp.mx', (2, h, w)), scratch('warp.my', (2, h, w))
    if _RELATIVE_MAP:
        # OpenCV >= 4.10 samples at (x + map_x, y + map_y) itself: only -flow is formed (same
        # values as absolute maps, -0.17 ms at 640x480).
        flags = cv2.INTER_LINEAR | _RELATIVE_MAP
        fx0, fy0 = flow[0], flow[1]
        fx1, fy1 = np.negative(flow[0], out=mx[1]), np.negative(flow[1], out=my[1])
    else:
        flags = cv2.INTER_LINEAR
        xs, ys = pixel_grid(h, w)
        fx0, fy0 = np.add(xs, flow[0], out=mx[0]), np.add(ys, flow[1], out=my[0])
        fx1, fy1 = np.subtract(xs, flow[0], out=mx[1]), np.subtract(ys, flow[1], out=my[1])
    fwd, bwd = scratch('warp.fwd', (h, w)), scratch('warp.bwd', (h, w))
    if out is None:
        out = np.empty((len(img), h, w), np.float32)
    for c in range(len(img)):
        # One plane at a time: single-channel remaps are ~1.5x faster than one 2-channel remap.
        cv2.remap(img[c], fx0, fy0, flags, dst=fwd, borderMode=cv2.BORDER_REPLICATE)
        cv2.remap(img[c], fx1, fy1, flags, dst=bwd, borderMode=cv2.BORDER_REPLICATE)
        np.subtract(fwd, bwd, out=fwd)
        np.multiply(fwd, m, out=fwd)
        np.add(fwd, bwd, out=out[c])
    return out


class BidirectionalWarp(nn.Module):
    """Module form of :func:`bidirectional_warp` (no parameters)."""

    def forward(self, img: torch.Tensor, flow: torch.Tensor, m: torch.Tensor) -> torch.Tensor:
        return bidirectional_warp(img, flow, m)


def correlation_offsets(radius: int) -> list[tuple[int, int]]:
    """Offsets ``(dx, dy)`` of :func:`local_correlation`'s channels, row-major (dy outer).

    Example:
        >>> correlation_offsets(1)[:4]
        [(-1, -1), (0, -1), (1, -1), (-1, 0)]
    """
    r = range(-radius, radius + 1)
    return [(dx, dy) for dy in r for dx in r]


def local_correlation(ref: torch.Tensor, other: torch.Tensor, radius: int = 1) -> torch.Tensor:
    """Local correlation: channel-mean of ``ref(p) * other(p + d)`` for every offset ``d``.

    With ``radius=1`` (the paper's p=1) there are 9 offsets. ``other`` is
    zero-padded at the border. A peak at offset ``d`` means ``other``'s
    content at ``p + d`` matches ``ref`` at ``p``: warping ``other`` by the
    flow ``d`` aligns it with ``ref``.

    Args:
        ref: ``(B, C, H, W)``.
        other: ``(B, C, H, W)``.
        radius: search radius in pixels of this grid; ``(2r+1)^2`` offsets.

    Returns:
        ``(B, (2r+1)^2, H, W)``, channel order of :func:`correlation_offsets`.

    Example:
        >>> a = torch.rand(1, 4, 6, 6)
        >>> local_correlation(a, a, 1).shape
        torch.Size([1, 9, 6, 6])
    """
    _, c, h, w = ref.shape
    r = radius
    pad = F.pad(other, (r, r, r, r))
    scale = 1.0 / c
    out = [(ref * pad[:, :, r + dy:r + dy + h, r + dx:r + dx + w]).sum(1, keepdim=True)
           for dx, dy in correlation_offsets(r)]
    return torch.cat(out, 1) * scale


class LocalCorrelation(nn.Module):
    """Module form of :func:`local_correlation` (no parameters)."""

    def __init__(self, radius: int = 1) -> None:
        super().__init__()
        self.radius = radius

    def forward(self, ref: torch.Tensor, other: torch.Tensor) -> torch.Tensor:
        return local_correlation(ref, other, self.radius)


def soft_argmax_offset(cost: torch.Tensor, radius: int, temperature: torch.Tensor | float,
                       window: int = 1) -> torch.Tensor:
    """Expected offset of a :func:`local_correlation` volume (soft arg-max over the offsets).

    Args:
        cost: ``(B, (2r+1)^2, H, W)`` correlation volume.
        radius: its search radius ``r``.
        temperature: softmax temperature (scalar).
        window: box window (cells) averaging the volume before the soft arg-max
            (aggregates evidence over a neighbourhood); 1 = none.

    Returns:
        ``(B, 2, H, W)`` offsets (x, y) in pixels of the volume's grid.

    Example:
        >>> c = torch.zeros(1, 9, 2, 2); c[:, 5] = 10.0            # offset (1, 0)
        >>> soft_argmax_offset(c, 1, 0.1)[0, :, 0, 0].tolist()
        [1.0, 0.0]
    """
    if window > 1:
        cost = window_mean(cost, window)   # = avg_pool2d(count_include_pad=False), faster
    p = torch.softmax(cost / temperature, 1)
    offs = torch.tensor(correlation_offsets(radius), dtype=cost.dtype, device=cost.device)
    ox = (p * offs[:, 0].view(1, -1, 1, 1)).sum(1, keepdim=True)
    oy = (p * offs[:, 1].view(1, -1, 1, 1)).sum(1, keepdim=True)
    return torch.cat([ox, oy], 1)


def affine_fit(flow: torch.Tensor, weight: torch.Tensor, iters: int = 2, scale: float = 1.0,
               ridge: float = 1e-3) -> torch.Tensor:
    """Robust weighted least-squares fit of an affine flow field (differentiable).

    Fits ``flow(p) ~ P @ [x, y, 1]`` (``x, y`` normalised to [-1, 1]) with
    per-pixel weights, then ``iters`` re-weighting rounds with Cauchy weights
    ``1 / (1 + (|residual| / scale)^2)`` so outliers count less.

    Args:
        flow: ``(B, 2, H, W)`` local flow estimates (any units).
        weight: ``(B, 1, H, W)`` non-negative confidences.
        iters: re-weighting rounds.
        scale: residual scale of the Cauchy weights (units of ``flow``).
        ridge: Tikhonov term (relative to the total weight) pulling the fit toward zero.

    Returns:
        ``(B, 2, H, W)`` the fitted affine field.

    Example:
        >>> ys, xs = torch.meshgrid(torch.arange(6.0), torch.arange(8.0), indexing='ij')
        >>> f = torch.stack([0.1 * xs + 2, -0.2 * ys])[None]
        >>> bool(torch.allclose(affine_fit(f, torch.ones(1, 1, 6, 8)), f, atol=1e-2))
        True
    """
    b = flow.shape[0]
    ones = torch.ones_like(flow[0, 0])
    # linspace(-1, 1) along x and y from tensor ops (a traced graph then serves every size)
    gx = (ones.cumsum(1) - 1.0) * 2.0 / (ones.sum(1, keepdim=True) - 1.0).clamp_min(1.0) - 1.0
    gy = (ones.cumsum(0) - 1.0) * 2.0 / (ones.sum(0, keepdim=True) - 1.0).clamp_min(1.0) - 1.0
    basis = torch.stack([gx.reshape(-1), gy.reshape(-1), ones.reshape(-1)])  # (3, N)
    f = flow.reshape(b, 2, -1)
    w0 = weight.reshape(b, 1, -1)
    wt = w0
    eye = torch.eye(3, dtype=flow.dtype, device=flow.device)
    fit = torch.zeros_like(f)
    for it in range(iters + 1):
        xw = basis[None] * wt                                         # (B, 3, N)
        a = xw @ basis.t() + ridge * wt.sum(-1, keepdim=True) * eye + 1e-6 * eye
        rhs = xw @ f.transpose(1, 2)                                  # (B, 3, 2)
        params = solve3x3(a, rhs)                                     # (B, 3, 2)
        fit = params.transpose(1, 2) @ basis                          # (B, 2, N)
        if it < iters:
            res = ((f - fit) ** 2).sum(1, keepdim=True)
            wt = w0 / (1.0 + res / (scale * scale))
    return fit.reshape(flow.shape)


def solve3x3(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Solve ``a @ x = b`` for batched 3x3 ``a`` by the adjugate (Cramer's rule).

    Written with elementwise ops only so it exports to ONNX (``torch.linalg.solve``
    does not); ``a`` must be well conditioned (the callers add a ridge term).

    Args:
        a: ``(B, 3, 3)``.
        b: ``(B, 3, K)``.

    Returns:
        ``(B, 3, K)``.

    Example:
        >>> a = torch.tensor([[[4.0, 1, 0], [1, 3, 1], [0, 1, 2]]])
        >>> b = torch.tensor([[[1.0], [2.0], [3.0]]])
        >>> bool(torch.allclose(solve3x3(a, b), torch.linalg.solve(a, b), atol=1e-6))
        True
    """
    m = [[a[:, i, j] for j in range(3)] for i in range(3)]
    cof = [[m[(i + 1) % 3][(j + 1) % 3] * m[(i + 2) % 3][(j + 2) % 3]
            - m[(i + 1) % 3][(j + 2) % 3] * m[(i + 2) % 3][(j + 1) % 3]
            for j in range(3)] for i in range(3)]
    det = m[0][0] * cof[0][0] + m[0][1] * cof[0][1] + m[0][2] * cof[0][2]
    adj = torch.stack([torch.stack([cof[j][i] for j in range(3)], -1) for i in range(3)], -2)
    return (adj / det[:, None, None]) @ b


def upsample_flow(flow: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Resize a pixel flow to ``size = (H, W)`` and rescale its units to the new grid.

    x is multiplied by ``W / w`` and y by ``H / h`` (bilinear, align_corners=False).

    Example:
        >>> f = torch.ones(1, 2, 2, 3)
        >>> upsample_flow(f, (4, 6))[0, :, 0, 0].tolist()
        [2.0, 2.0]
    """
    h, w = flow.shape[-2:]
    out = F.interpolate(flow, size=size, mode='bilinear', align_corners=False)
    if (h, w) == tuple(size):
        return out
    scale = torch.tensor([size[1] / w, size[0] / h], device=flow.device, dtype=flow.dtype)
    return out * scale.view(1, 2, 1, 1)


def compose_flow(coarse: torch.Tensor, residual: torch.Tensor) -> torch.Tensor:
    """Coarse-to-fine composition: ``residual + up(coarse)`` in the fine grid's pixels.

    For a 2x finer grid this is the paper's ``phi_fine = head + 2 * up(phi_coarse)``.

    Example:
        >>> c = torch.ones(1, 2, 2, 2)
        >>> compose_flow(c, torch.zeros(1, 2, 4, 4))[0, :, 1, 1].tolist()
        [2.0, 2.0]
    """
    return residual + upsample_flow(coarse, tuple(residual.shape[-2:]))
