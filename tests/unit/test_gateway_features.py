"""Generation features over HTTP: structured output, tools, thinking, logprobs, penalties, completions, embeddings.

Translation is checked on the parsers (what reaches the worker in SubmitRequest); rendering through
the real gateway against the fake worker of tests/fixtures/gateway_harness.py (the official clients read the
same answers in tests/e2e/test_gateway_sdk_clients.py).
"""

from __future__ import annotations

import json

import pytest

from mlxserve.gateway.native import parse_chat, parse_generate, parse_options
from mlxserve.gateway.openai_api import parse_chat_completion, parse_completion
from mlxserve.gateway.validation import BadField, UnsupportedField
from mlxserve.v1.frames import TokenEvent

from tests.fixtures.gateway_harness import harness, ndjson, run, text, wait_for
from tests.fixtures.gateway_plans import USER, WEATHER, finished, lp, tool_plan

pytestmark = pytest.mark.timeout(30)

SCHEMA = {"type": "object", "properties": {"name": {"type": "string"}}, "required": ["name"]}


# --- translation -------------------------------------------------------------------------------

def test_native_penalty_options_reach_the_worker():
    o = parse_options({"repeat_penalty": 1.1, "repeat_last_n": 64, "presence_penalty": 0.5, "frequency_penalty": -0.5})
    assert (o.repeat_penalty, o.repeat_last_n, o.presence_penalty, o.frequency_penalty) == (
        pytest.approx(1.1), 64, 0.5, -0.5)
    assert parse_options({}).repeat_penalty is None
    with pytest.raises(BadField) as e:
        parse_options({"repeat_last_n": -2})
    assert e.value.param == "options.repeat_last_n"


@pytest.mark.parametrize("value, expected", [("json", "json"), ("", ""), (SCHEMA, json.dumps(SCHEMA, separators=(",", ":")))])
def test_ollama_format_becomes_json_or_the_schema_text(value, expected):
    req, _ = parse_generate({"model": "tiny", "prompt": "hi", "format": value}, "rid")
    assert req.format == expected
    if isinstance(value, dict):
        assert json.loads(req.format) == SCHEMA


@pytest.mark.parametrize("value", ["yaml", 3, ["json"]])
def test_ollama_format_other_than_json_or_a_schema_is_a_400(value):
    with pytest.raises(BadField) as e:
        parse_chat({"model": "tiny", "messages": USER, "format": value}, "rid")
    assert e.value.param == "format"


def test_ollama_chat_carries_tools_think_logprobs_truncate_and_tool_turns():
    req, _ = parse_chat({"model": "tiny", "tools": [WEATHER], "think": True, "logprobs": True, "top_logprobs": 3,
                         "truncate": False, "messages": [
                             {"role": "user", "content": "Weather in Paris?"},
                             {"role": "assistant", "content": "", "thinking": "I should call the tool.",
                              "tool_calls": [{"function": {"name": "get_weather", "arguments": {"city": "Paris"}}}]},
                             {"role": "tool", "content": "18C", "tool_name": "get_weather"}]}, "rid")
    [tool_def] = req.tools
    assert (tool_def.name, tool_def.description) == ("get_weather", "Weather in a city")
    assert tool_def.parameters == WEATHER["function"]["parameters"]
    assert req.tool_choice.mode == "auto"  # Ollama's chat has no tool_choice: the model decides
    assert (req.think, req.logprobs, req.top_logprobs, req.truncate) == (True, True, 3, False)
    assistant, tool = req.messages[1], req.messages[2]
    assert assistant.thinking == "I should call the tool."
    [call] = assistant.tool_calls
    assert (call.id, call.name, json.loads(call.arguments)) == ("", "get_weather", {"city": "Paris"})
    assert (tool.role, tool.content, tool.tool_name) == ("tool", "18C", "get_weather")


@pytest.mark.parametrize("extra, param", [
    ({"top_logprobs": 2}, "top_logprobs"),                      # needs logprobs on
    ({"logprobs": True, "top_logprobs": 21}, "top_logprobs"),
    ({"think": "yes"}, "think"),
    ({"truncate": "no"}, "truncate"),
    ({"tools": [{"type": "function", "function": {}}]}, "tools[0].function.name"),
    ({"messages": [{"role": "assistant", "tool_calls": [{"function": {"name": "f", "arguments": "[1]"}}]}]},
     "messages[0].tool_calls[0].function.arguments"),
])
def test_ollama_bad_feature_values_are_a_400_naming_the_field(extra, param):
    with pytest.raises(BadField) as e:
        parse_chat({"model": "tiny", "messages": USER, **extra}, "rid")
    assert e.value.param == param


def test_openai_sampling_penalties_seed_and_logit_bias_reach_the_worker():
    req, _, _ = parse_chat_completion({"model": "tiny", "messages": USER, "seed": 42, "presence_penalty": 0.5,
                                       "frequency_penalty": 1.5, "logit_bias": {"50256": -100, "7": 2.5}}, "rid")
    o = req.options
    assert (o.seed, o.presence_penalty, o.frequency_penalty) == (42, 0.5, 1.5)
    assert dict(o.logit_bias) == {50256: -100.0, 7: 2.5}


