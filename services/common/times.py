"""Time as the APIs show it: one RFC 3339 formatter for every service."""

from __future__ import annotations

import datetime as dt
import math
import time

# Ollama shows a model kept forever as expiring ~292 years from now (max int64 nanoseconds).
FOREVER = dt.timedelta(seconds=2**63 / 1e9)


def rfc3339(ts: float, *, now: float | None = None) -> str:
    """Unix seconds as RFC 3339 in UTC to the second, e.g. 2026-12-05T15:35:44Z.

    math.inf (kept forever), and a time past year 9999, read as `now` (Unix seconds; default
    the current time) plus Ollama's forever.
    """
    try:
        if not math.isinf(ts):
            return _format(dt.datetime.fromtimestamp(ts, dt.timezone.utc))
    except (OverflowError, ValueError, OSError):
        pass  # a keep_alive of, say, 1e15 s ends past year 9999: as good as forever
    base = dt.datetime.fromtimestamp(time.time() if now is None else now, dt.timezone.utc)
    return _format(base + FOREVER)


def _format(when: dt.datetime) -> str:
    return when.isoformat(timespec="seconds").replace("+00:00", "Z")
