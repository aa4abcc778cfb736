"""Corrector loss (in the spirit of FusionRegister, plus flow and M supervision).

With output ``O``, target ``G`` (fusion of the aligned pair), per-level warped
fused images ``W_l`` and flows ``phi_l``, ground-truth flow ``phi*`` and
valid mask ``V`` (all image terms are means over valid pixels)::

    L = w_charb * C(O, G)                                  Charbonnier, eps 1e-3
      + w_scales * mean_l C(W_l, pool_l(G))                per-scale warped images
      + w_fft * mean |FFT(O) - FFT(G)|                     (orthonormal 2-D FFT)
      + w_lap * C(lap(O), lap(G))                          Laplacian edge loss
      + w_sobel * sum(|S(O) - S(G)| * M*) / sum(M*)        Sobel loss inside the mask
      + w_flow * mean_l mean sqrt(|phi_l - pool_l(phi*)|^2 + eps^2)   EPE, px
      + w_mask * mean_l BCE(M_l, |pool_l(phi*)| > m_thresh)

``pool_l`` is average pooling to level ``l``; ``M* = |phi*| > m_thresh`` at
full resolution; ``S`` is the Sobel gradient magnitude ``|gx| + |gy|``.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from ..models.corrector import CorrectorOutput


@dataclass
class CorrectorLossWeights:
    """Weights and constants of :func:`corrector_loss`."""

    charb: float = 1.0
    scales: float = 0.5
    fft: float = 0.1
    lap: float = 1.0
    sobel: float = 0.5
    flow: float = 0.05
    mask: float = 0.05
    eps: float = 1e-3
    m_thresh: float = 1.0   # px: ground-truth M is |phi*| above this


def _masked_mean(x: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    v = valid.to(x.dtype)
    return (x * v).sum() / (v.sum() * x.shape[1] / v.shape[1]).clamp_min(1.0)


def charbonnier(a: torch.Tensor, b: torch.Tensor, valid: torch.Tensor, eps: float) -> torch.Tensor:
    """Mean of ``sqrt((a - b)^2 + eps^2)`` over valid pixels."""
    return _masked_mean(torch.sqrt((a - b) ** 2 + eps * eps), valid)


def laplacian(x: torch.Tensor) -> torch.Tensor:
    """4-neighbour Laplacian of ``(B, 1, H, W)`` (replicate border)."""
    k = torch.tensor([[0.0, 1.0, 0.0], [1.0, -4.0, 1.0], [0.0, 1.0, 0.0]], dtype=x.dtype, device=x.device)
    return F.conv2d(F.pad(x, (1, 1, 1, 1), mode='replicate'), k.view(1, 1, 3, 3))


def sobel_magnitude(x: torch.Tensor) -> torch.Tensor:
    """``|gx| + |gy|`` of ``(B, 1, H, W)`` with 3x3 Sobel kernels (replicate border)."""
    gx = torch.tensor([[-1.0, 0.0, 1.0], [-2.0, 0.0, 2.0], [-1.0, 0.0, 1.0]], dtype=x.dtype, device=x.device)
    k = torch.stack([gx, gx.t()])[:, None]
    g = F.conv2d(F.pad(x, (1, 1, 1, 1), mode='replicate'), k)
    return g.abs().sum(1, keepdim=True)


def _pool(x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    h, w = x.shape[-2:]
    if (h, w) == size:
        return x
    return F.avg_pool2d(x, (h // size[0], w // size[1]))


def corrector_loss(out: CorrectorOutput, target: torch.Tensor, gt_flow: torch.Tensor, valid: torch.Tensor,
                   w: CorrectorLossWeights | None = None) -> tuple[torch.Tensor, dict[str, float]]:
    """Total loss and its terms (floats, for logging).

    Args:
        out: corrector output computed with ``aux=True`` (or in training mode).
        target: ``(B, 1, H, W)`` fusion of the aligned pair.
        gt_flow: ``(B, 2, H, W)`` ground-truth flow (px).
        valid: ``(B, 1, H, W)`` bool.
        w: weights.

    Returns:
        ``(loss, {'charb', 'scales', 'fft', 'lap', 'sobel', 'epe', 'mask'})``; ``epe`` is
        the full-resolution end-point error (px) of ``out.flow``, for monitoring.
    """
    w = w or CorrectorLossWeights()
    o = out.image
    terms: dict[str, torch.Tensor] = {}
    terms['charb'] = charbonnier(o, target, valid, w.eps)
    ms, fl, bce = [], [], []
    validf = valid.to(o.dtype)
    for warped, flow, m in zip(out.warped, out.flows, out.masks):
        size = tuple(flow.shape[-2:])
        v_l = _pool(validf, size) > 0.999
        ms.append(charbonnier(warped, _pool(target, size), v_l, w.eps))
        g_l = _pool(gt_flow, size)
        fl.append(_masked_mean(torch.sqrt(((flow - g_l) ** 2).sum(1, keepdim=True) + w.eps ** 2), v_l))
        m_t = (torch.linalg.vector_norm(g_l, dim=1, keepdim=True) > w.m_thresh).to(o.dtype)
        bce.append(_masked_mean(F.binary_cross_entropy(m.clamp(1e-5, 1 - 1e-5), m_t, reduction='none'), v_l))
    terms['scales'] = torch.stack(ms).mean() if ms else o.new_zeros(())
    terms['flow'] = torch.stack(fl).mean()
    terms['mask'] = torch.stack(bce).mean()
    diff = (o - target) * validf
    terms['fft'] = torch.fft.rfft2(diff, norm='ortho').abs().mean()
    terms['lap'] = charbonnier(laplacian(o), laplacian(target), valid, w.eps)
    m_full = (torch.linalg.vector_norm(gt_flow, dim=1, keepdim=True) > w.m_thresh) & valid
    mf = m_full.to(o.dtype)
    sob = (sobel_magnitude(o) - sobel_magnitude(target)).abs()
    terms['sobel'] = (sob * mf).sum() / mf.sum().clamp_min(1.0)
    loss = (w.charb * terms['charb'] + w.scales * terms['scales'] + w.fft * terms['fft']
            + w.lap * terms['lap'] + w.sobel * terms['sobel'] + w.flow * terms['flow']
            + w.mask * terms['mask'])
    with torch.no_grad():
        epe = _masked_mean(torch.linalg.vector_norm(out.flow - gt_flow, dim=1, keepdim=True), valid)
    logged = {k: float(v.detach()) for k, v in terms.items()}
    logged['epe'] = float(epe)
    return loss, logged
