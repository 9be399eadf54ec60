"""Benchmark (a script, not a test): pull throughput from a local registry vs a plain file copy,
and create-from-GGUF time for SmolLM2-135M.

    python tests/bench/bench_pull.py [--size-mb 256] [--runs 5] [--create-runs 3]

Starts Debian's docker-registry on 127.0.0.1 (apt-get install docker-registry), pushes one model
with a random blob of --size-mb, then times `pull` into a fresh store (download, sha256, fsync,
adopt) against copying the same bytes from one file to another on the same disk (with fsync),
and against the least a verified copy must do besides: the same copy, with the bytes' sha256
computed as they go (one core reads and hashes, as `sha256sum` would). Runs alternate between
the three; medians, min and max, and ratios are printed (--json: one JSON document).
Every source is warm in the page cache.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from mlxserve.services.store.store import ModelStore  # noqa: E402
from mlxserve.services.store.transfer import pull, push  # noqa: E402
from tests.fixtures.registry import put_model, start_registry  # noqa: E402
from tests.fixtures.smollm2 import find_smollm2_gguf  # noqa: E402


def _copy_with_fsync(src: Path, dst: Path) -> None:
    shutil.copyfile(src, dst)
    with open(dst, "rb+") as f:
        os.fsync(f.fileno())


def _copy_hashing_with_fsync(src: Path, dst: Path) -> str:
    h = hashlib.sha256()
    with open(src, "rb") as fin, open(dst, "wb") as fout:
        while chunk := fin.read(4 << 20):
            h.update(chunk)
            fout.write(chunk)
        fout.flush()
        os.fsync(fout.fileno())
    return h.hexdigest()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size-mb", type=int, default=256)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--create-runs", type=int, default=3)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    size = args.size_mb << 20

    with tempfile.TemporaryDirectory(prefix="mlxserve-bench-", dir=os.environ.get("BENCH_TMP")) as tmp:
        work = Path(tmp)
        blob = work / "weights.bin"
        with open(blob, "wb") as f:
            for _ in range(args.size_mb):
                f.write(os.urandom(1 << 20))
        registry = start_registry(work / "registry")
        try:
            src = ModelStore(work / "src")
            name = f"{registry.host}/bench/model:latest"
            put_model(src, name, {"model.safetensors": blob, "config.json": b'{"model_type": "llama"}'})
            push(src, name, insecure=True)
            pull(ModelStore(work / "warm"), name, insecure=True)  # warm the registry's page cache
            shutil.rmtree(work / "warm")

            pull_times, copy_times, hashed_times = [], [], []
            for i in range(args.runs):
                dst = work / f"pull-{i}"
                t0 = time.perf_counter()
                pull(ModelStore(dst), name, insecure=True)
                pull_times.append(time.perf_counter() - t0)
                shutil.rmtree(dst)

                copy = work / f"copy-{i}.bin"
                t0 = time.perf_counter()
                _copy_with_fsync(blob, copy)
                copy_times.append(time.perf_counter() - t0)
                copy.unlink()

                t0 = time.perf_counter()
                _copy_hashing_with_fsync(blob, copy)
                hashed_times.append(time.perf_counter() - t0)
                copy.unlink()
        finally:
            registry.stop()

        mb = size / 1e6
        pull_med, copy_med, hashed_med = (statistics.median(t) for t in (pull_times, copy_times, hashed_times))
        if args.json:
            print(json.dumps({
                "command": "python tests/bench/bench_pull.py " + " ".join(sys.argv[1:]),
                "blob_bytes": size, "runs": args.runs,
                "pull_s": pull_times, "copy_s": copy_times, "copy_sha256_s": hashed_times,
                "pull_s_median": pull_med, "copy_s_median": copy_med, "copy_sha256_s_median": hashed_med,
                "ratio_pull_vs_copy": copy_med / pull_med, "ratio_pull_vs_copy_sha256": hashed_med / pull_med,
            }, indent=1))
            return
        print(f"blob size                 {mb:.0f} MB, {args.runs} runs each, median (min-max)")
        for label, med, times in (("pull from local registry", pull_med, pull_times),
                                  ("plain file copy (fsync)", copy_med, copy_times),
                                  ("copy + sha256 (fsync)", hashed_med, hashed_times)):
            print(f"{label:<25} {med:.3f} s ({min(times):.3f}-{max(times):.3f})  {mb / med:8.1f} MB/s")
        print(f"ratio pull / copy         {copy_med / pull_med:.2f} (throughput)")
        print(f"ratio pull / copy+sha256  {hashed_med / pull_med:.2f}")

        gguf = find_smollm2_gguf() if args.create_runs > 0 else None
        if gguf is None:
            print("create-from-GGUF          skipped")
            return
        create_times = []
        for i in range(args.create_runs):
            store = ModelStore(work / f"create-{i}")
            t0 = time.perf_counter()
            store.create_from_path("smollm2:135m", gguf)
            create_times.append(time.perf_counter() - t0)
            shutil.rmtree(work / f"create-{i}")
        print(f"create from GGUF          {statistics.median(create_times):.2f} s median of {args.create_runs} "
              f"({gguf.name}, {gguf.stat().st_size / 1e6:.0f} MB)")


if __name__ == "__main__":
    main()
