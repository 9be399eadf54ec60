"""The request shapes popular clients send, through the real gateway against the fake worker of
tests/fixtures/gateway_harness.py: each is answered (not refused), and what reaches the worker is what the
client asked for. The e2e suite drives the same paths with the clients themselves.
"""

from __future__ import annotations

import json

import pytest

from mlxserve.v1.frames import TokenEvent, ToolCall

from tests.fixtures.gateway_harness import harness, run, sse, text
from tests.fixtures.gateway_plans import AUTO, CODEX_TOOLS, NONE, REQUIRED, WEATHER, calls, finished, submit_of

pytestmark = pytest.mark.timeout(30)

USER_SCHEMA = {"properties": {"name": {"title": "Name", "type": "string"}, "age": {"title": "Age", "type": "integer"}},
               "required": ["name", "age"], "title": "User", "type": "object"}


# --- forcing a tool call (item 1) -------------------------------------------------------------------------


def test_instructor_forces_its_function_by_name():
    # instructor's TOOLS mode: one tool, and tool_choice naming it.
    async def scenario():
        async with harness() as h:
            h.worker.plan = [TokenEvent(request_id="", token_ids=[1], tool_calls=[
                ToolCall(name="User", arguments='{"name":"Jason","age":25}', id="call_1")]), finished("tool_calls")]
            resp = await h.post("/v1/chat/completions", {
                "model": "tiny", "messages": [{"role": "user", "content": "Jason is 25 years old"}],
                "tools": [{"type": "function", "function": {
                    "name": "User", "description": "Correctly extracted `User` with all the required parameters with correct types",
                    "parameters": USER_SCHEMA}}],
                "tool_choice": {"type": "function", "function": {"name": "User"}}})
            body = await resp.json()
            assert resp.status == 200, body
            choice = body["choices"][0]
            assert choice["finish_reason"] == "tool_calls"
            assert json.loads(choice["message"]["tool_calls"][0]["function"]["arguments"]) == {"name": "Jason", "age": 25}
            submit = submit_of(h)
            # A named function is OpenAI's "forced function": exactly that one, called once.
            assert (submit.tool_choice.mode, list(submit.tool_choice.allowed), submit.tool_choice.single) == (
                REQUIRED, ["User"], True)
            assert [t.name for t in submit.tools] == ["User"] and submit.tools[0].parameters == USER_SCHEMA
    run(scenario())


def test_pydantic_ai_and_smolagents_require_some_tool_call_with_strict_tools():
    async def scenario():
        async with harness() as h:
            h.worker.plan = calls("final_result")
            final = {"type": "function", "function": {"name": "final_result", "description": "The final response",
                                                      "parameters": {**USER_SCHEMA, "additionalProperties": False},
                                                      "strict": True}}
            resp = await h.post("/v1/chat/completions", {"model": "tiny", "messages": [{"role": "user", "content": "hi"}],
                                                         "tools": [WEATHER, final], "tool_choice": "required",
                                                         "stream": True, "stream_options": {"include_usage": True}})
            events = await sse(resp)
            assert resp.status == 200 and events[-1] == "[DONE]"
            assert "X-Mlxserve-Ignored" not in resp.headers  # strict is honoured: a forced call is constrained
            submit = submit_of(h)
            assert (submit.tool_choice.mode, list(submit.tool_choice.allowed), submit.tool_choice.single) == (REQUIRED, [], False)
            assert [t.name for t in submit.tools] == ["get_weather", "final_result"]
    run(scenario())


def test_langchain_bind_tools_with_allowed_tools_and_an_unknown_forced_name():
    async def scenario():
        async with harness() as h:
            other = {"type": "function", "function": {"name": "other", "parameters": {"type": "object"}}}
            resp = await h.post("/v1/chat/completions", {
                "model": "tiny", "messages": [{"role": "user", "content": "hi"}], "tools": [WEATHER, other],
                "tool_choice": {"type": "allowed_tools", "allowed_tools": {
                    "mode": "required", "tools": [{"type": "function", "function": {"name": "get_weather"}}]}}})
            assert resp.status == 200
            submit = submit_of(h)
            assert [t.name for t in submit.tools] == ["get_weather"] and submit.tool_choice.mode == REQUIRED
            resp = await h.post("/v1/chat/completions", {"model": "tiny", "messages": [{"role": "user", "content": "hi"}],
                                                         "tools": [WEATHER], "tool_choice": {"type": "function", "function": {"name": "nope"}}})
            error = (await resp.json())["error"]
            assert resp.status == 400 and error["param"] == "tool_choice.function.name" and "'nope'" in error["message"]
    run(scenario())


