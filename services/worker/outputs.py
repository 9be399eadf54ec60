"""Tools and thinking, output side: what the model's streamed text becomes.

An `OutputParser` per request splits the streamed text into content, thinking (between the
tokenizer's think markers) and tool calls (between its tool-call markers, parsed with the
mlx-lm tool parser the tokenizer was loaded with). It holds back text that may be the start of a
marker, so a marker split across deltas is never shown as content. (What the template is given
lives in prompts.py.)
"""

from __future__ import annotations

import itertools
import json
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from mlx_lm.generate import TextStateMachine

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

    Finding the markers is mlx-lm's `TextStateMachine` (what its server uses): it strips them,
    switches state, and holds back text that may be the start of one. On top of it: whitespace
    next to a marker is layout (dropped), and the body of a call goes to the tool parser.
    """

    def __init__(
        self, tokenizer: Any, tools: bool | Sequence[dict] = False, think: bool | None = None, *, prompt_tokens: Sequence[int] = (),
    ) -> None:
        self.tools = list(tools) if isinstance(tools, Sequence) and not isinstance(tools, str) else None
        transitions: dict[str, list[tuple[str, str]]] = {_NORMAL: []}
        thinks = getattr(tokenizer, "has_thinking", False)
        if thinks:
            transitions[_NORMAL].append((tokenizer.think_start, _THINKING))
            transitions[_THINKING] = [(tokenizer.think_end, _NORMAL)]
        self._tool_markers = None
        self._tool_parser = None
        if tools and getattr(tokenizer, "has_tool_calling", False):
            self._tool_markers = (tokenizer.tool_call_start, tokenizer.tool_call_end or "")
            self._tool_parser = tokenizer.tool_parser
            transitions[_NORMAL].append((tokenizer.tool_call_start, _TOOL))
            # Mistral's [TOOL_CALLS] has no closing marker: the calls run to the end.
            transitions[_TOOL] = [(tokenizer.tool_call_end, _NORMAL)] if tokenizer.tool_call_end else []
        self.think = think
        initial = _THINKING if thinks and starts_in_thinking(tokenizer, prompt_tokens) else _NORMAL
        self._machine = TextStateMachine(transitions)
        self._state = self._machine.make_state(initial)
        self._layout = ""       # trailing whitespace held back: dropped if a marker follows it
        self._tool_text = ""    # the body of the tool call being read
        self._trim = initial == _THINKING  # drop whitespace right after a marker
        self.made_tool_call = False

    def feed(self, text: str) -> Parsed:
        """Classify the new text; returns what is certain so far (possibly nothing)."""
        out = Parsed()
        self._state, segments = TextStateMachine.split(self._state, text)
        # One segment per state passed through: all but the last end at a marker.
        for (kind, piece), (after, _) in itertools.pairwise(segments):
            self._close(out, kind, piece, after)
        kind, piece = segments[-1]
        if kind == _TOOL:
            self._tool_text += piece
            return out
        text = self._layout + piece
        if kind == _THINKING or self._tool_markers:
            # Whitespace before an end-of-thinking or a call is layout: wait to see which.
            ready = text.rstrip()
            self._layout = text[len(ready):]
            text = ready
        else:
            self._layout = ""
        self._emit(out, kind, text)
        return out

    def finish(self) -> Parsed:
        """End of output: flush what was held back; an unterminated tool call is tried as is."""
        out = Parsed()
        _, rest, kind = TextStateMachine.flush(self._state)
        rest, self._layout = self._layout + rest, ""
        if kind == _TOOL:
            self._tool_text += rest
            self._end_tool_call(out, closed=False)
        else:
            self._emit(out, kind, rest)
        self._state = self._machine.make_state(_NORMAL)
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

    def _close(self, out: Parsed, kind: str, piece: str, after: str) -> None:
        """`piece`, the last text of state `kind`, ended at the marker into state `after`."""
        text, self._layout = self._layout + piece, ""
        if kind == _TOOL:
            self._tool_text += text
            self._end_tool_call(out, closed=True)
        elif kind == _THINKING:
            self._emit(out, _THINKING, text.rstrip())
            self._trim = True
        elif after == _THINKING:
            self._emit(out, _NORMAL, text)
            self._trim = True
        else:
            # Whitespace between content and a call is layout, not content.
            self._emit(out, _NORMAL, text.rstrip())
            self._tool_text = ""

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
