"""Request translation and validation for both dialects: what reaches the worker, what is refused."""

from __future__ import annotations

import calendar
import re
import time

import pytest

from mlxserve.gateway.native import created_at, parse_chat, parse_generate, parse_options
from mlxserve.gateway.openai_api import parse_chat_completion
from mlxserve.gateway.validation import BadField, UnsupportedField, parse_keep_alive
from mlxserve.services.common.errors import InvalidArgument


@pytest.mark.parametrize("value, seconds", [
    ("5m", 300.0), ("1h30m", 5400.0), ("10s", 10.0), ("1.5h", 5400.0), ("300ms", 0.3), ("0", 0.0),
    ("300", 300.0), (120, 120.0), (2.5, 2.5), (0, 0.0), (-1, -1.0), ("-1m", -1.0), ("-5", -1.0), (None, None), ("", None),
])
def test_keep_alive_accepts_go_durations_and_seconds(value, seconds):
    got = parse_keep_alive(value)
    if seconds is None:
        assert got is None
    else:
        assert got == pytest.approx(seconds)


@pytest.mark.parametrize("value", ["5 minutes", "m", "1x", "5m3", True, [5], {"s": 1}])
def test_keep_alive_refuses_what_is_not_a_duration(value):
    with pytest.raises(BadField) as e:
        parse_keep_alive(value)
    assert e.value.param == "keep_alive" and e.value.http_status == 400


def test_generate_translates_prompt_system_raw_and_options():
    req, stream = parse_generate({
        "model": "tiny", "prompt": "Why is the sky blue?", "system": "Be brief.", "raw": True, "keep_alive": "1h",
        "options": {"temperature": 0.2, "top_p": 0.9, "top_k": 40, "min_p": 0.05, "seed": 7, "num_predict": 12.0,
                    "stop": ["\n\n"], "num_ctx": 2048, "num_thread": 4, "repeat_penalty": 1.1},
    }, "rid1")
    assert stream is True  # Ollama streams unless told not to
    assert (req.model, req.prompt, req.system, req.raw, req.is_chat) == ("tiny", "Why is the sky blue?", "Be brief.", True, False)
    assert req.keep_alive_s == 3600.0
    o = req.options
    assert (o.temperature, o.top_p, o.top_k, o.min_p, o.seed, o.num_predict, list(o.stop), o.num_ctx) == (
        pytest.approx(0.2), pytest.approx(0.9), 40, pytest.approx(0.05), 7, 12, ["\n\n"], 2048)


def test_options_left_out_stay_unset_so_the_model_defaults_apply():
    o = parse_options({"temperature": 0})
    assert o.temperature == 0
    assert (o.top_p, o.num_predict, o.seed) == (None, None, None)


@pytest.mark.parametrize("options, field", [
    ({"temperature": "hot"}, "options.temperature"),
    ({"top_k": 1.5}, "options.top_k"),
    ({"seed": True}, "options.seed"),
    ({"num_predict": "10"}, "options.num_predict"),
    ({"stop": [1, 2]}, "options.stop[0]"),
    ({"top_p": 3}, "options.top_p"),
    ({"temperature": -1}, "options.temperature"),
])
def test_wrong_option_types_are_a_400_naming_the_field(options, field):
    with pytest.raises(BadField) as e:
        parse_generate({"model": "tiny", "prompt": "hi", "options": options}, "rid")
    assert e.value.param == field and field in e.value.message and e.value.http_status == 400


@pytest.mark.parametrize("field, value", [
    ("images", ["aGk="]), ("suffix", "end"), ("tools", [{"type": "function", "function": {"name": "f"}}]),
    ("template", "{{ .Prompt }}"),
])
def test_generate_refuses_fields_it_cannot_honour(field, value):
    with pytest.raises(UnsupportedField) as e:
        parse_generate({"model": "tiny", "prompt": "hi", field: value}, "rid")
    assert field in e.value.message and e.value.http_status == 400


def test_neutral_values_of_unsupported_fields_are_accepted():
    # The ollama client always sends `tools: []`; `think: false` and `format: ""` ask for nothing.
    req, _ = parse_chat({"model": "tiny", "messages": [], "tools": [], "think": False, "format": "", "stream": False}, "rid")
    assert req.messages == []


