"""Importers turn a source (a GGUF file, an mlx-lm/Hugging Face folder) into view files.

Each writes the files of the model's view into a staging folder inside models/tmp and returns
an `ImportResult`; the store then moves those files into blobs and writes the manifest.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from ..manifest import ModelConfig


@dataclass
class ImportResult:
    """Files written into the staging folder, plus the facts that go into the config blob."""

    config: ModelConfig
    source_digest: str  # "sha256:<hex>" of the source file (or of a folder's file listing)
    converter: str  # e.g. "mlxserve-gguf/0.1.0"
    files: dict[str, tuple[Path, str | None]] = field(default_factory=dict)  # title -> (staged path, digest if known)
    annotations: dict[str, str] = field(default_factory=dict)  # extra manifest annotations (e.g. what the quantization became)
