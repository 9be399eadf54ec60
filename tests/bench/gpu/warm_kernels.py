"""Fill MLX's CUDA kernel cache for a model before timing it (run on the device).

    python3 tests/bench/gpu/warm_kernels.py MODEL_FOLDER [--levels 1,2,4,8,16,32] [--tokens 8]

MLX compiles its CUDA kernels at first use (NVRTC) and keeps them in /tmp/mlx/<version>/ptx for
every later process. A benchmark that starts one side first would otherwise charge that side the
compiles. This loads the folder with mlx-lm and decodes a few tokens with `stream_generate` and
with one `BatchGenerator` per batch size (the engine every side runs), printing each step's time.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench_serving import InProcess, story_messages  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("model", type=Path)
    p.add_argument("--levels", default="1,2,4,8,16,32")
    p.add_argument("--tokens", type=int, default=8)
    args = p.parse_args(argv)
    local = InProcess(args.model, args.tokens)
    print(f"load {local.load_s:.2f}s", flush=True)
    t0 = time.perf_counter()
    local.stream(story_messages(0, shared_system=False))
    print(f"stream_generate {time.perf_counter() - t0:.2f}s", flush=True)
    for n in (int(x) for x in args.levels.split(",")):
        t0 = time.perf_counter()
        local.concurrent([story_messages(k, shared_system=False) for k in range(n)])
        print(f"BatchGenerator x{n} {time.perf_counter() - t0:.2f}s", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
