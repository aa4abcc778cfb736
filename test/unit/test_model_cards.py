"""Every shipped model card's commands run as written: they parse, and name variants and files that exist."""
from __future__ import annotations

import argparse
import importlib
import json
import shlex
from pathlib import Path

import pytest

from ros2_regionfuse.cli.main import SUBCOMMANDS
from ros2_regionfuse.models.registry import corrector_variants, fusion_variants

REPO = Path(__file__).resolve().parents[2]
CARDS = sorted((REPO / 'ros2_regionfuse' / 'weights').glob('*.json'))
COMMAND_KEYS = ('command', 'then')


def _commands() -> list[tuple[str, str, str]]:
    out = []
    for card in CARDS:
        data = json.loads(card.read_text())
        for key in COMMAND_KEYS:
            if key in data:
                out.append((card.name, key, data[key]))
    return out


def test_every_card_has_a_command() -> None:
    assert CARDS and all('command' in json.loads(c.read_text()) for c in CARDS)


@pytest.mark.parametrize('card,key,command', _commands(), ids=lambda v: str(v)[:40])
def test_card_command_parses_and_names_what_exists(card: str, key: str, command: str) -> None:
    argv = shlex.split(command)
    assert Path(argv[0]).name == 'regionfuse' and not Path(argv[0]).is_absolute(), command
    sub, rest = argv[1], argv[2:]
    mod = importlib.import_module(f'ros2_regionfuse.cli.{SUBCOMMANDS[sub][0]}')
    p = argparse.ArgumentParser(prog=f'regionfuse {sub}')
    mod.add_arguments(p)
    args = p.parse_args(rest)   # SystemExit on an unknown option or a bad value
    variant = getattr(args, 'variant', None)
    known = fusion_variants() if sub == 'train-fusion' else corrector_variants()
    assert variant in known, f'{card} {key}: variant {variant!r} not in {known}'
    assert f'{variant}.json' == card, f'{card} {key}: trains {variant}'
    init = getattr(args, 'init', '') or ''
    if init.startswith('ros2_regionfuse/'):
        assert (REPO / init).is_file(), f'{card} {key}: --init {init} missing'
