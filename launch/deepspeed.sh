#!/usr/bin/env bash
# Multi-node training with DeepSpeed's launcher and a hostfile.
#
#   launch/deepspeed.sh [--dry-run] HOSTFILE RECIPE [--set FIELD=VALUE ...] [--fresh]
#
# Run it on every host of HOSTFILE (see launch/hostfile.example), from the
# directory the recipe's paths are relative to (the repo root for recipes/),
# by hand, with pdsh or from a scheduler. Each node starts its own ranks in
# DeepSpeed's --no_ssh mode: the nodes need no ssh to each other, and a node
# runs exactly the command the dry-run prints for it. (With passwordless ssh,
# `deepspeed --hostfile HOSTFILE --module unimodal.train RECIPE` on the first
# host starts every node from there instead.)
#
# Environment:
#   NODE_RANK      this host's line in HOSTFILE, from 0 (default: the line naming `hostname`)
#   MASTER_ADDR    where rank 0 listens (default: the first host of HOSTFILE)
#   MASTER_PORT    default 29500
#   GPUS_PER_NODE  ranks on every node (default: each host's slots)
#   DRY_RUN=1      as --dry-run: print every host's command, run nothing
set -euo pipefail

dry_run=${DRY_RUN:-0}
if [[ ${1:-} == --dry-run ]]; then dry_run=1; shift; fi
if (( $# < 2 )); then
  echo "usage: $0 [--dry-run] HOSTFILE RECIPE [--set FIELD=VALUE ...] [--fresh]" >&2
  exit 2
fi
hostfile=$1 recipe=$2
shift 2
train_args=("$@")
[[ -f $hostfile ]] || { echo "$0: no hostfile $hostfile" >&2; exit 2; }
[[ -f $recipe ]] || { echo "$0: no recipe $recipe here (run from the directory its paths are relative to)" >&2; exit 2; }

hosts=()
while read -r host _; do
  [[ -z $host || $host == \#* ]] || hosts+=("$host")
done <"$hostfile"
(( ${#hosts[@]} > 0 )) || { echo "$0: $hostfile names no host" >&2; exit 2; }
master=${MASTER_ADDR:-${hosts[0]}}

# The command node $1 runs, into the array `cmd`.
node_command() {
  cmd=(deepspeed --hostfile "$hostfile" --no_ssh --node_rank "$1"
       --master_addr "$master" --master_port "${MASTER_PORT:-29500}")
  if [[ -n ${GPUS_PER_NODE:-} ]]; then cmd+=(--num_gpus "$GPUS_PER_NODE"); fi
  cmd+=(--module unimodal.train "$recipe" "${train_args[@]}")
}

if [[ $dry_run != 0 ]]; then
  for rank in "${!hosts[@]}"; do
    node_command "$rank"
    printf -v line ' %q' "${cmd[@]}"
    echo "${hosts[rank]}:$line"
  done
  exit 0
fi

rank=${NODE_RANK:-}
if [[ -z $rank ]]; then
  me=$(hostname) short=$(hostname -s)
  for i in "${!hosts[@]}"; do
    if [[ ${hosts[i]} == "$me" || ${hosts[i]} == "$short" ]]; then rank=$i; fi
  done
  [[ -n $rank ]] || { echo "$0: $me is not in $hostfile: set NODE_RANK" >&2; exit 2; }
fi
node_command "$rank"
exec "${cmd[@]}"
