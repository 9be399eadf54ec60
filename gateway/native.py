"""Ollama's native API (/api/*): request translation and NDJSON rendering over the generation core."""

from __future__ import annotations

import asyncio
from typing import Any, Callable

from aiohttp import web

from mlxserve.services.common import logs, rpc
from mlxserve.services.common.errors import MlxServeError
from mlxserve.v1 import common_pb2, store_pb2, supervisor_pb2, worker_pb2

from . import state
from .responses import dumps, ndjson_line, now_rfc3339
from .streams import Generation, GenerationRequest
from .validation import Body, BadField, parse_keep_alive, read_json_object

log = logs.get_logger(component="native")

CHAT_ROLES = ("system", "user", "assistant", "tool")
# Top-level fields Ollama knows that this server cannot honour yet: refused unless neutral.
GENERATE_UNSUPPORTED = ("format", "images", "think", "suffix", "logprobs", "top_logprobs", "context", "tools", "template")
CHAT_UNSUPPORTED = ("format", "tools", "think", "logprobs", "top_logprobs")


def parse_options(options: dict[str, Any] | None) -> worker_pb2.SamplingOptions:
    """Ollama `options` → SamplingOptions. Keys we do not know are ignored (as Ollama does), and logged."""
    out = worker_pb2.SamplingOptions()
    if not options:
        return out
    body = Body(options, prefix="options.")
    values: dict[str, Any] = {
        "temperature": body.number("temperature", minimum=0.0),
        "top_p": body.number("top_p", minimum=0.0, maximum=1.0),
        "top_k": body.int("top_k", minimum=0),
        "min_p": body.number("min_p", minimum=0.0, maximum=1.0),
        "seed": body.int("seed"),
        "num_predict": body.int("num_predict"),
        "num_ctx": body.int("num_ctx", minimum=1),
    }
    for key, value in values.items():
        if value is not None:
            setattr(out, key, value)
    out.stop.extend(body.stop("stop"))
    ignored = sorted(set(options) - body.seen)
    if ignored:
        log.info("options_ignored", keys=ignored)
    return out


def parse_common(body: Body) -> tuple[str, bool, worker_pb2.SamplingOptions, float | None]:
    """Fields /api/generate and /api/chat share: model, stream, options, keep_alive."""
    model = body.str("model", required=True) or ""
    if not model.strip():
        raise BadField("model", "'model' is required")
    stream = body.bool("stream", default=True)
    options = parse_options(body.object("options"))
    keep_alive = parse_keep_alive(body.raw("keep_alive"))
    return model, bool(stream), options, keep_alive


def parse_generate(data: dict[str, Any], request_id: str) -> tuple[GenerationRequest, bool]:
    """A /api/generate body → (request, stream); raises BadField/UnsupportedField (400)."""
    body = Body(data)
    model, stream, options, keep_alive = parse_common(body)
    req = GenerationRequest(
        model=model, request_id=request_id, options=options, keep_alive_s=keep_alive,
        prompt=body.str("prompt", default="") or "", system=body.str("system", default="") or "",
        raw=bool(body.bool("raw", default=False)),
    )
    body.refuse(GENERATE_UNSUPPORTED)
    body.finish()
    return req, stream


def parse_messages(items: list[Any] | None) -> list[tuple[str, str]]:
    """Ollama chat messages → (role, content) pairs; images, tool calls and thinking are refused."""
    out: list[tuple[str, str]] = []
    for i, item in enumerate(items or []):
        if not isinstance(item, dict):
            raise BadField(f"messages[{i}]", f"'messages[{i}]' must be an object")
        msg = Body(item, prefix=f"messages[{i}].")
        role = msg.str("role", required=True) or ""
        if role not in CHAT_ROLES:
            raise BadField(msg.name("role"), f"'{msg.name('role')}' must be one of {', '.join(CHAT_ROLES)}; got {role!r}")
        content = msg.str("content", default="") or ""
        msg.refuse(("images", "tool_calls", "thinking", "tool_name"))
        msg.finish()
        out.append((role, content))
    return out


def parse_chat(data: dict[str, Any], request_id: str) -> tuple[GenerationRequest, bool]:
    """A /api/chat body → (request, stream); raises BadField/UnsupportedField (400)."""
    body = Body(data)
    model, stream, options, keep_alive = parse_common(body)
    messages = parse_messages(body.list("messages"))
    req = GenerationRequest(model=model, request_id=request_id, options=options, keep_alive_s=keep_alive, messages=messages)
    body.refuse(CHAT_UNSUPPORTED)
    body.finish()
    return req, stream


def final_fields(gen: Generation) -> dict[str, Any]:
    """The counters of Ollama's last chunk (durations in nanoseconds)."""
    s = gen.stats
    return {
        "done_reason": gen.done_reason,
        "total_duration": gen.total_duration_ns(),
        "load_duration": gen.load_duration_ns,
        "prompt_eval_count": s.prompt_eval_count,
        "prompt_eval_duration": s.prompt_eval_duration,
        "eval_count": s.eval_count,
        "eval_duration": s.eval_duration,
    }


