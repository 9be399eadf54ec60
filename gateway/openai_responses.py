"""OpenAI's Responses API (POST /v1/responses), without state, over the same generation core as chat completions.

The server keeps nothing between requests, as Ollama-class servers do: every field that would need
stored responses (`previous_response_id`, `conversation`, `store: true`, `background: true`) is
refused with a 400 naming it, and the caller sends the whole conversation as `input` each time.
Input items become chat messages (function calls and their outputs included); the output is a
list of items (reasoning, a message with `output_text`, function calls), streamed as the typed
Responses events (`event: <type>` + `data: {..., "sequence_number": n}`).
"""

from __future__ import annotations

import json
import secrets
import time
from dataclasses import dataclass, field
from typing import Any, AsyncIterator

from aiohttp import web

from mlxserve.services.common import logs
from mlxserve.services.common.errors import MlxServeError
from mlxserve.v1 import worker_pb2
from mlxserve.v1.frames import TokenEvent, TokenLogprob, ToolCall

from . import state
from .openai_api import REASONING_EFFORTS, parse_tool_choice, sse_response_headers
from .responses import dumps, stream_chunks
from .streams import Generation, GenerationRequest
from .validation import (Body, BadField, UnsupportedField, is_neutral, parse_arguments, parse_top_logprobs, read_json_object,
                         schema_text)

log = logs.get_logger(component="openai_responses")

INPUT_ROLES = {"user": "user", "system": "system", "developer": "system", "assistant": "assistant"}
TEXT_PART_TYPES = ("input_text", "output_text", "text")
LOGPROBS_INCLUDE = "message.output_text.logprobs"
# Fields that need responses kept on the server: refused whenever they ask for it.
STATEFUL: dict[str, Any] = {
    "previous_response_id": lambda v: v is None,
    "conversation": lambda v: v is None,
    "store": lambda v: v is None or v is False,
    "background": lambda v: v is None or v is False,
}
# Accepted only with the value that asks for nothing.
_NEUTRAL_VALUES: dict[str, Any] = {
    "metadata": is_neutral,
    "max_tool_calls": lambda v: v is None,
    "prompt": lambda v: v is None,
    "service_tier": lambda v: v in (None, "auto", "default"),
    "parallel_tool_calls": lambda v: v is None or isinstance(v, bool),  # calls are returned as the model makes them
}


def _stateful_message(key: str) -> str:
    return (f"'{key}' needs responses stored on the server, and this server keeps none: "
            "send the whole conversation in 'input' instead")


@dataclass
class ResponseSettings:
    """What the response object echoes back of the request."""

    instructions: str | None = None
    max_output_tokens: int | None = None
    temperature: float | None = None
    top_p: float | None = None
    text_format: dict[str, Any] = field(default_factory=lambda: {"type": "text"})
    tools: list[dict[str, Any]] = field(default_factory=list)
    tool_choice: str = "auto"
    truncation: str = "disabled"
    effort: str | None = None


# -- request parsing -------------------------------------------------------------------------------------


def parse_text_content(value: Any, where: str) -> str:
    """An input item's content: a string or a list of text parts (input_text/output_text); images and files are refused."""
    if value is None:
        return ""
    if isinstance(value, str):
        return value
    if not isinstance(value, list):
        raise BadField(where, f"'{where}' must be a string or an array of content parts")
    texts = []
    for j, part in enumerate(value):
        name = f"{where}[{j}]"
        if not isinstance(part, dict):
            raise BadField(name, f"'{name}' must be an object")
        body = Body(part, prefix=f"{name}.")
        kind = body.str("type", required=True)
        if kind not in TEXT_PART_TYPES:
            raise UnsupportedField(f"{name}.type", f"content parts of type {kind!r} are not supported ('{name}.type'); "
                                                   "send input_text")
        texts.append(body.str("text", required=True) or "")
        body.refuse(("annotations", "logprobs"), allowed=lambda v: True)  # echoes of earlier output: nothing to honour
        body.finish()
    return "".join(texts)


