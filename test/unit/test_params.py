"""ros.params descriptors/validation, ros.diagnostics levels and ros.outputs helpers (no rclpy)."""
from __future__ import annotations

import subprocess
import sys
from types import SimpleNamespace

import numpy as np
import pytest

pytest.importorskip('rcl_interfaces.msg')

from diagnostic_msgs.msg import DiagnosticStatus  # noqa: E402
from rcl_interfaces.msg import ParameterType  # noqa: E402

from ros2_regionfuse.core.config import NodeConfig, OutputConfig, field_specs, iter_fields  # noqa: E402
from ros2_regionfuse.core.sync import ApproximateTimeSync  # noqa: E402
from ros2_regionfuse.ros import diagnostics as dg  # noqa: E402
from ros2_regionfuse.ros.params import ParameterValidator, check_consistency, descriptor  # noqa: E402


def P(name, value):  # noqa: N802 - reads like rclpy's Parameter(name, value)
    return SimpleNamespace(name=name, value=value)


def test_importable_without_rclpy() -> None:
    code = ('import sys, ros2_regionfuse.ros.params, ros2_regionfuse.ros.diagnostics; '
            'assert "rclpy" not in sys.modules')
    subprocess.run([sys.executable, '-c', code], check=True, timeout=120)


def test_descriptors_follow_the_fields() -> None:
    types = {bool: ParameterType.PARAMETER_BOOL, int: ParameterType.PARAMETER_INTEGER,
             float: ParameterType.PARAMETER_DOUBLE, str: ParameterType.PARAMETER_STRING,
             list: ParameterType.PARAMETER_DOUBLE_ARRAY}
    for spec, _ in iter_fields(NodeConfig()):
        d = descriptor(spec)
        assert d.name == spec.name and d.description == spec.help and d.description
        assert d.type == types[spec.type]
        assert d.read_only == spec.read_only
        if spec.range is not None and spec.type is float:
            r = d.floating_point_range[0]
            assert (r.from_value, r.to_value) == spec.range
        if spec.range is not None and spec.type is int:
            r = d.integer_range[0]
            assert (r.from_value, r.to_value) == spec.range
        if spec.choices:
            assert all(c in d.additional_constraints for c in spec.choices)
    specs = field_specs(NodeConfig())
    assert descriptor(specs['device']).read_only and not descriptor(specs['sync.slop']).read_only
    assert descriptor(specs['fusion.checkpoint']).read_only


def make_validator():
    cfg = NodeConfig()
    applied: list[set[str]] = []
    v = ParameterValidator(cfg, field_specs(cfg), on_applied=applied.append)
    return cfg, v, applied


@pytest.mark.parametrize('name, value, words', [
    ('sync.slop', -0.1, 'outside'),
    ('sync.queue_size', 0, 'outside'),
    ('output.encoding', 'yuv422', 'not one of'),
    ('thermal.agc', 'auto', 'not one of'),
    ('thermal.percentiles', [99.0, 1.0], 'below'),
    ('thermal.percentiles', [1.0, 2.0, 3.0], 'expected 2'),
    ('thermal.range', [5.0, 5.0], 'below'),
    ('align.homography', [0.0] * 9, 'singular'),
    ('align.homography_file', '/nonexistent/h.txt', 'not found'),
    ('diagnostics.error_timeout', 0.5, 'stale_timeout'),
    ('publish.flow', 1, 'true/false'),
])
def test_invalid_values_rejected_with_reason(name, value, words) -> None:
    cfg, v, applied = make_validator()
    before = cfg.sync.slop, cfg.output.encoding
    res = v.on_set([P(name, value)])
    assert not res.successful
    assert name.split('.')[-1] in res.reason or name in res.reason or words == 'singular'
    assert words in res.reason
    assert (cfg.sync.slop, cfg.output.encoding) == before and applied == []


def test_valid_changes_applied_atomically() -> None:
    cfg, v, applied = make_validator()
    params = [P('sync.slop', 0.2), P('output.encoding', 'rgb8'), P('corrector.enabled', False),
              P('thermal.percentiles', np.array([2.0, 98.0])), P('use_sim_time', True)]
    assert v.on_set(params).successful
    assert cfg.sync.slop == 0.05                       # nothing changes before the post-set callback
    v.on_post_set(params)
    assert (cfg.sync.slop, cfg.output.encoding, cfg.pipeline.corrector.enabled) == (0.2, 'rgb8', False)
    assert cfg.pipeline.thermal.percentiles == [2.0, 98.0]
    assert applied == [{'sync.slop', 'output.encoding', 'corrector.enabled', 'thermal.percentiles'}]


