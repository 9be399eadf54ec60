"""tool_choice 'required': a forced call comes out in the model's own format, parsed, with valid arguments.

On tiny random-weight models: whatever the weights, the grammar makes the model write a call of
an allowed tool whose arguments follow the tool's schema, and the request ends "tool_calls".
"""

from __future__ import annotations

import json
from pathlib import Path

import jsonschema
import mlx.core as mx
import pytest

from mlxserve.services.common.errors import InvalidArgument, Unsupported
from mlxserve.services.worker.outputs import OutputParser
from mlxserve.services.worker.prompts import ChatMessage, GenerationRequest, Tool, ToolChoice, template_message, template_tools
from mlxserve.services.worker.runner import ModelRunner
from mlxserve.services.worker.sampling import SamplingOptions
from mlxserve.services.worker.tool_calls import call_format, forced_calls_constraint
from mlxserve.v1.frames import TokenEvent, ToolCall
from tests.fixtures.tiny_model import tiny_model_dir, write_tiny_model  # noqa: F401 - fixture
from tests.fixtures.tool_model import chat_template, think_open_model_dir, tool_model_dir, write_mistral_tool_model  # noqa: F401

NESTED = {  # pydantic-like: no additionalProperties anywhere, so every object is closed
    "type": "object",
    "properties": {
        "city": {"type": "string", "maxLength": 12},
        "position": {
            "type": "object",
            "properties": {"lat": {"type": "integer", "minimum": -90, "maximum": 90},
                           "lon": {"type": "integer", "minimum": -180, "maximum": 180}},
            "required": ["lat", "lon"],
        },
        "tags": {"type": "array", "items": {"type": "string", "maxLength": 6}, "maxItems": 2},
    },
    "required": ["city", "position"],
}
ENUM_AND_BOUNDS = {
    "type": "object",
    "properties": {"unit": {"enum": ["celsius", "fahrenheit"]}, "days": {"type": "integer", "minimum": 1, "maximum": 7}},
    "required": ["unit", "days"],
}
WITH_DEFS = {  # what pydantic's model_json_schema() writes for a model with an enum field
    "$defs": {"Unit": {"enum": ["c", "f"], "title": "Unit", "type": "string"}},
    "properties": {"unit": {"$ref": "#/$defs/Unit"}, "count": {"type": "integer", "minimum": 0, "maximum": 9}},
    "required": ["unit", "count"],
    "title": "Args",
    "type": "object",
}
WEATHER = Tool("get_weather", "The weather in a city", NESTED)
FORECAST = Tool("get_forecast", "A forecast", ENUM_AND_BOUNDS)
TIME = Tool("get_time", "The time now")  # no arguments
BUDGET = 160
_ids = iter(range(1_000_000))


def required(*tools: Tool, allowed: tuple[str, ...] = (), single: bool = True, seed: int = 0, **fields) -> GenerationRequest:
    return GenerationRequest(
        request_id=f"forced-{next(_ids)}", is_chat=True, messages=(ChatMessage("user", "What is the weather?"),),
        tools=tools, tool_choice=ToolChoice("required", allowed, single),
        options=SamplingOptions(temperature=1.0, seed=seed, num_predict=BUDGET), **fields,
    )


def run(runner: ModelRunner, *requests: GenerationRequest) -> list[list[TokenEvent]]:
    for r in requests:
        runner.submit(r)
    frames: dict[str, list[TokenEvent]] = {}
    for _ in range(4 * BUDGET):
        for e in runner.step():
            frames.setdefault(e.request_id, []).append(e)
        if not runner.has_work():
            return [frames[r.request_id] for r in requests]
    raise AssertionError("requests did not finish")


def calls(events: list[TokenEvent]) -> list[ToolCall]:
    return [c for e in events for c in e.tool_calls]


def closed(schema: dict) -> dict:
    """`schema` with every object that lists properties closed: what the arguments must satisfy."""
    from mlxserve.services.worker.constraints import close_objects

    return close_objects(schema)


