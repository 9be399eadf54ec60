"""OpenAI's request bodies: chat and text completions, embeddings, and the Responses API (see request_types.py)."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from msgspec import Meta, Struct

from .request_types import (Count, FunctionDef, JsonObject, KeepAlive, LogitBias, MaxTokens, MinP, Model,
                            NamedFunction, NonEmpty, OpenAIPenalty, OpenAITemperature, Options, Positive,
                            RepeatPenalty, Seed, Stop, TokenId, ToolDef, TopK, TopLogprobs, TopP)

# -- OpenAI chat and text completions ---------------------------------------------------------------------

ReasoningEffort = Literal["none", "minimal", "low", "medium", "high", "xhigh"]


class ContentPart(Struct, omit_defaults=True):
    """A content part. Text parts (text, input_text, output_text, refusal, reasoning_text, summary_text)
    are read; images, audio and files are refused (no model served here takes them)."""

    type: str
    text: str | None = None
    refusal: str | None = None
    annotations: list[Any] | None = None
    logprobs: list[Any] | None = None


Content = str | list[ContentPart]


class FunctionCallRef(Struct, omit_defaults=True):
    """A call of a function in an earlier assistant turn; `arguments` is a JSON object as text."""

    name: NonEmpty
    arguments: str | JsonObject | None = None


class OpenAIToolCall(Struct, omit_defaults=True):
    id: str | None = None
    type: str = "function"
    function: FunctionCallRef | None = None
    custom: JsonObject | None = None


class OpenAIMessage(Struct, omit_defaults=True):
    """A chat message: system/developer, user, assistant (tool_calls, reasoning_content), tool (tool_call_id),
    or the legacy function role. `name` is passed to the template."""

    role: Literal["system", "developer", "user", "assistant", "tool", "function"]
    content: Content | None = None
    name: str | None = None
    tool_calls: list[OpenAIToolCall] | None = None
    tool_call_id: str | None = None
    function_call: FunctionCallRef | None = None
    reasoning_content: str | None = None
    reasoning: str | None = None
    refusal: str | None = None
    audio: JsonObject | None = None


class JsonSchemaFormat(Struct, omit_defaults=True):
    name: str | None = None
    description: str | None = None
    schema: JsonObject | None = None
    strict: bool | None = None


class ResponseFormat(Struct, omit_defaults=True):
    """text, json_object (any JSON object) or json_schema: enforced by constrained decoding, strict or not."""

    type: Literal["text", "json_object", "json_schema"]
    json_schema: JsonSchemaFormat | None = None


class StreamOptions(Struct, omit_defaults=True):
    include_usage: bool | None = None
    include_obfuscation: bool | None = None


class AllowedTools(Struct, omit_defaults=True):
    mode: Literal["auto", "required"]
    tools: list[JsonObject]


class ChatToolChoice(Struct, omit_defaults=True):
    """{"type": "function", "function": {"name"}} forces that function; {"type": "allowed_tools", ...}
    limits the tools the model sees."""

    type: str
    function: NamedFunction | None = None
    allowed_tools: AllowedTools | None = None
    custom: JsonObject | None = None


ToolChoiceMode = Literal["auto", "none", "required"]


class Extensions(Struct, omit_defaults=True):
    """What OpenAI-compatible local servers take beyond OpenAI's fields, honoured on every /v1/* generation route."""

    top_k: TopK | None = None
    min_p: MinP | None = None
    repetition_penalty: RepeatPenalty | None = None
    chat_template_kwargs: Annotated[JsonObject, Meta(description="Extra variables for the chat template, "
                                                      "e.g. {\"enable_thinking\": false}.")] | None = None
    options: Options | None = None
    keep_alive: KeepAlive | None = None


class ChatCompletionRequest(Extensions, kw_only=True, omit_defaults=True):
    """POST /v1/chat/completions: every field of OpenAI's API is accepted; `n` > 1, `audio` and audio
    `modalities` are refused. Unknown fields are ignored and named in X-Mlxserve-Ignored."""

    model: Model
    messages: Annotated[list[OpenAIMessage], Meta(min_length=1)]
    stream: bool | None = None
    stream_options: StreamOptions | None = None
    n: Positive | None = None
    temperature: OpenAITemperature | None = None
    top_p: TopP | None = None
    seed: Seed | None = None
    presence_penalty: OpenAIPenalty | None = None
    frequency_penalty: OpenAIPenalty | None = None
    max_tokens: MaxTokens | None = None
    max_completion_tokens: MaxTokens | None = None
    stop: Stop | None = None
    logit_bias: LogitBias | None = None
    logprobs: bool | None = None
    top_logprobs: TopLogprobs | None = None
    response_format: ResponseFormat | None = None
    tools: list[ToolDef] | None = None
    tool_choice: ToolChoiceMode | ChatToolChoice | None = None
    parallel_tool_calls: Annotated[bool, Meta(description="false: at most one call.")] | None = None
    functions: Annotated[list[FunctionDef], Meta(description="Legacy tools; the answer carries `function_call`.")] | None = None
    function_call: Literal["auto", "none"] | NamedFunction | None = None
    reasoning_effort: Annotated[ReasoningEffort, Meta(description="\"none\" switches thinking off, any other level on.")] | None = None
    user: str | None = None
    metadata: JsonObject | None = None
    store: bool | None = None
    service_tier: str | None = None
    prompt_cache_key: str | None = None
    prompt_cache_retention: str | None = None
    prompt_cache_options: JsonObject | None = None
    safety_identifier: str | None = None
    verbosity: Literal["low", "medium", "high"] | None = None
    modalities: list[Literal["text", "audio"]] | None = None
    audio: JsonObject | None = None
    prediction: JsonObject | None = None
    web_search_options: JsonObject | None = None
    moderation: JsonObject | None = None


