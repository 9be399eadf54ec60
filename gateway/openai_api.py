"""The OpenAI API (/v1/*): chat and text completions, request translation and SSE rendering over the generation core."""

from __future__ import annotations

import json
import secrets
import time
from datetime import datetime
from typing import Any, AsyncIterator

from aiohttp import web

from mlxserve.services.common import logs, rpc
from mlxserve.services.common.errors import NotFound
from mlxserve.v1 import store_pb2, worker_pb2
from mlxserve.v1.frames import TokenLogprob, ToolCall

from . import state
from .responses import dumps, openai_error_body, sse_event, stream_chunks
from .streams import Generation, GenerationRequest
from .validation import (Body, BadField, UnsupportedField, is_neutral, parse_arguments, parse_tools, parse_top_logprobs,
                         read_json_object, schema_text)

log = logs.get_logger(component="openai")

ROLES = {"system": "system", "developer": "system", "user": "user", "assistant": "assistant", "tool": "tool"}

# Parameters accepted only with the value that asks for nothing (what many SDKs send by default).
_NEUTRAL_VALUES: dict[str, Any] = {
    "functions": is_neutral,
    "store": is_neutral,
    "metadata": is_neutral,
    "function_call": lambda v: v is None or v == "none",
    "parallel_tool_calls": lambda v: v is None or isinstance(v, bool),  # calls are returned as the model makes them
    "modalities": lambda v: v is None or v == ["text"],
    "service_tier": lambda v: v in (None, "auto", "default"),
}
# `reasoning_effort` only switches thinking on or off: the templates take no effort level.
REASONING_EFFORTS = ("none", "minimal", "low", "medium", "high")
MAX_LOGIT_BIAS = 100.0


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


def parse_tool_calls(items: list[Any] | None, where: str) -> tuple[str, dict[str, str]]:
    """An assistant message's OpenAI tool_calls → (tool_calls_json, {call id: function name})."""
    calls: list[dict[str, Any]] = []
    names: dict[str, str] = {}
    for j, item in enumerate(items or []):
        name = f"{where}[{j}]"
        if not isinstance(item, dict):
            raise BadField(name, f"'{name}' must be an object")
        call = Body(item, prefix=f"{name}.")
        kind = call.str("type", default="function")
        if kind != "function":
            raise UnsupportedField(f"{name}.type", f"tool calls of type {kind!r} are not supported ('{name}.type')")
        call_id = call.str("id", default="") or ""
        fn = Body(call.object("function") or {}, prefix=f"{name}.function.")
        fn_name = fn.str("name", required=True) or ""
        arguments = parse_arguments(fn.raw("arguments") or "{}", fn.name("arguments"))
        fn.finish()
        call.finish()
        entry: dict[str, Any] = {"name": fn_name, "arguments": arguments}
        if call_id:
            entry["id"] = call_id
            names[call_id] = fn_name
        calls.append(entry)
    return (json.dumps(calls, ensure_ascii=False) if calls else ""), names


def parse_messages(items: list[Any] | None) -> list[worker_pb2.ChatMessage]:
    """OpenAI messages → ChatMessage: assistant tool_calls and reasoning, tool results by tool_call_id."""
    if not items:
        raise BadField("messages", "'messages' must be a non-empty array")
    out: list[worker_pb2.ChatMessage] = []
    call_names: dict[str, str] = {}  # tool results name the function their call asked for
    for i, item in enumerate(items):
        where = f"messages[{i}]"
        if not isinstance(item, dict):
            raise BadField(where, f"'{where}' must be an object")
        msg = Body(item, prefix=f"{where}.")
        role = msg.str("role", required=True) or ""
        if role not in ROLES:
            raise BadField(msg.name("role"), f"'{msg.name('role')}' must be one of {', '.join(ROLES)}; got {role!r}")
        message = worker_pb2.ChatMessage(role=ROLES[role], content=parse_content(msg.raw("content"), msg.name("content")))
        if role == "assistant":
            message.tool_calls_json, names = parse_tool_calls(msg.list("tool_calls"), msg.name("tool_calls"))
            call_names.update(names)
            message.thinking = msg.str("reasoning_content", default="") or ""
        if role == "tool":
            message.tool_call_id = msg.str("tool_call_id", required=True) or ""
            message.tool_name = call_names.get(message.tool_call_id, "")
        unused = ("name", "function_call", "audio", "refusal")
        unused += () if role == "assistant" else ("tool_calls", "reasoning_content")
        unused += () if role == "tool" else ("tool_call_id",)
        msg.refuse(unused)
        msg.finish()
        out.append(message)
    return out


def parse_response_format(body: Body) -> str:
    """`response_format` → SubmitRequest.format: text → "", json_object → "json", json_schema → the schema."""
    value = body.object("response_format")
    if not value:
        return ""
    rf = Body(value, prefix="response_format.")
    kind = rf.str("type", required=True)
    if kind == "text":
        rf.finish()
        return ""
    if kind == "json_object":
        rf.finish()
        return "json"
    if kind != "json_schema":
        raise BadField("response_format.type", "'response_format.type' must be one of text, json_object, json_schema")
    spec = Body(rf.object("json_schema") or {}, prefix="response_format.json_schema.")
    spec.str("name")
    spec.str("description")
    spec.bool("strict")  # output is always constrained to the schema, strict or not
    schema = spec.object("schema")
    spec.finish()
    rf.finish()
    return schema_text(schema) if schema else "json"


