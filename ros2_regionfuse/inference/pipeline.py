"""FusionPipeline: preprocess -> fuse -> correct (post-registration) -> postprocess.

numpy in, numpy out, no ROS. The node, the CLI and the benchmarks all call
:meth:`FusionPipeline.process`, which is :meth:`FusionPipeline.fuse` (preprocess
and fusion) followed by :meth:`FusionPipeline.finish` (corrector and
postprocess); the node may run the two halves on two threads, so the fusion of
the next pair overlaps the correction of the current one.
"""
from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from typing import Any

import cv2
import numpy as np
import torch

from ..core import convert
from ..core.align import homography_from_values, load_homography_file, scale_homography, warp_thermal
from ..core.checks import ConfigError, check_image
from ..core.config import PipelineConfig
from .runtime import SourceMixRunner, TorchFusionRunner, build_runner, inline_builds

log = logging.getLogger(__name__)


@dataclass
class FusionResult:
    """Output of one pipeline run; every image has the output size ``(H, W)``.

    Attributes:
        fused: ``(H, W, 3)`` uint8 RGB, corrected when the corrector ran.
        fused_raw: ``(H, W, 3)`` uint8 RGB, the fusion before correction
            (a property: built on first access, as only some callers need it).
        thermal: ``(H, W)`` float32 in [0, 1], thermal after AGC and alignment.
        misregistration: ``(H, W)`` float32 probability in [0, 1], or None
            when the corrector is off.
        flow: ``(H, W, 2)`` float32 pixels (x, y), or None: the corrected image
            at pixel p takes the IR-derived content found at ``p + flow(p)`` of
            the uncorrected fusion.
        timings_ms: ``preprocess``, ``fusion``, ``corrector``, ``postprocess``, ``total``.
    """

    fused: np.ndarray
    thermal: np.ndarray
    misregistration: np.ndarray | None = None
    flow: np.ndarray | None = None
    timings_ms: dict[str, float] = field(default_factory=dict)
    #: ``(colour (H, W, 3) uint8 or float32 in [0, 1], raw fused luminance (H, W) float32,
    #: contrast bounds)``, from which :attr:`fused_raw` is built; None: ``fused_raw`` is ``fused``
    #: (no correction ran).
    raw_source: tuple[np.ndarray, np.ndarray, tuple[float, float]] | None = field(default=None, repr=False)
    _raw: np.ndarray | None = field(default=None, init=False, repr=False)

    @property
    def fused_raw(self) -> np.ndarray:
        """``(H, W, 3)`` uint8 RGB: the fusion before correction, with the output's contrast."""
        if self.raw_source is None:
            return self.fused
        if self._raw is None:
            rgb, y, bounds = self.raw_source
            self._raw = convert.output_colour(rgb, y, bounds)
        return self._raw

    @property
    def misaligned_fraction(self) -> float:
        """Share of pixels with misregistration probability > 0.5 (NaN without corrector)."""
        m = self.misregistration
        return float('nan') if m is None else float((m > 0.5).mean())

    @property
    def shift_stats(self) -> tuple[float, float]:
        """Mean and max flow magnitude in pixels (NaN without corrector)."""
        if self.flow is None:
            return float('nan'), float('nan')
        mag = np.hypot(self.flow[..., 0], self.flow[..., 1])
        return float(mag.mean()), float(mag.max())


