"""Progress of a long store operation, reported to a callback (the gRPC layer streams it)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable


@dataclass(frozen=True)
class ProgressEvent:
    status: str
    digest: str = ""
    total: int = 0
    completed: int = 0


ProgressCallback = Callable[[ProgressEvent], None]


def no_progress(_: ProgressEvent) -> None:
    """The default callback: report nothing."""
