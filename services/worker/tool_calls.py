"""Forced tool calls (tool_choice 'required'): the model must call one of the allowed tools.

`forced_calls_constraint` builds an llguidance grammar that writes exactly what the model's own
tool-call format writes (the format of the mlx-lm tool parser its tokenizer was loaded with, so
`OutputParser` reads the result back as calls and the request ends with done_reason
"tool_calls"): the format's opening marker, a call whose name is one of the allowed tools and
whose arguments follow that tool's JSON Schema (objects closed, as in structured outputs), its
closing marker; then more calls unless `single`; then end of generation. Arguments are written
as templates render them (`tojson`: ", " and ": " separators), so the calls look like the ones
in the model's training data and in the history it is later shown.

Formats that can be forced (mlx-lm parser name → what the model writes):
  json_tools (Hermes, Qwen 2.5/3, SmolLM3...):
      <tool_call>\\n{"name": "f", "arguments": {...}}\\n</tool_call>   (calls joined by "\\n")
  mistral, templates that write [ARGS] (Mistral Small 3.2, Magistral, Devstral):
      [TOOL_CALLS]f[ARGS]{...}                                         (repeated per call)
  mistral, older templates (Mistral 7B v0.3, Nemo):
      [TOOL_CALLS] [{"name": "f", "arguments": {...}, "id": "a1b2c3d4e"}, ...]
Any other format is refused with Unsupported, naming it.

A marker that the tokenizer holds as one special token is required as that token (`<[id]>`),
as the model writes it. When the prompt opened a think block (or `think` is true), the model
may reason first; the grammar then lets it write any text up to the end-of-thinking marker.
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from typing import Any

import llguidance

from mlxserve.services.common.errors import InvalidArgument, Unsupported

from .constraints import Constraint, close_objects, compile_grammar, llg_tokenizer
from .outputs import starts_in_thinking
from .prompts import GenerationRequest, Tool, supports_tools, template_text

FORCEABLE_FORMATS = ("json_tools", "mistral")

# How `tojson` writes JSON in chat templates; fixed, so a weak model cannot wander in whitespace.
_TEMPLATE_JSON = {"whitespace_flexible": False, "item_separator": ", ", "key_separator": ": "}
_EMPTY_OBJECT = {"type": "object", "properties": {}}
NL = "\n"


def call_format(tokenizer: Any) -> str | None:
    """The name of the tool-call format the model's tokenizer parses (mlx-lm's parser module), or None."""
    parser = getattr(tokenizer, "tool_parser", None)
    if parser is None or not getattr(tokenizer, "has_tool_calling", False):
        return None
    return getattr(parser, "__module__", "").rsplit(".", 1)[-1] or None


def forced_calls_constraint(tokenizer: Any, request: GenerationRequest, prompt_tokens: Sequence[int]) -> Constraint:
    """The constraint that makes `request` (tool_choice 'required') end in calls of its allowed tools.

    Raises Unsupported when the model's template takes no tools or its tool-call format cannot
    be forced, InvalidArgument when a tool's parameters are not an object schema llguidance takes.
    """
    who = "this model"
    if not supports_tools(template_text(tokenizer)):
        raise Unsupported(f"{who} does not support tools")
    fmt = call_format(tokenizer)
    if fmt is None:
        raise Unsupported(f"{who} cannot be made to call a tool: its tool calls cannot be parsed "
                          "(no tool-call format is known for its template); use tool_choice \"auto\"")
    if fmt not in FORCEABLE_FORMATS:
        raise Unsupported(f"{who} cannot be made to call a tool: forcing its tool-call format ({fmt}) is not "
                          f"supported (supported: {', '.join(FORCEABLE_FORMATS)}); use tool_choice \"auto\"")
    allowed = request.tool_choice.allowed
    tools = [t for t in request.tools if not allowed or t.name in allowed]
    reasoning = _reasoning(tokenizer, request, prompt_tokens)
    grammar = forced_calls_grammar(tokenizer, tools, fmt, single=request.tool_choice.single, reasoning=reasoning,
                                   mistral_args_marker="[ARGS]" in template_text(tokenizer))
    return compile_grammar(grammar, tokenizer, "tool parameters for a required tool call")


def _reasoning(tokenizer: Any, request: GenerationRequest, prompt_tokens: Sequence[int]) -> str:
    """"open": the prompt opened a think block, which the model must close before calling;
    "optional": it may think first (think=True); "": it calls at once."""
    if not getattr(tokenizer, "has_thinking", False):
        return ""
    if starts_in_thinking(tokenizer, prompt_tokens):
        return "open"
    return "optional" if request.think else ""


def forced_calls_grammar(tokenizer: Any, tools: Sequence[Tool], fmt: str, *, single: bool, reasoning: str = "",
                         mistral_args_marker: bool = False) -> str:
    """The llguidance (Lark) grammar of one or more calls (one when `single`) in format `fmt`."""
    lit = _Literals(tokenizer)
    rules = [f"args_{i}: %json {json.dumps(argument_schema(tool))}" for i, tool in enumerate(tools)]

    def head(tool: Tool) -> str:  # a JSON call object up to its arguments, as templates write it
        return '{"name": ' + json.dumps(tool.name, ensure_ascii=False) + ', "arguments": '

    start, end = tokenizer.tool_call_start, tokenizer.tool_call_end
    if fmt == "json_tools":
        calls = [f"{lit(start + NL + head(t))} args_{i} {lit('}' + NL + end)}" for i, t in enumerate(tools)]
        rules.append("call: " + " | ".join(calls))
        rules.append("calls: call" if single else f"calls: call ({lit(NL)} call)*")
    elif fmt == "mistral" and mistral_args_marker:
        calls = [f"{lit(start + t.name + '[ARGS]')} args_{i}" for i, t in enumerate(tools)]
        rules.append("call: " + " | ".join(calls))
        rules.append("calls: call" if single else "calls: call+")
    elif fmt == "mistral":
        # The call ids of these templates are nine letters and digits.
        id_head, id_tail = lit(', "id": "'), lit('"}')
        calls = [f"{lit(head(t))} args_{i} {id_head} CALL_ID {id_tail}" for i, t in enumerate(tools)]
        rules.append("call: " + " | ".join(calls))
        rules.append("CALL_ID: /[a-zA-Z0-9]{9}/")
        more = "" if single else f" ({lit(', ')} call)*"
        rules.append(f"calls: {lit(start + ' [')} call{more} {lit(']')}")
    else:
        raise Unsupported(f"forcing tool calls in the {fmt} format is not supported")
    rules.insert(0, f"start: {_reasoning_rule(tokenizer, lit, reasoning, rules)}calls")
    return _lark(rules)


def _lark(rules: list[str]) -> str:
    try:
        return llguidance.LLMatcher.grammar_from_lark("%llguidance {}\n" + "\n".join(rules) + "\n")
    except ValueError as e:
        raise InvalidArgument(f"cannot build the grammar of a required tool call: {e}") from None


def _reasoning_rule(tokenizer: Any, lit: _Literals, reasoning: str, rules: list[str]) -> str:
    """The start rule's reasoning part ("" for none); adds the rules it needs to `rules`."""
    if not reasoning:
        return ""
    end = lit.special(tokenizer.think_end)
    if end is not None:  # a special token ends the free text: no text can contain it
        rules.append("thought: THOUGHT " + end)
        rules.append("THOUGHT: /(?s:.*)/")
    else:
        rules.append(f"thought[suffix={json.dumps(tokenizer.think_end)}]: /(?s:.*)/")
    rules.append(r"GAP: /[ \t\n]{0,4}/")
    if reasoning == "open":
        return "thought GAP "
    return f"({lit(tokenizer.think_start)} thought GAP)? "


