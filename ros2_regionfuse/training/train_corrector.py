"""Train the post-registration corrector on CPU against a frozen fusion model.

Data: registered pairs of ``../shared/data/ivif`` without the evaluation
splits (TNO/RoadScene ``*_didfuse_auif_test40``) and without MSRS (kept
entirely for evaluation). Each step draws misaligned patches
(:class:`.corrector_data.MisalignedPatchSampler`: seeded perturbations from
:mod:`.perturb`, fused by the frozen fusion model), runs the corrector with
its per-level outputs and minimises :func:`.corrector_losses.corrector_loss`
(documented there) with AdamW, warm-up and time-aware cosine decay.

Resumable: the training state (model + optimizer, safetensors + JSON, never
pickle) is written to ``OUT/last.safetensors`` every ``save_every`` steps and
at the time budget; a new run with the same ``--out`` continues from it. At
the end the weights go to ``--weights`` (default the shipped
``ros2_regionfuse/weights/<variant>.safetensors``) with a JSON model card:
config, data list, seed, exact command, git revision, fusion checkpoint and
final metrics on a fixed synthetic validation batch.
"""
from __future__ import annotations

import logging
import math
import shlex
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from tqdm import tqdm

from ..core.config import FusionConfig, _f
from ..core.paths import REPO_DIR, data_root
from ..core.weights import load_weights, save_weights
from ..models.corrector import Corrector, trained_output
from ..models.registry import build_corrector
from .checkpoint import load_state, save_state
from .corrector_data import MisalignedPatchSampler, PatchBatch, StandInFusion, load_frozen_fusion
from .corrector_losses import CorrectorLossWeights, corrector_loss
from .data import list_training_files, load_pairs
from .perturb import PerturbConfig
from .train_fusion import git_revision

log = logging.getLogger(__name__)
REPO = REPO_DIR
CORRECTOR_SETS = ('RoadScene', 'TNO', 'LLVIP', 'M3FD')  # MSRS is kept for evaluation
WARMUP_STEPS = 100
LR_FLOOR = 0.05          # cosine decay ends at this fraction of the peak
VAL_SEED_OFFSET = 10_000  # the fixed validation batch uses seed + this
MAX_SKIPPED = 50


@dataclass
class TrainCorrectorConfig:
    """Options of ``regionfuse train-corrector`` (CLI flags are generated from these fields)."""

    data: str = _f(str(data_root()),
                   'Root of the ivif data sets ($REGIONFUSE_DATA, else ../shared/data/ivif).')
    out: str = _f('runs/corrector', 'Folder of the resumable training state.')
    weights: str = _f('', 'Where the final weights (+ .json model card) are written; empty = '
                      '<out>/final.safetensors (the shipped weights change only when copied or named here).')
    variant: str = _f('corrector_lite', 'Learned corrector variant (corrector_lite or corrector_multiscale).')
    fusion_variant: str = _f(FusionConfig().variant, "Frozen fusion variant (default: the pipeline's).")
    fusion_checkpoint: str = _f('', 'Fusion weights (or a train-fusion last.safetensors); '
                                'empty = the shipped weights.')
    stand_in_fusion: bool = _f(False, 'Development only: use 0.6 max(Y,T) + 0.4 mean(Y,T) '
                               'instead of the fusion model.')
    steps: int = _f(8000, 'Optimizer steps.', range=(1, 10_000_000))
    batch: int = _f(8, 'Patches per step.', range=(1, 1024))
    patch: int = _f(192, 'Patch side (px), a multiple of 16.', range=(16, 2048))
    margin: int = _f(16, 'Fusion context margin around each patch (px).', range=(0, 256))
    lr: float = _f(2e-3, 'Peak learning rate.', range=(0.0, 1.0))
    weight_decay: float = _f(1e-4, 'AdamW weight decay.', range=(0.0, 1.0))
    seed: int = _f(0, 'Seed of data sampling and initialisation.', range=(0, 2**31 - 1))
    threads: int = _f(1, 'torch CPU threads.', range=(1, 256))
    save_every: int = _f(200, 'Steps between resumable state saves.', range=(1, 1_000_000))
    max_minutes: float = _f(100.0, 'Time budget (min); the schedule anneals within it.',
                            range=(0.1, 100_000.0))
    val_samples: int = _f(32, 'Size of the fixed synthetic validation batch.', range=(1, 4096))
    resume: bool = _f(True, 'Continue from OUT/last.safetensors if present.')
    init: str = _f('', 'Start from these corrector weights (fine-tuning: fresh optimizer and schedule); '
                   'ignored when resuming. Their model card history is carried over.')
    stand_in_mix: float = _f(0.2, 'Share of batches fused by the stand-in fusion instead of the model '
                             '(robustness to the fusion weights).', range=(0.0, 1.0))
    fusion_reload_every: int = _f(0, 'Re-read fusion_checkpoint every N steps when the file changed '
                                  '(training against a fusion that is still training); 0 = never.',
                                  range=(0, 1_000_000))


