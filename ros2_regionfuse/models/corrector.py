"""Post-registration corrector ("fuse, then register", after FusionRegister, CVPR 2026).

The fused luminance ``F`` of a misregistered pair holds IR-derived content
displaced against the visible frame. With the visible image ``Y`` as the
reference, the corrector finds where and how far that content is displaced
and resamples it. Inputs and output are luminance, ``(B, 1, H, W)`` float32
in [0, 1]; the pipeline restores colour from the RGB chroma (the RGB image is
not misregistered, only IR-derived content is).

**Flow convention** (see ``models/warp.py``): ``flow`` is ``(B, 2, H, W)`` in
pixels of the input, x then y; the corrected output at pixel ``p`` takes the
IR-derived content found at ``p + flow(p)`` of the uncorrected fused image
(backward bilinear sampling with ``grid_sample``, ``align_corners=False``).

Architecture (cost-driven; facts of the paper in ../shared/README.md §2):

1. **Encoder.** ``[Y, F, T]`` is pixel-unshuffled to stride ``stem_stride``
   (lossless space-to-depth; 8 for ``corrector_multiscale``) and encoded by three
   modality streams (grouped convolutions), halving the resolution per level:
   strides 8 and 16 for ``corrector_multiscale``.
2. **Misregistration localisation, coarse to fine.** Estimation runs in
   stages, coarsest first (``corrector_multiscale``: two stages at 1/16, one at
   1/8). Each stage warps the thermal and fused features by the current flow
   and predicts a flow residual and misregistration logits from local
   correlations (channel-mean of products of RMS-normalised features):
   visible vs warped thermal features with a wide search at the coarsest
   level (radius 2 at 1/16 = ±32 px, where the cross-modal evidence of the
   shift lies), the same for a fixed polarity-invariant edge descriptor
   (:func:`edge_descriptor`; radius 2), and the paper's p=1 correlation of
   the warped fused features with the visible features. The edge
   correlation also yields flow candidates by soft arg-max (aggregated over
   5x5 cells, and over the whole image at the coarsest level), which the
   heads take as inputs. At the coarsest level each stage's flow is a
   robust confidence-weighted affine fit (:func:`affine_fit`) of that
   stage's local estimates: the misalignment of a rig is mostly a smooth,
   near-affine field, and the fit pools the evidence of the whole image. The
   second coarse stage re-correlates after warping by the first estimate,
   which removes the shrinkage of a single soft arg-max toward zero shift;
   the finer level adds local (parallax) residuals,
   ``phi_fine = head + 2 * up(phi_coarse)`` (:func:`compose_flow`). The
   coarsest heads see global context (image-mean features) so flat regions
   inherit the shift of their surroundings.
   With ``global_align`` (:mod:`.global_align`), the coarsest stage starts
   from a global similarity registration of the thermal image (rotation,
   scale, translation; Gauss-Newton on edge descriptors at 1/8 and 1/4, no
   learned weights, gated by its own confidence) instead of zero flow: the
   image-wide evidence fixes the bulk of a rig's misalignment, which local
   cross-modal matching in low-texture thermal images gets mostly wrong.
   With ``refine=False`` (``corrector_multiscale``) that registration is the flow
   of every stage; the stages then give M and the retention block's inputs
   (measured: the learned residual made the flow worse, see
   :func:`corrector_multiscale`).
3. **Modality Retention Block** (at the finest level): p=1 correlations of
   the bidirectionally warped fused features with visible and warped thermal
   features, a 3x3 conv, a multi-window gMLP (windows 1/3/5, spatial gating
   units mixing the tokens of each window, softmax-weighted merge), visible
   channel attention and IR spatial attention (7x7 conv over channel max and
   mean). It predicts two maps: a gain (``retain``: the visible retention gain
   ``alpha``; ``refuse``: ``a``, the gain ``1 + a`` on the thermal weight) and ``b``
   (bias).
4. **Full resolution** (a few cheap ops): the flow, ``M``, ``alpha`` and ``b``
   are upsampled bilinearly; ``[F, Y]`` is warped bidirectionally,
   ``W(x) = M * warp(x, +phi) + (1 - M) * warp(x, -phi)``, giving ``F_w`` and
   ``Y_w``; the output is ``clamp(F_w + alpha * (Y - Y_w) + b, 0, 1)``. The
   residual ``alpha * (Y - Y_w)`` puts back the visible detail that the warp
   moved (a fusion is locally ``~ a * Y + c * T``; warping it shifts the
   visible part too), so only IR-derived content moves. On aligned input
   ``phi ~ 0`` and the output equals the input up to ``b ~ 0``; a soft dead
   zone (:func:`shift_gate`, shifts below ``min_shift`` = 1 px) scales flow,
   M and ``b`` toward zero, so estimation noise on aligned input does not
   resample (blur) it. That is the ``retain`` output (``corrector_multiscale``). The
   ``refuse`` output (``corrector_lite``) moves only the IR-derived content:
   ``clamp(F + (1 + a) * beta * (W(T) - T) + b, 0, 1)``, a first-order re-fusion
   with the bidirectionally warped thermal image, ``beta`` the fusion's local
   thermal weight (:func:`thermal_weight`); the visible content is not resampled.

``corrector_paper`` mirrors the published configuration (two scales, 1/2 and
1, width 16, modules at full resolution, with extra encoder blocks so its
cost matches the published 233 GFLOPs at 640x480); it is a timing reference
only (untrained).
"""
from __future__ import annotations

import functools
import math
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import NamedTuple

import cv2
import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .. import native as native_kernels
from .global_align import GlobalAlignConfig, field_on_grid, gated_similarity, max_shift
from .pyramid import opencv_eligible, window_mean
from .registry import register_corrector
from .warp import (
    affine_fit,
    bidirectional_warp,
    bidirectional_warp_cv,
    compose_flow,
    local_correlation,
    scratch,
    soft_argmax_offset,
    warp_by_flow,
)

_LEAK = 0.1  # LeakyReLU slope
_FLOW_INPUT_SCALE = 0.25  # flows fed to the heads are scaled into a unit-ish range
_EDGE_EPS = 0.02  # intensity units: floor of the local gradient energy in the edge descriptor
_EDGE_WINDOW = 7  # local window (px of the level) normalising the edge descriptor
_NORM_EPS = 1e-3  # RMS normalisation of features before correlation
_SOFTARGMAX_WINDOW = 5  # cells over which the edge correlation is aggregated for the flow candidate
_SOFTARGMAX_TEMP = 0.1  # initial softmax temperature of the candidate (learned per level)
_M_INIT_LOGIT = 2.0  # initial M ~ 0.88: the image loss then pulls +phi toward the true shift
_AFFINE_ITERS = 2     # re-weighting rounds of the global affine fit
_AFFINE_SCALE = 0.5   # residual scale (cells of the coarsest level) of its Cauchy weights
_BETA_EPS = 1e-3      # intensity^2: ridge added to the variances of the thermal-weight fit
_BETA_MAX = 1.5       # clip of the thermal weight
_BETA_POOL = 4        # the fit's products are taken on the 4x4-averaged images
OUTPUTS = ('retain', 'refuse')
STREAMS = (0, 1, 2)          # modality streams of the encoder: visible, fused, thermal
SOURCE_STREAMS = (0, 2)      # the streams that need no fused image
FUSED_STREAMS = (1,)


