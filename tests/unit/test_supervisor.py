"""The worker pool's residency, loading, crash and keep-alive behaviour, driven with a fake launcher
(tests/fixtures/fake_launcher.py) and a fake clock: no process is spawned and nothing sleeps.
What only real processes can show (signals, stderr files, sockets) is in
tests/e2e/test_supervisor_processes.py."""

from __future__ import annotations

import asyncio
import dataclasses
import os
from pathlib import Path
from typing import Any, Awaitable, Callable

import pytest

from mlxserve.services.common.config import WORKER_MEMORY_BUDGET_ENV, Settings, load_settings
from mlxserve.services.common.errors import Busy, NotFound, Timeout, Unavailable
from mlxserve.services.common.times import rfc3339
from mlxserve.services.common.worker_logs import worker_log_name
from mlxserve.services.store.precision import weights_precision
from mlxserve.services.supervisor.pool import WorkerPool
from mlxserve.services.supervisor.processes import ProcessLauncher, log_path_for
from mlxserve.services.worker.main import log_service_name
from tests.fixtures.fake_clock import FakeClock, settle
from tests.fixtures.fake_launcher import FAIL_STDERR, REPORTED_MEMORY, FakeLauncher, FakeResolver


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    return dataclasses.replace(load_settings({"home": tmp_path}, env={}), load_timeout=15.0)


@dataclasses.dataclass
class World:
    """One pool under test with its fakes (made inside the test's event loop)."""

    settings: Settings
    clock: FakeClock
    launcher: FakeLauncher
    store: FakeResolver

    def pool(self, stop_grace: float = 1.0, **overrides: Any) -> WorkerPool:
        settings = dataclasses.replace(self.settings, **overrides)
        return WorkerPool(settings, self.store, self.launcher, clock=self.clock, stop_grace=stop_grace, cpu_backend=False)

    def spawns(self, name: str) -> list:
        return self.launcher.spawns(f"{name}:latest")


def run(settings: Settings, scenario: Callable[[World], Awaitable[Any]]) -> Any:
    async def main() -> Any:
        clock = FakeClock()
        return await scenario(World(settings, clock, FakeLauncher(clock), FakeResolver()))

    return asyncio.run(main())


# -- limits and eviction -----------------------------------------------------------------------------


def test_default_limits_allow_three_models_and_most_of_physical_memory(settings: Settings) -> None:
    async def scenario(w: World) -> None:
        pool = w.pool()
        assert pool.limits.max_models == 3
        assert 0 < pool.limits.memory_budget <= os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
        assert w.pool(memory_budget=12345).limits.memory_budget == 12345

    run(settings, scenario)


def test_loading_past_max_loaded_models_evicts_the_least_recently_used_idle_model(settings: Settings) -> None:
    async def scenario(w: World) -> None:
        for name in ("a", "b", "c"):
            w.store.add(name)
        pool = w.pool(max_loaded_models=2)
        try:
            la = await pool.acquire("a")
            lb = await pool.acquire("b")
            await pool.release(la.lease_id)
            await pool.release(lb.lease_id)
            await pool.acquire("c")
            assert pool.loaded_names() == ["b:latest", "c:latest"]
            events = w.launcher.events
            assert not w.spawns("a")[0].alive and events.index(("stop", "a:latest")) < events.index(("spawn", "c:latest"))
            assert w.spawns("b")[0].alive
        finally:
            await pool.close()

    run(settings, scenario)


def test_a_load_waits_for_a_busy_model_to_go_idle_then_evicts_it(settings: Settings) -> None:
    async def scenario(w: World) -> None:
        w.store.add("a")
        w.store.add("b")
        pool = w.pool(max_loaded_models=1)
        try:
            la = await pool.acquire("a")
            waiting = asyncio.ensure_future(pool.acquire("b"))
            await w.clock.advance(0.3125)
            assert not waiting.done() and w.spawns("b") == []  # a is busy: b waits
            await pool.release(la.lease_id)
            lb = await waiting
            assert lb.model == "b:latest" and lb.load_duration_s >= 0.3
            assert pool.loaded_names() == ["b:latest"]
        finally:
            await pool.close()

    run(settings, scenario)


