"""Start the real system (`mlxctl serve`: store, supervisor, gateway, workers) for end-to-end tests."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path


MLXCTL = [str(Path(sys.executable).with_name("mlxctl"))]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def http_json(method: str, url: str, body: dict | None = None, timeout: float = 60.0) -> tuple[int, dict]:
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(url, data=data, method=method, headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            return resp.status, json.loads(resp.read() or b"{}")
    except urllib.error.HTTPError as e:
        raw = e.read()
        try:
            return e.code, json.loads(raw)
        except ValueError:
            return e.code, {"raw": raw.decode(errors="replace")}


def descendants(pid: int) -> set[int]:
    """Every live process below `pid` (Linux /proc walk)."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        children.setdefault(ppid, []).append(int(entry.name))
    out: set[int] = set()
    todo = [pid]
    while todo:
        for c in children.get(todo.pop(), []):
            if c not in out:
                out.add(c)
                todo.append(c)
    return out


def alive(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


@dataclass
class System:
    home: Path
    port: int
    proc: subprocess.Popen
    log_path: Path
    pids: set[int] = field(default_factory=set)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def env(self) -> dict[str, str]:
        return {**os.environ, "MLXSERVE_HOME": str(self.home), "MLXSERVE_PORT": str(self.port)}

    def mlxctl(self, *args: str, timeout: float = 120.0, input: str | None = None) -> subprocess.CompletedProcess:
        return subprocess.run([*MLXCTL, *args], env=self.env(), capture_output=True, text=True, timeout=timeout, input=input)

    def log_tail(self, n: int = 60) -> str:
        text = self.log_path.read_text(errors="replace") if self.log_path.exists() else ""
        return "\n".join(text.splitlines()[-n:])

    def stop(self, timeout: float = 20.0) -> set[int]:
        """SIGTERM `mlxctl serve`; return the pids of its process tree still alive afterwards."""
        self.pids |= descendants(self.proc.pid)
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline and any(alive(p) for p in self.pids):
            time.sleep(0.1)
        left = {p for p in self.pids if alive(p)}
        for p in left:
            try:
                os.kill(p, signal.SIGKILL)
            except ProcessLookupError:
                pass
        return left


def start_system(home: Path, models: dict[str, Path], *, ready_timeout: float = 240.0, extra_env: dict[str, str] | None = None) -> System:
    """Run `mlxctl serve` with `models` imported, and wait until it says it is serving."""
    port = free_port()
    log_path = home / "serve-output.log"
    home.mkdir(parents=True, exist_ok=True)
    args = [*MLXCTL, "serve", "--port", str(port)]
    for name, path in models.items():
        args += ["--model", f"{name}={path}"]
    env = {**os.environ, "MLXSERVE_HOME": str(home), **(extra_env or {})}
    log = open(log_path, "wb")
    proc = subprocess.Popen(args, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    system = System(home=home, port=port, proc=proc, log_path=log_path)
    deadline = time.monotonic() + ready_timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"mlxctl serve exited with {proc.returncode}:\n{system.log_tail()}")
        if "serving on" in log_path.read_text(errors="replace"):
            status, _ = http_json("GET", system.url + "/api/health", timeout=5)
            if status == 200:
                system.pids = descendants(proc.pid)
                return system
        time.sleep(0.25)
    system.stop()
    raise RuntimeError(f"mlxctl serve was not ready in {ready_timeout}s:\n{system.log_tail()}")