@pytest.mark.parametrize("bias", [{"x": 1}, {"5": 101}, {"5": "1"}, {"-3": 1}])
def test_openai_logit_bias_needs_token_ids_and_values_within_100(bias):
    with pytest.raises(BadField) as e:
        parse_chat_completion({"model": "tiny", "messages": USER, "logit_bias": bias}, "rid")
    assert e.value.param == "logit_bias"


@pytest.mark.parametrize("response_format, expected", [
    ({"type": "text"}, ""),
    ({"type": "json_object"}, "json"),
    ({"type": "json_schema", "json_schema": {"name": "person", "schema": SCHEMA, "strict": True}}, json.dumps(SCHEMA, separators=(",", ":"))),
])
def test_openai_response_format_becomes_the_worker_format(response_format, expected):
    req, _, _ = parse_chat_completion({"model": "tiny", "messages": USER, "response_format": response_format}, "rid")
    assert req.format == expected


def test_openai_response_format_of_an_unknown_type_is_a_400():
    with pytest.raises(BadField) as e:
        parse_chat_completion({"model": "tiny", "messages": USER, "response_format": {"type": "xml"}}, "rid")
    assert e.value.param == "response_format.type"


def test_openai_tool_turns_become_chat_messages_with_names_found_by_call_id():
    req, _, _ = parse_chat_completion({"model": "tiny", "tools": [WEATHER], "messages": [
        {"role": "user", "content": "Weather in Paris?"},
        {"role": "assistant", "content": None, "reasoning_content": "Call it.", "tool_calls": [
            {"id": "call_1", "type": "function", "function": {"name": "get_weather", "arguments": "{\"city\": \"Paris\"}"}}]},
        {"role": "tool", "tool_call_id": "call_1", "content": "18C"}]}, "rid")
    assert [t.name for t in req.tools] == ["get_weather"]
    assistant, tool = req.messages[1], req.messages[2]
    assert (assistant.content, assistant.thinking) == ("", "Call it.")
    [call] = assistant.tool_calls
    assert (call.id, call.name, json.loads(call.arguments)) == ("call_1", "get_weather", {"city": "Paris"})
    assert (tool.role, tool.tool_call_id, tool.tool_name, tool.content) == ("tool", "call_1", "get_weather", "18C")


def test_openai_tool_choice_none_asks_the_worker_for_no_call():
    req, _, _ = parse_chat_completion({"model": "tiny", "messages": USER, "tools": [WEATHER], "tool_choice": "none"}, "rid")
    assert req.tool_choice.mode == "none"  # the worker keeps the tools out of the template


@pytest.mark.parametrize("effort, think", [("none", False), ("low", True), ("high", True)])
def test_openai_reasoning_effort_switches_thinking(effort, think):
    req, _, _ = parse_chat_completion({"model": "tiny", "messages": USER, "reasoning_effort": effort}, "rid")
    assert req.think is think


def test_openai_logprobs_and_top_logprobs():
    req, _, _ = parse_chat_completion({"model": "tiny", "messages": USER, "logprobs": True, "top_logprobs": 5}, "rid")
    assert (req.logprobs, req.top_logprobs) == (True, 5)
    with pytest.raises(BadField) as e:
        parse_chat_completion({"model": "tiny", "messages": USER, "top_logprobs": 5}, "rid")
    assert e.value.param == "top_logprobs"


def test_openai_tool_message_without_a_call_id_is_a_400():
    with pytest.raises(BadField) as e:
        parse_chat_completion({"model": "tiny", "messages": [{"role": "tool", "content": "18C"}]}, "rid")
    assert e.value.param == "messages[0].tool_call_id"


def test_completion_takes_one_prompt_and_sampling():
    req, stream, _ = parse_completion({"model": "tiny", "prompt": ["Once upon"], "max_tokens": 8, "temperature": 0,
                                       "stop": ["\n"], "seed": 1, "logprobs": 2, "echo": False}, "rid")
    assert (req.prompt, req.is_chat, stream, req.logprobs, req.top_logprobs) == ("Once upon", False, False, True, 2)
    assert (req.options.num_predict, req.options.temperature, list(req.options.stop), req.options.seed) == (8, 0, ["\n"], 1)


@pytest.mark.parametrize("extra, param", [
    ({"suffix": "The end."}, "suffix"), ({"echo": True, "logprobs": 1}, "echo"), ({"prompt": ["a", "b"]}, "prompt"),
    ({"prompt": [1, 2, 3]}, "prompt"), ({"n": 2}, "n"), ({"best_of": 3}, "best_of"),
])
def test_completion_refuses_what_it_cannot_do(extra, param):
    with pytest.raises(UnsupportedField) as e:
        parse_completion({"model": "tiny", "prompt": "hi", **extra}, "rid")
    assert e.value.param == param


