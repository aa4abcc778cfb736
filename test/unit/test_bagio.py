"""core.bagio + core.encodings: bag round trips, image layouts, errors (no ROS)."""
from __future__ import annotations

import sys

import numpy as np
import pytest

pytest.importorskip('rosbags')

from ros2_regionfuse.core import bagio  # noqa: E402
from ros2_regionfuse.core.checks import EncodingError, RegionFuseError, ShapeError, ValueRangeError  # noqa: E402
from ros2_regionfuse.core.encodings import (  # noqa: E402
    decode_image,
    encode_image,
    encoding_info,
    from_rgb8,
    rgb_input,
    thermal_input,
    to_rgb8,
)

T0 = 1_715_700_000_123_456_789


def _images(rng: np.random.Generator) -> dict[str, np.ndarray]:
    return {'mono16': rng.integers(7000, 9040, (6, 7), dtype=np.uint16),
            'bgr8': rng.integers(0, 256, (6, 7, 3), dtype=np.uint8),
            '32FC1': rng.random((6, 7)).astype(np.float32),
            '32FC2': (rng.standard_normal((6, 7, 2)) * 5).astype(np.float32)}


def test_image_round_trip_through_bag(tmp_path, rng) -> None:
    imgs = _images(rng)
    with bagio.BagWriter(tmp_path / 'bag', compress=True, custom_data={'key': 'value'}) as w:
        for i, (enc, img) in enumerate(imgs.items()):
            w.write(f'/img/{enc}', bagio.image_msg(img, enc, T0 + i, f'frame_{enc}'), T0 + 100 + i)
    topics = bagio.bag_topics(tmp_path / 'bag')
    assert {t: (s.msgtype, s.count) for t, s in topics.items()} == {
        f'/img/{e}': (bagio.IMAGE, 1) for e in imgs}
    assert bagio.bag_custom_data(tmp_path / 'bag') == {'key': 'value'}
    got = list(bagio.read_messages(tmp_path / 'bag'))
    assert [m.log_ns for m in got] == [T0 + 100 + i for i in range(4)]  # log-time order
    for i, m in enumerate(got):
        enc = m.topic.rsplit('/', 1)[1]
        msg = m.decode()
        assert (msg.encoding, msg.header.frame_id, bagio.time_to_ns(msg.header.stamp)) == \
            (enc, f'frame_{enc}', T0 + i)
        arr = bagio.image_array(msg)
        assert arr.dtype == imgs[enc].dtype and arr.shape == imgs[enc].shape
        np.testing.assert_array_equal(arr, imgs[enc])
        assert msg.step == imgs[enc].shape[1] * encoding_info(enc).pixel_bytes


def test_fusion_status_and_camera_info_round_trip(tmp_path) -> None:
    k = np.array([[420.0, 0, 223.5], [0, 421.0, 167.5], [0, 0, 1]])
    status = bagio.fusion_status_msg(T0, 'rgb_optical', thermal_stamp=T0 + 4_000_000, rgb_stamp=T0,
                                     pair_dt=0.004, fusion_ms=7.5, total_ms=31.25,
                                     misaligned_fraction=0.125, mean_shift_px=6.5, corrector_enabled=True,
                                     device='cpu', fusion_model='regionfuse_fine@x', processed=42, dropped=3)
    with bagio.BagWriter(tmp_path / 'b') as w:
        w.write('/fused/status', status, T0)
        w.write('/rgb/camera_info', bagio.camera_info_msg(T0, 'rgb_optical', 448, 336, k), T0 + 1)
    msgs = {m.topic: m.decode() for m in bagio.read_messages(tmp_path / 'b')}
    s = msgs['/fused/status']
    assert bagio.time_to_ns(s.thermal_stamp) - bagio.time_to_ns(s.rgb_stamp) == 4_000_000
    assert (s.header.frame_id, s.device, s.fusion_model, s.processed, s.dropped, s.corrector_enabled) == \
        ('rgb_optical', 'cpu', 'regionfuse_fine@x', 42, 3, True)
    assert (s.fusion_ms, s.total_ms, s.misaligned_fraction, s.mean_shift_px) == (7.5, 31.25, 0.125, 6.5)
    assert s.pair_dt == pytest.approx(0.004)
    assert s.paired == 0 and s.corrector_model == ''  # omitted fields default to zero / empty
    ci = msgs['/rgb/camera_info']
    assert (ci.width, ci.height, ci.distortion_model) == (448, 336, 'plumb_bob')
    np.testing.assert_array_equal(ci.k.reshape(3, 3), k)
    np.testing.assert_array_equal(ci.p.reshape(3, 4)[:, :3], k)


def test_raw_write_and_topic_filter(tmp_path, rng) -> None:
    img = rng.integers(0, 256, (4, 5), dtype=np.uint8)
    raw = bagio.make_typestore().serialize_cdr(bagio.image_msg(img, 'mono8', 5, 'f'), bagio.IMAGE)
    with bagio.BagWriter(tmp_path / 'b') as w:
        w.write_raw('/a', bagio.IMAGE, raw, 10)
        w.write_raw('/b', bagio.IMAGE, raw, 11)
    got = list(bagio.read_messages(tmp_path / 'b', ['/b']))
    assert [(m.topic, m.log_ns) for m in got] == [('/b', 11)]
    assert got[0].raw == bytes(raw)
    np.testing.assert_array_equal(bagio.image_array(got[0].decode()), img)


