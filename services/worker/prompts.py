"""What a generation request asks for, and how it becomes prompt tokens (template + tokenizer).

Plain Python over the tokenizer (no MLX), so it runs on the caller's thread: Submit can answer
with the prompt length before the engine thread ever sees the request.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

from mlxserve.services.common.errors import InvalidArgument, Unsupported

from .outputs import template_kwargs, template_message
from .sampling import SamplingOptions

ROLES = ("system", "user", "assistant", "tool")
MAX_TOP_LOGPROBS = 20  # OpenAI's limit, which Ollama shares


@dataclass(frozen=True)
class ChatMessage:
    role: str
    content: str
    thinking: str = ""          # assistant reasoning from an earlier turn
    tool_calls_json: str = ""   # assistant turn: JSON list of the calls it made
    tool_name: str = ""         # tool turn: the tool that answered
    tool_call_id: str = ""      # tool turn: the call it answers


@dataclass(frozen=True)
class GenerationRequest:
    """One generation. Chat requests carry `messages`; the others carry `prompt` (+ `system`).

    `raw=True` sends `prompt` to the tokenizer as is, with no template.
    """

    request_id: str
    is_chat: bool = False
    messages: tuple[ChatMessage, ...] = ()
    prompt: str = ""
    system: str = ""
    raw: bool = False
    options: SamplingOptions = field(default_factory=SamplingOptions)
    format: str = ""             # "" none, "json", or a JSON schema as text (constrained decoding)
    tools_json: str = ""         # JSON list of tool definitions for the template
    think: bool | None = None    # None: the model's default
    logprobs: bool = False       # return each generated token's logprob
    top_logprobs: int = 0        # and this many alternatives (0..20)
    truncate: bool | None = None  # None/True: drop the oldest messages to fit; False: refuse

    def validate(self) -> None:
        if not self.request_id:
            raise InvalidArgument("request_id is required")
        if self.is_chat:
            if not self.messages:
                raise InvalidArgument("a chat request needs at least one message")
            if self.prompt or self.system or self.raw:
                raise InvalidArgument("a chat request takes messages, not prompt/system/raw")
            for m in self.messages:
                if m.role not in ROLES:
                    raise InvalidArgument(f"unknown message role {m.role!r} (expected one of {', '.join(ROLES)})")
        else:
            if self.messages:
                raise InvalidArgument("messages are only accepted on a chat request (is_chat)")
            if self.raw and self.system:
                raise InvalidArgument("raw prompts take no system message (raw skips the template)")
            if self.raw and (self.tools_json or self.think):
                raise InvalidArgument("raw prompts take no tools or think (raw skips the template)")
        if not 0 <= self.top_logprobs <= MAX_TOP_LOGPROBS:
            raise InvalidArgument(f"top_logprobs must be between 0 and {MAX_TOP_LOGPROBS}, got {self.top_logprobs}")
        if self.top_logprobs and not self.logprobs:
            raise InvalidArgument("top_logprobs needs logprobs to be enabled")
        self.options.validate()


def encode_prompt(tokenizer: Any, request: GenerationRequest) -> list[int]:
    """Template (unless raw) and tokenize the request's prompt with the model's own tokenizer."""
    plain = not (request.is_chat or request.system or request.tools_json or request.think)
    if request.raw or (plain and not getattr(tokenizer, "has_chat_template", False)):
        # As is: special tokens (a BOS) only if the tokenizer's own post-processor adds them. A
        # plain generate request to a model without a template (a base model) completes the
        # prompt, as Ollama's default template `{{ .Prompt }}` does; with a system message, tools
        # or thinking it needs a template, and render_prompt says so.
        return list(tokenizer.encode(request.prompt, add_special_tokens=True))
    # The template writes any BOS/special tokens itself; don't let the tokenizer add them twice.
    return list(tokenizer.encode(render_prompt(tokenizer, request), add_special_tokens=False))


def fit_prompt(tokenizer: Any, request: GenerationRequest, context: int) -> tuple[list[int], int]:
    """Tokenize `request` so that at least one token can be generated within `context` tokens.

    As Ollama does, an over-long chat loses its oldest messages first, keeping every system
    message and the last message, and is rendered again. Returns (tokens, messages dropped).
    Raises InvalidArgument if it cannot fit, or if it does not fit and `truncate` is false.
    """
    tokens = encode_prompt(tokenizer, request)
    if len(tokens) < context:
        return tokens, 0
    too_long = f"the prompt is {len(tokens)} tokens, which does not fit the context of {context} tokens"
    if request.raw or not request.is_chat:
        raise InvalidArgument(too_long)
    if request.truncate is False:
        raise InvalidArgument(f"{too_long} (truncate is false)")
    messages = request.messages
    droppable = [i for i, m in enumerate(messages[:-1]) if m.role != "system"]

    def without_oldest(n: int) -> list[int]:
        dropped = set(droppable[:n])
        kept = tuple(m for i, m in enumerate(messages) if i not in dropped)
        return encode_prompt(tokenizer, dataclasses.replace(request, messages=kept))

    # The fewest drops that fit: prompts only shrink as messages go, so bisect over the count.
    low, high, best = 1, len(droppable), None
    while low <= high:
        mid = (low + high) // 2
        candidate = without_oldest(mid)
        if len(candidate) < context:
            best, high = (candidate, mid), mid - 1
        else:
            low = mid + 1
    if best is None:
        raise InvalidArgument(f"{too_long}, even with only the system messages and the last message kept")
    return best


def render_prompt(tokenizer: Any, request: GenerationRequest) -> str:
    """The text the model's chat template makes of a (non-raw) request, generation prompt included."""
    if request.raw:
        return request.prompt
    if request.is_chat:
        messages = [
            template_message(m.role, m.content, thinking=m.thinking, tool_calls_json=m.tool_calls_json, tool_name=m.tool_name, tool_call_id=m.tool_call_id)
            for m in request.messages
        ]
    else:
        messages = ([{"role": "system", "content": request.system}] if request.system else [])
        messages.append({"role": "user", "content": request.prompt})
    if not getattr(tokenizer, "has_chat_template", False):
        raise Unsupported("this model has no chat template; send a raw prompt instead")
    kwargs = template_kwargs(request, tokenizer)  # tools and think; Unsupported if the template lacks them
    try:
        return tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False, **kwargs)
    except Exception as e:  # noqa: BLE001 - jinja raises its own types; the user needs the message
        raise InvalidArgument(f"the model's chat template rejected these messages: {e}") from e
