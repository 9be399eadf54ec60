"""Every mlxctl verb as a person runs it: a real `mlxctl` subprocess against the running system,
and again against a home where nothing runs. Uses the fast random-weight `tiny:latest` (and copies
of it) wherever the words of an answer do not matter."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import tempfile
from pathlib import Path
from typing import Iterator

import pytest

from tests.e2e.conftest import TINY
from tests.e2e.harness import MLXCTL, System, free_port
from tests.fixtures.registry import Registry, registry  # noqa: F401 (fixture)
from tests.fixtures.tiny_model import write_tiny_model

NOT_RUNNING = 4  # Unavailable: the server is down
BAD_INPUT = 2
NOT_FOUND = 3


def ok(system: System, *args: str, timeout: float = 120.0) -> str:
    out = system.mlxctl(*args, timeout=timeout)
    assert out.returncode == 0, f"mlxctl {' '.join(args)} exited {out.returncode}:\n{out.stderr}"
    return out.stdout


def names(system: System) -> list[str]:
    return [m["name"] for m in json.loads(ok(system, "list", "--json"))["models"]]


def complete(env: dict[str, str], *words: str) -> list[str]:
    """What bash completion offers after `mlxctl WORDS...` (the last word being typed)."""
    env = {**env, "_MLXCTL_COMPLETE": "complete_bash", "COMP_WORDS": " ".join(["mlxctl", *words]),
           "COMP_CWORD": str(len(words))}
    out = subprocess.run(MLXCTL, env=env, capture_output=True, text=True, timeout=30)
    assert out.returncode == 0, out.stderr
    return out.stdout.split()


# -- no model needed -------------------------------------------------------------------------------


def test_version_prints_text_or_json(system: System) -> None:
    assert ok(system, "version").startswith("mlxctl version ")
    assert set(json.loads(ok(system, "version", "--json"))) == {"version"}


def test_completion_script_for_each_shell_and_model_names_from_the_running_store(system: System) -> None:
    for shell, marker in (("bash", "complete -o default -F"), ("zsh", "compdef"), ("fish", "complete --command mlxctl")):
        assert marker in ok(system, "--show-completion", shell), shell
    assert complete(system.env(), "sh") == ["show"]
    assert TINY in complete(system.env(), "show", "ti")
    assert TINY in complete(system.env(), "rm", "")
    assert complete(system.env(), "show", "zz-nothing-") == []


def test_completion_offers_nothing_and_prints_no_error_when_the_server_is_down(down_env: dict[str, str]) -> None:
    assert complete(down_env, "show", "") == []


def test_usage_errors_and_bad_input_share_exit_code_2(system: System) -> None:
    usage = system.mlxctl("list", "--no-such-flag")
    assert usage.returncode == BAD_INPUT and "No such option" in usage.stderr
    both = system.mlxctl("show", TINY, "--template", "--json")
    assert both.returncode == BAD_INPUT and both.stderr.startswith("Error: choose one of")


# -- store verbs ------------------------------------------------------------------------------------


def test_list_and_ls_print_a_table_or_json(system: System) -> None:
    table = ok(system, "list").splitlines()
    assert table[0].split() == ["NAME", "ID", "SIZE", "MODIFIED"]
    assert any(line.startswith(TINY) for line in table)
    first_columns = lambda text: [line.split()[:2] for line in text.splitlines()]  # noqa: E731 (times move on)
    assert first_columns(ok(system, "ls")) == first_columns("\n".join(table))
    tiny = next(m for m in json.loads(ok(system, "list", "--json"))["models"] if m["name"] == TINY)
    assert set(tiny) == {"name", "model", "digest", "size", "modified_at", "details"}
    assert len(tiny["digest"]) == 64  # hex, without "sha256:", as Ollama lists it
    assert any(line.split()[:2] == [TINY, tiny["digest"][:12]] for line in table)
    assert tiny["size"] > 0 and tiny["details"]["family"]


def test_show_prints_each_part_or_all_as_json(system: System) -> None:
    text = ok(system, "show", TINY)
    assert text.startswith("  Model") and "architecture" in text
    assert "{%" in ok(system, "show", TINY, "--template")  # the model's own Jinja chat template
    assert ok(system, "show", TINY, "--modelfile").lstrip().startswith(("# Modelfile", "FROM"))
    for flag in ("--parameters", "--system", "--license"):
        ok(system, "show", TINY, flag)  # tiny has none of these: an empty answer, not an error
    shown = json.loads(ok(system, "show", TINY, "--json"))
    assert {"details", "model_info", "capabilities", "modified_at", "template"} <= set(shown)
    assert "completion" in shown["capabilities"]


def test_cp_makes_a_second_name_and_rm_deletes_it_then_says_not_found(system: System) -> None:
    assert ok(system, "cp", TINY, "cli-copy").strip() == f"copied '{TINY}' to 'cli-copy'"
    assert "cli-copy:latest" in names(system) and TINY in names(system)
    assert ok(system, "rm", "cli-copy").strip() == "deleted 'cli-copy'"
    assert "cli-copy:latest" not in names(system)
    again = system.mlxctl("rm", "cli-copy")
    assert again.returncode == NOT_FOUND
    assert again.stderr.startswith("Error: ") and len(again.stderr.strip().splitlines()) == 1 and "Traceback" not in again.stderr


def test_create_from_a_modelfile_keeps_its_system_prompt_and_parameters(system: System, tmp_path: Path) -> None:
    modelfile = tmp_path / "Modelfile"
    modelfile.write_text(f'FROM {TINY}\nSYSTEM """You answer in one word."""\nPARAMETER temperature 0.3\nPARAMETER stop "END"\n')
    out = ok(system, "create", "cli-recipe", "-f", str(modelfile))
    assert out.splitlines()[-1] == "success"  # piped: plain progress lines, no bars
    try:
        assert ok(system, "show", "cli-recipe", "--system").strip() == "You answer in one word."
        params = ok(system, "show", "cli-recipe", "--parameters")
        assert "temperature" in params and "0.3" in params and '"END"' in params
        recreated = ok(system, "show", "cli-recipe", "--modelfile")
        assert "You answer in one word." in recreated and "PARAMETER temperature 0.3" in recreated
    finally:
        ok(system, "rm", "cli-recipe")


def test_create_from_a_model_folder_quantized_to_8_bits(system: System, tmp_path: Path) -> None:
    folder = write_tiny_model(tmp_path / "tiny-hf")
    out = ok(system, "create", "cli-q8", "--from", str(folder), "--quantize", "q8", timeout=180)
    assert out.splitlines()[-1] == "success"
    try:
        details = json.loads(ok(system, "show", "cli-q8", "--json"))["details"]
        assert details["quantization_level"].upper() in ("Q8_0", "Q8")
    finally:
        ok(system, "rm", "cli-q8")
    bad = system.mlxctl("create", "cli-q3", "--from", str(folder), "--quantize", "q3_K_M")
    assert bad.returncode == BAD_INPUT and bad.stderr.startswith("Error: ")


def test_pack_to_a_tarball_then_pull_it_back(system: System, tmp_path: Path) -> None:
    ok(system, "cp", TINY, "cli-packed:v1")
    digest = next(m["digest"] for m in json.loads(ok(system, "list", "--json"))["models"] if m["name"] == "cli-packed:v1")
    tarball = tmp_path / "packed.tar"
    assert ok(system, "pack", "cli-packed:v1", "-o", str(tarball)).splitlines()[-1] == "success"
    assert tarball.is_file() and tarball.stat().st_size > 0
    ok(system, "rm", "cli-packed:v1")
    lines = ok(system, "pull", str(tarball)).splitlines()
    assert lines[0] == "pulling manifest" and lines[-1] == "success"
    models = {m["name"]: m["digest"] for m in json.loads(ok(system, "list", "--json"))["models"]}
    assert models.get("cli-packed:v1") == digest
    ok(system, "rm", "cli-packed:v1")
    missing = system.mlxctl("pull", str(tmp_path / "no-such.tar"))
    assert missing.returncode == BAD_INPUT and "does not exist" in missing.stderr


def test_push_sends_a_model_to_a_registry(system: System, registry: Registry) -> None:  # noqa: F811
    remote = f"{registry.host}/library/cli-pushed:v1"
    ok(system, "cp", TINY, remote)
    try:
        lines = ok(system, "push", remote, "--insecure").splitlines()
        assert lines[-1] == "success"
        assert any(line.startswith("pushing ") for line in lines)
    finally:
        ok(system, "rm", remote)
    lines = ok(system, "pull", remote, "--insecure").splitlines()
    assert lines[-1] == "success" and remote in names(system)
    ok(system, "rm", remote)


def test_verify_and_gc_report_as_text_or_json(system: System) -> None:
    assert ok(system, "verify").splitlines()[-1].endswith("all good")
    report = json.loads(ok(system, "verify", "--json"))
    assert report["checked"] > 0 and report["corrupt"] == report["missing"] == report["damaged_manifests"] == []
    assert ok(system, "gc").startswith("removed ")
    collected = json.loads(ok(system, "gc", "--json"))
    assert set(collected) == {"removed_blobs", "freed_bytes", "removed_partials"}


# -- generation and residency -------------------------------------------------------------------------


def test_run_answers_then_ps_lists_the_model_until_stop_unloads_it(system: System) -> None:
    out = system.mlxctl("run", TINY, "hello", "-o", "num_predict=3", "-o", "temperature=0", "--verbose")
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() and "eval count:" in out.stderr
    table = ok(system, "ps").splitlines()
    assert table[0].split() == ["NAME", "ID", "SIZE", "PROCESSOR", "UNTIL"]
    assert any(line.startswith(TINY) for line in table[1:])
    loaded = {m["name"]: m for m in json.loads(ok(system, "ps", "--json"))["models"]}
    assert loaded[TINY]["pid"] > 0 and loaded[TINY]["memory_bytes"] > 0
    assert TINY in complete(system.env(), "stop", "")
    ok(system, "stop", TINY)
    assert TINY not in {m["name"] for m in json.loads(ok(system, "ps", "--json"))["models"]}
    unknown = system.mlxctl("run", "no-such-model", "hello")
    assert unknown.returncode == NOT_FOUND and unknown.stderr.startswith("Error: ")


# -- nothing running ---------------------------------------------------------------------------------


@pytest.fixture
def down_env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, str]]:
    """A home where mlxserve is not running, with the sockets a crashed server left behind."""
    home = Path(tempfile.mkdtemp(prefix="mxd"))  # short: Unix socket paths are limited to ~107 bytes
    (home / "run").mkdir(mode=0o700)
    for service in ("store", "supervisor"):
        s = socket.socket(socket.AF_UNIX)
        s.bind(str(home / "run" / f"{service}.sock"))
        s.close()  # the file stays; nobody listens on it
    env = {k: v for k, v in os.environ.items() if not k.startswith("MLXSERVE_")}
    yield {**env, "MLXSERVE_HOME": str(home), "MLXSERVE_PORT": str(free_port())}
    shutil.rmtree(home, ignore_errors=True)


@pytest.mark.parametrize("argv", [
    ["list"], ["ls", "--json"], ["show", "tiny"], ["cp", "tiny", "other"], ["rm", "tiny"],
    ["create", "x", "--from", "tiny"], ["pull", "registry.example/library/tiny"], ["push", "registry.example/library/tiny"],
    ["pack", "tiny", "-o", "tiny.tar"], ["verify"], ["gc"], ["ps"], ["stop", "tiny"], ["run", "tiny", "hello"],
    ["chat", "tiny"], ["bench", "tiny", "--runs", "1", "--concurrency", "1"],
], ids=lambda argv: argv[0])
def test_every_verb_says_the_server_is_not_running_and_how_to_start_it(down_env: dict[str, str], tmp_path: Path,
                                                                       argv: list[str]) -> None:
    out = subprocess.run([*MLXCTL, *argv], env=down_env, capture_output=True, text=True, timeout=60,
                         cwd=tmp_path, stdin=subprocess.DEVNULL)
    assert out.returncode == NOT_RUNNING, out.stderr
    assert out.stdout == ""
    assert len(out.stderr.strip().splitlines()) == 1, out.stderr
    assert out.stderr.startswith("Error: mlxserve is not running") and "start it with `mlxctl serve`" in out.stderr
