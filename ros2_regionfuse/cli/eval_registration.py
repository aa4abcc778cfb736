r"""``regionfuse eval-registration``: corrector vs ECC vs no correction on misaligned pairs.

For every registered pair, seeded misalignments of the thermal image are
synthesised (:mod:`ros2_regionfuse.training.perturb`; mean displacement set
exactly by ``--mean-shift``, one or more levels) or read from
``--warped-thermal``. Reference = frozen fusion of the aligned pair. Methods:

* ``none``: fusion of (visible, misaligned thermal);
* ``ecc``: OpenCV ECC affine registration of thermal to visible
  (``cv2.findTransformECC``, 3-level pyramid), then fusion;
* ``similarity``: the corrector's global start alone as a register-then-fuse
  baseline (:mod:`ros2_regionfuse.models.global_align`: similarity transform
  from edge descriptors, gated by its confidence), then fusion;
* ``corrector``: fusion, then the post-registration corrector.

Reported per level: PSNR and SSIM against the reference, the share of the
squared error removed (``1 - sum MSE_method / sum MSE_none`` over frames),
flow end-point error against the known displacement (corrector flow; ECC's
implied affine flow) and its ratio to the applied mean displacement, and the
registration time per frame (ECC: estimation + warp; corrector: forward pass;
the common fusion time is listed apart). On the aligned pairs themselves the
corrector's change is reported as PSNR(corrected, uncorrected) and as the
change of the fusion PSNR metric (``10 log10(1 / ((MSE(F, Y) + MSE(F, T)) / 2))``).
Errors are measured over valid pixels (whose misaligned thermal came from
inside the image).

Example:
    regionfuse eval-registration \
        --thermal ../shared/data/ivif/TNO/ir ../shared/data/ivif/MSRS/ir \
        --rgb ../shared/data/ivif/TNO/vi ../shared/data/ivif/MSRS/vi \
        --list ../shared/data/ivif/TNO/splits/tno_didfuse_auif_test40.txt - \
        --mean-shift 8 16 --seeds 1 --json out/eval_registration.json
"""
from __future__ import annotations

import argparse
import json
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np
import torch
from tqdm import tqdm

from ..core import convert
from ..core.checks import ConfigError
from ..core.imageio import (
    ImagePair,
    atomic_write_bytes,
    match_pairs,
    read_gray,
    read_rgb,
    read_stem_list,
    restrict_pairs,
)
from ..core.metrics import ssim
from ..models.global_align import similarity_flow
from ..models.runtime import load_model
from ..models.warp import warp_by_flow
from ..training.corrector_data import load_frozen_fusion
from ..training.perturb import PerturbConfig, apply_perturbation, sample_perturbation

log = logging.getLogger(__name__)

ECC_LEVELS = 3
ECC_ITERS = 100
ECC_EPS = 1e-5
ECC_GAUSS = 5
ECC_MAX_MOVE = 0.25  # a fit moving an image corner by more than this share of the size has diverged
METHODS = ('none', 'ecc', 'similarity', 'corrector')


@dataclass
class Frame:
    """Per-frame results of one pair at one misalignment level and seed."""

    stem: str
    level: str
    seed: int
    applied: float = float('nan')
    mse: dict[str, float] = field(default_factory=dict)
    psnr: dict[str, float] = field(default_factory=dict)
    ssim: dict[str, float] = field(default_factory=dict)
    epe: dict[str, float] = field(default_factory=dict)
    ms: dict[str, float] = field(default_factory=dict)


def add_arguments(p: argparse.ArgumentParser) -> None:
    """Options of the subcommand."""
    p.add_argument('--thermal', nargs='+', required=True, help='thermal folder(s) of registered pairs')
    p.add_argument('--rgb', nargs='+', required=True, help='RGB folder(s), same order as --thermal')
    p.add_argument('--list', nargs='+', default=None,
                   help="split file per folder (one stem per line; '-' = all pairs)")
    p.add_argument('--warped-thermal', nargs='+', default=None,
                   help='folder(s) of already misaligned thermal images (same names); no flow EPE')
    p.add_argument('--seeds', type=int, default=1, help='misalignments drawn per pair and level')
    p.add_argument('--mean-shift', type=float, nargs='+', default=[8.0, 16.0],
                   help='mean displacement levels (px)')
    p.add_argument('--max-shift', type=float, default=0.0,
                   help='cap on the largest displacement (px; 0 = none); scales the field down')
    p.add_argument('--fusion-variant', default='regionfuse_tiny')
    p.add_argument('--fusion-checkpoint', default='', help='empty = shipped weights')
    p.add_argument('--stand-in-fusion', action='store_true', help='development only')
    p.add_argument('--corrector-variant', default='corrector_fast')
    p.add_argument('--corrector-checkpoint', default='', help='empty = shipped weights')
    p.add_argument('--no-ecc', action='store_true', help='skip the ECC baseline')
    p.add_argument('--no-similarity', action='store_true',
                   help='skip the global-similarity register-then-fuse baseline')
    p.add_argument('--threads', type=int, default=2, help='torch and OpenCV threads')
    p.add_argument('--max-pairs', type=int, default=0, help='use only the first N pairs (0 = all)')
    p.add_argument('--json', default='', help='also write the summary and per-frame results here')


