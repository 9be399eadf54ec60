"""`mlxctl bench`: time a model on the running server — load, time to first token, decode speed,
and aggregate throughput as more streams run at once.

Every request streams /api/generate greedily (temperature 0) with a fixed `num_predict`, and
opens with a system message of its own, so no request shares a prefix with an earlier one and
the server's prefix cache cannot make later runs look faster than a fresh prompt would be.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import math
import os
import platform
import secrets
import statistics
import sys
import time
from dataclasses import asdict, dataclass, field
from typing import Any, Callable, Optional, Sequence

import aiohttp
import typer

from mlxserve import __version__
from mlxserve.services.common.errors import Internal, InvalidArgument, Timeout, Unavailable

from .backend import START_HINT, complete_model_names, exits_on_error, gateway_headers, settings_from
from .gateway_client import GatewayClient, StreamFailed, base_url, stream_chunks
from .render import status_lines, table

DEFAULT_PROMPT = "Tell me a story about {subject}."
SUBJECTS = ("a lighthouse keeper", "a lost robot", "a dragon who bakes bread", "a city under the sea",
            "a clockmaker's apprentice", "a fox and a crow", "the first day of spring", "a train at night",
            "a library that never closes", "a mountain village", "a tiny spaceship", "an old sailor")
HEADERS = ("STREAMS", "REQUESTS", "TTFT p50", "TTFT p95", "DECODE TOK/S (SERVER)", "DECODE TOK/S (CLIENT)",
           "AGGREGATE TOK/S")


# --------------------------------------------------------------------------------------- statistics


@dataclass
class StreamResult:
    """One streamed generation. Times are seconds from the moment the request was sent; counts
    and durations (ns) are the server's own, from the final chunk."""

    ttft_s: float
    last_token_s: float
    total_s: float
    eval_count: int
    eval_duration_ns: int
    prompt_eval_count: int = 0
    prompt_eval_duration_ns: int = 0
    load_duration_ns: int = 0

    @property
    def server_decode_tps(self) -> float | None:
        """Tokens per second as the server timed its decode steps."""
        return self.eval_count / (self.eval_duration_ns / 1e9) if self.eval_count and self.eval_duration_ns > 0 else None

    @property
    def client_decode_tps(self) -> float | None:
        """Tokens per second as they arrived here: the tokens after the first over the time between
        the first and the last (None when fewer than two tokens came, or all in one chunk)."""
        span = self.last_token_s - self.ttft_s
        return (self.eval_count - 1) / span if self.eval_count > 1 and span > 0 else None


def percentile(values: Sequence[float], p: float) -> float:
    """The p-th percentile (0-100), interpolating linearly between the closest ranks."""
    if not values:
        raise ValueError("percentile of no values")
    xs = sorted(values)
    rank = (len(xs) - 1) * p / 100
    lo, hi = math.floor(rank), math.ceil(rank)
    return xs[lo] + (xs[hi] - xs[lo]) * (rank - lo)


def _median(values: Sequence[float | None]) -> float | None:
    known = [v for v in values if v is not None]
    return statistics.median(known) if known else None


@dataclass
class LevelStats:
    """What one row of the report says: `requests` generations with `streams` of them at a time."""

    streams: int
    requests: int
    wall_s: float
    eval_tokens: int
    ttft_p50_s: float
    ttft_p95_s: float
    server_decode_tps: float | None
    client_decode_tps: float | None
    aggregate_tps: float


def summarize(streams: int, wall_s: float, results: Sequence[StreamResult]) -> LevelStats:
    """Medians of per-request TTFT and decode speed, p95 TTFT, and aggregate throughput: every
    token the server generated over the wall time of the whole level."""
    if not results:
        raise ValueError("no results to summarize")
    ttfts = [r.ttft_s for r in results]
    tokens = sum(r.eval_count for r in results)
    return LevelStats(
        streams=streams, requests=len(results), wall_s=wall_s, eval_tokens=tokens,
        ttft_p50_s=statistics.median(ttfts), ttft_p95_s=percentile(ttfts, 95),
        server_decode_tps=_median([r.server_decode_tps for r in results]),
        client_decode_tps=_median([r.client_decode_tps for r in results]),
        aggregate_tps=tokens / wall_s if wall_s > 0 else 0.0,
    )


