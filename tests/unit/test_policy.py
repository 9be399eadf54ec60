"""Residency policy: leases and keep-alive timers, driven by a fake clock."""

from __future__ import annotations

import math

import pytest

from mlxserve.services.common.errors import NotFound
from mlxserve.services.supervisor.policy import Residency


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
