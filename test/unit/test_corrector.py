"""Post-registration corrector: shapes, assembly formula, weights I/O, identity on a real pair."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from ros2_regionfuse.core import convert
from ros2_regionfuse.core.checks import ConfigError, WeightsError
from ros2_regionfuse.core.imageio import read_gray, read_rgb
from ros2_regionfuse.core.weights import load_weights, save_weights, shipped_weights
from ros2_regionfuse.models.corrector import (
    Corrector,
    CorrectorArchitecture,
    CorrectorOutput,
    conv_part,
    correct,
)
from ros2_regionfuse.models.registry import build_corrector, corrector_variants
from ros2_regionfuse.models.warp import warp_by_flow

TINY = CorrectorArchitecture(stem_stride=2, widths=(4, 4), radii=(1, 1), heads=(8, 8), head_in_kernel=(1, 3),
                       dilations=((1, 1), (1, 2)), mrb_width=8, windows=(1, 3, 5))


def _inputs(h: int, w: int, b: int = 1, seed: int = 0) -> tuple[torch.Tensor, ...]:
    g = torch.Generator().manual_seed(seed)
    return tuple(torch.rand(b, 1, h, w, generator=g) for _ in range(3))


def test_variants_registered():
    assert {'corrector_multiscale', 'corrector_paper'} <= set(corrector_variants())
    assert isinstance(build_corrector('corrector_multiscale'), Corrector)
    with pytest.raises(ConfigError):
        build_corrector('nope')


@pytest.mark.parametrize('h,w', [(37, 50), (64, 64), (1, 1), (33, 17)])
def test_shapes_odd_sizes(h, w):
    m = Corrector(TINY).eval()
    fused, vis, th = _inputs(h, w, b=2)
    with torch.no_grad():
        out = m(fused, vis, th, aux=True)
    assert isinstance(out, CorrectorOutput)
    assert out.image.shape == (2, 1, h, w) and out.misregistration.shape == (2, 1, h, w)
    assert out.flow.shape == (2, 2, h, w)
    assert len(out.flows) == len(out.masks) == len(out.warped) == len(TINY.stages)
    assert 0.0 <= float(out.image.min()) and float(out.image.max()) <= 1.0
    assert 0.0 <= float(out.misregistration.min()) and float(out.misregistration.max()) <= 1.0


def test_fast_variant_shapes_and_aux_levels():
    m = build_corrector('corrector_multiscale').eval()
    fused, vis, th = _inputs(48, 80)
    with torch.no_grad():
        out = m(fused, vis, th)
        aux = m(fused, vis, th, aux=True)
    assert out.warped == []                              # no aux work in eval mode by default
    assert [f.shape[-2:] for f in aux.flows] == [(6, 10), (3, 5), (3, 5)]   # 1/8, then two stages at 1/16


# corrector_multiscale without its global start (tests of the learned path alone)
LEARNED_ONLY = CorrectorArchitecture(global_align=False)


def test_untrained_corrector_is_identity():
    """Zero-initialised heads: flow 0, so the output equals the fused input."""
    m = Corrector(LEARNED_ONLY).eval()
    fused, vis, th = _inputs(40, 56, seed=3)
    with torch.no_grad():
        out = m(fused, vis, th)
    assert torch.count_nonzero(out.flow) == 0
    assert float((out.image - fused).abs().max()) < 1e-4   # float rounding of the sampling grid


@pytest.mark.parametrize('variant', ['corrector_lite', 'corrector_multiscale'])
def test_stem_block_means_equal_average_pooling(variant):
    # The stem's extra output per group (weights 1 / s^2) gives the block means; the stem
    # features are the grouped patch embedding of the unshuffled blocks (the module as built).
    m = build_corrector(variant).eval()
    s = m.cfg.stem_stride
    x = torch.rand(2, 3, 4 * s, 6 * s, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        for p in m.stem.parameters():   # random stem weights (the defaults may be symmetric)
            p.copy_(torch.randn(p.shape, generator=torch.Generator().manual_seed(4)))
        feats, means, fine = m.stem_and_pool(x)
        ref = m.stem(torch.nn.functional.pixel_unshuffle(x, s))
    assert means.shape == (2, 3, 4, 6) and feats.shape == ref.shape
    assert float((means - torch.nn.functional.avg_pool2d(x, s)).abs().max()) < 1e-6
    assert float((feats - ref).abs().max()) < 1e-4
    q = math.gcd(s, 4)   # the q x q means of the thermal weight's products
    assert fine.shape == (2, 3, 4 * s // q, 6 * s // q)
    assert float((fine - torch.nn.functional.avg_pool2d(x, q)).abs().max()) < 1e-6


@pytest.mark.parametrize('variant', ['corrector_lite', 'corrector_multiscale', 'corrector_paper'])
def test_encoder_of_some_streams_equals_those_streams_of_the_whole(variant):
    """Corrector.sources encodes visible + thermal, fused_fields the fused image: per level, the
    streams' features equal those of the grouped encoder run on all three."""
    m = build_corrector(variant).eval()
    g = torch.Generator().manual_seed(5)
    with torch.no_grad():
        for p in m.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.2)
        mult = m.cfg.multiple
        x = torch.rand(1, 3, 2 * mult, 3 * mult, generator=g)
        whole, means, _ = m._encode(x, (0, 1, 2))
        src, means_src, _ = m._encode(x[:, [0, 2]], (0, 2))
        fus, means_f, _ = m._encode(x[:, 1:2], (1,))
    assert len(whole) == m.cfg.levels
    for a, b, ref in zip(src, fus, whole, strict=True):
        c = ref.shape[1] // 3
        scale = float(ref.abs().max())
        assert float((torch.cat([a[:, :c], b, a[:, c:]], 1) - ref).abs().max()) < 1e-5 * scale
        assert scale > 0.1
    assert torch.allclose(torch.cat([means_src[:, :1], means_f, means_src[:, 1:]], 1), means, atol=1e-6)


