"""A model served by a group of MLX processes (mx.distributed): launch the ranks, wait until the
group has formed, watch every rank, and take the whole group down when one rank goes.

`WorkerGroup` is what the pool sees as one `Worker`: rank 0's pid and socket (the worker the
gateway talks to), alive only while every rank is. Local ranks are spawned like single workers
(processes.spawn_worker: a stdin pipe nobody writes, their own session, a stderr log each), so
they exit on stdin EOF when the supervisor dies. Remote ranks run over `ssh -tt`, with the launch
script mlx.launch builds (cd, export the environment, the hostfile in a temp file, exec python):
killing the local ssh closes the session, which hangs the remote terminal up and ends the rank
there. The local ssh gets the same stdin pipe as local ranks, through a watchdog that kills it on
EOF, so a remote rank too ends with the supervisor (and once its ring peers are gone anyway).

When one rank exits, the followers are killed at once; rank 0 gets a moment (LEADER_GRACE_S) to
fail its requests naming the lost rank, then is killed too; the pool hears of the exit once.

Before a remote rank starts, each remote host is asked over ssh for its mlx, mlx-lm and mlxserve
versions: an unreachable host or a version mismatch is refused with the host named, and nothing
is started. A remote host loads the model from the path `remote_model` gives (server.py passes
remote_files.ensure_model_on, which copies it there once per digest).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import importlib.metadata
import ipaddress
import json
import os
import re
import shlex
import socket
import sys
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Awaitable, Callable, Mapping, Sequence

from mlxserve.services.common import logs
from mlxserve.services.common.config import Settings
from mlxserve.services.common.errors import Busy, Timeout, Unavailable, Unsupported
from mlxserve.services.common.placement import GroupHost, Placement
from mlxserve.services.common.worker_logs import worker_log_name
from mlxserve.v1 import worker_pb2

from .processes import CommandFor, ProcessLauncher, WorkerProcess, new_socket_path, spawn_worker
from .store_client import ModelRef

JOINED = re.compile(r"mlxserve-group: rank (\d+) of (\d+) joined")
GROUP_HOSTS_ENV = "MLXSERVE_GROUP_HOSTS"
PACKAGES = ("mlx", "mlx-lm", "mlxserve")
SSH_OPTIONS = ("-o", "BatchMode=yes", "-o", "ConnectTimeout=5")
PREFLIGHT_TIMEOUT_S = 15.0
# What a remote host runs to report its versions: one JSON object on stdout.
VERSIONS_SCRIPT = (
    "import importlib.metadata as m, json\n"
    "def v(p):\n"
    "    try:\n        return m.version(p)\n"
    "    except m.PackageNotFoundError:\n        return 'missing'\n"
    f"print(json.dumps({{p: v(p) for p in {list(PACKAGES)!r}}}))"
)
# Backends whose ranks the supervisor knows how to start (mpi and jaccl need their own launchers).
LAUNCHED_BACKENDS = ("ring", "nccl")
REMOTE_ENV_EXCLUDED = frozenset({"MLXSERVE_HOME", "MLXSERVE_CONFIG", "MLXSERVE_API_KEY", "MLXSERVE_HF_TOKEN_FILE",
                                  "MLXSERVE_PARENT_PID"})
# How long rank 0 of a group that lost a rank may take to fail its requests (naming the rank) and exit.
LEADER_GRACE_S = 3.0
# (host, local view path, digest, placement.model_dir) -> the model's path on that host.
RemoteModel = Callable[[str, str, str, str], Awaitable[str]]


# -- pure pieces (unit-tested) -------------------------------------------------------------------


WORKER_PROGRAM = ("-m", "mlxserve.services.worker")


def rank_command(placement: Placement, rank: int, *, view_path: str, model_name: str, socket_path: Path,
                 python: str = sys.executable, program: Sequence[str] = WORKER_PROGRAM) -> list[str]:
    """The worker command of one rank (the process contract): rank 0 serves on `socket_path`,
    the others follow it. `program`: what python runs (tests give a stand-in script)."""
    cmd = [python, *program, "--model-path", str(view_path), "--model-name", model_name,
           "--group-strategy", placement.strategy, "--group-backend", placement.backend]
    return cmd + (["--socket", str(socket_path)] if rank == 0 else ["--follower"])


def host_labels(placement: Placement) -> list[str]:
    return [h.label() for h in placement.hosts]


def rank_env(placement: Placement, rank: int, *, hostfile: Path | None, hostfile_text: str, memory_budget: int,
             ips: Mapping[str, str]) -> dict[str, str]:
    """The environment a rank needs beyond the usual settings (the process contract)."""
    env = {"MLX_RANK": str(rank), GROUP_HOSTS_ENV: json.dumps(host_labels(placement)),
           "MLXSERVE_WORKER_MEMORY_BUDGET": str(memory_budget)}
    if placement.backend == "ring":
        # A remote rank writes the hostfile itself (remote_launch_script); a local one reads ours.
        env["MLX_HOSTFILE"] = str(hostfile) if hostfile is not None else hostfile_text
    elif placement.backend == "nccl":
        first = placement.hosts[0]
        env.update(MLX_WORLD_SIZE=str(placement.size), NCCL_HOST_IP=first.ip or ips.get(first.ssh, "127.0.0.1"),
                   NCCL_PORT=str(first.port or placement.port),
                   CUDA_VISIBLE_DEVICES=str(local_index(placement, rank)))
    return env


def shared_cores_env(placement: Placement, base_env: Mapping[str, str], cores: int | None = None) -> dict[str, str]:
    """Several ranks on this machine share its cores: each gets its part of them for OpenBLAS,
    whose default (a thread per core, spinning after each call) makes the ranks fight: two SmolLM2
    ranks on 2 cores decoded 5.1 tok/s with the default and 11.0 with one thread each
    (tests/bench/results/group-ring-cpu.json). A value the user set is kept."""
    here = sum(1 for h in placement.hosts if h.local)
    if here < 2 or "OPENBLAS_NUM_THREADS" in base_env:
        return {}
    return {"OPENBLAS_NUM_THREADS": str(max(1, (cores or os.cpu_count() or 1) // here))}


def local_index(placement: Placement, rank: int) -> int:
    """The rank's index among the ranks on its own host (its GPU there)."""
    host = placement.hosts[rank].ssh
    return sum(1 for h in placement.hosts[:rank] if h.ssh == host)


