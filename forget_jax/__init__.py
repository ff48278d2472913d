"""forget-jax: simulate forgetting in post-training with two-mode Gaussian mixtures, at sweep scale."""

import importlib
from typing import TYPE_CHECKING

from . import fields
from ._version import __version__
from .fields import Field, Rule

#: Public names loaded on first use (PEP 562), so that `import forget_jax` (and the `forget-jax`
#: command) starts without importing JAX: the command installs its interrupt handler first.
_LAZY = {
    "analysis": (".analysis", None),
    "theory": (".theory", None),
    "LearnerParams": (".model", "LearnerParams"),
    "Mixture": (".model", "Mixture"),
    "init_params": (".model", "init_params"),
    "learner_mixture": (".model", "learner_mixture"),
    "optimum_params": (".model", "optimum_params"),
    "target_mixture": (".model", "target_mixture"),
    "Objective": (".objectives", "Objective"),
    "register": (".objectives", "register"),
    "Hyper": (".spec", "Hyper"),
    "Setup": (".spec", "Setup"),
    "make_hyper": (".spec", "make_hyper"),
    "TRACE_COUNTS": (".train", "TRACE_COUNTS"),
    "make_train": (".train", "make_train"),
    "simulate": (".train", "simulate"),
    "simulate_one": (".train", "simulate_one"),
}

if TYPE_CHECKING:
    from . import analysis, theory
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


def _declare_all() -> None:
    """Import the modules that declare fields (objectives' knobs, sample-wise items), so the
    field table is complete before any Setup, Hyper or config is built."""
    importlib.import_module(".objectives", __name__)
    importlib.import_module(".items", __name__)


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})


def __getattr__(name: str):
    if name == "HYPER_DEFAULTS":  # traced field -> default, from the field table
        _declare_all()
        return {**fields.defaults("traced"), "seed": 0}
    if name in _LAZY:
        _declare_all()
        module, attr = _LAZY[name]
        loaded = importlib.import_module(module, __name__)
        value = loaded if attr is None else getattr(loaded, attr)
        globals()[name] = value
        return value
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
    from . import host_devices

    host_devices.configure()  # one CPU device per core, unless JAX already runs (then a no-op)
    from .config import load_config
    from .runner import run

    spec = load_config(config_or_path)
    return run(spec, out, resume=resume, shard=shard, chunk_size=chunk_size, progress=progress, **options)
