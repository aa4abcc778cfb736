"""Runners: a loaded model wrapped as a plain callable for the pipeline.

A fusion runner is ``f(thermal, visible_y) -> fused_y``; a corrector runner is
``f(fused_y, visible_y, thermal) -> (corrected_y, misregistration, flow)``.
All tensors are ``(1, C, H, W)`` float32 on the pipeline's device, images in
[0, 1], flow in pixels (x, y).
"""
from __future__ import annotations

import contextlib
import copy
import logging
import threading
import warnings
from collections.abc import Callable, Iterator
from typing import Any

import torch
from torch import nn

from ..core.checks import ConfigError
from ..core.config import PipelineConfig
from ..models.corrector import Corrector, correct, prepare
from ..models.fusion_net import RegionFuseNet, fuse, mix_sources
from ..models.loading import load_model, set_skip_aligned, without_global_start
from ..models.register_refuse import NAME as REGISTER_REFUSE
from ..models.register_refuse import RegisterRefuseCorrector
from ..models.register_refuse import settings_from as refuse_settings

log = logging.getLogger(__name__)


def _torch_runner(kind: str, model: nn.Module, cfg: PipelineConfig) -> Callable:
    if kind == 'fusion':
        return TorchFusionRunner(model, region_runtime=cfg.fusion.region_runtime, native=cfg.native_kernels)
    return TorchCorrectorRunner(model, native=cfg.native_kernels)


class _RegionParams(nn.Module):
    """:meth:`RegionFuseNet.region_params` as a module of its own (for tracing)."""

    def __init__(self, model: RegionFuseNet) -> None:
        super().__init__()
        self.model = model

    def forward(self, feats: torch.Tensor, stats: torch.Tensor) -> torch.Tensor:
        return self.model.region_params(feats, stats)


# Largest difference to the torch region network accepted for its ONNX Runtime session (head
# outputs are O(1) logits; measured ~5e-5 on real frames).
ORT_REGION_TOLERANCE = 1e-3

# Intra-op threads of the region network's ONNX Runtime session, whatever the pipeline's count:
# the network works on a bounded token grid (40x30 cells at 640x480), too small to split. With
# a second ORT thread it was slower on its own (6.3 vs 5.2 ms) and slowed the torch/OpenCV work
# around it: paired rounds of the whole pipeline at 640x480, 2 threads, -2.1 ms (8 of 10 rounds)
# and -1.3 ms (11 of 12) with one ORT thread (docs/performance.md).
REGION_ORT_THREADS = 1


#: Image sizes ``(H, W)`` at which the dynamic region graph is exported and checked against torch.
REGION_CHECK_HW = ((120, 160), (96, 136))


def _region_inputs(model: RegionFuseNet, hw: tuple[int, int]) -> tuple[torch.Tensor, torch.Tensor]:
    """The region network's ``(feats, stats)`` for a synthetic ``hw`` pair (plain tensors)."""
    got: list[torch.Tensor] = []

    def grab(feats: torch.Tensor, stats: torch.Tensor) -> torch.Tensor:
        got[:] = [feats.clone(), stats.clone()]
        return model.region_params(feats, stats)
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        t, v = torch.rand(1, 1, *hw, generator=g), torch.rand(1, 1, *hw, generator=g)
        fuse(model, t, v, region_params=grab)
    return got[0], got[1]


