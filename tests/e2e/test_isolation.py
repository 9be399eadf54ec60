"""Crash isolation, bounded queues, keep-alive and no orphans, with real processes and real signals.

One system serves three tiny models (two that load, one whose weights have the wrong shapes) with
one decode slot and one queue place per model, so a third concurrent request is refused.
"""

from __future__ import annotations

import http.client
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Iterator

import pytest

from mlxserve.services.common import rpc
from mlxserve.services.common.config import load_settings
from mlxserve.v1 import common_pb2, supervisor_pb2, supervisor_pb2_grpc
from tests.e2e.harness import System, alive, descendants, http_json, start_system
from tests.fixtures.tiny_model import EOS_TOKEN, SPECIAL_TOKENS, write_tiny_model

ALPHA = "alpha"
BETA = "beta"
BROKEN = "broken"
# Greedy on the endless models runs for well over a thousand tokens (until the context is full,
# or rarely an EOS), seconds on this machine: long enough to kill a worker mid-stream.
# Runs until cancelled or killed: num_ctx past the tiny model's 2048 positions, so the context does not end
# it first (with OpenBLAS the tiny model reaches 2048 tokens in a second or two).
LONG = {"temperature": 0, "num_predict": 100_000, "num_ctx": 1_000_000}


def write_endless_model(path: Path, seed: int) -> Path:
    """A tiny model whose greedy streams run long: its head row for EOS is zero, so EOS rarely wins argmax."""
    import mlx.core as mx

    write_tiny_model(path, seed=seed)
    weights = mx.load(str(path / "model.safetensors"))
    head = weights["lm_head.weight"]
    weights["lm_head.weight"] = mx.concatenate([head[:SPECIAL_TOKENS.index(EOS_TOKEN)], mx.zeros_like(head[:1]),
                                                head[SPECIAL_TOKENS.index(EOS_TOKEN) + 1:]])
    mx.save_safetensors(str(path / "model.safetensors"), weights, metadata={"format": "mlx"})
    return path


def write_broken_model(path: Path) -> Path:
    """A tiny model whose weights do not fit its config: the store accepts it, mlx-lm fails to load it."""
    import mlx.core as mx

    write_tiny_model(path)
    weights = mx.load(str(path / "model.safetensors"))
    weights["model.embed_tokens.weight"] = mx.zeros((7, 3))
    mx.save_safetensors(str(path / "model.safetensors"), weights, metadata={"format": "mlx"})
    return path


@pytest.fixture(scope="module")
def system(tmp_path_factory: pytest.TempPathFactory) -> Iterator[System]:
    models = tmp_path_factory.mktemp("isolation-models")
    sys_ = start_system(
        tmp_path_factory.mktemp("isolation-home"),
        {
            ALPHA: write_endless_model(models / ALPHA, seed=1),
            BETA: write_endless_model(models / BETA, seed=2),
            BROKEN: write_broken_model(models / BROKEN),
        },
        extra_env={"MLXSERVE_NUM_PARALLEL": "1", "MLXSERVE_MAX_QUEUE": "1"},
    )
    yield sys_
    left = sys_.stop()
    assert not left, f"processes outlived `mlxctl serve`: {left}"


def cmdline(pid: int) -> list[str]:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace").split("\0")
    except OSError:
        return []


def worker_pids(root: int, model: str) -> set[int]:
    """Live worker processes below `root` serving `model`."""
    out = set()
    for pid in descendants(root):
        args = cmdline(pid)
        if "mlxserve.services.worker" in args and "--model-name" in args and alive(pid):
            name = args[args.index("--model-name") + 1]
            if name in (model, f"{model}:latest"):
                out.add(pid)
    return out


def service_pid(root: int, module: str) -> int:
    pids = [p for p in descendants(root) if cmdline(p)[1:3] == ["-m", module]]
    assert len(pids) == 1, pids
    return pids[0]


def wait_for(predicate, timeout: float, what: str, poll: float = 0.1):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(poll)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


