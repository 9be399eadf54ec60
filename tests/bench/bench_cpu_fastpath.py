"""Benchmark (a script, not a test): the Linux CPU fast path (optimized BLAS + float32 compute).

    python tests/bench/bench_cpu_fastpath.py [--configs a,b,c,d] [--decode-tokens 64]
                                             [--streams 8] [--runs 2] [--json [PATH]]

Starts the real system (`mlxctl serve` via tests/e2e/harness.py) with SmolLM2-135M (4-bit GGUF
from tests/fixtures/smollm2.py) once per configuration and measures, through the native API:
  - prefill tok/s: a ~400-token prompt, prompt_eval_count / prompt_eval_duration of the final chunk;
  - single-stream decode tok/s: eval_count / eval_duration of a 64-token greedy generation;
  - N-stream aggregate decode tok/s: N requests at once, total eval_count / wall time.
Every request starts with its own nonce, so the worker's prefix cache never shortens a prefill.

Configurations (environment of `mlxctl serve`):
  a  MLXSERVE_CPU_BLAS=off  MLXSERVE_CPU_FLOAT32=never   as imported (4-bit), reference BLAS
  b  MLXSERVE_CPU_BLAS=off  MLXSERVE_CPU_FLOAT32=always  float32, reference BLAS
  c  MLXSERVE_CPU_BLAS=auto MLXSERVE_CPU_FLOAT32=always  float32 + optimized BLAS (the fast path)
  d  MLXSERVE_CPU_BLAS=auto MLXSERVE_CPU_FLOAT32=never   4-bit + optimized BLAS
The table shows each configuration's compute_dtype and BLAS as /api/ps reports them, and the
ratios to configuration a.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from tests.e2e.harness import System, http_json, start_system  # noqa: E402
from tests.fixtures.smollm2 import find_smollm2_gguf  # noqa: E402

MODEL = "smollm2:135m"
CONFIGS: dict[str, tuple[str, dict[str, str]]] = {
    "a": ("4-bit, reference BLAS", {"MLXSERVE_CPU_BLAS": "off", "MLXSERVE_CPU_FLOAT32": "never"}),
    "b": ("float32, reference BLAS", {"MLXSERVE_CPU_BLAS": "off", "MLXSERVE_CPU_FLOAT32": "always"}),
    "c": ("float32 + OpenBLAS (fast path)", {"MLXSERVE_CPU_BLAS": "auto", "MLXSERVE_CPU_FLOAT32": "always"}),
    "d": ("4-bit + OpenBLAS", {"MLXSERVE_CPU_BLAS": "auto", "MLXSERVE_CPU_FLOAT32": "never"}),
}
# ~400 tokens of varied English for the prefill measurement.
LONG_TEXT = " ".join([
    "The lighthouse keeper climbed the spiral stairs every evening to light the great lamp,",
    "counting the steps as his father had done before him, while the wind rattled the windows",
    "and the sea threw white spray against the rocks below. Ships passed in the distance,",
    "their lanterns swaying, and he wrote each one down in a leather book with the date and hour.",
] * 5)
DECODE_PROMPT = "Write a long, detailed story about a fox who travels across the mountains to find a new home."


def generate(system: System, prompt: str, num_predict: int, *, raw: bool = True) -> dict:
    # raw for prefill (exactly the text's tokens); templated for decode, so that the instruct
    # model answers at length instead of ending its turn at once.
    body = {"model": MODEL, "prompt": prompt, "stream": False, "raw": raw,
            "options": {"temperature": 0, "num_predict": num_predict, "seed": 0}}
    status, out = http_json("POST", system.url + "/api/generate", body, timeout=600)
    if status != 200:
        raise RuntimeError(f"generate failed ({status}): {out}")
    return out


def nonce() -> str:
    return f"[{uuid.uuid4().hex[:8]}] "


def measure(system: System, *, decode_tokens: int, streams: int, runs: int) -> dict:
    generate(system, nonce() + "Hello", 2)  # load the model and warm its kernels
    prefill = []
    for _ in range(runs):
        out = generate(system, nonce() + LONG_TEXT, 1)
        prefill.append((out["prompt_eval_count"], out["prompt_eval_count"] / (out["prompt_eval_duration"] / 1e9)))
    decode = []
    for _ in range(runs):
        out = generate(system, nonce() + DECODE_PROMPT, decode_tokens, raw=False)
        decode.append(out["eval_count"] / (out["eval_duration"] / 1e9))
    aggregate = []
    for _ in range(runs):
        results: list[dict] = []
        threads = [threading.Thread(target=lambda: results.append(generate(system, nonce() + DECODE_PROMPT, decode_tokens, raw=False)))
                   for _ in range(streams)]
        started = time.perf_counter()
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        wall = time.perf_counter() - started
        aggregate.append(sum(r["eval_count"] for r in results) / wall)
    _, ps = http_json("GET", system.url + "/api/ps")
    entry = next((m for m in ps.get("models", []) if m.get("name") == MODEL or m.get("model") == MODEL), {})
    details = entry.get("details") or {}
    return {
        "prompt_tokens": prefill[0][0],
        "prefill_tok_s": statistics.median(p for _, p in prefill),
        "decode_tok_s": statistics.median(decode),
        "decode_tokens": out["eval_count"],
        "aggregate_tok_s": statistics.median(aggregate),
        "compute_dtype": entry.get("compute_dtype") or details.get("compute_dtype", ""),
        "blas": entry.get("blas") or details.get("blas", ""),
        "blas_gflops": entry.get("blas_gflops") or details.get("blas_gflops", 0),
    }


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--configs", default="a,b,c,d", help="which configurations, in order (default a,b,c,d)")
    p.add_argument("--decode-tokens", type=int, default=64)
    p.add_argument("--streams", type=int, default=8)
    p.add_argument("--runs", type=int, default=2, help="measurements per figure (median)")
    p.add_argument("--json", nargs="?", const="-", default=None, help="write results as JSON (to PATH, or stdout)")
    args = p.parse_args()
    keys = [k.strip() for k in args.configs.split(",") if k.strip()]
    unknown = [k for k in keys if k not in CONFIGS]
    if unknown:
        p.error(f"unknown configuration(s) {unknown}; choose from {', '.join(CONFIGS)}")
    gguf = find_smollm2_gguf()
    results: dict[str, dict] = {}
    with tempfile.TemporaryDirectory(prefix="bench-cpu-") as tmp:
        for key in keys:
            label, env = CONFIGS[key]
            system = start_system(Path(tmp) / key, {MODEL: gguf}, extra_env=env)
            try:
                results[key] = {"label": label, "env": env,
                                **measure(system, decode_tokens=args.decode_tokens, streams=args.streams, runs=args.runs)}
            finally:
                system.stop()
            print(f"{key}: {results[key]}", file=sys.stderr, flush=True)
    base = results.get("a")
    print(f"\nSmolLM2-135M through mlxserve (CPU backend), prompt {next(iter(results.values()))['prompt_tokens']} tokens, "
          f"decode {args.decode_tokens} tokens, {args.streams} streams; median of {args.runs}")
    header = f"{'config':<34} {'compute':<30} {'blas':<22} {'prefill':>9} {'decode':>8} {f'{args.streams}-stream':>9}"
    print(header)
    print("-" * len(header))
    for key, r in results.items():
        blas = (r["blas"] or "-")[:22]
        print(f"{key} {r['label']:<32} {r['compute_dtype'] or '-':<30} {blas:<22} "
              f"{r['prefill_tok_s']:>9.1f} {r['decode_tok_s']:>8.1f} {r['aggregate_tok_s']:>9.1f}")
    if base:
        print("\nratios vs a:")
        for key, r in results.items():
            print(f"{key} prefill x{r['prefill_tok_s'] / base['prefill_tok_s']:.1f}  decode x{r['decode_tok_s'] / base['decode_tok_s']:.1f}  "
                  f"{args.streams}-stream x{r['aggregate_tok_s'] / base['aggregate_tok_s']:.1f}")
    if args.json:
        text = json.dumps(results, indent=2)
        if args.json == "-":
            print(text)
        else:
            Path(args.json).write_text(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
