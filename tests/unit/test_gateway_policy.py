"""The field policy and the Ollama parity details, through the gateway against the fake services of
tests/fixtures/gateway_harness.py: ignored fields are named, bounds agree with the worker's, `context` round
trips, embeddings respect num_ctx, load_duration counts the wait for the model, and the OpenAPI
request schemas are the request types themselves."""

from __future__ import annotations

import math
from pathlib import Path

import msgspec
import msgspec.inspect as mi
import pytest
import structlog
from aiohttp.test_utils import make_mocked_request

from mlxserve.gateway import openapi, request_types, request_types_openai
from mlxserve.gateway.status_api import OLLAMA_API_VERSION
from mlxserve.gateway.native import parse_generate, parse_options
from mlxserve.gateway.openai_api import parse_chat_completion
from mlxserve.gateway.openapi import build_document
from mlxserve.gateway.validation import IGNORED_HEADER, BadField, decode, ignored_header, note_ignored
from mlxserve.services.common.errors import InvalidArgument
from mlxserve.v1.requests import SamplingOptions

from tests.fixtures.gateway_harness import harness, ndjson, run, with_client

pytestmark = pytest.mark.timeout(30)

USER = [{"role": "user", "content": "hi"}]


def worker_validate(o: SamplingOptions) -> None:
    """What the worker does with the options it is sent: decode them off the wire, then validate."""
    msgspec.msgpack.decode(msgspec.msgpack.encode(o), type=SamplingOptions).validate()


def edges(t: mi.Type) -> tuple[list[float], list[float]]:
    """(values just inside the bounds of a numeric type, values just outside)."""
    t = t.type if isinstance(t, mi.Metadata) else t
    step = 1 if isinstance(t, mi.IntType) else 1e-3
    inside, outside = [], []
    if t.ge is not None:
        inside.append(t.ge), outside.append(t.ge - step)
    if t.gt is not None:
        inside.append(t.gt + step), outside.append(t.gt)
    if t.le is not None:
        inside.append(t.le), outside.append(t.le + step)
    return inside, [v for v in outside if abs(v) < 2**63]


def numeric_fields(cls: type, *, skip: tuple[str, ...] = ()) -> list:
    """pytest params (name, type) for each bounded number of a request type."""
    out = []
    for f in mi.type_info(cls).fields:
        t = f.type
        members = t.types if isinstance(t, mi.UnionType) else (t,)
        for m in members:
            bare = m.type if isinstance(m, mi.Metadata) else m
            if isinstance(bare, (mi.IntType, mi.FloatType)) and f.encode_name not in skip:
                out.append(pytest.param(f.encode_name, bare, id=f.encode_name))
    return out


@pytest.mark.parametrize("name, t", numeric_fields(request_types.Options))
def test_every_option_the_gateway_passes_the_worker_accepts_and_the_rest_is_a_400_here(name, t):
    inside, outside = edges(t)
    for value in inside:
        if name == "num_predict" and value == 0:
            continue
        worker_validate(parse_options({name: value}))  # raises if the worker would refuse it
    for value in outside:
        with pytest.raises(BadField) as e:
            parse_options({name: value})
        assert e.value.param == f"options.{name}"


@pytest.mark.parametrize("name, t", numeric_fields(request_types_openai.ChatCompletionRequest, skip=("n", "top_logprobs")))
def test_every_openai_sampling_value_the_gateway_passes_the_worker_accepts(name, t):
    inside, _ = edges(t)
    for value in inside:
        if name in ("max_tokens", "max_completion_tokens") and value == 0:
            continue
        req, _, _ = parse_chat_completion({"model": "tiny", "messages": USER, name: value}, "rid")
        worker_validate(req.options)


def test_top_p_zero_keeps_the_most_likely_token_instead_of_failing_in_the_worker():
    for o in (parse_options({"top_p": 0}),
              parse_chat_completion({"model": "tiny", "messages": USER, "top_p": 0}, "rid")[0].options):
        assert o.top_p is None and o.top_k == 1
        worker_validate(o)
    with pytest.raises(InvalidArgument):  # what used to happen: the worker refused it, after the gateway let it through
        SamplingOptions(top_p=0.0).validate()


@pytest.mark.parametrize("body, param", [
    ({"options": {"num_predict": 0}}, "options.num_predict"), ({"options": {"repeat_penalty": 0}}, "options.repeat_penalty"),
    ({"options": {"temperature": 101}}, "options.temperature"), ({"options": {"presence_penalty": 101}}, "options.presence_penalty"),
])
def test_values_the_worker_would_refuse_are_refused_by_the_gateway_naming_them(body, param):
    with pytest.raises(BadField) as e:
        parse_generate({"model": "tiny", "prompt": "hi", **body}, "rid")
    assert e.value.param == param and param in e.value.message


@pytest.mark.parametrize("raw, words", [
    (b'{"model": "tiny", "prompt": "hi", "options": {"temperature": NaN}}', "NaN"),
    (b'{"model": "tiny", "prompt": "hi", "options": {"temperature": 1e999}}', "out of range"),
    (b'{"model": "tiny", "prompt": "hi", "options": {"seed": 123456789012345678901234567890}}', "'options.seed'"),
])
def test_numbers_no_sampler_can_hold_are_400(raw, words):
    async def check(c):
        resp = await c.post("/api/generate", data=raw)
        assert resp.status == 400 and words in (await resp.json())["error"]
    with_client(check)


def test_unknown_fields_are_listed_with_their_paths_and_nulls_are_not():
    body, ignored = decode({"model": "tiny", "prompt": "hi", "shift": True, "nothing": None,
                            "options": {"num_thread": 8, "mirostat": 2, "temperature": 0}}, request_types.GenerateRequest)
    assert ignored == ["shift", "options.num_thread", "options.mirostat"] and body.options.temperature == 0