def remote_launch_script(command: Sequence[str], env: Mapping[str, str], *, cwd: str, files: Mapping[str, str]) -> str:
    """The shell script a remote rank runs, built as mlx.launch's RemoteProcess.make_launch_script
    builds it: no echo on the forced tty, cd where we are (if it exists there), export the
    environment, write each of `files` (env name -> content) to a temp file named by that
    variable, then exec the command."""
    script = "stty -echo; "
    qd = shlex.quote(cwd)
    script += f"if [[ -d {qd} ]]; then cd {qd}; fi; "
    for key, value in env.items():
        if not key or not all(c.isalnum() or c == "_" for c in key):
            raise ValueError(f"{key!r} is not an environment variable name")
        script += f"export {key}={shlex.quote(value)}; "
    for name, content in files.items():
        script += f"fname=$(mktemp); echo {shlex.quote(content)} >$fname; export {name}=$fname; "
    script += f"cmd=({' '.join(map(shlex.quote, command))}); exec \"${{cmd[@]}}\""
    return script


def remote_settings_env(env: Mapping[str, str]) -> dict[str, str]:
    """The settings a remote rank gets (on its ssh command line, so visible in `ps` on both
    hosts): mlxserve's, less secrets and this machine's paths (the remote uses its own home)."""
    return {k: v for k, v in env.items() if k.startswith("MLXSERVE_") and k not in REMOTE_ENV_EXCLUDED}


def ssh_command(host: str, remote: str, *, tty: bool = False) -> list[str]:
    """`ssh` to `host` running `remote` (a shell line) through bash, never asking for a password."""
    return ["ssh", *SSH_OPTIONS, *(("-tt", "-o", "LogLevel=ERROR") if tty else ()), host,
            f"bash -c {shlex.quote(remote)}"]


# Runs a remote rank's ssh ("$@") so that it ends when the supervisor does: `ssh -tt` keeps its
# session open on stdin EOF, so a watcher on the same stdin pipe kills ssh then (its session's
# end hangs the remote terminal up, ending the rank there). Exits with ssh's status: the rank's.
SSH_WATCHDOG = ('exec 3<&0; "$@" <&3 3<&- & ssh=$!; '
                '{ cat <&3 >/dev/null 3<&-; kill $ssh 2>/dev/null; } & '
                'exec 3<&-; wait $ssh; rc=$?; kill $! 2>/dev/null; exit $rc')


