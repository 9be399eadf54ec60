"""Embedding and generative workers as real processes: Embed over gRPC, and each refusing the other's verb
(the embedding runner in a real worker process; test_embeddings.py has it in process)."""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Iterator

import grpc
import pytest

from mlxserve.services.common.rpc import sync_channel
from mlxserve.v1 import common_pb2, requests, worker_pb2, worker_pb2_grpc
from tests.fixtures.minilm import MODEL_NAME
from tests.fixtures.minilm_store import assert_close, minilm_store, minilm_view, reference  # noqa: F401 - fixtures
from tests.fixtures.tiny_model import tiny_model_dir  # noqa: F401 - fixture


# --- the worker process ---------------------------------------------------------------------

@pytest.fixture
def home() -> Iterator[Path]:
    with tempfile.TemporaryDirectory(prefix="mlxe-", dir="/tmp") as d:  # short: unix socket paths are limited
        yield Path(d)


def start_worker(model: Path, home: Path, name: str) -> tuple[subprocess.Popen, worker_pb2_grpc.WorkerStub]:
    sock = home / "w.sock"
    proc = subprocess.Popen(
        [sys.executable, "-m", "mlxserve.services.worker", "--model-path", str(model), "--socket", str(sock), "--model-name", name],
        env=dict(os.environ, MLXSERVE_HOME=str(home)), stdin=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    stub = worker_pb2_grpc.WorkerStub(sync_channel(f"unix://{sock}"))
    deadline = time.monotonic() + 60
    while True:
        assert proc.poll() is None, proc.stderr.read()
        try:
            stub.Ping(common_pb2.PingRequest(), timeout=1.0)
            return proc, stub
        except grpc.RpcError:
            assert time.monotonic() < deadline, "worker never answered Ping"
            time.sleep(0.1)


def stop_worker(proc: subprocess.Popen) -> None:
    proc.stdin.close()  # the supervisor's end of the pipe: EOF means stop
    try:
        proc.wait(15)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


@pytest.mark.e2e
def test_worker_process_answers_embed_and_refuses_generate(minilm_view: Path, reference: dict, home: Path) -> None:
    proc, stub = start_worker(minilm_view, home, MODEL_NAME)
    try:
        assert stub.Info(worker_pb2.InfoRequest(), timeout=5).kind == "embed"
        reply = stub.Embed(worker_pb2.EmbedRequest(request_id="e1", inputs=reference["inputs"]), timeout=30)
        assert_close([list(e.values) for e in reply.embeddings], reference["embeddings"])
        assert reply.prompt_tokens > 0
        with pytest.raises(grpc.RpcError) as err:
            stub.Embed(worker_pb2.EmbedRequest(request_id="e2", inputs=["x " * 400], truncate=False), timeout=30)
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        with pytest.raises(grpc.RpcError) as err:
            stub.Submit(worker_pb2.SubmitRequest(reply_to="ipc:///tmp/nowhere",
                                                 request=requests.encode(requests.GenerationRequest("g1", prompt="hi"))), timeout=5)
        assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION  # Unsupported (HTTP 400 at the gateway)
        assert f"model '{MODEL_NAME}' does not support generate" in err.value.details()
    finally:
        stop_worker(proc)


@pytest.mark.e2e
def test_generative_worker_refuses_embed(tiny_model_dir: Path, home: Path) -> None:  # noqa: F811
    proc, stub = start_worker(tiny_model_dir, home, "tiny:latest")
    try:
        assert stub.Info(worker_pb2.InfoRequest(), timeout=5).kind == "generate"
        with pytest.raises(grpc.RpcError) as err:
            stub.Embed(worker_pb2.EmbedRequest(request_id="e1", inputs=["hello"]), timeout=5)
        assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION  # Unsupported (HTTP 400 at the gateway)
        assert "model 'tiny:latest' does not support embeddings" in err.value.details()
    finally:
        stop_worker(proc)