def in_flight(system: System, model: str) -> int | None:
    """The supervisor's count of leases on `model` (None when it is not loaded), asked over gRPC: fast."""
    target = load_settings({"home": str(system.home)}).supervisor_target
    with rpc.sync_channel(target) as channel:
        listed = rpc.call_sync("supervisor", supervisor_pb2_grpc.SupervisorStub(channel).ListLoaded,
                               supervisor_pb2.ListLoadedRequest(), timeout=5.0)
    return next((m.in_flight for m in listed.models if m.name in (model, f"{model}:latest")), None)


def loaded(system: System) -> dict[str, dict]:
    status, body = http_json("GET", system.url + "/api/ps")
    assert status == 200, body
    return {m["name"].removesuffix(":latest"): m for m in body["models"]}


class Stream:
    """One streaming HTTP request read on a thread: its lines, and when the last one came."""

    def __init__(self, system: System, path: str, body: dict) -> None:
        self.conn = http.client.HTTPConnection("127.0.0.1", system.port, timeout=60)
        self.conn.request("POST", path, body=json.dumps(body), headers={"Content-Type": "application/json"})
        self.resp = self.conn.getresponse()
        self.lines: list[bytes] = []
        self.first = threading.Event()
        self.ended_at: float | None = None
        self.failure: Exception | None = None
        self.thread = threading.Thread(target=self._read, daemon=True)
        self.thread.start()

    def _read(self) -> None:
        try:
            for line in self.resp:
                if line.strip():
                    self.lines.append(line)
                    self.first.set()
        except (OSError, ValueError, AttributeError, http.client.HTTPException) as e:  # the connection was cut
            self.failure = e
        self.ended_at = time.monotonic()
        self.first.set()

    def join(self, timeout: float) -> None:
        self.thread.join(timeout)
        assert not self.thread.is_alive(), f"stream still open after {timeout}s ({len(self.lines)} lines)"

    def close(self) -> None:
        """Hang up (the server sees a client disconnect), then let the reader finish."""
        try:
            self.conn.sock.shutdown(socket.SHUT_RDWR)
        except (OSError, AttributeError):
            pass
        self.thread.join(5)
        self.conn.close()


def ndjson(stream: Stream) -> list[dict]:
    return [json.loads(line) for line in stream.lines]


def sse_data(stream: Stream) -> list[str]:
    return [line.decode()[len("data: "):].strip() for line in stream.lines if line.startswith(b"data: ")]


def test_kill_9_on_a_worker_ends_its_stream_with_an_error_and_spares_the_other_model(system: System) -> None:
    # Both models loaded first, then the victim, then the other once the victim streams: on a
    # loaded machine a stream started alongside a loading model can finish before the kill.
    for model in (ALPHA, BETA):
        status, body = http_json("POST", system.url + "/api/generate", {"model": model, "keep_alive": "10m"})
        assert status == 200 and body["done_reason"] == "load", body
    victim = Stream(system, "/api/generate", {"model": ALPHA, "prompt": "tell me a story", "options": LONG})
    other = None
    try:
        assert victim.resp.status == 200 and victim.first.wait(30)
        other = Stream(system, "/api/generate", {"model": BETA, "prompt": "a long story", "options": {"temperature": 0, "num_predict": 1500}})
        assert other.resp.status == 200 and other.first.wait(30)
        [pid] = worker_pids(system.proc.pid, ALPHA)
        other_lines_at_kill = len(other.lines)
        killed_at = time.monotonic()
        os.kill(pid, signal.SIGKILL)
        victim.join(timeout=5)
        assert victim.ended_at - killed_at < 2.0, f"the error came {victim.ended_at - killed_at:.2f}s after the kill"
        last = ndjson(victim)[-1]
        assert set(last) == {"error"} and ALPHA in last["error"], last
        other.join(timeout=60)
        chunks = ndjson(other)
        assert len(chunks) > other_lines_at_kill
        assert chunks[-1]["done"] is True and chunks[-1]["done_reason"] == "length", chunks[-1]
        assert other.ended_at > killed_at
        assert chunks[-1]["eval_count"] == 1500
        assert not any("error" in c for c in chunks) and other.failure is None
    finally:
        victim.close()
        if other is not None:
            other.close()


