"""Ollama's model-management routes over the store service, in Ollama's shapes and status codes.

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
from aiohttp import web

from mlxserve.services.common import logs, rpc
from mlxserve.services.common.errors import Internal, from_rpc_error
from mlxserve.services.store.names import parse_name
from mlxserve.v1 import common_pb2, store_pb2

from . import state
from .native import details_json
from .responses import NATIVE, NDJSON_HEADERS, dumps, http_error_response, ndjson_line, stream_chunks
from .validation import Body, BadField, UnsupportedField, read_json_object

log = logs.get_logger(component="models_api")

BLOB_CHUNK_BYTES = 1 << 20
MAX_BLOB_BYTES = 1 << 40          # 1 TiB: far beyond any one weight file, short of runaway uploads
DISK_RESERVE_BYTES = 256 << 20    # what an upload must leave free on the store's disk
_DIGEST = re.compile(r"sha256[:-]([0-9a-f]{64})")
_FILE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")
CREATE_ROLES = ("system", "user", "assistant")


# -- request parsing ---------------------------------------------------------------------------------


def model_field(body: Body) -> str:
    """Ollama's model name, given as `model` (or the older `name`)."""
    model = body.str("model")
    name = body.str("name")
    value = model or name or ""
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


def parse_files(files: dict[str, Any] | None) -> dict[str, str]:
    out: dict[str, str] = {}
    for name, digest in (files or {}).items():
        if not _FILE_NAME.fullmatch(name) or ".." in name:
            raise BadField("files", f"'files': invalid file name {name[:100]!r} (a plain file name such as 'model.gguf')")
        if not isinstance(digest, str):
            raise BadField(f"files.{name}", f"'files.{name}' must be a digest string")
        out[name] = parse_digest(digest, f"files.{name}")
    return out


def parse_license(value: Any) -> str | None:
    if value is None:
        return None
    if isinstance(value, str):
        return value
    if isinstance(value, list) and all(isinstance(v, str) for v in value):
        return "\n\n".join(value)  # Ollama keeps several licenses; they are shown one after another
    raise BadField("license", "'license' must be a string or an array of strings")


def parse_create_messages(items: list[Any] | None) -> list[store_pb2.ModelMessage]:
    out = []
    for i, item in enumerate(items or []):
        if not isinstance(item, dict):
            raise BadField(f"messages[{i}]", f"'messages[{i}]' must be an object")
        msg = Body(item, prefix=f"messages[{i}].")
        role = msg.str("role", required=True) or ""
        if role not in CREATE_ROLES:
            raise BadField(msg.name("role"), f"'{msg.name('role')}' must be one of {', '.join(CREATE_ROLES)}; got {role!r}")
        content = msg.str("content", default="") or ""
        msg.refuse(("images", "tool_calls", "thinking"))
        msg.finish()
        out.append(store_pb2.ModelMessage(role=role, content=content))
    return out


def parse_create(data: dict[str, Any]) -> tuple[store_pb2.CreateRequest, bool]:
    """An Ollama /api/create body → (CreateRequest, stream)."""
    body = Body(data)
    name = model_field(body)
    stream = bool(body.bool("stream", default=True))
    req = store_pb2.CreateRequest(name=name)
    for legacy in ("modelfile", "path"):
        if body.raw(legacy) is not None:
            raise UnsupportedField(legacy, f"'{legacy}' is Ollama's old create API; send 'from', 'files', 'template', "
                                           "'system', 'parameters' and the other fields instead")
    body.refuse(("adapters",), allowed=lambda v: not v)
    from_ = body.str("from")
    files = parse_files(body.object("files"))
    if not from_ and not files:
        raise BadField("from", "either 'from' (a model) or 'files' (uploaded blobs) is required")
    if from_:
        req.from_model = from_
    req.files.update(files)
    for key in ("template", "system"):
        value = body.str(key)
        if value is not None:
            setattr(req, key, value)
    license_ = parse_license(body.raw("license"))
    if license_ is not None:
        req.license = license_
    parameters = body.object("parameters")
    if parameters:
        req.parameters_json = json.dumps(parameters)
    req.messages.extend(parse_create_messages(body.list("messages")))
    req.quantize = body.str("quantize", default="") or ""
    body.finish()
    return req, stream


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


async def pull(request: web.Request) -> web.StreamResponse:
    """POST /api/pull {model, insecure, stream}: NDJSON progress, ending with {"status": "success"}."""
    body = Body(await read_json_object(request))
    name = registry_name(model_field(body))
    insecure = bool(body.bool("insecure", default=False))
    stream = bool(body.bool("stream", default=True))
    body.finish()
    call = _store(request).Pull(store_pb2.PullRequest(name=name, insecure=insecure), metadata=_metadata(request))
    return await relay_progress(request, call, stream)


async def push(request: web.Request) -> web.StreamResponse:
    """POST /api/push {model, insecure, stream}: NDJSON progress, ending with {"status": "success"}."""
    body = Body(await read_json_object(request))
    name = registry_name(model_field(body))
    insecure = bool(body.bool("insecure", default=False))
    stream = bool(body.bool("stream", default=True))
    body.finish()
    call = _store(request).Push(store_pb2.PushRequest(name=name, insecure=insecure), metadata=_metadata(request))
    return await relay_progress(request, call, stream)


async def create(request: web.Request) -> web.StreamResponse:
    """POST /api/create in Ollama's current shape (from, files, template, system, parameters, ...)."""
    req, stream = parse_create(await read_json_object(request))
    call = _store(request).Create(req, metadata=_metadata(request))
    return await relay_progress(request, call, stream)


async def copy(request: web.Request) -> web.Response:
    """POST /api/copy {source, destination}: 200 with an empty body; 404 for an unknown source."""
    body = Body(await read_json_object(request))
    source = body.str("source", required=True) or ""
    destination = body.str("destination", required=True) or ""
    body.finish()
    await rpc.call("store", _store(request).Copy, store_pb2.CopyRequest(source=source, destination=destination),
                   timeout=60.0, request_id=state.request_id(request))
    return web.Response(status=200)


async def delete(request: web.Request) -> web.Response:
    """DELETE /api/delete {model}: 200 with an empty body; 404 for an unknown model."""
    body = Body(await read_json_object(request))
    name = model_field(body)
    body.finish()
    await rpc.call("store", _store(request).Remove, store_pb2.RemoveRequest(name=name), timeout=60.0,
                   request_id=state.request_id(request))
    return web.Response(status=200)


async def show(request: web.Request) -> web.Response:
    """POST /api/show {model, verbose}: details, model_info, parameters, template, system, license, ...

    `verbose` is accepted: Ollama uses it to add the tokenizer's full vocabulary to model_info,
    which this store does not keep there, so both answers are the same.
    """
    body = Body(await read_json_object(request))
    name = model_field(body)
    body.bool("verbose", default=False)
    body.finish()
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


def add_routes(app: web.Application) -> None:
    app.router.add_post("/api/pull", pull)
    app.router.add_post("/api/push", push)
    app.router.add_post("/api/create", create)
    app.router.add_post("/api/copy", copy)
    app.router.add_delete("/api/delete", delete)
    app.router.add_post("/api/show", show)
    app.router.add_head("/api/blobs/{digest}", head_blob)
    app.router.add_post("/api/blobs/{digest}", post_blob)
