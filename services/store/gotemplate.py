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
from dataclasses import dataclass, field
from typing import Any, ClassVar

from mlxserve.services.common.errors import InvalidArgument

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
            _Parser(_scan(text)).parse()
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


# -- lexing ------------------------------------------------------------------------------------

_SPACE = " \t\r\n"


@dataclass
class _Tok:
    kind: str            # field var ident string raw char number dot ( ) | , := =
    value: Any
    spaced: bool         # white space came before it (Go separates arguments with it)


@dataclass
class _ActionItem:
    tokens: list[_Tok]
    line: int


def _refuse(what: str, line: int | None = None) -> InvalidArgument:
    where = f" (line {line})" if line else ""
    return InvalidArgument(f"cannot convert this Ollama Go template to a Jinja chat template: {what}{where}; "
                           "write the template in Jinja instead")


_TOKEN = re.compile(r"""
    (?P<number>[+-]?(?:0[xX][0-9a-fA-F_]+|(?:\d[\d_]*(?:\.[\d_]*)?|\.\d[\d_]*)(?:[eE][+-]?\d+)?))(?![\w.])
  | (?P<field>\.[A-Za-z_]\w*)
  | (?P<dot>\.)
  | (?P<var>\$\w*)
  | (?P<ident>[A-Za-z_]\w*)
  | (?P<string>"(?:[^"\\\n]|\\.)*")
  | (?P<raw>`[^`]*`)
  | (?P<char>'(?:[^'\\\n]|\\[^\n]+?)')
  | (?P<op>:=|[()|,=])
""", re.VERBOSE | re.DOTALL)


def _scan(src: str) -> list[str | _ActionItem]:
    """Text pieces and actions in order, trim markers applied and comments dropped (Go's lexer)."""
    items: list[str | _ActionItem] = []
    i, n, trim_next = 0, len(src), False
    while True:
        j = src.find("{{", i)
        text = src[i:] if j < 0 else src[i:j]
        if trim_next:
            text = text.lstrip(_SPACE)
        if j < 0:
            if text:
                items.append(text)
            return items
        line = src.count("\n", 0, j) + 1
        k = j + 2
        if src.startswith("-", k) and k + 1 < n and src[k + 1] in _SPACE:
            text = text.rstrip(_SPACE)
            k += 2
        if text:
            items.append(text)
        if src.startswith("/*", k):
            end = src.find("*/", k + 2)
            if end < 0:
                raise _refuse("unclosed comment", line)
            k = end + 2
            trim_next = src.startswith(" -}}", k) or (k < n and src[k] in _SPACE and src.startswith("-}}", k + 1))
            if trim_next:
                k += 4
            elif src.startswith("}}", k):
                k += 2
            else:
                raise _refuse("comment ends before closing delimiter", line)
            i = k
            continue
        tokens: list[_Tok] = []
        while True:
            start = k
            while k < n and src[k] in _SPACE:
                k += 1
            spaced = k > start
            if k >= n:
                raise _refuse("unclosed action", line)
            if spaced and src.startswith("-}}", k):
                trim_next, k = True, k + 3
                break
            if src.startswith("}}", k):
                trim_next, k = False, k + 2
                break
            m = _TOKEN.match(src, k)
            if not m:
                raise _refuse(f"unexpected {src[k]!r} in an action", line)
            kind = m.lastgroup or ""
            raw = m.group()
            if kind == "op":
                tokens.append(_Tok(raw, raw, spaced))
            elif kind == "string":
                tokens.append(_Tok("string", _unquote(raw[1:-1], line), spaced))
            elif kind == "raw":
                tokens.append(_Tok("string", raw[1:-1].replace("\r", ""), spaced))
            elif kind == "char":
                value = _unquote(raw[1:-1], line)
                if len(value) != 1:
                    raise _refuse(f"malformed character constant {raw}", line)
                tokens.append(_Tok("number", ord(value), spaced))
            elif kind == "number":
                tokens.append(_Tok("number", _number(raw, line), spaced))
            else:
                tokens.append(_Tok(kind, raw, spaced))
            k = m.end()
        items.append(_ActionItem(tokens, line))
        i = k


_ESCAPES = {"a": "\a", "b": "\b", "f": "\f", "n": "\n", "r": "\r", "t": "\t", "v": "\v",
            "\\": "\\", '"': '"', "'": "'"}


def _unquote(body: str, line: int) -> str:
    """A Go string literal's value (strconv.Unquote): escapes, \\x and octal bytes, \\u runes."""
    out = bytearray()
    i = 0
    while i < len(body):
        ch = body[i]
        if ch != "\\":
            out += ch.encode()
            i += 1
            continue
        esc = body[i + 1:i + 2]
        if esc in _ESCAPES:
            out += _ESCAPES[esc].encode()
            i += 2
        elif esc == "x" and re.fullmatch(r"[0-9a-fA-F]{2}", body[i + 2:i + 4]):
            out.append(int(body[i + 2:i + 4], 16))
            i += 4
        elif esc in ("u", "U") and re.fullmatch(r"[0-9a-fA-F]+", body[i + 2:i + (6 if esc == "u" else 10)] or "-"):
            size = 4 if esc == "u" else 8
            out += chr(int(body[i + 2:i + 2 + size], 16)).encode()
            i += 2 + size
        elif re.fullmatch(r"[0-7]{3}", body[i + 1:i + 4]):
            out.append(int(body[i + 1:i + 4], 8) & 0xFF)
            i += 4
        else:
            raise _refuse(f"unknown escape sequence \\{esc} in a string", line)
    return out.decode("utf-8", errors="replace")


