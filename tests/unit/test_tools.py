"""Tools and thinking through the template and the runner, on tiny random models."""

from __future__ import annotations

import json
from pathlib import Path

import mlx.core as mx
import mlx_lm
import pytest

from mlxserve.services.common.errors import InvalidArgument, Unsupported
from mlxserve.services.worker import runner as runner_module
from mlxserve.services.worker.prompts import ChatMessage, GenerationRequest, Tool, ToolChoice, render_prompt, template_kwargs
from mlxserve.services.worker.runner import ModelRunner
from mlxserve.services.worker.sampling import SamplingOptions
from mlxserve.v1.frames import TokenEvent, ToolCall
from tests.fixtures.tiny_model import tiny_model_dir  # noqa: F401 - fixture
from tests.fixtures.tool_model import think_open_model_dir, tool_model_dir  # noqa: F401 - fixtures
from tests.fixtures.submit_wire import over_the_wire

WEATHER = Tool("get_weather", "The weather in a city",
               {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]})
TOOLS = (WEATHER,)
CALL_TEXT = '<tool_call>{"name": "get_weather", "arguments": {"city": "Paris"}}</tool_call>'
GREEDY = SamplingOptions(temperature=0, num_predict=64)
_ids = iter(range(1_000_000))


def chat(*messages: ChatMessage, **fields) -> GenerationRequest:
    return GenerationRequest(request_id=f"tools-{next(_ids)}", is_chat=True, messages=messages, options=GREEDY, **fields)


@pytest.fixture(scope="module")
def tool_tokenizer(tool_model_dir: Path):
    return mlx_lm.load(str(tool_model_dir))[1]


@pytest.fixture(scope="module")
def tool_runner(tool_model_dir: Path) -> ModelRunner:
    return ModelRunner(tool_model_dir, num_parallel=2, max_queue=4)


@pytest.fixture(scope="module")
def plain_runner(tiny_model_dir: Path) -> ModelRunner:
    return ModelRunner(tiny_model_dir, num_parallel=1, max_queue=1)


# -- the template ---------------------------------------------------------------------------------


def test_requested_tools_are_listed_in_the_rendered_prompt(tool_tokenizer):
    prompt = render_prompt(tool_tokenizer, chat(ChatMessage("user", "Weather in Paris?"), tools=TOOLS))
    listed = ('{"type": "function", "function": {"name": "get_weather", "description": "The weather in a city", '
              '"parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}}')
    assert f"<tools>\n{listed}\n</tools>" in prompt  # OpenAI's function-tool shape, as templates expect
    assert "<tools>" not in render_prompt(tool_tokenizer, chat(ChatMessage("user", "Weather in Paris?")))


def test_tool_choice_none_keeps_the_tools_out_of_the_prompt(tool_tokenizer):
    none = render_prompt(tool_tokenizer, chat(ChatMessage("user", "Weather?"), tools=TOOLS, tool_choice=ToolChoice("none")))
    assert none == render_prompt(tool_tokenizer, chat(ChatMessage("user", "Weather?")))


def test_auto_with_allowed_tools_shows_only_those(tool_tokenizer):
    other = Tool("get_time", "The time in a city")
    prompt = render_prompt(tool_tokenizer, chat(ChatMessage("user", "Weather?"), tools=(WEATHER, other),
                                                tool_choice=ToolChoice("auto", allowed=("get_time",))))
    assert '"name": "get_time"' in prompt and "get_weather" not in prompt
    # A tool without parameters takes none: templates render `parameters | tojson` unguarded.
    assert '"parameters": {"type": "object", "properties": {}}' in prompt


def test_an_earlier_tool_call_and_its_result_render_as_turns(tool_tokenizer):
    prompt = render_prompt(tool_tokenizer, chat(
        ChatMessage("user", "Weather in Paris?"),
        ChatMessage("assistant", "", tool_calls=(ToolCall("get_weather", '{"city": "Paris"}'),)),
        ChatMessage("tool", "18 degrees and sunny", tool_name="get_weather"),
        tools=TOOLS,
    ))
    assert '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n</tool_call>' in prompt
    assert "<tool_response>\n18 degrees and sunny\n</tool_response>" in prompt


