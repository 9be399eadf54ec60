"""Which BLAS the supervisor's workers compute with (Linux, CPU backend).

The mlx-cpu wheel bundles the reference (netlib) BLAS: ~6 GFLOP/s for a float32 matmul on a
small machine. An optimized BLAS that exports the same standard symbols (Debian's
libopenblas0-pthread) interposed with LD_PRELOAD makes the same matmul 15-50x faster. Only
workers get it: the supervisor adds it to the environment it spawns them with, and nothing
else in the system is touched. The library must exist on this machine (found, not assumed);
the worker then confirms it took effect and reports it (services/worker/blas.py).

The supervisor never imports MLX itself (its memory is not a model's): whether workers run on
the CPU backend comes from `memory.mlx_backend_is_cpu` (read from installed packages).
"""

from __future__ import annotations

import platform
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Mapping

from mlxserve.services.common import logs

AUTO = "auto"
OFF = "off"

# Debian/Ubuntu multiarch directories by machine name.
_DEBIAN_TRIPLETS = {"x86_64": "x86_64-linux-gnu", "amd64": "x86_64-linux-gnu",
                    "aarch64": "aarch64-linux-gnu", "arm64": "aarch64-linux-gnu"}


@dataclass(frozen=True)
class BlasChoice:
    """The library preloaded into workers (None: none), and why, for the supervisor's log."""

    path: Path | None
    reason: str


def candidate_paths(machine: str | None = None, root: Path = Path("/")) -> list[Path]:
    """Where an optimized BLAS with the standard symbols lives, best first.

    Debian/Ubuntu: the OpenBLAS alternatives' libblas.so.3 (pthread, then OpenMP, then serial);
    Fedora/RHEL: libopenblas[p|o].so.0 in /usr/lib64 (pthread first).
    """
    machine = machine or platform.machine()
    paths: list[Path] = []
    triplet = _DEBIAN_TRIPLETS.get(machine.lower())
    if triplet:
        for variant in ("openblas-pthread", "openblas-openmp", "openblas-serial"):
            paths.append(root / "usr" / "lib" / triplet / variant / "libblas.so.3")
    for name in ("libopenblasp.so.0", "libopenblaso.so.0", "libopenblas.so.0"):
        paths.append(root / "usr" / "lib64" / name)
    return paths


def find_optimized_blas(machine: str | None = None, root: Path = Path("/")) -> Path | None:
    """The first optimized BLAS library that exists on this machine, or None."""
    return next((p for p in candidate_paths(machine, root) if p.is_file()), None)


def choose_preload(setting: str, *, system: str, cpu_backend: bool,
                   find: Callable[[], Path | None] = find_optimized_blas) -> BlasChoice:
    """Decide what workers preload from the `cpu_blas` setting ("auto", "off" or a library path).

    Nothing off Linux (macOS has Accelerate; LD_PRELOAD is a glibc/ELF mechanism), nothing for
    GPU backends (their matmuls don't use BLAS), nothing when the library isn't there.
    """
    setting = setting.strip() or AUTO
    if setting.lower() == OFF:
        return BlasChoice(None, "cpu_blas=off")
    if system != "Linux":
        return BlasChoice(None, f"not Linux ({system})")
    if not cpu_backend:
        return BlasChoice(None, "workers run on a GPU backend")
    if setting.lower() == AUTO:
        found = find()
        if found is None:
            return BlasChoice(None, "no optimized BLAS installed (apt install libopenblas0-pthread)")
        return BlasChoice(found, "found")
    path = Path(setting).expanduser()
    if not path.is_file():
        return BlasChoice(None, f"cpu_blas={setting} does not exist")
    return BlasChoice(path, "cpu_blas setting")


def with_preload(env: Mapping[str, str], library: Path | None) -> dict[str, str]:
    """`env` with `library` appended to LD_PRELOAD (kept as is when None or already there)."""
    out = dict(env)
    if library is None:
        return out
    existing = [p for p in out.get("LD_PRELOAD", "").replace(":", " ").split() if p]
    if str(library) not in existing:
        existing.append(str(library))
    out["LD_PRELOAD"] = " ".join(existing)
    return out


# One decision per (setting, backend) for the life of the supervisor, logged once.
_choices: dict[tuple[str, bool], BlasChoice] = {}


def worker_env(setting: str, env: Mapping[str, str], *, cpu_backend: bool) -> dict[str, str]:
    """The environment a worker is spawned with: `env` plus the chosen BLAS preload."""
    key = (setting, cpu_backend)
    choice = _choices.get(key)
    if choice is None:
        choice = _choices.setdefault(key, choose_preload(setting, system=platform.system(), cpu_backend=cpu_backend))
        logs.get_logger().info("worker_blas", preload=str(choice.path) if choice.path else None, reason=choice.reason)
    return with_preload(env, choice.path)