def lr_at(step: int, cfg: TrainCorrectorConfig, minutes: float) -> float:
    """Linear warm-up, then cosine decay to ``LR_FLOOR`` of the peak.

    Progress is the larger of the step fraction and the time-budget fraction,
    so a run cut by its time budget still ends annealed.
    """
    if step < WARMUP_STEPS:
        return cfg.lr * (step + 1) / WARMUP_STEPS
    t = max((step - WARMUP_STEPS) / max(1, cfg.steps - WARMUP_STEPS), minutes / cfg.max_minutes)
    return cfg.lr * (LR_FLOOR + (1 - LR_FLOOR) * 0.5 * (1 + math.cos(math.pi * min(1.0, t))))


@torch.no_grad()
def validate(model: torch.nn.Module, val: list[PatchBatch], w: CorrectorLossWeights) -> dict[str, float]:
    """Metrics on the fixed validation batches: loss terms, EPE, PSNR before/after, recovery."""
    model.eval()
    tot: dict[str, float] = {}
    se_in = se_out = 0.0
    epe_in = 0.0
    for b in val:
        out = model(b.fused, b.visible, b.thermal, aux=True)
        _, terms = corrector_loss(out, b.target, b.flow, b.valid, w)
        for k, v in terms.items():
            tot[k] = tot.get(k, 0.0) + v / len(val)
        v = b.valid.float()
        se_in += float((((b.fused - b.target) ** 2) * v).sum() / v.sum())
        se_out += float((((out.image - b.target) ** 2) * v).sum() / v.sum())
        shift = torch.linalg.vector_norm(b.flow, dim=1, keepdim=True)
        epe_in += float((shift * v).sum() / v.sum()) / len(val)
    model.train()
    tot['mse_in'], tot['mse_out'] = se_in / len(val), se_out / len(val)
    tot['recovered'] = 1.0 - se_out / max(se_in, 1e-12)
    tot['mean_shift'] = epe_in
    return tot


