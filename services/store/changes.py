"""The store's change marker: a small file in the runtime directory that changes whenever a model name
may resolve differently (create, pull, copy, remove, import, gc).

Readers (the supervisor's name cache) keep a resolved name only while the marker reads the same as
when they resolved it: one file read (microseconds) instead of a Resolve round trip per request.
The store rewrites the marker before it answers the verb that changed the catalog, so a client that
saw `mlxctl rm` finish sends its next request to a supervisor that will resolve afresh. The marker
holds a per-process token and a counter, so a restarted store never repeats an old value; no marker
(no store, or one that predates it) means "resolve every time".
"""

from __future__ import annotations

import os
import threading
import uuid
from pathlib import Path

MARKER_NAME = "store-changes"


def marker_path(run_dir: Path) -> Path:
    return Path(run_dir) / MARKER_NAME


def read_marker(path: Path) -> str | None:
    """The marker's current value, or None when there is none (then nothing may be cached)."""
    try:
        with open(path, "rb") as f:
            return f.read(128).decode("ascii", "replace") or None
    except OSError:
        return None


class ChangeMarker:
    """The writer, in the store process: `changed()` after every change to the catalog."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self._token = uuid.uuid4().hex
        self._count = 0
        self._lock = threading.Lock()

    def changed(self) -> None:
        """Publish a new value (written to a temporary file, then renamed: readers never see half of it)."""
        with self._lock:
            self._count += 1
            tmp = self.path.with_name(f".{self.path.name}.{os.getpid()}.tmp")
            tmp.write_bytes(f"{self._token}:{self._count}".encode("ascii"))
            os.replace(tmp, self.path)
