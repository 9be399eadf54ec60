"""`mlxctl service install|uninstall|status|restart`: mlxserve as a launchd or systemd user service.

On macOS the store, supervisor and gateway become LaunchAgents (~/Library/LaunchAgents,
`launchctl bootstrap|bootout|kickstart gui/$UID`); on Linux, systemd user units grouped by
mlxserve.target (~/.config/systemd/user, `systemctl --user`). The unit text comes from units.py;
launchctl and systemctl are run through one function taking argv (`run_command`), so tests can
substitute it, and the unit directory and the manager are parameters.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Mapping, Optional, Sequence

import typer

from mlxserve.services.common.config import Settings, load_settings
from mlxserve.services.common.errors import MlxServeError, NotFound, Unavailable, Unsupported
from mlxserve.v1 import common_pb2

from . import render, units
from .backend import Backend, exits_on_error, settings_from
from .units import Manager

FOREGROUND_HINT = "`mlxctl serve` runs mlxserve in the foreground instead"


@dataclass(frozen=True)
class CommandResult:
    returncode: int
    stdout: str
    stderr: str

    def first_line(self) -> str:
        text = (self.stderr or self.stdout).strip()
        return text.splitlines()[0] if text else f"exit status {self.returncode}"


Runner = Callable[[Sequence[str]], CommandResult]


def run_command(argv: Sequence[str]) -> CommandResult:
    """Run launchctl or systemctl; a missing program reads as exit status 127, like a shell's."""
    try:
        done = subprocess.run(list(argv), capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL)
    except FileNotFoundError:
        return CommandResult(127, "", f"{argv[0]}: command not found")
    except subprocess.TimeoutExpired:
        return CommandResult(124, "", f"{' '.join(argv)} did not finish within 60s")
    return CommandResult(done.returncode, done.stdout, done.stderr)


def detect_manager(platform: str | None = None) -> Manager:
    """launchd on macOS, systemd on Linux; anything else has no supported service manager."""
    platform = platform or sys.platform
    if platform == "darwin":
        return "launchd"
    if platform.startswith("linux"):
        return "systemd"
    raise Unsupported(f"no supported service manager on {platform} (launchd or systemd); {FOREGROUND_HINT}")


def default_unit_dir(manager: Manager, env: Mapping[str, str] | None = None) -> Path:
    """~/Library/LaunchAgents, or $XDG_CONFIG_HOME/systemd/user (~/.config/systemd/user)."""
    env = os.environ if env is None else env
    if manager == "launchd":
        return Path.home() / "Library" / "LaunchAgents"
    config = Path(env.get("XDG_CONFIG_HOME") or Path.home() / ".config")
    return config / "systemd" / "user"


class Launchd:
    """LaunchAgents in the user's GUI domain."""

    name: Manager = "launchd"

    def __init__(self, run: Runner, uid: int) -> None:
        self.run, self.domain = run, f"gui/{uid}"

    def _target(self, service: str) -> str:
        return f"{self.domain}/{units.launchd_label(service)}"

    def _must(self, *argv: str) -> CommandResult:
        result = self.run(["launchctl", *argv])
        if result.returncode != 0:
            raise Unavailable(f"launchctl {' '.join(argv)} failed: {result.first_line()}")
        return result

    def check(self) -> None:
        result = self.run(["launchctl", "print", self.domain])
        if result.returncode == 127:
            raise Unsupported(f"launchctl not found: this system has no launchd; {FOREGROUND_HINT}")
        if result.returncode != 0:
            raise Unavailable(f"launchctl cannot reach your login session ({self.domain}: {result.first_line()}); "
                              f"log in at the Mac, or {FOREGROUND_HINT}")

    def state(self, service: str) -> str:
        result = self.run(["launchctl", "print", self._target(service)])
        if result.returncode != 0:
            return "not loaded"
        for line in result.stdout.splitlines():
            key, sep, value = line.strip().partition(" = ")
            if sep and key == "state":
                return value.strip()
        return "loaded"

    def stop(self) -> None:
        for service in reversed(units.SERVICES):
            if self.state(service) != "not loaded":
                self._must("bootout", self._target(service))

    def activate(self, paths: Mapping[str, Path], start: bool) -> None:
        # bootstrap refuses a label that is already loaded: replace means bootout first.
        self.stop()
        if start:
            for service in units.SERVICES:
                self._must("bootstrap", self.domain, str(paths[service]))

    def after_removal(self) -> None:
        pass

    def restart(self, paths: Mapping[str, Path]) -> None:
        # kickstart only knows loaded agents; one installed with --no-start is bootstrapped instead.
        for service in units.SERVICES:
            if self.state(service) == "not loaded":
                self._must("bootstrap", self.domain, str(paths[service]))
            else:
                self._must("kickstart", "-k", self._target(service))


