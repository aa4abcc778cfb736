"""MoRA router, masking and balance-loss semantics; RFCM gating; fusion net shapes."""
from __future__ import annotations

import pytest
import torch

from ros2_regionfuse.models.fusion_net import RegionFuseNet, fuse, network_level
from ros2_regionfuse.models.layers import from_regions, to_regions
from ros2_regionfuse.models.mora import MoRA, Routing, balance_loss, expert_masked_attention, noisy_top_k
from ros2_regionfuse.models.registry import build_fusion
from ros2_regionfuse.models.rfcm import RFCM, region_gate


def test_top_k_picks_largest_and_renormalises() -> None:
    logits = torch.tensor([[[0.1, 2.0, -1.0, 1.5], [3.0, 0.0, 0.0, 2.9]]])
    r = noisy_top_k(logits, None, 2, training=False)
    assert r.mask.tolist() == [[[False, True, False, True], [True, False, False, True]]]
    assert torch.allclose(r.gates.sum(-1), torch.ones(1, 2))
    assert (r.gates[~r.mask] == 0).all()
    p = logits.softmax(-1)[0, 0]
    assert r.gates[0, 0, 1].item() == pytest.approx((p[1] / (p[1] + p[3])).item(), rel=1e-5)


def test_noise_only_in_training() -> None:
    torch.manual_seed(0)
    clean = torch.zeros(1, 64, 4)
    noise = torch.full((1, 64, 4), 3.0)
    ev = [noisy_top_k(clean, noise, 1, training=False).mask for _ in range(3)]
    assert all(torch.equal(ev[0], m) for m in ev)
    tr = noisy_top_k(clean, noise, 1, training=True).mask
    # With strong noise, tokens spread over several experts.
    assert int((tr.sum(1) > 0).sum()) >= 3