def _number(raw: str, line: int) -> int | float:
    text = raw.replace("_", "")
    try:
        if re.fullmatch(r"[+-]?0[xX][0-9a-fA-F]+", text):
            return int(text, 16)
        if re.fullmatch(r"[+-]?0[0-7]+", text):
            return int(text, 8)
        if re.fullmatch(r"[+-]?\d+", text):
            return int(text)
        return float(text)
    except ValueError:
        raise _refuse(f"bad number syntax {raw}", line) from None


# -- parsing -----------------------------------------------------------------------------------

@dataclass
class _Pipe:
    decl: list[str]
    assign: bool                   # `$x = ...` rather than `$x := ...`
    cmds: list[list[Any]]          # each command: its arguments (nodes below)
    line: int


@dataclass
class _Field:                      # .A.B, relative to dot
    chain: list[str]


@dataclass
class _Var:                        # $x.A.B ($ is the root)
    name: str
    chain: list[str]


@dataclass
class _Dot:
    pass


@dataclass
class _Ident:                      # a function name, true/false/nil
    name: str


@dataclass
class _Lit:
    value: Any                     # str, int, float


@dataclass
class _Sub:                        # (pipeline).A.B
    pipe: _Pipe
    chain: list[str]


@dataclass
class _Text:
    text: str


@dataclass
class _Action:
    pipe: _Pipe


@dataclass
class _Branch:                     # if / with: branches are `else if`/`else with` chains
    kind: str
    branches: list[tuple[_Pipe, list[Any]]]
    else_: list[Any]
    line: int


@dataclass
class _Range:
    pipe: _Pipe
    body: list[Any]
    else_: list[Any]
    line: int


@dataclass
class _Loop:                       # break / continue
    word: str
    line: int


class _Parser:
    def __init__(self, items: list[str | _ActionItem]) -> None:
        self.items = items
        self.i = 0

    def parse(self) -> list[Any]:
        nodes, end = self.list_until(set(), in_range=False)
        if end is not None:
            raise _refuse(f"unexpected {{{{ {end[0]} }}}}", end[1].line)
        return nodes

    def list_until(self, stops: set[str], in_range: bool) -> tuple[list[Any], tuple[str, _ActionItem] | None]:
        nodes: list[Any] = []
        while self.i < len(self.items):
            item = self.items[self.i]
            self.i += 1
            if isinstance(item, str):
                nodes.append(_Text(item))
                continue
            toks = item.tokens
            word = toks[0].value if toks and toks[0].kind == "ident" else ""
            if word in ("end", "else"):
                if word not in stops:
                    raise _refuse(f"unexpected {{{{ {word} }}}}", item.line)
                return nodes, (word, item)
            if word in ("if", "with"):
                nodes.append(self.branch(word, item, in_range))
            elif word == "range":
                nodes.append(self.range_(item))
            elif word in ("break", "continue"):
                if not in_range:
                    raise _refuse(f"{{{{ {word} }}}} outside a range", item.line)
                if len(toks) > 1:
                    raise _refuse(f"unexpected arguments after {{{{ {word} }}}}", item.line)
                nodes.append(_Loop(word, item.line))
            elif word in ("define", "template", "block"):
                raise _refuse(f"named templates ({{{{ {word} }}}}) are not supported", item.line)
            elif not toks:
                raise _refuse("missing value for command", item.line)
            else:
                nodes.append(_Action(self.pipeline(toks, item.line, decl_ok=True)))
        return nodes, None

    def branch(self, kind: str, item: _ActionItem, in_range: bool) -> _Branch:
        branches = [(self.pipeline(item.tokens[1:], item.line, decl_ok=True), [])]
        else_: list[Any] = []
        while True:
            body, end = self.list_until({"else", "end"}, in_range)
            if end is None:
                raise _refuse(f"unclosed {{{{ {kind} }}}}", item.line)
            branches[-1][1].extend(body)
            word, at = end
            if word == "end":
                break
            rest = at.tokens[1:]
            if rest and rest[0].kind == "ident" and rest[0].value in ("if", "with"):
                if rest[0].value != kind:
                    raise _refuse(f"{{{{ else {rest[0].value} }}}} inside {{{{ {kind} }}}}", at.line)
                branches.append((self.pipeline(rest[1:], at.line, decl_ok=True), []))
                continue
            if rest:
                raise _refuse("unexpected arguments after {{ else }}", at.line)
            else_, end = self.list_until({"end"}, in_range)
            if end is None:
                raise _refuse(f"unclosed {{{{ {kind} }}}}", item.line)
            break
        return _Branch(kind, branches, else_, item.line)

    def range_(self, item: _ActionItem) -> _Range:
        pipe = self.pipeline(item.tokens[1:], item.line, decl_ok=True, range_decl=True)
        body, end = self.list_until({"else", "end"}, in_range=True)
        if end is None:
            raise _refuse("unclosed {{ range }}", item.line)
        else_: list[Any] = []
        if end[0] == "else":
            if len(end[1].tokens) > 1:
                raise _refuse("{{ else if }} inside {{ range }}", end[1].line)
            else_, end = self.list_until({"end"}, in_range=False)
            if end is None:
                raise _refuse("unclosed {{ range }}", item.line)
        return _Range(pipe, body, else_, item.line)

    def pipeline(self, toks: list[_Tok], line: int, *, decl_ok: bool = False, range_decl: bool = False) -> _Pipe:
        decl: list[str] = []
        assign = False
        if decl_ok and len(toks) >= 2 and toks[0].kind == "var" and toks[1].kind in (":=", "="):
            decl, assign, toks = [toks[0].value], toks[1].kind == "=", toks[2:]
        elif range_decl and len(toks) >= 4 and toks[0].kind == "var" and toks[1].kind == "," \
                and toks[2].kind == "var" and toks[3].kind == ":=":
            decl, toks = [toks[0].value, toks[2].value], toks[4:]
        if not toks:
            raise _refuse("missing value for command", line)
        pos = 0
        cmds: list[list[Any]] = []
        args: list[Any] = []
        while pos < len(toks):
            tok = toks[pos]
            if tok.kind == "|":
                if not args:
                    raise _refuse("missing command before |", line)
                cmds.append(args)
                args, pos = [], pos + 1
                continue
            if tok.kind in (")", ",", ":=", "="):
                raise _refuse(f"unexpected {tok.kind!r} in a pipeline", line)
            arg, pos = self.operand(toks, pos, line)
            args.append(arg)
        if not args:
            raise _refuse("missing command after |", line)
        cmds.append(args)
        return _Pipe(decl, assign, cmds, line)

    def operand(self, toks: list[_Tok], pos: int, line: int) -> tuple[Any, int]:
        tok = toks[pos]
        pos += 1
        if tok.kind == "field":
            node: Any = _Field([tok.value[1:]])
        elif tok.kind == "dot":
            node = _Dot()
        elif tok.kind == "var":
            node = _Var(tok.value, [])
        elif tok.kind == "ident":
            node = _Ident(tok.value)
        elif tok.kind in ("string", "number"):
            node = _Lit(tok.value)
        elif tok.kind == "(":
            depth, end = 1, pos
            while end < len(toks) and depth:
                depth += {"(": 1, ")": -1}.get(toks[end].kind, 0)
                end += 1
            if depth:
                raise _refuse("unclosed left paren", line)
            node, pos = _Sub(self.pipeline(toks[pos:end - 1], line), []), end
        else:
            raise _refuse(f"unexpected {tok.kind!r} in an operand", line)
        # A field right after an operand (no space) continues its chain: $x.A, (pipe).A, .A.B
        while pos < len(toks) and toks[pos].kind == "field" and not toks[pos].spaced:
            name = toks[pos].value[1:]
            if isinstance(node, (_Field, _Var, _Sub)):
                node.chain.append(name)
            else:
                raise _refuse(f"unexpected .{name} after {tok.value}", line)
            pos += 1
        return node, pos


