"""Compute precision on the CPU backend: run quantized and half-precision models in float32.

MLX's quantized matmul kernels and its bfloat16/float16 paths do not go through BLAS on the CPU
backend, while float32 matmuls do; with an optimized BLAS a float32 model prefills ~15x and
decodes ~1.3-5x faster than the same model kept 4-bit (see tests/bench/bench_cpu_fastpath.py).
The price is memory: a 4-bit model takes ~8x its size in float32, bfloat16 2x. So the rule is
(setting `cpu_float32`): "always" converts, "never" keeps the weights as loaded, and "auto"
converts when the float32 weights fit the memory budget the supervisor gives this worker.
Metal and CUDA keep quantized weights as they are: their quantized kernels are the fast path.
"""

from __future__ import annotations

import collections
from dataclasses import dataclass
import mlx.core as mx
import mlx.nn as nn
from mlx.utils import tree_flatten, tree_unflatten

from mlxserve.services.common.config import CPU_FLOAT32_CHOICES
from mlxserve.services.common.errors import InvalidArgument

_HALF_DTYPES = (mx.bfloat16, mx.float16)


@dataclass(frozen=True)
class PrecisionPlan:
    """What `plan` decided for one model (before any weight is touched)."""

    convert: bool          # dequantize / upcast to float32
    source: str            # the weights as loaded: "4-bit", "bfloat16", "float32", ...
    float32_bytes: int     # the weights' size in float32
    reason: str            # why, for the log

    @property
    def description(self) -> str:
        """What the model computes in, for Info / ps: "float32 (dequantized from 4-bit)", "4-bit"."""
        if not self.convert or self.source == "float32":
            return self.source
        verb = "dequantized" if self.source.endswith("-bit") else "upcast"
        return f"float32 ({verb} from {self.source})"


def _quantized_modules(model: nn.Module) -> list[tuple[str, nn.Module]]:
    return [(name, m) for name, m in model.named_modules() if isinstance(m, (nn.QuantizedLinear, nn.QuantizedEmbedding))]


def _unsupported_quantized(model: nn.Module) -> list[str]:
    """Quantized layers this module cannot dequantize (e.g. mixture-of-experts switch layers)."""
    return sorted({type(m).__name__ for _, m in model.named_modules()
                   if "quantized" in type(m).__name__.lower()
                   and not isinstance(m, (nn.QuantizedLinear, nn.QuantizedEmbedding))})


def _unpacked_shape(module: nn.Module) -> tuple[int, int]:
    rows, packed = module.weight.shape
    return rows, packed * 32 // module.bits


def source_precision(model: nn.Module) -> str:
    """The weights as loaded: "4-bit" (or "4/8-bit" when mixed) for a quantized model, else the
    dtype most parameters have ("bfloat16", "float16", "float32")."""
    bits = sorted({m.bits for _, m in _quantized_modules(model)})
    if bits:
        return "/".join(str(b) for b in bits) + "-bit"
    sizes: collections.Counter[str] = collections.Counter()
    for _, p in tree_flatten(model.parameters()):
        if mx.issubdtype(p.dtype, mx.floating):
            sizes[str(p.dtype).removeprefix("mlx.core.")] += p.size
    return sizes.most_common(1)[0][0] if sizes else "float32"


def float32_bytes(model: nn.Module) -> int:
    """Bytes the model's weights take once dequantized/upcast to float32."""
    quantized = _quantized_modules(model)
    skip = {f"{name}.{k}" if name else k for name, m in quantized for k in ("weight", "scales", "biases")}
    total = 0
    for name, m in quantized:
        rows, cols = _unpacked_shape(m)
        total += rows * cols * 4
    for name, p in tree_flatten(model.parameters()):
        if name in skip:
            continue
        total += p.size * 4 if mx.issubdtype(p.dtype, mx.floating) else p.nbytes
    return total


def plan(model: nn.Module, *, device: str, setting: str, budget: int) -> PrecisionPlan:
    """Decide whether to compute `model` in float32.

    device: "cpu" or "gpu" (the MLX default device's type). budget: bytes this worker may use
    (0: no limit known). Raises InvalidArgument for a setting other than auto/always/never.
    """
    if setting not in CPU_FLOAT32_CHOICES:
        raise InvalidArgument(f"cpu_float32 must be one of {', '.join(CPU_FLOAT32_CHOICES)}, got {setting!r}")
    source = source_precision(model)
    needed = float32_bytes(model)

    def keep(reason: str) -> PrecisionPlan:
        return PrecisionPlan(convert=False, source=source, float32_bytes=needed, reason=reason)

    if device != "cpu":
        return keep("the GPU computes quantized and half-precision weights natively")
    if source == "float32":
        return keep("already float32")
    unsupported = _unsupported_quantized(model)
    if unsupported:
        return keep(f"cannot dequantize {', '.join(unsupported)}")
    if setting == "never":
        return keep("cpu_float32 is never")
    if setting == "auto" and budget > 0 and needed > budget:
        return keep(f"float32 weights need {needed} bytes, over this worker's {budget}-byte memory budget")
    why = "cpu_float32 is always" if setting == "always" else "float32 weights fit the memory budget"
    return PrecisionPlan(convert=True, source=source, float32_bytes=needed, reason=why)


def to_float32(model: nn.Module) -> None:
    """Replace every QuantizedLinear/QuantizedEmbedding of `model` by a float32 Linear/Embedding
    and upcast every other floating parameter to float32, in place; the weights are evaluated
    here so that the cost lands in the load, not in the first request."""
    replaced: list[tuple[str, nn.Module]] = []
    for name, m in _quantized_modules(model):
        weight = mx.dequantize(m.weight, m.scales, m["biases"] if "biases" in m else None,
                               group_size=m.group_size, bits=m.bits, mode=m.mode, dtype=mx.float32)
        if isinstance(m, nn.QuantizedEmbedding):
            layer: nn.Module = nn.Embedding(*weight.shape)
        else:
            layer = nn.Linear(weight.shape[1], weight.shape[0], bias="bias" in m)
            if "bias" in m:
                layer.bias = m.bias
        layer.weight = weight
        replaced.append((name, layer))
    if replaced:
        model.update_modules(tree_unflatten(replaced))
    model.update(tree_unflatten([
        (k, p.astype(mx.float32)) for k, p in tree_flatten(model.parameters()) if p.dtype in _HALF_DTYPES
    ]))
    mx.eval(model.parameters())


def apply(model: nn.Module, *, device: str, setting: str, budget: int) -> PrecisionPlan:
    """`plan`, then `to_float32` when it says so; returns the plan (its description is what
    the worker reports as compute_dtype)."""
    decided = plan(model, device=device, setting=setting, budget=budget)
    if decided.convert:
        to_float32(model)
    return decided

