"""The pipeline benchmark behind ``regionfuse bench``: frames, references, timing, ratios, targets.

For each ``--size WxH`` (default 640x480 and 1280x1024) the whole pipeline
(:meth:`FusionPipeline.process`: preprocess = conversion, thermal AGC,
pre-alignment by homography and colour; fusion; corrector; postprocess) runs on
real pairs after warm-up, and the median and 95th percentile of each stage over
``--repeats`` runs are reported with GFLOPs and parameters of each model and the
peak resident memory. In the same run the references are timed on the same
inputs: the corrector's ``paper`` configuration (published widths and scales)
and ``reference_dense`` (a SeAFusion-sized dense CNN fusion, ~100 GFLOPs at
640x480); the ratios are printed (targets at 640x480: pipeline median <= 50 ms,
>= 100x faster than ``corrector_paper`` and >= 40x faster than
``reference_dense``). At a size timed for both, the pipeline's runs and the
references' runs alternate in ``--rounds`` rounds (default 3), so a drift of
the machine's speed during the run weighs on both sides of a ratio alike; the
ratio of the pooled medians is the result, the per-round ratios show the spread.

Inputs, in this order: ``--data`` (a folder with ``ir/`` and ``vi/`` or a ROS 2
bag), the bundled demo recording (``ros2_regionfuse/data/sample_demo``: mono16
thermal 320x256 and its calibration homography), the committed test pairs
(``test/data``), ``../shared/data/ivif/MSRS``. RGB frames are resized to the
benchmark size; thermal frames keep their camera size and are mapped into the
RGB frame by the pipeline's homography pre-alignment. 8-bit thermal images are
turned into 14-bit raw counts so that the percentile AGC runs as on a camera.

Weights: ``--fusion-checkpoint``/``--corrector-checkpoint``, else the shipped
weights, else random initialisation (timing does not depend on the values; the
report says which). References are always randomly initialised.
"""
from __future__ import annotations

import argparse
import functools
import gc
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import torch

from .. import native
from ..core import profiling
from ..core.checks import ConfigError
from ..core.config import PipelineConfig
from ..core.paths import BUNDLED_RECORDING, TEST_PAIRS, data_root
from ..core.weights import shipped_weights
from ..models.register_refuse import NAME as REGISTER_REFUSE
from .runtime import inline_builds

log = logging.getLogger(__name__)

BUNDLED_BAG = BUNDLED_RECORDING
SHARED_PAIRS = data_root() / 'MSRS'
THERMAL_TOPIC, RGB_TOPIC = '/thermal/image_raw', '/rgb/image_raw'

REFERENCE_CORRECTOR = 'corrector_paper'
REFERENCE_FUSION = 'reference_dense'


@dataclass(frozen=True)
class BenchDefaults:
    """Defaults of the benchmark (the targets are those of the performance issue)."""

    sizes: tuple[str, ...] = ('640x480', '1280x1024')
    repeats: int = 20
    warmup: int = 3
    reference_repeats: int = 3
    reference_warmup: int = 1
    rounds: int = 3
    max_pairs: int = 4
    thermal_size: tuple[int, int] = (640, 512)   # camera size given to 8-bit thermal image pairs
    counts_offset: float = 7000.0                # 8-bit grey -> 14-bit raw counts (Boson-like)
    counts_gain: float = 8.0
    target_size: str = '640x480'                 # size the targets apply to
    target_pipeline_ms: float = 50.0
    target_fusion_ms: float = 30.0
    target_corrector_ms: float = 20.0
    target_vs_corrector_paper: float = 100.0
    target_vs_reference_dense: float = 40.0
    seed: int = 0


DEFAULTS = BenchDefaults()
STAGES = ('preprocess', 'fusion', 'corrector', 'postprocess', 'total')


@dataclass
class BenchFrames:
    """Input frames at their camera sizes.

    Attributes:
        thermal: raw thermal frames ``(Ht, Wt)`` uint16 counts.
        rgb: RGB frames ``(H, W, 3)`` uint8, all of one size.
        homography: 3x3 thermal->RGB homography at these sizes.
        source: where the frames came from.
    """

    thermal: list[np.ndarray]
    rgb: list[np.ndarray]
    homography: np.ndarray
    source: str
    names: list[str] = field(default_factory=list)


