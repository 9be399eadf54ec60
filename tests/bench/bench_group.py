"""Benchmark (a script, not a test): one worker process vs a two-rank pipeline group (ring backend,
127.0.0.1) serving SmolLM2-135M, and the cost of the group's per-step message.

    python tests/bench/bench_group.py [--runs 3] [--decode-tokens 64] [--streams 8] [--json [PATH]]

For each configuration the real worker processes are started (the group as the supervisor starts
it: tests/fixtures/worker_group.py) with the optimized BLAS preloaded as the supervisor does, and
spoken to over gRPC + ZeroMQ. Per run, one greedy request of --decode-tokens tokens:
  - TTFT: Submit sent -> first token frame received (prefill of a 37-token chat prompt; the single
    worker runs with its prefix cache off, as a group's ranks do, so that both prefill it whole);
  - decode tok/s: eval_count / eval_duration from the final frame's stats;
  - then --streams requests at once: aggregate tok/s (all generated tokens over the wall time) and
    the slowest TTFT.
Medians of --runs with their spread (min..max); the group also with one OpenBLAS thread a rank. Then the step message alone: two ranks exchange
it 300 times (header only, as in every decode step; and with one ~0.5 KB submission), timed on
rank 0. Writes tests/bench/results/group-ring-cpu.json by default.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from tests.fixtures.worker_group import free_ports, start_group

RESULTS = Path(__file__).resolve().parent / "results" / "group-ring-cpu.json"
PROMPT = "Tell me a long story about a lighthouse keeper and the sea."


def smollm2_view(home: Path) -> Path:
    from mlxserve.services.store.store import ModelStore
    from tests.fixtures.smollm2 import find_smollm2_gguf

    store = ModelStore(home / "models")
    store.create_from_path("smollm2", find_smollm2_gguf())
    return store.resolve("smollm2").view_path


def start_single(model: Path, home: Path) -> tuple[list[subprocess.Popen], Path]:
    sock = home / "w.sock"
    # No prefix cache, as in a group: every run prefills the whole prompt (the same work as the group's).
    env = dict(os.environ, MLXSERVE_HOME=str(home), MLXSERVE_PREFIX_CACHE_BYTES="0", MLXSERVE_PREFIX_CACHE_DISK_BYTES="0")
    cmd = [sys.executable, "-m", "mlxserve.services.worker", "--model-path", str(model), "--socket", str(sock),
           "--model-name", "smollm2:latest"]
    proc = subprocess.Popen(cmd, env=env, stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return [proc], sock


def wait_ready(sock: Path, procs: list[subprocess.Popen]) -> None:
    import grpc

    from mlxserve.services.common.rpc import sync_channel
    from mlxserve.v1 import common_pb2, worker_pb2_grpc

    stub = worker_pb2_grpc.WorkerStub(sync_channel(f"unix://{sock}"))
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        if any(p.poll() is not None for p in procs):
            raise SystemExit("a worker process exited during its start")
        try:
            stub.Ping(common_pb2.PingRequest(), timeout=1.0)
            return
        except grpc.RpcError:
            time.sleep(0.2)
    raise SystemExit("the worker never answered Ping")


def measure(sock: Path, home: Path, runs: int, tokens: int) -> dict:
    import zmq

    from mlxserve.services.common.rpc import sync_channel
    from mlxserve.v1 import frames, requests, worker_pb2, worker_pb2_grpc

    stub = worker_pb2_grpc.WorkerStub(sync_channel(f"unix://{sock}"))
    ctx = zmq.Context()
    pull = ctx.socket(zmq.PULL)
    reply = f"ipc://{home}/bench.sock"
    pull.bind(reply)
    ttft, tps = [], []
    for run in range(runs + 1):  # the first is a warm-up
        request = requests.GenerationRequest(
            request_id=f"r{run}", is_chat=True, messages=(requests.ChatMessage("user", PROMPT),),
            options=requests.SamplingOptions(temperature=0.0, num_predict=tokens))
        sent = time.perf_counter()
        stub.Submit(worker_pb2.SubmitRequest(reply_to=reply, request=requests.encode(request)), timeout=60)
        first = None
        while True:
            assert pull.poll(120_000), "no frame"
            event = frames.decode(pull.recv())
            if first is None and event.token_ids:
                first = time.perf_counter() - sent
            if event.done:
                break
        assert event.error is None, event.error
        if run:
            ttft.append(first * 1000)
            tps.append(event.stats.eval_count / (event.stats.eval_duration / 1e9))
    pull.close(0)
    ctx.term()
    return {"ttft_ms": summary(ttft), "decode_tok_s": summary(tps)}


def measure_concurrent(sock: Path, home: Path, runs: int, tokens: int, streams: int) -> dict:
    """`streams` greedy requests submitted together, per run: aggregate tok/s (generated tokens over
    the wall time from the first Submit to the last final frame) and the slowest TTFT."""
    import zmq

    from mlxserve.services.common.rpc import sync_channel
    from mlxserve.v1 import frames, requests, worker_pb2, worker_pb2_grpc

    stub = worker_pb2_grpc.WorkerStub(sync_channel(f"unix://{sock}"))
    ctx = zmq.Context()
    pull = ctx.socket(zmq.PULL)
    reply = f"ipc://{home}/bench-many.sock"
    pull.bind(reply)
    agg, worst = [], []
    for run in range(runs + 1):  # the first is a warm-up
        sent = time.perf_counter()
        for i in range(streams):
            request = requests.GenerationRequest(
                request_id=f"c{run}-{i}", is_chat=True, messages=(requests.ChatMessage("user", f"{PROMPT} ({i})"),),
                options=requests.SamplingOptions(temperature=0.0, num_predict=tokens))
            stub.Submit(worker_pb2.SubmitRequest(reply_to=reply, request=requests.encode(request)), timeout=60)
        first: dict[str, float] = {}
        done, generated = 0, 0
        while done < streams:
            assert pull.poll(300_000), "no frame"
            event = frames.decode(pull.recv())
            if event.token_ids and event.request_id not in first:
                first[event.request_id] = time.perf_counter() - sent
            if event.done:
                assert event.error is None, event.error
                done += 1
                generated += event.stats.eval_count
        wall = time.perf_counter() - sent
        if run:
            agg.append(generated / wall)
            worst.append(max(first.values()) * 1000)
    pull.close(0)
    ctx.term()
    return {"streams": streams, "aggregate_tok_s": summary(agg), "worst_ttft_ms": summary(worst)}


def summary(values: list[float]) -> dict:
    return {"median": round(statistics.median(values), 2), "min": round(min(values), 2), "max": round(max(values), 2),
            "runs": [round(v, 2) for v in values]}


def step_message_rank(reps: int) -> None:
    """One rank of the step-message micro-benchmark (spawned twice by `step_message_cost`)."""
    import mlx.core as mx

    from mlxserve.services.worker.distributed import join_group
    from mlxserve.services.worker.group_sync import KIND_STEP, Channel, RankState, Submission, encode_payload
    from mlxserve.v1 import requests

    info = join_group("ring", "pipeline")
    channel = Channel(info, mx.new_stream(mx.cpu))
    own = RankState(0, 4, mx.get_active_memory(), 0, os.getpid())
    request = requests.GenerationRequest(request_id="x" * 32, is_chat=True,
                                         messages=(requests.ChatMessage("user", PROMPT * 4),))
    payload = encode_payload([Submission(requests.encode(request), list(range(60)), 64)])
    out = {}
    for name, body in (("header_only_us", b""), ("with_one_submission_us", payload)):
        for _ in range(20):  # warm-up
            channel.exchange(own, kind=KIND_STEP, payload=body if info.rank == 0 else b"")
        times = []
        for _ in range(reps):
            started = time.perf_counter()
            channel.exchange(own, kind=KIND_STEP, payload=body if info.rank == 0 else b"")
            times.append((time.perf_counter() - started) * 1e6)
        out[name] = {"median": round(statistics.median(times), 1), "p90": round(sorted(times)[int(0.9 * len(times))], 1)}
    out["submission_payload_bytes"] = len(payload)
    if info.rank == 0:
        print(json.dumps(out))


def step_message_cost(reps: int) -> dict:
    with tempfile.TemporaryDirectory(prefix="mlxgb-") as d:
        hostfile = Path(d) / "hosts.json"
        hostfile.write_text(json.dumps([[f"127.0.0.1:{p}"] for p in free_ports(2)]))
        procs = [subprocess.Popen([sys.executable, __file__, "--step-message-rank", str(reps)],
                                  env=dict(os.environ, MLX_RANK=str(r), MLX_HOSTFILE=str(hostfile)),
                                  stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True) for r in range(2)]
        outs = [p.communicate(timeout=300)[0] for p in procs]
    return json.loads(outs[0].strip().splitlines()[-1])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--runs", type=int, default=3)
    p.add_argument("--decode-tokens", type=int, default=64)
    p.add_argument("--json", nargs="?", const=str(RESULTS), default=str(RESULTS))
    p.add_argument("--streams", type=int, default=8, help="also N requests at once (0: not)")
    p.add_argument("--step-message-rank", type=int, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.step_message_rank:
        step_message_rank(args.step_message_rank)
        return

    from mlxserve.services.supervisor.blas import find_optimized_blas, with_preload

    blas = find_optimized_blas()
    os.environ.update(with_preload(os.environ, blas))
    results: dict = {"model": "SmolLM2-135M-Instruct Q4_1 (computed in float32)", "backend": "ring over 127.0.0.1",
                     "blas_preload": str(blas) if blas else None, "cpus": os.cpu_count(),
                     "decode_tokens": args.decode_tokens, "runs": args.runs, "load_average_before": os.getloadavg(),
                     "configs": {}}
    with tempfile.TemporaryDirectory(prefix="mlxgb-", dir="/tmp") as d:
        view = smollm2_view(Path(d) / "store")
        # On one host two ranks share its cores: OpenBLAS's threads (2 a process by default) then
        # spin against the other rank's; one thread a rank shows what splitting the cores gives.
        for name, env in (("single", {}), ("pipeline-2-ranks", {}), ("pipeline-2-ranks-openblas-1-thread", {"OPENBLAS_NUM_THREADS": "1"})):
            home = Path(d) / name
            home.mkdir()
            if name == "single":
                procs, sock = start_single(view, home)
            else:
                group = start_group(view, home, env=env)
                procs, sock = group.ranks, group.socket
            try:
                wait_ready(sock, procs)
                results["configs"][name] = measure(sock, home, args.runs, args.decode_tokens)
                if args.streams:
                    results["configs"][name]["concurrent"] = measure_concurrent(sock, home, args.runs, args.decode_tokens,
                                                                                args.streams)
            finally:
                for proc in procs:
                    proc.kill()
                    proc.wait()
            print(name, json.dumps(results["configs"][name]), flush=True)
    results["step_message"] = step_message_cost(300)
    results["load_average_after"] = os.getloadavg()
    print("step message", json.dumps(results["step_message"]), flush=True)
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps(results, indent=1) + "\n")
    print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
