"""What the chat template is given: the author's `name`, and the request's extra template variables."""

from __future__ import annotations

import json
from pathlib import Path

import mlx_lm
import pytest

from mlxserve.services.common.errors import InvalidArgument
from mlxserve.services.worker.prompts import ChatMessage, GenerationRequest, render_prompt
from tests.fixtures.tiny_model import write_tiny_model
from tests.fixtures.tool_model import tool_model_dir  # noqa: F401 - fixture

# Shows each author's name, and a `style` variable when the request gives one.
TEMPLATE = (
    "{% for m in messages %}<|im_start|>{{ m.role }}{% if m.name %} ({{ m.name }}){% endif %}: "
    "{{ m.content }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% if style is defined %}[{{ style }}] {% endif %}{% endif %}"
)


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory: pytest.TempPathFactory):
    path = write_tiny_model(tmp_path_factory.mktemp("named"))
    config = json.loads((path / "tokenizer_config.json").read_text())
    config["chat_template"] = TEMPLATE
    (path / "tokenizer_config.json").write_text(json.dumps(config))
    return mlx_lm.load(str(path))[1]


def chat(*messages: ChatMessage, **fields) -> GenerationRequest:
    return GenerationRequest("t", is_chat=True, messages=messages, **fields)


def test_a_message_author_name_reaches_the_template(tokenizer) -> None:
    prompt = render_prompt(tokenizer, chat(ChatMessage("user", "Plan the trip", name="planner"),
                                           ChatMessage("assistant", "On it", name="travel_agent")))
    assert "<|im_start|>user (planner): Plan the trip" in prompt
    assert "<|im_start|>assistant (travel_agent): On it" in prompt


def test_a_template_that_ignores_names_renders_as_without_them(tool_model_dir: Path) -> None:
    qwen = mlx_lm.load(str(tool_model_dir))[1]
    named = render_prompt(qwen, chat(ChatMessage("user", "Hi", name="alice")))
    assert named == render_prompt(qwen, chat(ChatMessage("user", "Hi")))


def test_chat_template_kwargs_reach_the_template(tokenizer) -> None:
    prompt = render_prompt(tokenizer, chat(ChatMessage("user", "Hi"), chat_template_kwargs={"style": "terse"}))
    assert prompt.endswith("<|im_start|>assistant\n[terse] ")


def test_the_requests_own_variables_win_over_chat_template_kwargs(tokenizer) -> None:
    plain = render_prompt(tokenizer, chat(ChatMessage("user", "Hi")))
    overridden = render_prompt(tokenizer, chat(ChatMessage("user", "Hi"), chat_template_kwargs={
        "add_generation_prompt": False, "messages": [{"role": "user", "content": "other"}], "tools": [{"x": 1}],
    }))
    assert overridden == plain


def test_enable_thinking_in_kwargs_applies_unless_think_is_set(tool_model_dir: Path) -> None:
    qwen = mlx_lm.load(str(tool_model_dir))[1]
    off = render_prompt(qwen, chat(ChatMessage("user", "Hi"), chat_template_kwargs={"enable_thinking": False}))
    assert off.endswith("<think>\n\n</think>\n\n")
    think_wins = render_prompt(qwen, chat(ChatMessage("user", "Hi"), think=True, chat_template_kwargs={"enable_thinking": False}))
    assert think_wins.endswith("<|im_start|>assistant\n")


@pytest.mark.parametrize(("kwargs", "complaint"), [
    ([1, 2], "must be a JSON object"),
    ("text", "must be a JSON object"),
    ({"chat_template": "{{ 1 }}"}, "cannot set 'chat_template'"),
    ({"tokenize": True}, "cannot set 'tokenize'"),
])
def test_bad_chat_template_kwargs_are_invalid_arguments(kwargs: object, complaint: str) -> None:
    with pytest.raises(InvalidArgument, match=complaint):
        GenerationRequest("k", is_chat=True, chat_template_kwargs=kwargs, messages=(ChatMessage("user", "Hi"),)).validate()


def test_raw_prompts_take_no_template_variables() -> None:
    with pytest.raises(InvalidArgument, match="raw"):
        GenerationRequest("r", prompt="hi", raw=True, chat_template_kwargs={"style": "x"}).validate()


# Gemma's rule: after an optional leading system message, turns alternate user/assistant.
ALTERNATING = (
    "{% if messages[0].role == 'system' %}{% set first = messages[0].content + '\\n\\n' %}{% set loop_messages = messages[1:] %}"
    "{% else %}{% set first = '' %}{% set loop_messages = messages %}{% endif %}"
    "{% for m in loop_messages %}{% if (m.role == 'user') != (loop.index0 % 2 == 0) %}"
    "{{ raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}{% endif %}"
    "<turn>{{ m.role }}\n{% if loop.first %}{{ first }}{% endif %}{{ m.content }}<end>\n{% endfor %}"
    "{% if add_generation_prompt %}<turn>assistant\n{% endif %}"
)


def test_a_mid_conversation_system_message_stays_in_place_where_the_template_renders_it(tokenizer) -> None:
    prompt = render_prompt(tokenizer, chat(ChatMessage("system", "Be brief."), ChatMessage("user", "Hi"),
                                           ChatMessage("system", "Agents: Explore, Plan.")))
    assert prompt.endswith("<|im_start|>user: Hi<|im_end|>\n<|im_start|>system: Agents: Explore, Plan.<|im_end|>\n"
                           "<|im_start|>assistant\n")


def test_a_mid_conversation_system_message_joins_the_turn_before_where_the_template_insists_on_alternation(
        tmp_path: Path) -> None:
    path = write_tiny_model(tmp_path)
    config = json.loads((path / "tokenizer_config.json").read_text())
    config["chat_template"] = ALTERNATING
    (path / "tokenizer_config.json").write_text(json.dumps(config))
    gemma_like = mlx_lm.load(str(path))[1]
    turn1 = render_prompt(gemma_like, chat(ChatMessage("system", "Be brief."), ChatMessage("user", "Hi"),
                                           ChatMessage("system", "Agents: Explore.")))
    assert turn1 == "<turn>user\nBe brief.\n\nHi\n\nAgents: Explore.<end>\n<turn>assistant\n"
    # The next turn renders the first one the same way: its prefix stays cached.
    turn2 = render_prompt(gemma_like, chat(ChatMessage("system", "Be brief."), ChatMessage("user", "Hi"),
                                           ChatMessage("system", "Agents: Explore."), ChatMessage("assistant", "Hello."),
                                           ChatMessage("user", "Thanks"), ChatMessage("system", "Mind the tests.")))
    assert turn2.startswith(turn1.removesuffix("<turn>assistant\n"))
    assert turn2.endswith("<turn>user\nThanks\n\nMind the tests.<end>\n<turn>assistant\n")
    # After a tool result (no user turn to join) it is a user turn of its own.
    tool_turn = render_prompt(gemma_like, chat(ChatMessage("user", "Run it"), ChatMessage("assistant", "Running."),
                                               ChatMessage("system", "Output follows."), ChatMessage("assistant", "ok")
                                               , ChatMessage("user", "go")))
    assert "<turn>user\nOutput follows.<end>" in tool_turn
