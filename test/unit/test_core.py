"""Config, conversion, alignment and pipeline (ROS-free) with values asserted."""
from __future__ import annotations

import numpy as np
import pytest

from ros2_regionfuse.core import convert
from ros2_regionfuse.core.align import (
    homography_from_values,
    plane_homography,
    scale_homography,
    warp_thermal,
)
from ros2_regionfuse.core.checks import ConfigError, RegionFuseError, ShapeError, ValueRangeError
from ros2_regionfuse.core.config import (
    NodeConfig,
    PipelineConfig,
    field_specs,
    set_value,
    to_dict,
    update_from_dict,
)
from ros2_regionfuse.inference.pipeline import FusionPipeline, select_device
from ros2_regionfuse.models.registry import build_fusion


# --- config -------------------------------------------------------------------------------
def test_config_names_and_validation() -> None:
    cfg = NodeConfig()
    specs = field_specs(cfg)
    assert {'device', 'fusion.checkpoint', 'sync.slop', 'thermal.percentiles',
            'publish.flow', 'diagnostics.stale_timeout'} <= set(specs)
    set_value(cfg, 'sync.slop', 0.2)
    assert cfg.sync.slop == 0.2
    set_value(cfg, 'thermal.agc', 'fixed')
    assert cfg.pipeline.thermal.agc == 'fixed'
    for name, bad in [('sync.slop', -1.0), ('device', 'tpu'), ('thermal.percentiles', [99, 1]),
                      ('align.homography', [1, 0, 0]), ('publish.flow', 1), ('nope', 1)]:
        with pytest.raises(ConfigError) as e:
            set_value(cfg, name, bad)
        assert name.split('.')[0] in str(e.value)


def test_update_from_nested_dict_round_trip() -> None:
    cfg = update_from_dict(NodeConfig(), {'sync': {'slop': 0.01}, 'device': 'cpu'})
    flat = to_dict(cfg)
    assert flat['sync.slop'] == 0.01 and flat['device'] == 'cpu'
    assert flat['corrector.enabled'] is True


# --- conversion ---------------------------------------------------------------------------
def test_thermal_agc_percentile_and_fixed(rng: np.random.Generator) -> None:
    raw = rng.integers(7000, 9000, (60, 80)).astype(np.uint16)
    u = convert.thermal_to_unit(raw, 'percentile', (0.0, 100.0))
    assert u.dtype == np.float32 and u.min() == 0.0 and u.max() == 1.0
    f = convert.thermal_to_unit(raw, 'fixed', value_range=(7000, 9000))
    assert np.allclose(f, (raw.astype(np.float32) - 7000) / 2000, atol=1e-6)
    inv = convert.thermal_to_unit(raw, 'fixed', value_range=(7000, 9000), invert=True)
    assert np.allclose(inv, 1 - f)
    with pytest.raises(ValueRangeError):
        convert.thermal_to_unit(np.full((4, 4), np.nan, np.float32))
    with pytest.raises(ShapeError):
        convert.thermal_to_unit(np.zeros((0, 4), np.uint16))


def test_colour_round_trip_and_gray_stays_gray(rng: np.random.Generator) -> None:
    rgb = rng.random((16, 16, 3)).astype(np.float32)
    assert np.abs(convert.ycbcr_to_rgb(convert.rgb_to_ycbcr(rgb)) - rgb).max() < 1e-5
    y = convert.luminance(rgb)
    assert np.abs(convert.replace_luminance(rgb, y) - rgb).max() < 1e-5
    gray = convert.rgb_to_unit(rng.integers(0, 256, (8, 8)).astype(np.uint8))
    out = convert.replace_luminance(gray, rng.random((8, 8)).astype(np.float32))
    assert np.abs(out[..., 0] - out[..., 1]).max() < 1e-5
    assert np.abs(out[..., 1] - out[..., 2]).max() < 1e-5


# --- alignment ----------------------------------------------------------------------------
def test_homography_warp_shift_and_scaling() -> None:
    img = np.zeros((40, 50), np.float32)
    img[10:20, 10:20] = 1.0
    h = homography_from_values([1, 0, 5, 0, 1, 3, 0, 0, 1])  # shift +5 x, +3 y
    out, valid = warp_thermal(img, h, (50, 40))
    assert out[13:23, 15:25].mean() == pytest.approx(1.0)
    assert not valid[:3].any() and valid[3:, 5:].all()
    h2 = scale_homography(h, (1.0, 1.0), (2.0, 2.0))
    assert np.allclose(h2 @ [0, 0, 1], [10, 6, 1])
    with pytest.raises(ConfigError):
        homography_from_values([0] * 9)


