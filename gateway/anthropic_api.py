"""Anthropic's Messages API (POST /v1/messages, POST /v1/messages/count_tokens) over the generation core.

For Claude Code and every Anthropic client. A request's `system` and `messages` become chat
messages (tool_use blocks the assistant's tool calls, tool_result blocks tool turns), its tools
and tool_choice a ToolPlan, `thinking` the think switch and the worker's thinking budget. The
answer is a message of content blocks (thinking, text, tool_use), whole or streamed as
Anthropic's typed SSE events, with `ping` events while a long prompt prefills. Errors, including
the guards' and the JSON reader's, come in Anthropic's shape (rendering.py: the ANTHROPIC dialect).

Prefix caching is automatic, so the translation must keep an agent's earlier turns byte-stable:
blocks keep their order, tool schemas their key order, and nothing per-request is added before
the conversation (Claude Code's per-request billing header in `system` is dropped for that reason).
"""

from __future__ import annotations

import json
import secrets
from typing import Any, AsyncIterator

from aiohttp import web

from mlxserve.services.common import logs
from mlxserve.services.common.errors import MlxServeError
from mlxserve.v1.frames import Stats, TokenEvent, ToolCall
from mlxserve.v1.requests import ChatMessage, SamplingOptions, Tool, ToolChoice

from . import state
from .generation import Generation, GenerationRequest
from .rendering import anthropic_error_body, anthropic_status, dumps, sse_response_headers, stream_chunks
from .request_types import Options
from .request_types_anthropic import (AnthropicBlock, AnthropicMessage, AnthropicThinking, AnthropicTool, AnthropicToolChoice,
                                      CountTokensRequest, MessagesInput, MessagesRequest)
from .sampling import from_options
from .tools import AUTO, NONE, REQUIRED, ToolPlan, tool_call
from .validation import BadField, UnsupportedField, decode, drop_under, model_name, note_ignored, read_json_object, schema_text

log = logs.get_logger(component="anthropic")

routes = web.RouteTableDef()

# Seconds without output after which a stream gets a `ping` (a long prompt prefilling): clients and
# proxies that time out idle streams keep waiting.
PING_EVERY_S = 5.0
# Text blocks of one turn (and of `system`) are separate paragraphs.
BLOCK_SEPARATOR = "\n\n"
# Claude Code (2.1.36+) starts `system` with a line that changes on every request: Anthropic's own
# billing, meaningless to a model, and fatal to a prefix cache. It is dropped (and named as ignored).
BILLING_HEADER = "x-anthropic-billing-header:"
# Content a model cannot take here (no vision models, no document parsing yet).
REFUSED_BLOCKS = {
    "image": "image blocks are not supported: no model served here takes images (there are no vision models yet)",
    "document": "document blocks are not supported: send the document's text in a text block",
    "search_result": "search_result blocks are not supported: send the results' text in a text block",
}


# -- request translation ------------------------------------------------------------------------------


def _server_block(kind: str) -> bool:
    """Blocks of Anthropic's server tools (web search, code execution, MCP connector...): they ran at Anthropic."""
    return kind == "server_tool_use" or kind.endswith("_tool_result") or kind.startswith("mcp_")


def _drop(ignored: list[str], where: str) -> None:
    ignored[:] = drop_under(ignored, where)
    ignored.append(where)


def _required(value: Any, where: str) -> Any:
    """A field the block needs: present (and, for a name or an id, not empty)."""
    if value is None or value == "":
        raise BadField(where, f"'{where}' is required")
    return value


def _text(block: AnthropicBlock, where: str) -> str:
    if block.text is None:
        raise BadField(f"{where}.text", f"'{where}.text' is required")
    return block.text


def _joined(texts: list[str]) -> str:
    """Text blocks as one text: separate paragraphs, in order (empty blocks add nothing)."""
    return BLOCK_SEPARATOR.join(t for t in texts if t)


def _refuse(block: AnthropicBlock, where: str, turn: str) -> UnsupportedField:
    message = REFUSED_BLOCKS.get(block.type) or f"blocks of type {block.type!r} are not supported in {turn} turns"
    return UnsupportedField(f"{where}.type", f"'{where}.type': {message}")


def without_billing_header(text: str) -> str:
    """`text` without Claude Code's first-line billing header (the line and its newline), if it has one."""
    if not text.startswith(BILLING_HEADER):
        return text
    _, _, rest = text.partition("\n")
    return rest


