"""mlxctl's store verbs (create, show, cp, verify, gc, pack, pull) through typer's CliRunner against
a real store process (`python -m mlxserve.services.store`) on its unix socket."""

from __future__ import annotations

import io
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Iterator

import pytest
from typer.testing import CliRunner

from mlxserve.cli import render
from mlxserve.cli.main import app
from mlxserve.services.store.store import ModelStore
from tests.fixtures.tiny_gguf import write_tiny_gguf

runner = CliRunner()


@pytest.fixture(scope="module")
def tiny_gguf(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("gguf") / "tiny.gguf"
    write_tiny_gguf(path, quant="Q8_0")
    return path


@pytest.fixture
def home(monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """A home with a real store process serving it."""
    home = Path(tempfile.mkdtemp(prefix="mxc"))  # short: unix socket paths are limited to ~107 bytes
    monkeypatch.setenv("MLXSERVE_HOME", str(home))
    env = {**os.environ, "MLXSERVE_HOME": str(home), "MLXSERVE_PARENT_PID": str(os.getpid())}
    proc = subprocess.Popen([sys.executable, "-m", "mlxserve.services.store", "--log-level", "warning"], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 30
    while runner.invoke(app, ["list"]).exit_code != 0:
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            pytest.fail(f"store did not start: {proc.stderr.read().decode()[-2000:]}")
        time.sleep(0.1)
    try:
        yield home
    finally:
        proc.terminate()
        proc.wait(timeout=15)
        shutil.rmtree(home, ignore_errors=True)


def ok(*argv: str, input: str | None = None) -> str:
    result = runner.invoke(app, list(argv), input=input)
    assert result.exit_code == 0, (argv, result.stdout, result.stderr)
    return result.stdout


def test_create_from_a_modelfile_then_show_each_part(home: Path, tiny_gguf: Path, tmp_path: Path) -> None:
    shutil.copy(tiny_gguf, tmp_path / "weights.gguf")
    (tmp_path / "Modelfile").write_text(
        'FROM ./weights.gguf\nSYSTEM """You are a pirate."""\nPARAMETER temperature 0.7\nPARAMETER stop "<|im_end|>"\n'
        "MESSAGE user Ahoy\nLICENSE MIT\n")
    out = ok("create", "pirate", "-f", str(tmp_path / "Modelfile"))
    assert out.splitlines()[-1] == "success"  # not a terminal: plain progress lines

    assert ok("show", "pirate", "--system").strip() == "You are a pirate."
    assert ok("show", "pirate", "--license").strip() == "MIT"
    params = ok("show", "pirate", "--parameters")
    assert "temperature" in params and "0.7" in params and "<|im_end|>" in params
    assert "<|im_start|>" in ok("show", "pirate", "--template")
    modelfile = ok("show", "pirate", "--modelfile")
    assert "FROM pirate:latest" in modelfile and "MESSAGE user Ahoy" in modelfile

    text = ok("show", "pirate")
    assert "architecture" in text and "llama" in text and "Q8_0" in text and "completion" in text
    shown = json.loads(ok("show", "pirate", "--json"))
    assert shown["system"] == "You are a pirate." and shown["details"]["family"] == "llama"
    assert shown["model_info"]["general.architecture"] == "llama" and shown["messages"] == [{"role": "user", "content": "Ahoy"}]

    both = runner.invoke(app, ["show", "pirate", "--system", "--json"])
    assert both.exit_code == 2 and both.stderr.startswith("Error: choose one of")


def test_create_from_a_modelspec_and_override_its_source_on_the_command_line(home: Path, tiny_gguf: Path, tmp_path: Path) -> None:
    shutil.copy(tiny_gguf, tmp_path / "weights.gguf")
    spec = tmp_path / "ModelSpec.yaml"
    spec.write_text("from: ./weights.gguf\nsystem: Reply in haiku.\nparameters:\n  temperature: 0.2\n")
    ok("create", "haiku", "-f", str(spec))
    assert ok("show", "haiku", "--system").strip() == "Reply in haiku."

    (tmp_path / "weights.gguf").unlink()
    ok("create", "haiku2", "--from", "haiku")  # --from a model name: derive from it
    assert ok("show", "haiku2", "--system").strip() == "Reply in haiku."
    (tmp_path / "Modelfile").write_text("FROM haiku\nSYSTEM Reply in limericks.\n")
    ok("create", "limerick", "-f", str(tmp_path / "Modelfile"), "--from", "haiku2")
    shown = json.loads(ok("show", "limerick", "--json"))
    assert shown["system"] == "Reply in limericks." and "FROM limerick:latest" in shown["modelfile"]


@pytest.mark.parametrize("argv, exit_code, message", [
    (["create", "x"], 2, "Error: create needs a recipe"),
    (["create", "x", "--from", "./nowhere.gguf"], 2, "Error: source "),
    (["create", "x", "-f", "/nonexistent/Modelfile"], 2, "Error: recipe "),
    (["create", "x", "--from", "ghost"], 3, "Error: model 'ghost"),
    (["create", "../evil", "--from", "ghost"], 2, "Error: model name"),
    (["show", "ghost"], 3, "Error: model 'ghost"),
    (["cp", "ghost", "other"], 3, "Error: model 'ghost"),
    (["pull", "./nowhere.tar"], 2, "Error: './nowhere.tar' does not exist"),
    (["pull", "x@sha256:abc"], 2, "Error: model name"),
])
def test_store_verb_errors_are_one_line_with_the_right_exit_code(home: Path, argv: list[str], exit_code: int, message: str) -> None:
    result = runner.invoke(app, argv)
    assert result.exit_code == exit_code, (result.stdout, result.stderr)
    assert result.stderr.startswith(message) and len(result.stderr.strip().splitlines()) == 1


def test_create_refuses_a_quantization_mlx_cannot_do(home: Path, tiny_gguf: Path) -> None:
    result = runner.invoke(app, ["create", "x", "--from", str(tiny_gguf), "--quantize", "q4_K_M"])
    assert result.exit_code == 2 and "q4_K_M" in result.stderr


def test_create_with_a_gguf_given_as_the_recipe_says_to_use_from(home: Path, tiny_gguf: Path) -> None:
    result = runner.invoke(app, ["create", "x", "-f", str(tiny_gguf)])
    assert result.exit_code == 2 and f"import it with --from {tiny_gguf}" in result.stderr


def test_cp_makes_an_alias_listed_beside_the_original(home: Path, tiny_gguf: Path) -> None:
    ok("create", "orig", "--from", str(tiny_gguf))
    assert ok("cp", "orig", "me/alias:v1").strip() == "copied 'orig' to 'me/alias:v1'"
    models = json.loads(ok("list", "--json"))["models"]
    assert sorted(m["name"] for m in models) == ["me/alias:v1", "orig:latest"]
    assert len({m["digest"] for m in models}) == 1


def test_verify_is_clean_until_a_blob_rots_then_names_the_models_and_fails(home: Path, tiny_gguf: Path) -> None:
    ok("create", "a", "--from", str(tiny_gguf))
    ok("cp", "a", "b")
    assert ok("verify").strip().endswith("all good")

    store = ModelStore(home / "models")
    _, _, manifest = store.get_manifest("a")
    weights = next(layer for layer in manifest.layers if layer.title.endswith(".safetensors"))
    blob = store.blobs.path(weights.digest)
    os.chmod(blob, 0o644)
    with open(blob, "r+b") as f:
        f.seek(64)
        f.write(b"\x00" * 32)
    result = runner.invoke(app, ["verify"])
    assert result.exit_code == 1
    assert f"corrupt blob {weights.digest} (breaks a:latest, b:latest)" in result.stdout
    report = json.loads(runner.invoke(app, ["verify", "--json"]).stdout)
    assert report["corrupt"] == [{"digest": weights.digest, "models": ["a:latest", "b:latest"]}]


def test_gc_reports_what_it_removed(home: Path) -> None:
    stale = home / "models" / "tmp" / ("partial-sha256-" + "cd" * 32)
    stale.write_bytes(b"x" * 2000)
    old = time.time() - 7 * 86400
    os.utime(stale, (old, old))
    assert ok("gc").strip() == "removed 0 blobs and 1 partial download, freed 2 KB"
    assert json.loads(ok("gc", "--json")) == {"removed_blobs": [], "freed_bytes": 0, "removed_partials": []}


def test_pack_then_pull_the_tarball_brings_the_model_back(home: Path, tiny_gguf: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    ok("create", "travel", "--from", str(tiny_gguf))
    digest = json.loads(ok("list", "--json"))["models"][0]["digest"]
    monkeypatch.chdir(tmp_path)
    out = ok("pack", "travel", "-o", "travel.tar")
    assert out.splitlines()[-1] == "success" and (tmp_path / "travel.tar").is_file()
    ok("rm", "travel")
    lines = ok("pull", "travel.tar").splitlines()  # a relative path: the CLI sends it absolute
    assert lines[0] == "pulling manifest" and lines[-1] == "success"
    assert [(m["name"], m["digest"]) for m in json.loads(ok("list", "--json"))["models"]] == [("travel:latest", digest)]


def test_progress_on_a_terminal_draws_bars_with_sizes_speed_and_time_left() -> None:
    class Terminal(io.StringIO):
        def isatty(self) -> bool:
            return True

    out = Terminal()
    view = render.progress_view(out)
    view.update("pulling manifest")
    for done in (0, 1_000_000, 2_500_000):
        view.update("pulling 0123456789ab", 2_500_000, done)
    view.update("success")
    view.close()
    text = out.getvalue()
    assert "pulling manifest" in text and "success" in text
    assert "2.5/2.5 MB" in text and "/s" in text and "━" in text


def test_progress_off_a_terminal_prints_plain_lines() -> None:
    out = io.StringIO()
    view = render.progress_view(out)
    for done in (0, 50, 100):
        view.update("pulling 0123456789ab", 100, done)
    view.update("success")
    view.close()
    assert out.getvalue() == "pulling 0123456789ab   0%\npulling 0123456789ab 100%\nsuccess\n"
