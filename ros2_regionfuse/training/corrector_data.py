"""Training/evaluation data for the corrector: frozen fusion and misaligned patch batches.

Target = frozen fusion of the aligned pair; input = frozen fusion of
(visible, perturbed thermal) plus both sources. The perturbation (and its
ground-truth flow) comes from :mod:`.perturb`. The target uses the same
thermal blur/noise as the input (aligned), so the only difference between
input and target is geometric: an identity sample's input equals its target.
"""
from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any, NamedTuple

import cv2
import numpy as np
import torch
from torch import nn

from ..core.checks import WeightsError
from ..core.config import FusionConfig
from ..core.weights import load_weights, shipped_weights
from ..models.registry import build_fusion
from .data import Pair
from .perturb import Perturbation, PerturbConfig, apply_perturbation, sample_perturbation

STAND_IN_MAX_WEIGHT = 0.6  # stand-in fusion: 0.6 * max(Y, T) + 0.4 * mean(Y, T)


class StandInFusion(nn.Module):
    """Development-only stand-in for the fusion model: ``0.6 max(Y, T) + 0.4 (Y + T) / 2``."""

    def forward(self, thermal: torch.Tensor, visible: torch.Tensor) -> torch.Tensor:
        mx = torch.maximum(thermal, visible)
        return STAND_IN_MAX_WEIGHT * mx + (1.0 - STAND_IN_MAX_WEIGHT) * 0.5 * (thermal + visible)


def file_sha256(path: Path) -> str:
    """Hex SHA-256 of a file."""
    h = hashlib.sha256()
    with open(path, 'rb') as f:
        for chunk in iter(lambda: f.read(1 << 20), b''):
            h.update(chunk)
    return h.hexdigest()


def load_frozen_fusion(variant: str = FusionConfig().variant, checkpoint: str = '', stand_in: bool = False
                       ) -> tuple[nn.Module, dict[str, Any]]:
    """Build the frozen fusion model used to make corrector inputs and targets.

    Args:
        variant: fusion variant name.
        checkpoint: weights file; empty = the shipped weights. A training
            state written by ``train-fusion`` (``last.safetensors``, keys
            ``model.*``) is accepted too.
        stand_in: use :class:`StandInFusion` (development only).

    Returns:
        ``(model in eval mode without gradients, info)``; info records the
        variant, checkpoint path and its SHA-256.

    Raises:
        WeightsError: missing or mismatching weights.
    """
    if stand_in:
        return StandInFusion().eval(), {'variant': 'stand_in', 'checkpoint': '', 'sha256': ''}
    model = build_fusion(variant)
    path = Path(checkpoint) if checkpoint else shipped_weights(variant)
    if not path.is_file():
        raise WeightsError(f'fusion weights not found: {path}')
    from safetensors.torch import load_file
    try:
        keys = list(load_file(str(path)).keys())
    except Exception as e:  # noqa: BLE001 - any parse failure is a corrupt file
        raise WeightsError(f'{path}: not a valid safetensors file ({e})') from e
    if keys and all(k.startswith(('model.', 'opt.')) for k in keys):
        state = {k[6:]: v for k, v in load_file(str(path)).items() if k.startswith('model.')}
        try:
            model.load_state_dict(state, strict=True)
        except RuntimeError as e:
            raise WeightsError(f'{path}: training state does not match {variant}: {e}') from e
    else:
        load_weights(model, path)
    for p in model.parameters():
        p.requires_grad_(False)
    return model.eval(), {'variant': variant, 'checkpoint': str(path), 'sha256': file_sha256(path)}