class RegionGraph:
    """The fusion's region network (:meth:`RegionFuseNet.region_params`) as one ONNX graph for every size.

    Exported once per set of weights and process (~0.5-1 s on 2 cores, at the
    runner's construction: before a node subscribes), with dynamic feature sizes,
    and checked against torch at :data:`REGION_CHECK_HW`. :meth:`session` gives an
    ONNX Runtime session for it: with ``shapes``, one whose input sizes are fixed
    (ORT then folds the shape arithmetic and plans the memory: 4.77 against 4.94 ms
    for a graph exported at that size, 5.05 ms with dynamic sizes; 640x480, one
    thread, 6 interleaved rounds of 100 runs), built in ~35 ms without a new export.

    Raises:
        RuntimeError: the export, the session or the check failed (the caller keeps torch).
    """

    def __init__(self, model: RegionFuseNet) -> None:
        import io

        buf = io.BytesIO()
        samples = [_region_inputs(model, hw) for hw in REGION_CHECK_HW]
        with warnings.catch_warnings(), torch.inference_mode(False), torch.no_grad():
            warnings.simplefilter('ignore')
            torch.onnx.export(_RegionParams(model).eval(), samples[0], buf,
                              input_names=['feats', 'stats'], output_names=['params'],
                              dynamic_axes={'feats': {2: 'h', 3: 'w'}, 'stats': {1: 'cells'}},
                              opset_version=17, dynamo=False)
        self.onnx = buf.getvalue()
        self.dynamic = self.session()
        with torch.no_grad():
            self.max_error = max(self.dynamic.check(f, s, model.region_params(f, s)) for f, s in samples)

    def session(self, shapes: tuple[tuple[int, ...], tuple[int, ...]] | None = None) -> OrtRegionNetwork:
        """A session for the graph; ``shapes``: the ``feats`` and ``stats`` shapes it is fixed to."""
        data = self.onnx
        if shapes is not None:
            import onnx
            m = onnx.load_from_string(data)
            for inp, shape in zip(m.graph.input, shapes):
                dims = inp.type.tensor_type.shape.dim
                if len(dims) != len(shape):
                    raise RuntimeError(f'input {inp.name}: {len(dims)} dimensions, shape {shape}')
                for d, v in zip(dims, shape):
                    d.ClearField('dim_param')
                    d.dim_value = int(v)
            data = m.SerializeToString()
        return OrtRegionNetwork(data)


_GRAPHS: dict[str, RegionGraph] = {}   # by weights (state_sha256), at most _GRAPHS_MAX
_GRAPHS_MAX = 4


def region_graph(model: RegionFuseNet) -> RegionGraph:
    """The :class:`RegionGraph` of ``model``'s weights, exported on the first request in this process."""
    from .onnx_runtime import state_sha256
    key = state_sha256(model)
    with _BUILD_LOCK:
        if key not in _GRAPHS:
            graph = RegionGraph(model)
            if len(_GRAPHS) >= _GRAPHS_MAX:
                _GRAPHS.clear()
            _GRAPHS[key] = graph
        return _GRAPHS[key]


class OrtRegionNetwork:
    """One ONNX Runtime session of the region network: ``(feats, stats) -> params``.

    One intra-op thread (:data:`REGION_ORT_THREADS`), which does not spin between
    calls. Against the TorchScript trace, paired rounds of the whole pipeline at
    640x480 gave -0.9 ms per frame with 1 and with 2 threads.
    """

    def __init__(self, onnx_model: bytes) -> None:
        import onnxruntime as ort

        from .onnx_runtime import session_options
        so = session_options(REGION_ORT_THREADS)
        so.add_session_config_entry('session.intra_op.allow_spinning', '0')
        self.session = ort.InferenceSession(onnx_model, so, providers=['CPUExecutionProvider'])
        self.max_error = float('nan')

    def check(self, feats: torch.Tensor, stats: torch.Tensor, reference: torch.Tensor) -> float:
        """Largest difference to ``reference`` (the torch output).

        Raises:
            RuntimeError: above :data:`ORT_REGION_TOLERANCE`.
        """
        err = float((self(feats, stats) - reference).abs().max())
        if not err <= ORT_REGION_TOLERANCE:
            raise RuntimeError(f'ONNX Runtime differs from torch by {err:.2e} (> {ORT_REGION_TOLERANCE:g})')
        self.max_error = err if self.max_error != self.max_error else max(self.max_error, err)
        return err

    def __call__(self, feats: torch.Tensor, stats: torch.Tensor) -> torch.Tensor:
        feed = {'feats': feats.contiguous().numpy(), 'stats': stats.contiguous().numpy()}
        return torch.from_numpy(self.session.run(None, feed)[0])


