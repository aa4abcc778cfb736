"""Laplacian pyramids in torch (differentiable; used by the fusion network).

Downsampling is a 2x2 average followed by nothing else; upsampling is bilinear
(``align_corners=False``). Reconstruction is exact for any such pair because
each detail level stores exactly what the upsampled coarser level misses.
"""
from __future__ import annotations

import cv2
import torch
import torch.nn.functional as F


def down2(x: torch.Tensor, opencv: bool = False) -> torch.Tensor:
    """Halve H and W by 2x2 averaging (H, W even).

    Strided sums in ``F.avg_pool2d(x, 2)``'s order: bit-identical to it and ~4x
    faster on the CPU for the 1-2 channel full-resolution images used here
    (the pooling kernel parallelises over channels only). With ``opencv`` and in
    CPU inference (:func:`opencv_eligible`) ``cv2.resize`` with ``INTER_AREA``
    averages each plane instead: equal to ~2e-7, 0.04 ms per 640x480 plane
    against ~0.2 ms for the strided sums (1 thread).

    Example:
        >>> x = torch.rand(2, 1, 6, 8)
        >>> torch.equal(down2(x), F.avg_pool2d(x, 2))
        True
    """
    h, w = x.shape[-2:]
    if h % 2 or w % 2:
        return F.avg_pool2d(x, 2)
    if opencv and opencv_eligible(x):
        return _per_plane(x, (h // 2, w // 2), lambda src, dst: cv2.resize(
            src, (w // 2, h // 2), dst=dst, interpolation=cv2.INTER_AREA))
    return (x[..., ::2, ::2] + x[..., ::2, 1::2] + x[..., 1::2, ::2] + x[..., 1::2, 1::2]) * 0.25


def box_mean3(x: torch.Tensor, opencv: bool = False) -> torch.Tensor:
    """3x3 mean with zero padding, equal to ``F.avg_pool2d(x, 3, 1, 1)`` (padding counted).

    The nine shifted views are summed in the pooling kernel's order and divided
    by 9, so the result is bit-identical; ~3x faster on the CPU for 1-2
    channel full-resolution images. With ``opencv`` and in CPU inference
    (:func:`opencv_eligible`) ``cv2.boxFilter`` computes it instead (equal to
    ~1e-7; 0.56 -> 0.36 ms at 640x480 on 2 threads, 5.1 -> 0.36 ms on 1).

    Example:
        >>> x = torch.rand(1, 1, 5, 7)
        >>> torch.equal(box_mean3(x), F.avg_pool2d(x, 3, 1, 1))
        True
    """
    if opencv and opencv_eligible(x):
        return _per_plane(x, x.shape[-2:], lambda src, dst: cv2.boxFilter(
            src, -1, (3, 3), dst=dst, normalize=True, borderType=cv2.BORDER_CONSTANT))
    h, w = x.shape[-2:]
    p = F.pad(x, (1, 1, 1, 1))
    acc = p[..., 0:h, 0:w] + p[..., 0:h, 1:w + 1]
    for dy, dx in ((0, 2), (1, 0), (1, 1), (1, 2), (2, 0), (2, 1), (2, 2)):
        acc += p[..., dy:dy + h, dx:dx + w]
    return acc / 9


_COUNT_CACHE: dict[tuple, torch.Tensor] = {}


def window_mean(x: torch.Tensor, k: int) -> torch.Tensor:
    """Mean over a ``k x k`` window of the pixels inside the image (``k`` odd), any ``(B, C, h, w)``.

    Equal to ``F.avg_pool2d(x, k, 1, k // 2, count_include_pad=False)``. In eager
    mode the window sums are ``2 k`` shifted-slice additions divided by a cached
    count map (values equal to ~2e-7): for the 25-channel correlation volumes of
    the corrector 4-6x faster on the CPU (1.39 -> 0.31 ms at 60x80 on 2 threads).
    ONNX exports keep the pooling operator (dynamic sizes); TorchScript traces
    (one per input size in the runners) take the slice sums.

    Example:
        >>> x = torch.rand(1, 3, 6, 9)
        >>> ref = F.avg_pool2d(x, 5, 1, 2, count_include_pad=False)
        >>> bool(torch.allclose(window_mean(x, 5), ref, atol=1e-6))
        True
    """
    r = k // 2
    if k < 3 or torch.onnx.is_in_onnx_export():
        return F.avg_pool2d(x, k, 1, r, count_include_pad=False) if k > 1 else x
    h, w = x.shape[-2:]
    p = F.pad(x, (r, r, 0, 0))
    acc = p[..., :, 0:w] + p[..., :, 1:w + 1]
    for i in range(2, k):
        acc += p[..., :, i:i + w]
    p = F.pad(acc, (0, 0, r, r))
    acc = p[..., 0:h, :] + p[..., 1:h + 1, :]
    for i in range(2, k):
        acc += p[..., i:i + h, :]
    key = (h, w, k, x.device, x.dtype)
    inv = _COUNT_CACHE.get(key)
    if inv is None:
        with torch.inference_mode(False), torch.no_grad():
            def valid(n: int) -> torch.Tensor:
                i = torch.arange(n, device=x.device)
                return ((i + r).clamp(max=n - 1) - (i - r).clamp(min=0) + 1).to(x.dtype)
            inv = (1.0 / (valid(h)[:, None] * valid(w)[None, :])).contiguous()
        if len(_COUNT_CACHE) >= 32:
            _COUNT_CACHE.clear()
        _COUNT_CACHE[key] = inv
    return acc * inv


def opencv_eligible(x: torch.Tensor) -> bool:
    """Whether ``x`` may take an OpenCV path: eager CPU float32 ``(B, C, H, W)``, no gradient."""
    return (x.device.type == 'cpu' and x.dtype == torch.float32 and x.dim() == 4
            and not x.requires_grad and not torch.jit.is_tracing())


def _per_plane(x: torch.Tensor, size: tuple[int, int], op) -> torch.Tensor:
    """Apply ``op(src_plane, dst_plane)`` (numpy, float32) to every ``(H, W)`` plane of ``x``."""
    src = x.contiguous().numpy()
    out = torch.empty(*x.shape[:2], *size, dtype=x.dtype)
    dst = out.numpy()
    for i in range(src.shape[0]):
        for j in range(src.shape[1]):
            op(src[i, j], dst[i, j])
    return out


def up_to(x: torch.Tensor, size: tuple[int, int], opencv: bool = False) -> torch.Tensor:
    """Bilinear upsampling of ``x`` to ``size = (H, W)`` (``align_corners=False``).

    With ``opencv`` and in CPU inference (:func:`opencv_eligible`) upsampling runs plane by plane in
    ``cv2.resize`` (same half-pixel-centre bilinear rule; equal to
    ``F.interpolate`` to ~1e-7 at the pyramid's factors of two): 2-7x faster
    for the one- and two-channel full-resolution maps of the fusion network.
    """
    h, w = int(size[0]), int(size[1])
    upsampling = h >= x.shape[-2] and w >= x.shape[-1] and (h, w) != tuple(x.shape[-2:])
    if opencv and upsampling and opencv_eligible(x):
        return _per_plane(x, (h, w), lambda src, dst: cv2.resize(
            src, (w, h), dst=dst, interpolation=cv2.INTER_LINEAR))
    return F.interpolate(x, size=size, mode='bilinear', align_corners=False)


def gaussian_pyramid(x: torch.Tensor, levels: int, opencv: bool = False) -> list[torch.Tensor]:
    """``[x, down2(x), ...]``: ``levels + 1`` images, level ``l`` of size ``H / 2**l``.

    ``opencv`` as in :func:`down2`.
    """
    out = [x]
    for _ in range(levels):
        out.append(down2(out[-1], opencv))
    return out


def laplacian_pyramid(x: torch.Tensor, levels: int, opencv: bool = False,
                      gaussians: list[torch.Tensor] | None = None
                      ) -> tuple[list[torch.Tensor], torch.Tensor]:
    """Decompose ``x`` into ``levels`` detail layers and a base.

    Args:
        x: ``(B, C, H, W)``, H and W multiples of ``2**levels``.
        levels: number of detail layers L.
        gaussians: :func:`gaussian_pyramid` of ``x`` with at least ``levels``
            levels when the caller has it already (saves its computation).

    Returns:
        ``(details, base)``: ``details[l]`` has size ``H / 2**l``, the base ``H / 2**L``.

    Example:
        >>> x = torch.rand(1, 1, 32, 32)
        >>> d, b = laplacian_pyramid(x, 3)
        >>> bool(torch.allclose(reconstruct(d, b), x, atol=1e-6))
        True
    """
    g = gaussians if gaussians is not None else gaussian_pyramid(x, levels)
    details = [g[i] - up_to(g[i + 1], g[i].shape[-2:], opencv) for i in range(levels)]
    return details, g[levels]


def reconstruct(details: list[torch.Tensor], base: torch.Tensor, opencv: bool = False) -> torch.Tensor:
    """Inverse of :func:`laplacian_pyramid` (``opencv`` as in :func:`up_to`)."""
    x = base
    for d in reversed(details):
        x = up_to(x, d.shape[-2:], opencv) + d
    return x
