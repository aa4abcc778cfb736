"""``regionfuse bag``: offline fusion of a whole recording (no DDS, no rclpy)."""
from __future__ import annotations

import numpy as np
import pytest
import torch

pytest.importorskip('rosbags')

from test_make_sample_bag import _dataset  # noqa: E402

from ros2_regionfuse.cli.bag import load_params_files, sibling_info_topic  # noqa: E402
from ros2_regionfuse.cli.main import main  # noqa: E402
from ros2_regionfuse.core import bagio  # noqa: E402
from ros2_regionfuse.core.checks import ConfigError  # noqa: E402
from ros2_regionfuse.core.config import CorrectorConfig, FusionConfig, NodeConfig  # noqa: E402
from ros2_regionfuse.core.weights import save_weights  # noqa: E402
from ros2_regionfuse.models.registry import build_corrector, build_fusion, needs_weights  # noqa: E402

CORRECTOR = CorrectorConfig().variant   # the default corrector variant
FUSION = FusionConfig().variant   # the default fusion variant

RGB_W, RGB_H = 128, 96
FRAMES_PER_PAIR = 2


@pytest.fixture(scope='module')
def recording(tmp_path_factory):
    """A tiny synthetic recording (2 clips x 4 frames) and untrained checkpoints."""
    root = tmp_path_factory.mktemp('rec')
    _dataset(root / 'src')
    assert main(['make-sample-bag', '--out', str(root / 'in'), '--source', str(root / 'src'),
                 '--pairs', 'a', 'b', '--frames-per-pair', str(FRAMES_PER_PAIR),
                 '--rgb-size', str(RGB_W), str(RGB_H), '--thermal-size', '64', '52',
                 '--rgb-fx', '120', '--pan-px', '4']) == 0
    torch.manual_seed(0)
    save_weights(build_fusion(FUSION), root / 'f.safetensors', {'variant': FUSION})
    if needs_weights('corrector', CORRECTOR):   # the default register_refuse has none
        save_weights(build_corrector(CORRECTOR), root / 'c.safetensors', {'variant': CORRECTOR})
    return root


def _run(rec, out, *extra: str) -> int:
    torch.set_num_threads(1)
    return main(['bag', '--in', str(rec / 'in'), '--out', str(out), '--no-progress', '--device', 'cpu',
                 '--fusion-checkpoint', str(rec / 'f.safetensors'),
                 *(['--corrector-checkpoint', str(rec / 'c.safetensors')]
                   if (rec / 'c.safetensors').is_file() else []),
                 '--params-file', str(rec / 'in' / 'calibration.yaml'), *extra])


def _by_topic(bag) -> dict[str, list]:
    out: dict[str, list] = {}
    for m in bagio.read_messages(bag):
        out.setdefault(m.topic, []).append(m.decode())
    return out


def test_every_pair_fused_with_rgb_headers(recording, tmp_path) -> None:
    assert _run(recording, tmp_path / 'out') == 0
    inp = _by_topic(recording / 'in')
    out = _by_topic(tmp_path / 'out')
    assert set(out) == {'/fused/image', '/fused/misregistration', '/fused/misregistration/overlay',
                        '/fused/flow', '/fused/camera_info', '/fused/status'}
    rgb_hdr = [(bagio.time_to_ns(m.header.stamp), m.header.frame_id) for m in inp['/rgb/image_raw']]
    n = len(rgb_hdr)
    for topic, msgs in out.items():
        assert [(bagio.time_to_ns(m.header.stamp), m.header.frame_id) for m in msgs] == rgb_hdr, topic
    fused = out['/fused/image'][0]
    assert (fused.encoding, fused.width, fused.height) == ('bgr8', RGB_W, RGB_H)
    img = bagio.image_array(fused)
    rgb = bagio.image_array(inp['/rgb/image_raw'][0])
    assert not np.array_equal(img, rgb)  # the thermal contributed
    m = bagio.image_array(out['/fused/misregistration'][0])
    assert m.dtype == np.float32 and m.shape == (RGB_H, RGB_W) and 0.0 <= m.min() and m.max() <= 1.0
    f = bagio.image_array(out['/fused/flow'][0])
    assert f.dtype == np.float32 and f.shape == (RGB_H, RGB_W, 2) and np.isfinite(f).all()
    st = out['/fused/status']
    assert [s.processed for s in st] == list(range(1, n + 1))
    assert st[-1].paired == n and st[-1].dropped == 0 and st[-1].corrector_enabled
    th_stamps = [bagio.time_to_ns(t.header.stamp) for t in inp['/thermal/image_raw']]
    assert [bagio.time_to_ns(s.thermal_stamp) for s in st] == th_stamps
    for s, (rs, _), ts in zip(st, rgb_hdr, th_stamps, strict=True):
        assert s.pair_dt == pytest.approx((ts - rs) * 1e-9)
    ci = out['/fused/camera_info'][0]
    np.testing.assert_allclose(ci.k, inp['/rgb/camera_info'][0].k)


def test_no_correct_and_tight_slop_counts_drops(recording, tmp_path, capsys) -> None:
    assert _run(recording, tmp_path / 'nc', '--no-correct') == 0
    out = _by_topic(tmp_path / 'nc')
    assert '/fused/misregistration' not in out and '/fused/flow' not in out
    assert not out['/fused/status'][0].corrector_enabled
    capsys.readouterr()
    # thermal stamps are 4 +- 6 ms off the RGB ones: a 0 s slop pairs nothing, and says so
    assert _run(recording, tmp_path / 'slop', '--slop', '0') == 1
    text = capsys.readouterr().out
    assert '0 paired, 0 processed' in text and 'no_match' in text


def test_params_files_and_topics(tmp_path) -> None:
    f = tmp_path / 'p.yaml'
    f.write_text('/**:\n  ros__parameters:\n    sync:\n      slop: 0.02\n    use_sim_time: false\n'
                 'other_node:\n  ros__parameters:\n    sync:\n      slop: 9.0\n')
    cfg = load_params_files(NodeConfig(), [f])
    assert cfg.sync.slop == pytest.approx(0.02)
    f.write_text('fuse_node:\n  ros__parameters:\n    no_such: 1\n')
    with pytest.raises(ConfigError, match='no_such'):
        load_params_files(NodeConfig(), [f])
    assert sibling_info_topic('/cam/thermal/image_raw') == '/cam/thermal/camera_info'


def test_missing_topic_is_an_error(recording, tmp_path, capsys) -> None:
    assert _run(recording, tmp_path / 'x', '--rgb-topic', '/nope') == 2
    assert '/nope' in capsys.readouterr().err
