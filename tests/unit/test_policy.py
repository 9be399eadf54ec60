"""Residency policy: leases and keep-alive timers, driven by a fake clock."""

from __future__ import annotations

import math

import pytest

from mlxserve.services.common.errors import NotFound
from mlxserve.services.supervisor.memory import expected_memory, float32_memory
from mlxserve.services.supervisor.policy import Limits, LoadBackoff, Residency


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def res(clock: FakeClock) -> Residency:
    return Residency(clock, default_keep_alive=300.0)


def test_idle_model_expires_after_default_keep_alive(res: Residency, clock: FakeClock) -> None:
    res.acquire("m", "l1")
    assert res.release("l1") == "m"
    clock.advance(299.9)
    assert res.expired() == []
    clock.advance(0.1)
    assert res.expired() == ["m"]


def test_timer_does_not_run_while_a_lease_is_held(res: Residency, clock: FakeClock) -> None:
    res.acquire("m", "l1", keep_alive=10)
    clock.advance(1000)
    assert res.expired() == []
    assert res.deadline("m") is None
    res.release("l1")
    assert res.deadline("m") == clock.now + 10  # the timer starts at release, not at acquire
    clock.advance(9)
    assert res.expired() == []
    clock.advance(1)
    assert res.expired() == ["m"]


def test_timer_starts_only_when_the_last_of_several_leases_ends(res: Residency, clock: FakeClock) -> None:
    res.acquire("m", "l1", keep_alive=5)
    res.acquire("m", "l2", keep_alive=5)
    res.release("l1")
    assert res.leases("m") == 1
    clock.advance(100)
    assert res.expired() == []
    res.release("l2")
    clock.advance(5)
    assert res.expired() == ["m"]


def test_per_request_keep_alive_overrides_the_default(res: Residency, clock: FakeClock) -> None:
    res.acquire("m", "l1", keep_alive=60)
    res.release("l1")
    clock.advance(60)
    assert res.expired() == ["m"]


def test_last_request_keep_alive_wins(res: Residency, clock: FakeClock) -> None:
    res.acquire("m", "l1", keep_alive=1000)
    res.acquire("m", "l2", keep_alive=10)
    res.release("l1")
    res.release("l2")
    clock.advance(10)
    assert res.expired() == ["m"]


def test_acquire_without_keep_alive_goes_back_to_the_default(res: Residency, clock: FakeClock) -> None:
    res.acquire("m", "l1", keep_alive=-1)
    res.release("l1")
    res.acquire("m", "l2")
    res.release("l2")
    assert res.keep_alive("m") == 300.0
    clock.advance(300)
    assert res.expired() == ["m"]


def test_release_keep_alive_overrides_the_acquire_value(res: Residency, clock: FakeClock) -> None:
    res.acquire("m", "l1", keep_alive=1000)
    res.release("l1", keep_alive=2)
    clock.advance(2)
    assert res.expired() == ["m"]


def test_zero_keep_alive_unloads_as_soon_as_idle(res: Residency, clock: FakeClock) -> None:
    res.acquire("m", "l1", keep_alive=0)
    res.acquire("m", "l2", keep_alive=0)
    res.release("l1")
    assert res.expired() == []  # still leased by l2
    res.release("l2")
    assert res.expired() == ["m"]


def test_negative_keep_alive_never_expires(res: Residency, clock: FakeClock) -> None:
    res.acquire("m", "l1", keep_alive=-1)
    res.release("l1")
    clock.advance(10**9)
    assert res.expired() == []
    assert res.deadline("m") == math.inf
    assert res.expires_at("m") == math.inf
    assert res.next_deadline() is None


def test_expires_at_while_leased_is_now_plus_keep_alive(res: Residency, clock: FakeClock) -> None:
    res.acquire("m", "l1", keep_alive=30)
    assert res.expires_at("m") == clock.now + 30
    clock.advance(5)
    assert res.expires_at("m") == clock.now + 30
    res.release("l1")
    clock.advance(5)
    assert res.expires_at("m") == clock.now + 25


