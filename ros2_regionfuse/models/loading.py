"""Loading a model variant with its weights: ``load_model`` and the corrector switches it applies."""
from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..core.checks import ConfigError, WeightsError
from ..core.weights import load_weights, shipped_weights
from .corrector import Corrector, trained_output
from .registry import build_corrector, build_fusion, canonical_name


def load_model(kind: str, variant: str, checkpoint: str, device: torch.device,
               global_start: bool = True, skip_aligned: bool = True) -> tuple[nn.Module, dict[str, Any]]:
    """Build ``variant`` and load ``checkpoint`` (empty: the shipped weights) strictly.

    ``global_start=False`` switches a corrector's global similarity start off
    (:func:`without_global_start`); ``skip_aligned=False`` makes it run the
    whole corrector on every frame (:func:`set_skip_aligned`).

    Returns:
        ``(model in eval mode on device, model card)``; the card gains a
        ``name`` entry ``variant@<weights file stem>``.

    Raises:
        ConfigError: unknown kind or variant.
        WeightsError: missing, corrupt or mismatching weights.
    """
    variant = canonical_name(variant)   # a deprecated name loads the renamed variant and its weights
    if kind == 'fusion':
        model = build_fusion(variant)
    elif kind == 'corrector':
        model = build_corrector(variant)
    else:
        raise ConfigError(f'unknown model kind {kind!r}')
    path = Path(checkpoint) if checkpoint else shipped_weights(variant)
    card = load_weights(model, path)
    card = dict(card)
    if kind == 'corrector' and isinstance(model, Corrector):
        trained = trained_output(card)
        if trained is not None and trained != model.cfg.output:
            # same tensors, another meaning: the retention block's first output is a different gain
            raise WeightsError(f"{path}: trained for the corrector output '{trained}', but {variant} uses "
                               f"'{model.cfg.output}' (fine-tune them with train-corrector --init)")
    card.setdefault('name', f'{variant}@{path.stem}')
    if kind == 'corrector' and not global_start:
        without_global_start(model)
        card['global_start'] = False
    if kind == 'corrector' and not skip_aligned:
        set_skip_aligned(model, False)
        card['skip_aligned'] = False
    model = model.eval().to(device)
    if kind == 'fusion' and device.type == 'cpu':
        # channels_last: oneDNN convolutions for the low-resolution network; measured -18 % fusion
        # time at 640x480 on 2 CPU threads (the corrector gains nothing); see docs/performance.md
        model = model.to(memory_format=torch.channels_last)
    return model, card


def without_global_start(model: nn.Module) -> nn.Module:
    """Switch a corrector's global similarity start off in place (no-op for other models)."""
    if isinstance(model, Corrector) and model.cfg.global_align:
        model.cfg = replace(model.cfg, global_align=False)
    return model


def set_skip_aligned(model: nn.Module, skip: bool) -> nn.Module:
    """Set a corrector's aligned-frame skip in place (no-op for other models)."""
    if isinstance(model, Corrector) and model.cfg.skip_aligned != skip:
        model.cfg = replace(model.cfg, skip_aligned=skip)
    return model