def test_a_load_that_finds_no_room_in_time_is_busy_with_retry_after(settings: Settings) -> None:
    async def scenario(w: World) -> None:
        w.store.add("a")
        w.store.add("b")
        pool = w.pool(max_loaded_models=1, load_timeout=0.5)
        try:
            await pool.acquire("a")
            waiting = asyncio.ensure_future(pool.acquire("b"))
            await w.clock.advance(0.45, step=0.15)
            assert not waiting.done()  # waits the whole load_timeout for room
            await w.clock.advance(0.05)
            with pytest.raises(Busy) as err:
                await waiting
            assert "cannot load b:latest: max_loaded_models=1 models are loaded" in str(err.value)
            assert err.value.retry_after == 5.0
            assert w.spawns("b") == [] and pool.loaded_names() == ["a:latest"]
            # Not the model's fault: no backoff, it loads as soon as there is room.
            await pool.stop_model("a")
            assert (await pool.acquire("b")).model == "b:latest"
        finally:
            await pool.close()

    run(settings, scenario)


def test_memory_budget_counts_what_workers_report_and_evicts_to_fit(settings: Settings) -> None:
    async def scenario(w: World) -> None:
        for name in ("a", "b", "c"):
            w.store.add(name)  # 4096 bytes on disk; the worker reports 123456 bytes in use
        pool = w.pool(memory_budget=200_000, max_loaded_models=0)
        try:
            await pool.release((await pool.acquire("a")).lease_id)
            await pool.check_workers()
            await pool.release((await pool.acquire("b")).lease_id)  # 123456 + 4096 fits
            assert pool.loaded_names() == ["a:latest", "b:latest"]
            await pool.check_workers()  # now 2 x 123456: over budget with anything more
            await pool.acquire("c")
            assert pool.loaded_names() == ["b:latest", "c:latest"]
            assert not w.spawns("a")[0].alive
        finally:
            await pool.close()

    run(settings, scenario)


# -- wedged workers ------------------------------------------------------------------------------------


def test_a_wedged_worker_is_killed_and_the_next_acquire_starts_a_fresh_one(settings: Settings) -> None:
    async def scenario(w: World) -> None:
        w.store.add("stuck")
        w.store.add("steady")
        w.launcher.modes.update({"stuck:latest": "wedge", "steady:latest": "busy"})
        pool = w.pool(wedge_timeout=0.6)
        pool.start()
        try:
            stuck = await pool.acquire("stuck")
            steady = await pool.acquire("steady")
            [worker] = w.spawns("stuck")
            await w.clock.advance(0.6, step=0.15)
            assert worker.alive  # not before wedge_timeout without progress
            await w.clock.advance(1.2, step=0.15)
            assert not worker.alive and worker.signals == ["SIGKILL"]
            assert pool.loaded_names() == ["steady:latest"]  # making progress: left alone
            await pool.release(stuck.lease_id)  # the gateway's late release is harmless
            w.launcher.modes["stuck:latest"] = "ok"
            again = await pool.acquire("stuck")
            assert again.worker_address != stuck.worker_address and len(w.spawns("stuck")) == 2
            assert w.spawns("steady")[0].alive
            await pool.release(steady.lease_id)
        finally:
            await pool.close()

    run(settings, scenario)


def test_an_idle_worker_is_never_called_wedged(settings: Settings) -> None:
    async def scenario(w: World) -> None:
        w.store.add("stuck")
        w.launcher.modes["stuck:latest"] = "wedge"  # reports a request running but holds no lease
        pool = w.pool(wedge_timeout=0.3)
        pool.start()
        try:
            await pool.release((await pool.acquire("stuck")).lease_id)
            await w.clock.advance(1.0, step=0.075)
            assert pool.loaded_names() == ["stuck:latest"]
        finally:
            await pool.close()

    run(settings, scenario)


