"""A model served by a group of processes, with real processes: two ranks on 127.0.0.1, or one
of them on "another host" (a real sshd on 127.0.0.3, tests/fixtures/sshd.py).

First through the pool with stand-in ranks (tests/fixtures/worker_stub.py: no MLX, seconds):
the ring hostfile, a dead rank taking its group down, a rank that fails or never joins, a remote
rank over ssh, other mlx versions on a host, a killed supervisor (local and remote ranks), an
unreachable host. Then the whole system (`mlxctl serve`) serving SmolLM2 over the ring backend in
pipeline mode: the greedy reference, ps with per-rank memory, a rank killed mid-stream, stop, the
refusal with the numbers, a killed supervisor, and a rank over ssh with the model copied there.
The pool's policy itself is tested with fakes in tests/unit/test_supervisor_group.py."""

from __future__ import annotations

import asyncio
import dataclasses
import importlib.metadata
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import textwrap
import time
import urllib.request
from pathlib import Path
from typing import Any, Iterator

import pytest

from mlxserve.services.common.config import Settings, load_settings
from mlxserve.services.common.errors import Timeout, Unavailable
from mlxserve.services.common.placement import parse_placement
from mlxserve.services.supervisor.group import LEADER_GRACE_S
from tests.e2e.harness import System, alive, descendants, free_port, http_json, start_system
from tests.fixtures.sshd import SshHost, running_sshd
from tests.fixtures.tiny_model import write_tiny_model
from tests.fixtures.worker_stub import StubStore, eventually, pid_alive, stub_pool

SMOL = "smollm2:135m"
EOS = "<|im_end|>"


@pytest.fixture
def home() -> Iterator[Path]:
    d = Path(tempfile.mkdtemp(prefix="mxg"))  # short: Unix socket paths are limited to ~107 bytes
    yield d
    shutil.rmtree(d, ignore_errors=True)


@pytest.fixture
def settings(home: Path) -> Settings:
    s = dataclasses.replace(load_settings({"home": home}, env={}), load_timeout=15.0)
    s.ensure_dirs()
    return s


@pytest.fixture
def store(home: Path) -> StubStore:
    return StubStore(home)


def two_local(extra: dict[str, Any] | None = None) -> tuple[dict[str, Any], int, int]:
    p1, p2 = free_port(), free_port()
    return {"hosts": [f"127.0.0.1:{p1}", f"127.0.0.1:{p2}"], **(extra or {})}, p1, p2


def rank_pids(store: StubStore, name: str, rank: int) -> list[int]:
    f = store.root / "views" / name / f"rank{rank}"
    return [int(x) for x in f.read_text().split()] if f.exists() else []


# -- the pool with stand-in ranks ----------------------------------------------------------------


def test_a_group_starts_on_the_ring_hostfile_and_a_killed_rank_takes_it_down_until_the_next_request(
        settings: Settings, store: StubStore) -> None:
    table, p1, p2 = two_local()
    store.add("big", placement=parse_placement(table))

    async def scenario() -> None:
        pool = stub_pool(settings, store)
        pool.start()
        try:
            first = await pool.acquire("big", "r1")
            assert first.worker_address.startswith(f"unix://{settings.run_dir}/worker-")
            [r0], [r1] = rank_pids(store, "big", 0), rank_pids(store, "big", 1)
            assert json.loads((store.root / "views" / "big" / "hostfile").read_text()) == [
                [f"127.0.0.1:{p1}"], [f"127.0.0.1:{p2}"]]
            [hostfile] = settings.run_dir.glob("group-*.hosts.json")
            [info] = await pool.list_loaded()
            assert info.pid == r0
            os.kill(r1, signal.SIGKILL)
            # The stand-in rank 0 does not notice its lost peer: it is killed after its grace.
            await eventually(lambda: pool.loaded_names() == [] and not pid_alive(r0), timeout=LEADER_GRACE_S + 3)
            assert not hostfile.exists()
            await pool.release(first.lease_id)
            second = await pool.acquire("big", "r2")
            assert second.worker_address != first.worker_address
            [_, r0b], [_, r1b] = rank_pids(store, "big", 0), rank_pids(store, "big", 1)
            assert pid_alive(r0b) and pid_alive(r1b)
        finally:
            await pool.close()
        assert not pid_alive(r0b) and not pid_alive(r1b)
        assert list(settings.run_dir.glob("group-*")) == []
        assert (settings.logs_dir / "worker-big_latest.rank1.stderr.log").exists()

    asyncio.run(scenario())


