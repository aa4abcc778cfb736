"""Image files: reading (gray or RGB), atomic writing, and thermal/RGB pair matching.

Colour order in memory is **RGB** everywhere in the package; OpenCV's BGR is
confined to this module. Every failure raises
:class:`~ros2_regionfuse.core.checks.ImageIOError` (or another
:class:`~ros2_regionfuse.core.checks.RegionFuseError`) whose message names the file.
Writes go to a hidden temporary file in the target folder and are renamed into
place, so an interrupted run never leaves a half-written file under the final name.
"""
from __future__ import annotations

import io
import os
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from . import convert
from .checks import ConfigError, ImageIOError, ValueRangeError, check_image

IMAGE_EXTENSIONS: tuple[str, ...] = ('.png', '.jpg', '.jpeg', '.bmp', '.tif', '.tiff')
"""File extensions (lower case) recognised as images when scanning folders."""

_U16_MAX = 65535.0
_U8_MAX = 255.0


@dataclass(frozen=True)
class ImagePair:
    """One thermal/RGB file pair.

    Attributes:
        stem: name used for outputs (the RGB file's stem; the common stem in folders).
        thermal: path of the thermal image.
        rgb: path of the RGB (visible) image.
    """

    stem: str
    thermal: Path
    rgb: Path


# ---------------------------------------------------------------------------
# reading
# ---------------------------------------------------------------------------

def _decode(path: str | Path) -> np.ndarray:
    """Read and decode ``path`` unchanged (native dtype and channels, BGR order).

    Raises:
        ImageIOError: missing, a folder, unreadable, empty or not decodable.
    """
    p = Path(path)
    if not p.exists():
        raise ImageIOError(f'{p}: file not found')
    if not p.is_file():
        raise ImageIOError(f'{p}: not a file')
    try:
        data = np.fromfile(p, dtype=np.uint8)
    except OSError as e:
        raise ImageIOError(f'{p}: cannot read ({e.strerror or e})') from e
    if data.size == 0:
        raise ImageIOError(f'{p}: empty file (0 bytes)')
    try:
        img = cv2.imdecode(data, cv2.IMREAD_UNCHANGED)
    except cv2.error as e:
        raise ImageIOError(f'{p}: not a readable image ({str(e).strip().splitlines()[-1]})') from e
    if img is None:
        raise ImageIOError(f'{p}: not a readable image (unknown format or truncated data)')
    if img.size == 0 or img.ndim < 2 or img.shape[0] == 0 or img.shape[1] == 0:
        raise ImageIOError(f'{p}: empty image (shape {img.shape})')
    if img.dtype == np.float64:
        img = img.astype(np.float32)
    return img


def _drop_alpha(img: np.ndarray) -> np.ndarray:
    """``(H, W, 4)`` BGRA -> ``(H, W, 3)`` BGR; other shapes unchanged."""
    if img.ndim == 3 and img.shape[2] == 4:
        return img[:, :, :3]
    return img


def _bgr_to_gray(img: np.ndarray) -> np.ndarray:
    """Colour BGR -> gray with BT.601 luma (as ``cv2.COLOR_BGR2GRAY``); equal channels copied exactly."""
    if img.ndim == 2:
        return img
    if img.shape[2] == 1:
        return img[:, :, 0]
    if np.array_equal(img[:, :, 0], img[:, :, 1]) and np.array_equal(img[:, :, 0], img[:, :, 2]):
        return np.ascontiguousarray(img[:, :, 0])
    return cv2.cvtColor(np.ascontiguousarray(img), cv2.COLOR_BGR2GRAY)


def _to_uint8(img: np.ndarray, path: Path) -> np.ndarray:
    """uint8 unchanged; uint16 scaled by 255/65535; float must be in [0, 1] (scaled by 255).

    Raises:
        ValueRangeError: float data outside [0, 1] (the file is named).
        ImageIOError: other dtypes.
    """
    if img.dtype == np.uint8:
        return img
    if img.dtype == np.uint16:
        return convert.unit_to_uint8(img.astype(np.float32) * np.float32(1.0 / _U16_MAX))
    if img.dtype.kind == 'f':
        lo, hi = float(img.min()), float(img.max())
        if lo < 0.0 or hi > 1.0:
            raise ValueRangeError(f'{path}: float image values in [{lo:g}, {hi:g}], '
                                  f'expected [0, 1] for an 8-bit conversion')
        return convert.unit_to_uint8(img)
    raise ImageIOError(f'{path}: unsupported pixel type {img.dtype}')


