#!/usr/bin/env bash
# Runs the test suite on 1 CPU device and on 8 forced CPU devices (the data-parallel code must give
# the same numbers on both). The two passes run side by side: most of their time is XLA compiling,
# which uses one core each. Tests marked `one_pass(N)` (they start child processes that choose their
# own device counts: several processes, hard kills, the notebook) run only in the pass with N
# devices (tests/conftest.py). Uses .venv if launch/setup.sh made one. Extra arguments go to pytest.
set -uo pipefail
cd "$(dirname "$0")/.."
PY=python
[ -x .venv/bin/python ] && PY=.venv/bin/python
export TF_CPP_MIN_LOG_LEVEL=2
logs=$(mktemp -d)
XLA_FLAGS= "$PY" -m pytest -q -p no:cacheprovider --durations=5 tests "$@" > "$logs/1.log" 2>&1 &
one=$!
# The 8-device pass runs test_train.py in a process of its own: after the rest of the suite in one
# process, its first teacher run has aborted inside an eager op on 8 forced CPU devices (not
# understood yet; see the session note of 2026-12-01); alone it passes.
( TAS_JAX_SECOND_PASS=1 XLA_FLAGS=--xla_force_host_platform_device_count=8 "$PY" -m pytest -q \
    -p no:cacheprovider --durations=5 tests --ignore=tests/test_train.py "$@" && \
  TAS_JAX_SECOND_PASS=1 XLA_FLAGS=--xla_force_host_platform_device_count=8 "$PY" -m pytest -q \
    -p no:cacheprovider tests/test_train.py "$@"; rc=$?; [ $rc -eq 0 ] || [ $rc -eq 5 ] ) \
    > "$logs/8.log" 2>&1 &   # 5: pytest arguments that select nothing in test_train.py
eight=$!
wait $one; rc_one=$?
wait $eight; rc_eight=$?
echo "== tests on 1 device (exit $rc_one) =="
cat "$logs/1.log"
echo "== tests on 8 forced CPU devices (exit $rc_eight) =="
cat "$logs/8.log"
rm -rf "$logs"
[ $rc_one -eq 0 ] && [ $rc_eight -eq 0 ]
