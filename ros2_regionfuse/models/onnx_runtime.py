"""ONNX export of the fusion and corrector models and ONNX Runtime runners.

Runners have the same call signatures as the torch runners of
:mod:`ros2_regionfuse.models.runtime`: a fusion runner is
``f(thermal, visible_y) -> fused_y``, a corrector runner
``f(fused_y, visible_y, thermal) -> (corrected_y, misregistration, flow)``, on
``(1, C, H, W)`` float32 tensors of the pipeline's device.

Graphs and sizes: the exported graphs have dynamic H and W. The fusion network
chooses its pyramid depth from the image size (:func:`fusion_net.network_level`:
level 3 up to ~905 px on the long side, 4 up to ~1810 px, ...), so one graph
serves every size of one level; the runner keeps one session per level and
loads (or exports) another when a frame of a new level arrives. Files are named
after the weights: ``NAME.level3.onnx`` for the fusion network at level 3,
``NAME.onnx`` for models with a single graph, next to ``NAME.safetensors``
(``regionfuse export-onnx``). Each file records the SHA-256 of the weights it
was exported from; a file that does not match the weights is not used. Without
a matching file the runner exports in memory and caches the file under
``$XDG_CACHE_HOME/ros2_regionfuse/onnx`` (best effort).
"""
from __future__ import annotations

import copy
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
from torch import nn

from ..core.checks import ConfigError, WeightsError
from ..core.weights import shipped_weights

log = logging.getLogger(__name__)

OPSET = 17
"""ONNX opset of the exported graphs (GridSample needs >= 16)."""

EXPORT_SAMPLE_HW = (480, 640)
"""Example input size (H, W) used to trace a graph when no size of the wanted level is given."""

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
    """Which graph serves an ``h x w`` input: the fusion network's level, else 0 (one graph).

    Example:
        >>> from ros2_regionfuse.models.fusion_net import regionfuse_tiny
        >>> m = regionfuse_tiny()
        >>> graph_key(m, 480, 640), graph_key(m, 1024, 1280), graph_key(nn.Identity(), 9, 9)
        (3, 4, 0)
    """
    from .fusion_net import RegionFuseNet, network_level
    if isinstance(model, RegionFuseNet):
        return network_level(h, w, model.cfg.base_size)
    return 0


def sample_size_for_key(model: nn.Module, key: int) -> tuple[int, int]:
    """An example input size ``(H, W)`` whose :func:`graph_key` is ``key`` (4:3 aspect).

    Example:
        >>> from ros2_regionfuse.models.fusion_net import regionfuse_tiny
        >>> sample_size_for_key(regionfuse_tiny(), 4)
        (960, 1280)
    """
    if key == 0:
        return EXPORT_SAMPLE_HW
    base = getattr(getattr(model, 'cfg', None), 'base_size', EXPORT_SAMPLE_HW[1])
    w = int(base * 2 ** (key - 3))
    h = w * 3 // 4
    if graph_key(model, h, w) != key:
        raise ConfigError(f'no input size maps to graph {key} of {type(model).__name__}')
    return h, w


def onnx_filename(stem: str, key: int) -> str:
    """File name of the graph ``key`` of weights ``stem``: ``stem.levelK.onnx`` or ``stem.onnx``."""
    return f'{stem}.level{key}.onnx' if key else f'{stem}.onnx'


def file_sha256(path: str | Path) -> str:
    """Hex SHA-256 of a file's bytes."""
    h = hashlib.sha256()
    with open(path, 'rb') as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b''):
            h.update(chunk)
    return h.hexdigest()


