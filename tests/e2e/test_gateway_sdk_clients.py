"""The official openai and ollama clients read what the gateway sends: the real gateway served on a
loopback port, against the fake worker and supervisor of tests/fixtures/gateway_harness.py (the
clients are synchronous, so each runs in a thread). The unit tests check the same routes in-process."""

from __future__ import annotations

import asyncio
import base64
import json
import struct

import ollama
import openai
import pytest

from mlxserve.v1.frames import TokenEvent
from tests.fixtures.gateway_harness import KEY, done, gateway, harness, run, sse, text, wait_for
from tests.fixtures.gateway_plans import (BEARER, CHAT, CODEX_TOOLS, REQUIRED, USER, WEATHER, calls, finished, lp,
                                          submit_of, tool_plan)

pytestmark = pytest.mark.timeout(30)


# --- tools and embeddings through the openai SDK (from tests/unit/test_gateway_clients.py) ------------------

def test_the_openai_sdk_forces_a_call_and_reads_it_back():
    async def scenario():
        async with harness(port=True) as h:
            h.worker.plan = calls("get_weather")

            def with_openai() -> None:
                c = openai.OpenAI(base_url=f"{h.url}/v1", api_key="unused", max_retries=0)
                r = c.chat.completions.create(model="tiny", messages=[{"role": "user", "content": "Paris?"}], tools=[WEATHER],
                                              tool_choice={"type": "function", "function": {"name": "get_weather"}},
                                              parallel_tool_calls=False)
                [call] = r.choices[0].message.tool_calls
                assert call.function.name == "get_weather" and json.loads(call.function.arguments) == {"city": "Paris"}

            await asyncio.to_thread(with_openai)
            choice = submit_of(h).tool_choice
            assert (choice.mode, list(choice.allowed), choice.single) == (REQUIRED, ["get_weather"], True)
    run(scenario())


def test_langchain_openai_embeds_token_id_lists():
    # OpenAIEmbeddings tokenizes with tiktoken and sends the ids, base64-encoded answers asked for.
    async def scenario():
        async with harness(port=True) as h:
            def with_openai() -> None:
                c = openai.OpenAI(base_url=f"{h.url}/v1", api_key="unused", max_retries=0)
                r = c.embeddings.create(model="tiny", input=[[9906, 1917, 0], [15339]])
                assert [d.embedding for d in r.data] == [[0.0, 3.0, 0.0], [1.0, 1.0, 0.0]]
                assert r.usage.prompt_tokens == 4
                r = c.embeddings.create(model="tiny", input=[9906, 1917])  # one list of ids: one input
                assert [d.embedding for d in r.data] == [[0.0, 2.0, 0.0]]

            await asyncio.to_thread(with_openai)
            first, second = h.worker.embeds
            assert [list(t.ids) for t in first.token_inputs] == [[9906, 1917, 0], [15339]] and not first.inputs
            assert [list(t.ids) for t in second.token_inputs] == [[9906, 1917]]
    run(scenario())


def test_the_openai_sdk_sends_a_codex_like_responses_request():
    async def scenario():
        async with harness(port=True) as h:
            def with_openai() -> None:
                c = openai.OpenAI(base_url=f"{h.url}/v1", api_key="unused", max_retries=0)
                r = c.responses.create(model="tiny", input="hi", tools=[{"type": "web_search"}, CODEX_TOOLS[0]],
                                       include=["reasoning.encrypted_content"], store=False, prompt_cache_key="k",
                                       tool_choice="required")
                assert r.status == "completed" and r.output_text == "Hello"

            await asyncio.to_thread(with_openai)
            assert submit_of(h).tool_choice.mode == REQUIRED and [t.name for t in submit_of(h).tools] == ["shell"]
    run(scenario())


# --- generation features (from tests/unit/test_gateway_features.py) --------------------------------------