@pytest.fixture(scope="module")
def qwen(tool_model_dir: Path) -> ModelRunner:
    return ModelRunner(tool_model_dir, num_parallel=4, max_queue=16)


@pytest.fixture(scope="module")
def mistral_runners(tmp_path_factory: pytest.TempPathFactory) -> dict[str, ModelRunner]:
    """Mistral's two ways of writing calls: `[TOOL_CALLS]name[ARGS]{...}` and `[TOOL_CALLS] [{...}]`."""
    return {
        kind: ModelRunner(write_mistral_tool_model(tmp_path_factory.mktemp(f"mistral-{kind}"), json_list=kind == "json_list"),
                          num_parallel=4, max_queue=16)
        for kind in ("args", "json_list")
    }


@pytest.fixture(params=["args", "json_list"])
def mistral(request: pytest.FixtureRequest, mistral_runners: dict[str, ModelRunner]) -> ModelRunner:
    return mistral_runners[request.param]


@pytest.fixture(params=["qwen", "mistral-args", "mistral-json_list"])
def any_format(request: pytest.FixtureRequest, qwen: ModelRunner, mistral_runners: dict[str, ModelRunner]) -> ModelRunner:
    return qwen if request.param == "qwen" else mistral_runners[request.param.split("-")[1]]


# -- through the runner, from random weights ----------------------------------------------------------


@pytest.mark.parametrize("tool", [WEATHER, FORECAST, Tool("count_units", "", WITH_DEFS), TIME], ids=lambda t: t.name)
def test_a_required_call_from_random_weights_is_a_parsed_call_with_valid_arguments(qwen: ModelRunner, tool: Tool) -> None:
    for events in run(qwen, *(required(tool, seed=seed) for seed in range(3))):
        assert events[-1].done and events[-1].done_reason == "tool_calls"
        (call,) = calls(events)
        assert call.name == tool.name and call.id.startswith("call_")
        jsonschema.validate(json.loads(call.arguments), closed(tool.parameters or {"type": "object", "properties": {}}))
        assert "".join(e.text for e in events) == ""


def test_mistral_formats_are_forced_and_parsed_too(mistral: ModelRunner) -> None:
    assert call_format(mistral.tokenizer) == "mistral"
    for events in run(mistral, *(required(WEATHER, FORECAST, seed=seed) for seed in range(2))):
        assert events[-1].done_reason == "tool_calls"
        (call,) = calls(events)
        tool = {t.name: t for t in (WEATHER, FORECAST)}[call.name]
        jsonschema.validate(json.loads(call.arguments), closed(tool.parameters))
        if "[ARGS]" not in mistral.tokenizer.chat_template:  # these templates need nine-character call ids back
            assert len(call.id) == 9 and call.id.isalnum()


def test_a_named_function_is_the_one_called(qwen: ModelRunner) -> None:
    for events in run(qwen, *(required(WEATHER, FORECAST, TIME, allowed=("get_forecast",), seed=s) for s in range(3))):
        assert [c.name for c in calls(events)] == ["get_forecast"]
        assert events[-1].done_reason == "tool_calls"


def test_a_call_outside_the_allowed_set_is_refused_by_the_grammar(qwen: ModelRunner) -> None:
    request = required(WEATHER, FORECAST, TIME, allowed=("get_forecast", "get_time"))
    constraint = forced_calls_constraint(qwen.tokenizer, request, [])
    constraint(mx.array([0]), mx.zeros((1, 512)))
    text = '<tool_call>\n{"name": "get_weather", "arguments": {}}\n</tool_call>'
    constraint.advance(qwen.tokenizer.encode(text, add_special_tokens=False))
    assert constraint.error is not None
    for events in run(qwen, *(required(WEATHER, FORECAST, TIME, allowed=("get_forecast", "get_time"), seed=s) for s in range(3))):
        assert {c.name for c in calls(events)} <= {"get_forecast", "get_time"}


# -- the grammar writes what the model's own template writes -------------------------------------


