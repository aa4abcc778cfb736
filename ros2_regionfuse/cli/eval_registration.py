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
* ``corrector``: fusion, then the post-registration corrector;
* ``oracle`` (a bound, not a method; synthetic misalignment only): the
  misaligned thermal image registered exactly to where the global estimate
  places the scene on the aligned pair (the known displacement composed with
  that estimate, :func:`consistent_target`), then fused. It is what a method
  that registers to the scene, and is never wrong about it, would score
  against the dataset's reference.

Reported per level: PSNR and SSIM against the reference, the share of the
squared error removed (``1 - sum MSE_method / sum MSE_none`` over frames),
flow end-point error against the known displacement (corrector flow; ECC's
implied affine flow) and its ratio to the applied mean displacement, and the
registration time per frame (ECC: estimation + warp; corrector: the
pipeline's runner, traced learned stages and OpenCV steps, steady state: a
new image size is traced by an untimed call first; the common fusion time is
listed apart). On the aligned pairs themselves the
corrector's change is reported as PSNR(corrected, uncorrected) and as the
change of the fusion PSNR metric (``10 log10(1 / ((MSE(F, Y) + MSE(F, T)) / 2))``).
Errors are measured over valid pixels (whose misaligned thermal came from
inside the image).

**The reference is itself registered only approximately.** The dataset's
"aligned" pairs carry a few pixels of residual misregistration (TNO in
particular). A method that registers the thermal image correctly is then
charged that residual in every PSNR and EPE above. The ``oracle`` row bounds
what such a method can score, and two extra measurements make the residual
visible:

* *consistent EPE*: the method's flow on the misaligned pair against the
  known displacement composed with the method's own flow on the aligned
  pair, ``phi0(p) + gt(p + phi0(p))`` (:func:`consistent_target`), i.e. how
  far the method's answer moves when only the synthetic misalignment is
  added. A method that registers to the true scene alignment scores low
  here even where the reference disagrees with it.
* *reference check*: on each aligned pair, the mutual information of visible
  and thermal intensities (inner 80 % of the frame, :func:`inner_mi`)
  before and after registering the thermal image by the global similarity
  estimate, and after a control translation of the same mean size in a
  random (seeded) direction. Mutual information is the classic cross-modal
  registration measure and independent of the estimator's edge
  descriptors: if registering raises it in most pairs while the control
  does not, the reference pairs are misregistered by about the estimate.

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
import sys
import time
from dataclasses import dataclass, field, replace
from pathlib import Path

import cv2
import numpy as np
import torch
from tqdm import tqdm

from ..core import convert, profiling
from ..core.checks import ConfigError
from ..core.config import CorrectorConfig, FusionConfig, PipelineConfig
from ..core.imageio import (
    ImagePair,
    atomic_write_bytes,
    match_pairs,
    read_gray,
    read_rgb,
    read_stem_list,
    restrict_pairs,
)
from ..core.metrics import mutual_information, ssim
from ..core.paths import data_root
from ..inference.runtime import TorchFusionRunner, build_runner, inline_builds
from ..models.global_align import similarity_flow
from ..models.warp import warp_by_flow
from ..training.corrector_data import load_frozen_fusion
from ..training.perturb import PerturbConfig, apply_perturbation, sample_perturbation

log = logging.getLogger(__name__)


ECC_LEVELS = 3
ECC_ITERS = 100
ECC_EPS = 1e-5
ECC_GAUSS = 5
ECC_MAX_MOVE = 0.25  # a fit moving an image corner by more than this share of the size has diverged
METHODS = ('none', 'ecc', 'similarity', 'corrector', 'oracle')


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
    epe_consistent: dict[str, float] = field(default_factory=dict)
    ms: dict[str, float] = field(default_factory=dict)


