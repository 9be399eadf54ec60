"""Process lifecycle shared by every service and worker: die with the parent, stop on signals.

A child process must never outlive the process that started it (no orphans, even when the parent
is SIGKILLed): on Linux the kernel sends SIGTERM at parent death (PR_SET_PDEATHSIG); everywhere,
a watchdog thread notices that the parent pid changed and exits.
"""

from __future__ import annotations

import ctypes
import os
import signal
import sys
import threading
import time

PR_SET_PDEATHSIG = 1


def die_with_parent(expected_ppid: int | None = None, poll_s: float = 0.5) -> None:
    """Exit this process soon after its parent dies. Call early in a child's main()."""
    ppid = expected_ppid if expected_ppid is not None else os.getppid()
    if sys.platform.startswith("linux"):
        try:
            libc = ctypes.CDLL("libc.so.6", use_errno=True)
            libc.prctl(PR_SET_PDEATHSIG, signal.SIGTERM)
        except OSError:
            pass
    if os.getppid() != ppid:  # the parent died before we got here
        os._exit(1)

    def watch() -> None:
        while True:
            time.sleep(poll_s)
            if os.getppid() != ppid:
                # Give a SIGTERM handler a moment to clean up, then go.
                try:
                    os.kill(os.getpid(), signal.SIGTERM)
                finally:
                    time.sleep(2.0)
                    os._exit(1)

    threading.Thread(target=watch, name="parent-watch", daemon=True).start()


def parent_pid_from_env() -> int | None:
    """The pid a launcher recorded in MLXSERVE_PARENT_PID (so a watchdog can compare)."""
    raw = os.environ.get("MLXSERVE_PARENT_PID")
    return int(raw) if raw and raw.isdigit() else None