def test_first_head_input_splits_into_sources_and_fused_parts():
    """The first head's input convolution as a sum over the sources' channels and the fused image's."""
    m = build_corrector('corrector_lite').eval()
    head = m.heads[0]
    src_ch, fused_ch = m._first_head_channels()
    cin = head.inp[0].in_channels
    assert sorted(src_ch + fused_ch) == list(range(cin)) and len(fused_ch) == 9 + m.cfg.widths[0]
    g = torch.Generator().manual_seed(6)
    with torch.no_grad():
        for p in head.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.1)
        x = torch.randn(1, cin, 6, 7, generator=g)
        split = (conv_part(head.inp[0], x[:, src_ch], src_ch, bias=True)
                 + conv_part(head.inp[0], x[:, fused_ch], fused_ch, bias=False))
        ref = head.inp[0](x)
    assert float((split - ref).abs().max()) < 1e-5 and float(ref.abs().max()) > 0.5
    with torch.no_grad():
        out_split, out_ref = head.from_input(head.inp[1](split)), head(x)   # inp[1] works in place
    for a, b in zip(out_split, out_ref, strict=True):
        assert float((a - b).abs().max()) < 1e-5 * max(1.0, float(b.abs().max()))


def test_retention_block_split_equals_the_block_on_the_whole_input():
    """ModalityRetentionBlock as source_part (visible + thermal) then fused_part equals the block's
    definition on the concatenated input (written out here), for random weights."""
    import torch.nn.functional as F

    from ros2_regionfuse.models.corrector import ModalityRetentionBlock
    from ros2_regionfuse.models.warp import local_correlation
    g = torch.Generator().manual_seed(7)
    mrb = ModalityRetentionBlock(8, 16, (1, 3, 5)).eval()
    with torch.no_grad():
        for p in mrb.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.3)
        fw, vis, ir = (torch.randn(1, 8, 7, 9, generator=g) for _ in range(3))
        corr = torch.cat([local_correlation(fw, vis, 1), local_correlation(fw, ir, 1)], 1)
        x = F.leaky_relu(mrb.fuse_in[0](torch.cat([corr, fw, vis, ir], 1)), 0.1)
        a = torch.softmax(mrb.merge_logits, 0)
        x = x + sum(a[i] * sgu(x) for i, sgu in enumerate(mrb.sgus))
        vis_a = vis * torch.sigmoid(mrb.vis_ca(vis.mean((2, 3), keepdim=True)))
        stat = torch.cat([ir.amax(1, keepdim=True), ir.mean(1, keepdim=True)], 1)
        ir_a = ir * torch.sigmoid(mrb.ir_sa(stat))
        ref = mrb.out(torch.cat([x, vis_a, ir_a], 1))
        got = mrb.fused_part(fw, vis, ir, mrb.source_part(vis, ir))
    assert float(ref.abs().max()) > 0.5
    assert float((got - ref).abs().max()) < 1e-5 * float(ref.abs().max())


