"""Live fuse_node tests: a subprocess node (launch-file command line) and an rclpy client.

One node serves the whole module (tests run in file order and share its
counters, so every check works on deltas); the last test stops it with SIGINT.
The module runs twice: with ``overlap_stages`` (two worker threads, the
default) and with one worker.
Models: an untrained checkpoint of the default fusion variant written to tmp (and an
untrained corrector_multiscale one when that model exists). Loopback-only DDS and an
own ROS_DOMAIN_ID come from test/conftest.py.
"""
from __future__ import annotations

import itertools
import signal
import time

import numpy as np
import pytest
import yaml

rclpy = pytest.importorskip('rclpy')

from _node_harness import (  # noqa: E402
    RosClient,
    load_pair,
    node_executable,
    start_node,
    stop_node,
    thermal_counts,
    wait_exit,
)
from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus  # noqa: E402
from rclpy.parameter import Parameter  # noqa: E402
from ros2_regionfuse.msg import FusionStatus  # noqa: E402
from sensor_msgs.msg import CameraInfo, Image  # noqa: E402
from std_msgs.msg import Header  # noqa: E402

from ros2_regionfuse.core.align import plane_homography  # noqa: E402
from ros2_regionfuse.core.config import CorrectorConfig, FusionConfig, PipelineConfig  # noqa: E402
from ros2_regionfuse.core.weights import save_weights  # noqa: E402
from ros2_regionfuse.inference.pipeline import FusionPipeline  # noqa: E402
from ros2_regionfuse.ros import msg_convert as mc  # noqa: E402
from ros2_regionfuse.ros.launch_args import command_line, default_params_file  # noqa: E402

CORRECTOR = CorrectorConfig().variant   # the default corrector variant
FUSION = FusionConfig().variant   # the default fusion variant

pytestmark = [pytest.mark.ros, pytest.mark.slow]

NS = '/it'
THERMAL_TOPIC = f'{NS}/thermal/image_raw'
RGB_TOPIC = f'{NS}/rgb/image_raw'
STARTUP_S = 90.0      # torch import + model load on a busy 2-core machine
WAIT_S = 30.0         # any single output
K = [200.0, 0.0, 80.0, 0.0, 200.0, 60.0, 0.0, 0.0, 1.0]
_stamps = itertools.count(1000)


def next_sec() -> int:
    """A fresh, increasing stamp (s): the node drops out-of-order stamps, so never reuse one."""
    return next(_stamps)



# -- fixtures --------------------------------------------------------------------------------------

@pytest.fixture(scope='module')
def weights(tmp_path_factory) -> dict[str, str]:
    import torch

    from ros2_regionfuse.models.registry import build_corrector, build_fusion, needs_weights
    d = tmp_path_factory.mktemp('weights')
    torch.manual_seed(0)
    out = {'fusion': str(d / f'{FUSION}.safetensors'), 'corrector': ''}
    save_weights(build_fusion(FUSION), out['fusion'], {'variant': FUSION})
    if needs_weights('corrector', CORRECTOR):   # the default register_refuse has none
        out['corrector'] = str(d / f'{CORRECTOR}.safetensors')
        save_weights(build_corrector(CORRECTOR), out['corrector'], {'variant': CORRECTOR})
    return out


@pytest.fixture(scope='module')
def pair() -> tuple[np.ndarray, np.ndarray]:
    t8, rgb = load_pair()
    return thermal_counts(t8), rgb


@pytest.fixture(scope='module')
def reference(weights):
    """An in-process pipeline with the node's models: the expected fused values."""
    cfg = PipelineConfig(device='cpu')
    cfg.fusion.checkpoint = weights['fusion']
    cfg.corrector.enabled = False
    return FusionPipeline(cfg)


