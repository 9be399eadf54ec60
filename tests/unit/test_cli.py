"""mlxctl verbs through typer's CliRunner, against nothing or an in-process gateway (no sockets).

The verbs against fake gRPC services are in tests/e2e/test_cli_grpc_services.py."""

from __future__ import annotations

import datetime as dt
import io
import json
import shutil
import tempfile
from pathlib import Path
from typing import Iterator

import pytest
import typer
from typer.testing import CliRunner

from mlxserve import __version__
from mlxserve.cli import gateway_client, render
from mlxserve.cli.backend import complete_loaded_models, complete_model_names, exits_on_error
from mlxserve.cli.main import app
from tests.fixtures.cli_context import CompletionContext
from tests.fixtures.http_gateway import InProcessGateway, Unreachable

runner = CliRunner()


@pytest.fixture
def home(monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """An empty mlxserve home with nothing running: no services, and no gateway answers HTTP."""
    d = Path(tempfile.mkdtemp(prefix="mxc"))  # short: Unix socket paths are limited to ~107 bytes
    monkeypatch.setenv("MLXSERVE_HOME", str(d))
    monkeypatch.delenv("MLXSERVE_HOST", raising=False)
    monkeypatch.setattr(gateway_client, "make_opener", Unreachable().opener)
    yield d
    shutil.rmtree(d, ignore_errors=True)


# -- no service needed ---------------------------------------------------------------------------


def test_version_prints_the_package_version() -> None:
    result = runner.invoke(app, ["version"])
    assert result.exit_code == 0
    assert result.stdout.strip() == f"mlxctl version {__version__}"


def test_version_json_is_one_object() -> None:
    result = runner.invoke(app, ["version", "--json"])
    assert result.exit_code == 0
    assert json.loads(result.stdout) == {"version": __version__}


@pytest.mark.parametrize("shell,marker", [("bash", "complete -o default -F _mlxctl_completion mlxctl"),
                                          ("zsh", "#compdef mlxctl"), ("fish", "complete --command mlxctl")])
def test_show_completion_prints_the_script_for_the_named_shell(shell: str, marker: str) -> None:
    result = runner.invoke(app, ["--show-completion", shell])
    assert result.exit_code == 0
    assert marker in result.stdout and "_MLXCTL_COMPLETE" in result.stdout


def test_completion_for_an_unknown_shell_is_a_usage_error() -> None:
    result = runner.invoke(app, ["--show-completion", "tcsh"])
    assert result.exit_code == 2
    assert result.stderr.splitlines()[-1] == ("Error: Invalid value for '--show-completion': 'tcsh' is not a shell mlxctl "
                                              "completes; choose one of bash, zsh, fish, powershell, pwsh")


def test_install_completion_writes_into_the_shells_rc_file(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("HOME", str(tmp_path))
    result = runner.invoke(app, ["--install-completion", "bash"])
    assert result.exit_code == 0, result.stderr
    assert "bash completion installed in" in result.stdout
    assert "mlxctl" in (tmp_path / ".bashrc").read_text()


def test_model_completion_is_silently_empty_when_the_server_is_down(home: Path) -> None:
    assert complete_model_names(CompletionContext(home), "") == []  # type: ignore[arg-type]
    assert complete_loaded_models(CompletionContext(home), "") == []  # type: ignore[arg-type]


@pytest.mark.parametrize("exc,code,start", [
    (TimeoutError("timed out"), 6, "Error: the server did not answer in time"),
    (ConnectionResetError("reset by peer"), 4, "Error: the connection to mlxserve broke"),
    (ValueError("boom"), 1, "Error: unexpected ValueError: boom"),
])
def test_an_unexpected_failure_is_one_line_with_its_exit_code(exc: Exception, code: int, start: str,
                                                              capsys: pytest.CaptureFixture[str]) -> None:
    @exits_on_error
    def verb() -> None:
        raise exc

    with pytest.raises(typer.Exit) as info:
        verb()
    assert info.value.exit_code == code
    err = capsys.readouterr().err
    assert err.startswith(start) and len(err.strip().splitlines()) == 1


def test_help_lists_every_verb() -> None:
    result = runner.invoke(app, ["--help"])
    assert result.exit_code == 0
    for verb in ("serve", "run", "list", "create", "show", "cp", "rm", "pull", "push", "pack", "verify", "gc", "ps", "stop",
                 "version"):
        assert verb in result.stdout


@pytest.mark.parametrize("argv", [["list"], ["ls"], ["ps"], ["stop", "smollm2"], ["rm", "smollm2"]])
def test_admin_verbs_say_how_to_start_the_server_when_it_is_down(home: Path, argv: list[str]) -> None:
    result = runner.invoke(app, argv)
    assert result.exit_code == 4
    service = "supervisor" if argv[0] in ("ps", "stop") else "store"
    assert result.stderr.strip() == (
        f"Error: mlxserve is not running (no {service} at {home}/run/{service}.sock); start it with `mlxctl serve` "
        "(or keep it running with `mlxctl service install`)"
    )
    assert result.stdout == ""


def test_stale_socket_also_reads_as_not_running(home: Path) -> None:
    (home / "run").mkdir(mode=0o700, parents=True)
    (home / "run" / "store.sock").write_text("")
    result = runner.invoke(app, ["list"])
    assert result.exit_code == 4
    assert "mlxserve is not running" in result.stderr


def test_run_says_the_server_is_down(home: Path) -> None:
    result = runner.invoke(app, ["run", "smollm2", "hi"])
    assert result.exit_code == 4
    assert result.stderr.startswith("Error: mlxserve is not running (nothing answers at http://127.0.0.1:")
    assert "start it with `mlxctl serve`" in result.stderr


def test_create_from_a_missing_file_is_bad_input(home: Path) -> None:
    result = runner.invoke(app, ["create", "x", "--from", str(home / "missing.gguf")])
    assert result.exit_code == 2
    assert result.stderr.startswith("Error: source ")


def test_serve_refuses_a_malformed_model_spec(home: Path) -> None:
    result = runner.invoke(app, ["serve", "--model", "no-equals-sign"])
    assert result.exit_code == 2
    assert "--model takes NAME=PATH" in result.stderr


# -- rendering ------------------------------------------------------------------------------------


def test_sizes_and_times_read_like_ollama() -> None:
    assert render.human_size(91_000_000) == "91 MB"
    assert render.human_size(4_700_000_000) == "4.7 GB"
    assert render.human_size(512) == "512 B"
    now = dt.datetime(2025, 1, 1, tzinfo=dt.timezone.utc)
    assert render.relative_time("2024-12-31T23:57:00Z", now) == "3 minutes ago"
    assert render.relative_time("2025-01-01T00:04:30+00:00", now) == "4 minutes from now"
    assert render.relative_time("2025-01-01T01:00:00Z", now) == "About an hour from now"
    assert render.relative_time("2318-01-01T00:00:00Z", now) == "Forever"
    assert render.relative_time("", now) == ""


def test_verbose_timings_include_rates(capsys: pytest.CaptureFixture[str]) -> None:
    render.print_timings({"total_duration": 2_000_000_000, "load_duration": 5_000_000, "prompt_eval_count": 10,
                          "prompt_eval_duration": 500_000_000, "eval_count": 20, "eval_duration": 1_000_000_000})
    err = capsys.readouterr().err
    assert "total duration:       2s" in err
    assert "load duration:        5ms" in err
    assert "prompt eval rate:     20.00 tokens/s" in err
    assert "eval count:           20 token(s)" in err
    assert "eval rate:            20.00 tokens/s" in err


# -- against fake gRPC services --------------------------------------------------------------------


# -- run against a fake gateway --------------------------------------------------------------------


@pytest.fixture
def gateway(home: Path, monkeypatch: pytest.MonkeyPatch) -> list[dict]:
    """A gateway answering /api/generate in-process; the request bodies it got."""
    seen: list[dict] = []

    def answer(method: str, path: str, body: dict | None) -> tuple[int, dict | list[dict], dict[str, str]]:
        assert body is not None
        seen.append(body)
        if body["model"] == "ghost":
            return 404, {"error": "model 'ghost' not found"}, {}
        return 200, [*({"model": body["model"], "response": piece, "done": False} for piece in ("Hello", ", world")),
                     {"model": body["model"], "response": "", "done": True, "total_duration": 10**9,
                      "load_duration": 10**6, "prompt_eval_count": 3, "prompt_eval_duration": 10**8,
                      "eval_count": 2, "eval_duration": 10**8}], {}

    monkeypatch.setattr(gateway_client, "make_opener", InProcessGateway(answer).opener)
    return seen


def test_run_streams_the_answer_and_sends_options(gateway: list[dict]) -> None:
    result = runner.invoke(app, ["run", "smollm2", "Say hi", "--system", "Be brief", "--keepalive", "5m"])
    assert result.exit_code == 0, result.stderr
    assert result.stdout == "Hello, world\n"
    assert gateway == [{"model": "smollm2", "prompt": "Say hi", "stream": True, "system": "Be brief", "keep_alive": "5m"}]


def test_run_reads_the_prompt_from_stdin_and_prints_timings_when_verbose(gateway: list[dict]) -> None:
    result = runner.invoke(app, ["run", "smollm2", "--verbose"], input="from stdin\n")
    assert result.exit_code == 0
    assert gateway[0]["prompt"] == "from stdin\n"
    assert "eval rate:            20.00 tokens/s" in result.stderr


def test_run_of_an_unknown_model_exits_3(gateway: list[dict]) -> None:
    result = runner.invoke(app, ["run", "ghost", "hi"])
    assert result.exit_code == 3
    assert result.stderr.strip() == "Error: model 'ghost' not found"


def test_progress_redraws_in_place_on_a_terminal() -> None:
    class Terminal(io.StringIO):
        def isatty(self) -> bool:
            return True

    out = Terminal()
    printer = render.ProgressPrinter(out)
    for status, total, done in [("hashing", 0, 0), ("copying", 10, 0), ("copying", 10, 5), ("copying", 10, 10), ("success", 0, 0)]:
        printer.update(status, total, done)
    printer.close()
    assert out.getvalue() == "hashing\ncopying   0%\rcopying  50%\rcopying 100%\nsuccess\n"


def test_run_options_parse_as_json_values_and_repeat_stops() -> None:
    from mlxserve.cli.options import parse_options
    from mlxserve.services.common.errors import InvalidArgument

    assert parse_options(["temperature=0", "num_predict=8", "stop=\\n", "stop=END", "mirostat=true"]) == {
        "temperature": 0, "num_predict": 8, "stop": ["\\n", "END"], "mirostat": True,
    }
    with pytest.raises(InvalidArgument):
        parse_options(["temperature"])
