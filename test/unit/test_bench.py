"""``regionfuse bench`` in a tiny configuration, the reference model's size, profiling helpers.

No timed asserts: only structure and sanity of the numbers.
"""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from ros2_regionfuse.cli.main import main
from ros2_regionfuse.core import profiling
from ros2_regionfuse.core.checks import ConfigError
from ros2_regionfuse.core.config import CorrectorConfig
from ros2_regionfuse.inference import benchmark as bench
from ros2_regionfuse.models.registry import build_corrector, build_fusion, needs_weights


@pytest.fixture(scope='module')
def report(tmp_path_factory, test_data):
    out = tmp_path_factory.mktemp('bench') / 'bench.json'
    rc = main(['bench', '--size', '96x72', '--size', '80x64', '--repeats', '3', '--warmup', '1',
               '--reference-repeats', '2', '--reference-sizes', '64x48', '--threads', '1',
               '--data', str(test_data), '--pairs', '2', '--json', str(out)])
    assert rc == 0
    return json.loads(out.read_text())


def test_bench_report_structure(report, test_data):
    assert set(report) >= {'command', 'machine', 'config', 'models', 'data', 'sizes', 'targets',
                           'peak_rss_mb_pipeline', 'peak_rss_mb_total', 'rss_mb'}
    assert report['machine']['cpu'] and report['machine']['torch'] == torch.__version__
    assert report['config']['threads'] == 1 and report['config']['backend'] == 'torch'
    assert report['config']['native_kernels'].startswith(('built ', 'loaded '))   # the fused C kernels ran
    assert report['data']['source'].endswith(str(test_data)) and len(report['data']['frames']) == 2
    assert list(report['sizes']) == ['96x72', '80x64', '64x48']
    assert set(report['targets']) >= {'pipeline_median_ms', 'pipeline_vs_corrector_paper',
                                      'pipeline_vs_reference_dense'}


@pytest.mark.parametrize('size', ['96x72', '80x64'])
def test_bench_stage_numbers_are_sane(report, size):
    res = report['sizes'][size]
    st = res['stages_ms']
    assert set(st) == set(bench.STAGES)
    assert res['corrector_unchanged']['of'] == 3 and 0 <= res['corrector_unchanged']['frames'] <= 3
    for k, s in st.items():
        assert s['n'] == 3, k
        assert 0.0 <= s['min'] <= s['median'] <= s['p95'] <= s['max'], k
    assert st['fusion']['median'] > 0 and st['corrector']['median'] > 0
    # the total covers every stage of the same runs
    assert st['total']['max'] >= max(st[k]['max'] for k in bench.STAGES[:-1]) * 0.999
    w, h = (int(v) for v in size.split('x'))
    fusion = build_fusion('regionfuse_fine')
    assert res['cost']['fusion']['params'] == profiling.count_params(fusion)
    variant = CorrectorConfig().variant
    default = profiling.count_params(build_corrector(variant)) if needs_weights('corrector', variant) else 0
    assert res['cost']['corrector']['params'] == default
    flops = profiling.count_flops(fusion.eval(), torch.rand(1, 1, h, w), torch.rand(1, 1, h, w))
    assert res['cost']['fusion']['gflops'] == pytest.approx(flops / 1e9)


def test_bench_references_and_ratios(report):
    res = report['sizes']['64x48']
    refs = res['references']
    assert set(refs) == {'corrector_paper', 'reference_dense'}
    for r in refs.values():
        assert r['n'] == 2 and r['median'] > 0 and r['layout'] in ('nchw', 'channels_last')
        assert r['gflops'] > 0 and r['params'] > 0
    # reference sizes not timed for the pipeline: no ratios there
    assert 'stages_ms' not in res and 'ratios' not in res
    assert report['peak_rss_mb_total'] >= report['peak_rss_mb_pipeline'] > 0


def test_ratios_are_reference_over_ours():
    st = {'total': {'median': 20.0}, 'fusion': {'median': 8.0}, 'corrector': {'median': 4.0}}
    rf = {'corrector_paper': {'median': 4000.0}, 'reference_dense': {'median': 1600.0}}
    r = bench.ratios(st, rf)
    assert r == {'pipeline_vs_corrector_paper': 200.0, 'pipeline_vs_reference_dense': 80.0,
                 'corrector_vs_corrector_paper': 1000.0, 'fusion_vs_reference_dense': 200.0}
    tg = bench.check_targets({'640x480': {'stages_ms': {k: {'median': 60.0} for k in bench.STAGES},
                                          'ratios': r}})
    assert tg['pipeline_median_ms']['pass'] is False and tg['pipeline_vs_corrector_paper']['pass'] is True
    assert bench.check_targets({})['pipeline_median_ms']['pass'] is None


def test_reference_dense_has_published_size():
    from ros2_regionfuse.models import reference  # noqa: F401  (registers reference_dense)
    m = build_fusion('reference_dense').eval()
    assert 160_000 < profiling.count_params(m) < 170_000  # SeAFusion: 0.167 M
    x = torch.rand(1, 1, 48, 64)
    gflops_640 = profiling.count_flops(m, x, x) * (640 * 480) / (64 * 48) / 1e9
    assert 95.0 < gflops_640 < 110.0  # ~100 GFLOPs per 640x480 frame
    with torch.inference_mode():
        out = m(x, x)
    assert out.shape == x.shape and 0.0 <= out.min() and out.max() <= 1.0