def test_full_resolution_assembly_formula():
    """A constant coarse flow composes to stride * flow and the output follows the documented formula."""
    m = Corrector(LEARNED_ONLY).eval()
    coarsest = m.heads[0].out     # heads run coarsest stage first
    with torch.no_grad():
        coarsest.bias[0] = 0.5      # x, pixels of the 1/16 level -> 8 px at full resolution
        coarsest.bias[1] = -0.25    # y -> -4 px
        coarsest.bias[2] = 12.0     # M logit: misregistered everywhere
    fused, vis, th = _inputs(64, 96, seed=5)
    with torch.no_grad():
        out = m(fused, vis, th, aux=True)
    # (the global affine fit of a constant field is that constant, up to its small ridge term)
    assert torch.allclose(out.flows[-1][:, 0], torch.full_like(out.flows[-1][:, 0], 8.0), atol=0.02)
    assert torch.allclose(out.flow[:, 0], torch.full_like(out.flow[:, 0], 8.0), atol=0.02)
    assert torch.allclose(out.flow[:, 1], torch.full_like(out.flow[:, 1], -4.0), atol=0.02)
    m_map = out.misregistration
    assert float(m_map.min()) > 0.99
    flow = out.flow
    expect = (m_map * warp_by_flow(fused, flow) + (1 - m_map) * warp_by_flow(fused, -flow)
              + 0.5 * (vis - (m_map * warp_by_flow(vis, flow) + (1 - m_map) * warp_by_flow(vis, -flow))))
    assert torch.allclose(out.image, expect.clamp(0, 1), atol=1e-4)


def test_refuse_full_resolution_formula():
    """``refuse``: image = F + gain * (warp_M(T) - T) + bias, fields upsampled bilinearly."""
    from ros2_regionfuse.models.corrector import full_resolution
    g = torch.Generator().manual_seed(2)
    fused, vis, th = _inputs(32, 48, seed=6)
    low = torch.rand(1, 5, 4, 6, generator=g)
    low[:, :2] = 6.0 * low[:, :2] - 3.0                    # flow in px
    out, m, flow = full_resolution(low, fused, vis, (32, 48), th, 'refuse')
    up = torch.nn.functional.interpolate(low, size=(32, 48), mode='bilinear', align_corners=False)
    wt = up[:, 2:3] * warp_by_flow(th, up[:, :2]) + (1 - up[:, 2:3]) * warp_by_flow(th, -up[:, :2])
    expect = (fused + up[:, 3:4] * (wt - th) + up[:, 4:5]).clamp(0, 1)
    assert torch.allclose(out, expect, atol=1e-5)
    assert torch.allclose(flow, up[:, :2]) and torch.allclose(m, up[:, 2:3])
    with pytest.raises(ValueError, match='thermal'):
        full_resolution(low, fused, vis, (32, 48), None, 'refuse')