@pytest.fixture(scope='module', params=[True, False], ids=['overlap_stages', 'one_worker'])
def node(request, weights, tmp_path_factory):
    """The node with two overlapped worker stages (default) and with one worker: same behaviour."""
    d = tmp_path_factory.mktemp('node')
    overrides = {'/**': {'ros__parameters': {
        'device': 'cpu', 'threads': 1, 'overlap_stages': request.param,
        'fusion': {'checkpoint': weights['fusion']},
        'corrector': {'enabled': False, 'checkpoint': weights['corrector']},
        'diagnostics': {'period': 0.25, 'stale_timeout': 1.0, 'error_timeout': 3.0},
        'qos_overrides': {
            THERMAL_TOPIC: {'subscription': {'reliability': 'reliable', 'depth': 100}},
            RGB_TOPIC: {'subscription': {'reliability': 'reliable', 'depth': 100}},
            '/fused/image': {'publisher': {'depth': 100}},
            '/fused/status': {'publisher': {'depth': 100}}}}}}
    extra = d / 'test_overrides.yaml'
    extra.write_text(yaml.safe_dump(overrides))
    cmd = command_line(node_executable(), {'params_file': default_params_file(),
                                           'thermal_topic': THERMAL_TOPIC, 'rgb_topic': RGB_TOPIC,
                                           'device': 'cpu'})
    cmd += ['--params-file', str(extra)]
    proc = start_node(cmd, d / 'node.log')
    client = RosClient('it_client')
    for key, typ, topic in (('image', Image, '/fused/image'), ('info', CameraInfo, '/fused/camera_info'),
                            ('mis', Image, '/fused/misregistration'), ('flow', Image, '/fused/flow'),
                            ('overlay', Image, '/fused/misregistration/overlay'),
                            ('status', FusionStatus, '/fused/status'),
                            ('diag', DiagnosticArray, '/diagnostics')):
        client.subscribe(typ, topic, key)
    pubs = {'thermal': client.publisher(Image, THERMAL_TOPIC), 'rgb': client.publisher(Image, RGB_TOPIC),
            'thermal_info': client.publisher(CameraInfo, f'{NS}/thermal/camera_info'),
            'rgb_info': client.publisher(CameraInfo, f'{NS}/rgb/camera_info')}
    h = Harness(proc, client, pubs)
    h.overlap, h.log = request.param, d / 'node.log'
    try:
        up = client.collector.wait(lambda: client.collector.msgs['diag'] or proc.poll() is not None,
                                   STARTUP_S)
        if proc.poll() is not None or not up:
            rc, log = stop_node(proc)
            pytest.fail(f'fuse_node did not come up (rc {rc}):\n{log[-3000:]}')
        h.wait_matched()
        yield h
    finally:
        client.close()
        stop_node(proc, signal.SIGINT, timeout=20.0)   # no-op when the SIGINT test already stopped it


