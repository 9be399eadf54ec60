"""gRPC clients for the services the gateway calls: store, supervisor, and workers.

One aio channel per target, created on first use (inside the event loop) and reused. Worker
addresses come and go with worker processes, so their channels live in a small LRU and a
worker found dead has its channel dropped (a fresh worker may reuse the address).
"""

from __future__ import annotations

import asyncio
from collections import OrderedDict

import grpc

from mlxserve.services.common import rpc
from mlxserve.services.common.config import Settings
from mlxserve.v1 import common_pb2, store_pb2_grpc, supervisor_pb2_grpc, worker_pb2_grpc

MAX_WORKER_CHANNELS = 32


class Backends:
    """Cached stubs for the store, the supervisor and any number of workers."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self._channels: dict[str, grpc.aio.Channel] = {}
        self._workers: OrderedDict[str, grpc.aio.Channel] = OrderedDict()
        self._closing: set[asyncio.Task] = set()

    def _channel(self, target: str) -> grpc.aio.Channel:
        channel = self._channels.get(target)
        if channel is None:
            channel = self._channels[target] = rpc.aio_channel(target)
        return channel

    def store(self) -> store_pb2_grpc.StoreStub:
        return store_pb2_grpc.StoreStub(self._channel(self.settings.store_target))

    def supervisor(self) -> supervisor_pb2_grpc.SupervisorStub:
        return supervisor_pb2_grpc.SupervisorStub(self._channel(self.settings.supervisor_target))

    def worker(self, address: str) -> worker_pb2_grpc.WorkerStub:
        channel = self._workers.get(address)
        if channel is None:
            channel = self._workers[address] = rpc.aio_channel(address)
            while len(self._workers) > MAX_WORKER_CHANNELS:
                _, old = self._workers.popitem(last=False)
                self._close_later(old)
        self._workers.move_to_end(address)
        return worker_pb2_grpc.WorkerStub(channel)

    def forget_worker(self, address: str) -> None:
        """Drop a dead worker's channel so the next request connects afresh."""
        channel = self._workers.pop(address, None)
        if channel is not None:
            self._close_later(channel)

    def _close_later(self, channel: grpc.aio.Channel) -> None:
        # A grace period lets a call still using an evicted channel finish.
        task = asyncio.get_running_loop().create_task(channel.close(grace=5.0))
        self._closing.add(task)
        task.add_done_callback(self._closing.discard)

    async def ping(self, service: str, *, timeout: float = 1.0, request_id: str | None = None) -> None:
        """Ping "store" or "supervisor"; raises MlxServeError (Unavailable, Timeout) if it does not answer."""
        stub = self.store() if service == "store" else self.supervisor()
        await rpc.call(service, stub.Ping, common_pb2.PingRequest(), timeout=timeout, request_id=request_id)

    async def close(self) -> None:
        channels = list(self._channels.values()) + list(self._workers.values())
        self._channels.clear()
        self._workers.clear()
        await asyncio.gather(*(c.close() for c in channels), *self._closing, return_exceptions=True)
