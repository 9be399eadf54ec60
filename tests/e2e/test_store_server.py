"""The store service end to end: `python -m mlxserve.services.store` on a real unix socket."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Iterator

import grpc
import pytest

from mlxserve.services.common import rpc
from mlxserve.services.common.errors import InvalidArgument, NotFound, Unsupported
from mlxserve.services.store.format import CURRENT, FORMAT_FILE
from mlxserve.v1 import common_pb2, store_pb2, store_pb2_grpc
from tests.fixtures.tiny_gguf import write_tiny_gguf


@pytest.fixture()
def service(tmp_path: Path) -> Iterator[tuple[store_pb2_grpc.StoreStub, subprocess.Popen, Path]]:
    home = tmp_path / "home"
    env = {**os.environ, "MLXSERVE_HOME": str(home), "MLXSERVE_PARENT_PID": str(os.getpid())}
    proc = subprocess.Popen([sys.executable, "-m", "mlxserve.services.store", "--log-level", "warning"], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    sock = home / "run" / "store.sock"
    channel = rpc.sync_channel(rpc.unix_target(sock))
    stub = store_pb2_grpc.StoreStub(channel)
    deadline = time.monotonic() + 30
    while True:
        try:
            stub.Ping(common_pb2.PingRequest(), timeout=1)
            break
        except grpc.RpcError:
            if proc.poll() is not None or time.monotonic() > deadline:
                proc.kill()
                pytest.fail(f"store did not start: {proc.stderr.read().decode()[-2000:]}")
            time.sleep(0.1)
    try:
        yield stub, proc, home
    finally:
        channel.close()
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_store_service_serves_every_rpc_over_its_socket(service, tmp_path: Path) -> None:
    stub, proc, home = service
    sock = home / "run" / "store.sock"
    assert (sock.stat().st_mode & 0o777) == 0o600
    pong = stub.Ping(common_pb2.PingRequest(), timeout=5)
    assert pong.service == "store" and pong.pid == proc.pid

    src = tmp_path / "tiny.gguf"
    write_tiny_gguf(src, quant="Q8_0")
    events = list(stub.Create(store_pb2.CreateRequest(name="Tiny", from_path=str(src)), timeout=60))
    assert events[-1].status == "success"
    assert any(e.digest.startswith("sha256:") for e in events)

    listed = stub.List(store_pb2.ListRequest(), timeout=5).models
    assert [m.name for m in listed] == ["tiny:latest"] and listed[0].model == "tiny:latest"
    assert listed[0].details.quantization_level == "Q8_0" and listed[0].size > 0

    shown = stub.Show(store_pb2.ShowRequest(name="tiny"), timeout=5)
    info = json.loads(shown.model_info_json)
    assert info["general.architecture"] == "llama" and info["llama.context_length"] == 256
    assert list(shown.capabilities) == ["completion"] and shown.license == "apache-2.0"
    assert "<|im_start|>" in shown.template and shown.summary.digest == listed[0].digest

    resolved = stub.Resolve(store_pb2.ResolveRequest(name="tiny:latest"), timeout=5)
    view = Path(resolved.view_path)
    assert (view / "config.json").is_file() and (view / "model.safetensors").is_file()
    assert resolved.digest == listed[0].digest and resolved.context_length == 256

    removed = stub.Remove(store_pb2.RemoveRequest(name="tiny"), timeout=5)
    assert len(removed.removed_blobs) >= 5
    with pytest.raises(NotFound, match="tiny:latest"):
        rpc.call_sync("store", stub.Show, store_pb2.ShowRequest(name="tiny"), timeout=5)

    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=15) == 0
    assert not sock.exists()


def test_create_errors_arrive_as_invalid_argument(service, tmp_path: Path) -> None:
    stub, _, home = service
    src = tmp_path / "qwen.gguf"
    write_tiny_gguf(src, arch="qwen2")
    with pytest.raises(grpc.RpcError) as info:
        list(stub.Create(store_pb2.CreateRequest(name="q", from_path=str(src)), timeout=30))
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "qwen2" in info.value.details()
    with pytest.raises(grpc.RpcError) as info:
        list(stub.Create(store_pb2.CreateRequest(name="q", from_path="rel.gguf"), timeout=5))
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "absolute" in info.value.details()
    with pytest.raises(InvalidArgument, match="must not contain"):
        rpc.call_sync("store", stub.Resolve, store_pb2.ResolveRequest(name="../etc/passwd"), timeout=5)
    leftovers = [p for p in (home / "models").rglob("*") if p.is_file() and p.name not in (".lock", "store-format.json")]
    assert leftovers == []


@pytest.mark.smollm2
def test_ping_and_list_answer_while_a_gguf_imports(service, smollm2_gguf: Path) -> None:
    stub, _, _ = service
    stream = stub.Create(store_pb2.CreateRequest(name="smollm2", from_path=str(smollm2_gguf)), timeout=120)
    first = next(stream)  # the import is running now
    assert first.status
    done = threading.Event()
    statuses: list[str] = []

    def drain() -> None:
        statuses.extend(e.status for e in stream)
        done.set()

    threading.Thread(target=drain, daemon=True).start()
    assert stub.Ping(common_pb2.PingRequest(), timeout=2).service == "store"
    stub.List(store_pb2.ListRequest(), timeout=2)
    assert done.wait(120) and statuses[-1] == "success"
    assert [m.name for m in stub.List(store_pb2.ListRequest(), timeout=5).models] == ["smollm2:latest"]


def test_the_store_service_exits_with_the_message_when_the_store_is_newer(tmp_path: Path) -> None:
    home = tmp_path / "home"
    (home / "models").mkdir(parents=True)
    (home / "models" / FORMAT_FILE).write_text(json.dumps({"format": CURRENT + 5}))
    env = {**os.environ, "MLXSERVE_HOME": str(home)}
    proc = subprocess.run([sys.executable, "-m", "mlxserve.services.store"], env=env, capture_output=True, text=True, timeout=60)
    assert proc.returncode == Unsupported.exit_code
    assert f"format {CURRENT + 5}" in proc.stderr and "Upgrade mlxserve" in proc.stderr
    assert not (home / "run" / "store.sock").exists()
