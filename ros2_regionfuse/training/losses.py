"""Unsupervised fusion loss.

``L = w_int * L1(F, max(Y, T)) + w_grad * L1(|grad F|, max(|grad Y|, |grad T|))
      + w_ssim * (0.5 * (1 - SSIM(F, Y)) + 0.5 * (1 - SSIM(F, T))) + w_bal * balance``

with Sobel gradients and 11x11 Gaussian SSIM (kornia). The weights default to
the RegionFuse group's earlier recipe (5, 10, 4) plus 0.01 for the router's
load-balancing loss; the intensity target ``max(Y, T)`` keeps thermal targets
bright, the gradient target keeps the stronger edge of either source, SSIM
keeps structure of both.
"""
from __future__ import annotations

from dataclasses import dataclass

import kornia
import torch
import torch.nn.functional as F


@dataclass
class FusionLossWeights:
    """Weights of the loss terms."""

    intensity: float = 5.0
    gradient: float = 10.0
    ssim: float = 4.0
    balance: float = 0.01


def sobel_mag(x: torch.Tensor) -> torch.Tensor:
    """|grad x| (L1 of the Sobel responses) of ``(B, 1, H, W)``."""
    g = kornia.filters.spatial_gradient(x, mode='sobel', normalized=False)  # (B, 1, 2, H, W)
    return g.abs().sum(2)


def fusion_loss(fused: torch.Tensor, ir: torch.Tensor, vis_y: torch.Tensor,
                balance: torch.Tensor, w: FusionLossWeights | None = None
                ) -> tuple[torch.Tensor, dict[str, float]]:
    """Total loss and its terms (floats, for logging).

    Args:
        fused, ir, vis_y: ``(B, 1, H, W)`` in [0, 1].
        balance: scalar router balance loss of the forward pass.
    """
    w = w or FusionLossWeights()
    l_int = F.l1_loss(fused, torch.maximum(ir, vis_y))
    l_grad = F.l1_loss(sobel_mag(fused), torch.maximum(sobel_mag(ir), sobel_mag(vis_y)))
    # kornia's ssim_loss returns (1 - SSIM) / 2; scale back to 1 - SSIM.
    l_ssim = 0.5 * 2 * kornia.losses.ssim_loss(fused, vis_y, 11) + \
        0.5 * 2 * kornia.losses.ssim_loss(fused, ir, 11)
    total = w.intensity * l_int + w.gradient * l_grad + w.ssim * l_ssim + w.balance * balance
    terms = {'int': l_int, 'grad': l_grad, 'ssim': l_ssim, 'bal': balance}
    return total, {k: float(v.detach()) for k, v in terms.items()}
