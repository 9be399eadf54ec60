"""Residency policy: which loaded models are leased, and when an idle one should be unloaded.

A pure state machine (no processes, no asyncio, no wall clock): the caller passes a clock and
asks `expired()` when it wants to reap. Keyed by an opaque model key (the supervisor uses the
manifest digest, so two names for the same weights share one worker).

Keep-alive rules (Ollama's):
- each Acquire sets the model's keep-alive: the request's value, or the default when unset;
  a Release that carries a value overrides it again, so the last request's keep-alive wins; a
  Release of an older lease that arrives after a newer Acquire (the gateway does not wait for its
  releases) leaves the newer request's value alone;
- the timer runs only while the model has no lease: it starts when the last lease ends;
- 0 means "unload as soon as idle"; a negative value means "never expire".

Residency limits (`plan_load`): at most `Limits.max_models` resident (loading ones count) and at
most `Limits.memory_budget` bytes together (each model's measured memory, or until measured the
size it is expected to take: `memory.expected_memory`, its manifest size grown to float32 where a CPU
worker will compute in float32). A load that would exceed them evicts idle models first — shortest keep-alive,
then least recently used — and otherwise must wait. A model too big for the budget on its own
still loads when nothing else is resident (like Ollama), rather than never loading at all.

Load failures (`LoadBackoff`): a model whose worker failed to load is not retried before a delay
that doubles per consecutive failure, so a broken model is not restarted in a tight loop.
"""

from __future__ import annotations

import math
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Callable, Hashable

from mlxserve.services.common.errors import NotFound

Key = Hashable

# Lease ids whose model was forgotten (stopped, crashed) are remembered for a while so that a
# late Release from the gateway is a no-op instead of an error.
ENDED_LEASES_KEPT = 4096


@dataclass(frozen=True)
class Limits:
    """Residency limits; 0 means "no limit" for either."""

    max_models: int = 0
    memory_budget: int = 0


@dataclass
class _Resident:
    keep_alive: float
    leases: set[str] = field(default_factory=set)
    idle_since: float | None = None  # set while no lease is held (and not loading)
    memory: int = 0
    loading: bool = False  # reserved by a load in progress: counts against limits, never evicted
    latest_lease: str | None = None  # the newest Acquire's lease: only its Release may set keep_alive


