"""Worker processes: spawn (a fresh interpreter, never a fork), wait until ready, watch, kill;
`ProcessLauncher` is the pool's `Launcher` made of them.

A worker gets a pipe on stdin that nobody writes to: when the supervisor dies, the kernel closes
the write end and the worker reads EOF and exits, so no worker outlives its supervisor. Each
worker runs in its own session so a Ctrl-C aimed at the terminal reaches the supervisor, which
then stops its workers in order, instead of hitting every worker at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import sys
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Awaitable, Callable, Sequence

import grpc

from mlxserve.services.common import logs, rpc
from mlxserve.services.common.config import WORKER_MEMORY_BUDGET_ENV, Settings
from mlxserve.services.common.errors import Timeout, Unavailable
from mlxserve.services.common.worker_logs import worker_log_name
from mlxserve.v1 import common_pb2, worker_pb2, worker_pb2_grpc

from .blas import worker_env
from .store_client import ModelRef

STDERR_TAIL_LINES = 20
INFO_TIMEOUT_S = 1.0

CommandFor = Callable[[ModelRef, Path], Sequence[str]]


def worker_command(view_path: str | Path, socket_path: Path, model_name: str) -> list[str]:
    """The command line of a real MLX worker for one model."""
    return [
        sys.executable, "-m", "mlxserve.services.worker",
        "--model-path", str(view_path),
        "--socket", str(socket_path),
        "--model-name", model_name,
    ]


def new_socket_path(run_dir: Path) -> Path:
    return run_dir / f"worker-{uuid.uuid4().hex[:10]}.sock"


def log_path_for(logs_dir: Path, model_name: str) -> Path:
    """The worker's captured stdout/stderr: one file per model name, appended across restarts
    (`.stderr.log`, beside the `worker-<name>.log` JSON log the worker writes itself)."""
    return logs_dir / f"{worker_log_name(model_name)}.stderr.log"


def remove_stale_sockets(run_dir: Path) -> list[Path]:
    """Delete worker sockets (and group hostfiles) left by a previous supervisor (its workers died with it)."""
    removed = []
    for path in [*run_dir.glob("worker-*.sock"), *run_dir.glob("group-*.hosts.json")]:
        with contextlib.suppress(FileNotFoundError):
            path.unlink()
            removed.append(path)
    return removed


@dataclass
class WorkerProcess:
    """One spawned worker: its process, socket, and the part of the log file it wrote."""

    name: str
    key: str
    socket_path: Path | None  # None: a group's follower rank, which serves nothing
    log_path: Path
    process: asyncio.subprocess.Process
    log_offset: int = 0
    stopping: bool = False
    _channel: grpc.aio.Channel | None = field(default=None, repr=False)  # for Info, opened once ready

    @property
    def pid(self) -> int:
        return self.process.pid

    @property
    def exit_code(self) -> int | None:
        return self.process.returncode

    @property
    def address(self) -> str:
        return rpc.unix_target(self.socket_path) if self.socket_path is not None else ""

    @property
    def alive(self) -> bool:
        if self.process.returncode is not None:
            return False
        if not hasattr(os, "waitid"):  # not on every Unix (older macOS Pythons)
            return True
        # asyncio sets returncode only once its child watcher reaps the exit, a moment after a
        # kill -9: ask the kernel directly (WNOWAIT leaves the reaping to asyncio), so a worker
        # that just died is never handed to a request.
        try:
            return os.waitid(os.P_PID, self.process.pid, os.WEXITED | os.WNOHANG | os.WNOWAIT) is None
        except ChildProcessError:  # already reaped
            return False

    def stderr_tail(self, lines: int = STDERR_TAIL_LINES) -> list[str]:
        """The last non-empty lines this worker wrote to stderr since it was spawned."""
        try:
            with open(self.log_path, "rb") as f:
                f.seek(self.log_offset)
                data = f.read()
        except OSError:
            return []
        text = data[-64 * 1024:].decode("utf-8", errors="replace")
        return [ln.rstrip() for ln in text.splitlines() if ln.strip()][-lines:]

    def failure_cause(self) -> str:
        """The most telling line of stderr (the last one: an exception or a final log record)."""
        tail = self.stderr_tail()
        cause = tail[-1] if tail else "it wrote nothing to stderr"
        return cause if len(cause) <= 500 else cause[:497] + "..."

    async def ping(self, timeout: float = 1.0) -> bool:
        """True when the worker answers Ping on its socket within `timeout`."""
        if self.socket_path is None or not self.socket_path.exists():
            return False
        channel = rpc.aio_channel(self.address)
        try:
            stub = worker_pb2_grpc.WorkerStub(channel)
            await stub.Ping(common_pb2.PingRequest(), timeout=timeout)
            return True
        except grpc.RpcError:
            return False
        finally:
            await channel.close()

    async def info(self, timeout: float = INFO_TIMEOUT_S) -> worker_pb2.InfoResponse | None:
        """The worker's Info (memory, progress), or None when it does not answer within `timeout`.
        One channel per worker, kept until it exits: the monitor asks every second."""
        if self._channel is None:
            self._channel = rpc.aio_channel(self.address)
        try:
            return await worker_pb2_grpc.WorkerStub(self._channel).Info(worker_pb2.InfoRequest(), timeout=timeout)
        except grpc.RpcError:
            return None

    async def close_channel(self) -> None:
        channel, self._channel = self._channel, None
        if channel is not None:
            await channel.close()

    async def wait_ready(self, timeout: float, poll_s: float = 0.1) -> None:
        """Return once the worker answers Ping.

        Raises Unavailable (with the stderr cause) if the process exits first, or Timeout — after
        killing it — if it is not ready within `timeout` seconds.
        """
        deadline = time.monotonic() + timeout
        exited = asyncio.ensure_future(self.process.wait())
        try:
            while True:
                if not self.alive:
                    # Dead per the kernel; let asyncio reap it so the exit code is known.
                    await asyncio.wait({exited}, timeout=1.0)
                    raise self.start_failure()
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    await self.stop(grace=1.0)
                    raise Timeout(f"worker for {self.name} did not become ready within {timeout:g}s (log: {self.log_path})")
                if await self.ping(timeout=min(1.0, max(0.05, remaining))):
                    return
                # Sleep, but wake at once if the process exits meanwhile.
                await asyncio.wait({exited}, timeout=min(poll_s, max(0.0, deadline - time.monotonic())))
        finally:
            if not exited.done():
                exited.cancel()

    async def wait(self) -> int:
        return await self.process.wait()

    def start_failure(self) -> Unavailable:
        rc = self.process.returncode
        return Unavailable(f"worker for {self.name} failed to start (exit code {rc}): {self.failure_cause()}")

    async def stop(self, grace: float = 3.0) -> int | None:
        """SIGTERM the worker (and close its stdin), then SIGKILL it after `grace` seconds."""
        self.stopping = True
        if self.alive:
            self._signal(signal.SIGTERM)
            if self.process.stdin is not None:
                with contextlib.suppress(Exception):
                    self.process.stdin.close()
            try:
                await asyncio.wait_for(self.process.wait(), timeout=grace)
            except asyncio.TimeoutError:
                self._signal(signal.SIGKILL)
                await self.process.wait()
        if self.socket_path is not None:
            self.socket_path.unlink(missing_ok=True)
        await self.close_channel()
        return self.process.returncode

    def kill(self) -> None:
        """SIGKILL at once (a wedged worker would not honour SIGTERM); the exit watcher reaps it."""
        self.stopping = True
        self._signal(signal.SIGKILL)

    def _signal(self, sig: signal.Signals) -> None:
        # The worker leads its own process group: signal the group so helpers it started go too.
        try:
            os.killpg(self.process.pid, sig)
        except (ProcessLookupError, PermissionError):
            with contextlib.suppress(ProcessLookupError):
                self.process.send_signal(sig)


async def spawn_worker(
    command: Sequence[str],
    *,
    name: str,
    key: str,
    socket_path: Path | None,
    log_path: Path,
    env: dict[str, str],
) -> WorkerProcess:
    """Start a worker as a fresh process; stderr (and stdout) append to `log_path`."""
    log_path.parent.mkdir(parents=True, exist_ok=True)
    if socket_path is not None:
        socket_path.unlink(missing_ok=True)
    with open(log_path, "ab") as log:
        offset = log.tell()
        process = await asyncio.create_subprocess_exec(
            *command,
            stdin=asyncio.subprocess.PIPE,
            stdout=log,
            stderr=log,
            env=env,
            start_new_session=True,
            close_fds=True,
        )
    return WorkerProcess(name=name, key=key, socket_path=socket_path, log_path=log_path, process=process, log_offset=offset)


def watch_exit(worker: Any, on_exit: Callable[[Any], Awaitable[None] | None]) -> asyncio.Task:
    """Call `on_exit(worker)` when `worker.wait()` returns (a WorkerProcess has exited, a
    group.WorkerGroup has lost every rank), however it exits."""

    async def watch() -> None:
        await worker.wait()
        result = on_exit(worker)
        if asyncio.iscoroutine(result):
            await result

    return asyncio.get_running_loop().create_task(watch(), name=f"watch-{worker.name}-{worker.pid}")


class ProcessLauncher:
    """The pool's `Launcher` over real processes: a worker per model, its socket in run_dir, its
    stderr appended to a log file in logs_dir, its environment the supervisor's settings plus
    the BLAS it should use and the memory it may take."""

    def __init__(self, settings: Settings, *, cpu_backend: bool, command_for: CommandFor | None = None) -> None:
        self.settings = settings
        self.cpu_backend = cpu_backend
        self._command_for = command_for or (lambda ref, sock: worker_command(ref.view_path, sock, ref.name))
        self.log = logs.get_logger(component="pool")

    def env_for(self, memory_budget: int) -> dict[str, str]:
        """A worker's environment; `memory_budget` bytes (0: no budget) is what it may hold."""
        # Only workers get the optimized BLAS (LD_PRELOAD), when one is installed and they run on the CPU.
        env = worker_env(self.settings.cpu_blas, {**os.environ, **self.settings.to_env(), "MLXSERVE_PARENT_PID": str(os.getpid())},
                         cpu_backend=self.cpu_backend)
        env[WORKER_MEMORY_BUDGET_ENV] = str(memory_budget)
        return env

    async def spawn(self, ref: ModelRef, *, memory_budget: int) -> WorkerProcess:
        socket_path = new_socket_path(self.settings.run_dir)
        log_path = log_path_for(self.settings.logs_dir, ref.name)
        self.log.info("worker_starting", model=ref.name, digest=ref.digest, socket=str(socket_path), log=str(log_path))
        return await spawn_worker(self._command_for(ref, socket_path), name=ref.name, key=ref.digest,
                                  socket_path=socket_path, log_path=log_path, env=self.env_for(memory_budget))

    async def wait_ready(self, worker: WorkerProcess, timeout: float) -> None:
        await worker.wait_ready(timeout)

    async def stop(self, worker: WorkerProcess, grace: float) -> None:
        await worker.stop(grace)

    def kill(self, worker: WorkerProcess) -> None:
        worker.kill()

    async def ping(self, worker: WorkerProcess) -> bool:
        return await worker.ping()

    async def info(self, worker: WorkerProcess) -> worker_pb2.InfoResponse | None:
        return await worker.info()

    def watch(self, worker: WorkerProcess, on_exit: Callable[[WorkerProcess], None]) -> asyncio.Task:
        """Call `on_exit(worker)` once the process exits (its socket and channel closed first)."""

        async def exited(w: WorkerProcess) -> None:
            if w.socket_path is not None:
                w.socket_path.unlink(missing_ok=True)
            await w.close_channel()
            on_exit(w)

        return watch_exit(worker, exited)
