"""Confirm which BLAS this worker's matmuls run on (CPU backend), and how fast.

The supervisor may preload an optimized BLAS (services/supervisor/blas.py); this is the
worker's own word on it: the BLAS libraries mapped into the process (/proc/self/maps) and a
one-off float32 matmul rate, logged once at startup and reported by Info (so `ps` shows it).
"""

from __future__ import annotations

import re
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from mlxserve.services.common import logs

REFERENCE = "bundled reference BLAS"
HINT = ("matmuls run on the bundled reference BLAS (~6 GFLOP/s); "
        "install libopenblas0-pthread (apt) for ~15x faster prefill")

# Optimized BLAS libraries by file name; each exports the standard BLAS symbols.
_OPTIMIZED = (
    (re.compile(r"^libopenblas(?P<variant>[po]?)(?:-r(?P<version>[\d.]+))?\.so"), "openblas"),
    (re.compile(r"^libmkl_rt\.so"), "mkl"),
    (re.compile(r"^libblis(?:-mt)?\.so"), "blis"),
)
_REFERENCE = re.compile(r"^libblas(?:-[0-9a-f]+)?\.so")
_VARIANTS = {"p": "pthread", "o": "openmp"}

_MATMUL_N = 512
_MATMUL_BUDGET_S = 0.15


@dataclass(frozen=True)
class BlasReport:
    """The BLAS this process computes with ("" when not on the CPU backend) and its float32 rate."""

    library: str
    gflops: float
    optimized: bool


def mapped_libraries(maps_text: str) -> list[str]:
    """Paths of the shared objects mapped into a process, in first-mapped order, from /proc/PID/maps."""
    seen: dict[str, None] = {}
    for line in maps_text.splitlines():
        fields = line.split(maxsplit=5)
        if len(fields) == 6 and fields[5].startswith("/") and ".so" in fields[5]:
            seen.setdefault(fields[5].strip(), None)
    return list(seen)


def identify_blas(paths: list[str]) -> tuple[str, bool]:
    """Name the BLAS among mapped library paths: (description, optimized?).

    An optimized library wins over the bundled reference one, which stays mapped (libmlx links
    it) but whose symbols the preloaded library interposes.
    """
    for path in paths:
        name = Path(path).name
        for pattern, family in _OPTIMIZED:
            m = pattern.match(name)
            if m is None:
                continue
            if family == "openblas":
                variant = _VARIANTS.get(m.group("variant") or "", "")
                if not variant and Path(path).parent.name.startswith("openblas-"):
                    variant = Path(path).parent.name.removeprefix("openblas-")
                version = m.group("version")
                label = "openblas" + (f"-{variant}" if variant else "") + (f" {version}" if version else "")
            else:
                label = family
            return f"{label} ({path})", True
    for path in paths:
        if _REFERENCE.match(Path(path).name):
            return (REFERENCE if "mlx" in path else f"reference BLAS ({path})"), False
    return "", False


def matmul_gflops(n: int = _MATMUL_N, budget_s: float = _MATMUL_BUDGET_S) -> float:
    """A one-off float32 n x n matmul rate on the CPU, in GFLOP/s (about budget_s of work)."""
    import mlx.core as mx

    with mx.stream(mx.cpu):
        a = mx.random.normal((n, n), dtype=mx.float32)
        b = mx.random.normal((n, n), dtype=mx.float32)
        mx.eval(a @ b)  # warm-up: thread pools start, pages fault in
        reps, start = 0, time.perf_counter()
        while reps < 2 or (reps < 20 and time.perf_counter() - start < budget_s / 2):
            mx.eval(a @ b)
            reps += 1
            if time.perf_counter() - start > budget_s:
                break
        elapsed = time.perf_counter() - start
    return 2 * n**3 * reps / elapsed / 1e9


def confirm_blas(device: str, maps_path: str = "/proc/self/maps") -> BlasReport:
    """Confirm this process's BLAS and measure it; log one `blas` line (and a hint when slow).

    Only the CPU backend computes matmuls with BLAS: on a GPU the report is empty.
    """
    if device != "cpu":
        return BlasReport("", 0.0, False)
    gflops = round(matmul_gflops(), 1)  # first: MLX (and the BLAS it links) is mapped by then
    try:
        with open(maps_path) as f:
            library, optimized = identify_blas(mapped_libraries(f.read()))
    except OSError:  # no procfs (macOS: MLX uses Accelerate there)
        library, optimized = ("accelerate" if sys.platform == "darwin" else "unknown"), sys.platform == "darwin"
    report = BlasReport(library, gflops, optimized)
    log = logs.get_logger()
    log.info("blas", library=report.library, gflops=report.gflops, optimized=report.optimized)
    if not report.optimized and sys.platform.startswith("linux"):
        log.info("blas_hint", hint=HINT)
    return report
