"""Every request body the gateway reads, defined once: msgspec Structs with their bounds.

`validation.decode` checks a body against its Struct (a 400 naming the field on a wrong type or a
value out of bounds) and lists the fields it does not know, which are ignored and named in the
`X-Mlxserve-Ignored` header. gateway/openapi.py generates the request schemas of /openapi.json
from these same Structs, so the document and the parsers cannot drift apart. Struct docstrings
and field descriptions are the document's text.

Which fields are honoured, advisory, ignored or refused is decided by the translation in
native.py, openai_api.py, openai_responses.py, anthropic_api.py, embeddings_api.py and
models_api.py; a field that is here but refused with some values says so in its description.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

import msgspec
from msgspec import Meta, Struct

INT32_MAX = 2**31 - 1
INT64_MAX = 2**63 - 1
TINY_MODEL = "tiny:latest"  # the examples steer clients (and the fuzzer) to the cheapest model of the test system

# -- scalars ---------------------------------------------------------------------------------------------
# Integers are bounded by the protobuf field each one ends up in, so a huge number is a 400 here, not
# an overflow in the worker.

Int32 = Annotated[int, Meta(ge=-INT32_MAX - 1, le=INT32_MAX)]
Count = Annotated[int, Meta(ge=0, le=INT32_MAX)]
Positive = Annotated[int, Meta(ge=1, le=INT32_MAX)]
TokenId = Annotated[int, Meta(ge=0, le=INT32_MAX, description="A token id of the model's vocabulary.")]
NonEmpty = Annotated[str, Meta(min_length=1)]
Model = Annotated[str, Meta(min_length=1, description="A model name, e.g. \"tiny:latest\".", examples=[TINY_MODEL])]
Stop = Annotated[str | list[str], Meta(description="Stop sequences, never emitted.")]
KeepAlive = Annotated[str | float, Meta(
    description="How long the model stays loaded after this request: a Go duration (\"5m\", \"1h30m\") or seconds; "
                "negative keeps it loaded, 0 unloads it when idle.", examples=["5m", "0", "-1"])]
TopLogprobs = Annotated[int, Meta(ge=0, le=20)]
JsonObject = dict[str, Any]

# -- sampling bounds: the one place ------------------------------------------------------------------------
# The worker's own checks (services/worker/sampling.py, SamplingOptions.validate) are the outer limit:
# nothing that passes here may fail there (tests/unit/test_gateway_policy.py checks each bound against
# them). The OpenAI API documents narrower ranges for temperature and the penalties; /v1/* keeps those.

Temperature = Annotated[float, Meta(ge=0.0, le=100.0)]
TopP = Annotated[float, Meta(ge=0.0, le=1.0, description="Nucleus sampling; 0 keeps only the most likely token.")]
TopK = Annotated[int, Meta(ge=0, le=INT32_MAX, description="0 disables it.")]
MinP = Annotated[float, Meta(ge=0.0, le=1.0)]
Seed = Annotated[int, Meta(ge=-INT64_MAX - 1, le=INT64_MAX, description="Negative: a fresh random seed.")]
NumPredict = Annotated[int, Meta(ge=-INT32_MAX - 1, le=INT32_MAX, description="At most this many new tokens; "
                                 "-1 (any negative) until the context is full. 0 is refused.", examples=[4])]
NumCtx = Annotated[int, Meta(ge=1, le=INT32_MAX)]
RepeatPenalty = Annotated[float, Meta(gt=0.0, le=100.0, description="1 disables it.")]
RepeatLastN = Annotated[int, Meta(ge=-1, le=INT32_MAX, description="0 disables it, -1 means the whole context.")]
Penalty = Annotated[float, Meta(ge=-100.0, le=100.0)]
OpenAITemperature = Annotated[float, Meta(ge=0.0, le=2.0)]
OpenAIPenalty = Annotated[float, Meta(ge=-2.0, le=2.0)]
MaxTokens = Annotated[int, Meta(ge=-1, le=INT32_MAX, description="At most this many new tokens; -1 for no limit. 0 is refused.",
                                examples=[4])]
LogitBias = Annotated[dict[Annotated[str, Meta(pattern="^[0-9]{1,9}$")], Annotated[float, Meta(ge=-100.0, le=100.0)]],
                      Meta(description="Token id -> a bias added to its logit.")]


class Options(Struct, omit_defaults=True):
    """Ollama's runtime options. Keys that do not apply here (num_thread, num_gpu, mirostat, ...) and
    unknown keys are ignored, as Ollama does, and named in the X-Mlxserve-Ignored header."""

    temperature: Temperature | None = None
    top_p: TopP | None = None
    top_k: TopK | None = None
    min_p: MinP | None = None
    seed: Seed | None = None
    num_predict: NumPredict | None = None
    num_ctx: NumCtx | None = None
    repeat_penalty: RepeatPenalty | None = None
    repeat_last_n: RepeatLastN | None = None
    presence_penalty: Penalty | None = None
    frequency_penalty: Penalty | None = None
    stop: Stop | None = None


# -- tools (Ollama and OpenAI chat share the shape) -------------------------------------------------------


class FunctionDef(Struct, omit_defaults=True):
    """A function the model may call: its name, what it does, and the JSON Schema of its arguments."""

    name: NonEmpty
    description: str | None = None
    parameters: JsonObject | None = None
    strict: bool | None = None


class ToolDef(Struct, omit_defaults=True):
    """A tool definition: {"type": "function", "function": {...}}. Other tool types are refused."""

    type: str = "function"
    function: FunctionDef | None = None


class NamedFunction(Struct):
    """A function named by a tool choice."""

    name: NonEmpty


# -- Ollama's native API ----------------------------------------------------------------------------------

Format = Annotated[str | JsonObject, Meta(description="\"json\", or a JSON schema the output must follow.")]
Think = Annotated[bool | Literal["high", "medium", "low"],
                  Meta(description="Ask the model to think first; an effort level switches thinking on.")]


class NativeFunctionCall(Struct, omit_defaults=True):
    name: NonEmpty
    arguments: JsonObject | str | None = None
    index: Int32 | None = None  # Ollama numbers the calls of a turn; clients send its answers back as they are


class NativeToolCall(Struct, omit_defaults=True):
    function: NativeFunctionCall
    id: str | None = None
    type: str | None = None


class NativeMessage(Struct, omit_defaults=True):
    """A chat message of Ollama's API. `images` are refused (no vision models)."""

    role: Literal["system", "user", "assistant", "tool"]
    content: str | None = None
    thinking: str | None = None
    images: list[str] | None = None
    tool_calls: list[NativeToolCall] | None = None
    tool_name: str | None = None
    tool_call_id: str | None = None


