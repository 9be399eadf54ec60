"""A frozen worker (SIGSTOP, a deadlock) is noticed without traffic and replaced: the pool's
monitor and Acquire over a fake launcher and a fake clock (nothing spawned, nothing sleeps).
The same with a real SIGSTOPped process is in tests/e2e/test_chaos.py."""

from __future__ import annotations

import asyncio
import dataclasses
from pathlib import Path
from typing import Any, Awaitable, Callable

import pytest

from mlxserve.services.common.config import Settings, load_settings
from mlxserve.services.supervisor.health import MAX_MISSES, UNRESPONSIVE, WEDGED, WorkerHealth
from mlxserve.services.supervisor.pool import WorkerPool
from mlxserve.v1 import worker_pb2
from tests.fixtures.fake_clock import FakeClock
from tests.fixtures.fake_launcher import FakeLauncher, FakeResolver, FakeWorker


class FreezingLauncher(FakeLauncher):
    """Workers whose pid is in `frozen` are alive but answer nothing (a SIGSTOPped process)."""

    def __init__(self, clock: FakeClock) -> None:
        super().__init__(clock)
        self.frozen: set[int] = set()
        self.pings = 0

    async def info(self, worker: FakeWorker) -> worker_pb2.InfoResponse | None:
        if worker.pid in self.frozen:
            await self.clock.sleep(1.0)  # as the real Info call: it waits for its timeout
            return None
        return await super().info(worker)

    async def ping(self, worker: FakeWorker) -> bool:
        self.pings += 1
        return worker.alive and worker.pid not in self.frozen


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    return dataclasses.replace(load_settings({"home": tmp_path}, env={}), load_timeout=15.0)


def run(settings: Settings, scenario: Callable[[WorkerPool, FreezingLauncher, FakeResolver, FakeClock], Awaitable[Any]]) -> Any:
    async def main() -> Any:
        clock = FakeClock()
        launcher, store = FreezingLauncher(clock), FakeResolver()
        pool = WorkerPool(settings, store, launcher, clock=clock, stop_grace=1.0, cpu_backend=False)
        try:
            return await scenario(pool, launcher, store, clock)
        finally:
            await pool.close()

    return asyncio.run(main())


def test_an_idle_frozen_worker_is_killed_and_the_next_request_gets_a_fresh_one(settings: Settings) -> None:
    async def scenario(pool: WorkerPool, launcher: FreezingLauncher, store: FakeResolver, clock: FakeClock) -> None:
        store.add("tiny")
        pool.start()
        await pool.release((await pool.acquire("tiny")).lease_id)  # idle: no lease, no traffic
        [first] = launcher.spawns("tiny:latest")
        launcher.frozen.add(first.pid)
        await clock.advance(MAX_MISSES - 0.5, step=0.25)
        assert first.alive  # a few slow answers are no freeze
        await clock.advance(3.0, step=0.25)
        assert not first.alive and first.signals == ["SIGKILL"]
        assert pool.loaded_names() == []
        lease = await pool.acquire("tiny")
        second = launcher.spawns("tiny:latest")[-1]
        assert second is not first and lease.worker_address == second.address

    run(settings, scenario)


def test_a_frozen_worker_holding_a_lease_is_killed_long_before_the_wedge_timeout(settings: Settings) -> None:
    async def scenario(pool: WorkerPool, launcher: FreezingLauncher, store: FakeResolver, clock: FakeClock) -> None:
        store.add("tiny")
        pool.start()
        lease = await pool.acquire("tiny")
        [worker] = launcher.spawns("tiny:latest")
        launcher.frozen.add(worker.pid)
        await clock.advance(MAX_MISSES + 3.0, step=0.25)
        assert settings.wedge_timeout > MAX_MISSES + 3.0 and not worker.alive
        await pool.release(lease.lease_id)  # the gateway's late release is harmless

    run(settings, scenario)


