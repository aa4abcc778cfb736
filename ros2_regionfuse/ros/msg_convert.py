"""sensor_msgs Image / CompressedImage / CameraInfo <-> numpy for the node.

The byte-level rules (encodings, ``step`` padding, ``is_bigendian``, channel
order) live in :mod:`ros2_regionfuse.core.encodings`; this module applies them
to rclpy message objects, decodes compressed images (JPEG, 8/16-bit PNG) and
adds the role-specific checks of the thermal and RGB inputs. Every problem with
a message raises :class:`~ros2_regionfuse.core.checks.EncodingError` (zero size,
wrong data length, unknown encoding, undecodable data) or
:class:`~ros2_regionfuse.core.checks.ValueRangeError` (no finite pixel), so the
node catches one family (:class:`RegionFuseError`) per frame.

Array conventions: thermal ``(H, W)`` uint8/uint16/float32; RGB ``(H, W, 3)``
uint8 in RGB order or ``(H, W)`` uint8 gray.
"""
from __future__ import annotations

import array

import cv2
import numpy as np
from builtin_interfaces.msg import Time
from sensor_msgs.msg import CameraInfo, CompressedImage, Image
from std_msgs.msg import Header

from ..core import encodings
from ..core.checks import EncodingError, ShapeError

NS_PER_S = 1_000_000_000
#: Bytes of the configuration header compressed_depth_image_transport puts before the PNG.
COMPRESSED_DEPTH_HEADER_BYTES = 12


# -- stamps -----------------------------------------------------------------------------------

def stamp_to_ns(stamp: Time) -> int:
    """``builtin_interfaces/Time`` -> integer nanoseconds."""
    return int(stamp.sec) * NS_PER_S + int(stamp.nanosec)


def ns_to_stamp(ns: int) -> Time:
    """Integer nanoseconds (>= 0) -> ``builtin_interfaces/Time``."""
    sec, nsec = divmod(int(ns), NS_PER_S)
    return Time(sec=sec, nanosec=nsec)


def copy_header(header: Header) -> Header:
    """A new Header with the same stamp and frame_id (outputs copy the RGB input's)."""
    return Header(stamp=Time(sec=header.stamp.sec, nanosec=header.stamp.nanosec),
                  frame_id=header.frame_id)


# -- raw images ----------------------------------------------------------------------------------

def image_to_array(msg: Image) -> np.ndarray:
    """Decode a ``sensor_msgs/Image`` into an array in the encoding's own layout.

    Args:
        msg: the message; ``step`` padding is dropped, big-endian data is
            converted to native byte order.

    Returns:
        ``(H, W)`` or ``(H, W, C)`` array (a read-only view of ``msg.data``
        when no conversion is needed); channel order as in the encoding.

    Raises:
        EncodingError: unknown encoding, zero size, ``step`` too small or
            ``len(data) != step * height``.
    """
    try:
        return encodings.decode_image(msg.data, msg.height, msg.width, msg.encoding, msg.step,
                                      msg.is_bigendian)
    except ShapeError as e:
        raise EncodingError(str(e)) from e


def array_to_image(img: np.ndarray, encoding: str, header: Header | None = None) -> Image:
    """Build a ``sensor_msgs/Image`` from an array whose dtype/channels match ``encoding``.

    Raises:
        EncodingError: dtype or channel count does not match ``encoding``.
        ShapeError: not a non-empty 2-D/3-D array.
    """
    data, step, big = encodings.encode_image(img, encoding)
    msg = Image()
    if header is not None:
        msg.header = header
    msg.height, msg.width = int(img.shape[0]), int(img.shape[1])
    msg.encoding = encoding
    msg.is_bigendian = big
    msg.step = step
    buf = array.array('B')
    buf.frombytes(memoryview(np.ascontiguousarray(data)))
    msg.data = buf
    return msg


def rgb_to_image(rgb: np.ndarray, encoding: str, header: Header | None = None) -> Image:
    """Publishable fused image: ``(H, W, 3)`` uint8 RGB -> Image in ``encoding`` (bgr8/rgb8)."""
    return array_to_image(encodings.from_rgb8(rgb, encoding), encoding, header)


