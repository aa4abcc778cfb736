"""``regionfuse make-sample-bag`` on a tiny synthetic dataset (no ../shared needed)."""
from __future__ import annotations

import json

import cv2
import numpy as np
import pytest
import yaml

pytest.importorskip('rosbags')

from ros2_regionfuse.cli.main import main  # noqa: E402
from ros2_regionfuse.cli.make_sample_bag import (  # noqa: E402
    calibration_homography,
    expected_flow,
    misregistration_affine,
)
from ros2_regionfuse.core import bagio  # noqa: E402

MS = 1_000_000
SRC_W, SRC_H = 160, 120
RGB_W, RGB_H = 128, 96
TH_W, TH_H = 64, 52


def _dataset(root, stems=('a', 'b'), spot=None, seed=0):
    """MSRS-like folder: smooth random IR/VI pairs, or a bright square at ``spot`` in both."""
    rng = np.random.default_rng(seed)
    for sub in ('ir', 'vi'):
        (root / 'MSRS' / sub).mkdir(parents=True, exist_ok=True)
    rows = ['staged_path,source_repo@commit,source_path']
    for stem in stems:
        if spot is None:
            ir = cv2.GaussianBlur(rng.integers(0, 256, (SRC_H, SRC_W), dtype=np.uint8), (0, 0), 2)
        else:
            ir = np.full((SRC_H, SRC_W), 20, np.uint8)
            x, y = spot
            ir[y - 3:y + 4, x - 3:x + 4] = 230
        vi = np.dstack([ir, ir // 2, 255 - ir])
        cv2.imwrite(str(root / 'MSRS' / 'ir' / f'{stem}.png'), ir)
        cv2.imwrite(str(root / 'MSRS' / 'vi' / f'{stem}.png'), vi)
        rows += [f'MSRS/{m}/{stem}.png,someone/repo@abc123,data/{m}/{stem}.png' for m in ('ir', 'vi')]
    (root / 'PROVENANCE.csv').write_text('\n'.join(rows) + '\n')


def _make(tmp_path, *extra: str, stems=('a', 'b'), frames=3, name='bag') -> int:
    return main(['make-sample-bag', '--out', str(tmp_path / name), '--source', str(tmp_path / 'src'),
                 '--pairs', *stems, '--frames-per-pair', str(frames),
                 '--rgb-size', str(RGB_W), str(RGB_H), '--thermal-size', str(TH_W), str(TH_H),
                 '--rgb-fx', '120', '--pan-px', '4', *extra])


def test_topics_counts_stamps_and_files(tmp_path) -> None:
    _dataset(tmp_path / 'src')
    assert _make(tmp_path, '--start-time', '1000.0') == 0
    bag = tmp_path / 'bag'
    topics = bagio.bag_topics(bag)
    assert {t: (s.msgtype, s.count) for t, s in topics.items()} == {
        '/thermal/image_raw': (bagio.IMAGE, 6), '/thermal/camera_info': (bagio.CAMERA_INFO, 6),
        '/rgb/image_raw': (bagio.IMAGE, 6), '/rgb/camera_info': (bagio.CAMERA_INFO, 6)}
    msgs = list(bagio.read_messages(bag))
    logs = [m.log_ns for m in msgs]
    assert logs == sorted(logs)
    by_topic: dict[str, list] = {}
    for m in msgs:
        by_topic.setdefault(m.topic, []).append((m.log_ns, m.decode()))
    rgb_stamps, th_stamps = [], []
    for log_ns, msg in by_topic['/rgb/image_raw']:
        s = bagio.time_to_ns(msg.header.stamp)
        rgb_stamps.append(s)
        assert 5 * MS <= log_ns - s <= 9 * MS  # transport delay
        assert (msg.encoding, msg.width, msg.height, msg.header.frame_id) == \
            ('bgr8', RGB_W, RGB_H, 'rgb_camera_optical_frame')
    for log_ns, msg in by_topic['/thermal/image_raw']:
        s = bagio.time_to_ns(msg.header.stamp)
        th_stamps.append(s)
        assert 2 * MS <= log_ns - s <= 5 * MS
        assert (msg.encoding, msg.width, msg.height) == ('mono16', TH_W, TH_H)
        counts = bagio.image_array(msg)
        assert counts.dtype == np.uint16 and 6900 <= counts.min() and counts.max() <= 7000 + 8 * 255 + 30
    nominal = 1000 * 10 ** 9 + np.arange(6) * 100 * MS
    assert np.abs(np.array(rgb_stamps) - nominal).max() <= 3 * MS
    assert np.abs(np.array(th_stamps) - nominal - 4 * MS).max() <= 3 * MS
    # camera_info beside each image with the same stamp and a K consistent with the calibration
    info_stamps = [bagio.time_to_ns(m.header.stamp) for _, m in by_topic['/rgb/camera_info']]
    assert info_stamps == rgb_stamps
    k_rgb = by_topic['/rgb/camera_info'][0][1].k.reshape(3, 3)
    k_th = by_topic['/thermal/camera_info'][0][1].k.reshape(3, 3)
    truth = json.loads((bag / 'ground_truth.json').read_text())
    cal = np.array(truth['calibration']['homography_thermal_to_rgb']).reshape(3, 3)
    np.testing.assert_allclose(k_rgb @ np.linalg.inv(k_th), cal, atol=1e-9)
    assert [f['rgb_stamp_ns'] for f in truth['frames']] == rgb_stamps
    assert [s['licence'] for s in truth['sources']] == ['MIT'] * 4
    assert truth['sources'][0]['source'] == 'someone/repo@abc123'
    params = yaml.safe_load((bag / 'calibration.yaml').read_text())['/**']['ros__parameters']['align']
    assert params['mode'] == 'homography'
    assert all(isinstance(v, float) for v in params['homography'])  # rcl needs one element type
    np.testing.assert_allclose(np.array(params['homography']).reshape(3, 3), cal, atol=1e-6)


def test_same_seed_same_messages(tmp_path) -> None:
    _dataset(tmp_path / 'src', stems=('a',))
    assert _make(tmp_path, stems=('a',), frames=2, name='b1') == 0
    assert _make(tmp_path, stems=('a',), frames=2, name='b2') == 0
    assert _make(tmp_path, '--seed', '1', stems=('a',), frames=2, name='b3') == 0
    raw = {n: [m.raw for m in bagio.read_messages(tmp_path / n)] for n in ('b1', 'b2', 'b3')}
    assert raw['b1'] == raw['b2']
    assert raw['b1'] != raw['b3']


def _centroid(img: np.ndarray) -> np.ndarray:
    w = np.clip(img.astype(np.float64) - np.percentile(img, 50), 0, None)
    w[w < 0.5 * w.max()] = 0
    ys, xs = np.mgrid[:img.shape[0], :img.shape[1]]
    return np.array([(w * xs).sum(), (w * ys).sum()]) / w.sum()


def test_known_misregistration_is_applied(tmp_path) -> None:
    """A spot seen at RGB pixel p appears in the calibrated thermal at T(p) = p + (6, 0)."""
    _dataset(tmp_path / 'src', stems=('a',), spot=(90, 55))
    assert _make(tmp_path, '--misreg-rotation-deg', '0', '--shake-px', '0', '--counts-noise', '0',
                 stems=('a',), frames=2) == 0
    imgs = {}
    for m in bagio.read_messages(tmp_path / 'bag', ['/rgb/image_raw', '/thermal/image_raw']):
        imgs.setdefault(m.topic, bagio.image_array(m.decode()))
    p_rgb = _centroid(imgs['/rgb/image_raw'][:, :, 0])
    q_th = _centroid(imgs['/thermal/image_raw'])
    cal = calibration_homography((RGB_W, RGB_H), (TH_W, TH_H))
    p_th = (cal @ np.array([q_th[0], q_th[1], 1.0]))[:2]
    np.testing.assert_allclose(p_th - p_rgb, [6.0, 0.0], atol=0.6)


def test_ground_truth_flow() -> None:
    t = misregistration_affine((100, 80), (6.0, 0.0), 0.0)
    f = expected_flow(t, (100, 80))
    np.testing.assert_allclose(f[..., 0], 6.0, atol=1e-5)
    np.testing.assert_allclose(f[..., 1], 0.0, atol=1e-5)
    t = misregistration_affine((101, 81), (0.0, 0.0), 1.0)
    f = expected_flow(t, (101, 81))
    np.testing.assert_allclose(f[40, 50], 0.0, atol=1e-5)  # rotation centre does not move
    assert np.hypot(*f[0, 0]) == pytest.approx(np.hypot(50, 40) * 2 * np.sin(np.radians(0.5)), rel=1e-4)


def test_refuses_non_redistributable_sets_and_missing_pairs(tmp_path, capsys) -> None:
    _dataset(tmp_path / 'src')
    assert main(['make-sample-bag', '--out', str(tmp_path / 'x'), '--source', str(tmp_path / 'src'),
                 '--dataset', 'LLVIP']) == 2
    assert 'licence' in capsys.readouterr().err
    assert _make(tmp_path, stems=('zzz',)) == 2
    assert 'zzz' in capsys.readouterr().err