@dataclass
class FusedFrame:
    """One pair after :meth:`FusionPipeline.fuse`, waiting for :meth:`FusionPipeline.finish`.

    Attributes:
        thermal: ``(H, W)`` float32 in [0, 1], thermal after AGC and alignment.
        rgb: the output's colour source at the output size: the ``(H, W, 3)`` uint8 input
            when it needed no conversion, else float32 RGB in [0, 1] (``visible_t`` is its luminance).
        thermal_t, visible_t, fused_t: ``(1, 1, H, W)`` float32 tensors in [0, 1]
            on the pipeline's device (thermal, visible luminance, fused luminance).
        correct: whether :meth:`FusionPipeline.finish` runs the corrector.
        timings_ms: ``preprocess`` and ``fusion`` so far, and ``align`` (the
            corrector's work that needs only the sources, when it ran here: its own time with
            ``align_stage: fuse``; with ``auto`` on a helper thread, the time waited
            for it after the fusion, its own time as ``align_concurrent``).
        align_params: the corrector's global registration of this pair
            (``(1, 4)`` for the learned correctors, a :class:`~ros2_regionfuse.core.registration.Registration`
            for ``register_refuse``), computed in the first half (``corrector.align_stage:
            fuse``, or ``auto`` for a frame processed in one go) so that it
            overlaps other work; None: the corrector computes it (``align_stage:
            correct``, no global start, or a runner without ``prepare``).
        sources: computed with ``align_params``: the corrector's learned stages' part that needs
            only the sources (:meth:`ros2_regionfuse.models.corrector.Corrector.sources`); None: the corrector
            computes it (also when the frame is found aligned and skipped).
        helper_threads: the torch thread count ``n`` when that work ran on the helper thread
            (``align_stage: auto``), else 0; :meth:`FusionPipeline.finish` then runs the corrector's
            torch operations with ``n - 1`` threads too and its full-resolution C step with ``n``.
    """

    thermal: np.ndarray
    rgb: np.ndarray
    thermal_t: torch.Tensor
    visible_t: torch.Tensor
    fused_t: torch.Tensor
    correct: bool
    timings_ms: dict[str, float]
    align_params: Any = None
    sources: tuple[torch.Tensor, ...] | None = None
    helper_threads: int = 0


# OpenCV's thread pool stays unused: with cv2.setNumThreads(1) its functions run in the calling
# thread. Its pool's workers wait actively after each parallel call and take the cores from
# torch's OpenMP workers (and from the node's second stage). Separate processes at 640x480 with 2
# threads, alternating: pipeline median lower with OpenCV single-threaded in 9 of 11 runs, by
# 1-9 ms (docs/performance.md). Every OpenCV call of the pipeline works on one plane.
OPENCV_THREADS = 1