def parse_size(text: str) -> tuple[int, int]:
    """``'640x480'`` -> ``(640, 480)`` (width, height).

    Raises:
        ConfigError: not ``WxH`` with positive integers.

    Example:
        >>> parse_size('640x480')
        (640, 480)
    """
    try:
        w, h = (int(v) for v in text.lower().split('x'))
    except ValueError as e:
        raise ConfigError(f'size must be WIDTHxHEIGHT, got {text!r}') from e
    if w < 1 or h < 1:
        raise ConfigError(f'size must be positive, got {text!r}')
    return w, h


# ---------------------------------------------------------------------------
# input data
# ---------------------------------------------------------------------------

def _counts(gray_u8: np.ndarray) -> np.ndarray:
    """8-bit thermal grey -> uint16 raw counts (affine, as a 14-bit radiometric camera)."""
    d = DEFAULTS
    return (gray_u8.astype(np.float32) * d.counts_gain + d.counts_offset).astype(np.uint16)


def frames_from_bag(path: Path, max_pairs: int) -> BenchFrames:
    """Thermal/RGB frames (in message order) and the rig homography of a recording.

    Uses ``calibration.yaml`` beside the bag for the homography (identity
    scaled to the RGB size when absent).

    Raises:
        BagError: unreadable bag or missing topics.
    """
    import yaml

    from ..core import bagio
    thermal: list[np.ndarray] = []
    rgb: list[np.ndarray] = []
    for m in bagio.read_messages(path, [THERMAL_TOPIC, RGB_TOPIC]):
        if len(thermal) >= max_pairs and len(rgb) >= max_pairs:
            break
        img = bagio.image_array(m.decode(), copy=True)
        if m.topic == THERMAL_TOPIC and len(thermal) < max_pairs:
            thermal.append(img if img.dtype == np.uint16 else _counts(img))
        elif m.topic == RGB_TOPIC and len(rgb) < max_pairs:
            enc = m.decode().encoding
            if img.ndim == 2:
                img = cv2.cvtColor(img, cv2.COLOR_GRAY2RGB)
            elif enc.startswith('bgr'):
                img = cv2.cvtColor(img[..., :3], cv2.COLOR_BGR2RGB)
            rgb.append(np.ascontiguousarray(img[..., :3]))
    n = min(len(thermal), len(rgb))
    if n == 0:
        raise ConfigError(f'{path}: no thermal/RGB frames on {THERMAL_TOPIC}, {RGB_TOPIC}')
    th, tw = thermal[0].shape[:2]
    hh, ww = rgb[0].shape[:2]
    hom = np.diag([ww / tw, hh / th, 1.0])
    calib = path / 'calibration.yaml'
    if calib.is_file():
        params = yaml.safe_load(calib.read_text()).get('/**', {}).get('ros__parameters', {})
        values = params.get('align', {}).get('homography')
        if values is not None:
            hom = np.asarray(values, np.float64).reshape(3, 3)
    return BenchFrames(thermal[:n], rgb[:n], hom, f'bag {path}', [f'frame{i}' for i in range(n)])


def frames_from_folder(path: Path, max_pairs: int) -> BenchFrames:
    """Pairs ``ir/NAME``, ``vi/NAME`` of a folder; thermal resized to a camera size, as raw counts.

    Raises:
        ConfigError, ImageIOError: no pairs or unreadable files.
    """
    from ..core.imageio import match_pairs, read_gray, read_rgb
    pairs, _ = match_pairs(path / 'ir', path / 'vi')
    if not pairs:
        raise ConfigError(f'{path}: no ir/ + vi/ image pairs')
    tw, th = DEFAULTS.thermal_size
    thermal, rgb, names = [], [], []
    size = None
    for p in sorted(pairs, key=lambda q: q.stem)[:max_pairs]:
        t = read_gray(p.thermal, as_uint8=True)
        v = read_rgb(p.rgb)
        size = size or (v.shape[1], v.shape[0])
        rgb.append(cv2.resize(v, size, interpolation=cv2.INTER_AREA))
        thermal.append(_counts(cv2.resize(t, (tw, th), interpolation=cv2.INTER_LINEAR)))
        names.append(p.stem)
    hom = np.diag([size[0] / tw, size[1] / th, 1.0])
    return BenchFrames(thermal, rgb, hom, f'pairs {path}', names)


