"""Float32 compute of quantized / half-precision models on the CPU backend (services/worker/precision.py)."""

from __future__ import annotations

import json
from pathlib import Path

import mlx.core as mx
import mlx.nn as nn
import mlx_lm
import pytest
from mlx.utils import tree_flatten

from mlxserve.services.common.errors import InvalidArgument
from mlxserve.services.worker import precision
from mlxserve.services.worker.runner import ModelRunner
from tests.fixtures.tiny_model import write_tiny_model

PROMPT = mx.array([[1, 5, 17, 42, 99, 7, 300, 11]])


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_tiny_model(tmp_path_factory.mktemp("tiny") / "model")


def quantized(path: Path, bits: int = 4) -> nn.Module:
    model, _ = mlx_lm.load(str(path))
    nn.quantize(model, group_size=32, bits=bits)
    return model


def quantized_layers(model: nn.Module) -> int:
    return sum(isinstance(m, (nn.QuantizedLinear, nn.QuantizedEmbedding)) for _, m in model.named_modules())


def test_a_4bit_model_dequantized_to_float32_gives_the_same_logits(tiny_dir: Path) -> None:
    model = quantized(tiny_dir)
    before = model(PROMPT)
    plan = precision.apply(model, device="cpu", setting="always", budget=0)
    after = model(PROMPT)
    assert plan.convert and plan.description == "float32 (dequantized from 4-bit)"
    assert quantized_layers(model) == 0
    assert after.dtype == mx.float32
    assert mx.allclose(before, after, atol=1e-3, rtol=1e-3).item()
    assert (mx.argmax(before, axis=-1) == mx.argmax(after, axis=-1)).all().item()


def test_float32_size_is_what_the_converted_weights_take(tiny_dir: Path) -> None:
    model = quantized(tiny_dir)
    expected = precision.float32_bytes(model)
    precision.apply(model, device="cpu", setting="always", budget=0)
    assert sum(p.nbytes for _, p in tree_flatten(model.parameters())) == expected


def test_never_keeps_the_quantized_layers(tiny_dir: Path) -> None:
    model = quantized(tiny_dir)
    plan = precision.apply(model, device="cpu", setting="never", budget=0)
    assert not plan.convert and plan.description == "4-bit"
    assert quantized_layers(model) > 0


def test_auto_keeps_a_model_whose_float32_weights_do_not_fit_the_budget(tiny_dir: Path) -> None:
    model = quantized(tiny_dir, bits=8)
    plan = precision.apply(model, device="cpu", setting="auto", budget=1000)
    assert not plan.convert and plan.description == "8-bit"
    assert "budget" in plan.reason
    assert quantized_layers(model) > 0


def test_auto_converts_a_model_that_fits_the_budget(tiny_dir: Path) -> None:
    model = quantized(tiny_dir)
    plan = precision.apply(model, device="cpu", setting="auto", budget=1 << 30)
    assert plan.convert and quantized_layers(model) == 0


def test_the_gpu_keeps_quantized_weights_even_when_always_is_asked(tiny_dir: Path) -> None:
    model = quantized(tiny_dir)
    plan = precision.apply(model, device="gpu", setting="always", budget=0)
    assert not plan.convert and plan.description == "4-bit"
    assert quantized_layers(model) > 0


def test_bfloat16_weights_are_upcast_to_float32_on_the_cpu(tiny_dir: Path) -> None:
    model, _ = mlx_lm.load(str(tiny_dir))
    model.set_dtype(mx.bfloat16)
    plan = precision.apply(model, device="cpu", setting="auto", budget=0)
    assert plan.description == "float32 (upcast from bfloat16)"
    assert {p.dtype for _, p in tree_flatten(model.parameters())} == {mx.float32}


def test_a_float32_model_is_left_as_it_is(tiny_dir: Path) -> None:
    model, _ = mlx_lm.load(str(tiny_dir))
    plan = precision.apply(model, device="cpu", setting="always", budget=0)
    assert not plan.convert and plan.description == "float32"


def test_an_unknown_setting_is_refused(tiny_dir: Path) -> None:
    model, _ = mlx_lm.load(str(tiny_dir))
    with pytest.raises(InvalidArgument, match="cpu_float32"):
        precision.plan(model, device="cpu", setting="sometimes", budget=0)


def test_the_runner_reports_the_precision_it_computes_in(tmp_path: Path) -> None:
    path = write_tiny_model(tmp_path / "model")
    model, _ = mlx_lm.load(str(path))
    nn.quantize(model, group_size=32, bits=4)
    # Save as mlx-lm does a quantized model, so the runner loads 4-bit weights.
    config = json.loads((path / "config.json").read_text())
    config["quantization"] = {"group_size": 32, "bits": 4}
    (path / "config.json").write_text(json.dumps(config))
    mx.save_safetensors(str(path / "model.safetensors"), dict(tree_flatten(model.parameters())))
    kept = ModelRunner(path, cpu_float32="never")
    assert kept.compute_dtype == "4-bit"
    converted = ModelRunner(path, cpu_float32="auto", memory_budget=1 << 30)
    assert converted.compute_dtype == "float32 (dequantized from 4-bit)"
