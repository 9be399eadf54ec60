"""What a generation request asks for, and how it becomes prompt tokens (template + tokenizer).

Plain Python over the tokenizer (no MLX), so it runs on the caller's thread: Submit can answer
with the prompt length before the engine thread ever sees the request.

The template's inputs are built here too: `template_tools` turns the request's tools into the
OpenAI/Hugging Face shape templates iterate over, `template_message` turns a chat message (its
tool calls, tool result, author name or earlier reasoning) into the dict templates read, and
`template_kwargs` adds the think switch and the request's extra template variables, refusing a
capability the model's template lacks.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from typing import Any

from msgspec.structs import replace

from mlxserve.services.common.errors import InvalidArgument, Unsupported
# The request type is shared with the gateway (one definition, sent as is); re-exported for the worker.
from mlxserve.v1.requests import (MAX_TOP_LOGPROBS, ROLES, TOOL_CHOICE_MODES, ChatMessage, GenerationRequest,  # noqa: F401
                                  SamplingOptions, Tool, ToolChoice)

from .prompt_bounds import PromptBounds, PromptTooLong

# The request's own variables: its values win over chat_template_kwargs.
_REQUEST_VARIABLES = frozenset({"messages", "conversation", "conversations", "tools", "add_generation_prompt"})


def check_token_ids(ids: Sequence[int], limit: int, what: str) -> None:
    """Raise InvalidArgument naming the first id of `ids` outside the vocabulary [0, limit)."""
    for i, token in enumerate(ids):
        if not 0 <= token < limit:
            raise InvalidArgument(f"{what}[{i}] is token id {token}, which is not in the model's vocabulary (0 to {limit - 1})")


def encode_prompt(tokenizer: Any, request: GenerationRequest, *, fit_within: int | None = None,
                  bounds: PromptBounds | None = None, alive: Callable[[], bool] | None = None) -> list[int]:
    """Template (unless raw) and tokenize the request's prompt with the model's own tokenizer.

    With `context`, its ids come first and the prompt is tokenized as their continuation: no
    special tokens added, and a BOS that the template writes is dropped. With `bounds` and
    `fit_within` (the context length in tokens), a text that provably cannot fit is refused
    (PromptTooLong) before it is tokenized whole, and `alive` is asked between pieces (see
    prompt_bounds.py).
    """
    continuing = bool(request.context)
    as_is = request.raw or (request.plain_prompt and not getattr(tokenizer, "has_chat_template", False))
    # As is: a raw prompt, or a plain generate request to a model without a template (a base model):
    # it completes the prompt, as Ollama's default template `{{ .Prompt }}` does; with a system
    # message, tools or thinking it needs a template, and render_prompt says so.
    text = request.prompt if as_is else render_prompt(tokenizer, request)
    if bounds is not None and fit_within is not None and fit_within > len(request.context):  # else the count refuses it
        bounds.check(tokenizer, text, fit_within - len(request.context), alive)
    if as_is:
        # Special tokens (a BOS) only if the tokenizer's own post-processor adds them.
        tokens = list(tokenizer.encode(text, add_special_tokens=not continuing))
    else:
        # The template writes any BOS/special tokens itself; don't let the tokenizer add them twice.
        tokens = list(tokenizer.encode(text, add_special_tokens=False))
        bos = getattr(tokenizer, "bos_token_id", None)
        if continuing and tokens and bos is not None and tokens[0] == bos:
            tokens = tokens[1:]
    return [*request.context, *tokens] if continuing else tokens


def fit_prompt(tokenizer: Any, request: GenerationRequest, context: int, *, bounds: PromptBounds | None = None,
               alive: Callable[[], bool] | None = None) -> tuple[list[int], int]:
    """Tokenize `request` so that at least one token can be generated within `context` tokens.

    As Ollama does, an over-long chat loses its oldest messages first, keeping every system
    message and the last message, and is rendered again. Returns (tokens, messages dropped).
    Raises InvalidArgument if it cannot fit, or if it does not fit and `truncate` is false.
    `bounds` and `alive`: see encode_prompt (a candidate proved too long by them does not fit).
    """
    try:
        tokens = encode_prompt(tokenizer, request, fit_within=context, bounds=bounds, alive=alive)
        if len(tokens) < context:
            return tokens, 0
        too_long = f"the prompt is {len(tokens)} tokens, which does not fit the context of {context} tokens"
    except PromptTooLong as e:
        too_long = e.message
    if request.raw or not request.is_chat or request.context:
        raise PromptTooLong(too_long)
    if request.truncate is False:
        raise PromptTooLong(f"{too_long} (truncate is false)")
    messages = request.messages
    droppable = [i for i, m in enumerate(messages[:-1]) if m.role != "system"]

    def without_oldest(n: int) -> list[int] | None:
        dropped = set(droppable[:n])
        kept = tuple(m for i, m in enumerate(messages) if i not in dropped)
        try:
            return encode_prompt(tokenizer, replace(request, messages=kept), fit_within=context, bounds=bounds, alive=alive)
        except PromptTooLong:
            return None

    # The fewest drops that fit: prompts only shrink as messages go, so bisect over the count.
    low, high, best = 1, len(droppable), None
    while low <= high:
        mid = (low + high) // 2
        candidate = without_oldest(mid)
        if candidate is not None and len(candidate) < context:
            best, high = (candidate, mid), mid - 1
        else:
            low = mid + 1
    if best is None:
        raise PromptTooLong(f"{too_long}, even with only the system messages and the last message kept" if droppable else too_long)
    return best


def system_prefix_length(tokenizer: Any, request: GenerationRequest, tokens: list[int]) -> int:
    """How many leading `tokens` of a chat prompt are its leading system messages and tools: what every
    turn and every new session of an agent shares. 0 when there is no such prefix (no leading system
    message, a raw prompt, or an Ollama `context`)."""
    if not request.is_chat or request.raw or request.context or not request.messages:
        return 0
    leading = 0
    while leading < len(request.messages) and request.messages[leading].role == "system":
        leading += 1
    if leading == 0 or leading == len(request.messages):
        return 0
    probe = replace(request, messages=(*request.messages[:leading], ChatMessage("user", "")))
    try:
        head = tokenizer.encode(render_prompt(tokenizer, probe), add_special_tokens=False)
    except Exception:  # noqa: BLE001 - the real prompt rendered; a probe that does not only loses a checkpoint
        return 0
    n = 0
    for a, b in zip(head, tokens):
        if a != b:
            break
        n += 1
    return n if n < len(tokens) else 0


def render_prompt(tokenizer: Any, request: GenerationRequest) -> str:
    """The text the model's chat template makes of a (non-raw) request, generation prompt included."""
    if request.raw:
        return request.prompt
    if request.is_chat:
        messages = [template_message(m) for m in request.messages]
    else:
        messages = ([{"role": "system", "content": request.system}] if request.system else [])
        messages.append({"role": "user", "content": request.prompt})
    if not getattr(tokenizer, "has_chat_template", False):
        raise Unsupported("this model has no chat template; send a raw prompt instead")
    # Tools and think; Unsupported if the template lacks them. The request's own variables win.
    kwargs = {k: v for k, v in request.chat_template_kwargs.items() if k not in _REQUEST_VARIABLES}
    kwargs.update(template_kwargs(request, tokenizer))
    if any(m["role"] == "system" for m in messages[1:]) and not takes_mid_conversation_system(tokenizer):
        messages = fold_system_turns(messages)
    try:
        return tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False, **kwargs)
    except Exception as e:  # noqa: BLE001 - jinja raises its own types; the user needs the message
        raise InvalidArgument(f"the model's chat template rejected these messages: {e}") from e