def parse_system(value: str | list[AnthropicBlock] | None, ignored: list[str], field: str = "system") -> str:
    """`system` (or a system turn's content): a string, or text blocks joined in order; the billing header is
    dropped and named."""
    if value is None:
        return ""
    if isinstance(value, str):
        text = without_billing_header(value)
        if text != value:
            ignored.append(field)
        return text
    texts: list[str] = []
    for i, block in enumerate(value):
        where = f"{field}[{i}]"
        if block.type != "text":
            raise UnsupportedField(f"{where}.type", f"'{where}.type': only text blocks can be a system prompt")
        text = _text(block, where)
        kept = without_billing_header(text)
        if kept != text:
            _drop(ignored, where)
        texts.append(kept)
    return _joined(texts)


def _tool_result_text(block: AnthropicBlock, where: str) -> str:
    """A tool_result's content: a string or text blocks; `is_error` is said in the text, where the model reads it."""
    content = block.content
    if content is None:
        text = ""
    elif isinstance(content, str):
        text = content
    elif isinstance(content, list):
        texts = []
        for k, part in enumerate(content):
            at = f"{where}.content[{k}]"
            if part.type != "text":
                raise _refuse(part, at, "tool_result")
            texts.append(_text(part, at))
        text = _joined(texts)
    else:
        raise BadField(f"{where}.content", f"'{where}.content' must be a string or an array of text blocks")
    return f"Error: {text}" if block.is_error else text


def _arguments(value: Any, where: str) -> str:
    """A tool_use block's `input` as the JSON text of an object, key order kept (it is re-rendered every turn)."""
    if not isinstance(value, dict):
        raise BadField(where, f"'{where}' must be a JSON object")
    return json.dumps(value, ensure_ascii=False, separators=(",", ":"))


def _assistant_turn(blocks: list[AnthropicBlock], where: str, calls: dict[str, str],
                    ignored: list[str]) -> ChatMessage:
    """An assistant turn: its text, its earlier reasoning (thinking blocks), its tool calls."""
    message = ChatMessage(role="assistant")
    texts: list[str] = []
    thoughts: list[str] = []
    for j, block in enumerate(blocks):
        at = f"{where}.content[{j}]"
        if block.type == "text":
            texts.append(_text(block, at))
        elif block.type == "thinking":
            if block.thinking is None:
                raise BadField(f"{at}.thinking", f"'{at}.thinking' is required")
            thoughts.append(block.thinking)
        elif block.type == "redacted_thinking":
            _drop(ignored, at)  # encrypted by Anthropic for Anthropic: nothing a local model can read
        elif block.type == "tool_use":
            call_id = _required(block.id, f"{at}.id")
            name = _required(block.name, f"{at}.name")
            message.tool_calls.append(tool_call(call_id, name, _arguments(block.input, f"{at}.input")))
            calls[call_id] = name
        elif _server_block(block.type):
            _drop(ignored, at)
        else:
            raise _refuse(block, at, "assistant")
    message.content = _joined(texts)
    message.thinking = _joined(thoughts)
    return message


def _user_turns(blocks: list[AnthropicBlock], where: str, calls: dict[str, str],
                ignored: list[str]) -> list[ChatMessage]:
    """A user turn: tool_result blocks become tool turns (answering a call made earlier), text the user's message."""
    out: list[ChatMessage] = []
    texts: list[str] = []

    def flush() -> None:
        if texts:
            out.append(ChatMessage(role="user", content=_joined(texts)))
            texts.clear()

    for j, block in enumerate(blocks):
        at = f"{where}.content[{j}]"
        if block.type == "text":
            texts.append(_text(block, at))
        elif block.type == "tool_result":
            call_id = _required(block.tool_use_id, f"{at}.tool_use_id")
            if call_id not in calls:
                raise BadField(f"{at}.tool_use_id", f"'{at}.tool_use_id' is {call_id!r}, which no earlier tool_use block has")
            flush()
            out.append(ChatMessage(role="tool", content=_tool_result_text(block, at), tool_call_id=call_id,
                                   tool_name=calls[call_id]))
        elif _server_block(block.type):
            _drop(ignored, at)
        else:
            raise _refuse(block, at, "user")
    flush()
    if not out:
        out.append(ChatMessage(role="user", content=""))
    return out


