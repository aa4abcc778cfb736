"""Resumable training state as safetensors + JSON (never pickle)."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from torch import nn


def save_state(path: Path, model: nn.Module, opt: torch.optim.Optimizer, step: int,
               extra: dict[str, Any]) -> None:
    """Write model + optimizer tensors to ``path`` (.safetensors) and scalars to ``path``.json."""
    from safetensors.torch import save_file
    tensors = {f'model.{k}': v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
    opt_sd = opt.state_dict()
    scalars: dict[str, Any] = {}
    for pid, st in opt_sd['state'].items():
        for k, v in st.items():
            if torch.is_tensor(v):
                tensors[f'opt.{pid}.{k}'] = v.detach().contiguous().cpu()
            else:
                scalars[f'{pid}.{k}'] = v
    meta = {'step': step, 'opt_scalars': scalars, 'param_groups': opt_sd['param_groups'],
            'extra': extra}
    tmp = path.with_suffix('.tmp')
    save_file(tensors, str(tmp))
    tmp.replace(path)
    path.with_suffix('.json').write_text(json.dumps(meta, default=str))


def load_state(path: Path, model: nn.Module, opt: torch.optim.Optimizer) -> tuple[int, dict]:
    """Restore what :func:`save_state` wrote; returns ``(step, extra)``."""
    from safetensors.torch import load_file
    tensors = load_file(str(path))
    meta = json.loads(path.with_suffix('.json').read_text())
    model.load_state_dict({k[6:]: v for k, v in tensors.items() if k.startswith('model.')},
                          strict=True)
    state: dict[int, dict[str, Any]] = {}
    for k, v in tensors.items():
        if k.startswith('opt.'):
            _, pid, name = k.split('.', 2)
            state.setdefault(int(pid), {})[name] = v
    for k, v in meta['opt_scalars'].items():
        pid, name = k.split('.', 1)
        state.setdefault(int(pid), {})[name] = v
    opt.load_state_dict({'state': state, 'param_groups': meta['param_groups']})
    return int(meta['step']), meta.get('extra', {})
