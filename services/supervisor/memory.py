"""How much memory a worker will hold, and how much the supervisor may hand out: pure functions
over the model's stored size and precision (sent with the store's Resolve) and the settings."""

from __future__ import annotations

import importlib.metadata
import os
import sys

from mlxserve.services.common.config import Settings

from .policy import Limits

AUTO_MEMORY_FRACTION = 0.75
_DTYPE_BYTES = {"float32": 4, "float16": 2, "bfloat16": 2}


def physical_memory_bytes() -> int:
    """Physical memory of this machine (0 when the platform does not say)."""
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return 0


def limits_from(settings: Settings) -> Limits:
    """Residency limits from settings: memory_budget 0 means a fraction of physical memory."""
    budget = settings.memory_budget or int(physical_memory_bytes() * AUTO_MEMORY_FRACTION)
    return Limits(max_models=max(0, settings.max_loaded_models), memory_budget=max(0, budget))


def mlx_backend_is_cpu() -> bool:
    """Whether workers will compute on MLX's CPU backend: not on macOS (Metal) and no CUDA build
    of MLX installed. Read from the installed packages: importing MLX here would cost seconds."""
    if sys.platform == "darwin":
        return False
    return not any((d.metadata["Name"] or "").lower().startswith("mlx-cuda") for d in importlib.metadata.distributions())


def dtype_bytes(dtype: str) -> int:
    """Bytes per unquantized weight of a config.json dtype (4 when it does not say: then no
    float32 growth is expected)."""
    return _DTYPE_BYTES.get(dtype or "float32", 4)


def float32_memory(disk_bytes: int, *, bits: int = 0, dtype_bytes: int = 4) -> int:
    """A model's weights once computed in float32 (what a CPU worker with cpu_float32 makes of
    them): `bits`-bit quantized weights grow ~32/bits times (4-bit ~8x, 8-bit ~4x; an upper
    bound, since scales and biases are part of `disk_bytes` too), bfloat16/float16 2x."""
    if bits > 0:
        return disk_bytes * 32 // bits
    return disk_bytes * 4 // max(1, min(4, dtype_bytes))


def expected_memory(disk_bytes: int, *, cpu_float32: str, cpu_backend: bool, budget: int,
                    bits: int = 0, dtype_bytes: int = 4) -> int:
    """Bytes a worker will hold for a model of `disk_bytes` on disk, mirroring the worker's own
    precision decision (services/worker/precision.py): float32 on the CPU backend when the
    setting is "always", or "auto" and the float32 size fits `budget` (0: no budget); else as
    stored. Metal/CUDA workers keep the weights as they are."""
    if not cpu_backend or cpu_float32 == "never":
        return disk_bytes
    expanded = float32_memory(disk_bytes, bits=bits, dtype_bytes=dtype_bytes)
    if cpu_float32 == "always" or not budget or expanded <= budget:
        return expanded
    return disk_bytes
