"""Pull from the Hugging Face hub through the running system (issue 15): a local stand-in of the
hub (tests/fixtures/hf_hub_server.py) reached through HF_ENDPOINT serves an MLX repo, a tiny GGUF
repo and the real Gemma 3 file; `mlxctl pull hf.co/...` and `/api/pull` store them, and they answer."""

from __future__ import annotations

import json
import time
import urllib.request
from pathlib import Path
from typing import Iterator

import pytest

from tests.e2e.harness import System, http_json, start_system
from tests.fixtures.hf_hub_server import HubServer, gguf_repo_files, make_file, mlx_repo_files, write_mlx_repo

pytestmark = pytest.mark.timeout(600)

MLX_REPO = "Tiny-Org/Tiny-Llama-4bit"
GGUF_REPO = "Tiny-Org/Tiny-Llama-GGUF"
GEMMA3_REPO = "ggml-org/gemma-3-270m-GGUF"
GEMMA3_FILE = "gemma-3-270m-Q4_K_M.gguf"


@pytest.fixture(scope="module")
def hub(tmp_path_factory: pytest.TempPathFactory) -> Iterator[HubServer]:
    root = tmp_path_factory.mktemp("hf-repos")
    with HubServer() as server:
        server.add_repo(MLX_REPO, mlx_repo_files(write_mlx_repo(root / "mlx")), library="mlx")
        server.add_repo(GGUF_REPO, gguf_repo_files(root / "gguf", {"Q8_0": "Q8_0", "Q4_0": "Q4_0"}), library="gguf")
        yield server


@pytest.fixture(scope="module")
def hf_system(hub: HubServer, tmp_path_factory: pytest.TempPathFactory) -> Iterator[System]:
    # The session's system started before the stand-in existed, and the store reads HF_ENDPOINT
    # from its environment: a small system of its own (no models at start) that sees it.
    home = tmp_path_factory.mktemp("mlxserve-hf")
    sys_ = start_system(home, {}, extra_env={"HF_ENDPOINT": hub.url, "HF_HOME": str(home / "hf"), "HF_TOKEN": ""})
    yield sys_
    left = sys_.stop()
    assert not left, f"processes outlived `mlxctl serve`: {left}"


def stream_pull(url: str, body: dict) -> list[dict]:
    """POST /api/pull and read its NDJSON progress to the end."""
    req = urllib.request.Request(f"{url}/api/pull", data=json.dumps(body).encode(), method="POST",
                                 headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=300) as resp:
        assert resp.status == 200 and resp.headers["Content-Type"].startswith("application/x-ndjson")
        return [json.loads(line) for line in resp if line.strip()]


def downloads(hub: HubServer, since: int = 0) -> list[str]:
    return [r.path for r in hub.log[since:] if r.method == "GET" and "/resolve/" in r.path]


def test_mlxctl_pull_of_an_mlx_repo_serves_it(hf_system: System, hub: HubServer) -> None:
    done = hf_system.mlxctl("pull", f"hf.co/{MLX_REPO}", timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr

    name = "hf.co/tiny-org/tiny-llama-4bit:latest"
    listed = hf_system.mlxctl("list")
    assert listed.returncode == 0 and name in listed.stdout.split(), listed.stdout
    status, shown = http_json("POST", f"{hf_system.url}/api/show", {"model": name})
    assert status == 200 and shown["details"]["quantization_level"] == "Q4", shown
    assert shown["model_info"]["hf.source"] == f"hf.co/{MLX_REPO}"
    status, answer = http_json("POST", f"{hf_system.url}/api/chat", {
        "model": name, "messages": [{"role": "user", "content": "hello"}], "stream": False,
        "options": {"num_predict": 3, "temperature": 0}})
    assert status == 200 and answer["done"] is True and 1 <= answer["eval_count"] <= 3, answer


def test_api_pull_streams_ollamas_statuses_and_again_downloads_nothing(hf_system: System, hub: HubServer) -> None:
    name = f"hf.co/{GGUF_REPO}:q8_0"
    gguf = hub.repos[GGUF_REPO].commits[hub.repos[GGUF_REPO].refs["main"]]["tiny-Q8_0.gguf"]
    digest = f"sha256:{gguf.sha256}"

    events = stream_pull(hf_system.url, {"model": name})

    statuses = [e["status"] for e in events]
    assert statuses[0] == "pulling manifest" and statuses[-1] == "success" and statuses.count("success") == 1
    pulled = [e for e in events if e.get("digest") == digest and e["status"] == f"pulling {digest[7:19]}"]
    assert pulled and pulled[-1]["total"] == pulled[-1]["completed"] == gguf.size
    assert statuses.index("verifying sha256 digest") < statuses.index("writing manifest") < len(statuses) - 1
    status, answer = http_json("POST", f"{hf_system.url}/api/generate", {
        "model": name, "prompt": "hello", "raw": True, "stream": False,
        "options": {"num_predict": 3, "temperature": 0}})
    assert status == 200 and answer["done"] is True, answer

    since = len(hub.log)
    again = stream_pull(hf_system.url, {"model": name})
    assert again[-1] == {"status": "success"} and downloads(hub, since) == []

    missing = stream_pull(hf_system.url, {"model": f"hf.co/{GGUF_REPO}:Q5_K_M"})
    assert f"hf.co/{GGUF_REPO} has no Q5_K_M GGUF; it has Q4_0, Q8_0" in missing[-1]["error"], missing
    assert downloads(hub, since) == []


@pytest.mark.gemma3
def test_mlxctl_pull_of_a_gguf_repo_converts_gemma3_and_it_answers_like_llama_cpp(
        hf_system: System, hub: HubServer, gemma3_gguf: Path) -> None:
    hub.add_repo(GEMMA3_REPO, {GEMMA3_FILE: make_file(GEMMA3_FILE, gemma3_gguf),
                               "README.md": b"---\nlibrary_name: gguf\nbase_model: google/gemma-3-270m\n---\n"},
                 library="gguf")
    name = f"hf.co/{GEMMA3_REPO}:Q4_K_M"
    started = time.monotonic()
    done = hf_system.mlxctl("pull", name, timeout=400)
    print(f"\nmlxctl pull {name} (241 MiB download + conversion): {time.monotonic() - started:.1f} s")
    assert done.returncode == 0, done.stdout + done.stderr

    status, shown = http_json("POST", f"{hf_system.url}/api/show", {"model": name})
    assert status == 200, shown
    assert shown["details"]["quantization_level"] == "Q4_K_M" and shown["details"]["family"] == "gemma3"
    assert shown["model_info"]["hf.source"] == f"hf.co/{GEMMA3_REPO}/{GEMMA3_FILE}"
    status, answer = http_json("POST", f"{hf_system.url}/api/generate", {
        "model": name, "prompt": "The capital of France is", "raw": True, "stream": False,
        "options": {"num_predict": 4, "temperature": 0}}, timeout=240)
    assert status == 200 and answer["response"].startswith(" the capital of"), answer
    # The GGUF itself was not kept: only the converted model's blobs are in the store.
    gguf = hub.repos[GEMMA3_REPO].commits[hub.repos[GEMMA3_REPO].refs["main"]][GEMMA3_FILE]
    assert not (hf_system.home / "models" / "blobs" / f"sha256-{gguf.sha256}").exists()
