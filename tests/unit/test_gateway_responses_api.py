"""OpenAI's Responses API (/v1/responses): request translation, the response object, the typed event stream,
and the official `openai` client reading both, against the fake worker of tests/fixtures/gateway_harness.py."""

from __future__ import annotations

import json

import pytest

from mlxserve.gateway.openai_responses import parse_responses_request
from mlxserve.gateway.validation import BadField, UnsupportedField
from mlxserve.v1.frames import Stats, TokenEvent, ToolCall

from tests.fixtures.gateway_harness import harness, run, sse_events, text

pytestmark = pytest.mark.timeout(30)

SCHEMA = {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}
WEATHER = {"type": "function", "name": "get_weather", "description": "Weather in a city", "parameters": SCHEMA}


def finished(reason: str = "stop") -> TokenEvent:
    return TokenEvent(request_id="", done=True, done_reason=reason,
                      stats=Stats(prompt_eval_count=5, eval_count=3, prompt_tokens=5, cached_tokens=2))


# --- translation -------------------------------------------------------------------------------


def test_a_string_input_with_instructions_is_a_system_and_a_user_message():
    req, stream, echo = parse_responses_request({"model": "tiny", "input": "Hi", "instructions": "Be brief.",
                                                 "max_output_tokens": 7, "temperature": 0.5, "top_p": 0.9}, "rid")
    assert stream is False and req.is_chat
    assert [(m.role, m.content) for m in req.messages] == [("system", "Be brief."), ("user", "Hi")]
    assert (req.options.num_predict, req.options.temperature, req.options.top_p) == (7, 0.5, pytest.approx(0.9))
    assert echo.instructions == "Be brief." and echo.max_output_tokens == 7


def test_input_items_become_chat_turns_with_function_calls_and_their_outputs():
    req, _, _ = parse_responses_request({"model": "tiny", "input": [
        {"role": "developer", "content": "Use tools."},
        {"type": "message", "role": "user", "content": [{"type": "input_text", "text": "Weather in "}, {"type": "input_text", "text": "Paris?"}]},
        {"type": "function_call", "call_id": "call_1", "name": "get_weather", "arguments": "{\"city\": \"Paris\"}"},
        {"type": "function_call_output", "call_id": "call_1", "output": "sunny"},
        {"id": "msg_1", "type": "message", "role": "assistant", "status": "completed",
         "content": [{"type": "output_text", "text": "It is sunny.", "annotations": []}]},
    ]}, "rid")
    roles = [(m.role, m.content) for m in req.messages]
    assert roles == [("system", "Use tools."), ("user", "Weather in Paris?"), ("assistant", ""), ("tool", "sunny"),
                     ("assistant", "It is sunny.")]
    [call] = req.messages[2].tool_calls
    assert (call.id, call.name, json.loads(call.arguments)) == ("call_1", "get_weather", {"city": "Paris"})
    assert (req.messages[3].tool_call_id, req.messages[3].tool_name) == ("call_1", "get_weather")


def test_text_format_and_function_tools_take_the_chat_paths():
    req, _, echo = parse_responses_request({"model": "tiny", "input": "Hi", "tools": [WEATHER],
                                            "text": {"format": {"type": "json_schema", "name": "w", "schema": SCHEMA}}}, "rid")
    assert json.loads(req.format) == SCHEMA and echo.text_format["name"] == "w"
    [tool] = req.tools
    assert (tool.name, tool.description, tool.parameters) == ("get_weather", "Weather in a city", SCHEMA)
    req, _, _ = parse_responses_request({"model": "tiny", "input": "Hi", "text": {"format": {"type": "json_object"}},
                                         "tools": [WEATHER], "tool_choice": "none"}, "rid")
    assert req.format == "json" and req.tool_choice.mode == "none"


@pytest.mark.parametrize("field, value", [
    ("previous_response_id", "resp_123"), ("conversation", "conv_1"), ("background", True),
])
def test_stateful_fields_are_refused_naming_them(field, value):
    with pytest.raises(UnsupportedField) as e:
        parse_responses_request({"model": "tiny", "input": "Hi", field: value}, "rid")
    assert e.value.param == field and "keeps none" in e.value.message and e.value.http_status == 400


def test_store_false_is_accepted_and_store_true_is_ignored_and_named():
    req, _, _ = parse_responses_request({"model": "tiny", "input": "Hi", "store": False, "background": False}, "rid")
    assert req.messages[0].content == "Hi" and req.ignored == []
    req, _, _ = parse_responses_request({"model": "tiny", "input": "Hi", "store": True}, "rid")
    assert req.ignored == ["store"]  # the answer is the same; it just cannot be fetched again


@pytest.mark.parametrize("extra, param", [
    ({"input": [{"role": "user", "content": [{"type": "input_image", "image_url": "x"}]}]}, "input[0].content[0].type"),
    ({"input": [{"type": "item_reference", "id": "msg_1"}]}, "input[0].type"),
    ({"tools": [{"type": "web_search"}], "tool_choice": {"type": "web_search_preview"}}, "tool_choice.type"),
    ({"prompt": {"id": "pmpt_1"}}, "prompt"),
])
def test_what_the_server_cannot_do_is_a_400_naming_it(extra, param):
    with pytest.raises(UnsupportedField) as e:
        parse_responses_request({"model": "tiny", "input": "Hi", **extra}, "rid")
    assert e.value.param == param


