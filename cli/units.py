"""Service definitions for launchd and systemd, rendered from the templates in deploy/.

Pure functions: the only I/O is reading the packaged templates. `mlxctl service` writes what
these return; the tests parse it back with `launch_spec` and run it the way the service manager
would.
"""

from __future__ import annotations

import dataclasses
import importlib.resources
import plistlib
import shlex
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, Mapping
from xml.sax.saxutils import escape

from mlxserve.services.common.config import Settings
from mlxserve.services.common.errors import InvalidArgument

Manager = Literal["launchd", "systemd"]
MANAGERS: tuple[Manager, ...] = ("launchd", "systemd")

# Start order (stop order is the reverse). Any order works: the gateway's /api/health answers 503
# until the store and the supervisor answer, then 200 without a restart.
SERVICES: tuple[str, ...] = ("store", "supervisor", "gateway")
MODULES = {"store": "mlxserve.services.store", "supervisor": "mlxserve.services.supervisor",
           "gateway": "mlxserve.gateway"}
SYSTEMD_TARGET = "mlxserve.target"

# Settings that are secrets: they never go into a unit file (world-readable), the services read
# them from config.toml themselves.
SECRET_SETTINGS = ("api_key", "registry_auth")


def launchd_label(service: str) -> str:
    return f"ai.mlxserve.{service}"


def systemd_unit(service: str) -> str:
    return f"mlxserve-{service}.service"


def unit_file_name(manager: Manager, service: str) -> str:
    """The file name a service's definition is installed under."""
    return f"{launchd_label(service)}.plist" if manager == "launchd" else systemd_unit(service)


@dataclass(frozen=True)
class UnitFile:
    """One file to install: its name in the unit directory, its text and its mode."""

    name: str
    text: str
    service: str | None  # None for mlxserve.target
    mode: int = 0o644  # no secrets inside; launchd and systemd read it as this user


@dataclass(frozen=True)
class LaunchSpec:
    """What a service manager runs for one definition: argv, the environment it adds, the log file."""

    argv: list[str]
    environment: dict[str, str]
    log_path: Path


def unit_environment(settings: Settings, file_settings: Settings, config_path: Path | None = None) -> dict[str, str]:
    """The environment the installed services need to load `settings` themselves.

    `file_settings` is what the services would load from the config file alone; every setting
    that differs (it came from the environment or a flag when mlxctl ran) is written into the
    unit, so the services run with the configuration `mlxctl service install` saw. Secrets are
    refused rather than written into a world-readable file.
    """
    home = settings.home
    if not home.is_absolute():
        raise InvalidArgument(f"the mlxserve home must be an absolute path for a service definition, got {home}")
    for name in SECRET_SETTINGS:
        if getattr(settings, name) != getattr(file_settings, name):
            raise InvalidArgument(
                f"{name} is set in the environment only, and a service definition is world-readable; "
                f"put {name} in {config_path or settings.home / 'config.toml'} (chmod 600), "
                f"where the installed services read it, and run the install again")
    env = {"MLXSERVE_HOME": str(home)}
    if config_path is not None:
        env["MLXSERVE_CONFIG"] = str(config_path)
    wanted, from_file = settings.to_env(), file_settings.to_env()
    for key, value in wanted.items():
        if key not in ("MLXSERVE_HOME", "MLXSERVE_API_KEY") and from_file.get(key) != value:
            env[key] = value
    return env


def render(manager: Manager, python: str, settings: Settings, environment: Mapping[str, str]) -> list[UnitFile]:
    """Every file `manager` needs to run the three services with `python` (an absolute path)."""
    if manager not in MANAGERS:
        raise InvalidArgument(f"unknown service manager {manager!r}; use one of {', '.join(MANAGERS)}")
    if not Path(python).is_absolute():
        raise InvalidArgument(f"the python executable must be an absolute path, got {python}")
    values = {"PYTHON": python, "LOGS": str(settings.logs_dir)}
    fill = _launchd if manager == "launchd" else _systemd
    files = []
    for service in SERVICES:
        name = unit_file_name(manager, service)
        files.append(UnitFile(name, fill(template_text(manager, name), values, environment), service))
    if manager == "systemd":
        files.append(UnitFile(SYSTEMD_TARGET, template_text("systemd", SYSTEMD_TARGET), None))
    return files


