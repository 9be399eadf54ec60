"""Profile mlxserve's worker and gateway with py-spy while they stream (run on the device).

    python3 tests/bench/gpu/profile_worker.py MODEL_FOLDER --out DIR [--streams 1] [--seconds 20]

Starts `mlxctl serve` with the folder imported as "prof", warms it, then records the worker and
the gateway with `py-spy record --format raw` (collapsed stacks) for --seconds while --streams
greedy streams of /v1/chat/completions run back to back. Writes DIR/pyspy-{worker,gateway}-N.txt
and prints, for each process, the functions with the most samples (inclusive and own), which is
where a serving overhead per token shows.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[3]))

import aiohttp  # noqa: E402

from tests.e2e.harness import descendants, start_system  # noqa: E402


def find_pid(root: int, needle: str) -> int | None:
    for pid in sorted(descendants(root)):
        try:
            cmd = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
        except OSError:
            continue
        if needle in cmd:
            return pid
    return None


def summarize(raw: Path, top: int = 25) -> str:
    """Own and inclusive sample counts per function from py-spy's collapsed stacks."""
    own: collections.Counter[str] = collections.Counter()
    incl: collections.Counter[str] = collections.Counter()
    total = 0
    for line in raw.read_text(errors="replace").splitlines():
        stack, _, n = line.rpartition(" ")
        if not stack or not n.isdigit():
            continue
        count = int(n)
        total += count
        frames = stack.split(";")
        own[frames[-1]] += count
        for f in set(frames):
            incl[f] += count
    lines = [f"{raw.name}: {total} samples", "  own%   function"]
    lines += [f"  {100 * c / max(total, 1):5.1f}  {f}" for f, c in own.most_common(top)]
    lines += ["  incl%  function"]
    lines += [f"  {100 * c / max(total, 1):5.1f}  {f}" for f, c in incl.most_common(top)]
    return "\n".join(lines)


async def stream(url: str, k: int, max_tokens: int) -> int:
    body = {"model": "prof", "stream": True, "temperature": 0, "max_tokens": max_tokens,
            "messages": [{"role": "system", "content": f"You are storyteller {k}."},
                         {"role": "user", "content": f"Tell story {k}."}]}
    n = 0
    async with aiohttp.ClientSession() as s, s.post(url + "/v1/chat/completions", json=body) as r:
        async for line in r.content:
            if line.startswith(b"data:") and b"[DONE]" not in line:
                n += 1
    return n


async def load(url: str, streams: int, seconds: float, max_tokens: int) -> int:
    deadline = time.monotonic() + seconds
    k = 0
    chunks = 0
    while time.monotonic() < deadline:
        got = await asyncio.gather(*(stream(url, k + i, max_tokens) for i in range(streams)))
        chunks += sum(got)
        k += streams
    return chunks


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("model", type=Path)
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--streams", default="1,16", help="comma-separated stream counts to profile in turn")
    p.add_argument("--seconds", type=float, default=15.0)
    p.add_argument("--max-tokens", type=int, default=256)
    args = p.parse_args(argv)
    pyspy = shutil.which("py-spy") or str(Path(sys.executable).with_name("py-spy"))
    home = Path(tempfile.mkdtemp(prefix="mlxserve-prof-"))
    levels = [int(x) for x in args.streams.split(",")]
    system = start_system(home, {"prof": args.model}, ready_timeout=600,
                          extra_env={"MLXSERVE_NUM_PARALLEL": str(max(levels)), "MLXSERVE_MAX_QUEUE": "256"})
    try:
        asyncio.run(stream(system.url, -1, 4))  # loads the worker
        pids = {"worker": find_pid(system.proc.pid, "mlxserve.services.worker"),
                "gateway": find_pid(system.proc.pid, "mlxserve.gateway")}
        print("pids", pids, flush=True)
        for n in levels:
            recs = []
            for name, pid in pids.items():
                if pid is None:
                    continue
                raw = args.out / f"pyspy-{name}-{n}.txt"
                recs.append((raw, subprocess.Popen(
                    [pyspy, "record", "-p", str(pid), "-d", str(int(args.seconds)), "-r", "200", "--format", "raw",
                     "-o", str(raw), "--nonblocking"], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)))
            time.sleep(1.0)
            chunks = asyncio.run(load(system.url, n, args.seconds - 2, args.max_tokens))
            print(f"streams {n}: {chunks} chunks in ~{args.seconds - 2:.0f}s", flush=True)
            for raw, proc in recs:
                _, err = proc.communicate(timeout=args.seconds + 30)
                if raw.is_file():
                    print(summarize(raw), flush=True)
                else:
                    print(f"py-spy wrote no {raw.name}: {err.decode(errors='replace')[-500:]}", flush=True)
    finally:
        system.stop()
        shutil.rmtree(home, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