def parse_concurrency(text: str) -> list[int]:
    """`1,2,4,8` as a list of positive stream counts."""
    try:
        levels = [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise InvalidArgument(f"--concurrency wants comma-separated whole numbers like 1,2,4,8, got {text!r}") from None
    if not levels or any(n < 1 for n in levels):
        raise InvalidArgument(f"--concurrency wants numbers of at least 1, got {text!r}")
    return levels


class Prompts:
    """Hands out requests no earlier one shares a prefix with: each opens with its own system
    message (a per-bench nonce and a counter), and the default prompt varies its subject."""

    def __init__(self, prompt: str | None, nonce: str | None = None) -> None:
        self.prompt = prompt
        self.nonce = nonce or secrets.token_hex(3)
        self.count = 0

    def take(self) -> tuple[str, str]:
        k = self.count
        self.count += 1
        system = f"Benchmark {self.nonce}, request {k}. You are a helpful assistant."
        prompt = self.prompt if self.prompt is not None else DEFAULT_PROMPT.format(subject=SUBJECTS[k % len(SUBJECTS)])
        return system, prompt


# -------------------------------------------------------------------------------------------- client


@dataclass
class BenchConfig:
    model: str
    url: str
    num_predict: int
    runs: int
    concurrency: list[int]
    prompt: str | None
    keep_alive: str | None
    headers: dict[str, str] = field(default_factory=dict, repr=False)
    timeout_s: float = 600.0


def _body(cfg: BenchConfig, system: str, prompt: str, num_predict: int) -> dict[str, Any]:
    body: dict[str, Any] = {"model": cfg.model, "prompt": prompt, "system": system, "stream": True,
                            "options": {"temperature": 0, "num_predict": num_predict}}
    if cfg.keep_alive is not None:
        body["keep_alive"] = cfg.keep_alive
    return body


def warm_up(cfg: BenchConfig, prompts: Prompts) -> tuple[float, dict]:
    """One one-token request, so the model is loaded before anything is timed: (wall seconds,
    final chunk). Sent with the client `mlxctl run` uses, so a missing model or a stopped server
    fails here with the same errors."""
    system, prompt = prompts.take()
    client = GatewayClient(cfg.url, cfg.headers, cfg.timeout_s)
    t0 = time.perf_counter()
    done: dict = {}
    try:
        with client.generate(_body(cfg, system, prompt, 1)) as chunks:
            for chunk in chunks:
                if chunk.get("done"):
                    done = chunk
    except StreamFailed as e:
        raise Internal(f"the warm-up request failed: {e}") from None
    return time.perf_counter() - t0, done


async def stream_one(session: aiohttp.ClientSession, cfg: BenchConfig, system: str, prompt: str,
                     clock: Callable[[], float] = time.perf_counter) -> StreamResult:
    """Stream one generation and time it: first token, last token, end."""
    t0 = clock()
    first = last = None
    done: dict = {}
    try:
        async for chunk in stream_chunks(session, cfg.url, "/api/generate", _body(cfg, system, prompt, cfg.num_predict)):
            now = clock() - t0
            if chunk.get("done"):
                done = chunk
                continue
            # A chunk before the last is a decode step: a token came, whether or not it is visible text yet.
            first = now if first is None else first
            last = now
    except StreamFailed as e:
        raise Internal(f"a benchmark request failed: {e}") from None
    total = clock() - t0
    if first is None:  # everything arrived in the final chunk
        first = last = total
    return StreamResult(ttft_s=first, last_token_s=last or first, total_s=total,
                        eval_count=int(done.get("eval_count") or 0), eval_duration_ns=int(done.get("eval_duration") or 0),
                        prompt_eval_count=int(done.get("prompt_eval_count") or 0),
                        prompt_eval_duration_ns=int(done.get("prompt_eval_duration") or 0),
                        load_duration_ns=int(done.get("load_duration") or 0))


async def run_level(cfg: BenchConfig, prompts: Prompts, streams: int, sequential: int = 1) -> tuple[float, list[StreamResult]]:
    """`streams` requests at once (`sequential` waves of them); (wall seconds, results)."""
    timeout = aiohttp.ClientTimeout(total=cfg.timeout_s)
    connector = aiohttp.TCPConnector(limit=streams + 1)
    results: list[StreamResult] = []
    async with aiohttp.ClientSession(timeout=timeout, connector=connector, headers=cfg.headers) as session:
        t0 = time.perf_counter()
        for _ in range(sequential):
            batch = [prompts.take() for _ in range(streams)]
            results += await asyncio.gather(*(stream_one(session, cfg, s, p) for s, p in batch))
        return time.perf_counter() - t0, results


def server_version(cfg: BenchConfig) -> str:
    return GatewayClient(cfg.url, cfg.headers, cfg.timeout_s).version()


def machine_info() -> dict[str, Any]:
    """Where the benchmark client ran (the server is this machine unless --host says otherwise)."""
    info: dict[str, Any] = {"platform": platform.platform(), "machine": platform.machine(),
                            "python": platform.python_version(), "cpu_count": os.cpu_count(),
                            "mlxctl_version": __version__}
    try:
        info["memory_bytes"] = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        pass
    return info


def run_bench(cfg: BenchConfig, progress: Callable[[str], None] = lambda _: None) -> dict[str, Any]:
    """Warm up, then `runs` single-stream requests one after another, then each concurrency
    level; the whole report as a JSON-able dict."""
    prompts = Prompts(cfg.prompt)
    progress(f"warming up {cfg.model} ...")
    warm_s, warm = warm_up(cfg, prompts)
    progress(f"single stream: {cfg.runs} request(s) of {cfg.num_predict} tokens ...")
    single_wall, single = asyncio.run(run_level(cfg, prompts, 1, sequential=cfg.runs))
    levels = []
    for n in cfg.concurrency:
        progress(f"{n} stream(s) at once ...")
        wall, results = asyncio.run(run_level(cfg, prompts, n))
        levels.append(summarize(n, wall, results))
    return {
        "model": cfg.model,
        "url": cfg.url,
        "time": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "config": {"num_predict": cfg.num_predict, "runs": cfg.runs, "concurrency": cfg.concurrency,
                   "prompt": cfg.prompt, "keep_alive": cfg.keep_alive, "endpoint": "/api/generate",
                   "temperature": 0, "distinct_prompts": True},
        "machine": {**machine_info(), "server_version": server_version(cfg)},
        "load": {"warmup_s": warm_s, "load_duration_s": int(warm.get("load_duration") or 0) / 1e9},
        "single": {**asdict(summarize(1, single_wall, single)), "runs": [asdict(r) for r in single]},
        "concurrency": [asdict(level) for level in levels],
    }


# ------------------------------------------------------------------------------------------ report


def _ms(s: float | None) -> str:
    return "-" if s is None else f"{s * 1000:.0f} ms" if s < 10 else f"{s:.1f} s"


def _tps(v: float | None) -> str:
    return "-" if v is None else f"{v:.1f}"


def report_rows(report: dict[str, Any]) -> list[tuple[str, ...]]:
    """The table's rows: `single` (the --runs requests one after another) first, then each
    concurrency level."""
    rows = []
    for label, level in [("single", report["single"])] + [(str(lv["streams"]), lv) for lv in report["concurrency"]]:
        rows.append((label, str(level["requests"]), _ms(level["ttft_p50_s"]), _ms(level["ttft_p95_s"]),
                     _tps(level["server_decode_tps"]), _tps(level["client_decode_tps"]), _tps(level["aggregate_tps"])))
    return rows


def report_title(report: dict[str, Any]) -> str:
    load = report["load"]
    cfg = report["config"]
    loaded = f"load {load['load_duration_s']:.2f} s" if load["load_duration_s"] > 0 else "already loaded"
    return (f"{report['model']} at {report['url']}: {cfg['num_predict']} tokens per request, greedy; "
            f"warm-up {load['warmup_s']:.2f} s ({loaded})")


def print_report(report: dict[str, Any], out=None) -> None:
    """A rich table on a terminal, plain aligned columns elsewhere (same headers either way)."""
    out = out or sys.stdout
    rows = report_rows(report)
    if out.isatty():
        from rich.console import Console
        from rich.table import Table

        t = Table(title=report_title(report), title_justify="left")
        for i, h in enumerate(HEADERS):
            t.add_column(h, justify="left" if i == 0 else "right", no_wrap=i == 0)
        for row in rows:
            t.add_row(*row)
        Console(file=out).print(t)
        return
    out.write(report_title(report) + "\n" + table(HEADERS, rows) + "\n")


@exits_on_error
def bench(
    ctx: typer.Context,
    model: str = typer.Argument(..., help="the model to benchmark", autocompletion=complete_model_names),
    prompt: Optional[str] = typer.Option(None, "--prompt", help="the user prompt of every request (default: short "
                                                                "story requests on varying subjects)"),
    num_predict: int = typer.Option(64, "--num-predict", min=1, help="tokens generated per request"),
    runs: int = typer.Option(3, "--runs", min=1, help="single-stream requests (medians are reported)"),
    concurrency: str = typer.Option("1,2,4,8", "--concurrency", help="stream counts to run at once, comma-separated; "
                                                                   "each level sends one wave of that many requests"),
    as_json: bool = typer.Option(False, "--json", help="print one JSON document instead of a table"),
    host: Optional[str] = typer.Option(None, "--host", envvar="MLXSERVE_HOST", help="server URL or host[:port]"),
    keepalive: Optional[str] = typer.Option(None, "--keepalive", help="how long the model stays loaded after the bench (e.g. 5m)"),
) -> None:
    """Benchmark a model on the running server: load time, time to first token (TTFT), decode
    tokens/s (as the server timed it and as the tokens arrived here), then aggregate tokens/s and
    TTFT p50/p95 with N streams at once for each --concurrency level.

    Requests are greedy with a fixed --num-predict. Each opens with its own system message (in
    place of the model's), so no request shares a prefix with an earlier one and the server's
    prefix cache cannot make later runs look faster. A model that stops early (end of text) generates fewer tokens;
    the rates use the tokens it actually generated.
    """
    settings = settings_from(ctx)
    cfg = BenchConfig(model=model, url=base_url(host, settings.base_url), num_predict=num_predict, runs=runs,
                      concurrency=parse_concurrency(concurrency), prompt=prompt, keep_alive=keepalive,
                      headers=gateway_headers(settings), timeout_s=settings.request_timeout)
    progress = status_lines(sys.stderr)
    try:
        report = run_bench(cfg, progress)
    except aiohttp.ClientConnectionError as e:
        raise Unavailable(f"lost the server at {cfg.url} during the benchmark ({e}); {START_HINT}") from None
    except asyncio.TimeoutError:
        raise Timeout(f"a benchmark request to {cfg.url} took longer than {cfg.timeout_s:g}s") from None
    if as_json:
        typer.echo(json.dumps(report, indent=2))
    else:
        print_report(report)
