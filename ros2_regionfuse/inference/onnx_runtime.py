"""ONNX export of the fusion and corrector models and ONNX Runtime runners.

Runners have the same call signatures as the torch runners of
:mod:`ros2_regionfuse.inference.runtime`: a fusion runner is
``f(thermal, visible_y) -> fused_y``, a corrector runner
``f(fused_y, visible_y, thermal) -> (corrected_y, misregistration, flow)``, on
``(1, C, H, W)`` float32 tensors of the pipeline's device.

Graphs and sizes. Graphs are exported with dynamic H and W by tracing one call
(TorchScript-based exporter, opset 17). The fusion network chooses its pyramid
depth from the image size (:func:`fusion_net.network_level`: level 3 up to ~905
px on the long side, 4 up to ~1810 px, ...), so one graph serves every size of
one level (its *graph key*; models without such a choice have key 0). Every
export is checked against torch at its traced size and at two other sizes of
the same key (one needing internal padding, one not); the result is stored in
the file (metadata ``dynamic_hw``). In addition the runner checks a dynamic
graph against torch the first time each input size appears (one extra run of
both). A graph that fails (model code that bakes the traced size into the
graph) is replaced for that size by a graph exported at exactly that size
(``NAME.HxW.onnx``), so results are always those of torch.

Files are named after the weights, next to ``NAME.safetensors``:
``NAME.level3.onnx`` (fusion network, level 3), ``NAME.onnx`` (key 0),
``NAME[.levelK].HxW.onnx`` (fixed size). ``regionfuse export-onnx`` writes them;
each records the SHA-256 of the weights it came from, and a file that does not
match the weights is ignored. Without a matching file the runner exports in
memory and caches the file under ``$XDG_CACHE_HOME/ros2_regionfuse/onnx``
(best effort).
"""
from __future__ import annotations

import copy
import functools
import hashlib
import io
import logging
import os
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..core.checks import ConfigError
from ..core.weights import shipped_weights
from ..models.corrector import Corrector
from ..models.fusion_net import RegionFuseNet, network_level
from ..models.loading import load_model

log = logging.getLogger(__name__)

OPSET = 17
"""ONNX opset of the exported graphs (GridSample needs >= 16)."""

EXPORT_SAMPLE_HW = (480, 640)
"""Example input size (H, W) traced for key-0 graphs when no size is given."""

PREPARE_HW = (120, 160)
"""Small size (H, W) whose graph a runner loads or exports when it is built (fails early, cheaply)."""

DYNAMIC_CHECK_OFFSET = (9, 13)
"""The first dynamic-size check runs at the traced size minus (else plus) these (H, W): a size that
needs padding."""

DYNAMIC_ALIGN = 64
"""The second dynamic-size check runs at the traced size rounded down (else up) to a multiple of this."""

DYNAMIC_TOLERANCE = 1e-3
"""Largest :func:`session_parity` difference ONNX vs torch for a graph to be used (at its traced size)
and to count as size-dynamic (at the check sizes)."""

INPUT_NAMES = {'fusion': ('thermal', 'visible'), 'corrector': ('fused', 'visible', 'thermal')}
OUTPUT_NAMES = {'fusion': ('fused',), 'corrector': ('image', 'misregistration', 'flow')}