def parse_messages(items: list[AnthropicMessage], ignored: list[str]) -> list[ChatMessage]:
    """`messages` → chat messages, in order. A tool_result must answer a tool_use of an earlier turn."""
    if items[-1].role == "assistant":
        last = f"messages[{len(items) - 1}]"
        raise UnsupportedField(last, f"'{last}': a last assistant message (a prefill for the model to continue) is not "
                                     "supported; end with a user message")
    if items[0].role == "system":
        raise BadField("messages[0].role", "'messages[0].role': a system message cannot open the conversation; "
                                           "put it in the top-level 'system'")
    out: list[ChatMessage] = []
    calls: dict[str, str] = {}  # tool_use id → the tool it called
    for i, m in enumerate(items):
        where = f"messages[{i}]"
        if isinstance(m.content, str):
            out.append(ChatMessage(role=m.role, content=m.content))
        elif m.role == "system":
            # Kept in place (the template renders it there, or the worker folds it into the turn
            # before): moving it to the top would change the prefix every earlier turn was cached under.
            out.append(ChatMessage(role="system", content=parse_system(m.content, ignored, f"{where}.content")))
        elif m.role == "assistant":
            out.append(_assistant_turn(m.content, where, calls, ignored))
        else:
            out.extend(_user_turns(m.content, where, calls, ignored))
    return out


def parse_tools(tools: list[AnthropicTool] | None, ignored: list[str]) -> ToolPlan:
    """Client tools reach the model with their input_schema as sent; server tools are dropped and named."""
    plan = ToolPlan()
    for i, tool in enumerate(tools or []):
        where = f"tools[{i}]"
        if tool.type not in (None, "custom"):
            _drop(ignored, where)
            log.debug("server_tool_dropped", tool=where, type=tool.type)
            continue
        name = _required(tool.name, f"{where}.name")
        schema = _required(tool.input_schema, f"{where}.input_schema")
        plan.tools.append(Tool(name=name, description=tool.description or "", parameters=schema))
        if tool.strict:
            plan.strict.append(f"{where}.strict")
    return plan


def parse_tool_choice(plan: ToolPlan, choice: AnthropicToolChoice | None) -> ToolChoice:
    """auto → AUTO, any → REQUIRED, tool → REQUIRED of that tool (once), none → NONE; disable_parallel_tool_use → one call."""
    if choice is not None:
        if choice.type == "tool":
            plan.force(_required(choice.name, "tool_choice.name"), "tool_choice.name")
        else:
            plan.mode = {"auto": AUTO, "any": REQUIRED, "none": NONE}[choice.type]
        plan.single = plan.single or bool(choice.disable_parallel_tool_use)
    return plan.choice("tool_choice")


def parse_thinking(thinking: AnthropicThinking | None, ignored: list[str]) -> tuple[bool | None, int | None]:
    """(think, thinking budget). enabled: on, capped at budget_tokens; disabled: off; adaptive (Claude Code's) and
    between_tools: the model's default, which is on for a model that can think, and a no-op for one that cannot."""
    if thinking is None:
        return None, None
    if thinking.display == "omitted":
        ignored.append("thinking.display")  # the reasoning is returned as it is: there is no signature to stand in for it
    if thinking.type == "enabled":
        return True, _required(thinking.budget_tokens, "thinking.budget_tokens")
    if thinking.type == "disabled":
        return False, None
    return None, thinking.budget_tokens


def asks_for_caching(body: MessagesInput) -> bool:
    """Whether any cache_control marker is set (top level, system, tools, or any block of any turn)."""
    def marked(blocks: Any) -> bool:
        return isinstance(blocks, list) and any(b.cache_control is not None or marked(b.content) for b in blocks)

    return (body.cache_control is not None or marked(body.system) or any(t.cache_control is not None for t in body.tools or [])
            or any(marked(m.content) for m in body.messages))


