"""Structured outputs: constrained decoding with llguidance as an mlx-lm logits processor.

`build_constraint(format, tokenizer)` turns a request's `format` ("" / "json" / a JSON-schema
text) into a `Constraint`, one per request. The runner adds it to the request's logits processors
(`BatchGenerator.insert(logits_processors=[[..., constraint]])`). At every decode step mlx-lm calls
it with the tokens so far (the prompt, then each sampled token) and the row's logits; it feeds the
newest sampled token to its grammar matcher and sets every token the grammar forbids to -inf. Once
the JSON is complete the grammar allows only EOS, so the request ends with done_reason "stop" and
the text always parses (and validates), whatever the model's weights.

A schema's objects are closed (`close_objects`): one that lists properties and leaves
`additionalProperties` unset takes no other keys, as in Ollama. `compile_grammar` turns any
llguidance grammar into a `Constraint`; tool_calls.py uses it to force tool calls.
"""

from __future__ import annotations

import json
import threading
import weakref
from typing import Any

import llguidance
import mlx.core as mx
import numpy as np

from mlxserve.services.common.errors import InvalidArgument, Unsupported

# Ollama's format:"json" and OpenAI's response_format json_object both mean "one JSON object".
ANY_JSON_OBJECT = '{"type": "object"}'

# Whitespace between JSON tokens is bounded as llama.cpp's json grammar bounds it (at most one
# line break, then indentation): with free whitespace a weak model can emit blank lines forever
# and never close the object. A schema may still override this with its own "x-guidance".
_JSON_DEFAULTS: dict[str, Any] = {"whitespace_pattern": r"[\x20\x09]{0,40}(\x0A[\x20\x09]{0,40})?"}

_tokenizer_cache: "weakref.WeakKeyDictionary[Any, llguidance.LLTokenizer]" = weakref.WeakKeyDictionary()
_tokenizer_lock = threading.Lock()


def llg_tokenizer(tokenizer: Any) -> llguidance.LLTokenizer:
    """The llguidance view of an mlx-lm `TokenizerWrapper`, built once per tokenizer (~1 s for 150k vocabs).

    EOS is every id mlx-lm stops on, so a finished grammar ends the request where mlx-lm looks.
    """
    hf = getattr(tokenizer, "_tokenizer", tokenizer)
    with _tokenizer_lock:
        cached = _tokenizer_cache.get(hf)
        if cached is not None:
            return cached
        backend = getattr(hf, "backend_tokenizer", None)
        if backend is None:
            raise Unsupported("structured outputs (format) need a model with a fast (tokenizer.json) tokenizer")
        eos = sorted(getattr(tokenizer, "eos_token_ids", None) or [hf.eos_token_id])
        # Serialize a copy without padding/truncation: llguidance rebuilds the Rust tokenizer from it.
        data = json.loads(backend.to_str())
        data["padding"] = None
        data["truncation"] = None
        built = llguidance.LLTokenizer(json.dumps(data), eos_token=eos)
        _tokenizer_cache[hf] = built
        return built


def grammar_for_format(format: str) -> str:
    """The llguidance grammar for a request's `format`; InvalidArgument says what is wrong with it.

    A schema's objects are closed (see `close_objects`), as Ollama closes them.
    """
    if format == "json":
        schema_text = ANY_JSON_OBJECT
    else:
        try:
            schema = json.loads(format)
        except ValueError as e:
            raise InvalidArgument(f'format must be "json" or a JSON schema; it is not valid JSON ({e})') from None
        if not isinstance(schema, dict):
            raise InvalidArgument('format must be "json" or a JSON schema object')
        schema_text = json.dumps(close_objects(schema))
    try:
        return llguidance.LLMatcher.grammar_from_json_schema(schema_text, defaults=_JSON_DEFAULTS)
    except ValueError as e:
        raise InvalidArgument(f"invalid JSON schema in format: {e}") from None


# Keywords whose value is one subschema, a list of them, or a map of name -> subschema.
_ONE = ("additionalProperties", "items", "additionalItems", "contains", "not", "if", "then", "else",
        "propertyNames", "unevaluatedProperties", "unevaluatedItems")
_MANY = ("anyOf", "oneOf", "prefixItems")
_NAMED = ("properties", "patternProperties", "$defs", "definitions", "dependentSchemas")


def close_objects(schema: Any) -> Any:
    """A copy of `schema` in which an object schema that lists `properties` and says nothing of
    `additionalProperties` forbids other keys, at every depth (properties, items, anyOf, $defs...).

    Pydantic's `model_json_schema()` leaves additionalProperties out, and a model would otherwise
    add keys until it is cut off; Ollama (llama.cpp's schema converter) treats such objects as
    closed too. An explicit `additionalProperties` (true, or a schema) is kept, and so is an
    object without `properties` (`{"type": "object"}`: any object). The branches of an `allOf`
    that combines several objects stay open, or no object could satisfy them all; the
    definitions such branches refer to stay open for the same reason.
    """
    keep_open = set()
    _find_combined_refs(schema, keep_open)
    return _close(schema, keep_open, close_here=True)


def _is_open_object(schema: dict) -> bool:
    kind = schema.get("type")
    is_object = kind is None or kind == "object" or (isinstance(kind, list) and "object" in kind)
    return (is_object and isinstance(schema.get("properties"), dict)
            and "additionalProperties" not in schema and "unevaluatedProperties" not in schema)


def _combines(schema: dict) -> bool:
    """An allOf whose parts are merged with each other (or with the schema's own properties)."""
    parts = schema.get("allOf")
    return isinstance(parts, list) and (len(parts) > 1 or "properties" in schema)


