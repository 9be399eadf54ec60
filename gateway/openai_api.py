"""The OpenAI API (/v1/*): chat and text completions, request translation and SSE rendering over the generation core."""

from __future__ import annotations

import secrets
import time
from datetime import datetime
from typing import Any, AsyncIterator

from aiohttp import web

from mlxserve.services.common import logs, rpc
from mlxserve.services.common.errors import NotFound
from mlxserve.v1 import store_pb2
from mlxserve.v1.frames import TokenLogprob, ToolCall
from mlxserve.v1.requests import ChatMessage, ToolChoice

from . import models_api, state
from .generation import Generation, GenerationRequest
from .rendering import ANTHROPIC, dialect_of, dumps, logprobs_json, openai_error_body, sse_event, sse_response_headers, stream_chunks
from .request_types_openai import ChatCompletionRequest, CompletionRequest, ContentPart, OpenAIMessage, OpenAIToolCall, ResponseFormat
from .sampling import openai_sampling
from .tools import MODES, ToolPlan, chat_choice, chat_tools, function_tool, tool_call
from .validation import (BadField, UnsupportedField, check_top_logprobs, decode, model_name, note_ignored, parse_arguments,
                         parse_keep_alive, read_json_object, schema_text)

log = logs.get_logger(component="openai")

routes = web.RouteTableDef()

ROLES = {"system": "system", "developer": "system", "user": "user", "assistant": "assistant", "tool": "tool", "function": "tool"}
# Content parts that carry text: the user's, the assistant's earlier output, a refusal.
TEXT_PARTS = ("text", "input_text", "output_text", "refusal", "reasoning_text", "summary_text")
# Advisory fields: bookkeeping for the caller or the provider (logs, caches, tiers); nothing for a local server to do.
ADVISORY = ("user", "metadata", "safety_identifier", "prompt_cache_key", "prompt_cache_retention", "prompt_cache_options",
            "service_tier", "client_metadata")


def parse_content(value: str | list[ContentPart] | None, where: str) -> str:
    """Message content: a string, null, or text parts (image, audio and file parts are refused)."""
    if value is None or isinstance(value, str):
        return value or ""
    texts: list[str] = []
    for j, part in enumerate(value):
        if part.type not in TEXT_PARTS:
            raise UnsupportedField(f"{where}[{j}].type", f"content parts of type {part.type!r} are not supported "
                                                        f"('{where}[{j}].type'): no model served here takes them")
        texts.append(part.text if part.text is not None else part.refusal or "")
    return "".join(texts)


def parse_tool_calls(items: list[OpenAIToolCall] | None, where: str) -> list[ToolCall]:
    """An assistant message's tool_calls (function calls; arguments as JSON text) → ToolCall."""
    calls: list[ToolCall] = []
    for j, item in enumerate(items or []):
        at = f"{where}[{j}]"
        if item.type != "function":
            raise UnsupportedField(f"{at}.type", f"tool calls of type {item.type!r} are not supported ('{at}.type')")
        if item.function is None:
            raise BadField(f"{at}.function", f"'{at}.function' is required")
        calls.append(tool_call(item.id, item.function.name, parse_arguments(item.function.arguments, f"{at}.function.arguments")))
    return calls