def test_parallel_tool_calls_false_answers_at_most_one_call_whatever_the_model_does():
    async def scenario():
        async with harness() as h:
            h.worker.plan = calls("get_weather", "get_weather")
            body = await (await h.post("/v1/chat/completions", {"model": "tiny", "messages": [{"role": "user", "content": "hi"}],
                                                                "tools": [WEATHER], "parallel_tool_calls": False})).json()
            assert len(body["choices"][0]["message"]["tool_calls"]) == 1
            assert submit_of(h).tool_choice.single and submit_of(h).tool_choice.mode == AUTO
            h.worker.plan = calls("get_weather", "get_weather")
            body = await (await h.post("/v1/chat/completions", {"model": "tiny", "messages": [{"role": "user", "content": "hi"}],
                                                                "tools": [WEATHER]})).json()
            assert len(body["choices"][0]["message"]["tool_calls"]) == 2
    run(scenario())


def test_strict_tools_the_model_may_ignore_are_named_as_ignored():
    # With tool_choice auto, a call's arguments are parsed, not constrained: `strict` is not honoured there.
    async def scenario():
        async with harness() as h:
            strict = {"type": "function", "function": {**WEATHER["function"], "strict": True}}
            resp = await h.post("/v1/chat/completions", {"model": "tiny", "messages": [{"role": "user", "content": "hi"}],
                                                         "tools": [strict]})
            assert resp.status == 200 and resp.headers["X-Mlxserve-Ignored"] == "tools[0].function.strict"
    run(scenario())


# --- legacy functions (item 8) --------------------------------------------------------------------------


def test_legacy_functions_and_function_call_map_to_tools_and_answer_in_the_legacy_shape():
    async def scenario():
        async with harness() as h:
            h.worker.plan = calls("get_weather")
            fn = WEATHER["function"]
            body = {"model": "tiny", "functions": [fn], "function_call": {"name": "get_weather"}, "messages": [
                {"role": "user", "content": "Weather in Paris?"},
                {"role": "assistant", "content": None, "function_call": {"name": "get_weather", "arguments": '{"city":"Rome"}'}},
                {"role": "function", "name": "get_weather", "content": "18C"},
                {"role": "user", "content": "And Paris?"}]}
            out = await (await h.post("/v1/chat/completions", body)).json()
            choice = out["choices"][0]
            assert choice["finish_reason"] == "function_call"
            assert choice["message"]["function_call"] == {"name": "get_weather", "arguments": '{"city":"Paris"}'}
            assert "tool_calls" not in choice["message"]
            submit = submit_of(h)
            assert [t.name for t in submit.tools] == ["get_weather"]
            assert (submit.tool_choice.mode, list(submit.tool_choice.allowed), submit.tool_choice.single) == (
                REQUIRED, ["get_weather"], True)
            assistant, result = submit.messages[1], submit.messages[2]
            assert [(c.name, json.loads(c.arguments)) for c in assistant.tool_calls] == [("get_weather", {"city": "Rome"})]
            assert (result.role, result.tool_name, result.content) == ("tool", "get_weather", "18C")

            h.worker.plan = calls("get_weather")
            events = await sse(await h.post("/v1/chat/completions", {**body, "stream": True, "function_call": "auto"}))
            deltas = [e["choices"][0]["delta"] for e in events[:-1] if e["choices"]]
            assert {"function_call": {"name": "get_weather", "arguments": '{"city":"Paris"}'}} in deltas
            assert events[-2]["choices"][0]["finish_reason"] == "function_call"
            assert submit_of(h).tool_choice.mode == AUTO
    run(scenario())


# --- message names (item 2) ---------------------------------------------------------------------------------


