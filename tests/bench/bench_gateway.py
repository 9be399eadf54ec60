"""Benchmark (a script, not a test): what the gateway itself costs, next to a direct engine call.

    python tests/bench/bench_gateway.py [--tokens 128] [--runs 20] [--concurrency 1,4,16]
                                        [--requests 200] [--rounds 3] [--json [PATH]]

Starts the real system (`mlxctl serve` via tests/e2e/harness.py) serving a tiny random-weight
llama (tests/fixtures/tiny_model.py), whose decode step takes about a millisecond on a CPU, so
that what the serving path adds per token is not drowned by the model. The in-process side loads
the same folder with `ModelRunner` (the worker's engine) in this process and drives it directly;
the script re-executes itself with the BLAS the supervisor preloads for workers (Linux CPU), so
both sides compute alike.

Measured, side by side in one run:
  1. Per streamed token, over --runs sequential streams of --tokens tokens (raw prompts, greedy):
     - the interval between consecutive chunks with text at an HTTP client (streaming
       /api/generate) and between consecutive frames with text from the in-process engine; p50 and p99 of each, and the
       difference, which is the latency the serving path (worker ZeroMQ frame + gateway + HTTP)
       adds to each token;
     - the gateway process's own CPU time per streamed token (from /proc/<pid>/task/*/schedstat,
       nanosecond counters), p50 and p99 over the runs: the work the gateway does per token.
  2. Tiny requests per second (/api/generate, one new token, stream false) at each --concurrency,
     against the in-process engine completing the same requests; and `GET /api/version` RPS, the
     floor that the HTTP stack alone sets. Both sides run in alternating rounds (--rounds, each of
     --requests requests, the system idle while the in-process engine runs), so that a change in the
     machine's load hits both alike; each level reports the medians of the rounds and the median of
     the per-round ratios. The load average before and after is recorded with the results.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

import aiohttp  # noqa: E402

MODEL = "tiny:bench"
ORIGINAL_PRELOAD = "MLXSERVE_BENCH_ORIGINAL_LD_PRELOAD"


def percentile(xs: list[float], q: float) -> float:
    """The q-th percentile (0..100) by linear interpolation; xs non-empty."""
    s = sorted(xs)
    k = (len(s) - 1) * q / 100
    lo, hi = int(k), min(int(k) + 1, len(s) - 1)
    return s[lo] + (s[hi] - s[lo]) * (k - lo)


def prompt(k: int) -> str:
    return f"Request {k}: once upon a time there was a small village by the sea, and"


def process_cpu_ns(pid: int) -> int:
    """CPU time of every thread of `pid` so far, in ns (schedstat's first field is exact)."""
    total = 0
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            total += int((task / "schedstat").read_text().split()[0])
        except (OSError, ValueError, IndexError):
            pass  # a thread that ended between listing and reading
    return total


# ------------------------------------------------------------------------------------------ gateway


async def gateway_stream(session: aiohttp.ClientSession, url: str, k: int, tokens: int) -> tuple[list[float], int]:
    """Stream one raw generation; returns (chunk arrival times, tokens the server counted)."""
    body = {"model": MODEL, "prompt": prompt(k), "raw": True, "stream": True, "keep_alive": "30m",
            "options": {"temperature": 0, "num_predict": tokens}}
    times: list[float] = []
    count = 0
    async with session.post(url + "/api/generate", json=body) as resp:
        if resp.status != 200:
            raise RuntimeError(f"/api/generate answered {resp.status}: {await resp.text()}")
        async for line in resp.content:
            if not line.strip():
                continue
            now = time.perf_counter()
            chunk = json.loads(line)
            if "error" in chunk:
                raise RuntimeError(chunk["error"])
            if chunk.get("done"):
                count = chunk.get("eval_count", 0)
            elif chunk.get("response"):
                times.append(now)
    return times, count


async def gateway_per_token(url: str, gateway_pid: int | None, runs: int, tokens: int, first_k: int) -> dict[str, Any]:
    intervals: list[float] = []
    cpu_per_token: list[float] = []
    async with aiohttp.ClientSession() as s:
        await gateway_stream(s, url, -1, 4)  # loads the worker
        for r in range(runs):
            before = process_cpu_ns(gateway_pid) if gateway_pid else 0
            times, count = await gateway_stream(s, url, first_k + r, tokens)
            if gateway_pid and count:
                cpu_per_token.append((process_cpu_ns(gateway_pid) - before) / count / 1000)
            intervals += [(b - a) * 1e6 for a, b in zip(times, times[1:])]
    out: dict[str, Any] = {"intervals": len(intervals), "interval_p50_us": percentile(intervals, 50),
                           "interval_p99_us": percentile(intervals, 99)}
    if cpu_per_token:
        out |= {"cpu_per_token_p50_us": percentile(cpu_per_token, 50), "cpu_per_token_p99_us": percentile(cpu_per_token, 99)}
    return out


async def gateway_rps(url: str, concurrency: int, requests: int, first_k: int, path: str = "/api/generate") -> float:
    """Requests per second for `requests` tiny requests, `concurrency` at a time."""
    next_k = iter(range(first_k, first_k + requests))
    conn = aiohttp.TCPConnector(limit=concurrency + 1)

    async def client(s: aiohttp.ClientSession) -> None:
        for k in next_k:
            if path == "/api/version":
                async with s.get(url + path) as resp:
                    await resp.read()
                    assert resp.status == 200, resp.status
                continue
            body = {"model": MODEL, "prompt": prompt(k), "raw": True, "stream": False, "keep_alive": "30m",
                    "options": {"temperature": 0, "num_predict": 1}}
            async with s.post(url + path, json=body) as resp:
                data = await resp.json()
                if resp.status != 200:
                    raise RuntimeError(f"{path} answered {resp.status}: {data}")

    async with aiohttp.ClientSession(connector=conn) as s:
        t0 = time.perf_counter()
        await asyncio.gather(*(client(s) for _ in range(concurrency)))
        return requests / (time.perf_counter() - t0)


# ----------------------------------------------------------------------------------------- in-process


class InProcess:
    """The worker's engine (`ModelRunner`) on the same folder, driven on this thread."""

    def __init__(self, model_dir: Path, num_parallel: int) -> None:
        from mlxserve.services.worker.runner import ModelRunner

        self.runner = ModelRunner(model_dir, num_parallel=num_parallel, max_queue=1024)

    def _request(self, k: int, tokens: int):
        from mlxserve.services.worker.prompts import GenerationRequest
        from mlxserve.services.worker.sampling import SamplingOptions

        return GenerationRequest(request_id=f"bench-{k}", prompt=prompt(k), raw=True,
                                 options=SamplingOptions(temperature=0, num_predict=tokens))

    def _drive(self, on_frame=None) -> None:
        while self.runner.has_work():
            for event in self.runner.step():
                if on_frame is not None:
                    on_frame(event)

    def per_token(self, runs: int, tokens: int, first_k: int) -> dict[str, Any]:
        self.runner.submit(self._request(-1, 4))
        self._drive()
        intervals: list[float] = []
        for r in range(runs):
            times: list[float] = []
            self.runner.submit(self._request(first_k + r, tokens))
            # Frames with text only: the gateway sends a chunk only for those (a token that ends
            # mid-character or inside a held-back stop string has none), so both sides time the same thing.
            self._drive(lambda e: times.append(time.perf_counter()) if e.text and not e.done else None)
            intervals += [(b - a) * 1e6 for a, b in zip(times, times[1:])]
        return {"intervals": len(intervals), "interval_p50_us": percentile(intervals, 50),
                "interval_p99_us": percentile(intervals, 99)}

    def rps(self, concurrency: int, requests: int, first_k: int) -> float:
        """Keep `concurrency` one-token requests outstanding until `requests` finished."""
        ks = iter(range(first_k, first_k + requests))
        done = 0
        t0 = time.perf_counter()
        for _ in range(concurrency):
            self.runner.submit(self._request(next(ks), 1))
        while done < requests:
            for event in self.runner.step():
                if event.done:
                    done += 1
                    k = next(ks, None)
                    if k is not None:
                        self.runner.submit(self._request(k, 1))
        return requests / (time.perf_counter() - t0)


# ------------------------------------------------------------------------------------------ running


def rps_rounds(url: str, local: InProcess, concurrency: int, requests: int, rounds: int, first_k: int) -> dict[str, Any]:
    """Tiny-request RPS through the gateway and in-process, in alternating rounds after a warm-up of each."""
    print(f"tiny requests at concurrency {concurrency}: {rounds} rounds of gateway, then in-process...", file=sys.stderr, flush=True)
    asyncio.run(gateway_rps(url, concurrency, min(requests, 50), first_k))
    local.rps(concurrency, min(requests, 50), first_k + 500_000)
    out: list[dict[str, float]] = []
    for r in range(rounds):
        k = first_k + (r + 1) * requests
        time.sleep(0.3)  # let the other side's BLAS threads stop spinning
        gateway = asyncio.run(gateway_rps(url, concurrency, requests, k))
        time.sleep(0.3)
        in_process = local.rps(concurrency, requests, k + 500_000)
        out.append({"gateway_rps": gateway, "in_process_rps": in_process, "ratio": gateway / in_process})
    return {"concurrency": concurrency,
            "gateway_rps": statistics.median(r["gateway_rps"] for r in out),
            "in_process_rps": statistics.median(r["in_process_rps"] for r in out),
            "ratio": statistics.median(r["ratio"] for r in out),
            "ratio_min": min(r["ratio"] for r in out), "ratio_max": max(r["ratio"] for r in out),
            "version_rps": asyncio.run(gateway_rps(url, concurrency, requests, 0, "/api/version")),
            "rounds": out}


def find_gateway_pid(root_pid: int) -> int | None:
    from tests.e2e.harness import descendants

    for pid in descendants(root_pid):
        try:
            cmd = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ")
        except OSError:
            continue
        if b"gateway" in cmd:
            return pid
    return None


def same_blas_as_workers() -> None:
    """Re-run this script with the BLAS the supervisor preloads for workers, so that the
    in-process engine computes exactly as the workers do (LD_PRELOAD works only at exec)."""
    from mlxserve.services.supervisor.blas import find_optimized_blas, with_preload

    library = find_optimized_blas()
    if library is not None and str(library) not in os.environ.get("LD_PRELOAD", ""):
        env = with_preload(dict(os.environ), library)
        env[ORIGINAL_PRELOAD] = os.environ.get("LD_PRELOAD", "")  # the system under test starts without it
        os.execve(sys.executable, [sys.executable, *sys.argv], env)


def main(argv: list[str] | None = None) -> int:
    same_blas_as_workers()
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--tokens", type=int, default=128, help="tokens per streamed request")
    ap.add_argument("--runs", type=int, default=20, help="sequential streams for the per-token measure")
    ap.add_argument("--concurrency", default="1,4,16", help="comma-separated client counts for the RPS measure")
    ap.add_argument("--requests", type=int, default=200, help="tiny requests per RPS measurement")
    ap.add_argument("--rounds", type=int, default=3, help="alternating gateway / in-process rounds per concurrency level")
    ap.add_argument("--json", nargs="?", const="-", help="write the report as JSON (to PATH, or stdout)")
    args = ap.parse_args(argv)
    levels = [int(x) for x in args.concurrency.split(",") if x.strip()]

    from tests.e2e.harness import start_system
    from tests.fixtures.tiny_model import write_tiny_model

    report: dict[str, Any] = {"config": {**vars(args), "machine": f"{platform.machine()} {os.cpu_count()} cpus",
                                         "python": platform.python_version(), "date": time.strftime("%Y-%m-%d"),
                                         "loadavg_before": os.getloadavg()}}
    with tempfile.TemporaryDirectory(prefix="bench-gateway-") as tmp:
        model_dir = write_tiny_model(Path(tmp) / "tiny")
        print("starting the system...", file=sys.stderr, flush=True)
        system = start_system(Path(tmp) / "home", {MODEL: model_dir}, extra_env={"MLXSERVE_NUM_PARALLEL": str(max(levels)),
                                                                         # the supervisor adds it for workers only
                                                                         "LD_PRELOAD": os.environ.get(ORIGINAL_PRELOAD, "")})
        try:
            gw_pid = find_gateway_pid(system.proc.pid)
            print(f"per-token: {args.runs} x {args.tokens} tokens through the gateway...", file=sys.stderr, flush=True)
            report["per_token_gateway"] = asyncio.run(gateway_per_token(system.url, gw_pid, args.runs, args.tokens, 0))
            from mlxserve.services.common import logs

            logs.configure("bench", "warning", None)  # the engine's per-request info lines would flood the report
            local = InProcess(model_dir, num_parallel=max(levels))
            report["per_token_in_process"] = local.per_token(args.runs, args.tokens, 0)
            report["rps"] = [rps_rounds(system.url, local, c, args.requests, args.rounds, 1_000_000 * (i + 1))
                             for i, c in enumerate(levels)]
        finally:
            system.stop()
    report["config"]["loadavg_after"] = os.getloadavg()

    g, p = report["per_token_gateway"], report["per_token_in_process"]
    report["added_latency_per_token_us"] = {"p50": g["interval_p50_us"] - p["interval_p50_us"],
                                            "p99": g["interval_p99_us"] - p["interval_p99_us"]}
    print_report(report)
    if args.json:
        text = json.dumps(report, indent=2)
        if args.json == "-":
            print(text)
        else:
            Path(args.json).write_text(text)
    return 0


def print_report(r: dict[str, Any]) -> None:
    g, p, added = r["per_token_gateway"], r["per_token_in_process"], r["added_latency_per_token_us"]
    out = sys.stderr
    print(f"\nper streamed token ({r['config']['runs']} x {r['config']['tokens']} tokens, tiny model)", file=out)
    print(f"  {'':34} {'p50 us':>10} {'p99 us':>10}", file=out)
    print(f"  {'interval, in-process engine':34} {p['interval_p50_us']:10.1f} {p['interval_p99_us']:10.1f}", file=out)
    print(f"  {'interval, through the gateway':34} {g['interval_p50_us']:10.1f} {g['interval_p99_us']:10.1f}", file=out)
    print(f"  {'added by the serving path':34} {added['p50']:10.1f} {added['p99']:10.1f}", file=out)
    if "cpu_per_token_p50_us" in g:
        print(f"  {'gateway CPU per token':34} {g['cpu_per_token_p50_us']:10.1f} {g['cpu_per_token_p99_us']:10.1f}", file=out)
    print("\ntiny requests (1 new token, stream false), requests/s", file=out)
    print(f"  {'clients':>7} {'gateway':>9} {'in-process':>11} {'ratio':>6} {'(min-max)':>11} {'GET /api/version':>17}", file=out)
    for row in r["rps"]:
        spread = f"{row['ratio_min']:.2f}-{row['ratio_max']:.2f}"
        print(f"  {row['concurrency']:7d} {row['gateway_rps']:9.1f} {row['in_process_rps']:11.1f} "
              f"{row['ratio']:6.2f} {spread:>11} {row['version_rps']:17.1f}", file=out)
    print(f"  (medians of {len(r['rps'][0]['rounds']) if r['rps'] else 0} alternating rounds; load average "
          f"{r['config']['loadavg_before'][0]:.2f} before, {r['config']['loadavg_after'][0]:.2f} after)", file=out)


if __name__ == "__main__":
    sys.exit(main())