def load_frames(data: Path | None, max_pairs: int) -> BenchFrames:
    """Frames from ``data`` or the first available default source (see the module docstring).

    Raises:
        ConfigError: ``data`` given but unusable, or no source available.
    """
    def from_path(p: Path) -> BenchFrames:
        if (p / 'ir').is_dir() and (p / 'vi').is_dir():
            return frames_from_folder(p, max_pairs)
        return frames_from_bag(p, max_pairs)

    if data is not None:
        return from_path(data)
    for cand in (BUNDLED_BAG, TEST_PAIRS, SHARED_PAIRS):
        if cand.exists():
            try:
                return from_path(cand)
            except Exception as e:  # noqa: BLE001 - try the next source, say why
                log.warning('bench data %s unusable (%s): trying the next source', cand, e)
    raise ConfigError('no benchmark data: give --data (folder with ir/ and vi/, or a bag)')


def frames_at(frames: BenchFrames, size: tuple[int, int]) -> tuple[list[np.ndarray], np.ndarray]:
    """RGB frames resized to ``size`` and the homography mapping thermal into them."""
    w, h = size
    h0, w0 = frames.rgb[0].shape[:2]
    shrink = w < w0 and h < h0
    interp = cv2.INTER_AREA if shrink else cv2.INTER_LINEAR
    rgb = [np.ascontiguousarray(cv2.resize(v, (w, h), interpolation=interp)) for v in frames.rgb]
    hom = np.diag([w / w0, h / h0, 1.0]) @ frames.homography
    return rgb, hom / hom[2, 2]


# ---------------------------------------------------------------------------
# models
# ---------------------------------------------------------------------------

def _weights_or_random(kind: str, variant: str, checkpoint: str, seed: int
                       ) -> tuple[str, torch.nn.Module | None, str]:
    """Decide how a model gets its weights: (checkpoint to load, module to use instead, note)."""
    from ..models.registry import build_corrector, build_fusion
    if kind == 'corrector' and variant == REGISTER_REFUSE:
        return '', None, 'no learned weights (registration, then the fusion again)'
    if checkpoint:
        return checkpoint, None, f'weights {checkpoint}'
    path = shipped_weights(variant)
    if path.is_file():
        return '', None, f'shipped weights {path.name}'
    torch.manual_seed(seed)
    module = build_fusion(variant) if kind == 'fusion' else build_corrector(variant)
    log.warning('%s: no weights (%s missing): random initialisation, fine for timing only', variant, path)
    return '', module, 'random initialisation (no weights found)'


def model_cost(kind: str, variant: str, size: tuple[int, int]) -> dict[str, float]:
    """GFLOPs at ``size`` and parameter count of an (untrained) ``variant``."""
    from ..models.registry import build_corrector, build_fusion
    if kind == 'corrector' and variant == REGISTER_REFUSE:   # no network: its cost is a second fusion
        return {'gflops': float('nan'), 'params': 0}
    m = (build_fusion(variant) if kind == 'fusion' else build_corrector(variant)).eval()
    w, h = size
    n_in = 2 if kind == 'fusion' else 3
    x = [torch.rand(1, 1, h, w) for _ in range(n_in)]
    return {'gflops': profiling.count_flops(m, *x) / 1e9, 'params': profiling.count_params(m)}


# ---------------------------------------------------------------------------
# timing
# ---------------------------------------------------------------------------

def pipeline_samples(pipe: Any, thermal: list[np.ndarray], rgb: list[np.ndarray], repeats: int,
                     warmup: int, start: int = 0) -> tuple[dict[str, list[float]], int]:
    """Run ``pipe.process`` over the frames (cycling from frame ``start``); raw stage times.

    Returns:
        ``(ms per stage, unchanged)``; ``unchanged``: timed frames the corrector left
        unchanged (M = 0 everywhere: skipped as aligned, so its time is that of the
        global check alone).
    """
    n = len(rgb)
    with inline_builds():   # the fast paths are built before anything is timed
        for i in range(warmup):
            pipe.process(thermal[(start + i) % n], rgb[(start + i) % n])
    samples: dict[str, list[float]] = {k: [] for k in STAGES}
    unchanged = 0
    for i in range(start, start + repeats):
        res = pipe.process(thermal[i % n], rgb[i % n])
        for k in STAGES:
            samples[k].append(res.timings_ms.get(k, 0.0))
        if 'align_concurrent' in res.timings_ms:   # align_stage auto: on a helper thread, not in 'total'
            samples.setdefault('align_concurrent', []).append(res.timings_ms['align_concurrent'])
        unchanged += int(res.misregistration is not None and not res.misregistration.any())
    return samples, unchanged


