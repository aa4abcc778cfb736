"""The fused C kernels (ros2_regionfuse.native) against the torch code they replace; build, fallbacks."""
from __future__ import annotations

import logging
import platform
import re
import shutil
import subprocess

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from ros2_regionfuse import native
from ros2_regionfuse.models.corrector import full_resolution, full_resolution_native
from ros2_regionfuse.models.fusion_net import fuse


@pytest.fixture()
def fresh_native():
    """Forget the loaded library before and after the test (env changes take effect on the next load)."""
    native._reset_for_tests()
    yield native
    native._reset_for_tests()


def _t(a: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(a)[None, None]


def _up(a: np.ndarray, size: tuple[int, int]) -> torch.Tensor:
    return F.interpolate(_t(a), size=size, mode='bilinear', align_corners=False)


def _planes(rng: np.random.Generator, h: int, w: int) -> tuple[np.ndarray, ...]:
    gt, gy = rng.random((h, w), np.float32), rng.random((h, w), np.float32)
    gt1 = F.avg_pool2d(_t(gt), 2)[0, 0].numpy().copy()
    gy1 = F.avg_pool2d(_t(gy), 2)[0, 0].numpy().copy()
    x1 = rng.random((h // 2, w // 2), np.float32)
    return gt, gy, gt1, gy1, x1


def test_kernels_are_available_here():
    """This machine has a C compiler: the kernels build and load (else the package falls back)."""
    assert native.available(), native.status()
    assert native.status().startswith(('built ', 'loaded '))


@pytest.mark.parametrize('hw,f', [((48, 64), 2), ((48, 64), 8), ((240, 320), 4), ((6, 10), 2), ((2, 2), 1)])
def test_detail_energy_equals_pooled_abs_details(rng, hw, f):
    h, w = hw
    g = rng.random((h, w), np.float32)
    g1 = rng.random((h // 2, w // 2), np.float32)
    ref = F.avg_pool2d((_t(g) - _up(g1, hw)).abs(), f)[0, 0].numpy()
    got = native.detail_energy(g, g1, f)
    assert got.shape == (h // f, w // f)
    np.testing.assert_allclose(got, ref, atol=2e-6, rtol=0)
    assert float(ref.std()) > 0 or ref.size == 1


@pytest.mark.parametrize('hw,net', [((48, 64), (3, 4)), ((30, 40), (30, 40)), ((10, 6), (5, 3)),
                                    ((2, 2), (1, 1)), ((480, 640), (30, 40))])
@pytest.mark.parametrize('clamp', [True, False])
def test_fuse_level_equals_the_torch_composition(rng, hw, net, clamp):
    """One level of RegionFuseNet's blending and reconstruction, written out in torch ops."""
    gt, gy, gt1, gy1, x1 = _planes(rng, *hw)
    bias = (3 * rng.standard_normal(net)).astype(np.float32)
    gain = (0.5 + rng.random(net)).astype(np.float32)
    temp = 8.0
    d_t, d_y = _t(gt) - _up(gt1, hw), _t(gy) - _up(gy1, hw)
    a_t, a_y = F.avg_pool2d(d_t.abs(), 3, 1, 1), F.avg_pool2d(d_y.abs(), 3, 1, 1)
    s = torch.sigmoid(temp * (a_t - a_y) / (a_t + a_y + 1e-3) + _up(bias, hw))
    ref = _up(x1, hw) + _up(gain, hw) * torch.lerp(d_y, d_t, s)
    if clamp:
        ref = ref.clamp(0, 1)
    out = np.full(hw, np.nan, np.float32)
    got = native.fuse_level(gt, gy, gt1, gy1, x1, bias, gain, temp, clamp, out=out)
    assert got is out
    np.testing.assert_allclose(got, ref[0, 0].numpy(), atol=3e-6, rtol=0)
    # rows split over threads (each part primes its ring of neighbour rows): bit for bit the same
    for threads in (2, 3):
        split = native.fuse_level(gt, gy, gt1, gy1, x1, bias, gain, temp, clamp, threads=threads)
        assert np.array_equal(split, got), threads
    if not clamp:
        assert float(ref.min()) < 0 or float(ref.max()) > 1 or hw == (2, 2)   # the clamp was tested


def test_blending_exp_is_vectorised_by_gcc_on_x86():
    """The fusion's blending pass (the only expf of the kernels) calls libmvec's vector expf when GCC
    builds for x86-64 with AVX2 or AVX-512: its loop vectorises. A refactor that stopped it (scalar
    expf in a loop that no longer vectorised) makes the pass 3-5x slower."""
    cc = native._compiler()
    version = native._compiler_version(cc) if cc else ''
    flags = native._cpu_features()
    if not (native.available() and platform.machine() == 'x86_64'
            and native.compile_flags(version) != native.CFLAGS and ' avx2' in flags and shutil.which('nm')):
        pytest.skip('applies to GCC builds on x86-64 with AVX2 and binutils nm')
    symbols = subprocess.run(['nm', '-D', native.load()._name], capture_output=True, text=True,
                             timeout=60).stdout
    assert re.search(r'_ZGV\w+_expf', symbols), 'the blending loop calls the scalar expf only'


def test_kernel_arguments_are_checked(rng):
    gt, gy, gt1, gy1, x1 = _planes(rng, 8, 8)
    b = np.zeros((2, 2), np.float32)
    with pytest.raises(ValueError, match='float32'):
        native.fuse_level(gt.astype(np.float64), gy, gt1, gy1, x1, b, b, 1.0, True)
    with pytest.raises(ValueError, match='shape'):
        native.fuse_level(gt, gy, gt1[:3], gy1, x1, b, b, 1.0, True)
    with pytest.raises(ValueError, match='float32'):
        native.detail_energy(gt[:, ::2], gt1, 2)                     # strided
    with pytest.raises(ValueError, match='multiple'):
        native.detail_energy(gt, gt1, 3)
    with pytest.raises(ValueError, match='smaller'):
        native.corrector_full_resolution(np.zeros((5, 2, 2), np.float32), (4, 4), gt, gy, None, False)
    with pytest.raises(ValueError, match='thermal'):
        native.corrector_full_resolution(np.zeros((5, 2, 2), np.float32), (8, 8), gt, gy, None, True)


def _fields(gen: torch.Generator, hp: int, wp: int, stride: int, amplitude: float) -> torch.Tensor:
    """Smooth low-resolution corrector fields (flow in px, M, gain, bias) as the corrector emits them."""
    low = torch.rand(1, 5, max(1, hp // (4 * stride)), max(1, wp // (4 * stride)), generator=gen)
    low = F.interpolate(low, size=(hp // stride, wp // stride), mode='bilinear', align_corners=False)
    low[:, :2] = (low[:, :2] - 0.5) * 2 * amplitude
    low[:, 3] *= 1.5
    low[:, 4] = (low[:, 4] - 0.5) * 0.1
    return low.contiguous()


@pytest.mark.parametrize('output', ['retain', 'refuse'])
@pytest.mark.parametrize('hw,padded,stride', [((480, 640), (480, 640), 4), ((250, 333), (256, 336), 4),
                                              ((64, 48), (64, 48), 1), ((37, 53), (48, 64), 8)])
def test_corrector_full_resolution_matches_torch(output, hw, padded, stride):
    """Exact bilinear sampling (grid_sample's pixel model and border rule) in one pass."""
    gen = torch.Generator().manual_seed(hw[0])
    low = _fields(gen, *padded, stride, amplitude=9.0)   # shifts past the borders too
    base = torch.rand(1, 1, *hw, generator=gen)
    fused = F.avg_pool2d(base, 5, 1, 2, count_include_pad=False)   # edges and smooth parts
    vis, th = torch.rand(1, 1, *hw, generator=gen), torch.rand(1, 1, *hw, generator=gen)
    ref = full_resolution(low, fused, vis, padded, th, output)
    got = full_resolution_native(low, fused, vis, padded, th, output)
    for r, g, name in zip(ref, got, ('image', 'M', 'flow')):
        assert g.shape == r.shape and g.dtype == torch.float32, name
        assert float((g - r).abs().max()) < 2e-4, name   # positions rounded differently by grid_sample
    assert float((got[0] - ref[0]).abs().mean()) < 1e-5
    assert float(got[2].abs().max()) > 3.0                              # real shifts were applied
    assert float((got[0] - fused).abs().mean()) > 1e-3                  # and changed the image
    # rows split over threads (3 do not divide the heights): the same values, bit for bit
    for threads in (2, 3):
        split = full_resolution_native(low, fused, vis, padded, th, output, threads=threads)
        for a, b in zip(got, split):
            assert torch.equal(a, b), threads


def _similarity_pair(test_data, stem: str, params: list[float]) -> tuple[torch.Tensor, torch.Tensor]:
    """A real visible/thermal pair, the thermal image moved by the similarity ``params`` (x, y px, a, b)."""
    from ros2_regionfuse.core import convert
    from ros2_regionfuse.core.imageio import read_gray, read_rgb
    from ros2_regionfuse.models.global_align import centred_coords, similarity_field
    from ros2_regionfuse.models.warp import warp_by_flow
    th = read_gray(test_data / 'ir' / f'{stem}.png', as_uint8=True).astype(np.float32) / 255.0
    vis = convert.luminance(convert.rgb_to_unit(read_rgb(test_data / 'vi' / f'{stem}.png')))
    v, t = convert.to_tensor(vis), convert.to_tensor(th)
    h, w = vis.shape
    u, vv = centred_coords(h, w, h, w, t)
    return v, warp_by_flow(t, -similarity_field(torch.tensor([params]), u, vv)).contiguous()


@pytest.mark.parametrize('stem', ['tno17', 'FLIR_05005', '00537D'])
@pytest.mark.parametrize('moved', [False, True])
def test_similarity_matches_the_torch_solver(test_data, stem, moved):
    """The global registration in one C call: the torch solver's parameters, field and confidence."""
    from ros2_regionfuse.models.global_align import (
        estimate_similarity,
        estimate_similarity_native,
        similarity_flow,
    )
    v, t = _similarity_pair(test_data, stem, [6.0, -4.0, 0.02, 0.015] if moved else [0.0] * 4)
    with torch.no_grad():
        p_torch, g_torch = estimate_similarity(v, t)
        f_torch, f_native = similarity_flow(v, t), similarity_flow(v, t, native=True)
    p, g = estimate_similarity_native(v[0, 0].numpy(), t[0, 0].numpy())
    assert p.dtype == np.float32 and p.shape == (4,) and isinstance(g, float)
    np.testing.assert_allclose(p[:2], p_torch[0, :2].numpy(), atol=2e-3)      # px
    np.testing.assert_allclose(p[2:], p_torch[0, 2:].numpy(), atol=2e-5)      # scale, rotation
    assert g == pytest.approx(float(g_torch), abs=1e-4)
    assert float(torch.linalg.vector_norm(f_native - f_torch, dim=1).max()) < 5e-3
    if moved:   # the move was found (the pairs' own residual misregistration is ~1-3 px)
        assert float(torch.linalg.vector_norm(f_native, dim=1).mean()) > 3.0 and g > 0.1


def test_similarity_flat_tiny_and_wide_inputs():
    from ros2_regionfuse.models.global_align import (
        GlobalAlignConfig,
        estimate_similarity,
        estimate_similarity_native,
    )
    flat = np.full((64, 96), 0.4, np.float32)
    p, g = estimate_similarity_native(flat, flat)
    assert np.isfinite(p).all() and np.isfinite(g) and np.abs(p).max() < 1e-3
    tiny = np.random.default_rng(0).random((2, 8, 8), dtype=np.float32)
    p, g = estimate_similarity_native(tiny[0], tiny[1])
    assert np.abs(p).max() == 0.0 and g == 0.0
    gen = torch.Generator().manual_seed(5)
    v = F.avg_pool2d(torch.rand(1, 1, 40, 1300, generator=gen), 3, 1, 1)    # a panoramic strip
    t = torch.roll(v, 3, dims=3)
    assert GlobalAlignConfig().factors(1300, 40) == [2, 1]
    with torch.no_grad():
        p_torch, _ = estimate_similarity(v, t)
    p, g = estimate_similarity_native(v[0, 0].numpy(), t[0, 0].numpy())
    assert p[:2].tolist() == pytest.approx([3.0, 0.0], abs=0.1)
    np.testing.assert_allclose(p, p_torch[0].numpy(), atol=2e-3)


def test_similarity_arguments_are_checked():
    a = np.zeros((64, 64), np.float32)
    with pytest.raises(ValueError, match='float32'):
        native.similarity(a.astype(np.float64), a, [2, 1], [1, 1], [1.0], 0.01, 0, 0.05)
    with pytest.raises(ValueError, match='shape'):
        native.similarity(a, a[:32], [2, 1], [1, 1], [1.0], 0.01, 0, 0.05)
    with pytest.raises(ValueError, match='do not fit'):
        native.similarity(a, a, [3, 2], [1, 1], [1.0], 0.01, 0, 0.05)          # not nested
    with pytest.raises(ValueError, match='do not fit'):
        native.similarity(a, a, [32, 16], [1, 1], [1.0], 0.01, 0, 0.05)        # a level of 2x2 cells
    with pytest.raises(ValueError, match='iteration'):
        native.similarity(a, a, [2, 1], [1], [1.0], 0.01, 0, 0.05)
    with pytest.raises(ValueError, match='taps'):
        native.similarity(a, a, [2, 1], [1, 1], [0.5, 0.5], 0.01, 0, 0.05)
    with pytest.raises(ValueError, match='margin'):
        native.similarity(a, a, [2, 1], [1, 1], [1.0], 0.01, 0, 0.5)


def test_corrector_align_uses_the_kernel(test_data, monkeypatch):
    """global_params(native=True) runs the C solver; its gated parameters equal the OpenCV path's."""
    from ros2_regionfuse.models.corrector import Corrector, CorrectorArchitecture, global_params
    v, t = _similarity_pair(test_data, 'tno17', [6.0, -4.0, 0.02, 0.015])
    model = Corrector(CorrectorArchitecture(global_align=True)).eval()
    calls = []
    real = native.similarity
    monkeypatch.setattr(native, 'similarity', lambda *a, **k: calls.append(1) or real(*a, **k))
    with torch.inference_mode():
        p_native = global_params(model, v, t, opencv=True, native=True)
        assert len(calls) == 1
        p_cv = global_params(model, v, t, opencv=True)
    assert len(calls) == 1
    np.testing.assert_allclose(p_native.numpy(), p_cv.numpy(), atol=5e-3)
    assert float(p_native[0, :2].abs().max()) > 3.0


def test_luma_and_output_colour_match_the_opencv_steps(rng):
    """The 8-bit colour steps in one pass each: luminance equal to ~1e-7, colour within 1 LSB on halves."""
    from ros2_regionfuse.core import convert
    rgb = rng.integers(0, 256, (37, 53, 3), dtype=np.uint8)
    y = convert.unit_luminance(rgb)
    np.testing.assert_allclose(convert.unit_luminance(rgb, native=True), y, atol=3e-7, rtol=0)
    y_new = np.clip(y + rng.normal(0, 0.2, y.shape), -0.2, 1.2).astype(np.float32)   # values outside saturate
    for bounds in ((0.0, 1.0), (0.15, 0.7)):
        ref = convert.output_colour(rgb, y_new, bounds, y)
        got = convert.output_colour(rgb, y_new, bounds, y, native=True)
        diff = np.abs(ref.astype(np.int16) - got.astype(np.int16))
        assert got.dtype == np.uint8 and got.shape == rgb.shape
        assert int(diff.max()) <= 1 and float((diff > 0).mean()) < 1e-3, bounds
        assert int((got == 0).sum()) > 0 and int((got == 255).sum()) > 0     # saturation happened
    gray = np.repeat(rng.integers(0, 256, (8, 9, 1), dtype=np.uint8), 3, 2)     # gray stays gray
    y_gray = convert.unit_luminance(gray)
    out = native.recolour_u8(gray, np.full((8, 9), 0.58, np.float32), y_gray, (0.1, 0.9))
    assert (out[..., 0] == out[..., 1]).all() and (out[..., 1] == out[..., 2]).all()
    assert (out == 153).all()   # (0.58 - 0.1) / 0.8 = 0.6 -> 153 whatever the old level
    with pytest.raises(ValueError, match='uint8'):
        native.luma_u8(rgb[:, ::2], (0.3, 0.6, 0.1))                            # strided
    with pytest.raises(ValueError, match='hi > lo'):
        native.recolour_u8(rgb, y_new, y, (0.5, 0.5))
    with pytest.raises(ValueError, match='shape'):
        native.recolour_u8(rgb, y_new[:5], y, None)


def test_pipeline_outputs_with_and_without_kernels(test_data):
    """The whole pipeline with native_kernels on and off: the same 8-bit image to 1 LSB, same fields."""
    from ros2_regionfuse.core.config import PipelineConfig
    from ros2_regionfuse.core.imageio import read_gray, read_rgb
    from ros2_regionfuse.inference.pipeline import FusionPipeline
    th = read_gray(test_data / 'ir' / '00537D.png', as_uint8=True)
    rgb = read_rgb(test_data / 'vi' / '00537D.png')
    outs = []
    for on in (True, False):
        p = FusionPipeline(PipelineConfig(native_kernels=on))
        assert p.fusion.runner.native is on
        outs.append(p.process(th, rgb, correct=True))
    a, b = outs
    assert a.fused.shape == b.fused.shape and a.fused.dtype == np.uint8
    diff = np.abs(a.fused.astype(np.int16) - b.fused.astype(np.int16))
    assert int(diff.max()) <= 1 and float((diff > 0).mean()) < 0.01
    assert float(a.fused.std()) > 10
    np.testing.assert_allclose(a.misregistration, b.misregistration, atol=1e-5)
    np.testing.assert_allclose(a.flow, b.flow, atol=1e-4)


def test_disabled_kernels_fall_back_to_the_same_results(fresh_native, monkeypatch, test_data):
    """REGIONFUSE_NATIVE=0 (or no compiler): no library, the reason in status(), the OpenCV path runs."""
    from ros2_regionfuse.core import convert
    from ros2_regionfuse.core.config import FusionConfig
    from ros2_regionfuse.core.imageio import read_gray, read_rgb
    from ros2_regionfuse.models.loading import load_model
    model, _ = load_model('fusion', FusionConfig().variant, '', torch.device('cpu'))
    th = read_gray(test_data / 'ir' / '00537D.png', as_uint8=True).astype('float32') / 255.0
    y = convert.luminance(convert.rgb_to_unit(read_rgb(test_data / 'vi' / '00537D.png')))
    t, v = convert.to_tensor(th), convert.to_tensor(y)
    with torch.inference_mode():
        fast, cv = fuse(model, t, v, opencv=True, native=True), fuse(model, t, v, opencv=True)
    assert not torch.equal(fast, cv)                    # the kernels did run above
    monkeypatch.setenv('REGIONFUSE_NATIVE', '0')
    fresh_native._reset_for_tests()
    with torch.inference_mode():
        assert torch.equal(fuse(model, t, v, opencv=True, native=True), cv)
    assert fresh_native.load() is None and 'REGIONFUSE_NATIVE=0' in fresh_native.status()
    with pytest.raises(RuntimeError, match='unavailable'):
        fresh_native.detail_energy(np.zeros((4, 4), np.float32), np.zeros((2, 2), np.float32), 2)
    monkeypatch.delenv('REGIONFUSE_NATIVE')
    monkeypatch.setenv('CC', '/nonexistent/cc')
    fresh_native._reset_for_tests()
    assert not fresh_native.available() and 'no C compiler' in fresh_native.status()


def test_build_into_an_empty_cache_and_reuse(fresh_native, monkeypatch, tmp_path, caplog):
    """A clean machine builds the library into the cache once; a broken compiler is reported, not raised."""
    monkeypatch.setenv('REGIONFUSE_NATIVE_CACHE', str(tmp_path / 'cache'))
    assert fresh_native.available()
    assert fresh_native.status().startswith('built ')
    built = list((tmp_path / 'cache').glob('regionfuse_kernels-*.so'))
    assert len(built) == 1 and not list((tmp_path / 'cache').glob('tmp*'))   # no leftovers
    fresh_native._reset_for_tests()
    assert fresh_native.available() and fresh_native.status() == f'loaded {built[0]}'
    # a compiler that fails: warned once, callers fall back
    monkeypatch.setenv('REGIONFUSE_NATIVE_CACHE', str(tmp_path / 'other'))
    monkeypatch.setenv('CC', shutil.which('false'))
    fresh_native._reset_for_tests()
    with caplog.at_level(logging.WARNING):
        assert fresh_native.load() is None
    assert 'failed' in fresh_native.status() and 'using the torch/OpenCV code' in caplog.text


def test_loading_keeps_subnormal_floats():
    """The library is linked without -ffast-math's start-up code: subnormals are not flushed to zero."""
    assert native.available()
    native.detail_energy(np.ones((4, 4), np.float32), np.ones((2, 2), np.float32), 2)
    tiny = np.float32(1e-38)
    assert tiny * np.float32(1e-3) != 0.0
    assert float(torch.tensor(1e-38) * 1e-3) != 0.0
