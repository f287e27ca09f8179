#!/usr/bin/env bash
# The released search iteration and tas_jax's, alternated, from launch to the end of the first
# iteration (benchmarks/first_iteration.py): each round runs the released code, then tas_jax with
# an emptied compilation cache ("cold": the first launch a user waits for), then tas_jax again
# with that cache ("warm": every later launch, a resume, the next stage's relaunch).
#
#   bash benchmarks/side_by_side_search.sh [PYTHON] [RELEASED] [BENCH]
#
# PYTHON    a python with tas_jax's requirements and torch (default: $PYTHON, else .venv/bin/python)
# RELEASED  the released TAS code's folder (default: $OFFICIAL, else /tmp/official)
# BENCH     the folder of official_search_bench.py (default: $OFFICIAL_BENCH, else
#           ../shared/bench/official_tas; its README says how to get the released code)
# Lines go to $OUT (default runs/side_by_side_search.jsonl).
set -u
cd "$(dirname "$0")/.."
ROOT=$(pwd)
PY=$(realpath -s "${1:-${PYTHON:-.venv/bin/python}}")  # -s: a venv's python is a symlink
RELEASED=$(realpath "${2:-${OFFICIAL:-/tmp/official}}")
BENCH=$(realpath "${3:-${OFFICIAL_BENCH:-../shared/bench/official_tas}}")
for need in "$PY" "$RELEASED" "$BENCH/official_search_bench.py"; do
  [ -e "$need" ] || { echo "side_by_side_search.sh: $need does not exist (see the usage above)"; exit 2; }
done
mkdir -p runs; OUT=$(realpath -m "${OUT:-runs/side_by_side_search.jsonl}")
CACHE=$(mktemp -d)
trap 'rm -rf "$CACHE"' EXIT
one() {  # network depth
  local d=$1
  ( cd "$BENCH" && OFFICIAL="$RELEASED" T_LAUNCH=$(date +%s.%N) \
    /usr/bin/time -f '{"side": "official", "depth": '$d', "peak_rss_kb": %M}' \
    "$PY" official_search_bench.py --depth $d --warmup 1 --iters 3 ) 2>&1 | grep '^{' >> "$OUT"
  rm -rf "${CACHE:?}"/*
  for launch in cold warm; do
    ( cd "$ROOT" && T_LAUNCH=$(date +%s.%N) "$PY" -m benchmarks.first_iteration \
      --network=resnet$d --warmup=1 --iters=3 --compilation_cache="$CACHE" --label=$launch \
      2>/dev/null ) | grep '^{' >> "$OUT"
  done
}
for r in 1 2 3; do for d in 20 56; do one $d; done; done
echo done >> "$OUT"