# -- loading -------------------------------------------------------------------------------------------


def test_a_load_nobody_waits_for_any_more_is_abandoned(settings: Settings) -> None:
    async def scenario(w: World) -> None:
        w.store.add("slow")
        w.launcher.modes["slow:latest"] = "slow"
        pool = w.pool()
        try:
            waiters = [asyncio.ensure_future(pool.acquire("slow")) for _ in range(2)]
            await settle()
            [worker] = w.spawns("slow")
            waiters[0].cancel()
            await settle()
            assert worker.alive  # one request still waits: the load goes on
            waiters[1].cancel()
            await settle()
            assert not worker.alive
            assert pool.loaded_names() == [] and await pool.list_loaded() == []
            assert pool.residency.keys() == []
            # Not a failure: the next request loads at once, no backoff.
            again = asyncio.ensure_future(pool.acquire("slow"))
            await w.clock.advance(1.0)
            assert (await again).model == "slow:latest"
        finally:
            await pool.close()

    run(settings, scenario)


def test_a_load_asked_with_keep_alive_finishes_even_if_the_client_leaves(settings: Settings) -> None:
    async def scenario(w: World) -> None:
        w.store.add("slow")
        w.launcher.modes["slow:latest"] = "slow"
        pool = w.pool()
        pool.start()
        try:
            waiter = asyncio.ensure_future(pool.acquire("slow", keep_alive_s=0.8))
            await settle()
            assert len(w.spawns("slow")) == 1
            waiter.cancel()
            await w.clock.advance(1.0)
            assert pool.loaded_names() == ["slow:latest"]
            [info] = await pool.list_loaded()
            assert info.in_flight == 0
            # Idle from the end of the load, it then expires with the keep-alive it was asked for.
            await w.clock.advance(0.7)
            assert pool.loaded_names() == ["slow:latest"]
            await w.clock.advance(0.1)
            assert pool.loaded_names() == []
        finally:
            await pool.close()

    run(settings, scenario)


def test_acquire_starts_a_worker_and_ps_shows_what_it_reports(settings: Settings) -> None:
    async def scenario(w: World) -> None:
        w.store.add("tiny")
        w.launcher.modes["tiny:latest"] = "slow"  # ready one second after it starts
        pool = w.pool()
        pool.start()
        try:
            first = asyncio.ensure_future(pool.acquire("tiny", "r1"))
            await w.clock.advance(1.0)
            lease = await first
            assert lease.model == "tiny:latest"
            assert lease.load_duration_s == 1.0
            assert lease.capabilities == ("completion",)
            [info] = await pool.list_loaded()
            [worker] = w.spawns("tiny")
            assert info.pid == worker.pid
            assert info.memory_bytes == REPORTED_MEMORY and info.size == 4096 and info.size_vram == 0
            assert info.in_flight == 1 and info.context_length == 2048
            assert info.details is not None and info.details.family == "llama"  # from Resolve: no second call
            # Warm: a second request leases the same worker without waiting.
            again = await pool.acquire("tiny", "r2")
            assert again.worker_address == lease.worker_address and again.load_duration_s == 0.0
            assert len(w.spawns("tiny")) == 1
        finally:
            await pool.close()
        assert not w.spawns("tiny")[0].alive

    run(settings, scenario)


def test_concurrent_acquires_share_one_load(settings: Settings) -> None:
    async def scenario(w: World) -> None:
        w.store.add("slow")
        w.launcher.modes["slow:latest"] = "slow"
        pool = w.pool()
        try:
            acquires = asyncio.gather(*(pool.acquire("slow", f"r{i}") for i in range(4)))
            await w.clock.advance(1.0)
            leases = await acquires
            assert len({l.worker_address for l in leases}) == 1
            assert len({l.lease_id for l in leases}) == 4
            assert len(w.spawns("slow")) == 1
            assert all(l.load_duration_s >= 0.9 for l in leases)
        finally:
            await pool.close()

    run(settings, scenario)


