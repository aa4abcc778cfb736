"""The product speaks of the product: no development history outside CHANGELOG.md, layers without cycles."""
from __future__ import annotations

import ast
import re
import subprocess
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
PACKAGE = 'ros2_regionfuse'

#: lines that name development sessions or dated work entries
HISTORY = re.compile(r'\bsessions?[ -]\d+|\bsince session\b|\bupdate \d{4}-\d{2}-\d{2}', re.IGNORECASE)
TEXT_SUFFIXES = {'.py', '.md', '.yaml', '.yml', '.json', '.txt', '.cfg', '.toml', '.xml', '.rviz', '.c',
                 '.sh', '.msg', ''}


def _tracked() -> list[Path]:
    out = subprocess.run(['git', 'ls-files'], cwd=REPO, capture_output=True, text=True, check=True).stdout
    return [REPO / p for p in out.splitlines()]


def history_lines(paths: list[Path], root: Path = REPO) -> list[str]:
    """``path:line: text`` of every line matching :data:`HISTORY` (CHANGELOG.md excepted)."""
    bad = []
    for p in paths:
        if p.name == 'CHANGELOG.md' or p.suffix not in TEXT_SUFFIXES or not p.is_file():
            continue
        try:
            text = p.read_text()
        except UnicodeDecodeError:
            continue
        for i, line in enumerate(text.splitlines(), 1):
            if HISTORY.search(line):
                bad.append(f'{p.relative_to(root)}:{i}: {line.strip()[:120]}')
    return bad


def test_history_pattern_matches_what_it_should(tmp_path) -> None:
    f = tmp_path / 'x.md'
    s = 'sess' + 'ion'   # spelt apart so that this file itself does not match
    f.write_text(f'measured in {s} 12\nsince {s} 3 it\n## Upd' + 'ate 2026-12-04\nROS sessions are fine\n'
                 'ONNX Runtime session, session_options()\n')
    (tmp_path / 'CHANGELOG.md').write_text(f'{s} 4: history lives here\n')
    bad = history_lines([f, tmp_path / 'CHANGELOG.md'], tmp_path)
    assert [b.split(':')[1] for b in bad] == ['1', '2', '3']


def test_no_development_history_in_the_product() -> None:
    bad = history_lines(_tracked())
    assert not bad, 'development history belongs in CHANGELOG.md / git:\n' + '\n'.join(bad)


# ----------------------------------------------------------------------------- import graph
def _module_name(path: Path) -> str:
    rel = path.relative_to(REPO).with_suffix('')
    parts = list(rel.parts)
    if parts[-1] == '__init__':
        parts = parts[:-1]
    return '.'.join(parts)


def import_graph() -> dict[str, set[str]]:
    """Module -> package modules it imports anywhere in its file (imports inside functions included)."""
    files = sorted((REPO / PACKAGE).rglob('*.py'))
    modules = {_module_name(f): f for f in files}
    graph: dict[str, set[str]] = {m: set() for m in modules}
    for mod, f in modules.items():
        is_pkg = f.name == '__init__.py'
        base = mod.split('.') if is_pkg else mod.split('.')[:-1]
        for node in ast.walk(ast.parse(f.read_text())):
            targets = []
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                if node.level:
                    anchor = base[:len(base) - node.level + 1]
                    prefix = '.'.join(anchor + ([node.module] if node.module else []))
                else:
                    prefix = node.module or ''
                targets = [prefix] + [f'{prefix}.{a.name}' for a in node.names]
            for t in targets:
                while t and t not in modules:
                    t = t.rpartition('.')[0]
                if t and t != mod and not mod.startswith(t + '.'):   # a module's own packages are not edges
                    graph[mod].add(t)
    return graph


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one node (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    out: list[list[str]] = []
    counter = [0]

    def visit(v: str) -> None:
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in graph.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))
    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


def _subpackage(mod: str) -> str:
    parts = mod.split('.')
    return parts[1] if len(parts) > 2 else ''


def test_cycle_finder_finds_a_cycle() -> None:
    assert _cycles({'a': {'b'}, 'b': {'c'}, 'c': {'a'}, 'd': {'a'}}) == [['a', 'b', 'c']]
    assert _cycles({'a': {'b'}, 'b': set()}) == []


def test_no_import_cycles_between_modules() -> None:
    cycles = _cycles(import_graph())
    assert not cycles, '\n'.join(' <-> '.join(c) for c in cycles)


def test_no_import_cycles_between_subpackages() -> None:
    graph = import_graph()
    sub: dict[str, set[str]] = {}
    for mod, deps in graph.items():
        a = _subpackage(mod)
        if not a:
            continue
        for d in deps:
            b = _subpackage(d)
            if b and b != a:
                sub.setdefault(a, set()).add(b)
    cycles = _cycles(sub)
    assert not cycles, '\n'.join(' <-> '.join(c) for c in cycles)


def test_core_imports_no_models() -> None:
    """core (config, checks, convert, align, registration, sync, metrics, imageio, ...) is the base layer."""
    graph = import_graph()
    bad = [f'{m} -> {d}' for m, deps in graph.items() if _subpackage(m) == 'core'
           for d in deps if _subpackage(d) not in ('core', 'native', '')]
    assert not bad, '\n'.join(bad)


# Each sub-package and the sub-packages it may import (core <- models <- inference <- ros / cli;
# viz: the Foxglove view on core; data, weights: package resources without code).
LAYERS: dict[str, set[str]] = {
    'native': set(),
    'core': {'native'},
    'viz': {'core', 'native'},
    'models': {'core', 'native'},
    'training': {'core', 'native', 'models'},
    'inference': {'core', 'native', 'models'},
    'ros': {'core', 'native', 'models', 'inference', 'viz'},
    'cli': {'core', 'native', 'models', 'inference', 'training', 'viz', 'ros'},
}


def test_layers_point_one_way() -> None:
    """models import no runner, pipeline, ROS or CLI code; the inference layer no ROS or CLI code."""
    graph = import_graph()
    bad = []
    for mod, deps in graph.items():
        a = _subpackage(mod)
        if a not in LAYERS:
            continue
        bad += [f'{mod} -> {d}' for d in deps
                if _subpackage(d) not in LAYERS[a] | {a, ''} and d.startswith('ros2_regionfuse.')]
    assert not bad, '\n'.join(bad)
    assert {_subpackage(m) for m in graph} - {''} <= set(LAYERS), 'a sub-package without a layer'
