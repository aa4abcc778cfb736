"""Rewrite the ROS wheels' CMake exports to this virtualenv's include paths.

The PyPI ROS wheels were built in a manylinux container and their
``*Export.cmake`` files name that container's Python and numpy include
directories (``/opt/python/cp311-...``). CMake refuses imported targets whose
include directories do not exist, so colcon cannot build interface packages
against them until the paths point at this interpreter's own directories.

Usage: ``python tools/fix_wheel_cmake.py VENV`` (idempotent);
``--numpy-include VENV`` prints the numpy header copy for -DPython3_NumPy_INCLUDE_DIR.
"""
import re
import shutil
import sys
import sysconfig
from pathlib import Path

import numpy


def _numpy_include_outside(venv: Path) -> str:
    """Return a copy of numpy's C headers that lies outside the source tree.

    CMake refuses to export targets whose include directories lie inside the
    project's source directory, and .venv lives inside the checkout; so the
    headers are copied to ``~/.cache/ros2_regionfuse/numpy-<version>/include``.
    """
    src = Path(numpy.get_include())
    dst = Path.home() / '.cache' / 'ros2_regionfuse' / f'numpy-{numpy.__version__}' / 'include'
    if not (dst / 'numpy' / 'ndarrayobject.h').exists():
        shutil.rmtree(dst, ignore_errors=True)
        shutil.copytree(src, dst)
    return str(dst)


def main(venv: str) -> int:
    """Rewrite every affected export file below ``VENV/share``; return 0."""
    py_inc = sysconfig.get_paths()['include']
    np_inc = _numpy_include_outside(Path(venv).resolve())
    pat_np = re.compile(r'(/opt/python/[^;"]*?/site-packages/numpy/[^;"]*include'
                        r'|[^;"]*/site-packages/numpy/_core/include)')
    pat_py = re.compile(r'/opt/python/[^;"/]+/include/python3\.\d+')
    changed = 0
    for f in Path(venv, 'share').rglob('*.cmake'):
        text = f.read_text()
        if '/opt/python/' not in text and '/site-packages/numpy/' not in text:
            continue
        new = pat_py.sub(py_inc, pat_np.sub(np_inc, text))
        if new != text:
            f.write_text(new)
            changed += 1
    left = [str(f) for f in Path(venv, 'share').rglob('*.cmake') if '/opt/python/' in f.read_text()]
    if left:
        print('fix_wheel_cmake: paths left unrewritten in: ' + ', '.join(left), file=sys.stderr)
        return 1
    print(f'fix_wheel_cmake: rewrote {changed} files (python include {py_inc}, numpy {np_inc})')
    return 0


if __name__ == '__main__':
    if sys.argv[1] == '--numpy-include':
        print(_numpy_include_outside(Path(sys.argv[2]).resolve()))
        sys.exit(0)
    sys.exit(main(sys.argv[1]))
