#!/usr/bin/env bash
# Multi-node training with torchrun and c10d rendezvous.
#
#   NNODES=2 MASTER_ADDR=node01 launch/torchrun.sh [--dry-run] RECIPE [--set FIELD=VALUE ...] [--fresh]
#
# Run the same command on every node, from the directory the recipe's paths
# are relative to (the repo root for recipes/). The nodes meet at
# MASTER_ADDR:MASTER_PORT, on any one of them (its torchrun hosts the
# rendezvous), and are numbered as they join: no node is told its rank.
# When a rank dies, torchrun restarts every rank (up to MAX_RESTARTS times);
# they resume from the stage's latest complete checkpoint, as a run started
# again does (--fresh applies to the first round only).
#
# Environment:
#   NNODES         nodes in the run (default 1)
#   MASTER_ADDR    the rendezvous host; required when NNODES > 1
#   MASTER_PORT    default 29500
#   GPUS_PER_NODE  ranks on every node (default "gpu": one per visible GPU)
#   RDZV_ID        the run's name at the rendezvous, the same on every node (default unimodal)
#   MAX_RESTARTS   times torchrun restarts the ranks after a failure (default 3)
#   DRY_RUN=1      as --dry-run: print the command, run nothing
set -euo pipefail

dry_run=${DRY_RUN:-0}
if [[ ${1:-} == --dry-run ]]; then dry_run=1; shift; fi
if (( $# < 1 )); then
  echo "usage: NNODES=N MASTER_ADDR=HOST $0 [--dry-run] RECIPE [--set FIELD=VALUE ...] [--fresh]" >&2
  exit 2
fi
recipe=$1
shift
[[ -f $recipe ]] || { echo "$0: no recipe $recipe here (run from the directory its paths are relative to)" >&2; exit 2; }

nnodes=${NNODES:-1}
[[ $nnodes =~ ^[1-9][0-9]*$ ]] || { echo "$0: NNODES=$nnodes is not a node count" >&2; exit 2; }
if (( nnodes > 1 )); then
  # Defaulting to localhost here would leave each node waiting at its own rendezvous.
  master=${MASTER_ADDR:?"NNODES=$nnodes: set MASTER_ADDR to the rendezvous host, one of the nodes"}
else
  master=${MASTER_ADDR:-localhost}
fi

cmd=(torchrun --nnodes "$nnodes" --nproc-per-node "${GPUS_PER_NODE:-gpu}" --max-restarts "${MAX_RESTARTS:-3}"
     --rdzv-backend c10d --rdzv-endpoint "$master:${MASTER_PORT:-29500}" --rdzv-id "${RDZV_ID:-unimodal}"
     -m unimodal.train "$recipe" "$@")

if [[ $dry_run != 0 ]]; then
  printf -v line ' %q' "${cmd[@]}"
  echo "each of $nnodes nodes:$line"
  exit 0
fi
exec "${cmd[@]}"