class Harness:
    """The running node plus the client's publishers and helpers."""

    def __init__(self, proc, client: RosClient, pubs: dict) -> None:
        self.proc, self.client, self.pubs = proc, client, pubs
        self.col = client.collector
        self._params = None

    def wait_matched(self) -> None:
        def ready():
            return all(self.pubs[k].get_subscription_count() > 0 for k in ('thermal', 'rgb'))
        assert self.col.wait(ready, WAIT_S), 'node did not subscribe to the inputs'

    # publishing
    def header(self, sec: float, frame: str) -> Header:
        h = Header(frame_id=frame)
        ns = int(round(sec * 1e9))
        h.stamp.sec, h.stamp.nanosec = divmod(ns, 1_000_000_000)
        return h

    def send_thermal(self, sec: float, img: np.ndarray, encoding: str = 'mono16') -> None:
        self.pubs['thermal'].publish(mc.array_to_image(img, encoding, self.header(sec, 'thermal_optical')))

    def send_rgb(self, sec: float, rgb: np.ndarray) -> None:
        h = self.header(sec, 'rgb_optical')
        info = CameraInfo(header=h, width=rgb.shape[1], height=rgb.shape[0], k=K,
                          p=K[:3] + [0.0] + K[3:6] + [0.0] + K[6:] + [0.0], distortion_model='plumb_bob',
                          d=[0.0] * 5, r=[1.0, 0, 0, 0, 1.0, 0, 0, 0, 1.0])
        self.pubs['rgb_info'].publish(info)
        tinfo = CameraInfo(header=self.header(sec, 'thermal_optical'), width=rgb.shape[1],
                           height=rgb.shape[0], k=K)
        self.pubs['thermal_info'].publish(tinfo)
        self.pubs['rgb'].publish(mc.rgb_to_image(rgb, 'bgr8', h))

    def send_pair(self, pair, sec: float, dt: float = 0.0) -> None:
        thermal, rgb = pair
        self.send_thermal(sec + dt, thermal)
        self.send_rgb(sec, rgb)

    # receiving
    def wait_stamp(self, key: str, sec: int, timeout: float = WAIT_S):
        return self.col.wait(lambda: self.col.by_stamp(key, sec), timeout)

    def fused(self, pair, sec: int | None = None, dt: float = 0.0):
        sec = next_sec() if sec is None else sec
        self.send_pair(pair, sec, dt)
        msg = self.wait_stamp('image', sec)
        assert msg is not None, f'no fused image for stamp {sec}'
        return sec, msg

    def diag_after(self, n: int, pred, timeout: float = WAIT_S):
        """The first /diagnostics message after the n-th one satisfying ``pred(parsed)``."""
        def find():
            for m in self.col.msgs['diag'][n:]:
                p = parse_diag(m)
                if p and pred(p):
                    return p
            return None
        return self.col.wait(find, timeout)

    def counters(self) -> dict:
        """The latest diagnostics report (parsed)."""
        n = self.col.count('diag')
        return self.diag_after(n, lambda p: True)

    # parameters
    def set_params(self, **values) -> list:
        from rclpy.parameter_client import AsyncParameterClient
        if self._params is None:
            self._params = AsyncParameterClient(self.client.node, '/regionfuse')
            assert self._params.wait_for_services(timeout_sec=WAIT_S)
        params = [Parameter(k.replace('__', '.'), value=v) for k, v in values.items()]
        fut = self._params.set_parameters(params)
        deadline = time.monotonic() + WAIT_S
        while not fut.done() and time.monotonic() < deadline:
            time.sleep(0.02)
        assert fut.done(), 'set_parameters timed out'
        return list(fut.result().results)

    def set_ok(self, **values) -> None:
        res = self.set_params(**values)
        assert all(r.successful for r in res), [r.reason for r in res]


def parse_diag(msg: DiagnosticArray) -> dict | None:
    """``{'thermal input': (level, message, {key: value}), ...}`` of one fuse_node report."""
    out = {}
    for s in msg.status:
        if s.name.startswith('regionfuse: '):
            out[s.name.split(': ', 1)[1]] = (s.level, s.message, {kv.key: kv.value for kv in s.values})
    return out or None


def ival(p: dict, status: str, key: str) -> int:
    return int(p[status][2][key])


def gray(img: np.ndarray) -> np.ndarray:
    return (0.299 * img[..., 0] + 0.587 * img[..., 1] + 0.114 * img[..., 2]).astype(np.float64)


def corr(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.corrcoef(a.ravel(), b.ravel())[0, 1])


# -- tests -------------------------------------------------------------------------------------------

def test_outputs_header_encoding_size_values(node, pair, reference) -> None:
    thermal, rgb = pair
    sec, img = node.fused(pair)
    assert (img.encoding, img.width, img.height) == ('bgr8', rgb.shape[1], rgb.shape[0])
    assert img.header.frame_id == 'rgb_optical' and img.header.stamp.nanosec == 0
    fused = mc.image_to_array(img)[:, :, ::-1]                        # bgr8 -> RGB
    expected = reference.process(thermal, rgb).fused
    assert np.abs(fused.astype(int) - expected).max() <= 2          # the node runs exactly the pipeline
    t_gray = thermal.astype(np.float64)
    assert corr(gray(fused), t_gray) > 0.2 and corr(gray(fused), gray(rgb)) > 0.2
    assert np.abs(gray(fused) - gray(rgb)).mean() > 2.0
    assert np.abs(gray(fused) - (t_gray - t_gray.min()) * 255 / np.ptp(t_gray)).mean() > 2.0
    info = node.wait_stamp('info', sec)
    assert info is not None and (info.width, info.height) == (rgb.shape[1], rgb.shape[0])
    assert list(info.k) == K and info.header.frame_id == 'rgb_optical'
    st = node.wait_stamp('status', sec)
    assert st is not None
    assert (st.rgb_stamp.sec, st.thermal_stamp.sec, st.pair_dt) == (sec, sec, 0.0)
    assert st.device == 'cpu' and st.fusion_model.startswith(f'{FUSION}@')
    assert st.processed >= 1 and st.paired >= st.processed and not st.corrector_enabled
    assert np.isnan(st.misaligned_fraction)
    assert st.total_ms >= st.fusion_ms > 0.0
    assert node.col.by_stamp('mis', sec) is None and node.col.by_stamp('flow', sec) is None
    rep = node.counters()   # the fused C kernels ran (a machine without a C compiler reports why not)
    assert rep is not None
    assert rep['fusion'][2]['native_kernels'].startswith(('loaded ', 'built ')), rep['fusion']


