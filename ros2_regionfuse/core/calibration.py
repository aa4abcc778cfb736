"""Rig calibration from recordings: the thermal->RGB homography from many registered frames.

A fixed thermal + RGB rig has one geometry. Each frame pair is registered with
:func:`~.registration.register` (the cross-modal registration the corrector
runs per frame) in the thermal camera's frame at a working width of at most
640 px, from a few starting fields of view so that a thermal camera covering
only a sub-window of the RGB view is captured too (:func:`register_frame`);
the per-frame estimates are then aggregated robustly:

1. frames whose registration is not confident (gain and correlation below the
   corrector's gate) are set aside;
2. every confident frame maps the thermal frame's corners into the RGB frame;
   the per-corner median over frames is the consensus, and frames whose
   corners lie further than ``max(min_inlier_px, 3 x MAD)`` from it are
   rejected as outliers;
3. the homography (or affine / similarity map) is fitted to the inlier frames'
   corner correspondences, each frame weighted by its registration's correlation
   and, iteratively, by a Cauchy weight of its distance from the fit (an
   M-estimator: a frame a few pixels off pulls less than a clean one); the
   residual spread is the RMS distance of their corners from the fit.

The weighting measures: on the synthetic rigs of ``regionfuse eval-calibration``
(24 real pairs) the reprojection error is 0.82 / 0.91 px (same size, clean / 10 %
corrupted) and 0.79 / 0.81 px (sub-window) against 0.88 / 1.03 and 0.93 / 0.87 px for
an unweighted fit to the same inliers.

The result follows ``align.homography``'s convention: thermal pixels ->
RGB pixels of the original images (pixel centre ``i`` at coordinate ``i``).
:func:`calibrate` refuses (:class:`CalibrationError`) when too few frames are
confident or the inliers disagree by more than ``max_spread_px``.
"""
from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass, field, replace

import cv2
import numpy as np

from . import convert
from . import registration as reg_mod
from .checks import RegionFuseError

MODELS = ('homography', 'affine', 'similarity')
#: reweighting rounds of the final fit (it settles within 5 on the benchmark rigs)
ROBUST_ITERS = 10
#: Cauchy scale in units of the frames' median distance from the fit: the usual tuning constant
#: 2.385 on a robust sigma of 1.4826 x median. A scale of 1 x median measures better on the
#: benchmark rigs (0.80 / 0.82 px) but lets a stream of a few repeated scenes collapse onto one
#: of them (1.17 px against 0.70 px unweighted).
CAUCHY_K = 3.5


class CalibrationError(RegionFuseError, ValueError):
    """The frames do not give one confident rig geometry."""


@dataclass(frozen=True)
class CalibrationConfig:
    """Settings of :func:`calibrate`.

    Attributes:
        model: the map written: homography, affine or similarity.
        work_width: RGB width (px) the frames are registered at.
        start_scales: thermal-field-of-view fractions of the RGB view tried as starts
            (1: the thermal image spans the RGB frame; 0.5: it covers half its width).
        min_gain, min_correlation: a frame counts when its registration gains at least
            this much (relative decorrelation reduction) and reaches this correlation.
        min_frames: confident frames needed (after outlier rejection: at least half of them).
        min_inlier_px: inlier radius floor (px of the RGB frame at the original size).
        max_spread_px: largest RMS corner residual accepted over the inliers.
        fine_iters: Gauss-Newton iterations of each frame's map at full resolution (0: none).
    """

    model: str = 'homography'
    work_width: int = 640
    start_scales: tuple[float, ...] = (1.0, 0.8, 0.64, 0.5)
    min_gain: float = 0.13
    min_correlation: float = 0.24
    min_frames: int = 3
    min_inlier_px: float = 3.0
    max_spread_px: float = 12.0
    fine_iters: int = 6
    registration: reg_mod.RegistrationConfig = reg_mod.RegistrationConfig(model='homography')


@dataclass
class FrameEstimate:
    """One pair's registration: ``homography`` thermal px -> RGB px, its confidence."""

    homography: np.ndarray
    gain: float
    correlation: float
    start_scale: float


@dataclass
class Calibration:
    """Result of :func:`calibrate`.

    Attributes:
        homography: ``(3, 3)`` thermal px -> RGB px (original sizes), ``[2, 2] = 1``.
        frames: pairs seen; used: inliers; low_confidence, outliers: rejected frames.
        spread_px: RMS distance (px) of the inliers' thermal corners from the fit.
        thermal_size, rgb_size: ``(width, height)`` of the images.
    """

    homography: np.ndarray
    frames: int
    used: int
    low_confidence: int
    outliers: int
    spread_px: float
    thermal_size: tuple[int, int]
    rgb_size: tuple[int, int]
    estimates: list[FrameEstimate] = field(default_factory=list, repr=False)

    def corner_error(self, truth: np.ndarray) -> float:
        """Mean distance (px) between where this and ``truth`` put the thermal frame's corners."""
        c = _corners(self.thermal_size)
        return float(np.hypot(*(_apply(self.homography, c) - _apply(truth, c)).T).mean())