def test_bag_errors(tmp_path) -> None:
    with bagio.BagWriter(tmp_path / 'b') as w:
        w.write('/a', bagio.image_msg(np.zeros((2, 2), np.uint8), 'mono8', 1, 'f'), 1)
    with pytest.raises(bagio.BagError, match='exists'):
        bagio.BagWriter(tmp_path / 'b')
    with pytest.raises(bagio.BagError, match='no topic'):
        list(bagio.read_messages(tmp_path / 'b', ['/missing']))
    with pytest.raises(bagio.BagError, match='not found'):
        bagio.bag_topics(tmp_path / 'nope')
    with pytest.raises(bagio.BagError, match='no field'):
        bagio.fusion_status_msg(0, 'f', not_a_field=1)
    with pytest.raises(EncodingError):
        bagio.check_image_msgtype('/a', bagio.CAMERA_INFO)
    with pytest.raises(EncodingError):  # dtype does not match the encoding
        bagio.image_msg(np.zeros((2, 2), np.uint8), 'mono16', 1, 'f')
    assert issubclass(bagio.BagError, RegionFuseError)


# -- encodings: the byte-level rules shared with the node --------------------------------------

def test_decode_honours_step_padding_and_big_endian() -> None:
    img = np.arange(12, dtype=np.uint16).reshape(3, 4) * 1000 + 7
    be = img.astype('>u2').tobytes()
    padded = b''.join(be[r * 8:(r + 1) * 8] + b'\xee\xee\xee' for r in range(3))  # step 11
    out = decode_image(padded, 3, 4, 'mono16', step=11, is_bigendian=1)
    assert out.dtype == np.uint16 and out.dtype.byteorder in ('=', '|')
    np.testing.assert_array_equal(out, img)
    rgb = np.arange(2 * 3 * 3, dtype=np.uint8).reshape(2, 3, 3)
    padded = b''.join(rgb[r].tobytes() + b'\x00' * 3 for r in range(2))
    np.testing.assert_array_equal(decode_image(padded, 2, 3, 'bgr8', step=12), rgb)


def test_encode_decode_inverse_for_generic_encodings(rng) -> None:
    for enc, dtype, ch in (('8UC3', np.uint8, 3), ('16SC1', np.int16, 1), ('64FC1', np.float64, 1),
                           ('32FC2', np.float32, 2), ('rgba16', np.uint16, 4)):
        shape = (3, 5) if ch == 1 else (3, 5, ch)
        img = (rng.standard_normal(shape) * 100).astype(dtype)
        data, step, big = encode_image(img, enc)
        assert (step, big, data.size) == (5 * ch * np.dtype(dtype).itemsize, int(sys.byteorder == 'big'),
                                          step * 3)
        np.testing.assert_array_equal(decode_image(data.tobytes(), 3, 5, enc, step, big), img)


@pytest.mark.parametrize('kwargs, err', [
    (dict(height=0, width=2, step=2), ShapeError),
    (dict(height=2, width=2, step=1), ShapeError),   # step < width * bytes
    (dict(height=2, width=2, step=4, data=b'\x00' * 7), ShapeError),  # wrong length
    (dict(height=2, width=2, step=4, encoding='bayer_rggb8'), EncodingError),
    (dict(height=2, width=2, step=4, encoding='yuv422'), EncodingError),
])
def test_decode_rejects_inconsistent_messages(kwargs, err) -> None:
    args = dict(data=b'\x00' * 8, encoding='mono16') | kwargs
    with pytest.raises(err):
        decode_image(args['data'], args['height'], args['width'], args['encoding'], args['step'])


def test_colour_order_and_roles() -> None:
    px = np.array([[[10, 20, 30, 255]]], np.uint8)
    assert to_rgb8(px[:, :, :3], 'bgr8').tolist() == [[[30, 20, 10]]]
    assert to_rgb8(px, 'bgra8').tolist() == [[[30, 20, 10]]]
    assert to_rgb8(px, 'rgba8').tolist() == [[[10, 20, 30]]]
    assert to_rgb8(np.array([[[0, 257 * 100, 65535]]], np.uint16), 'rgb16').tolist() == [[[0, 100, 255]]]
    assert from_rgb8(np.array([[[1, 2, 3]]], np.uint8), 'bgr8').tolist() == [[[3, 2, 1]]]
    with pytest.raises(EncodingError):
        from_rgb8(np.zeros((1, 1, 3), np.uint8), 'mono16')
    with pytest.raises(EncodingError):
        rgb_input(np.zeros((1, 1), np.uint16), 'mono16')
    with pytest.raises(EncodingError):
        thermal_input(np.zeros((1, 1, 3), np.uint8), 'bgr8')
    filled = thermal_input(np.array([[300.0, np.nan], [np.inf, 290.0]], np.float32), '32FC1')
    assert filled.tolist() == [[300.0, 290.0], [290.0, 290.0]]
    with pytest.raises(ValueRangeError):
        thermal_input(np.full((2, 2), np.nan, np.float32), '32FC1')
