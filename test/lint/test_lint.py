"""Style checks as tests (the role of ament_flake8/ament_pep257): ruff over the package."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def test_ruff_clean() -> None:
    """Ruff (pycodestyle, pyflakes, isort, pydocstyle, bugbear rules; see ruff.toml) finds nothing."""
    ruff = Path(sys.executable).with_name('ruff')
    res = subprocess.run([str(ruff), 'check', '--output-format', 'concise', 'ros2_regionfuse',
                          'test', 'tools', 'scripts', 'launch'],
                         cwd=REPO, capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stdout + res.stderr


def test_no_ros_imports_in_core() -> None:
    """core/, models/ and training/ must import on a machine without ROS."""
    bad = []
    for sub in ('core', 'models', 'training'):
        for f in (REPO / 'ros2_regionfuse' / sub).rglob('*.py'):
            for i, line in enumerate(f.read_text().splitlines(), 1):
                s = line.strip()
                if s.startswith(('import rclpy', 'from rclpy', 'import sensor_msgs',
                                 'from sensor_msgs', 'from std_msgs', 'from diagnostic_msgs')):
                    bad.append(f'{f.relative_to(REPO)}:{i}: {s}')
    assert not bad, '\n'.join(bad)