def test_openai_chat_returns_tool_calls_with_string_arguments_and_reasoning():
    async def scenario():
        async with harness(port=True) as h:
            h.worker.plan = tool_plan()
            out = await (await h.post("/v1/chat/completions", {"model": "tiny", "messages": USER, "tools": [WEATHER],
                                                                "reasoning_effort": "low"})).json()
            choice = out["choices"][0]
            assert choice["finish_reason"] == "tool_calls"
            assert choice["message"] == {"role": "assistant", "content": None, "reasoning_content": "Need the weather.",
                                         "tool_calls": [{"id": "call_abc", "type": "function", "function": {
                                             "name": "get_weather", "arguments": '{"city": "Paris"}'}}]}
            events = await sse(await h.post("/v1/chat/completions", {"model": "tiny", "messages": USER, "tools": [WEATHER],
                                                                     "stream": True}))
            deltas = [e["choices"][0]["delta"] for e in events[:-1]]
            assert deltas[1] == {"reasoning_content": "Need the weather."}
            assert deltas[2]["tool_calls"] == [{"index": 0, "id": "call_abc", "type": "function",
                                                "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'}}]
            assert events[-2]["choices"][0]["finish_reason"] == "tool_calls"

            def with_openai() -> None:
                c = openai.OpenAI(base_url=f"{h.url}/v1", api_key="unused", max_retries=0)
                r = c.chat.completions.create(model="tiny", messages=USER, tools=[WEATHER])
                call = r.choices[0].message.tool_calls[0]
                assert (call.function.name, json.loads(call.function.arguments)) == ("get_weather", {"city": "Paris"})
                calls = [tc for ch in c.chat.completions.create(model="tiny", messages=USER, tools=[WEATHER], stream=True)
                         for tc in (ch.choices[0].delta.tool_calls or []) if ch.choices]
                assert [(tc.index, tc.function.name) for tc in calls] == [(0, "get_weather")]

            def with_ollama() -> None:
                r = ollama.Client(host=h.url).chat(model="tiny", messages=USER, tools=[WEATHER], think=True)
                assert r.message.thinking == "Need the weather."
                assert r.message.tool_calls[0].function.arguments == {"city": "Paris"}

            await asyncio.to_thread(with_openai)
            await asyncio.to_thread(with_ollama)
    run(scenario())


def test_openai_chat_logprobs_are_in_choice_logprobs_content():
    async def scenario():
        async with harness(port=True) as h:
            h.worker.plan = [TokenEvent(request_id="", text="Hi", token_ids=[1], logprobs=[lp("Hi", -0.5, ("Hi", -0.5))]),
                             finished()]
            out = await (await h.post("/v1/chat/completions", {"model": "tiny", "messages": USER, "logprobs": True,
                                                                "top_logprobs": 1})).json()
            assert out["choices"][0]["logprobs"] == {"refusal": None, "content": [
                {"token": "Hi", "logprob": -0.5, "bytes": [72, 105], "top_logprobs": [{"token": "Hi", "logprob": -0.5, "bytes": [72, 105]}]}]}

            def with_openai() -> None:
                c = openai.OpenAI(base_url=f"{h.url}/v1", api_key="unused", max_retries=0)
                stream = c.chat.completions.create(model="tiny", messages=USER, logprobs=True, top_logprobs=1, stream=True)
                tokens = [t.token for ch in stream if ch.choices and ch.choices[0].logprobs for t in ch.choices[0].logprobs.content]
                assert tokens == ["Hi"]

            await asyncio.to_thread(with_openai)
    run(scenario())


def test_completions_render_text_choices_and_the_legacy_logprobs_object():
    async def scenario():
        async with harness(port=True) as h:
            h.worker.plan = [TokenEvent(request_id="", text="Hel", token_ids=[1], logprobs=[lp("Hel", -0.2, ("Hel", -0.2))]),
                             TokenEvent(request_id="", text="lo", token_ids=[2], logprobs=[lp("lo", -0.3, ("lo", -0.3))]),
                             finished("length")]
            out = await (await h.post("/v1/completions", {"model": "tiny", "prompt": "Say", "logprobs": 1})).json()
            assert out["object"] == "text_completion" and out["id"].startswith("cmpl-")
            choice = out["choices"][0]
            assert (choice["text"], choice["finish_reason"]) == ("Hello", "length")
            assert choice["logprobs"] == {"tokens": ["Hel", "lo"], "token_logprobs": [-0.2, -0.3],
                                          "top_logprobs": [{"Hel": -0.2}, {"lo": -0.3}], "text_offset": [0, 3]}
            assert h.worker.submits[0][0].prompt == "Say" and not h.worker.submits[0][0].is_chat

            def with_openai() -> None:
                c = openai.OpenAI(base_url=f"{h.url}/v1", api_key="unused", max_retries=0)
                r = c.completions.create(model="tiny", prompt="Say", max_tokens=2)
                assert r.choices[0].text == "Hello" and r.usage.total_tokens == 8
                parts = [ch.choices[0].text for ch in c.completions.create(model="tiny", prompt="Say", stream=True) if ch.choices]
                assert "".join(parts) == "Hello"

            await asyncio.to_thread(with_openai)
    run(scenario())


def test_api_embed_takes_a_string_or_a_list_and_returns_ollamas_shape():
    async def scenario():
        async with harness(port=True) as h:
            body = await (await h.post("/api/embed", {"model": "tiny", "input": ["a b", "cde"], "truncate": False,
                                                      "dimensions": 2, "keep_alive": "1m"})).json()
            assert body["model"] == "tiny" and body["embeddings"] == [[0.0, 3.0], [1.0, 3.0]]
            assert body["prompt_eval_count"] == 3 and body["load_duration"] == 250_000_000 and body["total_duration"] > 0
            sent = h.worker.embeds[0]
            assert list(sent.inputs) == ["a b", "cde"] and sent.dimensions == 2 and sent.HasField("truncate") and not sent.truncate
            await wait_for(lambda: len(h.supervisor.releases) == 1)
            assert h.supervisor.acquires[0].keep_alive_s == 60 and h.supervisor.releases[0].keep_alive_s == 60
            body = await (await h.post("/api/embed", {"model": "tiny", "input": "hello"})).json()
            assert body["embeddings"] == [[0.0, 5.0, 0.0]]
            legacy = await (await h.post("/api/embeddings", {"model": "tiny", "prompt": "hello"})).json()
            assert legacy == {"embedding": [0.0, 5.0, 0.0]}
            resp = await h.post("/api/embed", {"model": "tiny", "input": [1, 2]})
            assert resp.status == 400 and "input" in (await resp.json())["error"]

            def with_ollama() -> None:
                r = ollama.Client(host=h.url).embed(model="tiny", input=["x", "yy"])
                assert [list(e) for e in r.embeddings] == [[0.0, 1.0, 0.0], [1.0, 2.0, 0.0]]

            await asyncio.to_thread(with_ollama)
    run(scenario())


def test_openai_embeddings_in_float_and_base64():
    async def scenario():
        async with harness(port=True) as h:
            body = await (await h.post("/v1/embeddings", {"model": "tiny", "input": ["hello world", "x"]})).json()
            assert body["object"] == "list" and body["model"] == "tiny"
            assert body["data"] == [{"object": "embedding", "index": 0, "embedding": [0.0, 11.0, 0.0]},
                                    {"object": "embedding", "index": 1, "embedding": [1.0, 1.0, 0.0]}]
            assert body["usage"] == {"prompt_tokens": 3, "total_tokens": 3}
            body = await (await h.post("/v1/embeddings", {"model": "tiny", "input": "hello", "encoding_format": "base64"})).json()
            raw = base64.b64decode(body["data"][0]["embedding"])
            assert struct.unpack("<3f", raw) == (0.0, 5.0, 0.0)
            for bad, param in [({"input": [[1, 2], "x"]}, "input"), ({"input": "x", "encoding_format": "int8"}, "encoding_format"),
                               ({"input": []}, "input"), ({"input": [[]]}, "input[0]"), ({"input": [-1]}, "input[0]")]:
                resp = await h.post("/v1/embeddings", {"model": "tiny", **bad})
                assert resp.status == 400 and (await resp.json())["error"]["param"] == param

            def with_openai() -> None:
                c = openai.OpenAI(base_url=f"{h.url}/v1", api_key="unused", max_retries=0)
                r = c.embeddings.create(model="tiny", input=["ab", "c"], dimensions=2)  # the SDK asks for base64
                assert [d.embedding for d in r.data] == [[0.0, 2.0], [1.0, 1.0]]

            await asyncio.to_thread(with_openai)
    run(scenario())


# --- the Responses API (from tests/unit/test_gateway_responses_api.py) ------------------------------------

def test_the_official_client_reads_responses_streamed_or_not():
    async def scenario():
        async with harness(port=True) as h:
            def with_openai() -> None:
                c = openai.OpenAI(base_url=f"{h.url}/v1", api_key="unused", max_retries=0)
                r = c.responses.create(model="tiny", input="Hi", instructions="Be brief.")
                assert r.output_text == "Hello" and r.status == "completed" and r.usage.total_tokens == 8
                kinds, deltas = [], []
                for event in c.responses.create(model="tiny", input="Hi", stream=True):
                    kinds.append(event.type)
                    if event.type == "response.output_text.delta":
                        deltas.append(event.delta)
                assert kinds[0] == "response.created" and kinds[-1] == "response.completed" and "".join(deltas) == "Hello"
                with c.responses.stream(model="tiny", input="Hi") as stream:
                    final = stream.get_final_response()
                assert final.output_text == "Hello"
                with pytest.raises(openai.BadRequestError) as e:
                    c.responses.create(model="tiny", input="Hi", previous_response_id="resp_1")
                assert e.value.param == "previous_response_id"
                with pytest.raises(openai.NotFoundError):
                    c.responses.create(model="nope", input="Hi")

            await asyncio.to_thread(with_openai)
    run(scenario())


# --- the API key (from tests/unit/test_gateway_security.py) -----------------------------------------------

def test_official_clients_work_with_the_key_and_report_auth_errors_without_it():
    async def scenario():
        async with gateway(api_key=KEY, port=True) as g:
            def with_openai() -> None:
                c = openai.OpenAI(base_url=f"{g.url}/v1", api_key=KEY, max_retries=0)
                r = c.chat.completions.create(**CHAT)
                assert r.choices[0].message.content == "Hello"
                stream = c.chat.completions.create(**CHAT, stream=True)
                assert "".join(ch.choices[0].delta.content or "" for ch in stream if ch.choices) == "Hello"
                with pytest.raises(openai.AuthenticationError):
                    openai.OpenAI(base_url=f"{g.url}/v1", api_key="wrong", max_retries=0).models.list()

            def with_ollama() -> None:
                r = ollama.Client(host=g.url, headers=BEARER).chat(**CHAT)
                assert r.message.content == "Hello"
                with pytest.raises(ollama.ResponseError) as e:
                    ollama.Client(host=g.url).chat(**CHAT)
                assert e.value.status_code == 401

            await asyncio.to_thread(with_openai)
            await asyncio.to_thread(with_ollama)
    run(scenario())


# --- streaming (from tests/unit/test_gateway_streaming.py) ------------------------------------------------

def test_real_clients_read_the_responses():
    """The official `ollama` and `openai` clients parse what the gateway sends (they run in a thread)."""
    async def scenario():
        async with harness(port=True) as h:
            h.worker.plan = [text("Hel"), text("lo"), done("length")]

            def with_ollama() -> None:
                c = ollama.Client(host=h.url)
                parts = list(c.chat(model="tiny", messages=[{"role": "user", "content": "Hi"}], stream=True))
                assert "".join(p.message.content for p in parts) == "Hello" and parts[-1].done_reason == "length"
                r = c.generate(model="tiny", prompt="Hi", options={"temperature": 0})
                assert r.response == "Hello" and r.eval_count == 3 and r.load_duration == 250_000_000
                assert [m.model for m in c.list().models] == ["tiny:latest"]
                loaded = c.ps().models[0]
                assert loaded.model == "tiny:latest" and loaded.context_length == 2048
                with pytest.raises(ollama.ResponseError) as e:
                    c.chat(model="nope", messages=[{"role": "user", "content": "Hi"}])
                assert e.value.status_code == 404 and e.value.error == "model 'nope' not found"

            def with_openai() -> None:
                c = openai.OpenAI(base_url=f"{h.url}/v1", api_key="unused", max_retries=0)
                r = c.chat.completions.create(model="tiny", messages=[{"role": "user", "content": "Hi"}], max_tokens=3)
                assert r.choices[0].message.content == "Hello" and r.choices[0].finish_reason == "length"
                assert r.usage.total_tokens == 8
                stream = c.chat.completions.create(model="tiny", messages=[{"role": "user", "content": "Hi"}], stream=True)
                assert "".join(ch.choices[0].delta.content or "" for ch in stream if ch.choices) == "Hello"
                assert [m.id for m in c.models.list()] == ["tiny:latest"]
                with pytest.raises(openai.NotFoundError):
                    c.chat.completions.create(model="nope", messages=[{"role": "user", "content": "Hi"}])
                with pytest.raises(openai.BadRequestError) as e:
                    c.chat.completions.create(model="tiny", messages=[{"role": "user", "content": "Hi"}], n=2)
                assert e.value.param == "n"

            await asyncio.to_thread(with_ollama)
            await asyncio.to_thread(with_openai)
    run(scenario())
