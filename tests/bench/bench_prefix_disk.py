"""Benchmark (a script, not a test): time to first token of an agent turn with a long prefix, from
an empty cache, from the worker's memory, and from the disk cache after the worker (or the whole
system) restarted.

    python tests/bench/bench_prefix_disk.py [--prefix-tokens 4096] [--runs 3] [--json PATH]

Runs the real system (`mlxctl serve` via tests/e2e/harness.py, so the worker gets the optimized
BLAS the supervisor preloads) with the demo model SmolLM2-135M (context 8k). The turn is what an
agent sends: a long system prompt with tool definitions (about --prefix-tokens tokens), then a
short user message; streamed through /v1/chat/completions, greedy, 8 tokens. TTFT is measured by
the client: request sent -> first content chunk. The model is loaded before each timed turn
(Ollama's load request), so TTFT is the turn itself, not the model's load. Each run:

  cold      unload, delete $MLXSERVE_HOME/cache/prefix, load, send the turn
  memory    the same turn again, same worker (after its prefix reached the disk)
  disk      `mlxctl stop` the model, load it again (a fresh worker process), the same turn
then, --runs times, `restart`: the whole system is stopped and started again, the model loaded,
the same turn sent.

It also measures what writing the disk cache costs the decode step: a second request (B) decodes
greedily while a fresh long prompt (A) finishes; B's gaps between tokens in the window where the
worker writes A's KV cache (from its `prefix_disk_written` log line) are compared with the gaps
before A finished and after the write.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from datetime import datetime, timezone
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from tests.e2e.harness import System, http_json, start_system  # noqa: E402
from tests.fixtures.smollm2 import find_smollm2_gguf  # noqa: E402

MODEL = "smollm2:135m"
INSTRUCTIONS = (
    "You are a coding agent working in a user's repository. Read files before you change them, keep "
    "changes small, explain what you did in one or two sentences, and never invent file contents. "
    "Prefer the provided tools over guessing; when a tool fails, read its error and try another way. "
)


def tool(i: int) -> dict:
    return {"type": "function", "function": {
        "name": f"tool_{i}_{['read', 'write', 'grep', 'run', 'list', 'patch'][i % 6]}",
        "description": f"Tool number {i}: operates on the workspace. " + INSTRUCTIONS[: 120 + (i * 37) % 200],
        "parameters": {"type": "object", "properties": {
            "path": {"type": "string", "description": "a path relative to the repository root"},
            "pattern": {"type": "string", "description": f"what to look for (tool {i})"},
            "limit": {"type": "integer", "minimum": 1, "maximum": 1000 + i},
        }, "required": ["path"]}}}


def agent_system_prompt(count_tokens, target: int) -> str:
    """A system prompt of instructions and tool definitions, grown to about `target` tokens."""
    text, i = INSTRUCTIONS * 3 + "\n\n# Tools\n", 0
    while count_tokens(text) < target - 40:  # the template and the user message add the rest
        text += json.dumps(tool(i)) + "\n"
        i += 1
    return text


def stream_turn(system: System, messages: list[dict], max_tokens: int = 8, extra: dict | None = None,
                on_token=None) -> dict:
    """One streamed chat turn: TTFT, token arrival times, usage."""
    body = {"model": MODEL, "messages": messages, "max_tokens": max_tokens, "temperature": 0, "stream": True,
            "stream_options": {"include_usage": True}, **(extra or {})}
    req = urllib.request.Request(system.url + "/v1/chat/completions", data=json.dumps(body).encode(),
                                 headers={"Content-Type": "application/json"}, method="POST")
    started = time.perf_counter()
    first, times, text, usage = None, [], "", {}
    with urllib.request.urlopen(req, timeout=900) as resp:
        for raw in resp:
            line = raw.decode().strip()
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            chunk = json.loads(line[6:])
            if chunk.get("error"):  # the stream's own error event: a failed turn is not a measurement
                raise RuntimeError(f"the turn failed after {time.perf_counter() - started:.1f} s: {chunk['error']}")
            usage = chunk.get("usage") or usage
            for choice in chunk.get("choices") or []:
                piece = (choice.get("delta") or {}).get("content") or ""
                if piece:
                    now = time.perf_counter()
                    first = first if first is not None else now
                    times.append(now)
                    text += piece
                    if on_token:
                        on_token(now)
    return {"ttft_s": (first or time.perf_counter()) - started, "text": text, "token_times": times,
            "prompt_tokens": usage.get("prompt_tokens", 0),
            "cached_tokens": (usage.get("prompt_tokens_details") or {}).get("cached_tokens", 0)}


def load(system: System) -> float:
    status, out = http_json("POST", system.url + "/api/generate", {"model": MODEL}, timeout=600)
    if status != 200:
        raise RuntimeError(f"load failed ({status}): {out}")
    return out.get("load_duration", 0) / 1e9


def unload(system: System) -> None:
    r = system.mlxctl("stop", MODEL)
    if r.returncode != 0 and "not loaded" not in (r.stderr + r.stdout):
        raise RuntimeError(f"mlxctl stop failed: {r.stderr or r.stdout}")
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:  # until the worker is gone (it finishes its disk writes first)
        _, ps = http_json("GET", system.url + "/api/ps")
        if not ps.get("models"):
            return
        time.sleep(0.2)
    raise RuntimeError("the model did not unload")


def disk_files(home: Path) -> list[Path]:
    return sorted((home / "cache" / "prefix").glob("*/*.safetensors"))


def wait_for_disk_entry(home: Path, count: int, timeout: float = 120.0) -> None:
    deadline = time.monotonic() + timeout
    while len(disk_files(home)) < count:
        if time.monotonic() > deadline:
            raise RuntimeError("the prefix never reached the disk cache")
        time.sleep(0.1)


def worker_events(home: Path, event: str) -> list[dict]:
    out = []
    for path in (home / "logs").glob("worker-*.log"):
        if path.name.endswith(".stderr.log"):
            continue
        for line in path.read_text(errors="replace").splitlines():
            try:
                record = json.loads(line)
            except ValueError:
                continue
            if record.get("event") == event:
                out.append(record)
    return out


def summary(values: list[float]) -> dict:
    return {"median": statistics.median(values), "min": min(values), "max": max(values), "runs": values}


def step_cost(system: System, home: Path, messages: list[dict], rounds: int, window_s: float = 0.5) -> dict:
    """What writing a KV cache costs the decode step of another request.

    B decodes without end. Each round, A sends the long prefix with a new question: a memory hit
    whose new 4k-token sequence is then written to disk; then A sends the same turn again: the
    same work, but the disk already has it, so nothing is written (the control). B's gaps between
    tokens that start within `window_s` after A ends are compared between the two.
    """
    b_times: list[float] = []

    def decode_b() -> None:
        try:
            stream_turn(system, [{"role": "user", "content": "Tell me a long story about the sea."}], max_tokens=100_000,
                        extra={"logit_bias": {"2": -100}},  # no <|im_end|>: B decodes until it is stopped
                        on_token=lambda _: b_times.append(time.perf_counter()))
        except (OSError, RuntimeError):
            pass  # ended by the unload below (a closed connection, or the stream's "shutting down" error)

    writes_before = len(worker_events(home, "prefix_disk_written"))
    b = threading.Thread(target=decode_b, daemon=True)
    b.start()
    time.sleep(3.0)
    ends: dict[str, list[float]] = {"written": [], "not written": []}
    for i in range(rounds):
        turn = [messages[0], {"role": "user", "content": f"Question {i}: which tool lists files?"}]
        for kind in ("written", "not written"):
            stream_turn(system, turn, max_tokens=1)
            ends[kind].append(time.perf_counter())
            time.sleep(2.0)
    unload(system)  # ends B
    b.join(timeout=30)
    writes = worker_events(home, "prefix_disk_written")[writes_before:]
    gaps = [(t0, (t1 - t0) * 1e3) for t0, t1 in itertools.pairwise(b_times)]

    def after(points: list[float]) -> list[float]:
        return [g for t0, g in gaps if any(end <= t0 < end + window_s for end in points)]

    alone = [g for t0, g in gaps if all(not (end - 1.0 <= t0 < end + 1.5) for e in ends.values() for end in e)]
    out = {"writes": len(writes), "bytes": writes[-1]["bytes"] if writes else 0,
           "write_ms": [w["write_ms"] for w in writes], "handoff_ms": [w["handoff_ms"] for w in writes],
           "b_gap_ms_alone": summary(alone) if alone else None}
    for kind, points in ends.items():
        values = after(points)
        out[f"b_gap_ms_after_a_{kind.replace(' ', '_')}"] = summary(values) if values else None
    return out


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--prefix-tokens", type=int, default=4096)
    p.add_argument("--runs", type=int, default=3, help="measurements per row (median, min-max)")
    p.add_argument("--no-step-cost", action="store_true", help="skip the decode-step measurement")
    p.add_argument("--json", default=None, help="write the results as JSON to PATH")
    args = p.parse_args()
    gguf = find_smollm2_gguf()
    rows: dict[str, list[float]] = {"cold": [], "memory": [], "disk": [], "restart": []}
    tokens: dict[str, list[tuple[int, int]]] = {k: [] for k in rows}
    with tempfile.TemporaryDirectory(prefix="bench-prefix-disk-") as tmp:
        home = Path(tmp) / "home"
        system = start_system(home, {MODEL: gguf})
        try:
            load(system)
            from tokenizers import Tokenizer  # the model's own tokenizer, to size the prompt

            (view,) = (home / "models" / "views").iterdir()
            tokenizer = Tokenizer.from_file(str(view / "tokenizer.json"))
            prompt = agent_system_prompt(lambda t: len(tokenizer.encode(t).ids), args.prefix_tokens)
            messages = [{"role": "system", "content": prompt},
                        {"role": "user", "content": "Find where the config file is read and tell me its path."}]

            def turn(kind: str) -> dict:
                out = stream_turn(system, messages)
                rows[kind].append(out["ttft_s"])
                tokens[kind].append((out["prompt_tokens"], out["cached_tokens"]))
                print(f"{kind:<8} ttft {out['ttft_s']:7.3f}s  prompt {out['prompt_tokens']}  cached {out['cached_tokens']}  "
                      f"{out['text']!r}", file=sys.stderr, flush=True)
                return out

            texts, loads = set(), []
            for _ in range(args.runs):
                unload(system)
                shutil.rmtree(home / "cache" / "prefix", ignore_errors=True)
                loads.append(load(system))
                texts.add(turn("cold")["text"])
                wait_for_disk_entry(home, 1)
                texts.add(turn("memory")["text"])
                unload(system)
                loads.append(load(system))
                texts.add(turn("disk")["text"])
            step = None if args.no_step_cost else step_cost(system, home, messages, args.runs)
            if step:
                print(f"decode step while writing: {json.dumps(step)}", file=sys.stderr, flush=True)
            for _ in range(args.runs):
                system.stop()  # the worker finishes its disk writes before it exits
                system = start_system(home, {MODEL: gguf})
                loads.append(load(system))
                texts.add(turn("restart")["text"])
            written = worker_events(home, "prefix_disk_written")
            hits = worker_events(home, "prefix_disk_hit")
        finally:
            system.stop()

    stats = {k: summary(v) for k, v in rows.items() if v}
    cold = stats["cold"]["median"]
    print(f"\nTTFT of an agent turn, SmolLM2-135M on the CPU through mlxserve, prompt {tokens['cold'][0][0]} tokens "
          f"(system prompt + tools + user message), median of {args.runs} (min-max)")
    header = f"{'case':<44} {'TTFT s':>8} {'min-max':>15} {'x cold':>7} {'cached':>7}"
    print(header)
    print("-" * len(header))
    labels = {"cold": "cold (empty caches)", "memory": "memory hit (same worker, 2nd request)",
              "disk": "disk hit (mlxctl stop, fresh worker)", "restart": "disk hit (whole system restarted)"}
    for k, s in stats.items():
        print(f"{labels[k]:<44} {s['median']:>8.3f} {s['min']:>7.3f}-{s['max']:<7.3f} {s['median'] / cold:>7.3f} "
              f"{tokens[k][0][1]:>7}")
    if written:
        w = [r["write_ms"] for r in written]
        print(f"\ndisk writes: {len(written)}, {written[0]['bytes'] / 1e6:.0f} MB each, write (writer thread, incl. fsync) "
              f"median {statistics.median(w):.0f} ms; loads: median "
              f"{statistics.median(r['load_ms'] for r in hits):.0f} ms" if hits else "")
    print(f"outputs identical across all turns: {len(texts) == 1}; a worker's load (before each timed turn, "
          f"not in TTFT): median {statistics.median(loads):.1f} s")
    if args.json:
        result = {
            "config": {
                "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
                "command": "python " + " ".join([sys.argv[0], *sys.argv[1:]]),
                "machine": {"platform": platform.platform(), "cpu_count": os.cpu_count()},
                "git": subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, check=False).stdout.strip(),
                "model": MODEL, "prompt_tokens": tokens["cold"][0][0], "runs": args.runs,
                "turn": "stream /v1/chat/completions, temperature 0, max_tokens 8; TTFT = first content chunk",
            },
            "ttft_s": stats,
            "ratio_to_cold": {k: s["median"] / cold for k, s in stats.items()},
            "cached_tokens": {k: [c for _, c in v] for k, v in tokens.items() if v},
            "outputs_identical": len(texts) == 1,
            "disk_write_ms": [r["write_ms"] for r in written],
            "disk_write_bytes": written[0]["bytes"] if written else 0,
            "disk_load_ms": [r["load_ms"] for r in hits],
            "worker_load_s": loads,
            "decode_step_while_writing": step,
        }
        Path(args.json).write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