class _CorrectorGraph(nn.Module):
    """Export wrapper: the corrector's inference outputs only (image, M, flow)."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, fused: torch.Tensor, visible: torch.Tensor, thermal: torch.Tensor
                ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        out = self.model(fused, visible, thermal)
        return out.image, out.misregistration, out.flow


def graph_key(model: nn.Module, h: int, w: int) -> int:
    """Which dynamic graph serves an ``h x w`` input, else 0 (one graph for all sizes).

    The fusion network's pyramid level; for a corrector with a global start,
    the downsampling factor of the start's coarsest level (pooling sizes are
    fixed in a graph).

    Example:
        >>> from ros2_regionfuse.models.fusion_net import regionfuse_fine
        >>> from ros2_regionfuse.models.corrector import Corrector, CorrectorArchitecture
        >>> m = regionfuse_fine()
        >>> graph_key(m, 480, 640), graph_key(m, 1024, 1280), graph_key(nn.Identity(), 9, 9)
        (3, 4, 0)
        >>> graph_key(Corrector(CorrectorArchitecture(global_align=True)), 480, 640)
        8
    """
    if isinstance(model, RegionFuseNet):
        return network_level(h, w, model.cfg.base_size)
    if isinstance(model, Corrector) and model.cfg.global_align:
        return model.cfg.align.factors(w, h)[0]
    return 0


def sample_size_for_key(model: nn.Module, key: int) -> tuple[int, int]:
    """An example input size ``(H, W)`` whose :func:`graph_key` is ``key`` (4:3 aspect).

    Example:
        >>> from ros2_regionfuse.models.fusion_net import regionfuse_fine
        >>> sample_size_for_key(regionfuse_fine(), 4)
        (960, 1280)
    """
    if key == 0:
        return EXPORT_SAMPLE_HW
    if isinstance(model, Corrector):
        w = key * model.cfg.align.coarse_cells
    else:
        base = getattr(getattr(model, 'cfg', None), 'base_size', EXPORT_SAMPLE_HW[1])
        w = int(base * 2 ** (key - 3))
    h = w * 3 // 4
    if graph_key(model, h, w) != key:
        raise ConfigError(f'no input size maps to graph {key} of {type(model).__name__}')
    return h, w


def onnx_filename(stem: str, key: int, size_hw: tuple[int, int] | None = None) -> str:
    """File name of graph ``key`` of weights ``stem`` (dynamic, or fixed at ``size_hw``).

    Example:
        >>> onnx_filename('w', 3), onnx_filename('w', 0), onnx_filename('w', 0, (480, 640))
        ('w.level3.onnx', 'w.onnx', 'w.480x640.onnx')
    """
    name = f'{stem}.level{key}' if key else stem
    if size_hw is not None:
        name += f'.{size_hw[0]}x{size_hw[1]}'
    return name + '.onnx'


def file_sha256(path: str | Path) -> str:
    """Hex SHA-256 of a file's bytes."""
    h = hashlib.sha256()
    with open(path, 'rb') as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b''):
            h.update(chunk)
    return h.hexdigest()


@functools.cache
def code_sha256() -> str:
    """Hex SHA-256 over the sources of ``ros2_regionfuse/models`` (the traced code).

    Stored in exported graphs and in cache names: a graph traced from other
    model code is never reused, even with the same weights.
    """
    h = hashlib.sha256()
    for src in sorted(Path(__file__).resolve().parent.glob('*.py')):
        h.update(src.name.encode())
        h.update(src.read_bytes())
    return h.hexdigest()


