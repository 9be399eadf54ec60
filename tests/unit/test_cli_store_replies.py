"""What mlxctl says about the store's answers: a model replaced by create or cp (as Ollama
replaces), a full disk (exit 9, not "not running"), and a store that stopped mid-operation (not
"mlxserve is not running"). The store is a real ModelStore behind an in-process Backend."""

from __future__ import annotations

import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from typer.testing import CliRunner

from mlxserve.cli import models as cli_models
from mlxserve.cli.backend import Backend
from mlxserve.cli.main import app
from mlxserve.services.common.config import load_settings
from mlxserve.services.common.errors import ERROR_CLASS_KEY, Busy, DiskFull, Unavailable, from_rpc_error
from mlxserve.services.store.recipes import CreateSpec
from mlxserve.services.store.server import create_spec, summary_pb
from mlxserve.services.store.store import ModelStore
from mlxserve.v1 import common_pb2, store_pb2
from tests.fixtures import hostile_files as hf

runner = CliRunner()


class InProcessBackend:
    """The store verbs mlxctl's create and cp use, answered by a ModelStore in this process."""

    store: ModelStore

    def __init__(self, settings: Any) -> None:
        pass

    def call(self, service: str, method: str, request: Any, timeout: float | None = 30.0) -> Any:
        if method == "Show":
            return store_pb2.ShowResponse(summary=summary_pb(self.store.summary_of(request.name)))
        if method == "Copy":
            return store_pb2.CopyResponse(model=summary_pb(self.store.copy(request.source, request.destination)))
        raise AssertionError(f"unexpected call {method}")

    def stream(self, service: str, method: str, request: Any) -> Iterator[Any]:
        assert method == "Create"
        self.store.create(request.name, create_spec(request))
        yield common_pb2.Progress(status="success")


@pytest.fixture
def store(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> ModelStore:
    monkeypatch.setenv("MLXSERVE_HOME", tempfile.mkdtemp(prefix="mxc", dir=tmp_path))
    s = ModelStore(tmp_path / "models")
    src = tmp_path / "tiny.gguf"
    src.write_bytes(hf.tiny_llama_gguf())
    s.create_from_path("tiny", src)
    s.create("other", CreateSpec(from_model="tiny", system="You are another model."))
    InProcessBackend.store = s
    monkeypatch.setattr(cli_models, "Backend", InProcessBackend)
    return s


def test_cp_onto_an_existing_model_says_it_replaced_it_with_the_old_digest(store: ModelStore) -> None:
    old = store.summary_of("other").digest
    result = runner.invoke(app, ["cp", "tiny", "other"])
    assert result.exit_code == 0, result.output
    assert f"replaced other (was {old[:12]})" in result.output
    assert store.summary_of("other").digest == store.summary_of("tiny").digest


def test_cp_to_a_new_name_or_onto_the_same_model_says_nothing_of_replacing(store: ModelStore) -> None:
    assert "replaced" not in runner.invoke(app, ["cp", "tiny", "fresh"]).output
    assert "replaced" not in runner.invoke(app, ["cp", "tiny", "fresh"]).output


def test_create_over_an_existing_model_says_it_replaced_it(store: ModelStore) -> None:
    old = store.summary_of("tiny").digest
    result = runner.invoke(app, ["create", "tiny", "--from", "other"])
    assert result.exit_code == 0, result.output
    assert f"replaced tiny (was {old[:12]})" in result.output


class _RpcError(grpc.RpcError):
    def __init__(self, code: grpc.StatusCode, details: str, meta: tuple = ()) -> None:
        self._code, self._details, self._meta = code, details, meta

    def code(self) -> grpc.StatusCode:
        return self._code

    def details(self) -> str:
        return self._details

    def trailing_metadata(self) -> tuple:
        return self._meta


def test_disk_full_crosses_grpc_as_disk_full_while_a_full_queue_stays_busy() -> None:
    full = from_rpc_error(_RpcError(grpc.StatusCode.RESOURCE_EXHAUSTED, "disk full: no space left",
                                    ((ERROR_CLASS_KEY, "DiskFull"),)))
    assert isinstance(full, DiskFull) and (full.http_status, full.exit_code) == (507, 9)
    busy = from_rpc_error(_RpcError(grpc.StatusCode.RESOURCE_EXHAUSTED, "queue full", ((ERROR_CLASS_KEY, "Busy"),)))
    assert isinstance(busy, Busy) and busy.exit_code == 5


class _DyingStub:
    """A Create stream that sends `sent` messages, then loses its connection."""

    def __init__(self, sent: int) -> None:
        self.sent = sent

    def Create(self, request: Any) -> Iterator[Any]:  # noqa: N802 - the gRPC method's name
        for _ in range(self.sent):
            yield common_pb2.Progress(status="parsing GGUF header")
        raise _RpcError(grpc.StatusCode.UNAVAILABLE, "Socket closed")


@pytest.mark.parametrize(("sent", "says"), [(1, "the store stopped while working on this"),
                                            (0, "mlxserve is not running")])
def test_a_store_that_dies_mid_operation_is_said_to_have_stopped_not_to_be_not_running(
        monkeypatch: pytest.MonkeyPatch, tmp_path: Path, sent: int, says: str) -> None:
    backend = Backend(load_settings({"home": str(tmp_path)}))
    monkeypatch.setattr(backend, "_channel", lambda service: _NullChannel())
    monkeypatch.setattr(Backend, "_stub", staticmethod(lambda service, channel: _DyingStub(sent)))
    with pytest.raises(Unavailable) as info:
        list(backend.stream("store", "Create", store_pb2.CreateRequest(name="x")))
    assert says in info.value.message and info.value.exit_code == 4


class _NullChannel:
    def __enter__(self) -> _NullChannel:
        return self

    def __exit__(self, *exc: object) -> None:
        return None
