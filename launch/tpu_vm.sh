#!/usr/bin/env bash
# TPU VMs, one host or a pod slice: create, prepare every worker, run a stage on every worker.
#
#   bash launch/tpu_vm.sh [--dry-run] create NAME ZONE ACCELERATOR [RUNTIME]   # e.g. v5litepod-8, v4-32
#   bash launch/tpu_vm.sh [--dry-run] setup  NAME ZONE REPO_URL                # clone + install on all workers
#   bash launch/tpu_vm.sh [--dry-run] run    NAME ZONE -- --config=configs/imagenet_r50.py \
#        --workdir=/mnt/shared/runs/r50 --config.data.dir=/mnt/shared/imagenet --config.stage=all
#   bash launch/tpu_vm.sh [--dry-run] delete NAME ZONE
#
# `run` starts the same command on every worker (gcloud ... ssh --worker=all); with --distributed,
# jax.distributed finds the pod's hosts itself, each host reads its own shard of the data, all write
# the shared checkpoints (the workdir must be one shared file system mounted at the same path on
# every worker, e.g. Filestore/NFS; gs:// paths are not supported yet), and worker 0 logs and
# writes the files. On a single-host TPU VM the same command runs as one process.
# --dry-run prints the commands instead of running them.
set -euo pipefail
DRY=0
if [ "${1:-}" = "--dry-run" ]; then DRY=1; shift; fi
source "$(dirname "$0")/lib.sh"
usage() { sed -n '2,15p' "$0" >&2; exit 2; }
[ $# -ge 3 ] || usage
CMD=$1 NAME=$2 ZONE=$3; shift 3
case "$CMD" in
  create)
    [ $# -ge 1 ] || usage
    run gcloud compute tpus tpu-vm create "$NAME" --zone="$ZONE" --accelerator-type="$1" \
        --version="${2:-tpu-ubuntu2204-base}" ;;
  setup)
    [ $# -ge 1 ] || usage
    REPO=$1
    run gcloud compute tpus tpu-vm ssh "$NAME" --zone="$ZONE" --worker=all --command \
        "git clone $REPO tas_jax 2>/dev/null || git -C tas_jax pull; cd tas_jax && bash launch/setup.sh && .venv/bin/pip install -q 'jax[tpu]==0.10.2'" ;;
  run)
    [ "${1:-}" = "--" ] && shift
    [ $# -ge 1 ] || usage
    ARGS=$(printf '%q ' "$@")
    run gcloud compute tpus tpu-vm ssh "$NAME" --zone="$ZONE" --worker=all --command \
        "cd tas_jax && .venv/bin/python -m tas_jax.main --distributed $ARGS" ;;
  delete)
    run gcloud compute tpus tpu-vm delete "$NAME" --zone="$ZONE" --quiet ;;
  *) usage ;;
esac
