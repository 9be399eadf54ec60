"""The gateway app's routing and error rendering with no backend services running."""

from __future__ import annotations

import json

import pytest

from mlxserve import __version__
from tests.fixtures.gateway_harness import with_client

pytestmark = pytest.mark.timeout(30)


def test_root_answers_get_and_head():
    async def check(c):
        resp = await c.get("/")
        assert resp.status == 200 and await resp.text() == "mlxserve is running"
        resp = await c.head("/")
        assert resp.status == 200
    with_client(check)


def test_version_reports_the_ollama_api_level_and_mlxserve_version_apart():
    async def check(c):
        body = await (await c.get("/api/version")).json()
        assert body == {"version": "0.13.5", "mlxserve_version": __version__}
        # Codex --oss compares `version` with the Ollama release it needs (0.13.4, for /v1/responses).
        assert tuple(int(p) for p in body["version"].split(".")) >= (0, 13, 4)
    with_client(check)


def test_health_is_503_naming_each_service_that_does_not_answer():
    async def check(c):
        resp = await c.get("/api/health")
        body = await resp.json()
        assert resp.status == 503 and body["status"] == "unavailable"
        assert "store" in body["error"] and "supervisor" in body["error"]
        assert "not reachable" in body["services"]["store"] and "not reachable" in body["services"]["supervisor"]
    with_client(check)


def test_generation_without_a_supervisor_is_503_naming_it():
    async def check(c):
        resp = await c.post("/api/generate", json={"model": "tiny", "prompt": "hi"})
        assert resp.status == 503 and "supervisor" in (await resp.json())["error"]
        resp = await c.post("/v1/chat/completions", json={"model": "tiny", "messages": [{"role": "user", "content": "hi"}]})
        error = (await resp.json())["error"]
        assert resp.status == 503 and "supervisor" in error["message"] and error["type"] == "server_error"
    with_client(check)


def test_model_list_without_a_store_is_503_naming_it():
    async def check(c):
        resp = await c.get("/api/tags")
        assert resp.status == 503 and "store" in (await resp.json())["error"]
        resp = await c.get("/v1/models")
        assert resp.status == 503 and "store" in (await resp.json())["error"]["message"]
    with_client(check)


def test_wrong_method_is_405_with_allow_header():
    async def check(c):
        resp = await c.get("/api/generate")
        assert resp.status == 405 and resp.headers["Allow"] == "POST" and "not allowed" in (await resp.json())["error"]
        resp = await c.delete("/v1/chat/completions")
        assert resp.status == 405 and "not allowed" in (await resp.json())["error"]["message"]
    with_client(check)


def test_unknown_path_is_a_json_404():
    async def check(c):
        resp = await c.get("/api/nothing-here")
        assert resp.status == 404 and "/api/nothing-here" in (await resp.json())["error"]
    with_client(check)


@pytest.mark.parametrize("path", ["/api/generate", "/api/chat"])
def test_malformed_or_incomplete_bodies_are_400(path):
    async def check(c):
        for data, words in [("{not json", "invalid JSON"), ("", "empty"), ("[1, 2]", "JSON object"),
                            (json.dumps({"prompt": "hi"}), "model")]:
            resp = await c.post(path, data=data)
            assert resp.status == 400, data
            assert words in (await resp.json())["error"]
    with_client(check)


def test_openai_bad_request_has_openai_error_shape_with_param():
    async def check(c):
        resp = await c.post("/v1/chat/completions", json={"model": "tiny", "messages": [{"role": "user", "content": "hi"}],
                                                          "tool_choice": "required"})
        assert resp.status == 400
        assert await resp.json() == {"error": {
            "message": "'tool_choice' asks for a tool call, but the request has no tools",
            "type": "invalid_request_error", "param": "tool_choice", "code": None}}
    with_client(check)


def test_body_over_the_limit_is_413():
    async def check(c):
        resp = await c.post("/api/generate", data=json.dumps({"model": "tiny", "prompt": "x" * 5000}))
        assert resp.status == 413 and "error" in await resp.json()
    with_client(check, max_body_bytes=1024)
