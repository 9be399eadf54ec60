"""Worker health: which running worker must be killed, decided from what its Info calls show.

Plain code over the pool's monitor passes (no clock of its own, no processes): each pass reports,
per worker, whether it answered Info and its step counter. Two verdicts end a worker:

- unresponsive: it missed `max_misses` Info calls in a row, busy or idle. A frozen process
  (SIGSTOP, a deadlock that holds the gRPC threads) is noticed without traffic, so the next
  request for its model starts a fresh worker instead of waiting on a dead socket;
- wedged: it answers, holds work, and its step counter has not moved for `wedge_timeout`.

It also tells how long a worker has been leased with no request on it: the pool ends such
leases after `request_timeout` (a gateway killed with -9 never releases its own).
"""

from __future__ import annotations

from dataclasses import dataclass

# Info calls in a row a worker may miss before it is killed. Each waits up to
# processes.INFO_TIMEOUT_S (1 s) and a miss is asked again soon, so this is ~5 s of silence: a
# freeze, not a slow moment (a Submit that tokenizes a 5 MB prompt holds the GIL ~3.5 s here).
MAX_MISSES = 5

UNRESPONSIVE = "unresponsive"
WEDGED = "wedged"


@dataclass
class _State:
    steps: int = -1
    since: float = 0.0   # when `steps` last moved, or when work started
    misses: int = 0      # Info calls missed in a row
    idle_since: float | None = None  # when it was last seen leased with no request on it


class WorkerHealth:
    """Per-worker (by pid) miss counts and progress, and the verdict of each monitor pass."""

    def __init__(self, *, max_misses: int = MAX_MISSES) -> None:
        if max_misses < 1:
            raise ValueError("max_misses must be at least 1")
        self.max_misses = max_misses
        self._workers: dict[int, _State] = {}

    def observe(self, pid: int, *, answered: bool, steps: int, busy: bool, now: float,
                wedge_timeout: float) -> str | None:
        """Record one Info call's outcome; return UNRESPONSIVE or WEDGED when the worker must go.

        `busy`: work is outstanding on it (a lease held and requests running). `wedge_timeout` 0
        turns the wedge check off (never the unresponsive one).
        """
        state = self._workers.get(pid)
        if state is None:
            state = self._workers[pid] = _State(steps=steps if answered else -1, since=now)
        if not answered:
            state.misses += 1
            if state.misses >= self.max_misses:
                return UNRESPONSIVE
        else:
            state.misses = 0
        if not busy or (answered and steps != state.steps):
            state.since = now
            if answered:
                state.steps = steps
            return None
        if wedge_timeout > 0 and now - state.since >= wedge_timeout:
            return WEDGED
        return None

    def leased_without_work(self, pid: int, *, idle: bool, now: float) -> float:
        """Seconds `pid` has held leases with no request on it (`idle`: this pass saw leases and no
        work); 0 once it works or its leases end. Leases that outlive every request by longer than
        a request may take belong to a gateway that died (kill -9) without releasing them."""
        state = self._workers.setdefault(pid, _State(since=now))
        if not idle:
            state.idle_since = None
            return 0.0
        if state.idle_since is None:
            state.idle_since = now
        return now - state.idle_since

    def misses(self, pid: int) -> int:
        """Info calls missed in a row by `pid` (0 when it answered last, or is unknown)."""
        state = self._workers.get(pid)
        return state.misses if state is not None else 0

    def stalled_for(self, pid: int, now: float) -> float:
        state = self._workers.get(pid)
        return now - state.since if state is not None else 0.0

    def steps(self, pid: int) -> int:
        state = self._workers.get(pid)
        return state.steps if state is not None else -1

    def forget(self, pid: int) -> None:
        self._workers.pop(pid, None)
