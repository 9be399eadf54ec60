"""Where mlx-lm's BatchGenerator loses to `stream_generate` at batch 1 (run on the device).

    python3 tests/bench/gpu/engine_gap.py MODEL_FOLDER [MODEL_FOLDER...] [--tokens 256] [--json PATH]

mlxserve's worker decodes every request through mlx-lm's BatchGenerator (continuous batching);
the single-stream target compares it with `stream_generate` (mlx-lm's pipelined generate_step).
Greedy decode tok/s of one stream, on the same prompt, four ways:
  stream_generate       KVCache (int offset, no mask), next step queued before reading this one
  loop_kvcache          the same pipelined loop written here, over KVCache (checks the harness)
  loop_batchkvcache     the same loop over BatchKVCache(left_padding=[0]): array offsets for RoPE,
                        an explicit causal mask per step, batched cache writes (what BatchGenerator
                        feeds the model)
  loop_batchkvcache_nomask  the same with the mask dropped (every position visible at batch 1)
  batch_generator       BatchGenerator with one sequence (the worker's engine before issue 18)
  batched_generator     mlxserve's BatchedGenerator (services/worker/batch_step.py): batched
                        sampling, no mask when no row is padded (the worker's engine now)
The gap between the first two and loop_batchkvcache is the batch cache's cost; the rest of the
gap to batch_generator is BatchGenerator's own per-step work.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import mlx.core as mx


def prompt_tokens(tokenizer) -> list[int]:
    messages = [{"role": "system", "content": "You are storyteller number 7."},
                {"role": "user", "content": "Story number 7: tell me a story about a train at night."}]
    text = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    return list(tokenizer.encode(text, add_special_tokens=False))


def tps(times: list[float]) -> float:
    """Decode tok/s from per-token arrival times (first token excluded: it carries the prefill)."""
    return (len(times) - 1) / (times[-1] - times[0])


def run_stream_generate(model, tokenizer, prompt: list[int], n: int) -> float:
    from mlx_lm import stream_generate

    times = []
    for _ in stream_generate(model, tokenizer, prompt, max_tokens=n):
        times.append(time.perf_counter())
    return tps(times)


def run_loop(model, prompt: list[int], n: int, cache, *, unmasked: bool = False) -> float:
    """generate_step's pipelining, greedy: queue step k+1 before reading token k."""
    from mlx_lm.generate import generation_stream

    with mx.stream(generation_stream):
        logits = model(mx.array(prompt)[None], cache=cache)[:, -1, :]
        y = mx.argmax(logits, axis=-1)
        mx.async_eval(y)
        if unmasked:
            for c in cache:
                c.make_mask = lambda *a, **k: None
        times = []
        for _ in range(n):
            nxt = mx.argmax(model(y[:, None], cache=cache)[:, -1, :], axis=-1)
            mx.async_eval(nxt)
            y.item()
            times.append(time.perf_counter())
            y = nxt
    return tps(times)


def run_batch_generator(model, tokenizer, prompt: list[int], n: int, ours: bool = False) -> float:
    from mlx_lm.generate import BatchGenerator

    if ours:
        from mlxserve.services.worker.batch_step import BatchedGenerator as BatchGenerator
    gen = BatchGenerator(model, max_tokens=n, stop_tokens=[], completion_batch_size=1, prefill_batch_size=1)
    times = []
    try:
        gen.insert([prompt], max_tokens=[n])
        done = False
        while not done:
            _, responses = gen.next()
            for r in responses:
                times.append(time.perf_counter())
                done = done or r.finish_reason is not None
    finally:
        gen.close()
    return tps(times)


def measure(path: Path, n: int, repeats: int) -> dict:
    import mlx_lm
    from mlx_lm.models.cache import BatchKVCache, make_prompt_cache

    model, tokenizer = mlx_lm.load(str(path))
    prompt = prompt_tokens(tokenizer)
    ways = {
        "stream_generate": lambda: run_stream_generate(model, tokenizer, prompt, n),
        "loop_kvcache": lambda: run_loop(model, prompt, n, make_prompt_cache(model)),
        "loop_batchkvcache": lambda: run_loop(model, prompt, n, [BatchKVCache([0]) for _ in model.layers]),
        "loop_batchkvcache_nomask": lambda: run_loop(model, prompt, n, [BatchKVCache([0]) for _ in model.layers],
                                                     unmasked=True),
        "batch_generator": lambda: run_batch_generator(model, tokenizer, prompt, n),
        "batched_generator": lambda: run_batch_generator(model, tokenizer, prompt, n, ours=True),
    }
    for way in ways.values():  # compile kernels, capture graphs
        way()
    out = {"model": str(path), "prompt_tokens": len(prompt), "tokens": n}
    for name, way in ways.items():
        runs = sorted(way() for _ in range(repeats))
        out[name] = runs[len(runs) // 2]
        out[name + "_runs"] = runs
        print(f"{path.name:24s} {name:26s} {out[name]:8.1f} tok/s  (runs {', '.join(f'{r:.1f}' for r in runs)})", flush=True)
    del model
    mx.clear_cache()
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("models", type=Path, nargs="+")
    p.add_argument("--tokens", type=int, default=256)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--json", type=Path)
    args = p.parse_args(argv)
    results = [measure(m, args.tokens, args.repeats) for m in args.models]
    doc = {"device": str(mx.default_device()), "mlx": mx.__version__, "results": results}
    if args.json:
        args.json.write_text(json.dumps(doc, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