def state_sha256(model: nn.Module) -> str:
    """Hex SHA-256 over a module's state dict (names, shapes and values)."""
    h = hashlib.sha256()
    for k, v in model.state_dict().items():
        h.update(k.encode())
        h.update(str(tuple(v.shape)).encode())
        h.update(v.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()


def session_options(threads: int) -> Any:
    """ONNX Runtime session options: ``threads`` intra-op threads (0 = ORT default), sequential."""
    import onnxruntime as ort
    so = ort.SessionOptions()
    so.intra_op_num_threads = max(0, int(threads))
    so.inter_op_num_threads = 1
    so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    so.log_severity_level = 3
    return so


def _torch_outputs(model: nn.Module, kind: str, xs: list[torch.Tensor]) -> list[torch.Tensor]:
    with torch.inference_mode():
        out = model(*xs)
    return [out] if kind == 'fusion' else [out.image, out.misregistration, out.flow]


def parity_inputs(kind: str, hw: tuple[int, int], seed: int = 0) -> list[torch.Tensor]:
    """Seeded image-like inputs ``(1, 1, H, W)`` in [0, 1] for parity checks.

    Smooth random structure (bilinear upsampling of an 8x coarser random
    image) plus fine noise: white noise alone is a pathological input for
    the corrector's registration (no structure, so every estimate is equally
    good and float rounding decides), real frames are not.
    """
    gen = torch.Generator().manual_seed(seed)
    h, w = hw
    out = []
    for _ in INPUT_NAMES[kind]:
        coarse = torch.rand(1, 1, max(2, h // 8 + 1), max(2, w // 8 + 1), generator=gen)
        smooth = F.interpolate(coarse, size=hw, mode='bilinear', align_corners=False)
        out.append((0.85 * smooth + 0.15 * torch.rand(1, 1, h, w, generator=gen)).clamp(0.0, 1.0))
    return out


def session_parity(model: nn.Module, kind: str, sess: Any, hw: tuple[int, int], seed: int = 0) -> float:
    """Largest difference of an ONNX Runtime session vs torch over all outputs, on seeded random images.

    Each output's max abs difference is divided by ``max(1, max |torch output|)``: absolute for
    outputs within [-1, 1] (images, M), relative for flows in pixels, whose float32 rounding grows
    with their size (untrained correctors give flows of hundreds of pixels, where the summation
    order of multi-threaded kernels alone moves the result by ~1e-3 px).

    Args:
        model: the torch module the graph was exported from.
        kind: ``'fusion'`` or ``'corrector'``.
        sess: an ``onnxruntime.InferenceSession`` of the graph.
        hw: input ``(H, W)``.
        seed: seed of the random inputs (:func:`parity_inputs`).

    Returns:
        The largest scaled difference (inf if ONNX Runtime fails at this size).
    """
    xs = parity_inputs(kind, hw, seed)
    ref = _torch_outputs(model, kind, xs)
    try:
        outs = sess.run(None, {n: x.numpy() for n, x in zip(INPUT_NAMES[kind], xs, strict=True)})
    except Exception as e:  # noqa: BLE001 - ORT raises its own types for shape errors
        log.debug('ONNX Runtime failed at %s: %s', hw, e)
        return float('inf')
    return max(float((torch.from_numpy(o) - r).abs().max()) / max(1.0, float(r.abs().max()))
               for o, r in zip(outs, ref, strict=True))


def onnx_parity(model: nn.Module, kind: str, onnx_model: bytes | str | Path, hw: tuple[int, int],
                seed: int = 0, threads: int = 1) -> float:
    """:func:`session_parity` of a serialised graph or file (its own CPU session, ``threads`` threads)."""
    import onnxruntime as ort
    src = str(onnx_model) if isinstance(onnx_model, Path) else onnx_model
    so = session_options(threads)
    so.log_severity_level = 4  # a failure at this size is a result here, not an error to print
    sess = ort.InferenceSession(src, so, providers=['CPUExecutionProvider'])
    return session_parity(model, kind, sess, hw, seed)


def dynamic_check_sizes(model: nn.Module, sample_hw: tuple[int, int]) -> list[tuple[int, int]]:
    """Two other input sizes served by the same graph as ``sample_hw`` (same :func:`graph_key`).

    One needs internal padding (the traced size minus, else plus,
    ``DYNAMIC_CHECK_OFFSET``), one needs none (rounded down, else up, to a
    multiple of ``DYNAMIC_ALIGN``), so neither a baked padding nor a baked
    size goes unnoticed. Candidates of another key are skipped; fewer than two
    sizes are returned when none qualifies.

    Example:
        >>> dynamic_check_sizes(nn.Identity(), (480, 640))
        [(471, 627), (448, 640)]
    """
    h, w = sample_hw
    dh, dw = DYNAMIC_CHECK_OFFSET
    a = DYNAMIC_ALIGN
    key = graph_key(model, h, w)
    groups = [[(h - dh, w - dw), (h + dh, w + dw)],
              [(max(a, h - h % a), max(a, w - w % a)), (h + (-h) % a, w + (-w) % a)]]
    out = []
    for group in groups:
        for hw in group:
            if min(hw) > 0 and hw != sample_hw and graph_key(model, *hw) == key:
                out.append(hw)
                break
    return out


def export_onnx(model: nn.Module, kind: str, sample_hw: tuple[int, int] = EXPORT_SAMPLE_HW,
                metadata: dict[str, str] | None = None, opset: int = OPSET,
                check_dynamic: bool = True) -> tuple[bytes, dict[str, str]]:
    """Export ``model`` (eval mode, CPU) to ONNX with dynamic H and W, and check it.

    Args:
        model: a fusion module ``(thermal, visible) -> fused`` or a corrector
            returning a ``CorrectorOutput``.
        kind: ``'fusion'`` or ``'corrector'``.
        sample_hw: traced input size ``(H, W)``.
        metadata: string key/values stored in the model's ``metadata_props``.
        opset: ONNX opset (>= 16).
        check_dynamic: also compare with torch at a padded size of the same
            graph key (``max_abs_diff_dynamic``, ``dynamic_hw`` in the metadata).

    Returns:
        ``(serialised model, metadata)``; metadata has ``kind``, ``sample_hw``
        (``HxW``), ``graph_key``, ``max_abs_diff`` (:func:`session_parity` of ONNX
        Runtime vs torch at the traced size) and, when checked, ``max_abs_diff_dynamic`` and
        ``dynamic_hw`` (``true``/``false``), besides ``metadata``.

    Raises:
        ConfigError: unknown kind.
    """
    import onnx
    if kind not in INPUT_NAMES:
        raise ConfigError(f'unknown model kind {kind!r}')
    model = model.eval().cpu()
    graph = _CorrectorGraph(model) if kind == 'corrector' else model
    args = tuple(parity_inputs(kind, sample_hw))
    names_in, names_out = INPUT_NAMES[kind], OUTPUT_NAMES[kind]
    dyn = {n: {2: 'height', 3: 'width'} for n in names_in + names_out}
    buf = io.BytesIO()
    # Not under torch.no_grad(): code paths that differ without autograd (in-place
    # variants) may not trace to a correct graph.
    with warnings.catch_warnings():
        warnings.simplefilter('ignore')  # legacy-exporter deprecation and tracer warnings
        torch.onnx.export(graph, args, buf, dynamo=False, opset_version=opset,
                          input_names=list(names_in), output_names=list(names_out),
                          dynamic_axes=dyn, do_constant_folding=True)
    key = graph_key(model, *sample_hw)
    meta = {'kind': kind, 'sample_hw': f'{sample_hw[0]}x{sample_hw[1]}', 'graph_key': str(key),
            **(metadata or {})}
    meta['max_abs_diff'] = f'{onnx_parity(model, kind, buf.getvalue(), sample_hw):.3g}'
    if check_dynamic:
        checks = dynamic_check_sizes(model, sample_hw)
        diffs = [onnx_parity(model, kind, buf.getvalue(), hw, seed=i + 1) for i, hw in enumerate(checks)]
        d1 = max(diffs) if diffs else float('nan')
        meta['max_abs_diff_dynamic'] = f'{d1:.3g}'
        meta['dynamic_hw'] = 'true' if d1 <= DYNAMIC_TOLERANCE else 'false'
    proto = onnx.load_from_string(buf.getvalue())
    for k, v in meta.items():
        entry = proto.metadata_props.add()
        entry.key, entry.value = k, str(v)
    return proto.SerializeToString(), meta


def write_atomic(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` through a temporary file in the same folder."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f'.{path.name}.{os.getpid()}.tmp')
    tmp.write_bytes(data)
    tmp.replace(path)


def onnx_metadata(path: str | Path) -> dict[str, str]:
    """The ``metadata_props`` of an ONNX file ({} when unreadable)."""
    import onnx
    try:
        proto = onnx.load(str(path), load_external_data=False)
    except Exception as e:  # noqa: BLE001 - onnx raises several types for corrupt files
        log.warning('%s: not a readable ONNX file (%s): ignored', path, e)
        return {}
    return {p.key: p.value for p in proto.metadata_props}


def providers_for(device: torch.device) -> list[str]:
    """Execution providers: CUDA first on a CUDA device when ORT has it, always CPU."""
    import onnxruntime as ort
    avail = ort.get_available_providers()
    if device.type == 'cuda' and 'CUDAExecutionProvider' in avail:
        return ['CUDAExecutionProvider', 'CPUExecutionProvider']
    if device.type == 'cuda':
        log.warning('onnxruntime has no CUDAExecutionProvider here: running the ONNX graphs on the CPU')
    return ['CPUExecutionProvider']


def _cache_dir() -> Path:
    root = os.environ.get('XDG_CACHE_HOME') or str(Path.home() / '.cache')
    return Path(root) / 'ros2_regionfuse' / 'onnx'


def _parse_hw(text: str) -> tuple[int, int] | None:
    try:
        h, w = (int(v) for v in text.split('x'))
        return h, w
    except ValueError:
        return None


class OnnxModel:
    """ONNX Runtime sessions of one model: per dynamic graph key, or per fixed size.

    Args:
        kind: ``'fusion'`` or ``'corrector'``.
        variant: registered variant name.
        checkpoint: weights file; empty = the shipped weights.
        device: where results are returned (and CUDA EP is used when available).
        threads: intra-op threads (0 = ``torch.get_num_threads()``, which the
            pipeline sets from ``cfg.threads``).
        module: export this module (e.g. untrained, for timing) instead of
            loading ``checkpoint``; its graphs are cached by a hash of its state.
        global_start: False switches the loaded corrector's global start off
            (its graphs then have graph key 0); ``module`` is used as given.

    Raises:
        ConfigError, WeightsError: unknown variant, missing/corrupt weights.
    """

    def __init__(self, kind: str, variant: str, checkpoint: str, device: torch.device,
                 threads: int = 0, module: nn.Module | None = None, global_start: bool = True) -> None:
        if kind not in INPUT_NAMES:
            raise ConfigError(f'unknown model kind {kind!r}')
        self.kind, self.variant, self.device = kind, variant, device
        self.weights: Path | None
        if module is not None:
            self.model = copy.deepcopy(module).eval().cpu()
            self.card: dict[str, Any] = {'name': f'{variant}@custom'}
            self.weights, self.sha = None, state_sha256(self.model)
        else:
            self.weights = Path(checkpoint) if checkpoint else shipped_weights(variant)
            # Loads strictly (clear WeightsError for missing/corrupt files) and gives the card.
            self.model, self.card = load_model(kind, variant, str(self.weights), torch.device('cpu'),
                                               global_start=global_start)
            self.sha = file_sha256(self.weights)
        self.code = code_sha256()
        self.threads = threads or torch.get_num_threads()
        self.providers = providers_for(device)
        self._dynamic: dict[int, Any] = {}                 # graph key -> session of its dynamic graph
        self._by_size: dict[tuple[int, int], Any] = {}     # (h, w) -> checked session serving it
        self._not_dynamic: set[int] = set()
        self.files: dict[str, str] = {}                    # 'key' or 'key@HxW' -> file used

    @property
    def stem(self) -> str:
        """Name the graph files are called after (the weights file stem)."""
        return self.weights.stem if self.weights else self.variant

    def candidates(self, key: int, size_hw: tuple[int, int] | None = None) -> list[Path]:
        """Files that may hold a graph: next to the weights, then the user cache."""
        name = onnx_filename(self.stem, key, size_hw)
        cached = _cache_dir() / f'{self.variant}-{self.sha[:16]}-{self.code[:8]}.{name}'
        return [self.weights.with_name(name), cached] if self.weights else [cached]

    def export_metadata(self) -> dict[str, str]:
        """Metadata stored in exported files (variant, weights file and hash)."""
        return {'variant': self.variant, 'weights': self.weights.name if self.weights else 'custom',
                'weights_sha256': self.sha, 'code_sha256': self.code, 'torch': torch.__version__}

    def _session(self, src: bytes | str) -> Any:
        import onnxruntime as ort
        return ort.InferenceSession(src, session_options(self.threads), providers=self.providers)

    def _load_or_export(self, key: int, size_hw: tuple[int, int] | None,
                        sample: tuple[int, int] | None = None) -> tuple[Any, dict[str, str]]:
        """Session and metadata of graph ``key`` (dynamic, or fixed at ``size_hw``).

        A dynamic graph that has to be exported is traced at ``sample`` (default:
        :func:`sample_size_for_key`), normally the first frame size it serves.
        """
        label = f'{key}' if size_hw is None else f'{key}@{size_hw[0]}x{size_hw[1]}'
        for path in self.candidates(key, size_hw):
            if path.is_file():
                meta = onnx_metadata(path)
                if meta.get('weights_sha256') == self.sha and meta.get('code_sha256') == self.code:
                    log.info('%s: ONNX graph %s', self.variant, path)
                    self.files[label] = str(path)
                    return self._session(str(path)), meta
                log.warning('%s was not exported from %s with this version of the model code: ignored '
                            '(re-run `regionfuse export-onnx`)', path, self.weights or 'this module')
        sample = size_hw or sample or sample_size_for_key(self.model, key)
        log.info('%s: exporting ONNX graph %s (traced at %dx%d); `regionfuse export-onnx` stores '
                 'graphs next to the weights', self.variant, label, sample[1], sample[0])
        try:
            data, meta = export_onnx(self.model, self.kind, sample, self.export_metadata(),
                                     check_dynamic=size_hw is None)
        except (torch.onnx.errors.OnnxExporterError, RuntimeError) as e:
            raise ConfigError(f'{self.variant} cannot be exported to ONNX ({str(e).splitlines()[0]}): '
                              'use backend: torch') from e
        if not float(meta['max_abs_diff']) <= DYNAMIC_TOLERANCE:
            raise ConfigError(f'{self.variant}: the ONNX graph differs from torch by {meta["max_abs_diff"]} '
                              f'at {sample[1]}x{sample[0]}: use backend: torch')
        cache = self.candidates(key, size_hw)[-1]
        try:
            write_atomic(cache, data)
            self.files[label] = str(cache)
        except OSError as e:
            log.debug('cannot cache %s: %s', cache, e)
            self.files[label] = 'in-memory'
        return self._session(data), meta

    def session_for(self, h: int, w: int) -> Any:
        """The session that serves an ``h x w`` input (loaded or exported on first use).

        The first time a size is seen, the dynamic graph of its key is checked
        against torch at that size (one extra run of each); a graph that fails
        (code that bakes the traced size into the graph) is replaced for that
        size by a graph exported at exactly that size.
        """
        sess = self._by_size.get((h, w))
        if sess is not None:
            return sess
        key = graph_key(self.model, h, w)
        if key not in self._not_dynamic:
            if key not in self._dynamic:
                sess, meta = self._load_or_export(key, None, sample=(h, w))
                traced = _parse_hw(meta.get('sample_hw', ''))
                self._dynamic[key] = sess
                if traced is not None:
                    self._by_size[traced] = sess  # checked at export
                if meta.get('dynamic_hw') == 'false':
                    self._not_dynamic.add(key)
                    log.warning('%s: the ONNX graph does not serve other sizes than %s (max diff %s): '
                                'one graph per input size', self.variant, meta.get('sample_hw'),
                                meta.get('max_abs_diff_dynamic', '?'))
            if (h, w) in self._by_size:
                return self._by_size[(h, w)]
            if key not in self._not_dynamic:
                d = session_parity(self.model, self.kind, self._dynamic[key], (h, w))
                if d <= DYNAMIC_TOLERANCE:
                    self._by_size[(h, w)] = self._dynamic[key]
                    return self._dynamic[key]
                log.warning('%s: the ONNX graph differs from torch at %dx%d (max diff %.3g): '
                            'exporting a graph for this size', self.variant, w, h, d)
        sess, _ = self._load_or_export(key, (h, w))
        self._by_size[(h, w)] = sess
        return sess

    def run(self, *inputs: torch.Tensor) -> list[torch.Tensor]:
        """Run the graph for the inputs' size; tensors in, tensors (on ``device``) out."""
        h, w = (int(v) for v in inputs[0].shape[-2:])
        sess = self.session_for(h, w)
        feeds = {n: _to_numpy(t) for n, t in zip(INPUT_NAMES[self.kind], inputs, strict=True)}
        outs = sess.run(None, feeds)
        return [torch.from_numpy(o).to(self.device, non_blocking=True) for o in outs]


def _to_numpy(t: torch.Tensor) -> np.ndarray:
    """A contiguous float32 numpy view (a copy only when on another device or dtype)."""
    return np.ascontiguousarray(t.detach().to('cpu', torch.float32).numpy())


def build_onnx_runner(kind: str, variant: str, checkpoint: str, device: torch.device,
                      threads: int = 0, module: nn.Module | None = None, global_start: bool = True
                      ) -> tuple[Callable, dict[str, Any]]:
    """Return ``(runner, card)`` running ``variant`` with ONNX Runtime.

    Same interface as :func:`ros2_regionfuse.inference.runtime.build_runner`'s torch
    runners; the card gains ``backend: onnxruntime`` and ``onnx`` (the files
    used so far, filled in as graphs are loaded). ``module`` exports that module
    instead of loading weights (see :class:`OnnxModel`).

    Raises:
        ConfigError: unknown kind or variant, or a model that does not export to ONNX.
        WeightsError: missing, corrupt or mismatching weights.
    """
    om = OnnxModel(kind, variant, checkpoint, device, threads, module, global_start)
    om.session_for(*PREPARE_HW)  # load or export now: errors at build (node: configure) time
    card = dict(om.card)
    card.setdefault('name', f'{variant}@{om.stem if om.weights else "custom"}')
    card['backend'] = 'onnxruntime'
    card['onnx'] = om.files  # live view: filled as sessions are created
    if kind == 'fusion':
        def run_fusion(thermal: torch.Tensor, visible_y: torch.Tensor) -> torch.Tensor:
            return om.run(thermal, visible_y)[0]
        run_fusion.onnx_model = om  # type: ignore[attr-defined]
        return run_fusion, card

    def run_corrector(fused: torch.Tensor, visible_y: torch.Tensor, thermal: torch.Tensor
                      ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        image, m, flow = om.run(fused, visible_y, thermal)
        return image, m, flow
    run_corrector.onnx_model = om  # type: ignore[attr-defined]
    return run_corrector, card
