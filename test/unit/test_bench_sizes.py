"""``regionfuse bench-sizes``: the two folders it builds and its report."""
from __future__ import annotations

import argparse

import numpy as np
import pytest

from ros2_regionfuse.cli import bench_sizes as bs
from ros2_regionfuse.core.checks import ConfigError


def _pairs(n: int, size=(120, 160)) -> list[tuple[np.ndarray, np.ndarray]]:
    rng = np.random.default_rng(0)
    return [(rng.integers(0, 255, size, dtype=np.uint8), rng.integers(0, 255, (*size, 3), dtype=np.uint8))
            for _ in range(n)]


def test_folders_have_distinct_sizes_or_one_size() -> None:
    pairs = _pairs(8)
    mixed = bs.mixed_sizes(pairs, 0.6, seed=1)
    sizes = [v.shape[:2] for _, v in mixed]
    assert len(set(sizes)) == 8                                   # one size per pair
    assert all(72 <= h <= 120 and 96 <= w <= 160 for h, w in sizes)
    assert all(t.shape == v.shape[:2] for t, v in mixed)
    assert bs.mixed_sizes(mixed, 0.6, seed=1) is mixed            # already mixed: kept as they are
    fixed = bs.fixed_size(mixed, (64, 48))
    assert {v.shape for _, v in fixed} == {(48, 64, 3)} and {t.shape for t, _ in fixed} == {(48, 64)}


def test_report_on_the_test_pairs(test_data, capsys) -> None:
    args = argparse.Namespace(data=test_data, pairs=3, size='160x120', rounds=1, threads=1, min_scale=0.6,
                              seed=0, json=None)
    r = bs.run_bench_sizes(args)
    assert r['pairs'] == 3 and r['mixed_distinct_sizes'] == 3 and r['fixed_size'] == [160, 120]
    (rd,) = r['rounds']
    assert rd['fixed']['mean_ms'] > 0 and rd['mixed']['mean_ms'] > 0
    assert rd['ratio'] == pytest.approx(rd['mixed']['mean_ms'] / rd['fixed']['mean_ms'])
    assert r['target']['pass'] == (r['ratio_median'] <= bs.DEFAULTS.target_ratio)
    assert 'mixed / fixed per pair' in bs.format_report(r)


def test_bad_arguments_are_refused(tmp_path) -> None:
    with pytest.raises(ConfigError):
        bs.load_pairs(tmp_path, 3)
    args = argparse.Namespace(data=None, pairs=1, size='640x480', rounds=1, threads=1, min_scale=0.6,
                              seed=0, json=None)
    with pytest.raises(ConfigError):
        bs.run(args)
