"""Submits still templating and tokenizing: a Cancel that arrives meanwhile is not lost.

The gateway cancels a request whose client left or whose Submit ran past its deadline. Until
its Submit has queued it, the runner does not know the request yet: the cancel is kept here and
the Submit refused (Cancelled) when it is done, instead of a generation nobody waits for.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager


class TokenizingSubmits:
    """Request ids whose Submit is under way, and those of them cancelled meanwhile (thread-safe)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._running: set[str] = set()
        self._cancelled: set[str] = set()

    @contextmanager
    def tokenizing(self, request_id: str) -> Iterator[None]:
        """Mark `request_id` as being submitted for the duration of the block."""
        with self._lock:
            self._running.add(request_id)
        try:
            yield
        finally:
            with self._lock:
                self._running.discard(request_id)
                self._cancelled.discard(request_id)

    def cancel(self, request_id: str) -> bool:
        """Remember a cancel for a Submit under way; False if no Submit of `request_id` is."""
        with self._lock:
            if request_id not in self._running:
                return False
            self._cancelled.add(request_id)
            return True

    def cancelled(self, request_id: str) -> bool:
        with self._lock:
            return request_id in self._cancelled
