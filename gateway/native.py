"""Ollama's native API (/api/*): request translation and NDJSON rendering over the generation core."""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any, AsyncIterator, Callable

from aiohttp import web

from mlxserve.services.common import logs, rpc
from mlxserve.services.common.errors import MlxServeError
from mlxserve.v1 import common_pb2, store_pb2, supervisor_pb2, worker_pb2
from mlxserve.v1.frames import TokenEvent, TokenLogprob, ToolCall

from . import state
from .responses import NDJSON_HEADERS, dumps, ndjson_line, stream_chunks
from .streams import Collected, Generation, GenerationRequest
from .validation import (Body, BadField, UnsupportedField, is_neutral, parse_arguments, parse_keep_alive, parse_ollama_format,
                         parse_tools, parse_top_logprobs, read_json_object)

log = logs.get_logger(component="native")

CHAT_ROLES = ("system", "user", "assistant", "tool")
# Fields Ollama knows that this server cannot honour: refused, unless neutral, with what to do instead.
GENERATE_UNSUPPORTED = {
    "images": "'images' is not supported: no model served here takes images (there are no vision models yet)",
    "suffix": "'suffix' (fill-in-the-middle) is not supported: no model served here has an infill template",
    "context": "'context' (Ollama's deprecated token context) is not supported: send the conversation to /api/chat instead",
    "template": "'template' per request is not supported: create a model with the template (/api/create, 'template')",
}


def created_at() -> str:
    """Now as Ollama writes it (Go's RFC3339Nano, UTC): nanoseconds, trailing zeros trimmed."""
    ns = time.time_ns()
    seconds, fraction = divmod(ns, 1_000_000_000)
    digits = f"{fraction:09d}".rstrip("0")
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(seconds)) + (f".{digits}" if digits else "") + "Z"


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
        "seed": body.int("seed", bits=64),
        "num_predict": body.int("num_predict"),
        "num_ctx": body.int("num_ctx", minimum=1),
        "repeat_penalty": body.number("repeat_penalty", minimum=0.0),
        "repeat_last_n": body.int("repeat_last_n", minimum=-1),
        "presence_penalty": body.number("presence_penalty", minimum=-2.0, maximum=2.0),
        "frequency_penalty": body.number("frequency_penalty", minimum=-2.0, maximum=2.0),
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


def parse_outputs(body: Body, req: GenerationRequest) -> None:
    """Fields both routes share that shape the output: format, think, logprobs, truncate."""
    req.format = parse_ollama_format(body)
    req.think = parse_think(body)
    req.logprobs = bool(body.bool("logprobs", default=False))
    req.top_logprobs = parse_top_logprobs(body, req.logprobs)
    req.truncate = body.bool("truncate")


def parse_think(body: Body) -> bool | None:
    """Ollama's `think`: true/false (the effort levels some models take are not supported)."""
    value = body.raw("think")
    if value is None or isinstance(value, bool):
        return value
    if isinstance(value, str) and value in ("high", "medium", "low"):
        raise UnsupportedField("think", f"'think': {value!r} (a reasoning effort level) is not supported; use true or false")
    raise BadField("think", "'think' must be true or false")


def parse_generate(data: dict[str, Any], request_id: str) -> tuple[GenerationRequest, bool]:
    """A /api/generate body → (request, stream); raises BadField/UnsupportedField (400)."""
    body = Body(data)
    model, stream, options, keep_alive = parse_common(body)
    req = GenerationRequest(
        model=model, request_id=request_id, options=options, keep_alive_s=keep_alive,
        prompt=body.str("prompt", default="") or "", system=body.str("system", default="") or "",
        raw=bool(body.bool("raw", default=False)),
    )
    parse_outputs(body, req)
    if body.list("tools"):
        raise UnsupportedField("tools", "'tools' is for /api/chat; /api/generate does not take tools")
    for key, message in GENERATE_UNSUPPORTED.items():
        if not is_neutral(body.raw(key)):
            raise UnsupportedField(key, message)
    body.finish()
    return req, stream