def test_the_next_request_after_a_crash_starts_a_fresh_worker_and_sse_streams_end_with_an_error_event(system: System) -> None:
    status, _ = http_json("POST", system.url + "/api/generate", {"model": ALPHA, "prompt": "hi", "stream": False, "options": {"num_predict": 2}})
    assert status == 200
    [before] = worker_pids(system.proc.pid, ALPHA)
    os.kill(before, signal.SIGKILL)
    wait_for(lambda: not alive(before), 5, "the killed worker to exit")

    status, body = http_json("POST", system.url + "/api/generate",
                             {"model": ALPHA, "prompt": "hi", "stream": False, "options": {"temperature": 0, "num_predict": 4}})
    assert status == 200, body
    assert body["done_reason"] == "length" and body["eval_count"] == 4
    [after] = worker_pids(system.proc.pid, ALPHA)
    assert after != before

    victim = Stream(system, "/v1/chat/completions", {"model": ALPHA, "stream": True, "temperature": 0, "max_tokens": 100_000,
                                                     "messages": [{"role": "user", "content": "a long story"}]})
    try:
        assert victim.resp.status == 200 and victim.first.wait(30)
        killed_at = time.monotonic()
        os.kill(after, signal.SIGKILL)
        victim.join(timeout=5)
        assert victim.ended_at - killed_at < 2.0
        events = sse_data(victim)
        error = json.loads(events[-2] if events[-1] == "[DONE]" else events[-1])
        assert ALPHA in error["error"]["message"], error
    finally:
        victim.close()


def test_past_num_parallel_plus_max_queue_a_loaded_model_answers_503_with_retry_after(system: System) -> None:
    status, _ = http_json("POST", system.url + "/api/generate", {"model": BETA, "prompt": "", "stream": False})
    assert status == 200
    running = Stream(system, "/api/generate", {"model": BETA, "prompt": "one", "options": LONG})
    queued = http.client.HTTPConnection("127.0.0.1", system.port, timeout=60)
    try:
        assert running.first.wait(30)
        queued.request("POST", "/api/generate", body=json.dumps({"model": BETA, "prompt": "two", "options": LONG}),
                       headers={"Content-Type": "application/json"})
        wait_for(lambda: in_flight(system, BETA) == 2, 10, "two requests in flight", poll=0.02)
        conn = http.client.HTTPConnection("127.0.0.1", system.port, timeout=30)
        conn.request("POST", "/api/generate", body=json.dumps({"model": BETA, "prompt": "three", "options": {"num_predict": 1}}),
                     headers={"Content-Type": "application/json"})
        resp = conn.getresponse()
        body = json.loads(resp.read())
        conn.close()
        assert resp.status == 503, body
        assert int(resp.getheader("Retry-After")) >= 1
        assert body["error"]
    finally:
        running.close()
        queued.close()
    # Both abandoned requests are cancelled: the slot and the queue place free up.
    wait_for(lambda: in_flight(system, BETA) == 0, 10, "the slots to free up")
    status, _ = http_json("POST", system.url + "/api/generate", {"model": BETA, "prompt": "four", "stream": False, "options": {"num_predict": 1}})
    assert status == 200


def test_keep_alive_load_unload_and_forever_end_to_end(system: System) -> None:
    status, body = http_json("POST", system.url + "/api/generate", {"model": ALPHA, "prompt": "", "keep_alive": 0})
    assert status == 200 and body["done_reason"] == "unload", body
    assert ALPHA not in loaded(system)

    status, body = http_json("POST", system.url + "/api/generate", {"model": ALPHA, "prompt": ""})
    assert status == 200 and body["done_reason"] == "load" and body["done"] is True, body
    assert ALPHA in loaded(system)

    status, body = http_json("POST", system.url + "/api/chat", {"model": ALPHA, "messages": [], "keep_alive": "-1"})
    assert status == 200 and body["done_reason"] == "load", body
    expires = datetime.fromisoformat(loaded(system)[ALPHA]["expires_at"].replace("Z", "+00:00"))
    assert expires > datetime.now(timezone.utc) + timedelta(days=365 * 10)

    status, body = http_json("POST", system.url + "/api/generate",
                             {"model": ALPHA, "prompt": "hi", "stream": False, "keep_alive": 0, "options": {"num_predict": 2}})
    assert status == 200, body
    wait_for(lambda: ALPHA not in loaded(system), 3, "keep_alive 0 to unload the model")
    wait_for(lambda: not worker_pids(system.proc.pid, ALPHA), 5, "the unloaded model's worker to exit")


