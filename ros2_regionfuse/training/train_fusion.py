"""Train the region-adaptive fusion network on CPU (unsupervised fusion loss).

Deterministic data list and seed, random patches with flips and scale jitter,
AdamW with cosine decay, a tqdm bar with loss and ETA, resumable state every
``save_every`` steps (``OUT/last.safetensors``), and at the end the weights
(``OUT/<variant>.safetensors``) plus a JSON model card with the config, data
list, seed, exact command, git revision and final metrics.
"""
from __future__ import annotations

import logging
import math
import shlex
import subprocess
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from tqdm import tqdm

from ..core.config import FusionConfig
from ..core.paths import REPO_DIR, data_root
from ..core.weights import load_weights, save_weights
from ..models.fusion_net import network_level
from ..models.registry import build_fusion
from .checkpoint import load_state, save_state
from .data import DEFAULT_SETS, PatchSampler, list_training_files, load_pairs
from .losses import FusionLossWeights, fusion_loss

log = logging.getLogger(__name__)
REPO = REPO_DIR


@dataclass
class TrainFusionConfig:
    """Options of ``regionfuse train-fusion`` (CLI flags are generated from these fields)."""

    data: str = str(data_root())
    out: str = 'runs/fusion'
    variant: str = FusionConfig().variant
    steps: int = 6000
    batch: int = 8
    patch: int = 256
    lr: float = 2e-3
    weight_decay: float = 1e-4
    seed: int = 0
    threads: int = 2
    save_every: int = 200
    max_minutes: float = 110.0
    resume: bool = True
    init: str = ''   # start from these fusion weights (fine-tuning: fresh optimizer and schedule)
    w_intensity: float = FusionLossWeights.intensity
    w_gradient: float = FusionLossWeights.gradient
    w_ssim: float = FusionLossWeights.ssim
    w_balance: float = FusionLossWeights.balance


def git_revision() -> str:
    """Current git commit of the repository (or 'unknown')."""
    try:
        return subprocess.run(['git', 'rev-parse', 'HEAD'], cwd=REPO, capture_output=True,
                              text=True, timeout=10).stdout.strip() or 'unknown'
    except (OSError, subprocess.SubprocessError):
        return 'unknown'


def _smallest_patch(base_size: int) -> int:
    """Smallest square patch (a multiple of 64 px) on which the network runs at its 640x480 level."""
    target = network_level(480, 640, base_size)
    p = 64
    while network_level(p, p, base_size) < target:
        p += 64
    return p


def lr_at(step: int, cfg: TrainFusionConfig, minutes: float = 0.0) -> float:
    """Linear warm-up over 100 steps, then cosine decay to 5 % of the peak.

    Progress is the larger of the step fraction and the time-budget fraction
    (``minutes / max_minutes``), so a run cut by its time budget still ends
    with an annealed learning rate.
    """
    if step < 100:
        return cfg.lr * (step + 1) / 100
    t = max((step - 100) / max(1, cfg.steps - 100), minutes / cfg.max_minutes)
    return cfg.lr * (0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * min(1.0, t))))


