"""Two consecutive frames of one request merge into one that says the same thing."""

from __future__ import annotations

import functools

import pytest

from mlxserve.v1 import frames
from mlxserve.v1.frames import Stats, TokenEvent, TokenLogprob, ToolCall


def stream() -> list[TokenEvent]:
    return [
        TokenEvent("r", thinking="let me ", token_ids=[1], logprobs=[TokenLogprob("let", -0.1)]),
        TokenEvent("r", thinking="see", token_ids=[2], logprobs=[TokenLogprob(" see", -0.2)]),
        TokenEvent("r", text="", token_ids=[3], logprobs=[TokenLogprob("<", -0.3)]),  # text held back
        TokenEvent("r", text="Hello", token_ids=[4, 5], logprobs=[TokenLogprob("Hel", -0.4), TokenLogprob("lo", -0.5)]),
        TokenEvent("r", tool_calls=[ToolCall("get_weather", '{"city": "Paris"}', "call_1")], token_ids=[6]),
        TokenEvent("r", text=" there", token_ids=[7], done=True, done_reason="tool_calls",
                   stats=Stats(prompt_tokens=12, eval_count=7), stop_sequence=None),
    ]


def test_merged_stream_carries_every_token_text_and_call_in_order() -> None:
    merged = functools.reduce(frames.merge, stream())
    assert merged.request_id == "r"
    assert merged.thinking == "let me see"
    assert merged.text == "Hello there"
    assert merged.token_ids == [1, 2, 3, 4, 5, 6, 7]
    assert [lp.token for lp in merged.logprobs] == ["let", " see", "<", "Hel", "lo"]
    assert merged.tool_calls == [ToolCall("get_weather", '{"city": "Paris"}', "call_1")]


def test_merged_frame_ends_as_the_last_frame_does() -> None:
    merged = functools.reduce(frames.merge, stream())
    assert merged.done and merged.done_reason == "tool_calls"
    assert merged.stats == Stats(prompt_tokens=12, eval_count=7)
    stopped = frames.merge(TokenEvent("r", text="a"), TokenEvent("r", text="b", done=True, done_reason="stop", stop_sequence="END"))
    assert stopped.stop_sequence == "END" and stopped.text == "ab"
    failed = frames.merge(TokenEvent("r", text="a"), TokenEvent("r", done=True, done_reason="error", error="boom"))
    assert (failed.done_reason, failed.error, failed.text) == ("error", "boom", "a")


def test_merging_leaves_the_original_frames_unchanged() -> None:
    first, later = TokenEvent("r", text="a", token_ids=[1]), TokenEvent("r", text="b", token_ids=[2])
    frames.merge(first, later)
    assert (first.text, first.token_ids, later.text, later.token_ids) == ("a", [1], "b", [2])


def test_merged_frame_survives_the_wire() -> None:
    merged = functools.reduce(frames.merge, stream())
    assert frames.decode(frames.encode(merged)) == merged


def test_nothing_merges_after_a_done_frame_or_across_requests() -> None:
    with pytest.raises(ValueError, match="already ended"):
        frames.merge(TokenEvent("r", done=True, done_reason="stop"), TokenEvent("r", text="late"))
    with pytest.raises(ValueError, match="different requests"):
        frames.merge(TokenEvent("a", text="x"), TokenEvent("b", text="y"))
