"""Go template nodes compiled to Jinja: Ollama's value types, the Jinja helpers, and `Compiler`."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

from .gotemplate_parse import Action, Branch, Dot, Field, Ident, Lit, Loop, Pipe, Range, Sub, Text, Var, refuse

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
THINK = {"Think": ("go.think", "bool"), "ThinkLevel": ("go.think_level", "string"),
          "IsThinkSet": ("go.think_set", "bool")}
# The root of a chat (Ollama's messages mode) and of one legacy turn (macro arguments).
_ROOTS: dict[str, dict[str, tuple[str, str]]] = {
    "Root": {"System": ("go.system", "string"), "Messages": ("go.msgs", "Messages"), "Tools": ("go.tools", "Tools"),
             "Response": ("''", "string"), **THINK},
    "LegacyRoot": {"System": ("system", "string"), "Prompt": ("prompt", "string"),
                   "Response": ("response", "string"), **THINK},
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
HELPERS: dict[str, tuple[tuple[str, ...], str]] = {
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


def helper_order(used: set[str]) -> list[str]:
    """Used helpers and those they call, each defined before its callers."""
    out: list[str] = []

    def add(name: str) -> None:
        if name in out:
            return
        for dep in HELPERS[name][0]:
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
class Compiler:
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
            if isinstance(n, Text):
                self.emit("{{- " + _jstr(n.text) + " }}")
            elif isinstance(n, Action):
                value = self.pipe(n.pipe, dot)
                if n.pipe.decl:
                    self.declare(n.pipe, value)
                else:
                    self.emit("{{- " + self.printed(value, n.pipe.line) + " }}")
            elif isinstance(n, Branch):
                self.branch(n, dot)
            elif isinstance(n, Range):
                self.range_(n, dot)
            elif isinstance(n, Loop):
                self.emit("{%- " + n.word + " %}")

    def declare(self, pipe: Pipe, value: _Val) -> str:
        name = pipe.decl[0]
        if pipe.assign:
            for scope in reversed(self.scopes):
                if name in scope:
                    target = scope[name].expr
                    break
            else:
                raise refuse(f"undefined variable {name}", pipe.line)
        else:
            target = "gv." + self.fresh("v")
            self.scopes[-1][name] = _Val(target, value.type)
        self.emit("{%- set " + target + " = " + value.expr + " %}")
        return target

    def branch(self, n: Branch, dot: _Val) -> None:
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

    def range_(self, n: Range, dot: _Val) -> None:
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
            raise refuse(f"range over {_DESCRIBE.get(value.type, 'a ' + value.type)}", n.line)
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

    def pipe(self, pipe: Pipe, dot: _Val) -> _Val:
        value: _Val | None = None
        for cmd in pipe.cmds:
            value = self.command(cmd, dot, value, pipe.line)
        assert value is not None
        return value

    def command(self, cmd: list[Any], dot: _Val, piped: _Val | None, line: int) -> _Val:
        first = cmd[0]
        if isinstance(first, Ident) and first.name not in ("true", "false", "nil"):
            args = [self.operand(a, dot, line) for a in cmd[1:]]
            return self.call(first.name, args + ([piped] if piped else []), line)
        if len(cmd) > 1 or piped is not None:
            raise refuse(f"{self.describe_node(first)} is not a function and cannot take arguments", line)
        return self.operand(first, dot, line)

    def describe_node(self, node: Any) -> str:
        if isinstance(node, Field):
            return "." + ".".join(node.chain)
        if isinstance(node, Var):
            return node.name + "".join("." + c for c in node.chain)
        return "a value"

    def operand(self, node: Any, dot: _Val, line: int) -> _Val:
        if isinstance(node, Dot):
            return dot
        if isinstance(node, Field):
            return self.chain(dot, node.chain, line)
        if isinstance(node, Var):
            for scope in reversed(self.scopes):
                if node.name in scope:
                    return self.chain(scope[node.name], node.chain, line)
            raise refuse(f"undefined variable {node.name}", line)
        if isinstance(node, Lit):
            if isinstance(node.value, str):
                return _Val(_jstr(node.value), "string")
            return _Val(repr(node.value), "int" if isinstance(node.value, int) else "float")
        if isinstance(node, Ident):
            if node.name in ("true", "false"):
                return _Val(node.name, "bool")
            if node.name == "nil":
                raise refuse("nil", line)
            return self.call(node.name, [], line)
        if isinstance(node, Sub):
            return self.chain(self.pipe(node.pipe, dot), node.chain, line)
        raise refuse("an unsupported operand", line)

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
                raise refuse(f".{name} is not a field of {_DESCRIBE[t]} (Ollama's fields: {known})", line)
            key, ft = _STRUCTS[t][name]
            return _Val(f"{_paren(e)}[{_jstr(key)}]", ft)
        if t == "ToolProperty":
            if name not in _PROPERTY:
                raise refuse(f".{name} is not a field of {_DESCRIBE[t]} (Ollama's fields: "
                              + ", ".join("." + f for f in _PROPERTY) + ")", line)
            template, ft = _PROPERTY[name]
            return _Val(template.format(e=_paren(e)), ft)
        if t in _MAPS:
            return _Val(f"({e} or {{}}).get({_jstr(name)})", _MAPS[t])
        if t == "any":
            return _Val(f"({_paren(e)} if {_paren(e)} is mapping else {{}}).get({_jstr(name)})", "any")
        if t == "novalue":
            return _NOVALUE
        raise refuse(f"can't evaluate field .{name} in {_DESCRIBE.get(t, 'a ' + t)}", line)

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
            raise refuse(f"printing {what} (Go would print its internal representation); print its fields instead",
                          line)
        raise refuse(f"json of {what}", line)

    def helper(self, name: str, *args: str) -> str:
        self.helpers.add(name)
        return f"{name}({', '.join(args)})"

    # functions

    def call(self, name: str, args: list[_Val], line: int) -> _Val:
        def need(low: int, high: int | None = None) -> None:
            if len(args) < low or (high is not None and len(args) > high):
                count = f"{low}" if high == low else f"{low} or more" if high is None else f"{low} to {high}"
                raise refuse(f"wrong number of arguments for {name}: want {count}, got {len(args)}", line)

        if name in _REFUSED_FUNCS:
            raise refuse(f"{_REFUSED_FUNCS[name]} is not supported", line)
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
                    raise refuse(f"index of {_DESCRIBE.get(value.type, 'a ' + value.type)}", line)
            return value
        if name == "slice":
            need(1, 3)
            value = args[0]
            if value.type not in _LISTS and value.type not in ("string", "any"):
                raise refuse(f"slice of {_DESCRIBE.get(value.type, 'a ' + value.type)}", line)
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
        raise refuse(f"the function {name!r} (Ollama's templates know eq, ne, lt, le, gt, ge, and, or, not, len, "
                      "index, slice, print, printf, println, json, currentDate, yesterdayDate)", line)

    def comparable(self, v: _Val, line: int) -> str:
        if v.type == "PropertyType":  # compare the type name, as a template author means it
            return self.helper("go_proptype", v.expr)
        if v.type not in ("string", "int", "float", "bool", "any", "novalue"):
            raise refuse(f"comparing {_DESCRIBE.get(v.type, 'a ' + v.type)}", line)
        return _paren(v.expr)

    def printf(self, args: list[_Val], line: int) -> _Val:
        fmt = args[0]
        literal = re.fullmatch(r"'((?:[^'\\]|\\.)*)'", fmt.expr)
        if fmt.type != "string" or not literal:
            raise refuse("printf with a format that is not a string constant", line)
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
                raise refuse(f"printf verb %{verb} (only %s, %v, %d and %% convert)" if verb not in "svd"
                              else "printf with too few arguments", line)
            parts.append(_paren(self.printed(rest.pop(0), line)))
        parts.append(_jstr(text[pos:]))
        if rest:
            raise refuse("printf with too many arguments", line)
        return _Val("(" + " ~ ".join(p for p in parts if p != "''") + ")" if any(p != "''" for p in parts) else "''",
                    "string")


