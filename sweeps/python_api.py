"""The Python API: the same sweep as `forget-jax sweep`, in memory or into a store.

python sweeps/python_api.py
"""

from pathlib import Path

import forget_jax

ROOT = Path(__file__).resolve().parents[1]

# a config dict (or a YAML path); nothing is written when out is None
config = {
    "name": "api_demo",
    "objective": "rkl",
    "estimator": "score",
    "sampling": "ancestral",
    "batch_size": 32,
    "steps": 500,
    "log_every": 50,
    "seeds": 4,
    "grid": {"separation": {"linspace": [1.0, 6.0, 6]}, "replay_ratio": [0.0, 0.2, 0.4]},
}
ds = forget_jax.sweep(config)
final = ds["old_weight"].isel(step=-1).mean("seed")
print("RKL final old weight (mean over seeds), separation x replay ratio:")
print(final.to_pandas().round(3))

# into a zarr store (resumable; the Dataset comes back opened lazily)
store = ROOT / "runs" / "api_demo.zarr"
ds = forget_jax.sweep(ROOT / "configs" / "quickstart.yaml", out=store, resume=store.exists())
print(ds)
