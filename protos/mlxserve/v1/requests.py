"""The generation request: the one definition of what a gateway asks a worker to generate.

The gateway builds a `GenerationRequest` from any API dialect, sends it as the `request` bytes of
`SubmitRequest` (msgpack, `encode`), and the worker decodes it (`decode`) into the very object its
runner schedules: one typed request end to end, no field-by-field copies. `validate()` holds every
check the worker makes before queueing a request; decoding checks the types.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import msgspec

from mlxserve.services.common.errors import InvalidArgument
from mlxserve.v1.frames import ToolCall

ROLES = ("system", "user", "assistant", "tool")
MAX_TOP_LOGPROBS = 20  # OpenAI's limit, which Ollama shares
TOOL_CHOICE_MODES = ("auto", "none", "required")
DEFAULT_TEMPERATURE = 0.8  # Ollama's, for a request that leaves temperature unset

# apply_chat_template's own parameters: not template variables, and some would change what is
# rendered behind the request's back (another template, tokenized output, no generation prompt).
TEMPLATE_CONTROLS = frozenset({
    "chat_template", "continue_final_message", "tokenize", "sanitize_control_tokens", "padding", "truncation",
    "max_length", "return_tensors", "return_dict", "return_assistant_tokens_mask", "tokenizer_kwargs",
})


class SamplingOptions(msgspec.Struct, frozen=True, omit_defaults=True):
    """What a request may ask of the decoder. `None` means "use the default"."""

    temperature: float | None = None
    top_p: float | None = None
    top_k: int | None = None
    min_p: float | None = None
    seed: int | None = None          # < 0 or None: a fresh random seed
    num_predict: int | None = None   # max new tokens; < 0 or None: until the context is full
    stop: tuple[str, ...] = ()       # stop strings, never emitted
    num_ctx: int | None = None
    repeat_penalty: float | None = None     # Ollama/llama.cpp: divides positive logits, multiplies negative
    repeat_last_n: int | None = None        # its window over prompt + output; 0 off, -1 the whole context
    presence_penalty: float | None = None   # OpenAI: minus this once for each token already generated
    frequency_penalty: float | None = None  # OpenAI: minus this per earlier occurrence in the output
    logit_bias: dict[int, float] | None = None  # token id -> added to its logit

    def validate(self) -> None:
        """Raise InvalidArgument naming the first option out of range."""
        if self.temperature is not None and not (0.0 <= self.temperature <= 100.0):
            raise InvalidArgument(f"temperature must be between 0 and 100, got {self.temperature}")
        if self.top_p is not None and not (0.0 < self.top_p <= 1.0):
            raise InvalidArgument(f"top_p must be in (0, 1], got {self.top_p}")
        if self.top_k is not None and self.top_k < 0:
            raise InvalidArgument(f"top_k must be >= 0 (0 disables it), got {self.top_k}")
        if self.min_p is not None and not (0.0 <= self.min_p <= 1.0):
            raise InvalidArgument(f"min_p must be in [0, 1], got {self.min_p}")
        if self.num_ctx is not None and self.num_ctx <= 0:
            raise InvalidArgument(f"num_ctx must be positive, got {self.num_ctx}")
        if self.num_predict == 0 or (self.num_predict is not None and self.num_predict < -2):
            raise InvalidArgument(f"num_predict must be a positive count, -1 (no limit) or -2 (fill the context), got {self.num_predict}")
        for s in self.stop:
            if not s:
                raise InvalidArgument("stop strings must not be empty")
        if self.repeat_penalty is not None and not (0.0 < self.repeat_penalty <= 100.0):
            raise InvalidArgument(f"repeat_penalty must be in (0, 100] (1 disables it), got {self.repeat_penalty}")
        if self.repeat_last_n is not None and self.repeat_last_n < -1:
            raise InvalidArgument(f"repeat_last_n must be >= -1 (0 disables, -1 means num_ctx), got {self.repeat_last_n}")
        for name in ("presence_penalty", "frequency_penalty"):
            value = getattr(self, name)
            if value is not None and not (-100.0 <= value <= 100.0):
                raise InvalidArgument(f"{name} must be between -100 and 100, got {value}")
        for token, bias in (self.logit_bias or {}).items():
            if isinstance(token, bool) or not isinstance(token, int) or token < 0:
                raise InvalidArgument(f"logit_bias keys must be token ids (integers >= 0), got {token!r}")
            if not math.isfinite(bias):
                raise InvalidArgument(f"logit_bias for token {token} must be a finite number, got {bias}")

    def check_vocabulary(self, vocab_size: int) -> None:
        """Raise InvalidArgument if logit_bias names a token the model does not have."""
        unknown = sorted(t for t in (self.logit_bias or {}) if t >= vocab_size)
        if unknown:
            raise InvalidArgument(f"logit_bias names token ids outside the vocabulary of {vocab_size}: {unknown[:5]}")

    @property
    def effective_temperature(self) -> float:
        return DEFAULT_TEMPERATURE if self.temperature is None else self.temperature


class ChatMessage(msgspec.Struct, omit_defaults=True):
    """One turn of a conversation (mutable while a gateway translates it; the worker only reads it)."""

    role: str                               # "system", "user", "assistant", "tool"
    content: str = ""
    thinking: str = ""                      # assistant reasoning from an earlier turn
    tool_calls: list[ToolCall] = []         # assistant turn: the calls it made (arguments: JSON object text)
    tool_name: str = ""                     # tool turn: the tool that answered
    tool_call_id: str = ""                  # tool turn: the call it answers (OpenAI)
    name: str = ""                          # the author's name (OpenAI `name`), for templates that show it


class Tool(msgspec.Struct, frozen=True, omit_defaults=True):
    """A function the model may call; `parameters` is its arguments' JSON Schema (None: takes none)."""

    name: str
    description: str = ""
    parameters: Any = None


