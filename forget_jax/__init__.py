"""forget-jax: simulate forgetting in post-training with two-mode Gaussian mixtures, at sweep scale."""

from . import analysis, fields, theory
from ._version import __version__
from .fields import Field, Rule
from .model import LearnerParams, Mixture, init_params, learner_mixture, optimum_params, target_mixture
from .objectives import Objective, register
from .spec import Hyper, Setup, make_hyper
from .train import TRACE_COUNTS, make_train, simulate, simulate_one

__all__ = [
    "HYPER_DEFAULTS",
    "TRACE_COUNTS",
    "Field",
    "Hyper",
    "LearnerParams",
    "Mixture",
    "Objective",
    "Rule",
    "Setup",
    "__version__",
    "analysis",
    "fields",
    "init_params",
    "learner_mixture",
    "make_hyper",
    "make_train",
    "optimum_params",
    "register",
    "simulate",
    "simulate_one",
    "sweep",
    "target_mixture",
    "theory",
]


def __getattr__(name: str):
    if name == "HYPER_DEFAULTS":  # traced field -> default, from the field table
        return {**fields.defaults("traced"), "seed": 0}
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def sweep(
    config_or_path,
    out=None,
    *,
    resume: bool = False,
    shard: tuple[int, int] = (0, 1),
    chunk_size: int | None = None,
    progress: bool = True,
    **options,
):
    """Run a sweep from a YAML path or a config dict and return an `xarray.Dataset`.

    Mirrors `forget-jax sweep CONFIG --out STORE`: with `out=None` nothing is written and the
    Dataset is built in memory; with `out` the zarr store is written block by block, each block
    in checkpointed segments (resumable with `resume=True`, also after a kill mid-block), and
    returned opened lazily. `shard=(i, N)` runs a disjoint slice. Further keyword options
    (`segment_seconds`, `segment_logs`, `refuse_damaged`, `max_hours`, `on_advance`, ...) are
    those of `forget_jax.runner.run`. Raises `forget_jax.config.ConfigError` (one line) for a
    bad configuration and `forget_jax.runner.interrupts.Interrupted` (a KeyboardInterrupt) when
    stopped by SIGINT / SIGTERM.
    """
    from .config import load_config
    from .runner import run

    spec = load_config(config_or_path)
    return run(spec, out, resume=resume, shard=shard, chunk_size=chunk_size, progress=progress, **options)