class Systemd:
    """systemd user units, started and stopped together through mlxserve.target."""

    name: Manager = "systemd"

    def __init__(self, run: Runner) -> None:
        self.run = run

    def _must(self, *argv: str) -> CommandResult:
        result = self.run(["systemctl", "--user", *argv])
        if result.returncode != 0:
            raise Unavailable(f"systemctl --user {' '.join(argv)} failed: {result.first_line()}")
        return result

    def check(self) -> None:
        result = self.run(["systemctl", "--user", "show-environment"])
        if result.returncode == 127:
            raise Unsupported(f"systemctl not found: this Linux has no systemd; {FOREGROUND_HINT}")
        if result.returncode != 0:
            raise Unavailable(f"systemctl --user cannot reach a user service manager ({result.first_line()}); "
                              f"it needs a login session with a user bus (or `loginctl enable-linger`), or {FOREGROUND_HINT}")

    def state(self, service: str) -> str:
        # is-active exits non-zero for anything but "active" and still prints the state.
        result = self.run(["systemctl", "--user", "is-active", units.systemd_unit(service)])
        return result.stdout.strip() or f"unknown ({result.first_line()})"

    def stop(self) -> None:
        self._must("disable", "--now", units.SYSTEMD_TARGET)

    def activate(self, paths: Mapping[str, Path], start: bool) -> None:
        self._must("daemon-reload")
        self._must("enable", units.SYSTEMD_TARGET)
        if start:
            # restart, not start: a re-install with a changed configuration must take effect.
            self._must("restart", units.SYSTEMD_TARGET)

    def after_removal(self) -> None:
        self._must("daemon-reload")

    def restart(self, paths: Mapping[str, Path]) -> None:
        self._must("restart", units.SYSTEMD_TARGET)


def service_manager(manager: Manager, run: Runner = run_command, uid: int | None = None) -> Launchd | Systemd:
    return Launchd(run, os.getuid() if uid is None else uid) if manager == "launchd" else Systemd(run)


def installed_files(manager: Manager, unit_dir: Path) -> list[Path]:
    names = [units.unit_file_name(manager, s) for s in units.SERVICES]
    if manager == "systemd":
        names.append(units.SYSTEMD_TARGET)
    return [unit_dir / n for n in names if (unit_dir / n).exists()]


def write_unit(path: Path, text: str, mode: int) -> None:
    """Replace `path` atomically (tmp + rename), so a service manager never reads half a file."""
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text)
    os.chmod(tmp, mode)
    os.replace(tmp, path)


def install_services(mgr: Launchd | Systemd, unit_dir: Path, files: Sequence[units.UnitFile], start: bool,
                     settings: Settings) -> list[Path]:
    """Write the unit files (replacing earlier ones) and hand them to the manager; returns the paths."""
    mgr.check()
    settings.ensure_dirs()  # launchd and systemd open the log files before the service runs
    unit_dir.mkdir(parents=True, exist_ok=True)
    paths: dict[str, Path] = {}
    written = []
    for f in files:
        path = unit_dir / f.name
        write_unit(path, f.text, f.mode)
        written.append(path)
        if f.service is not None:
            paths[f.service] = path
    mgr.activate(paths, start)
    return written


