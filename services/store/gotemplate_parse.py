"""Ollama's Go templates, read: the lexer (`scan`) and the parser (`Parser`) into template nodes.

gotemplate.py converts the nodes (through gotemplate_compile.py) into a Jinja chat template.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from mlxserve.services.common.errors import InvalidArgument

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


def refuse(what: str, line: int | None = None) -> InvalidArgument:
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


def scan(src: str) -> list[str | _ActionItem]:
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
                raise refuse("unclosed comment", line)
            k = end + 2
            trim_next = src.startswith(" -}}", k) or (k < n and src[k] in _SPACE and src.startswith("-}}", k + 1))
            if trim_next:
                k += 4
            elif src.startswith("}}", k):
                k += 2
            else:
                raise refuse("comment ends before closing delimiter", line)
            i = k
            continue
        tokens: list[_Tok] = []
        while True:
            start = k
            while k < n and src[k] in _SPACE:
                k += 1
            spaced = k > start
            if k >= n:
                raise refuse("unclosed action", line)
            if spaced and src.startswith("-}}", k):
                trim_next, k = True, k + 3
                break
            if src.startswith("}}", k):
                trim_next, k = False, k + 2
                break
            m = _TOKEN.match(src, k)
            if not m:
                raise refuse(f"unexpected {src[k]!r} in an action", line)
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
                    raise refuse(f"malformed character constant {raw}", line)
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
            raise refuse(f"unknown escape sequence \\{esc} in a string", line)
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
        raise refuse(f"bad number syntax {raw}", line) from None


# -- parsing -----------------------------------------------------------------------------------

@dataclass
class Pipe:
    decl: list[str]
    assign: bool                   # `$x = ...` rather than `$x := ...`
    cmds: list[list[Any]]          # each command: its arguments (nodes below)
    line: int


@dataclass
class Field:                      # .A.B, relative to dot
    chain: list[str]


@dataclass
class Var:                        # $x.A.B ($ is the root)
    name: str
    chain: list[str]


@dataclass
class Dot:
    pass


@dataclass
class Ident:                      # a function name, true/false/nil
    name: str


@dataclass
class Lit:
    value: Any                     # str, int, float


@dataclass
class Sub:                        # (pipeline).A.B
    pipe: Pipe
    chain: list[str]


@dataclass
class Text:
    text: str


@dataclass
class Action:
    pipe: Pipe


@dataclass
class Branch:                     # if / with: branches are `else if`/`else with` chains
    kind: str
    branches: list[tuple[Pipe, list[Any]]]
    else_: list[Any]
    line: int


@dataclass
class Range:
    pipe: Pipe
    body: list[Any]
    else_: list[Any]
    line: int


@dataclass
class Loop:                       # break / continue
    word: str
    line: int


class Parser:
    def __init__(self, items: list[str | _ActionItem]) -> None:
        self.items = items
        self.i = 0

    def parse(self) -> list[Any]:
        nodes, end = self.list_until(set(), in_range=False)
        if end is not None:
            raise refuse(f"unexpected {{{{ {end[0]} }}}}", end[1].line)
        return nodes

    def list_until(self, stops: set[str], in_range: bool) -> tuple[list[Any], tuple[str, _ActionItem] | None]:
        nodes: list[Any] = []
        while self.i < len(self.items):
            item = self.items[self.i]
            self.i += 1
            if isinstance(item, str):
                nodes.append(Text(item))
                continue
            toks = item.tokens
            word = toks[0].value if toks and toks[0].kind == "ident" else ""
            if word in ("end", "else"):
                if word not in stops:
                    raise refuse(f"unexpected {{{{ {word} }}}}", item.line)
                return nodes, (word, item)
            if word in ("if", "with"):
                nodes.append(self.branch(word, item, in_range))
            elif word == "range":
                nodes.append(self.range_(item))
            elif word in ("break", "continue"):
                if not in_range:
                    raise refuse(f"{{{{ {word} }}}} outside a range", item.line)
                if len(toks) > 1:
                    raise refuse(f"unexpected arguments after {{{{ {word} }}}}", item.line)
                nodes.append(Loop(word, item.line))
            elif word in ("define", "template", "block"):
                raise refuse(f"named templates ({{{{ {word} }}}}) are not supported", item.line)
            elif not toks:
                raise refuse("missing value for command", item.line)
            else:
                nodes.append(Action(self.pipeline(toks, item.line, decl_ok=True)))
        return nodes, None

    def branch(self, kind: str, item: _ActionItem, in_range: bool) -> Branch:
        branches = [(self.pipeline(item.tokens[1:], item.line, decl_ok=True), [])]
        else_: list[Any] = []
        while True:
            body, end = self.list_until({"else", "end"}, in_range)
            if end is None:
                raise refuse(f"unclosed {{{{ {kind} }}}}", item.line)
            branches[-1][1].extend(body)
            word, at = end
            if word == "end":
                break
            rest = at.tokens[1:]
            if rest and rest[0].kind == "ident" and rest[0].value in ("if", "with"):
                if rest[0].value != kind:
                    raise refuse(f"{{{{ else {rest[0].value} }}}} inside {{{{ {kind} }}}}", at.line)
                branches.append((self.pipeline(rest[1:], at.line, decl_ok=True), []))
                continue
            if rest:
                raise refuse("unexpected arguments after {{ else }}", at.line)
            else_, end = self.list_until({"end"}, in_range)
            if end is None:
                raise refuse(f"unclosed {{{{ {kind} }}}}", item.line)
            break
        return Branch(kind, branches, else_, item.line)

    def range_(self, item: _ActionItem) -> Range:
        pipe = self.pipeline(item.tokens[1:], item.line, decl_ok=True, range_decl=True)
        body, end = self.list_until({"else", "end"}, in_range=True)
        if end is None:
            raise refuse("unclosed {{ range }}", item.line)
        else_: list[Any] = []
        if end[0] == "else":
            if len(end[1].tokens) > 1:
                raise refuse("{{ else if }} inside {{ range }}", end[1].line)
            else_, end = self.list_until({"end"}, in_range=False)
            if end is None:
                raise refuse("unclosed {{ range }}", item.line)
        return Range(pipe, body, else_, item.line)

    def pipeline(self, toks: list[_Tok], line: int, *, decl_ok: bool = False, range_decl: bool = False) -> Pipe:
        decl: list[str] = []
        assign = False
        if decl_ok and len(toks) >= 2 and toks[0].kind == "var" and toks[1].kind in (":=", "="):
            decl, assign, toks = [toks[0].value], toks[1].kind == "=", toks[2:]
        elif range_decl and len(toks) >= 4 and toks[0].kind == "var" and toks[1].kind == "," \
                and toks[2].kind == "var" and toks[3].kind == ":=":
            decl, toks = [toks[0].value, toks[2].value], toks[4:]
        if not toks:
            raise refuse("missing value for command", line)
        pos = 0
        cmds: list[list[Any]] = []
        args: list[Any] = []
        while pos < len(toks):
            tok = toks[pos]
            if tok.kind == "|":
                if not args:
                    raise refuse("missing command before |", line)
                cmds.append(args)
                args, pos = [], pos + 1
                continue
            if tok.kind in (")", ",", ":=", "="):
                raise refuse(f"unexpected {tok.kind!r} in a pipeline", line)
            arg, pos = self.operand(toks, pos, line)
            args.append(arg)
        if not args:
            raise refuse("missing command after |", line)
        cmds.append(args)
        return Pipe(decl, assign, cmds, line)

    def operand(self, toks: list[_Tok], pos: int, line: int) -> tuple[Any, int]:
        tok = toks[pos]
        pos += 1
        if tok.kind == "field":
            node: Any = Field([tok.value[1:]])
        elif tok.kind == "dot":
            node = Dot()
        elif tok.kind == "var":
            node = Var(tok.value, [])
        elif tok.kind == "ident":
            node = Ident(tok.value)
        elif tok.kind in ("string", "number"):
            node = Lit(tok.value)
        elif tok.kind == "(":
            depth, end = 1, pos
            while end < len(toks) and depth:
                depth += {"(": 1, ")": -1}.get(toks[end].kind, 0)
                end += 1
            if depth:
                raise refuse("unclosed left paren", line)
            node, pos = Sub(self.pipeline(toks[pos:end - 1], line), []), end
        else:
            raise refuse(f"unexpected {tok.kind!r} in an operand", line)
        # A field right after an operand (no space) continues its chain: $x.A, (pipe).A, .A.B
        while pos < len(toks) and toks[pos].kind == "field" and not toks[pos].spaced:
            name = toks[pos].value[1:]
            if isinstance(node, (Field, Var, Sub)):
                node.chain.append(name)
            else:
                raise refuse(f"unexpected .{name} after {tok.value}", line)
            pos += 1
        return node, pos


def collect_operands(nodes: list[Any]) -> list[Any]:
    """Every operand of every pipeline, nested ones included, in order."""
    found: list[Any] = []

    def pipe(p: Pipe) -> None:
        for cmd in p.cmds:
            for a in cmd:
                found.append(a)
                if isinstance(a, Sub):
                    pipe(a.pipe)

    def walk(ns: list[Any]) -> None:
        for n in ns:
            if isinstance(n, Action):
                pipe(n.pipe)
            elif isinstance(n, Branch):
                for p, body in n.branches:
                    pipe(p)
                    walk(body)
                walk(n.else_)
            elif isinstance(n, Range):
                pipe(n.pipe)
                walk(n.body)
                walk(n.else_)

    walk(nodes)
    return found


def identifiers_of(operands: list[Any]) -> set[str]:
    """Ollama's Template.Vars: field and variable names, lowercased (it picks messages vs legacy)."""
    found: set[str] = set()
    for a in operands:
        if isinstance(a, Field):
            found.update(s.lower() for s in a.chain)
        elif isinstance(a, Var):
            found.update(s.lower() for s in [a.name, *a.chain])
    return found


