# The README's two commands: `make demo` (main job on the bundled recording)
# and `make test` (the whole test suite). Both set up .venv and the colcon build
# first (tools/bootstrap.sh: idempotent, fast when nothing changed).
VENV := .venv
PY := $(VENV)/bin/python
export ROS_AUTOMATIC_DISCOVERY_RANGE ?= LOCALHOST

.PHONY: all setup demo test lint bench clean

all: setup

setup:
	bash tools/bootstrap.sh

demo: setup
	$(VENV)/bin/regionfuse demo --out out/demo

test: setup
	$(PY) -m pytest -p no:cacheprovider test --doctest-modules ros2_regionfuse/core ros2_regionfuse/models ros2_regionfuse/inference ros2_regionfuse/cli/eval_rig.py ros2_regionfuse/training/rig_misalignment.py ros2_regionfuse/ros/launch_args.py

lint: setup
	$(PY) -m pytest -p no:cacheprovider test/lint

bench: setup
	$(VENV)/bin/regionfuse bench

clean:
	rm -rf build install log out