def state_sha256(model: nn.Module) -> str:
    """Hex SHA-256 over a module's state dict (names, shapes and values)."""
    h = hashlib.sha256()
    for k, v in model.state_dict().items():
        h.update(k.encode())
        h.update(str(tuple(v.shape)).encode())
        h.update(v.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()


def export_onnx(model: nn.Module, kind: str, f: str | Path | io.BytesIO,
                sample_hw: tuple[int, int] = EXPORT_SAMPLE_HW,
                metadata: dict[str, str] | None = None, opset: int = OPSET) -> None:
    """Export ``model`` (eval mode, CPU) to ONNX with dynamic H and W.

    The TorchScript-based exporter traces one call at ``sample_hw``; sizes and
    paddings derived from the input shape stay symbolic in the graph (for the
    fusion network: within the pyramid level of ``sample_hw``).

    Args:
        model: a fusion module ``(thermal, visible) -> fused`` or a corrector
            returning a ``CorrectorOutput``.
        kind: ``'fusion'`` or ``'corrector'``.
        f: output file path or a ``BytesIO``.
        sample_hw: example input size ``(H, W)``.
        metadata: string key/values stored in the model's ``metadata_props``.
        opset: ONNX opset (>= 16).

    Raises:
        ConfigError: unknown kind.
    """
    import onnx
    if kind not in INPUT_NAMES:
        raise ConfigError(f'unknown model kind {kind!r}')
    model = model.eval().cpu()
    graph = _CorrectorGraph(model) if kind == 'corrector' else model
    gen = torch.Generator().manual_seed(0)
    args = tuple(torch.rand(1, 1, *sample_hw, generator=gen) for _ in INPUT_NAMES[kind])
    names_in, names_out = INPUT_NAMES[kind], OUTPUT_NAMES[kind]
    dyn = {n: {2: 'height', 3: 'width'} for n in names_in + names_out}
    buf = io.BytesIO()
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter('ignore')  # legacy-exporter deprecation and tracer warnings
        torch.onnx.export(graph, args, buf, dynamo=False, opset_version=opset,
                          input_names=list(names_in), output_names=list(names_out),
                          dynamic_axes=dyn, do_constant_folding=True)
    proto = onnx.load_from_string(buf.getvalue())
    meta = {'kind': kind, 'sample_hw': f'{sample_hw[0]}x{sample_hw[1]}',
            'graph_key': str(graph_key(model, *sample_hw)), **(metadata or {})}
    for k, v in meta.items():
        entry = proto.metadata_props.add()
        entry.key, entry.value = k, str(v)
    data = proto.SerializeToString()
    if isinstance(f, io.BytesIO):
        f.write(data)
        return
    path = Path(f)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + '.tmp')
    tmp.write_bytes(data)
    tmp.replace(path)


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


def providers_for(device: torch.device) -> list[str]:
    """Execution providers: CUDA first on a CUDA device when ORT has it, always CPU."""
    import onnxruntime as ort
    avail = ort.get_available_providers()
    if device.type == 'cuda' and 'CUDAExecutionProvider' in avail:
        return ['CUDAExecutionProvider', 'CPUExecutionProvider']
    if device.type == 'cuda':
        log.warning('onnxruntime has no CUDAExecutionProvider here: running the ONNX graphs on the CPU')
    return ['CPUExecutionProvider']


def _onnx_meta(path: Path) -> dict[str, str]:
    import onnx
    try:
        proto = onnx.load(str(path), load_external_data=False)
    except Exception as e:  # noqa: BLE001 - onnx raises several types for corrupt files
        raise WeightsError(f'{path}: not a valid ONNX file ({e})') from e
    return {p.key: p.value for p in proto.metadata_props}


def _cache_dir() -> Path:
    root = os.environ.get('XDG_CACHE_HOME') or str(Path.home() / '.cache')
    return Path(root) / 'ros2_regionfuse' / 'onnx'