def _operands(nodes: list[Any]) -> list[Any]:
    """Every operand of every pipeline, nested ones included, in order."""
    found: list[Any] = []

    def pipe(p: _Pipe) -> None:
        for cmd in p.cmds:
            for a in cmd:
                found.append(a)
                if isinstance(a, _Sub):
                    pipe(a.pipe)

    def walk(ns: list[Any]) -> None:
        for n in ns:
            if isinstance(n, _Action):
                pipe(n.pipe)
            elif isinstance(n, _Branch):
                for p, body in n.branches:
                    pipe(p)
                    walk(body)
                walk(n.else_)
            elif isinstance(n, _Range):
                pipe(n.pipe)
                walk(n.body)
                walk(n.else_)

    walk(nodes)
    return found


def _identifiers(operands: list[Any]) -> set[str]:
    """Ollama's Template.Vars: field and variable names, lowercased (it picks messages vs legacy)."""
    found: set[str] = set()
    for a in operands:
        if isinstance(a, _Field):
            found.update(s.lower() for s in a.chain)
        elif isinstance(a, _Var):
            found.update(s.lower() for s in [a.name, *a.chain])
    return found


def _field_names(operands: list[Any]) -> set[str]:
    """Every Go field name the template mentions (decides which values the prologue prepares)."""
    return {name for a in operands if isinstance(a, (_Field, _Var, _Sub)) for name in a.chain}


def _up_to_response(nodes: list[Any]) -> list[Any]:
    """The template Ollama renders for the last legacy turn: everything after the first
    `{{ ... .Response ... }}` is cut (template.go, deleteNode), so the reply continues there."""
    cut = False

    def args(cmd: list[Any]) -> list[Any]:
        nonlocal cut
        kept = []
        for a in cmd:
            if cut:
                break
            if isinstance(a, _Field) and "Response" in a.chain:
                cut = True
            elif isinstance(a, _Sub):
                a = _Sub(pipe(a.pipe) or a.pipe, a.chain)
            kept.append(a)
        return kept

    def pipe(p: _Pipe) -> _Pipe | None:
        cmds = []
        for cmd in p.cmds:
            kept = args(cmd)
            if not kept:
                return None
            cmds.append(kept)
        return _Pipe(p.decl, p.assign, cmds, p.line)

    def walk(ns: list[Any]) -> list[Any]:
        out: list[Any] = []
        for n in ns:
            if cut:
                break
            if isinstance(n, _Action):
                p = pipe(n.pipe)
                if p is not None:
                    out.append(_Action(p))
            elif isinstance(n, _Branch):
                branches = [(p, walk(body)) for p, body in n.branches]
                out.append(_Branch(n.kind, branches, walk(n.else_), n.line))
            elif isinstance(n, _Range):
                out.append(_Range(n.pipe, walk(n.body), walk(n.else_), n.line))
            else:
                out.append(n)
        return out

    return walk(nodes)


# -- types: what Ollama hands its templates, and where each value is in the Jinja inputs -------

