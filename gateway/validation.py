"""Reading request bodies: typed field access that fails with a 400 naming the field.

Both API dialects parse through `Body`, so a wrong type reads the same everywhere
("'options.temperature' must be a number"), null means "not given", and a field nobody
consumed is refused instead of silently ignored.
"""

from __future__ import annotations

import json
import math
import re
from typing import Any, Callable, Iterable

from aiohttp import web

from mlxserve.services.common.errors import InvalidArgument, Unsupported


class BadField(InvalidArgument):
    """A request field has the wrong type or value; `param` names it (OpenAI's `error.param`)."""

    def __init__(self, param: str, message: str) -> None:
        super().__init__(message)
        self.param = param


class UnsupportedField(Unsupported):
    """A request field asks for something this server cannot do yet."""

    def __init__(self, param: str, message: str | None = None) -> None:
        super().__init__(message or f"'{param}' is not supported yet")
        self.param = param


async def read_json_object(request: web.Request) -> dict[str, Any]:
    """The request body as a JSON object; 400 when it is empty, malformed or not an object."""
    raw = await request.read()  # aiohttp raises 413 past client_max_size
    if not raw.strip():
        raise InvalidArgument("the request body is empty; expected a JSON object")
    try:
        body = json.loads(raw)
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


def is_neutral(value: Any) -> bool:
    """True for values that ask for nothing (null, false, "", [], {}, 0): safe to accept unhonoured."""
    if value is None or value is False:
        return True
    if isinstance(value, (str, list, dict)) and not value:
        return True
    return isinstance(value, (int, float)) and not isinstance(value, bool) and value == 0


class Body:
    """A JSON object being parsed; remembers which keys were read so leftovers can be refused."""

    def __init__(self, data: dict[str, Any], prefix: str = "") -> None:
        self.data = data
        self.prefix = prefix
        self.seen: set[str] = set()

    def name(self, key: str) -> str:
        return f"{self.prefix}{key}"

    def raw(self, key: str) -> Any:
        self.seen.add(key)
        return self.data.get(key)

    def str(self, key: str, *, required: bool = False, default: str | None = None) -> str | None:
        value = self.raw(key)
        if value is None:
            if required:
                raise BadField(self.name(key), f"'{self.name(key)}' is required")
            return default
        if not isinstance(value, str):
            raise BadField(self.name(key), f"'{self.name(key)}' must be a string")
        return value

    def bool(self, key: str, *, default: bool | None = None) -> bool | None:
        value = self.raw(key)
        if value is None:
            return default
        if not isinstance(value, bool):
            raise BadField(self.name(key), f"'{self.name(key)}' must be true or false")
        return value

    def int(self, key: str, *, minimum: int | None = None, bits: int = 32) -> int | None:
        """An integer that fits a signed `bits`-bit field: what the protobuf field it ends up in can hold."""
        value = self.raw(key)
        if value is None:
            return None
        # JSON has one number type; accept 3.0 as 3 (as Ollama does) but never true/false.
        if isinstance(value, bool) or not isinstance(value, (int, float)) or (isinstance(value, float) and not value.is_integer()):
            raise BadField(self.name(key), f"'{self.name(key)}' must be an integer")
        value = int(value)
        if minimum is not None and value < minimum:
            raise BadField(self.name(key), f"'{self.name(key)}' must be at least {minimum}")
        low, high = -(1 << (bits - 1)), (1 << (bits - 1)) - 1
        if not low <= value <= high:
            raise BadField(self.name(key), f"'{self.name(key)}' must be between {max(low, minimum or low)} and {high}")
        return value

    def number(self, key: str, *, minimum: float | None = None, maximum: float | None = None) -> float | None:
        value = self.raw(key)
        if value is None:
            return None
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            raise BadField(self.name(key), f"'{self.name(key)}' must be a number")
        value = float(value)
        if (minimum is not None and value < minimum) or (maximum is not None and value > maximum):
            bounds = f"between {minimum:g} and {maximum:g}" if minimum is not None and maximum is not None else (
                f"at least {minimum:g}" if minimum is not None else f"at most {maximum:g}")
            raise BadField(self.name(key), f"'{self.name(key)}' must be {bounds}")
        return value

    def list(self, key: str) -> list[Any] | None:
        value = self.raw(key)
        if value is None:
            return None
        if not isinstance(value, list):
            raise BadField(self.name(key), f"'{self.name(key)}' must be an array")
        return value

    def object(self, key: str) -> dict[str, Any] | None:
        value = self.raw(key)
        if value is None:
            return None
        if not isinstance(value, dict):
            raise BadField(self.name(key), f"'{self.name(key)}' must be an object")
        return value

    def stop(self, key: str) -> list[str]:
        """Stop sequences: a string or an array of strings."""
        value = self.raw(key)
        if value is None:
            return []
        if isinstance(value, str):
            return [value] if value else []
        if not isinstance(value, list) or not all(isinstance(s, str) for s in value):
            raise BadField(self.name(key), f"'{self.name(key)}' must be a string or an array of strings")
        return [s for s in value if s]

    def refuse(self, keys: Iterable[str], *, allowed: Callable[[Any], bool] = is_neutral) -> None:
        """Refuse each present key whose value asks for something (per `allowed`)."""
        for key in keys:
            value = self.raw(key)
            if not allowed(value):
                raise UnsupportedField(self.name(key))

    def finish(self) -> None:
        """Refuse any key that no parser read: never silently ignore an input."""
        for key, value in self.data.items():
            if key not in self.seen and value is not None:
                raise UnsupportedField(self.name(key), f"unsupported field '{self.name(key)}'")


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


