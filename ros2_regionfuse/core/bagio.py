"""ROS-free reading and writing of ROS 2 bags (mcap) with the ``rosbags`` library.

Messages here are ``rosbags`` dataclasses (not rclpy messages): a typestore
for ROS 2 Kilted plus this package's ``FusionStatus``, registered from the
text of ``msg/FusionStatus.msg``. Images convert to and from numpy with the
same rules as the node (:mod:`ros2_regionfuse.core.encodings`).

Times are integer nanoseconds throughout (``stamp_ns``: header stamps,
``log_ns``: the bag's receive/log time).
"""
from __future__ import annotations

import json
import logging
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np

from .checks import EncodingError, RegionFuseError
from .encodings import decode_image, encode_image
from .paths import PACKAGE_DIR

log = logging.getLogger(__name__)

IMAGE = 'sensor_msgs/msg/Image'
CAMERA_INFO = 'sensor_msgs/msg/CameraInfo'
DIAGNOSTIC_ARRAY = 'diagnostic_msgs/msg/DiagnosticArray'
FUSION_STATUS = 'ros2_regionfuse/msg/FusionStatus'
NS_PER_S = 1_000_000_000

_PACKAGE_ROOT = PACKAGE_DIR


class BagError(RegionFuseError, OSError):
    """A bag cannot be read or written (missing, corrupt, unknown topic or type)."""


def fusion_status_msg_file() -> Path:
    """Locate ``FusionStatus.msg``: the source tree's ``msg/`` or the installed package share.

    Raises:
        BagError: the definition is not found.
    """
    candidates = [_PACKAGE_ROOT.parent / 'msg' / 'FusionStatus.msg']
    try:  # colcon install: <prefix>/share/ros2_regionfuse/msg/FusionStatus.msg
        from ament_index_python.packages import get_package_share_directory
        candidates.append(Path(get_package_share_directory('ros2_regionfuse')) / 'msg'
                          / 'FusionStatus.msg')
    except Exception:  # noqa: BLE001 - ament_index absent or package not installed
        pass
    for c in candidates:
        if c.is_file():
            return c
    raise BagError(f'FusionStatus.msg not found (looked in {[str(c) for c in candidates]})')


@lru_cache(maxsize=1)
def make_typestore() -> Any:
    """A rosbags typestore for ROS 2 Kilted with ``ros2_regionfuse/msg/FusionStatus`` registered.

    Returns:
        ``rosbags.typesys.store.Typestore`` (cached: one per process).
    """
    from rosbags.typesys import Stores, get_types_from_msg, get_typestore
    ts = get_typestore(Stores.ROS2_KILTED)
    ts.register(get_types_from_msg(fusion_status_msg_file().read_text(), FUSION_STATUS))
    return ts


# ---------------------------------------------------------------------------
# Message construction and conversion (rosbags dataclasses)
# ---------------------------------------------------------------------------

def ns_to_time(stamp_ns: int) -> Any:
    """Integer nanoseconds -> ``builtin_interfaces/msg/Time``.

    Example:
        >>> t = ns_to_time(1_500_000_001)
        >>> (t.sec, t.nanosec)
        (1, 500000001)
    """
    time_cls = make_typestore().types['builtin_interfaces/msg/Time']
    sec, nsec = divmod(int(stamp_ns), NS_PER_S)
    return time_cls(sec=sec, nanosec=nsec)


def time_to_ns(stamp: Any) -> int:
    """``builtin_interfaces/msg/Time`` (any object with ``sec``/``nanosec``) -> nanoseconds."""
    return int(stamp.sec) * NS_PER_S + int(stamp.nanosec)


def header(stamp_ns: int, frame_id: str) -> Any:
    """A ``std_msgs/msg/Header``."""
    return make_typestore().types['std_msgs/msg/Header'](stamp=ns_to_time(stamp_ns), frame_id=frame_id)


def image_msg(img: np.ndarray, encoding: str, stamp_ns: int, frame_id: str) -> Any:
    """Build a ``sensor_msgs/msg/Image`` from an array.

    Args:
        img: ``(H, W)`` or ``(H, W, C)`` whose dtype/channels match ``encoding``
            (e.g. uint16 ``(H, W)`` for ``mono16``, uint8 BGR for ``bgr8``,
            float32 ``(H, W, 2)`` for ``32FC2``).
        encoding: ROS encoding.
        stamp_ns: header stamp (ns).
        frame_id: header frame id.

    Raises:
        EncodingError, ShapeError: array and encoding disagree.
    """
    data, step, big = encode_image(img, encoding)
    return make_typestore().types[IMAGE](
        header=header(stamp_ns, frame_id), height=img.shape[0], width=img.shape[1],
        encoding=encoding, is_bigendian=big, step=step, data=data.copy())


