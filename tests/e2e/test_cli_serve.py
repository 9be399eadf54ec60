"""`mlxctl serve` as a real process: it starts the three services, reports when one dies, and
leaves nothing behind when stopped."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Iterator

import pytest


@pytest.fixture
def home() -> Iterator[Path]:
    d = Path(tempfile.mkdtemp(prefix="mxv"))
    yield d
    shutil.rmtree(d, ignore_errors=True)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def children_of(pid: int) -> list[int]:
    out = subprocess.run(["ps", "-o", "pid=", "--ppid", str(pid)], capture_output=True, text=True).stdout
    return [int(x) for x in out.split()]


def alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(")")[-1].split()[0] != "Z"
    except (FileNotFoundError, ProcessLookupError):
        # Reaped between open and read: the read then fails with ESRCH.
        return False


def start_serve(home: Path, port: int) -> subprocess.Popen:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MLXSERVE_")}
    env["MLXSERVE_HOME"] = str(home)
    return subprocess.Popen(
        [sys.executable, "-m", "mlxserve.cli.main", "serve", "--port", str(port), "--log-level", "warning",
         "--startup-timeout", "60"],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )


def test_serve_starts_the_services_and_sigterm_stops_them_all(home: Path) -> None:
    port = free_port()
    proc = start_serve(home, port)
    try:
        line = proc.stdout.readline()
        assert line.strip() == f"mlxserve is serving on http://127.0.0.1:{port} (models: none)", proc.stderr.read() if not line else line
        kids = children_of(proc.pid)
        assert len(kids) == 3
        assert (home / "run" / "store.sock").exists() and (home / "run" / "supervisor.sock").exists()
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=20) == 0
        assert not any(alive(k) for k in kids)
        assert not (home / "run" / "supervisor.sock").exists()
    finally:
        proc.kill()


def test_serve_reports_the_service_that_died_and_exits_nonzero(home: Path) -> None:
    port = free_port()
    blocker = socket.socket()
    blocker.bind(("127.0.0.1", port))  # bound, never listening: the gateway cannot take the port
    proc = start_serve(home, port)
    try:
        out, err = proc.communicate(timeout=60)
        assert proc.returncode == 4
        assert "Error: the gateway service exited (exit code 1)" in err
        assert "mlxserve is serving" not in out
        assert not (home / "run" / "supervisor.sock").exists()  # the others were stopped
    finally:
        proc.kill()
        blocker.close()
