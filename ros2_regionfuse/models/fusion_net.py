"""RegionFuse-style region-adaptive fusion network (``regionfuse_*`` variants).

Design (cost-driven; facts of the paper in ../shared/README.md §2):

1. Both sources (thermal T and visible luminance Y, ``(B, 1, H, W)`` in [0, 1])
   are decomposed into Laplacian pyramids at full resolution (cheap).
2. A network reasons about regions at low resolution (pyramid level ``l_net``:
   1/8 of a 640x480 frame for ``regionfuse_fine``, 1/16 for ``regionfuse_lite``;
   one level deeper for every doubling of the size, so the token count stays
   bounded): per-modality encoders (2 MetaFormer blocks each: depthwise-conv
   token mixer + MLP), then ``stages`` x [Region Fusion
   Block (pre-norm: Norm -> MoRA -> add, Norm -> MLP -> add) -> RFCM] on the
   concatenated streams, each RFCM output added back to both streams, and a
   decoder head.
3. The head emits region-adaptive fusion parameters, upsampled to each pyramid
   level and applied with a few elementwise ops at full resolution:
   * base layer: IR weight ``w`` (sigmoid) and an additive residual ``r``;
   * each detail band: a preference bias ``b`` for the pixel-wise soft
     max-activity selection ``s = sigmoid(k * (a_T - a_Y) / (a_T + a_Y) + b)``
     (``a`` = locally averaged |detail|) and a contrast gain ``g`` (softplus).
   So fusion weights are generated from local pixel distributions (RegionFuse's
   idea) while full-resolution edges stay pixel-exact.
4. The fused luminance is returned; the caller restores colour from the RGB
   chroma (:func:`ros2_regionfuse.core.convert.replace_luminance`).

Any input size works: inputs are reflect-padded to a multiple of the pyramid
and region sizes and the output is cropped back.
"""
from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import asdict, dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .. import native as native_kernels
from .layers import ConvMlp, LayerNorm2d
from .mora import MoRA, balance_loss
from .pyramid import box_mean3, gaussian_pyramid, laplacian_pyramid, opencv_eligible, reconstruct, up_to
from .registry import register_fusion
from .rfcm import RFCM

BANDS = 4  # detail bands with their own head outputs (relative to the network level)


@dataclass
class FusionNetConfig:
    """Hyper-parameters of :class:`RegionFuseNet`."""

    width: int = 24          # channels per modality stream
    stages: int = 3          # [Region Fusion Block -> RFCM] stages
    experts: int = 4         # MoRA experts E
    top_k: int = 2           # experts per region token
    region: int = 4          # region size R at the network level (px of that level)
    value_dim: int = 8       # MoRA value channels
    qk_dim: int = 16         # MoRA query/key size per expert
    base_size: int = 640     # image size whose network level is 1/8
    sel_temperature: float = 8.0  # initial k of the detail selection


class MetaFormerBlock(nn.Module):
    """Pre-norm block: x + DWConv7x7(Norm(x)); x + MLP(Norm(x)) (the encoders' 'transformer')."""

    def __init__(self, c: int) -> None:
        super().__init__()
        self.n1, self.n2 = LayerNorm2d(c), LayerNorm2d(c)
        self.mix = nn.Conv2d(c, c, 7, padding=3, groups=c)
        self.mlp = ConvMlp(c, 2 * c)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.mix(self.n1(x))
        return x + self.mlp(self.n2(x))


class RegionFusionBlock(nn.Module):
    """Norm -> MoRA -> add, Norm -> MLP -> add on the concatenated streams."""

    def __init__(self, c: int, cfg: FusionNetConfig, stats_dim: int) -> None:
        super().__init__()
        self.n1, self.n2 = LayerNorm2d(c), LayerNorm2d(c)
        self.mora = MoRA(c, cfg.experts, cfg.top_k, cfg.region, cfg.value_dim, cfg.qk_dim,
                         stats_dim)
        self.mlp = ConvMlp(c, 2 * c)

    def forward(self, x: torch.Tensor, stats: torch.Tensor) -> torch.Tensor:
        x = x + self.mora(self.n1(x), x, stats)
        return x + self.mlp(self.n2(x))


def mix_sources(fused: torch.Tensor, thermal: torch.Tensor, visible: torch.Tensor, share: float
                ) -> torch.Tensor:
    """``(1 - share) * fused + share * (thermal + visible) / 2``: the fusion blended with the sources' mean.

    Args:
        fused, thermal, visible: ``(B, 1, H, W)`` luminance in [0, 1].
        share: in [0, 1]; 0 returns ``fused`` itself.

    Returns:
        ``(B, 1, H, W)`` in [0, 1].

    Example:
        >>> one = torch.ones(1, 1, 1, 1)
        >>> round(float(mix_sources(0.2 * one, one, 0 * one, 0.25)), 6)
        0.275
    """
    if share == 0.0:
        return fused
    return torch.lerp(fused, 0.5 * (thermal + visible), share)