def _translate(body: MessagesInput, ignored: list[str], request_id: str, options: SamplingOptions) -> GenerationRequest:
    """What /v1/messages and its count_tokens share: the prompt (system, messages, tools), thinking, output format."""
    messages = parse_messages(body.messages, ignored)
    system = parse_system(body.system, ignored)
    if system:
        messages.insert(0, ChatMessage(role="system", content=system))
    req = GenerationRequest(model=model_name(body.model), request_id=request_id, messages=messages, options=options,
                            ignored=ignored)
    plan = parse_tools(body.tools, ignored)
    req.tool_choice = parse_tool_choice(plan, body.tool_choice)
    req.tools, req.max_tool_calls = plan.tools, plan.limit
    ignored += plan.ignored()
    req.think, req.thinking_budget = parse_thinking(body.thinking, ignored)
    fmt = (body.output_config.format if body.output_config else None) or body.output_format
    if fmt is not None:
        req.format = schema_text(fmt.schema) if fmt.schema else "json"
    if body.output_config is not None and body.output_config.effort is not None:
        ignored.append("output_config.effort")  # the templates take no effort level
    if body.context_management:
        ignored.append("context_management")  # nothing is edited out of the context here
    return req


def parse_messages_request(data: dict[str, Any], request_id: str) -> tuple[GenerationRequest, bool, bool]:
    """A /v1/messages body → (request, stream, caching asked for); raises BadField/UnsupportedField (400)."""
    body, ignored = decode(data, MessagesRequest)
    # max_tokens is a cap: the worker clamps it to the room the prompt leaves in the context.
    options = from_options(Options(temperature=body.temperature, top_p=body.top_p, top_k=body.top_k,
                                   num_predict=body.max_tokens, stop=body.stop_sequences))
    req = _translate(body, ignored, request_id, options)
    if body.metadata or body.service_tier:
        log.debug("anthropic_advisory_fields", metadata=bool(body.metadata), service_tier=body.service_tier)
    return req, bool(body.stream), asks_for_caching(body)


def parse_count_tokens_request(data: dict[str, Any], request_id: str) -> GenerationRequest:
    """A /v1/messages/count_tokens body → the request whose prompt is counted."""
    body, ignored = decode(data, CountTokensRequest)
    return _translate(body, ignored, request_id, SamplingOptions())


# -- rendering --------------------------------------------------------------------------------------------


def tool_use_id(call: ToolCall) -> str:
    """Anthropic's `toolu_…` id for a parsed call (the worker's `call_…` ids keep their random part)."""
    if call.id.startswith("toolu_"):
        return call.id
    return "toolu_" + (call.id.removeprefix("call_") or secrets.token_hex(12))


def tool_use_block(call: ToolCall) -> dict[str, Any]:
    return {"type": "tool_use", "id": tool_use_id(call), "name": call.name, "input": json.loads(call.arguments or "{}")}


def usage_json(stats: Stats, caching: bool) -> dict[str, int]:
    """Anthropic's usage: input_tokens + cache_creation_input_tokens + cache_read_input_tokens = the prompt.

    Reads are the prompt tokens taken from the prefix cache. Every prompt evaluated here is then
    cached; a request that marked blocks with cache_control is told so (its evaluated tokens are
    cache_creation_input_tokens), one that marked none sees them as input_tokens, as Anthropic
    reports an uncached prompt.
    """
    read = stats.cached_tokens
    evaluated = max(0, stats.prompt_tokens - read)
    created = evaluated if caching else 0
    return {"input_tokens": evaluated - created, "cache_creation_input_tokens": created, "cache_read_input_tokens": read,
            "output_tokens": stats.eval_count}


def stop_reason(gen: Generation, called_tools: bool) -> tuple[str, str | None]:
    """(stop_reason, stop_sequence): tool_use, max_tokens, stop_sequence (naming it) or end_turn."""
    if called_tools or gen.done_reason == "tool_calls":
        return "tool_use", None
    if gen.done_reason == "length":
        return "max_tokens", None
    sequence = gen.final.stop_sequence if gen.final is not None else None
    return ("stop_sequence", sequence) if sequence else ("end_turn", None)


def message_json(msg_id: str, model: str, content: list[dict[str, Any]], reason: str | None, sequence: str | None,
                 usage: dict[str, int]) -> dict[str, Any]:
    return {"id": msg_id, "type": "message", "role": "assistant", "model": model, "content": content,
            "stop_reason": reason, "stop_sequence": sequence, "usage": usage}


def sse(kind: str, **data: Any) -> bytes:
    """One typed event: `event: <type>` and the data, which names its type again."""
    return f"event: {kind}\ndata: {dumps({'type': kind, **data})}\n\n".encode()


def error_event(err: MlxServeError) -> bytes:
    return sse("error", error=anthropic_error_body(anthropic_status(err), err.message)["error"])


