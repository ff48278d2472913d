"""JAX's persistent compilation cache, on by default: a rerun of a sweep loads its compiled
programs from disk instead of compiling them again.

`enable_compilation_cache()` points JAX (`jax_compilation_cache_dir`) at

1. `$FORGET_JAX_CACHE_DIR` when set, else
2. `$XDG_CACHE_HOME/forget-jax/jax` (`~/.cache/forget-jax/jax` when XDG_CACHE_HOME is unset),

and lowers JAX's write thresholds so that the programs of a small CPU sweep are cached too
(JAX's default only writes programs that took >= 1 s to compile): every program is written
(`MIN_COMPILE_TIME_S`), whatever its size. It changes nothing when

* `FORGET_JAX_NO_CACHE=1` (or true/yes): the cache stays off;
* the user configured a cache directory in JAX already (`jax.config.update(
  "jax_compilation_cache_dir", ...)` or the `JAX_COMPILATION_CACHE_DIR` environment variable),
  or turned JAX's cache off (`jax_enable_compilation_cache` False): their setting wins, and a
  threshold they set through `JAX_PERSISTENT_CACHE_MIN_*` is never overridden.

It is idempotent (a second call returns the same directory and changes nothing) and should run
before the first compilation of the process; if something compiled earlier, JAX's cache state
is reset so that later compilations use the directory.

Relies on JAX >= 0.4.26 behaviour, checked on jax 0.10.2: a hit is reported as the
`jax.monitoring` event "/jax/compilation_cache/cache_hits" and a miss as
"/jax/compilation_cache/cache_misses"; tests/test_cache.py checks that a second run of a sweep
in a fresh process has hits and no misses.
The cache is trusted code: do not point it at a folder others can write to.
"""

from __future__ import annotations

import os
from pathlib import Path

__all__ = ["MIN_COMPILE_TIME_S", "cache_dir", "enable_compilation_cache"]

#: Programs that compiled in at least this many seconds are written to the cache: all of them, so
#: that a rerun compiles nothing (the quickstart: 30 entries, 0.7 MB; its rerun has 33 hits and no
#: miss, where a 0.05 s floor left 7 small programs to recompile every run).
MIN_COMPILE_TIME_S = 0.0

_ENABLED: str | None = None
_DECIDED = False
_TRUE = ("1", "true", "yes", "on")


def cache_dir() -> Path:
    """The default cache folder: $FORGET_JAX_CACHE_DIR, else $XDG_CACHE_HOME/forget-jax/jax."""
    explicit = os.environ.get("FORGET_JAX_CACHE_DIR")
    if explicit:
        return Path(explicit).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base).expanduser() / "forget-jax" / "jax"


def enable_compilation_cache() -> str | None:
    """Turn on JAX's persistent compilation cache in forget-jax's folder (see the module docstring).

    Returns:
        The cache directory in use (forget-jax's, or the one the user configured in JAX), or
        None when the cache is off (FORGET_JAX_NO_CACHE=1, JAX's cache disabled, or the folder
        cannot be created).
    """
    global _ENABLED, _DECIDED
    if _DECIDED:
        return _ENABLED
    import jax

    _DECIDED = True
    if os.environ.get("FORGET_JAX_NO_CACHE", "").strip().lower() in _TRUE:
        return None
    if not jax.config.jax_enable_compilation_cache:  # type: ignore[attr-defined]
        return None
    configured = jax.config.jax_compilation_cache_dir  # type: ignore[attr-defined]
    if configured:  # the user's own choice (jax.config.update or JAX_COMPILATION_CACHE_DIR)
        _ENABLED = str(configured)
        return _ENABLED
    folder = cache_dir()
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError:
        return None
    if "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS" not in os.environ:
        jax.config.update("jax_persistent_cache_min_compile_time_secs", MIN_COMPILE_TIME_S)
    if "JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES" not in os.environ:
        jax.config.update("jax_persistent_cache_min_entry_size_bytes", -1)  # -1: no size floor
    jax.config.update("jax_compilation_cache_dir", str(folder))
    from jax.experimental.compilation_cache import compilation_cache

    compilation_cache.reset_cache()  # a compilation before this call froze "no cache": thaw it
    _ENABLED = str(folder)
    return _ENABLED