def test_models_expire_independently_and_next_deadline_is_the_earliest(res: Residency, clock: FakeClock) -> None:
    res.acquire("a", "la", keep_alive=10)
    res.acquire("b", "lb", keep_alive=20)
    res.acquire("c", "lc", keep_alive=5)
    res.release("la")
    res.release("lb")
    assert res.next_deadline() == clock.now + 10  # "c" is leased: no deadline yet
    clock.advance(10)
    assert res.expired() == ["a"]
    clock.advance(10)
    assert sorted(res.expired()) == ["a", "b"]
    assert res.expired(now=clock.now - 15) == []


def test_acquire_after_expiry_before_reap_keeps_the_model(res: Residency, clock: FakeClock) -> None:
    res.acquire("m", "l1", keep_alive=1)
    res.release("l1")
    clock.advance(5)
    res.acquire("m", "l2", keep_alive=1)
    assert res.expired() == []


def test_unknown_lease_release_is_not_found(res: Residency) -> None:
    with pytest.raises(NotFound, match="lease 'nope' not found"):
        res.release("nope")


def test_double_release_is_not_found(res: Residency) -> None:
    res.acquire("m", "l1")
    res.release("l1")
    with pytest.raises(NotFound):
        res.release("l1")


def test_release_after_forget_is_a_harmless_no_op(res: Residency) -> None:
    res.acquire("m", "l1")
    res.acquire("m", "l2")
    assert res.forget("m") == ["l1", "l2"]
    assert "m" not in res
    assert res.release("l1") is None
    assert res.expired() == []


def test_forget_unknown_model_returns_nothing(res: Residency) -> None:
    assert res.forget("ghost") == []


def test_duplicate_lease_id_is_refused(res: Residency) -> None:
    res.acquire("m", "l1")
    with pytest.raises(ValueError):
        res.acquire("other", "l1")
    assert res.owner("l1") == "m"


def test_forgotten_model_starts_fresh_with_new_keep_alive(res: Residency, clock: FakeClock) -> None:
    res.acquire("m", "l1", keep_alive=-1)
    res.forget("m")
    res.acquire("m", "l2")
    assert res.keep_alive("m") == 300.0
    assert res.leases("m") == 1


# -- residency limits ----------------------------------------------------------------------------

GB = 1 << 30


def resident(res: Residency, clock: FakeClock, key: str, memory: int, keep_alive: float = 300.0, busy: bool = False) -> None:
    """Load `key` through the same steps the pool takes; leave it leased when `busy`, else idle."""
    res.reserve(key, memory)
    res.loaded(key)
    res.acquire(key, f"lease-{key}", keep_alive=keep_alive)
    if not busy:
        res.release(f"lease-{key}")
    clock.advance(1)


def test_load_fits_under_limits_without_evicting(res: Residency, clock: FakeClock) -> None:
    resident(res, clock, "a", 1 * GB)
    assert res.plan_load(1 * GB, Limits(max_models=2, memory_budget=2 * GB)) == []


def test_no_limits_never_evict(res: Residency, clock: FakeClock) -> None:
    for k in "abcdef":
        resident(res, clock, k, 10 * GB)
    assert res.plan_load(100 * GB, Limits()) == []


def test_max_models_evicts_the_least_recently_used_idle_model(res: Residency, clock: FakeClock) -> None:
    resident(res, clock, "old", GB)
    resident(res, clock, "new", GB)
    assert res.plan_load(GB, Limits(max_models=2)) == ["old"]


