#!/usr/bin/env bash
# Create or reuse .venv, install the pinned dependencies, fix the ROS wheels'
# CMake exports, build the package (msg/ interfaces) with colcon into ./build
# and ./install, and make both the source tree and the generated messages
# importable from .venv. Every step says what it does; the first failure stops
# the script with the step's name and a non-zero status.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$(pwd)
VENV=$ROOT/.venv
PY=${PYTHON:-python3}
step() { printf '\n[bootstrap] %s\n' "$*"; CURRENT_STEP="$*"; }
trap 'echo "[bootstrap] FAILED during step: ${CURRENT_STEP:-start} (see output above)" >&2' ERR

hash_of() { { cat "$@" 2>/dev/null || true; } | sha256sum | cut -c1-16; }
DEPS_HASH=$(hash_of requirements.txt tools/bootstrap.sh setup.py setup.cfg)
BUILD_HASH=$(hash_of CMakeLists.txt package.xml msg/*.msg launch/* config/* scripts/* tools/bootstrap.sh)

step "python: $($PY --version 2>&1) at $(command -v $PY)"
$PY -c 'import sys; assert sys.version_info[:2] == (3, 11), "Python 3.11 is required (the ROS wheels are cp311)"'

if [ ! -x "$VENV/bin/python" ]; then
  step "create virtualenv .venv"
  $PY -m venv "$VENV"
fi

if [ "$(cat "$VENV/.deps-hash" 2>/dev/null)" != "$DEPS_HASH" ]; then
  step "install pinned dependencies (requirements.txt)"
  "$VENV/bin/python" -m pip install --disable-pip-version-check -q --upgrade "pip<27"
  "$VENV/bin/python" -m pip install --disable-pip-version-check -q -r requirements.txt
  step "check the installed dependencies import"
  "$VENV/bin/python" - <<'PY'
import importlib
for m in ('numpy', 'cv2', 'torch', 'safetensors', 'onnxruntime', 'rosbags', 'yaml',
          'rclpy', 'sensor_msgs.msg', 'diagnostic_msgs.msg', 'rosidl_generator_py'):
    importlib.import_module(m)
import torch
assert torch.__version__.startswith('2.13.0'), f'torch {torch.__version__}: expected the pinned 2.13.0 CPU wheel'
print('dependencies ok: torch', torch.__version__)
PY
  step "fix the ROS wheels' CMake exports (hard-coded builder Python/numpy include paths)"
  "$VENV/bin/python" tools/fix_wheel_cmake.py "$VENV"
  step "install ros2_regionfuse (editable, console scripts regionfuse and fuse_node)"
  "$VENV/bin/python" -m pip install --disable-pip-version-check -q --no-deps --no-build-isolation -e .
  echo "$DEPS_HASH" > "$VENV/.deps-hash"
  rm -f install/.build-hash
fi

if [ "$(cat install/.build-hash 2>/dev/null)" != "$BUILD_HASH" ]; then
  step "colcon build (msg interfaces, install tree in ./install)"
  NUMPY_INC=$("$VENV/bin/python" tools/fix_wheel_cmake.py --numpy-include "$VENV")
  export AMENT_PREFIX_PATH=$VENV CMAKE_PREFIX_PATH=$VENV PATH=$VENV/bin:$PATH
  "$VENV/bin/colcon" --log-base build/log build --base-paths "$ROOT" --build-base build \
    --install-base install --event-handlers console_direct- \
    --cmake-args -DBUILD_TESTING=OFF -DPython3_EXECUTABLE="$VENV/bin/python" \
    "-DPython3_NumPy_INCLUDE_DIR=$NUMPY_INC" \
    "-DCMAKE_INSTALL_RPATH=$ROOT/install/ros2_regionfuse/lib" -DCMAKE_BUILD_WITH_INSTALL_RPATH=ON
  step "link the source tree and the generated messages into .venv"
  SITE=$("$VENV/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
  mkdir -p build/pysrc
  ln -sfn "$ROOT/ros2_regionfuse" build/pysrc/ros2_regionfuse
  # Line 3 runs before ros_wheels_bootstrapper.pth (alphabetical order), which
  # re-executes Python with LD_LIBRARY_PATH: our typesupport libraries are
  # dlopen()ed by name, so their directory must be on that path too.
  LIBDIR="$ROOT/install/ros2_regionfuse/lib"
  {
    echo "$ROOT/build/pysrc"
    echo "$ROOT/install/ros2_regionfuse/lib/python3.11/site-packages"
    echo "import os; p = os.environ.get('LD_LIBRARY_PATH', ''); os.environ['LD_LIBRARY_PATH'] = p if '$LIBDIR' in p.split(':') else ('$LIBDIR:' + p).rstrip(':')"
  } > "$SITE/ros2_regionfuse_dev.pth"
  step "check: from ros2_regionfuse.msg import FusionStatus"
  "$VENV/bin/python" -c 'from ros2_regionfuse.msg import FusionStatus; FusionStatus(); print("FusionStatus ok")'
  echo "$BUILD_HASH" > install/.build-hash
fi
step "native kernels: build the fused C loops now (cached; see ros2_regionfuse/native)"
"$VENV/bin/python" -m ros2_regionfuse.native \
  || echo "[bootstrap] warning: no native kernels here; the pipeline runs its torch/OpenCV code instead"
trap - ERR
echo "[bootstrap] ready: $VENV"
