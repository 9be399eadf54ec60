"""The npm clients, unmodified, on the real system: ollama-js and openai-node (issue 16).

Each runs a small script in tests/clients (a Node.js project: `npm ci --prefix tests/clients`, which
`make install-test` runs where npm exists) that prints what the client returned as JSON. The tiny
model answers: what is checked is the protocol as these clients read it, not the words.
"""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest

from tests.e2e.conftest import TINY
from tests.e2e.harness import System

pytestmark = pytest.mark.timeout(300)

CLIENTS = Path(__file__).resolve().parents[1] / "clients"
SAY = "Say something."


def node(script: str, args: dict) -> dict:
    """Run tests/clients/`script` with `args` (one JSON argument); its printed JSON."""
    if shutil.which("node") is None:
        pytest.skip("Node.js is not installed: the npm clients cannot run")
    if not (CLIENTS / "node_modules").is_dir():
        pytest.fail(f"the npm clients are not installed: run `npm ci --prefix {CLIENTS}` (make install-test does)")
    out = subprocess.run(["node", str(CLIENTS / script), json.dumps(args)], capture_output=True, text=True, timeout=180,
                         cwd=CLIENTS, check=False)
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout)


def test_ollama_js_chat_streamed_and_not_agree(system: System) -> None:
    got = node("ollama_chat.mjs", {"host": system.url, "model": TINY, "prompt": SAY, "numPredict": 4})
    whole, last = got["whole"], got["last"]
    assert whole["message"]["role"] == "assistant" and whole["done"] and whole["done_reason"] == "length"
    assert whole["eval_count"] == 4 and whole["prompt_eval_count"] > 1 and whole["model"] == TINY
    assert got["streamed"] == whole["message"]["content"] and got["chunks"] >= 2
    assert last["done"] and last["done_reason"] == "length" and last["eval_count"] == 4
    assert last["total_duration"] >= last["eval_duration"] > 0
    assert got["generated"]["done"] and got["generated"]["eval_count"] == 4 and isinstance(got["generated"]["response"], str)
    assert got["version"]["version"]


def test_openai_node_chat_streamed_and_not_agree(system: System) -> None:
    got = node("openai_chat.mjs", {"baseURL": system.url + "/v1", "model": TINY, "prompt": SAY, "maxTokens": 4})
    whole, chunks, helper = got["whole"], got["chunks"], got["helper"]
    assert whole["object"] == "chat.completion" and whole["model"] == TINY
    message = whole["choices"][0]["message"]
    assert message["role"] == "assistant" and isinstance(message["content"], str)
    assert whole["choices"][0]["finish_reason"] == "length" and whole["usage"]["completion_tokens"] == 4
    streamed = "".join((c["choices"][0]["delta"].get("content") or "") for c in chunks if c["choices"])
    assert streamed == message["content"]
    assert chunks[-1]["choices"] == [] and chunks[-1]["usage"]["completion_tokens"] == 4
    assert chunks[-1]["usage"]["prompt_tokens"] == whole["usage"]["prompt_tokens"]
    assert helper["choices"][0]["message"]["content"] == message["content"]
    assert helper["choices"][0]["finish_reason"] == "length"
    assert TINY in got["models"]
