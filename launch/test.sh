#!/usr/bin/env bash
# Runs the test suite twice: on 1 CPU device and on 8 forced CPU devices (the data-parallel code
# must give the same numbers on both). Uses .venv if launch/setup.sh made one.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=python
[ -x .venv/bin/python ] && PY=.venv/bin/python
export TF_CPP_MIN_LOG_LEVEL=2
echo "== tests on 1 device =="
XLA_FLAGS= "$PY" -m pytest -q tests "$@"
echo "== tests on 8 forced CPU devices =="
XLA_FLAGS=--xla_force_host_platform_device_count=8 "$PY" -m pytest -q tests "$@"
