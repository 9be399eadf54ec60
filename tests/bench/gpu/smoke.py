"""Smoke check on the device: mlxserve serves a model folder on the GPU, one request end to end.

    python3 tests/bench/gpu/smoke.py MODEL_FOLDER [--json PATH]

Starts `mlxctl serve` (tests/e2e/harness.py) with the folder imported as "smoke", sends one
greedy /api/generate request and one streamed /v1/chat/completions request through the gateway,
and reports MLX's default device, the answers' token counts, /api/ps, and which processes hold
the GPU (nvidia-smi), so a worker that fell back to the CPU shows up. Exits 1 on any failure.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[3]))

from tests.e2e.harness import http_json, start_system  # noqa: E402


def gpu_processes() -> str:
    """nvidia-smi's list of compute processes (pid, memory), or why it could not be read."""
    try:
        out = subprocess.run(["nvidia-smi", "--query-compute-apps=pid,process_name,used_memory", "--format=csv"],
                             capture_output=True, text=True, timeout=30)
        return out.stdout.strip() or out.stderr.strip()
    except (OSError, subprocess.TimeoutExpired) as e:
        return f"nvidia-smi unavailable: {e}"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("model", type=Path, help="an MLX model folder")
    p.add_argument("--json", type=Path, help="write the report here")
    args = p.parse_args(argv)

    import mlx.core as mx

    report: dict = {"default_device": str(mx.default_device()), "mlx": mx.__version__}
    home = Path(tempfile.mkdtemp(prefix="mlxserve-smoke-"))
    system = None
    ok = False
    try:
        t0 = time.perf_counter()
        system = start_system(home, {"smoke": args.model}, ready_timeout=600)
        report["serve_ready_s"] = round(time.perf_counter() - t0, 2)
        t0 = time.perf_counter()
        status, body = http_json("POST", system.url + "/api/generate", {
            "model": "smoke", "prompt": "Hello", "stream": False, "options": {"temperature": 0, "num_predict": 16}},
            timeout=600)
        report["generate"] = {"status": status, "seconds": round(time.perf_counter() - t0, 2),
                              "eval_count": body.get("eval_count"), "load_duration_s": (body.get("load_duration") or 0) / 1e9,
                              "eval_tps": (body.get("eval_count") or 0) / max((body.get("eval_duration") or 1) / 1e9, 1e-9),
                              "error": body.get("error")}
        report["gpu_processes"] = gpu_processes()
        status2, ps = http_json("GET", system.url + "/api/ps")
        report["ps"] = ps
        status3, chat = http_json("POST", system.url + "/v1/chat/completions", {
            "model": "smoke", "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 8, "temperature": 0})
        report["openai"] = {"status": status3, "usage": chat.get("usage"), "error": chat.get("error")}
        ok = status == 200 and status3 == 200 and (body.get("eval_count") or 0) > 0
    except Exception as e:  # the report says what broke; the exit code says that it did
        report["error"] = repr(e)
    finally:
        if system is not None:
            report["serve_log_tail"] = system.log_tail(30) if not ok else ""
            system.stop()
        shutil.rmtree(home, ignore_errors=True)
    text = json.dumps(report, indent=2)
    print(text)
    if args.json:
        args.json.write_text(text + "\n")
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