def test_one_bad_value_rejects_the_whole_set() -> None:
    cfg, v, _ = make_validator()
    res = v.on_set([P('sync.slop', 0.2), P('sync.queue_size', -1)])
    assert not res.successful and 'queue_size' in res.reason


def test_extra_check_can_reject() -> None:
    cfg = NodeConfig()
    def check(c, changed):
        return 'no corrector here' if c.pipeline.corrector.enabled else None
    v = ParameterValidator(cfg, field_specs(cfg), extra_check=check)
    cfg.pipeline.corrector.enabled = False
    res = v.on_set([P('corrector.enabled', True)])
    assert not res.successful and res.reason == 'no corrector here'


def test_check_consistency_accepts_defaults() -> None:
    check_consistency(NodeConfig())


# -- diagnostics ---------------------------------------------------------------------------------

@pytest.mark.parametrize('age, bad, level', [
    (0.5, 0, DiagnosticStatus.OK), (0.5, 2, DiagnosticStatus.WARN),
    (3.0, 0, DiagnosticStatus.WARN), (6.0, 0, DiagnosticStatus.ERROR)])
def test_camera_level(age, bad, level) -> None:
    assert dg.camera_level(age, 2.0, 5.0, bad)[0] == level


def snapshot(t, sync, processed=0, last=None, bad=None, drops=None, active=True):
    return dg.Snapshot(time=t, active=active, sync=sync.counters(), processed=processed,
                       pair_drops=drops or {}, last_received=last or {'thermal': t, 'rgb': t}, since=0.0,
                       bad_inputs=bad or {}, topics={'thermal': '/t', 'rgb': '/r'},
                       latency=dg.LatencyStats().take(), device='cpu', last_pair=t)


def test_build_statuses_rates_levels_and_parameters() -> None:
    s = ApproximateTimeSync(slop_ns=10, queue_size=5)
    prev = snapshot(10.0, s)
    for i in range(4):
        s.add('thermal', i * 100, i)
        s.add('rgb', i * 100, i)
    cfg = NodeConfig()
    cur = snapshot(12.0, s, processed=3, last={'thermal': 12.0, 'rgb': 5.0},
                   bad={'thermal': ({'EncodingError': 1}, 'EncodingError: bad')})
    st = {x.name.split(': ')[1]: x for x in dg.build_statuses('rf', cur, prev, cfg)}
    assert set(st) == {'thermal input', 'rgb input', 'fusion', 'parameters'}
    values = {kv.key: kv.value for kv in st['thermal input'].values}
    assert float(values['rate_hz']) == pytest.approx(2.0) and values['received'] == '4'
    assert values['bad_input.EncodingError'] == '1'
    assert st['thermal input'].level == DiagnosticStatus.WARN           # a new bad frame
    assert st['rgb input'].level == DiagnosticStatus.ERROR              # silent for 7 s > 5 s
    fus = {kv.key: kv.value for kv in st['fusion'].values}
    assert float(fus['output_rate_hz']) == pytest.approx(1.5) and fus['paired'] == '4'
    params = {kv.key: kv.value for kv in st['parameters'].values}
    assert params['sync.slop'] == '0.05' and params['device'] == 'auto' and len(params) == len(
        list(iter_fields(cfg)))


def test_latency_stats_reset() -> None:
    s = dg.LatencyStats()
    for v in (1.0, 2.0, 3.0, 100.0):
        s.add(v)
    r = s.take()
    assert r['max_ms'] == 100.0 and r['p50_ms'] == 2.5
    assert np.isnan(s.take()['mean_ms'])


# -- outputs -------------------------------------------------------------------------------------------

@pytest.mark.parametrize('w, h, expect', [(0, 0, (640, 480)), (320, 0, (320, 240)), (0, 120, (160, 120)),
                                          (100, 50, (100, 50))])
def test_output_size(w, h, expect) -> None:
    from ros2_regionfuse.ros.outputs import output_size
    assert output_size(OutputConfig(width=w, height=h), (480, 640, 3)) == expect
