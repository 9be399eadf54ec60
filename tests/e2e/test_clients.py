"""Conformance through the official clients: every route of both APIs, streamed and not, on the real system.

The shared session system serves SmolLM2 and the tiny random-weight model; the tiny one answers
every request here (a few tokens each), since what is checked is the protocol, not the words.
Embeddings need an embedding model: all-MiniLM-L6-v2 is imported for this module and removed after.
Push and pull are in test_registry.py and test_store_api.py; generation features (formats, tools,
logprobs) in test_generation_features.py.
"""

from __future__ import annotations

import http.client
import json
import math
import re
from typing import Iterator

import ollama
import openai
import pytest

from tests.e2e.conftest import TINY
from tests.e2e.harness import System
from tests.fixtures.minilm import find_minilm_dir

pytestmark = pytest.mark.timeout(300)

EMBEDDER = "clients-minilm:latest"
USER = [{"role": "user", "content": "Say something."}]
RFC3339_NANO = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d{1,9})?Z")
NS_FIELDS = ("total_duration", "load_duration", "prompt_eval_duration", "eval_duration")


@pytest.fixture(scope="module")
def embedder(system: System) -> Iterator[str]:
    out = system.mlxctl("create", EMBEDDER, "--from", str(find_minilm_dir()), timeout=240)
    assert out.returncode == 0, out.stderr
    yield EMBEDDER
    system.mlxctl("stop", EMBEDDER)
    system.mlxctl("rm", EMBEDDER)


def raw(system: System, method: str, path: str, body: bytes | None = None) -> tuple[int, dict[str, str], bytes]:
    conn = http.client.HTTPConnection("127.0.0.1", system.port, timeout=30)
    try:
        conn.request(method, path, body=body, headers={"Content-Type": "application/json"} if body else {})
        resp = conn.getresponse()
        return resp.status, dict(resp.getheaders()), resp.read()
    finally:
        conn.close()


# --- OpenAI: chat completions, completions, models, embeddings ---------------------------------------


def test_openai_chat_completion_without_streaming(oai: openai.OpenAI) -> None:
    r = oai.chat.completions.create(model=TINY, messages=USER, max_tokens=3, temperature=0)
    assert r.object == "chat.completion" and r.id.startswith("chatcmpl-") and r.model == TINY
    assert r.system_fingerprint.startswith("fp_") and r.created > 0
    choice = r.choices[0]
    assert choice.index == 0 and choice.message.role == "assistant" and isinstance(choice.message.content, str)
    assert choice.finish_reason == "length"
    assert r.usage.completion_tokens == 3 and r.usage.total_tokens == r.usage.prompt_tokens + 3 and r.usage.prompt_tokens > 0


def test_openai_chat_stream_is_role_deltas_finish_then_usage(oai: openai.OpenAI) -> None:
    chunks = list(oai.chat.completions.create(model=TINY, messages=USER, max_tokens=3, temperature=0, stream=True,
                                              stream_options={"include_usage": True}))
    first, finish, usage = chunks[0], chunks[-2], chunks[-1]
    assert first.choices[0].delta.role == "assistant" and first.choices[0].delta.content == ""
    assert finish.choices[0].finish_reason == "length" and finish.choices[0].delta.content is None
    assert usage.choices == [] and usage.usage.completion_tokens == 3
    assert all(c.choices[0].finish_reason is None for c in chunks[1:-2])
    assert len({c.id for c in chunks}) == 1 and all(c.object == "chat.completion.chunk" for c in chunks)
    streamed = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    whole = oai.chat.completions.create(model=TINY, messages=USER, max_tokens=3, temperature=0)
    assert streamed == whole.choices[0].message.content


def test_openai_n_above_one_is_a_bad_request_naming_n(oai: openai.OpenAI) -> None:
    with pytest.raises(openai.BadRequestError) as e:
        oai.chat.completions.create(model=TINY, messages=USER, n=2)
    assert e.value.status_code == 400 and e.value.param == "n" and e.value.body["type"] == "invalid_request_error"


def test_openai_text_completion_streamed_with_usage(oai: openai.OpenAI) -> None:
    r = oai.completions.create(model=TINY, prompt="Once", max_tokens=2, temperature=0)
    assert r.object == "text_completion" and r.choices[0].finish_reason == "length" and r.usage.completion_tokens == 2
    chunks = list(oai.completions.create(model=TINY, prompt="Once", max_tokens=2, temperature=0, stream=True,
                                         stream_options={"include_usage": True}))
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens == 2
    assert "".join(c.choices[0].text for c in chunks if c.choices) == r.choices[0].text


