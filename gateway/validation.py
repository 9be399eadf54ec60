"""Reading request bodies: JSON in, a typed request (gateway/request_types*.py) out, or a 400 naming the field.

`decode` checks a body against its msgspec Struct and explains a failure from the Struct itself
("'options.top_k' must be an integer between 0 and 2147483647"), with the field's path as OpenAI's
`error.param`. Null means "not given". A field the Struct does not know is not refused: it is
listed, and the handler names it in the `X-Mlxserve-Ignored` response header (see `note_ignored`),
as the field policy in DESIGN.md and the README says.
"""

from __future__ import annotations

import functools
import json
import math
import re
from typing import Any, TypeVar

import msgspec
import msgspec.inspect as mi
from aiohttp import web

from mlxserve.services.common import logs
from mlxserve.services.common.errors import InvalidArgument, Unsupported

T = TypeVar("T")

IGNORED_HEADER = "X-Mlxserve-Ignored"
IGNORED = web.RequestKey("ignored_fields", list)  # set by handlers; app.py turns it into the header
MAX_IGNORED_IN_HEADER = 64
MAX_FIELD_NAME = 100
MAX_TOP_LOGPROBS = 20

log = logs.get_logger(component="validation")


class BadField(InvalidArgument):
    """A request field has the wrong type or value; `param` names it (OpenAI's `error.param`)."""

    def __init__(self, param: str, message: str) -> None:
        super().__init__(message)
        self.param = param


class UnsupportedField(Unsupported):
    """A request field asks for something this server cannot do, and ignoring it would change the answer."""

    def __init__(self, param: str, message: str | None = None) -> None:
        super().__init__(message or f"'{param}' is not supported yet")
        self.param = param


# -- the body ----------------------------------------------------------------------------------------------


