"""OutputParser on synthetic text: content, thinking and tool calls, however the text is split."""

from __future__ import annotations

import json
from types import SimpleNamespace

import pytest
from mlx_lm.tool_parsers import json_tools

from mlxserve.services.worker.outputs import OutputParser, Parsed

CALL = '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n</tool_call>'


def fake_tokenizer(*, thinking: bool = True, tools: bool = True) -> SimpleNamespace:
    """The TokenizerWrapper attributes the parser reads, as mlx-lm sets them for Qwen3."""
    return SimpleNamespace(
        has_thinking=thinking,
        think_start="<think>" if thinking else None,
        think_end="</think>" if thinking else None,
        has_tool_calling=tools,
        tool_call_start=json_tools.tool_call_start if tools else None,
        tool_call_end=json_tools.tool_call_end if tools else None,
        tool_parser=json_tools.parse_tool_call if tools else None,
    )


def run(parser: OutputParser, pieces: list[str]) -> Parsed:
    total = Parsed()
    for piece in [*pieces, None]:
        part = parser.finish() if piece is None else parser.feed(piece)
        total.content += part.content
        total.thinking += part.thinking
        total.tool_calls += part.tool_calls
    return total


def every_split(text: str):
    """The text in two deltas at every character boundary, then one character at a time."""
    for i in range(len(text) + 1):
        yield [text[:i], text[i:]]
    yield list(text)


def calls(parsed: Parsed) -> list[tuple[str, dict]]:
    return [(c.name, json.loads(c.arguments)) for c in parsed.tool_calls]


def test_thinking_and_content_are_split_at_every_boundary():
    text = "<think>\nThe user wants a greeting.\n</think>\n\nHello there!"
    for pieces in every_split(text):
        out = run(OutputParser(fake_tokenizer(), tools=False), pieces)
        assert out.content == "Hello there!", pieces
        assert out.thinking == "The user wants a greeting.", pieces
        assert out.tool_calls == []


def test_a_tool_call_is_parsed_at_every_boundary():
    text = "Let me check." + "\n" + CALL
    for pieces in every_split(text):
        out = run(OutputParser(fake_tokenizer(), tools=True), pieces)
        assert out.content == "Let me check.", pieces
        assert calls(out) == [("get_weather", {"city": "Paris"})], pieces


def test_tool_calls_have_openai_style_ids_and_json_text_arguments():
    out = run(OutputParser(fake_tokenizer(), tools=True), [CALL])
    (call,) = out.tool_calls
    assert call.id.startswith("call_") and len(call.id) > len("call_")
    assert json.loads(call.arguments) == {"city": "Paris"}


def test_several_calls_in_one_turn_all_come_back_in_order():
    second = CALL.replace("Paris", "Oslo")
    text = "<think>two cities</think>" + CALL + "\n" + second + "\n"
    for pieces in every_split(text):
        out = run(OutputParser(fake_tokenizer(), tools=True), pieces)
        assert calls(out) == [("get_weather", {"city": "Paris"}), ("get_weather", {"city": "Oslo"})], pieces
        assert out.thinking == "two cities"
        assert out.content == ""
        assert len({c.id for c in out.tool_calls}) == 2


def test_markers_split_across_many_deltas_never_leak_into_content():
    parser = OutputParser(fake_tokenizer(), tools=True)
    shown = ""
    for piece in ["Sure", " <tool", "_ca", "ll>", '{"name": "f", "arguments": {}}', "</tool_", "call>"]:
        part = parser.feed(piece)
        shown += part.content
        assert "<" not in shown
    tail = parser.finish()
    assert shown + tail.content == "Sure"
    assert parser.made_tool_call


def test_a_malformed_call_stays_in_the_content():
    text = "<tool_call>{not json</tool_call> done"
    out = run(OutputParser(fake_tokenizer(), tools=True), [text])
    assert out.tool_calls == []
    assert out.content == text


def test_a_call_without_a_name_stays_in_the_content():
    text = '<tool_call>{"arguments": {}}</tool_call>'
    out = run(OutputParser(fake_tokenizer(), tools=True), [text])
    assert out.tool_calls == [] and out.content == text


def test_an_unterminated_call_is_parsed_if_complete_else_kept_as_content():
    complete = run(OutputParser(fake_tokenizer(), tools=True), ['<tool_call>{"name": "f", "arguments": {"a": 1}}'])
    assert calls(complete) == [("f", {"a": 1})]
    cut = run(OutputParser(fake_tokenizer(), tools=True), ['<tool_call>{"name": "f", "argu'])
    assert cut.tool_calls == [] and cut.content == '<tool_call>{"name": "f", "argu'


def test_without_tools_requested_call_markup_is_plain_content():
    out = run(OutputParser(fake_tokenizer(), tools=False), [CALL])
    assert out.tool_calls == [] and out.content == CALL


def test_a_model_without_markers_passes_text_through():
    text = "<think>not a marker here</think> <tool_call>"
    for pieces in every_split(text):
        out = run(OutputParser(fake_tokenizer(thinking=False, tools=False), tools=True), pieces)
        assert out.content == text and out.thinking == ""


def test_a_partial_marker_at_the_end_is_released_as_content():
    out = run(OutputParser(fake_tokenizer(), tools=True), ["The tag <thi"])
    assert out.content == "The tag <thi"


def test_an_unclosed_think_block_ends_as_thinking():
    out = run(OutputParser(fake_tokenizer(), tools=False), ["<think>still going </th"])
    assert out.thinking == "still going </th" and out.content == ""


@pytest.mark.parametrize("think", [None, True, False])
def test_a_prompt_that_opens_the_think_block_starts_in_thinking(think):
    tok = fake_tokenizer()
    # rfind over prompt tokens, as mlx-lm's TokenizerWrapper does: 7 = <think>, 8 = </think>.
    tok.rfind_think_start = lambda tokens: max((i for i, t in enumerate(tokens) if t == 7), default=-1)
    tok.rfind_think_end = lambda tokens: max((i for i, t in enumerate(tokens) if t == 8), default=-1)
    opened = run(OutputParser(tok, tools=False, think=think, prompt_tokens=[1, 2, 7]), ["reasoning</think>answer"])
    assert (opened.thinking, opened.content) == ("reasoning", "answer")
    closed = run(OutputParser(tok, tools=False, think=think, prompt_tokens=[1, 7, 8]), ["answer"])
    assert (closed.thinking, closed.content) == ("", "answer")


def test_text_that_turns_out_not_to_be_a_marker_is_shown_before_the_end():
    parser = OutputParser(fake_tokenizer(), tools=True)
    shown = [parser.feed(piece).content for piece in ["x = a ", "<< b;", " <", "<", " c"]]
    assert "".join(shown) == "x = a << b; << c"  # all of it streamed, none left for finish()
    assert shown[2:4] == ["", ""]  # "<" could still have begun a marker
    assert parser.finish().content == ""
