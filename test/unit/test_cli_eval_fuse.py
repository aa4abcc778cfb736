"""``regionfuse eval`` and ``regionfuse fuse`` round trips on the committed test pairs.

The fusion model is an untrained default fusion variant saved to a temporary
checkpoint (the shipped weights are not needed), so these tests check the CLI
wiring (pairing, colour order, file naming, maps, error handling), not quality.
"""
from __future__ import annotations

import csv
import json
import math
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from ros2_regionfuse.cli import fuse as fuse_cli
from ros2_regionfuse.cli.main import main
from ros2_regionfuse.core import convert
from ros2_regionfuse.core.checks import ConfigError, ImageIOError
from ros2_regionfuse.core.config import CorrectorConfig, FusionConfig, PipelineConfig
from ros2_regionfuse.core.imageio import read_gray, read_rgb, write_png
from ros2_regionfuse.core.metrics import METRIC_NAMES, compute_metrics
from ros2_regionfuse.core.weights import save_weights

CORRECTOR = CorrectorConfig().variant   # the default corrector variant
FUSION = FusionConfig().variant   # the default fusion variant

STEMS = ['00537D', 'FLIR_05005', 'tno17']


# ---------------------------------------------------------------------------
# fixtures
# ---------------------------------------------------------------------------

@pytest.fixture(scope='module')
def fusion_ckpt(tmp_path_factory) -> Path:
    from ros2_regionfuse.models.registry import build_fusion
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp('weights') / 'fusion_untrained.safetensors'
    save_weights(build_fusion(FUSION), path, {'variant': FUSION, 'note': 'untrained'})
    return path


@pytest.fixture(scope='module')
def corrector_ckpt(tmp_path_factory) -> Path | None:
    """Untrained weights of the default corrector; None when it has none (register_refuse)."""
    from ros2_regionfuse.models import registry
    if not registry.needs_weights('corrector', CORRECTOR):
        return None
    model = registry.build_corrector(CORRECTOR)
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp('weights') / 'corrector_untrained.safetensors'
    save_weights(model, path, {'variant': CORRECTOR, 'note': 'untrained'})
    return path


@pytest.fixture()
def pairs_copy(tmp_path, test_data) -> tuple[Path, Path]:
    """A writable copy of the committed pairs: (ir folder, vi folder)."""
    ir, vi = tmp_path / 'ir', tmp_path / 'vi'
    shutil.copytree(test_data / 'ir', ir)
    shutil.copytree(test_data / 'vi', vi)
    return ir, vi


def _leftovers(folder: Path) -> list[str]:
    """Temporary files left anywhere below ``folder``."""
    return [p.name for p in folder.rglob('*') if p.name.endswith('.tmp')]


# ---------------------------------------------------------------------------
# eval
# ---------------------------------------------------------------------------

def _average_folder(test_data: Path, out: Path) -> Path:
    for stem in STEMS:
        ir = read_gray(test_data / 'ir' / f'{stem}.png').astype(np.float32)
        y = read_gray(test_data / 'vi' / f'{stem}.png').astype(np.float32)
        write_png(out / f'{stem}.png', np.round((ir + y) / 2).astype(np.uint8))
    return out