def thermal_from_image(msg: Image) -> np.ndarray:
    """Thermal input: Image (mono8/8UC1/mono16/16UC1/32FC1) -> ``(H, W)`` array.

    Returns:
        uint8, uint16 (raw counts) or float32 (Kelvin/Celsius; NaN pixels
        filled, see :func:`~ros2_regionfuse.core.encodings.fill_invalid_thermal`).

    Raises:
        EncodingError: not a thermal encoding, or an inconsistent message.
        ValueRangeError: float image without any finite pixel.
    """
    encodings.check_thermal_encoding(msg.encoding)
    return encodings.thermal_input(image_to_array(msg), msg.encoding)


def rgb_from_image(msg: Image) -> np.ndarray:
    """RGB input: Image (bgr8/rgb8/bgra8/rgba8/mono8/8UC3/8UC1) -> RGB uint8 or gray.

    Raises:
        EncodingError: not an RGB encoding, or an inconsistent message.
    """
    if msg.encoding not in encodings.RGB_ENCODINGS:
        raise EncodingError(f'rgb encoding {msg.encoding!r} not supported; '
                            f'supported: {list(encodings.RGB_ENCODINGS)}')
    return encodings.rgb_input(image_to_array(msg), msg.encoding)


# -- compressed images ---------------------------------------------------------------------------

def compressed_to_array(msg: CompressedImage) -> tuple[np.ndarray, str]:
    """Decode a ``sensor_msgs/CompressedImage`` (JPEG or PNG, 8 or 16 bit).

    ``format`` may be a bare ``jpeg``/``png`` or image_transport's
    ``"<encoding>; <jpeg|png> compressed <encoding>"``; the
    ``"16UC1; compressedDepth png"`` form is accepted too.

    Returns:
        ``(array, encoding)``: colour as ``bgr8``/``bgra8`` (OpenCV order),
        gray as ``mono8`` or ``mono16``.

    Raises:
        EncodingError: empty or undecodable data, unsupported depth format.
    """
    fmt = msg.format or ''
    raw = np.frombuffer(msg.data, np.uint8)
    if 'compresseddepth' in fmt.lower().replace(' ', ''):
        if fmt.split(';')[0].strip() not in ('16UC1', 'mono16'):
            raise EncodingError(f'compressedDepth format {fmt!r}: only 16UC1/mono16 is supported')
        raw = raw[COMPRESSED_DEPTH_HEADER_BYTES:]
    if raw.size == 0:
        raise EncodingError(f'compressed image ({fmt!r}) has no data')
    img = cv2.imdecode(raw, cv2.IMREAD_UNCHANGED)
    if img is None or img.size == 0:
        raise EncodingError(f'compressed image ({fmt!r}, {raw.size} bytes) cannot be decoded')
    if img.ndim == 2:
        if img.dtype == np.uint8:
            return img, 'mono8'
        if img.dtype == np.uint16:
            return img, 'mono16'
    elif img.ndim == 3 and img.dtype == np.uint8 and img.shape[2] in (3, 4):
        return img, 'bgr8' if img.shape[2] == 3 else 'bgra8'
    raise EncodingError(f'compressed image ({fmt!r}): unsupported decoded layout '
                        f'{img.shape} {img.dtype}')


def thermal_from_compressed(msg: CompressedImage) -> np.ndarray:
    """Thermal input from a compressed image: gray 8-bit JPEG/PNG or 16-bit PNG -> ``(H, W)``.

    Raises:
        EncodingError: colour or undecodable image.
    """
    img, enc = compressed_to_array(msg)
    if enc not in ('mono8', 'mono16'):
        raise EncodingError(f'thermal compressed image must be single-channel, got {enc} '
                            f'({msg.format!r})')
    return encodings.thermal_input(img, enc)


def rgb_from_compressed(msg: CompressedImage) -> np.ndarray:
    """RGB input from a compressed image -> RGB uint8 ``(H, W, 3)`` or gray ``(H, W)``.

    Raises:
        EncodingError: 16-bit or undecodable image.
    """
    img, enc = compressed_to_array(msg)
    if enc == 'mono16':
        raise EncodingError(f'rgb compressed image must be 8-bit, got 16-bit ({msg.format!r})')
    return encodings.rgb_input(img, enc)


