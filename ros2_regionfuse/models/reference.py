"""A plain dense-CNN fusion network of published size, used only as a timing reference.

The layer plan follows the fusion network of SeAFusion (Tang et al., Information
Fusion 2022) as described in its paper: per modality a 3x3 convolution (1 -> 16)
and two gradient residual dense blocks (16 -> 32 -> 48), whose main path is a
two-layer dense block plus a 1x1 reduction and whose side path is a fixed Sobel
gradient magnitude plus a 1x1 convolution; the concatenated features (96) go
through a 4-layer decoder (96 -> 64 -> 32 -> 16 -> 1, 3x3 convolutions, batch
norm, tanh output). Everything runs at full resolution: ~165k parameters,
~101 GFLOPs per 640x480 frame, the published scale this project's fusion
network is compared against in ``regionfuse bench``.

The weights are untrained (random initialisation): the model exists to be timed.
It is registered as the fusion variant ``reference_dense`` with the fusion
runner's interface ``(thermal, visible_y) -> fused_y``.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .registry import register_fusion

_LEAK = 0.2  # LeakyReLU slope of the reference design


class SobelMagnitude(nn.Module):
    """Per-channel ``|Gx| + |Gy|`` with fixed 3x3 Sobel kernels (buffers, not parameters).

    Shape:
        ``(B, C, H, W) -> (B, C, H, W)``.
    """

    def __init__(self, channels: int) -> None:
        super().__init__()
        gx = torch.tensor([[-1.0, 0.0, 1.0], [-2.0, 0.0, 2.0], [-1.0, 0.0, 1.0]])
        k = torch.stack([gx, gx.t()])[:, None].repeat(channels, 1, 1, 1)  # (2C, 1, 3, 3)
        self.register_buffer('kernel', k, persistent=False)
        self.channels = channels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        g = F.conv2d(x.repeat_interleave(2, dim=1), self.kernel, padding=1, groups=2 * self.channels)
        return g[:, 0::2].abs() + g[:, 1::2].abs()


def _conv_act(cin: int, cout: int, k: int = 3) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, k, padding=k // 2), nn.LeakyReLU(_LEAK))


class GradientResidualDenseBlock(nn.Module):
    """Dense block (two 3x3 layers, growth = input width) + 1x1 reduction, plus a Sobel side path.

    Shape:
        ``(B, cin, H, W) -> (B, cout, H, W)``.
    """

    def __init__(self, cin: int, cout: int) -> None:
        super().__init__()
        self.dense1 = _conv_act(cin, cin)
        self.dense2 = _conv_act(2 * cin, cin)
        self.reduce = nn.Conv2d(3 * cin, cout, 1)
        self.sobel = SobelMagnitude(cin)
        self.side = nn.Conv2d(cin, cout, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        d1 = torch.cat([x, self.dense1(x)], 1)
        d2 = torch.cat([d1, self.dense2(d1)], 1)
        return F.leaky_relu(self.reduce(d2) + self.side(self.sobel(x)), _LEAK)


class DenseReferenceFusion(nn.Module):
    """SeAFusion-sized dense CNN: two encoders, concatenation, 4-layer decoder.

    Shape:
        thermal, visible: ``(B, 1, H, W)`` float in [0, 1].
        Output: ``(B, 1, H, W)`` in [0, 1] (``tanh / 2 + 0.5``).

    Example:
        >>> m = DenseReferenceFusion().eval()
        >>> m(torch.rand(1, 1, 16, 20), torch.rand(1, 1, 16, 20)).shape
        torch.Size([1, 1, 16, 20])
    """

    def __init__(self, widths: tuple[int, int, int] = (16, 32, 48)) -> None:
        super().__init__()
        c0, c1, c2 = widths

        def encoder() -> nn.Sequential:
            return nn.Sequential(_conv_act(1, c0), GradientResidualDenseBlock(c0, c1),
                                 GradientResidualDenseBlock(c1, c2))

        def conv_bn(cin: int, cout: int) -> nn.Sequential:
            return nn.Sequential(nn.Conv2d(cin, cout, 3, padding=1), nn.BatchNorm2d(cout),
                                 nn.LeakyReLU(_LEAK))

        self.enc_t = encoder()
        self.enc_y = encoder()
        self.decoder = nn.Sequential(conv_bn(2 * c2, 2 * c1), conv_bn(2 * c1, c1), conv_bn(c1, c0),
                                     nn.Conv2d(c0, 1, 3, padding=1), nn.BatchNorm2d(1))

    def forward(self, thermal: torch.Tensor, visible: torch.Tensor) -> torch.Tensor:
        f = torch.cat([self.enc_t(thermal), self.enc_y(visible)], 1)
        return torch.tanh(self.decoder(f)) * 0.5 + 0.5


@register_fusion('reference_dense')
def reference_dense() -> DenseReferenceFusion:
    """Untrained SeAFusion-sized reference (~165k parameters, ~101 GFLOPs at 640x480)."""
    return DenseReferenceFusion()