def uninstall_services(mgr: Launchd | Systemd, unit_dir: Path) -> list[Path]:
    """Stop the services and remove their files; returns what was removed (nothing: not installed)."""
    present = installed_files(mgr.name, unit_dir)
    if not present:
        return []
    mgr.check()
    mgr.stop()
    for path in present:
        path.unlink(missing_ok=True)
    mgr.after_removal()
    return present


def service_health(settings: Settings, service: str, timeout: float = 2.0) -> str:
    """'ok', or 'down: why': store and supervisor answer Ping; the gateway's /api/health is 200."""
    if service != "gateway":
        try:
            Backend(settings).call(service, "Ping", common_pb2.PingRequest(), timeout=timeout)
            return "ok"
        except MlxServeError as e:
            return f"down: {e}"
    url = f"{settings.base_url}/api/health"
    try:
        with urllib.request.urlopen(url, timeout=timeout) as resp:
            return "ok" if resp.status == 200 else f"down: HTTP {resp.status} from {url}"
    except urllib.error.HTTPError as e:
        try:
            detail = json.loads(e.read()).get("error", "")
        except ValueError:
            detail = ""
        return f"down: HTTP {e.code} from {url}" + (f" ({detail})" if detail else "")
    except (urllib.error.URLError, OSError) as e:
        reason = getattr(e, "reason", e)
        return f"down: no answer at {url} ({reason})"


def service_status(mgr: Launchd | Systemd, unit_dir: Path, settings: Settings) -> list[dict]:
    """One row per service: its unit file (if installed), the manager's state, and health."""
    manager_error = None
    rows = []
    for service in units.SERVICES:
        path = unit_dir / units.unit_file_name(mgr.name, service)
        installed = path.exists()
        state = "-"
        if installed:
            if manager_error is None:
                try:
                    mgr.check()
                    manager_error = ""
                except MlxServeError as e:
                    manager_error = str(e)
            state = mgr.state(service) if not manager_error else "unknown"
        row = {"service": service, "installed": installed, "unit": str(path) if installed else None,
               "state": state, "health": service_health(settings, service)}
        if installed and manager_error:
            row["state_error"] = manager_error
        rows.append(row)
    return rows


# -- the verbs -----------------------------------------------------------------------------------

app = typer.Typer(name="service", no_args_is_help=True,
                  help="Run mlxserve as a user service: launchd LaunchAgents on macOS, systemd --user units on Linux.")

_MANAGER_HELP = "launchd or systemd (default: launchd on macOS, systemd on Linux)"
_UNIT_DIR_HELP = "where the definitions go (default ~/Library/LaunchAgents or ~/.config/systemd/user)"


def _resolve(manager: Optional[str], unit_dir: Optional[Path]) -> tuple[Manager, Path]:
    chosen: Manager
    if manager is None:
        chosen = detect_manager()
    elif manager in units.MANAGERS:
        chosen = manager  # type: ignore[assignment]
    else:
        raise Unsupported(f"unknown service manager {manager!r}; use launchd or systemd")
    return chosen, (unit_dir.expanduser().absolute() if unit_dir else default_unit_dir(chosen))


def _file_settings(settings: Settings) -> tuple[Settings, Path | None]:
    """What the services will load on their own: the config file under the same home, no environment."""
    config = os.environ.get("MLXSERVE_CONFIG")
    config_path = Path(config).expanduser().absolute() if config else None
    env = {"MLXSERVE_CONFIG": str(config_path)} if config_path else {}
    return load_settings({"home": str(settings.home)}, env=env), config_path