def parse_messages(items: list[OpenAIMessage]) -> list[ChatMessage]:
    """OpenAI messages → ChatMessage: names, assistant tool calls (and legacy function_call) and reasoning,
    tool results by tool_call_id (or, for the legacy function role, by name)."""
    out: list[ChatMessage] = []
    call_names: dict[str, str] = {}  # tool results name the function their call asked for
    for i, m in enumerate(items):
        where = f"messages[{i}]"
        message = ChatMessage(role=ROLES[m.role], content=parse_content(m.content, f"{where}.content"),
                              name=m.name or "")
        if m.audio:
            raise UnsupportedField(f"{where}.audio", f"'{where}.audio' is not supported: no model served here takes audio")
        if m.role == "assistant":
            message.tool_calls.extend(parse_tool_calls(m.tool_calls, f"{where}.tool_calls"))
            if m.function_call is not None:  # legacy: one call, no id
                message.tool_calls.append(tool_call("", m.function_call.name, parse_arguments(
                    m.function_call.arguments, f"{where}.function_call.arguments")))
            call_names.update({c.id: c.name for c in message.tool_calls if c.id})
            message.thinking = m.reasoning_content or m.reasoning or ""
            if not message.content and m.refusal:
                message.content = m.refusal
        elif m.role == "tool":
            if not m.tool_call_id:
                raise BadField(f"{where}.tool_call_id", f"'{where}.tool_call_id' is required")
            message.tool_call_id = m.tool_call_id
            message.tool_name = call_names.get(m.tool_call_id, "")
        elif m.role == "function":  # legacy: the result of a function_call, by the function's name
            if not m.name:
                raise BadField(f"{where}.name", f"'{where}.name' is required for the function role")
            message.tool_name, message.name = m.name, ""
        out.append(message)
    return out


def parse_response_format(value: ResponseFormat | None) -> str:
    """`response_format` → GenerationRequest.format: text → "", json_object → "json", json_schema → the schema.

    Output is always constrained to the schema, so `strict` (true or false) is honoured either way.
    """
    if value is None or value.type == "text":
        return ""
    if value.type == "json_object":
        return "json"
    schema = value.json_schema.schema if value.json_schema is not None else None
    return schema_text(schema) if schema else "json"


def parse_stream(body: ChatCompletionRequest | CompletionRequest) -> tuple[bool, bool]:
    """(stream, include_usage)."""
    stream = bool(body.stream)
    if body.stream_options is not None and not stream:
        raise BadField("stream_options", "'stream_options' is only allowed when 'stream' is true")
    return stream, bool(body.stream_options and body.stream_options.include_usage)


def parse_n(n: int | None) -> None:
    if n not in (None, 1):
        raise UnsupportedField("n", "'n' must be 1: one choice per request is supported")


def parse_think(effort: str | None) -> bool | None:
    """`reasoning_effort` only switches thinking on or off: the templates take no effort level."""
    return None if effort is None else effort != "none"


def extensions(body: Any, req: GenerationRequest) -> None:
    """The local-server extensions every /v1/* generation route honours (sampling ones are in openai_sampling)."""
    if body.chat_template_kwargs:
        req.chat_template_kwargs = body.chat_template_kwargs
    req.keep_alive_s = parse_keep_alive(body.keep_alive)


def log_advisory(body: Any) -> None:
    given = {key: getattr(body, key) for key in ADVISORY if getattr(body, key, None)}
    if given:
        log.debug("openai_advisory_fields", **{k: v if isinstance(v, str) else "<object>" for k, v in given.items()})


def parse_tools(body: ChatCompletionRequest) -> tuple[ToolPlan, ToolChoice]:
    """tools / tool_choice / parallel_tool_calls, or the legacy functions / function_call → (plan, the worker's ToolChoice)."""
    if body.tools and body.functions:
        raise BadField("functions", "send 'tools' or the legacy 'functions', not both")
    plan = ToolPlan()
    if body.functions:
        plan.tools = [function_tool(fn) for fn in body.functions]
        plan.strict = [f"functions[{i}].strict" for i, fn in enumerate(body.functions) if fn.strict]
        plan.single = True  # a legacy answer holds one function_call
        fc = body.function_call
        if isinstance(fc, str):
            plan.mode = MODES[fc]
        elif fc is not None:
            plan.force(fc.name, "function_call.name")
        return plan, plan.choice("function_call")
    if body.function_call is not None:
        raise BadField("function_call", "'function_call' needs the legacy 'functions'; with 'tools', send 'tool_choice'")
    plan.tools, plan.strict = chat_tools(body.tools)
    chat_choice(plan, body.tool_choice)
    plan.single = plan.single or body.parallel_tool_calls is False
    return plan, plan.choice("tool_choice")