def test_warp_thermal_fast_paths_match_the_exact_warp() -> None:
    """Affine homographies take warpAffine; a covered output skips the mask warp; both exact."""
    import cv2

    from ros2_regionfuse.core.align import covers_output
    rng = np.random.default_rng(3)
    img = rng.random((64, 80)).astype(np.float32)
    covered = partial = 0
    for _ in range(200):
        s = rng.uniform(0.8, 2.5)
        h = np.array([[s * rng.uniform(0.97, 1.03), rng.uniform(-0.05, 0.05), rng.uniform(-30, 10)],
                      [rng.uniform(-0.05, 0.05), s, rng.uniform(-30, 10)],
                      [0.0, 0.0, 1.0]])
        if rng.random() < 0.3:
            h[2, :2] = rng.uniform(-2e-4, 2e-4, 2)   # perspective
        out_wh = (int(rng.integers(40, 160)), int(rng.integers(30, 120)))
        out, valid = warp_thermal(img, h, out_wh)
        ref = cv2.warpPerspective(img, h, out_wh, flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT)
        exact = cv2.warpPerspective(np.ones(img.shape, np.uint8), h, out_wh, flags=cv2.INTER_NEAREST,
                                    borderMode=cv2.BORDER_CONSTANT) > 0
        assert np.abs(out - ref).max() < 1e-4
        assert np.array_equal(valid, exact)
        if covers_output(h, img.shape, out_wh[::-1]):
            covered += 1
            assert exact.all()
        else:
            partial += 1
    assert covered > 20 and partial > 20   # both branches exercised


def test_plane_homography_parallax() -> None:
    k = np.array([[400.0, 0, 320], [0, 400.0, 240], [0, 0, 1]])
    h = plane_homography(k, k, [0.05, 0, 0, 0, 0, 0], 2.0)  # 400 * 0.05 / 2 = 10 px
    p = h @ [100.0, 50.0, 1.0]
    assert p[0] / p[2] == pytest.approx(110.0) and p[1] / p[2] == pytest.approx(50.0)


# --- pipeline -----------------------------------------------------------------------------
@pytest.fixture(scope='module')
def pipeline() -> FusionPipeline:
    cfg = PipelineConfig(device='cpu')
    cfg.corrector.enabled = False
    return FusionPipeline(cfg, fusion=build_fusion('regionfuse_fine'))


def test_pipeline_shapes_sizes_and_dtypes(pipeline: FusionPipeline,
                                          rng: np.random.Generator) -> None:
    thermal = rng.integers(7000, 9000, (64, 80)).astype(np.uint16)  # other size than RGB
    rgb = rng.integers(0, 256, (97, 131, 3)).astype(np.uint8)
    res = pipeline.process(thermal, rgb)
    assert res.fused.shape == (97, 131, 3) and res.fused.dtype == np.uint8
    assert res.thermal.shape == (97, 131)
    assert res.misregistration is None and np.isnan(res.misaligned_fraction)
    assert set(res.timings_ms) == {'preprocess', 'fusion', 'corrector', 'postprocess', 'total'}
    small = pipeline.process(thermal, rgb, out_size=(64, 48))
    assert small.fused.shape == (48, 64, 3)


def test_fuse_then_finish_equals_process(rng: np.random.Generator) -> None:
    import torch

    from ros2_regionfuse.models.registry import build_corrector
    torch.manual_seed(0)
    cfg = PipelineConfig(device='cpu')
    pipe = FusionPipeline(cfg, fusion=build_fusion('regionfuse_fine'),
                          corrector=build_corrector('corrector_multiscale'))
    thermal = rng.integers(7000, 9000, (60, 80)).astype(np.uint16)
    rgb = rng.integers(0, 256, (72, 96, 3)).astype(np.uint8)
    whole = pipe.process(thermal, rgb)
    frame = pipe.fuse(thermal, rgb)
    cfg.corrector.enabled = False            # resolved at fuse(): the pair is still corrected
    halves = pipe.finish(frame)
    assert frame.correct and halves.flow is not None
    for name in ('fused', 'fused_raw', 'thermal', 'misregistration', 'flow'):
        assert np.array_equal(getattr(whole, name), getattr(halves, name)), name
    assert halves.timings_ms['preprocess'] == frame.timings_ms['preprocess']
    assert halves.timings_ms['total'] == pytest.approx(sum(
        halves.timings_ms[k] for k in ('preprocess', 'fusion', 'corrector', 'postprocess')))
    off = pipe.finish(pipe.fuse(thermal, rgb))   # now off for new pairs
    assert off.flow is None and off.fused_raw is off.fused
    # fused_raw (built on first access): the uncorrected fusion with the output's contrast bounds
    corrected_y = convert.to_numpy(pipe._corrector(frame.fused_t, frame.visible_t, frame.thermal_t)[0])
    bounds = convert.contrast_bounds(corrected_y, cfg.fusion.contrast, cfg.fusion.contrast_percentiles,
                                     cfg.fusion.contrast_strength)
    raw_y = convert.apply_contrast(convert.to_numpy(frame.fused_t), bounds)
    assert frame.rgb.dtype == np.uint8 and np.array_equal(frame.rgb, rgb)   # 8-bit colour source kept as is
    expected = convert.unit_to_uint8(convert.replace_luminance(convert.rgb_to_unit(rgb), raw_y))
    assert np.abs(halves.fused_raw.astype(int) - expected).max() <= 1   # 1 LSB: rounding of exact halves
    assert (halves.fused_raw != expected).mean() < 1e-3 and halves.fused_raw is halves.fused_raw


