"""Exposure with real processes: a server bound beyond loopback demands its API key, and will not
start without one; the internal sockets stay private to their owner."""

from __future__ import annotations

import os
import stat
import subprocess
from pathlib import Path
from typing import Iterator

import ollama
import pytest

from tests.e2e.harness import MLXCTL, System, free_port, http_json, start_system
from tests.fixtures.tiny_model import write_tiny_model

pytestmark = pytest.mark.timeout(300)

KEY = "e2e-exposure-key"
TINY = "tiny:latest"


def _env_without_mlxserve(**extra: str) -> dict[str, str]:
    return {**{k: v for k, v in os.environ.items() if not k.startswith("MLXSERVE_")}, **extra}


@pytest.fixture(scope="module")
def exposed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[System]:
    """`mlxctl serve` on 0.0.0.0 with an API key, serving the tiny model only."""
    home = tmp_path_factory.mktemp("exposed-home")
    tiny_dir = write_tiny_model(tmp_path_factory.mktemp("tiny-model") / "tiny")
    system = start_system(home, {TINY: tiny_dir}, extra_env={"MLXSERVE_HOST": "0.0.0.0", "MLXSERVE_API_KEY": KEY})
    yield system
    left = system.stop()
    assert not left, f"processes outlived `mlxctl serve`: {left}"


def test_an_exposed_server_answers_only_requests_carrying_its_key(exposed: System) -> None:
    status, body = http_json("GET", exposed.url + "/api/tags")
    assert status == 401 and "Authorization: Bearer" in body["error"]
    status, body = http_json("POST", exposed.url + "/v1/chat/completions",
                             {"model": TINY, "messages": [{"role": "user", "content": "hi"}]})
    assert status == 401 and body["error"]["type"] == "authentication_error"

    client = ollama.Client(host=exposed.url, headers={"Authorization": f"Bearer {KEY}"})
    assert [m.model for m in client.list().models] == [TINY]
    reply = client.chat(model=TINY, messages=[{"role": "user", "content": "hi"}], options={"num_predict": 4})
    assert reply.done and reply.eval_count > 0
    with pytest.raises(ollama.ResponseError) as e:
        ollama.Client(host=exposed.url, headers={"Authorization": "Bearer wrong"}).list()
    assert e.value.status_code == 401


def test_mlxctl_run_sends_the_configured_key(exposed: System) -> None:
    args = [*MLXCTL, "run", TINY, "hi", "-o", "num_predict=3"]
    base = {"MLXSERVE_HOME": str(exposed.home), "MLXSERVE_PORT": str(exposed.port)}
    with_key = subprocess.run(args, env=_env_without_mlxserve(**base, MLXSERVE_API_KEY=KEY),
                              capture_output=True, text=True, timeout=120)
    assert with_key.returncode == 0, with_key.stderr
    without = subprocess.run(args, env=_env_without_mlxserve(**base), capture_output=True, text=True, timeout=120)
    assert without.returncode != 0 and "API key" in without.stderr


def test_the_run_directory_and_its_sockets_are_private_to_the_owner(exposed: System) -> None:
    ollama.Client(host=exposed.url, headers={"Authorization": f"Bearer {KEY}"}).generate(
        model=TINY, prompt="hi", options={"num_predict": 1})  # a worker is up: its socket is checked too
    run_dir = exposed.home / "run"
    assert stat.S_IMODE(run_dir.stat().st_mode) & 0o077 == 0
    sockets = [p for p in run_dir.iterdir() if stat.S_ISSOCK(p.lstat().st_mode)]
    names = {p.name for p in sockets}
    assert {"store.sock", "supervisor.sock"} <= names and any(n.endswith(".ipc") for n in names), names
    assert len(sockets) >= 4, names
    for sock in sockets:
        assert stat.S_IMODE(sock.lstat().st_mode) & 0o077 == 0, f"{sock.name} is open to group/other"


def test_serve_refuses_to_listen_beyond_loopback_without_a_key(tmp_path: Path) -> None:
    result = subprocess.run([*MLXCTL, "serve", "--host", "0.0.0.0", "--port", str(free_port())],
                            env=_env_without_mlxserve(MLXSERVE_HOME=str(tmp_path)), capture_output=True, text=True, timeout=60)
    assert result.returncode != 0
    assert "refusing to listen on 0.0.0.0" in result.stderr and "MLXSERVE_API_KEY" in result.stderr
    assert "--insecure-no-auth" in result.stderr