@dataclass(frozen=True)
class CorrectorArchitecture:
    """Hyper-parameters of :class:`Corrector` (the learned correctors' architecture).

    The user-facing corrector settings are :class:`ros2_regionfuse.core.config.CorrectorConfig`.

    Attributes:
        stem_stride: resolution of the finest level (pixel-unshuffle factor, 1 = full resolution).
        widths: channels per modality stream at each level, finest first.
        radii: correlation search radius (px of the level) of visible vs
            warped thermal features, per level, finest first.
        edge_radii: search radius of the fixed edge-descriptor correlation, per level.
        heads: hidden width of the flow/M head per level, finest first.
        head_in_kernel: kernel size of each head's input conv, finest first (1 keeps the
            finest level cheap).
        dilations: dilations of the two inner head convs, per level, finest first.
        mrb_width: channels of the Modality Retention Block.
        windows: gMLP window sizes.
        global_affine: the coarsest flow is a robust confidence-weighted affine
            fit of the coarsest head's local estimates (image-wide evidence).
        min_shift: dead zone (px of the input): flows much shorter than this are
            treated as no misregistration (see :func:`shift_gate`).
        min_shift_width: softness (px) of the dead zone.
        coarse_iters: estimation stages at the coarsest level; each later stage
            warps the thermal features by the current estimate, correlates
            again and adds a residual (then re-fits the affine field), which
            removes the bias of a single soft arg-max toward zero shift.
        blocks: extra residual 3x3 conv blocks per encoder level (0 for the
            shipped variants; the ``paper`` timing reference uses them to reach
            the published cost).
        global_align: start from a global similarity registration of the
            thermal image (:mod:`.global_align`, no learned weights) instead
            of zero flow.
        refine: the learned stages add flow residuals to that start; False
            keeps the global estimate as the flow (the learned stages then
            only give M and the Modality Retention Block its input).
        align: settings of the global registration.
        skip_aligned: with the global registration as the flow (``global_align``
            and not ``refine``), a frame whose gated field stays below the dead
            zone everywhere (``max_shift <= min_shift - 4 * min_shift_width``,
            gate < 0.02) returns the input unchanged with M = 0 and flow = 0
            without running the learned stages (eager inference only; a traced
            graph always runs them). The full path would move such a frame by
            less than 0.02 of a pixel.
        output: how the full-resolution step forms the corrected image (see the module
            docstring): ``retain`` warps the fused image and puts back the visible detail
            the warp moved (``F_w + alpha * (Y - Y_w) + b``); ``refuse`` moves only the
            IR-derived part, a first-order re-fusion with the warped thermal image
            (``F + g * beta * (T_w - T) + b``, ``beta`` the fusion's local thermal weight,
            :func:`thermal_weight`).
    """

    stem_stride: int = 8
    widths: tuple[int, ...] = (16, 24)
    radii: tuple[int, ...] = (1, 2)
    edge_radii: tuple[int, ...] = (2, 2)
    heads: tuple[int, ...] = (24, 48)
    head_in_kernel: tuple[int, ...] = (3, 3)
    dilations: tuple[tuple[int, int], ...] = ((1, 2), (2, 4))
    mrb_width: int = 16
    windows: tuple[int, ...] = (1, 3, 5)
    global_affine: bool = True
    min_shift: float = 1.0
    min_shift_width: float = 0.25
    coarse_iters: int = 2
    blocks: int = 0
    global_align: bool = False
    refine: bool = True
    align: GlobalAlignConfig = GlobalAlignConfig()
    skip_aligned: bool = True
    output: str = 'retain'

    @property
    def stages(self) -> list[int]:
        """Level index of each estimation stage, in execution order (coarsest first)."""
        return [self.levels - 1] * self.coarse_iters + list(reversed(range(self.levels - 1)))

    @property
    def levels(self) -> int:
        """Number of pyramid levels."""
        return len(self.widths)

    @property
    def multiple(self) -> int:
        """Input sizes are padded to a multiple of this."""
        return self.stem_stride * 2 ** (self.levels - 1)


#: deprecated alias of :class:`CorrectorArchitecture` (the user-facing settings are
#: ``core.config.CorrectorConfig``)
CorrectorConfig = CorrectorArchitecture


class CorrectorOutput(NamedTuple):
    """Output of :class:`Corrector`.

    Attributes:
        image: ``(B, 1, H, W)`` corrected fused luminance in [0, 1].
        misregistration: ``(B, 1, H, W)`` probability M in [0, 1].
        flow: ``(B, 2, H, W)`` pixels (x, y), convention in the module docstring.
        flows: per estimation stage, finest first (``cfg.stages`` reversed):
            ``(B, 2, h_l, w_l)`` flow at that stage's resolution, in
            **full-resolution pixels**.
        masks: per stage, finest first: ``(B, 1, h_l, w_l)`` M of that stage.
        warped: per stage, finest first: ``(B, 1, h_l, w_l)`` the fused image
            average-pooled to the stage's level and warped bidirectionally by
            that stage's flow and M (empty unless training or ``aux=True``).

    A frame skipped as aligned (``CorrectorArchitecture.skip_aligned``) has the input
    as ``image``, zero ``misregistration`` and ``flow`` and empty lists.
    """

    image: torch.Tensor
    misregistration: torch.Tensor
    flow: torch.Tensor
    flows: list[torch.Tensor]
    masks: list[torch.Tensor]
    warped: list[torch.Tensor]


def _act() -> nn.Module:
    return nn.LeakyReLU(_LEAK, inplace=True)