class TorchFusionRunner:
    """A fusion module as the pipeline's runner (torch backend).

    For a :class:`RegionFuseNet` on the CPU:

    * the region network (:meth:`RegionFuseNet.region_params`) runs in ONNX
      Runtime with ``region_runtime='onnxruntime'``: one graph for every size
      (:class:`RegionGraph`, exported when the runner is made), a session with
      fixed input sizes for a size used :data:`BUILD_AFTER` times (~35 ms to make,
      checked against torch on that frame), the dynamic session for the others;
      else, or when the export fails, as a TorchScript trace, frozen, one per
      feature size (built at a size's :data:`BUILD_AFTER`-th frame, ~0.5 s): same
      values (max difference 0), less per-operation overhead than eager: measured
      -4.6 ms per frame with 1 thread, -2.7 ms with 2 (paired rounds);
    * the full-resolution pyramid operations run in OpenCV (plane by plane;
      values equal to ~5e-7): paired rounds at 640x480, 13.2 vs 16.1 ms with
      1 intra-op thread, 17.9 vs 19.5 ms with 2. (Until the pyramid's 2x2
      means also ran in OpenCV, this held for 1 thread only.) See docs/performance.md.
    """

    def __init__(self, model: nn.Module, region_runtime: str = 'torch', native: bool = False) -> None:
        self.model = model
        self.native = native
        self._fast = isinstance(model, RegionFuseNet) and next(model.parameters()).device.type == 'cpu'
        self._traces = _TraceCache('fusion region network')
        self._ort = _BuildCache('fusion region network', 'ONNX Runtime session failed', 'using the '
                                'graph for every size')
        self.graph: RegionGraph | None = None
        if self._fast and region_runtime == 'onnxruntime':
            try:
                self.graph = region_graph(model)
            except Exception as e:   # noqa: BLE001 - any failure: torch runs the region network
                log.warning('fusion region network: ONNX Runtime unavailable (%s); using torch', e)

    def _sized_session(self, feats: torch.Tensor, stats: torch.Tensor) -> OrtRegionNetwork:
        assert self.graph is not None
        sess = self.graph.session((tuple(feats.shape), tuple(stats.shape)))
        sess.check(feats, stats, self.model.region_params(feats, stats))
        return sess

    def _region_params(self, feats: torch.Tensor, stats: torch.Tensor) -> torch.Tensor:
        key = (tuple(feats.shape), tuple(stats.shape), feats.dtype, feats.is_contiguous())
        if self.graph is not None:
            session = self._ort.get_or_build(key, lambda: self._sized_session(feats, stats))
            return (session or self.graph.dynamic)(feats, stats)
        traced = self._traces.lookup(key, lambda: _RegionParams(self.model), (feats, stats))
        return (traced or self.model.region_params)(feats, stats)

    @torch.inference_mode()
    def __call__(self, thermal: torch.Tensor, visible_y: torch.Tensor,
                 native_threads: int | Callable[[], int] = 1) -> torch.Tensor:
        """Fused luminance ``(1, 1, H, W)`` in [0, 1].

        ``native_threads``: threads of the finest level's C pass, or a function giving them when
        that level starts (:func:`~.fusion_net.fuse`).
        """
        if not self._fast or self.model.training:
            return self.model(thermal, visible_y)
        return fuse(self.model, thermal, visible_y, opencv=True, region_params=self._region_params,
                    native=self.native, native_threads=native_threads)


