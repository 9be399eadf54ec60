"""Pull from a registry in Ollama's exact format through the running system (issue 15): `mlxctl
pull` of the real Gemma 3 file, which then answers as llama.cpp does; `/api/pull` streaming
Ollama's statuses; and bare names (`mlxctl pull tiny:v1`) through the `default_registry` setting."""

from __future__ import annotations

import json
import time
import urllib.request

import pytest

from tests.e2e.harness import System, http_json, start_system
from tests.fixtures import ollama_registry as fx
from tests.fixtures.ollama_registry import ollama_gemma3, ollama_models  # noqa: F401 (fixtures)
from tests.fixtures.ollama_store import TINY_SYSTEM
from tests.fixtures.registry import Registry, registry  # noqa: F401 (fixture)

pytestmark = pytest.mark.timeout(600)


def stream_pull(url: str, body: dict) -> list[dict]:
    """POST /api/pull and read its NDJSON progress to the end."""
    req = urllib.request.Request(f"{url}/api/pull", data=json.dumps(body).encode(), method="POST",
                                 headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=120) as resp:
        assert resp.status == 200 and resp.headers["Content-Type"].startswith("application/x-ndjson")
        return [json.loads(line) for line in resp if line.strip()]


def blob_gets(reg: Registry, since: int) -> list[str]:
    return [path for method, path, _, _ in reg.requests()[since:] if method == "GET" and "/blobs/" in path]


def forget(system: System, *names: str) -> None:
    """Unload and remove what a test pulled into the session's system."""
    for name in names:
        http_json("POST", f"{system.url}/api/generate", {"model": name, "keep_alive": 0})
    removed = system.mlxctl("rm", *names)
    assert removed.returncode == 0, removed.stderr


@pytest.mark.gemma3
def test_mlxctl_pull_converts_gemma3_and_it_answers_like_llama_cpp(
        system: System, registry: Registry, ollama_gemma3: fx.PushedImage) -> None:
    name = f"{registry.host}/{fx.GEMMA3}"
    started = time.monotonic()
    done = system.mlxctl("pull", name, "--insecure", timeout=400)
    print(f"\nmlxctl pull {name} (241 MiB download + conversion): {time.monotonic() - started:.1f} s")
    try:
        assert done.returncode == 0, done.stdout + done.stderr
        status, shown = http_json("POST", f"{system.url}/api/show", {"model": name})
        assert status == 200, shown
        assert shown["details"]["quantization_level"] == "Q4_K_M" and shown["details"]["family"] == "gemma3"
        assert shown["model_info"]["ollama.template"] == \
            "not executed (Go template); the chat template comes from the catalog (gemma)"
        assert shown["license"] == fx.GEMMA3_LICENSE and "top_k" in shown["parameters"]
        status, answer = http_json("POST", f"{system.url}/api/generate", {
            "model": name, "prompt": "The capital of France is", "raw": True, "stream": False,
            "options": {"num_predict": 4, "temperature": 0}}, timeout=240)
        assert status == 200 and answer["response"].startswith(" the capital of"), answer
    finally:
        forget(system, name)


def test_api_pull_streams_ollamas_statuses_and_pulling_again_downloads_nothing_or_refuses(
        system: System, registry: Registry, ollama_models: fx.OllamaModels) -> None:
    name = ollama_models.ref(fx.TINY)
    image = ollama_models.images[fx.TINY]
    try:
        events = stream_pull(system.url, {"model": name, "insecure": True})
        statuses = [e["status"] for e in events]
        assert statuses[0] == "pulling manifest" and statuses[-1] == "success" and statuses.count("success") == 1
        gguf = image.layer(fx.MODEL)["digest"]
        gguf_done = [e for e in events if e.get("digest") == gguf and e["status"] == f"pulling {gguf[7:19]}"]
        assert gguf_done and gguf_done[-1]["total"] == gguf_done[-1]["completed"] == image.layer(fx.MODEL)["size"]
        assert statuses.index("verifying sha256 digest") < statuses.index("writing manifest") < len(statuses) - 1
        status, shown = http_json("POST", f"{system.url}/api/show", {"model": name})
        assert status == 200 and shown["system"] == TINY_SYSTEM, shown

        since = len(registry.requests())
        again = stream_pull(system.url, {"model": name, "insecure": True, "stream": True})
        assert again[-1] == {"status": "success"} and blob_gets(registry, since) == []

        # Refused after "pulling manifest": the stream ends with Ollama's error line, nothing downloaded.
        refused = stream_pull(system.url, {"model": ollama_models.ref(fx.PROJECTOR_MODEL), "insecure": True})
        assert "vision models are not supported yet" in refused[-1]["error"], refused
        assert blob_gets(registry, since) == []
    finally:
        forget(system, name)


def test_bare_names_pull_from_the_default_registry_setting(
        registry: Registry, ollama_models: fx.OllamaModels, tmp_path_factory: pytest.TempPathFactory) -> None:
    # The session's system cannot be told where the registry is: a system of its own, set up as a
    # mirror of Ollama's library would be.
    home = tmp_path_factory.mktemp("mlxserve-default-registry")
    mirror = start_system(home, {}, extra_env={"MLXSERVE_DEFAULT_REGISTRY": f"http://{registry.host}"})
    try:
        done = mirror.mlxctl("pull", "tiny:v1", timeout=120)
        assert done.returncode == 0, done.stdout + done.stderr
        listed = mirror.mlxctl("list")
        assert listed.returncode == 0 and "tiny:v1" in listed.stdout.split(), listed.stdout
        status, shown = http_json("POST", f"{mirror.url}/api/show", {"model": "tiny:v1"})
        assert status == 200 and shown["system"] == TINY_SYSTEM, shown
        status, answer = http_json("POST", f"{mirror.url}/api/generate", {
            "model": "tiny:v1", "prompt": "hello", "raw": True, "stream": False,
            "options": {"num_predict": 3, "temperature": 0}})
        assert status == 200 and answer["done"] is True and 1 <= answer["eval_count"] <= 3, answer
    finally:
        left = mirror.stop()
        assert not left, f"processes outlived `mlxctl serve`: {left}"