MAX_TOP_LOGPROBS = 20


def schema_text(schema: dict[str, Any]) -> str:
    """A JSON schema as the text SubmitRequest.format carries (compact, key order kept)."""
    return json.dumps(schema, ensure_ascii=False, separators=(",", ":"))


def parse_ollama_format(body: Body, key: str = "format") -> str:
    """Ollama's `format`: "json", a JSON-schema object, or nothing → SubmitRequest.format."""
    value = body.raw(key)
    if value is None or value == "":
        return ""
    if value == "json":
        return "json"
    if isinstance(value, dict):
        return schema_text(value) if value else "json"
    raise BadField(body.name(key), f"'{body.name(key)}' must be \"json\" or a JSON schema object")


def parse_tools(body: Body, key: str = "tools") -> str:
    """Tool definitions ({"type": "function", "function": {"name", ...}}) → JSON text for the template."""
    tools = body.list(key)
    if not tools:
        return ""
    for i, tool in enumerate(tools):
        where = f"{body.name(key)}[{i}]"
        if not isinstance(tool, dict):
            raise BadField(where, f"'{where}' must be an object")
        kind = tool.get("type", "function")
        if kind != "function":
            raise UnsupportedField(f"{where}.type", f"tools of type {kind!r} are not supported ('{where}.type'); use \"function\"")
        fn = tool.get("function")
        if not isinstance(fn, dict) or not isinstance(fn.get("name"), str) or not fn["name"]:
            raise BadField(f"{where}.function.name", f"'{where}.function.name' must be a non-empty string")
    return json.dumps(tools, ensure_ascii=False, separators=(",", ":"))


def parse_top_logprobs(body: Body, logprobs: bool, key: str = "top_logprobs") -> int:
    """`top_logprobs` (0..20), which needs `logprobs` on."""
    value = body.int(key, minimum=0) or 0
    if value > MAX_TOP_LOGPROBS:
        raise BadField(body.name(key), f"'{body.name(key)}' must be at most {MAX_TOP_LOGPROBS}")
    if value and not logprobs:
        raise BadField(body.name(key), f"'{body.name(key)}' needs 'logprobs' set to true")
    return value


def parse_arguments(value: Any, where: str) -> dict[str, Any]:
    """Tool-call arguments: an object, or (OpenAI) a JSON string holding one."""
    if isinstance(value, str):
        try:
            value = json.loads(value) if value.strip() else {}
        except ValueError:
            raise BadField(where, f"'{where}' must be a JSON object (as text)") from None
    if not isinstance(value, dict):
        raise BadField(where, f"'{where}' must be a JSON object")
    return value


def parse_embed_input(value: Any, where: str, *, required: bool = True) -> list[str]:
    """Embedding input: a string or an array of strings (token arrays are refused)."""
    if value is None:
        if required:
            raise BadField(where, f"'{where}' is required")
        return []
    if isinstance(value, str):
        return [value]
    if isinstance(value, list) and all(isinstance(v, str) for v in value):
        return list(value)
    if isinstance(value, list) and value and all(isinstance(v, (int, list)) and not isinstance(v, bool) for v in value):
        raise UnsupportedField(where, f"'{where}' as token ids is not supported; send text")
    raise BadField(where, f"'{where}' must be a string or an array of strings")