def image_array(msg: Any, *, copy: bool = False) -> np.ndarray:
    """Decode a ``sensor_msgs/msg/Image`` (rosbags dataclass) into a numpy array.

    Returns:
        ``(H, W)`` or ``(H, W, C)`` with the encoding's dtype and channel order.

    Raises:
        EncodingError, ShapeError: unsupported encoding or inconsistent sizes.
    """
    return decode_image(msg.data, msg.height, msg.width, msg.encoding, msg.step, msg.is_bigendian,
                        copy=copy)


def camera_info_msg(stamp_ns: int, frame_id: str, width: int, height: int, k: np.ndarray,
                    d: Sequence[float] = (0.0, 0.0, 0.0, 0.0, 0.0),
                    distortion_model: str = 'plumb_bob') -> Any:
    """Build a ``sensor_msgs/msg/CameraInfo`` of an undistorted-enough pinhole camera.

    Args:
        stamp_ns: header stamp (ns).
        frame_id: optical frame id.
        width: image width (px).
        height: image height (px).
        k: ``(3, 3)`` intrinsic matrix (px).
        d: distortion coefficients of ``distortion_model``.
        distortion_model: e.g. ``plumb_bob``.

    Returns:
        CameraInfo with ``R = I`` and ``P = [K | 0]``.
    """
    k = np.asarray(k, np.float64).reshape(3, 3)
    p = np.zeros((3, 4))
    p[:, :3] = k
    types = make_typestore().types
    roi = types['sensor_msgs/msg/RegionOfInterest'](x_offset=0, y_offset=0, height=0, width=0,
                                                    do_rectify=False)
    return types[CAMERA_INFO](
        header=header(stamp_ns, frame_id), height=int(height), width=int(width),
        distortion_model=distortion_model, d=np.asarray(d, np.float64), k=k.reshape(-1),
        r=np.eye(3).reshape(-1), p=p.reshape(-1), binning_x=0, binning_y=0, roi=roi)


def fusion_status_msg(stamp_ns: int, frame_id: str, **fields: Any) -> Any:
    """Build a ``FusionStatus``; omitted numeric fields are 0, strings empty, stamps 0.

    Args:
        stamp_ns: header stamp (ns), the RGB input's.
        frame_id: header frame id, the RGB input's.
        **fields: any FusionStatus field by name; ``thermal_stamp``/``rgb_stamp``
            may be given as integer nanoseconds.

    Raises:
        BagError: unknown field name.
    """
    cls = make_typestore().types[FUSION_STATUS]
    names = [n for n in cls.__dataclass_fields__ if n != '__msgtype__']
    unknown = set(fields) - set(names)
    if unknown:
        raise BagError(f'FusionStatus has no field(s) {sorted(unknown)}')
    values: dict[str, Any] = {}
    for n in names:
        if n == 'header':
            values[n] = header(stamp_ns, frame_id)
        elif n in ('thermal_stamp', 'rgb_stamp'):
            v = fields.get(n, 0)
            values[n] = ns_to_time(v) if isinstance(v, (int, np.integer)) else v
        elif n in fields:
            values[n] = fields[n]
        else:
            ftype = cls.__dataclass_fields__[n].type
            values[n] = '' if 'str' in str(ftype) else (False if 'bool' in str(ftype) else 0)
    return cls(**values)


def message_fields(msg: Any) -> dict[str, Any]:
    """Shallow dict of a rosbags message's fields (without ``__msgtype__``)."""
    return {n: getattr(msg, n) for n in msg.__dataclass_fields__ if n != '__msgtype__'}


# ---------------------------------------------------------------------------
# Writing
# ---------------------------------------------------------------------------

class BagWriter:
    """Write a rosbag2 directory (mcap storage), adding topics on first use.

    Args:
        path: bag directory to create (must not exist).
        compress: zstd-compress the mcap chunks (readable by ``ros2 bag`` and rosbags).
        custom_data: string key/values stored in ``metadata.yaml`` (``custom_data``).

    Example:
        >>> with BagWriter(tmp / 'bag') as w:                               # doctest: +SKIP
        ...     w.write('/rgb/image_raw', image_msg(bgr, 'bgr8', t, 'rgb'), t)
    """

    def __init__(self, path: str | Path, *, compress: bool = False,
                 custom_data: dict[str, str] | None = None) -> None:
        from rosbags.rosbag2 import Writer
        from rosbags.rosbag2.enums import CompressionFormat, CompressionMode, StoragePlugin
        self.path = Path(path)
        if self.path.exists():
            raise BagError(f'{self.path} exists already; choose a new output path')
        self.typestore = make_typestore()
        self._writer = Writer(self.path, version=Writer.VERSION_LATEST,
                              storage_plugin=StoragePlugin.MCAP)
        if compress:
            self._writer.set_compression(CompressionMode.STORAGE, CompressionFormat.ZSTD)
        for k, v in (custom_data or {}).items():
            self._writer.set_custom_data(k, v)
        self._connections: dict[tuple[str, str], Any] = {}
        self._writer.open()

    def connection(self, topic: str, msgtype: str) -> Any:
        """The bag connection of ``topic`` (created on first use)."""
        key = (topic, msgtype)
        if key not in self._connections:
            self._connections[key] = self._writer.add_connection(topic, msgtype,
                                                                 typestore=self.typestore)
        return self._connections[key]

    def write(self, topic: str, msg: Any, log_ns: int) -> None:
        """Serialise and write one rosbags message at log time ``log_ns``."""
        data = self.typestore.serialize_cdr(msg, msg.__msgtype__)
        self._writer.write(self.connection(topic, msg.__msgtype__), int(log_ns), data)

    def write_raw(self, topic: str, msgtype: str, data: bytes | memoryview, log_ns: int) -> None:
        """Write already CDR-serialised bytes (e.g. received with rclpy ``raw=True``)."""
        self._writer.write(self.connection(topic, msgtype), int(log_ns), data)

    def close(self) -> None:
        """Finish the bag (writes the mcap summary and ``metadata.yaml``)."""
        if self._writer is not None:
            self._writer.close()
            self._writer = None

    def __enter__(self) -> BagWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