# Normalized structs (the prologue builds them with every key present): Go field -> (key, type).
_STRUCTS: dict[str, dict[str, tuple[str, str]]] = {
    "Message": {"Role": ("role", "string"), "Content": ("content", "string"), "Thinking": ("thinking", "string"),
                "Images": ("images", "Images"), "ToolCalls": ("tool_calls", "ToolCalls"),
                "ToolName": ("tool_name", "string"), "ToolCallID": ("tool_call_id", "string")},
    "ToolCall": {"ID": ("id", "string"), "Function": ("function", "ToolCallFunction")},
    "ToolCallFunction": {"Index": ("index", "int"), "Name": ("name", "string"), "Arguments": ("arguments", "Arguments")},
    "Tool": {"Type": ("type", "string"), "Items": ("items", "any"), "Function": ("function", "ToolFunction")},
    "ToolFunction": {"Name": ("name", "string"), "Description": ("description", "string"),
                     "Parameters": ("parameters", "ToolParameters")},
    "ToolParameters": {"Type": ("type", "string"), "Defs": ("$defs", "any"), "Items": ("items", "any"),
                       "Required": ("required", "StringList"), "Properties": ("properties", "Properties")},
}
# A tool's property is the request's JSON schema as it is: read with defaults for Go's zero values.
_PROPERTY: dict[str, tuple[str, str]] = {
    "AnyOf": ("({e}.get('anyOf') or [])", "PropertyList"),
    "Type": ("([{e}.get('type')] if {e}.get('type') is string else ({e}.get('type') or []))", "PropertyType"),
    "Items": ("{e}.get('items')", "any"),
    "Description": ("({e}.get('description') or '')", "string"),
    "Enum": ("({e}.get('enum') or [])", "AnyList"),
    "Properties": ("{e}.get('properties')", "NestedProperties"),
    "Required": ("({e}.get('required') or [])", "StringList"),
}
_LISTS = {"Messages": "Message", "ToolCalls": "ToolCall", "Tools": "Tool", "Images": "any",
          "StringList": "string", "AnyList": "any", "PropertyList": "ToolProperty", "PropertyType": "string"}
_MAPS = {"Arguments": "any", "Properties": "ToolProperty", "NestedProperties": "ToolProperty"}
_THINK = {"Think": ("go.think", "bool"), "ThinkLevel": ("go.think_level", "string"),
          "IsThinkSet": ("go.think_set", "bool")}
# The root of a chat (Ollama's messages mode) and of one legacy turn (macro arguments).
_ROOTS: dict[str, dict[str, tuple[str, str]]] = {
    "Root": {"System": ("go.system", "string"), "Messages": ("go.msgs", "Messages"), "Tools": ("go.tools", "Tools"),
             "Response": ("''", "string"), **_THINK},
    "LegacyRoot": {"System": ("system", "string"), "Prompt": ("prompt", "string"),
                   "Response": ("response", "string"), **_THINK},
}
_DESCRIBE = {"Root": "the template's values", "LegacyRoot": "the template's values", "Message": "a message",
             "ToolCall": "a tool call", "ToolCallFunction": "a tool call's function", "Tool": "a tool",
             "ToolFunction": "a tool's function", "ToolParameters": "a tool's parameters",
             "ToolProperty": "a tool parameter's property", "Messages": "the message list",
             "ToolCalls": "a list of tool calls", "Images": "a list of images", "PropertyList": "a list of properties",
             "NestedProperties": "nested properties"}


@dataclass(frozen=True)
class _Val:
    expr: str          # a Jinja expression
    type: str
    tail_of: tuple[str, str] | None = None  # (list, start) when expr is list[start:]: its len needs no copy


_NOVALUE = _Val("none", "novalue")


def _jstr(s: str) -> str:
    """`s` as a Jinja string literal (Jinja decodes the escapes with Python's unicode-escape)."""
    out = ["'"]
    for ch in s:
        if ch == "\\":
            out.append("\\\\")
        elif ch == "'":
            out.append("\\'")
        elif ch == "\n":
            out.append("\\n")
        elif ch == "\r":
            out.append("\\r")
        elif ch == "\t":
            out.append("\\t")
        elif ord(ch) < 0x20 or ord(ch) == 0x7F:
            out.append(f"\\x{ord(ch):02x}")
        else:
            out.append(ch)
    out.append("'")
    return "".join(out)


def _paren(expr: str) -> str:
    """`expr` safe to use as an operand: names, subscripts, plain strings and (...) stay as they are."""
    if re.fullmatch(r"[\w.]+(\[[^\[\]]*\])*|'[^'\\]*'", expr):
        return expr
    if expr.startswith("(") and expr.endswith(")"):
        depth = 0
        for i, ch in enumerate(expr):  # one group from the first ( to the last ), strings aside
            depth += {"(": 1, ")": -1}.get(ch, 0)
            if depth == 0 and i < len(expr) - 1:
                break
        else:
            if "'" not in expr:
                return expr
    return f"({expr})"