_MID_SYSTEM: dict[str, bool] = {}  # template text → whether it renders a system message after the first turn
_PROBE = "mlxserve-mid-conversation-system-probe"


def takes_mid_conversation_system(tokenizer: Any) -> bool:
    """Whether the model's template renders a system message between turns (ChatML, Llama 3 and Qwen do;
    Gemma's and Mistral's insist on user/assistant alternation). Decided once per template, by the
    template alone, so that every turn of a conversation renders its earlier turns the same way."""
    template = template_text(tokenizer)
    if template not in _MID_SYSTEM:
        probe = [{"role": "user", "content": "u"}, {"role": "system", "content": _PROBE},
                 {"role": "assistant", "content": "a"}, {"role": "user", "content": "u"}]
        try:
            text = tokenizer.apply_chat_template(probe, add_generation_prompt=True, tokenize=False)
            _MID_SYSTEM[template] = isinstance(text, str) and _PROBE in text
        except Exception:  # noqa: BLE001 - any refusal means no
            _MID_SYSTEM[template] = False
    return _MID_SYSTEM[template]


def fold_system_turns(messages: list[dict]) -> list[dict]:
    """System messages after the first turn, for a template that cannot render them there: joined to
    the system message before them when only system messages came first, else to the user turn
    they follow (Anthropic places them after one), else made a user turn of their own."""
    out: list[dict] = []
    for m in messages:
        if m["role"] != "system" or not out:
            out.append(m)
            continue
        prev = out[-1]
        if prev["role"] in ("system", "user") and isinstance(prev.get("content"), str) and not prev.get("tool_calls"):
            joined = f"{prev['content']}\n\n{m['content']}" if prev["content"] else m["content"]
            out[-1] = {**prev, "content": joined}
        else:
            out.append({"role": "user", "content": m["content"]})
    return out