def psnr_from_mse(mse: float) -> float:
    """PSNR (dB) of images in [0, 1] from their mean squared error.

    Example:
        >>> round(psnr_from_mse(1e-4), 6)
        40.0
    """
    return float('inf') if mse <= 0 else float(10.0 * np.log10(1.0 / mse))


def masked_mse(a: np.ndarray, b: np.ndarray, valid: np.ndarray) -> float:
    """Mean squared difference over the pixels where ``valid`` is True."""
    d = (a.astype(np.float64) - b.astype(np.float64))[valid]
    return float((d * d).mean()) if d.size else float('nan')


def affine_flow(warp: np.ndarray, h: int, w: int) -> np.ndarray:
    """Flow ``(H, W, 2)`` implied by an affine map ``x -> warp @ [x, y, 1]``: ``warp(p) - p``.

    Example:
        >>> a = np.array([[1, 0, 3], [0, 1, -2]], np.float32)
        >>> affine_flow(a, 2, 2)[1, 1].tolist()
        [3.0, -2.0]
    """
    ys, xs = np.mgrid[0:h, 0:w].astype(np.float32)
    fx = warp[0, 0] * xs + warp[0, 1] * ys + warp[0, 2] - xs
    fy = warp[1, 0] * xs + warp[1, 1] * ys + warp[1, 2] - ys
    return np.stack([fx, fy], -1).astype(np.float32)


