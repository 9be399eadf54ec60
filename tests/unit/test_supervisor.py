"""The supervisor with real child processes: a small gRPC worker stand-in (no MLX) that answers
Ping/Info on its socket, fails with a stderr message, hangs, or ignores SIGTERM, as told."""

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
from typing import Any, Awaitable, Callable

import grpc
import pytest

from mlxserve.services.common import rpc
from mlxserve.services.common.config import Settings, load_settings
from mlxserve.services.common.errors import Busy, NotFound, Timeout, Unavailable
from mlxserve.services.supervisor.pool import WorkerPool
from mlxserve.services.supervisor.processes import spawn_worker
from mlxserve.services.supervisor.server import serve
from mlxserve.services.supervisor.store_client import ModelRef
from mlxserve.v1 import common_pb2, supervisor_pb2, supervisor_pb2_grpc

FAKE_WORKER = textwrap.dedent(
    """
    import argparse, os, signal, sys, time
    from concurrent import futures
    import grpc
    from mlxserve.v1 import common_pb2, worker_pb2, worker_pb2_grpc

    p = argparse.ArgumentParser()
    p.add_argument("--model-path"); p.add_argument("--socket"); p.add_argument("--model-name")
    a = p.parse_args()
    with open(os.path.join(a.model_path, "spawns"), "a") as f:
        f.write(f"{os.getpid()}\\n")
    with open(os.path.join(a.model_path, "budget"), "w") as f:
        f.write(os.environ.get("MLXSERVE_WORKER_MEMORY_BUDGET", "unset"))
    mode = open(os.path.join(a.model_path, "mode")).read().strip()
    if mode == "fail":
        print("loading weights", file=sys.stderr)
        print("ValueError: config.json says hidden_size=0", file=sys.stderr, flush=True)
        sys.exit(3)
    if mode == "hang":
        time.sleep(3600)
    if mode == "stubborn":
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
    if mode == "slow":
        time.sleep(1.0)

    class Worker(worker_pb2_grpc.WorkerServicer):
        def Ping(self, request, context):
            return common_pb2.PingResponse(service="worker", pid=os.getpid())
        steps = 0
        def Info(self, request, context):
            # "wedge": holds a request and never steps; "busy": holds one and steps between calls.
            if mode == "busy":
                Worker.steps += 1
            return worker_pb2.InfoResponse(model_path=a.model_path, memory_bytes=123456, device="cpu",
                                           pid=os.getpid(), context_length=2048, kind="generate",
                                           running=int(mode in ("wedge", "busy")), steps=Worker.steps)

    server = grpc.server(futures.ThreadPoolExecutor(2))
    worker_pb2_grpc.add_WorkerServicer_to_server(Worker(), server)
    server.add_insecure_port("unix://" + a.socket)
    server.start()
    sys.stdin.read()  # EOF: the supervisor is gone
    os._exit(0)
    """
)


def run(coro: Awaitable[Any]) -> Any:
    return asyncio.run(coro)


@pytest.fixture
def home() -> Path:
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


