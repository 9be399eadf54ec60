"""The prefix cache outlives the worker: a long prompt, `mlxctl stop`, then the same conversation
evaluates only its new tokens (a fresh worker loads the prefix from $MLXSERVE_HOME/cache/prefix),
and so does a restart of the whole system. Tiny model, with a low threshold so that a few hundred
tokens count as long."""

from __future__ import annotations

from pathlib import Path
from typing import Iterator

import pytest

from tests.e2e.harness import System, http_json, start_system
from tests.fixtures.tiny_model import write_tiny_model

MODEL = "tiny:latest"
ENV = {"MLXSERVE_PREFIX_CACHE_DISK_MIN_TOKENS": "64"}
SYSTEM_PROMPT = ("You are a coding agent. Read files before changing them and keep changes small. " * 12).strip()


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Path, Path]]:
    home = tmp_path_factory.mktemp("disk-cache-home")
    model = write_tiny_model(tmp_path_factory.mktemp("disk-cache-model") / "tiny")
    yield home, model


def chat(system: System, messages: list[dict]) -> tuple[str, int, int]:
    status, body = http_json("POST", system.url + "/v1/chat/completions", {
        "model": MODEL, "messages": messages, "max_tokens": 8, "temperature": 0})
    assert status == 200, body
    usage = body["usage"]
    return body["choices"][0]["message"]["content"], usage["prompt_tokens"], usage["prompt_tokens_details"]["cached_tokens"]


def cache_files(home: Path) -> list[Path]:
    return list((home / "cache" / "prefix").glob("*/*.safetensors"))


def test_a_fresh_worker_and_a_restarted_system_reuse_the_prefix_from_disk(setup: tuple[Path, Path]) -> None:
    home, model = setup
    turn1 = [{"role": "system", "content": SYSTEM_PROMPT}, {"role": "user", "content": "Where is the config read?"}]
    system = start_system(home, {MODEL: model}, extra_env=ENV)
    try:
        answer, prompt_tokens, cached = chat(system, turn1)
        assert cached == 0 and prompt_tokens > 100
        stopped = system.mlxctl("stop", MODEL)
        assert stopped.returncode == 0, stopped.stderr
        assert len(cache_files(home)) == 1  # written before the worker exited

        # A new worker: the whole prompt but its last token comes from disk; the answer is the same.
        again, prompt_again, cached_again = chat(system, turn1)
        assert (again, prompt_again) == (answer, prompt_tokens)
        assert cached_again == prompt_tokens - 1

        # The next turn of the conversation evaluates only what is new.
        system.mlxctl("stop", MODEL)
        turn2 = [*turn1, {"role": "assistant", "content": answer}, {"role": "user", "content": "And the logs?"}]
        _, prompt2, cached2 = chat(system, turn2)
        assert cached2 >= prompt_tokens and prompt2 - cached2 < 40
    finally:
        system.stop()

    system = start_system(home, {MODEL: model}, extra_env=ENV)  # the whole system, restarted
    try:
        again, _, cached_again = chat(system, turn1)
        assert again == answer and cached_again == prompt_tokens - 1
    finally:
        system.stop()


def test_a_damaged_cache_file_is_removed_and_the_prompt_prefilled(setup: tuple[Path, Path], tmp_path: Path) -> None:
    _, model = setup
    home = tmp_path / "home"
    turn = [{"role": "system", "content": SYSTEM_PROMPT}, {"role": "user", "content": "Which files are large?"}]
    system = start_system(home, {MODEL: model}, extra_env=ENV)
    try:
        answer, _, _ = chat(system, turn)
        system.mlxctl("stop", MODEL)
        (path,) = cache_files(home)
        path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])  # truncated, as by a full disk
        again, _, cached = chat(system, turn)
        assert again == answer and cached == 0
        log = "".join(p.read_text() for p in (home / "logs").glob("worker-*.log"))
        assert "prefix_disk_removed" in log and path.name in log
    finally:
        system.stop()