def parse_logit_bias(body: Body) -> dict[int, float]:
    """`logit_bias`: {"token id": bias in -100..100}."""
    value = body.object("logit_bias")
    out: dict[int, float] = {}
    for key, bias in (value or {}).items():
        where = f"logit_bias.{key}"
        if not (isinstance(key, str) and key.strip().isdigit()) or int(key) >= 2**31:
            raise BadField("logit_bias", f"'logit_bias' keys must be token ids; got {key!r}")
        if isinstance(bias, bool) or not isinstance(bias, (int, float)) or not -MAX_LOGIT_BIAS <= bias <= MAX_LOGIT_BIAS:
            raise BadField("logit_bias", f"'{where}' must be a number between -100 and 100")
        out[int(key)] = float(bias)
    return out


def parse_sampling(body: Body, *, max_key_wins: str | None = None) -> worker_pb2.SamplingOptions:
    """Sampling parameters both OpenAI generation routes take."""
    options = worker_pb2.SamplingOptions()
    values = {
        "temperature": body.number("temperature", minimum=0.0, maximum=2.0),
        "top_p": body.number("top_p", minimum=0.0, maximum=1.0),
        "seed": body.int("seed", bits=64),
        "presence_penalty": body.number("presence_penalty", minimum=-2.0, maximum=2.0),
        "frequency_penalty": body.number("frequency_penalty", minimum=-2.0, maximum=2.0),
    }
    max_tokens = body.int(max_key_wins, minimum=1) if max_key_wins else None
    legacy_max = body.int("max_tokens", minimum=1)
    values["num_predict"] = max_tokens if max_tokens is not None else legacy_max
    for key, value in values.items():
        if value is not None:
            setattr(options, key, value)
    options.stop.extend(body.stop("stop"))
    for token, bias in parse_logit_bias(body).items():
        options.logit_bias[token] = bias
    return options


def parse_stream(body: Body) -> tuple[bool, bool]:
    """(stream, include_usage)."""
    stream = bool(body.bool("stream", default=False))
    include_usage = False
    stream_options = body.object("stream_options")
    if stream_options:
        if not stream:
            raise BadField("stream_options", "'stream_options' is only allowed when 'stream' is true")
        so = Body(stream_options, prefix="stream_options.")
        include_usage = bool(so.bool("include_usage", default=False))
        so.finish()
    return stream, include_usage


def parse_n(body: Body) -> None:
    n = body.int("n")
    if n not in (None, 1):
        raise UnsupportedField("n", "'n' must be 1: one choice per request is supported")


def parse_tool_choice(body: Body) -> bool:
    """Whether the tools go to the model: "auto"/unset yes, "none" no; forcing a call is not supported."""
    choice = body.raw("tool_choice")
    if choice in (None, "auto"):
        return True
    if choice == "none":
        return False
    raise UnsupportedField("tool_choice", "'tool_choice' must be \"auto\" or \"none\"; forcing a tool call is not supported")


def parse_chat_completion(data: dict[str, Any], request_id: str) -> tuple[GenerationRequest, bool, bool]:
    """A /v1/chat/completions body → (request, stream, include_usage); raises BadField/UnsupportedField (400)."""
    body = Body(data)
    model = body.str("model", required=True) or ""
    if not model.strip():
        raise BadField("model", "'model' is required")
    messages = parse_messages(body.list("messages"))
    stream, include_usage = parse_stream(body)
    parse_n(body)
    options = parse_sampling(body, max_key_wins="max_completion_tokens")
    user = body.str("user")
    if user:
        log.info("openai_user", user=user)
    req = GenerationRequest(model=model, request_id=request_id, options=options, messages=messages)
    req.format = parse_response_format(body)
    tools = parse_tools(body)
    req.tools_json = tools if parse_tool_choice(body) else ""
    req.logprobs = bool(body.bool("logprobs", default=False))
    req.top_logprobs = parse_top_logprobs(body, req.logprobs)
    effort = body.str("reasoning_effort")
    if effort is not None:
        if effort not in REASONING_EFFORTS:
            raise BadField("reasoning_effort", f"'reasoning_effort' must be one of {', '.join(REASONING_EFFORTS)}")
        req.think = effort != "none"
    for key, allowed in _NEUTRAL_VALUES.items():
        body.refuse((key,), allowed=allowed)
    body.finish()
    return req, stream, include_usage


def finish_reason(gen: Generation, called_tools: bool = False) -> str:
    if gen.done_reason == "tool_calls" or called_tools:
        return "tool_calls"
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