class Residency:
    """Leases and keep-alive deadlines of resident models, driven by an injectable clock."""

    def __init__(self, clock: Callable[[], float], default_keep_alive: float = 300.0) -> None:
        self._clock = clock
        self.default_keep_alive = default_keep_alive
        self._models: dict[Key, _Resident] = {}
        self._lease_owner: dict[str, Key] = {}
        self._ended: OrderedDict[str, None] = OrderedDict()

    # -- transitions ------------------------------------------------------------------------

    def reserve(self, key: Key, memory: int) -> None:
        """Hold room for a load of `key` (expected to use `memory` bytes) until it is resident."""
        if key in self._models:
            raise ValueError(f"model {key!r} is already resident")
        self._models[key] = _Resident(keep_alive=self.default_keep_alive, memory=memory, loading=True)

    def loaded(self, key: Key, keep_alive: float | None = None) -> None:
        """A reserved load finished; with no lease yet, the model is idle and its timer runs."""
        res = self._models[key]
        res.loading = False
        if keep_alive is not None:
            res.keep_alive = keep_alive
        if not res.leases:
            res.idle_since = self._clock()

    def set_memory(self, key: Key, memory: int) -> None:
        """Record what the model's worker reports using (replaces the manifest-size estimate)."""
        if key in self._models and memory > 0:
            self._models[key].memory = memory

    def acquire(self, key: Key, lease_id: str, keep_alive: float | None = None) -> None:
        """Lease `key` for one request; the model becomes resident if it was not."""
        if lease_id in self._lease_owner:
            raise ValueError(f"lease {lease_id} already held")
        ka = self.default_keep_alive if keep_alive is None else keep_alive
        res = self._models.get(key)
        if res is None:
            res = self._models[key] = _Resident(keep_alive=ka)
        res.keep_alive = ka
        res.latest_lease = lease_id
        res.leases.add(lease_id)
        res.idle_since = None
        res.loading = False
        self._lease_owner[lease_id] = key

    def release(self, lease_id: str, keep_alive: float | None = None) -> Key | None:
        """End a lease and return its model's key; the keep-alive timer starts if it was the last.

        Returns None for a lease whose model was already forgotten (a harmless late release);
        raises NotFound for a lease id never seen.
        """
        key = self._lease_owner.pop(lease_id, None)
        if key is None:
            if lease_id in self._ended:
                return None
            raise NotFound(f"lease '{lease_id}' not found")
        res = self._models[key]
        res.leases.discard(lease_id)
        if keep_alive is not None and res.latest_lease in (lease_id, None):
            res.keep_alive = keep_alive
        if not res.leases:
            res.idle_since = self._clock()
        return key

    def end_leases(self, key: Key) -> list[str]:
        """End every lease of `key` at once (their holder is gone); a later Release of one is a no-op.
        Returns the lease ids; the keep-alive timer starts."""
        res = self._models.get(key)
        if res is None or not res.leases:
            return []
        ended = sorted(res.leases)
        for lease_id in ended:
            self._lease_owner.pop(lease_id, None)
            self._ended[lease_id] = None
        res.leases.clear()
        res.idle_since = self._clock()
        while len(self._ended) > ENDED_LEASES_KEPT:
            self._ended.popitem(last=False)
        return ended

    def forget(self, key: Key) -> list[str]:
        """Drop a model (unloaded, stopped or crashed); returns the leases it still held."""
        res = self._models.pop(key, None)
        if res is None:
            return []
        dropped = sorted(res.leases)
        for lease_id in dropped:
            self._lease_owner.pop(lease_id, None)
            self._ended[lease_id] = None
        while len(self._ended) > ENDED_LEASES_KEPT:
            self._ended.popitem(last=False)
        return dropped

    # -- limits -----------------------------------------------------------------------------

    def plan_load(self, memory: int, limits: Limits) -> list[Key] | None:
        """What a new load of `memory` bytes needs: the idle models to evict first (maybe none),
        in eviction order, or None when it cannot fit without touching a busy model (wait)."""
        count = len(self._models)
        used = sum(r.memory for r in self._models.values())

        def fits() -> bool:
            if count == 0:
                return True  # alone, a model loads even if larger than the budget
            if limits.max_models and count + 1 > limits.max_models:
                return False
            return not limits.memory_budget or used + memory <= limits.memory_budget

        evict: list[Key] = []
        for key in self.eviction_order():
            if fits():
                break
            evict.append(key)
            count -= 1
            used -= self._models[key].memory
        return evict if fits() else None

    def eviction_order(self) -> list[Key]:
        """Idle models, first to evict first: shortest keep-alive (forever last), then least
        recently used."""
        idle = [(k, r) for k, r in self._models.items() if r.idle_since is not None and not r.loading]
        idle.sort(key=lambda kr: (math.inf if kr[1].keep_alive < 0 else kr[1].keep_alive, kr[1].idle_since))
        return [k for k, _ in idle]

    def memory(self, key: Key) -> int:
        return self._models[key].memory

    def used_memory(self) -> int:
        return sum(r.memory for r in self._models.values())

    def is_loading(self, key: Key) -> bool:
        res = self._models.get(key)
        return res is not None and res.loading

    # -- queries ----------------------------------------------------------------------------

    def __contains__(self, key: Key) -> bool:
        return key in self._models

    def keys(self) -> list[Key]:
        return list(self._models)

    def leases(self, key: Key) -> int:
        res = self._models.get(key)
        return len(res.leases) if res else 0

    def keep_alive(self, key: Key) -> float:
        return self._models[key].keep_alive

    def owner(self, lease_id: str) -> Key | None:
        return self._lease_owner.get(lease_id)

    def deadline(self, key: Key) -> float | None:
        """When an idle model expires (math.inf: never); None while it is leased."""
        res = self._models[key]
        if res.idle_since is None:
            return None
        if res.keep_alive < 0:
            return math.inf
        return res.idle_since + res.keep_alive

    def expires_at(self, key: Key) -> float:
        """The expiry to show a user: the deadline when idle, now + keep-alive while leased."""
        res = self._models[key]
        if res.keep_alive < 0:
            return math.inf
        deadline = self.deadline(key)
        return self._clock() + res.keep_alive if deadline is None else deadline

    def expired(self, now: float | None = None) -> list[Key]:
        """Idle models whose keep-alive has run out by `now` (default: the clock)."""
        now = self._clock() if now is None else now
        out = []
        for key in self._models:
            deadline = self.deadline(key)
            if deadline is not None and deadline <= now:
                out.append(key)
        return out

    def next_deadline(self) -> float | None:
        """The earliest finite deadline of an idle model, for a reaper to sleep until."""
        finite = [d for k in self._models if (d := self.deadline(k)) is not None and d != math.inf]
        return min(finite) if finite else None


@dataclass
class _Failures:
    count: int
    last_at: float
    cause: str


class LoadBackoff:
    """Consecutive load failures per model and when the next attempt is allowed."""

    def __init__(self, clock: Callable[[], float], base: float = 1.0, maximum: float = 60.0) -> None:
        self._clock = clock
        self.base = base
        self.maximum = maximum
        self._failures: dict[Key, _Failures] = {}

    def failed(self, key: Key, cause: str) -> float:
        """Record a failed load; returns the delay before the next attempt is allowed."""
        prev = self._failures.get(key)
        count = prev.count + 1 if prev else 1
        self._failures[key] = _Failures(count=count, last_at=self._clock(), cause=cause)
        return self.delay(count)

    def succeeded(self, key: Key) -> None:
        self._failures.pop(key, None)

    def delay(self, count: int) -> float:
        return min(self.maximum, self.base * 2 ** (count - 1)) if count > 0 else 0.0

    def blocked(self, key: Key) -> tuple[float, int, str] | None:
        """(seconds left, failures, last cause) while `key` must not be retried yet, else None."""
        f = self._failures.get(key)
        if f is None:
            return None
        left = f.last_at + self.delay(f.count) - self._clock()
        return (left, f.count, f.cause) if left > 0 else None