def _corners(size_wh: tuple[int, int]) -> np.ndarray:
    w, h = size_wh
    return np.array([[0.0, 0.0], [w - 1.0, 0.0], [w - 1.0, h - 1.0], [0.0, h - 1.0]])


def _apply(h: np.ndarray, pts: np.ndarray) -> np.ndarray:
    x, y = reg_mod.project(h, pts[:, 0], pts[:, 1])
    return np.stack([x, y], 1)


def _scale_map(sx: float, sy: float) -> np.ndarray:
    """Pixel-centre map of a resize by ``(sx, sy)``: ``x' = (x + 0.5) s - 0.5``."""
    return np.array([[sx, 0.0, 0.5 * sx - 0.5], [0.0, sy, 0.5 * sy - 0.5], [0.0, 0.0, 1.0]])


def start_map(thermal_wh: tuple[int, int], rgb_wh: tuple[int, int], fraction: float) -> np.ndarray:
    """Thermal px -> RGB px of a thermal view spanning ``fraction`` of the RGB view, centred.

    The thermal image keeps its aspect ratio; at ``fraction`` 1 its larger relative
    side fills the RGB frame.

    Example:
        >>> m = start_map((320, 256), (640, 512), 1.0)
        >>> [round(float(v), 3) for v in m[0]]
        [2.0, 0.0, 0.5]
    """
    tw, th = thermal_wh
    rw, rh = rgb_wh
    s = fraction * min(rw / tw, rh / th)
    m = _scale_map(s, s)
    # centre: the scaled thermal frame's centre on the RGB frame's centre
    cx, cy = reg_mod.project(m, np.array([(tw - 1) / 2.0]), np.array([(th - 1) / 2.0]))
    m[0, 2] += (rw - 1) / 2.0 - float(cx[0])
    m[1, 2] += (rh - 1) / 2.0 - float(cy[0])
    return m


def register_frame(thermal: np.ndarray, rgb: np.ndarray, cfg: CalibrationConfig | None = None
                   ) -> FrameEstimate:
    """Register one pair at native sizes: thermal ``(Ht, Wt)`` any dtype, RGB ``(H, W, 3)`` uint8.

    The registration works in the thermal camera's frame (scaled to at most
    ``work_width``): for each start of :attr:`CalibrationConfig.start_scales` the RGB
    luminance is resampled into it by the start map, so the thermal image always
    fills the frame it is registered in (a thermal view that covers only part of the
    RGB view leaves no empty border that would look like an edge).

    Returns:
        The best estimate over the starts by correlation.
    """
    cfg = cfg or CalibrationConfig()
    t = convert.thermal_to_unit(np.asarray(thermal), 'percentile', (1.0, 99.0), (0.0, 65535.0), False)
    u = convert.rgb_to_unit(rgb)
    y = convert.luminance(u) if u.ndim == 3 else u
    th_h, th_w = t.shape
    st = min(1.0, cfg.work_width / th_w)
    ww, wh = max(1, int(round(th_w * st))), max(1, int(round(th_h * st)))
    scale = _scale_map(ww / th_w, wh / th_h)            # thermal px -> work px
    t_w = cv2.resize(t, (ww, wh), interpolation=cv2.INTER_AREA) if st < 1.0 else t
    best = _register_in_rgb_frame(t, y, cfg)
    for frac in cfg.start_scales:
        if frac >= 1.0:
            continue   # the thermal view spanning the RGB view: registered in the RGB frame above
        g0 = start_map((th_w, th_h), (y.shape[1], y.shape[0]), frac)   # thermal px -> RGB px
        w2rgb = g0 @ np.linalg.inv(scale)                                # work px -> RGB px
        v_w = cv2.warpPerspective(y, w2rgb, (ww, wh), flags=cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP,
                                  borderMode=cv2.BORDER_CONSTANT)
        reg = _register_fine(v_w, t_w, cfg)
        # thermal px x -> work q = S x -> visible work p = H^-1 q -> RGB g0 S^-1 p
        t2rgb = reg_mod.compose(reg_mod.compose(w2rgb, reg_mod.invert(reg.homography)), scale)
        est = FrameEstimate(t2rgb, reg.gain, float(reg.extra.get('rho', float('nan'))), frac)
        if reg.gain > 0 and score(t, y, est.homography) > score(t, y, best.homography):
            best = est
    return best


