"""Worker process entry point: `python -m mlxserve.services.worker --model-path DIR --socket PATH`.

Order matters to the supervisor, which takes "Ping answers" to mean "ready": load the model
first, then bind the gRPC socket. A load failure prints one line naming the cause to stderr and
exits non-zero. The worker never outlives its supervisor: it dies with the parent process and,
when its stdin is a pipe, exits at EOF on stdin (the supervisor holds the other end).

With --group-strategy the worker is one rank of a group serving one model over mx.distributed
(distributed.py, group_sync.py): every rank joins the group and checks the others' versions
before loading its part; rank 0 then serves as above, a --follower only steps with it.
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import stat
import sys
import threading
from concurrent import futures
from pathlib import Path
from typing import Any

import grpc

from mlxserve.services.common import lifecycle, logs
from mlxserve.services.common.config import load_settings, worker_memory_budget
from mlxserve.services.common.errors import MlxServeError
from mlxserve.services.common.placement import BACKENDS, STRATEGIES
from mlxserve.services.common.rpc import CHANNEL_OPTIONS, prepare_socket_path, secure_socket, unix_target
from mlxserve.services.common.worker_logs import worker_log_name
from mlxserve.v1 import worker_pb2_grpc

from .distributed import GroupFailure, GroupInfo, start_rank

EXIT_LOAD_FAILED = 3


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="mlxserve-worker", description="Serve one MLX model over gRPC + ZeroMQ.")
    p.add_argument("--model-path", required=True, type=Path, help="model folder (a store view: config, weights, tokenizer)")
    p.add_argument("--socket", type=Path, help="unix socket path for the Worker gRPC service (not with --follower)")
    p.add_argument("--model-name", default="", help="the model's name, for logs")
    p.add_argument("--num-parallel", type=int, default=None, help="requests decoded together (default: settings.num_parallel)")
    p.add_argument("--max-queue", type=int, default=None, help="requests waiting beyond num_parallel (default: settings.max_queue)")
    p.add_argument("--group-strategy", choices=STRATEGIES, default=None,
                   help="serve the model as one rank of a group (mx.distributed): pipeline or tensor")
    p.add_argument("--group-backend", choices=BACKENDS, default="ring", help="MLX's distributed backend for the group")
    p.add_argument("--follower", action="store_true", help="a rank >= 1 of a group: no socket; it follows rank 0's steps")
    logs.verbosity_args(p)
    args = p.parse_args(argv)
    if args.follower and not args.group_strategy:
        p.error("--follower needs --group-strategy")
    if args.follower and args.socket:
        p.error("a follower (--follower) has no --socket: only rank 0 serves")
    if not args.follower and not args.socket:
        p.error("--socket is required (except for a follower)")
    return args


def log_service_name(model_name: str) -> str:
    """One log file per worker: `worker-<model>` (the name the supervisor uses too)."""
    return worker_log_name(model_name, fallback=str(os.getpid()))


def _watch_stdin(stop: threading.Event) -> None:
    """If stdin is a pipe from the supervisor, its EOF means the supervisor is gone."""
    try:
        if not stat.S_ISFIFO(os.fstat(0).st_mode):
            return
    except OSError:
        return

    def watch() -> None:
        try:
            while os.read(0, 4096):
                pass
        except OSError:
            pass
        stop.set()

    threading.Thread(target=watch, name="stdin-watch", daemon=True).start()


def _flush_logs() -> None:
    for handler in logging.getLogger().handlers:
        handler.flush()


def run_follower(args: argparse.Namespace, group: GroupInfo, stop: threading.Event, **runner_args: Any) -> int:
    """A follower's life, on the main thread: load its part of the model, then step with rank 0 until
    rank 0 says stop (0) or the group is lost (1); a load failure is EXIT_LOAD_FAILED. It never
    serves, and exits at once when its supervisor is gone (stdin EOF) or on a signal."""
    from .group_sync import GroupRunner, check_generative

    log = logs.get_logger()
    threading.Thread(target=lambda: (stop.wait(), _flush_logs(), os._exit(0)), name="follower-stop", daemon=True).start()
    label = f"rank {group.rank} ({group.host(group.rank)})"
    try:
        check_generative(args.model_path)
        runner = GroupRunner(args.model_path, group, **runner_args)
    except BaseException as e:  # noqa: BLE001 - any load failure ends the process with its cause
        cause = f"{type(e).__name__}: {e}" if str(e) else type(e).__name__
        log.error("load_failed", model_path=str(args.model_path), error=cause)
        _flush_logs()
        print(f"mlxserve-worker: {label} failed to load model from {args.model_path}: {cause}", file=sys.stderr, flush=True)
        return EXIT_LOAD_FAILED
    log.info("model_loaded", model=args.model_name, rank=group.rank, layers=len(runner.model.layers),
             load_duration_s=round(runner.load_duration_s, 3), compute_dtype=runner.compute_dtype)
    try:
        runner.follow()
    except GroupFailure as e:
        log.error("group_lost", error=str(e))
        _flush_logs()
        print(f"mlxserve-worker: {label}: {e}", file=sys.stderr, flush=True)
        return 1
    except BaseException:  # noqa: BLE001 - a follower that cannot step ends the group (rank 0 sees it go)
        log.exception("follower_crashed")
        _flush_logs()
        return 1
    log.info("follower_stopped", reason="rank 0 stopped the group")
    _flush_logs()
    return 0


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    lifecycle.die_with_parent(lifecycle.parent_pid_from_env())
    try:
        settings = load_settings({"log_level": logs.level_from(args)})
    except MlxServeError as e:
        print(f"mlxserve-worker: {e}", file=sys.stderr)
        return 2
    log = logs.configure(log_service_name(args.model_name), settings.log_level, settings.logs_dir)
    num_parallel = args.num_parallel if args.num_parallel is not None else settings.num_parallel
    max_queue = args.max_queue if args.max_queue is not None else settings.max_queue
    try:
        memory_budget = worker_memory_budget()  # the supervisor's share of memory_budget for this worker
    except MlxServeError as e:
        print(f"mlxserve-worker: {e}", file=sys.stderr)
        return 2

    stop = threading.Event()
    loaded = threading.Event()

    def on_signal(signum: int, _frame: object) -> None:
        stop.set()
        if not loaded.is_set():  # nothing in flight yet: don't wait for a long load to finish
            os._exit(128 + signum)

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    _watch_stdin(stop)

    group: GroupInfo | None = None
    if args.group_strategy:
        try:
            group = start_rank(args.group_backend, args.group_strategy)
        except GroupFailure as e:
            log.error("group_start_failed", error=str(e))
            print(f"mlxserve-worker: {e}", file=sys.stderr, flush=True)
            os._exit(EXIT_LOAD_FAILED)
        log.info("group_joined", rank=group.rank, size=group.size, hosts=list(group.hosts), strategy=group.strategy,
                 backend=group.backend)
        if args.follower:
            os._exit(run_follower(args, group, stop, num_parallel=num_parallel, max_queue=max_queue,
                                  cpu_float32=settings.cpu_float32, memory_budget=memory_budget))

    # Imported late: these pull in MLX, which should not delay argument errors.
    from .disk_cache import DiskCacheSettings
    from .embeddings import EmbeddingRunner, is_embedding_model
    from .engine import Engine
    from .replies import FrameSender, ReplyRouter
    from .runner import ModelRunner
    from .server import WorkerServicer

    def make_runner() -> ModelRunner | EmbeddingRunner:
        if group is not None:
            from .group_sync import GroupRunner, check_generative

            check_generative(args.model_path)
            return GroupRunner(args.model_path, group, num_parallel=num_parallel, max_queue=max_queue,
                               cpu_float32=settings.cpu_float32, memory_budget=memory_budget)
        # An embedding model (BERT / sentence-transformers) answers Embed; anything else generates.
        if is_embedding_model(args.model_path):
            return EmbeddingRunner(args.model_path, model_name=args.model_name, max_queue=max_queue)
        return ModelRunner(args.model_path, num_parallel=num_parallel, max_queue=max_queue,
                           prefix_cache_bytes=settings.prefix_cache_bytes, prefix_cache_entries=settings.prefix_cache_entries,
                           prefix_cache_disk=DiskCacheSettings(settings.prefix_cache_dir, settings.prefix_cache_disk_bytes,
                                                               settings.prefix_cache_disk_min_tokens),
                           cpu_float32=settings.cpu_float32, memory_budget=memory_budget)

    # Frames go engine → router (the request's reply_to) → sender; a gateway that is gone cancels.
    engine = Engine(make_runner)
    sender = FrameSender(on_undeliverable=engine.cancel)
    replies = ReplyRouter(sender)
    try:
        runner = engine.start(replies.route)
    except BaseException as e:  # noqa: BLE001 - any load failure ends the process with its cause
        cause = f"{type(e).__name__}: {e}" if str(e) else type(e).__name__
        name = f"{args.model_name} " if args.model_name else ""
        if group is not None:
            name += f"on rank 0 ({group.host(0)}) "
        log.error("load_failed", model_path=str(args.model_path), error=cause)
        for handler in logging.getLogger().handlers:
            handler.flush()
        # Last on stderr, so the supervisor's "why did it fail" shows this line.
        print(f"mlxserve-worker: failed to load model {name}from {args.model_path}: {cause}", file=sys.stderr)
        sys.stderr.flush()
        os._exit(EXIT_LOAD_FAILED)
    loaded.set()
    servicer = WorkerServicer(runner, replies, blas=engine.blas, model_name=args.model_name)
    log.info("model_loaded", model=args.model_name, kind=getattr(runner, "kind", "generate"), model_path=str(args.model_path), load_duration_s=round(runner.load_duration_s, 3),
             device=runner.device, compute_dtype=getattr(runner, "compute_dtype", ""),
             precision_reason=getattr(getattr(runner, "precision", None), "reason", ""), memory_budget=memory_budget,
             context_length=runner.context_length, num_parallel=num_parallel, max_queue=max_queue)

    server = grpc.server(futures.ThreadPoolExecutor(max_workers=8, thread_name_prefix="grpc"), options=CHANNEL_OPTIONS)
    worker_pb2_grpc.add_WorkerServicer_to_server(servicer, server)
    prepare_socket_path(args.socket)
    try:
        bound = server.add_insecure_port(unix_target(args.socket))
    except RuntimeError:
        bound = 0
    if not bound:
        print(f"mlxserve-worker: cannot bind the gRPC socket {args.socket}", file=sys.stderr)
        os._exit(EXIT_LOAD_FAILED)
    server.start()
    secure_socket(args.socket)
    log.info("worker_ready", socket=str(args.socket), pid=os.getpid())

    exit_code = 0
    while not stop.wait(0.5):
        if not engine.alive:
            log.error("engine_stopped")
            exit_code = 1  # a crash, as far as the supervisor is concerned
            break
    log.info("worker_stopping")
    server.stop(grace=None)            # refuse new RPCs at once
    engine.stop("the worker is shutting down")   # in-flight requests get an error frame
    if isinstance(runner, ModelRunner):
        # The last turn's prefix is what the next worker wants: finish writing it (well within
        # the supervisor's grace before SIGKILL; a cut write leaves only a temporary file).
        runner.prefix_cache.close(timeout=1.5)
    sender.close()
    try:
        args.socket.unlink()
    except FileNotFoundError:
        pass
    log.info("worker_stopped")
    for handler in logging.getLogger().handlers:
        handler.flush()
    failure = getattr(runner, "failure", None)  # a group's lost rank: last on stderr, the line the supervisor shows
    if failure:
        print(f"mlxserve-worker: {failure}", file=sys.stderr, flush=True)
    # Skip interpreter teardown: MLX's thread-local streams must not be destroyed from here.
    os._exit(exit_code)


if __name__ == "__main__":
    raise SystemExit(main())
