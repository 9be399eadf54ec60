"""Entry point of the store service: `python -m mlxserve.services.store [--home DIR] [--log-level LEVEL] [-v]`."""

from __future__ import annotations

import argparse
import signal
import sys
import threading

from mlxserve.services.common import lifecycle, logs, rpc
from mlxserve.services.common.config import load_settings
from mlxserve.services.common.errors import MlxServeError

from . import transfer
from .server import build_server
from .store import ModelStore


def main(argv: list[str] | None = None) -> int:
    """Serve the Store gRPC API on settings.store_socket until SIGTERM or SIGINT."""
    parser = argparse.ArgumentParser(prog="mlxserve-store", description="mlxserve model store service")
    parser.add_argument("--home", help="mlxserve home directory (default $MLXSERVE_HOME or ~/.mlxserve)")
    logs.verbosity_args(parser)
    args = parser.parse_args(argv)

    settings = load_settings({"home": args.home, "log_level": logs.level_from(args)})
    settings.ensure_dirs()
    log = logs.configure("store", settings.log_level, settings.logs_dir)
    parent = lifecycle.parent_pid_from_env()
    if parent is not None:
        lifecycle.die_with_parent(parent)

    try:
        store = ModelStore(settings.models_dir)
    except MlxServeError as e:  # e.g. a store written by a newer mlxserve: say what to do, touch nothing
        log.error("store_refused", error=e.message)
        print(f"mlxserve-store: {e.message}", file=sys.stderr, flush=True)
        return e.exit_code
    store.clean_tmp()
    server = build_server(store, settings.store_socket, remotes=transfer.Remotes.from_settings(settings))
    server.start()
    rpc.secure_socket(settings.store_socket)
    log.info("store_listening", socket=str(settings.store_socket), models_dir=str(settings.models_dir))

    stop = threading.Event()

    def on_signal(signum: int, _frame: object) -> None:
        log.info("store_stopping", signal=signal.Signals(signum).name)
        stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    while not stop.wait(0.5):
        pass
    server.stop(grace=5).wait()
    settings.store_socket.unlink(missing_ok=True)
    log.info("store_stopped")
    return 0