# -- Jinja helpers, emitted only when used (name -> (helpers it calls, text)) -------------------
# Go's encoding/json: map keys sorted, `<>&` escaped, integral floats without ".0".
_HELPERS: dict[str, tuple[tuple[str, ...], str]] = {
    "go_json": ((), r"""{%- macro go_json(v) %}
{%- if v is none %}{{- 'null' }}
{%- elif v is boolean %}{{- 'true' if v else 'false' }}
{%- elif v is integer %}{{- v }}
{%- elif v is float %}{{- v|int if (v == v|int and v|abs < 1e21) else v }}
{%- elif v is string %}{{- v|tojson|replace('<', '\\u003c')|replace('>', '\\u003e')|replace('&', '\\u0026')|replace('\u2028', '\\u2028')|replace('\u2029', '\\u2029') }}
{%- elif v is mapping %}{{- '{' }}{%- for k, x in v|dictsort(true) %}{{- ',' if not loop.first else '' }}{{- go_json(k ~ '') ~ ':' ~ go_json(x) }}{%- endfor %}{{- '}' }}
{%- elif v is iterable %}{{- '[' }}{%- for x in v %}{{- ',' if not loop.first else '' }}{{- go_json(x) }}{%- endfor %}{{- ']' }}
{%- else %}{{- v|tojson }}
{%- endif %}
{%- endmacro %}"""),
    # Go's fmt %v of a JSON value: <nil>, true, [a b], map[k:v].
    "go_fmt": ((), r"""{%- macro go_fmt(v) %}
{%- if v is none %}{{- '<nil>' }}
{%- elif v is boolean %}{{- 'true' if v else 'false' }}
{%- elif v is string %}{{- v }}
{%- elif v is float %}{{- v|int if (v == v|int and v|abs < 1e21) else v }}
{%- elif v is mapping %}{{- 'map[' }}{%- for k, x in v|dictsort(true) %}{{- ' ' if not loop.first else '' }}{{- k ~ ':' ~ go_fmt(x) }}{%- endfor %}{{- ']' }}
{%- elif v is iterable %}{{- '[' }}{%- for x in v %}{{- ' ' if not loop.first else '' }}{{- go_fmt(x) }}{%- endfor %}{{- ']' }}
{%- else %}{{- v }}
{%- endif %}
{%- endmacro %}"""),
    # PropertyType's String(): one type as itself, several as [a b].
    "go_proptype": ((), r"""{%- macro go_proptype(t) %}
{%- if t|length == 1 %}{{- t[0] }}{%- elif t|length > 1 %}{{- '[' ~ t|join(' ') ~ ']' }}{%- endif %}
{%- endmacro %}"""),
    # api.ToolProperty as encoding/json writes it: its fields in order, empty ones left out.
    "go_prop_json": (("go_json",), r"""{%- macro go_prop_json(p) %}
{%- if p is not mapping %}{{- go_json(p) }}{%- else %}
{%- set f = namespace(parts=[]) %}
{%- if p.get('anyOf') %}{%- set s = namespace(items=[]) %}{%- for x in p['anyOf'] %}{%- set s.items = s.items + [go_prop_json(x)] %}{%- endfor %}{%- set f.parts = f.parts + ['"anyOf":[' ~ s.items|join(',') ~ ']'] %}{%- endif %}
{%- set t = [p.get('type')] if p.get('type') is string else (p.get('type') or []) %}
{%- if t|length == 1 %}{%- set f.parts = f.parts + ['"type":' ~ go_json(t[0])] %}{%- elif t|length > 1 %}{%- set f.parts = f.parts + ['"type":' ~ go_json(t)] %}{%- endif %}
{%- if p.get('items') is not none %}{%- set f.parts = f.parts + ['"items":' ~ go_json(p.get('items'))] %}{%- endif %}
{%- if p.get('description') %}{%- set f.parts = f.parts + ['"description":' ~ go_json(p.get('description'))] %}{%- endif %}
{%- if p.get('enum') %}{%- set f.parts = f.parts + ['"enum":' ~ go_json(p.get('enum'))] %}{%- endif %}
{%- if p.get('properties') is mapping %}{%- set s = namespace(items=[]) %}{%- for k, x in p.get('properties').items() %}{%- set s.items = s.items + [go_json(k) ~ ':' ~ go_prop_json(x)] %}{%- endfor %}{%- set f.parts = f.parts + ['"properties":{' ~ s.items|join(',') ~ '}'] %}{%- endif %}
{%- if p.get('required') %}{%- set f.parts = f.parts + ['"required":' ~ go_json(p.get('required'))] %}{%- endif %}
{{- '{' ~ f.parts|join(',') ~ '}' }}
{%- endif %}
{%- endmacro %}"""),
    # A property map: sorted at the top (Ollama copies it into a Go map), in request order below.
    "go_props_json": (("go_json", "go_prop_json"), r"""{%- macro go_props_json(props, nil_text, ordered) %}
{%- if props is not mapping %}{{- nil_text }}{%- else %}
{{- '{' }}{%- for k, x in (props.items() if ordered else props|dictsort(true)) %}{{- ',' if not loop.first else '' }}{{- go_json(k) ~ ':' ~ go_prop_json(x) }}{%- endfor %}{{- '}' }}
{%- endif %}
{%- endmacro %}"""),
    "go_params_json": (("go_json", "go_props_json"), r"""{%- macro go_params_json(p) %}
{{- '{"type":' ~ go_json(p['type']) }}
{%- if p['$defs'] is not none %}{{- ',"$defs":' ~ go_json(p['$defs']) }}{%- endif %}
{%- if p['items'] is not none %}{{- ',"items":' ~ go_json(p['items']) }}{%- endif %}
{%- if p['required'] %}{{- ',"required":' ~ go_json(p['required']) }}{%- endif %}
{{- ',"properties":' ~ go_props_json(p['properties'], 'null', false) ~ '}' }}
{%- endmacro %}"""),
    "go_function_json": (("go_json", "go_params_json"), r"""{%- macro go_function_json(f) %}
{{- '{"name":' ~ go_json(f['name']) ~ ',"description":' ~ go_json(f['description']) ~ ',"parameters":' ~ go_params_json(f['parameters']) ~ '}' }}
{%- endmacro %}"""),
    "go_tool_json": (("go_json", "go_function_json"), r"""{%- macro go_tool_json(t) %}
{{- '{"type":' ~ go_json(t['type']) }}
{%- if t['items'] is not none %}{{- ',"items":' ~ go_json(t['items']) }}{%- endif %}
{{- ',"function":' ~ go_function_json(t['function']) ~ '}' }}
{%- endmacro %}"""),
    "go_tools_json": (("go_tool_json",), r"""{%- macro go_tools_json(ts) %}
{%- if not ts %}{{- 'null' }}{%- else %}{{- '[' }}{%- for t in ts %}{{- ',' if not loop.first else '' }}{{- go_tool_json(t) }}{%- endfor %}{{- ']' }}{%- endif %}
{%- endmacro %}"""),
    # Ollama's yesterdayDate: the day before today, YYYY-MM-DD.
    "go_yesterday": ((), r"""{%- macro go_yesterday() %}
{%- set p = strftime_now('%Y-%m-%d').split('-') %}
{%- set y, m, d = p[0]|int, p[1]|int, p[2]|int %}
{%- if d > 1 %}{%- set d = d - 1 %}{%- else %}
{%- if m == 1 %}{%- set y, m = y - 1, 12 %}{%- else %}{%- set m = m - 1 %}{%- endif %}
{%- set leap = (y % 4 == 0 and y % 100 != 0) or y % 400 == 0 %}
{%- set d = [31, 29 if leap else 28, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31][m - 1] %}
{%- endif %}
{{- '%04d-%02d-%02d'|format(y, m, d) }}
{%- endmacro %}"""),
}