def parse_tool_calls(items: list[Any] | None, where: str) -> str:
    """An assistant message's Ollama tool calls ([{function: {name, arguments}}]) → tool_calls_json."""
    calls: list[dict[str, Any]] = []
    for j, item in enumerate(items or []):
        name = f"{where}[{j}]"
        fn = item.get("function") if isinstance(item, dict) else None
        if not isinstance(fn, dict) or not isinstance(fn.get("name"), str) or not fn["name"]:
            raise BadField(f"{name}.function.name", f"'{name}.function.name' must be a non-empty string")
        call: dict[str, Any] = {"name": fn["name"], "arguments": parse_arguments(fn.get("arguments") or {}, f"{name}.function.arguments")}
        if isinstance(item.get("id"), str) and item["id"]:
            call["id"] = item["id"]
        calls.append(call)
    return json.dumps(calls, ensure_ascii=False) if calls else ""


def parse_messages(items: list[Any] | None) -> list[worker_pb2.ChatMessage]:
    """Ollama chat messages → ChatMessage (tool calls, tool results and thinking included); images are refused."""
    out: list[worker_pb2.ChatMessage] = []
    for i, item in enumerate(items or []):
        if not isinstance(item, dict):
            raise BadField(f"messages[{i}]", f"'messages[{i}]' must be an object")
        msg = Body(item, prefix=f"messages[{i}].")
        role = msg.str("role", required=True) or ""
        if role not in CHAT_ROLES:
            raise BadField(msg.name("role"), f"'{msg.name('role')}' must be one of {', '.join(CHAT_ROLES)}; got {role!r}")
        out.append(worker_pb2.ChatMessage(
            role=role, content=msg.str("content", default="") or "", thinking=msg.str("thinking", default="") or "",
            tool_calls_json=parse_tool_calls(msg.list("tool_calls"), msg.name("tool_calls")),
            tool_name=msg.str("tool_name", default="") or "", tool_call_id=msg.str("tool_call_id", default="") or "",
        ))
        if not is_neutral(msg.raw("images")):
            raise UnsupportedField(msg.name("images"), f"'{msg.name('images')}' is not supported: no model served here "
                                                       "takes images (there are no vision models yet)")
        msg.finish()
    return out


def parse_chat(data: dict[str, Any], request_id: str) -> tuple[GenerationRequest, bool]:
    """A /api/chat body → (request, stream); raises BadField/UnsupportedField (400)."""
    body = Body(data)
    model, stream, options, keep_alive = parse_common(body)
    messages = parse_messages(body.list("messages"))
    req = GenerationRequest(model=model, request_id=request_id, options=options, keep_alive_s=keep_alive, messages=messages)
    parse_outputs(body, req)
    req.tools_json = parse_tools(body)
    body.finish()
    return req, stream


def final_fields(gen: Generation) -> dict[str, Any]:
    """The counters of Ollama's last chunk (durations in nanoseconds).

    Ollama has no "tool_calls" done reason: a turn that called tools simply stopped.
    """
    s = gen.stats
    return {
        "done_reason": "stop" if gen.done_reason == "tool_calls" else gen.done_reason,
        "total_duration": gen.total_duration_ns(),
        "load_duration": gen.load_duration_ns,
        "prompt_eval_count": s.prompt_eval_count,
        "prompt_eval_duration": s.prompt_eval_duration,
        "eval_count": s.eval_count,
        "eval_duration": s.eval_duration,
    }


def tool_calls_json(calls: list[ToolCall]) -> list[dict[str, Any]]:
    """Ollama's shape: arguments as an object."""
    out = []
    for call in calls:
        try:
            arguments = json.loads(call.arguments or "{}")
        except ValueError:  # the worker parsed it; keep what it said rather than drop the call
            arguments = call.arguments
        out.append({"function": {"name": call.name, "arguments": arguments}})
    return out