def test_shortest_keep_alive_is_evicted_before_least_recently_used(res: Residency, clock: FakeClock) -> None:
    resident(res, clock, "old-long", GB, keep_alive=600)
    resident(res, clock, "new-short", GB, keep_alive=30)
    resident(res, clock, "forever", GB, keep_alive=-1)
    assert res.eviction_order() == ["new-short", "old-long", "forever"]
    assert res.plan_load(GB, Limits(max_models=3)) == ["new-short"]
    assert res.plan_load(GB, Limits(max_models=2)) == ["new-short", "old-long"]


def test_memory_budget_evicts_just_enough_idle_models(res: Residency, clock: FakeClock) -> None:
    resident(res, clock, "a", 3 * GB)
    resident(res, clock, "b", 3 * GB)
    resident(res, clock, "c", 3 * GB)
    assert res.plan_load(1 * GB, Limits(memory_budget=10 * GB)) == []
    assert res.plan_load(4 * GB, Limits(memory_budget=10 * GB)) == ["a"]
    assert res.plan_load(7 * GB, Limits(memory_budget=10 * GB)) == ["a", "b"]


def test_measured_memory_replaces_the_manifest_estimate(res: Residency, clock: FakeClock) -> None:
    resident(res, clock, "a", 1 * GB)
    assert res.plan_load(2 * GB, Limits(memory_budget=3 * GB)) == []
    res.set_memory("a", 2 * GB)  # the worker reports more than the weights' size
    assert res.used_memory() == 2 * GB
    assert res.plan_load(2 * GB, Limits(memory_budget=3 * GB)) == ["a"]
    res.set_memory("ghost", GB)  # a report for a model already gone is ignored
    assert "ghost" not in res


def test_busy_models_are_never_evicted_so_the_load_must_wait(res: Residency, clock: FakeClock) -> None:
    resident(res, clock, "a", GB, busy=True)
    resident(res, clock, "b", GB, busy=True)
    assert res.plan_load(GB, Limits(max_models=2)) is None
    res.release("lease-b")
    assert res.plan_load(GB, Limits(max_models=2)) == ["b"]


def test_loads_in_progress_count_against_limits_and_are_not_evicted(res: Residency, clock: FakeClock) -> None:
    res.reserve("loading", 4 * GB)
    assert res.is_loading("loading")
    assert res.eviction_order() == []
    assert res.plan_load(GB, Limits(max_models=1)) is None
    assert res.plan_load(GB, Limits(memory_budget=4 * GB)) is None
    assert res.expired() == []  # no keep-alive timer while loading
    res.loaded("loading")
    assert not res.is_loading("loading")
    assert res.plan_load(GB, Limits(max_models=1)) == ["loading"]


def test_busy_memory_leaves_no_room_even_after_evicting_every_idle_model(res: Residency, clock: FakeClock) -> None:
    resident(res, clock, "busy", 6 * GB, busy=True)
    resident(res, clock, "idle", 2 * GB)
    assert res.plan_load(3 * GB, Limits(memory_budget=8 * GB)) is None
    assert res.plan_load(2 * GB, Limits(memory_budget=8 * GB)) == ["idle"]


def test_a_model_bigger_than_the_budget_loads_once_everything_else_is_evicted(res: Residency, clock: FakeClock) -> None:
    assert res.plan_load(100 * GB, Limits(max_models=1, memory_budget=GB)) == []
    resident(res, clock, "small", GB)
    assert res.plan_load(100 * GB, Limits(memory_budget=2 * GB)) == ["small"]
    res.acquire("small", "again")
    assert res.plan_load(100 * GB, Limits(memory_budget=2 * GB)) is None


def test_loaded_without_lease_starts_the_keep_alive_timer(res: Residency, clock: FakeClock) -> None:
    res.reserve("m", GB)
    res.loaded("m", keep_alive=10)  # e.g. every waiter left but a keep-alive asked for the load
    clock.advance(10)
    assert res.expired() == ["m"]


def test_reserving_a_resident_model_twice_is_refused(res: Residency) -> None:
    res.reserve("m", GB)
    with pytest.raises(ValueError):
        res.reserve("m", GB)