class ToolChoice(msgspec.Struct, frozen=True, omit_defaults=True):
    """auto: the model decides; none: tools stay out of the prompt; required: it must call one of
    `allowed` (every tool when empty), once when `single`, with arguments its schema accepts."""

    mode: str = "auto"
    allowed: tuple[str, ...] = ()
    single: bool = False


class GenerationRequest(msgspec.Struct, frozen=True, omit_defaults=True):
    """One generation. Chat requests carry `messages`; the others carry `prompt` (+ `system`).

    `raw=True` sends `prompt` to the tokenizer as is, with no template. `context` (prompt
    requests only) is token ids the prompt continues: they come first, and the prompt's own
    tokens follow as a continuation (no second BOS).
    """

    request_id: str
    is_chat: bool = False
    messages: tuple[ChatMessage, ...] = ()
    prompt: str = ""
    system: str = ""
    raw: bool = False
    options: SamplingOptions = SamplingOptions()
    format: str = ""             # "" none, "json", or a JSON schema as text (constrained decoding)
    tools: tuple[Tool, ...] = ()
    tool_choice: ToolChoice = ToolChoice()
    think: bool | None = None    # None: the model's default
    logprobs: bool = False       # return each generated token's logprob
    top_logprobs: int = 0        # and this many alternatives (0..20)
    truncate: bool | None = None  # None/True: drop the oldest messages to fit; False: refuse
    chat_template_kwargs: dict[str, Any] = {}  # extra template variables (chat_template_kwargs)
    context: tuple[int, ...] = ()   # token ids the prompt continues (Ollama's /api/generate context)
    want_prompt_tokens: bool = False  # Submit answers with the prompt's token ids
    thinking_budget: int | None = None  # at most this many reasoning tokens, then the think block is closed

    def validate(self) -> None:
        """Raise InvalidArgument naming the first thing wrong with the request."""
        if not self.request_id:
            raise InvalidArgument("request_id is required")
        if self.is_chat:
            if not self.messages:
                raise InvalidArgument("a chat request needs at least one message")
            if self.prompt or self.system or self.raw:
                raise InvalidArgument("a chat request takes messages, not prompt/system/raw")
            if self.context:
                raise InvalidArgument("context is only accepted with a prompt, not with chat messages")
            for m in self.messages:
                if m.role not in ROLES:
                    raise InvalidArgument(f"unknown message role {m.role!r} (expected one of {', '.join(ROLES)})")
                for call in m.tool_calls:
                    if not call.name:
                        raise InvalidArgument("each tool call in the messages needs a function name")
        else:
            if self.messages:
                raise InvalidArgument("messages are only accepted on a chat request (is_chat)")
            if self.raw and self.system:
                raise InvalidArgument("raw prompts take no system message (raw skips the template)")
            if self.raw and (self.tools or self.think or self.chat_template_kwargs):
                raise InvalidArgument("raw prompts take no tools, think or chat_template_kwargs (raw skips the template)")
        if not 0 <= self.top_logprobs <= MAX_TOP_LOGPROBS:
            raise InvalidArgument(f"top_logprobs must be between 0 and {MAX_TOP_LOGPROBS}, got {self.top_logprobs}")
        if self.top_logprobs and not self.logprobs:
            raise InvalidArgument("top_logprobs needs logprobs to be enabled")
        if self.thinking_budget is not None and self.thinking_budget < 0:
            raise InvalidArgument(f"thinking_budget must be >= 0, got {self.thinking_budget}")
        self._validate_tools()
        self._validate_template_kwargs()
        self.options.validate()

    def _validate_tools(self) -> None:
        names = [t.name for t in self.tools]
        for i, tool in enumerate(self.tools):
            if not tool.name:
                raise InvalidArgument(f"tools[{i}] needs a name")
            if tool.parameters is not None and not isinstance(tool.parameters, dict):
                raise InvalidArgument(f"the parameters of tool {tool.name!r} must be a JSON Schema object")
        choice = self.tool_choice
        if choice.mode not in TOOL_CHOICE_MODES:
            raise InvalidArgument(f"tool_choice must be one of {', '.join(TOOL_CHOICE_MODES)}, got {choice.mode!r}")
        unknown = [n for n in choice.allowed if n not in names]
        if unknown:
            raise InvalidArgument(f"tool_choice names a tool the request does not define: {', '.join(map(repr, unknown))}")
        if choice.mode == "required":
            if not self.tools:
                raise InvalidArgument("tool_choice 'required' needs at least one tool")
            if self.format:
                raise InvalidArgument("a required tool call cannot be combined with format (structured output): "
                                      "the call's arguments already follow the tool's schema")

    def _validate_template_kwargs(self) -> None:
        if not isinstance(self.chat_template_kwargs, Mapping):
            raise InvalidArgument("chat_template_kwargs must be a JSON object")
        controls = sorted(k for k in self.chat_template_kwargs if k in TEMPLATE_CONTROLS)
        if controls:
            raise InvalidArgument(f"chat_template_kwargs cannot set {', '.join(map(repr, controls))}: "
                                  "not a template variable")

    @property
    def plain_prompt(self) -> bool:
        """A prompt with nothing that needs a template (no system, tools, think or template variables):
        on a model without a chat template it is completed as it is."""
        return not (self.is_chat or self.raw or self.system or self.template_tools_on or self.think or self.chat_template_kwargs)

    @property
    def template_tools_on(self) -> bool:
        """Whether the template gets the request's tools (not with tool_choice 'none')."""
        return bool(self.tools) and self.tool_choice.mode != "none"


_encoder = msgspec.msgpack.Encoder()
_decoder = msgspec.msgpack.Decoder(GenerationRequest)


def encode(request: GenerationRequest) -> bytes:
    """Serialize a request for SubmitRequest.request; a client's JSON number msgpack cannot hold is InvalidArgument."""
    try:
        return _encoder.encode(request)
    except OverflowError as e:
        raise InvalidArgument(f"the request holds an integer too large to pass on (over 64 bits): {e}") from None


def decode(data: bytes) -> GenerationRequest:
    """Parse SubmitRequest.request; a malformed or mistyped request is InvalidArgument (not yet validated)."""
    try:
        return _decoder.decode(data)
    except msgspec.DecodeError as e:  # ValidationError (a wrong type) included
        raise InvalidArgument(f"malformed request: {e}") from None