class Reference:
    """An untrained reference model, ready to time on fixed inputs in its faster memory layout.

    Both NCHW and channels_last are tried once after warm-up; the faster one is
    kept (the references get their best case) and its first time is the first sample.
    """

    def __init__(self, kind: str, variant: str, inputs: list[torch.Tensor], device: torch.device,
                 warmup: int, seed: int) -> None:
        from ..models.registry import build_corrector, build_fusion
        torch.manual_seed(seed)
        model = (build_fusion(variant) if kind == 'fusion' else build_corrector(variant)).eval().to(device)
        self.sync = profiling.device_sync(device)
        layouts: dict[torch.memory_format, float] = {}
        with torch.inference_mode():
            for fmt in (torch.contiguous_format, torch.channels_last):
                call = functools.partial(model.to(memory_format=fmt),
                                         *[x.contiguous(memory_format=fmt) for x in inputs])
                layouts[fmt] = min(profiling.time_call(call, 1, warmup, self.sync))
        best = min(layouts, key=layouts.__getitem__)
        self.call = functools.partial(model.to(memory_format=best),
                                      *[x.contiguous(memory_format=best) for x in inputs])
        self.samples = [layouts[best]]
        self.layout = 'channels_last' if best == torch.channels_last else 'nchw'

    def time(self, repeats: int) -> list[float]:
        """Time ``repeats`` more calls; returns their ms (also kept in :attr:`samples`)."""
        with torch.inference_mode():
            out = profiling.time_call(self.call, repeats, 0, self.sync)
        self.samples += out
        return out

    def summary(self) -> dict[str, Any]:
        """Median/p95/... of all samples and the layout; frees the model."""
        out = profiling.summarize_ms(self.samples)
        out['layout'] = self.layout
        self.call = None
        gc.collect()
        return out


def _rss_now() -> tuple[float, float]:
    """``(peak RSS so far, current RSS)`` in MiB.

    The peak is never below the current value: the kernel's high-water mark can lag the
    current RSS by a few pages (and reading the current RSS may itself load a module).
    """
    now = profiling.rss_mb()
    return max(profiling.peak_rss_mb(), now), now


