"""GGUF files the importer cannot take are refused through every door a user has (the native API
with an uploaded blob, `mlxctl create`), with a 400 or an `Error:` line naming the problem, and
nothing is left in the store."""

from __future__ import annotations

from pathlib import Path

import ollama
import pytest

from tests.e2e.harness import System
from tests.fixtures.tiny_gguf import write_tiny_gguf

pytestmark = pytest.mark.timeout(300)


@pytest.fixture(scope="module")
def bad_ggufs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[Path, str]]:
    folder = tmp_path_factory.mktemp("bad-gguf")
    truncated = folder / "truncated.gguf"
    write_tiny_gguf(truncated, quant="Q8_0")
    truncated.write_bytes(truncated.read_bytes()[:-4096])
    mamba = folder / "mamba.gguf"
    write_tiny_gguf(mamba, arch="mamba")
    iq2 = folder / "iq2.gguf"
    write_tiny_gguf(iq2, extra_tensor=("blk.0.attn_extra.weight", 16))
    return {"truncated": (truncated, "is truncated: tensor"), "mamba": (mamba, "architecture 'mamba' is not supported"),
            "iq2": (iq2, "IQ2_XXS")}


def test_bad_gguf_uploads_are_refused_with_400_naming_the_problem(system: System, bad_ggufs: dict) -> None:
    client = ollama.Client(host=system.url, timeout=120)
    before = {m.model for m in client.list().models}
    for label, (path, message) in bad_ggufs.items():
        digest = client.create_blob(path)
        with pytest.raises(ollama.ResponseError) as info:
            client.create(model=f"bad-{label}", files={"model.gguf": digest}, stream=False)
        assert info.value.status_code == 400 and message in str(info.value), (label, info.value)
        # Streamed, the progress has begun (200), so the error is the stream's last line, as with Ollama.
        with pytest.raises(ollama.ResponseError, match=message):
            list(client.create(model=f"bad-{label}", files={"model.gguf": digest}, stream=True))
    assert {m.model for m in client.list().models} == before


def test_mlxctl_create_refuses_a_bad_gguf_with_one_error_line(system: System, bad_ggufs: dict) -> None:
    path, message = bad_ggufs["mamba"]
    done = system.mlxctl("create", "bad-mamba", "--from", str(path))
    assert done.returncode == 2, done.stdout + done.stderr
    lines = [ln for ln in done.stderr.splitlines() if ln.strip()]
    assert lines[-1].startswith("Error:") and message in lines[-1]
    assert "bad-mamba" not in system.mlxctl("list").stdout
