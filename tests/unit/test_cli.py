"""mlxctl verbs through typer's CliRunner, against nothing, fake gRPC services, or a fake gateway."""

from __future__ import annotations

import datetime as dt
import io
import json
import shutil
import socket
import tempfile
import threading
from concurrent import futures
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Iterator

import grpc
import pytest
import typer
from typer.testing import CliRunner

from mlxserve import __version__
from mlxserve.cli import render
from mlxserve.cli.backend import complete_loaded_models, complete_model_names, exits_on_error
from mlxserve.cli.main import app
from mlxserve.services.common import rpc
from mlxserve.services.common.config import load_settings
from mlxserve.services.common.errors import NotFound
from mlxserve.v1 import common_pb2, store_pb2, store_pb2_grpc, supervisor_pb2, supervisor_pb2_grpc

runner = CliRunner()
DIGEST = "ab" * 32


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def home(monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    d = Path(tempfile.mkdtemp(prefix="mxc"))  # short: Unix socket paths are limited to ~107 bytes
    monkeypatch.setenv("MLXSERVE_HOME", str(d))
    monkeypatch.setenv("MLXSERVE_PORT", str(free_port()))
    monkeypatch.delenv("MLXSERVE_HOST", raising=False)
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


class _Ctx:
    """What a completion callback sees of typer's context: the root's parsed --home."""

    def __init__(self, home: Path | None) -> None:
        self.params = {"home": str(home) if home else None}

    def find_root(self) -> "_Ctx":
        return self


def test_model_completion_is_silently_empty_when_the_server_is_down(home: Path) -> None:
    assert complete_model_names(_Ctx(home), "") == []  # type: ignore[arg-type]
    assert complete_loaded_models(_Ctx(home), "") == []  # type: ignore[arg-type]


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


class FakeStore(store_pb2_grpc.StoreServicer):
    def __init__(self) -> None:
        self.removed: list[str] = []

    def List(self, request, context):
        modified = (dt.datetime.now(dt.timezone.utc) - dt.timedelta(minutes=3)).isoformat()
        return store_pb2.ListResponse(models=[store_pb2.ModelSummary(
            name="smollm2:latest", model="smollm2:latest", digest=DIGEST, size=91_000_000, modified_at=modified,
            details=common_pb2.ModelDetails(format="safetensors", family="llama", quantization_level="Q4_1"))])

    @rpc.rpc_method
    def Remove(self, request, context):
        if request.name != "smollm2":
            raise NotFound(f"model '{request.name}' not found")
        self.removed.append(request.name)
        return store_pb2.RemoveResponse()

    def Create(self, request, context):
        yield common_pb2.Progress(status="parsing GGUF")
        yield common_pb2.Progress(status="writing weights", total=100, completed=50)
        yield common_pb2.Progress(status="writing weights", total=100, completed=100)
        yield common_pb2.Progress(status="success")


class FakeSupervisor(supervisor_pb2_grpc.SupervisorServicer):
    def ListLoaded(self, request, context):
        soon = (dt.datetime.now(dt.timezone.utc) + dt.timedelta(minutes=4, seconds=30)).isoformat()
        return supervisor_pb2.ListLoadedResponse(models=[
            supervisor_pb2.LoadedModel(name="smollm2:latest", model="smollm2:latest", digest=DIGEST, size=91_000_000,
                                       memory_bytes=250_000_000, expires_at=soon, pid=42, in_flight=0),
            supervisor_pb2.LoadedModel(name="minilm:latest", digest="cd" * 32, size=90_000_000,
                                       expires_at="2318-01-01T00:00:00Z"),
        ])

    @rpc.rpc_method
    def Stop(self, request, context):
        raise NotFound(f"model '{request.model}' is not loaded")


@pytest.fixture
def services(home: Path) -> Iterator[FakeStore]:
    settings = load_settings({"home": home})
    settings.ensure_dirs()
    server = grpc.server(futures.ThreadPoolExecutor(4))
    store = FakeStore()
    store_pb2_grpc.add_StoreServicer_to_server(store, server)
    server.add_insecure_port(settings.store_target)
    sup = grpc.server(futures.ThreadPoolExecutor(2))
    supervisor_pb2_grpc.add_SupervisorServicer_to_server(FakeSupervisor(), sup)
    sup.add_insecure_port(settings.supervisor_target)
    server.start()
    sup.start()
    yield store
    server.stop(0)
    sup.stop(0)


def test_list_prints_a_table(services: FakeStore) -> None:
    result = runner.invoke(app, ["list"])
    assert result.exit_code == 0, result.stderr
    header, row = result.stdout.splitlines()
    assert header.split() == ["NAME", "ID", "SIZE", "MODIFIED"]
    assert row.split()[:4] == ["smollm2:latest", DIGEST[:12], "91", "MB"]
    assert row.endswith("3 minutes ago")


def test_model_names_complete_from_the_store_and_stop_completes_loaded_ones(services: FakeStore, home: Path) -> None:
    assert complete_model_names(_Ctx(home), "smo") == ["smollm2:latest"]  # type: ignore[arg-type]
    assert complete_model_names(_Ctx(home), "SMO") == ["smollm2:latest"]  # type: ignore[arg-type]
    assert complete_model_names(_Ctx(home), "x") == []  # type: ignore[arg-type]
    assert complete_loaded_models(_Ctx(home), "") == ["minilm:latest", "smollm2:latest"]  # type: ignore[arg-type]


def test_list_json_keeps_full_digest_and_integer_size(services: FakeStore) -> None:
    result = runner.invoke(app, ["ls", "--json"])
    assert result.exit_code == 0
    [m] = json.loads(result.stdout)["models"]
    assert (m["name"], m["digest"], m["size"], m["details"]["quantization_level"]) == ("smollm2:latest", DIGEST, 91_000_000, "Q4_1")


def test_ps_shows_processor_and_until(services: FakeStore) -> None:
    result = runner.invoke(app, ["ps"])
    assert result.exit_code == 0
    lines = result.stdout.splitlines()
    assert lines[0].split() == ["NAME", "ID", "SIZE", "PROCESSOR", "UNTIL"]
    assert "250 MB" in lines[1] and "100% CPU" in lines[1] and lines[1].endswith("4 minutes from now")
    assert lines[2].endswith("Forever")


def test_stop_of_a_model_not_loaded_exits_3(services: FakeStore) -> None:
    result = runner.invoke(app, ["stop", "smollm2"])
    assert result.exit_code == 3
    assert result.stderr.strip() == "Error: model 'smollm2' is not loaded"


def test_rm_deletes_and_reports_unknown_models(services: FakeStore) -> None:
    result = runner.invoke(app, ["rm", "smollm2"])
    assert result.exit_code == 0 and result.stdout.strip() == "deleted 'smollm2'"
    result = runner.invoke(app, ["rm", "ghost"])
    assert result.exit_code == 3 and result.stderr.strip() == "Error: model 'ghost' not found"


def test_create_prints_progress_lines(services: FakeStore, home: Path) -> None:
    src = home / "m.gguf"
    src.write_bytes(b"GGUF")
    result = runner.invoke(app, ["create", "smollm2", "--from", str(src)])
    assert result.exit_code == 0, result.stderr
    assert result.stdout.splitlines() == [
        "parsing GGUF", "writing weights  50%", "writing weights 100%", "success"]


# -- run against a fake gateway --------------------------------------------------------------------


@pytest.fixture
def gateway(home: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[list[dict]]:
    seen: list[dict] = []

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args: object) -> None:
            pass

        def do_POST(self) -> None:
            body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
            seen.append(body)
            if body["model"] == "ghost":
                payload = json.dumps({"error": "model 'ghost' not found"}).encode()
                self.send_response(404)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)
                return
            self.send_response(200)
            self.send_header("Content-Type", "application/x-ndjson")
            self.end_headers()
            for piece in ("Hello", ", world"):
                self.wfile.write(json.dumps({"model": body["model"], "response": piece, "done": False}).encode() + b"\n")
                self.wfile.flush()
            self.wfile.write(json.dumps({"model": body["model"], "response": "", "done": True, "total_duration": 10**9,
                                         "load_duration": 10**6, "prompt_eval_count": 3, "prompt_eval_duration": 10**8,
                                         "eval_count": 2, "eval_duration": 10**8}).encode() + b"\n")

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    monkeypatch.setenv("MLXSERVE_PORT", str(server.server_address[1]))
    yield seen
    server.shutdown()


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
    from mlxserve.cli.generate import parse_options
    from mlxserve.services.common.errors import InvalidArgument

    assert parse_options(["temperature=0", "num_predict=8", "stop=\\n", "stop=END", "mirostat=true"]) == {
        "temperature": 0, "num_predict": 8, "stop": ["\\n", "END"], "mirostat": True,
    }
    with pytest.raises(InvalidArgument):
        parse_options(["temperature"])