def remote_rank_command(ssh: Sequence[str], host: str, script: str) -> list[str]:
    """The local process of a remote rank: `ssh -tt host script` under the stdin watchdog."""
    return ["/bin/sh", "-c", SSH_WATCHDOG, "mlxserve-rank-ssh", *ssh, *ssh_command(host, script, tty=True)[1:]]


def preflight_command(host: str, python: str) -> list[str]:
    return ssh_command(host, f"{shlex.quote(python)} -c {shlex.quote(VERSIONS_SCRIPT)}")


def local_versions() -> dict[str, str]:
    out = {}
    for p in PACKAGES:
        try:
            out[p] = importlib.metadata.version(p)
        except importlib.metadata.PackageNotFoundError:
            out[p] = "missing"
    return out


def parse_versions(host: str, stdout: str) -> dict[str, str]:
    """The versions a host reported (the last JSON line of its output: login banners come first)."""
    for line in reversed(stdout.strip().splitlines()):
        line = line.strip()
        if line.startswith("{"):
            try:
                data = json.loads(line)
            except ValueError:
                break
            if isinstance(data, dict) and all(p in data for p in PACKAGES):
                return {p: str(data[p]) for p in PACKAGES}
            break
    raise Unavailable(f"host {host} did not report its mlx versions over ssh (it printed: {stdout.strip()[-300:]!r})")


def version_mismatch(versions: Mapping[str, Mapping[str, str]]) -> str | None:
    """None when every host has the same versions, else a message naming each host and its versions."""
    if len({tuple(sorted(v.items())) for v in versions.values()}) <= 1:
        return None
    each = "; ".join(f"{host} has " + ", ".join(f"{p} {v.get(p, '?')}" for p in PACKAGES) for host, v in versions.items())
    return f"the group's hosts run different versions ({each}): install the same mlx, mlx-lm and mlxserve on every host"


def ssh_failure(host: str, rc: int | None, stderr: str) -> str:
    said = " ".join(line.strip() for line in stderr.strip().splitlines() if line.strip())[-400:]
    return f"cannot reach host {host} over ssh (exit code {rc}): {said or 'ssh said nothing'}"


async def resolve_ips(placement: Placement) -> dict[str, str]:
    """IP addresses of hosts given by name (resolved when the group starts)."""
    out: dict[str, str] = {}
    loop = asyncio.get_running_loop()
    for rank, host in enumerate(placement.hosts):
        if host.ip or host.ssh in out:
            continue
        try:
            out[host.ssh] = (await loop.getaddrinfo(host.ssh, None, proto=socket.IPPROTO_TCP))[0][4][0]
        except OSError as e:
            raise Unavailable(f"host {host.ssh} (rank {rank}) does not resolve to an address: {e}") from e
    return out


def with_reachable_local_ips(placement: Placement, ips: Mapping[str, str],
                             source_ip: Callable[[str], str]) -> Placement:
    """The placement with this machine's ranks at an address the other hosts can reach.

    Rank 0 is named 127.0.0.1 or localhost, but a rank on another host must reach it (the ring
    connects every rank to its neighbours; NCCL's rendezvous is at rank 0): use the address of
    this machine on the route to the first remote host (`source_ip`), as a hostfile's "ips"
    would give it. A group on this machine alone keeps its loopback addresses."""
    remote = next((h for h in placement.hosts if not h.local), None)
    if remote is None:
        return placement
    target = remote.ip or ips.get(remote.ssh, "")
    if not target or ipaddress.ip_address(target).is_loopback:
        return placement
    here = ""
    hosts = []
    for rank, host in enumerate(placement.hosts):
        if host.local and ipaddress.ip_address(host.ip or "127.0.0.1").is_loopback:
            if not here:
                try:
                    here = source_ip(target)
                except OSError as e:
                    raise Unavailable(f"no route from this machine to host {remote.ssh} ({target}): {e}") from e
            host = dataclasses.replace(host, ip=here)
        hosts.append(host)
    return dataclasses.replace(placement, hosts=tuple(hosts))