def test_openai_models_list_and_retrieve_and_unknown_is_not_found(oai: openai.OpenAI) -> None:
    listed = {m.id: m for m in oai.models.list()}
    assert TINY in listed and listed[TINY].object == "model"
    one = oai.models.retrieve(TINY)
    assert one.id == TINY and one.owned_by
    assert oai.models.retrieve("tiny").id == TINY  # the default tag is implied
    with pytest.raises(openai.NotFoundError) as e:
        oai.models.retrieve("no-such-model")
    assert e.value.body["code"] == "model_not_found" and "no-such-model" in e.value.body["message"]


def test_openai_embeddings_in_float_and_base64(oai: openai.OpenAI, embedder: str) -> None:
    floats = oai.embeddings.create(model=embedder, input=["a cat", "a dog"], encoding_format="float")
    decoded = oai.embeddings.create(model=embedder, input=["a cat", "a dog"])  # the SDK asks for base64 and decodes it
    assert [d.index for d in floats.data] == [0, 1] and len(floats.data[0].embedding) == 384
    assert all(math.isclose(x, y, abs_tol=1e-6) for x, y in zip(floats.data[1].embedding, decoded.data[1].embedding))
    assert floats.usage.prompt_tokens > 0 and floats.model == embedder
    cut = oai.embeddings.create(model=embedder, input="a cat", dimensions=32, encoding_format="float")
    assert len(cut.data[0].embedding) == 32


# --- OpenAI: responses ---------------------------------------------------------------------------------


def test_openai_responses_without_streaming(oai: openai.OpenAI) -> None:
    r = oai.responses.create(model=TINY, input="Say something.", instructions="Be brief.", max_output_tokens=3, temperature=0)
    assert r.id.startswith("resp_") and r.object == "response" and r.model == TINY
    assert r.status == "incomplete" and r.incomplete_details.reason == "max_output_tokens"
    assert r.output[0].type == "message" and r.output[0].content[0].type == "output_text"
    assert r.usage.output_tokens == 3 and r.usage.total_tokens == r.usage.input_tokens + 3
    again = oai.responses.create(model=TINY, input=[{"role": "system", "content": "Be brief."},
                                                    {"role": "user", "content": [{"type": "input_text", "text": "Say something."}]}],
                                 max_output_tokens=3, temperature=0)
    assert again.output_text == r.output_text  # instructions are a system message


def test_openai_responses_stream_events(oai: openai.OpenAI) -> None:
    events = list(oai.responses.create(model=TINY, input="Say something.", max_output_tokens=3, temperature=0, stream=True))
    kinds = [e.type for e in events]
    assert kinds[:4] == ["response.created", "response.in_progress", "response.output_item.added", "response.content_part.added"]
    assert kinds[-4:] == ["response.output_text.done", "response.content_part.done", "response.output_item.done",
                          "response.incomplete"]
    assert [e.sequence_number for e in events] == list(range(len(events)))
    text = "".join(e.delta for e in events if e.type == "response.output_text.delta")
    assert events[-1].response.output[0].content[0].text == text and events[-1].response.usage.output_tokens == 3
    with oai.responses.stream(model=TINY, input="Say something.", max_output_tokens=3, temperature=0) as stream:
        deltas = [e.delta for e in stream if e.type == "response.output_text.delta"]
    assert "".join(deltas) == text


def test_openai_responses_refuse_server_state(oai: openai.OpenAI) -> None:
    # store: true is accepted (named in X-Mlxserve-Ignored): the answer is the same, it is only not kept.
    for extra, param in (({"previous_response_id": "resp_1"}, "previous_response_id"),):
        with pytest.raises(openai.BadRequestError) as e:
            oai.responses.create(model=TINY, input="hi", **extra)
        assert e.value.param == param
    with pytest.raises(openai.NotFoundError):
        oai.responses.create(model="no-such-model", input="hi")


# --- Ollama: generate, chat, list, show, ps, copy, delete, create, embed --------------------------------


def test_ollama_generate_final_chunk_has_ollamas_fields_in_nanoseconds(oll: ollama.Client) -> None:
    r = oll.generate(model=TINY, prompt="Say something.", options={"num_predict": 3, "temperature": 0})
    assert r.done and r.done_reason == "length" and r.eval_count == 3 and r.prompt_eval_count > 0
    assert RFC3339_NANO.fullmatch(r.created_at) and r.model == TINY
    assert all(isinstance(getattr(r, f), int) for f in NS_FIELDS) and r.total_duration >= r.eval_duration > 0
    parts = list(oll.generate(model=TINY, prompt="Say something.", options={"num_predict": 3, "temperature": 0}, stream=True))
    assert not any(p.done for p in parts[:-1]) and parts[-1].done and parts[-1].done_reason == "length"
    assert "".join(p.response for p in parts) == r.response


