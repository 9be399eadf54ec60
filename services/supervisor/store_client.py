"""What the supervisor asks the store: resolve a model name to the view directory a worker loads."""

from __future__ import annotations

from dataclasses import dataclass, field

from mlxserve.services.common import rpc
from mlxserve.services.common.errors import MlxServeError, NotFound
from mlxserve.v1 import common_pb2, store_pb2, store_pb2_grpc


@dataclass(frozen=True)
class ModelRef:
    """A resolved model: everything needed to start and describe its worker."""

    name: str
    digest: str
    view_path: str
    size: int = 0
    capabilities: tuple[str, ...] = ()
    context_length: int = 0
    details: common_pb2.ModelDetails | None = field(default=None, compare=False)


class StoreResolver:
    """Resolves names through the store's gRPC service (one aio channel, opened lazily)."""

    def __init__(self, target: str, timeout: float = 30.0) -> None:
        self._target = target
        self._timeout = timeout
        self._channel = None
        self._stub: store_pb2_grpc.StoreStub | None = None

    def _store(self) -> store_pb2_grpc.StoreStub:
        if self._stub is None:
            self._channel = rpc.aio_channel(self._target)
            self._stub = store_pb2_grpc.StoreStub(self._channel)
        return self._stub

    async def resolve(self, name: str, request_id: str | None = None) -> ModelRef:
        """Resolve `name`; NotFound reads "model 'x' not found"."""
        try:
            r = await rpc.call("store", self._store().Resolve, store_pb2.ResolveRequest(name=name), timeout=self._timeout, request_id=request_id)
        except NotFound:
            raise NotFound(f"model '{name}' not found") from None
        return ModelRef(
            name=r.name, digest=r.digest, view_path=r.view_path, size=r.size,
            capabilities=tuple(r.capabilities), context_length=r.context_length,
        )

    async def details(self, name: str) -> common_pb2.ModelDetails | None:
        """The model's `details` (family, quantization...) for ps; None if the store can't say."""
        try:
            r = await rpc.call("store", self._store().Show, store_pb2.ShowRequest(name=name), timeout=5.0)
        except MlxServeError:
            return None
        return r.summary.details if r.HasField("summary") else None

    async def close(self) -> None:
        if self._channel is not None:
            await self._channel.close()
            self._channel = None
            self._stub = None
