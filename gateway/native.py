"""Ollama's native API (/api/*): request translation and NDJSON rendering over the generation core."""

from __future__ import annotations

import json
import time
from typing import Any, AsyncIterator, Callable

import msgspec
from aiohttp import web

from mlxserve.services.common import logs
from mlxserve.services.common.times import rfc3339
from mlxserve.v1.frames import TokenEvent, TokenLogprob, ToolCall
from mlxserve.v1.requests import ChatMessage, SamplingOptions

from . import state
from .generation import Collected, Generation, GenerationRequest
from .rendering import NDJSON_HEADERS, dumps, logprobs_json, ndjson_line, stream_chunks
from .request_types import ChatRequest, GenerateRequest, NativeMessage, NativeToolCall, Options
from .sampling import from_options
from .tools import chat_tools, tool_call
from .validation import (UnsupportedField, check_top_logprobs, decode, model_name, note_ignored, parse_arguments, parse_keep_alive,
                         parse_ollama_format, read_json_object)

log = logs.get_logger(component="native")

routes = web.RouteTableDef()

# Fields of Ollama's API that this server cannot honour, refused unless empty, with what to do instead.
GENERATE_REFUSED = {
    "images": "'images' is not supported: no model served here takes images (there are no vision models yet)",
    "suffix": "'suffix' (fill-in-the-middle) is not supported: no model served here has an infill template",
    "template": "'template' per request is not supported: create a model with the template (/api/create, 'template')",
}


def created_at() -> str:
    """Now as Ollama writes it (Go's RFC3339Nano, UTC): the one RFC 3339 formatter's seconds, then the
    nanoseconds with trailing zeros trimmed."""
    seconds, fraction = divmod(time.time_ns(), 1_000_000_000)
    digits = f"{fraction:09d}".rstrip("0")
    return rfc3339(seconds).removesuffix("Z") + (f".{digits}" if digits else "") + "Z"


class _WithOptions(msgspec.Struct):
    options: Options | None = None


def parse_options(data: dict[str, Any] | None) -> SamplingOptions:
    """Ollama `options` as a JSON object → SamplingOptions (unknown keys are ignored, as Ollama does)."""
    body, _ = decode({"options": data}, _WithOptions)
    return from_options(body.options)


def think_value(value: bool | str | None) -> bool | None:
    """Ollama's `think`: true/false, or an effort level ("high", "medium", "low"), which switches thinking on
    (the templates here take no level)."""
    return value if value is None or isinstance(value, bool) else True


def common_request(body: GenerateRequest | ChatRequest, request_id: str, ignored: list[str]) -> GenerationRequest:
    """The fields /api/generate and /api/chat share: model, options, keep_alive, format, think, logprobs, truncate."""
    req = GenerationRequest(model=model_name(body.model), request_id=request_id, options=from_options(body.options),
                            keep_alive_s=parse_keep_alive(body.keep_alive), ignored=ignored)
    req.format = parse_ollama_format(body.format)
    req.think = think_value(body.think)
    req.logprobs = bool(body.logprobs)
    req.top_logprobs = check_top_logprobs(body.top_logprobs, req.logprobs)
    req.truncate = body.truncate
    return req


def parse_generate(data: dict[str, Any], request_id: str) -> tuple[GenerationRequest, bool]:
    """A /api/generate body → (request, stream); raises BadField/UnsupportedField (400)."""
    body, ignored = decode(data, GenerateRequest)
    req = common_request(body, request_id, ignored)
    req.prompt, req.system, req.raw = body.prompt or "", body.system or "", bool(body.raw)
    req.context = list(body.context or [])
    req.want_context = True
    if body.tools:
        raise UnsupportedField("tools", "'tools' is for /api/chat; /api/generate does not take tools")
    for key, message in GENERATE_REFUSED.items():
        if getattr(body, key):
            raise UnsupportedField(key, message)
    return req, body.stream is not False


def parse_tool_calls(calls: list[NativeToolCall] | None, where: str) -> list[ToolCall]:
    """An assistant message's Ollama tool calls ([{function: {name, arguments}}]) → ToolCall."""
    return [tool_call(c.id, c.function.name, parse_arguments(c.function.arguments, f"{where}[{j}].function.arguments"))
            for j, c in enumerate(calls or [])]


