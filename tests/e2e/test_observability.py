"""Observability through the real processes: one request id in every service's log, /metrics after
a generation, and `mlxctl -v` showing each call with its request id."""

from __future__ import annotations

import json
import secrets
import time
import urllib.request
from pathlib import Path

from prometheus_client.parser import text_string_to_metric_families

from tests.e2e.conftest import SMOL
from tests.e2e.harness import System


def log_lines(path: Path) -> list[dict]:
    """The JSON lines of one service's log (other lines, e.g. a library's plain text, skipped)."""
    out = []
    for line in path.read_text(errors="replace").splitlines():
        try:
            entry = json.loads(line)
        except ValueError:
            continue
        if isinstance(entry, dict):
            out.append(entry)
    return out


def lines_with(paths: list[Path], request_id: str) -> list[dict]:
    return [e for p in paths if p.exists() for e in log_lines(p) if e.get("request_id") == request_id]


def wait_for_events(paths: list[Path], request_id: str, wanted: set[str], timeout: float = 10.0) -> list[dict]:
    """The log lines carrying `request_id`, once they include every event in `wanted`."""
    deadline = time.monotonic() + timeout
    while True:
        found = lines_with(paths, request_id)
        if wanted <= {e.get("event") for e in found} or time.monotonic() > deadline:
            return found
        time.sleep(0.1)


def chat(system: System, request_id: str) -> tuple[int, dict, str]:
    body = {"model": SMOL, "stream": False, "messages": [{"role": "user", "content": "Hi"}],
            "options": {"num_predict": 4, "temperature": 0}}
    req = urllib.request.Request(system.url + "/api/chat", data=json.dumps(body).encode(), method="POST",
                                 headers={"Content-Type": "application/json", "X-Request-Id": request_id})
    with urllib.request.urlopen(req, timeout=120) as resp:
        return resp.status, json.loads(resp.read()), resp.headers.get("X-Request-Id", "")


def metrics(system: System) -> dict[str, list[tuple[dict[str, str], float]]]:
    with urllib.request.urlopen(system.url + "/metrics", timeout=10) as resp:
        assert resp.status == 200
        body = resp.read().decode()
    out: dict[str, list[tuple[dict[str, str], float]]] = {}
    for family in text_string_to_metric_families(body):
        for s in family.samples:
            out.setdefault(s.name, []).append((s.labels, s.value))
    return out


def test_one_request_id_follows_a_chat_through_gateway_supervisor_and_worker(system: System) -> None:
    rid = f"obs-{secrets.token_hex(6)}"
    status, body, echoed = chat(system, rid)
    assert status == 200 and body["done"] is True and echoed == rid
    logs_dir = system.home / "logs"

    gateway = wait_for_events([logs_dir / "gateway.log"], rid, {"request"})
    access = [e for e in gateway if e.get("event") == "request"]
    assert access, f"no access line for {rid} in gateway.log"
    assert access[-1]["route"] == "/api/chat" and access[-1]["method"] == "POST" and access[-1]["status"] == 200
    assert access[-1]["duration_ms"] > 0 and access[-1]["service"] == "gateway"

    supervisor = wait_for_events([logs_dir / "supervisor.log"], rid, {"lease_acquired", "lease_released"})
    events = {e["event"] for e in supervisor}
    assert {"lease_acquired", "lease_released"} <= events, f"supervisor lines for {rid}: {supervisor}"

    workers = sorted(logs_dir.glob("worker-*.log"))
    worker = wait_for_events(workers, rid, {"submitted", "admitted", "finished"})
    by_event = {e["event"]: e for e in worker}
    assert {"submitted", "admitted", "finished"} <= set(by_event), f"worker lines for {rid}: {worker}"
    finished = by_event["finished"]
    # The worker's own id for the submit is the gateway's plus a suffix; request_id is the gateway's.
    assert finished["submit_id"].startswith(rid + ".") and finished["submit_id"] == by_event["admitted"]["submit_id"]
    assert finished["done_reason"] == "length" and finished["eval_count"] == body["eval_count"] == 4
    assert finished["prompt_tokens"] > 0 and finished["eval_ms"] >= 0 and finished["tokens_per_second"] > 0


def test_metrics_after_a_generation_show_ttft_speed_and_the_loaded_model(system: System) -> None:
    chat(system, f"obs-{secrets.token_hex(6)}")
    m = metrics(system)

    def samples(name: str) -> dict[str, float]:
        return {labels.get("model", ""): v for labels, v in m.get(name, [])}

    ttft = samples("mlxserve_time_to_first_token_seconds_count")
    model = next((name for name in ttft if name.startswith("smollm2")), None)
    assert model is not None and ttft[model] >= 1, f"no TTFT samples: {ttft}"
    assert samples("mlxserve_generation_tokens_per_second_count").get(model, 0) >= 1
    assert samples("mlxserve_generated_tokens_total").get(model, 0) >= 4
    assert samples("mlxserve_requests_in_flight").get(model) == 0
    assert samples("mlxserve_loaded_models")[""] >= 1
    assert samples("mlxserve_model_memory_bytes").get(model, 0) > 0
    up = {labels["service"]: v for labels, v in m["mlxserve_backend_up"]}
    assert up == {"store": 1, "supervisor": 1}
    requests = {(l["route"], l["status"]): v for l, v in m["mlxserve_http_requests_total"]}
    assert requests.get(("/api/chat", "200"), 0) >= 1


def test_mlxctl_verbose_prints_each_call_with_its_request_id_and_error_detail(system: System) -> None:
    ok = system.mlxctl("-v", "list")
    assert ok.returncode == 0, ok.stderr
    calls = [e for e in (json.loads(l) for l in ok.stderr.splitlines() if l.startswith("{")) if e.get("event") == "rpc_call"]
    assert calls and calls[0]["method"] == "List" and calls[0]["request_id"].startswith("cli-")
    assert "rpc_call" not in system.mlxctl("list").stderr  # quiet without -v

    failed = system.mlxctl("-v", "show", "no-such-model-here")
    assert failed.returncode != 0 and "Error:" in failed.stderr
    errors = [json.loads(l) for l in failed.stderr.splitlines() if l.startswith("{") and '"rpc_call"' in l]
    assert errors and errors[-1]["code"] == "NOT_FOUND" and "no-such-model-here" in errors[-1]["details"]