def post_with_headers(system: System, path: str, body: dict) -> tuple[int, dict, dict[str, str]]:
    conn = http.client.HTTPConnection("127.0.0.1", system.port, timeout=60)
    try:
        conn.request("POST", path, body=json.dumps(body), headers={"Content-Type": "application/json"})
        resp = conn.getresponse()
        return resp.status, json.loads(resp.read()), dict(resp.getheaders())
    finally:
        conn.close()


def worker_starts(system: System, model: str) -> int:
    """How many times the supervisor started a worker for `model`, from its log."""
    text = (system.home / "logs" / "supervisor.log").read_text()
    return sum(1 for line in text.splitlines()
               if '"worker_starting"' in line and json.loads(line).get("model") in (model, f"{model}:latest"))


def test_a_model_that_fails_to_load_is_a_5xx_naming_the_cause_and_is_not_restarted_in_a_tight_loop(system: System) -> None:
    body = {"model": BROKEN, "prompt": "hi", "stream": False, "options": {"num_predict": 1}}
    status, first, _ = post_with_headers(system, "/api/generate", body)
    assert 500 <= status < 600, (status, first)
    assert BROKEN in first["error"] and "shape" in first["error"], first
    for _ in range(5):
        status, again, headers = post_with_headers(system, "/api/generate", body)
        assert status == 503 and int(headers["Retry-After"]) >= 1, (status, again, headers)
        assert BROKEN in again["error"] and "shape" in again["error"], again
    assert worker_starts(system, BROKEN) == 1
    assert BROKEN not in loaded(system)
    # The other models are not affected.
    status, _ = http_json("POST", system.url + "/api/generate", {"model": BETA, "prompt": "hi", "stream": False, "options": {"num_predict": 1}})
    assert status == 200


def test_sigkill_on_the_supervisor_leaves_no_worker_and_a_restarted_one_starts_clean(tmp_path: Path) -> None:
    system = start_system(tmp_path / "home", {ALPHA: write_tiny_model(tmp_path / ALPHA, seed=1)})
    restarted = None
    try:
        status, _ = http_json("POST", system.url + "/api/generate", {"model": ALPHA, "prompt": "", "keep_alive": -1})
        assert status == 200
        [worker] = worker_pids(system.proc.pid, ALPHA)
        supervisor = service_pid(system.proc.pid, "mlxserve.services.supervisor")
        run_dir = system.home / "run"
        assert list(run_dir.glob("worker-*.sock"))
        os.kill(supervisor, signal.SIGKILL)
        wait_for(lambda: not alive(worker), 5, "the worker to exit after its supervisor was killed")
        system.stop()
        assert (run_dir / "supervisor.sock").exists()  # the killed supervisor could not remove it

        env = {k: v for k, v in os.environ.items() if k != "MLXSERVE_PARENT_PID"}
        env["MLXSERVE_HOME"] = str(system.home)
        with open(tmp_path / "supervisor-restart.log", "wb") as log:
            restarted = subprocess.Popen([sys.executable, "-m", "mlxserve.services.supervisor"], env=env,
                                         stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        settings = load_settings({"home": str(system.home)})

        def answers() -> bool:
            assert restarted.poll() is None, (tmp_path / "supervisor-restart.log").read_text()
            try:
                with rpc.sync_channel(settings.supervisor_target) as channel:
                    rpc.call_sync("supervisor", supervisor_pb2_grpc.SupervisorStub(channel).Ping, common_pb2.PingRequest(), timeout=1.0)
                return True
            except Exception:  # noqa: BLE001 - not up yet
                return False

        wait_for(answers, 20, "the restarted supervisor to answer Ping", poll=0.2)
        assert not list(run_dir.glob("worker-*.sock")) and not list(run_dir.glob("*.pid")), list(run_dir.iterdir())
        with rpc.sync_channel(settings.supervisor_target) as channel:
            listed = rpc.call_sync("supervisor", supervisor_pb2_grpc.SupervisorStub(channel).ListLoaded,
                                   supervisor_pb2.ListLoadedRequest(), timeout=5.0)
        assert list(listed.models) == []
    finally:
        if restarted is not None:
            restarted.terminate()
            restarted.wait(10)
        assert not system.stop()
