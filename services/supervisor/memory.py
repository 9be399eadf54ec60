"""How much memory a worker will hold, and how much the supervisor may hand out: pure functions
over the model's stored size and precision (sent with the store's Resolve) and the settings; and
where a load goes (one process, or a group of ranks when one host cannot hold it)."""

from __future__ import annotations

import importlib.metadata
import os
import sys
from dataclasses import dataclass
from typing import Callable

from mlxserve.services.common.config import Settings
from mlxserve.services.common.errors import InvalidArgument
from mlxserve.services.common.placement import Placement, parse_host
from mlxserve.v1 import worker_pb2

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


def human_bytes(n: int) -> str:
    """`n` bytes as a user reads it: 2.1 GB, 512 MB, 900 KB (decimal units, as `ps` prints)."""
    for unit, scale in (("GB", 10**9), ("MB", 10**6), ("KB", 10**3)):
        if n >= scale:
            return f"{n / scale:.3g} {unit}"
    return f"{n} B"


@dataclass(frozen=True)
class Plan:
    """Where one load goes: one process (placement None) or a group, and its memory figures."""

    placement: Placement | None
    reserve: int      # bytes held on this host: the worker's, or the group's local ranks'
    rank_budget: int  # bytes each rank may hold (a group only; 0: no budget)
    per_rank: int = 0


def choose_plan(name: str, *, single_need: int, host_budget: int, own: Placement | None,
                distributed: Placement | None, per_rank_need: Callable[[Placement], int]) -> Plan:
    """The placement of one load: the model's own (`own`: its ModelRef's, else settings.placements'),
    else one process when it fits this host's budget (or no group is configured), else the
    `distributed` group. Raises InvalidArgument, with the numbers, when the chosen group's ranks
    cannot hold their share either: no retry will make the model fit.

    A pipeline rank holds its layers plus the embeddings and the head (replicated on every
    rank), so `per_rank_need` (the expected memory divided over the ranks) is a lower bound."""
    group = own
    if group is None:
        if not distributed or not host_budget or single_need <= host_budget:
            return Plan(placement=None, reserve=single_need, rank_budget=0)
        group = distributed
    per_rank = per_rank_need(group)
    rank_budget = group.rank_memory or host_budget
    if rank_budget and per_rank > rank_budget:
        single = (f"more than this host's {human_bytes(host_budget)} budget, and "
                  if own is None and host_budget else "")
        raise InvalidArgument(
            f"model {name} needs {human_bytes(single_need)}: {single}{human_bytes(per_rank)} per rank is more than the "
            f"group's {human_bytes(rank_budget)} per rank ({group.describe()}{', ' + group.source if group.source else ''})")
    local_ranks = sum(1 for h in group.hosts if h.local)
    return Plan(placement=group, reserve=per_rank * local_ranks, rank_budget=rank_budget, per_rank=per_rank)


def group_rank_need(disk_bytes: int, ranks: int, *, cpu_float32: str, cpu_backend: bool, rank_budget: int,
                    bits: int = 0, dtype_bytes: int = 4) -> int:
    """Bytes one rank is expected to hold: its share of the weights, with the precision decision
    each rank makes on its own share against its budget (see `expected_memory`)."""
    share = -(-disk_bytes // max(1, ranks))
    return expected_memory(share, cpu_float32=cpu_float32, cpu_backend=cpu_backend, budget=rank_budget,
                           bits=bits, dtype_bytes=dtype_bytes)


def local_ranks_memory(info: worker_pb2.InfoResponse) -> int:
    """The memory a worker holds on this host: its own, or for a group the sum of the ranks here
    (the others hold memory on their own hosts)."""
    if not info.ranks:
        return info.memory_bytes
    return sum(r.memory_bytes for r in info.ranks if r.rank == 0 or _is_local(r.host)) or info.memory_bytes


def _is_local(label: str) -> bool:
    try:
        return parse_host(label).local
    except InvalidArgument:
        return False


def shares_endpoints(a: Placement, b: Placement) -> bool:
    """Whether two groups would listen on one host and port (then only one can run at a time)."""
    def endpoints(p: Placement) -> set[tuple[str, int]]:
        return {(h.ip or h.ssh, h.port or p.port + r) for r, h in enumerate(p.hosts)}

    return bool(endpoints(a) & endpoints(b))