# --- rendering ---------------------------------------------------------------------------------


def test_ollama_chat_returns_thinking_and_tool_calls_with_object_arguments():
    async def scenario():
        async with harness() as h:
            h.worker.plan = tool_plan()
            body = {"model": "tiny", "messages": USER, "tools": [WEATHER], "think": True, "stream": False}
            out = await (await h.post("/api/chat", body)).json()
            assert out["message"] == {"role": "assistant", "content": "", "thinking": "Need the weather.", "tool_calls": [
                {"id": "call_abc", "function": {"name": "get_weather", "arguments": {"city": "Paris"}}}]}
            assert out["done_reason"] == "stop"  # Ollama has no tool_calls reason
            submit = h.worker.submits[0][0]
            assert [t.name for t in submit.tools] == ["get_weather"] and submit.think is True
            lines = await ndjson(await h.post("/api/chat", {**body, "stream": True}))
            assert lines[0]["message"]["thinking"] == "Need the weather."
            assert lines[1]["message"]["tool_calls"][0]["function"]["arguments"] == {"city": "Paris"}
            assert lines[-1]["done"] is True and "tool_calls" not in lines[-1]["message"]
    run(scenario())


def test_ollama_logprobs_come_with_each_chunk_in_ollamas_shape():
    async def scenario():
        async with harness() as h:
            h.worker.plan = [TokenEvent(request_id="", text="Hi", token_ids=[1], logprobs=[lp("Hi", -0.1, ("Hi", -0.1), ("Yo", -2.5))]),
                             finished()]
            lines = await ndjson(await h.post("/api/generate", {"model": "tiny", "prompt": "x", "logprobs": True, "top_logprobs": 2}))
            assert lines[0]["logprobs"] == [{"token": "Hi", "logprob": -0.1, "bytes": [72, 105], "top_logprobs": [
                {"token": "Hi", "logprob": -0.1, "bytes": [72, 105]}, {"token": "Yo", "logprob": -2.5, "bytes": [89, 111]}]}]
            submit = h.worker.submits[0][0]
            assert (submit.logprobs, submit.top_logprobs) == (True, 2)
            body = await (await h.post("/api/generate", {"model": "tiny", "prompt": "x", "logprobs": True, "stream": False})).json()
            assert body["response"] == "Hi" and body["logprobs"] == [{"token": "Hi", "logprob": -0.1, "bytes": [72, 105]}]
    run(scenario())


def test_prompt_eval_count_counts_every_prompt_token_cached_ones_too():
    # Current Ollama counts the whole prompt; LangChain and litellm report it as the input tokens.
    async def scenario():
        async with harness() as h:
            h.worker.plan = [text("ok"), finished(prompt_eval_count=1, prompt_tokens=32, cached_tokens=31)]
            body = await (await h.post("/api/generate", {"model": "tiny", "prompt": "x", "stream": False})).json()
            assert body["prompt_eval_count"] == 32
            h.worker.plan = [text("ok"), finished(prompt_eval_count=0, prompt_tokens=40, cached_tokens=40)]
            lines = await ndjson(await h.post("/api/chat", {"model": "tiny", "messages": USER}))
            assert lines[-1]["prompt_eval_count"] == 40
            h.worker.plan = [text("ok"), finished(prompt_eval_count=8, prompt_tokens=40, cached_tokens=32)]
            body = await (await h.post("/v1/chat/completions", {"model": "tiny", "messages": USER})).json()
            assert body["usage"]["prompt_tokens"] == 40 and body["usage"]["prompt_tokens_details"] == {"cached_tokens": 32}
    run(scenario())


def test_worker_refusing_a_capability_is_a_400_with_its_message():
    async def scenario():
        async with harness() as h:
            h.worker.refusal = "model 'tiny' does not support tools"
            resp = await h.post("/api/chat", {"model": "tiny", "messages": USER, "tools": [WEATHER]})
            assert resp.status == 400 and await resp.json() == {"error": "model 'tiny' does not support tools"}
            resp = await h.post("/v1/chat/completions", {"model": "tiny", "messages": USER, "tools": [WEATHER]})
            err = (await resp.json())["error"]
            assert resp.status == 400 and err["message"] == "model 'tiny' does not support tools"
            assert err["type"] == "invalid_request_error"
            await wait_for(lambda: len(h.supervisor.releases) == 2)  # the lease goes back even when the worker refuses
    run(scenario())


# --- embeddings --------------------------------------------------------------------------------

def test_embedding_on_a_generative_model_is_a_400_with_the_workers_message():
    async def scenario():
        async with harness() as h:
            h.worker.refusal = "model 'tiny' does not support embeddings"
            resp = await h.post("/api/embed", {"model": "tiny", "input": "x"})
            assert resp.status == 400 and await resp.json() == {"error": "model 'tiny' does not support embeddings"}
            await wait_for(lambda: len(h.supervisor.releases) == 1)
    run(scenario())
