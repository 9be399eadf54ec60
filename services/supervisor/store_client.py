"""What the supervisor asks the store: resolve a model name to the view directory a worker loads,
with what ps and the memory estimate need to know about it (details, dtype, quantization).

Resolved names are kept while the store's change marker (services/store/changes.py) reads the same,
so a request for a model already resolved costs a small file read instead of a Resolve round trip;
any create, pull, copy, remove or import makes the next request resolve afresh.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path

from mlxserve.services.common import rpc
from mlxserve.services.common.errors import NotFound
from mlxserve.services.common.placement import Placement, placement_or_none
from mlxserve.services.store.changes import read_marker
from mlxserve.v1 import common_pb2, store_pb2, store_pb2_grpc

# Names kept resolved (a bound: clients may send any number of spellings).
MAX_CACHED_NAMES = 256


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
    dtype: str = ""              # the weights' dtype per config.json ("" when it does not say)
    quantization_bits: int = 0   # 0: not quantized
    placement: Placement | None = field(default=None, compare=False)  # the model's own group, if it names one


class StoreResolver:
    """Resolves names through the store's gRPC service (one aio channel, opened lazily), remembering
    the answers while the change marker at `changes` stays the same (no marker: nothing is kept)."""

    def __init__(self, target: str, timeout: float = 30.0, *, changes: Path | None = None) -> None:
        self._target = target
        self._timeout = timeout
        self._changes = changes
        self._cache: OrderedDict[str, tuple[str, ModelRef]] = OrderedDict()
        self._channel = None
        self._stub: store_pb2_grpc.StoreStub | None = None

    def _store(self) -> store_pb2_grpc.StoreStub:
        if self._stub is None:
            self._channel = rpc.aio_channel(self._target)
            self._stub = store_pb2_grpc.StoreStub(self._channel)
        return self._stub

    async def resolve(self, name: str, request_id: str | None = None) -> ModelRef:
        """Resolve `name`; NotFound reads "model 'x' not found"."""
        # Read before asking: a change that lands while the answer is on its way leaves the entry
        # tagged with the older value, so the next request asks again.
        marker = read_marker(self._changes) if self._changes is not None else None
        if marker is not None:
            hit = self._cache.get(name)
            if hit is not None and hit[0] == marker:
                self._cache.move_to_end(name)
                return hit[1]
        try:
            r = await rpc.call("store", self._store().Resolve, store_pb2.ResolveRequest(name=name), timeout=self._timeout, request_id=request_id)
        except NotFound:
            self._cache.pop(name, None)
            raise NotFound(f"model '{name}' not found") from None
        ref = ModelRef(
            name=r.name, digest=r.digest, view_path=r.view_path, size=r.size,
            capabilities=tuple(r.capabilities), context_length=r.context_length,
            details=r.details if r.HasField("details") else None, dtype=r.dtype, quantization_bits=r.quantization_bits,
            placement=placement_or_none(r.placement, source=f"model {r.name}: placement"),
        )
        if marker is not None:
            self._cache[name] = (marker, ref)
            self._cache.move_to_end(name)
            while len(self._cache) > MAX_CACHED_NAMES:
                self._cache.popitem(last=False)
        return ref

    async def close(self) -> None:
        if self._channel is not None:
            await self._channel.close()
            self._channel = None
            self._stub = None
