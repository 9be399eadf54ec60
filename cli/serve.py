"""`mlxctl serve`: run the store, the supervisor and the gateway in the foreground, as one unit.

The three services are fresh child processes in serve's process group, told serve's pid
(MLXSERVE_PARENT_PID) so each dies with it even if serve is SIGKILLed. Ctrl-C or SIGTERM stops
them in order (the supervisor stops its workers). One that dies before the system is ready fails
serve; once it serves, a dead service is restarted with backoff while the others keep serving,
and serve gives up only after repeated crashes (keeper.py).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import List, Optional

import typer

from mlxserve.services.common.config import Settings
from mlxserve.services.common.errors import InvalidArgument, NotFound, Timeout, Unavailable
from mlxserve.v1 import common_pb2, store_pb2

from .backend import Backend, exits_on_error, settings_from
from .keeper import Child, ServiceKeeper
from .models import create_model

SERVICES = (
    ("store", "mlxserve.services.store"),
    ("supervisor", "mlxserve.services.supervisor"),
    ("gateway", "mlxserve.gateway"),
)
STOP_GRACE_S = 10.0  # the supervisor needs ~3 s to SIGKILL a stubborn worker


class Stopped(Exception):
    """SIGINT or SIGTERM arrived: shut down cleanly."""


def start_child(settings: Settings, name: str) -> Child:
    """Spawn one service; its stdout and stderr append to `<logs>/<service>.stderr.log`."""
    module = dict(SERVICES)[name]
    env = {**os.environ, **settings.to_env(), "MLXSERVE_PARENT_PID": str(os.getpid())}
    log_path = settings.logs_dir / f"{name}.stderr.log"
    with open(log_path, "ab") as log:
        proc = subprocess.Popen([sys.executable, "-m", module], env=env, stdin=subprocess.DEVNULL,
                                stdout=log, stderr=log, close_fds=True)
    return Child(name, proc, log_path)


def start_children(settings: Settings) -> list[Child]:
    """Spawn the three services (store, supervisor, gateway)."""
    return [start_child(settings, name) for name, _ in SERVICES]


def check_alive(children: list[Child]) -> None:
    """Raise Unavailable naming the first service that exited, with the end of its output."""
    for child in children:
        rc = child.process.poll()
        if rc is not None:
            tail = child.tail()
            detail = f":\n{tail}" if tail else ""
            raise Unavailable(f"the {child.name} service exited (exit code {rc}); log: {child.log_path}{detail}")


def health_ok(base_url: str, timeout: float = 1.0) -> bool:
    try:
        with urllib.request.urlopen(f"{base_url}/api/health", timeout=timeout) as resp:
            return resp.status == 200
    except (urllib.error.URLError, OSError, ValueError):
        return False


def wait_healthy(settings: Settings, children: list[Child], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not health_ok(settings.base_url):
        check_alive(children)
        if time.monotonic() > deadline:
            raise Timeout(f"mlxserve did not become healthy at {settings.base_url}/api/health within {timeout:g}s")
        time.sleep(0.2)


def stop_children(children: list[Child], grace: float = STOP_GRACE_S) -> None:
    """SIGTERM every running child (gateway first), wait up to `grace`, then SIGKILL stragglers."""
    for child in reversed(children):
        if child.process.poll() is None:
            child.process.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + grace
    for child in reversed(children):
        try:
            child.process.wait(timeout=max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            child.process.kill()
            child.process.wait()


def parse_model_specs(specs: list[str]) -> list[tuple[str, Path]]:
    out = []
    for spec in specs:
        name, sep, path = spec.partition("=")
        if not sep or not name or not path:
            raise InvalidArgument(f"--model takes NAME=PATH, got '{spec}'")
        out.append((name, Path(path).expanduser()))
    return out


def ensure_models(backend: Backend, specs: list[tuple[str, Path]]) -> None:
    """Create each NAME from PATH unless the store already has a model of that name."""
    for name, path in specs:
        try:
            backend.call("store", "Show", store_pb2.ShowRequest(name=name))
            typer.echo(f"model {name} already exists")
            continue
        except NotFound:
            pass
        typer.echo(f"creating {name} from {path}")
        create_model(backend, name, path)


def _raise_stopped(signum: int, frame: object) -> None:
    raise Stopped(signal.Signals(signum).name)


def already_running(settings: Settings) -> bool:
    if health_ok(settings.base_url, timeout=0.5):
        return True
    try:
        Backend(settings).call("store", "Ping", common_pb2.PingRequest(), timeout=1.0)
        return True
    except Unavailable:
        return False


@exits_on_error
def serve(
    ctx: typer.Context,
    host: Optional[str] = typer.Option(None, "--host", help="address the HTTP API listens on (default 127.0.0.1)"),
    port: Optional[int] = typer.Option(None, "--port", help="HTTP port (default 11435)"),
    home: Optional[str] = typer.Option(None, "--home", help="mlxserve home: models, run/, logs/ (default ~/.mlxserve)"),
    log_level: Optional[str] = typer.Option(None, "--log-level", help="debug, info, warning or error"),
    verbose: bool = typer.Option(False, "--verbose", "-v", help="debug logging in every service (same as --log-level debug)"),
    insecure_no_auth: bool = typer.Option(False, "--insecure-no-auth",
                                          help="listen beyond loopback without an API key (anyone who reaches the port can use it)"),
    model: List[str] = typer.Option([], "--model", help="NAME=PATH: create this model at startup unless it exists (repeatable)"),
    startup_timeout: float = typer.Option(60.0, "--startup-timeout", help="seconds to wait for the services to be ready"),
) -> None:
    """Run mlxserve (store, supervisor, gateway) in the foreground until Ctrl-C.

    The API key is read from MLXSERVE_API_KEY or config.toml (not a flag: `ps` shows flags to everyone).
    """
    settings = settings_from(ctx, home=home, host=host, port=port, log_level="debug" if verbose else log_level,
                             insecure_no_auth=True if insecure_no_auth else None)
    if settings.port == 0:
        raise InvalidArgument("serve needs a fixed --port (0 is not supported)")
    # Imported here: aiohttp (under the gateway package) would slow every other mlxctl command.
    from mlxserve.gateway.security import check_exposure
    warning = check_exposure(settings)  # the gateway checks again, but one clear line here beats a child's log
    if warning:
        typer.echo(warning, err=True)
    specs = parse_model_specs(model)
    settings.ensure_dirs()
    if already_running(settings):
        raise Unavailable(f"mlxserve is already running (at {settings.base_url}, home {settings.home})")

    previous = {sig: signal.signal(sig, _raise_stopped) for sig in (signal.SIGINT, signal.SIGTERM)}
    children: list[Child] = []
    try:
        children = start_children(settings)
        wait_healthy(settings, children, startup_timeout)
        backend = Backend(settings)
        ensure_models(backend, specs)
        names = [m.name for m in backend.call("store", "List", store_pb2.ListRequest()).models]
        typer.echo(f"mlxserve is serving on {settings.base_url} (models: {', '.join(names) or 'none'})")
        keeper = ServiceKeeper(children, lambda dead: start_child(settings, dead.name),
                               say=lambda line: typer.echo(f"mlxctl serve: {line}", err=True))
        while True:
            keeper.check(time.monotonic())
            time.sleep(0.2)
    except Stopped:
        pass
    finally:
        # A second Ctrl-C must not interrupt the orderly stop.
        for sig in previous:
            signal.signal(sig, signal.SIG_IGN)
        stop_children(children)
        for sig, handler in previous.items():
            signal.signal(sig, handler)
