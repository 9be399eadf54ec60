"""Fewer ops per decode step on MLX's CPU backend: compiled RMSNorm, RoPE and SwiGLU MLP.

On the CPU, `mx.fast.rms_norm` and `mx.fast.rope` have no kernels: each call expands into its
reference graph (RoPE recomputes its frequencies with Arange/Exp/Cos/Sin on every call), and every
node costs ~10 us of scheduling. One decode step of SmolLM2-135M builds ~4,000 nodes for ~270
matmuls. `compile_decode_pieces` swaps those modules for versions whose decode-shaped calls (one
new token per row) run through `mx.compile`, which fuses the elementwise chains: ~2,500 nodes a
step, and the same arithmetic (the reference-output tests hold). Prefill (many tokens per row)
keeps the original code, so no prompt length is traced.

Only modules whose computation is known are swapped: `nn.RMSNorm`, `nn.RoPE`, and the SwiGLU
`MLP` of mlx-lm's llama/qwen2/qwen3/mistral families with float, bias-free projections.
GPU backends have real kernels for these; the worker calls this on the CPU only.
"""

from __future__ import annotations

import functools

import mlx.core as mx
from mlx import nn

# mlx-lm model modules whose `MLP` is down_proj(silu(gate_proj(x)) * up_proj(x)).
SWIGLU_MLP_MODULES = frozenset({"mlx_lm.models.llama", "mlx_lm.models.qwen2", "mlx_lm.models.qwen3",
                                "mlx_lm.models.mistral"})


def _decode_shaped(x: mx.array) -> bool:
    """One new token per row: (B, 1, D) activations or (B, H, 1, D) heads."""
    return x.ndim >= 3 and x.shape[-2] == 1


@functools.cache
def _rms_norm(eps: float):
    return mx.compile(lambda x, w: mx.fast.rms_norm(x, w, eps))


@functools.cache
def _rope(dims: int, traditional: bool, base: float, scale: float):
    return mx.compile(lambda x, offset: mx.fast.rope(x, dims, traditional=traditional, base=base, scale=scale,
                                                     offset=offset))


@mx.compile
def _swiglu_mlp(x: mx.array, gate: mx.array, up: mx.array, down: mx.array) -> mx.array:
    return (nn.silu(x @ gate.T) * (x @ up.T)) @ down.T


class CompiledRMSNorm(nn.RMSNorm):
    """nn.RMSNorm whose decode-shaped calls are compiled."""

    def __call__(self, x: mx.array) -> mx.array:
        if not _decode_shaped(x):
            return super().__call__(x)
        return _rms_norm(self.eps)(x, self["weight"])


class CompiledRoPE(nn.RoPE):
    """nn.RoPE whose decode-shaped calls are compiled, the offset passed as an array (an int
    offset would be a constant of the trace, retraced at every position)."""

    def __call__(self, x: mx.array, offset: int | mx.array = 0) -> mx.array:
        if not _decode_shaped(x):
            return super().__call__(x, offset)
        if not isinstance(offset, mx.array):
            offset = mx.array(offset, dtype=mx.int32)
        return _rope(self.dims, self.traditional, self.base, self.scale)(x, offset)


def _compiled_mlp_call(self: nn.Module, x: mx.array) -> mx.array:
    if not _decode_shaped(x):
        return type(self).__mro__[1].__call__(self, x)
    return _swiglu_mlp(x, self.gate_proj.weight, self.up_proj.weight, self.down_proj.weight)


@functools.cache
def _compiled_mlp_class(cls: type) -> type:
    return type(f"Compiled{cls.__name__}", (cls,), {"__call__": _compiled_mlp_call})


def _is_swiglu_mlp(m: nn.Module) -> bool:
    cls = type(m)
    if cls.__name__ != "MLP" or cls.__module__ not in SWIGLU_MLP_MODULES:
        return False
    projections = [getattr(m, k, None) for k in ("gate_proj", "up_proj", "down_proj")]
    return all(type(p) is nn.Linear and "bias" not in p for p in projections)


def compile_decode_pieces(model: nn.Module) -> int:
    """Swap `model`'s RMSNorm, RoPE and SwiGLU MLP modules for compiled-at-decode versions, in
    place (parameters untouched); returns how many modules were swapped."""
    swapped = 0
    for _, m in model.named_modules():
        cls = type(m)
        if cls is nn.RMSNorm:
            m.__class__ = CompiledRMSNorm
        elif cls is nn.RoPE:
            m.__class__ = CompiledRoPE
        elif _is_swiglu_mlp(m):
            m.__class__ = _compiled_mlp_class(cls)
        else:
            continue
        swapped += 1
    return swapped
