"""Ollama's model-management routes over the store service, in Ollama's shapes and status codes (and the
Anthropic shape of GET /v1/models, which openai_api.py serves).

/api/pull, /api/push and /api/create stream the store's progress as NDJSON (or answer one final
object with `"stream": false`); an error before the first event gets its own status code, one
after it arrives as a final `{"error": ...}` line. Blob uploads stream the body to the store in
chunks: they are bounded by the free disk space (and MAX_BLOB_BYTES), not by the JSON body limit.
"""

from __future__ import annotations

import asyncio
import json
import re
import shutil
from pathlib import Path
from typing import Any, AsyncIterator

import grpc
import msgspec
from aiohttp import web

from mlxserve.services.common import logs, rpc
from mlxserve.services.common.errors import Internal, from_rpc_error
from mlxserve.services.store.names import parse_name
from mlxserve.v1 import common_pb2, store_pb2

from . import state
from .rendering import NATIVE, NDJSON_HEADERS, dumps, http_error_response, ndjson_line, stream_chunks
from .request_types import CopyRequest, CreateMessage, CreateRequest, ModelRef, Options, ShowRequest, TransferRequest
from .status_api import details_json
from .validation import BadField, UnsupportedField, decode, note_ignored, read_json_object

log = logs.get_logger(component="models_api")

routes = web.RouteTableDef()

BLOB_CHUNK_BYTES = 1 << 20
MAX_BLOB_BYTES = 1 << 40          # 1 TiB: far beyond any one weight file, short of runaway uploads
DISK_RESERVE_BYTES = 256 << 20    # what an upload must leave free on the store's disk
_DIGEST = re.compile(r"sha256[:-]([0-9a-f]{64})")


# -- request parsing ---------------------------------------------------------------------------------

# Modelfile parameters the runtime uses (the options of request_types.Options); the others Ollama knows
# (num_thread, num_gpu, mirostat, ...) are stored with the model and do nothing here.
RUNTIME_PARAMETERS = frozenset(f.encode_name for f in msgspec.structs.fields(Options))


def model_field(body: ModelRef | ShowRequest | TransferRequest | CreateRequest) -> str:
    """Ollama's model name, given as `model` (or the older `name`)."""
    value = body.model or body.name or ""
    if not value.strip():
        raise BadField("model", "'model' is required")
    return value


def parse_digest(text: str, param: str = "digest") -> str:
    """`sha256:<hex>` (or Ollama's file form `sha256-<hex>`) as `sha256:<hex>`; 400 otherwise."""
    m = _DIGEST.fullmatch(text)
    if not m:
        raise BadField(param, f"invalid digest {text[:100]!r}: expected 'sha256:' followed by 64 lower-case hex digits")
    return f"sha256:{m.group(1)}"


def registry_name(text: str) -> str:
    """A pull/push target must be a model name: paths and URLs are for `mlxctl pull`, on this machine."""
    parse_name(text)  # raises InvalidArgument (400) naming what is wrong
    return text


def parse_files(files: dict[str, str] | None) -> dict[str, str]:
    out: dict[str, str] = {}
    for name, digest in (files or {}).items():
        if ".." in name:
            raise BadField("files", f"'files': invalid file name {name[:100]!r} (a plain file name such as 'model.gguf')")
        out[name] = parse_digest(digest, f"files.{name}")
    return out


def parse_license(value: str | list[str] | None) -> str | None:
    if value is None or isinstance(value, str):
        return value
    return "\n\n".join(value)  # Ollama keeps several licenses; they are shown one after another


def parse_create_messages(items: list[CreateMessage] | None) -> list[store_pb2.ModelMessage]:
    out = []
    for i, m in enumerate(items or []):
        for key in ("images", "tool_calls", "thinking"):
            if getattr(m, key):
                raise UnsupportedField(f"messages[{i}].{key}", f"'messages[{i}].{key}' is not supported in a model's messages")
        out.append(store_pb2.ModelMessage(role=m.role, content=m.content or ""))
    return out


