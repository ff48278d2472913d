"""Clean interrupts for long sweeps: SIGINT / SIGTERM become a request, never an exception.

Python's default SIGINT handler raises `KeyboardInterrupt` wherever the main thread happens to
be, including inside XLA compilation, which can then abort the process ("pure virtual method
called", SIGSEGV). Inside `handle_interrupts()` the first signal only sets a flag: the runner
finishes the segment it is computing (or the compilation), saves the block's checkpoint, prints
the exact command that resumes, and raises `Interrupted`. A second signal exits at once
(`os._exit`): everything the store trusts is written by atomic renames, so the store is still
resumable (from the last checkpoint).

Signal handlers can only be installed from the main thread; runs in worker threads (`forget-jax
reproduce` runs studies in threads) watch the flag that the main thread's handler sets.
"""

from __future__ import annotations

import contextlib
import os
import signal
import sys
import threading

_REQUESTED = threading.Event()
_STATE: dict = {"depth": 0, "signals": 0, "hint": ""}
_LOCK = threading.Lock()


class Interrupted(KeyboardInterrupt):
    """A sweep stopped on request (SIGINT / SIGTERM); `args[0]` says how to resume."""

    def __init__(self, message: str, signum: int = signal.SIGINT):
        super().__init__(message)
        self.signum = signum

    @property
    def exit_code(self) -> int:
        return 128 + int(self.signum)


def requested() -> bool:
    """Has an interrupt been requested (in any thread's view)?"""
    return _REQUESTED.is_set()


def _handler(signum, frame):  # pragma: no cover - exercised by subprocess tests
    _STATE["signals"] += 1
    _STATE["signum"] = signum
    if _STATE["signals"] == 1:
        _REQUESTED.set()
        sys.stderr.write(
            "\ninterrupt: finishing the current segment and saving a checkpoint "
            "(interrupt again to exit at once; the store stays resumable)\n"
        )
        sys.stderr.flush()
        return
    hint = _STATE["hint"]
    sys.stderr.write(f"\ninterrupted at once; {hint}\n" if hint else "\ninterrupted at once\n")
    sys.stderr.flush()
    os._exit(128 + int(signum))


def signal_number() -> int:
    return int(_STATE.get("signum", signal.SIGINT))


def hint() -> str:
    return str(_STATE["hint"])


@contextlib.contextmanager
def handle_interrupts(resume_hint: str = ""):
    """Within this context SIGINT / SIGTERM request a clean stop (see module docstring).

    Re-entrant; a no-op outside the main thread (the outer context's handler serves). Only the
    outermost context sets the resume hint (`forget-jax reproduce` keeps its own command line
    while each of its stores runs)."""
    main = threading.current_thread() is threading.main_thread()
    with _LOCK:
        outer = main and _STATE["depth"] == 0
        if main:
            _STATE["depth"] += 1
    previous = {}
    if outer:
        _REQUESTED.clear()
        _STATE["signals"] = 0
        _STATE["hint"] = resume_hint
        for sig in (signal.SIGINT, signal.SIGTERM):
            previous[sig] = signal.getsignal(sig)
            signal.signal(sig, _handler)
    try:
        yield
    finally:
        if main:
            with _LOCK:
                _STATE["depth"] -= 1
        if outer:
            for sig, old in previous.items():
                signal.signal(sig, old)
            _REQUESTED.clear()
            _STATE["signals"] = 0