def test_chat_translates_messages_and_refuses_images_in_them():
    req, stream = parse_chat({"model": "tiny", "stream": False, "messages": [
        {"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}]}, "rid")
    assert stream is False and req.is_chat and [(m.role, m.content) for m in req.messages] == [("system", "Be brief."), ("user", "Hi")]
    with pytest.raises(UnsupportedField) as e:
        parse_chat({"model": "tiny", "messages": [{"role": "user", "content": "what is this", "images": ["aGk="]}]}, "rid")
    assert e.value.param == "messages[0].images"
    with pytest.raises(BadField) as e:
        parse_chat({"model": "tiny", "messages": [{"role": "wizard", "content": "hi"}]}, "rid")
    assert e.value.param == "messages[0].role"


@pytest.mark.parametrize("body", [{"prompt": "hi"}, {"model": "", "prompt": "hi"}, {"model": 3, "prompt": "hi"}])
def test_missing_or_bad_model_is_a_400(body):
    with pytest.raises(InvalidArgument) as e:
        parse_generate(body, "rid")
    assert "model" in e.value.message


def test_openai_text_parts_are_joined_and_developer_is_a_system_message():
    req, stream, include_usage = parse_chat_completion({
        "model": "tiny", "stream": True, "stream_options": {"include_usage": True},
        "messages": [{"role": "developer", "content": "Be brief."},
                     {"role": "user", "content": [{"type": "text", "text": "Hello "}, {"type": "text", "text": "there"}]}],
        "max_tokens": 9, "temperature": 0.5, "top_p": 0.8, "seed": 3, "stop": "END", "n": 1,
        "frequency_penalty": 0, "presence_penalty": 0.0, "logprobs": False,
    }, "rid")
    assert (stream, include_usage) == (True, True)
    assert [(m.role, m.content) for m in req.messages] == [("system", "Be brief."), ("user", "Hello there")]
    o = req.options
    assert (o.num_predict, o.temperature, o.top_p, o.seed, list(o.stop)) == (9, 0.5, pytest.approx(0.8), 3, ["END"])


def test_openai_max_completion_tokens_wins_over_max_tokens():
    req, _, _ = parse_chat_completion({"model": "tiny", "messages": [{"role": "user", "content": "hi"}],
                                       "max_tokens": 50, "max_completion_tokens": 5}, "rid")
    assert req.options.num_predict == 5


@pytest.mark.parametrize("extra, param", [
    ({"n": 2}, "n"),
    ({"tools": [{"type": "custom", "custom": {"name": "f"}}]}, "tools[0].type"),
    ({"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "http://x/y.png"}}]}]},
     "messages[0].content[0].type"),
    ({"audio": {"voice": "alloy", "format": "wav"}, "modalities": ["text", "audio"]}, "audio"),
    ({"modalities": ["text", "audio"]}, "modalities"),
])
def test_openai_unsupported_parameters_are_refused_naming_them(extra, param):
    body = {"model": "tiny", "messages": [{"role": "user", "content": "hi"}], **extra}
    with pytest.raises(UnsupportedField) as e:
        parse_chat_completion(body, "rid")
    assert e.value.param == param and param in e.value.message


@pytest.mark.parametrize("extra, param", [
    ({"messages": []}, "messages"),
    ({"temperature": "warm"}, "temperature"),
    ({"max_tokens": 0}, "max_tokens"),
    ({"stop": [1]}, "stop[0]"),
    ({"stream_options": {"include_usage": True}}, "stream_options"),
])
def test_openai_bad_values_are_a_400_naming_the_parameter(extra, param):
    body = {"model": "tiny", "messages": [{"role": "user", "content": "hi"}], **extra}
    with pytest.raises(BadField) as e:
        parse_chat_completion(body, "rid")
    assert e.value.param == param


def test_created_at_is_rfc3339_with_nanoseconds_like_ollama():
    stamp = created_at()
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d{1,9})?Z", stamp)
    seconds = calendar.timegm(time.strptime(stamp[:19], "%Y-%m-%dT%H:%M:%S"))
    assert abs(seconds - time.time()) < 5


@pytest.mark.parametrize("field, value, hint", [
    ("images", ["aGk="], "vision"), ("suffix", "end", "fill-in-the-middle"), ("template", "{{ .Prompt }}", "/api/create"),
])
def test_refused_ollama_fields_say_what_to_do_instead(field, value, hint):
    with pytest.raises(UnsupportedField) as e:
        parse_generate({"model": "tiny", "prompt": "hi", field: value}, "rid")
    assert e.value.param == field and hint in e.value.message
