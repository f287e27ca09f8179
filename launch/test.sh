#!/usr/bin/env bash
# Runs the test suite: two passes side by side, one process each (most of their time is XLA
# compiling, which uses one core each):
#   1 CPU device:          the unit tier and the tests that start their own processes (children)
#   8 forced CPU devices:  the stage tests (the shared tiny pipelines, data parallel), the
#                          1-vs-8-device comparisons, the accelerator tier, the hard kills and the
#                          guides' runnable commands
#                          (whose children run on one device: here to balance the two passes)
# Each test runs in one pass only (tiers: tests/conftest.py). `--fast` runs the unit tier alone,
# in one process: what to run while working. Uses .venv if launch/setup.sh made one. Both passes
# and every child process share one compilation cache (JAX_COMPILATION_CACHE_DIR, removed at the
# end). Extra arguments go to pytest; arguments naming tests (tests/...) choose what runs.
# `--capture=sys` leaves file descriptor 2 alone: a native library's last words before an abort
# reach the log.
set -uo pipefail
cd "$(dirname "$0")/.."
PY=python
[ -x .venv/bin/python ] && PY=.venv/bin/python
export TF_CPP_MIN_LOG_LEVEL=2
fast=0; targets=(); options=()
for arg in "$@"; do
  case "$arg" in
    --fast) fast=1 ;;
    tests/*|./tests/*) targets+=("$arg") ;;
    *) options+=("$arg") ;;
  esac
done
[ ${#targets[@]} -gt 0 ] || targets=(tests)
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
export JAX_COMPILATION_CACHE_DIR="$work/xla_cache"
pytest=("$PY" -m pytest -q -p no:cacheprovider --capture=sys)

# lint and format check first (pyproject.toml's [tool.ruff]; setup.sh --tests installs ruff)
RUFF=ruff
[ -x .venv/bin/ruff ] && RUFF=.venv/bin/ruff
lint=0
if command -v "$RUFF" >/dev/null; then
  echo "== ruff check . && ruff format --check . =="
  { "$RUFF" check -q . && "$RUFF" format --check -q .; } || lint=1
else
  echo "== no ruff: lint skipped (bash launch/setup.sh --tests installs it) =="
fi

if [ $fast -eq 1 ]; then
  XLA_FLAGS= "${pytest[@]}" --durations=5 -m "not stage and not devices and not children and not kills and not guides and not accelerator" \
      "${targets[@]}" "${options[@]}"
  rc=$?
  [ $lint -eq 0 ] || { echo "ruff found problems (above): ruff check --fix . && ruff format ."; exit 1; }
  exit $rc
fi

TAS_JAX_PASS=1 XLA_FLAGS= "${pytest[@]}" --durations=8 "${targets[@]}" "${options[@]}" \
    > "$work/1.log" 2>&1 &
one=$!
TAS_JAX_PASS=8 XLA_FLAGS=--xla_force_host_platform_device_count=8 "${pytest[@]}" --durations=8 \
    "${targets[@]}" "${options[@]}" > "$work/8.log" 2>&1 &
eight=$!
wait $one; rc_one=$?
wait $eight; rc_eight=$?
echo "== tests on 1 device: unit and child-process tiers (exit $rc_one) =="
cat "$work/1.log"
echo "== tests on 8 forced CPU devices: stage and device tiers (exit $rc_eight) =="
cat "$work/8.log"
# 5: no test of that pass among the chosen ones
[ $lint -eq 0 ] || echo "ruff found problems (above): ruff check --fix . && ruff format ."
[ $lint -eq 0 ] && { [ $rc_one -eq 0 ] || [ $rc_one -eq 5 ]; } \
    && { [ $rc_eight -eq 0 ] || [ $rc_eight -eq 5 ]; } && ! { [ $rc_one -eq 5 ] && [ $rc_eight -eq 5 ]; }
