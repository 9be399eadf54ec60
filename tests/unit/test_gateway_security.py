"""Safe by default: API key, Host check (DNS rebinding), CORS, body size and time limits, the exposure rule.

The app runs against in-process fake services (the generation fakes of tests/fixtures/gateway_harness.py plus a
store that takes blob uploads), so what is checked is what a client of the real gateway sees.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
from typing import Any

import pytest
from typer.testing import CliRunner

from mlxserve.cli import serve as serve_cli
from mlxserve.cli.backend import gateway_headers
from mlxserve.cli.main import app as mlxctl_app
from mlxserve.gateway import main as gateway_main
from mlxserve.gateway.security import check_exposure, is_loopback
from mlxserve.services.common.config import DEFAULT_CORS_ORIGINS, load_settings
from mlxserve.services.common.errors import InvalidArgument
from tests.fixtures.gateway_harness import KEY, gateway
from tests.fixtures.gateway_plans import BEARER, CHAT

pytestmark = pytest.mark.timeout(30)


def run(coro) -> Any:
    return asyncio.run(coro)


# --- API key ---------------------------------------------------------------------------------

def test_without_the_key_requests_are_401_in_each_dialect():
    async def scenario():
        async with gateway(api_key=KEY) as g:
            resp = await g.client.post("/api/chat", json=CHAT)
            assert resp.status == 401 and resp.headers["WWW-Authenticate"].startswith("Bearer")
            assert "Authorization: Bearer" in (await resp.json())["error"]
            resp = await g.client.post("/v1/chat/completions", json=CHAT, headers={"Authorization": "Bearer wrong"})
            error = (await resp.json())["error"]
            assert resp.status == 401 and error["type"] == "authentication_error" and "not valid" in error["message"]
            resp = await g.client.get("/api/tags", headers={"Authorization": f"Basic {KEY}"})
            assert resp.status == 401
            assert g.supervisor.acquires == []  # nothing ran
    run(scenario())


def test_liveness_routes_answer_without_the_key_and_the_key_opens_the_rest():
    async def scenario():
        async with gateway(api_key=KEY) as g:
            assert (await g.client.get("/")).status == 200
            assert (await g.client.head("/")).status == 200
            assert (await g.client.get("/api/health")).status == 200
            resp = await g.client.get("/api/tags", headers={"Authorization": f"bearer {KEY}"})
            assert resp.status == 200 and (await resp.json())["models"][0]["name"] == "tiny:latest"
    run(scenario())


def test_mlxctl_sends_the_configured_key_to_the_gateway():
    assert gateway_headers(load_settings({"api_key": KEY}, env={})) == BEARER
    assert gateway_headers(load_settings({}, env={})) == {}


# --- Host header (DNS rebinding) ------------------------------------------------------------

def test_a_rebound_host_name_is_403_while_bound_to_loopback():
    async def scenario():
        async with gateway(allowed_hosts="mybox.lan") as g:
            resp = await g.client.post("/api/chat", json=CHAT, headers={"Host": "evil.example:11435"})
            assert resp.status == 403 and "DNS rebinding" in (await resp.json())["error"]
            resp = await g.client.get("/v1/models", headers={"Host": "evil.example"})
            assert resp.status == 403 and (await resp.json())["error"]["type"] == "permission_error"
            for host in ("localhost:11435", "127.0.0.1", "[::1]:8080", "LOCALHOST", "mybox.lan:11435", "mybox.lan"):
                assert (await g.client.get("/api/tags", headers={"Host": host})).status == 200, host
            assert g.supervisor.acquires == []
    run(scenario())


def test_no_host_check_when_bound_beyond_loopback_with_a_key():
    async def scenario():
        async with gateway(host="0.0.0.0", api_key=KEY) as g:
            resp = await g.client.get("/api/tags", headers={"Host": "mlx.example.com", **BEARER})
            assert resp.status == 200
    run(scenario())


# --- CORS ------------------------------------------------------------------------------------

PREFLIGHT = {"Access-Control-Request-Method": "POST", "Access-Control-Request-Headers": "authorization, content-type, x-stainless-os"}


def test_preflight_from_an_allowed_origin_is_answered_and_others_refused():
    async def scenario():
        async with gateway(api_key=KEY) as g:  # preflights carry no key: they must not need one
            resp = await g.client.options("/v1/chat/completions", headers={"Origin": "http://localhost:3000", **PREFLIGHT})
            assert resp.status == 204
            assert resp.headers["Access-Control-Allow-Origin"] == "http://localhost:3000"
            allowed = resp.headers["Access-Control-Allow-Headers"].lower()
            assert "authorization" in allowed and "content-type" in allowed and "x-stainless-os" in allowed
            assert "POST" in resp.headers["Access-Control-Allow-Methods"] and int(resp.headers["Access-Control-Max-Age"]) > 0
            resp = await g.client.options("/v1/chat/completions", headers={"Origin": "https://evil.example", **PREFLIGHT})
            assert resp.status == 403 and "Access-Control-Allow-Origin" not in resp.headers
            assert "cors_origins" in (await resp.json())["error"]["message"]
    run(scenario())


def test_allowed_origins_see_cors_headers_on_streams_and_errors():
    async def scenario():
        async with gateway() as g:
            origin = {"Origin": "vscode-webview://abc123"}
            resp = await g.client.post("/api/chat", json=CHAT, headers=origin)
            assert resp.status == 200 and resp.headers["Access-Control-Allow-Origin"] == "vscode-webview://abc123"
            assert "Origin" in resp.headers.getall("Vary") and "X-Request-Id" in resp.headers["Access-Control-Expose-Headers"]
            assert [json.loads(line)["done"] for line in (await resp.text()).splitlines()][-1] is True
            resp = await g.client.post("/api/chat", json={**CHAT, "model": "nope"}, headers=origin)
            assert resp.status == 404 and resp.headers["Access-Control-Allow-Origin"] == "vscode-webview://abc123"
            resp = await g.client.get("/api/tags")
            assert "Access-Control-Allow-Origin" not in resp.headers
    run(scenario())


def test_a_simple_cross_site_post_from_a_foreign_origin_never_runs():
    """A text/plain POST needs no preflight: the origin check itself must stop it (CSRF)."""
    async def scenario():
        async with gateway() as g:
            resp = await g.client.post("/api/generate", data=json.dumps({"model": "tiny", "prompt": "hi"}),
                                       headers={"Origin": "https://evil.example", "Content-Type": "text/plain"})
            assert resp.status == 403 and "Access-Control-Allow-Origin" not in resp.headers
            assert g.supervisor.acquires == []
    run(scenario())


def test_cors_origins_setting_replaces_the_defaults_with_wildcards():
    async def scenario():
        async with gateway(cors_origins="https://*.example.com, http://app.lan:8080") as g:
            for origin, status in (("https://chat.example.com", 200), ("http://app.lan:8080", 200),
                                   ("http://localhost:3000", 403), ("https://example.com.evil.net", 403)):
                resp = await g.client.get("/api/tags", headers={"Origin": origin})
                assert resp.status == status, origin
    run(scenario())


# --- body size and time ----------------------------------------------------------------------

def test_a_too_big_json_body_is_413_in_the_dialect_shape():
    async def scenario():
        async with gateway(max_body_bytes=2048) as g:
            big = {**CHAT, "messages": [{"role": "user", "content": "x" * 4096}]}
            resp = await g.client.post("/api/chat", json=big)
            assert resp.status == 413 and isinstance((await resp.json())["error"], str)
            resp = await g.client.post("/v1/chat/completions", json=big)
            error = (await resp.json())["error"]
            assert resp.status == 413 and error["type"] == "invalid_request_error" and "2048" in error["message"]
    run(scenario())


def test_large_bodies_past_the_inflight_budget_are_503_with_retry_after_and_small_ones_still_pass():
    async def scenario():
        async with gateway(max_inflight_body_bytes=3 << 20) as g:
            g.worker.plan = [0.5, *g.worker.plan]  # the first generation holds its body for a while
            big = {**CHAT, "stream": False, "messages": [{"role": "user", "content": "x" * (2 << 20)}]}
            first = asyncio.ensure_future(g.client.post("/api/chat", json=big))
            while not g.worker.submits:
                await asyncio.sleep(0.01)
            g.worker.plan = g.worker.plan[1:]
            refused = await g.client.post("/api/chat", json=big)
            assert refused.status == 503 and refused.headers["Retry-After"] == "1"
            assert "max_inflight_body_bytes" in (await refused.json())["error"]
            small = await g.client.post("/api/chat", json={**CHAT, "stream": False})
            assert small.status == 200
            assert (await first).status == 200
            assert (await g.client.post("/api/chat", json=big)).status == 200  # the budget came back
    run(scenario())


def test_a_blob_upload_is_not_held_to_the_json_body_limit():
    async def scenario():
        async with gateway(max_body_bytes=2048) as g:
            data = bytes(range(256)) * 256  # 64 KiB, 32x the JSON limit
            digest = "sha256:" + hashlib.sha256(data).hexdigest()
            resp = await g.client.post(f"/api/blobs/{digest}", data=data)
            assert resp.status == 201 and g.store.blobs[digest] == data
    run(scenario())



# --- the exposure rule ------------------------------------------------------------------------

def test_listening_beyond_loopback_needs_a_key_or_the_explicit_waiver():
    assert is_loopback("127.0.0.1") and is_loopback("::1") and is_loopback("localhost") and is_loopback("127.0.0.2")
    assert not is_loopback("0.0.0.0") and not is_loopback("") and not is_loopback("192.168.1.5") and not is_loopback("::")
    assert check_exposure(load_settings({}, env={})) is None
    assert check_exposure(load_settings({"host": "0.0.0.0", "api_key": KEY}, env={})) is None
    with pytest.raises(InvalidArgument) as e:
        check_exposure(load_settings({"host": "0.0.0.0"}, env={}))
    assert "MLXSERVE_API_KEY" in e.value.message and "--insecure-no-auth" in e.value.message
    warning = check_exposure(load_settings({"host": "0.0.0.0"}, env={"MLXSERVE_INSECURE_NO_AUTH": "yes"}))
    assert warning and "NO API key" in warning


def test_the_gateway_refuses_to_start_exposed_without_a_key(tmp_path, monkeypatch, capsys):
    monkeypatch.delenv("MLXSERVE_API_KEY", raising=False)
    monkeypatch.delenv("MLXSERVE_INSECURE_NO_AUTH", raising=False)
    assert gateway_main.main(["--host", "0.0.0.0", "--home", str(tmp_path)]) == InvalidArgument.exit_code
    assert "refusing to listen on 0.0.0.0" in capsys.readouterr().err


def test_gateway_flags_reach_the_settings():
    overrides = gateway_main.parse_args(["--verbose", "--insecure-no-auth"])
    settings = load_settings(overrides, env={})
    assert settings.log_level == "debug" and settings.insecure_no_auth is True
    assert load_settings(gateway_main.parse_args([]), env={}).insecure_no_auth is False


def test_security_settings_survive_the_trip_to_child_processes():
    settings = load_settings({"api_key": KEY, "insecure_no_auth": "true", "cors_origins": "https://a.example, app://*",
                              "allowed_hosts": ""}, env={})
    assert settings.cors_origins == ("https://a.example", "app://*") and settings.allowed_hosts == ()
    child = load_settings(env=settings.to_env())
    assert child == settings and child.api_key == KEY
    cleared = load_settings({"cors_origins": "[]"}, env={})
    assert cleared.cors_origins == () and load_settings(env=cleared.to_env()).cors_origins == ()
    assert load_settings({}, env={}).cors_origins == DEFAULT_CORS_ORIGINS
    with pytest.raises(InvalidArgument):
        load_settings({"insecure_no_auth": "maybe"}, env={})


def test_mlxctl_serve_verbose_and_waiver_reach_every_service(tmp_path, monkeypatch):
    started = []

    def fake_start(settings):
        started.append(settings.to_env())
        raise serve_cli.Stopped("test")

    monkeypatch.setattr(serve_cli, "start_children", fake_start)
    for name in [k for k in os.environ if k.startswith("MLXSERVE_")]:
        monkeypatch.delenv(name)
    result = CliRunner().invoke(mlxctl_app, ["--home", str(tmp_path), "serve", "--verbose", "--host", "0.0.0.0",
                                      "--insecure-no-auth", "--port", "1"])
    assert result.exit_code == 0, result.output
    assert "NO API key" in result.output  # said on every start
    assert started[0]["MLXSERVE_LOG_LEVEL"] == "debug" and started[0]["MLXSERVE_INSECURE_NO_AUTH"] == "true"
