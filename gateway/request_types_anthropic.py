"""Anthropic's Messages API request bodies: /v1/messages and its count_tokens (see request_types.py)."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from msgspec import Meta, Struct

from .request_types import INT32_MAX, JsonObject, Model, NonEmpty, TopK, TopP

# -- Anthropic's Messages API -------------------------------------------------------------------------------

CacheControl = Annotated[JsonObject, Meta(description="Accepted anywhere; caching is automatic here (every prompt's "
                                                      "prefix is cached), so it changes nothing but the usage report.")]


class AnthropicBlock(Struct, omit_defaults=True):
    """A content block. Read: text, tool_use, tool_result (its content as text or text blocks), thinking and
    redacted_thinking (earlier reasoning); blocks of Anthropic's server tools are dropped and named in
    X-Mlxserve-Ignored. image and document blocks, and any other type, are refused (400)."""

    type: NonEmpty
    text: str | None = None
    id: str | None = None
    name: str | None = None
    input: Any = None
    tool_use_id: str | None = None
    content: str | list[AnthropicBlock] | JsonObject | None = None
    is_error: bool | None = None
    thinking: str | None = None
    signature: str | None = None
    data: str | None = None
    source: JsonObject | None = None
    citations: list[Any] | None = None
    cache_control: CacheControl | None = None


class AnthropicMessage(Struct, omit_defaults=True):
    """A turn: its content is a string or a list of blocks. A last assistant turn (a prefill) is refused.
    A "system" turn is a mid-conversation system message (Claude 4.8's; Claude Code sends its reminders so)."""

    role: Literal["user", "assistant", "system"]
    content: str | list[AnthropicBlock]


class AnthropicTool(Struct, omit_defaults=True):
    """A client tool ({name, description, input_schema}, type absent or "custom"). Anthropic's server tools
    (web_search_*, bash_*, text_editor_*, code_execution_*, ...: any other type) are dropped from what
    the model sees and named in X-Mlxserve-Ignored."""

    name: str | None = None
    type: str | None = None
    description: str | None = None
    input_schema: JsonObject | None = None
    strict: bool | None = None
    cache_control: CacheControl | None = None


class AnthropicToolChoice(Struct, omit_defaults=True):
    """auto (the model decides), any (it must call one of the tools), tool (it must call `name`, once), none
    (no call: the tools stay out of the prompt). any and tool are enforced by constrained decoding."""

    type: Literal["auto", "any", "tool", "none"]
    name: str | None = None
    disable_parallel_tool_use: Annotated[bool, Meta(description="true: at most one call.")] | None = None


class AnthropicThinking(Struct, omit_defaults=True):
    """enabled: the model thinks first, at most `budget_tokens` tokens (then its think block is closed and it
    answers); disabled: it does not; adaptive and between_tools: the model's default (thinking models think),
    no cap. `display: "omitted"` is ignored and named (the thinking is returned)."""

    type: Literal["enabled", "disabled", "adaptive", "between_tools"]
    budget_tokens: Annotated[int, Meta(ge=1, le=INT32_MAX)] | None = None
    display: Literal["summarized", "omitted"] | None = None


class AnthropicOutputFormat(Struct, omit_defaults=True):
    """Structured output: the answer is JSON following `schema`, enforced by constrained decoding."""

    type: Literal["json_schema"]
    schema: JsonObject


class AnthropicOutputConfig(Struct, omit_defaults=True):
    format: AnthropicOutputFormat | None = None
    effort: Annotated[str, Meta(description="Ignored and named: the templates take no effort level.")] | None = None


class MessagesInput(Struct, kw_only=True, omit_defaults=True):
    """What a prompt is made of: shared by /v1/messages and /v1/messages/count_tokens."""

    model: Model
    messages: Annotated[list[AnthropicMessage], Meta(min_length=1)]
    system: Annotated[str | list[AnthropicBlock], Meta(description="A string, or text blocks (joined in order).")] | None = None
    tools: list[AnthropicTool] | None = None
    tool_choice: AnthropicToolChoice | None = None
    thinking: AnthropicThinking | None = None
    output_config: AnthropicOutputConfig | None = None
    output_format: Annotated[AnthropicOutputFormat, Meta(description="The older spelling of output_config.format.")] | None = None
    cache_control: CacheControl | None = None
    context_management: Annotated[JsonObject, Meta(description="Ignored and named: nothing is edited out of the "
                                                               "context here.")] | None = None


class MessagesRequest(MessagesInput, kw_only=True, omit_defaults=True):
    """POST /v1/messages. `max_tokens` is a cap: it is clamped to the room left in the model's context. Unknown
    fields (Anthropic's and others) are ignored and named in X-Mlxserve-Ignored."""

    max_tokens: Annotated[int, Meta(ge=1, le=INT32_MAX, examples=[4])]
    stream: bool | None = None
    stop_sequences: list[str] | None = None
    temperature: Annotated[float, Meta(ge=0.0, le=1.0)] | None = None
    top_p: TopP | None = None
    top_k: TopK | None = None
    metadata: JsonObject | None = None
    service_tier: str | None = None


class CountTokensRequest(MessagesInput, kw_only=True, omit_defaults=True):
    """POST /v1/messages/count_tokens: the prompt the same body would make on /v1/messages, counted."""