def test_eval_sources_as_fusions_values(test_data, tmp_path, capsys):
    avg = _average_folder(test_data, tmp_path / 'avg')
    js, cs = tmp_path / 'r.json', tmp_path / 'r.csv'
    rc = main(['eval', '--thermal', str(test_data / 'ir'), '--rgb', str(test_data / 'vi'),
               '--fused', str(test_data / 'vi'), '--fused', str(test_data / 'ir'), str(avg),
               '--names', 'VI', 'IR', 'AVG', '--json', str(js), '--csv', str(cs)])
    assert rc == 0
    out = capsys.readouterr().out
    assert '| method | EN | SD | SF | AG | MI | SCD | VIF | Qabf | SSIM | mean rank |' in out
    assert out.count('\n| VI |') == 1 and out.count('\n| AVG |') == 1
    doc = json.loads(js.read_text())
    assert doc['pairs'] == STEMS and doc['metrics'] == list(METRIC_NAMES)
    vi, ir, avg_m = (doc['methods'][k] for k in ('VI', 'IR', 'AVG'))
    for stem in STEMS:
        a, b = vi['per_image'][stem], ir['per_image'][stem]
        # F = VI and F = IR both give 1 + SSIM(IR, VI), and MI(F) - EN(F) = MI(IR, VI)
        assert a['SSIM'] == pytest.approx(b['SSIM'], abs=1e-9)
        assert a['MI'] - a['EN'] == pytest.approx(b['MI'] - b['EN'], abs=1e-9)
        assert a['VIF'] > 1.0 and b['VIF'] > 1.0  # contains VIF(x, x) = 1
        # F = VI: corr(0, IR) = 0, so SCD = corr(VI - IR, VI) < 1
        assert a['SCD'] < 1.0
    # the average keeps both sources: better SCD than either source alone
    assert avg_m['mean']['SCD'] > max(vi['mean']['SCD'], ir['mean']['SCD'])
    # JSON agrees with the library on one pair
    vi17 = read_gray(test_data / 'vi' / 'tno17.png')
    direct = compute_metrics(vi17, read_gray(test_data / 'ir' / 'tno17.png'), vi17)
    assert vi['per_image']['tno17'] == pytest.approx(direct, abs=1e-12)
    for name in ('VI', 'IR', 'AVG'):
        means = doc['methods'][name]['mean']
        assert means['SD'] == pytest.approx(np.mean([doc['methods'][name]['per_image'][s]['SD']
                                                    for s in STEMS]), abs=1e-12)
    # ranks: per metric they are a permutation of 1..3, so mean ranks sum to 6
    assert sum(doc['methods'][k]['mean_rank'] for k in ('VI', 'IR', 'AVG')) == pytest.approx(6.0)
    rows = list(csv.DictReader(cs.open()))
    assert [r['method'] for r in rows] == ['VI', 'IR', 'AVG']
    assert float(rows[2]['Qabf']) == pytest.approx(avg_m['mean']['Qabf'], abs=1e-5)
    assert float(rows[0]['mean_rank']) == pytest.approx(vi['mean_rank'], abs=1e-3)
    assert rows[0]['pairs'] == '3'


def test_eval_list_restricts_pairs(test_data, tmp_path):
    lst = tmp_path / 'split.txt'
    lst.write_text('tno17\nFLIR_05005.jpg\n')
    js = tmp_path / 'r.json'
    rc = main(['eval', '--thermal', str(test_data / 'ir'), '--rgb', str(test_data / 'vi'),
               '--fused', str(test_data / 'vi'), '--list', str(lst), '--json', str(js)])
    assert rc == 0
    doc = json.loads(js.read_text())
    assert doc['pairs'] == ['tno17', 'FLIR_05005']
    assert sorted(doc['methods']['vi']['per_image']) == ['FLIR_05005', 'tno17']  # default name: folder


def test_eval_list_names_missing_stem(test_data, tmp_path, capsys):
    lst = tmp_path / 'split.txt'
    lst.write_text('tno17\nnot_there\n')
    rc = main(['eval', '--thermal', str(test_data / 'ir'), '--rgb', str(test_data / 'vi'),
               '--fused', str(test_data / 'vi'), '--list', str(lst)])
    assert rc == 2
    assert 'not_there' in capsys.readouterr().err


def test_eval_errors_write_nothing(test_data, pairs_copy, tmp_path, capsys):
    ir, vi = pairs_copy
    fused = tmp_path / 'fused'
    shutil.copytree(vi, fused)
    js, cs = tmp_path / 'r.json', tmp_path / 'r.csv'
    base = ['eval', '--thermal', str(ir), '--rgb', str(vi), '--fused', str(fused),
            '--json', str(js), '--csv', str(cs)]

    (fused / 'tno17.png').unlink()  # a fused folder missing a pair
    assert main(base) == 2
    err = capsys.readouterr().err
    assert str(fused) in err and 'tno17' in err and '1 of 3' in err

    (fused / 'tno17.png').write_bytes(b'garbage, not a png' * 3)  # unreadable
    assert main(base) == 2
    assert f'{fused / "tno17.png"}: not a readable image' in capsys.readouterr().err

    (fused / 'tno17.png').write_bytes(b'')  # empty file
    assert main(base) == 2
    assert f'{fused / "tno17.png"}: empty file' in capsys.readouterr().err

    write_png(fused / 'tno17.png', np.zeros((10, 12), np.uint8))  # wrong size
    assert main(base) == 2
    assert f'{fused / "tno17.png"}: size (12, 10) differs' in capsys.readouterr().err

    shutil.copy(test_data / 'vi' / 'tno17.png', fused / 'tno17.png')
    shutil.copy(ir / 'tno17.png', ir / 'extra.png')  # mismatched pair count
    assert main(base) == 2
    err = capsys.readouterr().err
    assert 'extra.png' in err and 'without a partner' in err

    assert main(base + ['--names', 'a', 'b']) == 2
    assert '2 name(s) for 1 --fused folder(s)' in capsys.readouterr().err
    assert not js.exists() and not cs.exists() and _leftovers(tmp_path) == []

    assert main(base + ['--skip-unmatched']) == 0  # now it works, skipping extra.png
    assert json.loads(js.read_text())['pairs'] == STEMS