class SourceMixRunner:
    """A fusion runner whose output is blended with the sources' mean.

    The blend is :func:`~ros2_regionfuse.models.fusion_net.mix_sources`; ``share`` gives its
    share in [0, 1] at each call (``fusion.source_mix``, which a running node may change). The
    pipeline and the ``register_refuse`` corrector's re-fusion both call this, so a registered
    frame gets the same output stage. Keyword arguments go to the wrapped runner.
    """

    def __init__(self, runner: Callable[..., torch.Tensor], share: Callable[[], float]) -> None:
        self.runner, self.share = runner, share

    @torch.inference_mode()
    def __call__(self, thermal: torch.Tensor, visible_y: torch.Tensor, **kwargs: Any) -> torch.Tensor:
        return mix_sources(self.runner(thermal, visible_y, **kwargs), thermal, visible_y, float(self.share()))


class _CorrectorSources(nn.Module):
    """:meth:`Corrector.sources` for one image size as a module (for tracing)."""

    def __init__(self, model: Corrector, image_hw: tuple[int, int]) -> None:
        super().__init__()
        self.model, self.image_hw = model, image_hw

    def forward(self, yt: torch.Tensor, params: torch.Tensor) -> tuple[torch.Tensor, ...]:
        return self.model.sources(yt, self.image_hw, params)


class _CorrectorFused(nn.Module):
    """:meth:`Corrector.fused_fields` as a module (for tracing); flat tuple output."""

    def __init__(self, model: Corrector) -> None:
        super().__init__()
        self.model = model

    def forward(self, f: torch.Tensor, *src: torch.Tensor) -> tuple[torch.Tensor, ...]:
        low, flows, logits = self.model.fused_fields(f, src)
        return (low, *flows, *logits)


_BUILD_LOCK = threading.RLock()   # one build at a time, across caches and threads
_MISSING = object()

#: Uses of an input signature before its fast path is built (on that use, on the calling thread).
#: A size seen once (a folder where every pair has its own size) runs on its fallback and pays
#: no build; a camera's stream builds at its second frame.
BUILD_AFTER = 2

_INLINE = [0]   # open inline_builds() blocks, process-wide (a warm-up's helper thread builds too)
_INLINE_LOCK = threading.Lock()


@contextlib.contextmanager
def inline_builds() -> Iterator[None]:
    """Within the block, fast paths are built at their signature's first use.

    For warm-ups and benchmarks, which want every build done before they time anything.
    """
    with _INLINE_LOCK:
        _INLINE[0] += 1
    try:
        yield
    finally:
        with _INLINE_LOCK:
            _INLINE[0] -= 1


class _BuildCache(dict):
    """Objects built once per input signature (at most ``MAX`` kept); None marks a failed build.

    A signature's object is built at its :data:`BUILD_AFTER`-th use (its first within
    :func:`inline_builds`); before that the caller runs its fallback (same values).
    A failed build is warned once per signature (``what: failure for <first shape> (error);
    fallback``) and leaves the caller on its fallback.
    """

    MAX = 4
    SEEN_MAX = 64   # signatures whose uses are counted

    def __init__(self, what: str, failure: str, fallback: str) -> None:
        super().__init__()
        self.what, self.failure, self.fallback = what, failure, fallback
        self._seen: dict[tuple, int] = {}

    def failed(self, key: tuple) -> bool:
        """Whether the build for ``key`` ran and failed (the caller stays on its fallback)."""
        return key in self and self[key] is None

    def get_or_build(self, key: tuple, build: Callable[[], Callable]) -> Callable | None:
        """The object for ``key``; None: not built yet, or the build failed (:meth:`failed`).

        Builds of every cache run one at a time (:data:`_BUILD_LOCK`): with ``align_stage: auto``
        the helper thread traces the corrector's source part while the main thread may trace or
        export the fusion's region network, and torch's tracer keeps process-wide state.
        """
        obj = self.get(key, _MISSING)
        if obj is not _MISSING:
            return obj
        with _BUILD_LOCK:
            obj = self.get(key, _MISSING)
            if obj is not _MISSING:
                return obj
            if not _INLINE[0]:
                n = self._seen.pop(key, 0) + 1
                if n < BUILD_AFTER:
                    if len(self._seen) >= self.SEEN_MAX:
                        self._seen.pop(next(iter(self._seen)))
                    self._seen[key] = n
                    return None
            try:
                obj = build()
            except Exception as e:   # noqa: BLE001 - any failure: the caller falls back
                log.warning('%s: %s for %s (%s); %s', self.what, self.failure, key[0], e, self.fallback)
                obj = None
            if len(self) >= self.MAX:
                self.clear()
            self[key] = obj
            return obj