def ecc_register(thermal: np.ndarray, visible: np.ndarray) -> tuple[np.ndarray, np.ndarray, bool]:
    """Register thermal to visible with a coarse-to-fine ECC affine fit.

    Args:
        thermal, visible: ``(H, W)`` float32 in [0, 1].

    Returns:
        ``(registered thermal (H, W) float32, warp (2, 3) mapping visible
        pixel coordinates to thermal ones, converged)``; on failure at a
        level the estimate of the coarser level is kept; when the final fit
        diverged (a corner moves by more than ``ECC_MAX_MOVE`` of the size) or
        lowers the ECC criterion against the unregistered input, the identity
        is returned.
    """
    warp = np.eye(2, 3, dtype=np.float32)
    crit = (cv2.TERM_CRITERIA_EPS | cv2.TERM_CRITERIA_COUNT, ECC_ITERS, ECC_EPS)
    ok = True
    for lev in reversed(range(ECC_LEVELS)):
        s = 2 ** lev
        if s > 1:
            size = (max(8, thermal.shape[1] // s), max(8, thermal.shape[0] // s))
            t = cv2.resize(thermal, size, interpolation=cv2.INTER_AREA)
            v = cv2.resize(visible, size, interpolation=cv2.INTER_AREA)
        else:
            t, v = thermal, visible
        ws = warp.copy()
        ws[:, 2] /= s
        try:
            _, ws = cv2.findTransformECC(v, t, ws, cv2.MOTION_AFFINE, crit, None, ECC_GAUSS)
        except cv2.error:
            ok = False
            continue
        warp = ws.copy()
        warp[:, 2] *= s
    h, w = thermal.shape
    reg = cv2.warpAffine(thermal, warp, (w, h), flags=cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP,
                         borderMode=cv2.BORDER_REPLICATE)
    # Safeguards (as a practitioner would): keep the identity when the fit diverged (moves a corner
    # by more than ECC_MAX_MOVE of the image size) or lowers the ECC criterion.
    corners = np.array([[0, 0, 1], [w - 1, 0, 1], [0, h - 1, 1], [w - 1, h - 1, 1]], np.float32)
    moved = np.abs(corners @ warp.T - corners[:, :2]).max()
    if moved > ECC_MAX_MOVE * min(h, w) or cv2.computeECC(visible, reg) < cv2.computeECC(visible, thermal):
        return thermal.copy(), np.eye(2, 3, dtype=np.float32), False
    return reg, warp, ok


@torch.inference_mode()
def similarity_register(thermal: np.ndarray, visible: np.ndarray) -> tuple[np.ndarray, np.ndarray, float]:
    """Register thermal to visible by the gated global similarity estimate.

    Args:
        thermal, visible: ``(H, W)`` float32 in [0, 1].

    Returns:
        ``(registered thermal (H, W), flow (H, W, 2) px in the corrector's convention, ms)``.
    """
    t, v = convert.to_tensor(thermal), convert.to_tensor(visible)
    t0 = time.perf_counter()
    flow = similarity_flow(v, t)
    reg = warp_by_flow(t, flow)
    ms = (time.perf_counter() - t0) * 1e3
    return convert.to_numpy(reg), convert.to_numpy(flow), ms


def fusion_psnr(fused: np.ndarray, visible: np.ndarray, thermal: np.ndarray) -> float:
    """Fusion PSNR metric: ``10 log10(1 / ((MSE(F, Y) + MSE(F, T)) / 2))`` (images in [0, 1])."""
    full = np.ones(fused.shape, bool)
    return psnr_from_mse(0.5 * (masked_mse(fused, visible, full) + masked_mse(fused, thermal, full)))


def _ssim01(a: np.ndarray, b: np.ndarray) -> float:
    return ssim(convert.unit_to_uint8(a), convert.unit_to_uint8(b))


class _Models:
    """Fusion and corrector as numpy functions, with timing."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.fusion, self.fusion_info = load_frozen_fusion(args.fusion_variant, args.fusion_checkpoint,
                                                           args.stand_in_fusion)
        self.corrector, self.corrector_card = load_model('corrector', args.corrector_variant,
                                                         args.corrector_checkpoint, torch.device('cpu'))

    @torch.inference_mode()
    def fuse(self, thermal: np.ndarray, visible: np.ndarray) -> tuple[np.ndarray, float]:
        t0 = time.perf_counter()
        f = self.fusion(convert.to_tensor(thermal), convert.to_tensor(visible)).clamp(0, 1)
        return convert.to_numpy(f), (time.perf_counter() - t0) * 1e3

    @torch.inference_mode()
    def correct(self, fused: np.ndarray, visible: np.ndarray, thermal: np.ndarray
                ) -> tuple[np.ndarray, np.ndarray, np.ndarray, float]:
        tf, tv, tt = (convert.to_tensor(x) for x in (fused, visible, thermal))
        t0 = time.perf_counter()
        out = self.corrector(tf, tv, tt)
        ms = (time.perf_counter() - t0) * 1e3
        return convert.to_numpy(out.image), convert.to_numpy(out.misregistration), \
            convert.to_numpy(out.flow), ms


def _pairs(args: argparse.Namespace) -> list[tuple[ImagePair, Path | None]]:
    if len(args.thermal) != len(args.rgb):
        raise ConfigError('--thermal and --rgb need the same number of folders')
    lists = args.list or ['-'] * len(args.thermal)
    warped = args.warped_thermal or [None] * len(args.thermal)
    if len(lists) != len(args.thermal) or len(warped) != len(args.thermal):
        raise ConfigError('--list and --warped-thermal need one entry per --thermal folder')
    out: list[tuple[ImagePair, Path | None]] = []
    for t, r, lst, wdir in zip(args.thermal, args.rgb, lists, warped):
        pairs, _ = match_pairs(t, r)
        if lst != '-':
            pairs, missing = restrict_pairs(pairs, read_stem_list(lst))
            if missing:
                log.warning('%d listed stems have no pair in %s: %s', len(missing), t, missing[:5])
        for p in pairs:
            wp = None
            if wdir is not None:
                cands = [q for q in Path(wdir).iterdir() if q.stem == p.stem]
                if not cands:
                    raise ConfigError(f'no warped thermal image for {p.stem} in {wdir}')
                wp = cands[0]
            out.append((p, wp))
    if args.max_pairs > 0:
        out = out[:args.max_pairs]
    if not out:
        raise ConfigError('no pairs to evaluate')
    return out


def _load(pair: ImagePair) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    rgb = convert.rgb_to_unit(read_rgb(pair.rgb))
    vis = convert.luminance(rgb)
    th = read_gray(pair.thermal, as_uint8=True).astype(np.float32) / 255.0
    if th.shape != vis.shape:
        th = cv2.resize(th, (vis.shape[1], vis.shape[0]), interpolation=cv2.INTER_AREA)
    return th, vis, rgb


def evaluate(args: argparse.Namespace) -> dict:
    """Run the evaluation; return the summary and per-frame results (JSON-ready)."""
    torch.set_num_threads(max(1, args.threads))
    cv2.setNumThreads(max(1, args.threads))
    models = _Models(args)
    pcfg = PerturbConfig(blur_prob=0.0, noise_std_max=0.0)
    frames: list[Frame] = []
    aligned: list[dict] = []
    fuse_ms: list[float] = []
    items = _pairs(args)
    # Warm-up (first calls of a new shape are slow).
    th0, vis0, _ = _load(items[0][0])
    f0, _ = models.fuse(th0, vis0)
    models.correct(f0, vis0, th0)
    for idx, (pair, wpath) in enumerate(tqdm(items, desc='eval-registration', dynamic_ncols=True)):
        th, vis, _ = _load(pair)
        h, w = th.shape
        ref, ms_f = models.fuse(th, vis)
        fuse_ms.append(ms_f)
        corr_al, m_al, fl_al, _ = models.correct(ref, vis, th)
        aligned.append({'stem': pair.stem, 'psnr_vs_uncorrected': psnr_from_mse(
            masked_mse(corr_al, ref, np.ones(ref.shape, bool))),
            'fusion_psnr_change': fusion_psnr(corr_al, vis, th) - fusion_psnr(ref, vis, th),
            'mean_m': float(m_al.mean()), 'mean_flow': float(np.hypot(fl_al[..., 0], fl_al[..., 1]).mean())})
        cases: list[tuple[str, int, np.ndarray, np.ndarray | None, np.ndarray]] = []
        if wpath is not None:
            tw = read_gray(wpath, as_uint8=True).astype(np.float32) / 255.0
            if tw.shape != th.shape:
                tw = cv2.resize(tw, (w, h), interpolation=cv2.INTER_AREA)
            cases.append(('given', 0, tw, None, np.ones((h, w), bool)))
        else:
            t_tensor = convert.to_tensor(th)
            for level in args.mean_shift:
                for seed in range(args.seeds):
                    rng = np.random.default_rng([seed, idx, int(round(level * 1000))])
                    pert = sample_perturbation(h, w, rng, pcfg, mean_shift=level)
                    if args.max_shift > 0:
                        mx = pert.stats()[1]
                        if mx > args.max_shift:
                            pert.gain *= args.max_shift / mx
                    tw, gt, valid = apply_perturbation(t_tensor, pert)
                    cases.append((f'{level:g}', seed, convert.to_numpy(tw), convert.to_numpy(gt),
                                  convert.to_numpy(valid.float()) > 0.5))
        for level, seed, tw, gt, valid in cases:
            fr = Frame(pair.stem, level, seed)
            if gt is not None:
                fr.applied = float(np.hypot(gt[..., 0], gt[..., 1])[valid].mean())
            fused, _ = models.fuse(tw, vis)
            outs: dict[str, np.ndarray] = {'none': fused}
            fr.ms['none'] = 0.0
            if not args.no_ecc:
                t0 = time.perf_counter()
                reg, warp, _ = ecc_register(tw, vis)
                fr.ms['ecc'] = (time.perf_counter() - t0) * 1e3
                outs['ecc'], _ = models.fuse(reg, vis)
                if gt is not None:
                    fe = affine_flow(warp, h, w)
                    fr.epe['ecc'] = float(np.hypot(*(fe - gt).transpose(2, 0, 1))[valid].mean())
            if not args.no_similarity:
                reg, flow_s, fr.ms['similarity'] = similarity_register(tw, vis)
                outs['similarity'], _ = models.fuse(reg, vis)
                if gt is not None:
                    fr.epe['similarity'] = float(np.hypot(*(flow_s - gt).transpose(2, 0, 1))[valid].mean())
            corr, _, flow, ms_c = models.correct(fused, vis, tw)
            outs['corrector'] = corr
            fr.ms['corrector'] = ms_c
            if gt is not None:
                fr.epe['corrector'] = float(np.hypot(*(flow - gt).transpose(2, 0, 1))[valid].mean())
            for name, img in outs.items():
                fr.mse[name] = masked_mse(img, ref, valid)
                fr.psnr[name] = psnr_from_mse(fr.mse[name])
                fr.ssim[name] = _ssim01(img, ref)
            frames.append(fr)
    return summarise(frames, aligned, fuse_ms, models, args)


def summarise(frames: list[Frame], aligned: list[dict], fuse_ms: list[float], models: _Models,
              args: argparse.Namespace) -> dict:
    """Aggregate per level and method."""
    levels = list(dict.fromkeys(f.level for f in frames))
    summary: dict[str, dict] = {}
    for lv in levels:
        fs = [f for f in frames if f.level == lv]
        row: dict[str, dict] = {}
        mse_none = sum(f.mse['none'] for f in fs)
        applied = float(np.mean([f.applied for f in fs]))
        for m in METHODS:
            if m not in fs[0].mse:
                continue
            mse = sum(f.mse[m] for f in fs)
            r = {'psnr': float(np.mean([f.psnr[m] for f in fs])),
                 'ssim': float(np.mean([f.ssim[m] for f in fs])),
                 'recovered': 1.0 - mse / mse_none if mse_none > 0 else float('nan'),
                 'ms_median': float(np.median([f.ms[m] for f in fs]))}
            if m in fs[0].epe:
                r['epe'] = float(np.mean([f.epe[m] for f in fs]))
                r['epe_ratio'] = r['epe'] / applied if applied > 0 else float('nan')
            row[m] = r
        summary[lv] = {'frames': len(fs), 'applied_mean_shift': applied, 'methods': row}
    al = {'pairs': len(aligned),
          'psnr_vs_uncorrected_mean': float(np.mean([a['psnr_vs_uncorrected'] for a in aligned])),
          'psnr_vs_uncorrected_min': float(np.min([a['psnr_vs_uncorrected'] for a in aligned])),
          'fusion_psnr_change_mean_abs': float(np.mean([abs(a['fusion_psnr_change']) for a in aligned])),
          'fusion_psnr_change_max_abs': float(np.max([abs(a['fusion_psnr_change']) for a in aligned])),
          'mean_m': float(np.mean([a['mean_m'] for a in aligned])),
          'mean_flow_px': float(np.mean([a['mean_flow'] for a in aligned]))}
    return {'levels': summary, 'aligned': al, 'fusion_ms_median': float(np.median(fuse_ms)),
            'fusion': models.fusion_info, 'corrector': models.corrector_card.get('name', ''),
            'args': {k: v for k, v in vars(args).items()}, 'threads': args.threads,
            'frames': [f.__dict__ for f in frames], 'aligned_pairs': aligned}


def to_markdown(res: dict) -> str:
    """The summary as Markdown tables."""
    lines = ['| mean shift (px) | method | PSNR (dB) | SSIM | error recovered | flow EPE (px) | '
             'EPE / shift | registration ms |', '|---|---|---|---|---|---|---|---|']
    for lv, s in res['levels'].items():
        for m, r in s['methods'].items():
            epe = f"{r['epe']:.2f}" if 'epe' in r else '–'
            ratio = f"{100 * r['epe_ratio']:.0f} %" if 'epe_ratio' in r else '–'
            rec = '–' if m == 'none' else f"{100 * r['recovered']:.1f} %"
            ms = '–' if m == 'none' else f"{r['ms_median']:.1f}"
            shift = f"{lv} (applied {s['applied_mean_shift']:.1f})" if lv != 'given' else 'given'
            lines.append(f"| {shift} | {m} | {r['psnr']:.2f} | {r['ssim']:.4f} | {rec} | {epe} | {ratio} "
                         f"| {ms} |")
    a = res['aligned']
    lines += ['', f"Aligned input ({a['pairs']} pairs): corrector output vs uncorrected PSNR "
              f"{a['psnr_vs_uncorrected_mean']:.2f} dB (min {a['psnr_vs_uncorrected_min']:.2f}); "
              f"fusion-PSNR change mean {a['fusion_psnr_change_mean_abs']:.3f} dB, "
              f"max {a['fusion_psnr_change_max_abs']:.3f} dB; mean M {a['mean_m']:.3f}, "
              f"mean |flow| {a['mean_flow_px']:.2f} px.",
              f"Fusion (common to all methods, not in 'registration ms'): median "
              f"{res['fusion_ms_median']:.1f} ms/frame; {res['threads']} threads."]
    return '\n'.join(lines)


def run(args: argparse.Namespace) -> int:
    """Evaluate, print the Markdown table and optionally write JSON."""
    if args.seeds < 1:
        raise ConfigError('--seeds must be >= 1')
    if any(s < 0 for s in args.mean_shift):
        raise ConfigError('--mean-shift values must be >= 0')
    res = evaluate(args)
    print(to_markdown(res))
    if args.json:
        atomic_write_bytes(args.json, json.dumps(res, indent=1, default=str).encode())
    return 0