def stage_threads(stages: int, cores: int | None = None) -> int:
    """Intra-op threads per stage when ``stages`` pipeline stages run concurrently.

    Args:
        stages: concurrently running stages (>= 1).
        cores: CPU cores available; default the cores this process may use.

    Returns:
        ``max(1, cores // stages)``: the stages split the cores instead of
        oversubscribing them (measured on 2 cores at 640x480: 63 ms per pair
        with two overlapped stages x 1 thread, 112 ms with one stage x 1
        thread; docs/performance.md).

    Example:
        >>> stage_threads(2, cores=2), stage_threads(2, cores=8), stage_threads(2, cores=1)
        (1, 4, 1)
    """
    if cores is None:
        try:
            cores = len(os.sched_getaffinity(0))
        except AttributeError:   # not Linux
            cores = os.cpu_count() or 1
    return max(1, cores // max(1, stages))


def select_device(requested: str) -> torch.device:
    """Resolve ``auto|cpu|cuda`` to a torch device; cuda without CUDA falls back to CPU (warning)."""
    if requested not in ('auto', 'cpu', 'cuda'):
        raise ConfigError(f'device: {requested!r} is not one of auto, cpu, cuda')
    if requested == 'cpu':
        return torch.device('cpu')
    if torch.cuda.is_available():
        return torch.device('cuda')
    if requested == 'cuda':
        log.warning('device=cuda requested but CUDA is not available: using the CPU')
    return torch.device('cpu')


def _single_threaded(fn: Callable[..., Any], *args: Any) -> Any:
    """``fn(*args)`` with one torch thread in the calling thread (a helper thread beside the main one).

    torch's OpenMP thread count is per calling thread, taken from the process-wide setting at the
    thread's first parallel operation; a helper that ran torch operations with the main thread's
    count would start a second team of workers on cores already busy.
    """
    if torch.get_num_threads() != 1:
        torch.set_num_threads(1)
    return fn(*args)


def _timed(fn: Callable[..., Any], *args: Any) -> tuple[Any, float]:
    """``(fn(*args), milliseconds it took)``."""
    t = time.perf_counter()
    out = fn(*args)
    return out, (time.perf_counter() - t) * 1e3


class FusionPipeline:
    """Thermal + RGB fusion with optional post-registration, on numpy arrays.

    Args:
        cfg: pipeline configuration; fields read at every call may be changed
            at run time (``thermal.*``, ``align.homography``, ``corrector.enabled``).
        fusion: a fusion module to use instead of building ``cfg.fusion.variant``
            with its weights (tests, training).
        corrector: likewise for the corrector.

    Example:
        >>> pipe = FusionPipeline()                                   # doctest: +SKIP
        >>> res = pipe.process(thermal_u16, rgb_u8)                   # doctest: +SKIP
        >>> res.fused.shape == rgb_u8.shape                           # doctest: +SKIP
        True
    """

    def __init__(self, cfg: PipelineConfig | None = None, *, fusion: torch.nn.Module | None = None,
                 corrector: torch.nn.Module | None = None) -> None:
        self.cfg = cfg or PipelineConfig()
        self.device = select_device(self.cfg.device)
        if self.cfg.threads > 0:
            torch.set_num_threads(self.cfg.threads)
        cv2.setNumThreads(OPENCV_THREADS)   # process-wide, like torch's count
        network, self.fusion_card = build_runner('fusion', self.cfg, self.device, fusion)
        self._fusion_takes_threads = isinstance(network, TorchFusionRunner)
        #: the fusion runner with the output's source mix (fusion.source_mix, read at each call)
        self.fusion = SourceMixRunner(network, lambda: self.cfg.fusion.source_mix)
        self._corrector = None
        self._corrector_module = corrector
        self.corrector_card: dict = {}
        self._homography: np.ndarray | None = None
        self._file_homography: tuple[str, np.ndarray] | None = None
        self._helper: ThreadPoolExecutor | None = None
        if self.cfg.corrector.enabled:
            self._ensure_corrector()

    # -- configuration ----------------------------------------------------------
    @property
    def fusion_name(self) -> str:
        """Variant and weights tag of the fusion model, e.g. ``regionfuse_fine@ab12cd``."""
        return str(self.fusion_card.get('name', self.cfg.fusion.variant))

    @property
    def corrector_name(self) -> str:
        """Variant and weights tag of the corrector ('' when never loaded)."""
        if self._corrector is None:
            return ''
        return str(self.corrector_card.get('name', self.cfg.corrector.variant))

    @property
    def corrector(self) -> Any:
        """The corrector runner (None until loaded)."""
        return self._corrector

    def _ensure_corrector(self) -> None:
        if self._corrector is None:
            self._corrector, self.corrector_card = build_runner(
                'corrector', self.cfg, self.device, self._corrector_module, fusion=self.fusion)

    def ensure_corrector(self) -> None:
        """Load the corrector now (before enabling it at run time); no-op when already loaded.

        Raises:
            ConfigError, WeightsError: the corrector cannot be built or its weights loaded.
        """
        self._ensure_corrector()

    def set_homography(self, h: np.ndarray | None) -> None:
        """Set a thermal->RGB homography computed outside (plane and auto modes); None clears it."""
        self._homography = None if h is None else homography_from_values(np.ravel(h).tolist())

    def homography(self) -> np.ndarray | None:
        """The active thermal->RGB homography in original pixel coordinates, or None."""
        a = self.cfg.align
        if a.mode == 'none':
            return None
        if a.mode in ('plane', 'auto'):
            return self._homography
        if a.homography_file:
            if self._file_homography is None or self._file_homography[0] != a.homography_file:
                self._file_homography = (a.homography_file, load_homography_file(a.homography_file))
            return self._file_homography[1]
        return homography_from_values(a.homography)

    # -- stages -----------------------------------------------------------------
    def preprocess(self, thermal: np.ndarray, rgb: np.ndarray,
                   out_size: tuple[int, int] | None = None) -> tuple[np.ndarray, np.ndarray]:
        """AGC, colour conversion, alignment and resizing.

        Args:
            thermal: ``(Ht, Wt)`` uint8/uint16/float32 raw thermal.
            rgb: ``(H, W, 3)`` uint8 RGB or ``(H, W)`` gray.
            out_size: output ``(width, height)``; default the RGB size.

        Returns:
            ``(thermal_unit (H, W), rgb_unit (H, W, 3))`` float32 in [0, 1] at
            the output size; thermal pixels outside the thermal field of view
            take the visible luminance (so fusion there shows the RGB image).
        """
        th, colour, _ = self._prepare(thermal, rgb, out_size)
        return th, (convert.rgb_to_unit(colour) if convert.is_rgb8(colour) else colour)

    def _prepare(self, thermal: np.ndarray, rgb: np.ndarray, out_size: tuple[int, int] | None
                 ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """:meth:`preprocess` for the frame loop: ``(thermal_unit, colour, luminance)``.

        ``colour`` is the colour source of the output at the output size: the uint8
        ``(H, W, 3)`` input itself when it needs no resizing (the output's colour step
        then works on 8-bit planes, :func:`~.convert.recolour_uint8`), else the float
        RGB of :meth:`preprocess`. ``luminance`` is ``(H, W)`` float32 in [0, 1].
        """
        t = self.cfg.thermal
        thermal = check_image(thermal, 'thermal', channels=(1,))
        th = convert.thermal_to_unit(thermal, t.agc, t.percentiles, t.range, t.invert)
        rgb = check_image(rgb, 'rgb', channels=(1, 3))
        h0, w0 = rgb.shape[:2]
        w, hgt = out_size or (w0, h0)
        if convert.is_rgb8(rgb) and (w, hgt) == (w0, h0):
            colour = np.ascontiguousarray(rgb)
        else:
            colour = convert.resize_to(convert.rgb_to_unit(rgb), (w, hgt))
        y = convert.unit_luminance(colour, native=self.cfg.native_kernels)
        hom = self.homography()
        if hom is not None:
            hom = scale_homography(hom, (1.0, 1.0), (w / w0, hgt / h0))
        th_al, valid = warp_thermal(th, hom, (w, hgt))
        if not valid.all():
            th_al = np.where(valid, th_al, y).astype(np.float32)
        return th_al, colour, y

    def process(self, thermal: np.ndarray, rgb: np.ndarray, *, correct: bool | None = None,
                out_size: tuple[int, int] | None = None) -> FusionResult:
        """Run the whole pipeline on one pair: :meth:`fuse`, then :meth:`finish`.

        Args:
            thermal: ``(Ht, Wt)`` raw thermal (any size; uint8, uint16 or float).
            rgb: ``(H, W, 3)`` uint8 RGB or ``(H, W)`` gray.
            correct: run the corrector; default ``cfg.corrector.enabled``.
            out_size: output ``(width, height)``; default the RGB size.

        Raises:
            RegionFuseError: invalid images or configuration.
        """
        return self.finish(self.fuse(thermal, rgb, correct=correct, out_size=out_size, whole_frame=True))

    def warm_up(self, size: tuple[int, int], thermal_size: tuple[int, int] | None = None) -> float:
        """Run one synthetic pair of RGB size ``size`` through the whole pipeline; milliseconds taken.

        Builds what a size's fast path needs: the region network's ONNX Runtime session
        for that size, the TorchScript traces of a learned corrector (~0.05-1 s on 2 CPU
        cores). Without a warm-up they are built at a size's second pair, the first runs
        on the fallbacks (:data:`~ros2_regionfuse.inference.runtime.BUILD_AFTER`). The
        corrector's learned stages are forced to run (a 4 px start shift), so their
        trace is built even where the synthetic pair looks aligned.

        Args:
            size: RGB ``(width, height)`` expected from the camera.
            thermal_size: thermal ``(width, height)``; default ``size``.

        Raises:
            RegionFuseError: the pipeline rejects the pair (e.g. an invalid configuration).
        """
        w, h = size
        tw, th = thermal_size or size
        yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
        pattern = 0.5 + 0.25 * np.sin(xx / 9.0) * np.cos(yy / 13.0) + 0.2 * ((xx // 40 + yy // 40) % 2)
        rgb = np.repeat((np.clip(pattern, 0, 1) * 255).astype(np.uint8)[..., None], 3, 2)
        ty, tx = np.mgrid[0:th, 0:tw].astype(np.float32)
        thermal = (20000 + 3000 * np.sin(tx / 11.0) * np.cos(ty / 7.0)).astype(np.uint16)
        t0 = time.perf_counter()
        with inline_builds():
            frame = self.fuse(thermal, rgb)
            registers = hasattr(self._corrector, 'reset')   # register_refuse: no learned stages to trace
            if frame.correct and not registers and getattr(self._corrector, 'prepare', None) is not None:
                frame.align_params = torch.tensor([[4.0, 0.0, 0.0, 0.0]], device=frame.fused_t.device)
                frame.sources = None   # computed with these parameters in finish()
            self.finish(frame)
        if frame.correct and hasattr(self._corrector, 'reset'):
            self._corrector.reset()   # the synthetic pair's estimate is no start for the camera's
        return (time.perf_counter() - t0) * 1e3

    def close(self) -> None:
        """Stop the helper thread of ``align_stage: auto`` (started on first use; idempotent)."""
        if self._helper is not None:
            self._helper.shutdown(wait=True)
            self._helper = None

    def fuse(self, thermal: np.ndarray, rgb: np.ndarray, *, correct: bool | None = None,
             out_size: tuple[int, int] | None = None, whole_frame: bool = False) -> FusedFrame:
        """First half of :meth:`process`: preprocessing and fusion (arguments as there).

        ``correct`` is resolved here (default ``cfg.corrector.enabled`` at this
        call) so a pair is finished the way it was started. When it is true and
        ``cfg.corrector.align_stage`` is ``fuse``, the corrector's work that needs only the
        sources runs here too: its global registration and the source part of its learned
        stages (:attr:`FusedFrame.align_params`, :attr:`FusedFrame.sources`). With ``auto``,
        on the CPU with ``n >= 2`` torch threads and ``whole_frame`` (the caller runs
        :meth:`finish` right after, as :meth:`process` does), that work runs on a helper thread
        (one torch thread) while the fusion runs with ``n - 1`` threads: the region network
        runs on one ONNX Runtime thread and leaves a core idle, and torch's thread pool must
        not wait on a busy core. Paired runs at 640x480 on 2 cores (docs/performance.md):
        with ``corrector_lite``'s registration alone on the helper 21.9 vs 23.5 ms per frame; with
        its learned stages' source part too 19.3-22.9 vs 23.5-25.9 ms. Otherwise
        :meth:`finish` runs it with the corrector. torch's thread count is process-wide:
        threads that run whole frames of several pipelines at once should use
        ``align_stage: correct`` (or ``fuse``).

        Raises:
            RegionFuseError: invalid images or configuration, or the corrector
                cannot be loaded.
        """
        t0 = time.perf_counter()
        th, colour, y = self._prepare(thermal, rgb, out_size)
        dev = self.device
        t1 = time.perf_counter()
        th_t = convert.to_tensor(th, dev)
        y_t = convert.to_tensor(y, dev)
        do_correct = self.cfg.corrector.enabled if correct is None else correct
        prepare = None
        if do_correct:
            # The corrector's global registration and part of its learned stages need only the
            # sources (docs/performance.md).
            self._ensure_corrector()
            prepare = getattr(self._corrector, 'prepare', None)
        stage = self.cfg.corrector.align_stage
        threads = torch.get_num_threads()
        pending = None
        if prepare is not None and stage == 'auto' and whole_frame and dev.type == 'cpu' and threads >= 2:
            if self._helper is None:
                self._helper = ThreadPoolExecutor(max_workers=1, thread_name_prefix='regionfuse-align')
            pending = self._helper.submit(_timed, _single_threaded, prepare, y_t, th_t)
            torch.set_num_threads(threads - 1)
        fusion_kwargs: dict[str, Any] = {}
        if pending is not None and self._fusion_takes_threads:
            # the fusion's last C pass splits its rows over the cores if the helper has finished by then
            fusion_kwargs['native_threads'] = lambda: threads if pending.done() else 1
        try:
            fused_y = self.fusion(th_t, y_t, **fusion_kwargs)
            t2 = time.perf_counter()   # before waiting for the helper: that wait is 'align'
        finally:
            if pending is not None:
                wait([pending])   # a fusion error is the one reported
                torch.set_num_threads(threads)
        (params, sources), ms_align = pending.result() if pending is not None else ((None, None), 0.0)
        if prepare is not None and stage == 'fuse':
            params, sources = prepare(y_t, th_t)
        t3 = time.perf_counter()
        ms = {'preprocess': (t1 - t0) * 1e3, 'fusion': (t2 - t1) * 1e3, 'align': (t3 - t2) * 1e3}
        if pending is not None:
            ms['align_concurrent'] = ms_align
        return FusedFrame(thermal=th, rgb=colour, thermal_t=th_t, visible_t=y_t, fused_t=fused_y,
                          correct=do_correct, align_params=params, sources=sources, timings_ms=ms,
                          helper_threads=threads if pending is not None else 0)

    def finish(self, frame: FusedFrame) -> FusionResult:
        """Second half of :meth:`process`: corrector (when ``frame.correct``) and postprocessing.

        Raises:
            RegionFuseError: the corrector cannot be loaded.
        """
        t2 = time.perf_counter()
        misreg = flow = None
        fused_y = frame.fused_t
        corr_y = fused_y
        if frame.correct:
            self._ensure_corrector()
            kwargs: dict[str, Any] = {}
            if frame.align_params is not None or frame.sources is not None:   # from a runner's prepare()
                kwargs.update(align_params=frame.align_params, sources=frame.sources)
            threads = frame.helper_threads
            if threads >= 2:
                # After the overlap the corrector's torch operations (small, at 1/16) keep one thread
                # fewer, so no OpenMP worker of theirs spins on the core that the rows of the C step
                # split over all threads then use: 20.55 vs 22.41 ms per 640x480 frame on 2 cores
                # (30 of 40 paired rounds; docs/performance.md).
                torch.set_num_threads(threads - 1)
                kwargs['native_threads'] = threads
            try:
                corr_y, m_t, f_t = self._corrector(fused_y, frame.visible_t, frame.thermal_t, **kwargs)
            finally:
                if threads >= 2:
                    torch.set_num_threads(threads)
            misreg = convert.to_numpy(m_t)
            flow = convert.to_numpy(f_t)
        t3 = time.perf_counter()
        # Output contrast: bounds from the final luminance, applied to it and to the raw fusion.
        fcfg = self.cfg.fusion
        colour = frame.rgb
        fy = convert.to_numpy(fused_y)
        out_y = convert.to_numpy(corr_y) if frame.correct else fy
        bounds = convert.contrast_bounds(out_y, fcfg.contrast, fcfg.contrast_percentiles,
                                         fcfg.contrast_strength)
        # the colour source's luminance as computed in fuse() (a view on the CPU; recomputed elsewhere)
        y_in = convert.to_numpy(frame.visible_t) if frame.visible_t.device.type == 'cpu' else None
        fused = convert.output_colour(colour, out_y, bounds, y_in, native=self.cfg.native_kernels)
        t4 = time.perf_counter()
        ms = dict(frame.timings_ms)
        # The corrector's source-only work (registration, the learned stages' source part) belongs
        # to the corrector, wherever it ran (on the helper thread during the fusion: the time
        # waited for it; its own time stays in align_concurrent).
        ms.update({'corrector': (t3 - t2) * 1e3 + ms.pop('align', 0.0), 'postprocess': (t4 - t3) * 1e3})
        ms['total'] = ms['preprocess'] + ms['fusion'] + ms['corrector'] + ms['postprocess']
        return FusionResult(fused=fused, thermal=frame.thermal, misregistration=misreg, flow=flow,
                            timings_ms=ms, raw_source=(colour, fy, bounds) if frame.correct else None)
