"""ONNX export and ONNX Runtime runners: numerical parity with torch on real pairs, file handling."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from ros2_regionfuse.cli.main import main
from ros2_regionfuse.core import convert
from ros2_regionfuse.core.config import PipelineConfig
from ros2_regionfuse.core.imageio import read_gray, read_rgb
from ros2_regionfuse.core.weights import save_weights
from ros2_regionfuse.inference import onnx_runtime as ox
from ros2_regionfuse.inference.pipeline import FusionPipeline
from ros2_regionfuse.inference.runtime import build_runner
from ros2_regionfuse.models.registry import build_corrector, build_fusion

pytest.importorskip('onnxruntime')

PARITY_ATOL = 1e-4  # images in [0, 1]
SAMPLE_HW = (72, 96)  # small traced size: keeps the exports fast


def _perturbed(model: torch.nn.Module, seed: int, scale: float = 0.05) -> torch.nn.Module:
    """Random init plus seeded noise on every parameter (zero-initialised heads become active)."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(scale * torch.randn(p.shape, generator=gen))
    return model.eval()


@pytest.fixture(scope='module')
def fusion_model() -> torch.nn.Module:
    return _perturbed(build_fusion('regionfuse_fine'), 0)


@pytest.fixture(scope='module')
def small_fusion_model() -> torch.nn.Module:
    """Pyramid levels chosen for a 128 px base: the test pairs (120-256 px) span graph keys 3 and 4."""
    from ros2_regionfuse.models.fusion_net import FusionNetConfig, RegionFuseNet
    return _perturbed(RegionFuseNet(FusionNetConfig(base_size=128)), 2)


@pytest.fixture(scope='module')
def corrector_model() -> torch.nn.Module:
    """The corrector with its aligned-frame skip off: a traced graph has no data-dependent
    branch, so parity is checked against the eager model running the same full path."""
    from dataclasses import replace
    model = _perturbed(build_corrector('corrector_multiscale'), 1, 0.1)
    model.cfg = replace(model.cfg, skip_aligned=False)
    return model


@pytest.fixture(autouse=True)
def _own_cache(tmp_path, monkeypatch):
    monkeypatch.setenv('XDG_CACHE_HOME', str(tmp_path / 'cache'))


@pytest.fixture(scope='module')
def real_pairs(test_data):
    pairs = []
    for ir in sorted((test_data / 'ir').glob('*.png')):
        t = convert.thermal_to_unit(read_gray(ir, as_uint8=True))
        y = convert.luminance(convert.rgb_to_unit(read_rgb(test_data / 'vi' / ir.name)))
        pairs.append((ir.stem, convert.to_tensor(t), convert.to_tensor(y)))
    assert len(pairs) >= 2
    return pairs


def _onnx_corrector(cfg: PipelineConfig, model: torch.nn.Module):
    """The corrector's ONNX runner (the corrector exports: a failure here is a regression)."""
    return build_runner('corrector', cfg, torch.device('cpu'), model)


def _ort(data: bytes):
    import onnxruntime as ort
    return ort.InferenceSession(data, ox.session_options(1), providers=['CPUExecutionProvider'])


def test_fusion_export_parity_on_real_pairs(fusion_model, real_pairs):
    data, meta = ox.export_onnx(fusion_model, 'fusion', SAMPLE_HW, {'weights_sha256': 'x'})
    assert meta['dynamic_hw'] == 'true' and meta['graph_key'] == '3'
    assert float(meta['max_abs_diff']) < PARITY_ATOL
    sess = _ort(data)
    props = sess.get_modelmeta().custom_metadata_map
    assert props['kind'] == 'fusion' and props['weights_sha256'] == 'x'
    sizes = set()
    for _stem, t, y in real_pairs:  # sizes differ from the traced one and from each other
        with torch.inference_mode():
            ref = fusion_model(t, y)
        out = sess.run(None, {'thermal': t.numpy(), 'visible': y.numpy()})[0]
        assert out.shape == tuple(ref.shape)
        assert np.abs(out - ref.numpy()).max() < PARITY_ATOL
        assert out.std() > 0.01  # a real image, not a constant
        sizes.add(out.shape)
    assert len(sizes) >= 2


