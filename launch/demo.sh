#!/usr/bin/env bash
# The embedded demo: the whole pipeline (teacher, search, extract, distill, results) on the
# Fashion-MNIST subset shipped in the repo; rerunning the same command resumes or skips what is done.
#   bash launch/demo.sh [WORKDIR] [--config.x.y=...]
set -euo pipefail
cd "$(dirname "$0")/.."
PY=python
[ -x .venv/bin/python ] && PY=.venv/bin/python
WORKDIR=${1:-runs/demo}
shift || true
export TF_CPP_MIN_LOG_LEVEL=2
exec "$PY" -m tas_jax.main --config=configs/demo.py --workdir="$WORKDIR" "$@"
