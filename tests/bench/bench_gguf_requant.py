"""Which MLX bit width keeps each requantized ggml type faithful: a sweep over
quants.REQUANT_BITS on real files (tests/bench/make_gemma3_quant_copies.py makes them).

    python tests/bench/bench_gguf_requant.py DIR [--out tests/bench/results/gguf-requant-gemma3.json]

For each file and candidate width, bench_gguf_import.py --against exact: greedy tokens of the
requantized import against greedy tokens of the file's exact values (imported as float32),
both computed in float32 (a CPU worker's precision), on the 8 raw prompts of the Gemma 3 reference, 32 tokens each.
Types that 8 bits hold exactly (Q3_K, IQ4_NL, IQ4_XS) score 256/256 there by construction.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parents[1]))
# file -> (the requantized types it holds, widths to try: each width applies to all of them; llama.cpp's
# IQ4_XS mix also holds IQ4_NL, for rows that are not whole 256-blocks).
SWEEP = {"q6_k": (("Q6_K",), (6, 8)), "iq4_nl": (("IQ4_NL",), (6, 8)), "iq4_xs": (("IQ4_XS", "IQ4_NL"), (6, 8)),
         "q3_k_m-pure": (("Q3_K",), (5, 6, 8)), "q2_k-pure": (("Q2_K",), (4, 5, 6, 8))}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("dir", type=Path)
    ap.add_argument("--out", type=Path, default=HERE / "results" / "gguf-requant-gemma3.json")
    args = ap.parse_args()
    from mlxserve.services.supervisor.blas import worker_env

    env = worker_env("auto", os.environ, cpu_backend=True)  # OpenBLAS, as a CPU worker computes
    rows = []
    for name, (kinds, widths) in SWEEP.items():
        kind = "+".join(kinds)
        path = args.dir / f"gemma-3-270m-{name}.gguf"
        for bits in widths:
            done = subprocess.run(
                [sys.executable, str(HERE / "bench_gguf_import.py"), str(path), "--runs", "1", "--against", "exact",
                 "--requant", ",".join(f"{k}={bits}" for k in kinds), "--precision", "float32", "--json"],
                capture_output=True, text=True, check=True, env=env)
            r = json.loads(done.stdout)
            cases = r["precisions"]["float32"]["cases"]
            row = {"file": path.name, "type": kind, "bits": bits, "stored_as": r["quantization"],
                   "agree": sum(c["agree"] for c in cases), "of": sum(c["of"] for c in cases),
                   "per_prompt": [c["agree"] for c in cases], "output_bytes": r["output_bytes"]}
            rows.append(row)
            print(f"{kind:>7} at {bits}-bit: {row['agree']}/{row['of']} leading tokens as the exact weights "
                  f"{row['per_prompt']}, {row['output_bytes'] / 2**20:.0f} MiB", flush=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"command": "python tests/bench/bench_gguf_requant.py DIR", "rows": rows}, indent=1) + "\n")
    print("wrote", args.out)


if __name__ == "__main__":
    main()