class PatchBatch(NamedTuple):
    """One training batch; every tensor ``(B, C, P, P)`` float32 (``valid`` bool).

    Attributes:
        fused: fusion of (visible, perturbed thermal), in [0, 1].
        visible: visible luminance, in [0, 1].
        thermal: perturbed thermal, in [0, 1].
        target: fusion of the aligned pair, in [0, 1].
        flow: ground-truth corrector flow (px, x then y), 2 channels.
        valid: pixels whose perturbed thermal came from inside the image.
    """

    fused: torch.Tensor
    visible: torch.Tensor
    thermal: torch.Tensor
    target: torch.Tensor
    flow: torch.Tensor
    valid: torch.Tensor


class MisalignedPatchSampler:
    """Random misaligned patches from registered pairs (seeded).

    Each sample: a pair drawn with probability ~ sqrt(area), scale jitter,
    horizontal flip, a perturbation drawn for the whole (scaled) image, and a
    ``patch + 2 * margin`` window; both fusions run on the window (so border
    effects match) and the margin is cropped away.

    Args:
        pairs: registered pairs (from :func:`.data.load_pairs`).
        patch: patch side (px).
        margin: context margin for the fusion (px).
        cfg: perturbation distribution.
        seed: seed of the sampler's generator.
        scale_range: random downscaling of the source image.
    """

    def __init__(self, pairs: list[Pair], patch: int, margin: int, cfg: PerturbConfig, seed: int,
                 scale_range: tuple[float, float] = (0.75, 1.0)) -> None:
        self.pairs, self.patch, self.margin, self.cfg = pairs, patch, margin, cfg
        self.scale_range = scale_range
        self.rng = np.random.default_rng(seed)
        area = np.array([p.ir.size for p in pairs], np.float64)
        self.p = np.sqrt(area) / np.sqrt(area).sum()

    def _one(self) -> tuple[torch.Tensor, ...]:
        rng = self.rng
        pr = self.pairs[int(rng.choice(len(self.pairs), p=self.p))]
        win = self.patch + 2 * self.margin
        ir, y = pr.ir, pr.vis_y
        h, w = ir.shape
        s = rng.uniform(*self.scale_range)
        s = max(s, win / min(h, w))
        if abs(s - 1.0) > 1e-3:
            size = (max(win, round(w * s)), max(win, round(h * s)))
            interp = cv2.INTER_AREA if s < 1 else cv2.INTER_LINEAR
            ir, y = cv2.resize(ir, size, interpolation=interp), cv2.resize(y, size, interpolation=interp)
        if rng.random() < 0.5:
            ir, y = ir[:, ::-1], y[:, ::-1]
        h, w = ir.shape
        t_full = torch.from_numpy(np.ascontiguousarray(ir))[None, None]
        pert = sample_perturbation(h, w, rng, self.cfg)
        x0, y0 = int(rng.integers(0, w - win + 1)), int(rng.integers(0, h - win + 1))
        window = (x0, y0, win, win)
        t_in, flow, valid = apply_perturbation(t_full, pert, window)
        same_degradation = Perturbation(h, w, blur_sigma=pert.blur_sigma, noise_std=pert.noise_std,
                                        seed=pert.seed)
        t_al, _, _ = apply_perturbation(t_full, same_degradation, window)
        y_win = torch.from_numpy(np.ascontiguousarray(y[y0:y0 + win, x0:x0 + win]))[None, None]
        return t_in, t_al, y_win, flow, valid

    @torch.no_grad()
    def batch(self, n: int, fusion: nn.Module) -> PatchBatch:
        """Draw ``n`` samples and fuse them with the frozen ``fusion`` model."""
        parts = [self._one() for _ in range(n)]
        t_in, t_al, y, flow, valid = (torch.cat(list(c)) for c in zip(*parts))
        fused = fusion(torch.cat([t_in, t_al]), torch.cat([y, y])).clamp(0.0, 1.0)
        m, p = self.margin, self.patch

        def crop(t: torch.Tensor) -> torch.Tensor:
            return t[..., m:m + p, m:m + p].contiguous()

        return PatchBatch(crop(fused[:n]), crop(y), crop(t_in), crop(fused[n:]), crop(flow), crop(valid))
