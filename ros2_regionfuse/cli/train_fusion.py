"""``regionfuse train-fusion``: train the fusion network (options from TrainFusionConfig)."""
from __future__ import annotations

import argparse
import dataclasses

from ..training.train_fusion import TrainFusionConfig, train


def add_arguments(p: argparse.ArgumentParser) -> None:
    """One flag per TrainFusionConfig field, defaults from the dataclass."""
    for f in dataclasses.fields(TrainFusionConfig):
        flag = '--' + f.name.replace('_', '-')
        if f.type in ('bool', bool):
            p.add_argument(flag, action=argparse.BooleanOptionalAction, default=f.default)
        else:
            typ = {'int': int, 'float': float, 'str': str}.get(str(f.type), str)
            p.add_argument(flag, type=typ, default=f.default, help=f'default: {f.default}')


def run(args: argparse.Namespace) -> int:
    """Build the config from the flags and train."""
    cfg = TrainFusionConfig(**{f.name: getattr(args, f.name)
                               for f in dataclasses.fields(TrainFusionConfig)})
    train(cfg)
    return 0
