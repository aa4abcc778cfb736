"""ROS image encodings <-> numpy arrays, shared by the node and the bag tools.

Pure numpy, no ROS imports: ``ros/msg_convert.py`` (rclpy messages) and
``core/bagio.py`` (rosbags dataclasses) both call these functions with the
fields of a ``sensor_msgs/Image`` (``height``, ``width``, ``encoding``,
``step``, ``is_bigendian``, ``data``), so the conversion rules exist once.

Supported encodings: the named ones in :data:`NAMED_ENCODINGS` (``mono8``,
``mono16``, ``bgr8``, ``rgb8``, ``bgra8``, ``rgba8``, 16-bit colour) and the
generic ``<bits><U|S|F>C<n>`` family (``8UC1`` ... ``64FC4``, e.g. ``16UC1``,
``32FC1``, ``32FC2``). Bayer and YUV encodings are rejected with
:class:`~ros2_regionfuse.core.checks.EncodingError`.
"""
from __future__ import annotations

import re
import sys
from dataclasses import dataclass

import numpy as np

from .checks import EncodingError, ShapeError, ValueRangeError

# name -> (numpy dtype string without byte order, channels)
NAMED_ENCODINGS: dict[str, tuple[str, int]] = {
    'mono8': ('u1', 1), 'mono16': ('u2', 1),
    'bgr8': ('u1', 3), 'rgb8': ('u1', 3), 'bgra8': ('u1', 4), 'rgba8': ('u1', 4),
    'bgr16': ('u2', 3), 'rgb16': ('u2', 3), 'bgra16': ('u2', 4), 'rgba16': ('u2', 4),
}
_GENERIC = re.compile(r'^(8|16|32|64)([USF])C([1-4])$')
_GENERIC_DTYPES = {('8', 'U'): 'u1', ('8', 'S'): 'i1', ('16', 'U'): 'u2', ('16', 'S'): 'i2',
                   ('32', 'S'): 'i4', ('32', 'F'): 'f4', ('64', 'F'): 'f8'}

#: Encodings accepted for the thermal input (raw counts, Kelvin/Celsius floats or 8-bit).
THERMAL_ENCODINGS: tuple[str, ...] = ('mono8', '8UC1', 'mono16', '16UC1', '32FC1')
#: Encodings accepted for the RGB input.
RGB_ENCODINGS: tuple[str, ...] = ('bgr8', 'rgb8', 'bgra8', 'rgba8', 'mono8', '8UC3', '8UC1')
#: Encodings the fused image can be published in.
OUTPUT_ENCODINGS: tuple[str, ...] = ('bgr8', 'rgb8')


@dataclass(frozen=True)
class EncodingInfo:
    """Layout of one encoding.

    Attributes:
        name: the ROS encoding string.
        dtype: numpy element type in native byte order.
        channels: channels per pixel.
    """

    name: str
    dtype: np.dtype
    channels: int

    @property
    def pixel_bytes(self) -> int:
        """Bytes per pixel (all channels)."""
        return self.dtype.itemsize * self.channels


def encoding_info(encoding: str) -> EncodingInfo:
    """Element type and channel count of a ROS image encoding.

    Raises:
        EncodingError: unknown or unsupported encoding (Bayer, YUV, ...).

    Example:
        >>> info = encoding_info('16UC1')
        >>> (info.dtype.name, info.channels, info.pixel_bytes)
        ('uint16', 1, 2)
    """
    if encoding in NAMED_ENCODINGS:
        code, ch = NAMED_ENCODINGS[encoding]
        return EncodingInfo(encoding, np.dtype(code), ch)
    m = _GENERIC.match(encoding or '')
    if m and (m.group(1), m.group(2)) in _GENERIC_DTYPES:
        return EncodingInfo(encoding, np.dtype(_GENERIC_DTYPES[(m.group(1), m.group(2))]),
                            int(m.group(3)))
    raise EncodingError(f'unsupported image encoding {encoding!r}; supported: '
                        f'{sorted(NAMED_ENCODINGS)} and <8|16|32|64><U|S|F>C<1-4>')