def logprobs_json(items: list[TokenLogprob], top: bool) -> list[dict[str, Any]]:
    """Ollama's logprobs: [{token, logprob, bytes, top_logprobs: [{token, logprob, bytes}]}]."""
    out = []
    for lp in items:
        entry: dict[str, Any] = {"token": lp.token, "logprob": lp.logprob, "bytes": lp.bytes}
        if top:
            entry["top_logprobs"] = [{"token": t.token, "logprob": t.logprob, "bytes": t.bytes} for t in lp.top]
        out.append(entry)
    return out


def generate_piece(req: GenerationRequest, text: str, thinking: str, calls: list[ToolCall], logprobs: list[TokenLogprob]) -> dict[str, Any]:
    piece: dict[str, Any] = {"response": text}
    if thinking:
        piece["thinking"] = thinking
    if req.logprobs and logprobs:
        piece["logprobs"] = logprobs_json(logprobs, req.top_logprobs > 0)
    return piece


def chat_piece(req: GenerationRequest, text: str, thinking: str, calls: list[ToolCall], logprobs: list[TokenLogprob]) -> dict[str, Any]:
    message: dict[str, Any] = {"role": "assistant", "content": text}
    if thinking:
        message["thinking"] = thinking
    if calls:
        message["tool_calls"] = tool_calls_json(calls)
    piece: dict[str, Any] = {"message": message}
    if req.logprobs and logprobs:
        piece["logprobs"] = logprobs_json(logprobs, req.top_logprobs > 0)
    return piece


Piece = Callable[[GenerationRequest, str, str, list[ToolCall], list[TokenLogprob]], dict[str, Any]]


def event_piece(piece: Piece, req: GenerationRequest, event: TokenEvent) -> dict[str, Any] | None:
    """One frame as a chunk's payload, or None when it carries nothing to show."""
    if not (event.text or event.thinking or event.tool_calls or (req.logprobs and event.logprobs)):
        return None
    return piece(req, event.text, event.thinking, list(event.tool_calls), list(event.logprobs))


async def respond(request: web.Request, req: GenerationRequest, stream: bool, piece: Piece) -> web.StreamResponse:
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
        return web.json_response({"model": req.model, "created_at": created_at(), **piece(req, "", "", [], []), "done": True,
                                  "done_reason": reason}, dumps=dumps)

    gen = await core.start(req)
    try:
        if not stream:
            out: Collected = await gen.collect()
            return web.json_response({"model": req.model, "created_at": created_at(),
                                      **piece(req, out.content, out.reasoning, out.tool_calls, out.logprobs),
                                      "done": True, **final_fields(gen)}, dumps=dumps)
        async def chunks() -> AsyncIterator[bytes]:
            async for event in gen.events():
                payload = event_piece(piece, req, event)
                if payload is not None:
                    yield ndjson_line({"model": req.model, "created_at": created_at(), **payload, "done": False})
            yield ndjson_line({"model": req.model, "created_at": created_at(), **piece(req, "", "", [], []), "done": True,
                               **final_fields(gen)})

        return await stream_chunks(request, NDJSON_HEADERS, chunks(), error_chunk=lambda e: ndjson_line({"error": e.message}))
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
         "expires_at": m.expires_at or None, "size_vram": m.size_vram, "context_length": m.context_length,
         **compute_fields(m)}
        for m in resp.models
    ]}, dumps=dumps)


def compute_fields(m: supervisor_pb2.LoadedModel) -> dict[str, Any]:
    """mlxserve's additions to an /api/ps entry: how the worker computes (only what it reported)."""
    out: dict[str, Any] = {}
    if m.compute_dtype:
        out["compute_dtype"] = m.compute_dtype
    if m.blas:
        out["blas"] = m.blas
        out["blas_gflops"] = round(m.blas_gflops, 1)
    return out


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