def parse_create(data: dict[str, Any]) -> tuple[store_pb2.CreateRequest, bool, list[str]]:
    """An Ollama /api/create body → (CreateRequest, stream, the fields ignored)."""
    body, ignored = decode(data, CreateRequest)
    req = store_pb2.CreateRequest(name=model_field(body))
    for legacy in ("modelfile", "path"):
        if getattr(body, legacy) is not None:
            raise UnsupportedField(legacy, f"'{legacy}' is Ollama's old create API; send 'from', 'files', 'template', "
                                           "'system', 'parameters' and the other fields instead")
    if body.adapters:
        raise UnsupportedField("adapters", "'adapters' is not supported: LoRA adapters cannot be applied here yet")
    files = parse_files(body.files)
    if not body.from_ and not files:
        raise BadField("from", "either 'from' (a model) or 'files' (uploaded blobs) is required")
    if body.from_:
        req.from_model = body.from_
    req.files.update(files)
    for key in ("template", "system"):
        value = getattr(body, key)
        if value is not None:
            setattr(req, key, value)
    license_ = parse_license(body.license)
    if license_ is not None:
        req.license = license_
    if body.parameters:
        req.parameters_json = json.dumps(body.parameters)
        # Kept with the model (`mlxctl show` lists them, an export carries them), but not used by this runtime.
        ignored += [f"parameters.{key}" for key in body.parameters if key not in RUNTIME_PARAMETERS]
    req.messages.extend(parse_create_messages(body.messages))
    if body.placement is not None:
        req.placement_json = json.dumps(body.placement)
    req.quantize = body.quantize or ""
    return req, body.stream is not False, ignored


# -- progress streams ---------------------------------------------------------------------------------


def progress_json(p: common_pb2.Progress) -> dict[str, Any]:
    """Ollama's progress object: `status`, plus `digest`, `total` and `completed` when they mean something."""
    out: dict[str, Any] = {"status": p.status}
    if p.digest:
        out["digest"] = p.digest
    if p.total > 0:
        out["total"] = p.total
        out["completed"] = p.completed
    return out


async def _next(call: Any, service: str = "store") -> common_pb2.Progress | None:
    try:
        msg = await call.read()
    except grpc.RpcError as e:
        raise from_rpc_error(e, service=service) from None
    return None if msg is grpc.aio.EOF else msg


async def relay_progress(request: web.Request, call: Any, stream: bool) -> web.StreamResponse:
    """Render a store progress stream; the store call is cancelled if the client goes away."""
    try:
        first = await _next(call)  # errors before any progress keep their own status code
        if not stream:
            last = first
            while first is not None and (p := await _next(call)) is not None:
                last = p
            if last is None:
                raise Internal("the store ended the operation without reporting a result")
            return web.json_response(progress_json(last), dumps=dumps)
        async def chunks() -> AsyncIterator[bytes]:
            p = first
            while p is not None:
                yield ndjson_line(progress_json(p))
                p = await _next(call)

        # A client that goes away ends the stream here; the finally below cancels the store's work.
        return await stream_chunks(request, NDJSON_HEADERS, chunks(), error_chunk=lambda e: ndjson_line({"error": e.message}),
                                   failure_event="store_operation_failed")
    finally:
        if not call.done():
            call.cancel()  # the client went away (handler cancelled) or we stopped reading: stop the store's work


# -- handlers ----------------------------------------------------------------------------------------------


def _store(request: web.Request):
    return state.backends(request).store()


def _metadata(request: web.Request) -> tuple[tuple[str, str], ...]:
    return rpc.metadata(state.request_id(request))


@routes.post("/api/pull")
async def pull(request: web.Request) -> web.StreamResponse:
    """POST /api/pull {model, insecure, stream}: NDJSON progress, ending with {"status": "success"}."""
    body, ignored = decode(await read_json_object(request), TransferRequest)
    name = registry_name(model_field(body))
    note_ignored(request, ignored)
    call = _store(request).Pull(store_pb2.PullRequest(name=name, insecure=bool(body.insecure)), metadata=_metadata(request))
    stream = body.stream is not False
    return await relay_progress(request, call, stream)


