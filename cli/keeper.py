"""What `mlxctl serve` does when one of its services dies: restart it, the others keep serving.

A crashed store, supervisor or gateway is started again after the delay `RestartPolicy` gives
(services/common/lifecycle.py: at once, then doubling); each death and restart is one line in
serve's output. A service that crashed `limit` times within `window` seconds is given up on:
`check` raises Unavailable and serve stops everything. Plain code over a `restart` callable and
the caller's clock, so tests drive it without processes.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Protocol

from mlxserve.services.common.errors import Unavailable
from mlxserve.services.common.lifecycle import RestartPolicy


class Process(Protocol):
    pid: int

    def poll(self) -> int | None: ...


@dataclass
class Child:
    """One running service: its name ("store", "supervisor", "gateway"), process and output file."""

    name: str
    process: Process
    log_path: Path

    def tail(self, lines: int = 5) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return ""
        return "\n".join([ln for ln in text.splitlines() if ln.strip()][-lines:])


class ServiceKeeper:
    """Restarts serve's crashed services with backoff; gives up after repeated crashes."""

    def __init__(self, children: list[Child], restart: Callable[[Child], Child], *, say: Callable[[str], None],
                 policy: RestartPolicy | None = None) -> None:
        self.children = children  # replaced in place by each restart: stop_children sees the live ones
        self.policy = policy or RestartPolicy()
        self._restart = restart
        self._say = say
        self._due: dict[str, float] = {}  # service -> when its restart is due

    def check(self, now: float) -> None:
        """Notice exits, restart what is due; raise Unavailable for a service that keeps crashing."""
        for i, child in enumerate(self.children):
            due = self._due.get(child.name)
            if due is not None:
                if now >= due:
                    del self._due[child.name]
                    self.children[i] = fresh = self._restart(child)
                    self._say(f"restarted the {child.name} service (pid {fresh.process.pid})")
                continue
            rc = child.process.poll()
            if rc is None:
                continue
            delay = self.policy.crashed(child.name, now)
            p = self.policy
            if delay is None:
                tail = child.tail()
                raise Unavailable(f"the {child.name} service crashed {p.limit} times within {p.window:g} s "
                                  f"(last exit code {rc}); giving up; log: {child.log_path}" + (f":\n{tail}" if tail else ""))
            self._due[child.name] = now + delay
            self._say(f"the {child.name} service exited (exit code {rc}); restarting it in {delay:g} s "
                      f"(crash {p.crashes(child.name, now)} within {p.window:g} s; serve gives up at {p.limit}; log: {child.log_path})")

    @property
    def restarting(self) -> list[str]:
        """Services waiting for their restart."""
        return sorted(self._due)