# ---------------------------------------------------------------------------
# fuse
# ---------------------------------------------------------------------------

def _pipeline(ckpt: Path, corrector: Path | None = None, correct: bool = False):
    from ros2_regionfuse.inference.pipeline import FusionPipeline
    cfg = PipelineConfig(device='cpu')
    cfg.fusion.checkpoint = str(ckpt)
    cfg.corrector.enabled = correct or corrector is not None
    if corrector is not None:
        cfg.corrector.checkpoint = str(corrector)
    return FusionPipeline(cfg)


def test_fuse_folder_roundtrip_then_eval(test_data, tmp_path, fusion_ckpt, capsys):
    out = tmp_path / 'out'
    rc = main(['fuse', '--thermal', str(test_data / 'ir'), '--rgb', str(test_data / 'vi'), '--out', str(out),
               '--device', 'cpu', '--no-correct', '--fusion-checkpoint', str(fusion_ckpt)])
    assert rc == 0
    assert 'fused 3 pair(s)' in capsys.readouterr().out
    expected = sorted([f'{s}.png' for s in STEMS] + ['regionfuse_fuse.json'])
    assert sorted(p.name for p in out.iterdir()) == expected
    pipe = _pipeline(fusion_ckpt)
    for stem in STEMS:
        got = read_rgb(out / f'{stem}.png')
        rgb = read_rgb(test_data / 'vi' / f'{stem}.png')
        expect = pipe.process(read_gray(test_data / 'ir' / f'{stem}.png'), rgb, correct=False).fused
        assert got.shape == expect.shape == (*rgb.shape[:2], 3)
        assert np.array_equal(got, expect)  # same pixels, RGB order preserved through the file
        if rgb.ndim == 2:  # gray visible -> gray fusion
            assert np.array_equal(got[..., 0], got[..., 1]) and np.array_equal(got[..., 1], got[..., 2])
    record = json.loads((out / 'regionfuse_fuse.json').read_text())
    assert record['fusion'].startswith(f'{FUSION}@') and record['corrector'] is None
    assert record['config']['fusion.checkpoint'] == str(fusion_ckpt)
    assert [p['stem'] for p in record['pairs']] == STEMS

    js = tmp_path / 'e.json'
    assert main(['eval', '--thermal', str(test_data / 'ir'), '--rgb', str(test_data / 'vi'),
                 '--fused', str(out), '--json', str(js)]) == 0
    means = json.loads(js.read_text())['methods']['out']['mean']
    assert all(math.isfinite(v) for v in means.values())


def test_fuse_single_files_and_config_file(test_data, tmp_path, fusion_ckpt):
    cfg = tmp_path / 'fuse.yaml'
    cfg.write_text(f'fuse_node:\n  ros__parameters:\n    device: cpu\n    corrector:\n      enabled: false\n'
                   f'    fusion:\n      checkpoint: {fusion_ckpt}\n')
    out = tmp_path / 'out'
    rc = main(['fuse', '--thermal', str(test_data / 'ir' / 'tno17.png'),
               '--rgb', str(test_data / 'vi' / 'tno17.png'), '--out', str(out), '--config', str(cfg)])
    assert rc == 0
    assert (out / 'tno17.png').is_file()
    assert read_rgb(out / 'tno17.png').shape == (186, 256, 3)
    bad = tmp_path / 'bad.yaml'
    bad.write_text('fuse_node:\n  ros__parameters:\n    no_such_parameter: 1\n')
    with pytest.raises(ConfigError, match="bad.yaml: unknown parameter 'no_such_parameter'"):
        fuse_cli.load_config_file(bad)