def parse_reasoning_text(item: Body) -> str:
    """A reasoning item sent back as input: its reasoning text (or its summary) becomes the turn's thinking."""
    texts = []
    for key in ("content", "summary"):
        for j, part in enumerate(item.list(key) or []):
            where = f"{item.name(key)}[{j}]"
            if not isinstance(part, dict) or not isinstance(part.get("text"), str):
                raise BadField(where, f"'{where}' must be an object with a 'text' string")
            texts.append(part["text"])
        if texts:
            break
    item.raw("encrypted_content")
    return "\n".join(texts)


def parse_input(value: Any) -> list[worker_pb2.ChatMessage]:
    """`input` → chat messages: a string is one user message; items are messages, function calls and their outputs."""
    if isinstance(value, str):
        if not value:
            raise BadField("input", "'input' must not be empty")
        return [worker_pb2.ChatMessage(role="user", content=value)]
    if not isinstance(value, list) or not value:
        raise BadField("input", "'input' must be a non-empty string or a non-empty array of input items")
    out: list[worker_pb2.ChatMessage] = []
    call_names: dict[str, str] = {}
    thinking = ""  # a reasoning item belongs to the assistant turn after it
    for i, raw in enumerate(value):
        where = f"input[{i}]"
        if not isinstance(raw, dict):
            raise BadField(where, f"'{where}' must be an object")
        item = Body(raw, prefix=f"{where}.")
        kind = item.str("type", default="message")
        item.str("id")
        item.str("status")
        if kind == "message":
            role = item.str("role", required=True) or ""
            if role not in INPUT_ROLES:
                raise BadField(item.name("role"), f"'{item.name('role')}' must be one of {', '.join(INPUT_ROLES)}; got {role!r}")
            content = parse_text_content(item.raw("content"), item.name("content"))
            msg = worker_pb2.ChatMessage(role=INPUT_ROLES[role], content=content)
            if role == "assistant" and thinking:
                msg.thinking, thinking = thinking, ""
            item.raw("phase")
            out.append(msg)
        elif kind == "function_call":
            call_id = item.str("call_id", required=True) or ""
            name = item.str("name", required=True) or ""
            arguments = parse_arguments(item.raw("arguments") or "{}", item.name("arguments"))
            call_names[call_id] = name
            call = {"id": call_id, "name": name, "arguments": arguments}
            one_call = json.dumps([call], ensure_ascii=False)
            prev = out[-1] if out else None
            if prev is not None and prev.role == "assistant" and prev.tool_calls_json:  # parallel calls: one assistant turn
                prev.tool_calls_json = json.dumps(json.loads(prev.tool_calls_json) + [call], ensure_ascii=False)
            elif prev is not None and prev.role == "assistant" and not thinking:
                prev.tool_calls_json = one_call
            else:
                out.append(worker_pb2.ChatMessage(role="assistant", thinking=thinking, tool_calls_json=one_call))
                thinking = ""
        elif kind == "function_call_output":
            call_id = item.str("call_id", required=True) or ""
            output = item.raw("output")
            text = output if isinstance(output, str) else parse_text_content(output, item.name("output"))
            out.append(worker_pb2.ChatMessage(role="tool", content=text, tool_call_id=call_id,
                                              tool_name=call_names.get(call_id, "")))
        elif kind == "reasoning":
            thinking = parse_reasoning_text(item)
        else:
            raise UnsupportedField(item.name("type"), f"input items of type {kind!r} are not supported ('{item.name('type')}')")
        item.finish()
    if thinking:  # reasoning with no turn after it: keep it on an assistant turn of its own
        out.append(worker_pb2.ChatMessage(role="assistant", thinking=thinking))
    return out


