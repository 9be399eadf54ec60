"""The OpenAI API (/v1/*): request translation and SSE rendering over the generation core."""

from __future__ import annotations

import secrets
import time
from datetime import datetime
from typing import Any

from aiohttp import web

from mlxserve.services.common import logs, rpc
from mlxserve.services.common.errors import MlxServeError, NotFound
from mlxserve.v1 import store_pb2, worker_pb2

from . import state
from .responses import dumps, openai_error_body, sse_event
from .streams import Generation, GenerationRequest
from .validation import Body, BadField, UnsupportedField, is_neutral, read_json_object

log = logs.get_logger(component="openai")

ROLES = {"system": "system", "developer": "system", "user": "user", "assistant": "assistant", "tool": "tool"}

# Parameters accepted only with the value that asks for nothing (what many SDKs send by default).
_NEUTRAL_VALUES: dict[str, Any] = {
    "frequency_penalty": is_neutral,
    "presence_penalty": is_neutral,
    "logprobs": is_neutral,
    "top_logprobs": is_neutral,
    "tools": is_neutral,
    "functions": is_neutral,
    "logit_bias": is_neutral,
    "store": is_neutral,
    "metadata": is_neutral,
    "tool_choice": lambda v: v is None or v == "none",
    "function_call": lambda v: v is None or v == "none",
    "parallel_tool_calls": lambda v: v is None or isinstance(v, bool),  # means nothing without tools
    "response_format": lambda v: v is None or v == {"type": "text"},
    "modalities": lambda v: v is None or v == ["text"],
    "service_tier": lambda v: v in (None, "auto", "default"),
}


def parse_content(value: Any, where: str) -> str:
    """Message content: a string, null, or a list of text parts (other part types are refused)."""
    if value is None:
        return ""
    if isinstance(value, str):
        return value
    if not isinstance(value, list):
        raise BadField(where, f"'{where}' must be a string or an array of content parts")
    texts: list[str] = []
    for j, part in enumerate(value):
        name = f"{where}[{j}]"
        if not isinstance(part, dict):
            raise BadField(name, f"'{name}' must be an object")
        body = Body(part, prefix=f"{name}.")
        kind = body.str("type", required=True)
        if kind != "text":
            raise UnsupportedField(f"{name}.type", f"content parts of type {kind!r} are not supported yet ('{name}.type')")
        texts.append(body.str("text", required=True) or "")
        body.finish()
    return "".join(texts)


def parse_messages(items: list[Any] | None) -> list[tuple[str, str]]:
    if not items:
        raise BadField("messages", "'messages' must be a non-empty array")
    out: list[tuple[str, str]] = []
    for i, item in enumerate(items):
        where = f"messages[{i}]"
        if not isinstance(item, dict):
            raise BadField(where, f"'{where}' must be an object")
        msg = Body(item, prefix=f"{where}.")
        role = msg.str("role", required=True) or ""
        if role not in ROLES:
            raise BadField(msg.name("role"), f"'{msg.name('role')}' must be one of {', '.join(ROLES)}; got {role!r}")
        content = parse_content(msg.raw("content"), msg.name("content"))
        msg.refuse(("name", "tool_calls", "tool_call_id", "function_call", "audio", "refusal"))
        msg.finish()
        out.append((ROLES[role], content))
    return out


def parse_chat_completion(data: dict[str, Any], request_id: str) -> tuple[GenerationRequest, bool, bool]:
    """A /v1/chat/completions body → (request, stream, include_usage); raises BadField/UnsupportedField (400)."""
    body = Body(data)
    model = body.str("model", required=True) or ""
    if not model.strip():
        raise BadField("model", "'model' is required")
    messages = parse_messages(body.list("messages"))
    stream = bool(body.bool("stream", default=False))
    include_usage = False
    stream_options = body.object("stream_options")
    if stream_options:
        if not stream:
            raise BadField("stream_options", "'stream_options' is only allowed when 'stream' is true")
        so = Body(stream_options, prefix="stream_options.")
        include_usage = bool(so.bool("include_usage", default=False))
        so.finish()
    n = body.int("n")
    if n not in (None, 1):
        raise UnsupportedField("n", "'n' must be 1: one choice per request is supported")
    options = worker_pb2.SamplingOptions()
    values = {
        "temperature": body.number("temperature", minimum=0.0, maximum=2.0),
        "top_p": body.number("top_p", minimum=0.0, maximum=1.0),
        "seed": body.int("seed"),
    }
    max_tokens = body.int("max_completion_tokens", minimum=1)
    legacy_max = body.int("max_tokens", minimum=1)
    values["num_predict"] = max_tokens if max_tokens is not None else legacy_max
    for key, value in values.items():
        if value is not None:
            setattr(options, key, value)
    options.stop.extend(body.stop("stop"))
    user = body.str("user")
    if user:
        log.info("openai_user", user=user)
    for key, allowed in _NEUTRAL_VALUES.items():
        body.refuse((key,), allowed=allowed)
    body.finish()
    req = GenerationRequest(model=model, request_id=request_id, options=options, messages=messages)
    return req, stream, include_usage