def test_a_rank_that_cannot_start_is_named_with_its_cause_and_nothing_is_left_running(settings: Settings, store: StubStore) -> None:
    table, _, p2 = two_local()
    store.add("big", mode="rank1-fail", placement=parse_placement(table))

    async def scenario() -> None:
        pool = stub_pool(settings, store)
        with pytest.raises(Unavailable) as err:
            await pool.acquire("big")
        assert str(err.value) == (f"group for big:latest failed to start: rank 1 on 127.0.0.1:{p2} exited (code 3): "
                                  f"mlxserve-group: rank 1 on 127.0.0.1:{p2} cannot start: stub has no pipeline sharding")
        await eventually(lambda: not any(pid_alive(p) for p in store.spawns("big")))
        await pool.close()

    asyncio.run(scenario())


def test_a_group_that_never_forms_names_the_ranks_that_never_joined(settings: Settings, store: StubStore) -> None:
    table, p1, p2 = two_local()
    store.add("big", mode="rank1-hang", placement=parse_placement(table))

    async def scenario() -> None:
        pool = stub_pool(dataclasses.replace(settings, load_timeout=1.5), store)
        with pytest.raises(Timeout) as err:
            await pool.acquire("big")
        assert str(err.value) == f"group for big:latest did not become ready within 1.5s; never joined: rank 0 on 127.0.0.1:{p1}, rank 1 on 127.0.0.1:{p2}"
        await eventually(lambda: not any(pid_alive(p) for p in store.spawns("big")))
        await pool.close()

    asyncio.run(scenario())


@pytest.mark.skipif(shutil.which("ssh") is None, reason="needs the ssh client (apt-get install openssh-client)")
def test_an_unreachable_host_is_named_with_what_ssh_said_and_nothing_starts(settings: Settings, store: StubStore) -> None:
    # 127.0.0.2 is no name for this machine: it is reached over ssh, and no sshd listens there.
    store.add("far", placement=parse_placement({"hosts": [f"127.0.0.1:{free_port()}", f"127.0.0.2:{free_port()}"]}))

    async def scenario() -> None:
        pool = stub_pool(settings, store)
        with pytest.raises(Unavailable) as err:
            await pool.acquire("far")
        assert str(err.value).startswith("cannot reach host 127.0.0.2 over ssh (exit code 255): ssh: connect to host 127.0.0.2")
        assert store.spawns("far") == [] and list(settings.run_dir.glob("group-*")) == []
        await pool.close()

    asyncio.run(scenario())


@pytest.fixture(scope="module")
def sshd() -> Iterator[SshHost]:
    """A real sshd on 127.0.0.3 (tests/fixtures/sshd.py): "another host" that runs here."""
    with running_sshd() as host:
        yield host