def network_level(h: int, w: int, base_size: int = 640) -> int:
    """Pyramid level the region network runs at: 3 up to ~base_size, +1 per doubling.

    Example:
        >>> network_level(480, 640), network_level(1024, 1280), network_level(576, 768)
        (3, 4, 3)
    """
    return 3 + max(0, round(math.log2(max(h, w) / base_size)))


def region_stats(t: torch.Tensor, y: torch.Tensor, r: int) -> torch.Tensor:
    """Per-region pixel-distribution statistics of both sources for the router.

    Args:
        t, y: ``(B, 1, h, w)`` sources at the network level (h, w multiples of r).
        r: region size.

    Returns:
        ``(B, N, 8)``: mean, std, min, max of T and of Y in each region.
    """
    out = []
    for x in (t, y):
        mu = F.avg_pool2d(x, r)
        sd = (F.avg_pool2d(x * x, r) - mu * mu).clamp_min(0).add(1e-6).sqrt()
        mx = F.max_pool2d(x, r)
        mn = -F.max_pool2d(-x, r)
        out += [mu, sd, mn, mx]
    return torch.cat(out, 1).flatten(2).transpose(1, 2)


def _native_energies(g: torch.Tensor, g1: torch.Tensor, f: int) -> torch.Tensor:
    """:meth:`RegionFuseNet._energies` of one level for ``(2, 1, H, W)`` sources, by the C kernel."""
    gn, g1n = g.numpy(), g1.numpy()
    return torch.from_numpy(np.stack([native_kernels.detail_energy(gn[i, 0], g1n[i, 0], f)
                                      for i in range(2)])[:, None])


def _native_blend(gauss: list[torch.Tensor], p: torch.Tensor, gains: torch.Tensor,
                  fused_base: torch.Tensor, temps: torch.Tensor, ln: int,
                  threads: int | Callable[[], int] = 1) -> torch.Tensor:
    """The detail blending and reconstruction of :meth:`RegionFuseNet.forward` for one frame, by the C kernel.

    ``gauss``: the ``(2, 1, .)`` Gaussian pyramid (thermal, visible) down to the base; returns
    ``(1, 1, H, W)`` clamped to [0, 1] on the padded grid. ``threads``: the finest level's rows
    split over that many threads (the same values), or a function giving the count when that level
    starts (the pipeline asks whether its helper thread has finished).
    """
    g = [t.numpy() for t in gauss]
    bias = p[0, 2:2 + BANDS].numpy()
    gain = gains[0].numpy()
    temps = temps.tolist()
    x = fused_base[0, 0].contiguous().numpy()
    for lvl in range(ln, -1, -1):
        band = min(ln - lvl, BANDS - 1)
        n = (threads() if callable(threads) else threads) if lvl == 0 else 1
        x = native_kernels.fuse_level(g[lvl][0, 0], g[lvl][1, 0], g[lvl + 1][0, 0], g[lvl + 1][1, 0], x,
                                      np.ascontiguousarray(bias[band]), np.ascontiguousarray(gain[band]),
                                      temps[band], clamp=lvl == 0, threads=n)
    return torch.from_numpy(x)[None, None]


