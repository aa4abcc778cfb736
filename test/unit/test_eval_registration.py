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
    for name in ('| ecc |', '| similarity |', '| corrector |', 'Aligned input (3 pairs, '):
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
    al = res['aligned']
    assert 0 <= al['unchanged'] <= 3
    if al['unchanged'] < 3:   # the mean is over the changed pairs: finite
        assert np.isfinite(al['psnr_vs_uncorrected_mean'])
    # consistent EPE: per method, against the known shift composed with its aligned-pair flow
    for m in ('ecc', 'similarity', 'corrector'):
        assert methods[m]['epe_consistent'] == pytest.approx(
            np.mean([f['epe_consistent'][m] for f in frames]))
    assert methods['similarity']['epe_consistent_ratio'] < 0.6
    # the oracle bound: exact registration to the scene as the global estimate finds it on the aligned
    # pair; these references are close to aligned (< 1.5 px), so it recovers most of the error,
    # more than the estimate itself on the misaligned pair
    assert '| oracle |' in text
    assert methods['oracle']['recovered'] > 0.7
    assert methods['oracle']['recovered'] > methods['similarity']['recovered']
    assert 'epe' not in methods['oracle']
    check = res['aligned']['reference_check']
    assert check['pairs'] == 3 and 0 <= check['mi_raised_by_registration'] <= check['moved'] <= 3
    assert 'Reference check: on' in text


def test_consistent_target_composes_displacements():
    from ros2_regionfuse.cli.eval_registration import consistent_target
    h, w = 24, 32
    ys, xs = np.mgrid[0:h, 0:w].astype(np.float32)
    gt = np.stack([0.1 * xs, np.full_like(xs, -2.0)], -1)        # varies along x
    phi0 = np.zeros((h, w, 2), np.float32)
    phi0[..., 0] = 3.0                                           # 3 px right
    tgt = consistent_target(gt, phi0)
    inner = (slice(4, -4), slice(4, -8))
    # phi0(p) + gt(p + phi0(p)): x = 3 + 0.1 (x + 3), y = -2
    assert np.allclose(tgt[inner][..., 0], 3.0 + 0.1 * (xs[inner] + 3.0), atol=1e-4)
    assert np.allclose(tgt[inner][..., 1], -2.0, atol=1e-5)
    # zero phi0: the known displacement itself
    assert np.allclose(consistent_target(gt, np.zeros_like(phi0)), gt, atol=1e-5)


def test_reference_check_sees_a_misregistered_reference(test_data):
    """A 'reference' pair whose thermal image is really 4 px off: registering it by the true flow
    raises the mutual information, a same-size translation the other way does not."""
    from ros2_regionfuse.cli.eval_registration import reference_check, summarise_reference_check
    th, vis = _pair(test_data, 'FLIR_05005')
    true = torch.zeros(1, 2, *th.shape)
    true[:, 0] = 4.0
    off = convert.to_numpy(warp_by_flow(convert.to_tensor(th), -true))   # thermal 4 px off
    flow = convert.to_numpy(true)
    checks = [reference_check(off, vis, flow, np.random.default_rng(s)) for s in range(4)]
    for c in checks:
        assert c['shift'] == pytest.approx(4.0)
        assert c['mi_registered'] > c['mi'] + 0.02
        assert c['mi_control'] < c['mi_registered']
    summ = summarise_reference_check(checks + [dict(checks[0], shift=0.1)])
    assert summ['pairs'] == 5 and summ['moved'] == 4 and summ['mi_raised_by_registration'] == 4
    assert summ['mi_gain_mean'] > 0.02
