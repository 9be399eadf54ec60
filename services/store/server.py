"""The Store gRPC servicer: a thin translation layer over ModelStore and the transfer functions.

Long operations (create, pull, push, pack) run on a worker thread while the RPC thread relays
their progress. When the client goes away, gRPC's termination callback sets a cancel event: pull
and push stop at once, create and pack at their next progress report.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import io
import json
import queue
import threading
from concurrent import futures
from pathlib import Path
from typing import Any, Callable, Generator, Iterator, TypeVar

import grpc

from mlxserve.services.common import rpc
from mlxserve.services.common.errors import Cancelled, DiskFull, InvalidArgument
from mlxserve.v1 import common_pb2, store_pb2, store_pb2_grpc

from . import transfer
from .blobs import is_disk_full
from .changes import ChangeMarker, marker_path
from .importers import ollama
from .importers.oci_layout import is_package_ref
from .manifest import ModelConfig
from .precision import weights_precision
from .progress import ProgressCallback, ProgressEvent
from .recipes import CreateSpec, parse_modelfile, parse_modelspec
from .store import ModelStore, ModelSummary

SERVICE = "store"
RECIPE_FORMATS = ("modelfile", "modelspec")
_DONE = object()
T = TypeVar("T")


def summary_pb(s: ModelSummary) -> store_pb2.ModelSummary:
    d = s.details
    return store_pb2.ModelSummary(
        name=s.name, model=s.name, digest=s.digest, size=s.size, modified_at=s.modified_at,
        details=common_pb2.ModelDetails(parent_model=d.parent_model, format=d.format, family=d.family,
                                        families=d.families, parameter_size=d.parameter_size,
                                        quantization_level=d.quantization_level),
    )


def disk_full_as_error(fn: Callable[..., T]) -> Callable[..., T]:
    """Turn ENOSPC into DiskFull (507, "disk full"), a sentence a user can act on."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> T:
        try:
            return fn(*args, **kwargs)
        except OSError as e:
            if is_disk_full(e):
                raise DiskFull(f"disk full: no space left on the disk that holds the model store ({e.strerror}); "
                               "free some space (`mlxctl rm`, `mlxctl gc`) and try again") from e
            raise

    return wrapper


def absolute_path(value: str, what: str) -> Path:
    path = Path(value)
    if "\x00" in value or not path.is_absolute():
        raise InvalidArgument(f"{what} must be an absolute path on this machine, got {value!r}")
    return path


def create_spec(request: store_pb2.CreateRequest) -> CreateSpec:
    """The CreateSpec a request asks for: its recipe (if any), then its explicit fields on top."""
    if request.recipe:
        if request.recipe_format not in RECIPE_FORMATS:
            raise InvalidArgument(f"create: recipe_format must be one of {', '.join(RECIPE_FORMATS)}, "
                                  f"got {request.recipe_format!r}")
        base_dir = absolute_path(request.base_dir, "create: base_dir")
        parse = parse_modelfile if request.recipe_format == "modelfile" else parse_modelspec
        spec = parse(request.recipe, base_dir)
    else:
        if request.recipe_format or request.base_dir:
            raise InvalidArgument("create: recipe_format and base_dir only go with a recipe")
        spec = CreateSpec()
    if request.from_path and request.from_model:
        raise InvalidArgument("create: give from_path or from_model, not both")
    overrides: dict[str, Any] = {}
    if request.from_path:
        overrides["from_path"] = absolute_path(request.from_path, "create: from_path")
        overrides["from_model"] = None
    if request.from_model:
        overrides["from_model"] = request.from_model
        overrides["from_path"] = None
    if request.files:
        overrides["files"] = dict(request.files)
    for key in ("template", "system", "license"):
        if request.HasField(key):
            overrides[key] = getattr(request, key)
    if request.parameters_json:
        try:
            parameters = json.loads(request.parameters_json)
        except ValueError as e:
            raise InvalidArgument(f"create: parameters_json is not valid JSON: {e}") from None
        if not isinstance(parameters, dict):
            raise InvalidArgument("create: parameters_json must be a JSON object")
        overrides["parameters"] = {**spec.parameters, **parameters}
    if request.messages:
        overrides["messages"] = [{"role": m.role, "content": m.content} for m in request.messages]
    if request.placement_json:
        try:
            overrides["placement"] = json.loads(request.placement_json)
        except ValueError as e:
            raise InvalidArgument(f"create: placement_json is not valid JSON: {e}") from None
    if request.quantize:
        overrides["quantize"] = request.quantize
    if request.group_size < 0:
        raise InvalidArgument(f"create: group_size must be positive, got {request.group_size}")
    if request.group_size:
        overrides["group_size"] = request.group_size
    return dataclasses.replace(spec, **overrides)


