"""The Supervisor gRPC service: a thin servicer over `WorkerPool`, served on a Unix socket."""

from __future__ import annotations

import asyncio
import contextlib
import signal
from pathlib import Path

import grpc

from mlxserve.services.common import logs, rpc
from mlxserve.services.common.config import Settings
from mlxserve.services.common.errors import InvalidArgument
from mlxserve.services.store.changes import marker_path
from mlxserve.v1 import supervisor_pb2, supervisor_pb2_grpc

from .memory import mlx_backend_is_cpu
from .pool import LoadedInfo, WorkerPool
from .group import ProcessGroupLauncher
from .processes import remove_stale_sockets
from .remote_files import ensure_model_on
from .store_client import StoreResolver


def _optional(msg, field: str) -> float | None:
    return getattr(msg, field) if msg.HasField(field) else None


class SupervisorServicer(supervisor_pb2_grpc.SupervisorServicer):
    def __init__(self, pool: WorkerPool) -> None:
        self.pool = pool

    @rpc.rpc_method
    async def Ping(self, request, context):
        return rpc.ping_response("supervisor")

    @rpc.rpc_method
    async def Acquire(self, request: supervisor_pb2.AcquireRequest, context) -> supervisor_pb2.AcquireResponse:
        if not request.model:
            raise InvalidArgument("model is required")
        # The field, else the metadata's id: either way the lease's log lines name the request.
        request_id = request.request_id or logs.current_request_id() or ""
        lease = await self.pool.acquire(request.model, request_id, _optional(request, "keep_alive_s"))
        return supervisor_pb2.AcquireResponse(
            lease_id=lease.lease_id, worker_address=lease.worker_address, model=lease.model,
            digest=lease.digest, load_duration_s=lease.load_duration_s, capabilities=list(lease.capabilities),
        )

    @rpc.rpc_method
    async def Release(self, request: supervisor_pb2.ReleaseRequest, context) -> supervisor_pb2.ReleaseResponse:
        if not request.lease_id:
            raise InvalidArgument("lease_id is required")
        await self.pool.release(request.lease_id, _optional(request, "keep_alive_s"))
        return supervisor_pb2.ReleaseResponse()

    @rpc.rpc_method
    async def ListLoaded(self, request, context) -> supervisor_pb2.ListLoadedResponse:
        return supervisor_pb2.ListLoadedResponse(models=[_loaded_pb(i) for i in await self.pool.list_loaded()])

    @rpc.rpc_method
    async def Stop(self, request: supervisor_pb2.StopRequest, context) -> supervisor_pb2.StopResponse:
        if not request.model:
            raise InvalidArgument("model is required")
        await self.pool.stop_model(request.model)
        return supervisor_pb2.StopResponse(stopped=True)


def _loaded_pb(info: LoadedInfo) -> supervisor_pb2.LoadedModel:
    msg = supervisor_pb2.LoadedModel(
        name=info.name, model=info.name, digest=info.digest, size=info.size, size_vram=info.size_vram,
        memory_bytes=info.memory_bytes, expires_at=info.expires_at, pid=info.pid,
        in_flight=info.in_flight, context_length=info.context_length,
        blas=info.blas, blas_gflops=info.blas_gflops, compute_dtype=info.compute_dtype,
        ranks=info.ranks, strategy=info.strategy,
    )
    if info.details is not None:
        msg.details.CopyFrom(info.details)
    return msg


async def serve(settings: Settings, pool: WorkerPool | None = None, stop: asyncio.Event | None = None) -> None:
    """Serve the Supervisor on settings.supervisor_socket until SIGTERM/SIGINT (or `stop` is set),
    then stop every worker and remove the socket."""
    log = logs.get_logger()
    resolver = StoreResolver(settings.store_target, changes=marker_path(settings.run_dir))
    if pool is None:
        cpu_backend = mlx_backend_is_cpu()
        launcher = ProcessGroupLauncher(settings, cpu_backend=cpu_backend, remote_model=ensure_model_on)
        pool = WorkerPool(settings, resolver, launcher, cpu_backend=cpu_backend)
    stop = stop or asyncio.Event()
    for path in remove_stale_sockets(settings.run_dir):
        log.info("stale_socket_removed", path=str(path))

    sock: Path = settings.supervisor_socket
    rpc.prepare_socket_path(sock)
    server = grpc.aio.server(options=rpc.CHANNEL_OPTIONS)
    supervisor_pb2_grpc.add_SupervisorServicer_to_server(SupervisorServicer(pool), server)
    server.add_insecure_port(rpc.unix_target(sock))
    await server.start()
    rpc.secure_socket(sock)
    pool.start()

    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.add_signal_handler(sig, stop.set)
    log.info("supervisor_listening", socket=str(sock))
    try:
        await stop.wait()
    finally:
        log.info("supervisor_stopping", workers=pool.loaded_names())
        # Stop accepting first, then take every worker down (SIGTERM, SIGKILL after the grace).
        await server.stop(grace=0.5)
        await pool.close()
        await resolver.close()
        with contextlib.suppress(FileNotFoundError):
            sock.unlink()
        log.info("supervisor_stopped")
