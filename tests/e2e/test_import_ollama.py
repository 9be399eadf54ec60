"""`mlxctl import-ollama` against a running mlxserve: a store laid out exactly as Ollama writes one
is listed, imported under Ollama's names with every skip explained, and an imported model answers
/api/generate."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from tests.e2e.conftest import TINY
from tests.e2e.harness import MLXCTL, System, http_json
from tests.fixtures import ollama_store as fx

pytestmark = pytest.mark.timeout(300)


@pytest.fixture(scope="module")
def ollama_dir(tmp_path_factory: pytest.TempPathFactory, gemma3_gguf: Path) -> Path:
    root = tmp_path_factory.mktemp("ollama") / "models"
    fx.build_ollama_store(root, tmp_path_factory.mktemp("ollama-ggufs"), gemma3=gemma3_gguf)
    return root


def test_import_ollama_lists_imports_and_the_imported_model_generates(system: System, ollama_dir: Path) -> None:
    # No DIR argument: OLLAMA_MODELS names the folder, as it does for Ollama.
    listed = subprocess.run([*MLXCTL, "import-ollama"], env={**system.env(), "OLLAMA_MODELS": str(ollama_dir)},
                            capture_output=True, text=True, timeout=120)
    assert listed.returncode == 0, listed.stderr
    rows = {line.split()[0]: line for line in listed.stdout.splitlines() if line.strip()}
    assert rows[fx.NO_TEMPLATE].rstrip().endswith("importable")
    assert "skip: it has a vision projector" in rows[fx.PROJECTOR_MODEL]

    done = system.mlxctl("import-ollama", str(ollama_dir), "--all", timeout=240)
    assert done.returncode == 0, done.stdout + done.stderr
    lines = done.stdout.splitlines()
    for name in (fx.NO_TEMPLATE, fx.TINY_SHARED, fx.USER_NS):
        assert f"imported {name}" in lines
    assert "imported hf.co/tinyorg/Tiny-GGUF:Q8_0 as hf.co/tinyorg/tiny-gguf:q8_0" in lines
    skipped = {line.split()[1].rstrip(":"): line for line in lines if line.startswith("skipped ")}
    assert "vision projector" in skipped[fx.PROJECTOR_MODEL]
    assert "adapter" in skipped[fx.ADAPTER_MODEL]
    assert "is missing from" in skipped[fx.MISSING]
    assert "does not match its digest" in skipped[fx.CORRUPT]
    assert "'mamba' is not supported" in skipped[fx.MAMBA]
    # The session's own tiny:latest is not Ollama's: it stays, and says how to replace it.
    assert fx.TINY == TINY and "--force" in skipped[fx.TINY]

    status, shown = http_json("POST", f"{system.url}/api/show", {"model": fx.NO_TEMPLATE})
    assert status == 200, shown
    assert shown["model_info"]["ollama.template"] == \
        "not executed (Go template); the chat template comes from the catalog (chatml)"
    assert "<|im_start|>" in shown["template"] and "<|im_end|>" in shown["parameters"]

    status, answer = http_json("POST", f"{system.url}/api/generate", {
        "model": fx.NO_TEMPLATE, "prompt": "hello", "stream": False, "options": {"num_predict": 4, "seed": 1}})
    assert status == 200, answer
    assert answer["done"] is True and 1 <= answer["eval_count"] <= 4 and isinstance(answer["response"], str)
    status, answer = http_json("POST", f"{system.url}/api/generate", {
        "model": "someuser/tiny:v1", "prompt": "hello", "raw": True, "stream": False,
        "options": {"num_predict": 3, "temperature": 0}})
    assert status == 200 and answer["done"] is True and 1 <= answer["eval_count"] <= 3, answer

    # The real Gemma 3 file, with the layers Ollama's library gives it.
    assert f"imported {fx.GEMMA3}" in lines
    status, shown = http_json("POST", f"{system.url}/api/show", {"model": fx.GEMMA3})
    assert status == 200 and shown["details"]["quantization_level"] == "Q4_K_M", shown
    assert shown["model_info"]["ollama.template"] == \
        "not executed (Go template); the chat template comes from the catalog (gemma)"
    assert "top_k" in shown["parameters"] and "<end_of_turn>" in shown["parameters"]
    assert shown["license"].startswith("Gemma Terms of Use")
    status, answer = http_json("POST", f"{system.url}/api/generate", {
        "model": fx.GEMMA3, "prompt": "The capital of France is", "raw": True, "stream": False,
        "options": {"num_predict": 4, "temperature": 0}}, timeout=240)
    assert status == 200 and answer["response"].startswith(" the capital of"), answer

    again = system.mlxctl("import-ollama", str(ollama_dir), fx.NO_TEMPLATE)
    assert again.returncode == 0 and f"already imported {fx.NO_TEMPLATE}" in again.stdout.splitlines()

    for name in (fx.NO_TEMPLATE, "someuser/tiny:v1", fx.GEMMA3):
        http_json("POST", f"{system.url}/api/generate", {"model": name, "keep_alive": 0})  # unload first
    removed = system.mlxctl("rm", fx.NO_TEMPLATE, fx.TINY_SHARED, "someuser/tiny:v1", "hf.co/tinyorg/tiny-gguf:q8_0",
                            fx.GEMMA3)
    assert removed.returncode == 0, removed.stderr