def test_stage_threads_split_the_cores() -> None:
    from ros2_regionfuse.inference.pipeline import stage_threads
    assert [stage_threads(2, c) for c in (1, 2, 3, 8)] == [1, 1, 1, 4]
    assert stage_threads(1, 6) == 6 and stage_threads(2) >= 1


def test_pipeline_keeps_opencv_single_threaded() -> None:
    """OpenCV's own thread pool contends with torch's workers: a pipeline sets it to one thread."""
    import cv2

    from ros2_regionfuse.inference.pipeline import OPENCV_THREADS
    before = cv2.getNumThreads()
    try:
        cv2.setNumThreads(4)
        cfg = PipelineConfig(device='cpu')
        cfg.corrector.enabled = False
        FusionPipeline(cfg, fusion=build_fusion('regionfuse_fine'))
        assert OPENCV_THREADS == 1 and cv2.getNumThreads() == 1
    finally:
        cv2.setNumThreads(before)


def test_pipeline_gray_rgb_gives_gray_output(pipeline: FusionPipeline,
                                             rng: np.random.Generator) -> None:
    res = pipeline.process(rng.integers(0, 256, (40, 40)).astype(np.uint8),
                           rng.integers(0, 256, (40, 40)).astype(np.uint8))
    f = res.fused.astype(int)
    assert np.abs(f[..., 0] - f[..., 1]).max() <= 1 and np.abs(f[..., 1] - f[..., 2]).max() <= 1


def test_pipeline_keeps_colour_of_rgb(pipeline: FusionPipeline) -> None:
    rgb = np.zeros((32, 32, 3), np.uint8)
    rgb[..., 0] = 200  # red scene
    res = pipeline.process(np.full((32, 32), 128, np.uint8), rgb)
    assert (res.fused[..., 0].astype(int) - res.fused[..., 2].astype(int)).mean() > 50


def test_pipeline_bad_input_errors(pipeline: FusionPipeline) -> None:
    ok = np.zeros((8, 8, 3), np.uint8)
    for thermal in (np.zeros((0, 8), np.uint8), np.full((8, 8), np.inf, np.float32),
                    np.zeros((8, 8, 3), np.uint8), 'not an array'):
        with pytest.raises(RegionFuseError):
            pipeline.process(thermal, ok)  # type: ignore[arg-type]
    with pytest.raises(RegionFuseError):
        pipeline.process(np.zeros((8, 8), np.uint8), np.zeros((8, 8, 4), np.uint8))


def test_pipeline_homography_fills_outside_with_visible(rng: np.random.Generator) -> None:
    cfg = PipelineConfig(device='cpu')
    cfg.corrector.enabled = False
    cfg.align.mode = 'homography'
    cfg.align.homography = [1, 0, 20, 0, 1, 0, 0, 0, 1]
    pipe = FusionPipeline(cfg, fusion=build_fusion('regionfuse_fine'))
    rgb = rng.integers(0, 256, (48, 64, 3)).astype(np.uint8)
    res = pipe.process(np.full((48, 64), 255, np.uint8), rgb)
    y = convert.luminance(convert.rgb_to_unit(rgb))
    assert np.allclose(res.thermal[:, :20], y[:, :20], atol=1e-6)
    assert np.allclose(res.thermal[:, 20:], 1.0)


def test_select_device() -> None:
    assert select_device('cpu').type == 'cpu'
    assert select_device('auto').type in ('cpu', 'cuda')
    with pytest.raises(ConfigError):
        select_device('gpu')