def finish_reason(gen: Generation) -> str:
    return "length" if gen.done_reason == "length" else "stop"


def usage(gen: Generation) -> dict[str, int]:
    s = gen.stats
    return {"prompt_tokens": s.prompt_tokens, "completion_tokens": s.eval_count,
            "total_tokens": s.prompt_tokens + s.eval_count}


async def chat_completions(request: web.Request) -> web.StreamResponse:
    """POST /v1/chat/completions"""
    req, stream, include_usage = parse_chat_completion(await read_json_object(request), state.request_id(request))
    gen = await state.core(request).start(req)
    try:
        head = {"id": f"chatcmpl-{secrets.token_hex(12)}", "created": int(time.time()), "model": req.model,
                "system_fingerprint": f"fp_{gen.lease.digest[:12] or 'mlxserve'}"}
        if not stream:
            text = "".join([event.text async for event in gen.events()])
            return web.json_response({
                **head, "object": "chat.completion",
                "choices": [{"index": 0, "message": {"role": "assistant", "content": text},
                             "finish_reason": finish_reason(gen), "logprobs": None}],
                "usage": usage(gen),
            }, dumps=dumps)

        chunk = {**head, "object": "chat.completion.chunk"}

        def delta(d: dict[str, Any], reason: str | None = None) -> bytes:
            return sse_event({**chunk, "choices": [{"index": 0, "delta": d, "finish_reason": reason, "logprobs": None}]})

        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache"})
        await resp.prepare(request)
        try:
            try:
                await resp.write(delta({"role": "assistant", "content": ""}))
                async for event in gen.events():
                    if event.text:
                        await resp.write(delta({"content": event.text}))
                await resp.write(delta({}, finish_reason(gen)))
                if include_usage:
                    await resp.write(sse_event({**chunk, "choices": [], "usage": usage(gen)}))
            except MlxServeError as e:
                log.warning("generation_failed", error=e.message)
                await resp.write(sse_event(openai_error_body(e)))
            await resp.write(sse_event("[DONE]"))
            await resp.write_eof()
        except ConnectionResetError:
            log.info("client_disconnected")
        return resp
    finally:
        await gen.close()


def _model_entry(name: str, modified_at: str) -> dict[str, Any]:
    try:
        created = int(datetime.fromisoformat(modified_at).timestamp())
    except ValueError:
        created = 0
    return {"id": name, "object": "model", "created": created, "owned_by": "library"}


async def _list(request: web.Request) -> list[store_pb2.ModelSummary]:
    resp = await rpc.call("store", state.backends(request).store().List, store_pb2.ListRequest(),
                          timeout=10.0, request_id=state.request_id(request))
    return list(resp.models)


async def models(request: web.Request) -> web.Response:
    """GET /v1/models"""
    return web.json_response({"object": "list", "data": [_model_entry(m.name, m.modified_at) for m in await _list(request)]},
                             dumps=dumps)


async def model(request: web.Request) -> web.Response:
    """GET /v1/models/{model}: one entry of the list ("name" matches "name:latest")."""
    wanted = request.match_info["model"].lower()
    for m in await _list(request):
        if m.name.lower() in (wanted, f"{wanted}:latest"):
            return web.json_response(_model_entry(m.name, m.modified_at), dumps=dumps)
    raise NotFound(f"model '{request.match_info['model']}' not found")


def add_routes(app: web.Application) -> None:
    app.router.add_post("/v1/chat/completions", chat_completions)
    app.router.add_get("/v1/models", models)
    app.router.add_get("/v1/models/{model:.+}", model)
