"""Small building blocks shared by the models (norms, region split/merge)."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class LayerNorm2d(nn.Module):
    """LayerNorm over the channel dimension of a ``(B, C, H, W)`` tensor."""

    def __init__(self, channels: int, eps: float = 1e-5) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(channels))
        self.bias = nn.Parameter(torch.zeros(channels))
        self.eps = eps
        self.shape = (channels,)   # a Python int: the ONNX export keeps it static

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # One fused kernel over the channel-last view (contiguous for channels_last inputs, as the
        # fusion model runs on the CPU): ~10 % less fusion time at 640x480 than the per-op
        # mean/var/normalise form, same values to ~2e-7 (docs/performance.md).
        y = F.layer_norm(x.permute(0, 2, 3, 1), self.shape, self.weight, self.bias, self.eps)
        return y.permute(0, 3, 1, 2)


def to_regions(x: torch.Tensor, r: int) -> torch.Tensor:
    """Split ``(B, C, H, W)`` into ``r x r`` region tokens ``(B, N, C*r*r)``.

    ``H`` and ``W`` must be multiples of ``r``; ``N = (H/r) * (W/r)`` in
    row-major region order.

    Example:
        >>> to_regions(torch.zeros(2, 3, 8, 12), 4).shape
        torch.Size([2, 6, 48])
    """
    b, c, h, w = x.shape
    # same order as F.unfold(x, r, stride=r).transpose(1, 2), by reshape (ONNX-exportable, dynamic H/W)
    t = x.reshape(b, c, h // r, r, w // r, r).permute(0, 2, 4, 1, 3, 5)
    return t.reshape(b, (h // r) * (w // r), c * r * r)


def from_regions(t: torch.Tensor, c: int, h: int, w: int, r: int) -> torch.Tensor:
    """Inverse of :func:`to_regions`: ``(B, N, C*r*r)`` -> ``(B, C, H, W)``.

    Example:
        >>> x = torch.randn(1, 2, 8, 8)
        >>> bool(torch.equal(from_regions(to_regions(x, 4), 2, 8, 8, 4), x))
        True
    """
    b = t.shape[0]
    x = t.reshape(b, h // r, w // r, c, r, r).permute(0, 3, 1, 4, 2, 5)
    return x.reshape(b, c, h, w)


class ConvMlp(nn.Module):
    """Pointwise MLP ``C -> hidden -> C`` with GELU (the transformer block's FFN)."""

    def __init__(self, channels: int, hidden: int) -> None:
        super().__init__()
        self.fc1 = nn.Conv2d(channels, hidden, 1)
        self.fc2 = nn.Conv2d(hidden, channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(F.gelu(self.fc1(x)))
