#!/usr/bin/env bash
# The released search iteration and tas_jax's (blocks unrolled / scanned), alternated.
# Needs the released code in /tmp/official and torch (../shared/bench/official_tas/README.md).
cd "$(dirname "$0")/.."
mkdir -p runs; OUT=${OUT:-runs/side_by_side_search.jsonl}
OFF=../shared/bench/official_tas/official_search_bench.py
one() {  # network depth, repeat
  local d=$1
  ( cd ../shared/bench/official_tas && OFFICIAL=/tmp/official T_LAUNCH=$(date +%s.%N) \
    /usr/bin/time -f '{"side": "official", "depth": '$d', "peak_rss_kb": %M}' \
    /work/main/.venv/bin/python official_search_bench.py --depth $d --warmup 1 --iters 3 ) 2>&1 | grep '^{' >> $OUT
  for s in false true; do
    T_LAUNCH=$(date +%s.%N) .venv/bin/python -m benchmarks.first_iteration --network=resnet$d \
      --warmup=1 --iters=3 --scan_blocks=$s 2>/dev/null | grep '^{' >> $OUT
  done
}
for r in 1 2 3; do for d in 20 56; do one $d; done; done
one 110
echo done >> $OUT