def parse_chat_completion(data: dict[str, Any], request_id: str) -> tuple[GenerationRequest, bool, bool]:
    """A /v1/chat/completions body → (request, stream, include_usage); raises BadField/UnsupportedField (400)."""
    body, ignored = decode(data, ChatCompletionRequest)
    stream, include_usage = parse_stream(body)
    parse_n(body.n)
    if body.audio or (body.modalities and "audio" in body.modalities):
        raise UnsupportedField("audio" if body.audio else "modalities", "audio output is not supported: "
                               "no model served here speaks; ask for modalities [\"text\"]")
    max_key = "max_completion_tokens" if body.max_completion_tokens is not None else "max_tokens"
    max_tokens = body.max_completion_tokens if body.max_completion_tokens is not None else body.max_tokens
    req = GenerationRequest(model=model_name(body.model), request_id=request_id, messages=parse_messages(body.messages),
                            options=openai_sampling(body, max_tokens=max_tokens, max_key=max_key), ignored=ignored)
    extensions(body, req)
    req.format = parse_response_format(body.response_format)
    plan, req.tool_choice = parse_tools(body)
    req.tools, req.max_tool_calls = plan.tools, plan.limit
    req.legacy_function_call = bool(body.functions)
    req.logprobs = bool(body.logprobs)
    req.top_logprobs = check_top_logprobs(body.top_logprobs, req.logprobs)
    req.think = parse_think(body.reasoning_effort)
    # Accepted, and not honoured: no effect on what a local model can do, so named rather than refused.
    req.ignored += plan.ignored()
    req.ignored += [key for key in ("web_search_options", "prediction", "moderation") if getattr(body, key)]
    if body.verbosity not in (None, "medium"):
        req.ignored.append("verbosity")
    if body.store:
        req.ignored.append("store")  # nothing is kept: there is nothing to list or distill later
    log_advisory(body)
    return req, stream, include_usage


def finish_reason(gen: Generation, called_tools: bool = False) -> str:
    if gen.done_reason == "tool_calls" or called_tools:
        return "function_call" if gen.req.legacy_function_call else "tool_calls"
    return "length" if gen.done_reason == "length" else "stop"


def usage(gen: Generation) -> dict[str, Any]:
    s = gen.stats
    return {"prompt_tokens": s.prompt_tokens, "completion_tokens": s.eval_count,
            "total_tokens": s.prompt_tokens + s.eval_count,
            "prompt_tokens_details": {"cached_tokens": s.cached_tokens}}


def tool_call_json(call: ToolCall, index: int | None = None) -> dict[str, Any]:
    """OpenAI's shape: arguments as a JSON string; streamed calls carry their index."""
    out: dict[str, Any] = {} if index is None else {"index": index}
    out.update({"id": call.id or f"call_{secrets.token_hex(12)}", "type": "function",
                "function": {"name": call.name, "arguments": call.arguments or "{}"}})
    return out


def function_call_json(call: ToolCall) -> dict[str, Any]:
    """The legacy `function_call` (requests that sent `functions`): name and arguments, no id."""
    return {"name": call.name, "arguments": call.arguments or "{}"}


def chat_logprobs(req: GenerationRequest, items: list[TokenLogprob]) -> dict[str, Any] | None:
    """choices[].logprobs: {content: [{token, logprob, bytes, top_logprobs}], refusal}."""
    return {"content": logprobs_json(items), "refusal": None} if req.logprobs else None


