"""Ollama's Go chat templates, converted to the Hugging Face Jinja templates the worker renders.

A Modelfile TEMPLATE, /api/create's `template` or a ModelSpec's `template` may be an Ollama Go
template (text/template with Ollama's variables). The worker renders Jinja only
(`tokenizer.apply_chat_template(messages, tools=..., add_generation_prompt=True)`), so `create`
converts a Go template once, here, or refuses it naming what it cannot convert: a model never
stores a template that fails at chat time.

What is converted (what Ollama's own and its library's templates use):
- text with trim markers (`{{-`, `-}}`), comments; `if`/`else if`/`else`, `range` (with `$i, $x :=`,
  `else`, `break`, `continue`), `with`/`else with`; `$x :=` and `$x =` variables, `$`, `.`;
- Ollama's values: .System, .Messages (.Role, .Content, .Thinking, .ToolCalls with .ID,
  .Function.Name/.Index/.Arguments, .ToolName, .ToolCallID, .Images), .Tools (.Type, .Function
  with .Name, .Description, .Parameters.Type/.Required/.Properties, each property's .Type,
  .Description, .Enum, ...), .Response, .Think, .ThinkLevel, .IsThinkSet; the legacy
  .System/.Prompt/.Response form, which Ollama repeats once per turn (template/template.go);
- functions eq ne lt le gt ge and or not len index slice print printf (%s %v %d %%) println
  json currentDate yesterdayDate, and pipes (`x | f`).
Printed values look as Go prints them: tools and tool-call arguments as Go's encoding/json writes
them (struct field order, sorted map keys, `<>&` escaped), booleans as true/false, lists as
`[a b]`. Ollama's preprocessing is reproduced in the template: consecutive messages of one role
(but tool) are merged with a blank line, and .System joins every system message.

Refused, with the construct named: `define`/`template`/`block`, html/js/urlquery/call and
toTypeScriptType, nil, printing a message or a tool call (Go would print a pointer or a struct
dump), fields that Ollama's values do not have, and Go syntax errors.

Around the template: the BOS token llama.cpp would add is written by the template (the worker
encodes without special tokens); .Think is the request's think switch (`enable_thinking`, which
mlx-lm always passes, so .IsThinkSet is true under the worker); `tool_parser_for` names the mlx-lm
parser for the tool-call format the template teaches. Two deliberate differences from Ollama:
`{{ .Function }}` of a tool prints JSON, as Ollama did when its library templates were written
(it now prints a Go struct dump), and floats in %v print in decimal where Go would write 1e+06.
"""

from __future__ import annotations

import json
import re
from typing import Any, ClassVar

from mlxserve.services.common.errors import InvalidArgument

from .gotemplate_compile import HELPERS, THINK, Compiler, helper_order
from .gotemplate_parse import (Action, Field, Parser, Pipe, Text, collect_operands, field_names_of, identifiers_of, scan,
                               up_to_response)

# -- detection ---------------------------------------------------------------------------------

# An action only a Go template writes: `{{ .X`, `{{ $x`, `{{ range`, `{{ end }}`, `{{/* */}}`...
_GO_ACTION = re.compile(
    r"\{\{-?\s*(?:\.|\$|/\*|(?:if|range|with|end|else|template|define|block|break|continue)\b)")


def is_go_template(text: str) -> bool:
    """True when `text` is written as an Ollama Go template rather than as Jinja.

    Go's actions (`{{ .Prompt }}`, `{{ range .Messages }}`, `{{ end }}`, ...) decide, except in
    a template with Jinja statements (`{% ... %}`: a broken one's Jinja error is the useful
    one) and in valid Jinja that is not valid Go (a Jinja string quoting Go syntax).
    """
    if not _GO_ACTION.search(text) or "{%" in text:
        return False
    if jinja_syntax_error(text) is None:  # both readings parse ({{ range .Messages }}...{{ end }}): Go's is meant
        try:
            Parser(scan(text)).parse()
        except InvalidArgument:
            return False
    return True


def jinja_syntax_error(text: str) -> str | None:
    """Why `text` does not compile as a Hugging Face chat template, or None when it does.

    Same syntax as transformers' template environment: loop controls and `{% generation %}`.
    """
    import jinja2
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True,
                                        extensions=["jinja2.ext.loopcontrols", _generation_tag()])
    try:
        env.parse(text)
    except jinja2.TemplateSyntaxError as e:
        return f"{e.message} (line {e.lineno})"
    return None