def array_to_compressed(img: np.ndarray, encoding: str, fmt: str = 'png',
                        header: Header | None = None) -> CompressedImage:
    """Compress an array like image_transport's ``compressed`` plugin would.

    Args:
        img: array matching ``encoding`` (mono8, mono16, bgr8 or rgb8).
        encoding: the array's encoding.
        fmt: ``png`` or ``jpeg`` (``jpeg`` only for 8-bit).
        header: copied into the message.

    Returns:
        CompressedImage with ``format = "<encoding>; <fmt> compressed <encoding sent>"``.

    Raises:
        EncodingError: unsupported combination or encoder failure.
    """
    if fmt not in ('png', 'jpeg'):
        raise EncodingError(f'compressed format must be png or jpeg, got {fmt!r}')
    if encoding in ('bgr8', 'rgb8'):
        bgr = encodings.from_rgb8(encodings.to_rgb8(img, encoding), 'bgr8')
        payload, target = bgr, 'bgr8'
    elif encoding in ('mono8', 'mono16'):
        if encoding == 'mono16' and fmt == 'jpeg':
            raise EncodingError('mono16 cannot be JPEG-compressed; use png')
        payload, target = img, encoding
    else:
        raise EncodingError(f'cannot compress encoding {encoding!r}')
    ok, buf = cv2.imencode('.png' if fmt == 'png' else '.jpg', payload)
    if not ok:
        raise EncodingError(f'{fmt} encoder failed for {encoding} {img.shape}')
    msg = CompressedImage()
    if header is not None:
        msg.header = header
    msg.format = f'{encoding}; {fmt} compressed {target}'
    data = array.array('B')
    data.frombytes(buf.tobytes())
    msg.data = data
    return msg


# -- camera info ---------------------------------------------------------------------------------

def scale_camera_info(info: CameraInfo, width: int, height: int,
                      header: Header | None = None) -> CameraInfo:
    """The CameraInfo of the same camera after resizing its image to ``width x height``.

    ``K`` and ``P`` rows 0 and 1 are scaled by the x and y factors, the ROI
    likewise; distortion, ``R`` and binning are kept.

    Raises:
        EncodingError: ``info`` has zero width/height.
    """
    if info.width <= 0 or info.height <= 0:
        raise EncodingError(f'camera_info has an empty size {info.width}x{info.height}')
    sx, sy = width / info.width, height / info.height
    out = CameraInfo()
    out.header = header if header is not None else copy_header(info.header)
    out.width, out.height = int(width), int(height)
    out.distortion_model = info.distortion_model
    out.d = list(info.d)
    k = np.array(info.k, dtype=np.float64).reshape(3, 3)
    k[0] *= sx
    k[1] *= sy
    p = np.array(info.p, dtype=np.float64).reshape(3, 4)
    p[0] *= sx
    p[1] *= sy
    out.k = k.reshape(-1)
    out.p = p.reshape(-1)
    out.r = np.array(info.r, dtype=np.float64)
    out.binning_x, out.binning_y = info.binning_x, info.binning_y
    roi = info.roi
    out.roi.x_offset = int(round(roi.x_offset * sx))
    out.roi.y_offset = int(round(roi.y_offset * sy))
    out.roi.width = int(round(roi.width * sx))
    out.roi.height = int(round(roi.height * sy))
    out.roi.do_rectify = roi.do_rectify
    return out


def camera_matrix(info: CameraInfo) -> np.ndarray:
    """``K`` of a CameraInfo as a 3x3 float64 array.

    Raises:
        EncodingError: ``K`` is all zeros (an uncalibrated camera).
    """
    k = np.array(info.k, dtype=np.float64).reshape(3, 3)
    if k[0, 0] == 0.0 or k[1, 1] == 0.0:
        raise EncodingError('camera_info has no calibration (K focal lengths are 0)')
    return k
