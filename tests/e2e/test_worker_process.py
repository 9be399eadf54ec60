"""The worker as a real process: gRPC on a unix socket, frames over a real ZeroMQ PULL socket."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Iterator

import grpc
import pytest
import zmq

from mlxserve.services.common.rpc import sync_channel
from mlxserve.v1 import common_pb2, frames, requests, worker_pb2, worker_pb2_grpc
from tests.fixtures.tiny_model import tiny_model_dir  # noqa: F401 - fixture

pytestmark = pytest.mark.e2e


def start_worker(model: Path, home: Path, *extra: str) -> tuple[subprocess.Popen, Path]:
    home.mkdir(parents=True, exist_ok=True)
    # Short socket paths: unix socket paths are limited to ~100 bytes.
    sock = home / "w.sock"
    env = dict(os.environ, MLXSERVE_HOME=str(home))
    proc = subprocess.Popen(
        [sys.executable, "-m", "mlxserve.services.worker", "--model-path", str(model), "--socket", str(sock), "--model-name", "tiny:latest", *extra],
        env=env, stdin=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    return proc, sock


def wait_ready(stub: worker_pb2_grpc.WorkerStub, proc: subprocess.Popen, timeout: float = 60.0) -> common_pb2.PingResponse:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert proc.poll() is None, proc.stderr.read()
        try:
            return stub.Ping(common_pb2.PingRequest(), timeout=1.0)
        except grpc.RpcError:
            time.sleep(0.1)
    raise AssertionError("worker never answered Ping")


@pytest.fixture
def home() -> Iterator[Path]:
    import tempfile

    with tempfile.TemporaryDirectory(prefix="mlxw-", dir="/tmp") as d:
        yield Path(d)


def receive_until_done(pull: zmq.Socket, request_id: str, timeout_ms: int = 30_000) -> list[frames.TokenEvent]:
    got = []
    while True:
        assert pull.poll(timeout_ms), "no frame arrived"
        event = frames.decode(pull.recv())
        assert event.request_id == request_id
        got.append(event)
        if event.done:
            return got


def chat_request(request_id: str, reply_to: str, **options: object) -> worker_pb2.SubmitRequest:
    request = requests.GenerationRequest(request_id=request_id, is_chat=True, messages=(requests.ChatMessage("user", "Hello there"),),
                                         options=requests.SamplingOptions(**options))
    return worker_pb2.SubmitRequest(reply_to=reply_to, request=requests.encode(request))


def test_worker_serves_submit_over_zeromq_and_stops_promptly_on_sigterm(tiny_model_dir: Path, home: Path) -> None:  # noqa: F811
    proc, sock = start_worker(tiny_model_dir, home, "--num-parallel", "2", "--max-queue", "1")
    ctx = zmq.Context()
    pull = ctx.socket(zmq.PULL)
    reply_to = f"ipc://{home}/gw.sock"
    pull.bind(reply_to)
    try:
        stub = worker_pb2_grpc.WorkerStub(sync_channel(f"unix://{sock}"))
        ping = wait_ready(stub, proc)
        assert ping.service == "worker" and ping.pid == proc.pid
        assert oct(sock.stat().st_mode & 0o777) == oct(0o600)

        submitted = stub.Submit(chat_request("a", reply_to, temperature=0, num_predict=6), timeout=10)
        assert submitted.prompt_tokens > 0 and submitted.queue_position == 0
        events = receive_until_done(pull, "a")
        assert sum(len(e.token_ids) for e in events) == 6
        assert events[-1].done_reason == "length"
        assert events[-1].stats.prompt_tokens == submitted.prompt_tokens

        info = stub.Info(worker_pb2.InfoRequest(), timeout=10)
        assert info.pid == proc.pid and info.memory_bytes > 10_000_000
        assert info.context_length == 2048 and info.device == "cpu" and info.model_path == str(tiny_model_dir)

        with pytest.raises(grpc.RpcError) as bad:
            stub.Submit(chat_request("bad", reply_to, temperature=-1), timeout=10)
        assert bad.value.code() == grpc.StatusCode.INVALID_ARGUMENT

        # A long generation in flight when SIGTERM arrives ends with an error frame, at once.
        stub.Submit(chat_request("b", reply_to, temperature=0), timeout=10)
        assert pull.poll(10_000)
        first = frames.decode(pull.recv())
        assert first.request_id == "b" and not first.done
        started = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        rest = receive_until_done(pull, "b", timeout_ms=5_000)
        assert rest[-1].done_reason == "error" and "shutting down" in rest[-1].error
        assert proc.wait(timeout=5) == 0
        assert time.monotonic() - started < 3.0
        assert not sock.exists()
        assert (home / "logs" / "worker-tiny_latest.log").is_file()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        pull.close(linger=0)
        ctx.term()


def test_worker_exits_when_the_supervisor_closes_its_stdin(tiny_model_dir: Path, home: Path) -> None:  # noqa: F811
    proc, sock = start_worker(tiny_model_dir, home)
    try:
        wait_ready(worker_pb2_grpc.WorkerStub(sync_channel(f"unix://{sock}")), proc)
        proc.stdin.close()
        assert proc.wait(timeout=5) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_worker_load_failure_names_the_cause_and_exits_nonzero(tmp_path: Path, home: Path) -> None:
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "config.json").write_text('{"model_type": "llama"}')
    proc, sock = start_worker(broken, home)
    _, stderr = proc.communicate(timeout=60)
    assert proc.returncode != 0
    line = next(ln for ln in stderr.splitlines() if ln.startswith("mlxserve-worker:"))
    assert "failed to load model" in line and str(broken) in line
    assert not sock.exists()
