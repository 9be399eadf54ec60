"""A served model name follows the store: the supervisor keeps what a name resolves to, and the very
next request after `mlxctl rm` or a new `mlxctl create` of that name sees the change."""

from __future__ import annotations

import json
import shutil
import tempfile
from pathlib import Path
from typing import Iterator

import pytest

from tests.e2e.harness import System, http_json, start_system
from tests.fixtures.tiny_model import write_tiny_model

NAME = "probe:latest"
ONE_TOKEN = {"model": NAME, "prompt": "Hi", "raw": True, "stream": False, "options": {"num_predict": 1, "temperature": 0}}


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[System, Path, Path]]:
    folders = tmp_path_factory.mktemp("models")
    a, b = write_tiny_model(folders / "a", seed=0), write_tiny_model(folders / "b", seed=1)
    home = Path(tempfile.mkdtemp(prefix="mxn"))  # short: Unix socket paths are limited to ~107 bytes
    system = start_system(home, {NAME: a})
    try:
        yield system, a, b
    finally:
        system.stop()
        shutil.rmtree(home, ignore_errors=True)


def loaded_digests(system: System) -> set[str]:
    out = system.mlxctl("ps", "--json")
    assert out.returncode == 0, out.stderr
    return {m["digest"] for m in json.loads(out.stdout)["models"] if m["name"] == NAME}


def digest_of(system: System) -> str:
    out = system.mlxctl("list", "--json")
    assert out.returncode == 0, out.stderr
    return next(m["digest"] for m in json.loads(out.stdout)["models"] if m["name"] == NAME)


def test_the_next_request_after_rm_or_create_sees_the_change(served: tuple[System, Path, Path]) -> None:
    system, _, b = served
    for _ in range(2):  # the second request is served from the supervisor's name cache
        status, body = http_json("POST", system.url + "/api/generate", ONE_TOKEN)
        assert status == 200, body
    first = digest_of(system)
    assert loaded_digests(system) == {first}

    out = system.mlxctl("rm", NAME)
    assert out.returncode == 0, out.stderr
    status, body = http_json("POST", system.url + "/api/generate", ONE_TOKEN)
    assert status == 404 and "not found" in body["error"], body

    out = system.mlxctl("create", NAME, "--from", str(b), timeout=180)
    assert out.returncode == 0, out.stderr
    status, body = http_json("POST", system.url + "/api/generate", ONE_TOKEN)
    assert status == 200, body
    second = digest_of(system)
    assert second != first and second in loaded_digests(system)  # the new weights answered