def generate_piece(text: str) -> dict[str, Any]:
    return {"response": text}


def chat_piece(text: str) -> dict[str, Any]:
    return {"message": {"role": "assistant", "content": text}}


async def respond(request: web.Request, req: GenerationRequest, stream: bool, piece: Callable[[str], dict[str, Any]]) -> web.StreamResponse:
    """Run one generation and render it as Ollama does: NDJSON chunks, or one JSON object."""
    core = state.core(request)
    if not (req.messages if req.is_chat else req.prompt):
        # Ollama's "load the model" request: nothing to generate.
        if req.keep_alive_s == 0:
            await core.unload(req.model, req.request_id)
            reason = "unload"
        else:
            await core.load(req.model, req.request_id, req.keep_alive_s)
            reason = "load"
        return web.json_response({"model": req.model, "created_at": now_rfc3339(), **piece(""), "done": True,
                                  "done_reason": reason}, dumps=dumps)

    gen = await core.start(req)
    try:
        if not stream:
            text = [event.text async for event in gen.events()]
            return web.json_response({"model": req.model, "created_at": now_rfc3339(), **piece("".join(text)),
                                      "done": True, **final_fields(gen)}, dumps=dumps)
        resp = web.StreamResponse(headers={"Content-Type": "application/x-ndjson"})
        await resp.prepare(request)
        try:
            try:
                async for event in gen.events():
                    if event.text:
                        await resp.write(ndjson_line({"model": req.model, "created_at": now_rfc3339(),
                                                      **piece(event.text), "done": False}))
                final = {"model": req.model, "created_at": now_rfc3339(), **piece(""), "done": True, **final_fields(gen)}
                await resp.write(ndjson_line(final))
            except MlxServeError as e:
                log.warning("generation_failed", error=e.message)
                await resp.write(ndjson_line({"error": e.message}))
            await resp.write_eof()
        except ConnectionResetError:
            log.info("client_disconnected")
        return resp
    finally:
        await gen.close()


async def generate(request: web.Request) -> web.StreamResponse:
    """POST /api/generate"""
    req, stream = parse_generate(await read_json_object(request), state.request_id(request))
    return await respond(request, req, stream, generate_piece)


async def chat(request: web.Request) -> web.StreamResponse:
    """POST /api/chat"""
    req, stream = parse_chat(await read_json_object(request), state.request_id(request))
    return await respond(request, req, stream, chat_piece)


def details_json(d: common_pb2.ModelDetails) -> dict[str, Any]:
    return {
        "parent_model": d.parent_model,
        "format": d.format,
        "family": d.family,
        "families": list(d.families) or None,
        "parameter_size": d.parameter_size,
        "quantization_level": d.quantization_level,
    }


async def tags(request: web.Request) -> web.Response:
    """GET /api/tags: the models in the store."""
    resp = await rpc.call("store", state.backends(request).store().List, store_pb2.ListRequest(),
                          timeout=10.0, request_id=state.request_id(request))
    return web.json_response({"models": [
        {"name": m.name, "model": m.model or m.name, "modified_at": m.modified_at or None, "size": m.size,
         "digest": m.digest, "details": details_json(m.details)}
        for m in resp.models
    ]}, dumps=dumps)


async def ps(request: web.Request) -> web.Response:
    """GET /api/ps: the models loaded now."""
    resp = await rpc.call("supervisor", state.backends(request).supervisor().ListLoaded, supervisor_pb2.ListLoadedRequest(),
                          timeout=10.0, request_id=state.request_id(request))
    return web.json_response({"models": [
        {"name": m.name, "model": m.model or m.name, "size": m.size, "digest": m.digest, "details": details_json(m.details),
         "expires_at": m.expires_at or None, "size_vram": m.size_vram, "context_length": m.context_length}
        for m in resp.models
    ]}, dumps=dumps)


async def health(request: web.Request) -> web.Response:
    """GET /api/health: 200 when the store and the supervisor answer a Ping, else 503 naming who does not."""
    backends, rid = state.backends(request), state.request_id(request)
    names = ("store", "supervisor")
    results = await asyncio.gather(*(backends.ping(n, timeout=1.0, request_id=rid) for n in names), return_exceptions=True)
    services: dict[str, str] = {}
    down: list[str] = []
    for name, result in zip(names, results):
        if isinstance(result, BaseException):
            services[name] = result.message if isinstance(result, MlxServeError) else f"{type(result).__name__}: {result}"
            down.append(name)
        else:
            services[name] = "ok"
    if not down:
        return web.json_response({"status": "ok", "services": services}, dumps=dumps)
    body = {"status": "unavailable", "error": f"not answering: {', '.join(down)}", "services": services}
    return web.json_response(body, status=503, dumps=dumps)


def add_routes(app: web.Application) -> None:
    app.router.add_post("/api/generate", generate)
    app.router.add_post("/api/chat", chat)
    app.router.add_get("/api/tags", tags)
    app.router.add_get("/api/ps", ps)
    app.router.add_get("/api/health", health)

