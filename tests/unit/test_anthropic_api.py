"""Anthropic's Messages API (/v1/messages, /v1/messages/count_tokens, /v1/models in Anthropic's shape):
request translation, the message and its typed event stream, Anthropic's error shapes, and the
official `anthropic` client reading all of it, against the fake services of tests/fixtures/gateway_harness.py."""

from __future__ import annotations

import json
from typing import Any

import pytest

from mlxserve.gateway import anthropic_api
from mlxserve.gateway.anthropic_api import parse_count_tokens_request, parse_messages_request, usage_json
from mlxserve.gateway.validation import BadField, UnsupportedField
from mlxserve.v1.frames import Stats, TokenEvent, ToolCall
from tests.fixtures.gateway_harness import KEY, gateway, harness, run, text, wait_for
from tests.fixtures.gateway_harness import sse_events as events
from tests.fixtures.anthropic_plans import USER, counting_worker  # noqa: F401 (counting_worker: a fixture)

pytestmark = pytest.mark.timeout(30)

SCHEMA = {"type": "object", "properties": {"path": {"type": "string"}, "limit": {"type": "integer"}}, "required": ["path"]}
READ = {"name": "Read", "description": "Read a file", "input_schema": SCHEMA}
VERSION = {"anthropic-version": "2023-06-01"}


def body(**fields: Any) -> dict[str, Any]:
    return {"model": "tiny", "max_tokens": 32, "messages": USER, **fields}


def finished(reason: str = "stop", stop_sequence: str | None = None, cached: int = 0) -> TokenEvent:
    return TokenEvent(request_id="", done=True, done_reason=reason, stop_sequence=stop_sequence,
                      stats=Stats(prompt_eval_count=10 - cached, eval_count=3, prompt_tokens=10, cached_tokens=cached))


# --- translation -------------------------------------------------------------------------------


def test_system_blocks_are_joined_in_order_and_claude_codes_billing_header_is_dropped():
    req, stream, caching = parse_messages_request(body(system=[
        {"type": "text", "text": "x-anthropic-billing-header: cc_version=2.1.177.01c; cc_entrypoint=cli; cch=36ee5;"},
        {"type": "text", "text": "You are Claude Code.", "cache_control": {"type": "ephemeral"}},
        {"type": "text", "text": "Be brief."}]), "rid")
    assert (stream, caching) == (False, True)
    assert [(m.role, m.content) for m in req.messages] == [("system", "You are Claude Code.\n\nBe brief."), ("user", "Hi")]
    assert req.ignored == ["system[0]"]  # named: the header changes on every request and would defeat the cache
    req, _, caching = parse_messages_request(body(system="Be brief.", stop_sequences=["END", ""], temperature=0.5, top_k=3), "rid")
    assert caching is False and req.messages[0].content == "Be brief." and req.ignored == []
    o = req.options
    assert (o.num_predict, list(o.stop), o.temperature, o.top_k) == (32, ["END"], 0.5, 3)


def test_tool_use_and_tool_result_blocks_become_calls_and_tool_turns():
    req, _, _ = parse_messages_request(body(tools=[READ], messages=[
        {"role": "user", "content": [{"type": "text", "text": "Read a.txt"}, {"type": "text", "text": "please"}]},
        {"role": "assistant", "content": [
            {"type": "thinking", "thinking": "I should read it.", "signature": "sig"},
            {"type": "redacted_thinking", "data": "opaque"},
            {"type": "text", "text": "Reading."},
            {"type": "tool_use", "id": "toolu_1", "name": "Read", "input": {"path": "a.txt", "limit": 5}},
            {"type": "tool_use", "id": "toolu_2", "name": "Read", "input": {"path": "b.txt"}}]},
        {"role": "user", "content": [
            {"type": "tool_result", "tool_use_id": "toolu_1", "content": [{"type": "text", "text": "alpha"}, {"type": "text", "text": "beta"}]},
            {"type": "tool_result", "tool_use_id": "toolu_2", "content": "no such file", "is_error": True,
             "cache_control": {"type": "ephemeral"}},
            {"type": "text", "text": "Summarize."}]},
    ]), "rid")
    assert [(m.role, m.content) for m in req.messages] == [
        ("user", "Read a.txt\n\nplease"), ("assistant", "Reading."), ("tool", "alpha\n\nbeta"), ("tool", "Error: no such file"),
        ("user", "Summarize.")]
    assistant = req.messages[1]
    assert assistant.thinking == "I should read it."
    assert [(c.id, c.name, c.arguments) for c in assistant.tool_calls] == [
        ("toolu_1", "Read", '{"path":"a.txt","limit":5}'), ("toolu_2", "Read", '{"path":"b.txt"}')]
    assert [(m.tool_call_id, m.tool_name) for m in req.messages[2:4]] == [("toolu_1", "Read"), ("toolu_2", "Read")]
    assert req.ignored == ["messages[1].content[1]"]  # redacted thinking: nothing a local model can read


