"""A worker that is one rank of a group serving one model over `mx.distributed`.

The supervisor starts every rank with `--group-strategy`/`--group-backend` and the environment
MLX's backend reads (MLX_RANK, MLX_HOSTFILE...), plus MLXSERVE_GROUP_HOSTS (the ranks' host
labels, for messages). Here: join the group (`join_group`), check that every rank runs the same
mlx, mlx-lm and mlxserve (`check_versions`), and load this rank's part of the model
(`load_sharded`). The lock-step serving is group_sync.py.
"""

from __future__ import annotations

import json
import os
import sys
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any

from mlxserve.services.common.errors import InvalidArgument

GROUP_HOSTS_ENV = "MLXSERVE_GROUP_HOSTS"
# Each version string is sent in a fixed-size field (UTF-8, zero-padded): one collective, no lengths.
VERSION_FIELD_BYTES = 48
VERSION_NAMES = ("mlx", "mlx-lm", "mlxserve")


class GroupFailure(RuntimeError):
    """The group cannot go on (a rank was lost, or the ranks diverged): fatal for every rank."""


@dataclass(frozen=True)
class GroupInfo:
    """Who this rank is, and the ranks' host labels (rank order)."""

    group: Any           # mx.distributed.Group
    rank: int
    size: int
    hosts: tuple[str, ...]
    strategy: str
    backend: str

    def host(self, rank: int) -> str:
        return self.hosts[rank] if rank < len(self.hosts) else f"rank {rank}"

    def lost_message(self, error: BaseException) -> str:
        """What every request in flight is told when a collective failed: which rank was lost.

        MLX's ring says only that "a peer" is gone. Seen from rank 0 of two, that is rank 1; with
        more ranks any of the others may be the one, and all are named."""
        if self.size == 2:
            other = 1 - self.rank
            who = f"rank {other} ({self.host(other)})"
        else:
            others = [f"{r} ({self.host(r)})" for r in range(self.size) if r != self.rank]
            who = f"one of ranks {', '.join(others)}"
        return f"the model's group lost {who}: {error}"


def group_hosts(size: int, env: dict[str, str] | None = None) -> tuple[str, ...]:
    """MLXSERVE_GROUP_HOSTS: a JSON list of `size` host labels ("rank r" for each when unset)."""
    raw = (os.environ if env is None else env).get(GROUP_HOSTS_ENV, "")
    if not raw:
        return tuple(f"rank {r}" for r in range(size))
    try:
        hosts = json.loads(raw)
    except ValueError as e:
        raise InvalidArgument(f"{GROUP_HOSTS_ENV} must be a JSON list of host names: {e}") from None
    if not isinstance(hosts, list) or len(hosts) != size or not all(isinstance(h, str) for h in hosts):
        raise InvalidArgument(f"{GROUP_HOSTS_ENV} must list {size} host names (one per rank), got {raw!r}")
    return tuple(hosts)


def own_label(env: dict[str, str] | None = None) -> str:
    """"rank R (host)" for this process, from MLX_RANK and MLXSERVE_GROUP_HOSTS, before the group is joined."""
    env = os.environ if env is None else env
    rank = env.get("MLX_RANK", "?")
    try:
        hosts = json.loads(env.get(GROUP_HOSTS_ENV, "") or "[]")
        return f"rank {rank} ({hosts[int(rank)]})"
    except (ValueError, IndexError, TypeError):
        return f"rank {rank}"


def join_group(backend: str, strategy: str) -> GroupInfo:
    """`mx.distributed.init(backend, strict=True)` (blocks until every rank is there), then the one
    `mlxserve-group: rank R of N joined` line on stderr that the supervisor watches for."""
    import mlx.core as mx

    group = mx.distributed.init(backend=backend, strict=True)
    rank, size = group.rank(), group.size()
    print(f"mlxserve-group: rank {rank} of {size} joined", file=sys.stderr, flush=True)
    return GroupInfo(group, rank, size, group_hosts(size), strategy, backend)


def local_versions() -> tuple[str, ...]:
    """This rank's (mlx, mlx-lm, mlxserve) versions, in VERSION_NAMES order."""
    import mlx.core as mx
    import mlx_lm
    from mlxserve import __version__

    return (str(mx.__version__), str(getattr(mlx_lm, "__version__", "") or metadata.version("mlx-lm")), str(__version__))


def encode_versions(versions: tuple[str, ...]) -> bytes:
    """The fixed-size record of one rank's versions (each field VERSION_FIELD_BYTES, zero-padded)."""
    out = b""
    for v in versions:
        raw = v.encode()[:VERSION_FIELD_BYTES]
        out += raw + b"\0" * (VERSION_FIELD_BYTES - len(raw))
    return out


def decode_versions(record: bytes) -> tuple[str, ...]:
    size = VERSION_FIELD_BYTES
    return tuple(record[i:i + size].rstrip(b"\0").decode(errors="replace") for i in range(0, len(record), size))


def version_mismatch(versions: list[tuple[str, ...]], hosts: tuple[str, ...]) -> str | None:
    """None when every rank runs the same versions; else one line naming each host and its versions."""
    if all(v == versions[0] for v in versions):
        return None
    described = "; ".join(
        f"rank {r} ({hosts[r] if r < len(hosts) else '?'}): " + ", ".join(f"{n} {x}" for n, x in zip(VERSION_NAMES, v))
        for r, v in enumerate(versions))
    return f"the group's hosts run different versions ({described}): install the same mlx, mlx-lm and mlxserve on every host"


def check_versions(info: GroupInfo) -> str | None:
    """All-gather every rank's versions (every rank gets the same answer): the mismatch line, or None."""
    import mlx.core as mx
    import numpy as np

    record = np.frombuffer(encode_versions(local_versions()), dtype=np.uint8)
    gathered = mx.distributed.all_gather(mx.array(record)[None], group=info.group, stream=mx.cpu)
    rows = [decode_versions(bytes(np.array(row))) for row in gathered]
    return version_mismatch(rows, info.hosts)


def load_sharded(model_path: Path, info: GroupInfo) -> tuple[Any, Any]:
    """Load this rank's part of the model in `model_path` (a store view: it may hold one
    model.safetensors without an index): lazily, split over the group, then evaluated, so that
    only this rank's weights are read into memory (as mlx_lm.utils.sharded_load does)."""
    import mlx.core as mx
    from mlx_lm.utils import load_model, load_tokenizer

    from .pipeline import shard_model

    # strict: a store view holds every weight (mlx-lm's sharded_load may lack the other ranks' files).
    model, config = load_model(model_path, lazy=True, strict=True)
    shard_model(model, info.group, info.strategy)
    mx.eval(model.parameters())
    tokenizer = load_tokenizer(model_path, eos_token_ids=config.get("eos_token_id", None))
    return model, tokenizer


def start_rank(backend: str, strategy: str) -> GroupInfo:
    """Join the group and check that every rank runs the same versions; raises GroupFailure with the
    one line to show (every rank raises it alike on a version mismatch)."""
    try:
        info = join_group(backend, strategy)
    except (RuntimeError, ValueError) as e:  # MLX's backend could not start (no hostfile, a port taken...)
        raise GroupFailure(f"{own_label()} cannot join the model's {backend} group: {e}") from e
    mismatch = check_versions(info)
    if mismatch:
        raise GroupFailure(mismatch)
    return info
