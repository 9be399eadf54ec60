"""The launchd and systemd templates in deploy/ render to valid definitions of real entry points."""

from __future__ import annotations

import configparser
import importlib.util
import plistlib
from pathlib import Path

DEPLOY = Path(__file__).resolve().parents[2] / "deploy"
VALUES = {"{{PYTHON}}": "/usr/bin/python3", "{{HOME}}": "/Users/me/.mlxserve", "{{LOGS}}": "/Users/me/.mlxserve/logs"}


def _render(text: str) -> str:
    for key, value in VALUES.items():
        text = text.replace(key, value)
    assert "{{" not in text, "unfilled placeholder"
    return text


def test_launchd_plists_parse_and_run_an_mlxserve_module() -> None:
    plists = sorted((DEPLOY / "launchd").glob("*.plist"))
    assert {p.stem.rsplit(".", 1)[1] for p in plists} == {"store", "supervisor", "gateway"}
    for path in plists:
        plist = plistlib.loads(_render(path.read_text()).encode())
        assert plist["Label"] == path.stem
        python, flag, module = plist["ProgramArguments"]
        assert (python, flag) == ("/usr/bin/python3", "-m")
        assert importlib.util.find_spec(module) is not None, module
        assert plist["KeepAlive"] is True and plist["RunAtLoad"] is True
        assert plist["EnvironmentVariables"]["MLXSERVE_HOME"] == VALUES["{{HOME}}"]


def test_systemd_units_parse_and_run_an_mlxserve_module() -> None:
    units = sorted((DEPLOY / "systemd").glob("*.service"))
    assert len(units) == 3
    for path in units:
        parser = configparser.ConfigParser(interpolation=None)
        parser.read_string(_render(path.read_text()))
        python, flag, module = parser["Service"]["ExecStart"].split()
        assert (python, flag) == ("/usr/bin/python3", "-m")
        assert importlib.util.find_spec(module) is not None, module