def test_worker_layout_is_logged(node) -> None:
    text = node.log.read_text(errors='replace')
    layout = 'two overlapped stages' if node.overlap else 'one worker'
    assert f'{layout} with 1 thread(s) each' in text, text[-2000:]     # threads: 1 in the fixture


def test_output_size_and_camera_info_follow_parameters(node, pair) -> None:
    node.set_ok(output__width=80)
    try:
        sec, img = node.fused(pair)
        assert (img.width, img.height) == (80, 60)
        info = node.wait_stamp('info', sec)
        assert (info.width, info.height) == (80, 60)
        assert list(info.k) == [100.0, 0.0, 40.0, 0.0, 100.0, 30.0, 0.0, 0.0, 1.0]
        assert list(info.p)[:4] == [100.0, 0.0, 40.0, 0.0]
    finally:
        node.set_ok(output__width=0)


def test_pairing_respects_slop_and_offset(node, pair) -> None:
    sec, img = node.fused(pair, dt=0.03)                  # within slop 0.05: paired
    st = node.wait_stamp('status', sec)
    assert st.pair_dt == pytest.approx(0.03, abs=1e-6)
    assert img.header.frame_id == 'rgb_optical' and st.thermal_stamp.nanosec == 30_000_000
    before = node.counters()
    far = next_sec()
    node.send_pair(pair, far, dt=0.2)                      # 0.2 s apart: never paired
    sec2, _ = node.fused(pair)                             # a good pair after it is processed
    assert node.col.by_stamp('image', far) is None
    after = node.diag_after(node.col.count('diag'), lambda p: ival(p, 'fusion', 'processed')
                            >= ival(before, 'fusion', 'processed') + 1)
    for cam in ('thermal input', 'rgb input'):
        assert ival(after, cam, 'unpaired.no_match') - ival(before, cam, 'unpaired.no_match') == 1
    node.set_ok(sync__thermal_offset=-0.2)                 # thermal clock 0.2 s ahead: now they pair
    try:
        sec3, img3 = node.fused(pair, dt=0.2)
        st3 = node.wait_stamp('status', sec3)
        assert st3.pair_dt == pytest.approx(0.0, abs=1e-6) and st3.thermal_stamp.nanosec == 200_000_000
    finally:
        node.set_ok(sync__thermal_offset=0.0)
    node.set_ok(sync__slop=0.25)                           # a wider slop pairs 0.2 s too
    try:
        sec4, _ = node.fused(pair, dt=0.2)
        assert node.wait_stamp('status', sec4).pair_dt == pytest.approx(0.2, abs=1e-6)
    finally:
        node.set_ok(sync__slop=0.05)


@pytest.mark.parametrize('name, value, words', [
    ('sync.slop', -1.0, 'range'),
    ('sync.slop', 'abc', 'type'),
    ('sync.queue_size', 0, 'range'),
    ('output.encoding', 'yuv422', 'not one of'),
    ('thermal.percentiles', [99.0, 1.0], 'below'),
    ('align.homography', [0.0] * 9, 'singular'),
    ('diagnostics.error_timeout', 0.5, 'stale_timeout'),
    ('device', 'cuda', 'read-only'),
    ('fusion.checkpoint', '/tmp/x.safetensors', 'read-only'),
    ('input.transport', 'compressed', 'read-only'),
])
def test_invalid_parameter_rejected_with_reason(node, name, value, words) -> None:
    (res,) = node.set_params(**{name.replace('.', '__'): value})
    assert not res.successful
    assert words in res.reason, res.reason


