"""Workers compute with an optimized BLAS when one is installed, say so, and work without one.

The shared `system` runs workers with Debian's OpenBLAS (installed by `make test` where apt is);
the fallback test starts its own system with `cpu_blas=off`.
"""

from __future__ import annotations

import json
import platform
from pathlib import Path
from typing import Iterator

import pytest

from mlxserve.services.supervisor.blas import find_optimized_blas
from tests.e2e.conftest import TINY
from tests.e2e.harness import System, descendants, http_json, start_system
from tests.fixtures.tiny_model import write_tiny_model

REFERENCE_GFLOPS = 20.0  # the bundled reference BLAS does ~6 here; OpenBLAS 50-300

needs_linux = pytest.mark.skipif(platform.system() != "Linux", reason="LD_PRELOAD and /proc are Linux's")


def loaded_entry(system: System, model: str) -> dict:
    status, body = http_json("POST", system.url + "/api/generate", {"model": model, "prompt": "hi", "stream": False,
                                                                     "options": {"num_predict": 2}})
    assert status == 200, body
    status, ps = http_json("GET", system.url + "/api/ps")
    assert status == 200, ps
    return next(m for m in ps["models"] if m["name"] == model)


def environ(pid: int) -> dict[str, str]:
    raw = Path(f"/proc/{pid}/environ").read_bytes()
    return dict(item.split("=", 1) for item in raw.decode(errors="replace").split("\0") if "=" in item)


def is_worker(pid: int) -> bool:
    return b"mlxserve.services.worker" in Path(f"/proc/{pid}/cmdline").read_bytes()


@needs_linux
@pytest.mark.skipif(find_optimized_blas() is None, reason="no optimized BLAS installed (apt install libopenblas0-pthread)")
def test_workers_run_on_openblas_and_ps_says_so(system: System) -> None:
    entry = loaded_entry(system, TINY)
    assert "openblas" in entry["blas"], entry
    assert entry["blas_gflops"] > REFERENCE_GFLOPS, entry

    out = system.mlxctl("ps", "--json")
    assert out.returncode == 0, out.stderr
    cli = next(m for m in json.loads(out.stdout)["models"] if m["name"] == TINY)
    assert "openblas" in cli["blas"] and cli["blas_gflops"] > REFERENCE_GFLOPS

    # Only workers get it: the gateway, supervisor and store keep their own environment.
    pids = [p for p in descendants(system.proc.pid) | {system.proc.pid} if Path(f"/proc/{p}/environ").exists()]
    workers = [p for p in pids if is_worker(p)]
    others = [p for p in pids if not is_worker(p)]
    assert entry.get("blas") and workers and others
    for pid in workers:
        assert "openblas" in environ(pid).get("LD_PRELOAD", ""), pid
    for pid in others:
        assert "openblas" not in environ(pid).get("LD_PRELOAD", ""), pid


@pytest.fixture(scope="module")
def system_without_blas(tmp_path_factory: pytest.TempPathFactory) -> Iterator[System]:
    home = tmp_path_factory.mktemp("mlxserve-home-noblas")
    tiny_dir = write_tiny_model(tmp_path_factory.mktemp("tiny-model-noblas") / "tiny")
    sys_ = start_system(home, {TINY: tiny_dir}, extra_env={"MLXSERVE_CPU_BLAS": "off"})
    yield sys_
    left = sys_.stop()
    assert not left, f"processes outlived `mlxctl serve`: {left}"


@needs_linux
def test_without_an_optimized_blas_generation_works_and_the_log_hints_at_openblas(system_without_blas: System) -> None:
    entry = loaded_entry(system_without_blas, TINY)
    assert entry["blas"] == "bundled reference BLAS", entry
    for pid in descendants(system_without_blas.proc.pid):
        if Path(f"/proc/{pid}/environ").exists() and is_worker(pid):
            assert "openblas" not in environ(pid).get("LD_PRELOAD", "")
    worker_log = (system_without_blas.home / "logs" / "worker-tiny_latest.log").read_text()
    hints = [json.loads(line) for line in worker_log.splitlines() if '"blas_hint"' in line]
    assert len(hints) == 1 and "libopenblas0-pthread" in hints[0]["hint"], worker_log[-2000:]