def test_fusion_runner_matches_torch_runner(small_fusion_model, real_pairs):
    m = small_fusion_model
    cfg = PipelineConfig(backend='onnxruntime', threads=1)
    run_onnx, card = build_runner('fusion', cfg, torch.device('cpu'), m)
    run_torch, _ = build_runner('fusion', PipelineConfig(), torch.device('cpu'), m)
    assert card['backend'] == 'onnxruntime'
    keys = set()
    for _stem, t, y in real_pairs:
        a, b = run_onnx(t, y), run_torch(t, y)
        assert isinstance(a, torch.Tensor) and a.shape == b.shape and a.dtype == torch.float32
        assert (a - b).abs().max().item() < PARITY_ATOL
        keys.add(str(ox.graph_key(m, *t.shape[-2:])))
    # one dynamic graph per pyramid level served every size of that level
    assert keys == {'3', '4'} and sorted(card['onnx']) == sorted(keys)


def _check_corrector_parity(model: torch.nn.Module, fusion: torch.nn.Module, real_pairs) -> None:
    cfg = PipelineConfig(backend='onnxruntime', threads=1)
    run_onnx, card = _onnx_corrector(cfg, model)
    sizes = set()
    for _stem, t, y in real_pairs:
        with torch.inference_mode():
            f = fusion(t, y)
            ref = model(f, y, t)   # the torch graph the export traced (torch full-res step)
        outs, refs = run_onnx(f, y, t), (ref.image, ref.misregistration, ref.flow)
        for o, r, name in zip(outs, refs, ('image', 'misregistration', 'flow'), strict=True):
            assert o.shape == r.shape, name
            # pixels / [0, 1]; the random weights here give flows of hundreds of pixels, where float32
            # summation order alone moves the last digits: relative 1e-5 on top of the absolute part
            tol = PARITY_ATOL * 10 + 1e-5 * r.abs().max().item() if name == 'flow' else PARITY_ATOL * 5
            assert (o - r).abs().max().item() < tol, name
        sizes.add(tuple(t.shape[-2:]))
    assert len(sizes) >= 2
    # one dynamic graph per key (the global start's level) served every size of its key: no per-size
    # fallback graphs
    keys = sorted({str(ox.graph_key(model, *hw)) for hw in sizes})
    assert list(card['onnx']) == keys, card['onnx']


def test_corrector_runner_matches_torch_on_real_pair(corrector_model, small_fusion_model, real_pairs):
    _check_corrector_parity(corrector_model, small_fusion_model, real_pairs)


@pytest.mark.parametrize('output', ['retain', 'refuse'])
def test_lite_corrector_runner_matches_torch_on_real_pair(small_fusion_model, real_pairs, output):
    """corrector_lite (one stage at 1/16, input padded to a multiple of 16) exports as well, with
    either output formula (refuse: the thermal-weight fit and the warp of the thermal image)."""
    from dataclasses import replace
    model = _perturbed(build_corrector('corrector_lite'), 3, 0.1)
    model.cfg = replace(model.cfg, skip_aligned=False, output=output)
    _check_corrector_parity(model, small_fusion_model, real_pairs)


