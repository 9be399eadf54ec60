"""OpenAI's Responses API (POST /v1/responses), without state, over the same generation core as chat completions.

The server keeps nothing between requests, as Ollama-class servers do: every field that would need
stored responses (`previous_response_id`, `conversation`, `store: true`, `background: true`) is
refused with a 400 naming it, and the caller sends the whole conversation as `input` each time.
Input items become chat messages (function calls and their outputs included); the output is a
list of items (reasoning, a message with `output_text`, function calls), streamed as the typed
Responses events (`event: <type>` + `data: {..., "sequence_number": n}`).
"""

from __future__ import annotations

import secrets
import time
from dataclasses import dataclass, field
from typing import Any, AsyncIterator

import msgspec
from aiohttp import web

from mlxserve.services.common import logs
from mlxserve.services.common.errors import MlxServeError
from mlxserve.v1.frames import TokenEvent, TokenLogprob, ToolCall
from mlxserve.v1.requests import ChatMessage

from . import state
from .generation import Generation, GenerationRequest
from .openai_api import extensions, log_advisory, parse_content
from .rendering import dumps, logprobs_json, sse_response_headers, stream_chunks
from .request_types import FunctionDef
from .request_types_openai import Reasoning, ResponsesItem, ResponsesRequest, ResponsesTool, TextConfig
from .sampling import openai_sampling
from .tools import NONE, ToolPlan, function_tool, responses_choice, tool_call
from .validation import (BadField, UnsupportedField, check_top_logprobs, decode, drop_under, model_name, note_ignored,
                         parse_arguments, read_json_object, schema_text)

log = logs.get_logger(component="openai_responses")

routes = web.RouteTableDef()

INPUT_ROLES = {"user": "user", "system": "system", "developer": "system", "assistant": "assistant"}
LOGPROBS_INCLUDE = "message.output_text.logprobs"
# `include` items that need nothing from us: reasoning.encrypted_content asks for reasoning items that the
# client can send back; ours carry their text in the clear (encrypted_content is null), and the rest
# name outputs of hosted tools that never run here (so there is nothing to include).
INCLUDE_EMPTY = ("reasoning.encrypted_content", "file_search_call.results", "web_search_call.results",
                 "web_search_call.action.sources", "message.input_image.image_url", "computer_call_output.output.image_url",
                 "code_interpreter_call.outputs")
# Fields that need responses kept on the server (or run later): refused whenever they ask for it.
STATEFUL = ("previous_response_id", "conversation", "background", "prompt")


def _stateful_message(key: str) -> str:
    if key == "prompt":
        return "'prompt' (a stored prompt template) needs prompts kept on the server, and this server keeps none: send 'instructions' and 'input' instead"
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
    tool_choice: Any = "auto"
    parallel_tool_calls: bool = True
    truncation: str = "disabled"
    effort: str | None = None
    metadata: dict[str, Any] = field(default_factory=dict)
    encrypted_reasoning: bool = False  # include: reasoning.encrypted_content (null here: the text is in the clear)


# -- request parsing -------------------------------------------------------------------------------------


def parse_reasoning_text(item: ResponsesItem) -> str:
    """A reasoning item sent back as input: its reasoning text (or its summary) becomes the turn's thinking."""
    for parts in (item.content, item.summary):
        if isinstance(parts, list):
            texts = [p.text for p in parts if p.text]
            if texts:
                return "\n".join(texts)
    return ""


def parse_input(value: str | list[ResponsesItem], ignored: list[str]) -> list[ChatMessage]:
    """`input` → chat messages: a string is one user message; items are messages, function calls and their outputs.

    Items of hosted tools (web_search_call, ...) are dropped and named in `ignored`: they ran
    elsewhere, and this server runs none.
    """
    if isinstance(value, str):
        return [ChatMessage(role="user", content=value)]
    out: list[ChatMessage] = []
    call_names: dict[str, str] = {}
    thinking = ""  # a reasoning item belongs to the assistant turn after it
    for i, item in enumerate(value):
        where = f"input[{i}]"
        kind = item.type
        if kind == "message":
            if item.role is None:
                raise BadField(f"{where}.role", f"'{where}.role' is required")
            msg = ChatMessage(role=INPUT_ROLES[item.role], content=parse_content(item.content, f"{where}.content"))
            if item.role == "assistant" and thinking:
                msg.thinking, thinking = thinking, ""
            out.append(msg)
        elif kind == "function_call":
            if not item.call_id or not item.name:
                key = f"{where}.call_id" if not item.call_id else f"{where}.name"
                raise BadField(key, f"'{key}' is required")
            call_names[item.call_id] = item.name
            call = tool_call(item.call_id, item.name, parse_arguments(item.arguments, f"{where}.arguments"))
            prev = out[-1] if out else None
            if prev is not None and prev.role == "assistant" and (prev.tool_calls or not thinking):
                prev.tool_calls.append(call)  # parallel calls, or the calls of the message just before: one turn
            else:
                out.append(ChatMessage(role="assistant", thinking=thinking, tool_calls=[call]))
                thinking = ""
        elif kind == "function_call_output":
            if not item.call_id:
                raise BadField(f"{where}.call_id", f"'{where}.call_id' is required")
            text = parse_content(item.output, f"{where}.output")
            out.append(ChatMessage(role="tool", content=text, tool_call_id=item.call_id,
                                   tool_name=call_names.get(item.call_id, item.name or "")))
        elif kind == "reasoning":
            thinking = parse_reasoning_text(item)
        elif kind == "item_reference":
            raise UnsupportedField(f"{where}.type", f"'{where}': item_reference needs items stored on the server, and this "
                                                    "server keeps none: send the items themselves")
        else:
            ignored[:] = drop_under(ignored, where)
            ignored.append(where)
            log.debug("input_item_dropped", item=where, type=kind)
    if thinking:  # reasoning with no turn after it: keep it on an assistant turn of its own
        out.append(ChatMessage(role="assistant", thinking=thinking))
    return out


