"""`mlxctl serve` is one process group: stopping it stops every service and every worker."""

from __future__ import annotations

from pathlib import Path

import ollama

from tests.e2e.harness import alive, descendants, start_system
from tests.fixtures.tiny_model import write_tiny_model


def test_sigterm_on_serve_leaves_no_process_behind(tmp_path: Path) -> None:
    system = start_system(tmp_path / "home", {"tiny": write_tiny_model(tmp_path / "tiny")})
    try:
        ollama.Client(host=system.url).generate(model="tiny", prompt="hi", options={"num_predict": 2})
        tree = descendants(system.proc.pid)
        # store, supervisor, gateway, and the worker the request started
        assert len(tree) >= 4, tree
    finally:
        left = system.stop()
    assert not left, f"still running after SIGTERM: {left}"
    assert not any(alive(p) for p in tree)
    assert not list((system.home / "run").glob("*.sock")), "sockets left behind"
