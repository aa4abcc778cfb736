"""regionfuse calibrate: the rig homography from registered frames, its parameter file, its refusals."""
from __future__ import annotations

import cv2
import numpy as np
import pytest

from ros2_regionfuse.cli.main import main
from ros2_regionfuse.core.calibration import (
    CalibrationConfig,
    CalibrationError,
    _apply,
    calibrate,
    params_yaml,
    start_map,
)
from ros2_regionfuse.core.config import NodeConfig
from ros2_regionfuse.core.imageio import read_gray, read_rgb, write_png

RGB_WH = (320, 240)
STEMS = ('FLIR_05005', '00537D', 'tno17')


def _rig(test_data, h: np.ndarray, th_wh: tuple[int, int], noise: int = 2
         ) -> list[tuple[np.ndarray, np.ndarray]]:
    """Frames of a synthetic rig: each committed pair's thermal image seen through ``h`` (thermal -> RGB)."""
    rng = np.random.default_rng(0)
    out = []
    for stem in STEMS:
        rgb = cv2.resize(read_rgb(test_data / 'vi' / f'{stem}.png'), RGB_WH, interpolation=cv2.INTER_AREA)
        t_al = cv2.resize(read_gray(test_data / 'ir' / f'{stem}.png', as_uint8=True), RGB_WH,
                          interpolation=cv2.INTER_AREA)
        th = cv2.warpPerspective(t_al, h, th_wh, flags=cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP)
        for _ in range(noise):
            n = np.clip(th.astype(np.int16) + rng.integers(-3, 4, th.shape), 0, 255).astype(np.uint8)
            out.append((n, rgb))
    return out


def _grid_error(a: np.ndarray, b: np.ndarray, th_wh: tuple[int, int]) -> float:
    xs, ys = np.meshgrid(np.linspace(0, th_wh[0] - 1, 12), np.linspace(0, th_wh[1] - 1, 9))
    p = np.stack([xs.ravel(), ys.ravel()], 1)
    return float(np.hypot(*(_apply(a, p) - _apply(b, p)).T).mean())


def test_start_map_centres_the_thermal_view() -> None:
    m = start_map((160, 128), (320, 240), 0.5)
    c = _apply(m, np.array([[79.5, 63.5]]))[0]
    assert np.allclose(c, [159.5, 119.5])


def test_calibrate_recovers_a_rig_and_the_file_round_trips(test_data, tmp_path) -> None:
    h = np.array([[1.03, 0.02, 9.0], [-0.015, 0.99, -6.0], [0.0, 0.0, 1.0]])
    frames = _rig(test_data, h, RGB_WH)
    # the committed pairs are upsampled to this size: no detail for a full-resolution step
    cal = calibrate(frames, CalibrationConfig(model='affine', fine_iters=0))
    assert cal.used >= 4 and cal.frames == 6
    assert _grid_error(cal.homography, h, RGB_WH) < 1.5
    # the written file goes through the node's parameter loader into the same matrix
    path = tmp_path / 'rig.yaml'
    path.write_text(params_yaml(cal, 'test'))
    from ros2_regionfuse.cli.bag import load_params_files
    cfg = load_params_files(NodeConfig(), [path])
    assert cfg.pipeline.align.mode == 'homography'
    assert np.allclose(np.reshape(cfg.pipeline.align.homography, (3, 3)), cal.homography, atol=1e-9)
    from ros2_regionfuse.cli.fuse import load_config_file
    assert np.allclose(np.reshape(load_config_file(path).pipeline.align.homography, (3, 3)), cal.homography)


def test_calibrate_refuses_unrelated_or_blank_frames(test_data) -> None:
    rgb = cv2.resize(read_rgb(test_data / 'vi' / 'FLIR_05005.png'), RGB_WH)
    blank = [(np.full((240, 320), 90, np.uint8), rgb) for _ in range(4)]
    with pytest.raises(CalibrationError, match='confidently'):
        calibrate(blank)
    other = cv2.resize(read_gray(test_data / 'ir' / 'tno17.png', as_uint8=True), RGB_WH)
    unrelated = [(np.ascontiguousarray(other[::-1, ::-1]), rgb)] * 4
    with pytest.raises(CalibrationError):
        calibrate(unrelated)
    with pytest.raises(CalibrationError, match='no image pairs'):
        calibrate([])


def test_calibrate_cli_writes_the_parameter_file(test_data, tmp_path) -> None:
    h = np.array([[1.0, 0.0, 7.0], [0.0, 1.0, 4.0], [0.0, 0.0, 1.0]])
    ir, vi = tmp_path / 'ir', tmp_path / 'vi'
    ir.mkdir()
    vi.mkdir()
    for i, (t, r) in enumerate(_rig(test_data, h, RGB_WH)):
        write_png(ir / f'{i:02d}.png', t)
        write_png(vi / f'{i:02d}.png', r)
    out = tmp_path / 'rig.yaml'
    assert main(['calibrate', '--thermal', str(ir), '--rgb', str(vi), '--out', str(out), '--model', 'affine',
                 '--no-progress']) == 0
    text = out.read_text()
    assert 'mode: homography' in text and 'frames 6' in text
    blank_dir = tmp_path / 'blank'
    blank_dir.mkdir()
    for i in range(4):
        write_png(blank_dir / f'{i:02d}.png', np.full((240, 320), 90, np.uint8))
    assert main(['calibrate', '--thermal', str(blank_dir), '--rgb', str(vi), '--out',
                 str(tmp_path / 'x.yaml'), '--no-progress']) == 2
    assert not (tmp_path / 'x.yaml').exists()


