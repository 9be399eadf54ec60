"""One real system per test session: `mlxctl serve` with SmolLM2 (from PyPI) and a tiny model."""

from __future__ import annotations

from pathlib import Path
from typing import Iterator

import pytest

from tests.e2e.harness import System, start_system
from tests.fixtures.api_clients import oai, oll  # noqa: F401 (fixtures: the OpenAI and Ollama clients)
from tests.fixtures.tiny_model import write_tiny_model

SMOL = "smollm2:135m"
TINY = "tiny:latest"


@pytest.fixture(scope="session")
def system(tmp_path_factory: pytest.TempPathFactory, smollm2_gguf: Path) -> Iterator[System]:
    home = tmp_path_factory.mktemp("mlxserve-home")
    tiny_dir = write_tiny_model(tmp_path_factory.mktemp("tiny-model") / "tiny")
    sys_ = start_system(home, {SMOL: smollm2_gguf, TINY: tiny_dir})
    yield sys_
    left = sys_.stop()
    assert not left, f"processes outlived `mlxctl serve`: {left}"