def add_arguments(p: argparse.ArgumentParser) -> None:
    """Options of the subcommand."""
    p.add_argument('--mode', choices=('shift', 'rig'), default='shift',
                   help='shift: seeded perturbations of a set mean displacement (--mean-shift) on the '
                        'given folders; rig: rig-range misalignments on the benchmark sets under '
                        '--data-root through the shipped pipeline (cli/eval_rig.py)')
    p.add_argument('--data-root', default=str(data_root()),
                   help='rig mode: folder holding LLVIP/, MSRS/ and RoadScene/ (default $REGIONFUSE_DATA, '
                        'else ../shared/data/ivif beside the repository)')
    p.add_argument('--no-classical', action='store_true', help='rig mode: skip the OpenCV baseline')
    p.add_argument('--config', metavar='YAML', default=None,
                   help='rig mode: pipeline parameter file over the defaults (as regionfuse fuse --config)')
    p.add_argument('--rig-frames', type=int, default=50,
                   help='rig mode: deformed frames per set at least (seeds per pair = ceil(frames / pairs))')
    p.add_argument('--thermal', nargs='+', help='shift mode: thermal folder(s) of registered pairs')
    p.add_argument('--rgb', nargs='+', help='shift mode: RGB folder(s), same order as --thermal')
    p.add_argument('--list', nargs='+', default=None,
                   help="split file per folder (one stem per line; '-' = all pairs)")
    p.add_argument('--warped-thermal', nargs='+', default=None,
                   help='folder(s) of already misaligned thermal images (same names); no flow EPE')
    p.add_argument('--seeds', type=int, default=1, help='misalignments drawn per pair and level')
    p.add_argument('--mean-shift', type=float, nargs='+', default=[8.0, 16.0],
                   help='mean displacement levels (px)')
    p.add_argument('--max-shift', type=float, default=0.0,
                   help='cap on the largest displacement (px; 0 = none); scales the field down')
    p.add_argument('--fusion-variant', default=FusionConfig().variant)
    p.add_argument('--fusion-checkpoint', default='', help='empty = shipped weights')
    p.add_argument('--stand-in-fusion', action='store_true', help='development only')
    p.add_argument('--corrector-variant', default=CorrectorConfig().variant)
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
    flow = similarity_flow(v, t, opencv=True, native=PipelineConfig().native_kernels)
    reg = warp_by_flow(t, flow)
    ms = (time.perf_counter() - t0) * 1e3
    return convert.to_numpy(reg), convert.to_numpy(flow), ms


def fusion_psnr(fused: np.ndarray, visible: np.ndarray, thermal: np.ndarray) -> float:
    """Fusion PSNR metric: ``10 log10(1 / ((MSE(F, Y) + MSE(F, T)) / 2))`` (images in [0, 1])."""
    full = np.ones(fused.shape, bool)
    return psnr_from_mse(0.5 * (masked_mse(fused, visible, full) + masked_mse(fused, thermal, full)))


def _warp(img: np.ndarray, flow: np.ndarray) -> np.ndarray:
    """:func:`warp_by_flow` on arrays: ``(H, W)`` or ``(H, W, C)`` by ``(H, W, 2)`` px, float32."""
    return convert.to_numpy(warp_by_flow(convert.to_tensor(np.asarray(img, np.float32)),
                                         convert.to_tensor(np.asarray(flow, np.float32))))


def _mean_epe(flow: np.ndarray, target: np.ndarray, valid: np.ndarray) -> float:
    """Mean end-point error (px) of ``(H, W, 2)`` flows over ``valid`` pixels."""
    return float(np.hypot(*(flow - target).transpose(2, 0, 1))[valid].mean())


def consistent_target(gt: np.ndarray, phi0: np.ndarray) -> np.ndarray:
    """Known displacement composed with a method's flow on the aligned pair.

    If registering the aligned thermal image ``T`` by ``phi0`` is right
    (``T(p + phi0(p))`` belongs at ``p``) and the misaligned image satisfies
    ``T_mis(q + gt(q)) = T(q)``, the consistent flow for ``T_mis`` is
    ``phi0(p) + gt(p + phi0(p))``.

    Args:
        gt, phi0: ``(H, W, 2)`` px (x, y), the corrector's flow convention.

    Returns:
        ``(H, W, 2)`` px.

    Example:
        >>> gt = np.full((4, 5, 2), 3.0, np.float32); phi0 = np.zeros((4, 5, 2), np.float32)
        >>> phi0[..., 0] = 1.0
        >>> consistent_target(gt, phi0)[1, 1].tolist()
        [4.0, 3.0]
    """
    return phi0 + _warp(gt, phi0)


