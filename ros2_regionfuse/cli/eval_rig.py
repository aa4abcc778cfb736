r"""``regionfuse eval-registration --mode rig``: rig-range misalignments through the shipped pipeline.

Each aligned pair's thermal image is deformed by seeded misalignments drawn
from the range a coarsely mounted rig produces
(:mod:`ros2_regionfuse.training.rig_misalignment`: translation +-40 px,
rotation +-8 deg, scale 0.9-1.1, anisotropic scale and shear +-3 %, a smooth
local field of 2-6 px, at 640 px width), zero outside the thermal frame. The
reference is the shipped pipeline's fusion of the aligned pair, uncorrected
(its contrast stage included). Methods, each ending in the shipped pipeline:

* ``none``: the deformed pair, corrector off;
* ``corrector``: the deformed pair with the shipped defaults (each frame cold:
  the warm start is reset, frames are independent);
* ``global``: :func:`~ros2_regionfuse.core.registration.register` alone, the thermal
  image warped by its estimate (edges extended) and fused again, no gate;
* ``classical``: OpenCV register-then-fuse: DIS optical flow on normalised
  gradient images with an NCC translation start, a RANSAC affine fit to the
  flow, ECC affine refinement (:func:`classical_register`);
* ``oracle``: the deformed thermal image warped by the exact inverse field and
  fused again (a bound);
* ``oracle_scene``: the same warped instead by the exact field composed with the
  registration's estimate on the aligned pair (:func:`consistent_flow`): what a
  method that registers exactly to the scene, as the estimator sees it on the
  aligned pair, scores against the dataset's reference (a bound for the corrector
  where the reference pairs are themselves misregistered).

Per set and method: the share of the misalignment error removed
(``1 - sum MSE / sum MSE_none`` over frames, RGB output in [0, 1]) over the
full frame and inside the valid region (output pixels whose true thermal
source lies inside the thermal frame), the flow end-point error against the
exact field on valid pixels (px and % of the applied mean displacement), the
frames made worse than uncorrected, M's ROC AUC against the uncorrected
fusion's error (``|F_raw - F_ref| > 0.05`` where the true displacement exceeds
1 px; corrector only) and the milliseconds per frame (registration and
warp; the corrector: its share of the pipeline's time). On the aligned pairs:
the PSNR of the corrector's output against the uncorrected fusion (identity
case) and how far the global estimate moves the thermal image (reference
quality: a well registered set moves by well under a pixel).

Example:
    regionfuse eval-registration --mode rig --json docs/bench/eval-registration-rig-cpu2.json
"""
from __future__ import annotations

import argparse
import math
import sys
import time
import zlib
from dataclasses import dataclass, field, replace
from pathlib import Path

import cv2
import numpy as np
from tqdm import tqdm

from ..core import convert, profiling
from ..core import registration as reg_mod
from ..core.checks import ConfigError
from ..core.config import PipelineConfig
from ..core.imageio import read_gray, read_rgb
from ..inference.pipeline import FusionPipeline
from ..models.register_refuse import warp_by
from ..training.rig_misalignment import (
    RigRange,
    apply_zero_padded,
    displacement,
    exact_flow,
    sample_points,
    sample_rig,
)
from .fuse import load_config_file

METHODS = ('none', 'corrector', 'global', 'classical', 'oracle', 'oracle_scene')
M_ERROR = 0.05        # |F_raw - F_ref| above which a pixel counts as wrong (AUC labels)
M_MIN_SHIFT = 1.0     # px: true displacement above which a wrong pixel is misregistration
NCC_RADIUS_PX = 64      # translation search radius of the baseline's start (px at 640 width)
MAX_CORNER_MOVE = 0.25   # share of the larger side a corner may move (a fit beyond diverged)
ECC_CRITERIA = (cv2.TERM_CRITERIA_EPS | cv2.TERM_CRITERIA_COUNT, 50, 1e-5)


