"""The HTTP surface through the real processes: listing, errors, cancellation, CLI verbs."""

from __future__ import annotations

import http.client
import json
import time

import ollama
import openai
import pytest

from tests.e2e.conftest import SMOL, TINY
from tests.e2e.harness import System, http_json


def test_health_names_every_service(system: System) -> None:
    status, body = http_json("GET", system.url + "/api/health")
    assert status == 200
    assert body["services"] == {"store": "ok", "supervisor": "ok"}


def test_root_says_the_server_is_running(system: System) -> None:
    conn = http.client.HTTPConnection("127.0.0.1", system.port, timeout=10)
    conn.request("HEAD", "/")
    assert conn.getresponse().status == 200
    conn.close()


def test_tags_and_openai_models_list_the_imported_models(system: System) -> None:
    tags = ollama.Client(host=system.url).list()
    names = {m.model for m in tags.models}
    assert {SMOL, TINY} <= names
    smol = next(m for m in tags.models if m.model == SMOL)
    assert smol.details.family == "llama"
    assert smol.size > 50_000_000 and len(smol.digest) == 64
    ids = {m.id for m in openai.OpenAI(base_url=system.url + "/v1", api_key="x").models.list()}
    assert {SMOL, TINY} <= ids


def test_version_is_reported(system: System) -> None:
    status, body = http_json("GET", system.url + "/api/version")
    assert status == 200 and body["version"]


def test_unknown_model_is_404_in_each_dialect(system: System) -> None:
    status, body = http_json("POST", system.url + "/api/chat", {"model": "nope", "messages": [{"role": "user", "content": "hi"}]})
    assert (status, body) == (404, {"error": "model 'nope' not found"})
    with pytest.raises(openai.NotFoundError) as exc:
        openai.OpenAI(base_url=system.url + "/v1", api_key="x", max_retries=0).chat.completions.create(model="nope", messages=[{"role": "user", "content": "hi"}])
    err = exc.value.body
    assert "nope" in err["message"] and err["type"]
    with pytest.raises(ollama.ResponseError) as oexc:
        ollama.Client(host=system.url).generate(model="nope", prompt="hi")
    assert oexc.value.status_code == 404


def test_malformed_json_and_missing_model_are_400(system: System) -> None:
    conn = http.client.HTTPConnection("127.0.0.1", system.port, timeout=10)
    conn.request("POST", "/api/chat", body=b"{not json", headers={"Content-Type": "application/json"})
    resp = conn.getresponse()
    assert resp.status == 400 and "error" in json.loads(resp.read())
    conn.close()
    status, body = http_json("POST", system.url + "/api/generate", {"prompt": "hi"})
    assert status == 400 and "model" in body["error"]
    status, body = http_json("POST", system.url + "/v1/chat/completions", {"messages": []})
    assert status == 400 and "model" in body["error"]["message"]


def test_ps_shows_a_loaded_model_with_its_expiry(system: System) -> None:
    ollama.Client(host=system.url).generate(model=TINY, prompt="hello", options={"num_predict": 2})
    ps = ollama.Client(host=system.url).ps()
    loaded = {m.model: m for m in ps.models}
    assert TINY in loaded
    assert loaded[TINY].expires_at is not None and loaded[TINY].size > 0


def test_client_disconnect_cancels_its_generation(system: System) -> None:
    # A long generation, abandoned after the first chunks: the worker must drop it, which the
    # supervisor sees as the lease ending (in_flight back to 0) long before 5000 tokens decode.
    conn = http.client.HTTPConnection("127.0.0.1", system.port, timeout=30)
    body = json.dumps({"model": TINY, "prompt": "tell me a story", "options": {"num_predict": 5000, "temperature": 1.0, "seed": 1}})
    conn.request("POST", "/api/generate", body=body, headers={"Content-Type": "application/json"})
    resp = conn.getresponse()
    assert resp.status == 200
    first = resp.readline()
    assert json.loads(first)["done"] is False
    conn.sock.close()
    conn.close()
    deadline = time.monotonic() + 10
    in_flight = None
    while time.monotonic() < deadline:
        out = system.mlxctl("ps", "--json")
        rows = {r["name"]: r for r in json.loads(out.stdout)["models"]} if out.returncode == 0 else {}
        in_flight = rows.get(TINY, {}).get("in_flight")
        if in_flight == 0:
            break
        time.sleep(0.3)
    assert in_flight == 0


def test_mlxctl_run_streams_an_answer(system: System) -> None:
    out = system.mlxctl("run", SMOL, "What is the capital of France?", "-o", "temperature=0", "-o", "num_predict=8", "--verbose", timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout == "The capital of France is Paris.\n"
    assert "eval count:           8 token(s)" in out.stderr


def test_mlxctl_list_and_ps_show_models(system: System) -> None:
    out = system.mlxctl("list")
    assert out.returncode == 0 and SMOL in out.stdout and TINY in out.stdout
    out = system.mlxctl("ps")
    assert out.returncode == 0


def test_creating_from_a_file_that_is_not_gguf_fails_cleanly(system: System, tmp_path) -> None:
    bogus = tmp_path / "bogus.gguf"
    bogus.write_bytes(b"GGUF" + b"\0" * 64)
    before = set((system.home / "models" / "blobs").iterdir())
    out = system.mlxctl("create", "bogus", "--from", str(bogus))
    assert out.returncode != 0
    assert out.stderr.strip().startswith("Error:")
    assert set((system.home / "models" / "blobs").iterdir()) == before
    assert "bogus" not in system.mlxctl("list").stdout


def test_stop_unloads_a_model(system: System) -> None:
    ollama.Client(host=system.url).generate(model=TINY, prompt="hi", options={"num_predict": 1})
    out = system.mlxctl("stop", TINY)
    assert out.returncode == 0, out.stderr
    assert TINY not in {m.model for m in ollama.Client(host=system.url).ps().models}