def test_runtime_parameter_changes_take_effect(node, pair, reference) -> None:
    thermal, rgb = pair
    expected = reference.process(thermal, rgb).fused
    node.set_ok(output__encoding='rgb8', publish__status=False)
    try:
        sec, img = node.fused(pair)
        assert img.encoding == 'rgb8'
        assert np.abs(mc.image_to_array(img).astype(int) - expected).max() <= 2
    finally:
        node.set_ok(output__encoding='bgr8', publish__status=True)
    sec2, img2 = node.fused(pair)
    assert img2.encoding == 'bgr8'
    assert node.wait_stamp('status', sec2) is not None
    assert node.col.by_stamp('status', sec) is None       # status was switched off for that frame
    lo, hi = float(thermal.min()), float(np.percentile(thermal, 50))
    node.set_ok(thermal__agc='fixed', thermal__range=[lo, hi])   # AGC: saturate the warm half
    try:
        _, img3 = node.fused(pair)
        reference.cfg.thermal.agc, reference.cfg.thermal.range = 'fixed', [lo, hi]
        expected3 = reference.process(thermal, rgb).fused
        fused3 = mc.image_to_array(img3)[:, :, ::-1]
        assert np.abs(fused3.astype(int) - expected3).max() <= 2
        assert np.abs(fused3.astype(int) - expected).mean() > 1.0
    finally:
        reference.cfg.thermal.agc = 'percentile'
        node.set_ok(thermal__agc='percentile')


def test_runtime_alignment_homography_and_plane(node, pair, reference) -> None:
    thermal, rgb = pair
    shift = [1.0, 0.0, 6.0, 0.0, 1.0, -4.0, 0.0, 0.0, 1.0]
    node.set_ok(align__homography=shift, align__mode='homography')
    try:
        _, img = node.fused(pair)
        reference.cfg.align.mode, reference.cfg.align.homography = 'homography', shift
        expected = reference.process(thermal, rgb).fused
        fused = mc.image_to_array(img)[:, :, ::-1]
        assert np.abs(fused.astype(int) - expected).max() <= 2
        node.set_ok(align__mode='plane', align__extrinsic=[0.1, 0.0, 0.0, 0.0, 0.0, 0.0],
                    align__plane_depth=5.0)
        _, img = node.fused(pair)
        k = np.array(K).reshape(3, 3)
        reference.cfg.align.mode = 'plane'
        reference.set_homography(plane_homography(k, k, [0.1, 0, 0, 0, 0, 0], 5.0))   # 4 px shift
        expected = reference.process(thermal, rgb).fused
        fused = mc.image_to_array(img)[:, :, ::-1]
        assert np.abs(fused.astype(int) - expected).max() <= 2
    finally:
        reference.cfg.align.mode = 'none'
        node.set_ok(align__mode='none')