def test_balance_loss_higher_when_routing_collapses() -> None:
    n, e = 32, 4
    collapsed = noisy_top_k(torch.tensor([[9.0, 0, 0, 0]]).repeat(n, 1)[None], None, 1, False)
    balanced = noisy_top_k((torch.eye(e) * 9).repeat(n // e, 1)[None], None, 1, False)
    lc, lb = balance_loss(collapsed).item(), balance_loss(balanced).item()
    assert lb == pytest.approx(1.0, abs=0.01)
    assert lc > 3.5 and lc > lb


def test_expert_masked_attention_only_mixes_tokens_of_the_same_expert() -> None:
    # tokens 0,1 -> expert 0 ; tokens 2,3 -> expert 1 (k = 1)
    mask = torch.tensor([[[1, 0], [1, 0], [0, 1], [0, 1]]], dtype=torch.bool)
    routing = Routing(probs=mask.float(), gates=mask.float(), mask=mask)
    q = torch.zeros(1, 2, 4, 3)  # equal scores -> uniform attention inside each expert
    v = torch.tensor([[[1.0], [3.0], [10.0], [30.0]]])
    out = expert_masked_attention(q, q.clone(), v, routing)
    assert out[0, :, 0].tolist() == pytest.approx([2.0, 2.0, 20.0, 20.0])


def test_regions_round_trip_and_mora_shapes() -> None:
    x = torch.randn(2, 6, 8, 12)
    assert torch.equal(from_regions(to_regions(x, 4), 6, 8, 12, 4), x)
    m = MoRA(6, experts=4, top_k=2, region=4, value_dim=4, qk_dim=8, stats_dim=3)
    y = m(x, x, torch.randn(2, 6, 3))
    assert y.shape == x.shape
    assert m.last_routing.mask.sum(-1).eq(2).all()


def test_region_gate_scales_each_region_uniformly() -> None:
    x = torch.ones(1, 2, 8, 8)
    conv = torch.nn.Conv2d(2, 2, 1)
    torch.nn.init.zeros_(conv.weight)
    torch.nn.init.zeros_(conv.bias)
    assert torch.allclose(region_gate(x, conv, 4), torch.full_like(x, 0.5))
    assert RFCM(8, 3, 4)(torch.randn(1, 8, 8, 8)).shape == (1, 3, 8, 8)


@pytest.mark.parametrize('variant', ['regionfuse_fine', 'regionfuse_lite'])
@pytest.mark.parametrize('h,w', [(37, 53), (64, 64), (120, 161), (1, 1), (481, 641)])
def test_fusion_net_any_size(variant: str, h: int, w: int) -> None:
    net = build_fusion(variant).eval()
    t, y = torch.rand(1, 1, h, w), torch.rand(1, 1, h, w)
    with torch.inference_mode():
        out = net(t, y)
    assert out.shape == (1, 1, h, w)
    assert float(out.min()) >= 0.0 and float(out.max()) <= 1.0


def test_untrained_fusion_keeps_both_sources() -> None:
    # At initialisation the net is a soft max-activity Laplacian fusion with base weight 0.5:
    # a bright square in IR and a stripe texture in VIS must both survive.
    net = RegionFuseNet().eval()
    t = torch.zeros(1, 1, 64, 64)
    t[..., 20:40, 20:40] = 1.0
    y = torch.zeros(1, 1, 64, 64)
    y[..., :, ::4] = 0.8
    with torch.inference_mode():
        f = net(t, y)
    assert f[..., 25:35, 25:35].mean() > f[..., 45:60, 45:60].mean() + 0.2
    stripes = f[..., 45:60, 44:60]
    assert (stripes[..., ::4].mean() - stripes[..., 2::4].mean()) > 0.3


def test_training_mode_sets_balance_loss() -> None:
    net = RegionFuseNet().train()
    net(torch.rand(2, 1, 64, 64), torch.rand(2, 1, 64, 64))
    assert 1.0 <= float(net.aux_loss.detach()) <= 4.0


@pytest.mark.parametrize('variant,hw_net,padded', [('regionfuse_fine', (60, 80), (60, 80)),
                                                    ('regionfuse_lite', (30, 40), (32, 40))])
def test_region_network_size(variant: str, hw_net: tuple, padded: tuple) -> None:
    # 640x480: tiny reasons at 1/8, lite at 1/16, where 30 rows are padded to whole 4x4 regions
    # at the network level; the parameters are cropped back, so the output keeps the input size.
    net = build_fusion(variant).eval()
    seen = []

    def spy(feats: torch.Tensor, stats: torch.Tensor) -> torch.Tensor:
        seen.append((tuple(feats.shape[-2:]), stats.shape[1]))
        return net.region_params(feats, stats)

    t, y = torch.rand(1, 1, 480, 640), torch.rand(1, 1, 480, 640)
    with torch.inference_mode():
        out = fuse(net, t, y, region_params=spy)
        ref = net(t, y)
    assert seen == [(padded, (padded[0] // 4) * (padded[1] // 4))]
    assert out.shape == (1, 1, 480, 640) and torch.equal(out, ref)
    assert hw_net == (480 // 2 ** network_level(480, 640, net.cfg.base_size),
                      640 // 2 ** network_level(480, 640, net.cfg.base_size))


def test_network_level() -> None:
    assert network_level(480, 640) == 3
    assert network_level(1024, 1280) == 4
    assert network_level(2048, 2560) == 5


def test_smallest_training_patch_reaches_the_variants_level() -> None:
    from ros2_regionfuse.training.train_fusion import _smallest_patch
    lite = build_fusion('regionfuse_lite').cfg.base_size
    tiny = build_fusion('regionfuse_fine').cfg.base_size
    assert _smallest_patch(lite) == 512       # 448 px patches would still train the 1/8 level
    assert network_level(448, 448, lite) == 3
    assert network_level(512, 512, lite) == network_level(480, 640, lite) == 4
    assert network_level(256, 256, tiny) == network_level(480, 640, tiny) == 3
