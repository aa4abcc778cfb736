"""corrector.align_stage: where the corrector's source-only work runs; auto overlaps it with the fusion.

That work is the global registration and the learned stages' part that needs no fused image.
"""
from __future__ import annotations

import numpy as np
import pytest
import torch

from ros2_regionfuse.core.config import PipelineConfig
from ros2_regionfuse.core.imageio import read_gray, read_rgb
from ros2_regionfuse.inference.pipeline import FusionPipeline

LEARNED = 'corrector_lite'


@pytest.fixture()
def two_threads():
    """Two torch threads for the test (auto overlaps only with >= 2), restored afterwards."""
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope='module')
def frame(test_data) -> tuple[np.ndarray, np.ndarray]:
    return (read_gray(test_data / 'ir' / 'tno17.png', as_uint8=True),
            read_rgb(test_data / 'vi' / 'tno17.png'))


def _pipe(stage: str) -> FusionPipeline:
    cfg = PipelineConfig()
    cfg.corrector.variant = LEARNED   # its registration and source part both run on the helper
    cfg.corrector.align_stage = stage
    cfg.corrector.skip_aligned = False   # the whole corrector, whatever the registration finds
    return FusionPipeline(cfg)


def test_every_stage_gives_the_same_outputs(two_threads, frame):
    """auto (helper thread), correct and fuse compute the same registration: identical outputs."""
    results = {}
    for stage in ('auto', 'correct', 'fuse'):
        pipe = _pipe(stage)
        try:
            results[stage] = pipe.process(*frame, correct=True)
            if stage == 'auto':   # the helper ran its torch operations on one thread
                assert pipe._helper.submit(torch.get_num_threads).result() == 1
        finally:
            pipe.close()
    ref = results['correct']
    assert float(np.abs(ref.flow).max()) > 0.5   # a real (non-zero) flow is compared
    for stage in ('auto', 'fuse'):
        assert np.array_equal(results[stage].fused, ref.fused), stage
        assert np.array_equal(results[stage].flow, ref.flow), stage
    ms = results['auto'].timings_ms
    assert ms['align_concurrent'] > 0.0 and 'align_concurrent' not in ref.timings_ms
    assert ms['total'] == pytest.approx(ms['preprocess'] + ms['fusion'] + ms['corrector'] + ms['postprocess'])
    assert torch.get_num_threads() == 2   # the fusion's thread count was restored


def test_auto_overlaps_only_whole_frames_with_two_threads(two_threads, frame):
    pipe = _pipe('auto')
    try:
        half = pipe.fuse(*frame, correct=True)                 # the node's first stage: no overlap
        assert half.align_params is None and 'align_concurrent' not in half.timings_ms
        assert half.sources is None
        whole = pipe.fuse(*frame, correct=True, whole_frame=True)
        assert whole.align_params is not None and whole.align_params.shape == (1, 4)
        assert whole.helper_threads == 2 and half.helper_threads == 0   # finish: corrector on 1 + C on 2
        assert whole.sources is not None and all(isinstance(t, torch.Tensor) for t in whole.sources)
        assert pipe._helper is not None
        torch.set_num_threads(1)                               # one thread: nothing to overlap with
        single = pipe.fuse(*frame, correct=True, whole_frame=True)
        assert single.align_params is None
        no_corr = pipe.fuse(*frame, correct=False, whole_frame=True)
        assert no_corr.align_params is None
        torch.set_num_threads(2)
        a, b = pipe.finish(whole), pipe.finish(half)
        # The overlapped frame's fusion ran on one torch thread, the other's on two: oneDNN may sum
        # in another order (2.4e-7 on the Intel Xeon VM), which rounds a few pixels by one level.
        diff = np.abs(a.fused.astype(np.int16) - b.fused.astype(np.int16))
        assert int(diff.max()) <= 1 and float((diff > 0).mean()) < 1e-3
        assert np.array_equal(a.flow, b.flow)
        assert torch.get_num_threads() == 2   # restored after the corrector's one thread
    finally:
        pipe.close()
    assert pipe._helper is None
    pipe.close()   # idempotent


def test_fusion_error_is_reported_and_threads_restored(two_threads, frame, monkeypatch):
    pipe = _pipe('auto')

    def broken(*args, **kwargs):
        raise RuntimeError('fusion failed')
    monkeypatch.setattr(pipe, 'fusion', broken)
    try:
        with pytest.raises(RuntimeError, match='fusion failed'):
            pipe.process(*frame, correct=True)
        assert torch.get_num_threads() == 2
    finally:
        pipe.close()


def test_bench_reports_the_concurrent_registration(two_threads, frame):
    """regionfuse bench keeps the helper thread's time apart from the stages (not in 'total')."""
    from ros2_regionfuse.inference import benchmark as bench
    pipe = _pipe('auto')
    try:
        samples, _ = bench.pipeline_samples(pipe, [frame[0]] * 2, [frame[1]] * 2, repeats=3, warmup=1)
    finally:
        pipe.close()
    assert set(samples) == set(bench.STAGES) | {'align_concurrent'}
    assert len(samples['align_concurrent']) == 3 and min(samples['align_concurrent']) > 0.0


def test_warm_up_builds_what_the_first_pair_of_that_size_needs(frame):
    """After warm_up((W, H)) a real pair of that size builds nothing more (ORT session, traces)."""
    import cv2
    cfg = PipelineConfig()
    cfg.corrector.variant = LEARNED
    pipe = FusionPipeline(cfg)
    try:
        ms = pipe.warm_up((160, 120), thermal_size=(80, 64))
        assert ms > 0.0
        caches = {'fusion ort': pipe.fusion.runner._ort, 'fusion traces': pipe.fusion.runner._traces,
                  'corrector traces': pipe._corrector._traces}
        built = {k: {key for key, v in c.items() if v is not None} for k, c in caches.items()}
        assert built['fusion ort'] or built['fusion traces']       # the region network was built
        assert built['corrector traces']                             # the learned stages ran (forced shift)
        th, rgb = frame
        res = pipe.process(cv2.resize(th, (80, 64)), cv2.resize(rgb, (160, 120)), correct=True)
        assert res.fused.shape == (120, 160, 3)
        after = {k: {key for key, v in c.items() if v is not None} for k, c in caches.items()}
        assert after == built
    finally:
        pipe.close()


def test_demo_warms_the_node_up_at_the_recordings_size():
    from ros2_regionfuse.cli import demo
    msgs = demo.load_inputs(demo.BUNDLED_BAG, max_frames=1)
    assert demo.warmup_params(msgs) == ['warmup_width:=448', 'warmup_height:=336']
    assert demo.warmup_params([m for m in msgs if m.topic != demo.INPUT_TOPICS['rgb']]) == []
