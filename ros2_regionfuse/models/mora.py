"""Mixture of Region Attention (MoRA), after RegionFuse (CVPR 2026).

Feature maps are split into ``R x R`` regions; each region is a token whose
value is the flattened region patch. A pixel-distribution-aware router looks at
statistics of the *raw* block input inside each region (per-channel mean and
standard deviation, plus optional source-image statistics) and produces clean
logits plus, in training only, ``softplus(noise logits) * N(0, 1)`` (noisy
top-k gating). Each token is routed to its top-k of E experts; expert ``e``
attends only among the tokens routed to it (mask ``M_e = c_e c_e^T``) with its
own query/key projections; expert outputs are summed with the renormalised
router weights, merged back to the image and projected by a 1x1 convolution.

Attention is global over the region tokens of the (low-resolution) feature map
the fusion network works on: at 640x480 input that is 20 x 15 = 300 tokens,
cheap enough for dense masked attention.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from .layers import from_regions, to_regions


@dataclass
class Routing:
    """Router decisions for one MoRA call.

    Attributes:
        probs: ``(B, N, E)`` softmax of the (noisy) logits.
        gates: ``(B, N, E)`` top-k weights renormalised to sum to 1, zero elsewhere.
        mask: ``(B, N, E)`` bool, token n routed to expert e.
    """

    probs: torch.Tensor
    gates: torch.Tensor
    mask: torch.Tensor


def noisy_top_k(clean: torch.Tensor, noise_logits: torch.Tensor | None, k: int,
                training: bool) -> Routing:
    """Noisy top-k gating.

    Args:
        clean: ``(B, N, E)`` clean router logits.
        noise_logits: ``(B, N, E)`` noise-scale logits (used only when training).
        k: experts per token, ``1 <= k <= E``.
        training: add ``softplus(noise_logits) * N(0, 1)`` to the logits.

    Returns:
        :class:`Routing` with the top-k gates renormalised over the chosen experts.

    Example:
        >>> r = noisy_top_k(torch.tensor([[[3.0, 1.0, 2.0, 0.0]]]), None, 2, False)
        >>> r.mask.int().tolist()
        [[[1, 0, 1, 0]]]
    """
    logits = clean
    if training and noise_logits is not None:
        logits = clean + torch.randn_like(clean) * F.softplus(noise_logits)
    probs = logits.softmax(-1)
    top_v, top_i = probs.topk(k, dim=-1)
    top_v = top_v / top_v.sum(-1, keepdim=True).clamp_min(1e-9)
    gates = torch.zeros_like(probs).scatter(-1, top_i, top_v)
    # float scatter then compare: same mask as a bool scatter, and exportable to ONNX
    mask = torch.zeros_like(probs).scatter(-1, top_i, torch.ones_like(top_v)) > 0.5
    return Routing(probs=probs, gates=gates, mask=mask)


def balance_loss(routing: Routing) -> torch.Tensor:
    """Load-balancing loss ``E * sum_e f_e * P_e`` (Switch-Transformer style).

    ``f_e`` is the share of token->expert assignments going to ``e`` and
    ``P_e`` the mean router probability of ``e``. It equals 1 for perfectly
    balanced routing and grows to E when every token goes to one expert.

    Example:
        >>> e = 4
        >>> collapsed = noisy_top_k(torch.tensor([[[9.0, 0, 0, 0]] * 8]), None, 1, False)
        >>> balanced = noisy_top_k(torch.eye(e)[None].repeat(1, 2, 1) * 9, None, 1, False)
        >>> bool(balance_loss(collapsed) > balance_loss(balanced))
        True
    """
    e = routing.probs.shape[-1]
    f = routing.mask.float().mean(dim=(0, 1))
    f = f / f.sum().clamp_min(1e-9)
    p = routing.probs.mean(dim=(0, 1))
    return e * (f * p).sum()


def expert_masked_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                            routing: Routing) -> torch.Tensor:
    """Attention in which expert e's tokens attend only to tokens also routed to e.

    Args:
        q, k: ``(B, E, N, D)`` per-expert queries and keys.
        v: ``(B, N, Dv)`` shared region values.
        routing: router output with ``mask``/``gates`` of shape ``(B, N, E)``.

    Returns:
        ``(B, N, Dv)``: ``sum_e gate[n, e] * softmax_m(q_e[n] . k_e[m] | m in e) v[m]``;
        tokens not routed to e receive nothing from e.
    """
    d = q.shape[-1]
    scores = torch.einsum('bend,bemd->benm', q, k) * (1.0 / math.sqrt(d))
    c = routing.mask.transpose(1, 2)  # (B, E, N)
    # M_e = c_e c_e^T. Masking the keys not routed to e is enough: a query not routed to e
    # has gate 0 below, so its row never contributes (same result without an N x N mask).
    scores = scores.masked_fill(~c[:, :, None, :], torch.finfo(scores.dtype).min)
    attn = scores.softmax(-1)
    g = routing.gates.transpose(1, 2)  # (B, E, N)
    # Fold the gates into the attention rows: out[n] = sum_e g[e,n] sum_m attn[e,n,m] v[m]
    mixed = (attn * g[..., None]).sum(1)  # (B, N, N)
    return torch.bmm(mixed, v)


class MoRA(nn.Module):
    """Mixture of Region Attention on a ``(B, C, H, W)`` feature map.

    Args:
        dim: input/output channels C.
        experts: number of experts E.
        top_k: experts per region token k.
        region: region size R in pixels of this feature map (H, W multiples of R).
        value_dim: channels of the value path (token size ``value_dim * R * R``).
        qk_dim: query/key size per expert.
        stats_dim: size of extra per-region statistics given to the router.

    Shape:
        x: ``(B, C, H, W)`` normalised block input; raw: same shape, the
        block input before normalisation; stats: ``(B, N, stats_dim)`` or None.
        Output ``(B, C, H, W)``; ``self.last_routing`` keeps the routing.
    """

    def __init__(self, dim: int, experts: int = 4, top_k: int = 2, region: int = 4,
                 value_dim: int = 8, qk_dim: int = 16, stats_dim: int = 0) -> None:
        super().__init__()
        if not 1 <= top_k <= experts:
            raise ValueError(f'top_k must be in [1, {experts}], got {top_k}')
        self.e, self.k, self.r, self.dv, self.dqk = experts, top_k, region, value_dim, qk_dim
        self.value = nn.Sequential(nn.Conv2d(dim, value_dim, 1),
                                   nn.Conv2d(value_dim, value_dim, 3, padding=1, groups=value_dim))
        tok = value_dim * region * region
        self.qk = nn.Linear(tok, 2 * experts * qk_dim)
        router_in = 2 * dim + stats_dim
        self.router_clean = nn.Linear(router_in, experts)
        self.router_noise = nn.Linear(router_in, experts)
        self.proj = nn.Conv2d(value_dim, dim, 1)
        self.last_routing: Routing | None = None

    def route(self, raw: torch.Tensor, stats: torch.Tensor | None) -> Routing:
        """Route region tokens from per-region mean/std of ``raw`` (+ ``stats``)."""
        mu = F.avg_pool2d(raw, self.r)
        sd = (F.avg_pool2d(raw * raw, self.r) - mu * mu).clamp_min(0).add(1e-6).sqrt()
        feats = torch.cat([mu, sd], 1).flatten(2).transpose(1, 2)  # (B, N, 2C)
        if stats is not None:
            feats = torch.cat([feats, stats], -1)
        # The noise logits only matter in training: inference skips their projection.
        noise = self.router_noise(feats) if self.training else None
        return noisy_top_k(self.router_clean(feats), noise, self.k, self.training)

    def forward(self, x: torch.Tensor, raw: torch.Tensor,
                stats: torch.Tensor | None = None) -> torch.Tensor:
        b, _, h, w = x.shape
        v_img = self.value(x)
        v = to_regions(v_img, self.r)  # (B, N, Dv*R*R)
        n = v.shape[1]
        qk = self.qk(v).view(b, n, 2, self.e, self.dqk).permute(2, 0, 3, 1, 4)
        routing = self.route(raw, stats)
        self.last_routing = routing
        out = expert_masked_attention(qk[0], qk[1], v, routing)
        return self.proj(from_regions(out, self.dv, h, w, self.r))
