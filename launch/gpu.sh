#!/usr/bin/env bash
# One GPU machine (any number of GPUs: the mesh spans them all, one process).
#
#   bash launch/gpu.sh [--dry-run] setup [CUDA]    # .venv + the CUDA build of jax (CUDA: 12 or 13, default 13)
#   bash launch/gpu.sh [--dry-run] run -- --config=configs/imagenet_r50.py --workdir=runs/r50 \
#        --config.data.dir=/data/imagenet --config.data.workers=16 --config.stage=all
#
# --dry-run (anywhere) prints the commands instead of running them.
set -euo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
source "$HERE/lib.sh"
parse_dry_run "$@"
set -- "${ARGS[@]}"
cd "$HERE/.."
usage() { sed -n '2,8p' "$HERE/gpu.sh" >&2; exit 2; }
[ $# -ge 1 ] || usage
CMD=$1; shift
case "$CMD" in
  setup)
    run bash launch/setup.sh
    run .venv/bin/pip install -q "jax[cuda${1:-13}]==0.10.2" ;;
  run)
    [ "${1:-}" = "--" ] && shift
    [ $# -ge 1 ] || usage
    run .venv/bin/python -m tas_jax.main "$@" ;;
  *) usage ;;
esac
