"""The plain records the store hands out (a model's summary and details, a manifest found by name),
apart from store.py so that create.py can name them without importing the store."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from .names import ModelName


@dataclass(frozen=True)
class ModelDetails:
    format: str
    family: str
    families: list[str]
    parameter_size: str
    quantization_level: str
    parent_model: str = ""


@dataclass(frozen=True)
class ModelSummary:
    name: str          # display name, e.g. "smollm2:latest"
    digest: str        # manifest digest, hex without "sha256:"
    size: int          # bytes of all layers
    modified_at: str   # RFC 3339
    details: ModelDetails


@dataclass(frozen=True)
class Found:
    """A manifest located by name: its canonical name, path, exact bytes and digest."""

    name: ModelName
    path: Path
    data: bytes
    digest: str  # "sha256:<hex>"