def test_a_remote_rank_starts_over_ssh_with_the_launch_script_and_its_hosts_copy_of_the_model(
        settings: Settings, store: StubStore, sshd: SshHost) -> None:
    p1, p2 = free_port(), free_port()
    ref = store.add("big", placement=parse_placement({"hosts": [f"127.0.0.1:{p1}", f"{sshd.host}:{p2}"]}))
    remote_view = store.add("big-copy").view_path  # where the copy on the remote host would be
    copies: list[tuple[str, ...]] = []

    async def remote_model(host: str, view_path: str, digest: str, model_dir: str) -> str:
        copies.append((host, view_path, digest, model_dir))
        return remote_view

    async def scenario() -> None:
        pool = stub_pool(settings, store, ssh=[str(sshd.bin_dir / "ssh")], remote_model=remote_model)
        pool.start()
        try:
            await pool.acquire("big", "r1")
            assert copies == [(sshd.host, ref.view_path, ref.digest, ".mlxserve/cache/group")]
            [r1] = rank_pids(store, "big-copy", 1)  # rank 1 loaded the host's copy
            [r0] = rank_pids(store, "big", 0)
            # The launch script wrote the ring hostfile there; this machine's rank at its loopback
            # address, since the remote host is a loopback address too.
            assert json.loads((Path(remote_view) / "hostfile").read_text()) == [
                [f"127.0.0.1:{p1}"], [f"{sshd.host}:{p2}"]]
            os.kill(r1, signal.SIGKILL)
            await eventually(lambda: pool.loaded_names() == [] and not pid_alive(r0), timeout=LEADER_GRACE_S + 3)
            # The remote rank's exit code came back through ssh: the cause names it.
            log = (settings.logs_dir / "worker-big_latest.rank1.stderr.log").read_text()
            assert "mlxserve-group: rank 1 of 2 joined" in log
        finally:
            await pool.close()

    asyncio.run(scenario())


def test_hosts_with_other_mlx_versions_are_refused_naming_each_host_and_nothing_starts(
        settings: Settings, store: StubStore, home: Path, sshd: SshHost) -> None:
    # The other host's Python is a real interpreter without mlx installed (a fresh venv): what a
    # host where mlxserve was never installed, or another version was, reports over ssh.
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(home / "bare-env")], check=True)
    other = home / "bare-env" / "bin" / "python"
    store.add("big", placement=parse_placement({"hosts": [f"127.0.0.1:{free_port()}", f"{sshd.host}:{free_port()}"],
                                                "python": str(other)}))

    async def scenario() -> None:
        pool = stub_pool(settings, store, ssh=[str(sshd.bin_dir / "ssh")])
        with pytest.raises(Unavailable) as err:
            await pool.acquire("big")
        here = ", ".join(f"{p} {importlib.metadata.version(p)}" for p in ("mlx", "mlx-lm", "mlxserve"))
        assert str(err.value) == (f"the group's hosts run different versions (this machine has {here}; {sshd.host} has "
                                  "mlx missing, mlx-lm missing, mlxserve missing): install the same mlx, mlx-lm and mlxserve on every host")
        assert store.spawns("big") == []
        await pool.close()

    asyncio.run(scenario())


HOLDER = textwrap.dedent(
    """
    import asyncio, json, sys
    from pathlib import Path
    sys.path.insert(0, sys.argv[2])
    from mlxserve.services.common.config import load_settings
    from mlxserve.services.common.placement import parse_placement
    from tests.fixtures.worker_stub import StubStore, stub_pool

    async def main():
        settings = load_settings({"home": sys.argv[1]}, env={})
        settings.ensure_dirs()
        store = StubStore(Path(sys.argv[1]))
        store.add("big", placement=parse_placement(json.loads(sys.argv[3])))
        pool = stub_pool(settings, store, ssh=sys.argv[4:] or ["ssh"])
        await pool.acquire("big", "r1")
        print("ready", flush=True)
        await asyncio.sleep(3600)

    asyncio.run(main())
    """
)


def test_a_sigkilled_supervisor_leaves_no_rank_behind(home: Path, store: StubStore) -> None:
    table, _, _ = two_local()
    sigkill_holder_and_expect_no_rank_left(home, store, table, [])