def parse_text_format(text: TextConfig | None, ignored: list[str]) -> tuple[str, dict[str, Any]]:
    """`text.format` → (GenerationRequest.format, the format echoed back): text, json_object or json_schema.

    Output is always constrained to the schema, so `strict` is honoured either way; `verbosity` is
    a hint this server cannot follow (named as ignored unless "medium").
    """
    if text is None:
        return "", {"type": "text"}
    if text.verbosity not in (None, "medium"):
        ignored.append("text.verbosity")
    fmt = text.format
    if fmt is None or fmt.type == "text":
        return "", {"type": "text"}
    if fmt.type == "json_object":
        return "json", {"type": "json_object"}
    if not fmt.name:
        raise BadField("text.format.name", "'text.format.name' is required for json_schema")
    if fmt.schema is None:
        raise BadField("text.format.schema", "'text.format.schema' is required for json_schema")
    echo: dict[str, Any] = {"type": "json_schema", "name": fmt.name, "schema": fmt.schema, "strict": fmt.strict}
    if fmt.description is not None:
        echo["description"] = fmt.description
    return (schema_text(fmt.schema) if fmt.schema else "json"), echo


def parse_tools(tools: list[ResponsesTool] | None, ignored: list[str]) -> tuple[ToolPlan, list[dict[str, Any]]]:
    """Function tools reach the model; hosted tools (web_search, file_search, namespace, mcp, custom, ...) are
    dropped from what it sees and named in `ignored`. Returns the plan and the function tools echoed back."""
    plan = ToolPlan()
    echoed: list[dict[str, Any]] = []
    for i, tool in enumerate(tools or []):
        where = f"tools[{i}]"
        if tool.type != "function":
            ignored[:] = drop_under(ignored, where)
            ignored.append(where)
            log.debug("hosted_tool_dropped", tool=where, type=tool.type)
            continue
        if not tool.name:
            raise BadField(f"{where}.name", f"'{where}.name' must be a non-empty string")
        plan.tools.append(function_tool(FunctionDef(name=tool.name, description=tool.description, parameters=tool.parameters)))
        if tool.strict:
            plan.strict.append(f"{where}.strict")
        echoed.append(msgspec.to_builtins(tool))
    return plan, echoed


def parse_reasoning(reasoning: Reasoning | None, ignored: list[str]) -> tuple[bool | None, str | None]:
    """`reasoning.effort` switches thinking on or off (the templates take no effort level); summaries are
    not made (a summary asked for is named as ignored: the reasoning itself comes back instead)."""
    if reasoning is None:
        return None, None
    for key in ("summary", "generate_summary"):
        if getattr(reasoning, key) not in (None, "none"):
            ignored.append(f"reasoning.{key}")
    effort = reasoning.effort
    return (None if effort is None else effort != "none"), effort


def parse_include(items: list[str] | None, ignored: list[str]) -> bool:
    """`include`: output logprobs are included when asked; the known items we cannot produce stay empty;
    unknown items are named as ignored. Returns whether logprobs are asked for."""
    logprobs = False
    for i, item in enumerate(items or []):
        if item == LOGPROBS_INCLUDE:
            logprobs = True
        elif item not in INCLUDE_EMPTY:
            ignored.append(f"include[{i}]")
    return logprobs


