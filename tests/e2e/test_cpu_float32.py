"""On the CPU backend a quantized model is computed in float32 (cpu_float32=auto), and /api/ps says so."""

from __future__ import annotations

import pytest

from mlxserve.services.supervisor.pool import mlx_backend_is_cpu
from tests.e2e.conftest import SMOL
from tests.e2e.harness import System, http_json

pytestmark = pytest.mark.skipif(not mlx_backend_is_cpu(), reason="Metal and CUDA keep quantized weights as they are")


def test_ps_reports_that_smollm2_computes_in_float32_dequantized_from_its_quantized_weights(system: System) -> None:
    status, out = http_json("POST", system.url + "/api/generate",
                            {"model": SMOL, "prompt": "Hi", "stream": False, "options": {"num_predict": 1, "temperature": 0}})
    assert status == 200, out
    status, ps = http_json("GET", system.url + "/api/ps")
    assert status == 200
    entry = next(m for m in ps["models"] if m["name"] == SMOL)
    assert entry["compute_dtype"].startswith("float32 (dequantized from "), entry
    assert entry["compute_dtype"].endswith("-bit)"), entry