def inner_mi(a: np.ndarray, b: np.ndarray, border: float = 0.1) -> float:
    """Mutual information (bits) of two ``(H, W)`` [0, 1] images over the inner part.

    ``border``: share of each side left out (where warping repeats edge pixels).
    """
    h, w = a.shape
    by, bx = int(border * h), int(border * w)
    crop = (slice(by, h - by), slice(bx, w - bx))
    return mutual_information(a[crop] * 255.0, b[crop] * 255.0)


def reference_check(thermal: np.ndarray, visible: np.ndarray, flow: np.ndarray,
                    rng: np.random.Generator) -> dict[str, float]:
    """Mutual information of an aligned pair before/after registration by ``flow`` and a control.

    Args:
        thermal, visible: ``(H, W)`` float32 in [0, 1], the dataset's aligned pair.
        flow: ``(H, W, 2)`` px, the global similarity estimate on that pair.
        rng: draws the control's direction.

    Returns:
        ``{'shift': mean |flow| px, 'mi': MI before, 'mi_registered': after
        warping by flow, 'mi_control': after a translation of the same mean
        size in a random direction}`` (MI in bits).
    """
    mag = float(np.hypot(flow[..., 0], flow[..., 1]).mean())
    ang = rng.uniform(0.0, 2.0 * np.pi)
    ctrl = np.empty_like(flow)
    ctrl[..., 0], ctrl[..., 1] = mag * np.cos(ang), mag * np.sin(ang)
    return {'shift': mag, 'mi': inner_mi(visible, thermal),
            'mi_registered': inner_mi(visible, _warp(thermal, flow)),
            'mi_control': inner_mi(visible, _warp(thermal, ctrl))}


def _ssim01(a: np.ndarray, b: np.ndarray) -> float:
    return ssim(convert.unit_to_uint8(a), convert.unit_to_uint8(b))


