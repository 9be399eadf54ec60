"""The generation core's view of the processes it drives: a supervisor that leases workers, and workers.

`GenerationCore` talks only to these two protocols. The gRPC implementations here wrap the cached
stubs of `backends.Backends`; tests plug in the in-process ones of `tests/fixtures/gateway_fakes.py`
(vLLM's InprocClient idea), so generation logic runs without sockets or processes.
"""

from __future__ import annotations

from typing import Protocol

from mlxserve.services.common import rpc
from mlxserve.services.common.errors import MlxServeError, NotFound, Timeout
from mlxserve.v1 import common_pb2, store_pb2, supervisor_pb2, worker_pb2

from .backends import Backends


class SupervisorClient(Protocol):
    """Leases on model workers: raises MlxServeError (NotFound, Busy, Unavailable...) as the supervisor does."""

    async def acquire(self, model: str, request_id: str, keep_alive_s: float | None, *,
                      timeout: float) -> supervisor_pb2.AcquireResponse: ...

    async def release(self, lease_id: str, keep_alive_s: float | None, request_id: str) -> None: ...

    async def unload(self, model: str, request_id: str) -> None:
        """Stop the model's worker; NotFound only for a model the store does not have."""
        ...


class WorkerClient(Protocol):
    """The calls the core makes on the worker at `address` (a lease's worker_address)."""

    async def submit(self, address: str, submit: worker_pb2.SubmitRequest, request_id: str) -> worker_pb2.SubmitResponse: ...

    async def cancel(self, address: str, submit_id: str, request_id: str) -> None: ...

    async def count_tokens(self, address: str, submit: worker_pb2.SubmitRequest, request_id: str) -> worker_pb2.CountTokensResponse: ...

    async def embed(self, address: str, req: worker_pb2.EmbedRequest, request_id: str, *, timeout: float) -> worker_pb2.EmbedResponse: ...

    async def alive(self, address: str, *, timeout: float) -> bool | None:
        """True when the worker answers a ping within `timeout`; None when something holds its
        socket but does not answer (a frozen or stopped process); False when nothing does (it exited)."""
        ...

    def forget(self, address: str) -> None:
        """The worker at `address` is gone: drop what is kept for it (a fresh worker may reuse the address)."""
        ...


class GrpcSupervisorClient:
    """`SupervisorClient` over the supervisor's gRPC service (and the store's, to tell an unknown model)."""

    def __init__(self, backends: Backends) -> None:
        self.backends = backends

    async def acquire(self, model: str, request_id: str, keep_alive_s: float | None, *,
                      timeout: float) -> supervisor_pb2.AcquireResponse:
        req = supervisor_pb2.AcquireRequest(model=model, request_id=request_id)
        if keep_alive_s is not None:
            req.keep_alive_s = keep_alive_s
        return await rpc.call("supervisor", self.backends.supervisor().Acquire, req, timeout=timeout, request_id=request_id)

    async def release(self, lease_id: str, keep_alive_s: float | None, request_id: str) -> None:
        req = supervisor_pb2.ReleaseRequest(lease_id=lease_id)
        if keep_alive_s is not None:
            req.keep_alive_s = keep_alive_s
        await rpc.call("supervisor", self.backends.supervisor().Release, req, timeout=5.0, request_id=request_id)

    async def unload(self, model: str, request_id: str) -> None:
        # As in Ollama, unloading a model that is not loaded succeeds; only an unknown model is NotFound.
        try:
            await rpc.call("supervisor", self.backends.supervisor().Stop, supervisor_pb2.StopRequest(model=model),
                           timeout=30.0, request_id=request_id)
        except NotFound:
            await rpc.call("store", self.backends.store().Show, store_pb2.ShowRequest(name=model),
                           timeout=10.0, request_id=request_id)


class GrpcWorkerClient:
    """`WorkerClient` over each worker's gRPC service, one cached channel per address."""

    def __init__(self, backends: Backends) -> None:
        self.backends = backends

    async def submit(self, address: str, submit: worker_pb2.SubmitRequest, request_id: str) -> worker_pb2.SubmitResponse:
        return await rpc.call("worker", self.backends.worker(address).Submit, submit, timeout=30.0, request_id=request_id)

    async def cancel(self, address: str, submit_id: str, request_id: str) -> None:
        await rpc.call("worker", self.backends.worker(address).Cancel, worker_pb2.CancelRequest(request_id=submit_id),
                       timeout=2.0, request_id=request_id)

    async def count_tokens(self, address: str, submit: worker_pb2.SubmitRequest, request_id: str) -> worker_pb2.CountTokensResponse:
        return await rpc.call("worker", self.backends.worker(address).CountTokens, submit, timeout=30.0, request_id=request_id)

    async def embed(self, address: str, req: worker_pb2.EmbedRequest, request_id: str, *, timeout: float) -> worker_pb2.EmbedResponse:
        return await rpc.call("worker", self.backends.worker(address).Embed, req, timeout=timeout, request_id=request_id)

    async def alive(self, address: str, *, timeout: float) -> bool | None:
        try:
            await rpc.call("worker", self.backends.worker(address).Ping, common_pb2.PingRequest(), timeout=timeout)
            return True
        except Timeout:  # connected, no answer: the process is there but not running
            return None
        except MlxServeError:
            return False

    def forget(self, address: str) -> None:
        self.backends.forget_worker(address)
