"""Host devices on CPU: one XLA CPU device per core, so the runner shards a block over them.

JAX's CPU backend exposes a single device by default; XLA's flag
`--xla_force_host_platform_device_count=N` (in the environment variable `XLA_FLAGS`) makes it
expose N, and the runner (runner/execute.py) then splits each block of configurations over the
N devices (blocks padded to a multiple of N). The flag is read once, when JAX initialises its
backends (the first `jax.devices()` or computation, not `import jax`), so `configure()` must run
before that: the `forget-jax` command calls it first thing, `forget_jax.sweep` at call time.

`configure(count=None)` sets the flag when all of these hold, and otherwise changes nothing:

* JAX's backends are not initialised yet in this process (a library user who already ran JAX
  code keeps the devices they have: one debug line on the `forget_jax` logger, no warning);
* the user has not chosen a CPU device count: neither `--xla_force_host_platform_device_count`
  in `XLA_FLAGS` nor JAX's own `jax_num_cpu_devices` (`JAX_NUM_CPU_DEVICES` or
  `jax.config.update`); their choice wins;
* the count is > 1.

The count is `count` if given, else `$FORGET_JAX_HOST_DEVICES` (`1` switches this off), else the
cores this process may run on (`os.sched_getaffinity`, falling back to `os.cpu_count()`).

The flag only concerns the CPU platform: on a GPU or TPU machine the runner's default devices
(`jax.local_devices()`, the default backend) are the accelerators, unchanged.
"""

from __future__ import annotations

import logging
import os
import sys

__all__ = ["ENV", "FLAG", "configure", "core_count"]

#: Environment variable overriding the count (`1`: one host device, as JAX's default).
ENV = "FORGET_JAX_HOST_DEVICES"
#: XLA's flag for the number of CPU devices.
FLAG = "--xla_force_host_platform_device_count"

_log = logging.getLogger("forget_jax")


def core_count() -> int:
    """Cores this process may run on: its CPU affinity set where the OS has one, else all."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # macOS / Windows: no affinity API
        return os.cpu_count() or 1


def _backends_initialized() -> bool:
    """Whether JAX has created its backends in this process (after which XLA_FLAGS is ignored).
    JAX not imported yet: not initialised (checking does not import it)."""
    bridge = sys.modules.get("jax._src.xla_bridge")
    if bridge is None:
        return False
    probe = getattr(bridge, "backends_are_initialized", None)
    if probe is None:  # pragma: no cover - a JAX without this query: assume the worst
        return True
    return bool(probe())


def _user_count() -> str | None:
    """Where the user already chose a CPU device count (None: nowhere)."""
    if FLAG in os.environ.get("XLA_FLAGS", ""):
        return f"XLA_FLAGS already sets {FLAG}"
    if os.environ.get("JAX_NUM_CPU_DEVICES", "").strip():
        return "JAX_NUM_CPU_DEVICES is set"
    jax = sys.modules.get("jax")
    chosen = getattr(getattr(jax, "config", None), "jax_num_cpu_devices", -1) if jax is not None else -1
    if isinstance(chosen, int) and chosen >= 0:
        return "jax_num_cpu_devices is set"
    return None


def configure(count: int | None = None) -> str:
    """Expose `count` CPU devices to JAX (see the module docstring), when still possible.

    Args:
        count: CPU devices wanted; None: `$FORGET_JAX_HOST_DEVICES`, else the core count.

    Returns:
        What was done, one line: `"set <FLAG>=N"` or `"unchanged: <reason>"`.

    Raises:
        ValueError: `$FORGET_JAX_HOST_DEVICES` (or `count`) is not an integer >= 1.
    """
    if count is None:
        text = os.environ.get(ENV, "").strip()
        if text:
            try:
                count = int(text)
            except ValueError:
                raise ValueError(f"{ENV}={text!r}: expected a number of host devices >= 1") from None
        else:
            count = core_count()
    if count < 1:
        raise ValueError(f"{ENV}={count}: expected a number of host devices >= 1")
    reason = _user_count()
    if reason is None and _backends_initialized():
        reason = "JAX's backends are already initialised in this process"
    if reason is None and count == 1:
        reason = "one host device wanted"
    if reason is not None:
        _log.debug("host devices %s", reason)
        return f"unchanged: {reason}"
    os.environ["XLA_FLAGS"] = " ".join(filter(None, [os.environ.get("XLA_FLAGS", "").strip(), f"{FLAG}={count}"]))
    return f"set {FLAG}={count}"