def test_export_cli_files_are_found_and_checked(fusion_model, real_pairs, tmp_path):
    ckpt = tmp_path / 'w' / 'fuse_a.safetensors'
    save_weights(fusion_model, ckpt, {'variant': 'regionfuse_fine'})
    assert main(['export-onnx', '--only', 'fusion', '--fusion-checkpoint', str(ckpt),
                 '--size', '160x120']) == 0
    onnx_file = ckpt.with_name('fuse_a.level3.onnx')
    assert onnx_file.is_file()
    meta = ox.onnx_metadata(onnx_file)
    assert meta['weights_sha256'] == ox.file_sha256(ckpt) and meta['dynamic_hw'] == 'true'
    run, card = ox.build_onnx_runner('fusion', 'regionfuse_fine', str(ckpt), torch.device('cpu'), 1)
    _stem, t, y = real_pairs[0]
    with torch.inference_mode():
        ref = fusion_model(t, y)
    assert (run(t, y) - ref).abs().max().item() < PARITY_ATOL
    assert card['onnx'] == {'3': str(onnx_file)}  # the exported file, not a fresh export
    # other weights under the same name: the stale graph is ignored, a fresh one is exported
    save_weights(_perturbed(build_fusion('regionfuse_fine'), 7), ckpt, {'variant': 'regionfuse_fine'})
    run2, card2 = ox.build_onnx_runner('fusion', 'regionfuse_fine', str(ckpt), torch.device('cpu'), 1)
    run2(t, y)
    assert card2['onnx']['3'] != str(onnx_file)


def test_export_cli_out_dir_and_errors(fusion_model, tmp_path):
    ckpt = tmp_path / 'fuse_b.safetensors'
    save_weights(fusion_model, ckpt, {'variant': 'regionfuse_fine'})
    out = tmp_path / 'onnx'
    assert main(['export-onnx', '--only', 'fusion', '--fusion-checkpoint', str(ckpt), '--size', '96x72',
                 '--out', str(out)]) == 0
    assert [p.name for p in out.iterdir()] == ['fuse_b.level3.onnx']
    # missing weights: a clear error, exit status 2
    assert main(['export-onnx', '--only', 'fusion', '--fusion-checkpoint', str(tmp_path / 'nope.safetensors'),
                 '--out', str(out)]) == 2


def test_pipeline_with_onnxruntime_backend(small_fusion_model, corrector_model, test_data):
    thermal = read_gray(next((test_data / 'ir').glob('*.png')), as_uint8=True)
    rgb = read_rgb(test_data / 'vi' / next((test_data / 'ir').glob('*.png')).name)
    res = {}
    _onnx_corrector(PipelineConfig(backend='onnxruntime', threads=1), corrector_model)
    for backend in ('torch', 'onnxruntime'):
        cfg = PipelineConfig(backend=backend, device='cpu', threads=1)
        pipe = FusionPipeline(cfg, fusion=small_fusion_model, corrector=corrector_model)
        res[backend] = pipe.process(thermal, rgb)
    a, b = res['torch'], res['onnxruntime']
    assert a.fused.shape == b.fused.shape == rgb.shape[:2] + (3,)
    assert np.abs(a.fused_raw.astype(int) - b.fused_raw.astype(int)).max() <= 1
    assert np.abs(a.fused.astype(int) - b.fused.astype(int)).max() <= 1
    assert np.abs(a.flow - b.flow).max() < 1e-3


def test_graph_helpers():
    m = build_fusion('regionfuse_fine')
    assert ox.graph_key(m, 480, 640) == 3 and ox.graph_key(m, 1024, 1280) == 4
    assert ox.graph_key(m, *ox.sample_size_for_key(m, 5)) == 5
    assert ox.onnx_filename('x', 4, (10, 20)) == 'x.level4.10x20.onnx'
    with pytest.raises(ValueError):
        ox.export_onnx(m, 'detector')


def test_pipeline_fusion_only_with_onnxruntime_backend(small_fusion_model, test_data):
    ir = sorted((test_data / 'ir').glob('*.png'))[-1]
    thermal, rgb = read_gray(ir, as_uint8=True), read_rgb(test_data / 'vi' / ir.name)
    out = {}
    for backend in ('torch', 'onnxruntime'):
        cfg = PipelineConfig(backend=backend, device='cpu', threads=1)
        cfg.corrector.enabled = False
        out[backend] = FusionPipeline(cfg, fusion=small_fusion_model).process(thermal, rgb)
    a, b = out['torch'].fused, out['onnxruntime'].fused
    assert a.shape == b.shape and np.abs(a.astype(int) - b.astype(int)).max() <= 1
    assert a.std() > 5  # a real image