class _Models:
    """Fusion and corrector as numpy functions, with timing."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.fusion, self.fusion_info = load_frozen_fusion(args.fusion_variant, args.fusion_checkpoint,
                                                           args.stand_in_fusion)
        # as the pipeline runs it on the CPU (the default PipelineConfig.native_kernels)
        cfg = PipelineConfig()
        cfg = replace(cfg, corrector=replace(cfg.corrector, variant=args.corrector_variant,
                                             checkpoint=args.corrector_checkpoint))
        self.fusion_runner = TorchFusionRunner(self.fusion, native=cfg.native_kernels)
        self.corrector, self.corrector_card = build_runner('corrector', cfg, torch.device('cpu'),
                                                           fusion=self.fusion_runner)
        self._size: tuple[int, ...] = ()

    @torch.inference_mode()
    def fuse(self, thermal: np.ndarray, visible: np.ndarray) -> tuple[np.ndarray, float]:
        t0 = time.perf_counter()
        f = self.fusion(convert.to_tensor(thermal), convert.to_tensor(visible)).clamp(0, 1)
        return convert.to_numpy(f), (time.perf_counter() - t0) * 1e3

    @torch.inference_mode()
    def correct(self, fused: np.ndarray, visible: np.ndarray, thermal: np.ndarray
                ) -> tuple[np.ndarray, np.ndarray, np.ndarray, float]:
        tf, tv, tt = (convert.to_tensor(x) for x in (fused, visible, thermal))
        if tf.shape != self._size:   # a new image size is traced first: untimed, as a stream's first frame
            self.corrector(tf, tv, tt)
            self.fusion_runner(tt, tv)   # the fusion that register_refuse runs again, built at this size
            self._size = tf.shape
        if hasattr(self.corrector, 'reset'):
            self.corrector.reset()   # independent frames: no warm start from the previous one
        t0 = time.perf_counter()
        image, m, flow = self.corrector(tf, tv, tt)
        ms = (time.perf_counter() - t0) * 1e3
        return convert.to_numpy(image), convert.to_numpy(m), convert.to_numpy(flow), ms


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
    torch.set_num_threads(max(1, args.threads))   # OpenCV: single-threaded (FusionPipeline)
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
        # each method's own flow on the aligned pair: the origin of its consistent EPE
        flow0: dict[str, np.ndarray] = {'corrector': fl_al}
        if not args.no_ecc:
            flow0['ecc'] = affine_flow(ecc_register(th, vis)[1], h, w)
        _, flow0['similarity'], _ = similarity_register(th, vis)
        check = reference_check(th, vis, flow0['similarity'], np.random.default_rng([idx, 7]))
        aligned.append({'stem': pair.stem, 'psnr_vs_uncorrected': psnr_from_mse(
            masked_mse(corr_al, ref, np.ones(ref.shape, bool))),
            'fusion_psnr_change': fusion_psnr(corr_al, vis, th) - fusion_psnr(ref, vis, th),
            'mean_m': float(m_al.mean()), 'mean_flow': float(np.hypot(fl_al[..., 0], fl_al[..., 1]).mean()),
            'reference_check': check})
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
            flows: dict[str, np.ndarray] = {}
            if not args.no_ecc:
                t0 = time.perf_counter()
                reg, warp, _ = ecc_register(tw, vis)
                fr.ms['ecc'] = (time.perf_counter() - t0) * 1e3
                outs['ecc'], _ = models.fuse(reg, vis)
                flows['ecc'] = affine_flow(warp, h, w)
            if not args.no_similarity:
                reg, flows['similarity'], fr.ms['similarity'] = similarity_register(tw, vis)
                outs['similarity'], _ = models.fuse(reg, vis)
            corr, _, flows['corrector'], fr.ms['corrector'] = models.correct(fused, vis, tw)
            outs['corrector'] = corr
            if gt is not None:
                # bound: exact registration to where the global estimate puts the scene (needs gt)
                outs['oracle'], _ = models.fuse(_warp(tw, consistent_target(gt, flow0['similarity'])), vis)
                fr.ms['oracle'] = 0.0
                for name, fl in flows.items():
                    fr.epe[name] = _mean_epe(fl, gt, valid)
                    fr.epe_consistent[name] = _mean_epe(fl, consistent_target(gt, flow0[name]), valid)
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
                r['epe_consistent'] = float(np.mean([f.epe_consistent[m] for f in fs]))
                r['epe_consistent_ratio'] = r['epe_consistent'] / applied if applied > 0 else float('nan')
            row[m] = r
        summary[lv] = {'frames': len(fs), 'applied_mean_shift': applied, 'methods': row}
    changed = [a['psnr_vs_uncorrected'] for a in aligned if np.isfinite(a['psnr_vs_uncorrected'])]
    al = {'pairs': len(aligned), 'unchanged': len(aligned) - len(changed),
          # over the pairs the corrector changed at all (an unchanged pair has infinite PSNR)
          'psnr_vs_uncorrected_mean': float(np.mean(changed)) if changed else float('inf'),
          'psnr_vs_uncorrected_min': float(np.min(changed)) if changed else float('inf'),
          'fusion_psnr_change_mean_abs': float(np.mean([abs(a['fusion_psnr_change']) for a in aligned])),
          'fusion_psnr_change_max_abs': float(np.max([abs(a['fusion_psnr_change']) for a in aligned])),
          'mean_m': float(np.mean([a['mean_m'] for a in aligned])),
          'mean_flow_px': float(np.mean([a['mean_flow'] for a in aligned])),
          'reference_check': summarise_reference_check([a['reference_check'] for a in aligned])}
    return {'command': ' '.join(['regionfuse', *sys.argv[1:]]), 'machine': profiling.machine_info(),
            'levels': summary, 'aligned': al, 'fusion_ms_median': float(np.median(fuse_ms)),
            'fusion': models.fusion_info, 'corrector': models.corrector_card.get('name', ''),
            'args': {k: v for k, v in vars(args).items()}, 'threads': args.threads,
            'frames': [f.__dict__ for f in frames], 'aligned_pairs': aligned}


def summarise_reference_check(checks: list[dict[str, float]], min_shift: float = 0.5) -> dict:
    """Counts over the aligned pairs whose global estimate moves the thermal image (> ``min_shift`` px).

    Returns:
        ``{'pairs', 'moved', 'mean_shift_px', 'mi_raised_by_registration', 'mi_raised_by_control',
        'mi_gain_mean', 'mi_control_gain_mean'}`` (gains in bits, over the moved pairs).
    """
    moved = [c for c in checks if c['shift'] > min_shift]

    def mean_gain(key: str) -> float:
        return float(np.mean([c[key] - c['mi'] for c in moved])) if moved else 0.0
    return {'pairs': len(checks), 'moved': len(moved),
            'mean_shift_px': float(np.mean([c['shift'] for c in checks])) if checks else float('nan'),
            'mi_raised_by_registration': sum(c['mi_registered'] > c['mi'] for c in moved),
            'mi_raised_by_control': sum(c['mi_control'] > c['mi'] for c in moved),
            'mi_gain_mean': mean_gain('mi_registered'), 'mi_control_gain_mean': mean_gain('mi_control')}


def to_markdown(res: dict) -> str:
    """The summary as Markdown tables."""
    lines = ['| mean shift (px) | method | PSNR (dB) | SSIM | error recovered | flow EPE (px) | '
             'EPE / shift | consistent EPE / shift | registration ms |',
             '|---|---|---|---|---|---|---|---|---|']
    for lv, s in res['levels'].items():
        for m, r in s['methods'].items():
            epe = f"{r['epe']:.2f}" if 'epe' in r else '–'
            ratio = f"{100 * r['epe_ratio']:.0f} %" if 'epe_ratio' in r else '–'
            cons = f"{100 * r['epe_consistent_ratio']:.0f} %" if 'epe_consistent_ratio' in r else '–'
            rec = '–' if m == 'none' else f"{100 * r['recovered']:.1f} %"
            ms = '–' if m in ('none', 'oracle') else f"{r['ms_median']:.1f}"
            shift = f"{lv} (applied {s['applied_mean_shift']:.1f})" if lv != 'given' else 'given'
            lines.append(f"| {shift} | {m} | {r['psnr']:.2f} | {r['ssim']:.4f} | {rec} | {epe} | {ratio} "
                         f"| {cons} | {ms} |")
    a = res['aligned']
    lines += ['', f"Aligned input ({a['pairs']} pairs, {a['unchanged']} returned unchanged): corrector "
              f"output vs uncorrected PSNR over the changed ones {a['psnr_vs_uncorrected_mean']:.2f} dB "
              f"(min {a['psnr_vs_uncorrected_min']:.2f}); "
              f"fusion-PSNR change mean {a['fusion_psnr_change_mean_abs']:.3f} dB, "
              f"max {a['fusion_psnr_change_max_abs']:.3f} dB; mean M {a['mean_m']:.3f}, "
              f"mean |flow| {a['mean_flow_px']:.2f} px.",
              _reference_line(a['reference_check']),
              f"Fusion (common to all methods, not in 'registration ms'): median "
              f"{res['fusion_ms_median']:.1f} ms/frame; {res['threads']} threads."]
    return '\n'.join(lines)


def _reference_line(c: dict) -> str:
    return (f"Reference check: on {c['moved']} of {c['pairs']} aligned pairs the global estimate moves the "
            f"thermal image (mean {c['mean_shift_px']:.2f} px over all pairs); registering by it raises the "
            f"visible-thermal mutual information in {c['mi_raised_by_registration']} of them (mean "
            f"{c['mi_gain_mean']:+.4f} bits), a random translation of the same size in "
            f"{c['mi_raised_by_control']} ({c['mi_control_gain_mean']:+.4f} bits).")


def run(args: argparse.Namespace) -> int:
    """Evaluate, print the Markdown table and optionally write JSON.

    Fast paths are built at a size's first pair (:func:`~ros2_regionfuse.inference.runtime.inline_builds`),
    so no build runs beside a timed frame.
    """
    with inline_builds():
        return _run(args)


def _run(args: argparse.Namespace) -> int:
    if args.mode == 'rig':
        from . import eval_rig
        res = eval_rig.run(args)
        print(eval_rig.to_markdown(res['sets']))
        if args.json:
            atomic_write_bytes(args.json, json.dumps(res, indent=1, default=str).encode())
        return 0
    if not args.thermal or not args.rgb:
        raise ConfigError('shift mode needs --thermal and --rgb')
    if args.seeds < 1:
        raise ConfigError('--seeds must be >= 1')
    if any(s < 0 for s in args.mean_shift):
        raise ConfigError('--mean-shift values must be >= 0')
    res = evaluate(args)
    print(to_markdown(res))
    if args.json:
        atomic_write_bytes(args.json, json.dumps(res, indent=1, default=str).encode())
    return 0