def test_output_contrast_modes(rng: np.random.Generator) -> None:
    y = (0.2 + 0.5 * rng.random((50, 60))).astype(np.float32)
    assert convert.contrast_bounds(y, 'none') == (0.0, 1.0)
    lo, hi = convert.contrast_bounds(y, 'minmax')
    out = convert.apply_contrast(y, (lo, hi))
    assert out.min() == 0.0 and out.max() == pytest.approx(1.0)
    lo, hi = convert.contrast_bounds(y, 'percentile', (5.0, 95.0))
    out = convert.apply_contrast(y, (lo, hi))
    assert 0.04 < (out == 0.0).mean() < 0.06 and 0.04 < (out == 1.0).mean() < 0.06
    flat = np.full((8, 8), 0.4, np.float32)
    assert np.array_equal(convert.apply_contrast(flat, convert.contrast_bounds(flat, 'minmax')),
                          flat)
    with pytest.raises(RegionFuseError):
        convert.contrast_bounds(y, 'gamma')


def test_pipeline_contrast_none_vs_minmax(rng: np.random.Generator) -> None:
    cfg = PipelineConfig(device='cpu')
    cfg.corrector.enabled = False
    cfg.fusion.contrast = 'none'
    pipe = FusionPipeline(cfg, fusion=build_fusion('regionfuse_fine'))
    th = (rng.random((40, 40)) * 100 + 60).astype(np.uint8)
    rgb = np.repeat((rng.random((40, 40, 1)) * 100 + 60).astype(np.uint8), 3, axis=2)
    a = pipe.process(th, rgb).fused
    cfg.fusion.contrast = 'minmax'
    cfg.fusion.contrast_strength = 1.0
    b = pipe.process(th, rgb).fused
    assert a.max() - a.min() < 200
    assert b.min() == 0 and b.max() == 255
    cfg.fusion.contrast_strength = 0.5    # half the stretch: between the two
    c = pipe.process(th, rgb).fused.astype(int)
    assert np.abs(c - (a.astype(int) + b) / 2).max() <= 1


def test_contrast_strength_is_a_partial_stretch(rng: np.random.Generator) -> None:
    """The bounds of strength s map y to (1 - s) y + s (y - lo) / (hi - lo), clipped to [0, 1]."""
    y = (0.1 + 0.8 * rng.random((50, 60))).astype(np.float32)
    full = convert.contrast_bounds(y, 'percentile', (2.0, 98.0))
    lo, hi = full
    for s in (0.0, 0.3, 0.7, 1.0):
        got = convert.apply_contrast(y.copy(), convert.contrast_bounds(y, 'percentile', (2.0, 98.0), s))
        want = np.clip((1 - s) * y + s * (y - lo) / (hi - lo), 0, 1)
        assert np.abs(got - want).max() < 1e-5, s
    assert convert.contrast_bounds(y, 'percentile', (2.0, 98.0), 1.0) == full
    with pytest.raises(RegionFuseError):
        convert.contrast_bounds(y, 'minmax', strength=1.5)


def test_source_mix_blends_the_sources_mean_into_every_fusion(rng: np.random.Generator) -> None:
    """fusion.source_mix: the pipeline's fused luminance is (1 - m) net + m (thermal + visible) / 2,
    read at each frame; the register_refuse corrector re-fuses through the same runner."""
    import torch

    from ros2_regionfuse.inference.runtime import SourceMixRunner
    cfg = PipelineConfig(device='cpu')
    cfg.corrector.enabled = False
    cfg.fusion.contrast = 'none'
    cfg.fusion.source_mix = 0.0
    pipe = FusionPipeline(cfg, fusion=build_fusion('regionfuse_fine'))
    th = (rng.random((48, 64)) * 150 + 40).astype(np.uint8)
    rgb = np.repeat((rng.random((48, 64, 1)) * 150 + 40).astype(np.uint8), 3, axis=2)
    frame = pipe.fuse(th, rgb)
    net = convert.to_numpy(frame.fused_t)
    t, v = convert.to_numpy(frame.thermal_t), convert.to_numpy(frame.visible_t)
    cfg.fusion.source_mix = 0.4          # a running node's change reaches the next frame
    mixed = convert.to_numpy(pipe.fuse(th, rgb).fused_t)
    assert np.abs(mixed - (0.6 * net + 0.4 * (t + v) / 2)).max() < 1e-5
    assert np.abs(mixed - net).max() > 0.01
    assert isinstance(pipe.fusion, SourceMixRunner)
    cfg.corrector.enabled = True
    pipe.ensure_corrector()
    assert pipe.corrector.refuse is pipe.fusion   # the re-fusion gets the same output stage
    one = torch.ones(1, 1, 2, 2)
    assert torch.equal(SourceMixRunner(lambda a, b: 0.2 * a, lambda: 0.0)(one, 0 * one), 0.2 * one)
