"""What `mlxctl service install` writes really runs mlxserve.

No launchd or systemd user session exists here, so the tests do the service manager's part: they
read each installed definition back (plistlib / unit-file parsing), start exactly its command
with exactly its environment, and check that the three services come up healthy in any start
order and that stopping them (SIGTERM to the main process, as launchd and systemd send) leaves
no process behind, workers included.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

import pytest

from mlxserve.cli import units
from tests.e2e.harness import MLXCTL, alive, descendants, free_port, http_json
from tests.fixtures.tiny_model import write_tiny_model
from tests.fixtures.service_shims import shim_calls, write_shims

pytestmark = pytest.mark.e2e


@dataclass
class Installed:
    """Units installed by a real `mlxctl service install` into a temp directory."""

    manager: units.Manager
    base: Path
    port: int
    env: dict[str, str]
    procs: dict[str, subprocess.Popen] = field(default_factory=dict)
    seen: set[int] = field(default_factory=set)

    @property
    def unit_dir(self) -> Path:
        return self.base / "units"

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def mlxctl(self, *args: str) -> subprocess.CompletedProcess:
        return subprocess.run([*MLXCTL, *args], env=self.env, capture_output=True, text=True, timeout=120)

    def spec(self, service: str) -> units.LaunchSpec:
        return units.launch_spec(self.manager, (self.unit_dir / units.unit_file_name(self.manager, service)).read_text())

    def start(self, service: str) -> None:
        """Start one service the way its manager would: its argv, its environment, its log file."""
        spec = self.spec(service)
        # launchd and systemd start agents with a bare environment, not the installing shell's.
        env = {"PATH": "/usr/bin:/bin", "HOME": os.environ["HOME"], **spec.environment}
        with open(spec.log_path, "ab") as log:
            self.procs[service] = subprocess.Popen(spec.argv, env=env, cwd="/", stdin=subprocess.DEVNULL,
                                                   stdout=log, stderr=log, start_new_session=True)

    def stop(self, service: str, timeout: float = 20.0) -> None:
        proc = self.procs[service]
        self.seen |= {proc.pid} | descendants(proc.pid)
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
            pytest.fail(f"the {service} service ignored SIGTERM for {timeout}s")

    def stop_all(self) -> set[int]:
        """SIGTERM every running service (gateway first); the pids of anything still alive after."""
        for service in reversed(units.SERVICES):
            if service in self.procs and self.procs[service].poll() is None:
                self.stop(service)
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline and any(alive(p) for p in self.seen):
            time.sleep(0.1)
        left = {p for p in self.seen if alive(p)}
        for pid in left:
            os.kill(pid, signal.SIGKILL)
        return left

    def logs(self) -> str:
        return "\n".join(f"--- {p.name}\n{p.read_text(errors='replace')[-2000:]}"
                         for p in sorted((self.base / "home" / "logs").glob("*.stderr.log")))


def wait_health(installed: Installed, status: int, timeout: float = 60.0) -> dict:
    deadline = time.monotonic() + timeout
    got: tuple[int, dict] = (0, {})
    while time.monotonic() < deadline:
        try:
            got = http_json("GET", installed.url + "/api/health", timeout=2)
        except OSError:
            got = (0, {})
        if got[0] == status:
            return got[1]
        for name, proc in installed.procs.items():
            assert proc.poll() is None, f"{name} exited with {proc.returncode}\n{installed.logs()}"
        time.sleep(0.2)
    pytest.fail(f"/api/health never answered {status} (last: {got})\n{installed.logs()}")


@pytest.fixture
def install(request: pytest.FixtureRequest) -> Iterator:
    made: list[Installed] = []

    def _install(manager: units.Manager) -> Installed:
        base = Path(tempfile.mkdtemp(prefix="mxse"))  # short: Unix socket paths are limited to ~107 bytes
        write_shims(base / "bin")
        port = free_port()
        env = {k: v for k, v in os.environ.items() if not k.startswith("MLXSERVE_")}
        env.update(PATH=f"{base / 'bin'}{os.pathsep}{os.environ['PATH']}", SHIM_LOG=str(base / "calls.jsonl"),
                   SHIM_STATE=str(base / "state"), MLXSERVE_HOME=str(base / "home"), MLXSERVE_PORT=str(port))
        installed = Installed(manager, base, port, env)
        made.append(installed)
        done = installed.mlxctl("service", "install", "--manager", manager, "--unit-dir", str(installed.unit_dir))
        assert done.returncode == 0, done.stderr
        return installed

    yield _install
    for installed in made:
        left = installed.stop_all()
        shutil.rmtree(installed.base, ignore_errors=True)
        assert not left, f"processes outlived their service: {left}"


@pytest.mark.parametrize("manager", units.MANAGERS)
def test_installed_units_come_up_healthy_gateway_first_and_stop_cleanly(install, manager: units.Manager) -> None:
    installed = install(manager)
    assert shim_calls(installed.base / "calls.jsonl"), "install did not drive the service manager"
    # The port came from the installing shell's environment: it must reach the services.
    assert installed.spec("gateway").environment["MLXSERVE_PORT"] == str(installed.port)

    installed.start("gateway")
    body = wait_health(installed, 503)
    assert set(body["services"]) == {"store", "supervisor"} and body["status"] == "unavailable"

    installed.start("supervisor")
    installed.start("store")
    assert wait_health(installed, 200)["status"] == "ok"  # no gateway restart needed

    status = installed.mlxctl("service", "status", "--json", "--manager", manager, "--unit-dir", str(installed.unit_dir))
    assert status.returncode == 0, status.stderr
    rows = json.loads(status.stdout)["services"]
    assert [(r["service"], r["installed"], r["health"]) for r in rows] == [
        ("store", True, "ok"), ("supervisor", True, "ok"), ("gateway", True, "ok")]

    left = installed.stop_all()
    assert not left, f"still running after SIGTERM: {left}"
    assert not list((installed.base / "home" / "run").glob("*.sock")), "sockets left behind"


def test_stopping_the_supervisors_unit_stops_its_workers(install, tmp_path: Path) -> None:
    installed = install("systemd")
    for service in units.SERVICES:
        installed.start(service)
    wait_health(installed, 200)
    created = installed.mlxctl("create", "tiny", "--from", str(write_tiny_model(tmp_path / "tiny")))
    assert created.returncode == 0, created.stderr
    status, body = http_json("POST", installed.url + "/api/generate",
                             {"model": "tiny", "prompt": "hi", "stream": False, "options": {"num_predict": 2}})
    assert status == 200, body
    workers = descendants(installed.procs["supervisor"].pid)
    assert workers, "the request started no worker under the supervisor"

    installed.stop("supervisor")
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and any(alive(p) for p in workers):
        time.sleep(0.1)
    assert not any(alive(p) for p in workers), "a worker outlived its supervisor's unit"