@routes.post("/v1/chat/completions")
async def chat_completions(request: web.Request) -> web.StreamResponse:
    """POST /v1/chat/completions"""
    req, stream, include_usage = parse_chat_completion(await read_json_object(request), state.request_id(request))
    note_ignored(request, req.ignored)
    gen = await state.core(request).start(req)
    try:
        head = {"id": f"chatcmpl-{secrets.token_hex(12)}", "created": int(time.time()), "model": req.model,
                "system_fingerprint": f"fp_{gen.lease.digest[:12] or 'mlxserve'}"}
        if not stream:
            out = await gen.collect()
            message: dict[str, Any] = {"role": "assistant", "content": out.content or (None if out.tool_calls else "")}
            if out.reasoning:
                message["reasoning_content"] = out.reasoning
            if out.tool_calls and req.legacy_function_call:
                message["function_call"] = function_call_json(out.tool_calls[0])
            elif out.tool_calls:
                message["tool_calls"] = [tool_call_json(c) for c in out.tool_calls]
            return web.json_response({
                **head, "object": "chat.completion",
                "choices": [{"index": 0, "message": message, "finish_reason": finish_reason(gen, bool(out.tool_calls)),
                             "logprobs": chat_logprobs(req, out.logprobs)}],
                "usage": usage(gen),
            }, dumps=dumps)

        chunk = {**head, "object": "chat.completion.chunk"}

        def delta(d: dict[str, Any], reason: str | None = None, logprobs: list[TokenLogprob] | None = None) -> bytes:
            lp = chat_logprobs(req, logprobs) if logprobs else None
            return sse_event({**chunk, "choices": [{"index": 0, "delta": d, "finish_reason": reason, "logprobs": lp}]})

        async def chunks() -> AsyncIterator[bytes]:
            yield delta({"role": "assistant", "content": ""})
            calls = 0
            async for event in gen.events():
                d: dict[str, Any] = {}
                if event.thinking:
                    d["reasoning_content"] = event.thinking
                if event.text:
                    d["content"] = event.text
                if event.tool_calls and req.legacy_function_call:
                    d["function_call"] = function_call_json(event.tool_calls[0])
                    calls += 1
                elif event.tool_calls:
                    d["tool_calls"] = [tool_call_json(c, calls + k) for k, c in enumerate(event.tool_calls)]
                    calls += len(event.tool_calls)
                logprobs = list(event.logprobs) if req.logprobs else []
                if d or logprobs:
                    yield delta(d, logprobs=logprobs)
            yield delta({}, finish_reason(gen, calls > 0))
            if include_usage:
                yield sse_event({**chunk, "choices": [], "usage": usage(gen)})

        return await stream_chunks(request, sse_response_headers(), chunks(),
                                   error_chunk=lambda e: sse_event(openai_error_body(e)), trailer=sse_event("[DONE]"))
    finally:
        await gen.close()


def parse_completion(data: dict[str, Any], request_id: str) -> tuple[GenerationRequest, bool, bool]:
    """A /v1/completions body → (request, stream, include_usage); the prompt goes through the template, as Ollama does."""
    body, ignored = decode(data, CompletionRequest)
    prompt = body.prompt
    if isinstance(prompt, list) and len(prompt) == 1 and isinstance(prompt[0], str):
        prompt = prompt[0]
    if isinstance(prompt, list) and all(isinstance(p, str) for p in prompt):
        raise UnsupportedField("prompt", "'prompt' with several prompts is not supported; send one per request")
    if isinstance(prompt, list):
        raise UnsupportedField("prompt", "'prompt' as token ids is not supported; send text")
    if not prompt:
        raise BadField("prompt", "'prompt' must be a non-empty string")
    stream, include_usage = parse_stream(body)
    parse_n(body.n)
    if body.best_of not in (None, 1):
        raise UnsupportedField("best_of", "'best_of' must be 1")
    if body.suffix:
        raise UnsupportedField("suffix", "'suffix' (fill-in-the-middle) is not supported: no model served here has an "
                                         "infill template")
    if body.echo and body.logprobs is not None:
        raise UnsupportedField("echo", "'echo' with 'logprobs' is not supported: the prompt's logprobs are not computed")
    req = GenerationRequest(model=model_name(body.model), request_id=request_id, prompt=prompt, ignored=ignored,
                            options=openai_sampling(body, max_tokens=body.max_tokens, max_key="max_tokens"))
    extensions(body, req)
    req.logprobs = body.logprobs is not None
    req.top_logprobs = body.logprobs or 0
    req.echo = bool(body.echo)
    log_advisory(body)
    return req, stream, include_usage


