"""The worker pool: one worker per loaded model, leased per request, unloaded when its keep-alive ends.

Plain asyncio domain code over `policy.Residency` (leases, timers, residency limits),
`policy.LoadBackoff` (no tight restart loop for a model that fails to load), a `Launcher` (spawn,
wait until ready, stop, Info; `processes.ProcessLauncher` runs real processes) and a `Clock`; the
gRPC servicer in server.py is a thin layer over it. Tests give it a fake launcher and a fake clock.

A model too large for this host's memory budget, or given a placement, is served by a group of
processes (group.py): the launcher hands back one Worker for the group, and `memory.choose_plan`
decides where each load goes.

A monitor polls each worker's Info: the memory it reports feeds the memory budget; a worker that
misses several Info calls in a row (frozen, busy or idle) is killed as unresponsive, and one
holding work whose step counter has not moved for `wedge_timeout` seconds as wedged (health.py
decides; its leases end; the gateway sees the dead worker and fails its requests).
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import uuid
from dataclasses import dataclass
from typing import Callable, Protocol

from mlxserve.services.common import logs
from mlxserve.services.common.config import Settings
from mlxserve.services.common.errors import Busy, NotFound, Unavailable
from mlxserve.services.common.placement import Placement, placement_or_none
from mlxserve.services.common.times import rfc3339
from mlxserve.v1 import common_pb2, worker_pb2

from .clock import Clock, SystemClock
from .health import UNRESPONSIVE, WorkerHealth
from .memory import (
    Plan, choose_plan, dtype_bytes, expected_memory, group_rank_need, limits_from, local_ranks_memory, mlx_backend_is_cpu,
    shares_endpoints,
)
from .policy import LoadBackoff, Residency
from .store_client import ModelRef

MONITOR_INTERVAL_S = 1.0
# Retry-After for a load refused because every resident model stayed busy past load_timeout.
ROOM_RETRY_AFTER_S = 5.0


class Resolver(Protocol):
    async def resolve(self, name: str, request_id: str | None = None) -> ModelRef: ...


class Worker(Protocol):
    """One started worker, as the pool sees it (a launcher's handle)."""

    name: str
    key: str
    stopping: bool  # set by whoever stops it: its exit is then no crash

    @property
    def pid(self) -> int: ...
    @property
    def address(self) -> str: ...
    @property
    def alive(self) -> bool: ...
    @property
    def exit_code(self) -> int | None: ...
    def stderr_tail(self) -> list[str]: ...
    def failure_cause(self) -> str: ...


class Launcher(Protocol):
    """Starts and stops workers, and asks them how they are."""

    async def spawn(self, ref: ModelRef, *, memory_budget: int) -> Worker:
        """Start `ref`'s worker, telling it the bytes it may hold (0: no budget)."""

    async def preflight(self, placement: Placement) -> None:
        """Raise, naming the host, when the group's hosts cannot run it (unreachable, other versions)."""

    async def spawn_group(self, ref: ModelRef, placement: Placement, *, rank_budget: int) -> Worker:
        """Start `ref` on a group of ranks (one Worker: rank 0's address, alive while all are);
        each rank may hold `rank_budget` bytes (0: no budget). `preflight` has passed."""

    async def wait_ready(self, worker: Worker, timeout: float) -> None:
        """Return once it answers Ping; Unavailable if it exits first, Timeout (killed) if late."""

    async def stop(self, worker: Worker, grace: float) -> None:
        """SIGTERM, then SIGKILL after `grace` seconds; returns once it has exited."""

    def kill(self, worker: Worker) -> None:
        """SIGKILL now (a wedged worker would not honour SIGTERM)."""

    async def ping(self, worker: Worker) -> bool: ...

    async def info(self, worker: Worker) -> worker_pb2.InfoResponse | None:
        """Its Info (memory, progress), or None when it does not answer."""

    def watch(self, worker: Worker, on_exit: Callable[[Worker], None]) -> asyncio.Task:
        """Call `on_exit(worker)` once it exits, however it exits."""


@dataclass(frozen=True)
class Lease:
    lease_id: str
    worker_address: str
    model: str
    digest: str
    load_duration_s: float
    capabilities: tuple[str, ...]


@dataclass(frozen=True)
class LoadedInfo:
    """One running worker as `ps` shows it."""

    name: str
    digest: str
    size: int
    size_vram: int
    memory_bytes: int
    expires_at: str
    details: common_pb2.ModelDetails | None
    pid: int
    in_flight: int
    context_length: int
    blas: str = ""            # the worker's confirmed BLAS (CPU backend only)
    blas_gflops: float = 0.0  # ... and its float32 matmul rate
    compute_dtype: str = ""   # how the weights are computed
    ranks: tuple[common_pb2.RankInfo, ...] = ()  # a group's ranks, rank 0 first (empty: one process)
    strategy: str = ""        # a group's "pipeline" or "tensor"


@dataclass
class _Loaded:
    ref: ModelRef
    worker: Worker


@dataclass
class _Load:
    """One load in progress and the requests waiting for it."""

    task: asyncio.Task[_Loaded]
    waiters: int = 0
    keep_alive: float | None = None  # set when a waiter asked for a keep-alive: load even if all leave


class WorkerPool:
    """Acquire/release/list/stop over worker processes, one per model digest."""

    def __init__(
        self,
        settings: Settings,
        resolver: Resolver,
        launcher: Launcher,
        *,
        stop_grace: float = 3.0,
        clock: Clock | None = None,
        cpu_backend: bool | None = None,
    ) -> None:
        self.settings = settings
        self.resolver = resolver
        self.launcher = launcher
        self.clock = clock or SystemClock()
        self.residency = Residency(self.clock.now, default_keep_alive=settings.keep_alive)
        self.limits = limits_from(settings)
        # Whether workers compute on the CPU: it decides the float32 estimate.
        self.cpu_backend = mlx_backend_is_cpu() if cpu_backend is None else cpu_backend
        self.backoff = LoadBackoff(self.clock.now, base=settings.restart_backoff, maximum=settings.restart_backoff_max)
        self._stop_grace = stop_grace
        # Groups from the config (validated when the settings were loaded).
        self._distributed = placement_or_none(settings.distributed, source="config: distributed")
        self._placements = {name: placement_or_none(table, source=f"config: placements.{name}")
                            for name, table in settings.placements.items()}
        self._groups: dict[str, Placement] = {}  # the group of each resident (or loading) model served by one
        self._loaded: dict[str, _Loaded] = {}
        self._loading: dict[str, _Load] = {}
        self._background: set[asyncio.Task] = set()
        self._wake = asyncio.Event()
        self._room = asyncio.Event()  # replaced on each change that may free room for a load
        self.health = WorkerHealth()  # missed Info calls and step progress, by worker pid
        self._reaper: asyncio.Task | None = None
        self._monitor: asyncio.Task | None = None
        self._closed = False
        self.log = logs.get_logger(component="pool")

    # -- lifecycle ------------------------------------------------------------------------

    def start(self) -> None:
        """Start the keep-alive reaper and the worker monitor (call from a running event loop)."""
        loop = asyncio.get_running_loop()
        if self._reaper is None:
            self._reaper = loop.create_task(self._reap_forever(), name="reaper")
        if self._monitor is None:
            self._monitor = loop.create_task(self._monitor_forever(), name="monitor")

    async def close(self) -> None:
        """Stop every worker (SIGTERM, SIGKILL after the grace period), the reaper and the monitor."""
        self._closed = True
        for task in (self._reaper, self._monitor):
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        tasks = [load.task for load in self._loading.values()]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        loaded = [self._detach(k) for k in list(self._loaded)]
        await asyncio.gather(*(self.launcher.stop(l.worker, self._stop_grace) for l in loaded if l), return_exceptions=True)
        await asyncio.gather(*self._background, return_exceptions=True)

    # -- the verbs ------------------------------------------------------------------------

    async def acquire(self, model: str, request_id: str = "", keep_alive_s: float | None = None) -> Lease:
        """Lease a running worker for `model`, starting one (once, however many wait) if needed."""
        if self._closed:
            raise Unavailable("the supervisor is shutting down")
        ref = await self.resolver.resolve(model, request_id or None)
        key = ref.digest
        started = self.clock.now()
        loaded = self._loaded.get(key)
        if loaded is not None and not loaded.worker.alive:
            self._forget_dead(loaded.worker)  # the exit watcher has not run yet
            loaded = None
        if loaded is not None and self.health.misses(loaded.worker.pid) and not await self.launcher.ping(loaded.worker):
            self._kill(loaded, UNRESPONSIVE)  # it missed the monitor's last Info too: start a fresh one now
            loaded = None
        waited = loaded is None
        if loaded is None:
            loaded = await self._wait_for_load(ref, keep_alive_s)
        load_duration = self.clock.now() - started if waited else 0.0
        if self._loaded.get(key) is not loaded:
            raise Unavailable(f"worker for {ref.name} exited right after starting: {loaded.worker.failure_cause()}")
        lease_id = uuid.uuid4().hex
        self.residency.acquire(key, lease_id, keep_alive_s)
        self.log.info("lease_acquired", model=ref.name, lease_id=lease_id, request_id=request_id, load_duration_s=round(load_duration, 3))
        return Lease(
            lease_id=lease_id, worker_address=loaded.worker.address, model=ref.name, digest=ref.digest,
            load_duration_s=load_duration, capabilities=ref.capabilities,
        )

    async def release(self, lease_id: str, keep_alive_s: float | None = None) -> None:
        """End a lease; the model's keep-alive timer starts when it has no lease left."""
        key = self.residency.release(lease_id, keep_alive_s)
        loaded = self._loaded.get(key) if key is not None else None
        # request_id comes from the caller's metadata (bound by rpc_method).
        self.log.info("lease_released", lease_id=lease_id, model=loaded.ref.name if loaded else None,
                      leases_left=self.residency.leases(key) if key is not None else 0)
        if key is not None and self.residency.leases(key) == 0:
            self._wake.set()
            self._room_changed()

    async def list_loaded(self) -> list[LoadedInfo]:
        """Every running worker, with memory figures from its Info RPC (best-effort)."""
        entries = [l for l in self._loaded.values() if l.worker.alive]
        infos = await asyncio.gather(*(self.launcher.info(l.worker) for l in entries))
        now, wall_now = self.clock.now(), self.clock.wall()
        out = []
        for loaded, info in zip(entries, infos):
            key = loaded.ref.digest
            if key in self.residency:
                expires = self.residency.expires_at(key)
                # A gateway shares one lease among its requests for a model: the worker counts them.
                in_flight = max(self.residency.leases(key), info.running + info.waiting if info is not None else 0)
            else:
                expires, in_flight = now + self.settings.keep_alive, 0
            wall = math.inf if math.isinf(expires) else wall_now + (expires - now)
            on_gpu = info is not None and info.device not in ("", "cpu")
            out.append(LoadedInfo(
                name=loaded.ref.name,
                digest=loaded.ref.digest,
                size=loaded.ref.size,
                size_vram=(info.active_memory or info.memory_bytes) if on_gpu else 0,
                memory_bytes=info.memory_bytes if info is not None else 0,
                expires_at=rfc3339(wall, now=wall_now),
                details=loaded.ref.details,
                pid=loaded.worker.pid,
                in_flight=in_flight,
                context_length=(info.context_length if info is not None and info.context_length else loaded.ref.context_length),
                blas=info.blas if info is not None else "",
                blas_gflops=info.blas_gflops if info is not None else 0.0,
                compute_dtype=info.compute_dtype if info is not None else "",
                ranks=tuple(info.ranks) if info is not None else (),
                strategy=info.strategy if info is not None else "",
            ))
        return sorted(out, key=lambda i: i.name)

    async def stop_model(self, model: str) -> None:
        """Kill the model's worker now (in-flight requests fail) and forget it."""
        key = self._find_loaded(model)
        if key is None:
            with contextlib.suppress(NotFound, Unavailable):
                ref = await self.resolver.resolve(model)
                key = ref.digest if ref.digest in self._loaded else None
        if key is None:
            raise NotFound(f"model '{model}' is not loaded")
        loaded = self._detach(key)
        if loaded is not None:
            self.log.info("worker_stopping", model=loaded.ref.name, pid=loaded.worker.pid, reason="stop")
            await self.launcher.stop(loaded.worker, self._stop_grace)

    def loaded_names(self) -> list[str]:
        return sorted(l.ref.name for l in self._loaded.values())

    # -- internals ------------------------------------------------------------------------

    def _find_loaded(self, model: str) -> str | None:
        wanted = model.lower()
        for key, loaded in self._loaded.items():
            name = loaded.ref.name.lower()
            if wanted in (name, key) or (":" not in wanted and name == f"{wanted}:latest"):
                return key
            if name.endswith("/" + wanted) or name.endswith("/" + wanted + ":latest"):
                return key
        return None

    async def _wait_for_load(self, ref: ModelRef, keep_alive_s: float | None) -> _Loaded:
        """Join the model's load (starting it unless it failed lately) and wait for it.

        The load is shared: a waiter that gives up does not cancel it for the others, but when
        the last waiter leaves and none asked for a keep-alive, the load is abandoned (no worker
        loading for nobody).
        """
        key = ref.digest
        load = self._loading.get(key)
        if load is None:
            blocked = self.backoff.blocked(key)
            if blocked is not None:
                left, failures, cause = blocked
                raise Unavailable(
                    f"worker for {ref.name} failed to load {failures} time(s) in a row; not retrying for "
                    f"another {left:.1f}s; last error: {cause}", retry_after=math.ceil(left))
            task = asyncio.get_running_loop().create_task(self._load(ref), name=f"load-{ref.name}")
            load = self._loading[key] = _Load(task=task)
            task.add_done_callback(lambda t, k=key, l=load: self._load_done(k, l))
        if keep_alive_s is not None and keep_alive_s != 0:
            load.keep_alive = keep_alive_s
        load.waiters += 1
        try:
            # Shielded: a caller that gives up must not cancel a load others are waiting for.
            return await asyncio.shield(load.task)
        except asyncio.CancelledError:
            load.waiters -= 1
            self._waiter_left(key, load)
            raise
        except BaseException:
            load.waiters -= 1
            raise
        else:
            load.waiters -= 1

    def _waiter_left(self, key: str, load: _Load) -> None:
        if load.waiters > 0:
            return
        if not load.task.done():
            if load.keep_alive is None:
                self.log.info("load_abandoned", digest=key, reason="every waiting request went away")
                load.task.cancel()
        elif not load.task.cancelled() and load.task.exception() is None and self.residency.is_loading(key):
            self.residency.loaded(key, load.keep_alive)  # loaded for nobody: idle from now on
            self._wake.set()

    def plan(self, ref: ModelRef) -> Plan:
        """One process or a group for `ref` (memory.choose_plan); InvalidArgument when neither fits."""
        own = ref.placement or self._placements.get(ref.name)
        if own is None and ref.name.endswith(":latest"):
            own = self._placements.get(ref.name.removesuffix(":latest"))

        def per_rank(group: Placement) -> int:
            return group_rank_need(ref.size, group.size, cpu_float32=self.settings.cpu_float32, cpu_backend=self.cpu_backend,
                                   rank_budget=group.rank_memory or self.limits.memory_budget,
                                   bits=ref.quantization_bits, dtype_bytes=dtype_bytes(ref.dtype))

        return choose_plan(ref.name, single_need=self.expected_memory(ref), host_budget=self.limits.memory_budget,
                           own=own, distributed=self._distributed, per_rank_need=per_rank)

    async def _admit(self, ref: ModelRef, needed: int, group: Placement | None = None) -> int:
        """Reserve room for `ref` under the residency limits, evicting idle models if needed, and
        return the bytes its worker may use (0: no budget). A group also needs its ring ports: an
        idle model whose group listens there is evicted, a busy one waited for.

        The room reserved is what the worker is expected to hold (`expected_memory`: float32 on
        the CPU backend can be ~8x the manifest size), until its measured memory replaces it.
        Waits (up to load_timeout) while busy models hold the room, then raises Busy.
        """
        deadline = self.clock.now() + self.settings.load_timeout
        logged = False
        while True:
            room = self._room
            holders = [k for k, p in self._groups.items() if group is not None and k != ref.digest and shares_endpoints(p, group)]
            evict = self.residency.plan_load(needed, self.limits)
            if evict is not None and set(holders) <= set(self.residency.eviction_order()):
                evict = list(dict.fromkeys([*holders, *evict]))
                break
            if not logged:
                self.log.info("load_waiting_for_room", model=ref.name, loaded=self.loaded_names(),
                              max_loaded_models=self.limits.max_models, memory_budget=self.limits.memory_budget,
                              memory_used=self.residency.used_memory(), memory_needed=needed)
                logged = True
            remaining = deadline - self.clock.now()
            if remaining <= 0:
                reason = (f"{self._names(holders)}'s group listens on the ports its group needs" if holders
                          else self._full_reason(needed))
                raise Busy(f"cannot load {ref.name}: {reason} and every loaded model stayed busy "
                           f"for {self.settings.load_timeout:g}s", retry_after=ROOM_RETRY_AFTER_S)
            await self.clock.wait(room, remaining)
        self.residency.reserve(ref.digest, needed)
        if group is not None:
            self._groups[ref.digest] = group
        evicted = [l for l in (self._detach(k) for k in evict) if l is not None]
        for loaded in evicted:
            self.log.info("worker_stopping", model=loaded.ref.name, pid=loaded.worker.pid, reason="evicted",
                          for_model=ref.name)
        # Wait for the evicted workers to exit: their memory is free only then.
        await asyncio.gather(*(self.launcher.stop(l.worker, self._stop_grace) for l in evicted), return_exceptions=True)
        if not self.limits.memory_budget:
            return 0
        # All the budget the other residents leave (at least the reservation: a model alone may exceed it).
        return max(needed, self.limits.memory_budget - (self.residency.used_memory() - needed))

    def expected_memory(self, ref: ModelRef) -> int:
        """Bytes `ref`'s worker is expected to hold once loaded (see policy.expected_memory)."""
        return expected_memory(ref.size, cpu_float32=self.settings.cpu_float32, cpu_backend=self.cpu_backend,
                               budget=self.limits.memory_budget, bits=ref.quantization_bits,
                               dtype_bytes=dtype_bytes(ref.dtype))

    def _names(self, keys: list[str]) -> str:
        return ", ".join(self._loaded[k].ref.name if k in self._loaded else k[:12] for k in keys)

    def _full_reason(self, needed: int) -> str:
        if self.limits.max_models and len(self.residency.keys()) >= self.limits.max_models:
            return f"max_loaded_models={self.limits.max_models} models are loaded"
        return (f"it needs {needed} bytes and {self.residency.used_memory()} of the "
                f"{self.limits.memory_budget}-byte memory budget are in use")

    def _room_changed(self) -> None:
        """Wake loads waiting for room (a model went idle or away)."""
        self._room.set()
        self._room = asyncio.Event()

    async def _load(self, ref: ModelRef) -> _Loaded:
        worker: Worker | None = None
        plan = self.plan(ref)  # a refusal (fits nowhere) is no load failure: it is not retried later
        try:
            if plan.placement is not None:
                await self.launcher.preflight(plan.placement)  # before evicting anyone for a group that cannot start
            budget = await self._admit(ref, plan.reserve, plan.placement)
            spawned = self.clock.now()
            if plan.placement is None:
                worker = await self.launcher.spawn(ref, memory_budget=budget)
            else:
                self.log.info("group_starting", model=ref.name, placement=plan.placement.describe(),
                              per_rank_bytes=plan.per_rank, rank_budget=plan.rank_budget)
                worker = await self.launcher.spawn_group(ref, plan.placement, rank_budget=plan.rank_budget)
            await self.launcher.wait_ready(worker, self.settings.load_timeout)
        except BaseException as e:
            self.residency.forget(ref.digest)
            self._groups.pop(ref.digest, None)
            self._room_changed()
            if worker is not None and worker.alive:
                await self.launcher.stop(worker, self._stop_grace)
            if isinstance(e, (asyncio.CancelledError, Busy)):
                raise  # abandoned, or no room: not the model's fault
            delay = self.backoff.failed(ref.digest, str(e))
            self.log.error("worker_start_failed", model=ref.name, pid=worker.pid if worker else None,
                           exit_code=worker.exit_code if worker else None, error=str(e),
                           stderr_tail=worker.stderr_tail() if worker else [], retry_in_s=delay)
            raise
        self.backoff.succeeded(ref.digest)
        loaded = _Loaded(ref=ref, worker=worker)
        self._loaded[ref.digest] = loaded
        self._track(self.launcher.watch(worker, self._forget_dead))
        # The real resident size replaces the estimate at once, not at the monitor's next pass.
        info = await self.launcher.info(worker)
        if info is not None:
            self.residency.set_memory(ref.digest, local_ranks_memory(info))
        self.log.info("worker_ready", model=ref.name, pid=worker.pid, load_s=round(self.clock.now() - spawned, 3),
                      memory_bytes=info.memory_bytes if info is not None else None,
                      compute_dtype=info.compute_dtype if info is not None else None)
        return loaded

    def _load_done(self, key: str, load: _Load) -> None:
        if self._loading.get(key) is load:
            del self._loading[key]
        task = load.task
        if task.cancelled():
            return
        if task.exception() is None and load.waiters == 0 and self.residency.is_loading(key):
            # Every waiter left but a keep-alive asked for the load: resident and idle from now.
            self.residency.loaded(key, load.keep_alive)
            self._wake.set()

    def _forget_dead(self, worker: Worker) -> None:
        """Exit watcher: forget a worker that exited, so the next Acquire starts a fresh one."""
        crashed = not worker.stopping
        loaded = self._loaded.get(worker.key)
        if loaded is not None and loaded.worker is worker:
            self._detach(worker.key)
        if crashed:
            self.log.error("worker_crashed", model=worker.name, pid=worker.pid, exit_code=worker.exit_code,
                           stderr_tail=worker.stderr_tail())
            worker.stopping = True  # handled: log it once

    def _detach(self, key: str) -> _Loaded | None:
        loaded = self._loaded.pop(key, None)
        if loaded is not None:
            self.health.forget(loaded.worker.pid)
        dropped = self.residency.forget(key)
        self._groups.pop(key, None)
        self._room_changed()
        if dropped:
            self.log.warning("leases_dropped", digest=key, leases=len(dropped))
        return loaded

    async def _reap_forever(self) -> None:
        # Not `while True`: Python 3.11's wait_for swallows a cancel that lands as the event is set.
        while not self._closed:
            self._wake.clear()
            for key in self.residency.expired():
                loaded = self._detach(key)
                if loaded is not None:
                    self.log.info("worker_stopping", model=loaded.ref.name, pid=loaded.worker.pid, reason="keep_alive expired")
                    self._track(asyncio.get_running_loop().create_task(self.launcher.stop(loaded.worker, self._stop_grace)))
            deadline = self.residency.next_deadline()
            # Wake at the next deadline, on a release, and at least once a minute (clock drift).
            timeout = 60.0 if deadline is None else min(60.0, max(0.0, deadline - self.clock.now()))
            await self.clock.wait(self._wake, timeout)

    async def _monitor_forever(self) -> None:
        wedge = self.settings.wedge_timeout
        interval = min(MONITOR_INTERVAL_S, wedge / 4) if wedge > 0 else MONITOR_INTERVAL_S
        # Checks _closed too: a gRPC call cancelled mid-flight can surface as an RpcError (caught
        # in the launcher's info) rather than CancelledError, which would otherwise keep this loop going.
        while not self._closed:
            # A worker that just missed an Info call is asked again soon (its Info waited already).
            missed = any(self.health.misses(l.worker.pid) for l in self._loaded.values())
            await self.clock.sleep(interval / 10 if missed else interval)
            with contextlib.suppress(Exception):
                await self.check_workers()

    async def check_workers(self) -> None:
        """One monitor pass: record each worker's memory; kill one that stopped answering or is wedged."""
        entries = [l for l in self._loaded.values() if l.worker.alive]
        infos = await asyncio.gather(*(self.launcher.info(l.worker) for l in entries))
        now = self.clock.now()
        for loaded, info in zip(entries, infos):
            key, worker = loaded.ref.digest, loaded.worker
            if self._loaded.get(key) is not loaded:
                continue  # gone while we asked
            if info is not None:
                self.residency.set_memory(key, local_ranks_memory(info))
            # Work outstanding: a lease is held and the worker has requests (or does not answer).
            busy = self.residency.leases(key) > 0 and (info is None or (info.running + info.waiting > 0 and info.kind != "embed"))
            verdict = self.health.observe(worker.pid, answered=info is not None, steps=info.steps if info is not None else -1,
                                          busy=busy, now=now, wedge_timeout=self.settings.wedge_timeout)
            if verdict is not None:
                self._kill(loaded, verdict)
                continue
            idle = info is not None and self.residency.leases(key) > 0 and info.running + info.waiting == 0
            if self.health.leased_without_work(worker.pid, idle=idle, now=now) >= self.settings.request_timeout:
                ended = self.residency.end_leases(key)
                self.log.warning("stale_leases_ended", model=loaded.ref.name, leases=len(ended),
                                 idle_s=self.settings.request_timeout)
                self._wake.set()
                self._room_changed()

    def _kill(self, loaded: _Loaded, verdict: str) -> None:
        """SIGKILL a worker found unresponsive or wedged (it would not honour SIGTERM) and forget it."""
        worker, now = loaded.worker, self.clock.now()
        self.log.error(f"worker_{verdict}", model=loaded.ref.name, pid=worker.pid, missed_info=self.health.misses(worker.pid),
                       stalled_s=round(self.health.stalled_for(worker.pid, now), 3), steps=self.health.steps(worker.pid),
                       leases=self.residency.leases(loaded.ref.digest), stderr_tail=worker.stderr_tail())
        self._detach(loaded.ref.digest)
        self.launcher.kill(worker)

    def _track(self, task: asyncio.Task) -> None:
        self._background.add(task)
        task.add_done_callback(self._background.discard)
