"""`mlxctl service`: rendering, install/uninstall/status/restart against recording launchctl/systemctl.

This container has neither launchd nor a systemd user session, so `launchctl` and `systemctl` are
small fakes on PATH (`write_shims`) that record their argv and keep just enough state (what is
loaded or started) to answer `print` and `is-active`. tests/e2e/test_cli_service.py runs what
the rendered units say.
"""

from __future__ import annotations

import json
import os
import shutil
import stat
import sys
import tempfile
from pathlib import Path
from typing import Iterator

import pytest
from typer.testing import CliRunner

from mlxserve.cli import service, units
from mlxserve.cli.main import app
from mlxserve.services.common.config import load_settings
from mlxserve.services.common.errors import InvalidArgument, Unsupported
from tests.fixtures.service_shims import shim_calls, write_shims

runner = CliRunner()

@pytest.fixture
def home(monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    d = Path(tempfile.mkdtemp(prefix="mxsv"))  # short: Unix socket paths are limited to ~107 bytes
    monkeypatch.setenv("MLXSERVE_HOME", str(d / "home"))
    for name in list(os.environ):
        if name.startswith("MLXSERVE_") and name != "MLXSERVE_HOME":
            monkeypatch.delenv(name)
    monkeypatch.setenv("MLXSERVE_PORT", "1")  # nothing listens there: health checks fail fast
    yield d
    shutil.rmtree(d, ignore_errors=True)


@pytest.fixture
def shim(home: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """The fakes on PATH; returns the log of their calls."""
    write_shims(home / "bin")
    monkeypatch.setenv("PATH", f"{home / 'bin'}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.setenv("SHIM_LOG", str(home / "calls.jsonl"))
    monkeypatch.setenv("SHIM_STATE", str(home / "state"))
    return home / "calls.jsonl"


def mlxctl(*args: str):
    return runner.invoke(app, list(args))


# -- rendering ------------------------------------------------------------------------------------


def test_rendered_units_run_this_python_with_the_settings_that_came_from_the_environment(home: Path) -> None:
    settings = load_settings()
    env = units.unit_environment(settings, load_settings({"home": str(settings.home)}, env={}))
    assert env == {"MLXSERVE_HOME": str(home / "home"), "MLXSERVE_PORT": "1"}
    for manager in units.MANAGERS:
        files = units.render(manager, sys.executable, settings, env)
        for f in files:
            if f.service is None:
                continue
            spec = units.launch_spec(manager, f.text)
            assert spec.argv == [sys.executable, "-m", units.MODULES[f.service]]
            assert spec.environment == env
            assert spec.log_path == settings.logs_dir / f"{f.service}.stderr.log"
            assert f.mode == 0o644


def test_settings_in_config_toml_stay_there_and_are_not_copied_into_units(home: Path) -> None:
    (home / "home").mkdir()
    (home / "home" / "config.toml").write_text('keep_alive = 60.0\napi_key = "sekrit"\n')
    settings = load_settings()
    env = units.unit_environment(settings, load_settings({"home": str(settings.home)}, env={}))
    assert "MLXSERVE_KEEP_ALIVE" not in env
    for f in units.render("systemd", sys.executable, settings, env) + units.render("launchd", sys.executable, settings, env):
        assert "sekrit" not in f.text


def test_an_api_key_only_in_the_environment_is_refused_not_written(home: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MLXSERVE_API_KEY", "sekrit")
    settings = load_settings()
    with pytest.raises(InvalidArgument, match="api_key is set in the environment only.*config.toml"):
        units.unit_environment(settings, load_settings({"home": str(settings.home)}, env={}))


def test_odd_paths_survive_rendering_for_both_managers(home: Path) -> None:
    odd = home / "my <models> & 100% $HOME \"quoted\""
    settings = load_settings({"home": str(odd)})
    python = str(home / "py env" / "bin" / "python3")
    env = {"MLXSERVE_HOME": str(odd)}
    for manager in units.MANAGERS:
        for f in units.render(manager, python, settings, env):
            if f.service is not None:
                spec = units.launch_spec(manager, f.text)
                assert spec.argv[0] == python and spec.environment == env
                assert spec.log_path == odd / "logs" / f"{f.service}.stderr.log"


def test_unknown_platform_has_no_service_manager() -> None:
    with pytest.raises(Unsupported, match="mlxctl serve"):
        service.detect_manager("win32")
    assert service.detect_manager("darwin") == "launchd"
    assert service.detect_manager("linux") == "systemd"


# -- install / uninstall / status / restart -------------------------------------------------------


def test_systemd_install_writes_units_and_starts_the_target_and_reinstall_replaces(home: Path, shim: Path) -> None:
    unit_dir = home / "units"
    result = mlxctl("service", "install", "--manager", "systemd", "--unit-dir", str(unit_dir))
    assert result.exit_code == 0, result.output
    names = sorted(p.name for p in unit_dir.iterdir())
    assert names == ["mlxserve-gateway.service", "mlxserve-store.service", "mlxserve-supervisor.service", "mlxserve.target"]
    assert all(stat.S_IMODE((unit_dir / n).stat().st_mode) == 0o644 for n in names)
    assert (home / "home" / "logs").is_dir()
    first = shim_calls(shim)
    assert first == [["systemctl", "--user", "show-environment"], ["systemctl", "--user", "daemon-reload"],
                     ["systemctl", "--user", "enable", "mlxserve.target"], ["systemctl", "--user", "restart", "mlxserve.target"]]

    store = unit_dir / "mlxserve-store.service"
    original = store.read_text()
    store.write_text("stale")
    shim.unlink()
    result = mlxctl("service", "install", "--manager", "systemd", "--unit-dir", str(unit_dir))
    assert result.exit_code == 0, result.output
    assert store.read_text() == original
    assert shim_calls(shim) == first


def test_launchd_install_bootstraps_each_agent_and_reinstall_boots_out_first(home: Path, shim: Path) -> None:
    unit_dir = home / "LaunchAgents"
    uid = os.getuid()
    assert mlxctl("service", "install", "--manager", "launchd", "--unit-dir", str(unit_dir)).exit_code == 0
    bootstraps = [c for c in shim_calls(shim) if c[1] == "bootstrap"]
    assert bootstraps == [["launchctl", "bootstrap", f"gui/{uid}", str(unit_dir / f"ai.mlxserve.{s}.plist")]
                          for s in ("store", "supervisor", "gateway")]
    shim.unlink()
    result = mlxctl("service", "install", "--manager", "launchd", "--unit-dir", str(unit_dir))
    assert result.exit_code == 0, result.output
    changes = [c[1:] for c in shim_calls(shim) if c[1] in ("bootout", "bootstrap")]
    assert changes == [["bootout", f"gui/{uid}/ai.mlxserve.gateway"], ["bootout", f"gui/{uid}/ai.mlxserve.supervisor"],
                       ["bootout", f"gui/{uid}/ai.mlxserve.store"], *[b[1:] for b in bootstraps]]


def test_install_without_start_enables_but_does_not_start(home: Path, shim: Path) -> None:
    result = mlxctl("service", "install", "--no-start", "--manager", "systemd", "--unit-dir", str(home / "units"))
    assert result.exit_code == 0, result.output
    assert ["systemctl", "--user", "restart", "mlxserve.target"] not in shim_calls(shim)
    assert "next login" in result.output


def test_install_without_a_user_session_bus_fails_in_one_line_and_writes_nothing(
        home: Path, shim: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SHIM_FAIL", "show-environment")
    result = mlxctl("service", "install", "--manager", "systemd", "--unit-dir", str(home / "units"))
    assert result.exit_code == 4  # Unavailable
    assert result.output.count("\n") == 1 and "mlxctl serve" in result.output
    assert not (home / "units").exists()


def test_install_where_the_manager_is_missing_is_unsupported(home: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PATH", str(home))  # no launchctl anywhere
    result = mlxctl("service", "install", "--manager", "launchd", "--unit-dir", str(home / "units"))
    assert result.exit_code == 2  # Unsupported
    assert "launchctl not found" in result.output and "mlxctl serve" in result.output


def test_uninstall_stops_and_removes_and_a_second_uninstall_is_a_no_op(home: Path, shim: Path) -> None:
    unit_dir = home / "units"
    assert mlxctl("service", "install", "--manager", "systemd", "--unit-dir", str(unit_dir)).exit_code == 0
    shim.unlink()
    result = mlxctl("service", "uninstall", "--manager", "systemd", "--unit-dir", str(unit_dir))
    assert result.exit_code == 0, result.output
    assert list(unit_dir.iterdir()) == []
    assert shim_calls(shim)[1:] == [["systemctl", "--user", "disable", "--now", "mlxserve.target"],
                                    ["systemctl", "--user", "daemon-reload"]]
    again = mlxctl("service", "uninstall", "--manager", "systemd", "--unit-dir", str(unit_dir))
    assert again.exit_code == 0 and "not installed" in again.output


def test_launchd_uninstall_boots_out_loaded_agents(home: Path, shim: Path) -> None:
    unit_dir = home / "LaunchAgents"
    assert mlxctl("service", "install", "--manager", "launchd", "--unit-dir", str(unit_dir)).exit_code == 0
    assert mlxctl("service", "uninstall", "--manager", "launchd", "--unit-dir", str(unit_dir)).exit_code == 0
    assert list(unit_dir.iterdir()) == []
    assert not list((home / "state").iterdir())  # nothing left loaded


def test_status_with_nothing_installed_says_so_per_service_and_exits_zero(home: Path, shim: Path,
                                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SHIM_FAIL", "show-environment")  # no user bus either: still a clean answer
    result = mlxctl("service", "status", "--manager", "systemd", "--unit-dir", str(home / "units"))
    assert result.exit_code == 0, result.output
    assert result.stdout.count("not installed") == 4  # three rows and the hint
    data = json.loads(mlxctl("service", "status", "--json", "--manager", "systemd", "--unit-dir", str(home / "units")).stdout)
    assert [(r["service"], r["installed"], r["health"].split(":")[0]) for r in data["services"]] == [
        ("store", False, "down"), ("supervisor", False, "down"), ("gateway", False, "down")]


def test_status_reports_the_managers_state_of_installed_services(home: Path, shim: Path) -> None:
    unit_dir = home / "units"
    assert mlxctl("service", "install", "--manager", "systemd", "--unit-dir", str(unit_dir)).exit_code == 0
    result = mlxctl("service", "status", "--json", "--manager", "systemd", "--unit-dir", str(unit_dir))
    assert result.exit_code == 0, result.output
    rows = json.loads(result.stdout)["services"]
    assert [(r["installed"], r["state"]) for r in rows] == [(True, "active")] * 3
    assert rows[0]["unit"] == str(unit_dir / "mlxserve-store.service")
    # Nothing really runs: the health column says so.
    assert all(r["health"].startswith("down") for r in rows)


def test_restart_kicks_every_agent_or_the_target(home: Path, shim: Path) -> None:
    uid = os.getuid()
    for manager, expected in (("launchd", [["launchctl", "kickstart", "-k", f"gui/{uid}/ai.mlxserve.{s}"]
                                           for s in ("store", "supervisor", "gateway")]),
                              ("systemd", [["systemctl", "--user", "restart", "mlxserve.target"]])):
        unit_dir = home / manager
        assert mlxctl("service", "install", "--manager", manager, "--unit-dir", str(unit_dir)).exit_code == 0
        shim.unlink()
        result = mlxctl("service", "restart", "--manager", manager, "--unit-dir", str(unit_dir))
        assert result.exit_code == 0, result.output
        assert [c for c in shim_calls(shim) if {"kickstart", "bootstrap", "restart"} & set(c)] == expected


def test_launchd_restart_loads_agents_installed_without_start(home: Path, shim: Path) -> None:
    unit_dir = home / "LaunchAgents"
    assert mlxctl("service", "install", "--no-start", "--manager", "launchd", "--unit-dir", str(unit_dir)).exit_code == 0
    assert not [c for c in shim_calls(shim) if c[1] == "bootstrap"]
    assert mlxctl("service", "restart", "--manager", "launchd", "--unit-dir", str(unit_dir)).exit_code == 0
    assert [c[1] for c in shim_calls(shim) if c[1] in ("kickstart", "bootstrap")] == ["bootstrap"] * 3
    status = json.loads(mlxctl("service", "status", "--json", "--manager", "launchd", "--unit-dir", str(unit_dir)).stdout)
    assert [r["state"] for r in status["services"]] == ["running"] * 3


def test_restart_when_not_installed_is_not_found(home: Path, shim: Path) -> None:
    result = mlxctl("service", "restart", "--manager", "systemd", "--unit-dir", str(home / "units"))
    assert result.exit_code == 3
    assert "mlxctl service install" in result.output