def test_refuse_moves_only_the_thermal_content(test_data):
    """A linear fusion of a misregistered pair, corrected with the true flow and the true thermal
    weight: the result is the fusion of the aligned pair, the visible content does not move."""
    from ros2_regionfuse.models.corrector import full_resolution, full_resolution_cv
    th, vis = _real_pair(test_data, 'FLIR_05005')
    t, y = convert.to_tensor(th), convert.to_tensor(vis)
    h, w = t.shape[-2:]
    shift = torch.zeros(1, 2, h, w)
    shift[:, 0], shift[:, 1] = 5.0, -3.0
    moved = warp_by_flow(t, -shift)                    # moved(p + shift) = t(p)
    fused_mis, fused_ref = 0.4 * y + 0.6 * moved, 0.4 * y + 0.6 * t
    low = torch.zeros(1, 5, h // 8, w // 8)
    low[:, 0], low[:, 1], low[:, 2], low[:, 3] = 5.0, -3.0, 1.0, 0.6
    inner = (..., slice(16, -16), slice(16, -16))
    before = float((fused_mis - fused_ref)[inner].abs().mean())
    for step in (full_resolution, full_resolution_cv):
        out, _, _ = step(low, fused_mis, y, (h, w), moved, 'refuse')
        assert float((out - fused_ref)[inner].abs().mean()) < 0.1 * before, step.__name__


def test_thermal_weight_is_zero_on_a_flat_thermal_image():
    from ros2_regionfuse.models.corrector import thermal_weight
    y = torch.rand(1, 1, 64, 64, generator=torch.Generator().manual_seed(1))
    t = torch.full_like(y, 0.4)
    x = torch.cat([y, 0.5 * y + 0.5 * t, t], 1)
    beta = thermal_weight(x, torch.nn.functional.avg_pool2d(x, 16))
    assert beta.shape == (1, 1, 4, 4) and float(beta.abs().max()) < 1e-3


def test_weights_of_the_other_output_formula_are_refused(tmp_path):
    """Same tensors, another meaning: weights whose card says they were trained for the other output
    formula are a clear error naming both; weights without a model card still load."""
    from ros2_regionfuse.models.loading import load_model
    model = build_corrector('corrector_lite')
    own = model.cfg.output
    other = 'retain' if own == 'refuse' else 'refuse'
    path = tmp_path / 'other.safetensors'
    save_weights(model, path, {'model_config': {**model.config_dict(), 'output': other}})
    with pytest.raises(WeightsError, match=f"trained for the corrector output '{other}'.*'{own}'"):
        load_model('corrector', 'corrector_lite', str(path), torch.device('cpu'))
    save_weights(model, path, {'model_config': model.config_dict()})
    assert load_model('corrector', 'corrector_lite', str(path), torch.device('cpu'))[0].cfg.output == own
    path.with_suffix('.json').unlink()
    assert load_model('corrector', 'corrector_lite', str(path), torch.device('cpu'))[0].cfg.output == own


def test_refuse_variant_starts_with_unit_gain_and_rejects_unknown_outputs():
    m = build_corrector('corrector_lite')
    assert m.cfg.output == 'refuse'
    last = m.mrb.out[-1]
    assert last.weight[0].abs().max().item() == 0.0 and last.bias[0].item() == 0.0
    from dataclasses import replace
    with pytest.raises(ValueError, match='output'):
        Corrector(replace(m.cfg, output='blend'))


def test_untrained_fast_corrector_leaves_a_real_aligned_image_alone(test_data):
    """With its global start: identical visible and thermal images give a zero start, so the
    untrained corrector (zero-initialised heads) returns its input."""
    th, _ = _real_pair(test_data, 'FLIR_05005')
    x = convert.to_tensor(th)
    m = build_corrector('corrector_multiscale').eval()
    assert m.cfg.global_align
    with torch.no_grad():
        out = m(x, x, x)
    assert float(out.flow.abs().max()) < 1e-3
    assert float((out.image - x).abs().max()) < 1e-4


def test_gradients_flow_to_all_heads():
    m = Corrector(TINY).train()
    fused, vis, th = _inputs(32, 32, b=2)
    out = m(fused, vis, th)
    loss = (out.image.mean() + sum(((f - 1.0) ** 2).mean() for f in out.flows)
            + sum(m.mean() for m in out.masks) + sum(w.mean() for w in out.warped))
    loss.backward()
    for h in m.heads:
        assert h.out.weight.grad is not None and h.out.weight.grad.abs().sum() > 0


def test_weights_roundtrip(tmp_path):
    m = Corrector(TINY)
    path = tmp_path / 'c.safetensors'
    save_weights(m, path, {'variant': 'tiny', 'seed': 0})
    m2 = Corrector(TINY)
    card = load_weights(m2, path)
    assert card['seed'] == 0
    for (k, v), (k2, v2) in zip(m.state_dict().items(), m2.state_dict().items()):
        assert k == k2 and torch.equal(v, v2)


def test_corrupt_weights_clear_error(tmp_path):
    bad = tmp_path / 'corrupt.safetensors'
    bad.write_bytes(b'\x00\x01 definitely not a safetensors file')
    with pytest.raises(WeightsError, match='not a valid safetensors'):
        load_weights(build_corrector('corrector_multiscale'), bad)
    # A valid file of another architecture: mismatch named.
    other = tmp_path / 'other.safetensors'
    save_weights(Corrector(TINY), other, {'variant': 'tiny'})
    with pytest.raises(WeightsError, match='does not match'):
        load_weights(build_corrector('corrector_multiscale'), other)
    with pytest.raises(WeightsError, match='not found'):
        load_weights(build_corrector('corrector_multiscale'), tmp_path / 'missing.safetensors')


def _real_pair(test_data, stem: str) -> tuple[np.ndarray, np.ndarray]:
    th = read_gray(test_data / 'ir' / f'{stem}.png', as_uint8=True).astype(np.float32) / 255.0
    vis = convert.luminance(convert.rgb_to_unit(read_rgb(test_data / 'vi' / f'{stem}.png')))
    return th, vis


# the variants that ship trained weights (the default one first)
SHIPPED = ('corrector_lite', 'corrector_multiscale')


@pytest.mark.parametrize('variant', SHIPPED)
@pytest.mark.parametrize('stem', ['tno17', 'FLIR_05005', '00537D'])
def test_identity_on_real_pair_with_shipped_weights(test_data, stem, variant):
    """Aligned real input: M ~ 0, |flow| small, image nearly unchanged (trained weights)."""
    path = shipped_weights(variant)
    assert path.is_file(), f'shipped corrector weights missing: {path}'
    from ros2_regionfuse.training.corrector_data import StandInFusion, load_frozen_fusion
    try:
        fusion, _ = load_frozen_fusion('regionfuse_fine')
    except WeightsError:
        fusion = StandInFusion()
    model = build_corrector(variant)
    load_weights(model, path)
    model.eval()
    th, vis = _real_pair(test_data, stem)
    t, v = convert.to_tensor(th), convert.to_tensor(vis)
    with torch.no_grad():
        fused = fusion(t, v).clamp(0, 1)
        out = model(fused, v, t)
    mag = torch.linalg.vector_norm(out.flow, dim=1)
    # M is a soft probability: on aligned input it stays low (mean < 0.2 for the shipped weights), and
    # no pixel the corrector leaves in place (|flow| < 1 px) is declared misregistered (M > 0.5). The
    # global estimate does move a part of tno17 (20 % of its pixels by 1-2.6 px: the TNO reference's own
    # misregistration, README); there corrector_lite's M is high on half of the moved pixels,
    # corrector_multiscale's stays low.
    m_high = out.misregistration[:, 0] > 0.5
    moved = mag > 1.0
    assert float(out.misregistration.mean()) < 0.2
    assert float((m_high & ~moved).float().mean()) < 0.005
    assert float(m_high.float().mean()) < max(0.02, 0.6 * float(moved.float().mean()))
    assert float(moved.float().mean()) < 0.25
    assert float(mag.mean()) < 1.0
    mse = float(((out.image - fused) ** 2).mean())
    assert 10 * np.log10(1.0 / max(mse, 1e-12)) > 35.0


def test_load_model_can_switch_the_global_start_off():
    from ros2_regionfuse.models.loading import load_model
    on, card_on = load_model('corrector', 'corrector_multiscale', '', torch.device('cpu'))
    off, card_off = load_model('corrector', 'corrector_multiscale', '', torch.device('cpu'),
                               global_start=False)
    assert on.cfg.global_align and not off.cfg.global_align
    assert card_off['global_start'] is False and 'global_start' not in card_on
    for a, b in zip(on.state_dict().values(), off.state_dict().values(), strict=True):
        assert torch.equal(a, b)


def _shipped_with(variant: str = SHIPPED[0], **changes) -> Corrector:
    from dataclasses import replace
    model = build_corrector(variant)
    load_weights(model, shipped_weights(variant))
    model.cfg = replace(model.cfg, **changes)
    return model.eval()


@pytest.mark.parametrize('variant', SHIPPED)
def test_aligned_frame_is_skipped_and_matches_the_full_path(test_data, variant):
    """00537D (aligned MSRS crop): the global check finds it aligned, the corrector returns the
    input with M = 0 and flow = 0, and the full path (skip off) differs from that by almost nothing."""
    th, vis = _real_pair(test_data, '00537D')
    t, v = convert.to_tensor(th), convert.to_tensor(vis)
    fused = (0.5 * (t + v)).clamp(0, 1)
    fast, full = _shipped_with(variant), _shipped_with(variant, skip_aligned=False)
    with torch.no_grad():
        a, b = fast(fused, v, t), full(fused, v, t)
    assert a.image is fused and a.flows == []                       # skipped: nothing ran
    assert float(a.misregistration.abs().max()) == 0.0 and float(a.flow.abs().max()) == 0.0
    assert b.flows != []                                            # the full path ran
    assert float((a.image - b.image).abs().max()) < 2e-3
    assert float((a.flow - b.flow).abs().max()) < 0.02              # px
    assert float(b.misregistration.max()) < 0.02


def _shifted_pair(test_data, crop: tuple[int, int] | None = None
                  ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """00537D with its thermal content moved 5 px to the right: ``(visible, moved thermal, fused)``
    (fused = mean of the two), optionally cropped to ``crop = (h, w)`` first."""
    th, vis = _real_pair(test_data, '00537D')
    if crop is not None:
        th, vis = th[:crop[0], :crop[1]].copy(), vis[:crop[0], :crop[1]].copy()
    t, v = convert.to_tensor(th), convert.to_tensor(vis)
    shift = torch.zeros(1, 2, *th.shape)
    shift[:, 0] = 5.0
    moved = warp_by_flow(t, -shift)        # thermal content 5 px to the right of where it belongs
    return v, moved, (0.5 * (moved + v)).clamp(0, 1)


@pytest.mark.parametrize('variant', SHIPPED)
def test_misaligned_frame_is_not_skipped(test_data, variant):
    v, moved, fused = _shifted_pair(test_data)
    fast, full = _shipped_with(variant), _shipped_with(variant, skip_aligned=False)
    with torch.no_grad():
        a, b = fast(fused, v, moved), full(fused, v, moved)
    assert a.flows != []
    assert torch.equal(a.image, b.image) and torch.equal(a.flow, b.flow)
    inner = (slice(None), 0, slice(16, -16), slice(16, -16))
    assert float(a.flow[inner].median()) == pytest.approx(5.0, abs=1.5)


def test_skip_aligned_switch_reaches_the_model(test_data):
    from ros2_regionfuse.core.config import PipelineConfig
    from ros2_regionfuse.inference.runtime import build_runner
    from ros2_regionfuse.models.loading import load_model
    off, card = load_model('corrector', 'corrector_multiscale', '', torch.device('cpu'), skip_aligned=False)
    assert not off.cfg.skip_aligned and card['skip_aligned'] is False
    th, vis = _real_pair(test_data, '00537D')
    t, v = convert.to_tensor(th), convert.to_tensor(vis)
    fused = (0.5 * (t + v)).clamp(0, 1)
    cfg = PipelineConfig()
    cfg.corrector.skip_aligned = False
    module = _shipped_with()
    run_full, _ = build_runner('corrector', cfg, torch.device('cpu'), module)
    run_fast, _ = build_runner('corrector', PipelineConfig(), torch.device('cpu'), module)
    assert module.cfg.skip_aligned   # the caller's module is left as it is
    _, m_full, _ = run_full(fused, v, t)
    image, m_fast, _ = run_fast(fused, v, t)
    assert float(m_fast.abs().max()) == 0.0 and torch.equal(image, fused)
    assert float(m_full.max()) > 0.0   # the whole corrector ran: a (small) M everywhere


def test_skip_needs_the_global_flow_and_eval_mode():
    model = _shipped_with()
    params = torch.zeros(1, 4)
    assert model.skips(params, (48, 64))
    assert not model.skips(torch.tensor([[1.5, 0.0, 0.0, 0.0]]), (48, 64))   # beyond min_shift - 4 w
    assert not _shipped_with(refine=True).skips(params, (48, 64))       # learned flow may differ
    assert not _shipped_with(skip_aligned=False).skips(params, (48, 64))
    model.train()
    assert not model.skips(params, (48, 64))


@pytest.mark.parametrize('output', ['retain', 'refuse'])
@pytest.mark.parametrize('h,w', [(64, 96), (45, 61)])   # the second is padded internally
def test_opencv_full_resolution_matches_torch(test_data, h, w, output):
    """The runner's OpenCV full-resolution step gives the torch step's outputs (to OpenCV's
    1/32 px sampling) on a real misregistered pair; training and gradients keep torch."""
    v, moved, fused = _shifted_pair(test_data, (h, w))
    model = _shipped_with(skip_aligned=False, output=output)
    with torch.inference_mode():
        a, b = model(fused, v, moved), correct(model, fused, v, moved, opencv=True)
    assert float(a.flow.abs().max()) > 1.0                     # a real correction ran
    assert b.image.shape == a.image.shape == (1, 1, h, w) and b.flow.shape == (1, 2, h, w)
    assert float((a.flow - b.flow).abs().max()) < 1e-4
    assert float((a.misregistration - b.misregistration).abs().max()) < 1e-5
    assert float((a.image - b.image).abs().max()) < 0.016
    assert float((a.image - b.image).abs().mean()) < 1e-3
    # with gradients the torch step runs whatever is requested
    fr = fused.clone().requires_grad_(True)
    c = correct(model, fr, v, moved, opencv=True)
    c.image.sum().backward()
    assert fr.grad is not None and float(fr.grad.abs().sum()) > 0


def test_runner_uses_the_opencv_step_on_cpu(test_data):
    from ros2_regionfuse.core.config import PipelineConfig
    from ros2_regionfuse.inference.runtime import build_runner
    v, moved, fused = _shifted_pair(test_data)
    module = _shipped_with()
    run, _ = build_runner('corrector', PipelineConfig(), torch.device('cpu'), module)
    image, _, flow = run(fused, v, moved)
    with torch.inference_mode():
        ref_cv = correct(module, fused, v, moved, opencv=True)
    # (the runner traces the learned stages: equal to float rounding)
    assert float((image - ref_cv.image).abs().max()) < 1e-5
    assert float((flow - ref_cv.flow).abs().max()) < 1e-4


def test_pipeline_runs_the_global_registration_in_the_configured_stage(test_data):
    """corrector.align_stage: with fuse, fuse() computes the global registration (align_params) and
    finish() uses it; with correct finish() does (the default auto does too for a first stage alone);
    same results, corrector time either way."""
    from ros2_regionfuse.core.config import PipelineConfig
    from ros2_regionfuse.core.imageio import read_gray, read_rgb
    from ros2_regionfuse.inference.pipeline import FusionPipeline
    th = read_gray(test_data / 'ir' / '00537D.png')
    rgb = read_rgb(test_data / 'vi' / '00537D.png')
    moved = np.ascontiguousarray(np.roll(th, 6, axis=1))     # thermal 6 px to the right
    cfg = PipelineConfig(device='cpu')
    assert cfg.corrector.align_stage == 'auto'
    cfg.corrector.variant = 'corrector_lite'
    cfg.corrector.align_stage = 'fuse'
    pipe = FusionPipeline(cfg)
    pipe.warm_up((rgb.shape[1], rgb.shape[0]))   # traced stages from the first frame: exact comparisons
    frame = pipe.fuse(moved, rgb)
    assert frame.align_params is not None and frame.align_params.shape == (1, 4)
    assert float(frame.align_params[0, 0]) == pytest.approx(6.0, abs=1.5)   # tx in px
    assert frame.sources is not None   # the learned stages' source part, with these parameters
    assert frame.timings_ms['align'] > 0
    res = pipe.finish(frame)
    image, m, flow = pipe._corrector(frame.fused_t, frame.visible_t, frame.thermal_t)   # computes its own
    assert np.array_equal(res.flow, convert.to_numpy(flow))
    assert np.array_equal(res.misregistration, convert.to_numpy(m))
    assert 'align' not in res.timings_ms and res.timings_ms['corrector'] > frame.timings_ms['align']
    off = pipe.fuse(moved, rgb, correct=False)
    assert off.align_params is None
    cfg.corrector.align_stage = 'correct'
    calls = []
    runner_prepare = pipe._corrector.prepare
    pipe._corrector.prepare = lambda *a: calls.append(1) or runner_prepare(*a)
    frame2 = pipe.fuse(moved, rgb)
    assert frame2.align_params is None and frame2.sources is None
    assert calls == []   # fuse() left the registration to finish()
    cfg.corrector.align_stage = 'fuse'
    pipe.fuse(moved, rgb)
    assert calls == [1]   # (the counter sees the call fuse() makes with 'fuse')
    cfg.corrector.align_stage = 'correct'
    res2 = pipe.finish(frame2)
    assert np.array_equal(res2.flow, res.flow) and np.array_equal(res2.fused, res.fused)


def test_runner_traces_the_learned_stages(test_data, monkeypatch, caplog):
    """The corrector runner's traced learned stages give the eager values (to float rounding) on a
    real misregistered pair, one trace per size; a tracing failure falls back to eager, warned."""
    from ros2_regionfuse.inference import runtime
    from ros2_regionfuse.inference.runtime import TorchCorrectorRunner
    v, moved, fused = _shifted_pair(test_data)
    model = _shipped_with()
    with torch.inference_mode():
        params = model.align(v, moved)
        ref = correct(model, fused, v, moved, opencv=True, align_params=params)
    run = TorchCorrectorRunner(model)
    for i in range(3):   # eager (a size's first frame), trace (BUILD_AFTER), then the cached traces
        image, m, flow = run(fused, v, moved, align_params=params)
        assert bool(run._traces) == (i >= runtime.BUILD_AFTER - 1)
        assert float((image - ref.image).abs().max()) < 1e-5
        assert float((m - ref.misregistration).abs().max()) < 1e-5
        assert float((flow - ref.flow).abs().max()) < 1e-4
    # the sources' part computed beforehand (prepare: the registration's OpenCV solver, ~1e-5 px off)
    p2, src = run.prepare(v, moved)
    assert torch.allclose(p2, params, atol=1e-3) and src is not None
    both = run(fused, v, moved, align_params=p2), run(fused, v, moved, align_params=p2, sources=src)
    for a, b in zip(*both):
        assert float((a - b).abs().max()) < 1e-6
    # one trace per size for each part: the sources' part and the rest
    assert sorted(k[0] for k in run._traces) == ['fused', 'sources']
    assert all(isinstance(t, torch.jit.ScriptModule) for t in run._traces.values())
    assert float(flow.abs().max()) > 1.0      # a real correction

    monkeypatch.setattr(runtime.torch.jit, 'trace', lambda *a, **k: (_ for _ in ()).throw(RuntimeError('no')))
    fallback = TorchCorrectorRunner(model)
    with caplog.at_level('WARNING'), runtime.inline_builds():
        image, _, _ = fallback(fused, v, moved, align_params=params)
    assert torch.equal(image, ref.image) and 'corrector: tracing failed' in caplog.text


def test_runner_builds_run_one_at_a_time_across_threads():
    """Traces and ONNX Runtime sessions are built one at a time, also from two threads (the helper
    thread of align_stage auto traces while the main thread exports); a built object is reused."""
    import threading
    import time

    from ros2_regionfuse.inference.runtime import _BuildCache
    spans: list[tuple[str, float, float]] = []

    def build(name: str):
        def make() -> object:
            t0 = time.perf_counter()
            time.sleep(0.05)
            spans.append((name, t0, time.perf_counter()))
            return object()
        return make
    caches = [_BuildCache('a', 'failed', 'fallback'), _BuildCache('b', 'failed', 'fallback')]
    for c in caches:   # a signature's first use builds nothing (BUILD_AFTER = 2)
        assert c.get_or_build(('k',), build('never')) is None and not spans and not c.failed(('k',))
    got: dict[str, object] = {}
    threads = [threading.Thread(target=lambda c=c, n=n: got.__setitem__(n, c.get_or_build(('k',), build(n))))
               for c, n in zip(caches, ('a', 'b'))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=10)
    assert sorted(n for n, _, _ in spans) == ['a', 'b']
    (_, s0, e0), (_, s1, e1) = sorted(spans, key=lambda x: x[1])
    assert e0 <= s1   # no overlap
    assert caches[0].get_or_build(('k',), build('again')) is got['a'] and len(spans) == 2