@app.command("install")
@exits_on_error
def install(
    ctx: typer.Context,
    start: bool = typer.Option(True, "--start/--no-start", help="start the services now (else at the next login)"),
    manager: Optional[str] = typer.Option(None, "--manager", help=_MANAGER_HELP),
    unit_dir: Optional[Path] = typer.Option(None, "--unit-dir", help=_UNIT_DIR_HELP),
) -> None:
    """Install (or replace) the store, supervisor and gateway as user services with this configuration."""
    chosen, directory = _resolve(manager, unit_dir)
    settings = units.with_absolute_home(settings_from(ctx))
    file_settings, config_path = _file_settings(settings)
    environment = units.unit_environment(settings, file_settings, config_path)
    files = units.render(chosen, sys.executable, settings, environment)
    written = install_services(service_manager(chosen), directory, files, start, settings)
    for path in written:
        typer.echo(f"wrote {path}")
    if start:
        typer.echo(f"mlxserve started under {chosen} ({settings.base_url}); `mlxctl service status` shows its health")
    else:
        typer.echo(f"mlxserve installed under {chosen}; it starts at the next login (or `mlxctl service restart`)")


@app.command("uninstall")
@exits_on_error
def uninstall(
    manager: Optional[str] = typer.Option(None, "--manager", help=_MANAGER_HELP),
    unit_dir: Optional[Path] = typer.Option(None, "--unit-dir", help=_UNIT_DIR_HELP),
) -> None:
    """Stop the services and remove their definitions (models and logs stay)."""
    chosen, directory = _resolve(manager, unit_dir)
    removed = uninstall_services(service_manager(chosen), directory)
    if not removed:
        typer.echo(f"mlxserve is not installed as a {chosen} service (nothing in {directory})")
        return
    for path in removed:
        typer.echo(f"removed {path}")


@app.command("status")
@exits_on_error
def status(
    ctx: typer.Context,
    as_json: bool = typer.Option(False, "--json", help="print JSON instead of a table"),
    manager: Optional[str] = typer.Option(None, "--manager", help=_MANAGER_HELP),
    unit_dir: Optional[Path] = typer.Option(None, "--unit-dir", help=_UNIT_DIR_HELP),
) -> None:
    """For each service: installed?, the service manager's state, and health. Exits 0 even when nothing is installed."""
    chosen, directory = _resolve(manager, unit_dir)
    settings = settings_from(ctx)
    rows = service_status(service_manager(chosen), directory, settings)
    if as_json:
        typer.echo(json.dumps({"manager": chosen, "unit_dir": str(directory), "services": rows}, indent=2))
        return
    typer.echo(render.table(["SERVICE", "INSTALLED", "STATE", "HEALTH"], [
        [r["service"], "yes" if r["installed"] else "not installed", r["state"], r["health"].split(":", 1)[0]]
        for r in rows]))
    errors = {r.get("state_error") for r in rows} - {None}
    for error in errors:
        typer.echo(f"state unknown: {error}", err=True)
    for r in rows:
        if r["installed"] and r["health"] != "ok":
            typer.echo(f"{r['service']}: {r['health']}", err=True)
    if not any(r["installed"] for r in rows):
        typer.echo(f"mlxserve is not installed as a {chosen} service: `mlxctl service install` installs it; {FOREGROUND_HINT}.")


@app.command("restart")
@exits_on_error
def restart(
    manager: Optional[str] = typer.Option(None, "--manager", help=_MANAGER_HELP),
    unit_dir: Optional[Path] = typer.Option(None, "--unit-dir", help=_UNIT_DIR_HELP),
) -> None:
    """Restart the installed services (after changing config.toml, say)."""
    chosen, directory = _resolve(manager, unit_dir)
    if not installed_files(chosen, directory):
        raise NotFound(f"mlxserve is not installed as a {chosen} service (nothing in {directory}); "
                       f"install it with `mlxctl service install`")
    mgr = service_manager(chosen)
    mgr.check()
    mgr.restart({s: directory / units.unit_file_name(chosen, s) for s in units.SERVICES})
    typer.echo(f"restarted mlxserve under {chosen}")