class RegionFuseNet(nn.Module):
    """Region-adaptive thermal/visible luminance fusion.

    Shape:
        thermal, visible: ``(B, 1, H, W)`` float in [0, 1] (any H, W >= 1).
        Output: ``(B, 1, H, W)`` fused luminance in [0, 1]. After a forward
        pass in training mode ``self.aux_loss`` holds the router balance loss.
    """

    def __init__(self, cfg: FusionNetConfig | None = None) -> None:
        super().__init__()
        self.cfg = cfg = cfg or FusionNetConfig()
        c = cfg.width
        in_ch = 1 + 4 + 3  # level image, unshuffled finer level, 3 detail energies
        self.embed_t = nn.Conv2d(in_ch, c, 3, padding=1)
        self.embed_y = nn.Conv2d(in_ch, c, 3, padding=1)
        self.enc_t = nn.Sequential(MetaFormerBlock(c), MetaFormerBlock(c))
        self.enc_y = nn.Sequential(MetaFormerBlock(c), MetaFormerBlock(c))
        self.blocks = nn.ModuleList(RegionFusionBlock(2 * c, cfg, 8) for _ in range(cfg.stages))
        self.rfcms = nn.ModuleList(RFCM(2 * c, c, cfg.region) for _ in range(cfg.stages))
        n_out = 2 + 2 * BANDS  # base weight, base residual, (bias, gain) per band
        self.head = nn.Sequential(nn.Conv2d(2 * c, c, 3, padding=1), nn.GELU(),
                                  nn.Conv2d(c, n_out, 1))
        nn.init.zeros_(self.head[-1].weight)
        nn.init.zeros_(self.head[-1].bias)
        with torch.no_grad():  # gain = softplus(b) = 1 at init
            self.head[-1].bias[2 + BANDS:] = math.log(math.e - 1.0)
        self.log_temp = nn.Parameter(torch.full((BANDS,), math.log(cfg.sel_temperature)))
        self.aux_loss = torch.zeros(())

    # ------------------------------------------------------------------------
    @staticmethod
    def _energy_levels(ln: int) -> list[tuple[int, int]]:
        """``(level, pooling factor)`` of the three detail energies fed to the region network."""
        return [(max(lvl, 0), 2 ** (ln - max(lvl, 0))) for lvl in range(ln - 3, ln)]

    def _features(self, g_net: torch.Tensor, g_fine: torch.Tensor, energies: list[torch.Tensor]
                  ) -> torch.Tensor:
        return torch.cat([g_net, F.pixel_unshuffle(g_fine, 2)] + energies, 1)

    def _energies(self, abs_details: list[torch.Tensor], ln: int) -> list[torch.Tensor]:
        # level lv is exactly f = 2**(ln - lv) times larger than the network level:
        # a plain average pool equals adaptive pooling here and exports with dynamic H/W
        return [F.avg_pool2d(abs_details[lv], f) if f > 1 else abs_details[lv]
                for lv, f in self._energy_levels(ln)]

    def region_params(self, feats: torch.Tensor, stats: torch.Tensor) -> torch.Tensor:
        """The region network: pyramid features -> fusion parameters at the network level.

        Args:
            feats: ``(2B, 8, h, w)`` features of thermal then visible (:meth:`_features`).
            stats: ``(B, N, 8)`` region statistics (:func:`region_stats`).

        Returns:
            ``(B, 2 + 2 * BANDS, h, w)`` head output; sets ``self.aux_loss``.
        """
        b = stats.shape[0]
        ft, fy = self.embed_t(feats[:b]), self.embed_y(feats[b:])
        ft, fy = self.enc_t(ft), self.enc_y(fy)
        aux = []
        for blk, rfcm in zip(self.blocks, self.rfcms):
            z = blk(torch.cat([ft, fy], 1), stats)
            if self.training:
                aux.append(balance_loss(blk.mora.last_routing))
            o = rfcm(z)
            ft, fy = ft + o, fy + o
        p = self.head(torch.cat([ft, fy], 1))
        self.aux_loss = torch.stack(aux).mean() if aux else torch.zeros((), device=p.device)
        return p

    def forward(self, thermal: torch.Tensor, visible: torch.Tensor) -> torch.Tensor:
        """Fuse ``(B, 1, H, W)`` thermal and visible luminance into ``(B, 1, H, W)``, all in [0, 1].

        Plain torch: the reference that training and export use. The pipeline's runner
        calls :func:`fuse` with the CPU fast paths instead (same values to ~1e-6).
        """
        return fuse(self, thermal, visible)

    def config_dict(self) -> dict:
        """The hyper-parameters as a plain dict (for model cards)."""
        return asdict(self.cfg)


