"""``python -m ros2_regionfuse.native``: build the kernels ahead of the first frame."""
import sys

from . import main

sys.exit(main())
