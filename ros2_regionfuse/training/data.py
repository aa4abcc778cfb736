"""Training data: registered IR/visible pairs from ``../shared/data/ivif``.

The evaluation splits (TNO and RoadScene ``*_didfuse_auif_test40``) are never
used for training. The data list is deterministic (sorted) and recorded in
every model card.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import torch

from ..core.checks import RegionFuseError

EVAL_SPLITS = {'TNO': 'tno_didfuse_auif_test40.txt', 'RoadScene': 'roadscene_didfuse_auif_test40.txt'}
DEFAULT_SETS = ('RoadScene', 'TNO', 'MSRS', 'LLVIP', 'M3FD')
IMG_EXT = ('.png', '.jpg', '.jpeg', '.bmp', '.tif', '.tiff')


@dataclass
class Pair:
    """One registered pair: ``ir`` ``(H, W)`` and ``vis_y`` ``(H, W)`` float32 in [0, 1]."""

    name: str
    ir: np.ndarray
    vis_y: np.ndarray


def eval_stems(root: Path, set_name: str) -> set[str]:
    """Stems of the evaluation split of ``set_name`` (empty if it has none)."""
    f = EVAL_SPLITS.get(set_name)
    if f is None or not (root / set_name / 'splits' / f).is_file():
        return set()
    return {s.strip() for s in (root / set_name / 'splits' / f).read_text().split() if s.strip()}


def list_training_files(root: Path, sets: tuple[str, ...] = DEFAULT_SETS,
                        exclude: dict[str, set[str]] | None = None) -> list[tuple[str, Path, Path]]:
    """Sorted ``(set/stem, ir_path, vi_path)`` for every training pair of ``sets``.

    Args:
        root: ``.../shared/data/ivif``.
        sets: dataset folder names.
        exclude: extra stems to leave out per set (added to the evaluation splits).
    """
    out = []
    for s in sets:
        ir_dir, vi_dir = root / s / 'ir', root / s / 'vi'
        if not ir_dir.is_dir():
            continue
        skip = eval_stems(root, s) | (exclude or {}).get(s, set())
        for f in sorted(ir_dir.iterdir()):
            if f.suffix.lower() not in IMG_EXT or f.stem in skip:
                continue
            v = vi_dir / f.name
            if v.is_file():
                out.append((f'{s}/{f.stem}', f, v))
    if not out:
        raise RegionFuseError(f'no training pairs found under {root} for sets {sets}')
    return out


def _read(path: Path, flags: int) -> np.ndarray:
    img = cv2.imread(str(path), flags)
    if img is None or img.size == 0:
        raise RegionFuseError(f'cannot read image {path}')
    return img


def load_pair(ir_path: Path, vi_path: Path, max_side: int = 640) -> tuple[np.ndarray, np.ndarray]:
    """Read a pair as float32 ``(ir, vis_y)`` in [0, 1], downscaled so max(H, W) <= ``max_side``."""
    ir = _read(ir_path, cv2.IMREAD_GRAYSCALE).astype(np.float32) / 255.0
    vi = _read(vi_path, cv2.IMREAD_COLOR)
    y = cv2.cvtColor(vi, cv2.COLOR_BGR2YCrCb)[:, :, 0].astype(np.float32) / 255.0
    if ir.shape != y.shape:
        ir = cv2.resize(ir, (y.shape[1], y.shape[0]), interpolation=cv2.INTER_AREA)
    s = max(y.shape) / max_side
    if s > 1:
        size = (round(y.shape[1] / s), round(y.shape[0] / s))
        ir = cv2.resize(ir, size, interpolation=cv2.INTER_AREA)
        y = cv2.resize(y, size, interpolation=cv2.INTER_AREA)
    return ir, y


def load_pairs(root: Path, sets: tuple[str, ...] = DEFAULT_SETS, max_side: int = 640,
               exclude: dict[str, set[str]] | None = None) -> list[Pair]:
    """Load every training pair of ``sets`` into memory (see :func:`list_training_files`)."""
    return [Pair(n, *load_pair(i, v, max_side)) for n, i, v in list_training_files(root, sets, exclude)]


class PatchSampler:
    """Random aligned patches ``(B, 1, P, P)`` of IR and visible Y, with flips and scale jitter.

    Sampling uses its own seeded generator, so a run is reproducible.
    """

    def __init__(self, pairs: list[Pair], patch: int, seed: int) -> None:
        self.pairs, self.patch = pairs, patch
        self.rng = np.random.default_rng(seed)
        # Sample pairs proportionally to sqrt(area): big images give more patches, not all of them.
        area = np.array([p.ir.size for p in pairs], np.float64)
        self.p = np.sqrt(area) / np.sqrt(area).sum()

    def _crop(self, pr: Pair) -> tuple[np.ndarray, np.ndarray]:
        ps = self.patch
        ir, y = pr.ir, pr.vis_y
        scale = self.rng.uniform(0.6, 1.0)
        h, w = ir.shape
        if min(h, w) * scale < ps:
            scale = ps / min(h, w)
        if abs(scale - 1.0) > 1e-3:
            size = (max(ps, round(w * scale)), max(ps, round(h * scale)))
            ir = cv2.resize(ir, size, interpolation=cv2.INTER_AREA)
            y = cv2.resize(y, size, interpolation=cv2.INTER_AREA)
        h, w = ir.shape
        r0 = int(self.rng.integers(0, h - ps + 1))
        c0 = int(self.rng.integers(0, w - ps + 1))
        ir, y = ir[r0:r0 + ps, c0:c0 + ps], y[r0:r0 + ps, c0:c0 + ps]
        if self.rng.random() < 0.5:
            ir, y = ir[:, ::-1], y[:, ::-1]
        return ir, y

    def batch(self, n: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Return ``(ir, vis_y)``, each ``(n, 1, P, P)`` float32 in [0, 1]."""
        idx = self.rng.choice(len(self.pairs), size=n, p=self.p)
        crops = [self._crop(self.pairs[i]) for i in idx]
        ir = torch.from_numpy(np.stack([np.ascontiguousarray(c[0]) for c in crops])[:, None])
        y = torch.from_numpy(np.stack([np.ascontiguousarray(c[1]) for c in crops])[:, None])
        return ir, y