def read_gray(path: str | Path, *, as_uint8: bool = False) -> np.ndarray:
    """Read an image file as a single-channel image.

    Colour files (e.g. thermal images stored as 3-channel) become gray with the
    BT.601 luma (as ``cv2.COLOR_BGR2GRAY``; a file with three equal channels
    gives that channel exactly); an alpha channel is dropped.

    Args:
        path: image file (png, jpg, bmp, tif, ...).
        as_uint8: convert to uint8 (uint16 scaled by 255/65535, float in [0, 1]
            scaled by 255); otherwise the file's dtype is kept.

    Returns:
        ``(H, W)`` uint8, uint16 or float32 (uint8 with ``as_uint8``).

    Raises:
        ImageIOError: missing, unreadable, empty or undecodable file.
        ValueRangeError: NaN/Inf in a float image, or a float image outside
            [0, 1] with ``as_uint8``; the message names the file.

    Example:
        >>> read_gray('/nonexistent.png')
        Traceback (most recent call last):
        ...
        ros2_regionfuse.core.checks.ImageIOError: /nonexistent.png: file not found
    """
    p = Path(path)
    img = _bgr_to_gray(_drop_alpha(_decode(p)))
    img = check_image(img, str(p), channels=(1,))
    return _to_uint8(img, p) if as_uint8 else img


def read_rgb(path: str | Path) -> np.ndarray:
    """Read an image file as 8-bit RGB (or gray when the file is gray).

    Args:
        path: image file.

    Returns:
        ``(H, W, 3)`` uint8 in **RGB** order, or ``(H, W)`` uint8 for a gray
        file. 16-bit files are scaled by 255/65535; alpha is dropped.

    Raises:
        ImageIOError: missing, unreadable, empty or undecodable file.
        ValueRangeError: NaN/Inf or out-of-range values in a float image.
    """
    p = Path(path)
    img = _drop_alpha(_decode(p))
    if img.ndim == 3 and img.shape[2] == 1:
        img = img[:, :, 0]
    img = check_image(img, str(p), channels=(1, 3))
    img = _to_uint8(img, p)
    if img.ndim == 3:
        img = cv2.cvtColor(img, cv2.COLOR_BGR2RGB)
    return img


def read_fused_gray(path: str | Path) -> np.ndarray:
    """Read a fused image for scoring: colour -> BT.601 luma, result ``(H, W)`` uint8.

    Same rules as :func:`read_gray` with ``as_uint8=True``.
    """
    return read_gray(path, as_uint8=True)


# ---------------------------------------------------------------------------
# writing
# ---------------------------------------------------------------------------

def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    """Write ``data`` to ``path`` through a hidden temporary file and a rename.

    The parent folder is created. On any failure the temporary file is removed
    and the final path is left as it was.

    Raises:
        ImageIOError: the file cannot be written (message names it).
    """
    p = Path(path)
    tmp = p.with_name(f'.{p.name}.{os.getpid()}.tmp')
    try:
        p.parent.mkdir(parents=True, exist_ok=True)
        with open(tmp, 'wb') as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, p)
    except BaseException as e:  # also Ctrl-C: never leave the temporary file behind
        _remove_quietly(tmp)
        if isinstance(e, OSError):
            raise ImageIOError(f'{p}: cannot write ({e.strerror or e})') from e
        raise


def _remove_quietly(path: Path) -> None:
    """Delete ``path`` if it exists; errors (e.g. its parent is not a folder) are ignored."""
    try:
        path.unlink()
    except OSError:
        pass


def encode_png(img: np.ndarray, name: str = 'image') -> bytes:
    """Encode an RGB or gray array as PNG bytes.

    Args:
        img: ``(H, W)`` or ``(H, W, 3)`` RGB, uint8 or uint16.
        name: used in error messages.

    Raises:
        ShapeError, ImageIOError: wrong shape or dtype.
    """
    img = check_image(img, name, channels=(1, 3))
    if img.dtype not in (np.uint8, np.uint16):
        raise ImageIOError(f'{name}: PNG needs uint8 or uint16, got {img.dtype}')
    if img.ndim == 3:
        img = cv2.cvtColor(np.ascontiguousarray(img), cv2.COLOR_RGB2BGR)
    ok, buf = cv2.imencode('.png', np.ascontiguousarray(img))
    if not ok:
        raise ImageIOError(f'{name}: PNG encoding failed')
    return buf.tobytes()


def write_png(path: str | Path, img: np.ndarray) -> None:
    """Write ``img`` (``(H, W)`` gray or ``(H, W, 3)`` RGB, uint8/uint16) as PNG, atomically.

    Raises:
        ImageIOError: cannot encode or write (message names the file).
    """
    atomic_write_bytes(path, encode_png(img, str(path)))


