"""Sampling fields of every dialect → SamplingOptions, the one translation.

Ollama's `options` are the base; the OpenAI routes take the same object as the `options` extension
and their own top-level fields (temperature, max_tokens, top_k, repetition_penalty, ...), which win.
The bounds themselves live with the request types (request_types.py).
"""

from __future__ import annotations

from typing import Any

from mlxserve.v1.requests import SamplingOptions

from .request_types import Options
from .validation import BadField, stop_list

# Option names the runtime honours; request_types.Options holds exactly these.
_NUMERIC = ("temperature", "top_p", "top_k", "min_p", "seed", "num_predict", "num_ctx", "repeat_penalty", "repeat_last_n",
            "presence_penalty", "frequency_penalty")


def check_num_predict(value: int | None, where: str) -> int | None:
    """The worker takes a positive count, -1 (no limit) or -2 (fill the context; the same here), as Ollama defines them."""
    if value == 0:
        raise BadField(where, f"'{where}' must not be 0: send a positive count, or -1 for no limit")
    if value is not None and value < -2:
        raise BadField(where, f"'{where}' must be a positive count, -1 (no limit) or -2 (fill the context), got {value}")
    return value


def _options(values: dict[str, Any], stop: list[str], logit_bias: dict[int, float] | None = None) -> SamplingOptions:
    """SamplingOptions with each option given (None: left unset, so the model's defaults apply).

    top_p 0 is sent as top_k 1: a nucleus of probability 0 keeps just the most likely token
    (llama.cpp, and so Ollama, keeps at least one), and the worker takes top_p only in (0, 1].
    """
    if values.get("top_p") == 0:
        values = {**values, "top_p": None, "top_k": 1}
    return SamplingOptions(**{key: value for key, value in values.items() if value is not None},
                           stop=tuple(stop), logit_bias=logit_bias or None)


def _values(options: Options | None, prefix: str) -> dict[str, Any]:
    if options is None:
        return {}
    check_num_predict(options.num_predict, f"{prefix}num_predict")
    return {key: getattr(options, key) for key in _NUMERIC}


def from_options(options: Options | None, prefix: str = "options.") -> SamplingOptions:
    """Ollama's `options` → SamplingOptions."""
    return _options(_values(options, prefix), stop_list(options.stop if options else None))


def openai_sampling(body: Any, *, max_tokens: int | None, max_key: str) -> SamplingOptions:
    """The sampling fields of an OpenAI request (chat, completions, responses) over its `options` extension.

    `max_tokens` is the request's output limit (-1: none), read from the field named `max_key`.
    """
    values = _values(body.options, "options.")
    check_num_predict(max_tokens, max_key)
    given = {
        "temperature": body.temperature, "top_p": body.top_p, "top_k": body.top_k, "min_p": body.min_p,
        "repeat_penalty": body.repetition_penalty, "num_predict": max_tokens,
        "seed": getattr(body, "seed", None),
        "presence_penalty": getattr(body, "presence_penalty", None),
        "frequency_penalty": getattr(body, "frequency_penalty", None),
    }
    values.update({key: value for key, value in given.items() if value is not None})
    stop = getattr(body, "stop", None)
    stops = stop_list(stop) if stop is not None else stop_list(body.options.stop if body.options else None)
    bias = {int(token): value for token, value in (getattr(body, "logit_bias", None) or {}).items()}
    return _options(values, stops, bias)