def fuse(model: RegionFuseNet, thermal: torch.Tensor, visible: torch.Tensor, opencv: bool = False,
         region_params: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None = None,
         native: bool = False, native_threads: int | Callable[[], int] = 1) -> torch.Tensor:
    """:meth:`RegionFuseNet.forward` with the fast paths the runners choose (all off: the forward).

    ``opencv`` runs the full-resolution pyramid upsampling and box means in
    OpenCV (honoured in eager CPU float32 inference only, where the
    pipeline's runner sets it; values equal to ~1e-6, see :func:`.pyramid.up_to`).
    ``native`` runs the detail energies and each level's blending and
    reconstruction as one fused C pass (:mod:`ros2_regionfuse.native`; honoured
    for one frame in eager CPU float32 inference when the kernels are
    available, else ignored; values equal to ~1e-6).
    ``region_params`` replaces :meth:`region_params` (the pipeline's runner
    passes a traced, frozen copy of it: same values, less overhead).
    ``native_threads``: threads of the finest level's C pass (see :func:`_native_blend`).
    """
    cfg = model.cfg
    h, w = thermal.shape[-2:]
    ln = network_level(h, w, cfg.base_size)
    levels = ln + 1  # detail levels 0..ln, base at ln+1
    mult = 2 ** levels   # the pyramid's need; the region grid is padded at the network level
    ph, pw = (-h) % mult, (-w) % mult
    x = torch.cat([thermal, visible], 0)  # both sources through one pyramid pass
    if ph or pw or torch.jit.is_tracing():  # traced (ONNX): pads are dynamic, keep the op
        mode = 'reflect' if (ph < h and pw < w) else 'replicate'
        x = F.pad(x, (0, pw, 0, ph), mode=mode)
    b = thermal.shape[0]
    native = native and b == 1 and opencv_eligible(x) and not model.training and native_kernels.available()
    gauss = gaussian_pyramid(x, levels, opencv or native)
    if native:
        details, abs_details = [], []
        energies = [_native_energies(gauss[lv], gauss[lv + 1], f) for lv, f in model._energy_levels(ln)]
    else:
        details, _ = laplacian_pyramid(x, levels, opencv, gaussians=gauss)
        abs_details = [d.abs() for d in details]   # shared by the energies and the selection below
        energies = model._energies(abs_details, ln)
    base = gauss[levels]
    g_net, g_fine = gauss[ln], gauss[ln - 1]
    feats = model._features(g_net, g_fine, energies)
    hn, wn = g_net.shape[-2:]
    rh, rw = (-hn) % cfg.region, (-wn) % cfg.region
    if rh or rw or torch.jit.is_tracing():   # whole regions: pad the low-resolution inputs only
        feats = F.pad(feats, (0, rw, 0, rh), mode='replicate')
        g_net = F.pad(g_net, (0, rw, 0, rh), mode='replicate')
    stats = region_stats(g_net[:b], g_net[b:], cfg.region)
    p = (region_params or model.region_params)(feats, stats)[..., :hn, :wn]
    # --- apply the region-adaptive parameters at each level -----------------
    bt, by = base[:b], base[b:]
    pb = up_to(p[:, :2], bt.shape[-2:], opencv)
    wb = torch.sigmoid(pb[:, :1])
    fused_base = wb * bt + (1 - wb) * by + 0.1 * torch.tanh(pb[:, 1:2])
    temps = model.log_temp.exp()
    # Detail gains: softplus at the network level, then upsampled with the selection bias
    # (softplus at full resolution cost 0.5 ms per 640x480 level).
    gains = F.softplus(p[:, 2 + BANDS:2 + 2 * BANDS])
    if native:
        return _native_blend(gauss, p, gains, fused_base, temps, ln, native_threads)[..., :h, :w]
    fused_details = []
    for lvl, d in enumerate(details):
        band = min(ln - lvl, BANDS - 1)
        dt, dy = d[:b], d[b:]
        pl = torch.cat([p[:, 2 + band:3 + band], gains[:, band:band + 1]], 1)   # (bias, gain)
        pl = up_to(pl, dt.shape[-2:], opencv)
        a = box_mean3(abs_details[lvl], opencv)  # = F.avg_pool2d(., 3, 1, 1), faster
        at, ay = a[:b], a[b:]
        s = torch.sigmoid(temps[band] * (at - ay) / (at + ay + 1e-3) + pl[:, :1])
        fused_details.append(pl[:, 1:2] * torch.lerp(dy, dt, s))   # dy + s * (dt - dy) in one op
    out = reconstruct(fused_details, fused_base, opencv)[..., :h, :w]
    return out.clamp(0.0, 1.0)


@register_fusion('regionfuse_fine')
def regionfuse_fine() -> RegionFuseNet:
    """Width 24, 3 stages, E=4, k=2, 4x4 regions at 1/8 resolution.

    Finer regions than ``regionfuse_lite`` (the default) for about twice its fusion time.
    Deprecated alias: ``regionfuse_tiny``.
    """
    return RegionFuseNet(FusionNetConfig())


@register_fusion('regionfuse_small')
def regionfuse_small() -> RegionFuseNet:
    """Wider variant (width 32) for machines with more headroom."""
    return RegionFuseNet(FusionNetConfig(width=32, value_dim=16, qk_dim=24))


@register_fusion('regionfuse_lite')
def regionfuse_lite() -> RegionFuseNet:
    """``regionfuse_fine``'s network one pyramid level lower: 1/16 of a 640x480 frame.

    Same weights' shapes; fine-tuned from ``regionfuse_fine`` at this level
    (the region network's cost is a quarter; regions cover 64x64 px at 640x480).
    """
    return RegionFuseNet(FusionNetConfig(base_size=320))