class MessageStream:
    """The streamed events of one message: blocks opened, filled by deltas, and closed in order."""

    def __init__(self, msg_id: str, model: str, caching: bool) -> None:
        self.msg_id = msg_id
        self.model = model
        self.caching = caching
        self.index = 0                   # of the block being written (or the next one)
        self.open: str | None = None     # "text" or "thinking" while such a block is open
        self.called = False

    def start(self, prompt_tokens: int) -> bytes:
        """message_start (its usage as known before the cache lookup: the final split comes with message_delta),
        then a ping."""
        usage = usage_json(Stats(prompt_tokens=prompt_tokens), self.caching)
        return (sse("message_start", message=message_json(self.msg_id, self.model, [], None, None, usage))
                + sse("ping"))

    def frame(self, event: TokenEvent) -> bytes:
        out = b""
        if event.thinking:
            out += self._delta("thinking", {"type": "thinking_delta", "thinking": event.thinking})
        if event.text:
            out += self._delta("text", {"type": "text_delta", "text": event.text})
        for call in event.tool_calls:
            block = tool_use_block(call)
            out += (self._close()
                    + sse("content_block_start", index=self.index, content_block={**block, "input": {}})
                    + sse("content_block_delta", index=self.index,
                          delta={"type": "input_json_delta", "partial_json": call.arguments or "{}"})
                    + sse("content_block_stop", index=self.index))
            self.index += 1
            self.called = True
        return out

    def finish(self, gen: Generation) -> bytes:
        reason, sequence = stop_reason(gen, self.called)
        return (self._close()
                + sse("message_delta", delta={"stop_reason": reason, "stop_sequence": sequence},
                      usage=usage_json(gen.stats, self.caching))
                + sse("message_stop"))

    def _delta(self, kind: str, delta: dict[str, Any]) -> bytes:
        out = b""
        if self.open != kind:
            block = {"type": "thinking", "thinking": "", "signature": ""} if kind == "thinking" else {"type": "text", "text": ""}
            out += self._close() + sse("content_block_start", index=self.index, content_block=block)
            self.open = kind
        return out + sse("content_block_delta", index=self.index, delta=delta)

    def _close(self) -> bytes:
        if self.open is None:
            return b""
        self.open = None
        self.index += 1
        return sse("content_block_stop", index=self.index - 1)


# -- handlers ---------------------------------------------------------------------------------------------


@routes.post("/v1/messages")
async def create_message(request: web.Request) -> web.StreamResponse:
    """POST /v1/messages (the `?beta=true` query Claude Code adds, and anthropic-* headers, change nothing)."""
    req, stream, caching = parse_messages_request(await read_json_object(request), state.request_id(request))
    note_ignored(request, req.ignored)
    gen = await state.core(request).start(req)
    try:
        msg_id = f"msg_{secrets.token_hex(12)}"
        if not stream:
            out = await gen.collect()
            content: list[dict[str, Any]] = []
            if out.reasoning:
                content.append({"type": "thinking", "thinking": out.reasoning, "signature": ""})
            if out.content:
                content.append({"type": "text", "text": out.content})
            content += [tool_use_block(c) for c in out.tool_calls]
            reason, sequence = stop_reason(gen, bool(out.tool_calls))
            return web.json_response(message_json(msg_id, req.model, content, reason, sequence, usage_json(gen.stats, caching)),
                                     dumps=dumps)

        writer = MessageStream(msg_id, req.model, caching)

        async def chunks() -> AsyncIterator[bytes]:
            yield writer.start(gen.prompt_tokens)
            async for event in gen.events(idle_every=PING_EVERY_S):
                data = sse("ping") if event is None else writer.frame(event)
                if data:
                    yield data
            yield writer.finish(gen)

        return await stream_chunks(request, sse_response_headers(), chunks(), error_chunk=error_event)
    finally:
        await gen.close()


@routes.post("/v1/messages/count_tokens")
async def count_tokens(request: web.Request) -> web.Response:
    """POST /v1/messages/count_tokens: {"input_tokens": n}, the prompt as /v1/messages would make it."""
    req = parse_count_tokens_request(await read_json_object(request), state.request_id(request))
    note_ignored(request, req.ignored)
    return web.json_response({"input_tokens": await state.core(request).count_tokens(req)}, dumps=dumps)