def field_names_of(operands: list[Any]) -> set[str]:
    """Every Go field name the template mentions (decides which values the prologue prepares)."""
    return {name for a in operands if isinstance(a, (Field, Var, Sub)) for name in a.chain}


def up_to_response(nodes: list[Any]) -> list[Any]:
    """The template Ollama renders for the last legacy turn: everything after the first
    `{{ ... .Response ... }}` is cut (template.go, deleteNode), so the reply continues there."""
    cut = False

    def args(cmd: list[Any]) -> list[Any]:
        nonlocal cut
        kept = []
        for a in cmd:
            if cut:
                break
            if isinstance(a, Field) and "Response" in a.chain:
                cut = True
            elif isinstance(a, Sub):
                a = Sub(pipe(a.pipe) or a.pipe, a.chain)
            kept.append(a)
        return kept

    def pipe(p: Pipe) -> Pipe | None:
        cmds = []
        for cmd in p.cmds:
            kept = args(cmd)
            if not kept:
                return None
            cmds.append(kept)
        return Pipe(p.decl, p.assign, cmds, p.line)

    def walk(ns: list[Any]) -> list[Any]:
        out: list[Any] = []
        for n in ns:
            if cut:
                break
            if isinstance(n, Action):
                p = pipe(n.pipe)
                if p is not None:
                    out.append(Action(p))
            elif isinstance(n, Branch):
                branches = [(p, walk(body)) for p, body in n.branches]
                out.append(Branch(n.kind, branches, walk(n.else_), n.line))
            elif isinstance(n, Range):
                out.append(Range(n.pipe, walk(n.body), walk(n.else_), n.line))
            else:
                out.append(n)
        return out

    return walk(nodes)