def _find_combined_refs(schema: Any, refs: set[str]) -> None:
    if isinstance(schema, list):
        for item in schema:
            _find_combined_refs(item, refs)
    elif isinstance(schema, dict):
        if _combines(schema):
            refs.update(p["$ref"] for p in schema["allOf"] if isinstance(p, dict) and isinstance(p.get("$ref"), str))
        for key, value in schema.items():
            if key not in ("enum", "const", "default", "examples"):
                _find_combined_refs(value, refs)


def _close(schema: Any, keep_open: set[str], *, close_here: bool, pointer: str = "#") -> Any:
    if not isinstance(schema, dict):
        return schema
    out = dict(schema)
    if close_here and pointer not in keep_open and _is_open_object(schema):
        out["additionalProperties"] = False
    for key in _ONE:
        if isinstance(schema.get(key), dict):
            out[key] = _close(schema[key], keep_open, close_here=True, pointer=f"{pointer}/{key}")
        elif key == "items" and isinstance(schema.get(key), list):  # draft-7 tuple items
            out[key] = [_close(s, keep_open, close_here=True) for s in schema[key]]
    for key in _MANY:
        if isinstance(schema.get(key), list):
            out[key] = [_close(s, keep_open, close_here=True) for s in schema[key]]
    if isinstance(schema.get("allOf"), list):
        merged = _combines(schema)
        out["allOf"] = [_close(s, keep_open, close_here=not merged) for s in schema["allOf"]]
    for key in _NAMED:
        if isinstance(schema.get(key), dict):
            out[key] = {name: _close(s, keep_open, close_here=True, pointer=f"{pointer}/{key}/{name}")
                        for name, s in schema[key].items()}
    return out


def compile_grammar(grammar: str, tokenizer: Any, what: str) -> "Constraint":
    """A fresh `Constraint` for an llguidance grammar; InvalidArgument names `what` was invalid."""
    lltok = llg_tokenizer(tokenizer)
    is_error, messages = llguidance.LLMatcher.validate_grammar_with_warnings(grammar, lltok)
    if is_error:
        raise InvalidArgument(f"invalid {what}: {'; '.join(messages)}")
    matcher = llguidance.LLMatcher(lltok, grammar, log_level=0)
    if matcher.is_error():
        raise InvalidArgument(f"invalid {what}: {matcher.get_error()}")
    return Constraint(matcher, lltok)


class Constraint:
    """One request's grammar state, called by mlx-lm as a logits processor: `constraint(tokens, logits)`.

    `tokens` is the row's whole context (1-D): the first call sees the prompt alone, and each
    later call sees one more sampled token at the end. The constraint remembers where the prompt
    ended and how many generated tokens its matcher has consumed, so it is right whether the
    caller passes the prompt or not, and whether it calls once per step or skips a step.
    """

    def __init__(self, matcher: llguidance.LLMatcher, lltok: llguidance.LLTokenizer) -> None:
        self._matcher = matcher
        self.eos_token_ids: tuple[int, ...] = tuple(lltok.eos_tokens)
        self._prompt_len: int | None = None
        self._consumed = 0
        self.error: str | None = None

    @property
    def generated(self) -> int:
        """How many sampled tokens the matcher has consumed."""
        return self._consumed

    def is_accepting(self) -> bool:
        """True when the output so far is complete: ending now yields valid JSON."""
        return self._matcher.is_accepting()

    def is_done(self) -> bool:
        """True when the grammar allows nothing but EOS (the object is closed)."""
        return self._matcher.is_stopped()

    def advance(self, tokens: list[int]) -> None:
        """Feed sampled tokens to the matcher. A token the grammar refuses (only possible if
        something after this processor changed the logits) puts it in error: EOS is then forced."""
        for t in tokens:
            self._consumed += 1
            if self.error is not None:
                continue
            # The closing EOS may arrive after the grammar stopped; it is the ending, not an error.
            if self._matcher.is_stopped() and t in self.eos_token_ids:
                continue
            if not self._matcher.consume_token(t):
                self.error = self._matcher.get_error() or f"token {t} is not allowed by the format"

    def allowed(self, width: int) -> mx.array:
        """Boolean mask (width,) of the tokens the grammar allows next."""
        if self.error is not None:  # end the request at once rather than emit invalid text
            eos_only = np.zeros(width, dtype=np.bool_)
            eos_only[[t for t in self.eos_token_ids if t < width]] = True
            return mx.array(eos_only)
        bits = np.unpackbits(np.frombuffer(self._matcher.compute_bitmask(), dtype=np.uint8), bitorder="little")
        if bits.size >= width:
            bits = bits[:width]
        else:  # the model's head is wider than the tokenizer (padded vocab): the extra ids are never text
            bits = np.concatenate([bits, np.zeros(width - bits.size, dtype=np.uint8)])
        return mx.array(bits.view(np.bool_))

    def __call__(self, tokens: mx.array, logits: mx.array) -> mx.array:
        n = int(tokens.size)
        if self._prompt_len is None:
            self._prompt_len = n
        else:
            start = self._prompt_len + self._consumed
            if n > start:
                self.advance(tokens[start:].tolist())
        return mx.where(self.allowed(logits.shape[-1]), logits, mx.array(-mx.inf, dtype=logits.dtype))


def build_constraint(format: str, tokenizer: Any) -> Constraint | None:
    """A fresh `Constraint` for one request, or None when `format` is empty.

    `format` is "json" (any JSON object) or a JSON-schema text; a schema that llguidance cannot
    compile raises InvalidArgument naming the problem (e.g. "Unknown format: weird").
    """
    if not format:
        return None
    return compile_grammar(grammar_for_format(format), tokenizer, "JSON schema in format")
