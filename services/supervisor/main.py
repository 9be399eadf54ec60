"""Entry point: `python -m mlxserve.services.supervisor [--home DIR] [--log-level LEVEL] [-v]`."""

from __future__ import annotations

import argparse
import asyncio
import sys

from mlxserve.services.common import lifecycle, logs
from mlxserve.services.common.config import load_settings
from mlxserve.services.common.errors import MlxServeError

from .server import serve


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="mlxserve-supervisor", description="Owns mlxserve's worker processes.")
    parser.add_argument("--home", help="mlxserve home (default $MLXSERVE_HOME or ~/.mlxserve)")
    logs.verbosity_args(parser)
    args = parser.parse_args(argv)
    try:
        settings = load_settings({"home": args.home, "log_level": logs.level_from(args)})
    except MlxServeError as e:
        print(f"Error: {e}", file=sys.stderr)
        return e.exit_code
    settings.ensure_dirs()
    logs.configure("supervisor", settings.log_level, settings.logs_dir)
    parent = lifecycle.parent_pid_from_env()
    if parent is not None:
        lifecycle.die_with_parent(parent)
    asyncio.run(serve(settings))
    return 0


if __name__ == "__main__":
    sys.exit(main())
