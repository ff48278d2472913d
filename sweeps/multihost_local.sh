#!/usr/bin/env bash
# Multi-host with jax.distributed, rehearsed on one machine: N processes join a coordinator on
# 127.0.0.1, each takes the blocks of its jax.process_index() and writes them into one store.
# On a real cluster give every host the same --coordinator HOST:PORT and --num-processes, and its
# own --process-id (or drop the three flags where jax.distributed reads them from the cluster
# environment, e.g. SLURM or Cloud TPU).
#   N=2 sweeps/multihost_local.sh configs/quickstart.yaml runs/multihost.zarr
set -euo pipefail
cd "$(dirname "$0")/.."
CONFIG=${1:-configs/quickstart.yaml}
OUT=${2:-runs/multihost.zarr}
N=${N:-2}
PORT=${PORT:-$(python -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')}

pids=()
for ((i = 0; i < N; i++)); do
    forget-jax sweep "$CONFIG" --out "$OUT" --resume --no-progress --distributed \
        --coordinator "127.0.0.1:$PORT" --num-processes "$N" --process-id "$i" &
    pids+=($!)
done
for pid in "${pids[@]}"; do wait "$pid"; done
forget-jax info "$OUT"
