"""Process lifecycle shared by every service and worker: die with the parent, stop on signals.

A child process must never outlive the process that started it (no orphans, even when the parent
is SIGKILLed): on Linux the kernel sends SIGTERM at parent death (PR_SET_PDEATHSIG); everywhere,
a watchdog thread notices that the parent pid changed and exits.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import re
import signal
import sys
import threading
import time
from pathlib import Path

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


# Restarts of a crashed long-lived service (what `mlxctl serve` does for the store, the supervisor
# and the gateway; launchd and systemd do the same at their level): the first restart comes at
# once, each further crash within the window doubles the wait, and a service that crashed
# CRASH_LIMIT times within CRASH_WINDOW_S is given up on (a crash loop helps nobody).
RESTART_DELAY_S = 0.5
RESTART_DELAY_MAX_S = 8.0
CRASH_LIMIT = 5
CRASH_WINDOW_S = 60.0


class RestartPolicy:
    """Per service: the delay before restarting it after a crash, or None to give up. Pure: the
    caller passes the (monotonic) time of each crash."""

    def __init__(self, *, delay: float = RESTART_DELAY_S, maximum: float = RESTART_DELAY_MAX_S,
                 limit: int = CRASH_LIMIT, window: float = CRASH_WINDOW_S) -> None:
        self.delay, self.maximum, self.limit, self.window = delay, maximum, limit, window
        self._crashes: dict[str, list[float]] = {}

    def crashed(self, service: str, now: float) -> float | None:
        """Record a crash of `service` at `now`; seconds to wait before restarting it, or None when it
        has crashed `limit` times within `window` seconds."""
        recent = [t for t in self._crashes.get(service, []) if now - t < self.window] + [now]
        self._crashes[service] = recent
        if len(recent) >= self.limit:
            return None
        return min(self.maximum, self.delay * 2 ** (len(recent) - 1))

    def crashes(self, service: str, now: float) -> int:
        """Crashes of `service` within the window before `now`."""
        return sum(1 for t in self._crashes.get(service, []) if now - t < self.window)


_GATEWAY_SOCKET = re.compile(r"gateway-(\d+)\.ipc")


def pid_alive(pid: int) -> bool:
    """Whether a process `pid` exists (one of another user's counts: it is not ours to judge)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def remove_stale_gateway_sockets(run_dir: Path) -> list[Path]:
    """Delete the `gateway-<pid>.ipc` token sockets in `run_dir` whose gateway process is gone (a
    gateway killed with -9 cannot remove its own); a live gateway's socket is left alone."""
    removed = []
    for path in Path(run_dir).glob("gateway-*.ipc"):
        match = _GATEWAY_SOCKET.fullmatch(path.name)
        if match is None or pid_alive(int(match.group(1))):
            continue
        with contextlib.suppress(FileNotFoundError):
            path.unlink()
            removed.append(path)
    return removed
