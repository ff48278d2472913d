#!/usr/bin/env bash
# CRNC25's two-mode toy (docs/science/studies.md section 5): forward KL at their learning rates 0.15 and 0.01
# (configs/chen2025.yaml) and their surrogate REINFORCE at 0.01 (configs/chen2025_rkl.yaml),
# 8 seeds each, 200 iterations of 1000 samples, overlaps logged at every iteration.
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-runs}

for name in chen2025 chen2025_rkl; do
    store="$OUT/$name.zarr"
    if [ -d "$store" ]; then RESUME=--resume; else RESUME=; fi
    forget-jax sweep "configs/$name.yaml" --out "$store" $RESUME
    forget-jax plot "$store" --x step --var old_overlap --out "$OUT/$name.old_overlap.png"
    forget-jax plot "$store" --x step --var new_overlap --out "$OUT/$name.new_overlap.png"
    forget-jax export "$store" --out "$OUT/$name.nc"
done