def test_ollama_chat_streamed_and_not(oll: ollama.Client) -> None:
    r = oll.chat(model=TINY, messages=USER, options={"num_predict": 3, "temperature": 0})
    assert r.message.role == "assistant" and r.done_reason == "length" and r.eval_count == 3
    parts = list(oll.chat(model=TINY, messages=USER, options={"num_predict": 3, "temperature": 0}, stream=True))
    assert "".join(p.message.content for p in parts) == r.message.content
    assert parts[-1].done and parts[-1].eval_duration > 0


def test_ollama_empty_prompt_loads_and_keep_alive_zero_unloads(oll: ollama.Client) -> None:
    assert oll.generate(model=TINY, prompt="").done_reason == "load"
    assert TINY in {m.model for m in oll.ps().models}
    assert oll.chat(model=TINY, messages=[], keep_alive=0).done_reason == "unload"
    assert TINY not in {m.model for m in oll.ps().models}


def test_ollama_list_show_and_ps(oll: ollama.Client) -> None:
    listed = {m.model: m for m in oll.list().models}
    assert listed[TINY].size > 0 and listed[TINY].modified_at is not None
    shown = oll.show(TINY)
    assert shown.details.family == "llama" and shown.modelinfo and "completion" in shown.capabilities and shown.template
    oll.generate(model=TINY, prompt="hi", options={"num_predict": 1})
    loaded = {m.model: m for m in oll.ps().models}[TINY]
    assert loaded.expires_at is not None and loaded.size > 0 and loaded.size_vram is not None
    assert loaded.context_length and loaded.digest == listed[TINY].digest


def test_ollama_create_from_a_model_then_copy_and_delete(oll: ollama.Client) -> None:
    progress = list(oll.create(model="clients-made", from_=TINY, system="Answer in French.",
                               parameters={"num_predict": 2}, stream=True))
    assert progress[-1].status == "success"
    shown = oll.show("clients-made")
    assert "Answer in French." in shown.modelfile and "num_predict" in (shown.parameters or "")
    assert oll.generate(model="clients-made", prompt="hi").eval_count == 2  # the model's own default applies
    assert oll.copy("clients-made", "clients-copy").status == "success"
    assert {"clients-made:latest", "clients-copy:latest"} <= {m.model for m in oll.list().models}
    oll.generate(model="clients-made", prompt="", keep_alive=0)
    for name in ("clients-made", "clients-copy"):
        assert oll.delete(name).status == "success"
    assert not {"clients-made:latest", "clients-copy:latest"} & {m.model for m in oll.list().models}


def test_ollama_unknown_models_are_404_everywhere(oll: ollama.Client) -> None:
    calls = [
        lambda: oll.show("no-such-model"), lambda: oll.delete("no-such-model"), lambda: oll.copy("no-such-model", "x"),
        lambda: oll.chat(model="no-such-model", messages=USER), lambda: oll.embed(model="no-such-model", input="x"),
        lambda: oll.embeddings(model="no-such-model", prompt="x"),
    ]
    for call in calls:
        with pytest.raises(ollama.ResponseError) as e:
            call()
        assert e.value.status_code == 404 and "no-such-model" in e.value.error


def test_ollama_embed_and_legacy_embeddings(oll: ollama.Client, embedder: str) -> None:
    r = oll.embed(model=embedder, input=["a cat", "a dog"])
    assert len(r.embeddings) == 2 and len(r.embeddings[0]) == 384 and r.prompt_eval_count > 2
    assert math.isclose(sum(v * v for v in r.embeddings[0]), 1.0, rel_tol=1e-4)
    legacy = oll.embeddings(model=embedder, prompt="a cat")
    assert all(math.isclose(x, y, abs_tol=1e-5) for x, y in zip(legacy.embedding, r.embeddings[0]))


# --- HTTP details clients rely on --------------------------------------------------------------------


def test_wrong_method_is_405_with_allow_in_each_dialect(system: System) -> None:
    status, headers, body = raw(system, "GET", "/api/chat")
    assert status == 405 and "POST" in headers["Allow"] and "error" in json.loads(body)
    status, headers, body = raw(system, "POST", "/api/delete", b'{"model": "x"}')
    assert status == 405 and "DELETE" in headers["Allow"]
    status, headers, body = raw(system, "GET", "/v1/responses")
    assert status == 405 and set(json.loads(body)["error"]) == {"message", "type", "param", "code"}


def test_root_and_version_answer(system: System) -> None:
    status, _, body = raw(system, "GET", "/")
    assert (status, body) == (200, b"mlxserve is running")
    status, _, body = raw(system, "GET", "/api/version")
    assert status == 200 and json.loads(body)["version"]