def parse_text_format(body: Body) -> tuple[str, dict[str, Any]]:
    """`text.format` → (SubmitRequest.format, the format echoed back): text, json_object or json_schema."""
    text = body.object("text")
    if not text:
        return "", {"type": "text"}
    tb = Body(text, prefix="text.")
    tb.refuse(("verbosity",), allowed=lambda v: v in (None, "medium"))
    fmt = tb.object("format")
    tb.finish()
    if not fmt:
        return "", {"type": "text"}
    fb = Body(fmt, prefix="text.format.")
    kind = fb.str("type", required=True)
    if kind in ("text", "json_object"):
        fb.finish()
        return ("" if kind == "text" else "json"), {"type": kind}
    if kind != "json_schema":
        raise BadField("text.format.type", "'text.format.type' must be one of text, json_object, json_schema")
    name = fb.str("name", required=True)
    description = fb.str("description")
    strict = fb.bool("strict")  # output is always constrained to the schema, strict or not
    schema = fb.object("schema")
    if schema is None:
        raise BadField("text.format.schema", "'text.format.schema' is required for json_schema")
    fb.finish()
    echo: dict[str, Any] = {"type": "json_schema", "name": name, "schema": schema, "strict": strict}
    if description is not None:
        echo["description"] = description
    return (schema_text(schema) if schema else "json"), echo


def parse_function_tools(body: Body) -> tuple[str, list[dict[str, Any]]]:
    """Responses function tools ({type, name, description, parameters, strict}) → (chat tools JSON, the tools echoed)."""
    tools = body.list("tools") or []
    chat_tools = []
    for i, raw in enumerate(tools):
        where = f"tools[{i}]"
        if not isinstance(raw, dict):
            raise BadField(where, f"'{where}' must be an object")
        tool = Body(raw, prefix=f"{where}.")
        kind = tool.str("type", required=True)
        if kind != "function":
            raise UnsupportedField(f"{where}.type", f"tools of type {kind!r} are not supported ('{where}.type'); use \"function\"")
        name = tool.str("name", required=True) or ""
        if not name:
            raise BadField(f"{where}.name", f"'{where}.name' must be a non-empty string")
        fn: dict[str, Any] = {"name": name}
        description = tool.str("description")
        if description is not None:
            fn["description"] = description
        parameters = tool.object("parameters")
        if parameters is not None:
            fn["parameters"] = parameters
        tool.bool("strict")  # the call's arguments are whatever the model wrote; parsed, not constrained
        tool.finish()
        chat_tools.append({"type": "function", "function": fn})
    return (json.dumps(chat_tools, ensure_ascii=False, separators=(",", ":")) if chat_tools else ""), list(tools)


def parse_reasoning(body: Body) -> tuple[bool | None, str | None]:
    """`reasoning.effort` switches thinking on or off (the templates take no effort level); summaries are not made."""
    value = body.object("reasoning")
    if not value:
        return None, None
    rb = Body(value, prefix="reasoning.")
    effort = rb.str("effort")
    if effort is not None and effort not in REASONING_EFFORTS:
        raise BadField("reasoning.effort", f"'reasoning.effort' must be one of {', '.join(REASONING_EFFORTS)}")
    rb.refuse(("summary", "generate_summary"), allowed=lambda v: v in (None, "auto"))
    rb.finish()
    return (None if effort is None else effort != "none"), effort


def parse_include(body: Body) -> bool:
    """`include`: only output logprobs can be included; returns whether they are asked for."""
    items = body.list("include") or []
    for i, item in enumerate(items):
        if item != LOGPROBS_INCLUDE:
            raise UnsupportedField(f"include[{i}]", f"'include[{i}]': {item!r} is not supported; only {LOGPROBS_INCLUDE!r} is")
    return bool(items)