def _split(total: int, parts: int) -> list[int]:
    """``total`` as ``parts`` near-equal counts (the first ones larger).

    Example:
        >>> _split(30, 3), _split(7, 3), _split(2, 3)
        ([10, 10, 10], [3, 2, 2], [1, 1, 0])
    """
    return [total // parts + (1 if i < total % parts else 0) for i in range(parts)]


def _build_references(pipe: Any, frames: BenchFrames, rgb: list[np.ndarray], device: torch.device,
                      args: argparse.Namespace) -> dict[str, Reference]:
    """Both references on the first pair at this size (its fusion as the corrector's input)."""
    from ..core import convert
    th, rgb_u = pipe.preprocess(frames.thermal[0], rgb[0])
    y_t = convert.to_tensor(convert.luminance(rgb_u), device)
    th_t = convert.to_tensor(th, device)
    fused_t = pipe.fusion(th_t, y_t)
    log.info('bench: preparing %s and %s', REFERENCE_CORRECTOR, REFERENCE_FUSION)
    return {REFERENCE_CORRECTOR: Reference('corrector', REFERENCE_CORRECTOR, [fused_t, y_t, th_t], device,
                                           DEFAULTS.reference_warmup, args.seed),
            REFERENCE_FUSION: Reference('fusion', REFERENCE_FUSION, [th_t, y_t], device,
                                        DEFAULTS.reference_warmup, args.seed)}


def _pipeline_config(args: argparse.Namespace) -> PipelineConfig:
    cfg = PipelineConfig()
    cfg.device = args.device
    cfg.backend = args.backend
    cfg.threads = args.threads
    cfg.fusion.variant = args.fusion_variant
    cfg.corrector.variant = args.corrector_variant
    cfg.corrector.enabled = True
    if hasattr(cfg, 'precision'):
        cfg.precision = args.precision
    cfg.align.mode = 'homography'
    cfg.native_kernels = not args.no_native
    return cfg


def run_bench(args: argparse.Namespace) -> dict[str, Any]:
    """Run the benchmark described by ``args`` and return the JSON-ready report."""
    from ..inference.pipeline import FusionPipeline
    sizes = [parse_size(s) for s in (args.size or DEFAULTS.sizes)]
    ref_sizes = [parse_size(s) for s in (args.reference_sizes or [args.size[0] if args.size
                                                                  else DEFAULTS.sizes[0]])]
    if args.no_reference:
        ref_sizes = []
    frames = load_frames(args.data, args.pairs)
    cfg = _pipeline_config(args)
    fck, fmod, fnote = _weights_or_random('fusion', cfg.fusion.variant, args.fusion_checkpoint, args.seed)
    cck, cmod, cnote = _weights_or_random('corrector', cfg.corrector.variant, args.corrector_checkpoint,
                                          args.seed)
    cfg.fusion.checkpoint, cfg.corrector.checkpoint = fck, cck
    rss_start = profiling.rss_mb()
    pipe = FusionPipeline(cfg, fusion=fmod, corrector=cmod)
    device = pipe.device
    report: dict[str, Any] = {
        'command': 'regionfuse bench ' + ' '.join(args.argv),
        'machine': profiling.machine_info(),
        'config': {'device': str(device), 'backend': cfg.backend, 'threads': torch.get_num_threads(),
                   'precision': getattr(cfg, 'precision', 'fp32'), 'repeats': args.repeats,
                   'warmup': args.warmup, 'reference_repeats': args.reference_repeats},
        'models': {'fusion': {'variant': cfg.fusion.variant, 'name': pipe.fusion_name, 'weights': fnote},
                   'corrector': {'variant': cfg.corrector.variant, 'name': pipe.corrector_name,
                                 'weights': cnote}},
        'data': {'source': frames.source, 'frames': frames.names,
                 'thermal_size': list(frames.thermal[0].shape[::-1])},
        'sizes': {},
    }
    results = report['sizes']
    rounds = max(1, min(args.rounds, args.reference_repeats, args.repeats))   # >= 1 run of each per round
    report['config']['rounds'] = rounds
    rss_pipeline = rss_after = None
    order = sizes + [z for z in ref_sizes if z not in sizes]
    for size in order:
        results[f'{size[0]}x{size[1]}'] = {}   # report order = command-line order
    # Sizes without references first, so the pipeline's peak memory is taken before any reference exists.
    for size in sorted(order, key=lambda z: (z in ref_sizes, order.index(z))):
        key = f'{size[0]}x{size[1]}'
        rgb, hom = frames_at(frames, size)
        pipe.cfg.align.homography = hom.ravel().tolist()
        res = results[key]
        timed_here = size in sizes
        refs: dict[str, Reference] = {}
        # With references at this size the pipeline and the references alternate in `rounds`
        # rounds, so a change of the machine's speed during the run (these VMs drift by up to
        # 2x within minutes) affects both sides of the ratios alike.
        n_rounds = rounds if size in ref_sizes and timed_here else 1
        p_counts = _split(args.repeats, n_rounds)
        r_counts = _split(args.reference_repeats, n_rounds)
        samples: dict[str, list[float]] = {k: [] for k in STAGES}
        unchanged = 0
        per_round: dict[str, list[float]] = {}
        for rnd in range(n_rounds):
            if timed_here:
                log.info('bench %s: pipeline, %d warm-up + %d timed runs (round %d/%d)', key,
                         args.warmup if rnd == 0 else 0, p_counts[rnd], rnd + 1, n_rounds)
                got, unch = pipeline_samples(pipe, frames.thermal, rgb, p_counts[rnd],
                                             args.warmup if rnd == 0 else 0, start=sum(p_counts[:rnd]))
                unchanged += unch
                for k in got:
                    samples.setdefault(k, []).extend(got[k])
            if size not in ref_sizes:
                continue
            more = r_counts[rnd]
            if not refs:
                if rss_pipeline is None:   # before the first reference model exists
                    rss_pipeline, rss_after = _rss_now()
                refs = _build_references(pipe, frames, rgb, device, args)   # one sample each
                more -= 1
            if more > 0:
                for r in refs.values():
                    r.time(more)
            if timed_here and r_counts[rnd]:
                ours = float(np.median(got['total']))
                for name, r in refs.items():
                    per_round.setdefault(f'pipeline_vs_{name}', []).append(
                        float(np.median(r.samples[-r_counts[rnd]:])) / ours)
        if timed_here:
            res['stages_ms'] = {k: profiling.summarize_ms(v) for k, v in samples.items()}
            res['corrector_unchanged'] = {'frames': unchanged, 'of': args.repeats}
            res['cost'] = {'fusion': model_cost('fusion', cfg.fusion.variant, size),
                           'corrector': model_cost('corrector', cfg.corrector.variant, size)}
        if refs:
            res['references'] = {}
            for name, r in refs.items():
                kind = 'corrector' if name == REFERENCE_CORRECTOR else 'fusion'
                res['references'][name] = {**r.summary(), **model_cost(kind, name, size)}
            if timed_here:
                res['ratios'] = ratios(res['stages_ms'], res['references'])
                res['ratios_by_round'] = per_round
    if rss_pipeline is None:   # no reference timed
        rss_pipeline, rss_after = _rss_now()
    report['peak_rss_mb_pipeline'] = rss_pipeline
    report['rss_mb'] = {'start': rss_start, 'after_pipeline': rss_after}
    report['peak_rss_mb_total'] = max(profiling.peak_rss_mb(), rss_pipeline)
    report['rss_mb']['end'] = profiling.rss_mb()
    report['config']['native_kernels'] = native.status() if cfg.native_kernels else 'off (--no-native)'
    report['targets'] = check_targets(results)
    return report


def ratios(stages: dict[str, dict[str, float]], refs: dict[str, dict[str, Any]]) -> dict[str, float]:
    """Speed-up factors (reference median / ours) of the pipeline and of each stage.

    Example:
        >>> st = {'total': {'median': 10.0}, 'fusion': {'median': 5.0}, 'corrector': {'median': 2.0}}
        >>> rf = {'corrector_paper': {'median': 5000.0}, 'reference_dense': {'median': 1000.0}}
        >>> ratios(st, rf)['pipeline_vs_corrector_paper']
        500.0
    """
    def div(a: float, b: float) -> float:
        return float(a / b) if b > 0 else float('nan')
    cp = refs[REFERENCE_CORRECTOR]['median']
    rd = refs[REFERENCE_FUSION]['median']
    return {'pipeline_vs_corrector_paper': div(cp, stages['total']['median']),
            'pipeline_vs_reference_dense': div(rd, stages['total']['median']),
            'corrector_vs_corrector_paper': div(cp, stages['corrector']['median']),
            'fusion_vs_reference_dense': div(rd, stages['fusion']['median'])}


def check_targets(results: dict[str, Any]) -> dict[str, Any]:
    """The issue's targets at 640x480: value, threshold and pass/fail (None: not measured)."""
    d = DEFAULTS
    res = results.get(d.target_size, {})
    st = res.get('stages_ms', {})
    ra = res.get('ratios', {})

    def le(v: float | None, t: float) -> dict[str, Any]:
        return {'value': v, 'target': f'<= {t:g}', 'pass': None if v is None else bool(v <= t)}

    def ge(v: float | None, t: float) -> dict[str, Any]:
        return {'value': v, 'target': f'>= {t:g}', 'pass': None if v is None else bool(v >= t)}

    def med(stage: str) -> float | None:
        return st[stage]['median'] if stage in st else None

    return {'size': d.target_size,
            'pipeline_median_ms': le(med('total'), d.target_pipeline_ms),
            'fusion_median_ms': le(med('fusion'), d.target_fusion_ms),
            'corrector_median_ms': le(med('corrector'), d.target_corrector_ms),
            'pipeline_vs_corrector_paper': ge(ra.get('pipeline_vs_corrector_paper'),
                                              d.target_vs_corrector_paper),
            'pipeline_vs_reference_dense': ge(ra.get('pipeline_vs_reference_dense'),
                                              d.target_vs_reference_dense)}