def assistant_text(tokenizer, tool_calls: tuple[ToolCall, ...], tools: tuple[Tool, ...]) -> str:
    """What the model's template writes for an assistant turn that made `tool_calls` (its end of turn cut)."""
    user = [{"role": "user", "content": "Hi"}]
    asked = tokenizer.apply_chat_template(user, tools=template_tools(tools), add_generation_prompt=True, tokenize=False)
    turn = template_message(ChatMessage("assistant", "", tool_calls=tool_calls))
    full = tokenizer.apply_chat_template(user + [turn], tools=template_tools(tools), tokenize=False)
    assert full.startswith(asked) or full.startswith(asked.rstrip("\n"))
    body = full[len(asked):] if full.startswith(asked) else full[len(asked.rstrip()):]
    return body.removesuffix("\n").removesuffix("<|im_end|>")


def accepts(runner: ModelRunner, request: GenerationRequest, text: str, prompt: list[int] | None = None) -> bool:
    """Whether the forcing grammar takes `text` whole and may end there (with one call: must end there)."""
    constraint = forced_calls_constraint(runner.tokenizer, request, prompt or [])
    constraint(mx.array(prompt or [0]), mx.zeros((1, 512)))
    constraint.advance(runner.tokenizer.encode(text, add_special_tokens=False))
    if request.tool_choice.single and constraint.error is None:
        assert constraint.is_done()
    return constraint.error is None and constraint.is_accepting()


TWO_CALLS = (
    ToolCall("get_forecast", '{"unit": "celsius", "days": 3}', id="abcde1234"),
    ToolCall("get_time", "{}", id="fghij5678"),
)


def test_the_grammar_takes_exactly_the_calls_the_template_writes_and_the_parser_reads_them_back(any_format: ModelRunner) -> None:
    runner = any_format
    tools = (WEATHER, FORECAST, TIME)
    text = assistant_text(runner.tokenizer, TWO_CALLS, tools)
    assert accepts(runner, required(*tools, single=False), text)
    assert not accepts(runner, required(*tools, single=True), text)  # one call only
    one = assistant_text(runner.tokenizer, TWO_CALLS[:1], tools)
    assert accepts(runner, required(*tools, single=True), one)
    parser = OutputParser(runner.tokenizer, template_tools(tools))
    parsed = [parser.feed(ch) for ch in text] + [parser.finish()]  # streamed a character at a time
    got = [(c.name, json.loads(c.arguments)) for p in parsed for c in p.tool_calls]
    assert got == [(c.name, json.loads(c.arguments)) for c in TWO_CALLS]
    assert "".join(p.content for p in parsed).strip() == ""


def test_arguments_with_extra_keys_or_out_of_range_values_are_refused(qwen: ModelRunner) -> None:
    def call(arguments: dict) -> str:
        return '<tool_call>\n{"name": "get_forecast", "arguments": ' + json.dumps(arguments) + "}\n</tool_call>"

    request = required(FORECAST)
    assert accepts(qwen, request, call({"unit": "celsius", "days": 7}))
    assert not accepts(qwen, request, call({"unit": "celsius", "days": 8}))
    assert not accepts(qwen, request, call({"unit": "kelvin", "days": 1}))
    assert not accepts(qwen, request, call({"unit": "celsius", "days": 1, "extra": 1}))
    assert not accepts(qwen, request, call({"unit": "celsius"}))  # a required field missing


def test_thinking_before_the_call_only_when_the_prompt_opened_it_or_think_is_true(qwen: ModelRunner, think_open_model_dir: Path) -> None:
    call = '<tool_call>\n{"name": "get_time", "arguments": {}}\n</tool_call>'
    reasoned = "<think>\nThe user wants the time.\n</think>\n\n" + call
    assert accepts(qwen, required(TIME), call)
    assert not accepts(qwen, required(TIME), reasoned)  # the model's default here: call at once
    assert accepts(qwen, required(TIME, think=True), reasoned) and accepts(qwen, required(TIME, think=True), call)
    opened = ModelRunner(think_open_model_dir, num_parallel=1, max_queue=1)
    request = required(TIME)
    prompt = opened.tokenizer.encode(opened.tokenizer.apply_chat_template(
        [{"role": "user", "content": "Hi"}], tools=template_tools((TIME,)), add_generation_prompt=True, tokenize=False),
        add_special_tokens=False)
    assert accepts(opened, request, "The user wants the time.\n</think>\n\n" + call, prompt)
    assert not accepts(opened, request, call, prompt)  # the open think block must be closed first