def test_unknown_model_is_not_found(settings: Settings) -> None:
    async def scenario(w: World) -> None:
        pool = w.pool()
        with pytest.raises(NotFound, match="model 'ghost' not found"):
            await pool.acquire("ghost")
        await pool.close()

    run(settings, scenario)


def test_worker_that_exits_during_load_fails_the_acquire_with_its_cause(settings: Settings) -> None:
    async def scenario(w: World) -> None:
        w.store.add("broken")
        w.launcher.modes["broken:latest"] = "fail"
        pool = w.pool()
        with pytest.raises(Unavailable) as err:
            await pool.acquire("broken")
        msg = str(err.value)
        assert msg.startswith("worker for broken:latest failed to start (exit code 3)")
        assert FAIL_STDERR[-1] in msg
        assert await pool.list_loaded() == []
        await pool.close()

    run(settings, scenario)


def test_a_model_that_keeps_failing_to_load_is_retried_with_backoff_naming_the_cause(settings: Settings) -> None:
    async def scenario(w: World) -> None:
        w.store.add("broken")
        w.launcher.modes["broken:latest"] = "fail"
        pool = w.pool(restart_backoff=0.5, restart_backoff_max=0.8)
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
            assert len(w.spawns("broken")) == 1
            await w.clock.advance(0.55)
            with pytest.raises(Unavailable, match="failed to start"):
                await pool.acquire("broken")  # the backoff ran out: a fresh attempt
            assert len(w.spawns("broken")) == 2
            with pytest.raises(Unavailable, match="failed to load 2 time"):
                await pool.acquire("broken")
            await w.clock.advance(0.85)  # doubled, capped at restart_backoff_max
            w.launcher.modes["broken:latest"] = "ok"  # fixed: loads, and the count resets
            lease = await pool.acquire("broken")
            assert len(w.spawns("broken")) == 3
            assert pool.backoff.blocked(lease.digest) is None
        finally:
            await pool.close()

    run(settings, scenario)


def test_worker_that_never_gets_ready_times_out_and_is_stopped(settings: Settings) -> None:
    async def scenario(w: World) -> None:
        w.store.add("stuck")
        w.launcher.modes["stuck:latest"] = "hang"
        pool = w.pool(load_timeout=1.5)
        waiting = asyncio.ensure_future(pool.acquire("stuck"))
        await w.clock.advance(1.5)
        with pytest.raises(Timeout, match="did not become ready within 1.5s"):
            await waiting
        [worker] = w.spawns("stuck")
        assert not worker.alive and pool.loaded_names() == []
        await pool.close()

    run(settings, scenario)


# -- crashes, keep-alive, stop -----------------------------------------------------------------------


def test_crashed_worker_is_forgotten_and_the_next_acquire_starts_a_fresh_one(settings: Settings) -> None:
    async def scenario(w: World) -> None:
        w.store.add("tiny")
        pool = w.pool()
        pool.start()
        try:
            first = await pool.acquire("tiny", "r1")
            w.spawns("tiny")[0].crash()
            await settle()
            assert pool.loaded_names() == []
            await pool.release(first.lease_id)  # a late release of the dead worker's lease is harmless
            second = await pool.acquire("tiny", "r2")
            assert second.worker_address != first.worker_address
            assert len(w.spawns("tiny")) == 2
            assert w.spawns("tiny")[1].alive
        finally:
            await pool.close()

    run(settings, scenario)