def parse_responses_request(data: dict[str, Any], request_id: str) -> tuple[GenerationRequest, bool, ResponseSettings]:
    """A /v1/responses body → (request, stream, what the response echoes); raises BadField/UnsupportedField (400)."""
    body = Body(data)
    for key, allowed in STATEFUL.items():
        if not allowed(body.raw(key)):
            raise UnsupportedField(key, _stateful_message(key))
    model = body.str("model", required=True) or ""
    if not model.strip():
        raise BadField("model", "'model' is required")
    echo = ResponseSettings()
    messages = parse_input(body.raw("input"))
    echo.instructions = body.str("instructions")
    if echo.instructions:
        messages.insert(0, worker_pb2.ChatMessage(role="system", content=echo.instructions))
    stream = bool(body.bool("stream", default=False))
    stream_options = body.object("stream_options")
    if stream_options:
        if not stream:
            raise BadField("stream_options", "'stream_options' is only allowed when 'stream' is true")
        so = Body(stream_options, prefix="stream_options.")
        so.bool("include_obfuscation")  # padding against length side channels; a local server sends none
        so.finish()
    options = worker_pb2.SamplingOptions()
    echo.max_output_tokens = body.int("max_output_tokens", minimum=1)
    echo.temperature = body.number("temperature", minimum=0.0, maximum=2.0)
    echo.top_p = body.number("top_p", minimum=0.0, maximum=1.0)
    if echo.max_output_tokens is not None:
        options.num_predict = echo.max_output_tokens
    if echo.temperature is not None:
        options.temperature = echo.temperature
    if echo.top_p is not None:
        options.top_p = echo.top_p
    req = GenerationRequest(model=model, request_id=request_id, options=options, messages=messages)
    req.format, echo.text_format = parse_text_format(body)
    tools_json, echo.tools = parse_function_tools(body)
    use_tools = parse_tool_choice(body)
    echo.tool_choice = "auto" if use_tools else "none"
    req.tools_json = tools_json if use_tools else ""
    req.think, echo.effort = parse_reasoning(body)
    req.logprobs = parse_include(body)
    top = body.int("top_logprobs", minimum=0)
    if top:
        req.logprobs = True
    req.top_logprobs = parse_top_logprobs(body, req.logprobs)
    truncation = body.str("truncation")
    if truncation not in (None, "auto", "disabled"):
        raise BadField("truncation", "'truncation' must be \"auto\" or \"disabled\"")
    if truncation is not None:
        echo.truncation = truncation
        req.truncate = truncation == "auto"
    for key in ("user", "safety_identifier", "prompt_cache_key"):
        value = body.str(key)  # identifiers for the caller's bookkeeping: logged, nothing to do
        if value:
            log.info("openai_identifier", field=key, value=value)
    for key, allowed in _NEUTRAL_VALUES.items():
        body.refuse((key,), allowed=allowed)
    body.finish()
    return req, stream, echo


# -- rendering ---------------------------------------------------------------------------------------------


def new_id(prefix: str) -> str:
    return f"{prefix}_{secrets.token_hex(16)}"


def usage_json(gen: Generation) -> dict[str, Any]:
    s = gen.stats
    return {"input_tokens": s.prompt_tokens, "input_tokens_details": {"cached_tokens": s.cached_tokens},
            "output_tokens": s.eval_count, "output_tokens_details": {"reasoning_tokens": 0},
            "total_tokens": s.prompt_tokens + s.eval_count}


def logprobs_json(items: list[TokenLogprob]) -> list[dict[str, Any]]:
    return [{"token": lp.token, "logprob": lp.logprob, "bytes": lp.bytes,
             "top_logprobs": [{"token": t.token, "logprob": t.logprob, "bytes": t.bytes} for t in lp.top]} for lp in items]


def text_part(text: str, logprobs: list[TokenLogprob] | None = None) -> dict[str, Any]:
    return {"type": "output_text", "text": text, "annotations": [], "logprobs": logprobs_json(logprobs or [])}


def function_call_item(call: ToolCall, item_id: str, status: str = "completed") -> dict[str, Any]:
    return {"id": item_id, "type": "function_call", "status": status, "call_id": call.id or new_id("call"),
            "name": call.name, "arguments": call.arguments or "{}"}


