"""Where the engine thread's wall time goes: mlx-lm's step vs our per-token work (py-spy and timers).

    LD_PRELOAD=<libopenblas.so.0> python tests/bench/engine_per_token.py MODEL_FOLDER [--streams 16] [--tokens 64]
        [--logprobs 5] [--stop "The end"] [--rounds 3] [--per-row-logprobs | --compare] [--pyspy OUT] [--json OUT.json]

Runs a ModelRunner in this process as the worker's engine thread does (step, then hand each frame
to a FrameSender that PUSHes it to a PULL socket drained by another thread), with `--streams`
chat requests submitted at once, each generating `--tokens` tokens with Ollama's default sampling.
Each round times the loop with perf counters: the whole `runner.step()`, mlx-lm's batch step inside
it (`BatchedGenerator.next`), and handing the frames to the sender; the rest of `step()` is ours
(detokenizing, stop strings, thinking/tool-call parsing, logprob texts, building frames, admission).
With --pyspy, py-spy samples this process (--idle: wall time, waits included) during the timed
rounds and the engine thread's samples are summarized by where they fall. --compare alternates
rounds with the runner as it was before issue 18 (each request's logprobs computed and read alone)
and as it is (one computation and one read a step). On Linux, preload OpenBLAS as the supervisor
does for its workers (services/supervisor/blas.py): the bundled reference BLAS is ~10x slower.
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

# Where a sample of the engine thread is charged: the innermost of these frames on its stack.
CATEGORIES = [
    ("submit: template + tokenize (gRPC threads in a worker)", ("ModelRunner.submit (",)),
    ("mlx-lm decode step (model + mx.eval)", ("._step (",)),
    ("mlx-lm prefill (prompt processing)", ("Batch.prompt (", "BatchedPrompts.generate (")),
    ("mlx-lm batch bookkeeping", ("BatchGenerator.next (", "BatchGenerator._next (")),
    ("logprob texts (token_logprob)", ("token_logprob",)),
    ("detokenize (add_token/finalize/last_segment)", ("add_token", "finalize", "last_segment")),
    ("stop strings (StopStringFilter)", ("stops.py",)),
    ("output parsing (OutputParser: thinking, tool calls)", ("outputs.py", "thinking.py", "tool_calls.py")),
    ("finish: stats, prefix-cache insert, log", ("_finish", "prefix_cache", "_final", "_log_finished", "_store_removed")),
    ("frame building and other per-token code", ("_on_token", "_split_output")),
    ("admission (_admit, samplers, processors)", ("_admit", "_drain_inbox")),
    ("hand frames to the sender (queue put)", ("FrameSender.send", "send (mlxserve/services/worker/replies.py", "replies.py")),
    ("rest of runner.step", ("ModelRunner.step (",)),
]


def summarize_pyspy(raw: Path, thread_name: str) -> dict:
    """Samples of one thread (by name) in a `py-spy record --format raw --threads` file, by category."""
    counts: collections.Counter[str] = collections.Counter()
    frames_self: collections.Counter[str] = collections.Counter()
    total = 0
    for line in raw.read_text().splitlines():
        stack, _, n = line.rpartition(" ")
        frames = stack.split(";")
        if not frames[0].startswith("thread (") or not frames[0].endswith(f": {thread_name}"):
            continue
        if not any(f.startswith("main.<locals>.one_round (") for f in frames):
            continue  # between rounds: the profiler attaching, requests being built
        count = int(n)
        total += count
        frames = frames[1:] or ["(no Python frame)"]
        frames_self[frames[-1]] += count
        for name, needles in CATEGORIES:  # the first category (innermost wins by list order) found on the stack
            if any(needle in f for f in frames for needle in needles):
                counts[name] += count
                break
        else:
            counts["the loop itself, outside runner.step"] += count
    return {
        "samples": total,
        "by_category_pct": {k: round(100 * v / total, 1) for k, v in counts.most_common()} if total else {},
        "top_leaf_frames_pct": {k: round(100 * v / total, 1) for k, v in frames_self.most_common(15)} if total else {},
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("model", type=Path)
    p.add_argument("--streams", type=int, default=16)
    p.add_argument("--tokens", type=int, default=64)
    p.add_argument("--logprobs", type=int, default=-1, help="top_logprobs per token (-1: no logprobs)")
    p.add_argument("--stop", action="append", default=[])
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--pyspy", type=Path, help="write py-spy's raw samples to PATH.MODE and summarize them")
    p.add_argument("--rate", type=int, default=100)
    p.add_argument("--per-row-logprobs", action="store_true",
                   help="compute each request's logprobs alone, with a read each (the runner before issue 18's batching)")
    p.add_argument("--compare", action="store_true", help="alternate rounds with and without --per-row-logprobs")
    p.add_argument("--json", type=Path)
    args = p.parse_args(argv)

    import zmq

    from mlxserve.services.common import logs
    from mlxserve.services.worker.prompts import ChatMessage, GenerationRequest
    from mlxserve.services.worker.replies import FrameSender
    from mlxserve.services.worker.runner import ModelRunner
    from mlxserve.services.worker.sampling import SamplingOptions

    logs.configure("bench", "warning", None)  # one info line per request would flood the report
    runner = ModelRunner(args.model, num_parallel=args.streams, max_queue=0, prefix_cache_bytes=0, prefix_cache_entries=0)
    address = f"ipc://{tempfile.mkdtemp()}/gateway.ipc"
    pull = zmq.Context.instance().socket(zmq.PULL)
    pull.bind(address)
    received = [0]

    def drain() -> None:
        while True:
            pull.recv()
            received[0] += 1

    threading.Thread(target=drain, daemon=True).start()
    sender = FrameSender()

    timers = {"next": 0.0}
    generator_next = runner._generator.next

    def timed_next():
        t = time.perf_counter()
        try:
            return generator_next()
        finally:
            timers["next"] += time.perf_counter() - t

    runner._generator.next = timed_next
    serial = [0]

    def one_round() -> dict:
        requests = []
        for k in range(args.streams):
            serial[0] += 1
            options = SamplingOptions(seed=serial[0], num_predict=args.tokens, stop=tuple(args.stop))
            requests.append(GenerationRequest(
                request_id=f"r{serial[0]}", is_chat=True, options=options, logprobs=args.logprobs >= 0,
                top_logprobs=max(0, args.logprobs),
                messages=(ChatMessage("user", f"Story number {k}: tell me a story about a train at night."),)))
        for r in requests:
            runner.submit(r)
        timers["next"] = 0.0
        step_s = emit_s = 0.0
        steps = tokens = 0
        t0 = time.perf_counter()
        while runner.has_work():
            t = time.perf_counter()
            events = runner.step()
            t1 = time.perf_counter()
            for event in events:
                tokens += len(event.token_ids)
                sender.send(address, event)
            emit_s += time.perf_counter() - t1
            step_s += t1 - t
            steps += 1
        wall = time.perf_counter() - t0
        return {"wall_s": wall, "steps": steps, "tokens": tokens, "tok_s": tokens / wall,
                "mlx_lm_step_pct": 100 * timers["next"] / wall,
                "our_step_work_pct": 100 * (step_s - timers["next"]) / wall,
                "emit_pct": 100 * emit_s / wall,
                "loop_other_pct": 100 * (wall - step_s - emit_s) / wall,
                "our_ms_per_step": 1000 * (step_s - timers["next"]) / steps,
                "mlx_lm_ms_per_step": 1000 * timers["next"] / steps}

    def spy_on(path: Path) -> subprocess.Popen:
        spy = subprocess.Popen([str(Path(sys.executable).with_name("py-spy")), "record", "--pid", str(os.getpid()), "--idle",
                                "--threads", "--format", "raw", "--rate", str(args.rate), "--nonblocking", "-o", str(path)],
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        time.sleep(1.0)  # py-spy attaches
        return spy

    def use(mode: str) -> None:
        if mode == "per_row":  # what the runner did before: each request's logprobs alone, one read each
            runner._step_logprobs = lambda responses: {}
        else:
            runner.__dict__.pop("_step_logprobs", None)

    modes = ["per_row", "batched"] if args.compare else ["per_row" if args.per_row_logprobs else "batched"]
    for mode in modes:
        use(mode)
        one_round()  # warm: kernels, compiled pieces, tokenizer caches
    rounds: dict[str, list[dict]] = {m: [] for m in modes}
    raw: dict[str, list[Path]] = {m: [] for m in modes}
    for i in range(args.rounds):
        for mode in modes:  # alternated, so that both see the same machine
            use(mode)
            spy = spy_on(raw_path := Path(f"{args.pyspy}.{mode}.{i}")) if args.pyspy else None
            rounds[mode].append(one_round())
            if spy is not None:
                spy.send_signal(signal.SIGINT)
                spy.wait(30)
                raw[mode].append(raw_path)
    sender.close()

    keys = ["tok_s", "mlx_lm_step_pct", "our_step_work_pct", "emit_pct", "loop_other_pct", "our_ms_per_step", "mlx_lm_ms_per_step"]
    out = {"model": str(args.model), "streams": args.streams, "tokens": args.tokens, "logprobs": args.logprobs,
           "stop": args.stop, "load_average": os.getloadavg(), "argv": sys.argv, "modes": {}}
    for mode in modes:
        summary = None
        if args.pyspy:
            merged = Path(f"{args.pyspy}.{mode}")
            merged.write_text("".join(p.read_text() for p in raw[mode]))
            for p in raw[mode]:
                p.unlink()
            summary = summarize_pyspy(merged, threading.main_thread().name)
        rs = rounds[mode]
        out["modes"][mode] = {
            "median": {k: round(statistics.median(r[k] for r in rs), 2) for k in keys},
            "spread": {k: [round(min(r[k] for r in rs), 2), round(max(r[k] for r in rs), 2)] for k in keys},
            "rounds": rs, "pyspy": summary}
        print(mode, json.dumps(out["modes"][mode]["median"]), "spread", json.dumps(out["modes"][mode]["spread"]))
        if summary:
            print(json.dumps(summary["by_category_pct"], indent=1))
    print("load average", os.getloadavg())
    if args.json:
        args.json.write_text(json.dumps(out, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
