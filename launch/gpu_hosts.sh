#!/usr/bin/env bash
# Several GPU machines, one process each, joined by jax.distributed: process 0 on the first host
# coordinates. Every host needs the repository at the same path (set up with launch/gpu.sh setup),
# passwordless ssh, and the workdir on a shared file system.
#
#   bash launch/gpu_hosts.sh [--dry-run] HOSTS_FILE PORT -- --config=configs/imagenet_r50.py \
#        --workdir=/shared/runs/r50 --config.data.dir=/shared/imagenet --config.stage=all
#
# HOSTS_FILE lists one host per line (the first is the coordinator). Each host gets
# --coordinator_address=FIRST:PORT --num_processes=N --process_id=I; host 0 runs in the foreground
# (its log is the run's one progress stream), the others in the background with their logs in
# gpu_hosts.I.log. --dry-run (anywhere) prints the commands instead of running them.
set -euo pipefail
source "$(dirname "$0")/lib.sh"
parse_dry_run "$@"
set -- "${ARGS[@]}"
usage() { sed -n '2,12p' "$0" >&2; exit 2; }
[ $# -ge 3 ] || usage
HOSTS_FILE=$1 PORT=$2; shift 2
[ "${1:-}" = "--" ] && shift
[ -r "$HOSTS_FILE" ] || { echo "error: cannot read the hosts file $HOSTS_FILE" >&2; exit 2; }
# one host per line; '#' starts a comment, blank lines are skipped
mapfile -t HOSTS < <(sed -e 's/#.*//' -e 's/^[[:space:]]*//' -e 's/[[:space:]]*$//' "$HOSTS_FILE" | grep -v '^$' || true)
N=${#HOSTS[@]}
[ "$N" -ge 1 ] || { echo "error: no hosts in $HOSTS_FILE" >&2; exit 2; }
REPO=$(cd "$(dirname "$0")/.." && pwd)
ARGS=$(printf '%q ' "$@")
PIDS=()
for ((i = N - 1; i >= 0; i--)); do
  REMOTE="cd $REPO && .venv/bin/python -m tas_jax.main $ARGS--coordinator_address=${HOSTS[0]}:$PORT --num_processes=$N --process_id=$i"
  if [ $DRY = 1 ]; then
    show ssh "${HOSTS[$i]}" "$REMOTE"
  elif [ "$i" -gt 0 ]; then
    ssh "${HOSTS[$i]}" "$REMOTE" > "gpu_hosts.$i.log" 2>&1 &
    PIDS+=($!)
  else
    ssh "${HOSTS[$i]}" "$REMOTE"
  fi
done
[ $DRY = 1 ] || for p in "${PIDS[@]}"; do wait "$p"; done
