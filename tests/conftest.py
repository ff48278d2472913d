"""Test configuration (set before jax is imported anywhere):

* 4 host CPU devices, so sharded code paths run on CPU CI;
* strict dtype promotion (as equinox's tests): mixing float32 and float64 arrays, or int32 and
  int64, raises instead of silently promoting. It is an environment variable, so the `forget-jax`
  subprocesses the CLI tests start run strict too.
"""

import os

os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=4")
os.environ.setdefault("JAX_NUMPY_DTYPE_PROMOTION", "strict")
os.environ.setdefault("MPLBACKEND", "Agg")