def test_a_sigkilled_supervisor_leaves_no_remote_rank_behind(home: Path, store: StubStore, sshd: SshHost) -> None:
    # `ssh -tt` keeps the session open on stdin EOF: the watchdog around it must end it.
    table = {"hosts": [f"127.0.0.1:{free_port()}", f"{sshd.host}:{free_port()}"]}
    sigkill_holder_and_expect_no_rank_left(home, store, table, [str(sshd.bin_dir / "ssh")])


def sigkill_holder_and_expect_no_rank_left(home: Path, store: StubStore, table: dict, ssh: list[str]) -> None:
    script = home / "holder.py"
    script.write_text(HOLDER)
    proc = subprocess.Popen([sys.executable, str(script), str(home), str(Path(__file__).parents[2]), json.dumps(table), *ssh],
                            stdout=subprocess.PIPE, text=True)
    try:
        for line in proc.stdout:  # type: ignore[union-attr]  # unconfigured structlog logs to stdout first
            if line.strip() == "ready":
                break
        pids = rank_pids(store, "big", 0) + rank_pids(store, "big", 1)
        assert len(pids) == 2 and all(pid_alive(p) for p in pids)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        deadline = time.monotonic() + 5
        while any(pid_alive(p) for p in pids) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not any(pid_alive(p) for p in pids), "a rank outlived its supervisor"
    finally:
        proc.kill()


# -- the whole system serving SmolLM2 on two ranks -----------------------------------------------


@dataclasses.dataclass
class GroupSystem:
    system: System
    ring_ports: tuple[int, int]


@pytest.fixture(scope="module")
def group_system(tmp_path_factory: pytest.TempPathFactory, smollm2_gguf: Path) -> Iterator[GroupSystem]:
    """`mlxctl serve` whose memory budget (1 MB) fits no model, with a configured group of two
    ranks on 127.0.0.1 that may hold 10 GB each: SmolLM2 goes to the group. tiny gets a group of
    its own whose ranks may hold 1 byte (refused); tinyfar a group whose second host is unreachable."""
    home = tmp_path_factory.mktemp("mlxserve-group-home")
    tiny_dir = write_tiny_model(tmp_path_factory.mktemp("tiny-model") / "tiny")
    p1, p2 = free_port(), free_port()
    env = {
        "MLXSERVE_MEMORY_BUDGET": str(1_000_000),
        "MLXSERVE_DISTRIBUTED": json.dumps({"hosts": [f"127.0.0.1:{p1}", f"127.0.0.1:{p2}"], "rank_memory": 10_000_000_000}),
        "MLXSERVE_PLACEMENTS": json.dumps({
            "tiny": {"hosts": [f"127.0.0.1:{free_port()}", f"127.0.0.1:{free_port()}"], "rank_memory": 1},
            "tinyfar": {"hosts": [f"127.0.0.1:{free_port()}", f"127.0.0.2:{free_port()}"]},
        }),
        "MLXSERVE_LOAD_TIMEOUT": "120",
    }
    system = start_system(home, {SMOL: smollm2_gguf, "tiny:latest": tiny_dir, "tinyfar:latest": tiny_dir}, extra_env=env)
    yield GroupSystem(system=system, ring_ports=(p1, p2))
    left = system.stop()
    assert not left, f"processes outlived `mlxctl serve`: {left}"


def ranks_of(gs: GroupSystem) -> list[dict]:
    status, ps = http_json("GET", gs.system.url + "/api/ps")
    assert status == 200, ps
    entry = next((m for m in ps["models"] if m["name"] == SMOL), None)
    return entry["ranks"] if entry else []


def chat(gs: GroupSystem, case: dict, timeout: float = 300) -> tuple[int, dict]:
    return http_json("POST", gs.system.url + "/api/chat", {
        "model": SMOL, "messages": case["messages"], "stream": False,
        "options": {"temperature": 0, "num_predict": len(case["greedy_token_ids"])}}, timeout=timeout)