def parse_responses_request(data: dict[str, Any], request_id: str) -> tuple[GenerationRequest, bool, ResponseSettings]:
    """A /v1/responses body → (request, stream, what the response echoes); raises BadField/UnsupportedField (400)."""
    body, ignored = decode(data, ResponsesRequest)
    for key in STATEFUL:
        if getattr(body, key) not in (None, False):
            raise UnsupportedField(key, _stateful_message(key))
    echo = ResponseSettings(instructions=body.instructions, max_output_tokens=body.max_output_tokens,
                            temperature=body.temperature, top_p=body.top_p, metadata=body.metadata or {})
    messages = parse_input(body.input, ignored)
    if body.instructions:
        messages.insert(0, ChatMessage(role="system", content=body.instructions))
    if body.stream_options is not None and not body.stream:
        raise BadField("stream_options", "'stream_options' is only allowed when 'stream' is true")
    req = GenerationRequest(model=model_name(body.model), request_id=request_id, messages=messages, ignored=ignored,
                            options=openai_sampling(body, max_tokens=body.max_output_tokens, max_key="max_output_tokens"))
    extensions(body, req)
    req.format, echo.text_format = parse_text_format(body.text, ignored)
    plan, echo.tools = parse_tools(body.tools, ignored)
    responses_choice(plan, body.tool_choice)
    plan.single = plan.single or body.parallel_tool_calls is False
    if body.max_tool_calls is not None:
        plan.max_calls = body.max_tool_calls
        if body.max_tool_calls == 0:
            plan.mode = NONE
    req.tools, req.tool_choice, req.max_tool_calls = plan.tools, plan.choice("tool_choice"), plan.limit
    ignored += plan.ignored()
    echo.tool_choice = msgspec.to_builtins(body.tool_choice) if body.tool_choice is not None else "auto"
    echo.parallel_tool_calls = body.parallel_tool_calls is not False
    req.think, echo.effort = parse_reasoning(body.reasoning, ignored)
    req.logprobs = parse_include(body.include, ignored) or bool(body.top_logprobs)
    echo.encrypted_reasoning = "reasoning.encrypted_content" in (body.include or [])
    req.top_logprobs = check_top_logprobs(body.top_logprobs, req.logprobs)
    if body.truncation is not None:
        echo.truncation = body.truncation
        req.truncate = body.truncation == "auto"
    if body.store:
        ignored.append("store")  # nothing is kept: the answer is the same, it just cannot be fetched again
    log_advisory(body)
    return req, bool(body.stream), echo


# -- rendering ---------------------------------------------------------------------------------------------


def new_id(prefix: str) -> str:
    return f"{prefix}_{secrets.token_hex(16)}"


def usage_json(gen: Generation) -> dict[str, Any]:
    s = gen.stats
    return {"input_tokens": s.prompt_tokens, "input_tokens_details": {"cached_tokens": s.cached_tokens},
            "output_tokens": s.eval_count, "output_tokens_details": {"reasoning_tokens": 0},
            "total_tokens": s.prompt_tokens + s.eval_count}


def text_part(text: str, logprobs: list[TokenLogprob] | None = None) -> dict[str, Any]:
    return {"type": "output_text", "text": text, "annotations": [], "logprobs": logprobs_json(logprobs or [])}


def function_call_item(call: ToolCall, item_id: str, status: str = "completed") -> dict[str, Any]:
    return {"id": item_id, "type": "function_call", "status": status, "call_id": call.id or new_id("call"),
            "name": call.name, "arguments": call.arguments or "{}"}


def reasoning_item(item_id: str, text: str, status: str = "completed", *, encrypted: bool = False) -> dict[str, Any]:
    """A reasoning output item; with `encrypted` (include: reasoning.encrypted_content) its encrypted_content is
    null: the reasoning is in `content`, in the clear, and a client sends the item back as it is."""
    content = [{"type": "reasoning_text", "text": text}] if text else []
    item = {"id": item_id, "type": "reasoning", "status": status, "summary": [], "content": content}
    if encrypted:
        item["encrypted_content"] = None
    return item


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
            "output": list(self.output), "parallel_tool_calls": e.parallel_tool_calls, "previous_response_id": None,
            "reasoning": {"effort": e.effort, "summary": None}, "store": False,
            "temperature": e.temperature, "top_p": e.top_p, "text": {"format": e.text_format},
            "tool_choice": e.tool_choice, "tools": e.tools, "truncation": e.truncation,
            "usage": usage_json(gen) if gen is not None else None, "metadata": e.metadata, "user": None,
        }

    @staticmethod
    def final_status(gen: Generation) -> str:
        return "incomplete" if gen.done_reason == "length" else "completed"

    def whole(self, gen: Generation, thinking: str, text: str, calls: list[ToolCall], logprobs: list[TokenLogprob]) -> dict[str, Any]:
        """The non-streamed response: reasoning, then the message, then function calls."""
        status = self.final_status(gen)
        if thinking:
            self.output.append(reasoning_item(new_id("rs"), thinking, encrypted=self.echo.encrypted_reasoning))
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
            done = reasoning_item(item["id"], text, encrypted=self.echo.encrypted_reasoning)
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


@routes.post("/v1/responses")
async def create_response(request: web.Request) -> web.StreamResponse:
    """POST /v1/responses"""
    req, stream, echo = parse_responses_request(await read_json_object(request), state.request_id(request))
    note_ignored(request, req.ignored)
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
