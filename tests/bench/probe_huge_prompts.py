"""Probe (a script, not a test): three concurrent /api/chat requests whose prompt is 31 MB of text
("hello " * 5.4M, under the gateway's 32 MiB body limit, num_predict 1) against the real system
serving SmolLM2 (context 8,192 tokens), as issue 21 item 1 reproduced it.

    python tests/bench/probe_huge_prompts.py [--runs 3] [--json [PATH]]

Per run: what each client got and after how long, the worker's and the gateway's peak resident
memory while it lasted (sampled every 50 ms from /proc), how long the worker kept burning CPU after
the last answer, and how long a small request then takes. Medians and min-max over the runs' nine
answers; the git commit and the load average are recorded. Writes
tests/bench/results/huge-prompts-cpu.json by default (Linux: reads /proc).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from tests.e2e.harness import descendants, http_json, start_system  # noqa: E402
from tests.fixtures.smollm2 import find_smollm2_gguf  # noqa: E402

RESULTS = ROOT / "tests" / "bench" / "results" / "huge-prompts-cpu.json"
MODEL = "smollm2:135m"
SMALL = {"model": MODEL, "messages": [{"role": "user", "content": "hi"}], "stream": False, "options": {"num_predict": 1}}


def cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
    except OSError:
        return ""


def rss(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    return 0


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def one_run(url: str, worker: int, gateway: int, body: bytes) -> dict:
    peaks = {"worker": rss(worker), "gateway": rss(gateway)}
    before = dict(peaks)
    stop = threading.Event()

    def sample() -> None:
        while not stop.is_set():
            try:
                peaks["worker"] = max(peaks["worker"], rss(worker))
                peaks["gateway"] = max(peaks["gateway"], rss(gateway))
            except OSError:
                pass
            time.sleep(0.05)

    threading.Thread(target=sample, daemon=True).start()
    answers: list[dict] = [{} for _ in range(3)]

    def send(i: int) -> None:
        started = time.monotonic()
        req = urllib.request.Request(url + "/api/chat", data=body, method="POST", headers={"Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(req, timeout=180) as r:
                status, text = r.status, r.read()
        except urllib.error.HTTPError as e:
            status, text = e.code, e.read()
        answers[i] = {"status": status, "seconds": round(time.monotonic() - started, 2),
                      "body": text[:300].decode(errors="replace")}

    threads = [threading.Thread(target=send, args=(i,)) for i in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    answered = time.monotonic()
    # How long the worker keeps computing after the last answer (more than 0.25 s of CPU a 0.5 s).
    last_busy, used = answered, cpu_seconds(worker)
    while time.monotonic() - answered < 60:
        time.sleep(0.5)
        now_used = cpu_seconds(worker)
        if now_used - used > 0.25:
            last_busy = time.monotonic()
        used = now_used
        if time.monotonic() - last_busy > 3:
            break
    stop.set()
    started = time.monotonic()
    status, _ = http_json("POST", url + "/api/chat", SMALL, timeout=180)
    mib = 1 << 20
    return {
        "answers": answers,
        "worker_rss_mib": {"before": round(before["worker"] / mib), "peak": round(peaks["worker"] / mib),
                           "after": round(rss(worker) / mib)},
        "gateway_rss_mib": {"before": round(before["gateway"] / mib), "peak": round(peaks["gateway"] / mib)},
        "worker_busy_after_answers_s": round(last_busy - answered, 1),
        "small_request_after": {"status": status, "seconds": round(time.monotonic() - started, 2)},
    }


def spread(values: list[float]) -> dict:
    return {"median": round(statistics.median(values), 2), "min": round(min(values), 2), "max": round(max(values), 2)}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--runs", type=int, default=3)
    p.add_argument("--json", nargs="?", const=str(RESULTS), default=str(RESULTS))
    args = p.parse_args()
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True).stdout.strip()
    body = json.dumps({"model": MODEL, "messages": [{"role": "user", "content": "hello " * 5_400_000}],
                       "stream": False, "options": {"num_predict": 1}}).encode()
    home = Path(tempfile.mkdtemp(prefix="hp-", dir="/tmp"))
    system = start_system(home, {MODEL: find_smollm2_gguf()})
    runs = []
    try:
        status, _ = http_json("POST", system.url + "/api/chat", SMALL, timeout=180)  # the worker is loaded
        assert status == 200
        pids = descendants(system.proc.pid)
        worker = next(p for p in pids if "mlxserve.services.worker" in cmdline(p))
        gateway = next(p for p in pids if "gateway" in cmdline(p))
        for run in range(args.runs):
            runs.append(one_run(system.url, worker, gateway, body))
            print(f"run {run + 1}:", json.dumps(runs[-1])[:400], flush=True)
    finally:
        left = system.stop()
    answers = [a for r in runs for a in r["answers"]]
    out = {
        "what": "3 concurrent /api/chat, 31 MB prompt ('hello ' * 5.4M), num_predict 1, SmolLM2 (context 8192)",
        "commit": commit, "body_bytes": len(body), "runs": args.runs, "load_average": os.getloadavg(),
        "statuses": sorted({a["status"] for a in answers}),
        "seconds_to_answer": spread([a["seconds"] for a in answers]),
        "worker_peak_rss_mib": spread([r["worker_rss_mib"]["peak"] for r in runs]),
        "gateway_peak_rss_mib": spread([r["gateway_rss_mib"]["peak"] for r in runs]),
        "worker_busy_after_answers_s": spread([r["worker_busy_after_answers_s"] for r in runs]),
        "processes_left": sorted(left), "detail": runs,
    }
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps(out, indent=1) + "\n")
    print(json.dumps({k: v for k, v in out.items() if k != "detail"}, indent=1))
    print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
