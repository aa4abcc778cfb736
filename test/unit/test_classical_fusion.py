"""Classical reference fusion (GFF, Laplacian pyramid) and their rows in ``regionfuse eval``."""
from __future__ import annotations

import numpy as np
import pytest

from ros2_regionfuse.core.checks import ShapeError
from ros2_regionfuse.core.classical_fusion import REFERENCE_METHODS, guided_filter_fusion, laplacian_fusion


@pytest.mark.parametrize('fuse', [guided_filter_fusion, laplacian_fusion])
def test_fusion_keeps_each_source_where_it_has_the_detail(fuse) -> None:
    rng = np.random.default_rng(0)
    img = rng.random((64, 80)).astype(np.float32)
    assert np.abs(fuse(img, img) - img).max() < 0.02            # a pair of equal images: that image
    flat = np.full((64, 80), 0.5, np.float32)
    tex = np.full((64, 80), 0.5, np.float32)
    tex[:, 40:] = 0.5 + 0.4 * (rng.random((64, 40)) - 0.5)       # texture in the right half only
    out = fuse(flat, tex)
    assert out.dtype == np.float32 and out.shape == flat.shape and 0.0 <= out.min() and out.max() <= 1.0
    assert np.std(out[:, 48:]) > 0.5 * np.std(tex[:, 48:])      # the texture survives
    assert np.std(out[:, :32]) < 0.02                           # the flat half stays flat
    with pytest.raises(ShapeError):
        fuse(flat, tex[:, :40])


def test_eval_reference_rows(test_data, tmp_path) -> None:
    import json

    from ros2_regionfuse.cli.main import main
    from ros2_regionfuse.core.imageio import read_gray, write_png
    fused = tmp_path / 'mine'
    fused.mkdir()
    for p in sorted((test_data / 'ir').iterdir()):
        write_png(fused / p.name, read_gray(p, as_uint8=True))   # "fused" = the thermal image itself
    out = tmp_path / 'eval.json'
    assert main(['eval', '--thermal', str(test_data / 'ir'), '--rgb', str(test_data / 'vi'), '--fused',
                 str(fused), '--reference', *sorted(REFERENCE_METHODS), '--json', str(out)]) == 0
    doc = json.loads(out.read_text())
    assert set(doc['methods']) == {'mine', 'GFF', 'LP'}
    for name in ('GFF', 'LP'):   # both sources' information: more MI with the visible image than the IR copy
        assert doc['methods'][name]['folder'] == f'reference {name}'
        assert doc['methods'][name]['mean']['SCD'] > doc['methods']['mine']['mean']['SCD']