def test_autogen_message_names_reach_the_template():
    async def scenario():
        async with harness() as h:
            resp = await h.post("/v1/chat/completions", {"model": "tiny", "messages": [
                {"role": "system", "content": "You are a helpful AI assistant.", "name": "assistant_agent"},
                {"role": "user", "content": "Plan a trip.", "name": "user_proxy"},
                {"role": "assistant", "content": "Sure.", "name": "planner"}]})
            assert resp.status == 200 and "X-Mlxserve-Ignored" not in resp.headers
            assert [m.name for m in submit_of(h).messages] == ["assistant_agent", "user_proxy", "planner"]
    run(scenario())


# --- unknown and newer fields (items 4, 8) ------------------------------------------------------------------


def test_vercel_ollama_provider_extra_fields_on_api_chat_are_ignored_and_named():
    async def scenario():
        async with harness() as h:
            resp = await h.post("/api/chat", {
                "model": "tiny", "messages": [{"role": "user", "content": "hi"}], "stream": False,
                "options": {"temperature": 0.3, "num_thread": 4}, "temperature": 0.3, "top_p": 0.9, "max_output_tokens": 100,
                "tool_choice": "auto", "tools": [WEATHER]})
            assert resp.status == 200, await resp.text()
            assert resp.headers["X-Mlxserve-Ignored"] == "options.num_thread,temperature,top_p,max_output_tokens,tool_choice"
            submit = submit_of(h)
            assert submit.options.temperature == pytest.approx(0.3) and submit.options.top_p is None
            for path, body in [("/api/generate", {"model": "tiny", "prompt": "hi", "max_output_tokens": 5}),
                               ("/api/embed", {"model": "tiny", "input": "hi", "top_p": 0.9})]:
                resp = await h.post(path, body)
                assert resp.status == 200 and resp.headers["X-Mlxserve-Ignored"] in ("max_output_tokens", "top_p"), path
    run(scenario())


def test_the_newer_openai_chat_fields_are_accepted():
    async def scenario():
        async with harness() as h:
            resp = await h.post("/v1/chat/completions", {
                "model": "tiny", "messages": [{"role": "user", "content": "hi"}], "max_tokens": -1,
                "prompt_cache_key": "thread-1", "prompt_cache_retention": "24h", "safety_identifier": "user-hash",
                "verbosity": "low", "metadata": {"session": "abc"}, "store": True, "service_tier": "flex", "user": "u1",
                "modalities": ["text"], "prediction": {"type": "content", "content": "hello"},
                "web_search_options": {"search_context_size": "low"}, "reasoning_effort": "minimal", "n": 1,
                "stream_options": None, "seed": 7})
            assert resp.status == 200, await resp.text()
            # Advisory fields (cache keys, ids, metadata, tiers) do nothing here by nature: not named.
            assert resp.headers["X-Mlxserve-Ignored"] == "web_search_options,prediction,verbosity,store"
            submit = submit_of(h)
            assert submit.options.num_predict == -1 and submit.think and submit.options.seed == 7
    run(scenario())


def test_local_server_extensions_on_v1_are_honoured():
    async def scenario():
        async with harness() as h:
            resp = await h.post("/v1/chat/completions", {
                "model": "tiny", "messages": [{"role": "user", "content": "hi"}], "temperature": 0.5, "top_k": 20,
                "min_p": 0.05, "repetition_penalty": 1.1, "chat_template_kwargs": {"enable_thinking": False},
                "options": {"num_ctx": 4096, "temperature": 0.9, "stop": ["END"]}, "keep_alive": "10m"})
            assert resp.status == 200 and "X-Mlxserve-Ignored" not in resp.headers
            o = submit_of(h).options
            assert (o.temperature, o.top_k, o.min_p, o.repeat_penalty, o.num_ctx, list(o.stop)) == (
                0.5, 20, pytest.approx(0.05), pytest.approx(1.1), 4096, ["END"])  # top-level fields win over options
            assert submit_of(h).chat_template_kwargs == {"enable_thinking": False}
            assert h.supervisor.acquires[-1].keep_alive_s == 600
    run(scenario())


def test_n_above_one_and_audio_output_stay_refused():
    async def scenario():
        async with harness() as h:
            for extra, param in [({"n": 3}, "n"), ({"modalities": ["text", "audio"]}, "modalities")]:
                resp = await h.post("/v1/chat/completions", {"model": "tiny", "messages": [{"role": "user", "content": "hi"}],
                                                             **extra})
                assert resp.status == 400 and (await resp.json())["error"]["param"] == param
    run(scenario())