@routes.post("/api/push")
async def push(request: web.Request) -> web.StreamResponse:
    """POST /api/push {model, insecure, stream}: NDJSON progress, ending with {"status": "success"}."""
    body, ignored = decode(await read_json_object(request), TransferRequest)
    name = registry_name(model_field(body))
    note_ignored(request, ignored)
    call = _store(request).Push(store_pb2.PushRequest(name=name, insecure=bool(body.insecure)), metadata=_metadata(request))
    stream = body.stream is not False
    return await relay_progress(request, call, stream)


@routes.post("/api/create")
async def create(request: web.Request) -> web.StreamResponse:
    """POST /api/create in Ollama's current shape (from, files, template, system, parameters, ...)."""
    req, stream, ignored = parse_create(await read_json_object(request))
    note_ignored(request, ignored)
    call = _store(request).Create(req, metadata=_metadata(request))
    return await relay_progress(request, call, stream)


@routes.post("/api/copy")
async def copy(request: web.Request) -> web.Response:
    """POST /api/copy {source, destination}: 200 with an empty body; 404 for an unknown source."""
    body, ignored = decode(await read_json_object(request), CopyRequest)
    note_ignored(request, ignored)
    await rpc.call("store", _store(request).Copy, store_pb2.CopyRequest(source=body.source, destination=body.destination),
                   timeout=60.0, request_id=state.request_id(request))
    return web.Response(status=200)


@routes.delete("/api/delete")
async def delete(request: web.Request) -> web.Response:
    """DELETE /api/delete {model}: 200 with an empty body; 404 for an unknown model."""
    body, ignored = decode(await read_json_object(request), ModelRef)
    name = model_field(body)
    note_ignored(request, ignored)
    await rpc.call("store", _store(request).Remove, store_pb2.RemoveRequest(name=name), timeout=60.0,
                   request_id=state.request_id(request))
    return web.Response(status=200)


@routes.post("/api/show")
async def show(request: web.Request) -> web.Response:
    """POST /api/show {model, verbose}: details, model_info, parameters, template, system, license, ...

    `verbose: true` is ignored and named: Ollama uses it to add the tokenizer's full vocabulary to
    model_info, which this store does not keep there, so both answers are the same.
    """
    body, ignored = decode(await read_json_object(request), ShowRequest)
    name = model_field(body)
    note_ignored(request, ignored + (["verbose"] if body.verbose else []))
    s = await rpc.call("store", _store(request).Show, store_pb2.ShowRequest(name=name), timeout=30.0,
                       request_id=state.request_id(request))
    out: dict[str, Any] = {}
    # Ollama leaves out the text fields a model does not have.
    for key in ("license", "modelfile", "parameters", "template", "system"):
        if getattr(s, key):
            out[key] = getattr(s, key)
    out["details"] = details_json(s.summary.details)
    out["model_info"] = json.loads(s.model_info_json) if s.model_info_json else {}
    if s.messages:
        out["messages"] = [{"role": m.role, "content": m.content} for m in s.messages]
    out["capabilities"] = list(s.capabilities)
    out["modified_at"] = s.summary.modified_at or None
    return web.json_response(out, dumps=dumps)


@routes.head("/api/blobs/{digest}")
async def head_blob(request: web.Request) -> web.Response:
    """HEAD /api/blobs/:digest: 200 if the store has the blob, 404 if not."""
    digest = parse_digest(request.match_info["digest"])
    resp = await rpc.call("store", _store(request).HasBlob, store_pb2.HasBlobRequest(digest=digest), timeout=10.0,
                          request_id=state.request_id(request))
    return web.Response(status=200 if resp.exists else 404)


def upload_limit(models_dir: Path) -> int:
    """The most bytes one upload may bring: what the disk can take, keeping a reserve, up to MAX_BLOB_BYTES."""
    folder = models_dir if models_dir.exists() else models_dir.parent
    free = shutil.disk_usage(folder).free
    return max(0, min(MAX_BLOB_BYTES, free - DISK_RESERVE_BYTES))


