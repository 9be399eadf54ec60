"""The one logging setup: structlog, JSON lines to `$MLXSERVE_HOME/logs/<service>.log` and stderr.

A request id bound with `bind_request_id` (structlog contextvars) appears on every line logged
while handling that request, in every process it passes through (it travels in gRPC metadata
as `x-request-id` and in Submit).
"""

from __future__ import annotations

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
    return structlog.get_logger().bind(**bound)


def bind_request_id(request_id: str) -> None:
    structlog.contextvars.bind_contextvars(request_id=request_id)
