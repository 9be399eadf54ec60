"""GGUF import: how long it takes, how much memory the model then holds, and whether its greedy
output agrees with llama.cpp's on the same file.

    python tests/bench/bench_gguf_import.py GGUF [--reference JSON ...] [--runs 3] [--precision as-stored,float32]
    python tests/bench/bench_gguf_import.py GGUF --against exact [--requant Q6_K=6,IQ4_NL=8]
    python tests/bench/bench_gguf_import.py GGUF --serve [--runs 3] [--json]

For each run the file is imported afresh (the store's importer, into a temporary folder); the
model is then loaded with mlx-lm the way a worker loads it, in each precision asked for
("as-stored": MLX's quantized kernels; "float32": what a worker on the CPU backend computes in,
services/worker/precision.py), and every prompt of the reference (llama.cpp's greedy tokens,
tests/data/gguf/make_gemma3_reference.py) is decoded greedily. Reported per prompt: whether our
prompt token ids equal llama.cpp's, and how many leading generated tokens agree, with
llama.cpp's top-2 logit margin where they part (a near-tie there means either answer is faithful).
`--against exact` measures the importer alone: the reference is then our own greedy output from
the file's exact values (imported as float32, every value exact), so what differs
is what requantization (quants.REQUANT_BITS, overridable with --requant) changed.
`--serve` measures what a user meets instead: the running system (`mlxctl serve`, as the e2e
tests start it), `mlxctl create NAME --from GGUF` timed end to end (upload-free: the store reads
the file), one raw greedy request, the worker's load time and its resident memory (VmRSS, VmHWM).
Prints a table and, with --json, one JSON document.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

DEFAULT_REFERENCES = [REPO / "tests" / "data" / "gguf" / "gemma3_llamacpp_greedy.json",
                      REPO / "tests" / "data" / "gguf" / "gemma3_f32_llamacpp_greedy.json"]


def rss_mib() -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def greedy(model, prompt_ids: list[int], n: int, eos: set[int]) -> list[int]:
    import mlx.core as mx
    from mlx_lm.generate import generate_step

    out: list[int] = []
    for token, _ in generate_step(mx.array(prompt_ids), model, max_tokens=n, sampler=lambda x: mx.argmax(x, axis=-1)):
        token = int(token)
        out.append(token)
        if token in eos:
            break
    return out


def leading_agreement(ours: list[int], theirs: list[int]) -> int:
    n = 0
    for a, b in zip(ours, theirs):
        if a != b:
            break
        n += 1
    return n


def serve_report(args: argparse.Namespace) -> None:
    """Time `mlxctl create` and read the worker's memory through a running `mlxctl serve`."""
    from tests.bench.bench_suite import cmdline, proc_memory, worker_load_s
    from tests.e2e.harness import descendants, http_json, start_system

    with tempfile.TemporaryDirectory() as tmp:
        system = start_system(Path(tmp) / "home", {})
        try:
            creates = []
            for i in range(args.runs):
                name = f"gguf-bench-{i}"
                t0 = time.perf_counter()
                done = system.mlxctl("create", name, "--from", str(args.gguf), timeout=1800)
                creates.append(time.perf_counter() - t0)
                if done.returncode != 0:
                    raise SystemExit(done.stderr)
            status, answer = http_json("POST", f"{system.url}/api/generate", {
                "model": name, "prompt": "The capital of France is", "raw": True, "stream": False,
                "options": {"temperature": 0, "num_predict": 16}}, timeout=600)
            if status != 200:
                raise SystemExit(f"generate failed: {answer}")
            status, ps = http_json("GET", f"{system.url}/api/ps")
            workers = [p for p in descendants(system.proc.pid) if "mlxserve.services.worker" in cmdline(p)]
            memory = proc_memory(workers[0]) if workers else {}
            report = {"gguf": str(args.gguf), "gguf_bytes": args.gguf.stat().st_size,
                      "mlxctl_create_s": creates, "mlxctl_create_s_median": statistics.median(creates),
                      "worker_load_s": worker_load_s(system.home), "worker_memory_bytes": memory,
                      "ps": ps.get("models", []), "eval_count": answer.get("eval_count"),
                      "eval_tok_s": answer["eval_count"] / (answer["eval_duration"] / 1e9) if answer.get("eval_duration") else None,
                      "response": answer.get("response")}
        finally:
            system.stop()
    if args.json:
        print(json.dumps(report, indent=1, ensure_ascii=False))
        return
    print(f"{args.gguf.name} ({report['gguf_bytes'] / 2**20:.0f} MiB)")
    print(f"mlxctl create: median {report['mlxctl_create_s_median']:.2f} s over {args.runs} runs "
          f"(min {min(creates):.2f}, max {max(creates):.2f})")
    print(f"worker load: {report['worker_load_s'][-1] if report['worker_load_s'] else 0:.2f} s; "
          f"RSS {memory.get('VmRSS', 0) / 2**20:.0f} MiB (peak {memory.get('VmHWM', 0) / 2**20:.0f} MiB)")
    print(f"decode: {report['eval_tok_s'] or 0:.1f} tok/s; {report['response']!r}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("gguf", type=Path)
    ap.add_argument("--reference", type=Path, action="append",
                    help="llama.cpp greedy references (repeatable; default: Gemma 3 on Q4_K_M and on its F32)")
    ap.add_argument("--runs", type=int, default=3, help="imports to time (the last one is evaluated)")
    ap.add_argument("--precision", default="as-stored,float32")
    ap.add_argument("--quantize", default="auto", help="the importer's mode: auto or none")
    ap.add_argument("--against", choices=("reference", "exact"), default="reference")
    ap.add_argument("--requant", default="", help="override quants.REQUANT_BITS, e.g. Q6_K=6,IQ4_NL=8")
    ap.add_argument("--serve", action="store_true", help="measure through the running system instead")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()

    if args.serve:
        return serve_report(args)

    import mlx.core as mx
    from mlx_lm.utils import load_model
    from transformers import PreTrainedTokenizerFast

    from mlxserve.services.store.importers.gguf import import_gguf
    from mlxserve.services.worker import precision

    from mlxserve.services.store.importers.gguf import quants

    for item in filter(None, args.requant.split(",")):
        kind, bits = item.split("=")
        quants.REQUANT_BITS[kind] = int(bits)
    refs = [json.loads(p.read_text()) for p in (args.reference or DEFAULT_REFERENCES)]
    ref = refs[0]
    times: list[float] = []
    with tempfile.TemporaryDirectory() as tmp:
        for i in range(args.runs):
            out = Path(tmp) / f"run{i}"
            out.mkdir()
            t0 = time.perf_counter()
            result = import_gguf(args.gguf, out, quantize=args.quantize)
            times.append(time.perf_counter() - t0)
        folder = out
        if args.against == "exact":
            exact = Path(tmp) / "exact"
            exact.mkdir()
            import_gguf(args.gguf, exact, quantize="none", float_dtype="float32")
            exact_model, _ = load_model(exact)
            precision.to_float32(exact_model)
            for case in ref["cases"]:
                case["greedy_ids"] = greedy(exact_model, case["prompt_ids"], len(case["greedy_ids"]), set())
                case["top2_margins"] = [None] * len(case["greedy_ids"])
            refs = [ref]
            del exact_model
        size = sum(p.stat().st_size for p in folder.iterdir())
        tok = PreTrainedTokenizerFast(tokenizer_file=str(folder / "tokenizer.json"),
                                      **{k: v for k, v in json.loads((folder / "tokenizer_config.json").read_text()).items()
                                         if k in ("bos_token", "eos_token", "add_bos_token")})
        gen_cfg = json.loads((folder / "generation_config.json").read_text())
        eos = gen_cfg.get("eos_token_id", [])
        eos = set(eos if isinstance(eos, list) else [eos])
        report: dict = {"gguf": str(args.gguf), "quantization": result.config.model_info.get("mlxserve.quantization"),
                        "against": args.against, "requant_bits": dict(quants.REQUANT_BITS),
                        "import_s": times, "import_s_median": statistics.median(times), "output_bytes": size,
                        "precisions": {}}
        for prec in [p.strip() for p in args.precision.split(",") if p.strip()]:
            rss0 = rss_mib()
            t0 = time.perf_counter()
            model, _ = load_model(folder)
            if prec == "float32":
                precision.to_float32(model)
            mx.eval(model.parameters())
            load_s = time.perf_counter() - t0
            cases = []
            for i, case in enumerate(ref["cases"]):
                ids = tok.encode(case["prompt"])
                ours = greedy(model, case["prompt_ids"], len(case["greedy_ids"]), eos)
                per_ref = []
                for other in refs:
                    theirs = other["cases"][i]
                    agree = leading_agreement(ours, theirs["greedy_ids"])
                    margin = theirs["top2_margins"][agree] if agree < len(theirs["top2_margins"]) else None
                    per_ref.append({"reference": other.get("gguf", "exact"), "agree": agree,
                                    "llamacpp_margin_at_split": margin})
                cases.append({"prompt": case["prompt"], "prompt_ids_equal": ids == case["prompt_ids"],
                              "agree": per_ref[0]["agree"], "of": len(case["greedy_ids"]),
                              "llamacpp_margin_at_split": per_ref[0]["llamacpp_margin_at_split"],
                              "references": per_ref, "text": tok.decode(ours)})
            report["precisions"][prec] = {"load_s": load_s, "rss_mib_after_load": rss_mib(), "rss_mib_before": rss0,
                                          "cases": cases}
            del model
            mx.clear_cache()
    if args.json:
        print(json.dumps(report, indent=1, ensure_ascii=False))
        return
    print(f"{args.gguf.name}: {report['quantization']}; against {args.against}")
    print(f"import: median {report['import_s_median']:.2f} s over {args.runs} runs "
          f"(min {min(times):.2f}, max {max(times):.2f}); output {size / 2**20:.0f} MiB")
    for prec, r in report["precisions"].items():
        print(f"\n[{prec}] load {r['load_s']:.2f} s, RSS {r['rss_mib_after_load']:.0f} MiB")
        for k, first in enumerate(r["cases"][0]["references"]):
            total = sum(c["references"][k]["agree"] for c in r["cases"])
            of = sum(c["of"] for c in r["cases"])
            who = f"llama.cpp on {first['reference']}" if args.against == "reference" else "the exact weights"
            print(f"  leading tokens as {who}: {total}/{of}")
            for c in r["cases"]:
                a = c["references"][k]
                split = "" if a["agree"] == c["of"] else f" (llama.cpp top-2 margin there: {a['llamacpp_margin_at_split']})"
                ids = "" if c["prompt_ids_equal"] else "  PROMPT IDS DIFFER"
                print(f"    {a['agree']:>3}/{c['of']:<3} {c['prompt'][:40]!r}{split}{ids}")


if __name__ == "__main__":
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    main()
