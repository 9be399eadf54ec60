"""`mlxctl bench` and `mlxctl logs` as real subprocesses against the running system."""

from __future__ import annotations

import json
import queue
import re
import secrets
import signal
import subprocess
import threading
import time
import urllib.request

from mlxserve.cli.logs import short_request_id
from tests.e2e.conftest import TINY
from tests.e2e.harness import MLXCTL, System

BENCH_ARGS = ("--num-predict", "8", "--runs", "1", "--concurrency", "1,2")
RENDERED = re.compile(r"^\d\d:\d\d:\d\d\.\d{3} (DEBUG|INFO |WARNING|ERROR|CRITICAL)\s+(\S+)\s+\S+")


def generate(system: System, request_id: str) -> None:
    body = {"model": TINY, "prompt": "Hi", "stream": False, "options": {"num_predict": 2, "temperature": 0}}
    req = urllib.request.Request(system.url + "/api/generate", data=json.dumps(body).encode(), method="POST",
                                 headers={"Content-Type": "application/json", "X-Request-Id": request_id})
    with urllib.request.urlopen(req, timeout=120) as resp:
        assert resp.status == 200


def test_bench_json_reports_load_single_stream_and_each_concurrency_level(system: System) -> None:
    out = system.mlxctl("bench", TINY, "--json", *BENCH_ARGS, timeout=300)
    assert out.returncode == 0, out.stderr
    report = json.loads(out.stdout)
    assert report["model"] == TINY and report["config"]["concurrency"] == [1, 2]
    assert report["load"]["warmup_s"] > 0 and report["machine"]["server_version"]
    single = report["single"]
    assert single["requests"] == 1 and single["ttft_p50_s"] > 0 and single["eval_tokens"] > 0
    assert single["server_decode_tps"] > 0 and single["aggregate_tps"] > 0
    levels = {lv["streams"]: lv for lv in report["concurrency"]}
    assert set(levels) == {1, 2} and levels[2]["requests"] == 2
    assert all(lv["aggregate_tps"] > 0 and lv["ttft_p95_s"] >= lv["ttft_p50_s"] > 0 for lv in levels.values())


def test_bench_prints_a_table_with_its_headers(system: System) -> None:
    out = system.mlxctl("bench", TINY, *BENCH_ARGS, timeout=300)
    assert out.returncode == 0, out.stderr
    assert "TTFT p50" in out.stdout and "AGGREGATE TOK/S" in out.stdout and "DECODE TOK/S (SERVER)" in out.stdout
    rows = out.stdout.splitlines()[2:]
    assert [r.split()[0] for r in rows] == ["single", "1", "2"]


def test_bench_of_an_unknown_model_fails_with_one_line_and_the_not_found_code(system: System) -> None:
    out = system.mlxctl("bench", "no-such-model:1b", *BENCH_ARGS)
    assert out.returncode == 3
    assert out.stderr.strip().splitlines() == ["Error: model 'no-such-model:1b' not found"] and out.stdout == ""


def test_logs_shows_the_gateways_last_lines_rendered(system: System) -> None:
    generate(system, f"logs-{secrets.token_hex(4)}")
    out = system.mlxctl("logs", "gateway", "-n", "5")
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert len(lines) == 5
    assert all((m := RENDERED.match(ln)) and m.group(2) == "gateway" for ln in lines), lines


def test_logs_for_one_request_id_show_it_in_gateway_supervisor_and_worker(system: System) -> None:
    rid = f"follow-me-{secrets.token_hex(4)}"
    generate(system, rid)
    deadline = time.monotonic() + 15
    while True:
        out = system.mlxctl("logs", "--request-id", rid)
        assert out.returncode == 0, out.stderr
        services = {m.group(2) for m in map(RENDERED.match, out.stdout.splitlines()) if m}
        if {"gateway", "supervisor"} <= services and any(s.startswith("worker-") for s in services):
            break
        assert time.monotonic() < deadline, f"lines for {rid} only from {services}:\n{out.stdout}"
        time.sleep(0.3)
    # Ids longer than the services' own are shown cut short; the filter still matched them whole.
    assert all(f"rid={short_request_id(rid)} " in ln for ln in out.stdout.splitlines() if RENDERED.match(ln))


def test_logs_follow_prints_new_lines_and_exits_0_on_ctrl_c(system: System) -> None:
    proc = subprocess.Popen([*MLXCTL, "logs", "-f", "-n", "1"], env=system.env(), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    lines: queue.Queue[str] = queue.Queue()
    threading.Thread(target=lambda: [lines.put(ln) for ln in proc.stdout], daemon=True).start()  # type: ignore[union-attr]
    try:
        lines.get(timeout=30)  # the last line so far: following has begun
        rid = f"tail-{secrets.token_hex(4)}"
        generate(system, rid)
        deadline = time.monotonic() + 15
        while True:
            line = lines.get(timeout=max(0.1, deadline - time.monotonic()))
            if f"rid={rid}" in line:
                break
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=10) == 0, proc.stderr.read()  # type: ignore[union-attr]
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