_OUTCOMES = {
    ollama.IMPORTED: store_pb2.ImportOllamaResult.IMPORTED,
    ollama.ALREADY_IMPORTED: store_pb2.ImportOllamaResult.ALREADY_IMPORTED,
    ollama.SKIPPED: store_pb2.ImportOllamaResult.SKIPPED,
    ollama.WOULD_IMPORT: store_pb2.ImportOllamaResult.WOULD_IMPORT,
}


def ollama_model_pb(m: ollama.OllamaModel, imported: bool) -> store_pb2.OllamaModel:
    return store_pb2.OllamaModel(
        ollama_name=m.ollama_name, name=m.name, size=m.size, architecture=m.architecture,
        quantization=m.quantization, parameter_size=m.parameter_size, skip_reason=m.skip_reason or "",
        imported=imported, digest=m.manifest_digest,
    )


def ollama_result_pb(r: ollama.ImportResult) -> store_pb2.ImportOllamaResult:
    return store_pb2.ImportOllamaResult(ollama_name=r.ollama_name, name=r.name, outcome=_OUTCOMES[r.outcome],
                                        reason=r.reason, digest=r.digest)


def progress_pb(event: ProgressEvent) -> common_pb2.Progress:
    return common_pb2.Progress(status=event.status, digest=event.digest, total=event.total, completed=event.completed)


class _ChunkReader(io.RawIOBase):
    """A read-only file over the data of a stream of BlobChunk messages."""

    def __init__(self, first: bytes, rest: Iterator[store_pb2.BlobChunk]) -> None:
        self._buf = first
        self._rest = rest

    def readable(self) -> bool:
        return True

    def readinto(self, b: Any) -> int:
        while not self._buf:
            chunk = next(self._rest, None)
            if chunk is None:
                return 0
            if chunk.digest:
                raise InvalidArgument("put blob: only the first chunk may carry a digest")
            self._buf = chunk.data
        n = min(len(b), len(self._buf))
        b[:n] = self._buf[:n]
        self._buf = self._buf[n:]
        return n


