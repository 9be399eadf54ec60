"""The Store gRPC servicer: a thin translation layer over ModelStore."""

from __future__ import annotations

import json
import queue
import threading
from concurrent import futures
from pathlib import Path
from typing import Iterator

import grpc

from mlxserve.services.common import rpc
from mlxserve.services.common.errors import Cancelled, InvalidArgument
from mlxserve.v1 import common_pb2, store_pb2, store_pb2_grpc

from .progress import ProgressEvent
from .store import ModelStore, ModelSummary

SERVICE = "store"
_DONE = object()


def summary_pb(s: ModelSummary) -> store_pb2.ModelSummary:
    d = s.details
    return store_pb2.ModelSummary(
        name=s.name, model=s.name, digest=s.digest, size=s.size, modified_at=s.modified_at,
        details=common_pb2.ModelDetails(parent_model=d.parent_model, format=d.format, family=d.family,
                                        families=d.families, parameter_size=d.parameter_size,
                                        quantization_level=d.quantization_level),
    )


class StoreServicer(store_pb2_grpc.StoreServicer):
    def __init__(self, store: ModelStore) -> None:
        self.store = store

    @rpc.rpc_method
    def Ping(self, request: common_pb2.PingRequest, context: grpc.ServicerContext) -> common_pb2.PingResponse:
        return rpc.ping_response(SERVICE)

    @rpc.rpc_method
    def Create(self, request: store_pb2.CreateRequest, context: grpc.ServicerContext) -> Iterator[common_pb2.Progress]:
        if not request.name:
            raise InvalidArgument("create: a model name is required")
        if not request.from_path or not Path(request.from_path).is_absolute():
            raise InvalidArgument(f"create: from_path must be an absolute path, got {request.from_path!r}")
        events: queue.Queue = queue.Queue(maxsize=256)
        outcome: dict[str, BaseException] = {}

        def report(event: ProgressEvent) -> None:
            while True:
                if not context.is_active():
                    # The client went away: stop the import (the store cleans up after itself).
                    raise Cancelled("create cancelled by the client")
                try:
                    events.put(event, timeout=1.0)
                    return
                except queue.Full:
                    continue

        def work() -> None:
            try:
                self.store.create_from_path(request.name, request.from_path, progress=report)
            except BaseException as e:  # noqa: BLE001 - handed to the RPC thread below
                outcome["error"] = e
            finally:
                events.put(_DONE)

        # The import runs on its own thread, so the RPC thread only relays progress.
        threading.Thread(target=work, name="store-create", daemon=True).start()
        while (event := events.get()) is not _DONE:
            yield common_pb2.Progress(status=event.status, digest=event.digest, total=event.total,
                                      completed=event.completed)
        if "error" in outcome:
            raise outcome["error"]

    @rpc.rpc_method
    def List(self, request: store_pb2.ListRequest, context: grpc.ServicerContext) -> store_pb2.ListResponse:
        return store_pb2.ListResponse(models=[summary_pb(s) for s in self.store.list()])

    @rpc.rpc_method
    def Show(self, request: store_pb2.ShowRequest, context: grpc.ServicerContext) -> store_pb2.ShowResponse:
        shown = self.store.show(request.name)
        c = shown.config
        return store_pb2.ShowResponse(
            summary=summary_pb(shown.summary), template=c.template, system=c.system, license=c.license,
            parameters=shown.parameters_text, model_info_json=json.dumps(c.model_info, sort_keys=True),
            capabilities=c.capabilities, manifest_json=shown.manifest_json,
        )

    @rpc.rpc_method
    def Remove(self, request: store_pb2.RemoveRequest, context: grpc.ServicerContext) -> store_pb2.RemoveResponse:
        return store_pb2.RemoveResponse(removed_blobs=self.store.remove(request.name))

    @rpc.rpc_method
    def Resolve(self, request: store_pb2.ResolveRequest, context: grpc.ServicerContext) -> store_pb2.ResolveResponse:
        r = self.store.resolve(request.name)
        return store_pb2.ResolveResponse(name=r.name, digest=r.digest, view_path=str(r.view_path), size=r.size,
                                         capabilities=r.capabilities, context_length=r.context_length)


def build_server(store: ModelStore, socket_path: Path, max_workers: int = 16) -> grpc.Server:
    """A started-ready (not yet started) gRPC server for `store` bound to a fresh unix socket."""
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=max_workers, thread_name_prefix="store-rpc"),
                         options=rpc.CHANNEL_OPTIONS)
    store_pb2_grpc.add_StoreServicer_to_server(StoreServicer(store), server)
    rpc.prepare_socket_path(socket_path)
    server.add_insecure_port(rpc.unix_target(socket_path))
    return server