def route_source_ip(target: str) -> str:
    """This machine's address on the route to `target` (a UDP connect sends nothing)."""
    with socket.socket(socket.AF_INET6 if ":" in target else socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.connect((target, 9))
        return str(s.getsockname()[0])


def joined_ranks(lines: Sequence[str]) -> set[int]:
    return {int(m.group(1)) for line in lines for m in [JOINED.search(line)] if m}


# -- the group ----------------------------------------------------------------------------------


@dataclass(eq=False)
class Rank:
    """One rank: its host and the local process (the worker itself, or the ssh that runs it)."""

    rank: int
    host: GroupHost
    proc: WorkerProcess

    def describe(self) -> str:
        return f"rank {self.rank} on {self.host.label()}"


@dataclass(eq=False)
class WorkerGroup:
    """One model's group of ranks, as the pool's `Worker` (see the module docstring)."""

    name: str
    key: str
    placement: Placement
    ranks: list[Rank]
    hostfile: Path | None = None
    addresses: tuple[str, ...] = ()  # where its ranks listen (ip:port), held until every rank is gone
    stopping: bool = False
    first_exit: Rank | None = None  # the rank whose exit ended the group
    leader_grace: float = LEADER_GRACE_S
    _gone: asyncio.Task | None = field(default=None, repr=False)

    @property
    def leader(self) -> WorkerProcess:
        return self.ranks[0].proc

    @property
    def pid(self) -> int:
        return self.leader.pid

    @property
    def address(self) -> str:
        return self.leader.address

    @property
    def socket_path(self) -> Path | None:
        return self.leader.socket_path

    @property
    def log_path(self) -> Path:
        return self.leader.log_path

    @property
    def alive(self) -> bool:
        dead = [r for r in self.ranks if not r.proc.alive]
        if dead and self.first_exit is None:
            self.first_exit = dead[0]
        return not dead

    @property
    def exit_code(self) -> int | None:
        if self.first_exit is not None:
            return self.first_exit.proc.exit_code
        codes = [r.proc.exit_code for r in self.ranks]
        return None if any(c is None for c in codes) else codes[0]

    def stderr_tail(self) -> list[str]:
        failed = self.first_exit or self.ranks[0]
        return [f"{failed.describe()}: {line}" for line in failed.proc.stderr_tail()]

    def failure_cause(self) -> str:
        failed = self.first_exit
        if failed is None:
            return self.leader.failure_cause()
        return f"{failed.describe()} exited (code {failed.proc.exit_code}): {failed.proc.failure_cause()}"

    def joined(self) -> set[int]:
        return {r.rank for r in self.ranks if r.rank in joined_ranks(r.proc.stderr_tail(200))}

    async def ping(self, timeout: float = 1.0) -> bool:
        return self.alive and await self.leader.ping(timeout)

    async def info(self) -> worker_pb2.InfoResponse | None:
        return await self.leader.info()

    async def close_channel(self) -> None:
        await self.leader.close_channel()

    async def wait_ready(self, timeout: float, poll_s: float = 0.1) -> None:
        """Return once rank 0 answers Ping (the group has formed and loaded).

        A rank that exits first fails the start at once with its cause; past `timeout` every rank
        is killed and the ranks that never joined the group are named (mx.distributed.init waits
        forever for a peer that never comes)."""
        deadline = time.monotonic() + timeout
        gone = self.wait()
        while True:
            if not self.alive:
                self.kill()
                await asyncio.wait({gone}, timeout=2.0)
                raise Unavailable(f"group for {self.name} failed to start: {self.failure_cause()}")
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                missing = [r for r in self.ranks if r.rank not in self.joined()]
                self.stopping = True
                self.kill()
                await asyncio.wait({gone}, timeout=5.0)
                why = ("; never joined: " + ", ".join(r.describe() for r in missing)) if missing else \
                      " (every rank joined; rank 0 did not answer)"
                raise Timeout(f"group for {self.name} did not become ready within {timeout:g}s{why}")
            if await self.leader.ping(timeout=min(1.0, max(0.05, remaining))):
                return
            await asyncio.wait({gone}, timeout=min(poll_s, max(0.0, deadline - time.monotonic())))

    def wait(self) -> asyncio.Task:
        """A task that ends once every rank has exited: the first exit kills the rest (a group
        with a missing rank cannot compute)."""
        if self._gone is None:
            self._gone = asyncio.get_running_loop().create_task(self._watch(), name=f"group-{self.name}")
        return self._gone

    async def _watch(self) -> None:
        waits = {asyncio.ensure_future(r.proc.process.wait()): r for r in self.ranks}
        done, _ = await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
        if self.first_exit is None:
            self.first_exit = min((waits[t] for t in done), key=lambda r: r.rank)
        for r in self.ranks[1:]:
            r.proc.kill()
        # Rank 0 notices the lost peer within about a second and fails its requests naming it:
        # let it, unless it is being stopped anyway; then kill it too.
        leader = next(t for t, r in waits.items() if r.rank == 0)
        if not self.stopping and not leader.done():
            await asyncio.wait({leader}, timeout=self.leader_grace)
        self.leader.kill()
        await asyncio.gather(*waits)
        self._cleanup()

    async def stop(self, grace: float = 3.0) -> None:
        """Rank 0 first (it tells the followers to stop), then the rest; SIGKILL after `grace`."""
        self.stopping = True
        await self.leader.stop(grace)
        await asyncio.gather(*(r.proc.stop(grace) for r in self.ranks[1:]))
        self._cleanup()

    def kill(self) -> None:
        self.stopping = True
        for r in self.ranks:
            r.proc.kill()

    def _cleanup(self) -> None:
        if self.hostfile is not None:
            with contextlib.suppress(FileNotFoundError):
                self.hostfile.unlink()


# -- launching ----------------------------------------------------------------------------------


class GroupLauncher:
    """Starts groups: preflight of remote hosts, the ring hostfile, one process per rank."""

    def __init__(self, *, run_dir: Path, logs_dir: Path, ssh: Sequence[str] = ("ssh",),
                 program: Sequence[str] = WORKER_PROGRAM, remote_model: RemoteModel | None = None) -> None:
        self.run_dir = run_dir
        self.logs_dir = logs_dir
        self._ssh = list(ssh)
        self._program = tuple(program)
        # Where a remote host finds the model (remote_files.ensure_model_on copies it there);
        # None: at the same path as here, as mlx.launch assumes.
        self._remote_model = remote_model
        self._groups: dict[str, WorkerGroup] = {}  # the last group per model: its ports are ours
        self.log = logs.get_logger(component="pool")

    async def preflight(self, placement: Placement) -> None:
        """Ask every remote host for its versions; refuse an unreachable host or a mismatch."""
        remote = list(dict.fromkeys(h.ssh for h in placement.hosts if not h.local))
        if not remote:
            return
        python = placement.python or sys.executable
        results = await asyncio.gather(*(self._ask_versions(h, python) for h in remote))
        versions = {"this machine": local_versions(), **dict(zip(remote, results))}
        mismatch = version_mismatch(versions)
        if mismatch:
            raise Unavailable(mismatch)

    async def _ask_versions(self, host: str, python: str) -> dict[str, str]:
        cmd = preflight_command(host, python)
        cmd[0:1] = self._ssh
        proc = await asyncio.create_subprocess_exec(*cmd, stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.PIPE,
                                                    stderr=asyncio.subprocess.PIPE, start_new_session=True)
        try:
            out, err = await asyncio.wait_for(proc.communicate(), PREFLIGHT_TIMEOUT_S)
        except asyncio.TimeoutError:
            proc.kill()
            await proc.wait()
            raise Unavailable(f"cannot reach host {host} over ssh: no answer within {PREFLIGHT_TIMEOUT_S:g}s") from None
        if proc.returncode != 0:
            raise Unavailable(ssh_failure(host, proc.returncode, err.decode(errors="replace")))
        return parse_versions(host, out.decode(errors="replace"))

    async def spawn(self, *, name: str, key: str, view_path: str, placement: Placement, rank_budget: int,
                    base_env: dict[str, str], preflight: bool = True) -> WorkerGroup:
        """Start every rank of `placement` for a model (after the `preflight`, unless the caller
        ran it); raise, nothing left running, when it cannot."""
        if placement.backend not in LAUNCHED_BACKENDS:
            raise Unsupported(f"{placement.source or 'placement'}: the supervisor starts groups on the "
                              f"{' or '.join(LAUNCHED_BACKENDS)} backend, not {placement.backend}")
        await self._previous_gone(key)
        ips = await resolve_ips(placement)
        placement = with_reachable_local_ips(placement, ips, route_source_ip)
        addresses = tuple(placement.ring_addresses(ips))
        self._ports_free(name, addresses)
        if preflight:
            await self.preflight(placement)
        hostfile_text = placement.mlx_ring_hostfile(ips) if placement.backend == "ring" else ""
        remote_views = {}
        for host in dict.fromkeys(h.ssh for h in placement.hosts if not h.local):
            remote_views[host] = (await self._remote_model(host, view_path, key, placement.model_dir)
                                  if self._remote_model is not None else view_path)
        hostfile = None
        if hostfile_text:
            hostfile = self.run_dir / f"group-{uuid.uuid4().hex[:10]}.hosts.json"
            hostfile.write_text(hostfile_text)
        socket_path = new_socket_path(self.run_dir)
        python = placement.python or sys.executable
        ranks: list[Rank] = []
        try:
            for rank, host in enumerate(placement.hosts):
                env = rank_env(placement, rank, hostfile=hostfile if host.local else None, hostfile_text=hostfile_text,
                               memory_budget=rank_budget, ips=ips)
                log_path = self.logs_dir / f"{worker_log_name(name if rank == 0 else f'{name}.rank{rank}')}.stderr.log"
                if host.local:
                    command = rank_command(placement, rank, view_path=view_path, model_name=name, socket_path=socket_path,
                                           program=self._program)
                    full_env = {**base_env, **env, **shared_cores_env(placement, base_env)}
                else:
                    files = {"MLX_HOSTFILE": env.pop("MLX_HOSTFILE")} if "MLX_HOSTFILE" in env else {}
                    settings_env = remote_settings_env(base_env)
                    command = rank_command(placement, rank, view_path=remote_views[host.ssh], model_name=name,
                                           socket_path=socket_path, python=python, program=self._program)
                    script = remote_launch_script(command, {**settings_env, **env}, cwd=os.getcwd(), files=files)
                    command = remote_rank_command(self._ssh, host.ssh, script)
                    full_env = dict(base_env)
                self.log.info("group_rank_starting", model=name, rank=rank, host=host.label(), log=str(log_path))
                proc = await spawn_worker(command, name=f"{name} rank {rank}", key=key,
                                          socket_path=socket_path if rank == 0 else None, log_path=log_path, env=full_env)
                ranks.append(Rank(rank=rank, host=host, proc=proc))
        except BaseException:
            for r in ranks:
                await r.proc.stop(grace=1.0)
            if hostfile is not None:
                hostfile.unlink(missing_ok=True)
            raise
        group = WorkerGroup(name=name, key=key, placement=placement, ranks=ranks, hostfile=hostfile, addresses=addresses)
        self._groups[key] = group
        return group

    def _ports_free(self, name: str, addresses: tuple[str, ...]) -> None:
        """Two groups cannot listen on one address: a model whose group would reuse the ports of
        another model's running group waits for it (models sharing the `distributed` group take
        turns, as models do in a memory budget)."""
        for other in self._groups.values():
            taken = set(addresses) & set(other.addresses)
            if taken and any(r.proc.alive for r in other.ranks):
                raise Busy(f"cannot start {name}'s group: {other.name}'s group is listening on {', '.join(sorted(taken))}; "
                           f"stop it (mlxctl stop {other.name}) or give one of them a placement with other ports",
                           retry_after=5.0)

    async def _previous_gone(self, key: str) -> None:
        """The model's previous group (crashed, being replaced) holds the same ring ports until
        every rank of it is gone: make sure it is."""
        old = self._groups.pop(key, None)
        if old is not None and any(r.proc.alive for r in old.ranks):
            if old.alive:
                old.kill()  # whole, yet replaced: nobody uses it
            # Else it lost a rank and is ending: its watcher ends rank 0 after the leader's grace.
            await asyncio.wait({old.wait()}, timeout=old.leader_grace + 5.0)


class ProcessGroupLauncher(ProcessLauncher):
    """`ProcessLauncher` (one process per model) that also starts groups (`spawn_group`); the
    other verbs work on either handle, since a WorkerGroup answers what a WorkerProcess does."""

    def __init__(self, settings: Settings, *, cpu_backend: bool, command_for: CommandFor | None = None,
                 rank_program: Sequence[str] = WORKER_PROGRAM, remote_model: RemoteModel | None = None,
                 ssh: Sequence[str] = ("ssh",)) -> None:
        super().__init__(settings, cpu_backend=cpu_backend, command_for=command_for)
        self.groups = GroupLauncher(run_dir=settings.run_dir, logs_dir=settings.logs_dir, program=rank_program,
                                    remote_model=remote_model, ssh=ssh)

    async def preflight(self, placement: Placement) -> None:
        await self.groups.preflight(placement)

    async def spawn_group(self, ref: ModelRef, placement: Placement, *, rank_budget: int) -> WorkerGroup:
        return await self.groups.spawn(name=ref.name, key=ref.digest, view_path=ref.view_path, placement=placement,
                                       rank_budget=rank_budget, base_env=self.env_for(rank_budget), preflight=False)