def reasoning_item(item_id: str, text: str, status: str = "completed") -> dict[str, Any]:
    content = [{"type": "reasoning_text", "text": text}] if text else []
    return {"id": item_id, "type": "reasoning", "status": status, "summary": [], "content": content}


def message_item(item_id: str, content: list[dict[str, Any]], status: str) -> dict[str, Any]:
    return {"id": item_id, "type": "message", "role": "assistant", "status": status, "content": content}


class ResponseBuilder:
    """The response object, and the streamed events that build it item by item."""

    def __init__(self, req: GenerationRequest, echo: ResponseSettings) -> None:
        self.req = req
        self.echo = echo
        self.id = new_id("resp")
        self.created_at = int(time.time())
        self.output: list[dict[str, Any]] = []
        self.sequence = 0
        self._open: dict[str, Any] | None = None  # the reasoning or message item being streamed
        self._text: list[str] = []
        self._logprobs: list[TokenLogprob] = []

    def response(self, status: str, *, gen: Generation | None = None, error: MlxServeError | None = None) -> dict[str, Any]:
        """The response object in `status` (in_progress, completed, incomplete, failed)."""
        e = self.echo
        return {
            "id": self.id, "object": "response", "created_at": self.created_at, "status": status,
            "completed_at": int(time.time()) if status == "completed" else None,
            "error": {"code": "server_error", "message": error.message} if error is not None else None,
            "incomplete_details": {"reason": "max_output_tokens"} if status == "incomplete" else None,
            "instructions": e.instructions, "max_output_tokens": e.max_output_tokens, "model": self.req.model,
            "output": list(self.output), "parallel_tool_calls": True, "previous_response_id": None,
            "reasoning": {"effort": e.effort, "summary": None}, "store": False,
            "temperature": e.temperature, "top_p": e.top_p, "text": {"format": e.text_format},
            "tool_choice": e.tool_choice, "tools": e.tools, "truncation": e.truncation,
            "usage": usage_json(gen) if gen is not None else None, "metadata": {}, "user": None,
        }

    @staticmethod
    def final_status(gen: Generation) -> str:
        return "incomplete" if gen.done_reason == "length" else "completed"

    def whole(self, gen: Generation, thinking: str, text: str, calls: list[ToolCall], logprobs: list[TokenLogprob]) -> dict[str, Any]:
        """The non-streamed response: reasoning, then the message, then function calls."""
        status = self.final_status(gen)
        if thinking:
            self.output.append(reasoning_item(new_id("rs"), thinking))
        if text or not calls:
            self.output.append(message_item(new_id("msg"), [text_part(text, logprobs)], status))
        self.output.extend(function_call_item(c, new_id("fc")) for c in calls)
        return self.response(status, gen=gen)

    # Streaming: each method returns the SSE bytes of the events it makes.

    def event(self, kind: str, **fields: Any) -> bytes:
        data = {"type": kind, "sequence_number": self.sequence, **fields}
        self.sequence += 1
        return f"event: {kind}\ndata: {dumps(data)}\n\n".encode()

    def start(self) -> bytes:
        created = self.response("in_progress")
        return self.event("response.created", response=created) + self.event("response.in_progress", response=created)

    def _close_open(self, status: str = "completed") -> bytes:
        item, self._open = self._open, None
        if item is None:
            return b""
        index = len(self.output)
        text = "".join(self._text)
        if item["type"] == "reasoning":
            part = {"type": "reasoning_text", "text": text}
            done = reasoning_item(item["id"], text)
            out = (self.event("response.reasoning_text.done", item_id=item["id"], output_index=index, content_index=0, text=text)
                   + self.event("response.content_part.done", item_id=item["id"], output_index=index, content_index=0, part=part))
        else:
            part = text_part(text, self._logprobs)
            done = message_item(item["id"], [part], status)
            out = (self.event("response.output_text.done", item_id=item["id"], output_index=index, content_index=0, text=text,
                              logprobs=part["logprobs"])
                   + self.event("response.content_part.done", item_id=item["id"], output_index=index, content_index=0, part=part))
        self.output.append(done)
        self._text, self._logprobs = [], []
        return out + self.event("response.output_item.done", output_index=index, item=done)

    def _open_item(self, kind: str) -> bytes:
        index = len(self.output)
        if kind == "reasoning":
            item = reasoning_item(new_id("rs"), "", status="in_progress")
            part: dict[str, Any] = {"type": "reasoning_text", "text": ""}
        else:
            item = message_item(new_id("msg"), [], "in_progress")
            part = text_part("")
        self._open = item
        return (self.event("response.output_item.added", output_index=index, item=item)
                + self.event("response.content_part.added", item_id=item["id"], output_index=index, content_index=0, part=part))

    def _delta(self, kind: str, text: str, logprobs: list[TokenLogprob]) -> bytes:
        out = b""
        if self._open is None or self._open["type"] != kind:
            out += self._close_open() + self._open_item(kind)
        assert self._open is not None
        self._text.append(text)
        index, item_id = len(self.output), self._open["id"]
        if kind == "reasoning":
            return out + self.event("response.reasoning_text.delta", item_id=item_id, output_index=index, content_index=0, delta=text)
        self._logprobs.extend(logprobs)
        return out + self.event("response.output_text.delta", item_id=item_id, output_index=index, content_index=0, delta=text,
                                logprobs=logprobs_json(logprobs))

    def frame(self, event: TokenEvent) -> bytes:
        """One worker frame's events: reasoning and text deltas, and whole function calls."""
        out = b""
        if event.thinking:
            out += self._delta("reasoning", event.thinking, [])
        logprobs = list(event.logprobs) if self.req.logprobs else []
        if event.text or logprobs:
            out += self._delta("message", event.text, logprobs)
        for call in event.tool_calls:
            out += self._close_open()
            index, item = len(self.output), function_call_item(call, new_id("fc"))
            added = {**item, "status": "in_progress", "arguments": ""}
            out += (self.event("response.output_item.added", output_index=index, item=added)
                    + self.event("response.function_call_arguments.delta", item_id=item["id"], output_index=index,
                                 delta=item["arguments"])
                    + self.event("response.function_call_arguments.done", item_id=item["id"], output_index=index,
                                 name=item["name"], arguments=item["arguments"])
                    + self.event("response.output_item.done", output_index=index, item=item))
            self.output.append(item)
        return out

    def finish(self, gen: Generation) -> bytes:
        status = self.final_status(gen)
        if not self.output and self._open is None:  # nothing generated: still one (empty) message, as the non-streamed answer has
            out = self._open_item("message")
        else:
            out = b""
        out += self._close_open(status)
        kind = "response.completed" if status == "completed" else "response.incomplete"
        return out + self.event(kind, response=self.response(status, gen=gen))

    def failed(self, err: MlxServeError) -> bytes:
        """A failure mid-stream: an `error` event, then `response.failed`."""
        return (self.event("error", code=err.openai_type, message=err.message, param=getattr(err, "param", None))
                + self.event("response.failed", response=self.response("failed", error=err)))


async def create_response(request: web.Request) -> web.StreamResponse:
    """POST /v1/responses"""
    req, stream, echo = parse_responses_request(await read_json_object(request), state.request_id(request))
    gen = await state.core(request).start(req)
    try:
        builder = ResponseBuilder(req, echo)
        if not stream:
            out = await gen.collect()
            return web.json_response(builder.whole(gen, out.reasoning, out.content, out.tool_calls, out.logprobs), dumps=dumps)

        async def chunks() -> AsyncIterator[bytes]:
            yield builder.start()
            async for event in gen.events():
                data = builder.frame(event)
                if data:
                    yield data
            yield builder.finish(gen)

        return await stream_chunks(request, sse_response_headers(), chunks(), error_chunk=builder.failed)
    finally:
        await gen.close()


def add_routes(app: web.Application) -> None:
    app.router.add_post("/v1/responses", create_response)