def score(t: np.ndarray, y: np.ndarray, t2rgb: np.ndarray, width: int = 160) -> float:
    """Edge-descriptor correlation of a thermal->RGB map, in one frame for every candidate.

    Both images at ``width`` px wide (RGB frame), the thermal image mapped by ``t2rgb``;
    zero-mean normalised correlation of the descriptors over the pixels the thermal
    view covers. Candidates registered in different frames are compared by it.
    """
    h0, w0 = y.shape
    s = width / w0
    wh = max(1, int(round(h0 * s)))
    down = _scale_map(width / w0, wh / h0)
    y_s = cv2.resize(y, (width, wh), interpolation=cv2.INTER_AREA)
    m = down @ t2rgb
    t_s = cv2.warpPerspective(t, m, (width, wh), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT)
    cover = cv2.warpPerspective(np.ones_like(t), m, (width, wh), flags=cv2.INTER_NEAREST,
                                borderMode=cv2.BORDER_CONSTANT) > 0.5
    cover = cv2.erode(cover.astype(np.uint8), np.ones((5, 5), np.uint8)) > 0
    if cover.sum() < 0.05 * cover.size:
        return -1.0
    a = reg_mod.edge_descriptor(y_s)[cover].astype(np.float64)
    b = reg_mod.edge_descriptor(t_s)[cover].astype(np.float64)
    a -= a.mean(0)
    b -= b.mean(0)
    return float((a * b).sum() / max(math.sqrt(float((a * a).sum()) * float((b * b).sum())), 1e-12))


def _register_fine(visible: np.ndarray, thermal: np.ndarray, cfg: CalibrationConfig) -> reg_mod.Registration:
    """:func:`~.registration.register`, then ``cfg.fine_iters`` iterations at full resolution.

    At 640x480 the per-frame registration ends at half resolution (the corrector's
    budget); a calibration runs once, so each frame is refined where the pixels are:
    eval-calibration's reprojection error 1.21 -> 0.88 px (same-size rig), 1.16 -> 0.93 px
    (sub-window rig). Images upsampled from a smaller original gain nothing from it
    (set ``fine_iters`` 0 for them).
    """
    reg = reg_mod.register(visible, thermal, cfg.registration)
    if cfg.fine_iters > 0 and reg.gain > 0:
        rc = replace(cfg.registration, polish_iters=cfg.fine_iters)
        h, _ = reg_mod._polish(visible, thermal, reg.size, reg.homography, 1, rc)
        reg = replace(reg, homography=h)
    return reg


def _register_in_rgb_frame(t: np.ndarray, y: np.ndarray, cfg: CalibrationConfig) -> FrameEstimate:
    """The start that spans the RGB view: the thermal image resized into the RGB frame (work width)."""
    h0, w0 = y.shape
    s = min(1.0, cfg.work_width / w0)
    ww, wh = max(1, int(round(w0 * s))), max(1, int(round(h0 * s)))
    y_w = cv2.resize(y, (ww, wh), interpolation=cv2.INTER_AREA) if s < 1.0 else y
    down = _scale_map(ww / w0, wh / h0)                                  # RGB px -> work px
    g0 = down @ start_map((t.shape[1], t.shape[0]), (w0, h0), 1.0)      # thermal px -> work px
    warped = cv2.warpPerspective(t, g0, (ww, wh), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT)
    reg = _register_fine(y_w, warped, cfg)
    # thermal content at work pixel p lies at warped px H p, i.e. thermal px g0^-1 H p
    t2w = reg_mod.invert(reg_mod.compose(np.linalg.inv(g0), reg.homography))
    return FrameEstimate(reg_mod.compose(np.linalg.inv(down), t2w), reg.gain,
                         float(reg.extra.get('rho', float('nan'))), 1.0)


