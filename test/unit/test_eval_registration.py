"""``regionfuse eval-registration`` on the bundled test pairs, and its baselines."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from ros2_regionfuse.cli.eval_registration import similarity_register
from ros2_regionfuse.cli.main import main
from ros2_regionfuse.core import convert
from ros2_regionfuse.core.imageio import read_gray, read_rgb
from ros2_regionfuse.models.warp import warp_by_flow


def _pair(test_data, stem: str) -> tuple[np.ndarray, np.ndarray]:
    th = read_gray(test_data / 'ir' / f'{stem}.png', as_uint8=True).astype(np.float32) / 255.0
    vis = convert.luminance(convert.rgb_to_unit(read_rgb(test_data / 'vi' / f'{stem}.png')))
    return th, vis


def test_similarity_register_undoes_a_shift(test_data):
    th, vis = _pair(test_data, 'FLIR_05005')
    flow = torch.zeros(1, 2, *th.shape)
    flow[:, 0], flow[:, 1] = 5.0, -3.0
    moved = convert.to_numpy(warp_by_flow(convert.to_tensor(th), -flow))
    reg, est, ms = similarity_register(moved, vis)
    assert reg.shape == th.shape and est.shape == (*th.shape, 2) and ms > 0
    inner = (slice(16, -16), slice(16, -16))
    assert np.median(est[inner][..., 0]) == pytest.approx(5.0, abs=1.0)
    assert np.median(est[inner][..., 1]) == pytest.approx(-3.0, abs=1.0)
    # the registered thermal is closer to the aligned one than the moved input
    assert np.abs(reg - th)[inner].mean() < 0.6 * np.abs(moved - th)[inner].mean()


def test_eval_registration_cli_reports_every_method(test_data, tmp_path, capsys):
    out = tmp_path / 'reg.json'
    rc = main(['eval-registration', '--thermal', str(test_data / 'ir'), '--rgb', str(test_data / 'vi'),
               '--mean-shift', '10', '--threads', '1', '--json', str(out)])
    assert rc == 0
    text = capsys.readouterr().out
    for name in ('| ecc |', '| similarity |', '| corrector |', 'Aligned input (3 pairs)'):
        assert name in text
    res = json.loads(out.read_text())
    level = res['levels']['10']
    assert level['frames'] == 3
    assert level['applied_mean_shift'] == pytest.approx(10.0, rel=0.2)   # over valid pixels only
    methods = level['methods']
    assert methods['none']['recovered'] == 0.0
    for m in ('ecc', 'similarity', 'corrector'):
        assert np.isfinite(methods[m]['recovered']) and methods[m]['recovered'] <= 1.0
        assert methods[m]['epe'] >= 0.0
    # every frame's method errors are consistent with the summary
    frames = [f for f in res['frames'] if f['level'] == '10']
    mse_none = sum(f['mse']['none'] for f in frames)
    mse_sim = sum(f['mse']['similarity'] for f in frames)
    assert methods['similarity']['recovered'] == pytest.approx(1 - mse_sim / mse_none)
    # the global similarity estimate gets the bulk of a 10 px misalignment on these pairs
    assert methods['similarity']['epe_ratio'] < 0.6
    assert res['aligned']['pairs'] == 3
