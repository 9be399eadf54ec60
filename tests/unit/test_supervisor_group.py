"""A model served by a group of ranks, on the supervisor's side: where a load goes (one process or
the group, or refused with the numbers), what ps shows of a group, how a group whose rank dies is
reported, and the commands a group is started with. Fakes only (tests/fixtures/fake_launcher.py):
what real ranks show is in tests/e2e/test_supervisor_group.py."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import shlex
from pathlib import Path
from typing import Any

import pytest

from mlxserve.cli.loaded import ps_json, ps_rows
from mlxserve.gateway.status_api import compute_fields
from mlxserve.services.common.config import Settings, load_settings
from mlxserve.services.common.errors import Busy, InvalidArgument, Timeout, Unavailable
from mlxserve.services.common.placement import parse_placement
from mlxserve.services.supervisor.group import (
    Rank, WorkerGroup, parse_versions, preflight_command, rank_command, rank_env, remote_launch_script, remote_rank_command,
    remote_settings_env, version_mismatch, with_reachable_local_ips,
)
from mlxserve.services.supervisor.memory import human_bytes
from mlxserve.services.supervisor.pool import WorkerPool
from mlxserve.services.supervisor.processes import watch_exit
from mlxserve.v1 import common_pb2, supervisor_pb2
from tests.fixtures.fake_clock import FakeClock, settle
from tests.fixtures.fake_launcher import REPORTED_MEMORY, FakeLauncher, FakeRankProcess, FakeResolver

TWO_LOCAL = {"hosts": ["127.0.0.1:5001", "127.0.0.1:5002"]}


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    return dataclasses.replace(load_settings({"home": tmp_path}, env={}), load_timeout=15.0)


def with_pool(settings: Settings, scenario: Any, **overrides: Any) -> Any:
    async def main() -> Any:
        clock = FakeClock()
        launcher, store = FakeLauncher(clock), FakeResolver()
        pool = WorkerPool(dataclasses.replace(settings, **overrides), store, launcher, clock=clock, cpu_backend=False)
        try:
            return await scenario(pool, launcher, store)
        finally:
            await pool.close()

    return asyncio.run(main())


# -- where a load goes -----------------------------------------------------------------------------


def test_a_model_that_fits_this_host_runs_as_one_process_even_with_a_group_configured(settings: Settings) -> None:
    async def scenario(pool: WorkerPool, launcher: FakeLauncher, store: FakeResolver) -> None:
        store.add("small", size=900)
        await pool.acquire("small")
        assert launcher.events == [("spawn", "small:latest")]
        [info] = await pool.list_loaded()
        assert info.ranks == () and info.strategy == ""

    with_pool(settings, scenario, memory_budget=1000, distributed=TWO_LOCAL)


def test_a_model_too_big_for_this_host_goes_to_the_configured_group_with_a_budget_per_rank(settings: Settings) -> None:
    async def scenario(pool: WorkerPool, launcher: FakeLauncher, store: FakeResolver) -> None:
        store.add("big", size=1500)
        lease = await pool.acquire("big")
        assert launcher.events == [("preflight", "2 ranks on 127.0.0.1:5001, 127.0.0.1:5002 (pipeline, ring)"),
                                   ("spawn_group", "big:latest")]
        [group] = launcher.workers
        assert group.placement is not None and [h.label() for h in group.placement.hosts] == ["127.0.0.1:5001", "127.0.0.1:5002"]
        assert group.rank_budget == 1000  # no rank_memory: this host's budget per rank
        assert lease.worker_address == group.address
        [info] = await pool.list_loaded()
        assert info.strategy == "pipeline"
        assert [(r.rank, r.host, r.memory_bytes) for r in info.ranks] == [
            (0, "127.0.0.1:5001", REPORTED_MEMORY), (1, "127.0.0.1:5002", REPORTED_MEMORY)]
        # Both ranks run here: this host holds both shares.
        assert pool.residency.used_memory() == 2 * REPORTED_MEMORY

    with_pool(settings, scenario, memory_budget=1000, distributed=TWO_LOCAL)


def test_a_model_that_fits_neither_host_nor_group_is_refused_with_the_numbers_and_nothing_starts(settings: Settings) -> None:
    async def scenario(pool: WorkerPool, launcher: FakeLauncher, store: FakeResolver) -> None:
        store.add("huge", size=2_100_000_000)
        with pytest.raises(InvalidArgument) as err:
            await pool.acquire("huge")
        assert str(err.value) == (
            "model huge:latest needs 2.1 GB: more than this host's 1 GB budget, and 1.05 GB per rank is more than "
            "the group's 500 MB per rank (2 ranks on 127.0.0.1:5001, 127.0.0.1:5002 (pipeline, ring), config: distributed)")
        assert err.value.http_status == 400
        assert launcher.events == [] and await pool.list_loaded() == []
        # No backoff either: the next request gets the same answer, not "failed to load N times".
        with pytest.raises(InvalidArgument, match="needs 2.1 GB"):
            await pool.acquire("huge")

    with_pool(settings, scenario, memory_budget=1_000_000_000, distributed={**TWO_LOCAL, "rank_memory": 500_000_000})


def test_a_model_with_its_own_placement_runs_on_its_group_whatever_its_size(settings: Settings) -> None:
    async def scenario(pool: WorkerPool, launcher: FakeLauncher, store: FakeResolver) -> None:
        store.add("own", size=100, placement=parse_placement({"hosts": ["127.0.0.1", "10.0.0.2"], "strategy": "tensor"}))
        store.add("named", size=100)
        await pool.acquire("own")
        await pool.acquire("named")
        assert [e for e in launcher.events if e[0] != "preflight"] == [("spawn_group", "own:latest"), ("spawn_group", "named:latest")]
        own, named = launcher.workers
        assert own.placement.strategy == "tensor" and named.placement.source == "config: placements.named"
        infos = {i.name: i for i in await pool.list_loaded()}
        # Only rank 0 runs here: this host holds only its share.
        assert [r.host for r in infos["own:latest"].ranks] == ["127.0.0.1", "10.0.0.2"]

    with_pool(settings, scenario, placements={"named": TWO_LOCAL})


def test_a_group_too_small_for_a_model_with_its_own_placement_is_refused_naming_the_group(settings: Settings) -> None:
    async def scenario(pool: WorkerPool, launcher: FakeLauncher, store: FakeResolver) -> None:
        store.add("own", size=3000, placement=parse_placement({**TWO_LOCAL, "rank_memory": 1000}, source="model own: placement"))
        with pytest.raises(InvalidArgument) as err:
            await pool.acquire("own")
        assert str(err.value) == ("model own:latest needs 3 KB: 1.5 KB per rank is more than the group's 1 KB per rank "
                                  "(2 ranks on 127.0.0.1:5001, 127.0.0.1:5002 (pipeline, ring), model own: placement)")
        assert launcher.events == []

    with_pool(settings, scenario)


def test_a_group_with_an_unreachable_host_fails_before_any_resident_model_is_evicted(settings: Settings) -> None:
    async def scenario(pool: WorkerPool, launcher: FakeLauncher, store: FakeResolver) -> None:
        store.add("small", size=900)
        store.add("far", size=100, placement=parse_placement({"hosts": ["127.0.0.1", "mac2"]}))
        lease = await pool.acquire("small")
        await pool.release(lease.lease_id)  # idle: evictable
        launcher.unreachable.add("mac2")
        with pytest.raises(Unavailable, match="cannot reach host mac2 over ssh"):
            await pool.acquire("far")
        assert pool.loaded_names() == ["small:latest"]
        assert [e for e in launcher.events if e[0] != "preflight"] == [("spawn", "small:latest")]

    with_pool(settings, scenario, memory_budget=1000, max_loaded_models=1)


def test_models_sharing_the_configured_group_take_turns_on_its_ports(settings: Settings) -> None:
    async def scenario(pool: WorkerPool, launcher: FakeLauncher, store: FakeResolver) -> None:
        store.add("big", size=1500)
        store.add("large", size=1600)
        first = await pool.acquire("big")
        # big holds its lease: large's group would listen on the same ports, so it waits, then gives up.
        waiting = asyncio.ensure_future(pool.acquire("large"))
        await settle()
        await pool.clock.advance(15.0)  # type: ignore[attr-defined]
        with pytest.raises(Busy) as err:
            await waiting
        assert str(err.value).startswith("cannot load large:latest: big:latest's group listens on the ports its group needs")
        assert pool.loaded_names() == ["big:latest"]
        # Idle, big's group makes way.
        await pool.release(first.lease_id)
        await pool.acquire("large")
        assert pool.loaded_names() == ["large:latest"]
        assert [e for e in launcher.events if e[0] != "preflight"] == [
            ("spawn_group", "big:latest"), ("stop", "big:latest"), ("spawn_group", "large:latest")]

    with_pool(settings, scenario, memory_budget=1000, distributed=TWO_LOCAL)


def test_sizes_read_as_a_user_reads_them() -> None:
    assert [human_bytes(n) for n in (512, 1500, 2_100_000_000, 135_000_000)] == ["512 B", "1.5 KB", "2.1 GB", "135 MB"]


# -- a group's life ------------------------------------------------------------------------------------


def fake_group(n: int = 3) -> WorkerGroup:
    placement = parse_placement({"hosts": ["127.0.0.1:5001", "127.0.0.1:5002", "10.0.0.3:5003"][:n]})
    ranks = [Rank(rank=r, host=h, proc=FakeRankProcess()) for r, h in enumerate(placement.hosts)]  # type: ignore[arg-type]
    # No grace for rank 0 (the tests that need one set it): nothing here waits on the wall clock.
    return WorkerGroup(name="big:latest", key="d" * 64, placement=placement, ranks=ranks, leader_grace=0.0)


def test_a_group_whose_one_rank_dies_is_reported_once_naming_the_rank_and_every_other_rank_is_killed() -> None:
    async def scenario() -> None:
        group = fake_group()
        exits: list[WorkerGroup] = []
        watcher = watch_exit(group, exits.append)
        await asyncio.sleep(0)
        assert group.alive
        group.ranks[2].proc.crash(-9, "RuntimeError: [ring] connection to a peer was lost")
        assert not group.alive  # at once, before the watcher ran: no request is handed to it
        await asyncio.wait_for(watcher, 1.0)
        assert exits == [group]
        assert [r.proc.signals for r in group.ranks] == [["SIGKILL"], ["SIGKILL"], ["SIGKILL"]]
        assert all(not r.proc.alive for r in group.ranks)
        assert group.exit_code == -9 and not group.stopping  # a crash, logged as one
        assert group.failure_cause() == ("rank 2 on 10.0.0.3:5003 exited (code -9): "
                                         "RuntimeError: [ring] connection to a peer was lost")
        assert group.stderr_tail() == ["rank 2 on 10.0.0.3:5003: RuntimeError: [ring] connection to a peer was lost"]

    asyncio.run(scenario())


def test_rank_0_of_a_group_that_lost_a_rank_may_fail_its_requests_itself_before_it_is_killed() -> None:
    async def scenario() -> None:
        group = fake_group(2)
        group.leader_grace = 60.0
        exits: list[WorkerGroup] = []
        watcher = watch_exit(group, exits.append)
        await asyncio.sleep(0)
        group.ranks[1].proc.crash(-9)
        for _ in range(10):
            await asyncio.sleep(0)
        assert group.ranks[1].proc.signals == ["SIGKILL"] and group.ranks[0].proc.signals == []
        assert exits == []  # rank 0 is still failing its requests with the cause
        group.ranks[0].proc.crash(1, "the model's group lost rank 1 (127.0.0.1:5002): [ring] connection to a peer was lost")
        await asyncio.wait_for(watcher, 1.0)
        assert exits == [group]
        assert group.failure_cause().startswith("rank 1 on 127.0.0.1:5002 exited (code -9)")

    asyncio.run(scenario())


def test_stopping_a_group_stops_rank_0_first_then_the_followers() -> None:
    async def scenario() -> None:
        group = fake_group()
        order: list[int] = []
        for r in group.ranks:
            stop = r.proc.stop

            async def recorded(grace: float = 3.0, r: Rank = r, stop: Any = stop) -> int | None:
                order.append(r.rank)
                return await stop(grace)

            r.proc.stop = recorded  # type: ignore[method-assign]
        await group.stop(1.0)
        assert order[0] == 0 and sorted(order) == [0, 1, 2] and group.stopping and not group.alive

    asyncio.run(scenario())


def test_a_rank_that_exits_during_start_fails_the_start_naming_its_host_and_cause() -> None:
    async def scenario() -> None:
        group = fake_group(2)
        group.ranks[1].proc.crash(3, "mlxserve-group: rank 1 on 127.0.0.1:5002 cannot start: "
                                     "llama3 has no pipeline sharding in mlx-lm")
        with pytest.raises(Unavailable) as err:
            await group.wait_ready(timeout=60)
        assert str(err.value) == ("group for big:latest failed to start: rank 1 on 127.0.0.1:5002 exited (code 3): "
                                  "mlxserve-group: rank 1 on 127.0.0.1:5002 cannot start: llama3 has no pipeline sharding in mlx-lm")
        assert not group.ranks[0].proc.alive

    asyncio.run(scenario())


def test_a_group_that_does_not_form_in_time_names_the_ranks_that_never_joined() -> None:
    async def scenario() -> None:
        group = fake_group()
        group.ranks[0].proc.stderr.append("mlxserve-group: rank 0 of 3 joined")
        group.ranks[1].proc.stderr.append("mlxserve-group: rank 1 of 3 joined")
        with pytest.raises(Timeout) as err:
            await group.wait_ready(timeout=0)
        assert str(err.value) == "group for big:latest did not become ready within 0s; never joined: rank 2 on 10.0.0.3:5003"
        assert all(not r.proc.alive for r in group.ranks)

    asyncio.run(scenario())


def test_a_group_is_ready_once_rank_0_answers() -> None:
    async def scenario() -> None:
        group = fake_group(2)
        group.ranks[0].proc.answers_ping = True
        await group.wait_ready(timeout=60)
        assert group.alive and group.pid == group.ranks[0].proc.pid and group.address == group.ranks[0].proc.address

    asyncio.run(scenario())


# -- preflight ----------------------------------------------------------------------------------------


def test_preflight_reads_the_versions_a_host_prints_after_its_login_banner() -> None:
    out = 'Welcome to mac2\n{"mlx": "0.32.4", "mlx-lm": "0.32.2", "mlxserve": "0.1.0"}\n'
    assert parse_versions("mac2", out) == {"mlx": "0.32.4", "mlx-lm": "0.32.2", "mlxserve": "0.1.0"}
    with pytest.raises(Unavailable, match="host mac2 did not report its mlx versions over ssh .*command not found"):
        parse_versions("mac2", "bash: python3: command not found\n")


def test_mismatched_versions_are_refused_naming_each_host_and_its_versions() -> None:
    same = {"mlx": "0.32.4", "mlx-lm": "0.32.2", "mlxserve": "0.1.0"}
    assert version_mismatch({"this machine": same, "mac2": dict(same)}) is None
    message = version_mismatch({"this machine": same, "mac2": {**same, "mlx": "0.30.0"}})
    assert message == ("the group's hosts run different versions (this machine has mlx 0.32.4, mlx-lm 0.32.2, mlxserve 0.1.0; "
                       "mac2 has mlx 0.30.0, mlx-lm 0.32.2, mlxserve 0.1.0): install the same mlx, mlx-lm and mlxserve on every host")


def test_preflight_asks_the_remote_python_over_ssh_without_a_password_prompt() -> None:
    cmd = preflight_command("mac2.local", "/opt/venv/bin/python")
    assert cmd[:6] == ["ssh", "-o", "BatchMode=yes", "-o", "ConnectTimeout=5", "mac2.local"]
    remote = shlex.split(cmd[6])
    assert remote[:2] == ["bash", "-c"]
    python, flag, code = shlex.split(remote[2])
    assert (python, flag) == ("/opt/venv/bin/python", "-c") and "importlib.metadata" in code


# -- the commands ----------------------------------------------------------------------------------


def test_each_rank_gets_the_worker_command_and_environment_of_the_contract(tmp_path: Path) -> None:
    placement = parse_placement({"hosts": ["127.0.0.1:5001", "mac2:5002"]})
    sock = tmp_path / "w.sock"
    assert rank_command(placement, 0, view_path="/v", model_name="m", socket_path=sock, python="py") == [
        "py", "-m", "mlxserve.services.worker", "--model-path", "/v", "--model-name", "m",
        "--group-strategy", "pipeline", "--group-backend", "ring", "--socket", str(sock)]
    assert rank_command(placement, 1, view_path="/v", model_name="m", socket_path=sock, python="py")[-1] == "--follower"
    hostfile = placement.mlx_ring_hostfile({"mac2": "10.0.0.2"})
    assert json.loads(hostfile) == [["127.0.0.1:5001"], ["10.0.0.2:5002"]]
    env = rank_env(placement, 1, hostfile=tmp_path / "h.json", hostfile_text=hostfile, memory_budget=777, ips={})
    assert env == {"MLX_RANK": "1", "MLXSERVE_GROUP_HOSTS": '["127.0.0.1:5001", "mac2:5002"]',
                   "MLXSERVE_WORKER_MEMORY_BUDGET": "777", "MLX_HOSTFILE": str(tmp_path / "h.json")}


def test_other_hosts_reach_this_machines_ranks_at_its_address_on_the_route_to_them() -> None:
    asked: list[str] = []

    def source_ip(target: str) -> str:
        asked.append(target)
        return "192.168.1.10"

    mixed = parse_placement({"hosts": ["127.0.0.1:5001", "localhost:5002", "mac2:5003"]})
    reachable = with_reachable_local_ips(mixed, {"mac2": "192.168.1.20"}, source_ip)
    assert json.loads(reachable.mlx_ring_hostfile({"mac2": "192.168.1.20"})) == [
        ["192.168.1.10:5001"], ["192.168.1.10:5002"], ["192.168.1.20:5003"]]
    assert asked == ["192.168.1.20"]
    assert [h.label() for h in reachable.hosts] == ["127.0.0.1:5001", "localhost:5002", "mac2:5003"]  # as named
    # On this machine alone (or a "remote" loopback address), the loopback addresses stay.
    here = parse_placement({"hosts": ["127.0.0.1:5001", "127.0.0.1:5002"]})
    assert with_reachable_local_ips(here, {}, source_ip) is here
    far_loopback = parse_placement({"hosts": ["127.0.0.1:5001", "127.0.0.2:5002"]})
    assert with_reachable_local_ips(far_loopback, {}, source_ip) is far_loopback


def test_a_remote_rank_runs_over_ssh_with_the_launch_script_mlx_launch_builds() -> None:
    command = ["/opt/venv/bin/python", "-m", "mlxserve.services.worker", "--follower"]
    script = remote_launch_script(command, {"MLX_RANK": "1", "MLXSERVE_GROUP_HOSTS": '["127.0.0.1", "mac2"]'},
                                  cwd="/Users/me", files={"MLX_HOSTFILE": '[["127.0.0.1:5001"], ["10.0.0.2:5002"]]'})
    assert script == (
        "stty -echo; if [[ -d /Users/me ]]; then cd /Users/me; fi; "
        "export MLX_RANK=1; export MLXSERVE_GROUP_HOSTS='[\"127.0.0.1\", \"mac2\"]'; "
        "fname=$(mktemp); echo '[[\"127.0.0.1:5001\"], [\"10.0.0.2:5002\"]]' >$fname; export MLX_HOSTFILE=$fname; "
        "cmd=(/opt/venv/bin/python -m mlxserve.services.worker --follower); exec \"${cmd[@]}\"")
    assert remote_settings_env({"MLXSERVE_CPU_FLOAT32": "auto", "MLXSERVE_API_KEY": "secret", "MLXSERVE_HOME": "/Users/me/.mlxserve",
                                "PATH": "/bin"}) == {"MLXSERVE_CPU_FLOAT32": "auto"}
    # -tt: closing the session hangs the remote terminal up, which ends the rank there; the
    # watchdog closes it when the supervisor's stdin pipe does.
    command = remote_rank_command(["ssh"], "mac2", script)
    assert command[:2] == ["/bin/sh", "-c"] and command[4:] == [
        "ssh", "-o", "BatchMode=yes", "-o", "ConnectTimeout=5", "-tt", "-o", "LogLevel=ERROR", "mac2",
        f"bash -c {shlex.quote(script)}"]


# -- ps ------------------------------------------------------------------------------------------------


def loaded_group() -> supervisor_pb2.LoadedModel:
    return supervisor_pb2.LoadedModel(
        name="big:latest", model="big:latest", digest="ab" * 32, memory_bytes=150_000_000, pid=11, strategy="pipeline",
        ranks=[common_pb2.RankInfo(rank=0, host="127.0.0.1", pid=11, memory_bytes=150_000_000, active_memory=90_000_000),
               common_pb2.RankInfo(rank=1, host="mac2:5002", pid=22, memory_bytes=140_000_000, active_memory=80_000_000)])


def test_api_ps_lists_a_groups_ranks_and_keeps_ollamas_shape_for_one_process() -> None:
    assert "ranks" not in compute_fields(supervisor_pb2.LoadedModel(name="small:latest", pid=5))
    assert compute_fields(loaded_group()) == {"strategy": "pipeline", "ranks": [
        {"rank": 0, "host": "127.0.0.1", "pid": 11, "memory_bytes": 150_000_000, "active_memory": 90_000_000},
        {"rank": 1, "host": "mac2:5002", "pid": 22, "memory_bytes": 140_000_000, "active_memory": 80_000_000}]}


def test_mlxctl_ps_shows_the_memory_each_rank_holds() -> None:
    rows = ps_rows(loaded_group())
    assert [r[0] for r in rows] == ["big:latest", "  rank 0 on 127.0.0.1", "  rank 1 on mac2:5002"]
    assert [r[2] for r in rows] == ["290 MB", "150 MB", "140 MB"]
    assert rows[0][3] == "100% CPU, 2 ranks (pipeline)" and rows[2][3] == "pid 22"
    assert [r["memory_bytes"] for r in ps_json(loaded_group())["ranks"]] == [150_000_000, 140_000_000]
    assert "ranks" not in ps_json(supervisor_pb2.LoadedModel(name="small:latest"))