def test_online_calibration_estimates_from_a_stream_then_holds(test_data) -> None:
    """align.mode auto's estimator: blank frames first (not confident, nothing fixed), then the rig's
    frames; it fixes the map from the first confident ones, holds it, and restarts on request."""
    from ros2_regionfuse.core.calibration import OnlineCalibration
    h = np.array([[1.02, 0.01, 11.0], [-0.01, 1.0, -7.0], [0.0, 0.0, 1.0]])
    frames = _rig(test_data, h, RGB_WH)
    rgb = frames[0][1]
    online = OnlineCalibration(CalibrationConfig(model='affine'), frames=3, window=8)
    for _ in range(3):
        assert online.add(np.full((240, 320), 90, np.uint8), rgb) is None
    assert online.state == 'collecting' and online.confident() == 0
    assert 'collecting: 0 of 3' in online.summary()
    got, n = None, 0
    while got is None and n < len(frames):
        got = online.add(*frames[n])
        n += 1
    assert got is not None and online.state == 'fixed' and n <= 5
    assert _grid_error(got.homography, h, RGB_WH) < 1.5
    assert got.low_confidence == 3                       # the blank frames, kept in the window, rejected
    assert online.add(*frames[-1]) is got and online.registered == 3 + n   # held: no more registration
    assert 'fixed from' in online.summary()
    online.restart()
    assert online.state == 'collecting' and online.registered == 0
    with pytest.raises(CalibrationError):
        OnlineCalibration(frames=2, window=8)             # fewer than min_frames


def _grid_error(h: np.ndarray, truth: np.ndarray, wh: tuple[int, int]) -> float:
    g = np.stack(np.meshgrid(np.linspace(0, wh[0] - 1, 16), np.linspace(0, wh[1] - 1, 12)), -1).reshape(-1, 2)

    def apply(m: np.ndarray) -> np.ndarray:
        q = np.c_[g, np.ones(len(g))] @ m.T
        return q[:, :2] / q[:, 2:]
    return float(np.hypot(*(apply(h) - apply(truth)).T).mean())


def test_aggregate_weights_frames_by_confidence_and_distance(monkeypatch) -> None:
    """Inlier frames a few pixels off and less confident pull the fit less than clean ones."""
    from ros2_regionfuse.core import calibration
    wh = (640, 480)
    truth = np.array([[1.01, 0.02, 12.0], [-0.015, 0.99, -7.0], [0.0, 0.0, 1.0]])
    rng = np.random.default_rng(3)
    est = []
    for i in range(16):
        off = np.eye(3)
        off[:2, 2] = rng.normal(0, 1.0, 2) + ([3.5, -2.5] if i < 4 else 0)   # four frames 4 px off
        est.append(calibration.FrameEstimate(off @ truth, 0.3, 0.3 if i < 4 else 0.6, 1.0))
    cfg = CalibrationConfig(model='affine')
    cal = calibration.aggregate(est, wh, wh, cfg)
    monkeypatch.setattr(calibration, 'ROBUST_ITERS', 0)       # the unweighted fit to the same inliers
    plain = calibration.aggregate(est, wh, wh, cfg)
    assert cal.used == plain.used >= 14                      # the off frames stay in: weights decide
    weighted, unweighted = _grid_error(cal.homography, truth, wh), _grid_error(plain.homography, truth, wh)
    assert weighted < 0.7 * unweighted, (weighted, unweighted)


def test_aggregate_of_a_few_repeated_scenes_stays_near_their_mean(test_data) -> None:
    """A stream that repeats three scenes unevenly (the online mode's input) does not collapse onto
    the most repeated scene's estimate: the robust scale is wide enough to keep all three."""
    from ros2_regionfuse.core.calibration import aggregate, register_frame
    wh = (160, 120)
    truth = np.array([[1.02, 0.01, 6.0], [-0.01, 1.0, -4.0], [0.0, 0.0, 1.0]])
    ests = []
    for stem in ('FLIR_05005', '00537D', 'tno17'):
        rgb = cv2.resize(read_rgb(test_data / 'vi' / f'{stem}.png'), wh, interpolation=cv2.INTER_AREA)
        t = cv2.resize(read_gray(test_data / 'ir' / f'{stem}.png', as_uint8=True), wh,
                       interpolation=cv2.INTER_AREA)
        ests.append(register_frame(cv2.warpPerspective(t, truth, wh, flags=cv2.INTER_LINEAR
                                                       | cv2.WARP_INVERSE_MAP), rgb))
    errors = [_grid_error(e.homography, truth, wh) for e in ests]
    worst = int(np.argmax(errors))
    mix = [4 if i == worst else 2 for i in range(3)]        # the worst scene repeated most
    cal = aggregate(sum(([e] * n for e, n in zip(ests, mix)), []), wh, wh)
    assert _grid_error(cal.homography, truth, wh) < errors[worst] - 0.2