def test_bad_inputs_reported_and_next_pair_processed(node, pair) -> None:
    thermal, rgb = pair
    h, w = thermal.shape

    def short_data(sec):
        m = mc.array_to_image(thermal, 'mono16', node.header(sec, 'thermal_optical'))
        m.data = m.data[:-7]
        return m

    def zero_size(sec):
        m = Image(header=node.header(sec, 'thermal_optical'), encoding='mono16', height=0, width=0, step=0)
        return m

    def unknown_encoding(sec):
        m = mc.array_to_image(thermal, 'mono16', node.header(sec, 'thermal_optical'))
        m.encoding = 'x_thermal_raw'
        return m

    def nan_only(sec):
        return mc.array_to_image(np.full((h, w), np.nan, np.float32), '32FC1',
                                 node.header(sec, 'thermal_optical'))

    cases = [(short_data, 'EncodingError', 'bytes'), (zero_size, 'EncodingError', 'empty'),
             (unknown_encoding, 'EncodingError', 'x_thermal_raw'), (nan_only, 'ValueRangeError', 'finite')]
    start = node.counters()
    for make, kind, words in cases:
        base = node.counters()
        key = f'bad_input.{kind}'
        n0 = int(base['thermal input'][2].get(key, 0))
        sec = next_sec()
        node.pubs['thermal'].publish(make(sec))
        node.send_rgb(sec, rgb)
        rep = node.diag_after(node.col.count('diag') - 1,
                              lambda p, key=key, n0=n0: int(p['thermal input'][2].get(key, 0)) == n0 + 1)
        assert rep is not None, f'{make.__name__} not reported on /diagnostics'
        level, msg, values = rep['thermal input']
        assert level == DiagnosticStatus.WARN and 'bad frame' in msg
        assert words in values['last_bad_input']
        assert node.col.by_stamp('image', sec) is None
        node.fused(pair)                                     # the next good pair is processed
    sec = next_sec()
    bad_rgb = mc.rgb_to_image(rgb, 'bgr8', node.header(sec, 'rgb_optical'))
    bad_rgb.step += 1                                        # inconsistent step / data length
    node.send_thermal(sec, thermal)
    node.pubs['rgb'].publish(bad_rgb)
    rep = node.diag_after(node.col.count('diag') - 1, lambda p: int(
        p['rgb input'][2].get('bad_input.EncodingError', 0)) > int(
        start['rgb input'][2].get('bad_input.EncodingError', 0)))
    assert rep is not None and rep['rgb input'][0] == DiagnosticStatus.WARN
    node.fused(pair)
    end = node.counters()
    assert ival(end, 'thermal input', 'unpaired.bad_input') - ival(start, 'thermal input',
                                                                   'unpaired.bad_input') == 4
    assert ival(end, 'rgb input', 'unpaired.bad_input') - ival(start, 'rgb input', 'unpaired.bad_input') == 1
    assert node.proc.poll() is None


def test_burst_drops_are_counted_exactly(node, pair) -> None:
    n = 30
    node.set_ok(output__width=800)        # ~25x the pixels: inference far slower than the burst
    try:
        before = node.counters()
        first_img = node.col.count('image')
        secs = [next_sec() for _ in range(n)]
        for s in secs:
            node.send_pair(pair, s)
        p0 = ival(before, 'fusion', 'paired')

        def settled(p):
            f = p['fusion'][2]
            return (int(f['paired']) == p0 + n
                    and int(f['processed']) + int(f['dropped']) == int(f['paired']))
        after = node.diag_after(node.col.count('diag'), settled, timeout=120.0)
        assert after is not None, 'the burst did not settle'
    finally:
        node.set_ok(output__width=0)
    d = {k: ival(after, 'fusion', k) - ival(before, 'fusion', k)
         for k in ('paired', 'processed', 'dropped', 'dropped.mailbox_overwrite')}
    for cam in ('thermal input', 'rgb input'):
        assert ival(after, cam, 'received') - ival(before, cam, 'received') == n
        assert ival(after, cam, 'unpaired') - ival(before, cam, 'unpaired') == 0
        v = after[cam][2]
        assert int(v['received']) == int(v['paired']) + int(v['unpaired']) + int(v['queued'])
    assert d['paired'] == n and d['processed'] + d['dropped'] == n
    assert d['dropped'] == d['dropped.mailbox_overwrite'] >= 1
    assert node.col.wait(lambda: node.col.by_stamp('image', secs[-1]), WAIT_S)   # newest is never dropped
    got = [m for m in node.col.msgs['image'][first_img:] if m.header.stamp.sec in set(secs)]
    assert len(got) == d['processed']
    assert [m.header.stamp.sec for m in got] == sorted(m.header.stamp.sec for m in got)