def test_a_system_turn_in_messages_stays_where_it_was_sent():
    """Claude Code 2.1 sends reminders as a `role: system` message after the first user turn (Claude 4.8's
    mid-conversation system messages)."""
    req, _, _ = parse_messages_request(body(system="You are Claude Code.", messages=[
        {"role": "user", "content": [{"type": "text", "text": "Hi"}]},
        {"role": "system", "content": "Available agent types: Explore."},
        {"role": "assistant", "content": "Hello."},
        {"role": "user", "content": "List files"},
        {"role": "system", "content": [{"type": "text", "text": "Mind"}, {"type": "text", "text": "the tests."}]}]), "rid")
    assert [(m.role, m.content) for m in req.messages] == [
        ("system", "You are Claude Code."), ("user", "Hi"), ("system", "Available agent types: Explore."),
        ("assistant", "Hello."), ("user", "List files"), ("system", "Mind\n\nthe tests.")]
    with pytest.raises(UnsupportedField) as e:
        parse_messages_request(body(messages=[*USER, {"role": "system", "content": [
            {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": "AA=="}}]}]), "rid")
    assert e.value.param == "messages[1].content[0].type"


def test_tools_keep_their_schema_key_order_and_server_tools_are_dropped_and_named():
    schema = {"type": "object", "required": ["b"], "properties": {"z": {"type": "string"}, "b": {"type": "integer"}}}
    req, _, _ = parse_messages_request(body(tools=[
        {"name": "Edit", "description": "Edit a file", "input_schema": schema, "strict": True},
        {"type": "web_search_20250305", "name": "web_search", "max_uses": 5},
        {"type": "bash_20250124", "name": "bash"},
        {"type": "custom", "name": "Write", "input_schema": {"type": "object"}, "cache_control": {"type": "ephemeral"}},
    ]), "rid")
    assert [t.name for t in req.tools] == ["Edit", "Write"]
    assert json.dumps(req.tools[0].parameters, separators=(",", ":")) == \
        '{"type":"object","required":["b"],"properties":{"z":{"type":"string"},"b":{"type":"integer"}}}'
    assert req.ignored == ["tools[1]", "tools[2]", "tools[0].strict"]
    assert req.tool_choice.mode == "auto" and req.max_tool_calls is None


@pytest.mark.parametrize("choice, mode, allowed, single", [
    ({"type": "auto"}, "auto", [], False),
    ({"type": "auto", "disable_parallel_tool_use": True}, "auto", [], True),
    ({"type": "any"}, "required", [], False),
    ({"type": "any", "disable_parallel_tool_use": True}, "required", [], True),
    ({"type": "tool", "name": "Read"}, "required", ["Read"], True),
    ({"type": "none"}, "none", [], False),
])
def test_tool_choice_maps_to_the_workers_choice(choice, mode, allowed, single):
    req, _, _ = parse_messages_request(body(tools=[READ, {**READ, "name": "Write"}], tool_choice=choice), "rid")
    assert (req.tool_choice.mode, list(req.tool_choice.allowed), req.tool_choice.single) == (mode, allowed, single)
    assert req.max_tool_calls == (1 if single else None)


@pytest.mark.parametrize("thinking, think, budget", [
    ({"type": "enabled", "budget_tokens": 2048}, True, 2048), ({"type": "disabled"}, False, None),
    ({"type": "adaptive"}, None, None), (None, None, None),
])
def test_thinking_switches_thinking_and_caps_it(thinking, think, budget):
    req, _, _ = parse_messages_request(body(thinking=thinking), "rid")
    assert (req.think, req.thinking_budget) == (think, budget)


def test_the_fields_claude_code_sends_are_accepted_and_the_ones_without_effect_named():
    req, stream, caching = parse_messages_request(body(
        stream=True, max_tokens=32000, thinking={"type": "adaptive"}, metadata={"user_id": "user_abc"},
        context_management={"edits": [{"type": "clear_thinking_20251015", "keep": "all"}]},
        output_config={"effort": "high"}, service_tier="auto", cache_control={"type": "ephemeral"}, container="c1",
        messages=[{"role": "user", "content": [{"type": "text", "text": "Hi", "cache_control": {"type": "ephemeral", "ttl": "1h"}}]}],
    ), "rid")
    assert stream and caching and req.options.num_predict == 32000  # a cap: the worker clamps it to the context
    assert sorted(req.ignored) == ["container", "context_management", "output_config.effort"]


def test_output_config_format_is_structured_output():
    req, _, _ = parse_messages_request(body(output_config={"format": {"type": "json_schema", "schema": SCHEMA}}), "rid")
    assert json.loads(req.format) == SCHEMA
    req, _, _ = parse_messages_request(body(output_format={"type": "json_schema", "schema": SCHEMA}), "rid")
    assert json.loads(req.format) == SCHEMA


def _tool_turns(result: dict) -> list[dict]:
    return [{"role": "assistant", "content": [{"type": "tool_use", "id": "toolu_1", "name": "Read", "input": {}}]},
            {"role": "user", "content": [result]}]


@pytest.mark.parametrize("fields, param", [
    ({"max_tokens": None}, "max_tokens"), ({"max_tokens": 0}, "max_tokens"), ({"max_tokens": -5}, "max_tokens"),
    ({"messages": []}, "messages"), ({"messages": [{"role": "system", "content": "x"}]}, "messages[0].role"),
    ({"messages": [{"role": "user", "content": [{"text": "x"}]}]}, "messages[0].content[0].type"),
    ({"messages": [{"role": "user", "content": [{"type": "text"}]}]}, "messages[0].content[0].text"),
    ({"messages": [{"role": "user", "content": [{"type": "tool_result", "tool_use_id": "toolu_9", "content": "x"}]}]},
     "messages[0].content[0].tool_use_id"),
    ({"messages": _tool_turns({"type": "tool_result", "content": "x"})}, "messages[1].content[0].tool_use_id"),
    ({"messages": [{"role": "assistant", "content": [{"type": "tool_use", "name": "Read", "input": {}}]}, *USER]},
     "messages[0].content[0].id"),
    ({"messages": [{"role": "assistant", "content": [{"type": "tool_use", "id": "t", "name": "Read", "input": [1]}]}, *USER]},
     "messages[0].content[0].input"),
    ({"thinking": {"type": "enabled"}}, "thinking.budget_tokens"), ({"thinking": {"type": "on"}}, "thinking.type"),
    ({"tool_choice": {"type": "tool"}, "tools": [READ]}, "tool_choice.name"),
    ({"tool_choice": {"type": "tool", "name": "Write"}, "tools": [READ]}, "tool_choice.name"),
    ({"tool_choice": {"type": "any"}, "tools": [{"type": "web_search_20250305", "name": "web_search"}]}, "tool_choice"),
    ({"tools": [{"name": "Read"}]}, "tools[0].input_schema"), ({"temperature": 1.5}, "temperature"),
])
def test_bad_fields_are_a_400_naming_the_field(fields, param):
    data = {k: v for k, v in body(**fields).items() if v is not None}
    with pytest.raises(BadField) as e:
        parse_messages_request(data, "rid")
    assert e.value.param == param and e.value.http_status == 400


@pytest.mark.parametrize("messages, param", [
    ([{"role": "user", "content": [{"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": "AA=="}}]}],
     "messages[0].content[0].type"),
    ([{"role": "user", "content": [{"type": "document", "source": {"type": "text", "data": "x"}}]}], "messages[0].content[0].type"),
    ([{"role": "user", "content": [{"type": "hologram"}]}], "messages[0].content[0].type"),
    (_tool_turns({"type": "tool_result", "tool_use_id": "toolu_1", "content": [{"type": "image", "source": {}}]}),
     "messages[1].content[0].content[0].type"),
    ([*USER, {"role": "assistant", "content": "The answer is"}], "messages[1]"),
])
def test_content_the_server_cannot_take_is_a_400_naming_its_path(messages, param):
    with pytest.raises(UnsupportedField) as e:
        parse_messages_request(body(messages=messages), "rid")
    assert e.value.param == param and e.value.http_status == 400
    if "image" in json.dumps(messages):
        assert "no model served here takes images" in e.value.message


def test_count_tokens_takes_the_same_prompt_without_max_tokens():
    req = parse_count_tokens_request({"model": "tiny", "messages": USER, "system": "Be brief.", "tools": [READ]}, "rid")
    assert [m.role for m in req.messages] == ["system", "user"] and [t.name for t in req.tools] == ["Read"]


def test_usage_adds_up_to_the_prompt_with_cache_reads_apart():
    stats = Stats(prompt_tokens=100, cached_tokens=90, eval_count=4)
    assert usage_json(stats, caching=False) == {"input_tokens": 10, "cache_creation_input_tokens": 0,
                                                "cache_read_input_tokens": 90, "output_tokens": 4}
    # With cache_control markers the evaluated tokens are reported as written to the cache (they are).
    assert usage_json(stats, caching=True) == {"input_tokens": 0, "cache_creation_input_tokens": 10,
                                               "cache_read_input_tokens": 90, "output_tokens": 4}


# --- through the gateway ---------------------------------------------------------------------------


def test_a_message_has_content_blocks_stop_reason_and_usage():
    async def scenario():
        async with harness() as h:
            h.worker.plan = [TokenEvent(request_id="", thinking="Hmm."), text("Hel"), text("lo"), finished(cached=6)]
            resp = await h.post("/v1/messages?beta=true", body(system="Be brief.", stop_sequences=["END"]),
                                headers={**VERSION, "anthropic-beta": "claude-code-20250219,interleaved-thinking-2025-05-14"})
            out = await resp.json()
            assert resp.status == 200 and "X-Mlxserve-Ignored" not in resp.headers
            assert out["id"].startswith("msg_") and (out["type"], out["role"], out["model"]) == ("message", "assistant", "tiny")
            assert out["content"] == [{"type": "thinking", "thinking": "Hmm.", "signature": ""}, {"type": "text", "text": "Hello"}]
            assert (out["stop_reason"], out["stop_sequence"]) == ("end_turn", None)
            assert out["usage"] == {"input_tokens": 4, "cache_creation_input_tokens": 0, "cache_read_input_tokens": 6,
                                    "output_tokens": 3}
            submit, _ = h.worker.submits[0]
            assert [(m.role, m.content) for m in submit.messages] == [("system", "Be brief."), ("user", "Hi")]
            assert (submit.options.num_predict, list(submit.options.stop)) == (32, ["END"])
    run(scenario())


@pytest.mark.parametrize("final, reason, sequence", [
    (finished("stop", stop_sequence="END"), "stop_sequence", "END"), (finished("length"), "max_tokens", None),
])
def test_stop_reasons_say_why_the_message_ended(final, reason, sequence):
    async def scenario():
        async with harness() as h:
            h.worker.plan = [text("Hel"), final]
            out = await (await h.post("/v1/messages", body(stop_sequences=["END"]))).json()
            assert (out["stop_reason"], out["stop_sequence"]) == (reason, sequence)
    run(scenario())


def test_tool_calls_are_tool_use_blocks_with_parsed_input_and_the_thinking_budget_reaches_the_worker():
    async def scenario():
        async with harness() as h:
            call = ToolCall(name="Read", arguments='{"path": "a.txt", "limit": 5}', id="call_abc123")
            h.worker.plan = [text("Let me read it."), TokenEvent(request_id="", tool_calls=[call]), finished("tool_calls")]
            out = await (await h.post("/v1/messages", body(tools=[READ], tool_choice={"type": "any"},
                                                           thinking={"type": "enabled", "budget_tokens": 1024}))).json()
            assert out["content"] == [{"type": "text", "text": "Let me read it."},
                                      {"type": "tool_use", "id": "toolu_abc123", "name": "Read", "input": {"path": "a.txt", "limit": 5}}]
            assert out["stop_reason"] == "tool_use"
            submit, _ = h.worker.submits[0]
            assert submit.tool_choice.mode == "required"
            assert (submit.think, submit.thinking_budget) == (True, 1024)
            assert submit.tools[0].parameters == SCHEMA
    run(scenario())


def test_stream_is_anthropics_event_sequence_with_blocks_in_order():
    async def scenario():
        async with harness() as h:
            call = ToolCall(name="Read", arguments='{"path":"a.txt"}', id="call_1")
            h.worker.plan = [TokenEvent(request_id="", thinking="Plan"), TokenEvent(request_id="", thinking=" more"),
                             text("Hel"), text("lo"), TokenEvent(request_id="", tool_calls=[call]), finished("tool_calls", cached=4)]
            resp = await h.post("/v1/messages", body(stream=True, tools=[READ], cache_control={"type": "ephemeral"}))
            assert resp.status == 200 and resp.headers["Content-Type"].startswith("text/event-stream")
            seq = await events(resp)
            assert [k for k, _ in seq] == [
                "message_start", "ping", "content_block_start", "content_block_delta", "content_block_delta", "content_block_stop",
                "content_block_start", "content_block_delta", "content_block_delta", "content_block_stop",
                "content_block_start", "content_block_delta", "content_block_stop", "message_delta", "message_stop"]
            start = seq[0][1]["message"]
            assert start["content"] == [] and start["stop_reason"] is None and start["id"].startswith("msg_")
            # Before the cache lookup: the prompt, all of it to be cached (the request marked cache_control).
            assert start["usage"] == {"input_tokens": 0, "cache_creation_input_tokens": 5, "cache_read_input_tokens": 0,
                                      "output_tokens": 0}
            blocks = [d for k, d in seq if k == "content_block_start"]
            assert [(b["index"], b["content_block"]["type"]) for b in blocks] == [(0, "thinking"), (1, "text"), (2, "tool_use")]
            assert blocks[2]["content_block"] == {"type": "tool_use", "id": "toolu_1", "name": "Read", "input": {}}
            deltas = [d["delta"] for k, d in seq if k == "content_block_delta"]
            assert deltas == [{"type": "thinking_delta", "thinking": "Plan"}, {"type": "thinking_delta", "thinking": " more"},
                              {"type": "text_delta", "text": "Hel"}, {"type": "text_delta", "text": "lo"},
                              {"type": "input_json_delta", "partial_json": '{"path":"a.txt"}'}]
            assert [d["index"] for k, d in seq if k == "content_block_stop"] == [0, 1, 2]
            end = seq[-2][1]
            assert end["delta"] == {"stop_reason": "tool_use", "stop_sequence": None}
            assert end["usage"] == {"input_tokens": 0, "cache_creation_input_tokens": 6, "cache_read_input_tokens": 4,
                                    "output_tokens": 3}
    run(scenario())


def test_pings_keep_the_stream_alive_while_the_prompt_prefills(monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setattr(anthropic_api, "PING_EVERY_S", 0.1)

    async def scenario():
        async with harness() as h:
            h.worker.plan = [0.6, text("Hi"), finished()]
            seq = await events(await h.post("/v1/messages", body(stream=True)))
            kinds = [k for k, _ in seq]
            first_block = kinds.index("content_block_start")
            assert kinds[:2] == ["message_start", "ping"] and kinds[2:first_block].count("ping") >= 3
            assert set(kinds[2:first_block]) == {"ping"}
    run(scenario())


def test_a_failure_mid_stream_is_an_error_event():
    async def scenario():
        async with harness() as h:
            h.worker.plan = [text("Hel"), TokenEvent(request_id="", done=True, done_reason="error", error="out of memory")]
            seq = await events(await h.post("/v1/messages", body(stream=True)))
            kind, data = seq[-1]
            assert kind == "error" and data["error"] == {"type": "api_error", "message": "out of memory"}
            assert "message_stop" not in [k for k, _ in seq]
    run(scenario())


def test_every_error_on_the_messages_routes_is_in_anthropics_shape():
    async def scenario():
        async with harness() as h:
            cases = [
                (await h.post("/v1/messages", body(model="nope")), 404, "not_found_error", "model 'nope' not found"),
                (await h.client.post("/v1/messages", data=b"{not json"), 400, "invalid_request_error", "invalid JSON"),
                (await h.post("/v1/messages", {"model": "tiny", "messages": USER}), 400, "invalid_request_error",
                 "'max_tokens' is required"),
                (await h.post("/v1/messages/nope", {}), 404, "not_found_error", "/v1/messages/nope not found"),
                (await h.client.get("/v1/messages"), 405, "invalid_request_error", "method GET not allowed"),
                (await h.post("/v1/messages", body(), headers={"Host": "evil.example"}), 403, "permission_error", "not allowed"),
            ]
            h.supervisor.busy = True
            busy = await h.post("/v1/messages", body())
            cases.append((busy, 529, "overloaded_error", "queue for tiny is full"))
            assert busy.headers["Retry-After"] == "3"
            for resp, status, kind, words in cases:
                out = await resp.json()
                assert resp.status == status and out["type"] == "error", out
                assert out["error"]["type"] == kind and words in out["error"]["message"], out
    run(scenario())


def test_the_api_key_is_taken_from_x_api_key_or_a_bearer_token_and_refused_in_anthropics_shape():
    async def scenario():
        async with gateway(api_key=KEY) as g:
            missing = await g.client.post("/v1/messages", data=json.dumps(body()))
            assert missing.status == 401
            assert (await missing.json())["error"]["type"] == "authentication_error"
            wrong = await g.client.post("/v1/messages", data=json.dumps(body()), headers={"x-api-key": "wrong"})
            assert wrong.status == 401 and "not valid" in (await wrong.json())["error"]["message"]
            for headers in ({"x-api-key": KEY}, {"Authorization": f"Bearer {KEY}"}):
                ok = await g.client.post("/v1/messages", data=json.dumps(body()), headers={**headers, **VERSION})
                assert ok.status == 200 and (await ok.json())["content"] == [{"type": "text", "text": "Hello"}]
            # x-api-key opens the other routes too, and their errors keep their own shape.
            assert (await g.client.get("/api/tags", headers={"x-api-key": KEY})).status == 200
            assert "error" in await (await g.client.get("/v1/models", headers={"x-api-key": "no"})).json()
    run(scenario())


def test_count_tokens_counts_on_the_worker_without_generating(counting_worker):  # noqa: F811 (the fixture)
    async def scenario():
        async with harness() as h:
            resp = await h.post("/v1/messages/count_tokens", {"model": "tiny", "system": "Be brief.", "messages": USER,
                                                              "tools": [READ], "thinking": {"type": "enabled", "budget_tokens": 2000}})
            assert resp.status == 200 and await resp.json() == {"input_tokens": 7 * 2 + 5}
            [counted] = counting_worker
            assert [m.role for m in counted.messages] == ["system", "user"] and counted.think is True
            await wait_for(lambda: len(h.supervisor.releases) == 1)  # the lease given back
            assert h.worker.submits == []  # nothing generated
            missing = await h.post("/v1/messages/count_tokens", {"model": "nope", "messages": USER})
            assert missing.status == 404 and (await missing.json())["error"]["type"] == "not_found_error"
    run(scenario())


def test_models_are_listed_in_anthropics_shape_when_asked_with_anthropic_version():
    async def scenario():
        async with harness() as h:
            page = await (await h.client.get("/v1/models", headers=VERSION)).json()
            assert page == {"data": [{"type": "model", "id": "tiny:latest", "display_name": "tiny:latest",
                                      "created_at": "2026-01-02T03:04:05Z"}],
                            "has_more": False, "first_id": "tiny:latest", "last_id": "tiny:latest"}
            assert (await (await h.client.get("/v1/models?after_id=tiny:latest", headers=VERSION)).json())["data"] == []
            bad = await h.client.get("/v1/models?limit=0", headers=VERSION)
            assert bad.status == 400 and (await bad.json())["error"]["type"] == "invalid_request_error"
            one = await (await h.client.get("/v1/models/tiny", headers=VERSION)).json()
            assert one["type"] == "model" and one["id"] == "tiny:latest"
            missing = await h.client.get("/v1/models/nope", headers=VERSION)
            assert missing.status == 404 and (await missing.json())["error"]["type"] == "not_found_error"
            openai_page = await (await h.client.get("/v1/models")).json()
            assert openai_page["object"] == "list" and openai_page["data"][0]["object"] == "model"
    run(scenario())
