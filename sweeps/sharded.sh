#!/usr/bin/env bash
# One sweep split into N independent processes that fill one store (`--shard i/N`): blocks are
# dealt round robin, each block is its own zarr chunk, so processes never write the same file.
# Here N processes on this machine; on a cluster run the same line once per job (e.g. a SLURM
# array with i=$SLURM_ARRAY_TASK_ID) on a shared file system. Re-run with --resume after a crash.
#   N=4 sweeps/sharded.sh configs/phase_fkl_rkl.yaml runs/phase_sharded.zarr
set -euo pipefail
cd "$(dirname "$0")/.."
CONFIG=${1:-configs/quickstart.yaml}
OUT=${2:-runs/sharded.zarr}
N=${N:-2}

pids=()
for ((i = 0; i < N; i++)); do
    forget-jax sweep "$CONFIG" --out "$OUT" --shard "$i/$N" --resume --no-progress &
    pids+=($!)
done
for pid in "${pids[@]}"; do wait "$pid"; done
forget-jax info "$OUT"