# -- template inputs ----------------------------------------------------------------------------


def template_text(tokenizer: Any) -> str:
    """The model's chat template as text ("" when it has none; all named templates joined)."""
    template = getattr(tokenizer, "chat_template", None)
    if isinstance(template, dict):
        return "\n".join(str(t) for t in template.values())
    if isinstance(template, list):  # [{"name": ..., "template": ...}] in some tokenizer configs
        return "\n".join(str(t.get("template", "")) for t in template if isinstance(t, dict))
    return template if isinstance(template, str) else ""


def supports_tools(template: str) -> bool:
    """As Ollama (and the store's capabilities) decide it: the template mentions `tools`."""
    return "tools" in template


def supports_thinking(template: str) -> bool:
    """The template can reason: it writes `<think>` or takes `enable_thinking`."""
    return "<think>" in template or "enable_thinking" in template


def template_tools(tools: tuple[Tool, ...] | list[Tool]) -> list[dict]:
    """Tools as templates (and mlx-lm's tool parsers) read them: OpenAI's function-tool shape."""
    out = []
    for tool in tools:
        function: dict[str, Any] = {"name": tool.name}
        if tool.description:
            function["description"] = tool.description
        # Templates render `parameters | tojson` unguarded: a tool without arguments takes none.
        function["parameters"] = tool.parameters if tool.parameters is not None else {"type": "object", "properties": {}}
        out.append({"type": "function", "function": function})
    return out


def request_tools(request: Any) -> list[dict]:
    """The tools the template shows for `request`: none with tool_choice 'none'; with 'auto' and an
    `allowed` list, only those (the model can only be kept from calling a tool it never sees)."""
    if not request.template_tools_on:
        return []
    choice = request.tool_choice
    tools = request.tools
    if choice.mode == "auto" and choice.allowed:
        tools = tuple(t for t in tools if t.name in choice.allowed)
    return template_tools(tools)


def template_kwargs(request: Any, tokenizer: Any, template: str | None = None, *, model_name: str = "") -> dict:
    """Chat-template keyword arguments for `request`'s tools and think switch.

    Raises Unsupported when tools are asked of a template that does not render them, or
    thinking (`think=True`) of one that cannot reason; `think=False` on such a model is what it
    does anyway, so it is accepted, as Ollama does.
    """
    template = template_text(tokenizer) if template is None else template
    who = f"model '{model_name}'" if model_name else "this model"
    kwargs: dict[str, Any] = {}
    tools = request_tools(request)
    if tools:
        if not supports_tools(template):
            raise Unsupported(f"{who} does not support tools")
        kwargs["tools"] = tools
    think = getattr(request, "think", None)
    if think is not None:
        if supports_thinking(template):
            # mlx-lm's TokenizerWrapper renames this for templates that call it `thinking`.
            kwargs["enable_thinking"] = bool(think)
        elif think:
            raise Unsupported(f"{who} does not support thinking")
    return kwargs


def _arguments_object(arguments: str) -> dict:
    """Templates render `arguments | tojson`, so the call's JSON text becomes an object."""
    try:
        value = json.loads(arguments) if arguments.strip() else {}
    except ValueError as e:
        raise InvalidArgument(f"tool call arguments are not valid JSON: {e}") from e
    if not isinstance(value, dict):
        raise InvalidArgument("tool call arguments must be a JSON object")
    return value


def template_message(message: ChatMessage) -> dict:
    """One chat message as Hugging Face chat templates read it.

    Each tool call becomes `{"id", "type": "function", "function": {"name", "arguments": object}}`.
    The author's name goes in as `name` (for a tool result: the tool's name), the answered call
    as `tool_call_id`, and earlier reasoning as `reasoning_content` (Qwen3, DeepSeek) and
    `thinking` (gpt-oss), whichever the template reads.
    """
    out: dict[str, Any] = {"role": message.role, "content": message.content}
    if message.thinking:
        out["reasoning_content"] = message.thinking
        out["thinking"] = message.thinking
    if message.tool_calls:
        calls = []
        for call in message.tool_calls:
            entry: dict[str, Any] = {"type": "function", "function": {"name": call.name, "arguments": _arguments_object(call.arguments)}}
            if call.id:
                entry = {"id": call.id, **entry}
            calls.append(entry)
        out["tool_calls"] = calls
    name = (message.tool_name or message.name) if message.role == "tool" else message.name
    if name:
        out["name"] = name
    if message.tool_call_id:
        out["tool_call_id"] = message.tool_call_id
    return out
