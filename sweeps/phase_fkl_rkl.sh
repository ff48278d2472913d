#!/usr/bin/env bash
# FKL (SFT) vs RKL (RL) phase diagram with Monte Carlo gradients (configs/phase_fkl_rkl.yaml):
# separation x replay ratio x batch size, then the three figures that show its claims.
# About a minute on a 2-core CPU. Safe to interrupt: run it again and it resumes.
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-runs/phase_fkl_rkl.zarr}

if [ -d "$OUT" ]; then RESUME=--resume; else RESUME=; fi
forget-jax sweep configs/phase_fkl_rkl.yaml --out "$OUT" $RESUME
forget-jax info "$OUT"

# FKL: the final old weight follows the replay ratio (beta -> lambda), whatever the separation
forget-jax plot "$OUT" --x separation --y replay_ratio --var old_weight --sel objective=fkl --sel batch_size=32 \
    --out "${OUT%.zarr}.fkl_old_weight.png"
# RKL: the final old weight is beta* = 0.5 for every replay ratio (once the modes are apart)
forget-jax plot "$OUT" --x separation --y replay_ratio --var old_weight --sel objective=rkl --sel batch_size=32 \
    --out "${OUT%.zarr}.rkl_old_weight.png"
# starvation: fraction of steps whose batch holds no old-mode sample, vs batch size and replay ratio
forget-jax plot "$OUT" --x replay_ratio --y batch_size --var starved_fraction --step 50 \
    --sel objective=rkl --sel separation=4.125 --out "${OUT%.zarr}.rkl_starvation.png"