def test_calls_reach_the_template_in_openai_shape_with_arguments_as_an_object():
    from mlxserve.services.worker.prompts import template_message

    message = template_message(ChatMessage("assistant", "", tool_calls=(ToolCall("get_weather", '{"city": "Paris"}', id="call_1"),)))
    assert message["tool_calls"] == [
        {"id": "call_1", "type": "function", "function": {"name": "get_weather", "arguments": {"city": "Paris"}}},
    ]


def test_tools_and_calls_sent_over_the_wire_become_the_same_template_input(tool_tokenizer):
    request = over_the_wire(GenerationRequest(request_id="p", is_chat=True, messages=(
        ChatMessage("user", "Weather in Paris?"),
        ChatMessage("assistant", tool_calls=[ToolCall("get_weather", '{"city": "Paris"}', id="call_1")]),
        ChatMessage("tool", "18 degrees and sunny", tool_name="get_weather", tool_call_id="call_1"),
    ), tools=TOOLS))
    assert request.tools == TOOLS
    assert request.messages[1].tool_calls == [ToolCall("get_weather", '{"city": "Paris"}', id="call_1")]
    assert render_prompt(tool_tokenizer, request) == render_prompt(tool_tokenizer, chat(
        ChatMessage("user", "Weather in Paris?"),
        ChatMessage("assistant", "", tool_calls=(ToolCall("get_weather", '{"city": "Paris"}', id="call_1"),)),
        ChatMessage("tool", "18 degrees and sunny", tool_name="get_weather", tool_call_id="call_1"),
        tools=TOOLS,
    ))


def test_earlier_reasoning_reaches_the_template(tool_tokenizer):
    prompt = render_prompt(tool_tokenizer, chat(
        ChatMessage("user", "Hi"), ChatMessage("assistant", "Hello!", thinking="be kind"), ChatMessage("user", "Bye"),
    ))
    assert "<think>\nbe kind\n</think>\n\nHello!" in prompt


def test_think_false_closes_the_think_block_in_the_prompt(tool_tokenizer):
    off = render_prompt(tool_tokenizer, chat(ChatMessage("user", "Hi"), think=False))
    assert off.endswith("<|im_start|>assistant\n<think>\n\n</think>\n\n")
    assert render_prompt(tool_tokenizer, chat(ChatMessage("user", "Hi"), think=True)).endswith("<|im_start|>assistant\n")


def test_bad_tool_json_is_an_invalid_argument(tool_tokenizer):
    with pytest.raises(InvalidArgument, match="must be a JSON Schema object"):
        chat(ChatMessage("user", "Hi"), tools=(Tool("get_weather", parameters=[1]),)).validate()
    with pytest.raises(InvalidArgument, match="tool call arguments must be a JSON object"):
        render_prompt(tool_tokenizer, chat(ChatMessage("user", "Hi"), ChatMessage("assistant", "", tool_calls=(ToolCall("f", "[1]"),))))


def test_tools_on_a_model_without_tool_support_are_refused(plain_runner):
    with pytest.raises(Unsupported, match="does not support tools"):
        plain_runner.submit(chat(ChatMessage("user", "Hi"), tools=TOOLS))


def test_thinking_on_a_model_without_it_is_refused_but_think_false_is_fine(plain_runner):
    with pytest.raises(Unsupported, match="does not support thinking"):
        plain_runner.submit(chat(ChatMessage("user", "Hi"), think=True))
    assert plain_runner.submit(chat(ChatMessage("user", "Hi"), think=False)).prompt_tokens > 0
    drive(plain_runner)


def test_the_refusal_names_the_model():
    with pytest.raises(Unsupported, match="model 'tiny' does not support tools"):
        template_kwargs(chat(ChatMessage("user", "Hi"), tools=TOOLS), None, "plain template", model_name="tiny")


# -- the runner, with the model's choices scripted --------------------------------------------------


def drive(runner: ModelRunner, max_steps: int = 500) -> dict[str, list[TokenEvent]]:
    frames: dict[str, list[TokenEvent]] = {}
    for _ in range(max_steps):
        for e in runner.step():
            frames.setdefault(e.request_id, []).append(e)
        if not runner.has_work():
            return frames
    raise AssertionError("requests did not finish")


