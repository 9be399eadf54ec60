"""Workers get an optimized BLAS only where it exists and helps, and confirm what they run on."""

from __future__ import annotations

from pathlib import Path

import pytest

from mlxserve.services.common.config import load_settings
from mlxserve.services.supervisor import blas as supervisor_blas
from mlxserve.services.supervisor.blas import choose_preload, find_optimized_blas, with_preload
from mlxserve.services.worker.blas import REFERENCE, identify_blas, mapped_libraries

DEBIAN_PTHREAD = "usr/lib/x86_64-linux-gnu/openblas-pthread/libblas.so.3"


def make_lib(root: Path, rel: str) -> Path:
    path = root / rel
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"\x7fELF")
    return path


def test_finder_picks_debian_openblas_pthread_for_the_machine_arch(tmp_path: Path) -> None:
    make_lib(tmp_path, "usr/lib/x86_64-linux-gnu/openblas-serial/libblas.so.3")
    pthread = make_lib(tmp_path, DEBIAN_PTHREAD)
    assert find_optimized_blas("x86_64", root=tmp_path) == pthread
    # Another architecture's library is no use to this one.
    assert find_optimized_blas("aarch64", root=tmp_path) is None


def test_finder_finds_aarch64_and_fedora_layouts(tmp_path: Path) -> None:
    arm = make_lib(tmp_path, "usr/lib/aarch64-linux-gnu/openblas-openmp/libblas.so.3")
    assert find_optimized_blas("aarch64", root=tmp_path) == arm
    fedora = tmp_path / "fedora"
    lib = make_lib(fedora, "usr/lib64/libopenblasp.so.0")
    assert find_optimized_blas("x86_64", root=fedora) == lib


def test_finder_reports_nothing_when_no_optimized_blas_is_installed(tmp_path: Path) -> None:
    make_lib(tmp_path, "usr/lib/x86_64-linux-gnu/blas/libblas.so.3")  # the reference one: no gain
    assert find_optimized_blas("x86_64", root=tmp_path) is None


def test_auto_preloads_the_found_library_on_linux_cpu(tmp_path: Path) -> None:
    lib = make_lib(tmp_path, DEBIAN_PTHREAD)
    choice = choose_preload("auto", system="Linux", cpu_backend=True, find=lambda: lib)
    assert choice.path == lib


@pytest.mark.parametrize("setting, system, cpu", [
    ("off", "Linux", True),       # the user said no
    ("auto", "Darwin", True),     # macOS: Accelerate, and no LD_PRELOAD
    ("auto", "Linux", False),     # CUDA: matmuls don't go through BLAS
])
def test_no_preload_when_off_not_linux_or_not_cpu(tmp_path: Path, setting: str, system: str, cpu: bool) -> None:
    lib = make_lib(tmp_path, DEBIAN_PTHREAD)
    choice = choose_preload(setting, system=system, cpu_backend=cpu, find=lambda: lib)
    assert choice.path is None
    assert with_preload({"PATH": "/bin"}, choice.path) == {"PATH": "/bin"}


def test_no_preload_when_nothing_is_found_and_the_reason_says_what_to_install() -> None:
    choice = choose_preload("auto", system="Linux", cpu_backend=True, find=lambda: None)
    assert choice.path is None
    assert "libopenblas0-pthread" in choice.reason


def test_an_explicit_library_path_is_used_only_if_it_exists(tmp_path: Path) -> None:
    lib = make_lib(tmp_path, "opt/blas/libopenblas.so.0")
    assert choose_preload(str(lib), system="Linux", cpu_backend=True).path == lib
    missing = choose_preload(str(tmp_path / "nope.so"), system="Linux", cpu_backend=True)
    assert missing.path is None and "does not exist" in missing.reason


def test_preload_is_appended_to_an_existing_ld_preload_once(tmp_path: Path) -> None:
    lib = tmp_path / "libblas.so.3"
    env = with_preload({"LD_PRELOAD": "/usr/lib/libjemalloc.so.2", "HOME": "/h"}, lib)
    assert env["LD_PRELOAD"] == f"/usr/lib/libjemalloc.so.2 {lib}"
    assert env["HOME"] == "/h"
    assert with_preload(env, lib)["LD_PRELOAD"] == env["LD_PRELOAD"]
    assert with_preload({}, lib) == {"LD_PRELOAD": str(lib)}


def test_worker_env_with_cpu_blas_off_or_a_gpu_backend_leaves_the_environment_alone(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(supervisor_blas, "_choices", {})
    base = {"LD_PRELOAD": "/x.so", "A": "1"}
    assert supervisor_blas.worker_env("off", base, cpu_backend=True) == base
    assert supervisor_blas.worker_env("auto", base, cpu_backend=False) == base


def test_worker_env_appends_an_explicit_library_on_linux_cpu(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(supervisor_blas, "_choices", {})
    monkeypatch.setattr(supervisor_blas.platform, "system", lambda: "Linux")
    lib = make_lib(tmp_path, "opt/libopenblas.so.0")
    env = supervisor_blas.worker_env(str(lib), {"LD_PRELOAD": "/x.so"}, cpu_backend=True)
    assert env["LD_PRELOAD"] == f"/x.so {lib}"


def test_cpu_blas_setting_defaults_to_auto_and_reads_the_environment(tmp_path: Path) -> None:
    assert load_settings(env={"MLXSERVE_HOME": str(tmp_path)}).cpu_blas == "auto"
    assert load_settings(env={"MLXSERVE_HOME": str(tmp_path), "MLXSERVE_CPU_BLAS": "off"}).cpu_blas == "off"


MAPS_PRELOADED = """\
7f00 r--p 00000000 08:01 1 /work/venv/lib/python3.11/site-packages/mlx_cpu.libs/libblas-bd8a282c.so.3.10.0
7f01 r-xp 00001000 08:01 2 /usr/lib/x86_64-linux-gnu/openblas-pthread/libopenblasp-r0.3.21.so
7f02 r-xp 00001000 08:01 3 /usr/lib/x86_64-linux-gnu/openblas-pthread/libblas.so.3
7f03 rw-p 00000000 00:00 0 [heap]
7f04 rw-p 00000000 00:00 0
"""

MAPS_REFERENCE = """\
7f00 r--p 00000000 08:01 1 /usr/lib/x86_64-linux-gnu/libc.so.6
7f01 r-xp 00001000 08:01 2 /work/venv/lib/python3.11/site-packages/mlx_cpu.libs/libblas-bd8a282c.so.3.10.0
7f02 r-xp 00001000 08:01 2 /work/venv/lib/python3.11/site-packages/mlx_cpu.libs/libblas-bd8a282c.so.3.10.0
"""


def test_maps_parser_lists_each_mapped_library_once() -> None:
    libs = mapped_libraries(MAPS_REFERENCE)
    assert libs == ["/usr/lib/x86_64-linux-gnu/libc.so.6",
                    "/work/venv/lib/python3.11/site-packages/mlx_cpu.libs/libblas-bd8a282c.so.3.10.0"]


def test_preloaded_openblas_is_named_with_variant_and_version() -> None:
    name, optimized = identify_blas(mapped_libraries(MAPS_PRELOADED))
    assert optimized
    assert name.startswith("openblas-pthread 0.3.21 (/usr/lib/x86_64-linux-gnu/openblas-pthread/")


def test_without_preload_the_bundled_reference_blas_is_reported() -> None:
    assert identify_blas(mapped_libraries(MAPS_REFERENCE)) == (REFERENCE, False)
    assert identify_blas([]) == ("", False)