def _generation_tag() -> type:
    """transformers' `{% generation %}...{% endgeneration %}` block, parsed as its body."""
    from jinja2 import nodes
    from jinja2.ext import Extension

    class Generation(Extension):
        tags: ClassVar[set[str]] = {"generation"}

        def parse(self, parser: Any) -> Any:
            lineno = next(parser.stream).lineno
            body = parser.parse_statements(("name:endgeneration",), drop_needle=True)
            return nodes.Scope(body).set_lineno(lineno)

    return Generation


def bos_token_added(tok_config: dict[str, Any], tokenizer_json: str) -> str | None:
    """The BOS text the tokenizer puts before a prompt (llama.cpp and Ollama do), or None.

    A converted Go template writes it itself, as the catalog's templates do, because the worker
    encodes rendered chats without special tokens. `add_bos_token` in tokenizer_config.json
    decides when present (the GGUF importer writes it); otherwise the tokenizer's post-processor.
    """
    bos = tok_config.get("bos_token")
    bos = bos.get("content") if isinstance(bos, dict) else bos
    if not isinstance(bos, str) or not bos:
        return None
    if isinstance(tok_config.get("add_bos_token"), bool):
        return bos if tok_config["add_bos_token"] else None
    try:
        processor = json.loads(tokenizer_json).get("post_processor") if tokenizer_json else None
    except ValueError:
        return None
    processors = processor.get("processors", []) if isinstance(processor, dict) and processor.get("type") == "Sequence" \
        else [processor]
    for p in processors:
        if isinstance(p, dict) and p.get("type") == "TemplateProcessing" and p.get("single"):
            first = p["single"][0]
            if isinstance(first, dict) and first.get("SpecialToken", {}).get("id") == bos:
                return bos
    return None


def tool_parser_for(text: str) -> str | None:
    """The mlx-lm tool parser that reads the tool calls a Go template's model writes, or None.

    Ollama infers the call format from the template; mlx-lm infers its parser from a Jinja
    template's text, which a converted template does not match, so `create` records it
    (tokenizer_config.json `tool_parser_type`). Known: `[TOOL_CALLS] [{...}]` (Mistral) and
    `<tool_call>{"name": ..., "arguments": ...}</tool_call>` (Qwen, Hermes, Groq tool use).
    """
    if "ToolCalls" not in text:
        return None
    if "[TOOL_CALLS]" in text:
        return "mistral"
    if "<tool_call>" in text and "</tool_call>" in text and '"arguments"' in text:
        return "json_tools"
    return None


# -- the converted template --------------------------------------------------------------------

_HEADER = "{#- Converted by mlxserve from an Ollama Go template: renders what Ollama renders. #}"


def _prologue(fields: set[str]) -> list[str]:
    """Ollama's values from the Jinja inputs: messages merged as `collate` does, .System, tools, think."""
    # Names appear only when the Go template uses them: capabilities are read off the text.
    out = ["{%- set go = namespace(system='', sys=[], msgs=[]) %}",
           "{%- for m in messages %}",
           ("{%- set c = m['content'] if m['content'] is string else ((m['content'] or [])"
           "|selectattr('type', 'equalto', 'text')|map(attribute='text')|join('') if m['content'] is iterable"
           " and m['content'] is not mapping else '') %}"),
           "{%- if m['role'] == 'system' %}{%- set go.sys = go.sys + [c] %}{%- endif %}"]
    calls = "[]"
    if "ToolCalls" in fields:
        out += ["{%- set calls = namespace(items=[]) %}",
                "{%- for t in (m['tool_calls'] or []) %}",
                "{%- set f = t['function'] if t['function'] is mapping else t %}",
                ("{%- set calls.items = calls.items + [{'id': t['id'] or '', 'function': {'index': f['index'] "
                "if f['index'] is integer else 0, 'name': f['name'] or '', 'arguments': f['arguments'] "
                "if f['arguments'] is defined and f['arguments'] is not none else {}}}] %}"),
                "{%- endfor %}"]
        calls = "calls.items"
    out += ["{%- set x = {'role': m['role'], 'content': c, 'thinking': m['thinking'] or "
            "m['reasoning_content'] or '', 'tool_calls': " + calls + ", 'tool_name': m['tool_name'] or "
            "(m['name'] if m['role'] == 'tool' else '') or '', 'tool_call_id': m['tool_call_id'] or '', "
            "'images': []} %}",
            # consecutive messages of one role are one message to Ollama (tool results excepted)
            "{%- if go.msgs and go.msgs[-1]['role'] == x['role'] and x['role'] != 'tool' %}",
            "{%- set go.msgs = go.msgs[:-1] + [dict(go.msgs[-1], content=go.msgs[-1]['content'] ~ '\\n\\n' ~ c)] %}",
            "{%- else %}{%- set go.msgs = go.msgs + [x] %}{%- endif %}",
            "{%- endfor %}",
            "{%- set go.system = go.sys|join('\\n\\n') %}"]
    if "Tools" in fields:
        out += ["{%- set go.tools = [] %}",
                "{%- for t in (tools or []) %}",
                "{%- set f = t.get('function') if t.get('function') is mapping else t %}",
                "{%- set p = f.get('parameters') if f.get('parameters') is mapping else {} %}",
                ("{%- set go.tools = go.tools + [{'type': t.get('type') if t.get('type') is string else 'function', "
                "'items': t.get('items'), 'function': {'name': f.get('name') or '', 'description': "
                "f.get('description') or '', 'parameters': {'type': p.get('type') or '', '$defs': p.get('$defs'), "
                "'items': p.get('items'), 'required': p.get('required') or [], 'properties': p.get('properties') "
                "if p.get('properties') is mapping else none}}}] %}"),
                "{%- endfor %}"]
    if fields & set(THINK):
        # The worker passes `think` as enable_thinking (mlx-lm always sets it); a reasoning level
        # comes in chat_template_kwargs as reasoning_effort.
        out += ["{%- set go.think = true if (enable_thinking is defined and enable_thinking) else false %}",
                "{%- set go.think_set = enable_thinking is defined and enable_thinking is not none %}",
                ("{%- set go.think_level = reasoning_effort if reasoning_effort is defined and reasoning_effort is string"
                " else '' %}")]
    return out


