"""``train-corrector --init``: fine-tuning starts from given weights and keeps their history."""
from __future__ import annotations

import shutil
from pathlib import Path

import torch

from ros2_regionfuse.core.weights import load_weights, save_weights
from ros2_regionfuse.models.registry import build_corrector
from ros2_regionfuse.training.train_corrector import TrainCorrectorConfig, train

CORRECTOR = TrainCorrectorConfig().variant   # the default learned corrector variant

TEST_DATA = Path(__file__).resolve().parents[1] / 'data'


def test_init_loads_weights_and_carries_history(tmp_path):
    data = tmp_path / 'ivif'                      # a one-pair data set from the bundled test pairs
    for mod in ('ir', 'vi'):
        (data / 'RoadScene' / mod).mkdir(parents=True)
        shutil.copy(TEST_DATA / mod / 'FLIR_05005.png', data / 'RoadScene' / mod / 'FLIR_05005.png')
    torch.manual_seed(3)
    start = build_corrector(CORRECTOR)
    with torch.no_grad():
        for p in start.parameters():
            p.add_(0.01 * torch.randn_like(p))
    init = tmp_path / 'init.safetensors'
    save_weights(start, init, {'name': 'start@test', 'steps_done': 7, 'minutes': 3.0,
                               'validation': {'recovered': 0.25}, 'history': ['first run']})
    cfg = TrainCorrectorConfig(data=str(data), out=str(tmp_path / 'run'),
                               weights=str(tmp_path / 'w.safetensors'), init=str(init), steps=1,
                               batch=1, patch=32, margin=0, lr=0.0,
                               weight_decay=0.0, val_samples=1, stand_in_fusion=True, stand_in_mix=0.0)
    final = train(cfg)
    got = build_corrector(CORRECTOR)
    card = load_weights(got, final)
    # lr = 0: the weights written are exactly the initial ones (not a fresh initialisation)
    for (k, a), b in zip(start.state_dict().items(), got.state_dict().values()):
        assert torch.equal(a, b), k
    assert card['history'][0] == 'first run'
    assert card['history'][1].startswith(f'initialised from {init} (start@test, 7 steps')
    assert card['steps_done'] == 1


def test_refuse_init_from_retain_weights_resets_the_gain(tmp_path):
    """Fine-tuning the ``refuse`` output from ``retain`` weights: every weight is taken over except the
    retention block's first output (the visible gain of the other formula), which starts at 0."""
    data = tmp_path / 'ivif'
    for mod in ('ir', 'vi'):
        (data / 'RoadScene' / mod).mkdir(parents=True)
        shutil.copy(TEST_DATA / mod / 'FLIR_05005.png', data / 'RoadScene' / mod / 'FLIR_05005.png')
    torch.manual_seed(4)
    from dataclasses import replace

    from ros2_regionfuse.models.corrector import Corrector
    start = Corrector(replace(build_corrector('corrector_lite').cfg, output='retain'))
    with torch.no_grad():
        for p in start.parameters():
            p.add_(0.01 * torch.randn_like(p))
    init = tmp_path / 'init.safetensors'
    save_weights(start, init, {'name': 'retain@test', 'model_config': start.config_dict()})
    cfg = TrainCorrectorConfig(data=str(data), out=str(tmp_path / 'run'), variant='corrector_lite',
                               weights=str(tmp_path / 'w.safetensors'), init=str(init), steps=1,
                               batch=1, patch=32, margin=0, lr=0.0,
                               weight_decay=0.0, val_samples=1, stand_in_fusion=True, stand_in_mix=0.0)
    got = build_corrector('corrector_lite')
    card = load_weights(got, train(cfg))
    assert card['model_config']['output'] == 'refuse'
    reset = {'mrb.out.2.weight', 'mrb.out.2.bias'}
    for (k, a), b in zip(start.state_dict().items(), got.state_dict().values()):
        if k in reset:
            assert float(b[0].abs().max()) == 0.0 and torch.equal(a[1:], b[1:]), k
        else:
            assert torch.equal(a, b), k