class _BakesItsSize(torch.nn.Module):
    """A model whose traced graph is only right at the traced size (a Python int from the shape)."""

    def __init__(self) -> None:
        super().__init__()
        self.scale = torch.nn.Parameter(torch.tensor(0.01))

    def forward(self, thermal: torch.Tensor, visible: torch.Tensor) -> torch.Tensor:
        w = int(thermal.shape[-1])  # becomes a constant when traced
        return (thermal * (self.scale * w) + visible).clamp(0, 1)


def test_runner_replaces_a_graph_that_bakes_its_size():
    m = _BakesItsSize()
    run, card = ox.build_onnx_runner('fusion', 'baked', '', torch.device('cpu'), 1, module=m)
    meta_hw = ox.PREPARE_HW
    for hw in (meta_hw, (60, 90), (50, 70), (60, 90)):
        t, y = torch.rand(1, 1, *hw) * 0.5, torch.rand(1, 1, *hw) * 0.5
        with torch.inference_mode():
            ref = m(t, y)
        assert (run(t, y) - ref).abs().max().item() < PARITY_ATOL, hw
    # the dynamic graph failed its export check: one graph per size, each exported once
    assert sorted(card['onnx']) == ['0', '0@50x70', '0@60x90']


class _BakesABranch(torch.nn.Module):
    """Right at widths % 16 in (0, 3) (all sizes of the export-time check), wrong elsewhere."""

    def forward(self, thermal: torch.Tensor, visible: torch.Tensor) -> torch.Tensor:
        gain = 0.5 if int(thermal.shape[-1]) % 16 in (0, 3) else 0.25  # a branch frozen by tracing
        return thermal * gain + visible * (1 - gain)


def test_runner_checks_each_new_size_against_torch():
    m = _BakesABranch()
    run, card = ox.build_onnx_runner('fusion', 'branchy', '', torch.device('cpu'), 1, module=m)
    for hw in ((64, 96), (60, 90), (60, 90)):
        t, y = torch.rand(1, 1, *hw), torch.rand(1, 1, *hw)
        with torch.inference_mode():
            ref = m(t, y)
        assert (run(t, y) - ref).abs().max().item() < PARITY_ATOL, hw
    # the dynamic graph passed its export check and serves 64x96; 60x90 got its own graph
    assert sorted(card['onnx']) == ['0', '0@60x90']


def test_corrector_global_start_switch(corrector_model, small_fusion_model, real_pairs):
    """corrector.global_start: false runs the learned stages only, on both backends (key-0 graph)."""
    from ros2_regionfuse.models.corrector import Corrector, CorrectorArchitecture, correct
    _stem, t, y = real_pairs[0]
    with torch.inference_mode():
        f = small_fusion_model(t, y)
        expected = Corrector(CorrectorArchitecture(global_align=False))
        expected.load_state_dict(corrector_model.state_dict())
        ref = expected.eval()(f, y, t)
        ref_cv = correct(expected, f, y, t, opencv=True, native=True)   # the CPU runner's steps
        with_start = corrector_model(f, y, t)
    assert float((ref.flow - with_start.flow).abs().max()) > 0.1   # the switch matters on this pair
    off = PipelineConfig()
    off.corrector.global_start = False
    run_torch, _ = build_runner('corrector', off, torch.device('cpu'), corrector_model)
    assert corrector_model.cfg.global_align   # the caller's module is not changed
    image, _m, flow = run_torch(f, y, t)
    # the runner's traced learned stages: eager values to float rounding (thread-count dependent)
    assert float((flow - ref_cv.flow).abs().max()) < 1e-3 and float((image - ref_cv.image).abs().max()) < 1e-4
    off.backend, off.threads = 'onnxruntime', 1
    run_onnx, card = _onnx_corrector(off, corrector_model)
    image_o, _m, flow_o = run_onnx(f, y, t)
    assert float((flow_o - ref.flow).abs().max()) < PARITY_ATOL * 10 + 1e-5 * float(ref.flow.abs().max())
    assert list(card['onnx']) == ['0']
