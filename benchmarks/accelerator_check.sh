#!/usr/bin/env bash
# The accelerator check: one command on a GPU machine with no network, whose image has jax (with
# CUDA), flax, optax, orbax-checkpoint and torch, but not ml-collections, clu or pytest.
#
#   bash benchmarks/accelerator_check.sh --build-wheels  # here (PyPI): fill wheels/ (git-ignored)
#   bash benchmarks/accelerator_check.sh                 # there, with wheels/ carried: installs what
#                                                        # the image lacks, runs the accelerator
#                                                        # tier, writes the benchmarks' JSON lines
#   bash benchmarks/accelerator_check.sh --rehearse      # here: wheels, a fresh venv holding the
#                                                        # image's packages only, the tier on the CPU
# JSON lines go to $OUT (default runs/accelerator_check.jsonl); the whole check fits in 8 minutes
# on one H100 (each benchmark is bounded by `timeout`).
set -uo pipefail
cd "$(dirname "$0")/.."
WHEELS=wheels
OUT=${OUT:-runs/accelerator_check.jsonl}
# tas_jax's needs beyond such an image (grain and tensorflow-datasets are imported only for ImageNet
# streaming and TFDS datasets, which the check does not use)
PURE="ml-collections clu pytest pluggy iniconfig packaging"
BINARY="wrapt"  # clu's; binary wheels for each Python the image may have
PYTHONS="3.10 3.11 3.12 3.13"

build_wheels() {
  mkdir -p "$WHEELS"
  pip download -q --no-deps --only-binary=:all: -d "$WHEELS" $PURE || return 1
  for v in $PYTHONS; do
    pip download -q --no-deps --only-binary=:all: --python-version "$v" \
      --platform manylinux2014_x86_64 -d "$WHEELS" $BINARY || return 1
  done
  echo "wheels: $(ls "$WHEELS" | wc -l) files, $(du -sm "$WHEELS" | cut -f1) MiB in $WHEELS/"
}

install_missing() {  # $1: python
  local py=$1 missing=""
  for m in ml_collections clu wrapt pytest; do
    "$py" -c "import $m" 2>/dev/null || missing="$missing $m"
  done
  if [ -n "$missing" ]; then
    echo "installing from $WHEELS/:$missing"
    "$py" -m pip install -q --no-index --find-links "$WHEELS" $PURE $BINARY || return 1
  fi
}

tier() {  # $1: python; the accelerator tier on whatever devices the process has
  "$1" -c "import jax; print('jax', jax.__version__, jax.devices())"
  "$1" -m pytest -q -p no:cacheprovider -m accelerator tests/test_accelerator.py
}

benchmarks() {  # $1: python, $2: "small" for the rehearsal's CPU-sized figures
  local py=$1 r56=resnet56 b=256 depth=50 ib=128 t=1
  [ "${2:-}" = small ] && { r56=resnet20; b=16; depth=18; ib=2; t=3; }
  mkdir -p "$(dirname "$OUT")"
  timeout $((150 * t)) "$py" -m benchmarks.bench --network=$r56 --batch=$b --repeats=3 --json \
    | grep '^{' >> "$OUT"
  timeout $((240 * t)) "$py" -m benchmarks.imagenet --depth=$depth --batch=$ib --dtypes=bfloat16 \
    --repeats=2 --json | grep '^{' >> "$OUT"
  rm -rf runs/accelerator_cache
  for launch in cold warm; do
    T_LAUNCH=$(date +%s.%N) timeout $((120 * t)) "$py" -m benchmarks.first_iteration \
      --network=$r56 --batch=$b --compilation_cache=runs/accelerator_cache --iters=3 \
      | grep '^{' >> "$OUT"
  done
  echo "$(wc -l < "$OUT") JSON lines in $OUT"
}

case "${1:-}" in
  --build-wheels)
    build_wheels
    ;;
  --rehearse)
    build_wheels || exit 1
    venv=$(mktemp -d)/venv
    python3 -m venv "$venv"
    # the image's packages (the jax this machine's PyPI serves), then the check as on the GPU
    "$venv/bin/pip" install -q jax flax optax orbax-checkpoint numpy || exit 1
    "$venv/bin/pip" install -q torch==2.13.0 || exit 1
    for m in ml_collections clu; do
      "$venv/bin/python" -c "import $m" 2>/dev/null && { echo "the fresh venv already has $m"; exit 1; }
    done
    install_missing "$venv/bin/python" && tier "$venv/bin/python" \
      && OUT=runs/accelerator_rehearsal.jsonl benchmarks "$venv/bin/python" small
    rc=$?
    rm -rf "$(dirname "$venv")"
    exit $rc
    ;;
  "")
    install_missing python && tier python && benchmarks python
    ;;
  *)
    echo "usage: bash benchmarks/accelerator_check.sh [--build-wheels | --rehearse]"; exit 2
    ;;
esac