def _finite(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise ValueError(f"number out of range: {text[:40]}")
    return value


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a JSON number")


# Deepest JSON nesting taken: far past any real request (a JSON schema in `format` or a tool's parameters
# nests a few levels a property), far below where Python's recursion (the parser's, then every walk of
# the value here, in msgspec and in the worker's templates) gives out at about 1,000.
MAX_JSON_DEPTH = 128


class JsonTooDeep(ValueError):
    """The JSON nests arrays and objects more than MAX_JSON_DEPTH deep."""

    def __init__(self) -> None:
        super().__init__(f"it nests arrays and objects more than {MAX_JSON_DEPTH} levels deep")


def loads(raw: bytes | str) -> Any:
    """JSON with finite numbers only (no NaN, Infinity or 1e999: no sampler or protobuf can carry them), nested
    at most MAX_JSON_DEPTH deep (JsonTooDeep, a ValueError, past that)."""
    try:
        value = json.loads(raw, parse_float=_finite, parse_constant=_no_constant)
    except RecursionError:  # the parser's own recursion gave out first
        raise JsonTooDeep() from None
    # Only a text with that many brackets can nest that deep; counting them is C-fast, walking is not.
    opened = raw.count(b"[" if isinstance(raw, bytes) else "[") + raw.count(b"{" if isinstance(raw, bytes) else "{")
    if opened > MAX_JSON_DEPTH:
        check_depth(value)
    return value


def check_depth(value: Any) -> None:
    """Raise JsonTooDeep if `value` nests lists and dicts more than MAX_JSON_DEPTH deep (walked without recursion)."""
    stack = [(value, 1)] if isinstance(value, (dict, list)) else []
    while stack:
        item, depth = stack.pop()
        if depth > MAX_JSON_DEPTH:
            raise JsonTooDeep()
        children = item.values() if isinstance(item, dict) else item
        stack.extend((child, depth + 1) for child in children if isinstance(child, (dict, list)))


async def read_json_object(request: web.Request) -> dict[str, Any]:
    """The request body as a JSON object; 400 when it is empty, malformed or not an object."""
    raw = await request.read()  # aiohttp raises 413 past client_max_size
    if not raw.strip():
        raise InvalidArgument("the request body is empty; expected a JSON object")
    try:
        body = loads(raw)
    except (ValueError, UnicodeDecodeError) as e:
        raise InvalidArgument(f"invalid JSON in the request body: {e}") from None
    if not isinstance(body, dict):
        raise InvalidArgument("the request body must be a JSON object")
    if _SURROGATE_ESCAPE.search(raw):  # only escapes can smuggle lone surrogates past the UTF-8 decoder
        _refuse_lone_surrogates(body, "")
    return body


_SURROGATE_ESCAPE = re.compile(rb"\\u[dD][89a-fA-F]")


def _refuse_lone_surrogates(value: Any, where: str) -> None:
    """400 for a string holding half of a UTF-16 pair ("\\ud800"): no protobuf, tokenizer or file name can carry it."""
    if isinstance(value, str):
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            raise BadField(where or "body", f"'{where or 'body'}' holds an unpaired UTF-16 surrogate escape; "
                                            "send valid Unicode text") from None
    elif isinstance(value, dict):
        for key, item in value.items():
            _refuse_lone_surrogates(key, where or "body")
            _refuse_lone_surrogates(item, f"{where}.{key}" if where else key)
    elif isinstance(value, list):
        for i, item in enumerate(value):
            _refuse_lone_surrogates(item, f"{where}[{i}]")


# -- decoding into a Struct ------------------------------------------------------------------------------


def decode(data: dict[str, Any], cls: type[T]) -> tuple[T, list[str]]:
    """`data` (a parsed JSON object) as a `cls`, and the paths of the fields it had that `cls` does not know.

    A wrong type or a value out of bounds is a BadField naming the field. JSON has one number type,
    so an integral float (3.0) is taken where an integer is expected, as Ollama does.
    """
    info = _info(cls)
    ignored: list[str] = []
    prepared = _prepare(info, data, "", ignored)
    if isinstance(info, mi.StructType):  # a missing required field first, as it is the likeliest mistake
        for f in info.fields:
            if f.required and prepared.get(f.encode_name) is None:
                raise BadField(f.encode_name, f"'{f.encode_name}' is required")
    try:
        return msgspec.convert(prepared, cls), ignored
    except msgspec.ValidationError as e:
        raise _explain(info, prepared, str(e)) from None


@functools.lru_cache(maxsize=None)
def _info(cls: type) -> mi.Type:
    return mi.type_info(cls)


def _bare(t: mi.Type) -> mi.Type:
    while isinstance(t, mi.Metadata):
        t = t.type
    return t


def _join(path: str, key: str) -> str:
    return f"{path}.{key}" if path else key


def _members(t: mi.Type) -> list[mi.Type]:
    """A union's member types, nested unions (an Annotated union inside an optional) flattened."""
    t = _bare(t)
    if isinstance(t, mi.UnionType):
        return [m for member in t.types for m in _members(member)]
    return [t]


def _member(t: mi.Type, value: Any) -> mi.Type | None:
    """The type a union member gives `value`, by the value's JSON kind (and a tagged union's tag)."""
    t = _bare(t)
    if not isinstance(t, mi.UnionType):
        return t
    members = _members(t)
    if isinstance(value, dict):
        for m in members:
            if isinstance(m, mi.StructType) and m.tag_field is not None and value.get(m.tag_field) == m.tag:
                return m
        return next((m for m in members if isinstance(m, (mi.StructType, mi.DictType, mi.AnyType))), None)
    if isinstance(value, list):
        return next((m for m in members if isinstance(m, (mi.ListType, mi.AnyType))), None)
    if isinstance(value, float) and value.is_integer() and not any(isinstance(m, mi.FloatType) for m in members):
        return next((m for m in members if isinstance(m, mi.IntType)), None)
    return None  # a scalar: nothing inside it to prepare


def _prepare(t: mi.Type, value: Any, path: str, ignored: list[str]) -> Any:
    """`value` with unknown object keys dropped (their paths listed) and integral floats made ints where ints are wanted."""
    t = _member(t, value)
    if isinstance(t, mi.StructType) and isinstance(value, dict):
        fields = {f.encode_name: f for f in t.fields}
        out: dict[str, Any] = {}
        for key, item in value.items():
            field = fields.get(key)
            if field is None:
                if item is not None:  # null asks for nothing: not worth a mention
                    ignored.append(_join(path, key))
                continue
            out[key] = _prepare(field.type, item, _join(path, key), ignored)
        return out
    if isinstance(t, mi.ListType) and isinstance(value, list):
        return [_prepare(t.item_type, item, f"{path}[{i}]", ignored) for i, item in enumerate(value)]
    if isinstance(t, mi.DictType) and isinstance(value, dict):
        return {k: _prepare(t.value_type, v, _join(path, k), ignored) for k, v in value.items()}
    if isinstance(t, mi.IntType) and isinstance(value, float) and value.is_integer():
        return int(value)
    return value


_AT = re.compile(r"^(?P<what>.*?)(?: - at (?P<key>`key` in )?`\$(?P<path>[^`]*)`)?$", re.S)
_MISSING = re.compile(r"Object missing required field `(?P<field>[^`]+)`")
_GOT = re.compile(r"Invalid (?:enum )?value (?P<value>.+)$")
_SEGMENT = re.compile(r"\.([^.\[]+)|\[(\d+|\.\.\.)\]")


def _explain(info: mi.Type, data: Any, message: str) -> BadField:
    """msgspec's error as a BadField whose text comes from the expected type at the failing path."""
    m = _AT.match(message)
    what, path, is_key = (m["what"], m["path"] or "", m["key"] is not None) if m else (message, "", False)
    param = path.lstrip(".").replace("[...]", "")
    missing = _MISSING.match(what)
    if missing:
        name = _join(param, missing["field"])
        return BadField(name, f"'{name}' is required")
    t, value = _type_at(info, data, path)
    if not param:
        return BadField("body", f"the request body is invalid: {what}")
    container = _member(t, value)
    if is_key and isinstance(container, mi.DictType):
        return BadField(param, f"'{param}' keys must be {describe(container.key_type)}")
    if path.endswith("[...]"):
        return BadField(param, f"'{param}' values must be {describe(t)}")
    got = _GOT.match(what)
    suffix = f"; got {got['value']}" if got else ""
    return BadField(param, f"'{param}' must be {describe(t)}{suffix}")


def _type_at(info: mi.Type, data: Any, path: str) -> tuple[mi.Type, Any]:
    """The type expected at `path` ("$.a.b[0]", "$.a[...]" for any value of a dict), and the value there."""
    t: mi.Type = info
    value = data
    for name, index in _SEGMENT.findall(path):
        holder = _member(t, value) or _bare(t)
        if name and isinstance(holder, mi.StructType):
            field = next((f for f in holder.fields if f.encode_name == name), None)
            if field is None:
                break
            t, value = field.type, value.get(name) if isinstance(value, dict) else None
        elif (name or index == "...") and isinstance(holder, mi.DictType):
            t, value = holder.value_type, value.get(name) if name and isinstance(value, dict) else None
        elif index.isdigit() and isinstance(holder, mi.ListType):
            t = holder.item_type
            value = value[int(index)] if isinstance(value, list) and int(index) < len(value) else None
        else:
            break
    return t, value


_PLURAL = {mi.StrType: "strings", mi.IntType: "integers", mi.FloatType: "numbers", mi.BoolType: "booleans",
           mi.StructType: "objects", mi.DictType: "objects"}


def _number(value: float) -> str:
    return f"{value:g}" if isinstance(value, float) else str(value)


def _bounds(t: mi.IntType | mi.FloatType) -> str:
    low = (_number(t.ge), False) if t.ge is not None else (_number(t.gt), True) if t.gt is not None else None
    high = (_number(t.le), False) if t.le is not None else (_number(t.lt), True) if t.lt is not None else None
    if low and high and not low[1] and not high[1]:
        return f" between {low[0]} and {high[0]}"
    parts = []
    if low:
        parts.append(f"greater than {low[0]}" if low[1] else f"at least {low[0]}")
    if high:
        parts.append(f"less than {high[0]}" if high[1] else f"at most {high[0]}")
    return (" " + " and ".join(parts)) if parts else ""


def describe(t: mi.Type) -> str:
    """What a value of type `t` must be, in words: "an integer between 0 and 20", "one of \"auto\", \"none\""."""
    t = _bare(t)
    if isinstance(t, mi.UnionType):
        words = [describe(m) for m in _members(t) if not isinstance(m, mi.NoneType)]
        return " or ".join(dict.fromkeys(words))
    if isinstance(t, mi.LiteralType):
        return "one of " + ", ".join(json.dumps(v) for v in t.values)
    if isinstance(t, mi.IntType):
        return "an integer" + _bounds(t)
    if isinstance(t, mi.FloatType):
        return "a number" + _bounds(t)
    if isinstance(t, mi.BoolType):
        return "true or false"
    if isinstance(t, mi.StrType):
        if t.pattern:
            return f"a string matching {t.pattern}"
        return "a non-empty string" if t.min_length else "a string"
    if isinstance(t, mi.ListType):
        item = _PLURAL.get(type(_bare(t.item_type)))
        text = "an array" + (f" of {item}" if item else "")
        return ("a non-empty " + text[3:]) if t.min_length else text
    if isinstance(t, (mi.StructType, mi.DictType)):
        return "an object"
    return "a JSON value"


# -- fields that are ignored -----------------------------------------------------------------------------


def note_ignored(request: web.Request, fields: list[str]) -> None:
    """Name the fields this request had that the server ignores: the X-Mlxserve-Ignored header and a debug line."""
    if not fields:
        return
    fields = list(dict.fromkeys(fields))
    request[IGNORED] = fields
    log.debug("fields_ignored", path=request.path, fields=fields)


_NOT_HEADER_SAFE = re.compile(r"[^\x21-\x2b\x2d-\x7e]")  # printable ASCII but the comma that separates the names


def ignored_header(fields: list[str]) -> str:
    """The header's value: the fields, comma-separated (a very long list is cut, saying how many are left out).

    The names come from the client's JSON keys, so anything a header cannot carry (a newline, a
    comma, non-ASCII) is shown as "?", and each name is cut to MAX_FIELD_NAME characters.
    """
    shown = [_NOT_HEADER_SAFE.sub("?", f[:MAX_FIELD_NAME]) for f in fields[:MAX_IGNORED_IN_HEADER]]
    extra = len(fields) - len(shown)
    return ",".join(shown) + (f",...(+{extra})" if extra else "")


def drop_under(fields: list[str], prefix: str) -> list[str]:
    """`fields` without those inside `prefix` (an item dropped as a whole is named once)."""
    return [f for f in fields if not (f.startswith(prefix + ".") or f.startswith(prefix + "["))]


# -- shared field readers ----------------------------------------------------------------------------------


def model_name(model: str) -> str:
    """The requested model's name; a blank one is a 400 (the store explains any other bad name)."""
    if not model.strip():
        raise BadField("model", "'model' is required")
    return model


_DURATION_UNITS = {"ns": 1e-9, "us": 1e-6, "µs": 1e-6, "μs": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0}
_DURATION_PART = re.compile(r"(\d+\.?\d*|\.\d+)(ns|us|µs|μs|ms|s|m|h)")
_NUMBER = re.compile(r"[+-]?(\d+\.?\d*|\.\d+)")


def parse_keep_alive(value: Any, field: str = "keep_alive") -> float | None:
    """Ollama's keep_alive in seconds: a Go duration ("5m", "1h30m", "-1m") or a number of seconds.

    None means "the server's default"; any negative duration means forever (returned as -1.0);
    0 means unload as soon as the model is idle.
    """
    if value is None:
        return None
    if isinstance(value, bool):
        raise BadField(field, f"'{field}' must be a duration like \"5m\" or a number of seconds")
    if isinstance(value, (int, float)):
        if not math.isfinite(value):
            raise BadField(field, f"'{field}' must be a finite number of seconds")
        return -1.0 if value < 0 else float(value)
    if not isinstance(value, str):
        raise BadField(field, f"'{field}' must be a duration like \"5m\" or a number of seconds")
    text = value.strip()
    if not text:
        return None
    if _NUMBER.fullmatch(text):  # "300": plain seconds, as many clients send it
        seconds = float(text)
        return -1.0 if seconds < 0 else seconds
    sign = -1.0 if text.startswith("-") else 1.0
    body = text.lstrip("+-")
    pos, total = 0, 0.0
    while pos < len(body):
        m = _DURATION_PART.match(body, pos)
        if not m:
            raise BadField(field, f"'{field}': invalid duration {value!r} (use e.g. \"10s\", \"5m\", \"1h30m\")")
        total += float(m.group(1)) * _DURATION_UNITS[m.group(2)]
        pos = m.end()
    if not body:
        raise BadField(field, f"'{field}': invalid duration {value!r}")
    return -1.0 if sign < 0 and total > 0 else total


def schema_text(schema: dict[str, Any]) -> str:
    """A JSON schema as the text SubmitRequest.format carries (compact, key order kept)."""
    return json.dumps(schema, ensure_ascii=False, separators=(",", ":"))


def parse_ollama_format(value: str | dict[str, Any] | None, where: str = "format") -> str:
    """Ollama's `format`: "json", a JSON-schema object, or nothing → SubmitRequest.format."""
    if value is None or value == "":
        return ""
    if value == "json":
        return "json"
    if isinstance(value, dict):
        return schema_text(value) if value else "json"
    raise BadField(where, f"'{where}' must be \"json\" or a JSON schema object")


def check_top_logprobs(top: int | None, logprobs: bool, where: str = "top_logprobs") -> int:
    """`top_logprobs` (bounded by its type), which needs `logprobs` on."""
    if top and not logprobs:
        raise BadField(where, f"'{where}' needs 'logprobs' set to true")
    return top or 0


def parse_arguments(value: Any, where: str) -> str:
    """Tool-call arguments (an object, or OpenAI's JSON text holding one) → compact JSON text of the object."""
    if value is None:
        return "{}"
    if isinstance(value, str):
        try:
            value = loads(value) if value.strip() else {}
        except ValueError as e:
            raise BadField(where, f"'{where}' must be a JSON object (as text): {e}") from None
    if not isinstance(value, dict):
        raise BadField(where, f"'{where}' must be a JSON object")
    return json.dumps(value, ensure_ascii=False, separators=(",", ":"))


def stop_list(value: str | list[str] | None) -> list[str]:
    """Stop sequences from a string or a list, without empty ones (which would stop at once)."""
    if value is None:
        return []
    return [s for s in ([value] if isinstance(value, str) else value) if s]
