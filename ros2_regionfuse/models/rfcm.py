"""Region Feature Compression Module (RFCM), after RegionFuse (CVPR 2026).

Per region: global average pool -> 1x1 conv -> sigmoid gives a channel gate
that rescales that region (region-wise channel gating); then a 1x1 conv with
LeakyReLU compresses the concatenated streams to the output width.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def region_gate(x: torch.Tensor, gate_conv: nn.Module, region: int) -> torch.Tensor:
    """Rescale each ``region x region`` block of ``x`` by a sigmoid channel gate.

    Args:
        x: ``(B, C, H, W)``, H and W multiples of ``region``.
        gate_conv: maps pooled ``(B, C, H/r, W/r)`` to gate logits of the same shape.
        region: region size r.

    Returns:
        ``(B, C, H, W)``: ``x * sigmoid(gate_conv(avgpool_r(x)))`` broadcast per region.
    """
    g = torch.sigmoid(gate_conv(F.avg_pool2d(x, region)))
    # nearest upsampling by the region size = the gate repeated over each region (one op)
    return x * F.interpolate(g, scale_factor=float(region), mode='nearest')


class RFCM(nn.Module):
    """Region-wise channel gating followed by 1x1 compression.

    Shape:
        ``(B, C_in, H, W) -> (B, C_out, H, W)``.
    """

    def __init__(self, in_ch: int, out_ch: int, region: int = 4) -> None:
        super().__init__()
        self.region = region
        self.gate = nn.Conv2d(in_ch, in_ch, 1)
        self.compress = nn.Conv2d(in_ch, out_ch, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.leaky_relu(self.compress(region_gate(x, self.gate, self.region)), 0.1)