@dataclass(frozen=True)
class PairSource:
    """One evaluation set: thermal and visible files of aligned pairs, and the size to use."""

    name: str
    role: str
    pairs: tuple[tuple[Path, Path], ...]
    size: tuple[int, int] | None = None   # (width, height) to resize to; None = as stored


def dev_sets(root: Path) -> list[PairSource]:
    """The benchmark's sets under ``root`` (``.../data/ivif``): LLVIP test, MSRS, RoadScene test40.

    Raises:
        ConfigError: a set's folders or split file are missing.
    """
    def need(p: Path) -> Path:
        if not p.exists():
            raise ConfigError(f'eval-registration: {p} not found (--data-root points at .../data/ivif)')
        return p
    llvip = need(root / 'LLVIP')
    names = need(llvip / 'splits' / 'test.txt').read_text().split()
    sets = [PairSource('LLVIP test', 'primary', tuple((llvip / 'ir' / n, llvip / 'vi' / n) for n in names),
                       (640, 512))]
    msrs = need(root / 'MSRS')
    sets.append(PairSource('MSRS', 'primary', tuple(
        (p, msrs / 'vi' / p.name) for p in sorted(need(msrs / 'ir').iterdir()) if p.is_file())))
    rs = root / 'RoadScene'
    split = rs / 'splits' / 'roadscene_didfuse_auif_test40.txt'
    if split.is_file():
        stems = [Path(n).stem for n in split.read_text().split()]
        ir = {p.stem: p for p in (rs / 'ir').iterdir()}
        vi = {p.stem: p for p in (rs / 'vi').iterdir()}
        sets.append(PairSource('RoadScene test40', 'secondary', tuple(
            (ir[s], vi[s]) for s in stems if s in ir and s in vi)))
    return sets


def _load(thermal: Path, visible: Path, size: tuple[int, int] | None) -> tuple[np.ndarray, np.ndarray]:
    th = read_gray(thermal, as_uint8=True)
    rgb = read_rgb(visible)
    if size is None:
        size = (rgb.shape[1], rgb.shape[0])
    if rgb.shape[1::-1] != size:
        rgb = cv2.resize(rgb, size, interpolation=cv2.INTER_AREA)
    if th.shape[::-1] != size:
        th = cv2.resize(th, size, interpolation=cv2.INTER_AREA)
    return th, rgb


# ----------------------------------------------------------------------------- classical baseline
def normalised_gradient(img: np.ndarray) -> np.ndarray:
    """Gradient magnitude over its local mean (31 px), as uint8 (cross-modal structure image)."""
    x = img.astype(np.float32)
    gx = cv2.Sobel(x, cv2.CV_32F, 1, 0, ksize=3)
    gy = cv2.Sobel(x, cv2.CV_32F, 0, 1, ksize=3)
    mag = cv2.magnitude(gx, gy)
    local = cv2.blur(mag, (31, 31)) + 1e-3 * float(mag.max() + 1e-6)
    return np.clip(mag / local * 64.0, 0, 255).astype(np.uint8)