def aggregate(estimates: list[FrameEstimate], thermal_wh: tuple[int, int], rgb_wh: tuple[int, int],
              cfg: CalibrationConfig | None = None) -> Calibration:
    """The robust rig map of per-frame estimates (module docstring).

    Raises:
        CalibrationError: too few confident frames, too few inliers, or a residual spread above
            :attr:`CalibrationConfig.max_spread_px`.
    """
    cfg = cfg or CalibrationConfig()
    if cfg.model not in MODELS:
        raise CalibrationError(f'calibrate: model must be one of {MODELS}, got {cfg.model!r}')
    conf = [e for e in estimates if e.gain >= cfg.min_gain and e.correlation >= cfg.min_correlation]
    n, low = len(estimates), len(estimates) - len(conf)
    if len(conf) < cfg.min_frames:
        raise CalibrationError(f'calibrate: {len(conf)} of {n} frames registered confidently (need '
                               f'{cfg.min_frames}); the cameras may not see the same scene, or the '
                               'scenes carry too little structure')
    c = _corners(thermal_wh)
    pts = np.stack([_apply(e.homography, c) for e in conf])          # (frames, 4, 2)
    med = np.median(pts, 0)
    dev = np.hypot(*(pts - med).transpose(2, 0, 1)).max(1)            # per frame: worst corner
    mad = float(np.median(np.abs(dev - np.median(dev))))
    radius = max(cfg.min_inlier_px * max(rgb_wh) / 640.0, 3.0 * 1.4826 * mad + float(np.median(dev)))
    inl = dev <= radius
    if inl.sum() < max(cfg.min_frames, math.ceil(0.5 * len(conf))):
        raise CalibrationError(f'calibrate: the confident frames disagree (only {int(inl.sum())} of '
                               f'{len(conf)} within {radius:.1f} px of the consensus): the rig is not '
                               'rigid, or the frames come from different rigs')
    corr = np.array([e.correlation for e in conf], np.float64)

    def fit(mask: np.ndarray, weights: np.ndarray | None = None) -> np.ndarray:
        # Every frame maps the same corners: the weighted least-squares fit to all frames' corners
        # is the fit to their weighted mean corners.
        w = np.ones(int(mask.sum())) if weights is None else weights
        dst = (pts[mask] * w[:, None, None]).sum(0) / w.sum()
        if cfg.model == 'homography':
            m = cv2.getPerspectiveTransform(c.astype(np.float32), dst.astype(np.float32)).astype(np.float64)
            return m / m[2, 2]
        return reg_mod.fit_model(c, dst, cfg.model)

    def robust_fit(mask: np.ndarray) -> np.ndarray:
        # correlation-weighted, Cauchy-reweighted over the frames' mean corner distance from the fit
        m = fit(mask)
        for _ in range(ROBUST_ITERS):
            d = np.hypot(*(pts[mask] - _apply(m, c)[None]).transpose(2, 0, 1)).mean(1)
            scale = max(CAUCHY_K * float(np.median(d)), 1e-3)
            m = fit(mask, corr[mask] / (1.0 + (d / scale) ** 2))
        return m
    h = fit(inl)
    # one trimming round: frames far from the joint fit leave it (they pulled on it)
    res = np.hypot(*(pts - _apply(h, c)[None]).transpose(2, 0, 1)).max(1)
    rms = float(np.sqrt((res[inl] ** 2).mean()))
    keep = inl & (res <= max(2.5 * rms, cfg.min_inlier_px * max(rgb_wh) / 640.0))
    if keep.sum() >= max(cfg.min_frames, math.ceil(0.5 * len(conf))) and keep.sum() < inl.sum():
        inl = keep
    h = robust_fit(inl)
    src = np.tile(c, (int(inl.sum()), 1))
    dst = pts[inl].reshape(-1, 2)
    resid = np.hypot(*(_apply(h, src) - dst).T)
    spread = float(np.sqrt((resid ** 2).mean()))
    if spread > cfg.max_spread_px * max(rgb_wh) / 640.0:
        raise CalibrationError(f'calibrate: the inlier frames disagree by {spread:.1f} px RMS '
                               f'(limit {cfg.max_spread_px * max(rgb_wh) / 640.0:.1f} px)')
    return Calibration(h, n, int(inl.sum()), low, int((~inl).sum()), spread, thermal_wh, rgb_wh, estimates)


def calibrate(pairs: Iterable[tuple[np.ndarray, np.ndarray]], cfg: CalibrationConfig | None = None
              ) -> Calibration:
    """Calibrate from ``(thermal, rgb)`` pairs of one rig (sizes fixed across pairs).

    Raises:
        CalibrationError: no pairs, sizes that change, or :func:`aggregate`'s refusals.
    """
    cfg = cfg or CalibrationConfig()
    if cfg.registration.model != cfg.model:   # each frame registered with the model written
        cfg = replace(cfg, registration=replace(cfg.registration, model=cfg.model))
    est, sizes = [], set()
    for thermal, rgb in pairs:
        sizes.add(((thermal.shape[1], thermal.shape[0]), (rgb.shape[1], rgb.shape[0])))
        if len(sizes) > 1:
            raise CalibrationError(f'calibrate: image sizes change between pairs: {sorted(sizes)}')
        est.append(register_frame(thermal, rgb, cfg))
    if not est:
        raise CalibrationError('calibrate: no image pairs')
    (th_wh, rgb_wh), = sizes
    return aggregate(est, th_wh, rgb_wh, cfg)


