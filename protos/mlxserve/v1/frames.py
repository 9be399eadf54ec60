"""The ZeroMQ data-plane frame: the one definition of what a worker sends a gateway.

A worker PUSHes at most one `TokenEvent` per scheduler step per request to the address given in
`SubmitRequest.reply_to` (fewer when the gateway falls behind: the frames waiting for it are
`merge`d); the gateway's PULL socket routes it by `request_id`. Frames are msgpack
arrays (msgspec, `array_like`) to stay small on the hot path.
"""

from __future__ import annotations

import msgspec


class Stats(msgspec.Struct, array_like=True, omit_defaults=True):
    """Counters sent once, with the final frame of a request. Durations are nanoseconds."""

    prompt_eval_count: int = 0       # prompt tokens actually evaluated
    prompt_eval_duration: int = 0    # from admission to the first generated token
    eval_count: int = 0              # generated tokens
    eval_duration: int = 0           # from the first generated token to the last
    prompt_tokens: int = 0           # prompt length after templating (cached ones included)
    cached_tokens: int = 0           # prompt tokens reused from the prefix cache (not evaluated)
    truncated_messages: int = 0      # oldest messages dropped to fit the context


class TopLogprob(msgspec.Struct, array_like=True):
    token: str
    logprob: float
    bytes: list[int] = []


class TokenLogprob(msgspec.Struct, array_like=True, omit_defaults=True):
    """One generated token's logprob, with the top alternatives when asked (OpenAI and Ollama)."""

    token: str
    logprob: float
    bytes: list[int] = []
    top: list[TopLogprob] = []


class ToolCall(msgspec.Struct, array_like=True, omit_defaults=True):
    """A tool call parsed from the model's output; `arguments` is a JSON object as text."""

    name: str
    arguments: str = "{}"
    id: str = ""


class TokenEvent(msgspec.Struct, array_like=True, omit_defaults=True):
    """New text for one request; `done` marks its last frame.

    `text` is the detokenized delta since the previous frame (possibly empty while a multi-byte
    character or a possible stop string is held back). `token_ids` are the tokens it came from.
    A failed request ends with `done=True`, `done_reason="error"` and `error` set.
    """

    request_id: str
    text: str = ""
    token_ids: list[int] = []
    thinking: str = ""               # reasoning text, split out of `text` for thinking models
    tool_calls: list[ToolCall] = []  # complete tool calls parsed since the previous frame
    logprobs: list[TokenLogprob] = []  # when asked: one per token of this frame
    done: bool = False
    done_reason: str | None = None   # "stop", "length", "tool_calls", "cancel", "error"
    error: str | None = None
    stats: Stats | None = None
    stop_sequence: str | None = None  # the stop string that ended the request (done_reason "stop"), if one did


_encoder = msgspec.msgpack.Encoder()
_decoder = msgspec.msgpack.Decoder(TokenEvent)


def encode(event: TokenEvent) -> bytes:
    """Serialize a frame for the wire."""
    return _encoder.encode(event)


def decode(data: bytes) -> TokenEvent:
    """Parse a frame; raises msgspec.DecodeError on garbage."""
    return _decoder.decode(data)


def merge(first: TokenEvent, later: TokenEvent) -> TokenEvent:
    """One frame that says what `first` then `later` (two consecutive frames of one request) say.

    Text, thinking, token ids, tool calls and logprobs are concatenated in order; the ending (done,
    done_reason, error, stats, stop_sequence) is `later`'s. A frame after a done frame is refused:
    nothing follows the end of a request."""
    if first.request_id != later.request_id:
        raise ValueError(f"frames of different requests ({first.request_id!r}, {later.request_id!r}) do not merge")
    if first.done:
        raise ValueError(f"request {first.request_id!r} already ended: no frame merges after its done frame")
    return TokenEvent(
        request_id=first.request_id,
        text=first.text + later.text,
        token_ids=first.token_ids + later.token_ids,
        thinking=first.thinking + later.thinking,
        tool_calls=first.tool_calls + later.tool_calls,
        logprobs=first.logprobs + later.logprobs,
        done=later.done,
        done_reason=later.done_reason,
        error=later.error,
        stats=later.stats,
        stop_sequence=later.stop_sequence,
    )
