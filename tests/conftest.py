"""Test configuration: 4 host CPU devices so sharded code paths run on CPU CI (set before jax
is imported anywhere)."""

import os

os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=4")
os.environ.setdefault("MPLBACKEND", "Agg")