def test_a_worker_that_died_unnoticed_is_never_handed_out(settings: Settings) -> None:
    async def scenario(w: World) -> None:
        w.store.add("tiny")
        pool = w.pool()
        try:
            first = await pool.acquire("tiny")
            w.spawns("tiny")[0].crash()  # dead; its exit watcher has not run yet
            second = await pool.acquire("tiny")
            assert second.worker_address != first.worker_address and len(w.spawns("tiny")) == 2
        finally:
            await pool.close()

    run(settings, scenario)


def test_zero_keep_alive_unloads_when_the_last_lease_ends(settings: Settings) -> None:
    async def scenario(w: World) -> None:
        w.store.add("tiny")
        pool = w.pool()
        pool.start()
        try:
            a = await pool.acquire("tiny", "r1", keep_alive_s=0)
            b = await pool.acquire("tiny", "r2", keep_alive_s=0)
            [worker] = w.spawns("tiny")
            await pool.release(a.lease_id)
            await w.clock.advance(0.3)
            assert worker.alive  # still leased by b
            await pool.release(b.lease_id)
            await settle()
            assert not worker.alive
            assert await pool.list_loaded() == []
        finally:
            await pool.close()

    run(settings, scenario)


def test_keep_alive_expiry_unloads_an_idle_worker(settings: Settings) -> None:
    async def scenario(w: World) -> None:
        w.store.add("tiny")
        pool = w.pool()
        pool.start()
        try:
            lease = await pool.acquire("tiny", "r1", keep_alive_s=0.5)
            [worker] = w.spawns("tiny")
            await pool.release(lease.lease_id)
            [info] = await pool.list_loaded()
            assert info.expires_at == rfc3339(w.clock.wall() + 0.5)
            await w.clock.advance(0.2)
            assert worker.alive
            await w.clock.advance(0.3)
            assert not worker.alive and pool.loaded_names() == []
        finally:
            await pool.close()

    run(settings, scenario)


def test_negative_keep_alive_shows_forever_in_ps(settings: Settings) -> None:
    async def scenario(w: World) -> None:
        w.store.add("tiny")
        pool = w.pool()
        pool.start()
        try:
            lease = await pool.acquire("tiny", "r1", keep_alive_s=-1)
            await pool.release(lease.lease_id)
            [info] = await pool.list_loaded()
            assert int(info.expires_at[:4]) > 2300
            assert info.in_flight == 0
        finally:
            await pool.close()

    run(settings, scenario)


def test_release_of_unknown_lease_is_not_found(settings: Settings) -> None:
    async def scenario(w: World) -> None:
        pool = w.pool()
        with pytest.raises(NotFound):
            await pool.release("no-such-lease")

    run(settings, scenario)


def test_stop_kills_the_worker_and_unknown_model_is_not_loaded(settings: Settings) -> None:
    async def scenario(w: World) -> None:
        w.store.add("tiny")
        pool = w.pool()
        try:
            await pool.acquire("tiny", "r1")
            [worker] = w.spawns("tiny")
            await pool.stop_model("tiny")  # short name matches "tiny:latest"
            assert not worker.alive
            assert await pool.list_loaded() == []
            with pytest.raises(NotFound, match="model 'tiny' is not loaded"):
                await pool.stop_model("tiny")
            with pytest.raises(NotFound, match="model 'ghost' is not loaded"):
                await pool.stop_model("ghost")
        finally:
            await pool.close()

    run(settings, scenario)


def test_a_keep_alive_past_year_9999_reads_as_forever_in_ps_instead_of_failing() -> None:
    """The fuzzer found it: keep_alive 1e300 s made every later ps a 500 (datetime overflow)."""
    now = 1_780_000_000.0
    assert rfc3339(now + 1e300, now=now) == rfc3339(float("inf"), now=now)
    assert int(rfc3339(float("inf"), now=now)[:4]) > 2300
    assert rfc3339(0.0) == "1970-01-01T00:00:00Z"


# -- float32 on the CPU backend: the expected size, the worker's budget -----------------------------