class GenerateRequest(Struct, omit_defaults=True):
    """POST /api/generate. Unknown fields are ignored (as Ollama does) and named in X-Mlxserve-Ignored.
    `images`, `suffix` and `template` are refused unless empty."""

    model: Model
    prompt: str | None = None
    system: str | None = None
    raw: bool | None = None
    stream: bool | None = None
    options: Options | None = None
    keep_alive: KeepAlive | None = None
    format: Format | None = None
    think: Think | None = None
    logprobs: bool | None = None
    top_logprobs: TopLogprobs | None = None
    truncate: bool | None = None
    context: Annotated[list[TokenId], Meta(description="The `context` of an earlier answer: the prompt continues it.")] | None = None
    images: list[str] | None = None
    suffix: str | None = None
    template: str | None = None
    tools: list[JsonObject] | None = None


class ChatRequest(Struct, omit_defaults=True):
    """POST /api/chat. Unknown fields (e.g. the top-level temperature, top_p, max_output_tokens and
    tool_choice some clients send) are ignored, as Ollama does, and named in X-Mlxserve-Ignored."""

    model: Model
    messages: list[NativeMessage] | None = None
    tools: list[ToolDef] | None = None
    stream: bool | None = None
    options: Options | None = None
    keep_alive: KeepAlive | None = None
    format: Format | None = None
    think: Think | None = None
    logprobs: bool | None = None
    top_logprobs: TopLogprobs | None = None
    truncate: bool | None = None


class EmbedRequest(Struct, omit_defaults=True):
    """POST /api/embed. With `truncate: false`, an input longer than `options.num_ctx` (else the
    model's context) is a 400."""

    model: Model
    input: str | list[str] | None = None
    truncate: bool | None = None
    dimensions: Positive | None = None
    keep_alive: KeepAlive | None = None
    options: Options | None = None


class LegacyEmbeddingsRequest(Struct, omit_defaults=True):
    """POST /api/embeddings (Ollama's older route): one text."""

    model: Model
    prompt: str | None = None
    keep_alive: KeepAlive | None = None
    options: Options | None = None


# -- model management -------------------------------------------------------------------------------------


class ModelRef(Struct, omit_defaults=True):
    """A model, as `model` (or Ollama's older `name`)."""

    model: str | None = None
    name: Annotated[str, Meta(description="Older spelling of `model`.")] | None = None


class ShowRequest(Struct, omit_defaults=True):
    """POST /api/show. `verbose` adds nothing here (this store keeps no vocabulary in model_info): it is
    ignored and named in X-Mlxserve-Ignored."""

    model: str | None = None
    name: str | None = None
    verbose: bool | None = None


class CopyRequest(Struct):
    source: Model
    destination: NonEmpty


class TransferRequest(Struct, omit_defaults=True):
    """POST /api/pull and /api/push."""

    model: Annotated[str, Meta(examples=["registry.invalid/library/none:latest"])] | None = None
    name: str | None = None
    insecure: bool | None = None
    stream: bool | None = None


class CreateMessage(Struct, omit_defaults=True):
    role: Literal["system", "user", "assistant"]
    content: str | None = None
    images: list[str] | None = None
    tool_calls: list[JsonObject] | None = None
    thinking: str | None = None


class CreateRequest(Struct, omit_defaults=True):
    """POST /api/create in Ollama's current shape: from a model (`from`) or uploaded blobs (`files`).
    `parameters` that this server's runtime does not use (num_thread, mirostat, ...) are stored and
    named in X-Mlxserve-Ignored."""

    model: str | None = None
    name: str | None = None
    stream: bool | None = None
    from_: Model | None = msgspec.field(default=None, name="from")
    files: Annotated[dict[Annotated[str, Meta(pattern="^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")],
                          Annotated[str, Meta(pattern="^sha256[:-][0-9a-f]{64}$")]], Meta(min_length=1)] | None = None
    template: str | None = None
    system: str | None = None
    license: str | list[str] | None = None
    parameters: JsonObject | None = None
    quantize: str | None = None
    adapters: JsonObject | None = None
    messages: list[CreateMessage] | None = None
    modelfile: str | None = None
    path: str | None = None


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


# The request bodies of the routes, by the name their schema has in /openapi.json.
REQUEST_TYPES: tuple[type, ...] = (
    GenerateRequest, ChatRequest, EmbedRequest, LegacyEmbeddingsRequest, ModelRef, ShowRequest, CopyRequest,
    TransferRequest, CreateRequest, ChatCompletionRequest, CompletionRequest, EmbeddingsRequest, ResponsesRequest,
    MessagesRequest, CountTokensRequest,
)
