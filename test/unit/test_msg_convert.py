"""ros.msg_convert: sensor_msgs messages <-> numpy (message classes only, no rclpy context)."""
from __future__ import annotations

import array
import subprocess
import sys

import cv2
import numpy as np
import pytest

pytest.importorskip('sensor_msgs.msg')

from sensor_msgs.msg import CameraInfo, CompressedImage, Image  # noqa: E402
from std_msgs.msg import Header  # noqa: E402

from ros2_regionfuse.core.checks import EncodingError, RegionFuseError, ValueRangeError  # noqa: E402
from ros2_regionfuse.ros import msg_convert as mc  # noqa: E402


def raw_msg(arr: np.ndarray, encoding: str, *, pad: int = 0, bigendian: bool = False,
            height: int | None = None, width: int | None = None, data: bytes | None = None) -> Image:
    """Build an Image by hand (independently of the code under test)."""
    a = arr.astype(arr.dtype.newbyteorder('>' if bigendian else '<'))
    rows = a.reshape(a.shape[0], -1).view(np.uint8).reshape(a.shape[0], -1)
    rows = np.concatenate([rows, np.full((rows.shape[0], pad), 0xAB, np.uint8)], axis=1)
    m = Image()
    m.height = arr.shape[0] if height is None else height
    m.width = arr.shape[1] if width is None else width
    m.encoding = encoding
    m.is_bigendian = int(bigendian)
    m.step = rows.shape[1]
    m.data = array.array('B', rows.tobytes() if data is None else data)
    return m


def test_importable_without_rclpy() -> None:
    code = 'import sys, ros2_regionfuse.ros.msg_convert; assert "rclpy" not in sys.modules'
    subprocess.run([sys.executable, '-c', code], check=True, timeout=120)


# -- thermal ----------------------------------------------------------------------------------

@pytest.mark.parametrize('encoding, dtype', [('mono8', np.uint8), ('8UC1', np.uint8),
                                             ('mono16', np.uint16), ('16UC1', np.uint16),
                                             ('32FC1', np.float32)])
@pytest.mark.parametrize('pad, big', [(0, False), (6, False), (4, True)])
def test_thermal_encodings_step_and_endianness(rng, encoding, dtype, pad, big) -> None:
    hi = 250 if dtype == np.uint8 else 60000
    arr = (rng.integers(0, hi, (5, 7)) if dtype != np.float32
           else rng.uniform(250.0, 320.0, (5, 7))).astype(dtype)
    out = mc.thermal_from_image(raw_msg(arr, encoding, pad=pad, bigendian=big))
    assert out.shape == (5, 7) and out.dtype == np.dtype(dtype)
    np.testing.assert_array_equal(out, arr)


def test_thermal_nan_pixels_filled_and_nan_only_rejected() -> None:
    arr = np.array([[300.0, np.nan], [np.inf, 310.0]], np.float32)
    out = mc.thermal_from_image(raw_msg(arr, '32FC1'))
    assert out.tolist() == [[300.0, 300.0], [300.0, 310.0]]
    with pytest.raises(ValueRangeError):
        mc.thermal_from_image(raw_msg(np.full((3, 3), np.nan, np.float32), '32FC1'))


@pytest.mark.parametrize('encoding', ['bgr8', 'rgb8', 'yuv422', 'foo', '', 'bayer_rggb8'])
def test_thermal_rejects_other_encodings(encoding) -> None:
    with pytest.raises(EncodingError):
        mc.thermal_from_image(raw_msg(np.zeros((2, 2), np.uint16), encoding))


# -- rgb ------------------------------------------------------------------------------------------

@pytest.mark.parametrize('encoding', ['bgr8', 'rgb8', 'bgra8', 'rgba8', '8UC3'])
@pytest.mark.parametrize('pad', [0, 3])
def test_rgb_colour_encodings(rng, encoding, pad) -> None:
    rgb = rng.integers(0, 256, (4, 6, 3)).astype(np.uint8)
    ch = 4 if encoding.endswith('a8') else 3
    if encoding.startswith('bgr'):
        src = rgb[:, :, ::-1]
    else:
        src = rgb
    if ch == 4:
        src = np.concatenate([src, np.full((4, 6, 1), 7, np.uint8)], axis=2)
    out = mc.rgb_from_image(raw_msg(np.ascontiguousarray(src), encoding, pad=pad))
    assert out.shape == (4, 6, 3) and out.dtype == np.uint8
    np.testing.assert_array_equal(out, rgb)


