"""ROS-free parts of ``regionfuse bench-node``: stamps in serialised messages, frames, the summary."""
from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest

from ros2_regionfuse.cli import bench_node as bn
from ros2_regionfuse.core import bagio

NS = 1_000_000_000


def test_stamp_patch_in_serialised_image():
    img = np.zeros((4, 6, 3), np.uint8)
    raw = bytearray(bagio.make_typestore().serialize_cdr(bagio.image_msg(img, 'bgr8', 5 * NS + 17, 'cam'),
                                                         bagio.IMAGE))
    assert bn.read_stamp(bytes(raw)) == 5 * NS + 17
    bn.set_stamp(raw, 1_700_000_000 * NS + 123_456_789)
    msg = bagio.make_typestore().deserialize_cdr(bytes(raw), bagio.IMAGE)
    assert bagio.time_to_ns(msg.header.stamp) == 1_700_000_000 * NS + 123_456_789
    assert msg.header.frame_id == 'cam' and msg.width == 6  # the rest is untouched


@pytest.mark.skipif(not bn.demo.BUNDLED_BAG.exists(), reason='bundled recording not present')
def test_load_frames_resizes_rgb_and_scales_homography():
    frames, hom = bn.load_frames(bn.demo.BUNDLED_BAG, 3, (640, 480))
    assert len(frames) == 3
    ts = bagio.make_typestore()
    rgb = ts.deserialize_cdr(bytes(frames[0].rgb), bagio.IMAGE)
    th = ts.deserialize_cdr(bytes(frames[0].thermal), bagio.IMAGE)
    assert (rgb.width, rgb.height, rgb.encoding) == (640, 480, 'bgr8')
    assert th.encoding == 'mono16'
    small, hom0 = bn.load_frames(bn.demo.BUNDLED_BAG, 1, (448, 336))  # the recording's own RGB size
    np.testing.assert_allclose(hom, np.diag([640 / 448, 480 / 336, 1.0]) @ hom0, rtol=1e-9)


def _diag(values: dict[str, dict[str, str]]) -> SimpleNamespace:
    status = [SimpleNamespace(name=f'regionfuse: {name}',
                              values=[SimpleNamespace(key=k, value=v) for k, v in kv.items()])
              for name, kv in values.items()]
    return SimpleNamespace(status=status)


def test_summarise_counts_rates_latency_and_drops():
    t0 = 1000 * NS
    period = NS // 30
    meas = bn.Measurements()
    meas.published = [t0 + i * period for i in range(90)]            # 3 s at 30 Hz
    meas.received = [(s + 40_000_000, s) for s in meas.published[::2]]  # every 2nd, 40 ms latency
    meas.rss = [(0.0, 400.0), (1.0, 404.0), (2.0, 402.0)]
    meas.diagnostics = _diag({
        'fusion': {'processed': '45', 'paired': '90', 'dropped.mailbox_overwrite': '44',
                   'dropped.pipeline_error': '0', 'output_rate_hz': '15.0'},
        'thermal input': {'received': '90', 'unpaired.no_match': '0'},
        'rgb input': {'received': '89', 'unpaired.no_match': '1', 'bad_input.ShapeError': '0'},
        'parameters': {'device': 'cpu'}})
    r = bn.summarise(meas, t0, t0 + 90 * period, 30.0)
    assert r['pairs_published_window'] == 90 and r['outputs_window'] == 45
    assert r['output_rate_hz'] == pytest.approx(15.0, rel=1e-6)
    assert r['latency_ms']['p50'] == pytest.approx(40.0) and r['latency_ms']['max'] == pytest.approx(40.0)
    assert r['drops'] == {'pair.dropped.mailbox_overwrite': 44, 'pair.dropped.pipeline_error': 0,
                          'thermal.unpaired.no_match': 0, 'rgb.unpaired.no_match': 1,
                          'rgb.bad_input.ShapeError': 0}
    assert r['uncounted_pairs'] == 1  # 90 paired - 45 processed - 44 dropped
    assert r['lost_in_transport'] == {'thermal': 0, 'rgb': 1}
    assert r['rss_mb']['growth_pct'] == pytest.approx(0.5)
    assert r['targets']['output_rate_hz']['pass'] is False
    assert r['targets']['latency_p95_ms']['pass'] is True
    assert r['targets']['rss_growth_pct']['pass'] is True


def test_summarise_without_outputs_is_nan_not_an_error():
    r = bn.summarise(bn.Measurements(), 0, NS, 30.0)
    assert r['outputs_window'] == 0 and r['uncounted_pairs'] is None
    assert np.isnan(r['latency_ms']['p95']) and r['targets']['output_rate_hz']['pass'] is False