class CompletionRequest(Extensions, kw_only=True, omit_defaults=True):
    """POST /v1/completions (legacy text completion): one prompt, which goes through the model's template
    as Ollama does. Several prompts, token-id prompts, `suffix`, `best_of` > 1 and `echo` with
    `logprobs` are refused."""

    model: Model
    prompt: str | Annotated[list[str | TokenId | list[TokenId]], Meta(min_length=1)]
    stream: bool | None = None
    stream_options: StreamOptions | None = None
    n: Positive | None = None
    best_of: Positive | None = None
    echo: bool | None = None
    suffix: str | None = None
    temperature: OpenAITemperature | None = None
    top_p: TopP | None = None
    seed: Seed | None = None
    presence_penalty: OpenAIPenalty | None = None
    frequency_penalty: OpenAIPenalty | None = None
    max_tokens: MaxTokens | None = None
    stop: Stop | None = None
    logit_bias: LogitBias | None = None
    logprobs: TopLogprobs | None = None
    user: str | None = None


class EmbeddingsRequest(Struct, omit_defaults=True):
    """POST /v1/embeddings: `input` as text, texts, one list of token ids or a list of token-id lists."""

    model: Model
    input: str | Annotated[list[str | TokenId | list[TokenId]], Meta(min_length=1)]
    encoding_format: Literal["float", "base64"] | None = None
    dimensions: Positive | None = None
    user: str | None = None


# -- OpenAI Responses ----------------------------------------------------------------------------------------


class ResponsesItem(Struct, omit_defaults=True):
    """An input item: a message, a function call or its output, or reasoning. Items of hosted tools
    (web_search_call, ...) are dropped and named in X-Mlxserve-Ignored; item_reference is refused."""

    type: str = "message"
    id: str | None = None
    status: str | None = None
    role: Literal["user", "system", "developer", "assistant"] | None = None
    content: Content | None = None
    phase: str | None = None
    call_id: str | None = None
    name: str | None = None
    namespace: str | None = None
    arguments: str | JsonObject | None = None
    output: Content | None = None
    summary: list[ContentPart] | None = None
    encrypted_content: str | None = None


class ResponsesTool(Struct, omit_defaults=True):
    """A tool: function tools reach the model; hosted tools (web_search, file_search, namespace, mcp, ...)
    are dropped from what it sees and named in X-Mlxserve-Ignored."""

    type: str
    name: str | None = None
    description: str | None = None
    parameters: JsonObject | None = None
    strict: bool | None = None


class ResponsesToolChoice(Struct, omit_defaults=True):
    """{"type": "function", "name"} forces that function; {"type": "allowed_tools", "mode", "tools"} limits the
    tools the model sees. Forcing a hosted tool is refused."""

    type: str
    name: str | None = None
    mode: Literal["auto", "required"] | None = None
    tools: list[JsonObject] | None = None


class TextFormat(Struct, omit_defaults=True):
    type: Literal["text", "json_object", "json_schema"]
    name: str | None = None
    description: str | None = None
    schema: JsonObject | None = None
    strict: bool | None = None


class TextConfig(Struct, omit_defaults=True):
    format: TextFormat | None = None
    verbosity: Literal["low", "medium", "high"] | None = None


class Reasoning(Struct, omit_defaults=True):
    effort: ReasoningEffort | None = None
    summary: str | None = None
    generate_summary: str | None = None


class ResponsesRequest(Extensions, kw_only=True, omit_defaults=True):
    """POST /v1/responses, without state: `previous_response_id`, `conversation`, `prompt`, `background: true`
    are refused; `store: true` is ignored (nothing is kept) and named. Unknown fields are ignored and named."""

    model: Model
    input: Annotated[str, Meta(min_length=1)] | Annotated[list[ResponsesItem], Meta(min_length=1)]
    instructions: str | None = None
    stream: bool | None = None
    stream_options: StreamOptions | None = None
    max_output_tokens: Positive | None = None
    max_tool_calls: Count | None = None
    temperature: OpenAITemperature | None = None
    top_p: TopP | None = None
    top_logprobs: TopLogprobs | None = None
    text: TextConfig | None = None
    tools: list[ResponsesTool] | None = None
    tool_choice: ToolChoiceMode | ResponsesToolChoice | None = None
    parallel_tool_calls: bool | None = None
    reasoning: Reasoning | None = None
    include: list[str] | None = None
    truncation: Literal["auto", "disabled"] | None = None
    store: bool | None = None
    background: bool | None = None
    previous_response_id: str | None = None
    conversation: str | JsonObject | None = None
    prompt: JsonObject | None = None
    metadata: JsonObject | None = None
    user: str | None = None
    safety_identifier: str | None = None
    prompt_cache_key: str | None = None
    prompt_cache_retention: str | None = None
    prompt_cache_options: JsonObject | None = None
    service_tier: str | None = None
    client_metadata: JsonObject | None = None
