"""Image file reading/writing and thermal/RGB pair matching."""
from __future__ import annotations

import os
from pathlib import Path

import cv2
import numpy as np
import pytest

from ros2_regionfuse.core import imageio
from ros2_regionfuse.core.checks import ConfigError, ImageIOError, RegionFuseError, ValueRangeError


def _touch_png(path: Path, img: np.ndarray) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    assert cv2.imwrite(str(path), img)
    return path


# ---------------------------------------------------------------------------
# reading
# ---------------------------------------------------------------------------

def test_read_rgb_returns_rgb_order(tmp_path):
    bgr = np.zeros((4, 5, 3), np.uint8)
    bgr[..., 0] = 10  # blue
    bgr[..., 2] = 200  # red
    p = _touch_png(tmp_path / 'c.png', bgr)
    rgb = imageio.read_rgb(p)
    assert rgb.shape == (4, 5, 3) and rgb.dtype == np.uint8
    assert (rgb[..., 0] == 200).all() and (rgb[..., 2] == 10).all()


def test_read_rgb_gray_file_gives_2d_and_16bit_scaled(tmp_path):
    g = _touch_png(tmp_path / 'g.png', np.full((3, 4), 77, np.uint8))
    assert imageio.read_rgb(g).shape == (3, 4)
    u16 = np.full((3, 4, 3), 65535, np.uint16)
    u16[0, 0] = (0, 257 * 100, 65535)
    p = _touch_png(tmp_path / 'c16.png', u16)
    out = imageio.read_rgb(p)
    assert out.dtype == np.uint8
    assert out[0, 0].tolist() == [255, 100, 0]  # RGB order of BGR (0, 100, 255)
    assert (out[1:] == 255).all()


def test_read_gray_keeps_16bit_and_converts_colour_with_bt601(tmp_path):
    raw = (np.arange(12, dtype=np.uint16) * 5000).reshape(3, 4)
    p16 = _touch_png(tmp_path / 't16.png', raw)
    out = imageio.read_gray(p16)
    assert out.dtype == np.uint16 and np.array_equal(out, raw)
    assert np.array_equal(imageio.read_gray(p16, as_uint8=True),
                          np.round(raw / 257.0).astype(np.uint8))
    bgr = np.zeros((2, 2, 3), np.uint8)
    bgr[..., 1] = 200  # pure green
    pc = _touch_png(tmp_path / 'c.png', bgr)
    assert imageio.read_gray(pc).tolist() == [[117, 117], [117, 117]]  # 0.587 * 200 = 117.4
    same = np.dstack([np.arange(6, dtype=np.uint8).reshape(2, 3) * 40] * 3)
    ps = _touch_png(tmp_path / 's.png', same)
    assert np.array_equal(imageio.read_gray(ps), same[..., 0])  # 3 equal channels: exact


def test_read_gray_float_tiff(tmp_path):
    t = (np.arange(6, dtype=np.float32).reshape(2, 3) + 290.0)
    p = tmp_path / 'k.tiff'
    assert cv2.imwrite(str(p), t)
    out = imageio.read_gray(p)
    assert out.dtype == np.float32 and np.allclose(out, t)
    with pytest.raises(ValueRangeError, match='k.tiff'):
        imageio.read_gray(p, as_uint8=True)


@pytest.mark.parametrize('content,match', [
    (b'', 'empty file'),
    (b'this is not an image' * 5, 'not a readable image'),
])
def test_unreadable_files_name_the_file(tmp_path, content, match):
    p = tmp_path / 'bad.png'
    p.write_bytes(content)
    for reader in (imageio.read_gray, imageio.read_rgb):
        with pytest.raises(ImageIOError, match=match) as ei:
            reader(p)
        assert str(p) in str(ei.value)
        assert isinstance(ei.value, RegionFuseError)


