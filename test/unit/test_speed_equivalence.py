"""Speed-only rewrites of model ops give exactly the original results (values and gradients)."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from ros2_regionfuse.core.config import FusionConfig
from ros2_regionfuse.models.fusion_net import fuse
from ros2_regionfuse.models.layers import from_regions, to_regions
from ros2_regionfuse.models.pyramid import box_mean3, down2

FUSION = FusionConfig().variant   # the default fusion variant (the one the pipeline's runner loads)


@pytest.mark.parametrize('shape', [(2, 1, 48, 64), (1, 3, 10, 6), (1, 1, 2, 2)])
def test_down2_bit_identical_to_avg_pool(shape):
    x = torch.randn(shape, generator=torch.Generator().manual_seed(0))
    assert torch.equal(down2(x), F.avg_pool2d(x, 2))


def test_down2_odd_size_falls_back():
    x = torch.rand(1, 1, 7, 9)
    assert down2(x).shape == (1, 1, 3, 4) and torch.equal(down2(x), F.avg_pool2d(x, 2))


@pytest.mark.parametrize('shape', [(1, 1, 48, 64), (2, 1, 5, 7), (1, 2, 1, 1)])
def test_box_mean3_bit_identical_with_gradients(shape):
    gen = torch.Generator().manual_seed(1)
    a = torch.randn(shape, generator=gen).abs().requires_grad_()
    b = a.detach().clone().requires_grad_()
    ya, yb = box_mean3(a), F.avg_pool2d(b, 3, 1, 1)
    assert torch.equal(ya, yb)
    w = torch.randn(shape, generator=gen)
    (ya * w).sum().backward()
    (yb * w).sum().backward()
    assert torch.allclose(a.grad, b.grad, atol=1e-6)


def test_region_split_matches_unfold_fold():
    x = torch.randn(2, 3, 8, 12)
    t = to_regions(x, 4)
    assert torch.equal(t, F.unfold(x, 4, stride=4).transpose(1, 2))
    assert torch.equal(from_regions(t, 3, 8, 12, 4),
                       F.fold(t.transpose(1, 2), output_size=(8, 12), kernel_size=4, stride=4))


@pytest.mark.parametrize('channels_last', [False, True])
def test_layer_norm_2d_equals_channel_formula_with_gradients(channels_last):
    from ros2_regionfuse.models.layers import LayerNorm2d
    gen = torch.Generator().manual_seed(2)
    ln = LayerNorm2d(6)
    with torch.no_grad():
        ln.weight.copy_(torch.randn(6, generator=gen))
        ln.bias.copy_(torch.randn(6, generator=gen))
    x = (3 * torch.randn(2, 6, 5, 7, generator=gen) + 1).requires_grad_()
    xin = x.contiguous(memory_format=torch.channels_last) if channels_last else x
    y = ln(xin)
    mu = x.mean(1, keepdim=True)
    var = (x - mu).pow(2).mean(1, keepdim=True)
    ref = (x - mu) / torch.sqrt(var + 1e-5) * ln.weight[:, None, None] + ln.bias[:, None, None]
    assert y.shape == x.shape and torch.allclose(y, ref, atol=1e-5)
    w = torch.randn(x.shape, generator=gen)
    ga, = torch.autograd.grad((y * w).sum(), x)
    gb, = torch.autograd.grad((ref * w).sum(), x)
    assert torch.allclose(ga, gb, atol=1e-4)


def test_corrector_stem_strided_conv_equals_unshuffle_then_1x1():
    from ros2_regionfuse.models.registry import build_corrector
    torch.manual_seed(4)
    m = build_corrector('corrector_multiscale')
    s = m.cfg.stem_stride
    conv = m.stem[0]
    x = torch.rand(2, 3, 4 * s, 6 * s, requires_grad=True)
    ref = m.stem(F.pixel_unshuffle(x, s))     # the patch-embedding definition
    got = m.stem[1:](F.conv2d(x, conv.weight.view(conv.out_channels, 1, s, s), conv.bias, stride=s, groups=3))
    assert torch.allclose(got, ref, atol=1e-5)
    w = torch.randn(ref.shape)
    ga, = torch.autograd.grad((got * w).sum(), x)
    gb, = torch.autograd.grad((ref * w).sum(), x)
    assert torch.allclose(ga, gb, atol=1e-5)
    # and the model's encoder, which runs the source streams and the fused stream apart
    # (Corrector.sources / fused_fields), gives the definition's features at every level
    with torch.no_grad():
        img = torch.rand(1, 1, 4 * m.cfg.multiple, 4 * m.cfg.multiple)
        x3 = torch.cat([img * 0.5, img, img.flip(-1)], 1)   # streams [visible, fused, thermal]
        refs = [m.stem(F.pixel_unshuffle(x3, s))]
        refs.append(m.down[0](refs[0]))
        src, _, _ = m._encode(x3[:, [0, 2]], (0, 2))
        fus, _, _ = m._encode(x3[:, 1:2], (1,))
        for ref, a, b in zip(refs, src, fus, strict=True):
            c = ref.shape[1] // 3
            assert torch.allclose(torch.cat([a[:, :c], b, a[:, c:]], 1), ref, atol=1e-5)


def test_opencv_pyramid_ops_match_torch():
    """The OpenCV forms of up_to and box_mean3 (CPU inference) equal the torch ones to ~1e-6,
    including odd sizes; with gradients or without the flag the torch ops run."""
    import torch.nn.functional as F

    from ros2_regionfuse.models.pyramid import box_mean3, up_to
    g = torch.Generator().manual_seed(0)
    cases = (((2, 1, 60, 80), (120, 160)), ((1, 2, 15, 20), (120, 160)), ((1, 3, 37, 50), (75, 101)))
    for shape, size in cases:
        x = torch.rand(*shape, generator=g)
        ref = F.interpolate(x, size=size, mode='bilinear', align_corners=False)
        got = up_to(x, size, opencv=True)
        assert got.shape == ref.shape and float((got - ref).abs().max()) < 5e-6
        assert torch.equal(up_to(x, size), ref)
    x = torch.rand(2, 1, 33, 47, generator=g)
    ref = F.avg_pool2d(x, 3, 1, 1)
    assert float((box_mean3(x, opencv=True) - ref).abs().max()) < 1e-6
    assert torch.equal(box_mean3(x), ref)
    xg = x.clone().requires_grad_(True)
    box_mean3(xg, opencv=True).sum().backward()    # gradient path: torch, differentiable
    assert xg.grad is not None and float(xg.grad.abs().sum()) > 0


def test_fusion_opencv_path_matches_torch_on_real_pairs(test_data):
    """fuse(opencv=True) and fuse(native=True: the fused C kernels) give the torch outputs on
    real pairs (shipped weights), and the pipeline's fusion runner uses the native path at any
    thread count."""
    from ros2_regionfuse.core import convert
    from ros2_regionfuse.core.config import PipelineConfig
    from ros2_regionfuse.core.imageio import read_gray, read_rgb
    from ros2_regionfuse.inference.runtime import build_runner
    from ros2_regionfuse.models.loading import load_model
    model, _ = load_model('fusion', FUSION, '', torch.device('cpu'))
    cfg = PipelineConfig()
    cfg.fusion.region_runtime = 'torch'   # the traced region network: exact (ONNX Runtime: next test)
    run, _ = build_runner('fusion', cfg, torch.device('cpu'))
    threads = torch.get_num_threads()
    try:
        for stem in ('00537D', 'FLIR_05005'):
            th = read_gray(test_data / 'ir' / f'{stem}.png', as_uint8=True).astype('float32') / 255.0
            t = convert.to_tensor(th)
            rgb = convert.rgb_to_unit(read_rgb(test_data / 'vi' / f'{stem}.png'))
            y = convert.to_tensor(convert.luminance(rgb))
            for n in (1, 2):   # (thread counts change oneDNN's summation order: compare within one)
                torch.set_num_threads(n)
                with torch.inference_mode():
                    ref, got = model(t, y), fuse(model, t, y, opencv=True)
                    nat = fuse(model, t, y, opencv=True, native=True)
                assert float((got - ref).abs().max()) < 5e-6
                assert 0.0 < float((nat - ref).abs().max()) < 5e-6   # another order of operations
                assert float(ref.std()) > 0.05          # a real image, not a flat one
                assert torch.equal(run(t, y), nat)
                # the finest level's rows over 2 threads, as a count or as the pipeline's function
                asked: list[int] = []

                def two(asked: list[int] = asked) -> int:
                    asked.append(1)
                    return 2
                assert torch.equal(run(t, y, native_threads=2), nat)
                assert torch.equal(run(t, y, native_threads=two), nat)
                assert asked == [1]   # asked once, for the finest level
    finally:
        torch.set_num_threads(threads)


@pytest.mark.parametrize('shape,k', [((1, 25, 30, 40), 5), ((2, 3, 7, 5), 5), ((1, 1, 4, 4), 7),
                                     ((1, 2, 9, 11), 3)])
def test_window_mean_equals_valid_pixel_pooling(shape, k):
    """Shifted-slice window mean = avg_pool2d(count_include_pad=False), with gradients too."""
    from ros2_regionfuse.models.pyramid import window_mean
    x = torch.rand(*shape, generator=torch.Generator().manual_seed(k), requires_grad=True)
    ref = F.avg_pool2d(x, k, 1, k // 2, count_include_pad=False)
    got = window_mean(x, k)
    assert float((got - ref).detach().abs().max()) < 1e-6
    g_ref, = torch.autograd.grad(ref.sum(), x)
    g_got, = torch.autograd.grad(got.sum(), x)
    assert float((g_got - g_ref).abs().max()) < 1e-5


def test_fusion_runner_traces_the_region_network_per_size(test_data, monkeypatch, caplog):
    """The runner's traced region network gives the eager values exactly, one trace per size; a
    tracing failure falls back to the eager network with a warning (same values)."""
    from ros2_regionfuse.core import convert
    from ros2_regionfuse.core.imageio import read_gray, read_rgb
    from ros2_regionfuse.inference.runtime import TorchFusionRunner
    from ros2_regionfuse.models.loading import load_model
    model, _ = load_model('fusion', FUSION, '', torch.device('cpu'))
    th = read_gray(test_data / 'ir' / '00537D.png', as_uint8=True).astype('float32') / 255.0
    y = convert.luminance(convert.rgb_to_unit(read_rgb(test_data / 'vi' / '00537D.png')))
    run = TorchFusionRunner(model)
    cv = True   # the CPU runner takes the OpenCV full-resolution path at any thread count
    for crop in (None, (slice(0, 64), slice(0, 96))):   # feature maps 16x20 and 8x12
        t_img, y_img = (th, y) if crop is None else (th[crop].copy(), y[crop].copy())
        t, v = convert.to_tensor(t_img), convert.to_tensor(y_img)
        with torch.inference_mode():
            ref = fuse(model, t, v, opencv=cv)
        n = len(run._traces)
        assert torch.equal(run(t, v), ref)              # a size's first frame: eager, nothing built
        assert len(run._traces) == n
        assert torch.equal(run(t, v), ref)              # its second: traced (BUILD_AFTER)
        assert torch.equal(run(t, v), ref)              # the cached trace again
    assert len(run._traces) == 2
    assert all(isinstance(tr, torch.jit.ScriptModule) for tr in run._traces.values())

    def broken(*args, **kwargs):
        raise RuntimeError('no tracing here')
    monkeypatch.setattr(torch.jit, 'trace', broken)
    fallback = TorchFusionRunner(model)
    t, v = convert.to_tensor(th), convert.to_tensor(y)
    with caplog.at_level('WARNING'):
        fallback(t, v)
        out = fallback(t, v)
    with torch.inference_mode():
        assert torch.equal(out, fuse(model, t, v, opencv=cv))
    assert 'running it eagerly' in caplog.text and 'fusion region network' in caplog.text


def test_fusion_region_network_in_onnxruntime(test_data, monkeypatch, caplog):
    """The default CPU runner runs the region network in ONNX Runtime: one graph for every size
    (a size's first frame), a session fixed to a size from its second frame; both within 1e-4 of
    the torch runner's fused image on real pairs; a failed export keeps torch."""
    from ros2_regionfuse.core import convert
    from ros2_regionfuse.core.config import PipelineConfig
    from ros2_regionfuse.core.imageio import read_gray, read_rgb
    from ros2_regionfuse.inference import runtime
    from ros2_regionfuse.inference.runtime import OrtRegionNetwork, TorchFusionRunner, build_runner
    from ros2_regionfuse.models.loading import load_model
    assert PipelineConfig().fusion.region_runtime == 'onnxruntime'
    run, _ = build_runner('fusion', PipelineConfig(), torch.device('cpu'))
    assert run.graph is not None and run.graph.max_error < 1e-4
    model, _ = load_model('fusion', FUSION, '', torch.device('cpu'))
    exact = TorchFusionRunner(model, region_runtime='torch')
    for stem in ('00537D', 'FLIR_05005'):
        th = read_gray(test_data / 'ir' / f'{stem}.png', as_uint8=True).astype('float32') / 255.0
        y = convert.luminance(convert.rgb_to_unit(read_rgb(test_data / 'vi' / f'{stem}.png')))
        t, v = convert.to_tensor(th), convert.to_tensor(y)
        ref = exact(t, v)
        assert float(ref.std()) > 0.05
        built = len(run._ort)
        first, second = run(t, v), run(t, v)
        assert len(run._ort) == built + 1                      # the second frame made the sized session
        for got in (first, second):
            assert 0.0 < float((got - ref).abs().max()) < 1e-4  # a different runtime, same result
    sessions = [s for s in run._ort.values() if s is not None]
    assert len(sessions) == 2 and all(isinstance(s, OrtRegionNetwork) for s in sessions)
    assert all(s.max_error < 1e-4 for s in sessions)
    assert not run._traces                                     # no trace was needed
    assert runtime.region_graph(model) is run.graph            # one export per set of weights

    def broken(*args, **kwargs):
        raise RuntimeError('no export here')
    monkeypatch.setattr(torch.onnx, 'export', broken)
    monkeypatch.setattr(runtime, '_GRAPHS', {})
    with caplog.at_level('WARNING'):
        fallback = TorchFusionRunner(model, region_runtime='onnxruntime')
        out = fallback(t, v)
    assert torch.equal(out, exact(t, v)) and fallback.graph is None
    assert 'ONNX Runtime unavailable' in caplog.text
