"""A model's stored defaults (Modelfile SYSTEM, PARAMETER, MESSAGE) and how they shape a request.

The store writes them into the model's view as `mlxserve-defaults.json`; the worker reads them
once at load. As in Ollama: the model's SYSTEM is used when the request brings no system message
(chat) or no `system` (generate); its MESSAGEs come before the request's messages, after the
system message (except in a prompt that continues a `context`, which holds them already); its
PARAMETERs are option defaults, and a request option replaces the model's
value for that key outright (a request's `stop` list replaces the model's). Raw prompts take
options only: no template, so no system and no messages.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import msgspec

from mlxserve.services.common import logs
from mlxserve.services.common.errors import Internal, InvalidArgument
from mlxserve.services.store.views import VIEW_DEFAULTS_FILE

from .prompts import ROLES, ChatMessage, GenerationRequest
from .sampling import SamplingOptions

log = logs.get_logger()

# Model parameters the worker applies, and the type each must have.
_APPLIED: dict[str, type] = {
    "temperature": float, "top_p": float, "top_k": int, "min_p": float,
    "seed": int, "num_predict": int, "num_ctx": int,
    "repeat_penalty": float, "repeat_last_n": int, "presence_penalty": float, "frequency_penalty": float,
}


@dataclass(frozen=True)
class ModelDefaults:
    """What a model's creator set for every request: system prompt, opening messages, options."""

    system: str = ""
    messages: tuple[ChatMessage, ...] = ()
    options: SamplingOptions = field(default_factory=SamplingOptions)
    ignored: tuple[str, ...] = ()  # parameters the model sets that this worker does not implement

    def apply(self, request: GenerationRequest, *, templated: bool = True) -> GenerationRequest:
        """The request as the model runs it: defaults filled in where the request leaves them.

        A templated generate becomes the one-turn chat it renders as (system, the model's
        messages, then the prompt as the user's turn), so both paths template the same way.
        `templated=False` (a plain prompt to a model without a template) takes options only, as raw.
        """
        options = merge_options(request.options, self.options)
        if request.raw or not templated:
            return request if options is request.options else msgspec.structs.replace(request, options=options)
        if request.is_chat:
            turns = list(request.messages)
        else:
            turns = [ChatMessage("system", request.system)] if request.system else []
            turns.append(ChatMessage("user", request.prompt))
        lead = 0
        while lead < len(turns) and turns[lead].role == "system":
            lead += 1
        system = turns[:lead]
        if not system and self.system and not any(m.role == "system" for m in turns):
            system = [ChatMessage("system", self.system)]
        # A prompt that continues a `context` already has the model's opening messages in it.
        opening = () if request.context else self.messages
        messages = (*system, *opening, *turns[lead:])
        return msgspec.structs.replace(request, is_chat=True, messages=messages, prompt="", system="", options=options)


_NO_OPTIONS = SamplingOptions()
_MERGED_FIELDS = tuple(name for name in SamplingOptions.__struct_fields__ if name != "stop")


def merge_options(requested: SamplingOptions, defaults: SamplingOptions) -> SamplingOptions:
    """`requested`, with each option it leaves unset taken from `defaults`."""
    if defaults == _NO_OPTIONS:  # most models set none: nothing to merge on the Submit path
        return requested
    merged = {
        name: getattr(defaults, name) if getattr(requested, name) is None else getattr(requested, name)
        for name in _MERGED_FIELDS
    }
    return SamplingOptions(**merged, stop=requested.stop or defaults.stop)


def load_defaults(model_path: Path) -> ModelDefaults:
    """Read the view's defaults file; a folder without one (not from the store) has none.

    A malformed file raises Internal. A parameter of the wrong type or out of range is left out
    with a warning: it came with the model, so refusing every request over it would help no one.
    """
    path = Path(model_path) / VIEW_DEFAULTS_FILE
    try:
        doc = json.loads(path.read_text())
    except FileNotFoundError:
        return ModelDefaults()
    except (OSError, ValueError) as e:
        raise Internal(f"cannot read the model's defaults ({path}): {e}") from e
    try:
        system = doc.get("system") or ""
        parameters = doc.get("parameters") or {}
        raw_messages = doc.get("messages") or []
        if not isinstance(system, str) or not isinstance(parameters, dict) or not isinstance(raw_messages, list):
            raise TypeError("system must be text, parameters a mapping, messages a list")
        messages = tuple(ChatMessage(m["role"], m.get("content", "")) for m in raw_messages)
        for m in messages:
            if m.role not in ROLES or not isinstance(m.content, str):
                raise TypeError(f"unusable message {m!r}")
    except (AttributeError, KeyError, TypeError) as e:
        raise Internal(f"damaged model defaults ({path}): {e}") from e
    options, ignored = _options_from_parameters(parameters)
    if ignored:
        log.debug("model_parameters_not_implemented", parameters=list(ignored))
    return ModelDefaults(system=system, messages=messages, options=options, ignored=ignored)


def _options_from_parameters(parameters: dict[str, Any]) -> tuple[SamplingOptions, tuple[str, ...]]:
    values: dict[str, Any] = {}
    for name, value in parameters.items():
        try:
            if name == "stop":
                stops = value if isinstance(value, list) else [value]
                if not all(isinstance(s, str) for s in stops):
                    raise TypeError("stop strings must be text")
                values["stop"] = tuple(stops)
            elif name in _APPLIED:
                kind = _APPLIED[name]
                if isinstance(value, bool) or not isinstance(value, (int, float)) or (kind is int and value != int(value)):
                    raise TypeError(f"expected {kind.__name__}")
                values[name] = kind(value)
            else:
                continue
            SamplingOptions(**{name: values[name]}).validate()
        except (TypeError, ValueError, OverflowError, InvalidArgument) as e:
            values.pop(name, None)
            log.warning("model_parameter_unusable", parameter=name, value=value, error=str(e))
    ignored = tuple(sorted(name for name in parameters if name not in _APPLIED and name != "stop"))
    return SamplingOptions(**values), ignored