# -- refusals -------------------------------------------------------------------------------------------


def test_required_needs_tools_and_cannot_be_combined_with_format(qwen: ModelRunner) -> None:
    with pytest.raises(InvalidArgument, match="needs at least one tool"):
        qwen.submit(required())
    with pytest.raises(InvalidArgument, match="cannot be combined with format"):
        qwen.submit(required(TIME, format="json"))
    with pytest.raises(InvalidArgument, match="names a tool the request does not define: 'get_news'"):
        qwen.submit(required(TIME, allowed=("get_news",)))


def test_a_model_without_tools_refuses_a_required_call(tiny_model_dir: Path) -> None:  # noqa: F811
    with pytest.raises(Unsupported, match="does not support tools"):
        ModelRunner(tiny_model_dir, num_parallel=1, max_queue=1).submit(required(TIME))


def _with_template(path: Path, template: str, **config) -> Path:
    write_tiny_model(path)
    tokenizer_config = json.loads((path / "tokenizer_config.json").read_text())
    tokenizer_config.update(chat_template=template, **config)
    (path / "tokenizer_config.json").write_text(json.dumps(tokenizer_config))
    return path


def test_a_template_whose_calls_cannot_be_parsed_or_forced_is_refused_naming_why(tmp_path: Path) -> None:
    # Llama 3.1-like: the template lists tools, but no tool-call format is known for it.
    unknown = _with_template(tmp_path / "unknown", "{{ tools | tojson }}{% for m in messages %}{{ m.content }}{% endfor %}")
    with pytest.raises(Unsupported, match="cannot be made to call a tool: its tool calls cannot be parsed"):
        ModelRunner(unknown, num_parallel=1, max_queue=1).submit(required(TIME))
    pythonic = _with_template(tmp_path / "pythonic", chat_template(), tool_parser_type="pythonic")
    runner = ModelRunner(pythonic, num_parallel=1, max_queue=1)
    with pytest.raises(Unsupported, match=r"forcing its tool-call format \(pythonic\) is not supported"):
        runner.submit(required(TIME))
    # tool_choice auto still works on such a model: only forcing is refused.
    assert runner.submit(GenerationRequest("auto-ok", is_chat=True, messages=(ChatMessage("user", "Hi"),), tools=(TIME,),
                                           options=SamplingOptions(num_predict=1))).prompt_tokens > 0


def test_a_text_end_of_thinking_marker_ends_the_reasoning_too(qwen: ModelRunner) -> None:
    """Models whose think markers are plain text (not one special token): the reasoning is any
    text up to the first end marker."""
    from mlxserve.services.worker.constraints import compile_grammar
    from mlxserve.services.worker.tool_calls import forced_calls_grammar

    class TextMarkers:  # the qwen tokenizer, with think markers it holds as text
        think_start, think_end = "<reason>", "</reason>"

        def __getattr__(self, name: str):
            return getattr(qwen.tokenizer, name)

    grammar = forced_calls_grammar(TextMarkers(), [TIME], "json_tools", single=True, reasoning="optional")
    call = '<tool_call>\n{"name": "get_time", "arguments": {}}\n</tool_call>'
    for text, ok in [("<reason>a </rea son> b</reason>\n\n" + call, True), (call, True), ("chatter" + call, False)]:
        constraint = compile_grammar(grammar, qwen.tokenizer, "grammar")
        constraint(mx.array([0]), mx.zeros((1, 512)))
        constraint.advance(qwen.tokenizer.encode(text, add_special_tokens=False))
        assert (constraint.error is None and constraint.is_done()) is ok, text
