"""Entry point: `python -m mlxserve.gateway [--host H] [--port P] [--home DIR] [--log-level L] [-v] [--insecure-no-auth]`.

The API key comes from MLXSERVE_API_KEY or config.toml, never a flag: a command line is visible
to every user of the machine (`ps`).
"""

from __future__ import annotations

import argparse
import asyncio
import signal
import sys

from aiohttp import web

from mlxserve.services.common import logs
from mlxserve.services.common.config import Settings, load_settings
from mlxserve.services.common.errors import MlxServeError
from mlxserve.services.common.lifecycle import die_with_parent, parent_pid_from_env

from . import security
from .app import create_app
from .http_server import GatewayRunner


def parse_args(argv: list[str] | None = None) -> dict[str, object]:
    parser = argparse.ArgumentParser(prog="mlxserve-gateway", description="The mlxserve HTTP gateway (Ollama and OpenAI APIs).")
    parser.add_argument("--host", help="address to listen on (default 127.0.0.1)")
    parser.add_argument("--port", type=int, help="TCP port (default 11435; 0 picks a free one)")
    parser.add_argument("--home", help="MLXSERVE_HOME: models, run/ sockets, logs")
    logs.verbosity_args(parser)
    parser.add_argument("--insecure-no-auth", dest="insecure_no_auth", action="store_true", default=None,
                        help="listen beyond loopback without an API key (anyone who reaches the port can use it)")
    args = parser.parse_args(argv)
    overrides = {k: v for k, v in vars(args).items() if k != "verbose"}
    overrides["log_level"] = logs.level_from(args)
    return overrides


async def serve(settings: Settings) -> None:
    """Serve until SIGTERM or SIGINT, then shut down gracefully (the ipc socket file is removed)."""
    log = logs.get_logger()
    app = create_app(settings)
    # keepalive_timeout also closes a connection whose request headers never finish arriving.
    runner = GatewayRunner(app, handler_cancellation=True, access_log=None, keepalive_timeout=settings.body_timeout)
    await runner.setup()
    site = web.TCPSite(runner, settings.host, settings.port, reuse_address=True)
    await site.start()
    addresses = runner.addresses  # the real port when --port 0
    port = addresses[0][1] if addresses else settings.port
    host = f"[{settings.host}]" if ":" in settings.host else settings.host
    url = f"http://{host}:{port}"
    print(f"listening on {url}", flush=True)
    log.info("listening", url=url)

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    log.info("shutting_down")
    await runner.cleanup()


def main(argv: list[str] | None = None) -> int:
    overrides = parse_args(argv)
    try:
        settings = load_settings(overrides)
    except MlxServeError as e:
        print(f"mlxserve-gateway: {e}", file=sys.stderr)
        return e.exit_code
    try:
        warning = security.check_exposure(settings)
    except MlxServeError as e:
        print(f"mlxserve-gateway: {e}", file=sys.stderr)
        return e.exit_code
    settings.ensure_dirs()
    logs.configure("gateway", settings.log_level, settings.logs_dir)
    if warning:
        logs.get_logger().warning("listening_without_api_key", host=settings.host, port=settings.port)
        print(f"mlxserve-gateway: {warning}", file=sys.stderr, flush=True)
    parent = parent_pid_from_env()
    if parent is not None:
        die_with_parent(parent)
    try:
        asyncio.run(serve(settings))
    except OSError as e:  # e.g. the port is taken
        logs.get_logger().error("cannot_listen", error=str(e))
        print(f"mlxserve-gateway: cannot listen on {settings.host}:{settings.port}: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
