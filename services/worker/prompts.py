"""What a generation request asks for, and how it becomes prompt tokens (template + tokenizer).

Plain Python over the tokenizer (no MLX), so it runs on the caller's thread: Submit can answer
with the prompt length before the engine thread ever sees the request.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from mlxserve.services.common.errors import InvalidArgument, Unsupported

from .sampling import SamplingOptions

ROLES = ("system", "user", "assistant", "tool")


@dataclass(frozen=True)
class ChatMessage:
    role: str
    content: str


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
        self.options.validate()


def encode_prompt(tokenizer: Any, request: GenerationRequest) -> list[int]:
    """Template (unless raw) and tokenize the request's prompt with the model's own tokenizer."""
    if request.raw:
        # As is: special tokens (a BOS) only if the tokenizer's own post-processor adds them.
        return list(tokenizer.encode(request.prompt, add_special_tokens=True))
    # The template writes any BOS/special tokens itself; don't let the tokenizer add them twice.
    return list(tokenizer.encode(render_prompt(tokenizer, request), add_special_tokens=False))


def render_prompt(tokenizer: Any, request: GenerationRequest) -> str:
    """The text the model's chat template makes of a (non-raw) request, generation prompt included."""
    if request.raw:
        return request.prompt
    if request.is_chat:
        messages = [{"role": m.role, "content": m.content} for m in request.messages]
    else:
        messages = ([{"role": "system", "content": request.system}] if request.system else [])
        messages.append({"role": "user", "content": request.prompt})
    if not getattr(tokenizer, "has_chat_template", False):
        raise Unsupported("this model has no chat template; send a raw prompt instead")
    try:
        return tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    except Exception as e:  # noqa: BLE001 - jinja raises its own types; the user needs the message
        raise InvalidArgument(f"the model's chat template rejected these messages: {e}") from e