def scripted(monkeypatch: pytest.MonkeyPatch, tokenizer, text: str) -> None:
    """Make the (random) model 'choose' the tokens of `text`, then EOS: a logits processor that follows a script.

    The model still runs each step; only the choice is fixed (every other token is ruled out, so any
    sampling settings pick it), so this tests everything after sampling: detokenizing, output
    parsing, frames and the done reason.
    """
    script = tokenizer.encode(text, add_special_tokens=False)
    eos = min(tokenizer.eos_token_ids)

    def make_logits_processors(options, context_length):
        steps = iter(script)

        def follow(tokens, logits):
            # EOS after the script, and again if the generator samples a step ahead of the stop.
            chosen = next(steps, eos)
            mask = mx.arange(logits.shape[-1]) == chosen
            return mx.where(mask, logits, -float("inf"))

        return [follow]

    monkeypatch.setattr(runner_module, "make_logits_processors", make_logits_processors)


def submit_and_drive(runner: ModelRunner, request: GenerationRequest) -> list[TokenEvent]:
    runner.submit(request)
    return drive(runner)[request.request_id]


def test_a_tool_call_ends_the_turn_with_the_call_and_done_reason_tool_calls(tool_runner, monkeypatch):
    scripted(monkeypatch, tool_runner.tokenizer, CALL_TEXT)
    frames = submit_and_drive(tool_runner, chat(ChatMessage("user", "Weather in Paris?"), tools=TOOLS))
    final = frames[-1]
    assert final.done and final.done_reason == "tool_calls"
    calls = [c for f in frames for c in f.tool_calls]
    assert [(c.name, json.loads(c.arguments)) for c in calls] == [("get_weather", {"city": "Paris"})]
    assert calls[0].id.startswith("call_")
    assert "".join(f.text for f in frames) == ""
    assert "tool_call" not in "".join(f.text + f.thinking for f in frames)


def test_without_tools_the_same_output_is_plain_text(tool_runner, monkeypatch):
    scripted(monkeypatch, tool_runner.tokenizer, CALL_TEXT)
    frames = submit_and_drive(tool_runner, chat(ChatMessage("user", "Weather in Paris?")))
    assert frames[-1].done_reason == "stop"
    assert "".join(f.text for f in frames) == CALL_TEXT
    assert not any(f.tool_calls for f in frames)


def test_with_tool_choice_none_a_call_shaped_output_stays_text(tool_runner, monkeypatch):
    scripted(monkeypatch, tool_runner.tokenizer, CALL_TEXT)
    frames = submit_and_drive(tool_runner, chat(ChatMessage("user", "Weather in Paris?"), tools=TOOLS, tool_choice=ToolChoice("none")))
    assert frames[-1].done_reason == "stop"
    assert "".join(f.text for f in frames) == CALL_TEXT and not any(f.tool_calls for f in frames)


def test_tool_choice_none_on_a_model_without_tools_is_accepted(plain_runner):
    assert plain_runner.submit(chat(ChatMessage("user", "Hi"), tools=TOOLS, tool_choice=ToolChoice("none"))).prompt_tokens > 0
    drive(plain_runner)


def test_reasoning_is_split_from_the_answer(tool_runner, monkeypatch):
    scripted(monkeypatch, tool_runner.tokenizer, "<think>\nThe user says hi.\n</think>\n\nHello there")
    frames = submit_and_drive(tool_runner, chat(ChatMessage("user", "Hi"), think=True))
    assert "".join(f.thinking for f in frames) == "The user says hi."
    assert "".join(f.text for f in frames) == "Hello there"
    assert frames[-1].done_reason == "stop"


def test_a_prompt_that_opens_the_think_block_makes_the_output_start_as_thinking(think_open_model_dir, monkeypatch):
    runner = ModelRunner(think_open_model_dir, num_parallel=1, max_queue=1)
    scripted(monkeypatch, runner.tokenizer, "Thinking it over</think>The answer")
    frames = submit_and_drive(runner, chat(ChatMessage("user", "Hi")))
    assert "".join(f.thinking for f in frames) == "Thinking it over"
    assert "".join(f.text for f in frames) == "The answer"


def test_a_raw_prompt_refuses_tools_and_thinking(tool_runner):
    raw = GenerationRequest(request_id="raw-tools", prompt="hi", raw=True, tools=TOOLS)
    with pytest.raises(InvalidArgument, match="raw"):
        tool_runner.submit(raw)
    with pytest.raises(InvalidArgument, match="raw"):
        tool_runner.submit(GenerationRequest(request_id="raw-think", prompt="hi", raw=True, think=True))
