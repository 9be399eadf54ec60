"""Every request body the gateway reads, defined once: msgspec Structs with their bounds.

`validation.decode` checks a body against its Struct (a 400 naming the field on a wrong type or a
value out of bounds) and lists the fields it does not know, which are ignored and named in the
`X-Mlxserve-Ignored` header. gateway/openapi.py generates the request schemas of /openapi.json
from these same Structs, so the document and the parsers cannot drift apart. Struct docstrings
and field descriptions are the document's text.

The shared scalars, sampling bounds and tools, Ollama's native API and model management are here;
OpenAI's bodies (chat, completions, embeddings, Responses) are in request_types_openai.py, Anthropic's
in request_types_anthropic.py.

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
NumPredict = Annotated[int, Meta(ge=-2, le=INT32_MAX, description="At most this many new tokens; -1 (no limit) "
                                 "and -2 (fill the context) both run until the context is full. 0 is refused.", examples=[4])]
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
    # mlxserve's own: the group of processes that serves the model (services/common/placement.py).
    placement: JsonObject | None = None
    modelfile: str | None = None
    path: str | None = None
