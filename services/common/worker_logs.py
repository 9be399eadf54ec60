"""Where a worker's logs go: one name, computed the same by the worker and the supervisor."""

from __future__ import annotations

import re


def worker_log_name(model_name: str, fallback: str = "") -> str:
    """`worker-<model>` with the name made safe for a file name (`fallback` when nothing is left).

    The worker writes its JSON log to `<name>.log`; the supervisor appends the worker's captured
    stdout/stderr to `<name>.stderr.log` beside it.
    """
    safe = re.sub(r"[^A-Za-z0-9._-]+", "_", model_name).strip("._")
    return f"worker-{safe or fallback}"