def train(cfg: TrainCorrectorConfig) -> Path:
    """Run (or resume) training; return the path of the final weights."""
    torch.manual_seed(cfg.seed)
    torch.set_num_threads(cfg.threads)
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    root = Path(cfg.data)
    files = list_training_files(root, CORRECTOR_SETS)
    pairs = load_pairs(root, CORRECTOR_SETS)
    fusion, fusion_info = load_frozen_fusion(cfg.fusion_variant, cfg.fusion_checkpoint, cfg.stand_in_fusion)
    log.info('training on %d pairs from %s; fusion %s', len(pairs), root, fusion_info)
    pcfg = PerturbConfig()
    model = build_corrector(cfg.variant)
    model.train()
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    weights = CorrectorLossWeights()
    val_sampler = MisalignedPatchSampler(pairs, cfg.patch, cfg.margin, pcfg, cfg.seed + VAL_SEED_OFFSET)
    val = [val_sampler.batch(min(cfg.batch, cfg.val_samples - i), fusion)
           for i in range(0, cfg.val_samples, cfg.batch)]
    step, minutes_before = 0, 0.0
    state_path = out / 'last.safetensors'
    history: list = []
    if cfg.resume and state_path.is_file():
        step, extra = load_state(state_path, model, opt)
        minutes_before = float(extra.get('minutes', 0.0))
        history = list(extra.get('history', []))
        log.info('resumed from %s at step %d', state_path, step)
    elif cfg.init:
        init_card = load_weights(model, cfg.init)
        init_output = trained_output(init_card)   # None (no recorded config): trust the file
        refuse = isinstance(model, Corrector) and model.cfg.output == 'refuse'
        if refuse and init_output not in (None, 'refuse'):
            # the retention block's first output was the visible gain of the other formula
            model.reset_retention_gain()
            log.info("the retention gain starts at 1 (init weights trained with output '%s')", init_output)
        history = list(init_card.get('history', [])) + [
            f"initialised from {cfg.init} ({init_card.get('name', '?')}, {init_card.get('steps_done', '?')} "
            f"steps, {float(init_card.get('minutes', 0.0)):.0f} min, validation recovered "
            f"{float(init_card.get('validation', {}).get('recovered', float('nan'))):.3f})"]
        log.info('initialised from %s', cfg.init)
    sampler = MisalignedPatchSampler(pairs, cfg.patch, cfg.margin, pcfg, cfg.seed + step)
    mix_rng = torch.Generator().manual_seed(cfg.seed + step)
    stand_in = StandInFusion()
    fusion_path = Path(fusion_info['checkpoint']) if fusion_info['checkpoint'] else None
    fusion_mtime = fusion_path.stat().st_mtime if fusion_path else 0.0
    fusion_reloads: list[dict] = []
    t_start = time.monotonic()

    def minutes() -> float:
        return minutes_before + (time.monotonic() - t_start) / 60

    bar = tqdm(total=cfg.steps, initial=step, desc='train-corrector', dynamic_ncols=True)
    ema: dict[str, float] = {}
    skipped = 0
    while step < cfg.steps:
        for g in opt.param_groups:
            g['lr'] = lr_at(step, cfg, minutes())
        if (cfg.fusion_reload_every and fusion_path is not None and step % cfg.fusion_reload_every == 0
                and fusion_path.stat().st_mtime != fusion_mtime):
            fusion_mtime = fusion_path.stat().st_mtime
            fusion, fusion_info = load_frozen_fusion(cfg.fusion_variant, cfg.fusion_checkpoint)
            fusion_reloads.append({'step': step, 'sha256': fusion_info['sha256']})
            log.info('step %d: reloaded fusion %s', step, fusion_info['sha256'][:12])
        use_stand_in = float(torch.rand((), generator=mix_rng)) < cfg.stand_in_mix
        b = sampler.batch(cfg.batch, stand_in if use_stand_in else fusion)
        o = model(b.fused, b.visible, b.thermal, aux=True)
        loss, terms = corrector_loss(o, b.target, b.flow, b.valid, weights)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        gnorm = torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        if not (torch.isfinite(loss) and torch.isfinite(gnorm)):
            skipped += 1
            log.warning('non-finite loss/gradient at step %d: skipped (%d so far)', step, skipped)
            if skipped > MAX_SKIPPED:
                raise FloatingPointError('training diverged: too many non-finite steps')
            continue
        opt.step()
        step += 1
        terms["loss"] = float(loss.detach())
        ema = {k: v if k not in ema else 0.98 * ema[k] + 0.02 * v for k, v in terms.items()}
        bar.update(1)
        bar.set_postfix(loss=f"{ema['loss']:.4f}", epe=f"{ema['epe']:.2f}", charb=f"{ema['charb']:.4f}")
        over = minutes() > cfg.max_minutes
        if step % cfg.save_every == 0 or step == cfg.steps or over:
            save_state(state_path, model, opt, step, {'minutes': minutes(), 'ema': ema, 'history': history})
        if over:
            log.warning('time budget of %.0f min reached at step %d', cfg.max_minutes, step)
            break
    bar.close()
    metrics = validate(model, val, weights)
    log.info('validation: %s', {k: round(v, 4) for k, v in metrics.items()})
    model.eval()
    card = {
        'variant': cfg.variant,
        'name': f'{cfg.variant}@{git_revision()[:8]}',
        'model_config': model.config_dict(),
        'train_config': asdict(cfg),
        'perturbation': asdict(pcfg),
        'loss': asdict(weights),
        'fusion': fusion_info,
        'fusion_reloads': fusion_reloads,
        'steps_done': step,
        'minutes': minutes(),
        'final_train_ema': ema,
        'validation': metrics,
        'seed': cfg.seed,
        'command': ' '.join(shlex.quote(a) for a in sys.argv),
        'history': history,
        'git_revision': git_revision(),
        'data': [n for n, _, _ in files],
        'data_licences': {'RoadScene': 'none stated', 'TNO': 'CC BY 4.0', 'LLVIP': 'non-commercial only',
                          'M3FD': 'GPL-3.0'},
        'flow_convention': 'corrected(p) takes the IR-derived content at p + flow(p) of the '
                           'uncorrected fusion; pixels, x then y; grid_sample align_corners=False',
        'preprocessing': {'input': 'fused luminance, visible luminance (BT.601 Y), thermal; '
                                   'float in [0, 1], (B, 1, H, W)'},
    }
    final = Path(cfg.weights) if cfg.weights else Path(cfg.out) / 'final.safetensors'
    save_weights(model, final, card)
    log.info('wrote %s', final)
    return final