def _too_big(size: int, limit: int) -> web.Response:
    if limit < MAX_BLOB_BYTES:
        return http_error_response(507, f"not enough disk space for this blob: it is {size} bytes and the model store "
                                        f"can take {limit} more; free some space (`mlxctl rm`, `mlxctl gc`)", NATIVE)
    return http_error_response(413, f"blob too large: {size} bytes, the limit is {MAX_BLOB_BYTES}", NATIVE)


@routes.post("/api/blobs/{digest}")
async def post_blob(request: web.Request) -> web.Response:
    """POST /api/blobs/:digest: stream the body into the store; 201 when stored, 200 if already there,
    400 when the bytes do not hash to the digest (nothing is kept)."""
    digest = parse_digest(request.match_info["digest"])
    store, rid = _store(request), state.request_id(request)
    exists = await rpc.call("store", store.HasBlob, store_pb2.HasBlobRequest(digest=digest), timeout=10.0, request_id=rid)
    if exists.exists:
        return web.Response(status=200)
    limit = upload_limit(request.app[state.SETTINGS].models_dir)
    if request.content_length is not None and request.content_length > limit:
        return _too_big(request.content_length, limit)

    call = store.PutBlob(metadata=rpc.metadata(rid))
    try:
        await call.write(store_pb2.BlobChunk(digest=digest))
        received = 0
        # A blob may take as long as it needs in total (GGUF files are gigabytes), but a client
        # that stops sending for body_timeout is cut off, so a stalled upload can't pin a store call.
        idle_s = request.app[state.SETTINGS].body_timeout
        chunks = request.content.iter_chunked(BLOB_CHUNK_BYTES)
        while True:
            try:
                data = await asyncio.wait_for(chunks.__anext__(), timeout=idle_s)
            except StopAsyncIteration:
                break
            except asyncio.TimeoutError:
                call.cancel()
                log.warning("blob_upload_stalled", digest=digest, received=received, seconds=idle_s)
                return http_error_response(408, f"the upload stalled: no data for {idle_s:g} s after {received} bytes; "
                                                "nothing was stored", NATIVE)
            received += len(data)
            if received > limit:
                call.cancel()
                return _too_big(received, limit)
            await call.write(store_pb2.BlobChunk(data=data))
        await call.done_writing()
        resp = await call
    except grpc.RpcError as e:
        raise from_rpc_error(e, service="store") from None
    finally:
        if not call.done():
            call.cancel()
    return web.Response(status=201 if resp.created else 200)


# -- GET /v1/models as Anthropic's clients read it -------------------------------------------------------------

ANTHROPIC_PAGE = 20        # Anthropic's default page size
ANTHROPIC_MAX_PAGE = 1000


def anthropic_model(m: store_pb2.ModelSummary) -> dict[str, Any]:
    """A model as Anthropic's API lists it: the store's name is both its id and its display name."""
    return {"type": "model", "id": m.name, "display_name": m.name, "created_at": m.modified_at or "1970-01-01T00:00:00Z"}


def anthropic_model_page(models: list[store_pb2.ModelSummary], query: Any) -> dict[str, Any]:
    """One page of the list: `limit` (1 to 1000, default 20) models after `after_id` or before `before_id`."""
    raw = query.get("limit")
    try:
        limit = ANTHROPIC_PAGE if raw is None else int(raw)
    except ValueError:
        limit = 0
    if not 1 <= limit <= ANTHROPIC_MAX_PAGE:
        raise BadField("limit", f"'limit' must be an integer between 1 and {ANTHROPIC_MAX_PAGE}")
    ids = [m.name for m in models]
    start, end = 0, len(models)
    if query.get("after_id"):
        start = ids.index(query["after_id"]) + 1 if query["after_id"] in ids else len(models)
    if query.get("before_id"):
        end = ids.index(query["before_id"]) if query["before_id"] in ids else 0
        start = max(start, end - limit)
    page = models[start:min(end, start + limit)]
    data = [anthropic_model(m) for m in page]
    more = start + len(page) < end if not query.get("before_id") else start > 0
    return {"data": data, "has_more": more, "first_id": data[0]["id"] if data else None,
            "last_id": data[-1]["id"] if data else None}