def template_text(manager: Manager, name: str) -> str:
    """A template shipped in the `mlxserve.deploy` package (the repo's deploy/ folder)."""
    return (importlib.resources.files("mlxserve.deploy") / manager / name).read_text()


def _fill(text: str, values: Mapping[str, str]) -> str:
    for key, value in values.items():
        text = text.replace("{{" + key + "}}", value)
    if "{{" in text:
        raise InvalidArgument(f"a template has a placeholder nobody fills: {text[text.index('{{'):][:40]!r}")
    return text


def _launchd(template: str, values: Mapping[str, str], environment: Mapping[str, str]) -> str:
    env_xml = "\n".join(f"    <key>{escape(k)}</key>\n    <string>{escape(v)}</string>" for k, v in environment.items())
    text = _fill(template, {**{k: escape(v) for k, v in values.items()}, "ENVIRONMENT": env_xml})
    plistlib.loads(text.encode())  # a template edit that breaks the XML fails here, not in launchctl
    return text


def _systemd_word(value: str, *, exec_line: bool = False) -> str:
    """One systemd command-line word: `%` is a specifier and `$` (in Exec lines) a variable."""
    text = value.replace("%", "%%")
    if exec_line:
        text = text.replace("$", "$$")
    if text and not any(c in text for c in " \t\"'\\;"):
        return text
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _systemd(template: str, values: Mapping[str, str], environment: Mapping[str, str]) -> str:
    # All variables on one Environment= line (systemd takes several quoted assignments), so the
    # unit has no repeated key and reads back with configparser as it does with systemd.
    env_line = " ".join(_systemd_word(f"{k}={v}") for k, v in environment.items())
    for name, value in values.items():
        if "\n" in value:
            raise InvalidArgument(f"{name} may not contain a line break: {value!r}")
    return _fill(template, {"PYTHON": _systemd_word(values["PYTHON"], exec_line=True),
                            "LOGS": values["LOGS"].replace("%", "%%"), "ENVIRONMENT": env_line})


def launch_spec(manager: Manager, text: str) -> LaunchSpec:
    """What launchd or systemd would run for a rendered definition (the inverse of `render`)."""
    if manager == "launchd":
        plist = plistlib.loads(text.encode())
        return LaunchSpec(list(plist["ProgramArguments"]), dict(plist["EnvironmentVariables"]),
                          Path(plist["StandardErrorPath"]))
    service = _systemd_section(text, "Service")
    argv = [_systemd_unword(w, exec_line=True) for w in shlex.split(service["ExecStart"])]
    env = dict(_systemd_unword(w).split("=", 1) for w in shlex.split(service.get("Environment", "")))
    log = service["StandardError"].removeprefix("append:").replace("%%", "%")
    return LaunchSpec(argv, env, Path(log))


def _systemd_unword(word: str, *, exec_line: bool = False) -> str:
    word = word.replace("%%", "%")
    return word.replace("$$", "$") if exec_line else word


def _systemd_section(text: str, section: str) -> dict[str, str]:
    """One section of a unit file as key -> value (our units never repeat a key)."""
    out: dict[str, str] = {}
    current = None
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("[") and line.endswith("]"):
            current = line[1:-1]
        elif current == section and "=" in line:
            key, _, value = line.partition("=")
            out[key.strip()] = value.strip()
    return out


def with_absolute_home(settings: Settings) -> Settings:
    """Settings whose home is absolute (a unit runs with another working directory)."""
    return dataclasses.replace(settings, home=settings.home.expanduser().absolute())