@pytest.mark.parametrize("extra, param", [
    ({"input": ""}, "input"), ({"input": []}, "input"), ({"max_output_tokens": 0}, "max_output_tokens"),
    ({"temperature": 3}, "temperature"), ({"input": [{"role": "robot", "content": "x"}]}, "input[0].role"),
    ({"text": {"format": {"type": "json_schema", "name": "x"}}}, "text.format.schema"), ({"truncation": "middle"}, "truncation"),
])
def test_bad_values_are_a_400_naming_the_field(extra, param):
    with pytest.raises(BadField) as e:
        parse_responses_request({"model": "tiny", "input": "Hi", **extra}, "rid")
    assert e.value.param == param


def test_logprobs_are_asked_for_through_include_and_reasoning_effort_switches_thinking():
    req, _, _ = parse_responses_request({"model": "tiny", "input": "Hi", "include": ["message.output_text.logprobs"],
                                         "top_logprobs": 2, "reasoning": {"effort": "none"}, "truncation": "auto"}, "rid")
    assert (req.logprobs, req.top_logprobs, req.think, req.truncate) == (True, 2, False, True)


# --- rendering through the gateway ------------------------------------------------------------------


def test_non_streamed_response_has_a_message_with_output_text_and_usage():
    async def scenario():
        async with harness() as h:
            resp = await h.post("/v1/responses", {"model": "tiny", "input": "Hi", "instructions": "Be brief."})
            body = await resp.json()
            assert resp.status == 200 and body["object"] == "response" and body["id"].startswith("resp_")
            assert body["status"] == "completed" and body["incomplete_details"] is None and body["error"] is None
            assert body["instructions"] == "Be brief." and body["model"] == "tiny" and body["store"] is False
            [item] = body["output"]
            assert item["type"] == "message" and item["role"] == "assistant" and item["status"] == "completed"
            assert item["content"] == [{"type": "output_text", "text": "Hello", "annotations": [], "logprobs": []}]
            assert body["usage"] == {"input_tokens": 5, "input_tokens_details": {"cached_tokens": 0}, "output_tokens": 3,
                                     "output_tokens_details": {"reasoning_tokens": 0}, "total_tokens": 8}
            submit, _ = h.worker.submits[0]
            assert submit.is_chat and [m.role for m in submit.messages] == ["system", "user"]
    run(scenario())


def test_hitting_max_output_tokens_is_an_incomplete_response():
    async def scenario():
        async with harness() as h:
            h.worker.plan = [text("Hel"), finished("length")]
            body = await (await h.post("/v1/responses", {"model": "tiny", "input": "Hi", "max_output_tokens": 1})).json()
            assert body["status"] == "incomplete" and body["incomplete_details"] == {"reason": "max_output_tokens"}
            assert body["output"][0]["status"] == "incomplete" and body["max_output_tokens"] == 1
            assert body["usage"]["input_tokens_details"] == {"cached_tokens": 2}
    run(scenario())


def test_tool_calls_are_function_call_items_with_string_arguments():
    async def scenario():
        async with harness() as h:
            call = ToolCall(name="get_weather", arguments='{"city":"Paris"}', id="call_9")
            h.worker.plan = [TokenEvent(request_id="", thinking="need weather"),
                             TokenEvent(request_id="", tool_calls=[call]), finished("tool_calls")]
            body = await (await h.post("/v1/responses", {"model": "tiny", "input": "Weather?", "tools": [WEATHER]})).json()
            assert [i["type"] for i in body["output"]] == ["reasoning", "function_call"]
            assert body["output"][0]["content"] == [{"type": "reasoning_text", "text": "need weather"}]
            fc = body["output"][1]
            assert (fc["call_id"], fc["name"], fc["arguments"], fc["status"]) == ("call_9", "get_weather", '{"city":"Paris"}', "completed")
            assert body["tools"] == [WEATHER] and body["status"] == "completed"
    run(scenario())


def test_stream_is_the_typed_event_sequence_with_increasing_sequence_numbers():
    async def scenario():
        async with harness() as h:
            resp = await h.post("/v1/responses", {"model": "tiny", "input": "Hi", "stream": True})
            assert resp.status == 200 and resp.headers["Content-Type"].startswith("text/event-stream")
            events = await sse_events(resp)
            assert [kind for kind, _ in events] == [
                "response.created", "response.in_progress", "response.output_item.added", "response.content_part.added",
                "response.output_text.delta", "response.output_text.delta", "response.output_text.done",
                "response.content_part.done", "response.output_item.done", "response.completed"]
            assert [d["sequence_number"] for _, d in events] == list(range(len(events)))
            assert [d["delta"] for k, d in events if k == "response.output_text.delta"] == ["Hel", "lo"]
            created, completed = events[0][1]["response"], events[-1][1]["response"]
            assert created["status"] == "in_progress" and created["output"] == [] and created["id"] == completed["id"]
            assert completed["status"] == "completed" and completed["output"][0]["content"][0]["text"] == "Hello"
            assert completed["usage"]["total_tokens"] == 8
            item_id = events[2][1]["item"]["id"]
            assert all(d["item_id"] == item_id for _, d in events[3:9] if "item_id" in d)
    run(scenario())


def test_a_failure_mid_stream_is_an_error_event_then_response_failed():
    async def scenario():
        async with harness() as h:
            h.worker.plan = [text("Hel"), TokenEvent(request_id="", done=True, done_reason="error", error="out of memory")]
            resp = await h.post("/v1/responses", {"model": "tiny", "input": "Hi", "stream": True})
            events = await sse_events(resp)
            assert resp.status == 200
            assert events[-2][0] == "error" and events[-2][1]["message"] == "out of memory"
            assert events[-1][0] == "response.failed" and events[-1][1]["response"]["error"]["message"] == "out of memory"
    run(scenario())