def test_fuse_save_maps_without_corrector(test_data, tmp_path, fusion_ckpt):
    out = tmp_path / 'out'
    rc = main(['fuse', '--thermal', str(test_data / 'ir'), '--rgb', str(test_data / 'vi'), '--out', str(out),
               '--device', 'cpu', '--no-correct', '--save-maps', '--fusion-checkpoint', str(fusion_ckpt)])
    assert rc == 0
    assert sorted(p.name for p in (out / 'maps').iterdir()) == [f'{s}_raw.png' for s in STEMS]
    for stem in STEMS:  # without correction the raw fusion is the output
        assert np.array_equal(read_rgb(out / 'maps' / f'{stem}_raw.png'), read_rgb(out / f'{stem}.png'))


def test_fuse_save_maps_with_corrector(test_data, tmp_path, fusion_ckpt, corrector_ckpt):
    out = tmp_path / 'out'
    rc = main(['fuse', '--thermal', str(test_data / 'ir'), '--rgb', str(test_data / 'vi'), '--out', str(out),
               '--device', 'cpu', '--save-maps', '--fusion-checkpoint', str(fusion_ckpt),
               *(['--corrector-checkpoint', str(corrector_ckpt)] if corrector_ckpt else [])])
    assert rc == 0
    pipe = _pipeline(fusion_ckpt, corrector_ckpt, correct=True)
    for stem in STEMS:
        rgb = read_rgb(test_data / 'vi' / f'{stem}.png')
        h, w = rgb.shape[:2]
        res = pipe.process(read_gray(test_data / 'ir' / f'{stem}.png'), rgb, correct=True)
        m = np.load(out / 'maps' / f'{stem}_misreg.npy', allow_pickle=False)
        flow = np.load(out / 'maps' / f'{stem}_flow.npy', allow_pickle=False)
        assert m.shape == (h, w) and m.dtype == np.float32 and 0.0 <= m.min() <= m.max() <= 1.0
        assert flow.shape == (h, w, 2) and flow.dtype == np.float32
        assert np.array_equal(read_gray(out / 'maps' / f'{stem}_misreg.png'), convert.unit_to_uint8(m))
        assert np.allclose(m, res.misregistration) and np.allclose(flow, res.flow)
        assert np.array_equal(read_rgb(out / f'{stem}.png'), res.fused)
        assert np.array_equal(read_rgb(out / 'maps' / f'{stem}_raw.png'), res.fused_raw)
    record = json.loads((out / 'regionfuse_fuse.json').read_text())
    assert record['corrector'].startswith(f'{CORRECTOR}@')


@pytest.mark.parametrize('kind', ['garbage', 'empty', 'nan_tiff'])
def test_fuse_bad_pair_stops_and_writes_nothing_for_it(pairs_copy, tmp_path, fusion_ckpt, capsys, kind):
    ir, vi = pairs_copy
    bad_rgb = vi / 'tno17.png'
    if kind == 'garbage':
        bad = ir / 'tno17.png'
        bad.write_bytes(b'\x89PNG\r\n\x1a\n' + b'\x00' * 40)
        expect = 'not a readable image'
    elif kind == 'empty':
        bad = ir / 'tno17.png'
        bad.write_bytes(b'')
        expect = 'empty file'
    else:
        (ir / 'tno17.png').unlink()
        bad = ir / 'tno17.tiff'
        t = np.full((186, 256), 300.0, np.float32)
        t[5, 5] = np.nan
        import cv2
        assert cv2.imwrite(str(bad), t)
        expect = '1 NaN/Inf values'
    out = tmp_path / 'out'
    rc = main(['fuse', '--thermal', str(ir), '--rgb', str(vi), '--out', str(out), '--device', 'cpu',
               '--no-correct', '--save-maps', '--fusion-checkpoint', str(fusion_ckpt)])
    assert rc == 2
    err = capsys.readouterr().err
    assert f'{bad}: {expect}' in err
    # pairs before the bad one (sorted by stem) are complete; nothing at all for the bad one
    assert (out / '00537D.png').is_file() and (out / 'FLIR_05005.png').is_file()
    assert not (out / 'tno17.png').exists() and not (out / 'maps' / 'tno17_raw.png').exists()
    assert not (out / 'regionfuse_fuse.json').exists()
    assert _leftovers(tmp_path) == [] and bad_rgb.is_file()