def test_forgetting_a_reserved_load_frees_its_room(res: Residency) -> None:
    res.reserve("m", GB)
    res.forget("m")
    assert res.plan_load(GB, Limits(max_models=1)) == []


# -- load backoff --------------------------------------------------------------------------------


def test_backoff_doubles_per_failure_up_to_the_maximum(clock: FakeClock) -> None:
    b = LoadBackoff(clock, base=1.0, maximum=5.0)
    assert b.blocked("m") is None
    assert b.failed("m", "boom") == 1.0
    assert b.blocked("m") == (1.0, 1, "boom")
    clock.advance(1.0)
    assert b.blocked("m") is None  # the retry is allowed
    assert b.failed("m", "boom again") == 2.0
    assert b.failed("m", "x") == 4.0
    assert b.failed("m", "y") == 5.0
    left, count, cause = b.blocked("m")
    assert (left, count, cause) == (5.0, 4, "y")
    assert b.blocked("other") is None


def test_a_successful_load_resets_the_backoff(clock: FakeClock) -> None:
    b = LoadBackoff(clock, base=1.0, maximum=60.0)
    b.failed("m", "boom")
    b.failed("m", "boom")
    b.succeeded("m")
    assert b.blocked("m") is None
    assert b.failed("m", "boom") == 1.0


# -- expected memory: float32 compute on the CPU backend ----------------------------------------

def test_float32_memory_grows_quantized_and_half_precision_weights() -> None:
    assert float32_memory(1000, bits=4) == 8000
    assert float32_memory(1000, bits=8) == 4000
    assert float32_memory(1000, dtype_bytes=2) == 2000
    assert float32_memory(1000, dtype_bytes=4) == 1000


def test_a_cpu_worker_that_will_compute_in_float32_is_expected_to_need_the_float32_size() -> None:
    assert expected_memory(1000, cpu_float32="auto", cpu_backend=True, budget=10_000, bits=4) == 8000
    assert expected_memory(1000, cpu_float32="auto", cpu_backend=True, budget=0, bits=4) == 8000
    assert expected_memory(1000, cpu_float32="always", cpu_backend=True, budget=5000, bits=4) == 8000


def test_a_model_whose_float32_size_exceeds_the_budget_is_expected_at_its_stored_size_under_auto() -> None:
    assert expected_memory(1000, cpu_float32="auto", cpu_backend=True, budget=5000, bits=4) == 1000


def test_gpu_workers_and_cpu_float32_never_keep_the_stored_size() -> None:
    assert expected_memory(1000, cpu_float32="always", cpu_backend=False, budget=0, bits=4) == 1000
    assert expected_memory(1000, cpu_float32="never", cpu_backend=True, budget=0, bits=4) == 1000


def test_plan_load_evicts_enough_for_the_float32_estimate(res: Residency) -> None:
    res.acquire("a", "l1")
    res.set_memory("a", 3000)
    res.release("l1")
    need = expected_memory(1000, cpu_float32="auto", cpu_backend=True, budget=10_000, bits=4)
    assert res.plan_load(1000, Limits(memory_budget=10_000)) == []  # the stored size would fit...
    assert res.plan_load(need, Limits(memory_budget=10_000)) == ["a"]  # ... the float32 one does not


def test_a_release_arriving_after_a_newer_acquire_leaves_the_newer_keep_alive(res: Residency, clock: FakeClock) -> None:
    # The gateway gives leases back without waiting: request 1's Release (keep_alive 0) may land after
    # request 2's Acquire (keep_alive 60); request 2 came last, so its keep-alive wins.
    res.acquire("m", "l1", keep_alive=0)
    res.acquire("m", "l2", keep_alive=60)
    res.release("l1", keep_alive=0)
    res.release("l2")
    clock.advance(59)
    assert res.expired() == []
    clock.advance(1)
    assert res.expired() == ["m"]