def completion_logprobs(req: GenerationRequest, items: list[TokenLogprob], offset: int) -> dict[str, Any] | None:
    """The legacy logprobs object: parallel lists, top alternatives as {token: logprob} maps."""
    if not req.logprobs:
        return None
    entries = logprobs_json(items)
    offsets = []
    for e in entries:
        offsets.append(offset)
        offset += len(e["token"])
    return {"tokens": [e["token"] for e in entries], "token_logprobs": [e["logprob"] for e in entries],
            "top_logprobs": [{t["token"]: t["logprob"] for t in e["top_logprobs"]} for e in entries] if req.top_logprobs else None,
            "text_offset": offsets}


@routes.post("/v1/completions")
async def completions(request: web.Request) -> web.StreamResponse:
    """POST /v1/completions (legacy text completion)."""
    req, stream, include_usage = parse_completion(await read_json_object(request), state.request_id(request))
    note_ignored(request, req.ignored)
    gen = await state.core(request).start(req)
    try:
        head = {"id": f"cmpl-{secrets.token_hex(12)}", "object": "text_completion", "created": int(time.time()),
                "model": req.model, "system_fingerprint": f"fp_{gen.lease.digest[:12] or 'mlxserve'}"}
        echoed = req.prompt if req.echo else ""
        if not stream:
            out = await gen.collect()
            return web.json_response({**head, "choices": [{
                "text": echoed + out.content, "index": 0, "logprobs": completion_logprobs(req, out.logprobs, 0),
                "finish_reason": finish_reason(gen)}], "usage": usage(gen)}, dumps=dumps)

        async def chunks() -> AsyncIterator[bytes]:
            offset = 0
            if echoed:
                yield sse_event({**head, "choices": [{"text": echoed, "index": 0, "logprobs": None, "finish_reason": None}]})
            async for event in gen.events():
                if event.text or (req.logprobs and event.logprobs):
                    lp = completion_logprobs(req, list(event.logprobs), offset)
                    yield sse_event({**head, "choices": [{"text": event.text, "index": 0, "logprobs": lp, "finish_reason": None}]})
                    offset += len(event.text)
            yield sse_event({**head, "choices": [
                {"text": "", "index": 0, "logprobs": None, "finish_reason": finish_reason(gen)}]})
            if include_usage:
                yield sse_event({**head, "choices": [], "usage": usage(gen)})

        return await stream_chunks(request, sse_response_headers(), chunks(),
                                   error_chunk=lambda e: sse_event(openai_error_body(e)), trailer=sse_event("[DONE]"))
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


@routes.get("/v1/models")
async def models(request: web.Request) -> web.Response:
    """GET /v1/models (in Anthropic's list shape when asked with an anthropic-version header)."""
    listed = await _list(request)
    if dialect_of(request.path, request.headers) == ANTHROPIC:
        return web.json_response(models_api.anthropic_model_page(listed, request.query), dumps=dumps)
    return web.json_response({"object": "list", "data": [_model_entry(m.name, m.modified_at) for m in listed]}, dumps=dumps)


@routes.get("/v1/models/{model:.+}")
async def model(request: web.Request) -> web.Response:
    """GET /v1/models/{model}: one entry of the list ("name" matches "name:latest")."""
    wanted = request.match_info["model"].lower()
    for m in await _list(request):
        if m.name.lower() in (wanted, f"{wanted}:latest"):
            if dialect_of(request.path, request.headers) == ANTHROPIC:
                return web.json_response(models_api.anthropic_model(m), dumps=dumps)
            return web.json_response(_model_entry(m.name, m.modified_at), dumps=dumps)
    raise NotFound(f"model '{request.match_info['model']}' not found")