class FakeStore:
    """Resolves names to folders whose `mode` file tells the fake worker how to behave."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.script = root / "fake_worker.py"
        self.script.write_text(FAKE_WORKER)
        self.models: dict[str, ModelRef] = {}

    def add(self, name: str, mode: str = "ok", digest: str | None = None) -> ModelRef:
        view = self.root / "views" / name
        view.mkdir(parents=True, exist_ok=True)
        (view / "mode").write_text(mode)
        ref = ModelRef(name=f"{name}:latest", digest=digest or f"{abs(hash(name)):064x}"[:64], view_path=str(view),
                       size=4096, capabilities=("completion",), context_length=1024)
        self.models[name] = self.models[f"{name}:latest"] = ref
        return ref

    def spawns(self, name: str) -> list[int]:
        f = self.root / "views" / name / "spawns"
        return [int(x) for x in f.read_text().split()] if f.exists() else []

    async def resolve(self, name: str, request_id: str | None = None) -> ModelRef:
        if name not in self.models:
            raise NotFound(f"model '{name}' not found")
        return self.models[name]

    async def details(self, name: str) -> common_pb2.ModelDetails | None:
        return common_pb2.ModelDetails(format="safetensors", family="llama")

    def command_for(self, ref: ModelRef, socket_path: os.PathLike) -> list[str]:
        return [sys.executable, str(self.script), "--model-path", ref.view_path, "--socket", str(socket_path),
                "--model-name", ref.name]


@pytest.fixture
def store(home: Path) -> FakeStore:
    return FakeStore(home)


def make_pool(settings: Settings, store: FakeStore, **kw: Any) -> WorkerPool:
    return WorkerPool(settings, store, command_for=store.command_for, stop_grace=kw.pop("stop_grace", 1.0), **kw)


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie still "exists"; treat it as gone.
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(")")[-1].split()[0] != "Z"
    except (FileNotFoundError, ProcessLookupError):
        # Reaped between the kill(0) and the read: reading /proc/<pid>/stat then fails with ESRCH.
        return False


async def eventually(pred: Callable[[], bool], timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not pred():
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        await asyncio.sleep(0.05)


# -- pool ----------------------------------------------------------------------------------------


def test_default_limits_allow_three_models_and_most_of_physical_memory(settings: Settings, store: FakeStore) -> None:
    pool = make_pool(settings, store)
    assert pool.limits.max_models == 3
    assert 0 < pool.limits.memory_budget <= os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    assert make_pool(dataclasses.replace(settings, memory_budget=12345), store).limits.memory_budget == 12345


def test_loading_past_max_loaded_models_evicts_the_least_recently_used_idle_model(settings: Settings, store: FakeStore) -> None:
    for name in ("a", "b", "c"):
        store.add(name)

    async def scenario() -> None:
        pool = make_pool(dataclasses.replace(settings, max_loaded_models=2), store)
        try:
            la = await pool.acquire("a")
            lb = await pool.acquire("b")
            await pool.release(la.lease_id)
            await pool.release(lb.lease_id)
            await pool.acquire("c")
            assert pool.loaded_names() == ["b:latest", "c:latest"]
            assert not pid_alive(store.spawns("a")[0])  # stopped before c started
            assert pid_alive(store.spawns("b")[0])
        finally:
            await pool.close()

    run(scenario())


def test_a_load_waits_for_a_busy_model_to_go_idle_then_evicts_it(settings: Settings, store: FakeStore) -> None:
    store.add("a")
    store.add("b")

    async def scenario() -> None:
        pool = make_pool(dataclasses.replace(settings, max_loaded_models=1), store)
        try:
            la = await pool.acquire("a")
            waiting = asyncio.ensure_future(pool.acquire("b"))
            await asyncio.sleep(0.3)
            assert not waiting.done() and store.spawns("b") == []  # a is busy: b waits
            await pool.release(la.lease_id)
            lb = await asyncio.wait_for(waiting, 5)
            assert lb.model == "b:latest" and lb.load_duration_s >= 0.3
            assert pool.loaded_names() == ["b:latest"]
        finally:
            await pool.close()

    run(scenario())


def test_a_load_that_finds_no_room_in_time_is_busy_with_retry_after(settings: Settings, store: FakeStore) -> None:
    store.add("a")
    store.add("b")

    async def scenario() -> None:
        pool = make_pool(dataclasses.replace(settings, max_loaded_models=1, load_timeout=0.5), store)
        try:
            await pool.acquire("a")
            started = time.monotonic()
            with pytest.raises(Busy) as err:
                await pool.acquire("b")
            assert 0.5 <= time.monotonic() - started < 2
            assert "cannot load b:latest: max_loaded_models=1 models are loaded" in str(err.value)
            assert err.value.retry_after == 5.0
            assert store.spawns("b") == [] and pool.loaded_names() == ["a:latest"]
            # Not the model's fault: no backoff, it loads as soon as there is room.
            await pool.stop_model("a")
            assert (await pool.acquire("b")).model == "b:latest"
        finally:
            await pool.close()

    run(scenario())


def test_memory_budget_counts_what_workers_report_and_evicts_to_fit(settings: Settings, store: FakeStore) -> None:
    for name in ("a", "b", "c"):
        store.add(name)  # 4096 bytes on disk; the worker reports 123456 bytes in use

    async def scenario() -> None:
        pool = make_pool(dataclasses.replace(settings, memory_budget=200_000, max_loaded_models=0), store)
        try:
            await pool.release((await pool.acquire("a")).lease_id)
            await pool.check_workers()
            await pool.release((await pool.acquire("b")).lease_id)  # 123456 + 4096 fits
            assert pool.loaded_names() == ["a:latest", "b:latest"]
            await pool.check_workers()  # now 2 x 123456: over budget with anything more
            await pool.acquire("c")
            assert pool.loaded_names() == ["b:latest", "c:latest"]
            assert not pid_alive(store.spawns("a")[0])
        finally:
            await pool.close()

    run(scenario())


def test_a_wedged_worker_is_killed_and_the_next_acquire_starts_a_fresh_one(settings: Settings, store: FakeStore) -> None:
    store.add("stuck", mode="wedge")
    store.add("steady", mode="busy")

    async def scenario() -> None:
        pool = make_pool(dataclasses.replace(settings, wedge_timeout=0.6), store)
        pool.start()
        try:
            started = time.monotonic()
            stuck = await pool.acquire("stuck")
            steady = await pool.acquire("steady")
            [pid] = store.spawns("stuck")
            await eventually(lambda: not pid_alive(pid), timeout=5)
            assert 0.6 <= time.monotonic() - started < 3
            assert pool.loaded_names() == ["steady:latest"]  # making progress: left alone
            await pool.release(stuck.lease_id)  # the gateway's late release is harmless
            (store.root / "views" / "stuck" / "mode").write_text("ok")
            again = await pool.acquire("stuck")
            assert again.worker_address != stuck.worker_address and len(store.spawns("stuck")) == 2
            assert pid_alive(store.spawns("steady")[0])
            await pool.release(steady.lease_id)
        finally:
            await pool.close()

    run(scenario())


def test_an_idle_worker_is_never_called_wedged(settings: Settings, store: FakeStore) -> None:
    store.add("stuck", mode="wedge")  # reports a request running but holds no lease

    async def scenario() -> None:
        pool = make_pool(dataclasses.replace(settings, wedge_timeout=0.3), store)
        pool.start()
        try:
            await pool.release((await pool.acquire("stuck")).lease_id)
            await asyncio.sleep(1.0)
            assert pool.loaded_names() == ["stuck:latest"]
        finally:
            await pool.close()

    run(scenario())


def test_a_load_nobody_waits_for_any_more_is_abandoned(settings: Settings, store: FakeStore) -> None:
    store.add("slow", mode="slow")

    async def scenario() -> None:
        pool = make_pool(settings, store)
        try:
            waiters = [asyncio.ensure_future(pool.acquire("slow")) for _ in range(2)]
            await eventually(lambda: len(store.spawns("slow")) == 1)
            waiters[0].cancel()
            await asyncio.sleep(0.1)
            [pid] = store.spawns("slow")
            assert pid_alive(pid)  # one request still waits: the load goes on
            waiters[1].cancel()
            await eventually(lambda: not pid_alive(pid))
            assert pool.loaded_names() == [] and await pool.list_loaded() == []
            assert pool.residency.keys() == []
            # Not a failure: the next request loads at once, no backoff.
            assert (await pool.acquire("slow")).model == "slow:latest"
        finally:
            await pool.close()

    run(scenario())


def test_a_load_asked_with_keep_alive_finishes_even_if_the_client_leaves(settings: Settings, store: FakeStore) -> None:
    store.add("slow", mode="slow")

    async def scenario() -> None:
        pool = make_pool(settings, store)
        pool.start()
        try:
            waiter = asyncio.ensure_future(pool.acquire("slow", keep_alive_s=0.8))
            await eventually(lambda: len(store.spawns("slow")) == 1)
            waiter.cancel()
            await eventually(lambda: pool.loaded_names() == ["slow:latest"])
            [info] = await pool.list_loaded()
            assert info.in_flight == 0
            # Idle from the end of the load, it then expires with the keep-alive it was asked for.
            await eventually(lambda: pool.loaded_names() == [], timeout=5)
        finally:
            await pool.close()

    run(scenario())


def test_acquire_starts_a_worker_that_answers_on_its_socket(settings: Settings, store: FakeStore) -> None:
    store.add("tiny")

    async def scenario() -> None:
        pool = make_pool(settings, store)
        pool.start()
        try:
            lease = await pool.acquire("tiny", "r1")
            assert lease.model == "tiny:latest"
            assert lease.worker_address.startswith(f"unix://{settings.run_dir}/worker-")
            assert lease.load_duration_s > 0
            assert lease.capabilities == ("completion",)
            [info] = await pool.list_loaded()
            assert info.pid == store.spawns("tiny")[0]
            assert info.memory_bytes == 123456 and info.size == 4096 and info.size_vram == 0
            assert info.in_flight == 1 and info.context_length == 2048
            assert info.details is not None and info.details.family == "llama"
            # Warm: a second request leases the same worker without waiting.
            again = await pool.acquire("tiny", "r2")
            assert again.worker_address == lease.worker_address and again.load_duration_s == 0.0
            assert len(store.spawns("tiny")) == 1
        finally:
            await pool.close()
        assert not pid_alive(store.spawns("tiny")[0])

    run(scenario())


def test_concurrent_acquires_share_one_load(settings: Settings, store: FakeStore) -> None:
    store.add("slow", mode="slow")

    async def scenario() -> None:
        pool = make_pool(settings, store)
        try:
            leases = await asyncio.gather(*(pool.acquire("slow", f"r{i}") for i in range(4)))
            assert len({l.worker_address for l in leases}) == 1
            assert len({l.lease_id for l in leases}) == 4
            assert len(store.spawns("slow")) == 1
            assert all(l.load_duration_s >= 0.9 for l in leases)
        finally:
            await pool.close()

    run(scenario())


def test_unknown_model_is_not_found(settings: Settings, store: FakeStore) -> None:
    async def scenario() -> None:
        pool = make_pool(settings, store)
        with pytest.raises(NotFound, match="model 'ghost' not found"):
            await pool.acquire("ghost")
        await pool.close()

    run(scenario())


def test_worker_that_exits_during_load_reports_its_stderr(settings: Settings, store: FakeStore) -> None:
    store.add("broken", mode="fail")

    async def scenario() -> None:
        pool = make_pool(settings, store)
        with pytest.raises(Unavailable) as err:
            await pool.acquire("broken")
        msg = str(err.value)
        assert msg.startswith("worker for broken:latest failed to start (exit code 3)")
        assert "ValueError: config.json says hidden_size=0" in msg
        assert await pool.list_loaded() == []
        await pool.close()

    run(scenario())


def test_a_model_that_keeps_failing_to_load_is_retried_with_backoff_naming_the_cause(settings: Settings, store: FakeStore) -> None:
    store.add("broken", mode="fail")

    async def scenario() -> None:
        pool = make_pool(dataclasses.replace(settings, restart_backoff=0.5, restart_backoff_max=0.8), store)
        try:
            with pytest.raises(Unavailable, match="failed to start"):
                await pool.acquire("broken")
            # Right away: refused without spawning again, naming the cause and when to retry.
            for _ in range(5):
                with pytest.raises(Unavailable) as err:
                    await pool.acquire("broken")
                assert "failed to load 1 time(s) in a row" in str(err.value)
                assert "ValueError: config.json says hidden_size=0" in str(err.value)
                assert err.value.retry_after == 1
            assert len(store.spawns("broken")) == 1
            await asyncio.sleep(0.55)
            with pytest.raises(Unavailable, match="failed to start"):
                await pool.acquire("broken")  # the backoff ran out: a fresh attempt
            assert len(store.spawns("broken")) == 2
            with pytest.raises(Unavailable, match="failed to load 2 time"):
                await pool.acquire("broken")
            await asyncio.sleep(0.85)  # doubled, capped at restart_backoff_max
            (store.root / "views" / "broken" / "mode").write_text("ok")  # fixed: loads, and the count resets
            lease = await pool.acquire("broken")
            assert len(store.spawns("broken")) == 3
            assert pool.backoff.blocked(lease.digest) is None
        finally:
            await pool.close()

    run(scenario())


def test_worker_that_never_gets_ready_times_out_and_is_killed(settings: Settings, store: FakeStore) -> None:
    store.add("stuck", mode="hang")

    async def scenario() -> None:
        pool = make_pool(dataclasses.replace(settings, load_timeout=1.5), store)
        with pytest.raises(Timeout, match="did not become ready within 1.5s"):
            await pool.acquire("stuck")
        [pid] = store.spawns("stuck")
        await eventually(lambda: not pid_alive(pid))
        await pool.close()

    run(scenario())


def test_crashed_worker_is_forgotten_and_the_next_acquire_starts_a_fresh_one(settings: Settings, store: FakeStore) -> None:
    store.add("tiny")

    async def scenario() -> None:
        pool = make_pool(settings, store)
        pool.start()
        try:
            first = await pool.acquire("tiny", "r1")
            [pid] = store.spawns("tiny")
            os.kill(pid, signal.SIGKILL)
            await eventually(lambda: pool.loaded_names() == [])
            await pool.release(first.lease_id)  # a late release of the dead worker's lease is harmless
            second = await pool.acquire("tiny", "r2")
            assert second.worker_address != first.worker_address
            assert len(store.spawns("tiny")) == 2
            assert pid_alive(store.spawns("tiny")[1])
        finally:
            await pool.close()
        log = (settings.logs_dir / "worker-tiny_latest.stderr.log")
        assert log.exists()

    run(scenario())


def test_zero_keep_alive_unloads_when_the_last_lease_ends(settings: Settings, store: FakeStore) -> None:
    store.add("tiny")

    async def scenario() -> None:
        pool = make_pool(settings, store)
        pool.start()
        try:
            a = await pool.acquire("tiny", "r1", keep_alive_s=0)
            b = await pool.acquire("tiny", "r2", keep_alive_s=0)
            [pid] = store.spawns("tiny")
            await pool.release(a.lease_id)
            await asyncio.sleep(0.3)
            assert pid_alive(pid)  # still leased by b
            await pool.release(b.lease_id)
            await eventually(lambda: not pid_alive(pid))
            assert await pool.list_loaded() == []
        finally:
            await pool.close()

    run(scenario())


def test_keep_alive_expiry_unloads_an_idle_worker(settings: Settings, store: FakeStore) -> None:
    store.add("tiny")

    async def scenario() -> None:
        pool = make_pool(settings, store)
        pool.start()
        try:
            lease = await pool.acquire("tiny", "r1", keep_alive_s=0.5)
            [pid] = store.spawns("tiny")
            [info] = await pool.list_loaded()
            await pool.release(lease.lease_id)
            await asyncio.sleep(0.2)
            assert pid_alive(pid)
            await eventually(lambda: not pid_alive(pid), timeout=3)
        finally:
            await pool.close()

    run(scenario())


def test_negative_keep_alive_shows_forever_in_ps(settings: Settings, store: FakeStore) -> None:
    store.add("tiny")

    async def scenario() -> None:
        pool = make_pool(settings, store)
        pool.start()
        try:
            lease = await pool.acquire("tiny", "r1", keep_alive_s=-1)
            await pool.release(lease.lease_id)
            [info] = await pool.list_loaded()
            assert int(info.expires_at[:4]) > 2300
            assert info.in_flight == 0
        finally:
            await pool.close()

    run(scenario())


def test_release_of_unknown_lease_is_not_found(settings: Settings, store: FakeStore) -> None:
    async def scenario() -> None:
        pool = make_pool(settings, store)
        with pytest.raises(NotFound):
            await pool.release("no-such-lease")

    run(scenario())


def test_stop_kills_the_worker_and_unknown_model_is_not_loaded(settings: Settings, store: FakeStore) -> None:
    store.add("tiny")

    async def scenario() -> None:
        pool = make_pool(settings, store)
        try:
            await pool.acquire("tiny", "r1")
            [pid] = store.spawns("tiny")
            await pool.stop_model("tiny")  # short name matches "tiny:latest"
            assert not pid_alive(pid)
            assert await pool.list_loaded() == []
            with pytest.raises(NotFound, match="model 'tiny' is not loaded"):
                await pool.stop_model("tiny")
            with pytest.raises(NotFound, match="model 'ghost' is not loaded"):
                await pool.stop_model("ghost")
        finally:
            await pool.close()

    run(scenario())


def test_stop_sigkills_a_worker_that_ignores_sigterm(settings: Settings, store: FakeStore) -> None:
    store.add("stubborn", mode="stubborn")

    async def scenario() -> None:
        pool = make_pool(settings, store, stop_grace=0.5)
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
    from mlxserve.services.supervisor.pool import WorkerPool
    sys.path.insert(0, sys.argv[2])
    from tests.unit.test_supervisor import FakeStore

    async def main():
        settings = load_settings({"home": sys.argv[1]}, env={})
        store = FakeStore(Path(sys.argv[1]))
        store.add("tiny")
        pool = WorkerPool(settings, store, command_for=store.command_for)
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


def test_grpc_service_acquire_release_list_stop(settings: Settings, store: FakeStore) -> None:
    store.add("tiny")

    async def scenario() -> None:
        stop = asyncio.Event()
        pool = make_pool(settings, store)
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


def test_a_keep_alive_past_year_9999_reads_as_forever_in_ps_instead_of_failing():
    """The fuzzer found it: keep_alive 1e300 s made every later ps a 500 (datetime overflow)."""
    import time as _time

    from mlxserve.services.supervisor.pool import rfc3339

    assert rfc3339(_time.time() + 1e300) == rfc3339(float("inf"))
    assert rfc3339(0.0) == "1970-01-01T00:00:00Z"


# -- float32 on the CPU backend: the expected size, the worker's budget -----------------------------


def add_quantized(store: FakeStore, name: str, *, size: int, bits: int = 4) -> ModelRef:
    """A fake model whose config.json says it is `bits`-bit quantized."""
    ref = store.add(name)
    (Path(ref.view_path) / "config.json").write_text(f'{{"quantization": {{"group_size": 64, "bits": {bits}}}}}')
    ref = dataclasses.replace(ref, size=size)
    store.models[name] = store.models[ref.name] = ref
    return ref


def test_a_quantized_model_on_the_cpu_reserves_its_float32_size_and_evicts_enough(settings: Settings, store: FakeStore) -> None:
    store.add("a")                                  # reports 123456 bytes once loaded
    add_quantized(store, "q", size=10_000, bits=4)  # 4-bit: ~80000 bytes in float32

    async def scenario() -> None:
        pool = make_pool(dataclasses.replace(settings, memory_budget=200_000, max_loaded_models=0, cpu_float32="auto"), store)
        pool.cpu_backend = True
        try:
            await pool.release((await pool.acquire("a")).lease_id)
            assert pool.expected_memory(store.models["q"]) == 80_000
            # 123456 + 10000 would fit the budget; 123456 + 80000 does not: "a" must go.
            await pool.acquire("q")
            assert pool.loaded_names() == ["q:latest"]
            # The worker is told the whole budget it may use, which its float32 weights fit.
            assert int((Path(store.models["q"].view_path) / "budget").read_text()) == 200_000
        finally:
            await pool.close()

    run(scenario())


def test_a_worker_counts_its_reported_memory_as_soon_as_it_is_ready(settings: Settings, store: FakeStore) -> None:
    add_quantized(store, "q", size=10_000, bits=4)

    async def scenario() -> None:
        pool = make_pool(dataclasses.replace(settings, memory_budget=200_000, cpu_float32="always"), store)
        pool.cpu_backend = True
        try:
            await pool.acquire("q")
            assert pool.residency.memory(store.models["q"].digest) == 123456  # not the 80000 estimate
        finally:
            await pool.close()

    run(scenario())


def test_gpu_workers_and_cpu_float32_never_reserve_the_stored_size(settings: Settings, store: FakeStore) -> None:
    ref = add_quantized(store, "q", size=10_000, bits=4)
    gpu = make_pool(settings, store)
    gpu.cpu_backend = False
    never = make_pool(dataclasses.replace(settings, cpu_float32="never"), store)
    never.cpu_backend = True
    assert gpu.expected_memory(ref) == 10_000
    assert never.expected_memory(ref) == 10_000


def test_ps_counts_the_requests_a_worker_holds_when_one_lease_serves_several(settings: Settings, store: FakeStore) -> None:
    # A gateway shares one lease among its requests for a model: in_flight comes from the worker's own
    # count when that is larger ("busy" reports one request running while no lease is held here).
    store.add("busy", mode="busy")

    async def scenario() -> None:
        pool = make_pool(settings, store)
        pool.start()
        try:
            lease = await pool.acquire("busy", "r1")
            await pool.release(lease.lease_id)
            [info] = await pool.list_loaded()
            assert info.in_flight == 1
        finally:
            await pool.close()

    run(scenario())