def test_a_worker_that_answers_again_after_a_slow_moment_is_left_alone(settings: Settings) -> None:
    async def scenario(pool: WorkerPool, launcher: FreezingLauncher, store: FakeResolver, clock: FakeClock) -> None:
        store.add("tiny")
        pool.start()
        await pool.acquire("tiny")
        [worker] = launcher.spawns("tiny:latest")
        for _ in range(4):
            launcher.frozen.add(worker.pid)
            await clock.advance(MAX_MISSES - 2.0, step=0.25)  # misses fewer Info calls in a row than MAX_MISSES
            launcher.frozen.discard(worker.pid)
            await clock.advance(1.5, step=0.25)
        assert worker.alive and pool.loaded_names() == ["tiny:latest"]

    run(settings, scenario)


def test_acquire_replaces_a_worker_that_missed_its_last_check_without_waiting_for_the_monitor(settings: Settings) -> None:
    async def scenario(pool: WorkerPool, launcher: FreezingLauncher, store: FakeResolver, clock: FakeClock) -> None:
        store.add("tiny")
        await pool.release((await pool.acquire("tiny")).lease_id)
        [first] = launcher.spawns("tiny:latest")
        launcher.frozen.add(first.pid)
        task = asyncio.ensure_future(pool.check_workers())  # one monitor pass: one miss, not yet a verdict
        await clock.advance(1.0)
        await task
        assert first.alive
        lease = await pool.acquire("tiny")
        assert not first.alive and launcher.pings == 1
        assert lease.worker_address == launcher.spawns("tiny:latest")[-1].address != first.address

    run(settings, scenario)


def test_a_healthy_worker_costs_acquire_no_extra_ping(settings: Settings) -> None:
    async def scenario(pool: WorkerPool, launcher: FreezingLauncher, store: FakeResolver, clock: FakeClock) -> None:
        store.add("tiny")
        await pool.release((await pool.acquire("tiny")).lease_id)
        await pool.check_workers()
        await pool.release((await pool.acquire("tiny")).lease_id)
        assert launcher.pings == 0 and len(launcher.spawns("tiny:latest")) == 1

    run(settings, scenario)


def test_verdicts_unresponsive_after_the_misses_and_wedged_only_while_busy() -> None:
    health = WorkerHealth(max_misses=2)
    assert health.observe(1, answered=False, steps=-1, busy=False, now=0.0, wedge_timeout=10) is None
    assert health.observe(1, answered=False, steps=-1, busy=False, now=1.0, wedge_timeout=10) == UNRESPONSIVE
    assert health.observe(2, answered=True, steps=5, busy=True, now=0.0, wedge_timeout=10) is None
    assert health.observe(2, answered=True, steps=5, busy=True, now=9.0, wedge_timeout=10) is None
    assert health.observe(2, answered=True, steps=5, busy=True, now=10.0, wedge_timeout=10) == WEDGED
    assert health.observe(3, answered=True, steps=5, busy=False, now=0.0, wedge_timeout=10) is None
    assert health.observe(3, answered=True, steps=5, busy=False, now=50.0, wedge_timeout=10) is None  # idle: not wedged
    assert health.observe(3, answered=True, steps=5, busy=True, now=51.0, wedge_timeout=0) is None  # wedge check off
    assert MAX_MISSES >= 2
    with pytest.raises(ValueError):
        WorkerHealth(max_misses=0)


def test_leases_of_a_gateway_that_died_end_after_the_request_timeout_and_the_model_can_unload(settings: Settings) -> None:
    settings = dataclasses.replace(settings, request_timeout=30.0, keep_alive=5.0)

    async def scenario(pool: WorkerPool, launcher: FreezingLauncher, store: FakeResolver, clock: FakeClock) -> None:
        store.add("orphaned")
        store.add("working")
        launcher.modes["working:latest"] = "busy"  # steps on every Info: a long generation
        pool.start()
        lease = await pool.acquire("orphaned")  # its gateway is killed: never released
        await pool.acquire("working")
        await clock.advance(29.0, step=1.0)
        assert pool.residency.leases(lease.digest) == 1  # a request may take that long
        await clock.advance(2.0, step=1.0)
        assert pool.residency.leases(lease.digest) == 0
        await clock.advance(6.0, step=1.0)  # then its keep-alive runs out as for any idle model
        assert pool.loaded_names() == ["working:latest"]
        await pool.release(lease.lease_id)  # a release that comes after all is harmless

    run(settings, scenario)
