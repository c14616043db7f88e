#!/usr/bin/env bash
# One training stage as a SLURM job: one torchrun per node, requeued at the time limit and on preemption.
#
#   sbatch [--nodes 4 --time 48:00:00 ...] launch/slurm.sh RECIPE [--set FIELD=VALUE ...] [--fresh]
#   SLURM_JOB_NODELIST='node[01-02]' launch/slurm.sh --dry-run RECIPE     # anywhere: print each node's command
#
# Submit from the directory the recipe's paths are relative to (the repo root
# for recipes/), in the environment that has unimodal installed: sbatch passes
# both on. The first node of the allocation is the master; each node's torchrun
# takes its node rank from SLURM_NODEID.
#
# Requeue: `--requeue` lets a preempted job go back to the queue (on clusters
# whose PreemptMode is REQUEUE), and `--signal` wakes this script 120 s before
# the time limit, when it requeues the job itself. Either way SLURM ends the
# running steps and starts the job again with SLURM_RESTART_COUNT > 0: the stage
# continues from its latest checkpoint, as every run does when its output
# directory holds one (a requeued job never starts over, even with --fresh; the
# --resume this script still adds is that default, spelt out in the log).
# Within a job torchrun restarts the ranks after a failure (MAX_RESTARTS).
#
# Environment:
#   MASTER_PORT    default 29500
#   GPUS_PER_NODE  ranks on every node (default: SLURM_GPUS_ON_NODE, else one per visible GPU)
#   MAX_RESTARTS   times torchrun restarts the ranks after a failure (default 3)
#   DRY_RUN=1      as --dry-run; outside SLURM, give SLURM_JOB_NODELIST (and SLURM_RESTART_COUNT
#                  to see a requeued run). Without scontrol, names and prefix[ranges] groups are expanded here.
#
#SBATCH --job-name=unimodal
#SBATCH --nodes=2
#SBATCH --gpus-per-node=8
#SBATCH --exclusive
#SBATCH --time=24:00:00
#SBATCH --requeue
#SBATCH --signal=B:USR1@120
#SBATCH --output=slurm-%x-%j.out
#SBATCH --open-mode=append
set -euo pipefail
# sbatch runs a copy of this file from its spool directory: nothing is read relative to it.

dry_run=${DRY_RUN:-0}
if [[ ${1:-} == --dry-run ]]; then dry_run=1; shift; fi
if (( $# < 1 )); then
  echo "usage: sbatch $0 RECIPE [--set FIELD=VALUE ...] [--fresh]   or   $0 --dry-run RECIPE ..." >&2
  exit 2
fi
recipe=$1
shift
train_args=("$@")
[[ -f $recipe ]] || { echo "$0: no recipe $recipe here (submit from the directory its paths are relative to)" >&2; exit 2; }
: "${SLURM_JOB_NODELIST:?"not in a SLURM job: submit it with sbatch, or give SLURM_JOB_NODELIST for a dry-run"}"

# What `scontrol show hostnames` prints, for a dry-run where there is no scontrol:
# a comma-separated list of names and prefix[ranges] groups, e.g. "node[01-03,07],gpu5".
expand_nodelist() {
  local rest=$1 group='^([^],[]*)\[([0-9,-]+)\](,|$)' name='^([^],[]+)(,|$)' range lo hi i
  while [[ -n $rest ]]; do
    if [[ $rest =~ $group ]]; then
      for range in ${BASH_REMATCH[2]//,/ }; do
        lo=${range%-*} hi=${range#*-}
        for (( i = 10#$lo; i <= 10#$hi; i++ )); do printf '%s%0*d\n' "${BASH_REMATCH[1]}" "${#lo}" "$i"; done
      done
    elif [[ $rest =~ $name ]]; then
      echo "${BASH_REMATCH[1]}"
    else
      echo "$0: cannot expand the node list '$1' without scontrol: give names and prefix[ranges] groups" >&2
      return 1
    fi
    rest=${rest:${#BASH_REMATCH[0]}}
  done
}

if command -v scontrol >/dev/null; then
  nodes=$(scontrol show hostnames "$SLURM_JOB_NODELIST")
else
  nodes=$(expand_nodelist "$SLURM_JOB_NODELIST")
fi
mapfile -t hosts <<<"$nodes"

if (( ${SLURM_RESTART_COUNT:-0} > 0 )) && [[ " ${train_args[*]} " != *" --resume "* ]]; then
  train_args+=(--resume)
fi

# torchrun's options but the node rank, which differs per node, then the per-rank entry point.
launch_args=(--nnodes "${#hosts[@]}" --nproc-per-node "${GPUS_PER_NODE:-${SLURM_GPUS_ON_NODE:-gpu}}" --max-restarts "${MAX_RESTARTS:-3}"
             --master-addr "${hosts[0]}" --master-port "${MASTER_PORT:-29500}"
             -m unimodal.train "$recipe" "${train_args[@]}")

if [[ $dry_run != 0 ]]; then
  for rank in "${!hosts[@]}"; do
    printf -v line ' %q' torchrun --node-rank "$rank" "${launch_args[@]}"
    echo "${hosts[rank]}:$line"
  done
  exit 0
fi

: "${SLURM_JOB_ID:?"not in a SLURM job: submit it with sbatch"}"
requeue() {
  echo "$0: the time limit is near: requeueing job $SLURM_JOB_ID to resume from its latest checkpoint" >&2
  scontrol requeue "$SLURM_JOB_ID"
}
trap requeue USR1

# srun in the background: bash runs a trap only between commands, and `wait` is one it interrupts.
# --cpus-per-task: since SLURM 22.05 a step's task gets one CPU unless told, whatever sbatch was given.
srun --nodes "${#hosts[@]}" --ntasks "${#hosts[@]}" --ntasks-per-node 1 --cpus-per-task "$SLURM_CPUS_ON_NODE" \
     --kill-on-bad-exit=1 bash -c 'exec torchrun --node-rank "$SLURM_NODEID" "$@"' torchrun "${launch_args[@]}" &
wait $!