class _TraceCache(_BuildCache):
    """Frozen TorchScript traces by input signature; None marks a failure (the caller runs eagerly).

    ``torch.jit`` is deprecated in favour of ``torch.compile``, whose compile step took
    80-100 s here; torch is pinned (requirements.txt), and a failed trace (warned once per
    signature) leaves the caller on its eager module.
    """

    def __init__(self, what: str) -> None:
        super().__init__(what, 'tracing failed', 'running it eagerly')

    def lookup(self, key: tuple, build: Callable[[], nn.Module], inputs: tuple[torch.Tensor, ...]
               ) -> Callable | None:
        """The trace for ``key``, tracing ``build()`` on ``inputs`` when due; None: run eagerly."""
        def trace() -> Callable:
            with warnings.catch_warnings():
                warnings.simplefilter('ignore', torch.jit.TracerWarning)
                warnings.simplefilter('ignore', DeprecationWarning)
                return torch.jit.freeze(torch.jit.trace(build().eval(), inputs, check_trace=False))
        return self.get_or_build(key, trace)


class TorchCorrectorRunner:
    """A corrector module as the pipeline's runner (torch backend).

    Calling it corrects a frame; :meth:`prepare` computes the frame's work that needs
    only the sources (the global registration, the learned stages' source part) on its
    own, so the pipeline can run that part beside the fusion or in its first stage.
    On the CPU the global registration runs in numpy/OpenCV (fields within 2e-4 px
    of torch), the full-resolution step in OpenCV (outputs within 0.006 of
    torch on real frames, 75 dB), both as fused C kernels with ``native`` (when
    available; closer to torch), and the learned stages (:meth:`Corrector.fields`)
    run as a frozen TorchScript trace per image size (values within 2e-6 of
    eager); see docs/performance.md.
    """

    def __init__(self, model: nn.Module, native: bool = False) -> None:
        self.model = model
        self.native = native
        self._is_corrector = isinstance(model, Corrector)
        self._cpu = next(model.parameters()).device.type == 'cpu'
        self._traces = _TraceCache('corrector')

    def _sources(self, yt: torch.Tensor, image_hw: tuple[int, int], params: torch.Tensor | None,
                 init_flow: torch.Tensor | None = None) -> tuple[torch.Tensor, ...]:
        if params is None or init_flow is not None:
            return self.model.sources(yt, image_hw, params, init_flow)
        key = ('sources', tuple(yt.shape), tuple(image_hw), tuple(params.shape))
        traced = self._traces.lookup(key, lambda: _CorrectorSources(self.model, image_hw), (yt, params))
        return self.model.sources(yt, image_hw, params) if traced is None else tuple(traced(yt, params))

    def _fused(self, f: torch.Tensor, src: tuple[torch.Tensor, ...], init_flow: torch.Tensor | None = None
               ) -> tuple[torch.Tensor, list[torch.Tensor], list[torch.Tensor]]:
        if init_flow is not None or not self.model.cfg.global_align:
            return self.model.fused_fields(f, src, init_flow)
        key = ('fused', tuple(f.shape), tuple(tuple(t.shape) for t in src))
        traced = self._traces.lookup(key, lambda: _CorrectorFused(self.model), (f, *src))
        if traced is None:
            return self.model.fused_fields(f, src)
        out = traced(f, *src)
        n = (len(out) - 1) // 2
        return out[0], list(out[1:1 + n]), list(out[1 + n:])

    @property
    def _stages(self) -> tuple[Callable, Callable] | None:
        """The traced learned stages for the model's forward (eager CPU inference), else None."""
        return (self._sources, self._fused) if self._cpu and not self.model.training else None

    @torch.inference_mode()
    def prepare(self, visible_y: torch.Tensor, thermal: torch.Tensor
                ) -> tuple[torch.Tensor | None, tuple[torch.Tensor, ...] | None]:
        """The frame's work that needs only the sources: ``(align_params, sources)``.

        :func:`~.corrector.prepare`: the global registration and the learned stages' source part;
        pass both to :meth:`__call__` of the same frame. ``(None, None)`` for other models.
        """
        if not self._is_corrector:
            return None, None
        stages = self._stages
        return prepare(self.model, visible_y, thermal, opencv=self._cpu, native=self.native and self._cpu,
                       sources=stages[0] if stages else None)

    @torch.inference_mode()
    def __call__(self, fused: torch.Tensor, visible_y: torch.Tensor, thermal: torch.Tensor,
                 align_params: torch.Tensor | None = None, sources: tuple[torch.Tensor, ...] | None = None,
                 native_threads: int | None = None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``(corrected, M, flow)``.

        ``align_params, sources`` from :meth:`prepare` of the same frame, if known.
        ``native_threads``: threads of the full-resolution C step (default 1).
        """
        if self._is_corrector:
            out = correct(self.model, fused, visible_y, thermal, opencv=True, align_params=align_params,
                          sources=sources, stages=self._stages, native=self.native,
                          native_threads=native_threads)
        else:
            out = self.model(fused, visible_y, thermal)
        return out.image, out.misregistration, out.flow


def build_runner(kind: str, cfg: PipelineConfig, device: torch.device,
                 module: nn.Module | None = None, fusion: Callable | None = None
                 ) -> tuple[Callable, dict[str, Any]]:
    """Return ``(runner, card)`` for ``kind`` ('fusion' or 'corrector') per ``cfg``.

    With ``module`` given, that module is used as is (no weights loaded; with
    ``backend: onnxruntime`` it is exported and run by ONNX Runtime). The
    ``register_refuse`` corrector has no weights; it fuses again with ``fusion``
    (the pipeline's fusion runner), whatever the backend.
    """
    if kind == 'corrector' and module is None and cfg.corrector.variant == REGISTER_REFUSE:
        if fusion is None:
            raise ConfigError(f'the {REGISTER_REFUSE} corrector needs the fusion runner')
        if cfg.corrector.checkpoint:
            raise ConfigError(f'corrector.checkpoint {cfg.corrector.checkpoint!r}: the {REGISTER_REFUSE} '
                              'corrector has no weights (leave it empty, or choose a learned variant)')
        settings = refuse_settings(cfg.corrector, native=cfg.native_kernels)
        card = {'name': f'{REGISTER_REFUSE}@builtin', 'weights': 'none (no learned stages)',
                'registration': settings.registration.model}
        return RegisterRefuseCorrector(fusion, settings), card
    sub = cfg.fusion if kind == 'fusion' else cfg.corrector
    start = kind != 'corrector' or cfg.corrector.global_start
    skip = kind != 'corrector' or cfg.corrector.skip_aligned
    if module is not None and (not start or not skip):
        module = copy.deepcopy(module)   # the caller's module is left as it is
        if not start:
            without_global_start(module)
        if not skip:
            set_skip_aligned(module, False)
    if cfg.backend == 'onnxruntime':
        from .onnx_runtime import build_onnx_runner
        return build_onnx_runner(kind, sub.variant, sub.checkpoint, device, threads=cfg.threads,
                                 module=module, global_start=start)
    if module is not None:
        return _torch_runner(kind, module.eval().to(device), cfg), {'name': f'{sub.variant}@custom'}
    model, card = load_model(kind, sub.variant, sub.checkpoint, device, global_start=start, skip_aligned=skip)
    return _torch_runner(kind, model, cfg), card