class OnlineCalibration:
    """Calibration from a live stream (the node's ``align.mode: auto``): estimate, then hold.

    Pairs offered with :meth:`add` are registered (:func:`register_frame`) until
    ``frames`` of them are confident; then :func:`aggregate` gives the rig's map,
    which is held (:attr:`result`) until :meth:`restart`. The estimate uses the last
    ``window`` registered pairs, so a stretch of featureless or unrelated frames at the
    start is forgotten rather than holding the estimate back forever; an aggregate
    that refuses (frames disagreeing) waits for more confident frames.

    Args:
        cfg: calibration settings (model, thresholds).
        frames: confident frames the estimate needs (>= ``cfg.min_frames``).
        window: registered pairs kept (>= ``frames``).

    Raises:
        CalibrationError: inconsistent ``frames`` / ``window``.
    """

    def __init__(self, cfg: CalibrationConfig | None = None, frames: int = 8, window: int = 24) -> None:
        cfg = cfg or CalibrationConfig()
        if cfg.registration.model != cfg.model:
            cfg = replace(cfg, registration=replace(cfg.registration, model=cfg.model))
        if frames < cfg.min_frames or window < frames:
            raise CalibrationError(f'online calibration: need {cfg.min_frames} <= frames ({frames}) '
                                   f'<= window ({window})')
        self.cfg, self.frames, self.window = cfg, frames, window
        self.restart()

    def restart(self) -> None:
        """Forget the estimate and its frames; the next pairs start a new one."""
        self.estimates: list[FrameEstimate] = []
        self.result: Calibration | None = None
        self.registered = 0
        self.last_error = ''
        self._sizes: tuple | None = None

    @property
    def state(self) -> str:
        """``'fixed'`` once the estimate is held, else ``'collecting'``."""
        return 'fixed' if self.result is not None else 'collecting'

    def confident(self) -> int:
        """Confident pairs among those kept."""
        c = self.cfg
        return sum(e.gain >= c.min_gain and e.correlation >= c.min_correlation for e in self.estimates)

    def add(self, thermal: np.ndarray, rgb: np.ndarray) -> Calibration | None:
        """Register one pair (thermal ``(Ht, Wt)``, RGB ``(H, W, 3)`` uint8) unless the estimate is held.

        A change of either image size starts the collection again (another camera mode).

        Returns:
            The held :class:`Calibration`, or None while collecting.
        """
        if self.result is not None:
            return self.result
        sizes = ((thermal.shape[1], thermal.shape[0]), (rgb.shape[1], rgb.shape[0]))
        if sizes != self._sizes:
            self.estimates, self._sizes = [], sizes
        self.estimates = (self.estimates + [register_frame(thermal, rgb, self.cfg)])[-self.window:]
        self.registered += 1
        if self.confident() >= self.frames:
            try:
                self.result = aggregate(self.estimates, sizes[0], sizes[1], self.cfg)
                self.last_error = ''
            except CalibrationError as e:
                self.last_error = str(e)
        return self.result

    def summary(self) -> str:
        """One line for logs and diagnostics."""
        if self.result is not None:
            r = self.result
            return (f'fixed from {r.used} of {r.frames} pairs ({r.low_confidence} low confidence, '
                    f'{r.outliers} outliers), spread {r.spread_px:.2f} px RMS')
        more = f'; {self.last_error}' if self.last_error else ''
        return (f'collecting: {self.confident()} of {self.frames} confident pairs '
                f'({self.registered} registered){more}')


def params_yaml(cal: Calibration, source: str = '') -> str:
    """The node parameter file (``/**: ros__parameters: align: ...``) of a calibration."""
    vals = ', '.join(repr(float(v)) for v in (cal.homography / cal.homography[2, 2]).ravel())
    return (f'# regionfuse calibrate{": " + source if source else ""}\n'
            f'# frames {cal.frames}: used {cal.used}, rejected {cal.low_confidence} (low confidence) + '
            f'{cal.outliers} (outliers); residual spread {cal.spread_px:.2f} px RMS\n'
            f'# thermal {cal.thermal_size[0]}x{cal.thermal_size[1]} -> '
            f'RGB {cal.rgb_size[0]}x{cal.rgb_size[1]}; '
            'align.homography maps thermal pixels to RGB pixels (row-major)\n'
            '/**:\n  ros__parameters:\n    align:\n      mode: homography\n'
            f'      homography: [{vals}]\n')