def test_fuse_mismatched_pairs_and_config_errors(pairs_copy, tmp_path, fusion_ckpt, capsys):
    ir, vi = pairs_copy
    (vi / 'FLIR_05005.png').unlink()
    out = tmp_path / 'out'
    base = ['fuse', '--thermal', str(ir), '--rgb', str(vi), '--out', str(out), '--device', 'cpu',
            '--no-correct', '--fusion-checkpoint', str(fusion_ckpt)]
    assert main(base) == 2
    err = capsys.readouterr().err
    assert str(ir / 'FLIR_05005.png') in err and 'without a partner' in err and 'nothing written' in err
    assert not out.exists()
    assert main(base + ['--skip-unmatched']) == 0
    assert sorted(p.name for p in out.glob('*.png')) == ['00537D.png', 'tno17.png']

    missing = tmp_path / 'nope.safetensors'
    assert main(base[:-1] + [str(missing), '--skip-unmatched']) == 2
    assert f'--fusion-checkpoint: {missing} not found' in capsys.readouterr().err
    corrupt = tmp_path / 'corrupt.safetensors'
    corrupt.write_bytes(b'\x00' * 64)
    assert main(base[:-1] + [str(corrupt), '--skip-unmatched']) == 2
    assert f'{corrupt}: not a valid safetensors file' in capsys.readouterr().err
    afile = tmp_path / 'afile'
    afile.write_text('x')
    assert main(['fuse', '--thermal', str(ir / 'tno17.png'), '--rgb', str(vi / 'tno17.png'),
                 '--out', str(afile), '--device', 'cpu', '--no-correct',
                 '--fusion-checkpoint', str(fusion_ckpt)]) == 2
    assert 'is not a folder' in capsys.readouterr().err


def test_fuse_write_failure_removes_the_pairs_files(test_data, tmp_path, fusion_ckpt, monkeypatch):
    real = fuse_cli.atomic_write_bytes

    def failing(path, data):
        if path.name == 'tno17.png':  # the main image, written after the maps
            raise ImageIOError(f'{path}: cannot write (No space left on device)')
        real(path, data)

    monkeypatch.setattr(fuse_cli, 'atomic_write_bytes', failing)
    out = tmp_path / 'out'
    rc = main(['fuse', '--thermal', str(test_data / 'ir'), '--rgb', str(test_data / 'vi'), '--out', str(out),
               '--device', 'cpu', '--no-correct', '--save-maps', '--fusion-checkpoint', str(fusion_ckpt)])
    assert rc == 2
    assert (out / 'maps' / 'FLIR_05005_raw.png').is_file()
    assert not (out / 'maps' / 'tno17_raw.png').exists() and not (out / 'tno17.png').exists()


def test_fuse_16bit_thermal_of_other_size(test_data, tmp_path, fusion_ckpt):
    import cv2
    ir8 = read_gray(test_data / 'ir' / '00537D.png')
    raw = (cv2.resize(ir8, (80, 60), interpolation=cv2.INTER_AREA).astype(np.uint16) * 40 + 20000)
    th = tmp_path / 'th16.png'
    write_png(th, raw)
    out = tmp_path / 'out'
    rc = main(['fuse', '--thermal', str(th), '--rgb', str(test_data / 'vi' / '00537D.png'), '--out', str(out),
               '--device', 'cpu', '--no-correct', '--fusion-checkpoint', str(fusion_ckpt)])
    assert rc == 0
    got = read_rgb(out / '00537D.png')
    rgb = read_rgb(test_data / 'vi' / '00537D.png')
    assert got.shape == rgb.shape  # thermal resized to the RGB frame
    expect = _pipeline(fusion_ckpt).process(raw, rgb, correct=False).fused
    assert np.array_equal(got, expect)


def test_fuse_refuses_to_overwrite_inputs(pairs_copy, fusion_ckpt, capsys):
    ir, vi = pairs_copy
    before = {p.name: p.read_bytes() for p in vi.iterdir()}
    rc = main(['fuse', '--thermal', str(ir), '--rgb', str(vi), '--out', str(vi), '--device', 'cpu',
               '--no-correct', '--fusion-checkpoint', str(fusion_ckpt)])
    assert rc == 2
    assert 'would overwrite an input image' in capsys.readouterr().err
    assert {p.name: p.read_bytes() for p in vi.iterdir()} == before
