"""What one request can cost (issue 21, item 1), against the real system and SmolLM2 (context 8,192 tokens).

Three concurrent /api/chat requests with a 31 MB prompt once took the worker from 1.7 GB to 12.7 GB
and 25 s each, and ended in a raw gRPC "Deadline Exceeded": now each is a 400 at once, the worker's
memory barely moves, and the model serves the next request right after.
"""

from __future__ import annotations

import json
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

from tests.e2e.harness import System, descendants, http_json

SMOL = "smollm2:135m"


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
    except OSError:
        return ""


def _rss(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    return 0


def _post(url: str, body: bytes) -> tuple[int, dict, float]:
    started = time.monotonic()
    req = urllib.request.Request(url, data=body, method="POST", headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=120) as resp:
            status, raw = resp.status, resp.read()
    except urllib.error.HTTPError as e:
        status, raw = e.code, e.read()
    return status, json.loads(raw), time.monotonic() - started


def _chat(content: str) -> dict:
    return {"model": SMOL, "messages": [{"role": "user", "content": content}], "stream": False, "options": {"num_predict": 1}}


def test_three_31_mb_prompts_are_refused_at_once_without_growing_the_worker(system: System) -> None:
    status, _ = http_json("POST", system.url + "/api/chat", _chat("hi"))  # the model is loaded
    assert status == 200
    workers = [p for p in descendants(system.proc.pid) if "worker" in _cmdline(p) and "supervisor" not in _cmdline(p)]
    before = {p: _rss(p) for p in workers}
    peak = dict(before)
    done = threading.Event()

    def sample() -> None:
        while not done.is_set():
            for p in workers:
                try:
                    peak[p] = max(peak[p], _rss(p))
                except OSError:
                    pass
            time.sleep(0.05)

    body = json.dumps(_chat("hello " * 5_400_000)).encode()
    answers: list[tuple[int, dict, float]] = []
    threads = [threading.Thread(target=lambda: answers.append(_post(system.url + "/api/chat", body))) for _ in range(3)]
    sampler = threading.Thread(target=sample)
    sampler.start()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    done.set()
    sampler.join()

    assert len(answers) == 3
    for status, answer, seconds in answers:
        assert status == 400, answer
        assert "characters, which does not fit the context of 8192 tokens" in answer["error"]
        assert seconds < 20  # 25 s each, one at a time, before; a few seconds of moving 31 MB around now
    grown = max(peak[p] - before[p] for p in workers)
    assert grown < 1024**3, f"a worker grew by {grown / 2**20:.0f} MiB"  # 11 GB before
    started = time.monotonic()
    status, _ = http_json("POST", system.url + "/api/chat", _chat("hi"))
    assert status == 200 and time.monotonic() - started < 10
