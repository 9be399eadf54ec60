"""The one logging setup: structlog, JSON lines to `$MLXSERVE_HOME/logs/<service>.log` and stderr.

A request id bound with `bind_request_id` (structlog contextvars) appears on every line logged
while handling that request, in every process it passes through (it travels in gRPC metadata
as `x-request-id` and in Submit).
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

import structlog

REQUEST_ID_KEY = "x-request-id"


def configure(service: str, level: str = "info", log_dir: Path | None = None, *, console: bool = True) -> structlog.stdlib.BoundLogger:
    """Configure logging for this process and return its logger."""
    lvl = getattr(logging, level.upper(), logging.INFO)
    handlers: list[logging.Handler] = []
    if log_dir is not None:
        log_dir.mkdir(parents=True, exist_ok=True)
        handlers.append(logging.FileHandler(log_dir / f"{service}.log"))
    if console:
        handlers.append(logging.StreamHandler(sys.stderr))
    root = logging.getLogger()
    root.handlers[:] = handlers
    root.setLevel(lvl)
    for h in handlers:
        h.setFormatter(logging.Formatter("%(message)s"))
    def add_service(_logger: object, _name: str, event: dict) -> dict:
        # Bound here, not in contextvars: gRPC and engine threads do not inherit the main
        # thread's context, and every line must say which service wrote it.
        event.setdefault("service", service)
        return event

    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            add_service,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.format_exc_info,
            structlog.processors.JSONRenderer(),
        ],
        wrapper_class=structlog.make_filtering_bound_logger(lvl),
        logger_factory=structlog.stdlib.LoggerFactory(),
        cache_logger_on_first_use=True,
    )
    return structlog.get_logger()


def get_logger(**bound: object) -> structlog.stdlib.BoundLogger:
    """A logger with `bound` fields on every line.

    Lazy, so a module-level logger made before `configure` still writes where `configure` says
    (`.bind()` on structlog's proxy would build a logger from the default config right away).
    """
    return structlog.get_logger(**bound)


def bind_request_id(request_id: str) -> None:
    structlog.contextvars.bind_contextvars(request_id=request_id)


def unbind_request_id() -> None:
    """Forget the bound request id (a pooled thread must not lend it to the next request)."""
    structlog.contextvars.unbind_contextvars("request_id")


def current_request_id() -> str | None:
    """The request id bound in this context, if any."""
    rid = structlog.contextvars.get_contextvars().get("request_id")
    return rid if isinstance(rid, str) and rid else None


def submit_fields(submit_id: str) -> dict[str, str]:
    """Log fields for a worker-side request id.

    The gateway submits "<request id>.<hex>" (unique per attempt); workers log `request_id` as
    the gateway's id, so one grep follows a request through every service, and `submit_id` as
    the full one. An id without a suffix is its own request id.
    """
    return {"request_id": submit_id.rsplit(".", 1)[0] if "." in submit_id else submit_id, "submit_id": submit_id}


def debug_enabled() -> bool:
    """Whether debug lines are wanted: cheap guard for lines that cost something to build."""
    return logging.getLogger().isEnabledFor(logging.DEBUG)


def verbosity_args(parser: argparse.ArgumentParser) -> None:
    """Add an entry point's `--log-level` and `-v/--verbose` (debug) flags."""
    parser.add_argument("--log-level", dest="log_level", help="debug, info, warning or error")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging (the same as --log-level debug)")


def level_from(args: argparse.Namespace) -> str | None:
    """The log level the verbosity flags ask for (None: not given, the settings decide)."""
    return "debug" if getattr(args, "verbose", False) else getattr(args, "log_level", None)