@pytest.mark.parametrize('encoding', ['mono8', '8UC1'])
def test_rgb_gray(rng, encoding) -> None:
    g = rng.integers(0, 256, (3, 5)).astype(np.uint8)
    np.testing.assert_array_equal(mc.rgb_from_image(raw_msg(g, encoding, pad=1)), g)


@pytest.mark.parametrize('encoding', ['mono16', '32FC1', 'yuv422', 'nonsense'])
def test_rgb_rejects_other_encodings(encoding) -> None:
    with pytest.raises(EncodingError):
        mc.rgb_from_image(raw_msg(np.zeros((2, 2), np.uint16), encoding))


# -- inconsistent messages -------------------------------------------------------------------------

def test_zero_size_rejected() -> None:
    m = raw_msg(np.zeros((2, 2), np.uint8), 'mono8')
    m.height, m.width, m.step, m.data = 0, 0, 0, array.array('B')
    with pytest.raises(EncodingError, match='empty'):
        mc.rgb_from_image(m)


@pytest.mark.parametrize('delta', [-1, 1, -4])
def test_wrong_data_length_rejected(delta) -> None:
    arr = np.zeros((4, 4), np.uint16)
    good = raw_msg(arr, 'mono16')
    m = raw_msg(arr, 'mono16', data=bytes(len(good.data) + delta))
    with pytest.raises(EncodingError, match='bytes'):
        mc.thermal_from_image(m)


def test_step_too_small_rejected() -> None:
    m = raw_msg(np.zeros((4, 4, 3), np.uint8), 'bgr8')
    m.step = 4 * 3 - 1
    m.data = array.array('B', bytes(m.step * 4))
    with pytest.raises(EncodingError, match='step'):
        mc.rgb_from_image(m)


def test_errors_are_regionfuse_errors() -> None:
    assert issubclass(EncodingError, RegionFuseError) and issubclass(ValueRangeError, RegionFuseError)


# -- output images -----------------------------------------------------------------------------------

@pytest.mark.parametrize('encoding', ['bgr8', 'rgb8'])
def test_rgb_to_image_roundtrip(rng, encoding) -> None:
    rgb = rng.integers(0, 256, (3, 4, 3)).astype(np.uint8)
    h = Header(frame_id='cam')
    h.stamp.sec, h.stamp.nanosec = 7, 9
    m = mc.rgb_to_image(rgb, encoding, h)
    assert (m.encoding, m.width, m.height, m.step, len(m.data)) == (encoding, 4, 3, 12, 36)
    assert (m.header.frame_id, m.header.stamp.sec, m.header.stamp.nanosec) == ('cam', 7, 9)
    first = list(m.data[:3])
    assert first == (rgb[0, 0].tolist() if encoding == 'rgb8' else rgb[0, 0, ::-1].tolist())
    np.testing.assert_array_equal(mc.rgb_from_image(m), rgb)


def test_float_maps_to_image(rng) -> None:
    m1 = rng.random((3, 4)).astype(np.float32)
    f2 = rng.standard_normal((3, 4, 2)).astype(np.float32)
    i1 = mc.array_to_image(m1, '32FC1')
    i2 = mc.array_to_image(f2, '32FC2')
    assert (i1.step, i2.step) == (16, 32)
    np.testing.assert_array_equal(mc.image_to_array(i1), m1)
    np.testing.assert_array_equal(mc.image_to_array(i2), f2)
    with pytest.raises(EncodingError):
        mc.array_to_image(m1, '32FC2')


# -- compressed ---------------------------------------------------------------------------------------

def test_compressed_png16_thermal_lossless(rng) -> None:
    t = rng.integers(0, 65535, (6, 9)).astype(np.uint16)
    m = mc.array_to_compressed(t, 'mono16', 'png')
    assert m.format.startswith('mono16; png')
    out = mc.thermal_from_compressed(m)
    assert out.dtype == np.uint16
    np.testing.assert_array_equal(out, t)


def test_compressed_bare_format_and_mono8(rng) -> None:
    g = rng.integers(0, 256, (5, 5)).astype(np.uint8)
    m = CompressedImage(format='png')
    m.data = array.array('B', cv2.imencode('.png', g)[1].tobytes())
    np.testing.assert_array_equal(mc.thermal_from_compressed(m), g)
    np.testing.assert_array_equal(mc.rgb_from_compressed(m), g)