class StoreServicer(store_pb2_grpc.StoreServicer):
    def __init__(self, store: ModelStore, remotes: transfer.Remotes | None = None, changes: ChangeMarker | None = None) -> None:
        self.store = store
        self.remotes = remotes or transfer.Remotes()
        self.changes = changes

    def _changed(self) -> None:
        """A verb that may change what a name resolves to ran (even if it failed half way): readers of
        the change marker resolve afresh. Called before the verb's answer goes out."""
        if self.changes is not None:
            self.changes.changed()

    def _relay(self, context: grpc.ServicerContext, what: str, work: Callable[[ProgressCallback, threading.Event], T],
               wrap: Callable[[common_pb2.Progress], Any] = lambda p: p) -> Generator[Any, None, T]:
        """Run `work(progress, cancel)` on its own thread, yield its progress as it comes (through
        `wrap`), and return what `work` returned."""
        events: queue.Queue = queue.Queue(maxsize=256)
        cancel = threading.Event()
        outcome: dict[str, Any] = {}
        # Called when the RPC ends for any reason: a client that went away cancels the work.
        context.add_callback(cancel.set)

        def report(event: ProgressEvent) -> None:
            while True:
                if cancel.is_set():
                    raise Cancelled(f"{what} cancelled by the client")
                try:
                    events.put(event, timeout=0.5)
                    return
                except queue.Full:
                    continue

        def run() -> None:
            try:
                outcome["result"] = disk_full_as_error(work)(report, cancel)
            except BaseException as e:  # noqa: BLE001 - handed to the RPC thread below
                outcome["error"] = e
            finally:
                with contextlib.suppress(queue.Full):
                    events.put_nowait(_DONE)  # when full, the RPC thread sees the thread end instead

        thread = threading.Thread(target=run, name=f"store-{what}", daemon=True)
        thread.start()
        while True:
            try:
                event = events.get(timeout=0.5)
            except queue.Empty:
                if thread.is_alive():
                    continue
                break
            if event is _DONE:
                break
            if not cancel.is_set():
                yield wrap(progress_pb(event))
        if "error" in outcome:
            raise outcome["error"]
        return outcome["result"]

    @rpc.rpc_method
    def Ping(self, request: common_pb2.PingRequest, context: grpc.ServicerContext) -> common_pb2.PingResponse:
        return rpc.ping_response(SERVICE)

    @rpc.rpc_method
    def Create(self, request: store_pb2.CreateRequest, context: grpc.ServicerContext) -> Iterator[common_pb2.Progress]:
        if not request.name:
            raise InvalidArgument("create: a model name is required")
        spec = create_spec(request)
        try:
            yield from self._relay(context, "create",
                                   lambda progress, _cancel: self.store.create(request.name, spec, progress=progress))
        finally:
            self._changed()

    @rpc.rpc_method
    def Pull(self, request: store_pb2.PullRequest, context: grpc.ServicerContext) -> Iterator[common_pb2.Progress]:
        if not request.name:
            raise InvalidArgument("pull: a model name is required")
        if is_package_ref(request.name) and not request.name.startswith(("http://", "https://", "/")):
            # Relative to what? The store's working folder is no one's business: clients send absolute paths.
            raise InvalidArgument(f"pull: {request.name!r} looks like a file; give a model name, an absolute path or a URL")
        try:
            yield from self._relay(context, "pull", lambda progress, cancel: transfer.pull(
                self.store, request.name, insecure=request.insecure, progress=progress, cancel=cancel,
                remotes=self.remotes))
        finally:
            self._changed()

    @rpc.rpc_method
    def Push(self, request: store_pb2.PushRequest, context: grpc.ServicerContext) -> Iterator[common_pb2.Progress]:
        if not request.name:
            raise InvalidArgument("push: a model name is required")
        yield from self._relay(context, "push", lambda progress, cancel: transfer.push(
            self.store, request.name, insecure=request.insecure, progress=progress, cancel=cancel,
            remotes=self.remotes))

    @rpc.rpc_method
    def Pack(self, request: store_pb2.PackRequest, context: grpc.ServicerContext) -> Iterator[common_pb2.Progress]:
        if not request.name:
            raise InvalidArgument("pack: a model name is required")
        out_path = absolute_path(request.out_path, "pack: out_path")
        yield from self._relay(context, "pack", lambda progress, _cancel: transfer.pack(
            self.store, request.name, out_path, progress=progress))

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
            capabilities=c.capabilities, manifest_json=shown.manifest_json, modelfile=shown.modelfile,
            messages=[store_pb2.ModelMessage(role=m["role"], content=m["content"]) for m in c.messages],
        )

    @rpc.rpc_method
    def Copy(self, request: store_pb2.CopyRequest, context: grpc.ServicerContext) -> store_pb2.CopyResponse:
        if not request.source or not request.destination:
            raise InvalidArgument("copy: both a source and a destination name are required")
        try:
            return store_pb2.CopyResponse(model=summary_pb(disk_full_as_error(self.store.copy)(request.source, request.destination)))
        finally:
            self._changed()

    @rpc.rpc_method
    def Remove(self, request: store_pb2.RemoveRequest, context: grpc.ServicerContext) -> store_pb2.RemoveResponse:
        try:
            return store_pb2.RemoveResponse(removed_blobs=self.store.remove(request.name))
        finally:
            self._changed()

    @rpc.rpc_method
    def Resolve(self, request: store_pb2.ResolveRequest, context: grpc.ServicerContext) -> store_pb2.ResolveResponse:
        r = self.store.resolve(request.name)
        bits, dtype = weights_precision(r.view_path)
        c = r.config or ModelConfig()
        details = common_pb2.ModelDetails(parent_model=c.parent_model, format=c.format, family=c.family,
                                          families=c.families, parameter_size=c.parameter_size,
                                          quantization_level=c.quantization_level)
        return store_pb2.ResolveResponse(name=r.name, digest=r.digest, view_path=str(r.view_path), size=r.size,
                                         capabilities=r.capabilities, context_length=r.context_length,
                                         details=details, dtype=dtype, quantization_bits=bits,
                                         placement=json.dumps(c.placement, sort_keys=True) if c.placement else "")

    @rpc.rpc_method
    def Verify(self, request: store_pb2.VerifyRequest, context: grpc.ServicerContext) -> Iterator[store_pb2.VerifyEvent]:
        report = yield from self._relay(context, "verify", lambda progress, _cancel: self.store.verify(progress=progress),
                                        wrap=lambda p: store_pb2.VerifyEvent(progress=p))
        yield store_pb2.VerifyEvent(report=store_pb2.VerifyReport(
            checked=report.checked,
            corrupt=[store_pb2.BlobProblem(digest=b.digest, models=b.models) for b in report.corrupt],
            missing=[store_pb2.BlobProblem(digest=b.digest, models=b.models) for b in report.missing],
            damaged_manifests=report.damaged_manifests,
        ))

    @rpc.rpc_method
    def Gc(self, request: store_pb2.GcRequest, context: grpc.ServicerContext) -> store_pb2.GcResponse:
        try:
            report = self.store.gc()
        finally:
            self._changed()
        return store_pb2.GcResponse(removed_blobs=report.removed_blobs, freed_bytes=report.freed_bytes,
                                    removed_partials=report.removed_partials)

    @rpc.rpc_method
    def HasBlob(self, request: store_pb2.HasBlobRequest, context: grpc.ServicerContext) -> store_pb2.HasBlobResponse:
        return store_pb2.HasBlobResponse(exists=self.store.has_blob(request.digest))

    @rpc.rpc_method
    def PutBlob(self, request_iterator: Iterator[store_pb2.BlobChunk], context: grpc.ServicerContext) -> store_pb2.PutBlobResponse:
        first = next(request_iterator, None)
        if first is None or not first.digest:
            raise InvalidArgument("put blob: the first chunk must carry the blob's digest")
        reader = io.BufferedReader(_ChunkReader(first.data, request_iterator), buffer_size=1 << 20)
        created = disk_full_as_error(self.store.put_blob)(first.digest, reader)
        return store_pb2.PutBlobResponse(digest=first.digest, created=created)

    @rpc.rpc_method
    def ListOllama(self, request: store_pb2.ListOllamaRequest, context: grpc.ServicerContext) -> store_pb2.ListOllamaResponse:
        root = ollama.store_root(absolute_path(request.dir, "list ollama: dir"))
        return store_pb2.ListOllamaResponse(dir=str(root), models=[
            ollama_model_pb(m, ollama.held_as(self.store, m) == "this") for m in ollama.scan(root)])

    @rpc.rpc_method
    def ImportOllama(self, request: store_pb2.ImportOllamaRequest,
                     context: grpc.ServicerContext) -> Iterator[store_pb2.ImportOllamaEvent]:
        root = absolute_path(request.dir, "import ollama: dir")
        if not request.names and not request.all:
            raise InvalidArgument("import ollama: name the models to import, or ask for all of them")
        models = ollama.select(ollama.scan(root), list(request.names), request.all, root)
        verified: dict[str, str | None] = {}  # blobs hashed in this call: tags often share one GGUF
        for m in models:
            try:
                result = yield from self._relay(
                    context, "import-ollama",
                    lambda progress, _cancel, m=m: ollama.import_model(self.store, m, force=request.force,
                                                                       dry_run=request.dry_run, progress=progress,
                                                                       verified=verified),
                    wrap=lambda p, m=m: store_pb2.ImportOllamaEvent(ollama_name=m.ollama_name, progress=p))
            finally:
                self._changed()
            yield store_pb2.ImportOllamaEvent(ollama_name=m.ollama_name, result=ollama_result_pb(result))


def build_server(store: ModelStore, socket_path: Path, max_workers: int = 16,
                 remotes: transfer.Remotes | None = None) -> grpc.Server:
    """A started-ready (not yet started) gRPC server for `store` bound to a fresh unix socket.

    The change marker lives next to the socket (the runtime directory); it gets a fresh value now, so
    that names a reader cached from an earlier store process are resolved again."""
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=max_workers, thread_name_prefix="store-rpc"),
                         options=rpc.CHANNEL_OPTIONS)
    rpc.prepare_socket_path(socket_path)
    changes = ChangeMarker(marker_path(socket_path.parent))
    changes.changed()
    store_pb2_grpc.add_StoreServicer_to_server(StoreServicer(store, remotes, changes), server)
    server.add_insecure_port(rpc.unix_target(socket_path))
    return server
