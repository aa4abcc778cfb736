"""Where the package's files are: the package, its source checkout, shipped weights, bundled data.

One place for every path the package computes from its own location. The
evaluation and training tools' data root is ``$REGIONFUSE_DATA`` when set, else
``../shared/data/ivif`` beside the checkout (:func:`data_root`); nothing at run
time (node, pipeline, demo) needs it.
"""
from __future__ import annotations

import os
from pathlib import Path

#: the installed or checked-out ``ros2_regionfuse`` package directory
PACKAGE_DIR = Path(__file__).resolve().parents[1]
#: the directory above the package: the source checkout when running from one
REPO_DIR = PACKAGE_DIR.parent
#: shipped weights and their model cards
WEIGHTS_DIR = PACKAGE_DIR / 'weights'
#: the bundled demo recording
BUNDLED_RECORDING = PACKAGE_DIR / 'data' / 'sample_demo'
#: the committed test pairs (source checkout only)
TEST_PAIRS = REPO_DIR / 'test' / 'data'
#: environment variable naming the data root of the evaluation and training tools
DATA_ENV = 'REGIONFUSE_DATA'


def data_root() -> Path:
    """``$REGIONFUSE_DATA``, else ``../shared/data/ivif`` beside the checkout (``.../data/ivif``).

    Example:
        >>> isinstance(data_root(), Path)
        True
    """
    env = os.environ.get(DATA_ENV)
    return Path(env) if env else REPO_DIR.parent / 'shared' / 'data' / 'ivif'