def test_a_quantized_model_on_the_cpu_reserves_its_float32_size_and_evicts_enough(settings: Settings) -> None:
    async def scenario(w: World) -> None:
        w.store.add("a")                                    # reports 123456 bytes once loaded
        q = w.store.add("q", size=10_000, quantization_bits=4)  # 4-bit: ~80000 bytes in float32
        pool = w.pool(memory_budget=200_000, max_loaded_models=0, cpu_float32="auto")
        pool.cpu_backend = True
        try:
            await pool.release((await pool.acquire("a")).lease_id)
            assert pool.expected_memory(q) == 80_000
            # 123456 + 10000 would fit the budget; 123456 + 80000 does not: "a" must go.
            await pool.acquire("q")
            assert pool.loaded_names() == ["q:latest"]
            # The worker is told the whole budget it may use, which its float32 weights fit.
            assert w.spawns("q")[0].memory_budget == 200_000
        finally:
            await pool.close()

    run(settings, scenario)


def test_a_worker_is_told_its_memory_budget_in_its_environment(settings: Settings) -> None:
    env = ProcessLauncher(settings, cpu_backend=True).env_for(200_000)
    assert env[WORKER_MEMORY_BUDGET_ENV] == "200000"
    assert env["MLXSERVE_PARENT_PID"] == str(os.getpid())


def test_the_store_reads_the_weights_precision_resolve_sends(tmp_path: Path) -> None:
    (tmp_path / "config.json").write_text('{"quantization": {"group_size": 64, "bits": 4}, "torch_dtype": "bfloat16"}')
    assert weights_precision(tmp_path) == (4, "bfloat16")
    assert weights_precision(tmp_path / "missing") == (0, "")


def test_a_worker_counts_its_reported_memory_as_soon_as_it_is_ready(settings: Settings) -> None:
    async def scenario(w: World) -> None:
        q = w.store.add("q", size=10_000, quantization_bits=4)
        pool = w.pool(memory_budget=200_000, cpu_float32="always")
        pool.cpu_backend = True
        try:
            await pool.acquire("q")
            assert pool.residency.memory(q.digest) == REPORTED_MEMORY  # not the 80000 estimate
        finally:
            await pool.close()

    run(settings, scenario)


def test_gpu_workers_and_cpu_float32_never_reserve_the_stored_size(settings: Settings) -> None:
    async def scenario(w: World) -> None:
        ref = w.store.add("q", size=10_000, quantization_bits=4)
        gpu = w.pool()
        gpu.cpu_backend = False
        never = w.pool(cpu_float32="never")
        never.cpu_backend = True
        assert gpu.expected_memory(ref) == 10_000
        assert never.expected_memory(ref) == 10_000

    run(settings, scenario)


def test_ps_counts_the_requests_a_worker_holds_when_one_lease_serves_several(settings: Settings) -> None:
    # A gateway shares one lease among its requests for a model: in_flight comes from the worker's own
    # count when that is larger ("busy" reports one request running while no lease is held here).
    async def scenario(w: World) -> None:
        w.store.add("busy")
        w.launcher.modes["busy:latest"] = "busy"
        pool = w.pool()
        pool.start()
        try:
            lease = await pool.acquire("busy", "r1")
            await pool.release(lease.lease_id)
            [info] = await pool.list_loaded()
            assert info.in_flight == 1
        finally:
            await pool.close()

    run(settings, scenario)


# -- the worker's log files ------------------------------------------------------------------------


def test_the_worker_and_the_supervisor_name_a_workers_logs_alike(settings: Settings) -> None:
    assert worker_log_name("hf.co/org/Model:Q4_K_M") == "worker-hf.co_org_Model_Q4_K_M"
    assert log_service_name("tiny:latest") == "worker-tiny_latest"
    assert log_path_for(settings.logs_dir, "tiny:latest") == settings.logs_dir / "worker-tiny_latest.stderr.log"
    assert log_service_name("") == f"worker-{os.getpid()}"  # unnamed: still one file per worker