def decode_image(data: bytes | bytearray | memoryview | np.ndarray, height: int, width: int,
                 encoding: str, step: int, is_bigendian: bool | int = False, *,
                 copy: bool = False) -> np.ndarray:
    """Turn the fields of a ``sensor_msgs/Image`` into a numpy array.

    Honours ``step`` (row padding is dropped) and ``is_bigendian`` (multi-byte
    data is converted to native order).

    Args:
        data: the message's ``data`` (bytes-like or a uint8 array).
        height: image height in pixels, > 0.
        width: image width in pixels, > 0.
        encoding: ROS encoding, see :func:`encoding_info`.
        step: bytes per row, ``>= width * pixel_bytes``.
        is_bigendian: byte order of multi-byte elements in ``data``.
        copy: return a writable copy; otherwise a read-only view when possible.

    Returns:
        ``(H, W)`` for one channel, else ``(H, W, C)``; dtype per encoding
        (uint8, uint16, float32, ...), native byte order, channel order as in
        the encoding (``bgr8`` stays BGR).

    Raises:
        ShapeError: zero size, ``step`` too small, or ``len(data) != step * height``.
        EncodingError: unsupported encoding.

    Example:
        >>> raw = bytes([1, 0, 2, 0, 9, 9, 3, 0, 4, 0, 9, 9])   # 2x2 mono16, 2 padding bytes/row
        >>> decode_image(raw, 2, 2, 'mono16', step=6).tolist()
        [[1, 2], [3, 4]]
    """
    info = encoding_info(encoding)
    height, width, step = int(height), int(width), int(step)
    if height <= 0 or width <= 0:
        raise ShapeError(f'image {encoding}: empty size {width}x{height}')
    row = width * info.pixel_bytes
    if step < row:
        raise ShapeError(f'image {encoding} {width}x{height}: step {step} < width * {info.pixel_bytes} '
                         f'bytes = {row}')
    buf = np.frombuffer(data, np.uint8) if not isinstance(data, np.ndarray) else data.reshape(-1)
    if buf.dtype != np.uint8:
        buf = buf.view(np.uint8)
    if buf.size != step * height:
        raise ShapeError(f'image {encoding} {width}x{height}: data has {buf.size} bytes, '
                         f'expected step * height = {step * height}')
    rows = buf.reshape(height, step)[:, :row]
    big = bool(is_bigendian) and info.dtype.itemsize > 1
    dtype = info.dtype.newbyteorder('>' if big else '<')
    if rows.flags.c_contiguous:
        arr = rows.view(dtype)
    else:  # padded rows: copy to drop the padding before reinterpreting
        arr = np.ascontiguousarray(rows).view(dtype)
    shape = (height, width) if info.channels == 1 else (height, width, info.channels)
    arr = arr.reshape(shape)
    if arr.dtype.byteorder not in ('=', '|') and arr.dtype != info.dtype:
        arr = arr.astype(info.dtype)  # to native order (copies)
    elif copy:
        arr = arr.copy()
    return arr


def encode_image(img: np.ndarray, encoding: str) -> tuple[np.ndarray, int, int]:
    """Serialise an array for a ``sensor_msgs/Image`` of ``encoding``.

    Args:
        img: ``(H, W)`` or ``(H, W, C)`` array whose dtype and channel count
            match ``encoding`` (no implicit conversion).
        encoding: ROS encoding.

    Returns:
        ``(data, step, is_bigendian)``: ``data`` a 1-D uint8 array of
        ``step * H`` bytes (no row padding), ``step = W * pixel_bytes``,
        ``is_bigendian`` 1 on big-endian hosts else 0 (native order is written).

    Raises:
        EncodingError: dtype or channel count does not match the encoding.
        ShapeError: not 2-D/3-D or empty.

    Example:
        >>> data, step, big = encode_image(np.zeros((2, 3), np.float32), '32FC1')
        >>> (data.size, step, big)
        (24, 12, 0)
    """
    info = encoding_info(encoding)
    if not isinstance(img, np.ndarray) or img.ndim not in (2, 3) or img.size == 0:
        raise ShapeError(f'encode {encoding}: expected a non-empty (H, W[, C]) array, got '
                         f'{getattr(img, "shape", type(img).__name__)}')
    ch = 1 if img.ndim == 2 else img.shape[2]
    if ch != info.channels or img.dtype.newbyteorder('=') != info.dtype:
        raise EncodingError(f'encode {encoding}: needs {info.channels} channel(s) of {info.dtype}, '
                            f'got {ch} of {img.dtype}')
    arr = np.ascontiguousarray(img, dtype=info.dtype)
    return arr.reshape(-1).view(np.uint8), img.shape[1] * info.pixel_bytes, int(sys.byteorder == 'big')