def _helper_order(used: set[str]) -> list[str]:
    """Used helpers and those they call, each defined before its callers."""
    out: list[str] = []

    def add(name: str) -> None:
        if name in out:
            return
        for dep in _HELPERS[name][0]:
            add(dep)
        out.append(name)

    for name in sorted(used):
        add(name)
    return out


# -- compiling ---------------------------------------------------------------------------------

_REFUSED_FUNCS = {
    "html": "the html function", "js": "the js function", "urlquery": "the urlquery function",
    "call": "the call function", "toTypeScriptType": "Ollama's toTypeScriptType function",
}
_COMPARE = {"ne": "!=", "lt": "<", "le": "<=", "gt": ">", "ge": ">="}
_PRINTF_VERB = re.compile(r"%(.)")


@dataclass
class _Compiler:
    root: str                                         # "Root" or "LegacyRoot"
    out: list[str] = field(default_factory=list)
    helpers: set[str] = field(default_factory=set)
    scopes: list[dict[str, _Val]] = field(default_factory=list)
    counter: int = 0

    def fresh(self, prefix: str) -> str:
        self.counter += 1
        return f"{prefix}{self.counter}"

    def emit(self, tag: str) -> None:
        self.out.append(tag)

    def body(self, nodes: list[Any]) -> list[str]:
        self.out, self.scopes = [], [{"$": _Val("", self.root)}]
        self.emit("{%- set gv = namespace() %}")
        self.nodes(nodes, _Val("", self.root))
        return self.out

    # statements

    def nodes(self, nodes: list[Any], dot: _Val) -> None:
        for n in nodes:
            if isinstance(n, _Text):
                self.emit("{{- " + _jstr(n.text) + " }}")
            elif isinstance(n, _Action):
                value = self.pipe(n.pipe, dot)
                if n.pipe.decl:
                    self.declare(n.pipe, value)
                else:
                    self.emit("{{- " + self.printed(value, n.pipe.line) + " }}")
            elif isinstance(n, _Branch):
                self.branch(n, dot)
            elif isinstance(n, _Range):
                self.range_(n, dot)
            elif isinstance(n, _Loop):
                self.emit("{%- " + n.word + " %}")

    def declare(self, pipe: _Pipe, value: _Val) -> str:
        name = pipe.decl[0]
        if pipe.assign:
            for scope in reversed(self.scopes):
                if name in scope:
                    target = scope[name].expr
                    break
            else:
                raise _refuse(f"undefined variable {name}", pipe.line)
        else:
            target = "gv." + self.fresh("v")
            self.scopes[-1][name] = _Val(target, value.type)
        self.emit("{%- set " + target + " = " + value.expr + " %}")
        return target

    def branch(self, n: _Branch, dot: _Val) -> None:
        self.scopes.append({})
        opened = 0
        for i, (pipe, body) in enumerate(n.branches):
            if i:
                self.emit("{%- else %}")
            value = self.pipe(pipe, dot)
            test = self.declare(pipe, value) if pipe.decl else value.expr
            if n.kind == "with" and not pipe.decl:
                test = "gv." + self.fresh("w")
                self.emit("{%- set " + test + " = " + value.expr + " %}")
            self.emit("{%- if " + test + " %}")
            opened += 1
            self.nodes(body, _Val(test, value.type) if n.kind == "with" else dot)
        if n.else_:
            self.emit("{%- else %}")
            self.nodes(n.else_, dot)
        self.emit("{%- endif %}" * opened)
        self.scopes.pop()

    def range_(self, n: _Range, dot: _Val) -> None:
        self.scopes.append({})
        value = self.pipe(n.pipe, dot)
        item = self.fresh("d")
        if value.type in _LISTS:
            elem, key = _LISTS[value.type], "loop.index0"
            self.emit("{%- for " + item + " in " + _paren(value.expr) + " %}")
        elif value.type in ("Arguments", "Properties"):
            elem, key = _MAPS[value.type], self.fresh("k")
            self.emit("{%- for " + key + ", " + item + " in (" + value.expr + " or {})|dictsort(true) %}")
        elif value.type == "int":
            elem, key = "int", "loop.index0"
            self.emit("{%- for " + item + " in range(" + value.expr + ") %}")
        else:
            raise _refuse(f"range over {_DESCRIBE.get(value.type, 'a ' + value.type)}", n.line)
        names = n.pipe.decl
        if len(names) == 2:
            index = "gv." + self.fresh("v")
            self.emit("{%- set " + index + " = " + key + " %}")
            self.scopes[-1][names[0]] = _Val(index, "int" if key == "loop.index0" else "string")
        if names:
            self.scopes[-1][names[-1]] = _Val(item, elem)
        self.nodes(n.body, _Val(item, elem))
        if n.else_:
            self.emit("{%- else %}")
            self.nodes(n.else_, dot)
        self.emit("{%- endfor %}")
        self.scopes.pop()

    # expressions

    def pipe(self, pipe: _Pipe, dot: _Val) -> _Val:
        value: _Val | None = None
        for cmd in pipe.cmds:
            value = self.command(cmd, dot, value, pipe.line)
        assert value is not None
        return value

    def command(self, cmd: list[Any], dot: _Val, piped: _Val | None, line: int) -> _Val:
        first = cmd[0]
        if isinstance(first, _Ident) and first.name not in ("true", "false", "nil"):
            args = [self.operand(a, dot, line) for a in cmd[1:]]
            return self.call(first.name, args + ([piped] if piped else []), line)
        if len(cmd) > 1 or piped is not None:
            raise _refuse(f"{self.describe_node(first)} is not a function and cannot take arguments", line)
        return self.operand(first, dot, line)

    def describe_node(self, node: Any) -> str:
        if isinstance(node, _Field):
            return "." + ".".join(node.chain)
        if isinstance(node, _Var):
            return node.name + "".join("." + c for c in node.chain)
        return "a value"

    def operand(self, node: Any, dot: _Val, line: int) -> _Val:
        if isinstance(node, _Dot):
            return dot
        if isinstance(node, _Field):
            return self.chain(dot, node.chain, line)
        if isinstance(node, _Var):
            for scope in reversed(self.scopes):
                if node.name in scope:
                    return self.chain(scope[node.name], node.chain, line)
            raise _refuse(f"undefined variable {node.name}", line)
        if isinstance(node, _Lit):
            if isinstance(node.value, str):
                return _Val(_jstr(node.value), "string")
            return _Val(repr(node.value), "int" if isinstance(node.value, int) else "float")
        if isinstance(node, _Ident):
            if node.name in ("true", "false"):
                return _Val(node.name, "bool")
            if node.name == "nil":
                raise _refuse("nil", line)
            return self.call(node.name, [], line)
        if isinstance(node, _Sub):
            return self.chain(self.pipe(node.pipe, dot), node.chain, line)
        raise _refuse("an unsupported operand", line)

    def chain(self, value: _Val, names: list[str], line: int) -> _Val:
        for name in names:
            value = self.field(value, name, line)
        return value

    def field(self, value: _Val, name: str, line: int) -> _Val:
        t, e = value.type, value.expr
        if t in _ROOTS:
            expr, ft = _ROOTS[t].get(name, ("none", "novalue"))
            return _Val(expr, ft)
        if t in _STRUCTS:
            if name not in _STRUCTS[t]:
                known = ", ".join("." + f for f in _STRUCTS[t])
                raise _refuse(f".{name} is not a field of {_DESCRIBE[t]} (Ollama's fields: {known})", line)
            key, ft = _STRUCTS[t][name]
            return _Val(f"{_paren(e)}[{_jstr(key)}]", ft)
        if t == "ToolProperty":
            if name not in _PROPERTY:
                raise _refuse(f".{name} is not a field of {_DESCRIBE[t]} (Ollama's fields: "
                              + ", ".join("." + f for f in _PROPERTY) + ")", line)
            template, ft = _PROPERTY[name]
            return _Val(template.format(e=_paren(e)), ft)
        if t in _MAPS:
            return _Val(f"({e} or {{}}).get({_jstr(name)})", _MAPS[t])
        if t == "any":
            return _Val(f"({_paren(e)} if {_paren(e)} is mapping else {{}}).get({_jstr(name)})", "any")
        if t == "novalue":
            return _NOVALUE
        raise _refuse(f"can't evaluate field .{name} in {_DESCRIBE.get(t, 'a ' + t)}", line)

    # printing

    def printed(self, v: _Val, line: int) -> str:
        """A Jinja expression for the text Go's fmt writes for `v`."""
        t, e = v.type, v.expr
        if t == "string":
            return e
        if t == "novalue":
            return "'<no value>'"
        if t == "bool":
            return f"('true' if {e} else 'false')"
        if t == "int":
            return e
        if t in ("any", "float", "StringList", "AnyList"):
            return self.helper("go_fmt", e)
        if t == "Arguments":  # Ollama's templateArgs.String(): JSON
            self.helpers.add("go_json")
            return f"({e} if {_paren(e)} is string else go_json({e} or {{}}))"
        if t == "PropertyType":
            return self.helper("go_proptype", e)
        if t == "Properties":
            return self.helper("go_props_json", e, "'{}'", "false")
        return self.json_of(v, line, printing=True)

    def json_of(self, v: _Val, line: int, printing: bool = False) -> str:
        """A Jinja expression for Go's json.Marshal of `v` (and the String() of Ollama's tool types)."""
        t, e = v.type, v.expr
        if t == "novalue":
            return "'null'"
        if t in ("string", "int", "float", "bool", "any", "StringList", "AnyList", "Arguments"):
            return self.helper("go_json", e)
        if t == "PropertyType":
            return self.helper("go_json", f"({e}[0] if {e}|length == 1 else {e})")
        simple = {"Tools": "go_tools_json", "Tool": "go_tool_json", "ToolFunction": "go_function_json",
                  "ToolParameters": "go_params_json", "ToolProperty": "go_prop_json"}
        if t in simple:
            return self.helper(simple[t], e)
        if t in ("Properties", "NestedProperties"):
            return self.helper("go_props_json", e, "'null'", "true" if t == "NestedProperties" else "false")
        what = _DESCRIBE.get(t, "this value")
        if printing:
            raise _refuse(f"printing {what} (Go would print its internal representation); print its fields instead",
                          line)
        raise _refuse(f"json of {what}", line)

    def helper(self, name: str, *args: str) -> str:
        self.helpers.add(name)
        return f"{name}({', '.join(args)})"

    # functions

    def call(self, name: str, args: list[_Val], line: int) -> _Val:
        def need(low: int, high: int | None = None) -> None:
            if len(args) < low or (high is not None and len(args) > high):
                count = f"{low}" if high == low else f"{low} or more" if high is None else f"{low} to {high}"
                raise _refuse(f"wrong number of arguments for {name}: want {count}, got {len(args)}", line)

        if name in _REFUSED_FUNCS:
            raise _refuse(f"{_REFUSED_FUNCS[name]} is not supported", line)
        if name == "eq":
            need(2)
            a = self.comparable(args[0], line)
            return _Val("(" + " or ".join(f"{a} == {self.comparable(b, line)}" for b in args[1:]) + ")", "bool")
        if name in _COMPARE:
            need(2, 2)
            return _Val(f"({self.comparable(args[0], line)} {_COMPARE[name]} {self.comparable(args[1], line)})", "bool")
        if name in ("and", "or"):
            need(1)
            types = {a.type for a in args}
            return _Val("(" + f" {name} ".join(_paren(a.expr) for a in args) + ")",
                        types.pop() if len(types) == 1 else "any")
        if name == "not":
            need(1, 1)
            return _Val(f"(not {_paren(args[0].expr)})", "bool")
        if name == "len":
            need(1, 1)
            e = args[0].expr
            if args[0].tail_of:  # `len (slice $.Messages $i)`, once per message in Ollama's templates
                whole, start = args[0].tail_of
                return _Val(f"({_paren(whole)}|length - {_paren(start)})", "int")
            return _Val(f"(({e} or {{}})|length)" if args[0].type in _MAPS else f"({_paren(e)}|length)", "int")
        if name == "index":
            need(1)
            value = args[0]
            for key in args[1:]:
                if value.type in _LISTS:
                    value = _Val(f"{_paren(value.expr)}[{key.expr}]", _LISTS[value.type])
                elif value.type in _MAPS:
                    value = _Val(f"({value.expr} or {{}}).get({key.expr})", _MAPS[value.type])
                elif value.type == "any":
                    value = _Val(f"{_paren(value.expr)}[{key.expr}]", "any")
                else:
                    raise _refuse(f"index of {_DESCRIBE.get(value.type, 'a ' + value.type)}", line)
            return value
        if name == "slice":
            need(1, 3)
            value = args[0]
            if value.type not in _LISTS and value.type not in ("string", "any"):
                raise _refuse(f"slice of {_DESCRIBE.get(value.type, 'a ' + value.type)}", line)
            if len(args) == 1:
                return value
            end = args[2].expr if len(args) == 3 else ""
            return _Val(f"{_paren(value.expr)}[{args[1].expr}:{end}]", value.type,
                        None if end or value.type not in _LISTS else (value.expr, args[1].expr))
        if name == "json":
            need(1, 1)
            return _Val(self.json_of(args[0], line), "string")
        if name in ("print", "println"):
            parts = []
            for i, a in enumerate(args):
                # Sprint puts a space between operands when neither is a string; Sprintln always.
                if i and (name == "println" or (a.type != "string" and args[i - 1].type != "string")):
                    parts.append("' '")
                parts.append(_paren(self.printed(a, line)))
            if name == "println":
                parts.append("'\\n'")
            return _Val("(" + (" ~ ".join(parts) or "''") + ")", "string")
        if name == "printf":
            need(1)
            return self.printf(args, line)
        if name == "currentDate":
            return _Val("strftime_now('%Y-%m-%d')", "string")
        if name == "yesterdayDate":
            return _Val(self.helper("go_yesterday"), "string")
        raise _refuse(f"the function {name!r} (Ollama's templates know eq, ne, lt, le, gt, ge, and, or, not, len, "
                      "index, slice, print, printf, println, json, currentDate, yesterdayDate)", line)

    def comparable(self, v: _Val, line: int) -> str:
        if v.type == "PropertyType":  # compare the type name, as a template author means it
            return self.helper("go_proptype", v.expr)
        if v.type not in ("string", "int", "float", "bool", "any", "novalue"):
            raise _refuse(f"comparing {_DESCRIBE.get(v.type, 'a ' + v.type)}", line)
        return _paren(v.expr)

    def printf(self, args: list[_Val], line: int) -> _Val:
        fmt = args[0]
        literal = re.fullmatch(r"'((?:[^'\\]|\\.)*)'", fmt.expr)
        if fmt.type != "string" or not literal:
            raise _refuse("printf with a format that is not a string constant", line)
        text = literal.group(1).encode("ascii", "backslashreplace").decode("unicode-escape")
        parts: list[str] = []
        rest = list(args[1:])
        pos = 0
        for m in _PRINTF_VERB.finditer(text):
            if m.start() < pos:
                continue
            parts.append(_jstr(text[pos:m.start()]))
            verb = m.group(1)
            pos = m.end()
            if verb == "%":
                parts.append("'%'")
                continue
            if verb not in "svd" or not rest:
                raise _refuse(f"printf verb %{verb} (only %s, %v, %d and %% convert)" if verb not in "svd"
                              else "printf with too few arguments", line)
            parts.append(_paren(self.printed(rest.pop(0), line)))
        parts.append(_jstr(text[pos:]))
        if rest:
            raise _refuse("printf with too many arguments", line)
        return _Val("(" + " ~ ".join(p for p in parts if p != "''") + ")" if any(p != "''" for p in parts) else "''",
                    "string")


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
    if fields & set(_THINK):
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
    nodes = _Parser(_scan(text)).parse()
    operands = _operands(nodes)
    names, fields = _identifiers(operands), _field_names(operands)
    messages_mode = "messages" in names
    if not messages_mode and "response" not in names:
        # Ollama appends {{ .Response }} to a template that has neither (template.Parse)
        nodes.append(_Action(_Pipe([], False, [[_Field(["Response"])]], 0)))
    compiler = _Compiler("Root" if messages_mode else "LegacyRoot")
    parts = [_HEADER]
    if messages_mode:
        body = compiler.body(nodes)
        main = [*_prologue(fields), *body]
    else:
        full = compiler.body(nodes)
        last = compiler.body(_up_to_response(nodes))
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
    parts += [_HELPERS[name][1] for name in _helper_order(compiler.helpers)]
    first = nodes[0] if nodes else None
    if bos_token and not (isinstance(first, _Text) and first.text.startswith(bos_token)):
        parts.append("{{- bos_token if bos_token is defined and bos_token else '' }}")
    parts += main
    return "\n".join(parts)
