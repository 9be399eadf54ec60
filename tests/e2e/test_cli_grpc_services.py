"""mlxctl's store and residency verbs through typer's CliRunner, against fake store and supervisor
gRPC services on the home's unix sockets (moved from tests/unit: they open sockets)."""

from __future__ import annotations

import datetime as dt
import json
import shutil
import tempfile
from concurrent import futures
from pathlib import Path
from typing import Iterator

import grpc
import pytest
from typer.testing import CliRunner

from mlxserve.cli.backend import complete_loaded_models, complete_model_names
from mlxserve.cli.main import app
from mlxserve.services.common import rpc
from mlxserve.services.common.config import load_settings
from mlxserve.services.common.errors import NotFound
from mlxserve.v1 import common_pb2, store_pb2, store_pb2_grpc, supervisor_pb2, supervisor_pb2_grpc
from tests.fixtures.cli_context import CompletionContext

runner = CliRunner()
DIGEST = "ab" * 32


@pytest.fixture
def home(monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    d = Path(tempfile.mkdtemp(prefix="mxc"))  # short: Unix socket paths are limited to ~107 bytes
    monkeypatch.setenv("MLXSERVE_HOME", str(d))
    monkeypatch.delenv("MLXSERVE_HOST", raising=False)
    yield d
    shutil.rmtree(d, ignore_errors=True)


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
    assert complete_model_names(CompletionContext(home), "smo") == ["smollm2:latest"]  # type: ignore[arg-type]
    assert complete_model_names(CompletionContext(home), "SMO") == ["smollm2:latest"]  # type: ignore[arg-type]
    assert complete_model_names(CompletionContext(home), "x") == []  # type: ignore[arg-type]
    assert complete_loaded_models(CompletionContext(home), "") == ["minilm:latest", "smollm2:latest"]  # type: ignore[arg-type]


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
