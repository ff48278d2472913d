"""Test configuration (set before jax is imported anywhere):

* 4 host CPU devices, so sharded code paths run on CPU CI (XLA_FLAGS; a user-set count wins over
  forget_jax/host_devices.py), and `FORGET_JAX_HOST_DEVICES=1` so that a subprocess started
  without these XLA_FLAGS keeps JAX's single CPU device instead of one per core;
* strict dtype promotion (as equinox's tests): mixing float32 and float64 arrays, or int32 and
  int64, raises instead of silently promoting. It is an environment variable, so the `forget-jax`
  subprocesses the CLI tests start run strict too;
* JAX's persistent compilation cache (forget_jax/_cache.py) in a temporary folder of this
  session (removed at exit; the CLI subprocesses inherit it), never in ~/.cache;
* on a GPU, no preallocation of device memory: the two pytest-xdist workers (pyproject addopts)
  share the device;
* stores written without fsync (`FORGET_JAX_FSYNC=0`, store.py): thousands of small stores on a
  CI disk. Kill-and-resume tests stay meaningful: a killed process's writes survive in the page
  cache, and every commit is a rename; fsync only matters for a power loss.
"""

import atexit
import os
import shutil
import tempfile

os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=4")
os.environ.setdefault("FORGET_JAX_HOST_DEVICES", "1")
os.environ.setdefault("JAX_NUMPY_DTYPE_PROMOTION", "strict")
os.environ.setdefault("MPLBACKEND", "Agg")
os.environ.setdefault("FORGET_JAX_FSYNC", "0")
os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")  # two xdist workers share a GPU
if "FORGET_JAX_CACHE_DIR" not in os.environ:  # JAX's compilation cache: one fresh folder per session
    _cache_dir = tempfile.mkdtemp(prefix="forget-jax-test-cache-")
    os.environ["FORGET_JAX_CACHE_DIR"] = _cache_dir
    atexit.register(shutil.rmtree, _cache_dir, ignore_errors=True)