def test_a_group_of_two_ranks_answers_the_greedy_reference_and_ps_shows_each_rank(group_system: GroupSystem,
                                                                                 smollm2_reference: dict) -> None:
    case = next(c for c in smollm2_reference["cases"] if "messages" in c)
    status, out = chat(group_system, case)
    assert status == 200, out
    expected = case["greedy_text"].removesuffix(EOS)
    assert out["message"]["content"] == expected
    status, ps = http_json("GET", group_system.system.url + "/api/ps")
    entry = next(m for m in ps["models"] if m["name"] == SMOL)
    assert entry["strategy"] == "pipeline"
    assert [(r["rank"], r["host"]) for r in entry["ranks"]] == [
        (0, f"127.0.0.1:{group_system.ring_ports[0]}"), (1, f"127.0.0.1:{group_system.ring_ports[1]}")]
    assert all(r["memory_bytes"] > 0 and alive(r["pid"]) for r in entry["ranks"]), entry
    table = group_system.system.mlxctl("ps")
    assert table.returncode == 0, table.stderr
    assert "rank 0 on 127.0.0.1" in table.stdout and "rank 1 on 127.0.0.1" in table.stdout


def test_a_rank_killed_mid_stream_fails_the_request_within_seconds_and_the_next_starts_a_fresh_group(
        group_system: GroupSystem, smollm2_reference: dict) -> None:
    case = next(c for c in smollm2_reference["cases"] if "messages" in c)
    assert chat(group_system, case)[0] == 200  # the group is up
    before = {r["rank"]: r["pid"] for r in ranks_of(group_system)}
    req = urllib.request.Request(group_system.system.url + "/api/generate", method="POST", data=json.dumps({
        "model": SMOL, "prompt": "Write a long story about a lighthouse.", "stream": True,
        "options": {"temperature": 0, "num_predict": 2000}}).encode(), headers={"Content-Type": "application/json"})
    lines: list[dict] = []
    killed_at: list[float] = []
    with urllib.request.urlopen(req, timeout=120) as resp:
        for raw in resp:
            lines.append(json.loads(raw))
            if len(lines) == 5:
                os.kill(before[1], signal.SIGKILL)
                killed_at.append(time.monotonic())
            if lines[-1].get("done") or "error" in lines[-1]:
                break
    ended = time.monotonic()
    assert killed_at and "error" in lines[-1], lines[-3:]
    # Rank 0 says which rank was lost, and where.
    assert "rank 1" in lines[-1]["error"] and f"127.0.0.1:{group_system.ring_ports[1]}" in lines[-1]["error"], lines[-1]
    assert ended - killed_at[0] < 10, f"the request outlived its rank by {ended - killed_at[0]:.1f}s"
    deadline = time.monotonic() + 10
    while any(alive(p) for p in before.values()) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not any(alive(p) for p in before.values()), "a rank of the dead group is still running"
    status, out = chat(group_system, case)
    assert status == 200 and out["message"]["content"] == case["greedy_text"].removesuffix(EOS), out
    after = {r["rank"]: r["pid"] for r in ranks_of(group_system)}
    assert len(after) == 2 and not set(after.values()) & set(before.values())


def test_mlxctl_stop_takes_every_rank_of_the_group_down(group_system: GroupSystem, smollm2_reference: dict) -> None:
    case = next(c for c in smollm2_reference["cases"] if "messages" in c)
    assert chat(group_system, case)[0] == 200
    pids = [r["pid"] for r in ranks_of(group_system)]
    stopped = group_system.system.mlxctl("stop", SMOL)
    assert stopped.returncode == 0, stopped.stderr
    deadline = time.monotonic() + 5
    while any(alive(p) for p in pids) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not any(alive(p) for p in pids) and ranks_of(group_system) == []


def test_a_model_that_fits_no_group_is_refused_with_the_numbers_and_nothing_starts(group_system: GroupSystem) -> None:
    before = descendants(group_system.system.proc.pid)
    status, out = http_json("POST", group_system.system.url + "/api/generate", {"model": "tiny", "prompt": "hi", "stream": False})
    assert status == 400, out
    assert out["error"].startswith("model tiny:latest needs "), out
    assert "per rank is more than the group's 1 B per rank (2 ranks on 127.0.0.1:" in out["error"], out
    assert descendants(group_system.system.proc.pid) <= before


