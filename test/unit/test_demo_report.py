"""cli.demo_report: accounting of every frame, latency, rates, mosaics and the output bag (no ROS)."""
from __future__ import annotations

import json

import cv2
import numpy as np
import pytest

pytest.importorskip('rosbags')

from ros2_regionfuse.cli.demo_report import (  # noqa: E402
    Played,
    Received,
    RunResult,
    summarise,
    write_bag,
    write_mosaics,
)
from ros2_regionfuse.core import bagio  # noqa: E402

MS = 1_000_000
T0 = 1_800_000_000 * 10 ** 9
N = 3
W, H = 16, 12


def _ser(msg) -> bytes:
    return bytes(bagio.make_typestore().serialize_cdr(msg, msg.__msgtype__))


def _diag(fusion: dict[str, int], received: int = N, paired: int = N, queued: int = 0,
          unpaired: dict[str, int] | None = None) -> bytes:
    types = bagio.make_typestore().types
    status, kv = types['diagnostic_msgs/msg/DiagnosticStatus'], types['diagnostic_msgs/msg/KeyValue']

    def st(name: str, values: dict[str, int]):
        return status(level=0, name=f'regionfuse: {name}', message='ok', hardware_id='cpu',
                      values=[kv(key=k, value=str(v)) for k, v in values.items()])
    cam = {'received': received, 'paired': paired, 'queued': queued, 'unpaired.no_match': 0,
           'unpaired.duplicate': 0} | {f'unpaired.{k}': v for k, v in (unpaired or {}).items()}
    arr = types[bagio.DIAGNOSTIC_ARRAY](header=bagio.header(T0, ''), status=[
        st('thermal input', cam), st('rgb input', cam), st('fusion', fusion),
        st('parameters', {'sync.slop': 0})])
    return _ser(arr)


def _run(processed_idx=(0, 2), diag: bytes | None = None) -> RunResult:
    """3 pairs played; frames in ``processed_idx`` came back 50 + 10 * i ms after their stamp."""
    rng = np.random.default_rng(0)
    res = RunResult(node_exit=0)
    for i in range(N):
        s = T0 + i * 100 * MS
        rgb = rng.integers(0, 256, (H, W, 3), dtype=np.uint8)
        th = rng.integers(7000, 9000, (10, 12), dtype=np.uint16)
        # recording stamps 1000 ns earlier; published exactly at the recording's log time (rate 1)
        res.played.append(Played('/thermal/image_raw', bagio.IMAGE, s + 4 * MS, s + 4 * MS - 1000,
                                 s + 6 * MS - 1000, s + 6 * MS,
                                 _ser(bagio.image_msg(th, 'mono16', s + 4 * MS, 'th'))))
        res.played.append(Played('/rgb/image_raw', bagio.IMAGE, s, s - 1000, s + 7 * MS - 1000, s + 7 * MS,
                                 _ser(bagio.image_msg(rgb, 'bgr8', s, 'rgb'))))
    processed = 0
    for i in processed_idx:
        s = T0 + i * 100 * MS
        rx = s + (50 + 10 * i) * MS
        processed += 1
        fused = np.full((H, W, 3), 40 * (i + 1), np.uint8)
        res.received.append(Received('/fused/image', rx, _ser(bagio.image_msg(fused, 'bgr8', s, 'rgb'))))
        res.received.append(Received('/fused/misregistration/overlay', rx,
                                     _ser(bagio.image_msg(fused, 'bgr8', s, 'rgb'))))
        res.received.append(Received('/fused/status', rx, _ser(bagio.fusion_status_msg(
            s, 'rgb', thermal_stamp=s + 4 * MS, rgb_stamp=s, mean_shift_px=5.0 + i, misaligned_fraction=0.1,
            total_ms=30.0, thermal_received=i + 1, rgb_received=i + 1, paired=i + 1, processed=processed,
            device='cpu', fusion_model='f', corrector_model='c'))))
    if diag is not None:
        res.received.append(Received('/diagnostics', T0 + 10 ** 9, diag))
    return res