def test_corrector_paper_has_published_size():
    """The timing reference costs what the published width-16 FusionRegister costs (233 GFLOPs)."""
    m = build_corrector('corrector_paper').eval()
    assert 0.55e6 < profiling.count_params(m) < 0.8e6            # published: 0.77 M
    x = torch.rand(1, 1, 96, 128)
    gflops_640 = profiling.count_flops(lambda a: m(a, a, a), x) * (640 * 480) / (128 * 96) / 1e9
    assert 220.0 < gflops_640 < 250.0
    for variant in ('corrector_multiscale', 'corrector_lite'):
        fast = build_corrector(variant).eval()
        fast_flops = profiling.count_flops(lambda a, fast=fast: fast(a, a, a), x)
        assert fast_flops * 100 < profiling.count_flops(lambda a: m(a, a, a), x), variant


def test_frames_from_folder_and_bag(test_data):
    fr = bench.frames_from_folder(test_data, 2)
    assert len(fr.rgb) == len(fr.thermal) == 2
    assert all(t.dtype == np.uint16 and t.shape == (512, 640) for t in fr.thermal)
    assert len({v.shape for v in fr.rgb}) == 1 and fr.rgb[0].shape[2] == 3
    rgb, hom = bench.frames_at(fr, (320, 240))
    assert rgb[0].shape == (240, 320, 3)
    # the homography maps the thermal frame's corners onto the RGB frame's
    corner = hom @ np.array([640.0, 512.0, 1.0])
    assert corner[:2] / corner[2] == pytest.approx([320.0, 240.0])
    if bench.BUNDLED_BAG.exists():
        fb = bench.frames_from_bag(bench.BUNDLED_BAG, 2)
        assert len(fb.rgb) == 2 and fb.thermal[0].dtype == np.uint16 and fb.homography.shape == (3, 3)


def test_bench_bad_arguments(test_data):
    with pytest.raises(ConfigError):
        bench.parse_size('640by480')
    assert main(['bench', '--repeats', '0', '--data', str(test_data)]) == 2
    assert main(['bench', '--size', '0x5', '--data', str(test_data), '--no-reference']) == 2


def test_summarize_ms():
    s = profiling.summarize_ms([3.0, 1.0, 2.0, 10.0])
    assert s['median'] == 2.5 and s['min'] == 1.0 and s['max'] == 10.0 and s['n'] == 4
    assert s['median'] <= s['p95'] <= s['max']
    assert profiling.summarize_ms([])['n'] == 0


def test_bench_alternates_pipeline_and_references_in_rounds(tmp_path, test_data):
    """At a size timed for both, the pipeline and the references alternate: per-round ratios."""
    out = tmp_path / 'bench.json'
    rc = main(['bench', '--size', '64x48', '--repeats', '5', '--warmup', '1', '--reference-repeats', '2',
               '--rounds', '3', '--threads', '1', '--data', str(test_data), '--pairs', '2',
               '--json', str(out)])
    assert rc == 0
    rep = json.loads(out.read_text())
    assert rep['config']['rounds'] == 2                      # capped by --reference-repeats
    res = rep['sizes']['64x48']
    assert res['stages_ms']['total']['n'] == 5 and res['corrector_unchanged']['of'] == 5
    assert all(r['n'] == 2 for r in res['references'].values())
    by_round = res['ratios_by_round']
    assert set(by_round) == {'pipeline_vs_corrector_paper', 'pipeline_vs_reference_dense'}
    assert all(len(v) == 2 and min(v) > 0 for v in by_round.values())
    ref = res['references']['corrector_paper']['median'] / res['stages_ms']['total']['median']
    assert res['ratios']['pipeline_vs_corrector_paper'] == pytest.approx(ref)
    # the overall ratio lies within the spread of the rounds' ratios (same samples, pooled)
    lo, hi = min(by_round['pipeline_vs_corrector_paper']), max(by_round['pipeline_vs_corrector_paper'])
    assert 0.5 * lo <= ref <= 2.0 * hi


def test_bench_rounds_never_leave_a_side_without_runs(tmp_path, test_data):
    """Fewer pipeline runs than rounds: the rounds shrink, every ratio has both sides."""
    out = tmp_path / 'bench.json'
    assert main(['bench', '--size', '64x48', '--repeats', '1', '--warmup', '0', '--reference-repeats', '3',
                 '--rounds', '3', '--threads', '1', '--data', str(test_data), '--pairs', '1',
                 '--json', str(out)]) == 0
    rep = json.loads(out.read_text())
    assert rep['config']['rounds'] == 1
    res = rep['sizes']['64x48']
    assert res['stages_ms']['total']['n'] == 1 and all(r['n'] == 3 for r in res['references'].values())
    assert all(len(v) == 1 and np.isfinite(v[0]) for v in res['ratios_by_round'].values())
    assert rep['rss_mb']['after_pipeline'] <= rep['peak_rss_mb_pipeline'] <= rep['peak_rss_mb_total']