def to_jinja(text: str, *, bos_token: str | None = None) -> str:
    """Convert an Ollama Go template to a Hugging Face chat template that renders the same prompt.

    `bos_token`: the BOS text the model's tokenizer adds in front of a prompt (see
    `bos_token_added`); the converted template writes it, unless the Go template starts with it.
    Raises InvalidArgument naming the construct it cannot convert.
    """
    text = text.replace("\r\n", "\n")  # as Ollama normalizes its templates' line endings
    nodes = Parser(scan(text)).parse()
    operands = collect_operands(nodes)
    names, fields = identifiers_of(operands), field_names_of(operands)
    messages_mode = "messages" in names
    if not messages_mode and "response" not in names:
        # Ollama appends {{ .Response }} to a template that has neither (template.Parse)
        nodes.append(Action(Pipe([], False, [[Field(["Response"])]], 0)))
    compiler = Compiler("Root" if messages_mode else "LegacyRoot")
    parts = [_HEADER]
    if messages_mode:
        body = compiler.body(nodes)
        main = [*_prologue(fields), *body]
    else:
        full = compiler.body(nodes)
        last = compiler.body(up_to_response(nodes))
        main = ["{%- macro go_turn(go, system, prompt, response) %}", *full, "{%- endmacro %}",
                "{%- macro go_last(go, system, prompt, response) %}", *last, "{%- endmacro %}",
                *_prologue(fields),
                # Ollama renders a legacy template once per turn: a system or user message after a
                # reply (or a system message after a prompt) closes the turn (template.go Execute).
                "{%- set turn = namespace(system='', prompt='', response='') %}",
                "{%- for m in go.msgs %}",
                "{%- if (m['role'] == 'system' and (turn.prompt or turn.response)) or (m['role'] == 'user' and turn.response) %}",
                "{{- go_turn(go, turn.system, turn.prompt, turn.response) }}",
                "{%- set turn.system = '' %}{%- set turn.prompt = '' %}{%- set turn.response = '' %}",
                "{%- endif %}",
                ("{%- if m['role'] == 'system' %}{%- set turn.system = m['content'] %}"
                "{%- elif m['role'] == 'user' %}{%- set turn.prompt = m['content'] %}"
                "{%- elif m['role'] == 'assistant' %}{%- set turn.response = m['content'] %}{%- endif %}"),
                "{%- endfor %}",
                "{{- go_last(go, turn.system, turn.prompt, turn.response) }}"]
    parts += [HELPERS[name][1] for name in helper_order(compiler.helpers)]
    first = nodes[0] if nodes else None
    if bos_token and not (isinstance(first, Text) and first.text.startswith(bos_token)):
        parts.append("{{- bos_token if bos_token is defined and bos_token else '' }}")
    parts += main
    return "\n".join(parts)