def test_silent_camera_warn_error_and_recovery(node, pair) -> None:
    thermal, rgb = pair
    node.fused(pair)                                       # both cameras alive: thermal input OK
    assert node.diag_after(node.col.count('diag'), lambda p: p['thermal input'][0] == DiagnosticStatus.OK)
    n0 = node.col.count('diag')
    levels = []
    deadline = time.monotonic() + 20.0
    while time.monotonic() < deadline:                     # RGB keeps coming, thermal is silent
        node.send_rgb(next_sec(), rgb)
        time.sleep(0.1)
        levels = [parse_diag(m)['thermal input'][0] for m in node.col.msgs['diag'][n0:]]
        if DiagnosticStatus.ERROR in levels:
            break
    assert DiagnosticStatus.WARN in levels and DiagnosticStatus.ERROR in levels
    assert levels.index(DiagnosticStatus.WARN) < levels.index(DiagnosticStatus.ERROR)
    rgb_levels = {parse_diag(m)['rgb input'][0] for m in node.col.msgs['diag'][n0:]}
    assert DiagnosticStatus.ERROR not in rgb_levels
    n1 = node.col.count('diag')
    ok = None
    deadline = time.monotonic() + 20.0
    while ok is None and time.monotonic() < deadline:      # the camera returns
        node.send_pair(pair, next_sec())
        time.sleep(0.1)
        ok = node.diag_after(n1, lambda p: p['thermal input'][0] == DiagnosticStatus.OK, timeout=0.1)
    assert ok is not None, 'thermal input did not return to OK'


def test_corrector_enable_at_run_time(node, pair, weights) -> None:
    thermal, rgb = pair
    res = node.set_params(corrector__enabled=True)
    assert res[0].successful, res[0].reason
    try:
        sec, img = node.fused(pair)
        st = node.wait_stamp('status', sec)
        assert st.corrector_enabled and np.isfinite(st.misaligned_fraction)
        assert st.corrector_model.startswith(f'{CORRECTOR}@')
        mis, flow, ov = (node.wait_stamp(k, sec) for k in ('mis', 'flow', 'overlay'))
        assert (mis.encoding, flow.encoding, ov.encoding) == ('32FC1', '32FC2', 'bgr8')
        for m in (mis, flow, ov):
            assert (m.width, m.height) == (img.width, img.height) and m.header.frame_id == 'rgb_optical'
        m = mc.image_to_array(mis)
        assert np.isfinite(m).all() and m.min() >= 0.0 and m.max() <= 1.0
        assert np.isfinite(mc.image_to_array(flow)).all()
    finally:
        node.set_ok(corrector__enabled=False)
    sec2, _ = node.fused(pair)
    assert node.wait_stamp('status', sec2) is not None
    assert node.col.by_stamp('mis', sec2) is None and node.col.by_stamp('flow', sec2) is None


def test_sigint_shuts_down_cleanly(node) -> None:
    rc, log = stop_node(node.proc, signal.SIGINT, timeout=30.0)
    assert rc == 0, log[-3000:]
    assert 'Traceback' not in log, log[-3000:]


# -- start-up failures (own short-lived processes) --------------------------------------------------------

def test_missing_weights_fail_with_the_file_name(tmp_path) -> None:
    missing = tmp_path / 'no_such_weights.safetensors'
    cmd = command_line(node_executable(), {'params_file': default_params_file(), 'device': 'cpu'})
    cmd += ['-p', f'fusion.checkpoint:={missing}', '-p', 'corrector.enabled:=false']
    rc, log = wait_exit(start_node(cmd, tmp_path / 'node.log'), STARTUP_S)
    assert rc == 2, log[-2000:]
    assert str(missing) in log and 'Traceback' not in log


def test_message_filters_backend_fails_clearly_when_missing(tmp_path, weights) -> None:
    pytest.importorskip('rclpy')
    try:
        import message_filters  # noqa: F401
        pytest.skip('message_filters is installed here')
    except ImportError:
        pass
    cmd = command_line(node_executable(), {'params_file': default_params_file(), 'device': 'cpu'})
    cmd += ['-p', 'sync.backend:=message_filters', '-p', f'fusion.checkpoint:={weights["fusion"]}']
    rc, log = wait_exit(start_node(cmd, tmp_path / 'node.log'), STARTUP_S)
    assert rc == 2 and 'message_filters' in log and 'Traceback' not in log