def test_the_ignored_header_is_cut_when_very_long_and_each_ignored_request_logs_a_debug_line():
    fields = [f"f{i}" for i in range(100)]
    assert ignored_header(fields).endswith(",f63,...(+36)")
    request = make_mocked_request("POST", "/api/chat")
    with structlog.testing.capture_logs() as lines:
        note_ignored(request, ["temperature", "temperature", "tool_choice"])
    assert [(l["event"], l["fields"], l["log_level"]) for l in lines] == [("fields_ignored", ["temperature", "tool_choice"], "debug")]


def test_field_names_a_header_cannot_carry_are_masked_not_a_500():
    async def check(c):
        resp = await c.post("/api/chat", json={"model": "tiny", "messages": USER, "bad\r\nSet-Cookie: x": 1, "ключ": 2})
        assert resp.status == 503  # no backends run here; the header is on every answer, errors too
        assert resp.headers["X-Mlxserve-Ignored"] == "bad??Set-Cookie:?x,????"
    with_client(check)


def test_generate_answers_with_context_and_continues_from_one():
    async def scenario():
        async with harness() as h:
            first = await (await h.post("/api/generate", {"model": "tiny", "prompt": "Hi", "stream": False})).json()
            assert first["context"] == [7, 8, 9, 1, 1]  # the prompt's ids (from the worker), then the answer's
            assert h.worker.submits[-1][0].want_prompt_tokens
            lines = await ndjson(await h.post("/api/generate", {"model": "tiny", "prompt": "More", "context": first["context"]}))
            submit = h.worker.submits[-1][0]
            assert list(submit.context) == [7, 8, 9, 1, 1] and submit.prompt == "More"
            assert lines[-1]["context"] == [7, 8, 9, 1, 1, 7, 8, 9, 1, 1] and "context" not in lines[0]
            chat = await (await h.post("/api/chat", {"model": "tiny", "messages": USER, "stream": False})).json()
            assert "context" not in chat and not h.worker.submits[-1][0].want_prompt_tokens
            resp = await h.post("/api/generate", {"model": "tiny", "prompt": "x", "context": [1, -2]})
            assert resp.status == 400 and "'context[1]'" in (await resp.json())["error"]
    run(scenario())


def test_embed_with_truncate_false_over_num_ctx_is_a_400_and_num_ctx_reaches_the_worker():
    async def scenario():
        async with harness() as h:
            body = {"model": "tiny", "input": ["hello world"], "truncate": False, "options": {"num_ctx": 4, "temperature": 1}}
            resp = await h.post("/api/embed", body)
            assert resp.status == 400 and "over the context of 4" in (await resp.json())["error"]
            assert resp.headers["X-Mlxserve-Ignored"] == "options.temperature"  # sampling means nothing to an embedding
            sent = h.worker.embeds[-1]
            assert sent.num_ctx == 4 and sent.HasField("truncate") and not sent.truncate
            resp = await h.post("/api/embed", {**body, "truncate": True})
            assert resp.status == 200
            resp = await h.post("/api/embed", {"model": "tiny", "input": "hi"})
            assert resp.status == 200 and not h.worker.embeds[-1].HasField("num_ctx")
    run(scenario())


def test_load_duration_is_the_time_spent_getting_the_model_ready():
    async def scenario():
        async with harness() as h:
            h.supervisor.acquire_delay = 0.3  # a load this request waited for, however the supervisor counts it
            out = await (await h.post("/api/generate", {"model": "tiny", "prompt": "Hi", "stream": False})).json()
            assert out["load_duration"] >= 300_000_000 and out["total_duration"] >= out["load_duration"]
            loaded = await (await h.post("/api/generate", {"model": "tiny"})).json()
            assert loaded["done_reason"] == "load" and loaded["load_duration"] >= 300_000_000
            embedded = await (await h.post("/api/embed", {"model": "tiny", "input": "hi"})).json()
            assert embedded["load_duration"] >= 300_000_000
    run(scenario())


def test_openapi_request_schemas_are_generated_from_the_request_types():
    doc = build_document()
    _, generated = msgspec.json.schema_components(openapi.REQUEST_TYPES, ref_template="#/components/schemas/{name}")
    schemas = doc["components"]["schemas"]
    for name, schema in generated.items():
        assert {k: v for k, v in schemas[name].items() if k != "examples"} == schema, name
    bodies = {op["requestBody"]["content"]["application/json"]["schema"]["$ref"].rsplit("/", 1)[1]
              for item in doc["paths"].values() for op in item.values()
              if isinstance(op, dict) and "application/json" in op.get("requestBody", {}).get("content", {})}
    assert bodies == {t.__name__ for t in openapi.REQUEST_TYPES}
    # Unknown fields are ignored, not refused: no request object is closed.
    assert not any(s.get("additionalProperties") is False for n, s in schemas.items() if n in generated)
    assert schemas["Options"]["properties"]["top_p"]["anyOf"][0] == {
        "type": "number", "minimum": 0.0, "maximum": 1.0, "description": "Nucleus sampling; 0 keeps only the most likely token."}
    assert math.isclose(schemas["ChatCompletionRequest"]["properties"]["temperature"]["anyOf"][0]["maximum"], 2.0)


def test_the_readme_states_the_field_policy_the_gateway_keeps():
    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    section = readme.split("## HTTP API", 1)[1].split("\n## ", 1)[0]
    assert f"`{IGNORED_HEADER}: a,b`" in section and "silently" not in section
    for row in ("Accepted and honoured", "Accepted, advisory", "Ignored and named", "Refused (400)"):
        assert f"| {row} |" in section
    assert f"Ollama {OLLAMA_API_VERSION}" in section