# --- token-id embeddings (item 5) ---------------------------------------------------------------------------


# --- Codex's Responses request (item 7) --------------------------------------------------------------------


def codex_request(**extra) -> dict:
    return {
        "model": "tiny", "instructions": "You are Codex, a coding agent.", "tools": CODEX_TOOLS, "tool_choice": "auto",
        "parallel_tool_calls": False, "reasoning": {"effort": "medium", "summary": "auto"}, "store": False, "stream": True,
        "include": ["reasoning.encrypted_content"], "prompt_cache_key": "0199a6c2-thread",
        "client_metadata": {"x-codex-installation-id": "abc"},
        "input": [
            {"type": "message", "role": "user", "content": [{"type": "input_text", "text": "list the files"}]},
            {"type": "reasoning", "id": "rs_1", "summary": [], "content": [{"type": "reasoning_text", "text": "use ls"}],
             "encrypted_content": None},
            {"type": "function_call", "name": "shell", "arguments": '{"command":["ls"]}', "call_id": "call_1"},
            {"type": "function_call_output", "call_id": "call_1", "output": "a.txt"},
            {"type": "web_search_call", "id": "ws_1", "status": "completed", "action": {"type": "search", "query": "x"}},
            {"type": "message", "role": "user", "content": [{"type": "input_text", "text": "thanks"}]},
        ], **extra}


def test_codex_responses_request_is_answered_with_hosted_tools_dropped_and_named():
    async def scenario():
        async with harness() as h:
            h.worker.plan = [TokenEvent(request_id="", thinking="done", token_ids=[1]), text("Done."), finished()]
            resp = await h.post("/v1/responses", codex_request())
            assert resp.status == 200, await resp.text()
            assert resp.headers["X-Mlxserve-Ignored"] == "input[4],tools[1],tools[2],reasoning.summary"
            body = await resp.text()
            completed = json.loads(body.split("event: response.completed\ndata: ")[1].split("\n")[0])["response"]
            reasoning = completed["output"][0]
            assert reasoning["type"] == "reasoning" and reasoning["encrypted_content"] is None
            assert completed["output"][1]["content"][0]["text"] == "Done." and completed["parallel_tool_calls"] is False
            submit = submit_of(h)
            assert [t.name for t in submit.tools] == ["shell"]  # the model sees only what it can call here
            assert submit.tool_choice.mode == AUTO and submit.tool_choice.single
            roles = [(m.role, m.content) for m in submit.messages]
            assert roles == [("system", "You are Codex, a coding agent."), ("user", "list the files"), ("assistant", ""),
                             ("tool", "a.txt"), ("user", "thanks")]
            assert submit.messages[2].thinking == "use ls" and submit.messages[2].tool_calls[0].name == "shell"
            assert (submit.messages[3].tool_name, submit.messages[3].tool_call_id) == ("shell", "call_1")
    run(scenario())


def test_responses_tool_choice_forces_a_function_and_refuses_forcing_a_hosted_tool():
    async def scenario():
        async with harness() as h:
            h.worker.plan = calls("shell")
            resp = await h.post("/v1/responses", codex_request(stream=False, tool_choice={"type": "function", "name": "shell"}))
            body = await resp.json()
            assert resp.status == 200 and [i["type"] for i in body["output"]] == ["function_call"]
            assert body["tool_choice"] == {"type": "function", "name": "shell"}
            assert (submit_of(h).tool_choice.mode, list(submit_of(h).tool_choice.allowed)) == (REQUIRED, ["shell"])
            resp = await h.post("/v1/responses", codex_request(stream=False, tool_choice={
                "type": "allowed_tools", "mode": "required", "tools": [{"type": "function", "name": "shell"}]}))
            assert resp.status == 200 and submit_of(h).tool_choice.mode == REQUIRED
            resp = await h.post("/v1/responses", codex_request(stream=False, tool_choice={"type": "web_search_preview"}))
            assert resp.status == 400 and (await resp.json())["error"]["param"] == "tool_choice.type"
            resp = await h.post("/v1/responses", codex_request(stream=False, tool_choice="required", max_tool_calls=0))
            assert resp.status == 200 and submit_of(h).tool_choice.mode == NONE
    run(scenario())