def test_truncated_and_missing_files(tmp_path):
    good = _touch_png(tmp_path / 'g.png', np.random.default_rng(0).integers(0, 255, (40, 40, 3), np.uint8))
    data = good.read_bytes()
    trunc = tmp_path / 'trunc.png'
    trunc.write_bytes(data[: len(data) // 2])
    with pytest.raises(ImageIOError, match='trunc.png'):
        imageio.read_rgb(trunc)
    with pytest.raises(ImageIOError, match='file not found'):
        imageio.read_gray(tmp_path / 'nope.png')
    with pytest.raises(ImageIOError, match='not a file'):
        imageio.read_gray(tmp_path)


def test_nan_in_float_tiff_names_file(tmp_path):
    t = np.ones((4, 4), np.float32)
    t[1, 2] = np.nan
    p = tmp_path / 'nan.tiff'
    assert cv2.imwrite(str(p), t)
    with pytest.raises(ValueRangeError, match=r'nan\.tiff: 1 NaN'):
        imageio.read_gray(p)


# ---------------------------------------------------------------------------
# writing
# ---------------------------------------------------------------------------

def test_write_png_roundtrip_rgb_gray_16bit(tmp_path):
    rng = np.random.default_rng(3)
    rgb = rng.integers(0, 256, (7, 9, 3), np.uint8)
    imageio.write_png(tmp_path / 'sub' / 'a.png', rgb)
    assert np.array_equal(imageio.read_rgb(tmp_path / 'sub' / 'a.png'), rgb)
    g16 = rng.integers(0, 65536, (5, 6), np.uint16)
    imageio.write_png(tmp_path / 'b.png', g16)
    assert np.array_equal(imageio.read_gray(tmp_path / 'b.png'), g16)
    assert sorted(p.name for p in tmp_path.rglob('*')) == ['a.png', 'b.png', 'sub']  # no temp left


def test_write_failure_leaves_nothing(tmp_path):
    with pytest.raises(ImageIOError, match='PNG needs uint8'):
        imageio.write_png(tmp_path / 'f.png', np.zeros((3, 3), np.float32))
    assert list(tmp_path.iterdir()) == []
    blocker = tmp_path / 'afile'
    blocker.write_text('x')
    with pytest.raises(ImageIOError, match='cannot write'):
        imageio.write_png(blocker / 'x.png', np.zeros((3, 3), np.uint8))  # parent is a file
    assert sorted(p.name for p in tmp_path.iterdir()) == ['afile']


def test_write_replaces_atomically(tmp_path, monkeypatch):
    target = tmp_path / 'out.png'
    imageio.write_png(target, np.full((3, 3), 5, np.uint8))
    before = target.read_bytes()

    def boom(src, dst):
        raise OSError(28, 'No space left on device')

    monkeypatch.setattr(os, 'replace', boom)
    with pytest.raises(ImageIOError, match='No space left'):
        imageio.write_png(target, np.full((3, 3), 9, np.uint8))
    assert target.read_bytes() == before  # old file intact
    assert [p.name for p in tmp_path.iterdir()] == ['out.png']  # temp removed


def test_write_npy_roundtrip(tmp_path):
    a = np.arange(24, dtype=np.float32).reshape(2, 3, 4)
    imageio.write_npy(tmp_path / 'a.npy', a)
    b = np.load(tmp_path / 'a.npy', allow_pickle=False)
    assert b.dtype == np.float32 and np.array_equal(a, b)


# ---------------------------------------------------------------------------
# pairing
# ---------------------------------------------------------------------------

def _tree(tmp_path: Path, names: dict[str, list[str]]) -> None:
    for folder, files in names.items():
        for f in files:
            p = tmp_path / folder / f
            p.parent.mkdir(parents=True, exist_ok=True)
            p.write_bytes(b'')


def test_match_folders_by_stem_any_extension(tmp_path):
    _tree(tmp_path, {'ir': ['a.png', 'b.jpg', 'c.TIF', 'only_ir.bmp', 'notes.txt', '.hidden.png'],
                     'vi': ['a.jpeg', 'b.png', 'c.tiff', 'only_vi.png']})
    (tmp_path / 'ir' / 'sub').mkdir()
    pairs, unmatched = imageio.match_pairs(tmp_path / 'ir', tmp_path / 'vi')
    assert [p.stem for p in pairs] == ['a', 'b', 'c']
    assert pairs[0].thermal.name == 'a.png' and pairs[0].rgb.name == 'a.jpeg'
    assert pairs[2].thermal.name == 'c.TIF'
    assert [u.name for u in unmatched] == ['only_ir.bmp', 'only_vi.png']


def test_match_two_files_and_file_with_folder(tmp_path):
    _tree(tmp_path, {'ir': ['x.png', 'y.png'], 'vi': ['y.jpg']})
    pairs, unmatched = imageio.match_pairs(tmp_path / 'ir' / 'x.png', tmp_path / 'vi' / 'y.jpg')
    assert [(p.stem, p.thermal.name, p.rgb.name) for p in pairs] == [('y', 'x.png', 'y.jpg')]
    assert unmatched == []
    pairs, unmatched = imageio.match_pairs(tmp_path / 'ir' / 'y.png', tmp_path / 'vi')
    assert [p.stem for p in pairs] == ['y'] and unmatched == []
    pairs, unmatched = imageio.match_pairs(tmp_path / 'ir' / 'x.png', tmp_path / 'vi')
    assert pairs == [] and [u.name for u in unmatched] == ['x.png', 'y.jpg']


def test_match_errors(tmp_path):
    _tree(tmp_path, {'ir': ['a.png', 'a.jpg'], 'vi': ['a.png']})
    with pytest.raises(ImageIOError, match="share the stem 'a'"):
        imageio.match_pairs(tmp_path / 'ir', tmp_path / 'vi')
    with pytest.raises(ImageIOError, match='thermal: .*missing does not exist'):
        imageio.match_pairs(tmp_path / 'missing', tmp_path / 'vi')


def test_stem_list_and_restrict(tmp_path):
    lst = tmp_path / 'split.txt'
    lst.write_text('# comment\ntno01\n\nFLIR_00977.jpg\nname.with.dots\ntno01\n')
    stems = imageio.read_stem_list(lst)
    assert stems == ['tno01', 'FLIR_00977', 'name.with.dots', 'tno01']
    pairs = [imageio.ImagePair(s, Path(f'{s}.png'), Path(f'{s}.png')) for s in ('FLIR_00977', 'tno01', 'zz')]
    kept, missing = imageio.restrict_pairs(pairs, stems)
    assert [p.stem for p in kept] == ['tno01', 'FLIR_00977'] and missing == ['name.with.dots']
    empty = tmp_path / 'empty.txt'
    empty.write_text('\n# nothing\n')
    with pytest.raises(ConfigError, match='lists no image names'):
        imageio.read_stem_list(empty)
    with pytest.raises(ConfigError, match='cannot read'):
        imageio.read_stem_list(tmp_path / 'absent.txt')


def test_committed_test_data_pairs(test_data):
    pairs, unmatched = imageio.match_pairs(test_data / 'ir', test_data / 'vi')
    assert len(pairs) == 3 and unmatched == []
    for p in pairs:
        ir = imageio.read_gray(p.thermal)
        vi = imageio.read_rgb(p.rgb)
        assert ir.ndim == 2 and ir.dtype == np.uint8
        assert vi.shape[:2] == ir.shape and vi.dtype == np.uint8
    total = sum(f.stat().st_size for f in test_data.rglob('*') if f.is_file())
    assert total < 300 * 1024
