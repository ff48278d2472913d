"""JAX's persistent compilation cache, on by default (forget_jax/_cache.py): a second run of a
sweep in a fresh process loads its programs from disk instead of compiling them.

The signal is JAX's own (jax 0.10.2, `jax._src.compiler.compile_or_get_cached`): every program
looked up in the persistent cache records the `jax.monitoring` event
"/jax/compilation_cache/cache_hits" or "/jax/compilation_cache/cache_misses". The first run
misses and writes entries into $FORGET_JAX_CACHE_DIR; the second hits, misses nothing and writes
no new entry (every program is cached: `_cache.MIN_COMPILE_TIME_S` = 0).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import jax
import pytest
import yaml

from forget_jax import _cache

#: A fresh process runs this: the `forget-jax` CLI (whose callback enables the cache) on one tiny
#: sweep, with listeners on JAX's cache events; it prints the counts and the cache folder in use.
SCRIPT = """
import collections, json, sys
from jax import monitoring
events = collections.Counter()
monitoring.register_event_listener(lambda event, **kw: events.update([event]))
from forget_jax.cli import app
try:
    app(["sweep", sys.argv[1], "--out", sys.argv[2], "--no-progress"], standalone_mode=False)
finally:
    import jax
    prefix = "/jax/compilation_cache/"
    print(json.dumps({
        "hits": events[prefix + "cache_hits"],
        "misses": events[prefix + "cache_misses"],
        "dir": jax.config.jax_compilation_cache_dir,
    }))
"""


def _run(config: Path, out: Path, env: dict) -> dict:
    result = subprocess.run(
        [sys.executable, "-c", SCRIPT, str(config), str(out)], env=env, capture_output=True, text=True, timeout=240
    )
    assert result.returncode == 0, result.stdout + result.stderr
    return json.loads(result.stdout.strip().splitlines()[-1])


def test_second_run_in_a_fresh_process_does_not_recompile(tmp_path):
    config = tmp_path / "tiny.yaml"
    config.write_text(yaml.safe_dump(dict(name="tiny", estimator="population", steps=10, log_every=5)))
    cache = tmp_path / "cache"
    env = {k: v for k, v in os.environ.items() if k not in ("JAX_COMPILATION_CACHE_DIR", "FORGET_JAX_NO_CACHE")}
    env.update(FORGET_JAX_CACHE_DIR=str(cache), JAX_PLATFORMS="cpu")

    first = _run(config, tmp_path / "a.zarr", env)
    assert first["dir"] == str(cache)
    assert first["misses"] >= 1, first
    entries = sorted(p.name for p in cache.iterdir())
    assert entries, "nothing written to the cache"

    second = _run(config, tmp_path / "b.zarr", env)
    assert second["misses"] == 0 and second["hits"] >= 1, second
    assert sorted(p.name for p in cache.iterdir()) == entries  # nothing compiled, nothing new written


@pytest.fixture
def fresh(monkeypatch):
    """enable_compilation_cache as if not yet called in this process (restored afterwards)."""
    monkeypatch.setattr(_cache, "_DECIDED", False)
    monkeypatch.setattr(_cache, "_ENABLED", None)


def test_no_cache_switch_and_user_dir_win(fresh, monkeypatch, tmp_path):
    saved = jax.config.jax_compilation_cache_dir
    update = jax.config.update
    calls = []
    monkeypatch.setattr(jax.config, "update", lambda *a: calls.append(a))  # nothing may change

    monkeypatch.setenv("FORGET_JAX_NO_CACHE", "1")
    assert _cache.enable_compilation_cache() is None
    assert _cache.enable_compilation_cache() is None  # idempotent
    assert calls == []

    monkeypatch.delenv("FORGET_JAX_NO_CACHE")
    monkeypatch.setattr(_cache, "_DECIDED", False)
    update("jax_compilation_cache_dir", str(tmp_path / "mine"))  # the user's own folder, set in jax
    try:
        assert _cache.enable_compilation_cache() == str(tmp_path / "mine")
        assert _cache.enable_compilation_cache() == str(tmp_path / "mine")
    finally:
        update("jax_compilation_cache_dir", saved)
    assert calls == []


def test_default_folder(monkeypatch, tmp_path):
    monkeypatch.delenv("FORGET_JAX_CACHE_DIR", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert _cache.cache_dir() == tmp_path / "xdg" / "forget-jax" / "jax"
    monkeypatch.delenv("XDG_CACHE_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert _cache.cache_dir() == tmp_path / "home" / ".cache" / "forget-jax" / "jax"
    monkeypatch.setenv("FORGET_JAX_CACHE_DIR", str(tmp_path / "explicit"))
    assert _cache.cache_dir() == tmp_path / "explicit"
