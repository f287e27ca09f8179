#!/usr/bin/env bash
# TPU VMs, one host or a pod slice: create, prepare every worker, run a stage on every worker.
#
#   bash launch/tpu_vm.sh create NAME ZONE ACCELERATOR [RUNTIME]   # e.g. v5litepod-8, v4-32, v6e-8
#   bash launch/tpu_vm.sh setup  NAME ZONE REPO_URL                # clone + install on all workers
#   bash launch/tpu_vm.sh run    NAME ZONE -- --config=configs/imagenet_r50.py \
#        --workdir=/mnt/shared/runs/r50 --config.data.dir=/mnt/shared/imagenet --config.stage=all
#   bash launch/tpu_vm.sh logs   NAME ZONE [WORKER]                # follow a worker's log (default 0)
#   bash launch/tpu_vm.sh stop   NAME ZONE                         # SIGTERM: checkpoint, then exit
#   bash launch/tpu_vm.sh delete NAME ZONE
#   --dry-run (anywhere) prints the commands instead of running them.
#
# RUNTIME defaults to the TPU software version Google gives for JAX on that family: v6e
# v2-alpha-tpuv6e, v5p v2-alpha-tpuv5, v5e (v5litepod) v2-alpha-tpuv5-lite, v4 and older
# tpu-ubuntu2204-base. Its Python is 3.10: setup makes the venv with uv's Python 3.11.
# `run` starts the command detached (nohup) on every worker, each writing tas_jax/logs/HOST.log,
# and returns; `logs` follows one, and rerunning `run` resumes from the checkpoints. With
# --distributed, jax.distributed finds the pod's hosts itself, each host reads its own shard of the
# data, all write the shared checkpoints (the workdir must be one shared file system mounted at the
# same path on every worker, e.g. Filestore/NFS; gs:// paths are not supported yet), and worker 0
# logs progress and writes the files. On a single-host TPU VM the same command runs as one process.
set -euo pipefail
source "$(dirname "$0")/lib.sh"
parse_dry_run "$@"
set -- "${ARGS[@]}"
usage() { sed -n '2,22p' "$0" >&2; exit 2; }

# runtime_for ACCELERATOR: the TPU software version for JAX on its family
runtime_for() {
  case "$1" in
    v6e-*) echo v2-alpha-tpuv6e ;;
    v5p-*) echo v2-alpha-tpuv5 ;;
    v5litepod-*|v5e-*) echo v2-alpha-tpuv5-lite ;;
    v2-*|v3-*|v4-*) echo tpu-ubuntu2204-base ;;
    *) echo "error: unknown TPU accelerator type '$1' (e.g. v4-32, v5litepod-8, v5p-8, v6e-8); give RUNTIME as the last argument" >&2
       return 2 ;;
  esac
}

[ $# -ge 3 ] || usage
CMD=$1 NAME=$2 ZONE=$3; shift 3
case "$CMD" in
  create)
    [ $# -ge 1 ] || usage
    RUNTIME=${2:-$(runtime_for "$1")} || exit 2
    run gcloud compute tpus tpu-vm create "$NAME" --zone="$ZONE" --accelerator-type="$1" \
        --version="$RUNTIME" ;;
  setup)
    [ $# -ge 1 ] || usage
    REPO=$1
    run gcloud compute tpus tpu-vm ssh "$NAME" --zone="$ZONE" --worker=all --command \
        "(git clone -q $REPO tas_jax 2>/dev/null || git -C tas_jax pull -q) && cd tas_jax && bash launch/setup.sh && .venv/bin/pip install -q 'jax[tpu]==0.10.2'" ;;
  run)
    [ "${1:-}" = "--" ] && shift
    [ $# -ge 1 ] || usage
    ARGV=$(printf '%q ' "$@")
    run gcloud compute tpus tpu-vm ssh "$NAME" --zone="$ZONE" --worker=all --command \
        "cd tas_jax && mkdir -p logs && LOG=logs/\$(hostname).log && nohup setsid .venv/bin/python -m tas_jax.main --distributed ${ARGV}> \$LOG 2>&1 < /dev/null & echo \"started on \$(hostname): tas_jax/\$LOG\"" ;;
  logs)
    run gcloud compute tpus tpu-vm ssh "$NAME" --zone="$ZONE" --worker="${1:-0}" --command \
        'tail -n 100 -F tas_jax/logs/$(hostname).log' ;;
  stop)
    run gcloud compute tpus tpu-vm ssh "$NAME" --zone="$ZONE" --worker=all --command \
        'pkill -TERM -f "tas_jax.main" || true' ;;
  delete)
    run gcloud compute tpus tpu-vm delete "$NAME" --zone="$ZONE" --quiet ;;
  *) usage ;;
esac
