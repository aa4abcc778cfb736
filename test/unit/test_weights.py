"""Checkpoint loading: strict, safetensors only, clear errors; shipped fusion weights quality."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from ros2_regionfuse.core.checks import WeightsError
from ros2_regionfuse.core.weights import load_weights, save_weights, shipped_weights
from ros2_regionfuse.models.registry import build_fusion


def test_save_load_round_trip(tmp_path: Path) -> None:
    a = build_fusion('regionfuse_fine')
    with torch.no_grad():
        for p in a.parameters():
            p.add_(torch.randn_like(p) * 0.01)
    save_weights(a, tmp_path / 'w.safetensors', {'variant': 'regionfuse_fine', 'seed': 3})
    b = build_fusion('regionfuse_fine')
    card = load_weights(b, tmp_path / 'w.safetensors')
    assert card['seed'] == 3
    for (ka, va), (kb, vb) in zip(a.state_dict().items(), b.state_dict().items(), strict=True):
        assert ka == kb and torch.equal(va, vb)


def test_corrupt_and_wrong_files_are_rejected(tmp_path: Path) -> None:
    m = build_fusion('regionfuse_fine')
    bad = tmp_path / 'corrupt.safetensors'
    bad.write_bytes(b'\x00\x01garbage' * 100)
    with pytest.raises(WeightsError, match='not a valid safetensors'):
        load_weights(m, bad)
    pickle_like = tmp_path / 'model.safetensors'
    torch.save(m.state_dict(), pickle_like)  # a pickle under a safetensors name
    with pytest.raises(WeightsError, match=str(pickle_like.name)):
        load_weights(m, pickle_like)
    with pytest.raises(WeightsError, match='not found'):
        load_weights(m, tmp_path / 'missing.safetensors')
    other = build_fusion('regionfuse_small')
    save_weights(other, tmp_path / 'small.safetensors', {'variant': 'regionfuse_small'})
    with pytest.raises(WeightsError, match='wrong shape'):
        load_weights(m, tmp_path / 'small.safetensors')


def _metrics_of(fused: np.ndarray, ir: np.ndarray, vi: np.ndarray) -> dict[str, float]:
    from ros2_regionfuse.core.metrics import compute_metrics
    return compute_metrics(fused, ir, vi)


def test_shipped_fusion_beats_average_on_real_pairs(test_data: Path) -> None:
    """The shipped weights beat a plain average fusion on SD, Qabf and VIF (bundled real pairs)."""
    import cv2

    from ros2_regionfuse.core.config import PipelineConfig
    from ros2_regionfuse.inference.pipeline import FusionPipeline
    path = shipped_weights('regionfuse_fine')
    assert path.is_file(), f'shipped fusion weights missing: {path}'
    cfg = PipelineConfig(device='cpu')
    cfg.corrector.enabled = False
    pipe = FusionPipeline(cfg)
    stems = sorted(p.stem for p in (test_data / 'ir').glob('*.png'))
    assert stems
    wins = {'SD': 0, 'Qabf': 0, 'VIF': 0}
    for s in stems:
        ir = cv2.imread(str(test_data / 'ir' / f'{s}.png'), cv2.IMREAD_GRAYSCALE)
        vi = cv2.cvtColor(cv2.imread(str(test_data / 'vi' / f'{s}.png')), cv2.COLOR_BGR2RGB)
        vi_gray = cv2.cvtColor(vi, cv2.COLOR_RGB2GRAY)
        fused = cv2.cvtColor(pipe.process(ir, vi).fused, cv2.COLOR_RGB2GRAY)
        avg = ((ir.astype(np.float32) + vi_gray) / 2 + 0.5).astype(np.uint8)
        mf, ma = _metrics_of(fused, ir, vi_gray), _metrics_of(avg, ir, vi_gray)
        for k in wins:
            wins[k] += mf[k] > ma[k]
    assert wins == {k: len(stems) for k in wins}, wins


@pytest.mark.parametrize('old,new', [('corrector_fast', 'corrector_multiscale'),
                                     ('regionfuse_tiny', 'regionfuse_fine')])
def test_deprecated_names_load_the_renamed_variant(old, new, caplog) -> None:
    """The former names (they said the opposite of what the models are) still load, with a warning."""
    import torch

    from ros2_regionfuse.models.loading import load_model
    kind = 'corrector' if old.startswith('corrector') else 'fusion'
    assert shipped_weights(old) == shipped_weights(new) and shipped_weights(new).name == f'{new}.safetensors'
    with caplog.at_level('WARNING'):
        a, card_a = load_model(kind, old, '', torch.device('cpu'))
    assert f'{old!r} is deprecated' in caplog.text
    b, card_b = load_model(kind, new, '', torch.device('cpu'))
    assert card_a['name'] == card_b['name'] and card_a['name'].startswith(f'{new}@')
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)
