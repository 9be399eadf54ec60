"""The native model-management API of a real `mlxctl serve`, driven by the `ollama` Python client:
create from uploaded blobs, show, copy, delete, and push/pull through a real registry."""

from __future__ import annotations

import json
import urllib.request
from pathlib import Path

import ollama
import pytest

from tests.e2e.harness import System
from tests.fixtures.registry import Registry, registry  # noqa: F401 (fixture)
from tests.fixtures.tiny_gguf import write_tiny_gguf

pytestmark = pytest.mark.timeout(300)


@pytest.fixture(scope="module")
def client(system: System) -> ollama.Client:
    return ollama.Client(host=system.url, timeout=240)


@pytest.fixture(scope="module")
def tiny_gguf(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("gguf") / "tiny.gguf"
    write_tiny_gguf(path, quant="Q8_0")
    return path


def head_status(url: str) -> int:
    try:
        with urllib.request.urlopen(urllib.request.Request(url, method="HEAD"), timeout=10) as resp:
            return resp.status
    except urllib.error.HTTPError as e:
        return e.code


def test_create_from_uploaded_blobs_then_show_copy_run_and_delete(system: System, client: ollama.Client, tiny_gguf: Path) -> None:
    digest = client.create_blob(tiny_gguf)
    assert head_status(f"{system.url}/api/blobs/{digest}") == 200

    statuses = [p.status for p in client.create(model="e2e-made", files={"model.gguf": digest}, system="Be brief.",
                                                parameters={"temperature": 0, "num_predict": 4}, stream=True)]
    assert statuses[-1] == "success"

    shown = client.show("e2e-made")
    assert shown.details.family == "llama" and shown.details.quantization_level == "Q8_0"
    assert shown.modelinfo["general.architecture"] == "llama"
    assert "completion" in shown.capabilities and "temperature" in shown.parameters
    assert "Be brief." in shown.modelfile and shown.template and shown.modified_at is not None

    assert client.copy("e2e-made", "e2e-alias:v1").status == "success"
    names = {m.model for m in client.list().models}
    assert {"e2e-made:latest", "e2e-alias:v1"} <= names

    # The created model serves.
    answer = client.generate(model="e2e-alias:v1", prompt="hello", options={"num_predict": 3}, stream=False)
    assert answer.done and answer.eval_count == 3

    assert client.delete("e2e-made").status == "success"
    with pytest.raises(ollama.ResponseError) as info:
        client.delete("e2e-made")
    assert info.value.status_code == 404
    assert client.show("e2e-alias:v1").details.family == "llama"  # the alias keeps the blobs alive
    client.generate(model="e2e-alias:v1", keep_alive=0)  # unload before deleting
    client.delete("e2e-alias:v1")


def test_push_then_pull_through_a_registry_streams_ollamas_progress(system: System, client: ollama.Client,
                                                                   tiny_gguf: Path, registry: Registry) -> None:
    remote = f"{registry.host}/library/e2e-tiny:v1"
    client.create(model="e2e-local", files={"model.gguf": client.create_blob(tiny_gguf)}, stream=False)
    client.copy("e2e-local", remote)
    pushed = [p for p in client.push(remote, insecure=True, stream=True)]
    assert pushed[-1].status == "success"
    digest = next(m.digest for m in client.list().models if m.model == remote)

    client.delete("e2e-local")
    client.delete(remote)  # now no local model holds its blobs: the pull downloads them all
    pulled = list(client.pull(remote, insecure=True, stream=True))
    statuses = [p.status for p in pulled]
    assert statuses[0] == "pulling manifest" and statuses[-3:] == ["verifying sha256 digest", "writing manifest", "success"]
    blobs = [p for p in pulled if p.status.startswith("pulling ") and p.digest]
    assert blobs and all(p.status == f"pulling {p.digest.removeprefix('sha256:')[:12]}" and p.total for p in blobs)
    assert next(m.digest for m in client.list().models if m.model == remote) == digest

    out = system.mlxctl("show", remote, "--json")
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout)["details"]["quantization_level"] == "Q8_0"
    out = system.mlxctl("pull", remote, "--insecure")  # everything is present now: nothing to download
    assert out.returncode == 0 and out.stdout.splitlines()[-1] == "success", out.stderr
    out = system.mlxctl("push", remote)  # plain http without --insecure
    assert out.returncode == 2 and out.stderr.startswith("Error: ") and "insecure" in out.stderr

    with pytest.raises(ollama.ResponseError):
        list(client.pull(f"{registry.host}/library/e2e-missing:v1", insecure=True, stream=True))
    with pytest.raises(ollama.ResponseError) as info:
        client.pull(remote, stream=False)  # plain http without insecure is refused
    assert info.value.status_code == 400
    client.delete(remote)