def encode_npy(arr: np.ndarray) -> bytes:
    """Serialise ``arr`` in ``.npy`` format (no pickle)."""
    buf = io.BytesIO()
    np.save(buf, np.ascontiguousarray(arr), allow_pickle=False)
    return buf.getvalue()


def write_npy(path: str | Path, arr: np.ndarray) -> None:
    """Save ``arr`` as ``.npy`` (no pickle), atomically."""
    atomic_write_bytes(path, encode_npy(arr))


# ---------------------------------------------------------------------------
# pairing
# ---------------------------------------------------------------------------

def is_image_file(path: Path) -> bool:
    """True for a visible (not dot-prefixed) file with an extension of :data:`IMAGE_EXTENSIONS`."""
    return path.suffix.lower() in IMAGE_EXTENSIONS and not path.name.startswith('.')


def image_files(folder: str | Path) -> dict[str, Path]:
    """Map file stem -> path for the image files directly inside ``folder`` (no recursion).

    Raises:
        ImageIOError: ``folder`` is not a folder, or two files share a stem
            (e.g. ``a.png`` and ``a.jpg``), which would make pairing ambiguous.
    """
    d = Path(folder)
    if not d.is_dir():
        raise ImageIOError(f'{d}: not a folder')
    out: dict[str, Path] = {}
    for p in sorted(d.iterdir()):
        if not p.is_file() or not is_image_file(p):
            continue
        if p.stem in out:
            raise ImageIOError(f'{d}: two images share the stem {p.stem!r}: {out[p.stem].name}, {p.name}')
        out[p.stem] = p
    return out


def _as_mapping(path: Path, what: str) -> dict[str, Path]:
    if path.is_dir():
        return image_files(path)
    if path.is_file():
        return {path.stem: path}
    raise ImageIOError(f'{what}: {path} does not exist')


def match_pairs(thermal: str | Path, rgb: str | Path) -> tuple[list[ImagePair], list[Path]]:
    """Pair thermal and RGB images given as two files, two folders, or a file and a folder.

    Two files always form one pair (named after the RGB file). Otherwise files
    are matched by stem (``x.png`` pairs with ``x.jpg``) over
    :data:`IMAGE_EXTENSIONS`; files without a partner are returned, not dropped.

    Args:
        thermal: thermal image file or folder.
        rgb: RGB image file or folder.

    Returns:
        ``(pairs sorted by stem, unmatched files sorted by path)``.

    Raises:
        ImageIOError: a path does not exist, or ambiguous stems in a folder.
    """
    t, r = Path(thermal), Path(rgb)
    if t.is_file() and r.is_file():
        return [ImagePair(r.stem, t, r)], []
    tm = _as_mapping(t, 'thermal')
    rm = _as_mapping(r, 'rgb')
    pairs = [ImagePair(s, tm[s], rm[s]) for s in sorted(set(tm) & set(rm))]
    unmatched = sorted([tm[s] for s in set(tm) - set(rm)] + [rm[s] for s in set(rm) - set(tm)])
    return pairs, unmatched


def read_stem_list(path: str | Path) -> list[str]:
    """Read a split file: one image name per line (``tno01`` or ``FLIR_00977.jpg``) -> stems.

    Blank lines and lines starting with ``#`` are ignored; a recognised image
    extension is removed, other dots are kept (``a.b`` stays ``a.b``).

    Raises:
        ConfigError: the file is missing, unreadable or lists no name.
    """
    p = Path(path)
    try:
        lines = p.read_text().splitlines()
    except (OSError, UnicodeDecodeError) as e:
        raise ConfigError(f'{p}: cannot read the list of images ({e})') from e
    stems = []
    for line in lines:
        name = line.strip()
        if not name or name.startswith('#'):
            continue
        q = Path(name)
        stems.append(q.stem if q.suffix.lower() in IMAGE_EXTENSIONS else q.name)
    if not stems:
        raise ConfigError(f'{p}: lists no image names')
    return stems


def restrict_pairs(pairs: Iterable[ImagePair], stems: list[str]) -> tuple[list[ImagePair], list[str]]:
    """Keep the pairs whose stem is in ``stems`` (in the list's order).

    Returns:
        ``(kept pairs, stems of the list that have no pair)``.
    """
    by_stem = {p.stem: p for p in pairs}
    kept = [by_stem[s] for s in dict.fromkeys(stems) if s in by_stem]
    missing = [s for s in dict.fromkeys(stems) if s not in by_stem]
    return kept, missing