class OnnxModel:
    """Lazily created ONNX Runtime sessions of one model, one per graph key.

    Args:
        kind: ``'fusion'`` or ``'corrector'``.
        variant: registered variant name.
        checkpoint: weights file; empty = the shipped weights.
        device: where results are returned (and CUDA EP is used when available).
        threads: intra-op threads (0 = ``torch.get_num_threads()``, which the
            pipeline sets from ``cfg.threads``).
        module: export this module (e.g. untrained, for timing) instead of
            loading ``checkpoint``; its graphs are cached by a hash of its state.

    Raises:
        ConfigError, WeightsError: unknown variant, missing/corrupt weights.
    """

    def __init__(self, kind: str, variant: str, checkpoint: str, device: torch.device,
                 threads: int = 0, module: nn.Module | None = None) -> None:
        from .runtime import load_model
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
            self.model, self.card = load_model(kind, variant, str(self.weights), torch.device('cpu'))
            self.sha = file_sha256(self.weights)
        self.threads = threads or torch.get_num_threads()
        self.providers = providers_for(device)
        self.sessions: dict[int, Any] = {}
        self.files: dict[int, str] = {}

    def candidates(self, key: int) -> list[Path]:
        """Files that may hold graph ``key``: next to the weights, then the user cache."""
        name = onnx_filename(self.weights.stem if self.weights else self.variant, key)
        cached = _cache_dir() / f'{self.variant}-{self.sha[:16]}.{name}'
        return [self.weights.with_name(name), cached] if self.weights else [cached]

    def session(self, key: int) -> Any:
        """The session of graph ``key`` (loaded from a matching file or exported now)."""
        if key in self.sessions:
            return self.sessions[key]
        import onnxruntime as ort
        so = session_options(self.threads)
        for path in self.candidates(key):
            if path.is_file():
                meta = _onnx_meta(path)
                if meta.get('weights_sha256') == self.sha:
                    self.sessions[key] = ort.InferenceSession(str(path), so, providers=self.providers)
                    self.files[key] = str(path)
                    log.info('%s: ONNX graph %s', self.variant, path)
                    return self.sessions[key]
                log.warning('%s was exported from other weights than %s: not used', path, self.weights)
        buf = io.BytesIO()
        sample = sample_size_for_key(self.model, key)
        log.info('%s: exporting ONNX graph %d (sample %dx%d) in memory; '
                 '`regionfuse export-onnx` stores it next to the weights', self.variant, key, *sample[::-1])
        export_onnx(self.model, self.kind, buf, sample, metadata=self.export_metadata())
        data = buf.getvalue()
        cache = self.candidates(key)[-1]
        try:
            cache.parent.mkdir(parents=True, exist_ok=True)
            tmp = cache.with_name(cache.name + f'.{os.getpid()}.tmp')
            tmp.write_bytes(data)
            tmp.replace(cache)
            self.files[key] = str(cache)
        except OSError as e:
            log.debug('cannot cache %s: %s', cache, e)
            self.files[key] = 'in-memory'
        self.sessions[key] = ort.InferenceSession(data, so, providers=self.providers)
        return self.sessions[key]

    def export_metadata(self) -> dict[str, str]:
        """Metadata stored in exported files (variant, weights file and hash)."""
        return {'variant': self.variant, 'weights': self.weights.name if self.weights else 'custom',
                'weights_sha256': self.sha,
                'torch': torch.__version__}

    def run(self, *inputs: torch.Tensor) -> list[torch.Tensor]:
        """Run the graph for the inputs' size; tensors in, tensors (on ``device``) out."""
        h, w = inputs[0].shape[-2:]
        sess = self.session(graph_key(self.model, int(h), int(w)))
        feeds = {n: _to_numpy(t) for n, t in zip(INPUT_NAMES[self.kind], inputs, strict=True)}
        outs = sess.run(None, feeds)
        return [torch.from_numpy(o).to(self.device, non_blocking=True) for o in outs]


def _to_numpy(t: torch.Tensor) -> np.ndarray:
    """A contiguous float32 numpy view (a copy only when on another device or dtype)."""
    return np.ascontiguousarray(t.detach().to('cpu', torch.float32).numpy())


def build_onnx_runner(kind: str, variant: str, checkpoint: str, device: torch.device,
                      threads: int = 0, module: nn.Module | None = None
                      ) -> tuple[Callable, dict[str, Any]]:
    """Return ``(runner, card)`` running ``variant`` with ONNX Runtime.

    Same interface as :func:`ros2_regionfuse.models.runtime.build_runner`'s torch
    runners; the card gains ``backend: onnxruntime`` and ``onnx`` (the files
    used so far, filled in as graphs are loaded). ``module`` exports that module
    instead of loading weights (see :class:`OnnxModel`).

    Raises:
        ConfigError: unknown kind or variant.
        WeightsError: missing, corrupt or mismatching weights.
    """
    om = OnnxModel(kind, variant, checkpoint, device, threads, module)
    card = dict(om.card)
    card.setdefault('name', f'{variant}@{om.weights.stem if om.weights else "custom"}')
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
