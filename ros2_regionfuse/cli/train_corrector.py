"""``regionfuse train-corrector``: train the corrector (options from TrainCorrectorConfig)."""
from __future__ import annotations

import argparse
import dataclasses

from ..training.train_corrector import TrainCorrectorConfig, train


def add_arguments(p: argparse.ArgumentParser) -> None:
    """One flag per TrainCorrectorConfig field, defaults and help from the dataclass."""
    for f in dataclasses.fields(TrainCorrectorConfig):
        flag = '--' + f.name.replace('_', '-')
        help_ = f"{f.metadata.get('help', '')} (default: {f.default})"
        if f.type in ('bool', bool):
            p.add_argument(flag, action=argparse.BooleanOptionalAction, default=f.default, help=help_)
        else:
            typ = {'int': int, 'float': float, 'str': str}.get(str(f.type), str)
            p.add_argument(flag, type=typ, default=f.default, help=help_)


def run(args: argparse.Namespace) -> int:
    """Build the config from the flags and train."""
    cfg = TrainCorrectorConfig(**{f.name: getattr(args, f.name)
                                  for f in dataclasses.fields(TrainCorrectorConfig)})
    train(cfg)
    return 0