def logprob_entries(items: list[TokenLogprob]) -> list[dict[str, Any]]:
    """choices[].logprobs.content: [{token, logprob, bytes, top_logprobs: [...]}]."""
    return [{"token": lp.token, "logprob": lp.logprob, "bytes": lp.bytes,
             "top_logprobs": [{"token": t.token, "logprob": t.logprob, "bytes": t.bytes} for t in lp.top]}
            for lp in items]


def chat_logprobs(req: GenerationRequest, items: list[TokenLogprob]) -> dict[str, Any] | None:
    return {"content": logprob_entries(items), "refusal": None} if req.logprobs else None


def sse_response_headers() -> dict[str, str]:
    return {"Content-Type": "text/event-stream", "Cache-Control": "no-cache"}


async def chat_completions(request: web.Request) -> web.StreamResponse:
    """POST /v1/chat/completions"""
    req, stream, include_usage = parse_chat_completion(await read_json_object(request), state.request_id(request))
    gen = await state.core(request).start(req)
    try:
        head = {"id": f"chatcmpl-{secrets.token_hex(12)}", "created": int(time.time()), "model": req.model,
                "system_fingerprint": f"fp_{gen.lease.digest[:12] or 'mlxserve'}"}
        if not stream:
            out = await gen.collect()
            message: dict[str, Any] = {"role": "assistant", "content": out.content or (None if out.tool_calls else "")}
            if out.reasoning:
                message["reasoning_content"] = out.reasoning
            if out.tool_calls:
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
                if event.tool_calls:
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


MAX_COMPLETION_LOGPROBS = 20


def parse_completion(data: dict[str, Any], request_id: str) -> tuple[GenerationRequest, bool, bool]:
    """A /v1/completions body → (request, stream, include_usage); the prompt goes through the template, as Ollama does."""
    body = Body(data)
    model = body.str("model", required=True) or ""
    if not model.strip():
        raise BadField("model", "'model' is required")
    prompt = body.raw("prompt")
    if isinstance(prompt, list) and len(prompt) == 1 and isinstance(prompt[0], str):
        prompt = prompt[0]
    if isinstance(prompt, list) and all(isinstance(p, str) for p in prompt):
        raise UnsupportedField("prompt", "'prompt' with several prompts is not supported; send one per request")
    if isinstance(prompt, list):
        raise UnsupportedField("prompt", "'prompt' as token ids is not supported; send text")
    if not isinstance(prompt, str) or not prompt:
        raise BadField("prompt", "'prompt' must be a non-empty string")
    stream, include_usage = parse_stream(body)
    parse_n(body)
    best_of = body.int("best_of")
    if best_of not in (None, 1):
        raise UnsupportedField("best_of", "'best_of' must be 1")
    if body.bool("echo"):
        raise UnsupportedField("echo", "'echo' is not supported")
    body.refuse(("suffix",))
    options = parse_sampling(body)
    logprobs = body.int("logprobs", minimum=0)
    if logprobs is not None and logprobs > MAX_COMPLETION_LOGPROBS:
        raise BadField("logprobs", f"'logprobs' must be at most {MAX_COMPLETION_LOGPROBS}")
    user = body.str("user")
    if user:
        log.info("openai_user", user=user)
    body.finish()
    req = GenerationRequest(model=model, request_id=request_id, options=options, prompt=prompt)
    req.logprobs = logprobs is not None
    req.top_logprobs = logprobs or 0
    return req, stream, include_usage


def completion_logprobs(req: GenerationRequest, items: list[TokenLogprob], offset: int) -> dict[str, Any] | None:
    """The legacy logprobs object: parallel lists, top alternatives as {token: logprob} maps."""
    if not req.logprobs:
        return None
    offsets = []
    for lp in items:
        offsets.append(offset)
        offset += len(lp.token)
    return {"tokens": [lp.token for lp in items], "token_logprobs": [lp.logprob for lp in items],
            "top_logprobs": [{t.token: t.logprob for t in lp.top} for lp in items] if req.top_logprobs else None,
            "text_offset": offsets}


async def completions(request: web.Request) -> web.StreamResponse:
    """POST /v1/completions (legacy text completion)."""
    req, stream, include_usage = parse_completion(await read_json_object(request), state.request_id(request))
    gen = await state.core(request).start(req)
    try:
        head = {"id": f"cmpl-{secrets.token_hex(12)}", "object": "text_completion", "created": int(time.time()),
                "model": req.model, "system_fingerprint": f"fp_{gen.lease.digest[:12] or 'mlxserve'}"}
        if not stream:
            out = await gen.collect()
            return web.json_response({**head, "choices": [{
                "text": out.content, "index": 0, "logprobs": completion_logprobs(req, out.logprobs, 0),
                "finish_reason": finish_reason(gen)}], "usage": usage(gen)}, dumps=dumps)
        async def chunks() -> AsyncIterator[bytes]:
            offset = 0
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
    from . import openai_responses  # imported here: it builds on this module's parsers

    app.router.add_post("/v1/chat/completions", chat_completions)
    app.router.add_post("/v1/completions", completions)
    app.router.add_get("/v1/models", models)
    app.router.add_get("/v1/models/{model:.+}", model)
    openai_responses.add_routes(app)