def _structure_ncc(gv: np.ndarray, gt: np.ndarray, warp: np.ndarray) -> float:
    """Zero-mean NCC of the visible structure image and the thermal one mapped by ``warp``.

    Over the inner 80 % of the frame where the mapped thermal image has data (a map
    that moves the thermal frame away is not rewarded for the empty area).
    """
    h, w = gv.shape
    m = np.asarray(warp, np.float64)[:2]
    flags = cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP
    b = cv2.warpAffine(gt.astype(np.float32), m, (w, h), flags=flags)
    inside = cv2.warpAffine(np.ones((h, w), np.float32), m, (w, h), flags=flags) > 0.99
    ys, xs = slice(h // 10, h - h // 10), slice(w // 10, w - w // 10)
    sel = inside[ys, xs]
    if sel.mean() < 0.5:
        return -1.0
    a = gv[ys, xs].astype(np.float32)[sel]
    b = b[ys, xs][sel]
    a, b = a - a.mean(), b - b.mean()
    return float((a * b).sum() / max(np.sqrt((a * a).sum() * (b * b).sum()), 1e-9))


def classical_register(thermal: np.ndarray, visible: np.ndarray) -> np.ndarray:
    """OpenCV register-then-fuse baseline: ``(2, 3)`` affine, visible px -> thermal px.

    NCC translation start (``cv2.matchTemplate`` of normalised gradient images at
    1/4, +-``NCC_RADIUS_PX``), DIS optical flow (medium preset) from the visible to the shifted
    thermal structure image, a RANSAC affine fit (``cv2.estimateAffine2D``) to the
    flow on an 8-px grid of structured pixels, then ECC affine
    (``cv2.findTransformECC``) on the structure images. Each step is kept only
    when it raises the structure images' correlation (so a diverged step falls
    back to the previous estimate).

    Args:
        thermal, visible: ``(H, W)`` uint8.
    """
    h, w = visible.shape
    gv, gt = normalised_gradient(visible), normalised_gradient(thermal)
    best = np.array([[1, 0, 0], [0, 1, 0]], np.float64)
    score = _structure_ncc(gv, gt, best)

    def consider(cand: np.ndarray | None) -> None:
        nonlocal best, score
        if cand is None or not np.all(np.isfinite(cand)):
            return
        corners = np.array([[0, 0, 1], [w - 1, 0, 1], [0, h - 1, 1], [w - 1, h - 1, 1]], np.float64)
        moved = corners @ np.asarray(cand, np.float64)[:2].T - corners[:, :2]
        if np.abs(moved).max() > MAX_CORNER_MOVE * max(h, w):   # outside any rig's range: diverged
            return
        c = _structure_ncc(gv, gt, cand)
        if c > score:
            best, score = np.asarray(cand, np.float64)[:2], c
    # NCC translation start at 1/4
    q = 4
    sv = cv2.resize(gv, (w // q, h // q), interpolation=cv2.INTER_AREA)
    st = cv2.resize(gt, (w // q, h // q), interpolation=cv2.INTER_AREA)
    r = int(round(NCC_RADIUS_PX * w / 640 / q))
    res = cv2.matchTemplate(st, sv[r:-r, r:-r], cv2.TM_CCOEFF_NORMED)   # thermal shift (j - r, i - r)
    i, j = np.unravel_index(int(np.argmax(res)), res.shape)
    consider(np.array([[1, 0, (j - r) * q], [0, 1, (i - r) * q]], np.float64))
    # DIS flow against the thermal structure image mapped by the current estimate
    shifted = cv2.warpAffine(gt, best, (w, h), flags=cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP)
    dis = cv2.DISOpticalFlow_create(cv2.DISOPTICAL_FLOW_PRESET_MEDIUM)
    flow = dis.calc(gv, shifted, None)
    ys, xs = np.mgrid[8:h - 8:8, 8:w - 8:8]
    keep = gv[ys, xs] > 48
    if keep.sum() >= 12:
        src = np.stack([xs[keep], ys[keep]], 1).astype(np.float32)
        dst = src + flow[ys[keep], xs[keep]]
        a, _ = cv2.estimateAffine2D(src, dst, method=cv2.RANSAC, ransacReprojThreshold=3.0)
        if a is not None:
            consider(reg_mod.compose(np.vstack([best, [0, 0, 1]]), np.vstack([a, [0, 0, 1]]))[:2])
    # ECC affine refinement
    try:
        _, w1 = cv2.findTransformECC(gv.astype(np.float32), gt.astype(np.float32), best.astype(np.float32),
                                     cv2.MOTION_AFFINE, ECC_CRITERIA, None, 5)
        consider(w1)
    except cv2.error:
        pass
    return best


# ----------------------------------------------------------------------------- measures
def roc_auc(score: np.ndarray, label: np.ndarray) -> float:
    """ROC AUC of ``score`` for boolean ``label`` (Mann-Whitney, ties averaged); NaN without both classes.

    Example:
        >>> roc_auc(np.array([0.1, 0.4, 0.35, 0.8]), np.array([False, False, True, True]))
        0.75
    """
    s = np.asarray(score, np.float64).ravel()
    y = np.asarray(label, bool).ravel()
    n1, n0 = int(y.sum()), int((~y).sum())
    if n1 == 0 or n0 == 0:
        return float('nan')
    order = np.argsort(s, kind='mergesort')
    ranks = np.empty(len(s))
    sorted_s = s[order]
    # average ranks over ties
    _, first, counts = np.unique(sorted_s, return_index=True, return_counts=True)
    avg = first + (counts - 1) / 2.0 + 1.0
    ranks[order] = np.repeat(avg, counts)
    return float((ranks[y].sum() - n1 * (n1 + 1) / 2.0) / (n1 * n0))


def epe(flow: np.ndarray, target: np.ndarray, valid: np.ndarray) -> float:
    """Mean end-point error (px) of ``flow`` against ``target`` over ``valid`` pixels.

    Example:
        >>> f = np.zeros((2, 2, 2), np.float32); t = f.copy(); t[..., 0] = 3; t[..., 1] = 4
        >>> epe(f, t, np.ones((2, 2), bool))
        5.0
    """
    d = flow - target
    return float(np.sqrt(d[..., 0] ** 2 + d[..., 1] ** 2)[valid].mean())


def affine_field(warp: np.ndarray, h: int, w: int) -> np.ndarray:
    """The flow ``warp(p) - p`` ``(h, w, 2)`` of a ``(2, 3)`` or ``(3, 3)`` map."""
    m = np.vstack([np.asarray(warp, np.float64)[:2], [0, 0, 1]]) if np.shape(warp)[0] == 2 else warp
    reg = reg_mod.Registration(m, np.zeros((0, 0, 2), np.float32), 1.0, 1.0, (h, w))
    return reg_mod.flow_field(reg)


def consistent_flow(exact: np.ndarray, phi0: np.ndarray) -> np.ndarray:
    """The exact flow as seen by a method that registers the aligned pair by ``phi0``.

    If ``T(p + phi0(p))`` belongs at ``p`` (the method's own answer on the aligned pair)
    and the deformed image satisfies ``T_def(q + exact(q)) = T(q)``, the method's
    consistent answer on the deformed pair is ``phi0(p) + exact(p + phi0(p))``: its
    error against this target measures its precision apart from the reference's own
    misregistration.

    Example:
        >>> ex = np.full((4, 5, 2), 3.0, np.float32); p0 = np.zeros((4, 5, 2), np.float32)
        >>> p0[..., 0] = 1.0
        >>> consistent_flow(ex, p0)[1, 1].tolist()
        [4.0, 3.0]
    """
    mx, my, _ = sample_points(phi0)
    return phi0 + cv2.remap(exact, mx, my, cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)


@dataclass
class Frame:
    """Results of one deformed frame."""

    set: str
    stem: str
    seed: int
    applied: float
    applied_max: float
    mse: dict[str, float] = field(default_factory=dict)
    mse_valid: dict[str, float] = field(default_factory=dict)
    epe: dict[str, float] = field(default_factory=dict)
    epe_consistent: dict[str, float] = field(default_factory=dict)
    ms: dict[str, float] = field(default_factory=dict)


def _mse(a: np.ndarray, b: np.ndarray, mask: np.ndarray | None = None) -> float:
    d = (a.astype(np.float32) - b.astype(np.float32)) * (1.0 / 255.0)
    d2 = (d * d).sum(-1) / 3.0
    return float(d2.mean() if mask is None else d2[mask].mean())


def psnr(mse: float) -> float:
    """PSNR (dB) of images in [0, 1] from their mean squared error (inf for identical images)."""
    return float('inf') if mse <= 0 else float(10.0 * np.log10(1.0 / mse))


def removed(frames: list[Frame], method: str, key: str) -> float:
    """Share of the uncorrected squared error that ``method`` removes over ``frames`` (``key``: mse field)."""
    none = sum(getattr(f, key)['none'] for f in frames)
    return 1.0 - sum(getattr(f, key)[method] for f in frames) / none if none > 0 else float('nan')


def _gray(img: np.ndarray) -> np.ndarray:
    return img.astype(np.float32).mean(-1) * (1.0 / 255.0)


class RigBenchmark:
    """The benchmark's state: one shipped pipeline, the settings, the accumulated results."""

    def __init__(self, cfg: PipelineConfig | None = None, seeds: int = 9, rig: RigRange | None = None,
                 classical: bool = True) -> None:
        self.cfg = cfg or PipelineConfig()
        self.pipe = FusionPipeline(self.cfg)
        self.seeds, self.rig, self.classical = seeds, rig or RigRange(), classical
        self.frames: list[Frame] = []
        self.auc_samples: dict[str, list[tuple[np.ndarray, np.ndarray]]] = {}
        self.aligned: list[dict] = []

    def _fuse(self, th: np.ndarray, rgb: np.ndarray, correct: bool = False):
        return self.pipe.process(th, rgb, correct=correct)

    def run_pair(self, src: PairSource, thermal: Path, visible: Path, seeds: int | None = None) -> None:
        """``seeds`` (default :attr:`seeds`) misalignments of one pair, and its identity case."""
        th, rgb = _load(thermal, visible, src.size)
        h, w = th.shape
        y = convert.luminance(convert.rgb_to_unit(rgb))
        corrector = self.pipe.corrector
        ref = self._fuse(th, rgb).fused
        if hasattr(corrector, 'reset'):
            corrector.reset()
        same = self._fuse(th, rgb, correct=True).fused
        reg0 = reg_mod.register(y, th.astype(np.float32) / 255.0)
        phi0 = {'corrector': reg_mod.flow_field(reg0)}
        phi0['global'] = phi0['corrector']
        y8 = (y * 255 + 0.5).astype(np.uint8)
        if self.classical:
            phi0['classical'] = affine_field(classical_register(th, y8), h, w)
        mag0 = np.hypot(phi0['global'][..., 0], phi0['global'][..., 1])
        mse_same = _mse(same, ref)
        self.aligned.append({'set': src.name, 'stem': thermal.stem,
                             'psnr_vs_uncorrected': psnr(mse_same),
                             'reference_mean_px': float(mag0.mean()), 'reference_max_px': float(mag0.max()),
                             'reference_gain': reg0.gain})
        for seed in range(self.seeds if seeds is None else seeds):
            rng = np.random.default_rng([seed, zlib.crc32(thermal.name.encode())])
            d = displacement(sample_rig(h, w, rng, self.rig), h, w)
            tdef, _ = apply_zero_padded(th, d)
            phi = exact_flow(d)
            _, _, valid = sample_points(phi)
            mag = np.hypot(phi[..., 0], phi[..., 1])
            fr = Frame(src.name, thermal.stem, seed, float(mag[valid].mean()), float(mag[valid].max()))
            raw = self._fuse(tdef, rgb)
            outs = {'none': raw.fused}
            fr.ms['none'] = 0.0
            if hasattr(corrector, 'reset'):
                corrector.reset()
            res = self._fuse(tdef, rgb, correct=True)
            outs['corrector'] = res.fused
            fr.ms['corrector'] = res.timings_ms['corrector']
            flows = {'corrector': res.flow}
            fr.epe['corrector'] = epe(res.flow, phi, valid)
            label = (np.abs(_gray(res.fused_raw) - _gray(ref)) > M_ERROR) & (mag > M_MIN_SHIFT)
            self.auc_samples.setdefault(src.name, []).append((res.misregistration[::4, ::4], label[::4, ::4]))
            t0 = time.perf_counter()
            reg = reg_mod.register(y, tdef.astype(np.float32) / 255.0)
            tg = warp_by(tdef.astype(np.float32), reg)
            fr.ms['global'] = (time.perf_counter() - t0) * 1e3
            outs['global'] = self._fuse(np.clip(tg + 0.5, 0, 255).astype(np.uint8), rgb).fused
            flows['global'] = reg_mod.flow_field(reg)
            fr.epe['global'] = epe(flows['global'], phi, valid)
            if self.classical:
                t0 = time.perf_counter()
                a = classical_register(tdef, y8)
                tc = cv2.warpAffine(tdef, a.astype(np.float64), (w, h),
                                    flags=cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP,
                                    borderMode=cv2.BORDER_REPLICATE)
                fr.ms['classical'] = (time.perf_counter() - t0) * 1e3
                outs['classical'] = self._fuse(tc, rgb).fused
                flows['classical'] = affine_field(a, h, w)
                fr.epe['classical'] = epe(flows['classical'], phi, valid)
            mx, my, _ = sample_points(phi)
            to = cv2.remap(tdef, mx, my, cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
            outs['oracle'] = self._fuse(to, rgb).fused
            fr.ms['oracle'] = 0.0
            fr.epe['oracle'] = 0.0
            sx, sy, _ = sample_points(consistent_flow(phi, phi0['global']))
            ts = cv2.remap(tdef, sx, sy, cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
            outs['oracle_scene'] = self._fuse(ts, rgb).fused
            fr.ms['oracle_scene'] = 0.0
            for k, f0 in phi0.items():
                if k in fr.epe:
                    fr.epe_consistent[k] = epe(flows[k], consistent_flow(phi, f0), valid)
            for k, img in outs.items():
                fr.mse[k] = _mse(img, ref)
                fr.mse_valid[k] = _mse(img, ref, valid)
            self.frames.append(fr)

    def summary(self) -> dict:
        """Per set and method, as described in the module docstring (JSON-ready)."""
        out: dict[str, dict] = {}
        for name in dict.fromkeys(f.set for f in self.frames):
            fs = [f for f in self.frames if f.set == name]
            applied = float(np.mean([f.applied for f in fs]))
            rows = {}
            for m in METHODS:
                if m not in fs[0].mse:
                    continue
                row = {'removed': removed(fs, m, 'mse'), 'removed_valid': removed(fs, m, 'mse_valid'),
                       'worse': int(sum(f.mse[m] > f.mse['none'] for f in fs)),
                       'ms_median': float(np.median([f.ms[m] for f in fs]))}
                if m in fs[0].epe:
                    e = float(np.mean([f.epe[m] for f in fs]))
                    row.update(epe_px=e, epe_share=e / applied)
                if m in fs[0].epe_consistent:
                    e = float(np.mean([f.epe_consistent[m] for f in fs]))
                    row.update(epe_consistent_px=e, epe_consistent_share=e / applied)
                rows[m] = row
            samples = self.auc_samples.get(name, [])
            if samples:
                rows['corrector']['m_auc'] = roc_auc(np.concatenate([s.ravel() for s, _ in samples]),
                                                     np.concatenate([lab.ravel() for _, lab in samples]))
            al = [a for a in self.aligned if a['set'] == name]
            out[name] = {'frames': len(fs), 'pairs': len(al), 'applied_mean_px': applied,
                         'applied_max_px': float(max(f.applied_max for f in fs)), 'methods': rows,
                         'identity_psnr_db': {a['stem']: a['psnr_vs_uncorrected'] for a in al},
                         'reference_mean_px': float(np.mean([a['reference_mean_px'] for a in al])),
                         'reference_max_px': float(max(a['reference_max_px'] for a in al))}
        return out


def to_markdown(summary: dict) -> str:
    """The summary as one Markdown table plus per-set identity and reference lines."""
    lines = ['| set | frames | method | error removed | in valid region | flow EPE px (% of shift) | '
             'consistent EPE px (%) | frames worse | M AUC | ms/frame |',
             '|---|---|---|---|---|---|---|---|---|---|']
    for name, s in summary.items():
        for m, r in s['methods'].items():
            if m == 'none':
                continue
            epe_s = f"{r['epe_px']:.2f} ({100 * r['epe_share']:.0f} %)" if 'epe_px' in r else '–'
            auc = f"{r['m_auc']:.3f}" if 'm_auc' in r else '–'
            cons = (f"{r['epe_consistent_px']:.2f} ({100 * r['epe_consistent_share']:.0f} %)"
                    if 'epe_consistent_px' in r else '–')
            ms = '–' if m.startswith('oracle') else f"{r['ms_median']:.1f}"
            lines.append(f"| {name} | {s['frames']} | {m} | {100 * r['removed']:.1f} % | "
                         f"{100 * r['removed_valid']:.1f} % | {epe_s} | {cons} | {r['worse']} | {auc} "
                         f"| {ms} |")
    lines.append('')
    for name, s in summary.items():
        ids = list(s['identity_psnr_db'].values())
        finite = [v for v in ids if np.isfinite(v)]
        lines.append(f"- {name}: applied shift mean {s['applied_mean_px']:.1f} px, "
                     f"max {s['applied_max_px']:.1f} px; "
                     f"aligned pairs unchanged by the corrector: {len(ids) - len(finite)} of {len(ids)}"
                     + (f", changed ones at {min(finite):.1f} dB PSNR or more" if finite else '')
                     + f"; the global estimate moves the aligned pairs by "
                     f"{s['reference_mean_px']:.2f} px mean, "
                     f"{s['reference_max_px']:.1f} px max (reference quality).")
    return '\n'.join(lines)


def seeds_for(pairs: int, frames: int) -> int:
    """Misalignments per pair so that a set of ``pairs`` pairs gets at least ``frames`` frames.

    Example:
        >>> seeds_for(12, 50), seeds_for(6, 50), seeds_for(34, 50)
        (5, 9, 2)
    """
    return max(1, math.ceil(frames / max(pairs, 1)))


def benchmark_config(config: str | None, threads: int) -> PipelineConfig:
    """The pipeline the benchmark runs: defaults, then ``config``, then ``threads``.

    ``config`` is a parameter file as ``regionfuse fuse --config`` reads it (None: none).

    Raises:
        ConfigError: unreadable file, unknown name or invalid value.
    """
    cfg = load_config_file(Path(config)).pipeline if config else PipelineConfig()
    return replace(cfg, threads=threads)


def run(args: argparse.Namespace) -> dict:
    """Run the benchmark per ``args`` (``data_root``, ``rig_frames``, ``max_pairs``, ``no_classical``)."""
    if args.rig_frames < 1:
        raise ConfigError('--rig-frames must be >= 1')
    bench = RigBenchmark(benchmark_config(args.config, args.threads), classical=not args.no_classical)
    sets = dev_sets(Path(args.data_root))
    work = []
    seeds = {}
    for s in sets:
        pairs = s.pairs[:args.max_pairs] if args.max_pairs else s.pairs
        seeds[s.name] = seeds_for(len(pairs), args.rig_frames)
        work += [(s, t, v) for t, v in pairs]
    for s, t, v in tqdm(work, desc='eval-registration rig', dynamic_ncols=True):
        bench.run_pair(s, t, v, seeds[s.name])
    return {'command': ' '.join(['regionfuse', *sys.argv[1:]]), 'machine': profiling.machine_info(),
            'sets': bench.summary(), 'roles': {s.name: s.role for s in sets},
            'corrector': bench.pipe.corrector_name, 'config': args.config or '', 'seeds': seeds,
            'threads': args.threads,
            'rig_range': RigRange().__dict__, 'frames': [f.__dict__ for f in bench.frames],
            'aligned_pairs': bench.aligned}