def test_all_frames_accounted_with_a_counted_drop(tmp_path) -> None:
    res = _run(diag=_diag({'paired': 3, 'processed': 2, 'dropped': 1, 'dropped.mailbox_overwrite': 1,
                           'dropped.pipeline_error': 0}))
    s = summarise(res, tmp_path, rate=1.0)
    assert s['frames_in'] == {'thermal': 3, 'rgb': 3}
    n = s['node']
    assert (n['received'], n['paired'], n['processed']) == ({'thermal': 3, 'rgb': 3}, 3, 2)
    assert n['pair_drops'] == {'mailbox_overwrite': 1} and n['unpaired'] == {'thermal': {}, 'rgb': {}}
    assert n['lost_in_transport'] == {'thermal': 0, 'rgb': 0}
    assert s['accounted'] is True
    assert s['latency_ms']['p50'] == pytest.approx(60.0)  # 50 and 70 ms
    assert s['latency_ms']['max'] == pytest.approx(70.0)
    assert s['rate_hz']['input_rgb'] == pytest.approx(10.0)
    assert s['rate_hz']['output'] == pytest.approx(1 / 0.22)  # receipts 200 + 20 ms apart
    assert s['misregistration']['mean_shift_px'] == pytest.approx(6.0)  # 5 and 7
    assert s['outputs']['fused_images'] == 2 and s['outputs']['statuses'] == 2
    json.dumps(s)  # JSON-able


def test_unexplained_frames_are_not_accounted(tmp_path) -> None:
    # a pair neither processed nor dropped by a reason
    res = _run(diag=_diag({'paired': 3, 'processed': 2, 'dropped': 0, 'dropped.mailbox_overwrite': 0}))
    assert summarise(res, tmp_path, 1.0)['accounted'] is False
    # a received frame neither paired, unpaired nor queued
    res = _run(diag=_diag({'paired': 2, 'processed': 2}, received=3, paired=2))
    assert summarise(res, tmp_path, 1.0)['accounted'] is False
    # the same frame counted as unpaired (no_match) is accounted
    res = _run(diag=_diag({'paired': 2, 'processed': 2}, received=3, paired=2, unpaired={'no_match': 1}))
    s = summarise(res, tmp_path, 1.0)
    assert s['accounted'] is True and s['node']['unpaired']['rgb'] == {'no_match': 1}


def test_without_diagnostics_falls_back_to_status_and_is_not_accounted(tmp_path) -> None:
    s = summarise(_run(), tmp_path, 1.0)
    assert s['accounted'] is False
    assert (s['node']['paired'], s['node']['processed'], s['node']['received']['rgb']) == (3, 2, 3)


def test_latency_discounts_slow_playback(tmp_path) -> None:
    res = _run(diag=_diag({'paired': 3, 'processed': 2, 'dropped.mailbox_overwrite': 1}))
    for p in res.played:  # published 100 ms x index late (rate 0.5 would do that)
        p.publish_ns += (p.stamp_ns - T0) // 100 * 100
    for r in res.received:
        i = (r.receipt_ns - T0) // (100 * MS)
        r.receipt_ns += i * 100 * MS
    s = summarise(res, tmp_path, 0.5)
    assert s['latency_ms']['p50'] == pytest.approx(60.0)


def test_ground_truth_read_from_the_recording(tmp_path) -> None:
    (tmp_path / 'ground_truth.json').write_text(json.dumps({'misregistration': {'flow_mean_px': 6.25}}))
    s = summarise(_run(), tmp_path, 1.0)
    assert s['misregistration']['ground_truth_mean_shift_px'] == 6.25


def test_mosaics_gif_and_bag(tmp_path) -> None:
    res = _run(diag=_diag({'paired': 3, 'processed': 2}))
    assert write_mosaics(res, tmp_path, tile_width=32, gif=True) == 2
    pngs = sorted((tmp_path / 'mosaic').glob('frame_*.png'))
    assert len(pngs) == 2
    img = cv2.imread(str(pngs[1]))[:, :, ::-1]
    assert img.shape == (24, 128, 3)  # 4 tiles of 32x24 (fused is 16x12)
    assert (img[20, 64 + 16] == 120).all()  # third tile: the fused frame #2 (value 40 * 3)
    assert (tmp_path / 'demo.gif').stat().st_size > 0
    write_bag(tmp_path / 'bag', res, tmp_path)
    topics = {t: s.count for t, s in bagio.bag_topics(tmp_path / 'bag').items()}
    assert topics == {'/thermal/image_raw': 3, '/rgb/image_raw': 3, '/fused/image': 2,
                      '/fused/misregistration/overlay': 2, '/fused/status': 2, '/diagnostics': 1}
    assert bagio.bag_custom_data(tmp_path / 'bag')['regionfuse.stamp_shift_ns'] == '1000'


@pytest.mark.parametrize('command', ['demo', 'bag', 'make-sample-bag'])
def test_help_renders(command, capsys) -> None:
    from ros2_regionfuse.cli.main import main
    with pytest.raises(SystemExit) as e:
        main([command, '--help'])
    assert e.value.code == 0
    assert '--out' in capsys.readouterr().out
