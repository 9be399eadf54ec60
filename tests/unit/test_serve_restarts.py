"""`mlxctl serve` keeps its services up: a dead one is restarted with backoff while the others run
on, and serve gives up only after repeated crashes (cli/keeper.py over fake processes and a clock
the test moves; the same with real processes is in tests/e2e/test_chaos.py)."""

from __future__ import annotations

import configparser
import itertools
import plistlib
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from mlxserve.cli import units
from mlxserve.cli.keeper import Child, ServiceKeeper
from mlxserve.services.common.config import load_settings
from mlxserve.services.common.errors import Unavailable
from mlxserve.services.common.lifecycle import CRASH_LIMIT, CRASH_WINDOW_S, RestartPolicy, remove_stale_gateway_sockets

_pids = itertools.count(5000)


@dataclass
class FakeProcess:
    pid: int = field(default_factory=lambda: next(_pids))
    returncode: int | None = None

    def poll(self) -> int | None:
        return self.returncode


class Services:
    """Three fake services under a keeper; `lines` is what serve printed."""

    def __init__(self, tmp_path: Path, policy: RestartPolicy | None = None) -> None:
        self.lines: list[str] = []
        self.started: list[str] = []
        self.tmp_path = tmp_path
        children = [self._child(name) for name in ("store", "supervisor", "gateway")]
        self.keeper = ServiceKeeper(children, self._restart, say=self.lines.append, policy=policy)

    def _child(self, name: str) -> Child:
        log = self.tmp_path / f"{name}.stderr.log"
        log.write_text(f"{name} started\nTraceback: {name} fell over\n")
        return Child(name, FakeProcess(), log)

    def _restart(self, dead: Child) -> Child:
        self.started.append(dead.name)
        return self._child(dead.name)

    def get(self, name: str) -> Child:
        return next(c for c in self.keeper.children if c.name == name)

    def kill(self, name: str) -> int:
        child = self.get(name)
        child.process.returncode = -9
        return child.process.pid


def test_a_killed_service_is_restarted_after_a_short_delay_and_the_others_are_left_alone(tmp_path: Path) -> None:
    s = Services(tmp_path)
    others = {n: s.get(n).process.pid for n in ("supervisor", "gateway")}
    old = s.kill("store")
    s.keeper.check(100.0)
    assert s.started == [] and s.keeper.restarting == ["store"]
    assert s.lines == [("the store service exited (exit code -9); restarting it in 0.5 s (crash 1 within 60 s; "
                        f"serve gives up at 5; log: {tmp_path / 'store.stderr.log'})")]
    s.keeper.check(100.5)
    assert s.started == ["store"] and s.get("store").process.pid != old
    assert s.lines[-1] == f"restarted the store service (pid {s.get('store').process.pid})"
    assert {n: s.get(n).process.pid for n in others} == others


def test_each_crash_in_a_row_doubles_the_wait(tmp_path: Path) -> None:
    s = Services(tmp_path)
    waits, now = [], 0.0
    for _ in range(CRASH_LIMIT - 1):
        s.kill("gateway")
        s.keeper.check(now)
        waits.append(float(s.lines[-1].split("restarting it in ")[1].split(" s")[0]))
        now += waits[-1]
        s.keeper.check(now)
        assert s.keeper.restarting == []
    assert waits == [0.5, 1.0, 2.0, 4.0]


def test_serve_gives_up_on_a_service_that_keeps_crashing_naming_it_and_its_log(tmp_path: Path) -> None:
    s = Services(tmp_path)
    now = 0.0
    with pytest.raises(Unavailable) as raised:
        for _ in range(CRASH_LIMIT):
            s.kill("supervisor")
            s.keeper.check(now)
            now += 10.0
            s.keeper.check(now)
    message = str(raised.value)
    assert message.startswith(f"the supervisor service crashed {CRASH_LIMIT} times within {CRASH_WINDOW_S:g} s "
                              f"(last exit code -9); giving up; log: {tmp_path / 'supervisor.stderr.log'}")
    assert "Traceback: supervisor fell over" in message
    assert s.started == ["supervisor"] * (CRASH_LIMIT - 1)


def test_crashes_far_apart_are_always_restarted_promptly(tmp_path: Path) -> None:
    s = Services(tmp_path)
    now = 0.0
    for _ in range(3 * CRASH_LIMIT):
        s.kill("store")
        s.keeper.check(now)
        assert "restarting it in 0.5 s" in s.lines[-1]
        now += CRASH_WINDOW_S
        s.keeper.check(now)
    assert len(s.started) == 3 * CRASH_LIMIT


def test_stale_gateway_sockets_of_dead_processes_are_removed_and_live_ones_kept(tmp_path: Path) -> None:
    dead_pid = 2 ** 22 + 12345  # above the kernel's pid_max (4194304): no such process
    live = tmp_path / "gateway-1.ipc"  # pid 1 is always running
    for path in (tmp_path / f"gateway-{dead_pid}.ipc", live, tmp_path / "worker-abc.sock", tmp_path / "gateway-x.ipc"):
        path.write_text("")
    assert remove_stale_gateway_sockets(tmp_path) == [tmp_path / f"gateway-{dead_pid}.ipc"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["gateway-1.ipc", "gateway-x.ipc", "worker-abc.sock"]


def test_systemd_and_launchd_restart_a_crashed_service_and_systemd_gives_up_as_serve_does() -> None:
    settings = load_settings({"home": "/home/me/.mlxserve"}, env={})
    for f in units.render("systemd", "/usr/bin/python3", settings, {"MLXSERVE_HOME": "/home/me/.mlxserve"}):
        if f.service is None:
            continue
        unit = configparser.ConfigParser(interpolation=None, strict=True)
        unit.read_string(f.text)
        assert unit["Service"]["Restart"] == "always"
        assert (int(unit["Unit"]["StartLimitBurst"]), float(unit["Unit"]["StartLimitIntervalSec"])) == (CRASH_LIMIT, CRASH_WINDOW_S)
    for f in units.render("launchd", "/usr/bin/python3", settings, {"MLXSERVE_HOME": "/Users/me/.mlxserve"}):
        plist = plistlib.loads(f.text.encode())
        assert plist["KeepAlive"] is True and plist["ThrottleInterval"] > 0