def _conv(cin: int, cout: int, k: int = 3, stride: int = 1, groups: int = 1, dilation: int = 1
          ) -> nn.Conv2d:
    return nn.Conv2d(cin, cout, k, stride, padding=dilation * (k // 2), groups=groups, dilation=dilation)


def edge_descriptor(img: torch.Tensor) -> torch.Tensor:
    """Polarity-invariant, contrast-normalised edge descriptor of a gray image.

    ``[|gx|, |gy|]`` (central differences) divided by the local mean gradient
    energy (``_EDGE_WINDOW`` box, floored at ``_EDGE_EPS``), minus its image
    mean. Thermal and visible edges of one object match in this descriptor
    whatever their polarity and contrast, so its correlation shows the shift
    between the modalities from the first training step.

    Args:
        img: ``(B, 1, h, w)`` in [0, 1].

    Returns:
        ``(B, 2, h, w)``.

    Example:
        >>> edge_descriptor(torch.rand(2, 1, 9, 7)).shape
        torch.Size([2, 2, 9, 7])
    """
    zero = torch.zeros_like(img)
    gx = F.pad(img[..., :, 2:] - img[..., :, :-2], (1, 1, 0, 0)) if img.shape[-1] > 2 else zero
    gy = F.pad(img[..., 2:, :] - img[..., :-2, :], (0, 0, 1, 1)) if img.shape[-2] > 2 else zero
    g = torch.cat([gx.abs(), gy.abs()], 1)
    energy = window_mean(g.sum(1, keepdim=True), _EDGE_WINDOW)   # = avg_pool2d(count_include_pad=False)
    e = g / (energy + _EDGE_EPS)
    return e - e.mean((2, 3), keepdim=True)


def shift_gate(flow: torch.Tensor, min_shift: float, width: float) -> torch.Tensor:
    """Soft dead zone on the flow length: ``sigmoid((|flow| - min_shift) / width)``.

    Cross-modal shift estimates carry sub-pixel noise; resampling an aligned
    image by such noise only blurs it. The gate scales the output flow, M and
    the bias toward zero where the estimated shift is below ``min_shift``
    pixels (the same threshold as the M training target), so aligned content
    is left exactly as it is; longer shifts pass (gate > 0.98 at
    ``min_shift + 4 * width``). ``min_shift <= 0`` disables it.

    Args:
        flow: ``(B, 2, H, W)`` pixels.
        min_shift, width: pixels.

    Returns:
        ``(B, 1, H, W)`` in (0, 1).

    Example:
        >>> f = torch.tensor([0.2, 3.0]).view(1, 1, 1, 2).expand(1, 2, 1, 2) / 2 ** 0.5
        >>> [round(v, 3) for v in shift_gate(f, 1.0, 0.25).flatten().tolist()]
        [0.039, 1.0]
    """
    if min_shift <= 0:
        return torch.ones_like(flow[:, :1])
    mag = torch.sqrt((flow * flow).sum(1, keepdim=True) + 1e-12)
    return torch.sigmoid((mag - min_shift) / width)


def trained_output(card: dict) -> str | None:
    """The output formula a model card's weights were trained for; None without a recorded config.

    Cards written before :attr:`CorrectorArchitecture.output` existed record no ``output``: ``retain``.
    """
    cfg = card.get('model_config')
    return None if cfg is None else cfg.get('output', 'retain')


def plane_mean(x: torch.Tensor, q: int) -> torch.Tensor:
    """``q x q`` block means of every plane of ``x`` (``F.avg_pool2d(x, q)``; H, W multiples of ``q``).

    One stride-``q`` convolution per plane: on the CPU 0.46 vs 0.66-1.1 ms for three
    640x480 planes and ``q = 4`` (1 thread); same values.

    Example:
        >>> x = torch.rand(1, 3, 8, 12)
        >>> bool(torch.allclose(plane_mean(x, 4), F.avg_pool2d(x, 4), atol=1e-7))
        True
    """
    k = x.new_full((1, 1, q, q), 1.0 / (q * q))
    return torch.cat([F.conv2d(x[:, i:i + 1], k, stride=q) for i in range(x.shape[1])], 1)


@functools.lru_cache(maxsize=8)
def _sub_block_weights(s: int, q: int) -> torch.Tensor:
    """``(m * m, s * s)`` weights (``m = s / q``) of the ``q x q`` sub-block means of an ``s x s`` block.

    Example:
        >>> w = _sub_block_weights(4, 2)
        >>> w.shape, float(w.sum(1)[0]), w[1].view(4, 4)[0].tolist()
        (torch.Size([4, 16]), 1.0, [0.0, 0.0, 0.25, 0.25])
    """
    m = s // q if q > 1 else 0
    sub = np.zeros((m * m, s, s), np.float32)   # numpy: a constant, not traced ops, in a traced graph
    for i in range(m * m):   # sub-block (row i // m, column i % m)
        sub[i, (i // m) * q:(i // m + 1) * q, (i % m) * q:(i % m + 1) * q] = 1.0 / (q * q)
    return torch.from_numpy(sub.reshape(m * m, s * s))


def thermal_weight(x: torch.Tensor, means: torch.Tensor, window: int = 3,
                   small: torch.Tensor | None = None) -> torch.Tensor:
    """Local weight of the thermal image in the fused image: least squares ``F ~ beta T + gamma Y + c``.

    The fusion is locally close to linear in its sources; ``beta`` is its local derivative with
    respect to the thermal image, the share of ``F``'s IR-derived content. The fit runs over
    ``window x window`` cells, on the 4x4-averaged images (a sixteenth of the products).
    Computed as :func:`source_moments` (the sources' part) then :func:`thermal_weight_from`.

    Args:
        x: ``(B, 3, Hp, Wp)`` visible, fused, thermal in [0, 1]; ``Hp, Wp`` multiples of the cell.
        means: ``(B, 3, Hp / s, Wp / s)`` block means of ``x`` over ``s x s`` cells.
        window: cells per side of the fit (odd).
        small: the ``q x q`` block means of ``x`` (``q = gcd(s, 4)``) when the caller has them
            (:meth:`Corrector.stem_and_pool`); computed here otherwise.

    Returns:
        ``(B, 1, Hp / s, Wp / s)`` ``beta`` in ``[0, 1.5]`` (a ridge of 1e-3 on the variances
        sends it to 0 where the thermal image is flat).

    Example:
        >>> u = torch.sin(torch.arange(64.0) * math.pi / 8)   # a period of 16 px
        >>> y, t = 0.5 + 0.4 * u.view(1, 1, 1, 64) * u.view(1, 1, 64, 1), 0.5 + 0.4 * u.view(1, 1, 64, 1)
        >>> y, t = y.expand(1, 1, 64, 64), t.expand(1, 1, 64, 64)
        >>> x = torch.cat([y, 0.3 * y + 0.7 * t, t], 1)
        >>> b = thermal_weight(x, F.avg_pool2d(x, 8))
        >>> bool(((b - 0.7).abs() < 0.05).all())
        True
    """
    s = x.shape[-1] // means.shape[-1]
    q = math.gcd(s, _BETA_POOL)
    if q > 1 and small is None:
        small = plane_mean(x, q)
    small = small if q > 1 else x
    yt = [0, 2]
    stats = source_moments(means[:, yt], small[:, yt], s, window)
    return thermal_weight_from(stats, means[:, 1:2], small[:, 1:2], small[:, yt], s, window)


def source_moments(means_yt: torch.Tensor, small_yt: torch.Tensor, s: int, window: int = 3) -> torch.Tensor:
    """The sources' part of :func:`thermal_weight`: window means of ``[Y, T, T*T, T*Y, Y*Y]``.

    Args:
        means_yt: ``(B, 2, h, w)`` ``s x s`` block means of the visible and thermal images.
        small_yt: their ``q x q`` block means (``q = gcd(s, 4)``; the images themselves when ``q = 1``).
        s: cell size (px).
        window: cells per side of the fit.

    Returns:
        ``(B, 5, h, w)``.
    """
    k = s // math.gcd(s, _BETA_POOL)
    y, t = small_yt[:, 0:1], small_yt[:, 1:2]
    mom = torch.cat([t * t, t * y, y * y], 1)
    mom = F.avg_pool2d(mom, k) if k > 1 else mom
    return window_mean(torch.cat([means_yt, mom], 1), window)


def thermal_weight_from(stats: torch.Tensor, means_f: torch.Tensor, small_f: torch.Tensor,
                        small_yt: torch.Tensor, s: int, window: int = 3) -> torch.Tensor:
    """:func:`thermal_weight` from the sources' :func:`source_moments` and the fused image's means.

    Args:
        stats: ``(B, 5, h, w)`` from :func:`source_moments`.
        means_f: ``(B, 1, h, w)`` ``s x s`` block means of the fused image.
        small_f, small_yt: ``q x q`` block means of the fused image and of the sources.
        s, window: as in :func:`source_moments`.

    Returns:
        ``(B, 1, h, w)`` ``beta`` in ``[0, 1.5]``.
    """
    k = s // math.gcd(s, _BETA_POOL)
    y, t = small_yt[:, 0:1], small_yt[:, 1:2]
    mom = torch.cat([small_f * t, small_f * y], 1)
    mom = F.avg_pool2d(mom, k) if k > 1 else mom
    sf = window_mean(torch.cat([means_f, mom], 1), window)
    my, mt, mf = stats[:, 0:1], stats[:, 1:2], sf[:, 0:1]
    vtt = stats[:, 2:3] - mt * mt + _BETA_EPS
    vty = stats[:, 3:4] - mt * my
    vyy = stats[:, 4:5] - my * my + _BETA_EPS
    cft = sf[:, 1:2] - mf * mt
    cfy = sf[:, 2:3] - mf * my
    beta = (cft * vyy - cfy * vty) / (vtt * vyy - vty * vty)
    return beta.clamp(0.0, _BETA_MAX)


def conv_part(conv: nn.Conv2d, x: torch.Tensor, channels: list[int] | slice, bias: bool) -> torch.Tensor:
    """A convolution over some of its input channels (an ungrouped ``conv``).

    A convolution is linear in its input: for a split of the input channels into parts,
    ``conv(x)`` is the sum of the parts' results, the bias added once. The parts that need
    only the sources can so be computed before the fused image exists.

    Args:
        conv: the convolution (``groups=1``).
        x: ``(B, len(channels), h, w)``: the input channels ``channels`` of ``conv``, in that order.
        channels: indices (or a slice) into ``conv``'s input channels.
        bias: add ``conv``'s bias.

    Example:
        >>> conv = nn.Conv2d(5, 3, 3, padding=1)
        >>> x = torch.rand(1, 5, 6, 6)
        >>> a = conv_part(conv, x[:, :2], slice(0, 2), True)
        >>> b = conv_part(conv, x[:, 2:], slice(2, 5), False)
        >>> bool(torch.allclose(a + b, conv(x), atol=1e-6))
        True
    """
    return F.conv2d(x, conv.weight[:, channels], conv.bias if bias else None, conv.stride, conv.padding,
                    conv.dilation)


def run_streams(module: nn.Module, x: torch.Tensor, streams: tuple[int, ...]) -> torch.Tensor:
    """Run an encoder module, whose convolutions are grouped by the three modality streams, on some streams.

    ``x`` holds only the streams ``streams`` (in order, ``widths`` channels each); each grouped
    convolution runs with the weights of those groups. On all three streams this is ``module(x)``.

    Args:
        module: a grouped (``groups=3``) convolution, an activation, a ``nn.Sequential`` of them,
            or a :class:`ResBlock`.
        x: ``(B, len(streams) * c, h, w)``.
        streams: stream indices (0 visible, 1 fused, 2 thermal).

    Example:
        >>> blk = ResBlock(6, groups=3)
        >>> x = torch.rand(1, 6, 5, 5)
        >>> part = run_streams(blk, x[:, [0, 1, 4, 5]], (0, 2))
        >>> bool(torch.allclose(part, blk(x)[:, [0, 1, 4, 5]], atol=1e-6))
        True
    """
    if tuple(streams) == STREAMS:
        return module(x)
    if isinstance(module, nn.Sequential):
        for m in module:
            x = run_streams(m, x, streams)
        return x
    if isinstance(module, ResBlock):
        return x + run_streams(module.body, x, streams)
    if isinstance(module, nn.Conv2d):
        assert module.groups == len(STREAMS), 'run_streams: convolutions must be grouped by stream'
        sel = list(streams)
        wt = module.weight.view(3, -1, *module.weight.shape[1:])[sel].flatten(0, 1)
        bias = module.bias.view(3, -1)[sel].flatten() if module.bias is not None else None
        return F.conv2d(x, wt, bias, module.stride, module.padding, module.dilation, len(sel))
    return module(x)   # element-wise (activations)


def _rms_norm(f: torch.Tensor) -> torch.Tensor:
    return f * torch.rsqrt(f.pow(2).mean(1, keepdim=True) + _NORM_EPS)


class ResBlock(nn.Module):
    """``x + conv(act(conv(x)))`` with 3x3 (grouped) convolutions."""

    def __init__(self, channels: int, groups: int = 1) -> None:
        super().__init__()
        self.body = nn.Sequential(_conv(channels, channels, groups=groups), _act(),
                                  _conv(channels, channels, groups=groups))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.body(x)


class FlowHead(nn.Module):
    """One level of misregistration localisation: flow residual (2) and M logits (1).

    Args:
        cin: input channels.
        hidden: hidden width.
        k_in: kernel size of the input conv.
        dilations: dilations of the two inner convs.
        global_context: add an image-mean feature vector (coarsest level).
        ctx_out: channels of the hidden state passed to the next finer level.
        extra: additional output channels (confidence of the affine fit).
        m_init: initial M logit (bias of the M output).
    """

    def __init__(self, cin: int, hidden: int, k_in: int, dilations: tuple[int, int],
                 global_context: bool, ctx_out: int, extra: int = 0, m_init: float = 0.0) -> None:
        super().__init__()
        self.inp = nn.Sequential(_conv(cin, hidden, k_in), _act())
        self.mid = nn.Sequential(_conv(hidden, hidden, dilation=dilations[0]), _act(),
                                 _conv(hidden, hidden, dilation=dilations[1]), _act())
        self.glob = nn.Conv2d(hidden, hidden, 1) if global_context else None
        self.out = _conv(hidden, 3 + extra)
        self.ctx = nn.Conv2d(hidden, ctx_out, 1)
        nn.init.zeros_(self.out.weight)
        nn.init.zeros_(self.out.bias)
        with torch.no_grad():   # first stage: M starts high (see _M_INIT_LOGIT); later stages add 0
            self.out.bias[2] = m_init

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Return ``(flow residual (2 ch), [M logit, extra...] (1 + extra ch), context)``."""
        return self.from_input(self.inp(x))

    def from_input(self, h: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """:meth:`forward` after the input convolution and its activation (``h``: ``(B, hidden, h, w)``).

        The input convolution may be computed in parts over its input channels (:func:`conv_part`).
        """
        if self.glob is not None:
            h = h + self.glob(h.mean((2, 3), keepdim=True))
        h = self.mid(h) + h
        o = self.out(h)
        return o[:, :2], o[:, 2:], self.ctx(h)


class WindowSGU(nn.Module):
    """gMLP spatial gating unit whose token mixing is a learned matrix inside ``w x w`` windows.

    ``u, v = split(proj(x))`` (half the width each); ``v`` is mixed across the ``w*w`` tokens of each
    non-overlapping window (``v'_i = sum_j W_ij v_j + b_i``, initialised to
    the identity); output ``u * v'``, projected back to the input width.
    """

    def __init__(self, channels: int, window: int) -> None:
        super().__init__()
        self.w = window
        self.proj_in = nn.Conv2d(channels, channels, 1)
        n = window * window
        self.mix = nn.Parameter(torch.eye(n))
        self.mix_bias = nn.Parameter(torch.ones(n))
        self.proj_out = nn.Conv2d(channels // 2, channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        u, v = F.leaky_relu(self.proj_in(x), _LEAK).chunk(2, 1)
        b, c, h, w = v.shape
        k = self.w
        if k > 1:
            ph, pw = (-h) % k, (-w) % k
            vp = F.pad(v, (0, pw, 0, ph), mode='replicate') if ph or pw or torch.jit.is_tracing() else v
            hh, ww = h + ph, w + pw
            t = vp.view(b, c, hh // k, k, ww // k, k).permute(0, 1, 2, 4, 3, 5).reshape(b, c, hh // k,
                                                                                      ww // k, k * k)
            t = t @ self.mix.t() + self.mix_bias
            v = t.view(b, c, hh // k, ww // k, k, k).permute(0, 1, 2, 4, 3, 5).reshape(b, c, hh, ww)
            v = v[:, :, :h, :w]
        else:
            v = v * self.mix[0, 0] + self.mix_bias[0]
        return self.proj_out(u * v)


class ModalityRetentionBlock(nn.Module):
    """Correlation + multi-window gMLP + visible channel / IR spatial attention -> (alpha, b).

    Args:
        feat: channels of each modality's features.
        width: internal width.
        windows: gMLP window sizes.
    """

    def __init__(self, feat: int, width: int, windows: tuple[int, ...]) -> None:
        super().__init__()
        self.fuse_in = nn.Sequential(_conv(18 + 3 * feat, width, 1), _act())
        self.sgus = nn.ModuleList(WindowSGU(width, w) for w in windows)
        self.merge_logits = nn.Parameter(torch.zeros(len(windows)))
        self.vis_ca = nn.Sequential(nn.Conv2d(feat, max(feat // 2, 4), 1), nn.ReLU(inplace=True),
                                    nn.Conv2d(max(feat // 2, 4), feat, 1))
        self.ir_sa = nn.Conv2d(2, 1, 7, padding=3)
        self.out = nn.Sequential(_conv(width + 2 * feat, width, 1), _act(), _conv(width, 2))
        nn.init.zeros_(self.out[-1].weight)
        with torch.no_grad():
            self.out[-1].bias.copy_(torch.tensor([0.5, 0.0]))

    def forward(self, fused_w: torch.Tensor, vis: torch.Tensor, ir_w: torch.Tensor) -> torch.Tensor:
        """``(B, 2, h, w)`` (gain, bias) from the warped fused, visible and warped thermal features."""
        return self.fused_part(fused_w, vis, ir_w, self.source_part(vis, ir_w))

    def source_part(self, vis: torch.Tensor, ir_w: torch.Tensor) -> torch.Tensor:
        """The block's work on the sources alone (no fused features).

        The visible channel attention, the IR spatial attention and the shares of the
        visible and thermal features in the input and output convolutions.

        Args:
            vis, ir_w: ``(B, feat, h, w)`` visible and warped thermal features.

        Returns:
            ``(B, 2 * width, h, w)``: the two convolutions' pre-activations without the fused
            features' share, for :meth:`fused_part`.
        """
        c = vis.shape[1]
        width = self.fuse_in[0].out_channels
        n = 18 + c   # the input convolution takes [correlations (18), fused_w, vis, ir_w]
        pre_in = conv_part(self.fuse_in[0], torch.cat([vis, ir_w], 1), slice(n, n + 2 * c), bias=True)
        vis_a = vis * torch.sigmoid(self.vis_ca(vis.mean((2, 3), keepdim=True)))
        stat = torch.cat([ir_w.amax(1, keepdim=True), ir_w.mean(1, keepdim=True)], 1)
        ir_a = ir_w * torch.sigmoid(self.ir_sa(stat))
        pre_out = conv_part(self.out[0], torch.cat([vis_a, ir_a], 1), slice(width, width + 2 * c), bias=True)
        return torch.cat([pre_in, pre_out], 1)

    def fused_part(self, fused_w: torch.Tensor, vis: torch.Tensor, ir_w: torch.Tensor, pre: torch.Tensor
                   ) -> torch.Tensor:
        """:meth:`forward` given :meth:`source_part` (``pre``) of the same ``vis`` and ``ir_w``."""
        c = vis.shape[1]
        width = self.fuse_in[0].out_channels
        corr = torch.cat([local_correlation(fused_w, vis, 1), local_correlation(fused_w, ir_w, 1)], 1)
        x = self.fuse_in[1](pre[:, :width] + conv_part(self.fuse_in[0], torch.cat([corr, fused_w], 1),
                                                       slice(0, 18 + c), bias=False))
        a = torch.softmax(self.merge_logits, 0)
        x = x + sum(a[i] * sgu(x) for i, sgu in enumerate(self.sgus))
        h = self.out[1](pre[:, width:] + conv_part(self.out[0], x, slice(0, width), bias=False))
        return self.out[2](h)


class SourceParts(NamedTuple):
    """The fields of :meth:`Corrector.sources`'s tuple after the per-level features and edges.

    Attributes:
        small: ``(B, 2, Hp/q, Wp/q)`` ``q x q`` block means of visible and thermal (``q = gcd(s, 4)``;
            the padded images when ``q = 1``).
        moments: :func:`source_moments` (``refuse``), else empty.
        phi: the first stage's start flow (px of its level).
        ft_w: the thermal features of the first stage's level warped by ``phi``.
        nv: the visible features of that level, RMS-normalised.
        head_in: the sources' share of the first head's input convolution (with its bias).
        mrb_in: :meth:`ModalityRetentionBlock.source_part` (one fixed stage), else empty.
        gated: ``[flow * gate (px of the input), gate]`` of the finest level (one fixed stage), else empty.
    """

    small: torch.Tensor
    moments: torch.Tensor
    phi: torch.Tensor
    ft_w: torch.Tensor
    nv: torch.Tensor
    head_in: torch.Tensor
    mrb_in: torch.Tensor
    gated: torch.Tensor


class Corrector(nn.Module):
    """Post-registration corrector (see the module docstring).

    Args:
        cfg: hyper-parameters.

    Shape:
        - fused, visible, thermal: ``(B, 1, H, W)`` float32 in [0, 1], any ``H, W >= 1``.
        - output: :class:`CorrectorOutput`.

    Example:
        >>> m = Corrector(CorrectorArchitecture()).eval()
        >>> x = torch.rand(1, 1, 37, 50)
        >>> out = m(x, x, x)
        >>> out.image.shape, out.flow.shape
        (torch.Size([1, 1, 37, 50]), torch.Size([1, 2, 37, 50]))
    """

    def __init__(self, cfg: CorrectorArchitecture | None = None) -> None:
        super().__init__()
        self.cfg = cfg = cfg or CorrectorArchitecture()
        s, w = cfg.stem_stride, cfg.widths
        stem_in = 3 * s * s
        # stride > 1: the 1x1 conv over the unshuffled s x s blocks is an s x s patch embedding.
        stem: list[nn.Module] = [_conv(stem_in, 3 * w[0], 1 if s > 1 else 3, groups=3), _act()]
        if s == 1:
            stem += [_conv(3 * w[0], 3 * w[0], groups=3), _act()]
        self.stem = nn.Sequential(*stem)
        self.down = nn.ModuleList(
            nn.Sequential(_conv(3 * w[i - 1], 3 * w[i], stride=2, groups=3), _act(),
                          _conv(3 * w[i], 3 * w[i], groups=3), _act())
            for i in range(1, cfg.levels))
        self.blocks = nn.ModuleList(
            nn.Sequential(*(ResBlock(3 * w[i], groups=3) for _ in range(cfg.blocks)))
            for i in range(cfg.levels))
        ctx = 8
        heads = []
        coarsest = cfg.levels - 1
        for k, lvl in enumerate(cfg.stages):
            r = cfg.radii[lvl]
            re = cfg.edge_radii[lvl]
            cand = 4 if lvl == coarsest else 2   # soft arg-max flow candidates: local (+ global)
            cin = (2 * r + 1) ** 2 + (2 * re + 1) ** 2 + 9 + 3 * w[lvl] + cand + (0 if k == 0 else 3 + ctx)
            heads.append(FlowHead(cin, cfg.heads[lvl], cfg.head_in_kernel[lvl], cfg.dilations[lvl],
                                  lvl == coarsest, ctx, extra=int(lvl == coarsest and cfg.global_affine),
                                  m_init=_M_INIT_LOGIT if k == 0 else 0.0))
        self.heads = nn.ModuleList(heads)
        self.log_temp = nn.Parameter(torch.full((len(heads),), math.log(_SOFTARGMAX_TEMP)))
        if cfg.output not in OUTPUTS:
            raise ValueError(f'CorrectorArchitecture.output must be one of {OUTPUTS}, got {cfg.output!r}')
        self.mrb = ModalityRetentionBlock(w[0], cfg.mrb_width, cfg.windows)
        if cfg.output == 'refuse':
            self.reset_retention_gain()

    def reset_retention_gain(self) -> None:
        """Set the retention block's first output to 0 (``refuse``: gain ``1 + 0`` on ``beta``).

        Used at construction and when fine-tuning ``refuse`` from ``retain`` weights, whose first
        output is the visible gain ``alpha`` of the other formula.
        """
        last = self.mrb.out[-1]
        with torch.no_grad():
            last.weight[0].zero_()
            last.bias[0].zero_()

    def _start_flow(self, image_hw: tuple[int, int], params: torch.Tensor | None,
                    init_flow: torch.Tensor | None, like: torch.Tensor, padded_hw: tuple[int, int]
                    ) -> torch.Tensor:
        """Flow the coarsest stage starts from, ``(B, 2, h_l, w_l)`` in pixels of that level.

        From ``init_flow`` if given, else from the gated similarity ``params``.
        """
        h, w = image_hw
        hl, wl = like.shape[-2:]
        stride = padded_hw[0] // hl
        if init_flow is not None:
            ph, pw = padded_hw[0] - h, padded_hw[1] - w
            ip = F.pad(init_flow, (0, pw, 0, ph), mode='replicate') if ph or pw else init_flow
            return F.avg_pool2d(ip, stride) / stride
        # The field evaluated at the level's cell centres (padding is at the bottom/right, so
        # cell i is centred on input pixel coordinate (i + 0.5) * stride).
        return field_on_grid(params, (h, w), size=(hl, wl), cell=stride) / stride

    def skips(self, params: torch.Tensor, image_hw: tuple[int, int]) -> bool:
        """Whether a frame with gated similarity ``params`` is returned unchanged (``skip_aligned``)."""
        cfg = self.cfg
        if not (cfg.skip_aligned and cfg.global_align and not cfg.refine and cfg.min_shift > 0):
            return False
        if self.training or torch.jit.is_tracing():
            return False
        return bool((max_shift(params, image_hw) <= cfg.min_shift - 4 * cfg.min_shift_width).all())

    def align(self, visible: torch.Tensor, thermal: torch.Tensor) -> torch.Tensor | None:
        """Gated global similarity parameters ``(B, 4)`` the forward pass starts from (torch).

        None without ``cfg.global_align``. No learned weights are involved (no gradient).
        The runners call :func:`global_params` with the CPU solvers instead.
        """
        return global_params(self, visible, thermal)

    def config_dict(self) -> dict:
        """Hyper-parameters as a plain dict (for model cards)."""
        return asdict(self.cfg)

    def stem_and_pool(self, x: torch.Tensor, streams: tuple[int, ...] = STREAMS
                      ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """Stem features, the ``s x s`` block means and the ``q x q`` block means of the inputs.

        ``s`` is the stem stride, ``q = gcd(s, 4)`` the cell of :func:`thermal_weight`'s products.

        Args:
            x: ``(B, len(streams), Hp, Wp)`` padded planes of the modality streams ``streams``
                (0 visible, 1 fused, 2 thermal; multiples of ``s``).
            streams: which streams ``x`` holds, in order.

        Returns:
            ``(features (B, len(streams) * widths[0], Hp/s, Wp/s), means (B, len(streams), Hp/s, Wp/s),
            fine means (B, len(streams), Hp/q, Wp/q) or None when q = 1)``; the means equal
            ``F.avg_pool2d(x, s)`` and ``F.avg_pool2d(x, q)`` to float rounding.
        """
        s = self.cfg.stem_stride
        if s == 1:
            return run_streams(self.stem, x, streams), x, None
        # The 1x1 grouped conv over pixel-unshuffled s x s blocks is, per plane, a matrix product
        # of the (s*s)-vectors of the blocks with the weights viewed as (out, s*s). The s x s and
        # the q x q block means ride along as more output columns (weights 1/s^2 and 1/q^2 on
        # their pixels), so the full-resolution input is read once. At 640x480 on 2 threads
        # 0.7 ms against 2.9 ms for the per-plane stride-s convolutions plus the q x q pooling
        # (oneDNN is slow on one-channel convolutions; docs/performance.md).
        conv, act = self.stem   # stride > 1: exactly [conv, act]
        k = conv.out_channels // 3
        n = len(streams)
        q = math.gcd(s, _BETA_POOL)
        m = s // q if q > 1 else 0
        b, _, hp, wp = x.shape
        h, w = hp // s, wp // s
        sub = _sub_block_weights(s, q).to(x.device, x.dtype)   # a constant in traced graphs
        sel = list(streams)
        wt = torch.cat([conv.weight.view(3, k, s * s)[sel],
                        conv.weight.new_full((n, 1, s * s), 1.0 / (s * s)),
                        sub.view(1, m * m, s * s).expand(n, -1, -1)], 1)     # (n, k + 1 + m*m, s*s)
        bias = torch.cat([conv.bias.view(3, k)[sel], conv.bias.new_zeros(n, 1 + m * m)], 1).unsqueeze(1)
        blocks = x.reshape(b, n, h, s, w, s).permute(0, 1, 2, 4, 3, 5).reshape(b, n, h * w, s * s)
        y = torch.matmul(blocks, wt.transpose(1, 2)) + bias        # (B, n, h*w, k + 1 + m*m)
        feats = act(y[..., :k].permute(0, 1, 3, 2).reshape(b, n * k, h, w))
        means = y[..., k].reshape(b, n, h, w)
        if not m:
            return feats, means, None
        fine = y[..., k + 1:].reshape(b, n, h, w, m, m).permute(0, 1, 2, 4, 3, 5).reshape(b, n, h * m, w * m)
        return feats, means, fine

    def _encode(self, x: torch.Tensor, streams: tuple[int, ...]
                ) -> tuple[list[torch.Tensor], torch.Tensor, torch.Tensor | None]:
        """Encoder features per level (finest first) of the streams in ``x``, and the stem's block means."""
        stem, means, fine = self.stem_and_pool(x, streams)
        feats = [stem]
        for d in self.down:
            feats.append(run_streams(d, feats[-1], streams))
        if self.cfg.blocks:
            feats = [run_streams(blk, f, streams) for blk, f in zip(self.blocks, feats)]
        return feats, means, fine

    def _first_head_channels(self) -> tuple[list[int], list[int]]:
        """Input channels of the first stage's head that the sources give, and those of the fused image.

        The head's input is ``[corr(Y, T_w), corr_edges, corr(F_w, Y), candidate, Y, F_w, T_w
        (, global candidate)]``; the second list is ``corr(F_w, Y)`` and ``F_w``.
        """
        cfg = self.cfg
        lvl = cfg.stages[0]
        c = cfg.widths[lvl]
        a = (2 * cfg.radii[lvl] + 1) ** 2 + (2 * cfg.edge_radii[lvl] + 1) ** 2
        total = self.heads[0].inp[0].in_channels
        fused = list(range(a, a + 9)) + list(range(a + 9 + 2 + c, a + 9 + 2 + 2 * c))
        return [i for i in range(total) if i not in fused], fused

    def _one_fixed_stage(self, init_flow: torch.Tensor | None) -> bool:
        """One estimation stage whose flow is its start (``corrector_lite``): no fused image in the flow."""
        cfg = self.cfg
        return len(cfg.stages) == 1 and not cfg.refine and (cfg.global_align or init_flow is not None)

    def sources(self, yt: torch.Tensor, image_hw: tuple[int, int], params: torch.Tensor | None,
                init_flow: torch.Tensor | None = None) -> tuple[torch.Tensor, ...]:
        """The learned stages' work that needs only the sources (not the fused image).

        :meth:`fields` is ``fused_fields(F, sources(Y, T))``; the pipeline can run this part
        while the fusion runs. It holds the visible and thermal streams of the encoder, the edge
        descriptors, the first stage's start flow, correlations and the sources' share of its
        head's input convolution, and the sources' moments of :func:`thermal_weight`. With one
        stage whose flow is its start (``corrector_lite``), also the flow's gate and the retention
        block's work on the sources (:meth:`ModalityRetentionBlock.source_part`).

        Args:
            yt: ``(B, 2, Hp, Wp)`` visible and thermal, padded to ``cfg.multiple``.
            image_hw, params, init_flow: as in :meth:`fields`.

        Returns:
            A flat tuple of tensors for :meth:`fused_fields`: the visible + thermal features and
            the edge descriptors per level, then the fields of :class:`SourceParts`.
        """
        cfg = self.cfg
        h, w = image_hw
        hp, wp = yt.shape[-2:]
        feats, means, fine = self._encode(yt, SOURCE_STREAMS)
        edges = []
        pooled = means
        for i in range(cfg.levels):
            if i:
                pooled = F.avg_pool2d(pooled, 2)
            b, _, hl, wl = pooled.shape   # both planes at once: (B*2, 1) -> (B, 4) = [e_Y, e_T]
            edges.append(edge_descriptor(pooled.reshape(b * 2, 1, hl, wl)).reshape(b, 4, hl, wl))
        lvl = cfg.stages[0]
        c = cfg.widths[lvl]
        fv, ft = feats[lvl][:, :c], feats[lvl][:, c:]
        ev, et = edges[lvl][:, :2], edges[lvl][:, 2:]
        if init_flow is None and not cfg.global_align:
            phi0 = torch.zeros_like(fv[:, :2])
            ft_w, et_w = ft, et
        else:
            phi0 = self._start_flow((h, w), params, init_flow, fv, (hp, wp))
            wrp = warp_by_flow(torch.cat([ft, et], 1), phi0)
            ft_w, et_w = wrp[:, :c], wrp[:, c:]
        nv = _rms_norm(fv)
        cost_e = local_correlation(ev, et_w, cfg.edge_radii[lvl])
        temp = self.log_temp[0].exp()
        parts = [local_correlation(nv, _rms_norm(ft_w), cfg.radii[lvl]), cost_e,
                 soft_argmax_offset(cost_e, cfg.edge_radii[lvl], temp, _SOFTARGMAX_WINDOW), fv, ft_w]
        if lvl == cfg.levels - 1:
            glob = soft_argmax_offset(cost_e.mean((2, 3), keepdim=True), cfg.edge_radii[lvl], temp)
            parts.append(glob.expand_as(cost_e[:, :2]))
        head_in = conv_part(self.heads[0].inp[0], torch.cat(parts, 1), self._first_head_channels()[0],
                            bias=True)
        none = means.new_zeros(0)
        small = fine if fine is not None else yt
        moments = source_moments(means, small, cfg.stem_stride) if cfg.output == 'refuse' else none
        mrb_in = gated = none
        if self._one_fixed_stage(init_flow):   # the finest flow is phi0: the gate and the MRB's inputs
            flow_px = phi0 * torch.tensor([wp / phi0.shape[-1], hp / phi0.shape[-2]], dtype=yt.dtype,
                                          device=yt.device).view(1, 2, 1, 1)
            gate = shift_gate(flow_px, cfg.min_shift, cfg.min_shift_width)
            gated = torch.cat([flow_px * gate, gate], 1)
            mrb_in = self.mrb.source_part(fv, ft_w)
        return (*feats, *edges, *SourceParts(small, moments, phi0, ft_w, nv, head_in, mrb_in, gated))

    def fused_fields(self, f: torch.Tensor, src: tuple[torch.Tensor, ...],
                     init_flow: torch.Tensor | None = None
                     ) -> tuple[torch.Tensor, list[torch.Tensor], list[torch.Tensor]]:
        """The learned stages given :meth:`sources`: ``f`` ``(B, 1, Hp, Wp)`` the padded fused image.

        ``src`` must come from :meth:`sources` of the same frame, size and ``init_flow``.
        Returns as :meth:`fields`.
        """
        cfg = self.cfg
        hp, wp = f.shape[-2:]
        nl = cfg.levels
        src_feats, edges = src[:nl], src[nl:2 * nl]
        sp = SourceParts(*src[2 * nl:])
        ffeats, mean_f, small_f = self._encode(f, FUSED_STREAMS)
        # per level [Y, F, T] streams, as the grouped convolutions order them
        feats = [torch.cat([sv[:, :fl.shape[1]], fl, sv[:, fl.shape[1]:]], 1)
                 for sv, fl in zip(src_feats, ffeats)]

        # Stages run coarsest first; lists are filled finest first (index = len - 1 - k).
        n = len(cfg.stages)
        flows: list[torch.Tensor] = [torch.empty(0)] * n   # px of the stage's level
        logits: list[torch.Tensor] = [torch.empty(0)] * n
        ctx = torch.empty(0)
        coarsest = nl - 1
        prev_lvl = -1
        fixed = not cfg.refine and (cfg.global_align or init_flow is not None)
        for k, i in enumerate(cfg.stages):
            j = n - 1 - k
            fv, ff, ft = feats[i].chunk(3, 1)
            if k == 0:
                # the sources' share of the head's input is in sp.head_in (see sources())
                phi0 = sp.phi
                lg0 = torch.zeros_like(fv[:, :1])
                ff_w = ff if init_flow is None and not cfg.global_align else warp_by_flow(ff, phi0)
                rest = torch.cat([local_correlation(_rms_norm(ff_w), sp.nv, 1), ff_w], 1)
                head = self.heads[0]
                rest_in = conv_part(head.inp[0], rest, self._first_head_channels()[1], bias=False)
                dphi, dlg, ctx = head.from_input(head.inp[1](sp.head_in + rest_in))
            else:
                ev, et = edges[i][:, :2], edges[i][:, 2:]
                c = fv.shape[1]
                if i == prev_lvl:
                    phi0, lg0 = flows[j + 1], logits[j + 1]
                else:
                    size = tuple(fv.shape[-2:])
                    phi0 = compose_flow(flows[j + 1], torch.zeros_like(fv[:, :2]))
                    lg0 = F.interpolate(logits[j + 1], size=size, mode='bilinear', align_corners=False)
                    ctx = F.interpolate(ctx, size=size, mode='bilinear', align_corners=False)
                # streams are ordered [Y, F, T]: F and T are one slice; one warp for all
                wrp = warp_by_flow(torch.cat([feats[i][:, c:], et], 1), phi0)
                ff_w, ft_w, et_w = wrp[:, :c], wrp[:, c:2 * c], wrp[:, 2 * c:]
                nv, nf, nt = _rms_norm(fv), _rms_norm(ff_w), _rms_norm(ft_w)
                cost_e = local_correlation(ev, et_w, cfg.edge_radii[i])
                temp = self.log_temp[k].exp()
                parts = [local_correlation(nv, nt, cfg.radii[i]), cost_e, local_correlation(nf, nv, 1),
                         soft_argmax_offset(cost_e, cfg.edge_radii[i], temp, _SOFTARGMAX_WINDOW),
                         fv, ff_w, ft_w]
                if i == coarsest:
                    glob = soft_argmax_offset(cost_e.mean((2, 3), keepdim=True), cfg.edge_radii[i], temp)
                    parts.append(glob.expand_as(cost_e[:, :2]))
                parts += [phi0 * _FLOW_INPUT_SCALE, lg0, ctx]
                dphi, dlg, ctx = self.heads[k](torch.cat(parts, 1))
            logits[j] = lg0 + dlg[:, :1]
            if fixed:
                flows[j] = phi0   # the start is the flow; the heads give M and context only
            else:
                flows[j] = phi0 + dphi
                if i == coarsest and cfg.global_affine:
                    flows[j] = affine_fit(flows[j], torch.sigmoid(dlg[:, 1:2]), _AFFINE_ITERS,
                                          _AFFINE_SCALE)
            prev_lvl = i

        fv, ff, ft = feats[0].chunk(3, 1)
        m0 = torch.sigmoid(logits[0])
        ff_w = bidirectional_warp(ff, flows[0], m0)
        if self._one_fixed_stage(init_flow):   # flow, gate and the MRB's source part from sources()
            ab = self.mrb.fused_part(ff_w, fv, sp.ft_w, sp.mrb_in)
            flow_gated, gate = sp.gated[:, :2], sp.gated[:, 2:]
        else:
            ab = self.mrb(ff_w, fv, warp_by_flow(ft, flows[0]))
            # Full resolution: one upsampling of [flow * stride, M, gain, b], one warp of [F, Y]
            # (retain) or of T (refuse).
            sh, sw = hp / flows[0].shape[-2], wp / flows[0].shape[-1]
            flow_px = flows[0] * torch.tensor([sw, sh], dtype=f.dtype, device=f.device).view(1, 2, 1, 1)
            gate = shift_gate(flow_px, cfg.min_shift, cfg.min_shift_width)
            flow_gated = flow_px * gate
        if cfg.output == 'refuse':
            beta = thermal_weight_from(sp.moments, mean_f, small_f if small_f is not None else f, sp.small,
                                       cfg.stem_stride)
            gain = beta * (1.0 + ab[:, :1])
        else:
            gain = ab[:, :1]
        low = torch.cat([flow_gated, m0 * gate, gain, ab[:, 1:] * gate], 1)
        return low, flows, logits

    def fields(self, x: torch.Tensor, image_hw: tuple[int, int], params: torch.Tensor | None,
               init_flow: torch.Tensor | None = None
               ) -> tuple[torch.Tensor, list[torch.Tensor], list[torch.Tensor]]:
        """The learned stages: padded inputs -> low-resolution fields for the full-resolution step.

        ``fused_fields(F, sources(Y, T))``: the same computation in two parts, the first
        without the fused image.

        Args:
            x: ``(B, 3, Hp, Wp)`` visible, fused, thermal, padded to ``cfg.multiple``.
            image_hw: ``(H, W)`` before padding.
            params: gated similarity parameters ``(B, 4)`` (``cfg.global_align``), or None.
            init_flow: as in :meth:`forward`.

        Returns:
            ``(low, flows, logits)``: ``low`` ``(B, 5, h, w)`` at the finest level (gated flow in
            full-resolution px, gated M, gain, gated bias); per stage, finest first, the flow (px of
            its level) and the M logit.
        """
        src = self.sources(x[:, list(SOURCE_STREAMS)], image_hw, params, init_flow)
        return self.fused_fields(x[:, 1:2], src, init_flow)

    def pad_sources(self, visible: torch.Tensor, thermal: torch.Tensor) -> torch.Tensor:
        """``[visible, thermal]`` as :meth:`sources` takes them: ``(B, 2, Hp, Wp)``, padded."""
        return self._pad(torch.cat([visible, thermal], 1))

    def _pad(self, x: torch.Tensor) -> torch.Tensor:
        """Replicate-pad ``x`` at the bottom/right to multiples of ``cfg.multiple``."""
        h, w = x.shape[-2:]
        mult = self.cfg.multiple
        ph, pw = (-h) % mult, (-w) % mult
        if ph or pw or torch.jit.is_tracing():   # traced graphs keep the padding (any input size)
            x = F.pad(x, (0, pw, 0, ph), mode='replicate')
        return x

    def forward(self, fused: torch.Tensor, visible: torch.Tensor, thermal: torch.Tensor,
                aux: bool = False, init_flow: torch.Tensor | None = None) -> CorrectorOutput:
        """Correct ``fused``; see the class docstring for shapes.

        Plain torch: the reference that training and export use. The pipeline's runner calls
        :func:`correct` with the CPU fast paths and the traced learned stages instead.
        ``init_flow`` (``(B, 2, H, W)``, pixels) replaces the start of the
        coarsest stage (zero, or the global registration when
        ``cfg.global_align``); used by tests and experiments.
        """
        return correct(self, fused, visible, thermal, aux=aux, init_flow=init_flow)


def _use_opencv(model: Corrector, requested: bool, low: torch.Tensor) -> bool:
    """Whether the full-resolution step runs in OpenCV: requested and eager CPU float32 inference."""
    return requested and not model.training and opencv_eligible(low)


def global_params(model: Corrector, visible: torch.Tensor, thermal: torch.Tensor, opencv: bool = False,
                  native: bool = False) -> torch.Tensor | None:
    """:meth:`Corrector.align` with the solvers the runners choose (all off: torch).

    ``opencv`` solves with numpy/OpenCV in eager CPU inference
    (:func:`~.global_align.estimate_similarity_cv`; parameters within ~2e-4 px of torch),
    ``native`` with the fused C kernels when available
    (:func:`~.global_align.estimate_similarity_native`, same values to ~1e-4 px).
    """
    if not model.cfg.global_align:
        return None
    with torch.no_grad():
        eager = not model.training
        return gated_similarity(visible, thermal, model.cfg.align, opencv=opencv and eager,
                                native=native and eager)


def prepare(model: Corrector, visible: torch.Tensor, thermal: torch.Tensor, opencv: bool = False,
            native: bool = False, sources: Callable[..., tuple[torch.Tensor, ...]] | None = None
            ) -> tuple[torch.Tensor | None, tuple[torch.Tensor, ...] | None]:
    """Everything of :func:`correct` that needs only the sources: ``(align_params, sources)``.

    The global registration (:func:`global_params`, ``opencv`` / ``native`` as there) and
    :meth:`Corrector.sources`; the pipeline runs this while the fusion runs. ``sources`` is None
    when the frame is skipped (found aligned, :meth:`Corrector.skips`) or without
    ``cfg.global_align`` (then the parameters are None too). ``sources`` (the argument)
    replaces :meth:`Corrector.sources` (a traced copy).
    """
    h, w = visible.shape[-2:]
    params = global_params(model, visible, thermal, opencv, native)
    if params is not None and model.skips(params, (h, w)):
        return params, None
    with torch.no_grad():
        return params, (sources or model.sources)(model.pad_sources(visible, thermal), (h, w), params)


def correct(model: Corrector, fused: torch.Tensor, visible: torch.Tensor, thermal: torch.Tensor,
            aux: bool = False, init_flow: torch.Tensor | None = None, opencv: bool = False,
            align_params: torch.Tensor | None = None,
            sources: tuple[torch.Tensor, ...] | None = None,
            stages: tuple[Callable[..., tuple[torch.Tensor, ...]],
                          Callable[..., tuple[torch.Tensor, list[torch.Tensor], list[torch.Tensor]]]]
            | None = None, native: bool = False, native_threads: int | None = None) -> CorrectorOutput:
    """:meth:`Corrector.forward` with the fast paths the runners choose (all off: the forward).

    ``opencv`` runs the full-resolution step and the global registration with OpenCV
    (:func:`full_resolution_cv`, :func:`~.global_align.estimate_similarity_cv`;
    honoured in eager CPU float32 inference only; otherwise the torch code runs).
    ``align_params`` (``(B, 4)``) are the gated similarity parameters of this frame computed
    beforehand (:func:`global_params`), so the pipeline can run the global registration in
    its first stage; None computes them here. ``sources``: this frame's
    :meth:`Corrector.sources` computed beforehand with those parameters (:func:`prepare`);
    None computes them here. ``stages`` replaces :meth:`Corrector.sources` and
    :meth:`Corrector.fused_fields` (the runner passes traced, frozen copies: same values,
    less overhead). ``native`` runs the full-resolution step as one fused C pass
    (:func:`full_resolution_native`; honoured for one frame in eager CPU float32 inference
    when the kernels are available; else ``opencv`` decides), and the global registration as
    one C call; ``native_threads``: the threads of that C pass (default 1).
    """
    cfg = model.cfg
    h, w = fused.shape[-2:]
    params = None
    if cfg.global_align and init_flow is None:
        params = (global_params(model, visible, thermal, opencv, native) if align_params is None
                  else align_params)
        # prepare() gives sources only for frames it did not skip (same parameters): no second check
        if sources is None and model.skips(params, (h, w)):
            zero = torch.zeros_like(fused)
            return CorrectorOutput(fused, zero, torch.cat([zero, zero], 1), [], [], [])
    sources_fn, fused_fn = stages or (model.sources, model.fused_fields)
    if sources is None:
        sources = sources_fn(model.pad_sources(visible, thermal), (h, w), params, init_flow)
    fpad = model._pad(fused)
    hp, wp = fpad.shape[-2:]
    low, flows, logits = fused_fn(fpad, sources, init_flow)
    n = len(cfg.stages)
    if native and low.shape[0] == 1 and _use_opencv(model, True, low) and native_kernels.available():
        out, m, flow = full_resolution_native(low, fused, visible, (hp, wp), thermal, cfg.output,
                                              native_threads)
    elif _use_opencv(model, opencv, low):
        out, m, flow = full_resolution_cv(low, fused, visible, (hp, wp), thermal, cfg.output)
    else:
        out, m, flow = full_resolution(low, fused, visible, (hp, wp), thermal, cfg.output)

    flows_full, masks, warped = [], [], []
    for i in range(n):
        fh, fw = flows[i].shape[-2:]
        scale = torch.tensor([wp / fw, hp / fh], dtype=fpad.dtype, device=fpad.device).view(1, 2, 1, 1)
        flows_full.append(flows[i] * scale)
        masks.append(torch.sigmoid(logits[i]))
    if aux or model.training:
        for i in range(n):
            stride = hp // flows[i].shape[-2]
            fl = F.avg_pool2d(fpad, stride) if stride > 1 else fpad
            warped.append(bidirectional_warp(fl, flows[i], masks[i]))
    return CorrectorOutput(out, m, flow, flows_full, masks, warped)


def full_resolution(low: torch.Tensor, fused: torch.Tensor, visible: torch.Tensor,
                    padded_hw: tuple[int, int], thermal: torch.Tensor | None = None,
                    output: str = 'retain') -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The corrector's full-resolution step: upsample the low-resolution fields, warp, form the image.

    Args:
        low: ``(B, 5, h, w)`` finest-level fields: gated flow (x, y; full-resolution pixels),
            gated M, gain (``retain``: MRB gain alpha; ``refuse``: ``g * beta``), gated MRB
            bias, on the padded frame's grid (``h, w`` = ``padded_hw`` / stem stride).
        fused, visible, thermal: ``(B, 1, H, W)`` in [0, 1] (``thermal`` only for ``refuse``).
        padded_hw: ``(Hp, Wp)`` the padded size (``>= (H, W)``; padding at the bottom/right).
        output: ``retain`` or ``refuse`` (:class:`CorrectorArchitecture`).

    Returns:
        ``(image, M, flow)``: ``(B, 1, H, W)`` corrected image in [0, 1], ``(B, 1, H, W)`` M,
        ``(B, 2, H, W)`` flow in pixels. With ``warp_M`` the M-gated bidirectional warp,
        ``retain``: ``image = warp_M([F, Y])_F + alpha * (Y - warp_M([F, Y])_Y) + bias``;
        ``refuse``: ``image = F + gain * (warp_M(T) - T) + bias``.
    """
    h, w = fused.shape[-2:]
    if low.shape[-2:] != padded_hw:
        low = F.interpolate(low, size=padded_hw, mode='bilinear', align_corners=False)
    if padded_hw != (h, w) or torch.jit.is_tracing():
        low = low[..., :h, :w]
    flow, m, gain, bias = low[:, :2], low[:, 2:3], low[:, 3:4], low[:, 4:5]
    if output == 'refuse':
        if thermal is None:
            raise ValueError("full_resolution: output 'refuse' needs the thermal image")
        out = fused + gain * (bidirectional_warp(thermal, flow, m) - thermal) + bias
    else:
        wy = bidirectional_warp(torch.cat([fused, visible], 1), flow, m)
        out = wy[:, :1] + gain * (visible - wy[:, 1:]) + bias
    return out.clamp(0.0, 1.0), m, flow


def _upsample_into(src: np.ndarray, padded_hw: tuple[int, int], dst: np.ndarray) -> None:
    """Upsample the plane ``src`` bilinearly to ``padded_hw``; write its top-left crop into ``dst``."""
    hp, wp = padded_hw
    if src.shape == (hp, wp):
        np.copyto(dst, src[:dst.shape[0], :dst.shape[1]])
    elif dst.shape == (hp, wp):
        cv2.resize(src, (wp, hp), dst=dst, interpolation=cv2.INTER_LINEAR)
    else:
        tmp = scratch('corrector.up', (hp, wp))
        cv2.resize(src, (wp, hp), dst=tmp, interpolation=cv2.INTER_LINEAR)
        np.copyto(dst, tmp[:dst.shape[0], :dst.shape[1]])


def full_resolution_cv(low: torch.Tensor, fused: torch.Tensor, visible: torch.Tensor,
                       padded_hw: tuple[int, int], thermal: torch.Tensor | None = None,
                       output: str = 'retain') -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """:func:`full_resolution` with OpenCV (CPU float32 inference; same arguments and results).

    ``cv2.resize`` (bilinear, half-pixel centres: equal to ``F.interpolate`` with
    ``align_corners=False`` to 2e-7) and :func:`~.warp.bidirectional_warp_cv`
    (sampling positions quantised to 1/32 px): outputs within 0.006 of the torch
    step on real frames (75 dB). Only the three results are new arrays (the
    intermediates are per-thread :func:`~.warp.scratch` arrays); they are float32
    tensors sharing memory with numpy arrays. ``refuse`` warps one plane (T), ``retain`` two.
    """
    if output == 'refuse' and thermal is None:
        raise ValueError("full_resolution_cv: output 'refuse' needs the thermal image")
    h, w = fused.shape[-2:]
    outs, ms, flows = [], [], []
    for b in range(low.shape[0]):
        lo = low[b].contiguous().numpy()   # (5, h_l, w_l): flow x, y, M, gain, bias
        flow = np.empty((2, h, w), np.float32)
        m = np.empty((h, w), np.float32)
        gain, bias = scratch('corrector.gain', (h, w)), scratch('corrector.bias', (h, w))
        for c, dst in enumerate((flow[0], flow[1], m, gain, bias)):
            _upsample_into(lo[c], padded_hw, dst)
        if output == 'refuse':
            t = thermal[b, 0].numpy()
            wt = bidirectional_warp_cv((t,), flow, m, out=scratch('corrector.wt', (1, h, w)))
            out = np.subtract(wt[0], t)
            out *= gain
            out += fused[b, 0].numpy()
        else:
            vis = visible[b, 0].numpy()
            wy = bidirectional_warp_cv((fused[b, 0].numpy(), vis), flow, m,
                                       out=scratch('corrector.wy', (2, h, w)))
            out = np.subtract(vis, wy[1])
            out *= gain
            out += wy[0]
        out += bias
        np.clip(out, 0.0, 1.0, out=out)
        outs.append(torch.from_numpy(out)[None, None])
        ms.append(torch.from_numpy(m)[None, None])
        flows.append(torch.from_numpy(flow)[None])
    if len(outs) == 1:   # no copies for the usual single frame
        return outs[0], ms[0], flows[0]
    return torch.cat(outs), torch.cat(ms), torch.cat(flows)


def full_resolution_native(low: torch.Tensor, fused: torch.Tensor, visible: torch.Tensor,
                           padded_hw: tuple[int, int], thermal: torch.Tensor | None = None,
                           output: str = 'retain', threads: int | None = None
                           ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """:func:`full_resolution` for one CPU float32 frame in one fused C pass (same arguments and results).

    :func:`ros2_regionfuse.native.corrector_full_resolution`: exact bilinear sampling
    as ``grid_sample``, so within ~1e-6 of the torch step (OpenCV's ``remap``
    quantises positions to 1/32 px). The results are new arrays shared with the tensors.
    ``threads``: rows split over this many threads (same values; default 1). Only where the cores
    are otherwise idle: right after torch operations with more than one thread, libgomp's workers
    spin on the other cores, and the split was slower (15.68 vs 16.23 ms per 640x480 frame, 10 of 12
    paired rounds; docs/performance.md).
    """
    if output == 'refuse' and thermal is None:
        raise ValueError("full_resolution_native: output 'refuse' needs the thermal image")
    refuse = output == 'refuse'
    img, m, flow = native_kernels.corrector_full_resolution(
        low[0].contiguous().numpy(), padded_hw, fused[0, 0].contiguous().numpy(),
        None if refuse else visible[0, 0].contiguous().numpy(),
        thermal[0, 0].contiguous().numpy() if refuse else None, refuse,
        1 if threads is None else threads)
    return (torch.from_numpy(img)[None, None], torch.from_numpy(m)[None, None],
            torch.from_numpy(flow)[None])


@register_corrector('corrector_multiscale')
def corrector_multiscale() -> Corrector:
    """Multi-scale variant: learned stages at 1/16 (two) and 1/8, the global registration the flow.

    ``refine=False``: the global similarity registration is the flow. The learned stages give
    M and the Modality Retention Block's inputs; 41.8 ms against 15.8 ms for
    ``corrector_lite`` (see there). Deprecated alias: ``corrector_fast``.

    Why no learned flow residual: on held-in RoadScene pairs (40, synthetic 8 / 16 px) the
    residual lowers the recovered error from 61 / 60 % to 49 / 43 % and raises the flow EPE
    from 25 / 21 % to 34 / 36 % of the shift; on the evaluation pairs it doubles the
    inconsistency of the flow (consistent EPE 27 -> 45 %). The dead zone is 2 px (``min_shift``):
    on the aligned RoadScene pairs the global estimate drifts by 0.9 px on average, and a 2 px
    dead zone keeps them unchanged (59 dB vs 42 dB at 1 px) at the same recovery.
    Full resolution sees only one upsampling and one warp.
    """
    return Corrector(CorrectorArchitecture(global_align=True, refine=False, min_shift=2.0))


@register_corrector('corrector_lite')
def corrector_lite() -> Corrector:
    """One level at 1/16, the global similarity registration as the flow, the ``refuse`` output.

    ``corrector_multiscale`` spends most of its learned-stage time on work whose flow it then discards
    (two coarse stages) and on a finer level at 1/8 whose M, gain and bias are upsampled
    bilinearly anyway. Here one stage at 1/16 (40 x 30 cells at 640x480; correlation and edge
    radius 2 = +-32 px around the global start, image-wide context) gives M and the Modality
    Retention Block's inputs, and the block runs at 1/16 too. Measured at 640x480 with 2 threads
    (traced runner, global registration excluded, untrained weights: cost does not depend on
    them): 15.8 ms vs 41.8 ms for ``corrector_multiscale`` in the same run.

    Output ``refuse``: ``F + g * beta * (warp_M(T) - T) + b``, a first-order
    re-fusion with the bidirectionally warped thermal image, ``beta`` the fusion's local thermal
    weight (:func:`thermal_weight`, a least-squares fit over 48x48 px at 1/16), ``g = 1 + a`` and
    ``b`` from the Modality Retention Block: only the IR-derived content moves. Against the
    former ``retain`` output (warp the fused image, put the visible detail back) on the
    evaluation pairs: 34.8 / 50.3 % of the error removed at 8 / 16 px became 44.7 / 56.4 % with the
    same weights (gain reset to 1), and the full-resolution step warps one plane instead of two.
    """
    return Corrector(CorrectorArchitecture(stem_stride=16, widths=(24,), radii=(2,), edge_radii=(2,),
                                           heads=(32,),
                                           head_in_kernel=(3,), dilations=((1, 2),), coarse_iters=1,
                                           global_align=True, refine=False, min_shift=2.0, output='refuse'))


# Extra encoder blocks of the paper reference: with them its cost at 640x480 (234.7 GFLOPs,
# 0.62 M parameters) matches the published width-16 model (233 GFLOPs, 0.77 M).
PAPER_BLOCKS = 20


@register_corrector('corrector_paper')
def corrector_paper() -> Corrector:
    """Published configuration as a timing reference: scales 1/2 and 1, width 16.

    Modules run at full resolution; the depth is set so the cost matches the
    published 233 GFLOPs at 640x480.
    """
    return Corrector(CorrectorArchitecture(stem_stride=1, widths=(16, 16), radii=(1, 1), edge_radii=(1, 1),
                                           heads=(16, 16),
                                           head_in_kernel=(3, 3), dilations=((1, 1), (1, 1)), mrb_width=16,
                                           windows=(1, 3, 5), global_affine=False, coarse_iters=1,
                                           blocks=PAPER_BLOCKS))