def train(cfg: TrainFusionConfig) -> Path:
    """Run (or resume) training; return the path of the final weights."""
    torch.manual_seed(cfg.seed)
    torch.set_num_threads(cfg.threads)
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    root = Path(cfg.data)
    files = list_training_files(root, DEFAULT_SETS)
    pairs = load_pairs(root, DEFAULT_SETS)
    log.info('training on %d pairs from %s', len(pairs), root)
    model = build_fusion(cfg.variant)
    model.train()
    base = getattr(getattr(model, 'cfg', None), 'base_size', None)
    if base is not None:
        runs_at, trains_at = network_level(480, 640, base), network_level(cfg.patch, cfg.patch, base)
        if trains_at != runs_at:
            log.warning('%s reasons at pyramid level %d on 640x480 frames, but %d px patches train level %d; '
                        'pass --patch %d or larger to train the level it runs at', cfg.variant, runs_at,
                        cfg.patch, trains_at, _smallest_patch(base))
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    step = 0
    minutes_before = 0.0
    history: list[dict] = []
    state_path = out / 'last.safetensors'
    if cfg.resume and state_path.is_file():
        step, extra = load_state(state_path, model, opt)
        minutes_before = float(extra.get('minutes', 0.0))
        history = list(extra.get('history', []))
        log.info('resumed from %s at step %d', state_path, step)
    elif cfg.init:
        init_card = load_weights(model, cfg.init)
        history = [{'initialised_from': cfg.init, 'name': init_card.get('name', '?'),
                    'steps_done': init_card.get('steps_done'),
                    'model_config': init_card.get('model_config')}]
        log.info('initialised from %s', cfg.init)
    command = ' '.join(shlex.quote(a) for a in sys.argv)
    history.append({'from_step': step, 'command': command, 'config': asdict(cfg)})
    sampler = PatchSampler(pairs, cfg.patch, cfg.seed + step)  # new stream after resume
    weights = FusionLossWeights(cfg.w_intensity, cfg.w_gradient, cfg.w_ssim, cfg.w_balance)
    t_start = time.monotonic()
    bar = tqdm(total=cfg.steps, initial=step, desc='train-fusion', dynamic_ncols=True)
    ema = None
    skipped = 0
    while step < cfg.steps:
        for g in opt.param_groups:
            g['lr'] = lr_at(step, cfg, minutes_before + (time.monotonic() - t_start) / 60)
        ir, y = sampler.batch(cfg.batch)
        fused = model(ir, y)
        loss, terms = fusion_loss(fused, ir, y, model.aux_loss, weights)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        gnorm = torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        if not (torch.isfinite(loss) and torch.isfinite(gnorm)):
            skipped += 1
            log.warning('non-finite loss/gradient at step %d: step skipped (%d so far)',
                        step, skipped)
            if skipped > 50:
                raise FloatingPointError('training diverged: more than 50 non-finite steps')
            continue
        opt.step()
        step += 1
        ema = float(loss) if ema is None else 0.98 * ema + 0.02 * float(loss)
        bar.update(1)
        bar.set_postfix(loss=f'{ema:.4f}', **{k: f'{v:.3f}' for k, v in terms.items()})
        if step % cfg.save_every == 0 or step == cfg.steps:
            save_state(state_path, model, opt, step, {
                'loss_ema': ema, 'history': history,
                'minutes': minutes_before + (time.monotonic() - t_start) / 60})
        if minutes_before + (time.monotonic() - t_start) / 60 > cfg.max_minutes:
            log.warning('time budget of %.0f min reached at step %d', cfg.max_minutes, step)
            save_state(state_path, model, opt, step, {
                'loss_ema': ema, 'history': history,
                'minutes': minutes_before + (time.monotonic() - t_start) / 60})
            break
    bar.close()
    card = {
        'variant': cfg.variant,
        'name': f'{cfg.variant}@{git_revision()[:8]}',
        'model_config': model.config_dict(),
        'train_config': asdict(cfg),
        'loss': asdict(weights),
        'steps_done': step,
        'final_loss_ema': ema,
        'seed': cfg.seed,
        'command': command,
        'history': history,
        'git_revision': git_revision(),
        'data': [n for n, _, _ in files],
        'data_licences': {'RoadScene': 'none stated', 'TNO': 'CC BY 4.0', 'MSRS': 'MIT',
                          'LLVIP': 'non-commercial only', 'M3FD': 'GPL-3.0'},
        'preprocessing': {'input': 'thermal and visible luminance (BT.601 Y), float in [0, 1]'},
    }
    final = out / f'{cfg.variant}.safetensors'
    save_weights(model.eval(), final, card)
    log.info('wrote %s', final)
    return final