@pytest.mark.skipif(shutil.which("ssh") is None, reason="needs the ssh client (apt-get install openssh-client)")
def test_a_group_with_an_unreachable_host_is_refused_naming_it_and_nothing_starts(group_system: GroupSystem) -> None:
    before = descendants(group_system.system.proc.pid)
    status, out = http_json("POST", group_system.system.url + "/api/generate", {"model": "tinyfar", "prompt": "hi", "stream": False})
    assert status == 503, out
    assert "cannot reach host 127.0.0.2 over ssh" in out["error"], out
    time.sleep(0.5)  # the preflight's ssh has exited before the answer; nothing else was started
    assert descendants(group_system.system.proc.pid) <= before


def test_a_sigkilled_supervisor_leaves_no_rank_of_the_group_behind(group_system: GroupSystem, smollm2_reference: dict) -> None:
    case = next(c for c in smollm2_reference["cases"] if "messages" in c)
    assert chat(group_system, case)[0] == 200
    pids = [r["pid"] for r in ranks_of(group_system)]
    assert len(pids) == 2 and all(alive(p) for p in pids)
    supervisor = next(p for p in descendants(group_system.system.proc.pid) if b"mlxserve.services.supervisor" in _cmdline(p))
    os.kill(supervisor, signal.SIGKILL)
    deadline = time.monotonic() + 5
    while any(alive(p) for p in pids) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not any(alive(p) for p in pids), "a rank outlived its supervisor"


def _cmdline(pid: int) -> bytes:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return b""


# -- the whole system with a rank on "another host" (sshd on 127.0.0.3) ---------------------------


def test_a_group_with_a_rank_over_ssh_copies_the_model_there_answers_the_reference_and_stops_cleanly(
        tmp_path_factory: pytest.TempPathFactory, smollm2_gguf: Path, smollm2_reference: dict, sshd: SshHost) -> None:
    home = tmp_path_factory.mktemp("mlxserve-ssh-group-home")
    remote_dir = tmp_path_factory.mktemp("remote-host-models")
    p1, p2 = free_port(), free_port()
    env = {
        "PATH": sshd.env()["PATH"],  # its `ssh` knows the sshd's port and key
        "MLXSERVE_PLACEMENTS": json.dumps({SMOL: {"hosts": [f"127.0.0.1:{p1}", f"{sshd.host}:{p2}"],
                                                  "model_dir": str(remote_dir)}}),
        "MLXSERVE_LOAD_TIMEOUT": "120",
    }
    system = start_system(home, {SMOL: smollm2_gguf}, extra_env=env)
    gs = GroupSystem(system=system, ring_ports=(p1, p2))
    try:
        case = next(c for c in smollm2_reference["cases"] if "messages" in c)
        status, out = chat(gs, case)
        assert status == 200, out
        assert out["message"]["content"] == case["greedy_text"].removesuffix(EOS)
        ranks = ranks_of(gs)
        assert [(r["rank"], r["host"]) for r in ranks] == [(0, f"127.0.0.1:{p1}"), (1, f"{sshd.host}:{p2}")]
        [copy] = [p for p in remote_dir.iterdir() if p.is_dir()]
        assert (copy / ".mlxserve-complete").exists() and (copy / "config.json").exists()
        remote_pid = ranks[1]["pid"]
        assert alive(remote_pid) and remote_pid not in descendants(system.proc.pid)  # sshd's child, not ours
    finally:
        left = system.stop()
    assert not left, f"processes outlived `mlxctl serve`: {left}"
    deadline = time.monotonic() + 5
    while alive(remote_pid) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not alive(remote_pid), "the remote rank outlived `mlxctl serve`"