def argument_schema(tool: Tool) -> dict:
    """The JSON Schema a forced call's arguments must follow: the tool's own, objects closed,
    written with the template's separators."""
    schema = tool.parameters if tool.parameters is not None else _EMPTY_OBJECT
    if not isinstance(schema, dict):
        raise InvalidArgument(f"the parameters of tool {tool.name!r} must be a JSON Schema object")
    kind = schema.get("type")
    if kind is None or (isinstance(kind, list) and "object" in kind):
        schema = {**schema, "type": "object"}  # arguments are always an object
    elif kind != "object":
        raise InvalidArgument(f"the parameters of tool {tool.name!r} must describe an object, not {kind!r}")
    schema = close_objects(schema)
    return {**schema, "x-guidance": {**_TEMPLATE_JSON, **(schema.get("x-guidance") or {})}}


class _Literals:
    """Grammar atoms for a piece of fixed text, as the model's tokenizer writes it: each special
    token it contains as that token (`<[id]>`), the text between as string literals."""

    def __init__(self, tokenizer: Any) -> None:
        self._tokenizer = tokenizer
        self._lltok = llg_tokenizer(tokenizer)

    def __call__(self, text: str) -> str:
        # Which special tokens the tokenizer finds in `text`; the text around them is kept as
        # written (re-decoding tokens could add a SentencePiece space).
        specials = {}
        for token in self._tokenizer.encode(text, add_special_tokens=False):
            if self._lltok.is_special_token(token):
                specials[self._tokenizer.convert_ids_to_tokens(token)] = token
        atoms: list[str] = []
        pos = 0
        if specials:
            pattern = re.compile("|".join(re.escape(s) for s in sorted(specials, key=len, reverse=True)))
            for match in pattern.finditer(text):
                if match.start() > pos:
                    atoms.append(json.dumps(text[pos:match.start()]))
                atoms.append(f"<[{specials[match.group()]}]>")
                pos = match.end()
        if pos < len(text):
            atoms.append(json.dumps(text[pos:]))
        return " ".join(atoms) if atoms else '""'

    def special(self, text: str) -> str | None:
        """`<[id]>` when `text` is one special token of this tokenizer, else None."""
        token = self._tokenizer.convert_tokens_to_ids(text)  # an unknown text gives the unk id
        if (isinstance(token, int) and token >= 0 and self._tokenizer.convert_ids_to_tokens(token) == text
                and self._lltok.is_special_token(token)):
            return f"<[{token}]>"
        return None