# ---------------------------------------------------------------------------
# Reading
# ---------------------------------------------------------------------------

@dataclass
class BagMessage:
    """One message of a bag, still serialised.

    Attributes:
        topic: topic name.
        msgtype: e.g. ``sensor_msgs/msg/Image``.
        log_ns: log (receive) time, ns.
        raw: CDR bytes, as rclpy publishes with ``raw=True``.
    """

    topic: str
    msgtype: str
    log_ns: int
    raw: bytes

    def decode(self) -> Any:
        """Deserialise into a rosbags dataclass."""
        return make_typestore().deserialize_cdr(self.raw, self.msgtype)


@dataclass(frozen=True)
class TopicSummary:
    """Type and message count of one topic in a bag."""

    msgtype: str
    count: int


def _open_reader(path: Path) -> Any:
    from rosbags.highlevel import AnyReader
    if not path.exists():
        raise BagError(f'bag {path} not found')
    try:
        reader = AnyReader([path], default_typestore=make_typestore())
        reader.open()
    except Exception as e:  # noqa: BLE001 - rosbags raises many types for corrupt bags
        raise BagError(f'cannot open bag {path}: {e}') from e
    return reader


def bag_topics(path: str | Path) -> dict[str, TopicSummary]:
    """Topics of a bag with their type and message count.

    Raises:
        BagError: missing or unreadable bag.
    """
    reader = _open_reader(Path(path))
    try:
        return {t: TopicSummary(info.msgtype or '', info.msgcount) for t, info in reader.topics.items()}
    finally:
        reader.close()


def read_messages(path: str | Path, topics: Iterable[str] | None = None) -> Iterator[BagMessage]:
    """Iterate over the messages of a bag in log-time order.

    Args:
        path: rosbag2 directory (or a single ``.mcap``/``.db3`` file).
        topics: topic names to keep; None keeps all.

    Yields:
        :class:`BagMessage`, undecoded.

    Raises:
        BagError: missing or unreadable bag, or a requested topic is absent.
    """
    reader = _open_reader(Path(path))
    try:
        conns = reader.connections
        if topics is not None:
            wanted = set(topics)
            missing = wanted - {c.topic for c in conns}
            if missing:
                raise BagError(f'bag {path} has no topic(s) {sorted(missing)}; '
                               f'it has {sorted({c.topic for c in conns})}')
            conns = [c for c in conns if c.topic in wanted]
        for conn, log_ns, raw in reader.messages(connections=conns):
            yield BagMessage(conn.topic, conn.msgtype, int(log_ns), bytes(raw))
    finally:
        reader.close()


def bag_custom_data(path: str | Path) -> dict[str, str]:
    """The ``custom_data`` key/values of a bag directory's ``metadata.yaml`` ({} if none)."""
    import yaml
    meta = Path(path) / 'metadata.yaml'
    if not meta.is_file():
        return {}
    info = yaml.safe_load(meta.read_text()).get('rosbag2_bagfile_information', {})
    return dict(info.get('custom_data') or {})


def load_json_beside(path: str | Path, name: str) -> dict[str, Any]:
    """Read ``path/name`` (JSON) if present, else {}.

    Raises:
        BagError: the file exists but is not valid JSON.
    """
    p = Path(path) / name
    if not p.is_file():
        return {}
    try:
        return json.loads(p.read_text())
    except json.JSONDecodeError as e:
        raise BagError(f'{p}: invalid JSON ({e})') from e


def check_image_msgtype(topic: str, msgtype: str) -> None:
    """Raise :class:`EncodingError` unless ``msgtype`` is ``sensor_msgs/msg/Image``."""
    if msgtype != IMAGE:
        raise EncodingError(f'topic {topic} has type {msgtype}, expected {IMAGE}')