@pytest.mark.parametrize('encoding', ['bgr8', 'rgb8'])
def test_compressed_colour(encoding) -> None:
    yy, xx = np.mgrid[0:32, 0:48]
    rgb = np.stack([xx * 5, yy * 7, 255 - xx * 5], axis=2).astype(np.uint8)
    src = rgb if encoding == 'rgb8' else rgb[:, :, ::-1]
    png = mc.rgb_from_compressed(mc.array_to_compressed(np.ascontiguousarray(src), encoding, 'png'))
    np.testing.assert_array_equal(png, rgb)
    jpg = mc.rgb_from_compressed(mc.array_to_compressed(np.ascontiguousarray(src), encoding, 'jpeg'))
    assert jpg.shape == rgb.shape
    assert np.abs(jpg.astype(int) - rgb).mean() < 6    # lossy, but channel order must be right


def test_compressed_depth_header(rng) -> None:
    t = rng.integers(0, 65535, (4, 4)).astype(np.uint16)
    m = CompressedImage(format='16UC1; compressedDepth png')
    m.data = array.array('B', bytes(mc.COMPRESSED_DEPTH_HEADER_BYTES) + cv2.imencode('.png', t)[1].tobytes())
    np.testing.assert_array_equal(mc.thermal_from_compressed(m), t)


def test_compressed_errors() -> None:
    with pytest.raises(EncodingError, match='no data'):
        mc.thermal_from_compressed(CompressedImage(format='png'))
    bad = CompressedImage(format='jpeg')
    bad.data = array.array('B', b'not an image at all')
    with pytest.raises(EncodingError, match='decoded'):
        mc.rgb_from_compressed(bad)
    colour = mc.array_to_compressed(np.zeros((4, 4, 3), np.uint8), 'bgr8', 'png')
    with pytest.raises(EncodingError, match='single-channel'):
        mc.thermal_from_compressed(colour)
    with pytest.raises(EncodingError):
        mc.array_to_compressed(np.zeros((4, 4), np.uint16), 'mono16', 'jpeg')
    with pytest.raises(EncodingError):
        mc.array_to_compressed(np.zeros((4, 4), np.uint8), 'mono8', 'webp')


# -- camera info and stamps ----------------------------------------------------------------------------

def test_scale_camera_info() -> None:
    info = CameraInfo(width=640, height=480, distortion_model='plumb_bob')
    info.header.frame_id = 'rgb_optical'
    info.k = [500.0, 0.0, 320.0, 0.0, 510.0, 240.0, 0.0, 0.0, 1.0]
    info.p = [500.0, 0.0, 320.0, 5.0, 0.0, 510.0, 240.0, 0.0, 0.0, 0.0, 1.0, 0.0]
    info.d = [0.1, -0.2, 0.0, 0.0, 0.0]
    out = mc.scale_camera_info(info, 320, 120)
    assert (out.width, out.height) == (320, 120)
    assert list(out.k) == [250.0, 0.0, 160.0, 0.0, 127.5, 60.0, 0.0, 0.0, 1.0]
    assert list(out.p) == [250.0, 0.0, 160.0, 2.5, 0.0, 127.5, 60.0, 0.0, 0.0, 0.0, 1.0, 0.0]
    assert list(out.d) == [0.1, -0.2, 0.0, 0.0, 0.0]
    assert out.header.frame_id == 'rgb_optical'
    np.testing.assert_array_equal(mc.camera_matrix(out), np.array(out.k).reshape(3, 3))
    with pytest.raises(EncodingError):
        mc.scale_camera_info(CameraInfo(), 10, 10)
    with pytest.raises(EncodingError):
        mc.camera_matrix(CameraInfo(width=4, height=4))


def test_stamp_roundtrip() -> None:
    for ns in (0, 1, 999_999_999, 1_700_000_000_123_456_789):
        assert mc.stamp_to_ns(mc.ns_to_stamp(ns)) == ns
    h = Header(frame_id='x')
    h.stamp.sec = 3
    c = mc.copy_header(h)
    h.stamp.sec = 4
    assert (c.stamp.sec, c.frame_id) == (3, 'x')
