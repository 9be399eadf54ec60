"""The launchd and systemd templates in deploy/ render to valid definitions of real entry points."""

from __future__ import annotations

import configparser
import importlib.util
import plistlib
from pathlib import Path

import pytest

from mlxserve.cli import units
from mlxserve.services.common.config import load_settings

DEPLOY = Path(__file__).resolve().parents[2] / "deploy"
PYTHON = "/usr/bin/python3"
HOME = "/Users/me/.mlxserve"


def rendered(manager: units.Manager) -> list[units.UnitFile]:
    settings = load_settings({"home": HOME}, env={})
    return units.render(manager, PYTHON, settings, {"MLXSERVE_HOME": HOME})


def test_the_packaged_templates_are_the_repositorys_deploy_folder() -> None:
    for manager in units.MANAGERS:
        for path in (DEPLOY / manager).iterdir():
            assert units.template_text(manager, path.name) == path.read_text(), path


def test_launchd_plists_parse_and_run_an_mlxserve_module() -> None:
    files = rendered("launchd")
    assert [f.name for f in files] == [f"ai.mlxserve.{s}.plist" for s in ("store", "supervisor", "gateway")]
    for f in files:
        plist = plistlib.loads(f.text.encode())
        assert plist["Label"] == f.name.removesuffix(".plist")
        python, flag, module = plist["ProgramArguments"]
        assert (python, flag) == (PYTHON, "-m")
        assert importlib.util.find_spec(module) is not None, module
        assert plist["KeepAlive"] is True and plist["RunAtLoad"] is True
        assert plist["EnvironmentVariables"] == {"MLXSERVE_HOME": HOME}
        assert plist["StandardErrorPath"] == f"{HOME}/logs/{f.service}.stderr.log"
        # Workers are the supervisor's children: launchd must stop the whole process group.
        assert plist["AbandonProcessGroup"] is False


def test_systemd_units_parse_and_run_an_mlxserve_module() -> None:
    files = rendered("systemd")
    assert sorted(f.name for f in files) == ["mlxserve-gateway.service", "mlxserve-store.service",
                                             "mlxserve-supervisor.service", "mlxserve.target"]
    for f in files:
        parser = configparser.ConfigParser(interpolation=None, strict=True)  # strict: no repeated keys
        parser.read_string(f.text)
        if f.service is None:
            assert parser["Unit"]["Wants"].split() == [units.systemd_unit(s) for s in units.SERVICES]
            assert parser["Install"]["WantedBy"] == "default.target"
            continue
        python, flag, module = parser["Service"]["ExecStart"].split()
        assert (python, flag) == (PYTHON, "-m")
        assert importlib.util.find_spec(module) is not None, module
        assert parser["Service"]["Environment"] == f"MLXSERVE_HOME={HOME}"
        assert parser["Unit"]["PartOf"] == "mlxserve.target"
        # Workers are the supervisor's children: stopping a unit stops its whole cgroup.
        assert parser["Service"]["KillMode"] == "control-group"


@pytest.mark.parametrize("manager", units.MANAGERS)
def test_every_placeholder_is_filled(manager: units.Manager) -> None:
    for f in rendered(manager):
        assert "{{" not in f.text and "}}" not in f.text
