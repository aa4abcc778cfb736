"""Strict safetensors checkpoint loading/saving with a JSON model card beside it.

A checkpoint ``NAME.safetensors`` holds the tensors; ``NAME.json`` (the model
card) holds the variant, its config, the training command, seed, data list and
metrics. Weights are never unpickled.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from torch import nn

from .checks import WeightsError
from .paths import WEIGHTS_DIR

#: Former variant names and the variants they name (same models, same weights). The names said
#: the opposite of what the models are: ``corrector_fast`` is the slower learned corrector,
#: ``regionfuse_tiny`` is slower than ``regionfuse_lite``.
DEPRECATED_NAMES = {'corrector_fast': 'corrector_multiscale', 'regionfuse_tiny': 'regionfuse_fine'}


def shipped_weights(name: str) -> Path:
    """Path of the shipped weights ``NAME.safetensors``.

    Looked up in the installed package share (``ament_index``) when the package
    is installed by colcon, else next to the sources (``ros2_regionfuse/weights``).
    """
    name = DEPRECATED_NAMES.get(name, name)
    candidates = [WEIGHTS_DIR / f'{name}.safetensors']
    try:  # installed ROS package: <prefix>/share/ros2_regionfuse/weights
        from ament_index_python.packages import get_package_share_directory
        candidates.append(Path(get_package_share_directory('ros2_regionfuse'))
                          / 'weights' / f'{name}.safetensors')
    except Exception:  # noqa: BLE001 - ament_index absent or package not installed
        pass
    for c in candidates:
        if c.is_file():
            return c
    return candidates[0]


def save_weights(model: nn.Module, path: str | Path, card: dict[str, Any]) -> None:
    """Write ``model``'s state dict to ``path`` (safetensors) and ``card`` beside it (JSON).

    The write goes to a temporary file first, so a crash never leaves a
    half-written checkpoint under the final name.
    """
    from safetensors.torch import save_file
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
    tmp = path.with_suffix('.tmp')
    save_file(state, str(tmp), metadata={'variant': str(card.get('variant', ''))})
    tmp.replace(path)
    card_tmp = path.with_suffix('.json.tmp')
    card_tmp.write_text(json.dumps(card, indent=2, sort_keys=True, default=str))
    card_tmp.replace(path.with_suffix('.json'))


def load_weights(model: nn.Module, path: str | Path) -> dict[str, Any]:
    """Load ``path`` into ``model`` strictly and return the model card (or ``{}``).

    Raises:
        WeightsError: file missing, not a safetensors file (corrupt or pickle),
            or keys/shapes that do not match ``model``; the message names the
            file and the first mismatches.
    """
    from safetensors import SafetensorError
    from safetensors.torch import load_file
    path = Path(path)
    if not path.is_file():
        raise WeightsError(f'weights file not found: {path}')
    try:
        state = load_file(str(path))
    except (SafetensorError, OSError, ValueError, RuntimeError) as e:
        raise WeightsError(f'{path}: not a valid safetensors file ({e})') from e
    own = model.state_dict()
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    wrong = [k for k in own if k in state and tuple(own[k].shape) != tuple(state[k].shape)]
    if missing or unexpected or wrong:
        raise WeightsError(
            f'{path}: does not match {type(model).__name__}: missing {missing[:5]}, '
            f'unexpected {unexpected[:5]}, wrong shape {wrong[:5]}')
    model.load_state_dict(state, strict=True)
    card_path = path.with_suffix('.json')
    if card_path.is_file():
        try:
            return json.loads(card_path.read_text())
        except json.JSONDecodeError as e:
            raise WeightsError(f'{card_path}: corrupt model card ({e})') from e
    return {}