def to_rgb8(img: np.ndarray, encoding: str) -> np.ndarray:
    """Convert a decoded colour/gray image to the pipeline's RGB uint8 convention.

    Args:
        img: array from :func:`decode_image` with ``encoding``.
        encoding: one of :data:`RGB_ENCODINGS` or a 16-bit colour encoding.

    Returns:
        ``(H, W, 3)`` uint8 RGB for colour encodings (alpha dropped, 16-bit
        scaled by 1/257), ``(H, W)`` uint8 for ``mono8``/``8UC1``.

    Raises:
        EncodingError: encoding not usable as an RGB input.

    Example:
        >>> bgr = np.array([[[1, 2, 3]]], np.uint8)
        >>> to_rgb8(bgr, 'bgr8').tolist()
        [[[3, 2, 1]]]
    """
    if encoding in ('mono8', '8UC1'):
        return img
    if encoding in ('rgb8', '8UC3'):
        return img
    if encoding == 'bgr8':
        return img[:, :, ::-1]
    if encoding == 'rgba8':
        return img[:, :, :3]
    if encoding == 'bgra8':
        return img[:, :, 2::-1]
    if encoding in ('rgb16', 'bgr16', 'rgba16', 'bgra16'):
        x = (img[:, :, :3].astype(np.uint32) + 128) // 257
        x = x.astype(np.uint8)
        return x[:, :, ::-1] if encoding.startswith('bgr') else x
    raise EncodingError(f'encoding {encoding!r} is not a supported RGB input; '
                        f'supported: {list(RGB_ENCODINGS)}')


def from_rgb8(rgb: np.ndarray, encoding: str) -> np.ndarray:
    """Convert an RGB uint8 ``(H, W, 3)`` image to the channel order of ``encoding`` (bgr8/rgb8).

    Raises:
        EncodingError: unsupported output encoding or not uint8.
        ShapeError: not ``(H, W, 3)``.

    Example:
        >>> from_rgb8(np.array([[[1, 2, 3]]], np.uint8), 'bgr8').tolist()
        [[[3, 2, 1]]]
    """
    if rgb.dtype != np.uint8:
        raise EncodingError(f'from_rgb8: expected uint8, got {rgb.dtype}')
    if rgb.ndim != 3 or rgb.shape[2] != 3:
        raise ShapeError(f'from_rgb8: expected (H, W, 3), got {rgb.shape}')
    if encoding == 'rgb8':
        return rgb
    if encoding == 'bgr8':
        return np.ascontiguousarray(rgb[:, :, ::-1])
    raise EncodingError(f'output encoding {encoding!r} not supported; use one of {list(OUTPUT_ENCODINGS)}')


def check_thermal_encoding(encoding: str) -> None:
    """Raise :class:`EncodingError` unless ``encoding`` is a thermal input encoding.

    Example:
        >>> check_thermal_encoding('mono16')
    """
    if encoding not in THERMAL_ENCODINGS:
        raise EncodingError(f'thermal encoding {encoding!r} not supported; '
                            f'supported: {list(THERMAL_ENCODINGS)}')


def fill_invalid_thermal(img: np.ndarray) -> np.ndarray:
    """Replace NaN/Inf pixels of a float thermal image by its lowest finite value.

    ROS float images mark invalid pixels with NaN; AGC then shows them as the
    coldest value instead of rejecting the frame.

    Args:
        img: ``(H, W)`` thermal image; non-float input is returned unchanged.

    Returns:
        The same array when all pixels are finite, else a filled copy.

    Raises:
        ValueRangeError: a float image without any finite pixel.

    Example:
        >>> fill_invalid_thermal(np.array([[300.0, np.nan]], np.float32)).tolist()
        [[300.0, 300.0]]
    """
    if img.dtype.kind != 'f':
        return img
    finite = np.isfinite(img)
    if finite.all():
        return img
    if not finite.any():
        raise ValueRangeError(f'thermal: no finite pixel in a {img.shape[1]}x{img.shape[0]} float image')
    return np.where(finite, img, img[finite].min()).astype(img.dtype)


def thermal_input(img: np.ndarray, encoding: str) -> np.ndarray:
    """Role check + clean-up of a decoded thermal image (node and bag tools alike).

    Args:
        img: array from :func:`decode_image`.
        encoding: its encoding, one of :data:`THERMAL_ENCODINGS`.

    Returns:
        ``(H, W)`` uint8, uint16 (raw counts) or float32 (NaN filled, see
        :func:`fill_invalid_thermal`).

    Raises:
        EncodingError: not a thermal encoding.
        ValueRangeError: float image without any finite pixel.

    Example:
        >>> thermal_input(np.zeros((2, 2), np.uint16), 'mono16').dtype.name
        'uint16'
    """
    check_thermal_encoding(encoding)
    return fill_invalid_thermal(img)


def rgb_input(img: np.ndarray, encoding: str) -> np.ndarray:
    """Role check + colour order of a decoded RGB-camera image: RGB uint8 or gray.

    Raises:
        EncodingError: not one of :data:`RGB_ENCODINGS`.

    Example:
        >>> rgb_input(np.array([[[1, 2, 3]]], np.uint8), 'bgr8').tolist()
        [[[3, 2, 1]]]
    """
    if encoding not in RGB_ENCODINGS:
        raise EncodingError(f'rgb encoding {encoding!r} not supported; supported: {list(RGB_ENCODINGS)}')
    return to_rgb8(img, encoding)
