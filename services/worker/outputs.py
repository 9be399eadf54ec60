"""Tools and thinking, output side: what the model's streamed text becomes.

An `OutputParser` per request splits the streamed text into content, thinking (between the
tokenizer's think markers) and tool calls (between its tool-call markers, parsed with the
mlx-lm tool parser the tokenizer was loaded with). It holds back text that may be the start of a
marker, so a marker split across deltas is never shown as content. (What the template is given
lives in prompts.py.)
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from mlxserve.services.common import logs
from mlxserve.v1.frames import ToolCall

log = logs.get_logger()


@dataclass
class Parsed:
    """What a stretch of output turned out to be."""

    content: str = ""
    thinking: str = ""
    tool_calls: list[ToolCall] = field(default_factory=list)

    def __bool__(self) -> bool:
        return bool(self.content or self.thinking or self.tool_calls)


_NORMAL, _THINKING, _TOOL = "normal", "thinking", "tool"


def _held_prefix(text: str, markers: Sequence[str]) -> int:
    """Length of the longest suffix of `text` that is a proper prefix of one of `markers`."""
    best = 0
    for marker in markers:
        for n in range(min(len(marker) - 1, len(text)), best, -1):
            if text.endswith(marker[:n]):
                best = n
                break
    return best


def starts_in_thinking(tokenizer: Any, prompt_tokens: Sequence[int]) -> bool:
    """True when the prompt opened a think block it did not close (mlx-lm server's test)."""
    if not getattr(tokenizer, "has_thinking", False) or not prompt_tokens:
        return False
    tokens = list(prompt_tokens)
    return tokenizer.rfind_think_start(tokens) > tokenizer.rfind_think_end(tokens)


class OutputParser:
    """Splits one request's streamed text into content, thinking and tool calls.

    `tools`: the request's tool definitions (or True when asked without a list); tool calls are
    parsed only when asked for and the tokenizer knows tool-call markers, otherwise the text stays
    content. Thinking is split whenever the tokenizer has think markers; `think=False` only
    changes the prompt. `prompt_tokens` decides whether the output starts inside a think block.
    A call the parser rejects stays in the content, markers and all, with a warning logged.
    """

    def __init__(
        self, tokenizer: Any, tools: bool | Sequence[dict] = False, think: bool | None = None, *, prompt_tokens: Sequence[int] = (),
    ) -> None:
        self.tools = list(tools) if isinstance(tools, Sequence) and not isinstance(tools, str) else None
        self._think = None
        if getattr(tokenizer, "has_thinking", False):
            self._think = (tokenizer.think_start, tokenizer.think_end)
        self._tool_markers = None
        self._tool_parser = None
        if tools and getattr(tokenizer, "has_tool_calling", False):
            self._tool_markers = (tokenizer.tool_call_start, tokenizer.tool_call_end)
            self._tool_parser = tokenizer.tool_parser
        self.think = think
        self._state = _THINKING if self._think and starts_in_thinking(tokenizer, prompt_tokens) else _NORMAL
        self._buffer = ""       # text not yet classified (a possible marker start)
        self._tool_text = ""    # the body of the tool call being read
        self._trim = self._state == _THINKING  # drop whitespace right after a marker
        self.made_tool_call = False

    def feed(self, text: str) -> Parsed:
        """Classify the new text; returns what is certain so far (possibly nothing)."""
        out = Parsed()
        self._buffer += text
        while self._buffer:
            if not self._advance(out):
                break
        return out

    def finish(self) -> Parsed:
        """End of output: flush what was held back; an unterminated tool call is tried as is."""
        out = Parsed()
        rest, self._buffer = self._buffer, ""
        if self._state == _TOOL:
            self._tool_text += rest
            self._end_tool_call(out, closed=False)
        elif self._state == _THINKING:
            self._emit(out, _THINKING, rest)
        else:
            self._emit(out, _NORMAL, rest)
        self._state = _NORMAL
        return out

    # -- internals ---------------------------------------------------------------------------------

    def _emit(self, out: Parsed, kind: str, text: str) -> None:
        if self._trim:
            text = text.lstrip()
            if not text:
                return
            self._trim = False
        if kind == _THINKING:
            out.thinking += text
        else:
            out.content += text

    def _advance(self, out: Parsed) -> bool:
        """Consume what can be decided from the buffer; False when the rest must wait for more."""
        buf = self._buffer
        if self._state == _TOOL:
            end = self._tool_markers[1]
            if not end:  # Mistral's [TOOL_CALLS] has no closing marker: the calls run to the end
                self._tool_text += buf
                self._buffer = ""
                return False
            at = buf.find(end)
            if at < 0:
                keep = _held_prefix(buf, [end])
                self._tool_text += buf[: len(buf) - keep]
                self._buffer = buf[len(buf) - keep:]
                return False
            self._tool_text += buf[:at]
            self._buffer = buf[at + len(end):]
            self._end_tool_call(out, closed=True)
            self._state = _NORMAL
            return True
        if self._state == _THINKING:
            markers = [self._think[1]]
        else:
            markers = ([self._think[0]] if self._think else []) + ([self._tool_markers[0]] if self._tool_markers else [])
        found = [(buf.find(m), m) for m in markers if m in buf]
        if not found:
            keep = _held_prefix(buf, markers)
            if self._state == _THINKING or self._tool_markers:
                # Whitespace before an end-of-thinking or a call is layout: wait to see which.
                ready = buf[: len(buf) - keep]
                keep += len(ready) - len(ready.rstrip())
            self._emit(out, self._state, buf[: len(buf) - keep])
            self._buffer = buf[len(buf) - keep:]
            return False
        at, marker = min(found)
        before = buf[:at]
        self._buffer = buf[at + len(marker):]
        if self._state == _THINKING:
            self._emit(out, _THINKING, before.rstrip())
            self._state, self._trim = _NORMAL, True
        elif self._think and marker == self._think[0]:
            self._emit(out, _NORMAL, before)
            self._state, self._trim = _THINKING, True
        else:
            # Whitespace between content and a call is layout, not content.
            self._emit(out, _NORMAL, before.rstrip())
            self._state, self._tool_text = _TOOL, ""
        return True

    def _end_tool_call(self, out: Parsed, *, closed: bool) -> None:
        body, self._tool_text = self._tool_text, ""
        calls = self._parse_call(body)
        if calls is None:
            start, end = self._tool_markers
            self._trim = False
            self._emit(out, _NORMAL, start + body + (end if closed else ""))
            return
        out.tool_calls.extend(calls)
        self.made_tool_call = True
        self._trim = True

    def _parse_call(self, body: str) -> list[ToolCall] | None:
        try:
            parsed = self._tool_parser(body, self.tools)
            items = parsed if isinstance(parsed, list) else [parsed]
            calls = []
            for item in items:
                name = item.get("name") if isinstance(item, dict) else None
                if not isinstance(name, str) or not name:
                    raise ValueError("the call has no function name")
                arguments = item.get("arguments", {})
                if isinstance(arguments, str):
                    arguments = json.loads(arguments) if arguments.strip() else {}
                if not isinstance(arguments, dict):
                    raise ValueError("the call's arguments are not an object")
                call_id = item.get("id") if isinstance(item.get("id"), str) and item.get("id") else f"call_{uuid.uuid4().hex[:24]}"
                calls.append(ToolCall(name=name, arguments=json.dumps(arguments, ensure_ascii=False), id=call_id))
            return calls
        except Exception as e:  # noqa: BLE001 - parsers raise anything; a bad call must not end the request
            log.warning("tool_call_unparsed", error=f"{type(e).__name__}: {e}", text=body[:200])
            return None