def parse_messages(items: list[NativeMessage] | None) -> list[ChatMessage]:
    """Ollama chat messages → ChatMessage (tool calls, tool results and thinking included); images are refused."""
    out: list[ChatMessage] = []
    for i, m in enumerate(items or []):
        if m.images:
            raise UnsupportedField(f"messages[{i}].images", f"'messages[{i}].images' is not supported: no model served "
                                                             "here takes images (there are no vision models yet)")
        out.append(ChatMessage(
            role=m.role, content=m.content or "", thinking=m.thinking or "",
            tool_calls=parse_tool_calls(m.tool_calls, f"messages[{i}].tool_calls"),
            tool_name=m.tool_name or "", tool_call_id=m.tool_call_id or "",
        ))
    return out


def parse_chat(data: dict[str, Any], request_id: str) -> tuple[GenerationRequest, bool]:
    """A /api/chat body → (request, stream); raises BadField/UnsupportedField (400).

    Ollama's chat has no tool_choice: the model decides (some clients send one anyway; like every
    unknown field it is ignored and named).
    """
    body, ignored = decode(data, ChatRequest)
    req = common_request(body, request_id, ignored)
    req.messages = parse_messages(body.messages)
    req.tools, strict = chat_tools(body.tools)
    req.ignored += strict  # arguments are constrained only when a call is forced, which this API cannot ask
    return req, body.stream is not False


def final_fields(gen: Generation) -> dict[str, Any]:
    """The counters of Ollama's last chunk (durations in nanoseconds), and /api/generate's `context`.

    Ollama has no "tool_calls" done reason: a turn that called tools simply stopped.
    """
    s = gen.stats
    context = {"context": gen.context} if gen.req.want_context else {}
    return {**context,
        "done_reason": "stop" if gen.done_reason == "tool_calls" else gen.done_reason,
        "total_duration": gen.total_duration_ns(),
        "load_duration": gen.load_duration_ns,
        "prompt_eval_count": s.prompt_eval_count,
        "prompt_eval_duration": s.prompt_eval_duration,
        "eval_count": s.eval_count,
        "eval_duration": s.eval_duration,
    }


def tool_calls_json(calls: list[ToolCall]) -> list[dict[str, Any]]:
    """Ollama's shape: arguments as an object; the call's id when the worker gave one (Ollama >= 0.12.10)."""
    out = []
    for call in calls:
        try:
            arguments = json.loads(call.arguments or "{}")
        except ValueError:  # the worker parsed it; keep what it said rather than drop the call
            arguments = call.arguments
        entry: dict[str, Any] = {"function": {"name": call.name, "arguments": arguments}}
        if call.id:
            entry["id"] = call.id
        out.append(entry)
    return out


def generate_piece(req: GenerationRequest, text: str, thinking: str, calls: list[ToolCall], logprobs: list[TokenLogprob]) -> dict[str, Any]:
    piece: dict[str, Any] = {"response": text}
    if thinking:
        piece["thinking"] = thinking
    if req.logprobs and logprobs:
        piece["logprobs"] = logprobs_json(logprobs, top=req.top_logprobs > 0)
    return piece


def chat_piece(req: GenerationRequest, text: str, thinking: str, calls: list[ToolCall], logprobs: list[TokenLogprob]) -> dict[str, Any]:
    message: dict[str, Any] = {"role": "assistant", "content": text}
    if thinking:
        message["thinking"] = thinking
    if calls:
        message["tool_calls"] = tool_calls_json(calls)
    piece: dict[str, Any] = {"message": message}
    if req.logprobs and logprobs:
        piece["logprobs"] = logprobs_json(logprobs, top=req.top_logprobs > 0)
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
    note_ignored(request, req.ignored)
    if not (req.messages if req.is_chat else req.prompt):
        # Ollama's "load the model" request: nothing to generate.
        timing: dict[str, Any] = {}
        if req.keep_alive_s == 0:
            await core.unload(req.model, req.request_id)
            reason = "unload"
        else:
            lease = await core.load(req.model, req.request_id, req.keep_alive_s)
            reason, timing = "load", {"load_duration": int(lease.load_duration_s * 1e9)}
        return web.json_response({"model": req.model, "created_at": created_at(), **piece(req, "", "", [], []), "done": True,
                                  "done_reason": reason, **timing}, dumps=dumps)

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


@routes.post("/api/generate")
async def generate(request: web.Request) -> web.StreamResponse:
    """POST /api/generate"""
    req, stream = parse_generate(await read_json_object(request), state.request_id(request))
    return await respond(request, req, stream, generate_piece)


@routes.post("/api/chat")
async def chat(request: web.Request) -> web.StreamResponse:
    """POST /api/chat"""
    req, stream = parse_chat(await read_json_object(request), state.request_id(request))
    return await respond(request, req, stream, chat_piece)
