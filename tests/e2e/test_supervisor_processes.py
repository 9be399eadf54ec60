"""The supervisor with real child processes: what only processes show (signals, a worker's stderr
file, its socket, orphans, the supervisor's own process). The stand-in worker is
tests/fixtures/worker_stub.py; the pool's logic itself is tested with fakes in
tests/unit/test_supervisor.py."""

from __future__ import annotations

import asyncio
import dataclasses
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path
from typing import Any, Awaitable, Iterator

import grpc
import pytest

from mlxserve.services.common import rpc
from mlxserve.services.common.config import Settings, load_settings
from mlxserve.services.common.errors import Timeout, Unavailable
from mlxserve.services.supervisor.processes import spawn_worker
from mlxserve.services.supervisor.server import serve
from mlxserve.v1 import common_pb2, supervisor_pb2, supervisor_pb2_grpc
from tests.fixtures.worker_stub import StubStore, eventually, pid_alive, stub_pool


def run(coro: Awaitable[Any]) -> Any:
    return asyncio.run(coro)


@pytest.fixture
def home() -> Iterator[Path]:
    # Short path: Unix socket paths are limited to ~107 bytes.
    d = Path(tempfile.mkdtemp(prefix="mxs"))
    yield d
    shutil.rmtree(d, ignore_errors=True)


@pytest.fixture
def settings(home: Path) -> Settings:
    s = load_settings({"home": home}, env={})
    s = dataclasses.replace(s, load_timeout=15.0)
    s.ensure_dirs()
    return s


@pytest.fixture
def store(home: Path) -> StubStore:
    return StubStore(home)


# -- the pool over real processes ------------------------------------------------------------------


def test_a_worker_answers_on_its_socket_and_one_killed_by_a_signal_is_replaced(settings: Settings, store: StubStore) -> None:
    store.add("tiny")

    async def scenario() -> None:
        pool = stub_pool(settings, store)
        pool.start()
        try:
            first = await pool.acquire("tiny", "r1")
            assert first.worker_address.startswith(f"unix://{settings.run_dir}/worker-")
            assert first.load_duration_s > 0
            [info] = await pool.list_loaded()
            [pid] = store.spawns("tiny")
            assert info.pid == pid and info.memory_bytes == 123456 and info.context_length == 2048  # its Info RPC
            assert int((Path(store.models["tiny"].view_path) / "budget").read_text()) > 0  # told its budget
            os.kill(pid, signal.SIGKILL)
            await eventually(lambda: pool.loaded_names() == [])
            await pool.release(first.lease_id)  # a late release of the dead worker's lease is harmless
            second = await pool.acquire("tiny", "r2")
            assert second.worker_address != first.worker_address
            assert len(store.spawns("tiny")) == 2
            assert pid_alive(store.spawns("tiny")[1])
        finally:
            await pool.close()
        assert not pid_alive(store.spawns("tiny")[1])
        assert (settings.logs_dir / "worker-tiny_latest.stderr.log").exists()

    run(scenario())


def test_keep_alive_expiry_stops_an_idle_worker_process(settings: Settings, store: StubStore) -> None:
    store.add("tiny")

    async def scenario() -> None:
        pool = stub_pool(settings, store)
        pool.start()
        try:
            lease = await pool.acquire("tiny", "r1", keep_alive_s=0.5)
            [pid] = store.spawns("tiny")
            await pool.release(lease.lease_id)
            assert pid_alive(pid)
            await eventually(lambda: not pid_alive(pid), timeout=3)
            assert pool.loaded_names() == []
        finally:
            await pool.close()

    run(scenario())


def test_worker_that_exits_during_load_reports_its_stderr(settings: Settings, store: StubStore) -> None:
    store.add("broken", mode="fail")

    async def scenario() -> None:
        pool = stub_pool(settings, store)
        with pytest.raises(Unavailable) as err:
            await pool.acquire("broken")
        msg = str(err.value)
        assert msg.startswith("worker for broken:latest failed to start (exit code 3)")
        assert "ValueError: config.json says hidden_size=0" in msg
        assert await pool.list_loaded() == []
        await pool.close()

    run(scenario())


def test_worker_that_never_gets_ready_times_out_and_is_killed(settings: Settings, store: StubStore) -> None:
    store.add("stuck", mode="hang")

    async def scenario() -> None:
        pool = stub_pool(dataclasses.replace(settings, load_timeout=1.5), store)
        with pytest.raises(Timeout, match="did not become ready within 1.5s"):
            await pool.acquire("stuck")
        [pid] = store.spawns("stuck")
        await eventually(lambda: not pid_alive(pid))
        await pool.close()

    run(scenario())


def test_stop_sigkills_a_worker_that_ignores_sigterm(settings: Settings, store: StubStore) -> None:
    store.add("stubborn", mode="stubborn")

    async def scenario() -> None:
        pool = stub_pool(settings, store, stop_grace=0.5)
        await pool.acquire("stubborn", "r1")
        [pid] = store.spawns("stubborn")
        started = time.monotonic()
        await pool.stop_model("stubborn:latest")
        assert not pid_alive(pid)
        assert time.monotonic() - started < 3
        await pool.close()

    run(scenario())


