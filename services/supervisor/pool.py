"""The worker pool: one worker per loaded model, leased per request, unloaded when its keep-alive ends.

Plain asyncio domain code over `policy.Residency` (leases, timers) and `processes` (spawn, watch,
kill); the gRPC servicer in server.py is a thin layer over it, and tests drive it directly.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import math
import os
import time
import uuid
from dataclasses import dataclass
from typing import Callable, Protocol, Sequence

import grpc

from mlxserve.services.common import logs, rpc
from mlxserve.services.common.config import Settings
from mlxserve.services.common.errors import NotFound, Unavailable
from mlxserve.v1 import common_pb2, worker_pb2, worker_pb2_grpc

from .policy import Residency
from .processes import WorkerProcess, log_path_for, new_socket_path, spawn_worker, watch_exit, worker_command
from .store_client import ModelRef

# Ollama shows a model kept forever as expiring ~292 years from now (max int64 nanoseconds).
FOREVER = dt.timedelta(seconds=2**63 / 1e9)
INFO_TIMEOUT_S = 1.0


class Resolver(Protocol):
    async def resolve(self, name: str, request_id: str | None = None) -> ModelRef: ...
    async def details(self, name: str) -> common_pb2.ModelDetails | None: ...


CommandFor = Callable[[ModelRef, "os.PathLike[str]"], Sequence[str]]


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


@dataclass
class _Loaded:
    ref: ModelRef
    worker: WorkerProcess


def rfc3339(ts: float) -> str:
    """Wall-clock seconds (or math.inf: forever) as RFC 3339 in UTC."""
    now = dt.datetime.now(dt.timezone.utc)
    when = now + FOREVER if math.isinf(ts) else dt.datetime.fromtimestamp(ts, dt.timezone.utc)
    return when.isoformat(timespec="seconds").replace("+00:00", "Z")


class WorkerPool:
    """Acquire/release/list/stop over worker processes, one per model digest."""

    def __init__(
        self,
        settings: Settings,
        resolver: Resolver,
        *,
        command_for: CommandFor | None = None,
        stop_grace: float = 3.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.settings = settings
        self.resolver = resolver
        self.residency = Residency(clock, default_keep_alive=settings.keep_alive)
        self._clock = clock
        self._command_for = command_for or (lambda ref, sock: worker_command(ref.view_path, sock, ref.name))
        self._stop_grace = stop_grace
        self._loaded: dict[str, _Loaded] = {}
        self._loading: dict[str, asyncio.Task[_Loaded]] = {}
        self._background: set[asyncio.Task] = set()
        self._wake = asyncio.Event()
        self._reaper: asyncio.Task | None = None
        self._closed = False
        self.log = logs.get_logger(component="pool")

    # -- lifecycle ------------------------------------------------------------------------

    def start(self) -> None:
        """Start the keep-alive reaper (call from a running event loop)."""
        if self._reaper is None:
            self._reaper = asyncio.get_running_loop().create_task(self._reap_forever(), name="reaper")

    async def close(self) -> None:
        """Stop every worker (SIGTERM, SIGKILL after the grace period) and the reaper."""
        self._closed = True
        if self._reaper is not None:
            self._reaper.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._reaper
        for task in list(self._loading.values()):
            task.cancel()
        await asyncio.gather(*self._loading.values(), return_exceptions=True)
        loaded = [self._detach(k) for k in list(self._loaded)]
        await asyncio.gather(*(l.worker.stop(self._stop_grace) for l in loaded if l), return_exceptions=True)
        await asyncio.gather(*self._background, return_exceptions=True)

    # -- the verbs ------------------------------------------------------------------------

    async def acquire(self, model: str, request_id: str = "", keep_alive_s: float | None = None) -> Lease:
        """Lease a running worker for `model`, starting one (once, however many wait) if needed."""
        if self._closed:
            raise Unavailable("the supervisor is shutting down")
        ref = await self.resolver.resolve(model, request_id or None)
        key = ref.digest
        started = time.monotonic()
        loaded = self._loaded.get(key)
        if loaded is not None and not loaded.worker.alive:
            self._forget_dead(loaded.worker)  # the exit watcher has not run yet
            loaded = None
        waited = loaded is None
        if loaded is None:
            task = self._loading.get(key)
            if task is None:
                task = asyncio.get_running_loop().create_task(self._load(ref), name=f"load-{ref.name}")
                self._loading[key] = task
                task.add_done_callback(lambda t, k=key: self._load_done(k, t))
            # Shielded: a caller that gives up must not cancel a load others are waiting for.
            loaded = await asyncio.shield(task)
        load_duration = time.monotonic() - started if waited else 0.0
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
        if key is not None and self.residency.leases(key) == 0:
            self._wake.set()

    async def list_loaded(self) -> list[LoadedInfo]:
        """Every running worker, with memory figures from its Info RPC (best-effort)."""
        entries = [l for l in self._loaded.values() if l.worker.alive]
        infos = await asyncio.gather(*(self._info(l.worker) for l in entries))
        out = []
        for loaded, info in zip(entries, infos):
            key = loaded.ref.digest
            if key in self.residency:
                expires = self.residency.expires_at(key)
                in_flight = self.residency.leases(key)
            else:
                expires, in_flight = self._clock() + self.settings.keep_alive, 0
            wall = math.inf if math.isinf(expires) else time.time() + (expires - self._clock())
            on_gpu = info is not None and info.device not in ("", "cpu")
            out.append(LoadedInfo(
                name=loaded.ref.name,
                digest=loaded.ref.digest,
                size=loaded.ref.size,
                size_vram=(info.active_memory or info.memory_bytes) if on_gpu else 0,
                memory_bytes=info.memory_bytes if info is not None else 0,
                expires_at=rfc3339(wall),
                details=loaded.ref.details,
                pid=loaded.worker.pid,
                in_flight=in_flight,
                context_length=(info.context_length if info is not None and info.context_length else loaded.ref.context_length),
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
            await loaded.worker.stop(self._stop_grace)

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

    async def _load(self, ref: ModelRef) -> _Loaded:
        socket_path = new_socket_path(self.settings.run_dir)
        log_path = log_path_for(self.settings.logs_dir, ref.name)
        env = {**os.environ, **self.settings.to_env(), "MLXSERVE_PARENT_PID": str(os.getpid())}
        self.log.info("worker_starting", model=ref.name, digest=ref.digest, socket=str(socket_path), log=str(log_path))
        worker = await spawn_worker(
            self._command_for(ref, socket_path), name=ref.name, key=ref.digest,
            socket_path=socket_path, log_path=log_path, env=env,
        )
        try:
            await worker.wait_ready(self.settings.load_timeout)
        except BaseException as e:
            if worker.alive:
                await worker.stop(self._stop_grace)
            self.log.error("worker_start_failed", model=ref.name, pid=worker.pid, exit_code=worker.process.returncode,
                           error=str(e), stderr_tail=worker.stderr_tail())
            raise
        if ref.details is None:
            details = await self.resolver.details(ref.name)
            if details is not None:
                ref = ModelRef(**{**ref.__dict__, "details": details})
        loaded = _Loaded(ref=ref, worker=worker)
        self._loaded[ref.digest] = loaded
        self._track(watch_exit(worker, self._forget_dead))
        self.log.info("worker_ready", model=ref.name, pid=worker.pid, load_s=round(time.monotonic() - worker.started_at, 3))
        return loaded

    def _load_done(self, key: str, task: asyncio.Task) -> None:
        if self._loading.get(key) is task:
            del self._loading[key]
        if not task.cancelled():
            task.exception()  # retrieved here too: every waiter may have given up

    def _forget_dead(self, worker: WorkerProcess) -> None:
        """Exit watcher: forget a worker that exited, so the next Acquire starts a fresh one."""
        crashed = not worker.stopping
        loaded = self._loaded.get(worker.key)
        if loaded is not None and loaded.worker is worker:
            self._detach(worker.key)
        with contextlib.suppress(FileNotFoundError):
            worker.socket_path.unlink()
        if crashed:
            self.log.error("worker_crashed", model=worker.name, pid=worker.pid, exit_code=worker.process.returncode,
                           stderr_tail=worker.stderr_tail())
            worker.stopping = True  # handled: log it once

    def _detach(self, key: str) -> _Loaded | None:
        loaded = self._loaded.pop(key, None)
        dropped = self.residency.forget(key)
        if dropped:
            self.log.warning("leases_dropped", digest=key, leases=len(dropped))
        return loaded

    async def _reap_forever(self) -> None:
        while True:
            self._wake.clear()
            for key in self.residency.expired():
                loaded = self._detach(key)
                if loaded is not None:
                    self.log.info("worker_stopping", model=loaded.ref.name, pid=loaded.worker.pid, reason="keep_alive expired")
                    self._track(asyncio.get_running_loop().create_task(loaded.worker.stop(self._stop_grace)))
            deadline = self.residency.next_deadline()
            # Wake at the next deadline, on a release, and at least once a minute (clock drift).
            timeout = 60.0 if deadline is None else min(60.0, max(0.0, deadline - self._clock()))
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self._wake.wait(), timeout=timeout)

    def _track(self, task: asyncio.Task) -> None:
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    async def _info(self, worker: WorkerProcess) -> worker_pb2.InfoResponse | None:
        channel = rpc.aio_channel(worker.address)
        try:
            return await worker_pb2_grpc.WorkerStub(channel).Info(worker_pb2.InfoRequest(), timeout=INFO_TIMEOUT_S)
        except grpc.RpcError:
            return None
        finally:
            await channel.close()
