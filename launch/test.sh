#!/usr/bin/env bash
# Runs the test suite on 1 CPU device and on 8 forced CPU devices (the data-parallel code must give
# the same numbers on both). The two passes run side by side: most of their time is XLA compiling,
# which uses one core each. Tests marked `one_pass(N)` (they start child processes that choose their
# own device counts: several processes, hard kills, the notebook) run only in the pass with N
# devices (tests/conftest.py). Uses .venv if launch/setup.sh made one. Extra arguments go to pytest.
#
# The 8-device pass runs each test file in a process of its own. In one long process, 8 forced CPU
# devices have aborted twice (SIGABRT inside an eager op at the start of a training run: CI on
# 2026-12-02 in tests/test_pas.py, a session on 2026-12-01 in tests/test_train.py), never in the
# 1-device pass and never in a shorter process; the cause is not known yet. `--capture=sys` leaves
# file descriptor 2 alone, so a native library's last message before such an abort reaches the log.
set -uo pipefail
cd "$(dirname "$0")/.."
PY=python
[ -x .venv/bin/python ] && PY=.venv/bin/python
export TF_CPP_MIN_LOG_LEVEL=2
# Arguments naming tests (tests/..., a file or a node id) choose what runs; the rest are options.
targets=(); options=()
for arg in "$@"; do
  case "$arg" in tests/*|./tests/*) targets+=("$arg") ;; *) options+=("$arg") ;; esac
done
[ ${#targets[@]} -gt 0 ] || targets=(tests/test_*.py)
logs=$(mktemp -d)
XLA_FLAGS= "$PY" -m pytest -q -p no:cacheprovider --capture=sys --durations=5 "${targets[@]}" \
    "${options[@]}" > "$logs/1.log" 2>&1 &
one=$!
(
  failed=()
  for file in "${targets[@]}"; do
    echo "-- $file"
    TAS_JAX_SECOND_PASS=1 XLA_FLAGS=--xla_force_host_platform_device_count=8 "$PY" -m pytest -q \
        -p no:cacheprovider --capture=sys --durations=2 "$file" "${options[@]}"
    rc=$?   # 5: nothing selected in this file (its tests run in the 1-device pass only)
    [ $rc -eq 0 ] || [ $rc -eq 5 ] || failed+=("$file (exit $rc)")
  done
  if [ ${#failed[@]} -gt 0 ]; then
    echo "FAILED on 8 devices: ${failed[*]}"
    exit 1
  fi
) > "$logs/8.log" 2>&1 &
eight=$!
wait $one; rc_one=$?
wait $eight; rc_eight=$?
echo "== tests on 1 device (exit $rc_one) =="
cat "$logs/1.log"
echo "== tests on 8 forced CPU devices, a process per file (exit $rc_eight) =="
cat "$logs/8.log"
rm -rf "$logs"
# 5 on 1 device: the chosen tests all run in the 8-device pass only (one_pass(8))
{ [ $rc_one -eq 0 ] || [ $rc_one -eq 5 ]; } && [ $rc_eight -eq 0 ]