def test_stderr_tail_only_covers_this_spawn(settings: Settings, home: Path) -> None:
    log = settings.logs_dir / "worker-x.log"
    log.write_text("old run: ImportError: stale\n")

    async def scenario() -> None:
        w = await spawn_worker(
            [sys.executable, "-c", "import sys; print('RuntimeError: fresh', file=sys.stderr); sys.exit(2)"],
            name="x", key="k", socket_path=settings.run_dir / "worker-t.sock", log_path=log, env=dict(os.environ),
        )
        with pytest.raises(Unavailable, match=r"failed to start \(exit code 2\): RuntimeError: fresh"):
            await w.wait_ready(5)
        assert w.stderr_tail() == ["RuntimeError: fresh"]

    run(scenario())


# -- orphans -------------------------------------------------------------------------------------

HOLDER = textwrap.dedent(
    """
    import asyncio, sys
    from pathlib import Path
    from mlxserve.services.common.config import load_settings
    sys.path.insert(0, sys.argv[2])
    from tests.fixtures.worker_stub import StubStore, stub_pool

    async def main():
        settings = load_settings({"home": sys.argv[1]}, env={})
        store = StubStore(Path(sys.argv[1]))
        store.add("tiny")
        pool = stub_pool(settings, store)
        await pool.acquire("tiny", "r1")
        print("ready", flush=True)
        await asyncio.sleep(3600)

    asyncio.run(main())
    """
)


def test_sigkilled_supervisor_leaves_no_worker_behind(settings: Settings, home: Path) -> None:
    script = home / "holder.py"
    script.write_text(HOLDER)
    proc = subprocess.Popen([sys.executable, str(script), str(home), str(Path(__file__).parents[2])],
                            stdout=subprocess.PIPE, text=True)
    try:
        for line in proc.stdout:  # unconfigured structlog logs to stdout first
            if line.strip() == "ready":
                break
        [pid] = [int(x) for x in (home / "views" / "tiny" / "spawns").read_text().split()]
        assert pid_alive(pid)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        deadline = time.monotonic() + 5
        while pid_alive(pid) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not pid_alive(pid), "worker outlived its supervisor"
    finally:
        proc.kill()


# -- the gRPC service and the process --------------------------------------------------------------


def test_grpc_service_acquire_release_list_stop(settings: Settings, store: StubStore) -> None:
    store.add("tiny")

    async def scenario() -> None:
        stop = asyncio.Event()
        pool = stub_pool(settings, store)
        server = asyncio.create_task(serve(settings, pool=pool, stop=stop))
        await eventually(lambda: settings.supervisor_socket.exists())
        async with rpc.aio_channel(settings.supervisor_target) as ch:
            sup = supervisor_pb2_grpc.SupervisorStub(ch)
            ping = await sup.Ping(common_pb2.PingRequest())
            assert ping.service == "supervisor"
            lease = await sup.Acquire(supervisor_pb2.AcquireRequest(model="tiny", request_id="r1", keep_alive_s=-1))
            assert lease.model == "tiny:latest" and lease.worker_address.startswith("unix://")
            listed = await sup.ListLoaded(supervisor_pb2.ListLoadedRequest())
            [m] = listed.models
            assert (m.name, m.in_flight, m.memory_bytes, m.details.family) == ("tiny:latest", 1, 123456, "llama")
            await sup.Release(supervisor_pb2.ReleaseRequest(lease_id=lease.lease_id))
            with pytest.raises(grpc.aio.AioRpcError) as err:
                await sup.Release(supervisor_pb2.ReleaseRequest(lease_id="bogus"))
            assert err.value.code() == grpc.StatusCode.NOT_FOUND
            with pytest.raises(grpc.aio.AioRpcError) as err:
                await sup.Acquire(supervisor_pb2.AcquireRequest(model="ghost"))
            assert (err.value.code(), err.value.details()) == (grpc.StatusCode.NOT_FOUND, "model 'ghost' not found")
            assert (await sup.Stop(supervisor_pb2.StopRequest(model="tiny"))).stopped
            with pytest.raises(grpc.aio.AioRpcError) as err:
                await sup.Stop(supervisor_pb2.StopRequest(model="tiny"))
            assert err.value.details() == "model 'tiny' is not loaded"
            await sup.Acquire(supervisor_pb2.AcquireRequest(model="tiny", request_id="r2"))
        [_, pid] = store.spawns("tiny")
        stop.set()
        await server
        assert not pid_alive(pid)  # shutdown stops every worker
        assert not settings.supervisor_socket.exists()

    run(scenario())


def test_supervisor_process_serves_ping_cleans_stale_sockets_and_exits_on_sigterm(settings: Settings) -> None:
    stale = settings.run_dir / "worker-deadbeef.sock"
    stale.write_text("")
    env = {**os.environ, "MLXSERVE_HOME": str(settings.home)}
    env.pop("MLXSERVE_PARENT_PID", None)
    proc = subprocess.Popen([sys.executable, "-m", "mlxserve.services.supervisor", "--log-level", "warning"], env=env)
    try:
        channel = rpc.sync_channel(settings.supervisor_target)
        stub = supervisor_pb2_grpc.SupervisorStub(channel)
        deadline = time.monotonic() + 15
        while True:
            try:
                assert stub.Ping(common_pb2.PingRequest(), timeout=1).service == "supervisor"
                break
            except grpc.RpcError:
                assert time.monotonic() < deadline and proc.poll() is None
                time.sleep(0.1)
        assert not stale.exists()
        listed = stub.ListLoaded(supervisor_pb2.ListLoadedRequest(), timeout=5)
        assert list(listed.models) == []
        channel.close()
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=10) == 0
        assert not settings.supervisor_socket.exists()
    finally:
        proc.kill()
