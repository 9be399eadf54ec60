"""The engine thread: the one thread that loads the model and computes with it.

It builds the ModelRunner (so the model's arrays and streams belong to it), confirms the BLAS
(a CPU matmul), then loops: step the runner, hand the frames to `emit`, and sleep on the runner's
wake-up event when idle. Transport threads only call the runner's thread-safe methods (submit,
cancel, counts); the one other thread that touches MLX is the disk cache's writer, which saves
arrays this thread has already evaluated, on its own stream (disk_cache.py).
"""

from __future__ import annotations

import threading
from typing import Callable

from mlxserve.services.common import logs
from mlxserve.v1.frames import TokenEvent

from .blas import BlasReport, confirm_blas
from .runner import ModelRunner

log = logs.get_logger()

Emit = Callable[[TokenEvent], None]


class Engine:
    """Owns the engine thread; `emit` (given to `start`) receives every frame, on that thread."""

    def __init__(self, make_runner: Callable[[], ModelRunner], *, idle_poll_s: float = 0.5) -> None:
        self._make_runner = make_runner
        self._emit: Emit = lambda event: None
        self._idle_poll_s = idle_poll_s
        self._loaded = threading.Event()
        self._stopping = threading.Event()
        self._stopped = threading.Event()
        self._load_error: BaseException | None = None
        self._shutdown_message = "the worker is shutting down"
        self.runner: ModelRunner | None = None
        self.blas = BlasReport("", 0.0, False)  # confirmed on the engine thread after the load
        self._thread = threading.Thread(target=self._run, name="mlx-engine", daemon=True)

    def start(self, emit: Emit) -> ModelRunner:
        """Start the thread, frames going to `emit`, and wait for the model to load; re-raises a load failure."""
        self._emit = emit
        self._thread.start()
        self._loaded.wait()
        if self._load_error is not None:
            raise self._load_error
        assert self.runner is not None
        return self.runner

    def cancel(self, request_id: str) -> bool:
        """Ask the runner to end `request_id` (any thread); False if unknown or nothing is loaded yet."""
        runner = self.runner
        return runner.cancel(request_id) if runner is not None else False

    def stop(self, message: str = "the worker is shutting down", timeout: float = 10.0) -> bool:
        """End in-flight requests with an error frame carrying `message`, then stop the thread."""
        self._shutdown_message = message
        if self.runner is not None:
            self.runner.close(message)  # wakes the loop and refuses new submissions
        self._stopping.set()
        return self._stopped.wait(timeout)

    def _run(self) -> None:
        try:
            runner = self._make_runner()
            # Logged, and shown by ps; measured before the socket answers, so no request competes.
            self.blas = confirm_blas(runner.device)
            self.runner = runner
        except BaseException as e:  # noqa: BLE001 - reported to start()'s caller
            self._load_error = e
            self._loaded.set()
            self._stopped.set()
            return
        self._loaded.set()
        try:
            while not self._stopping.is_set():
                if not runner.has_work():
                    runner.wait_for_work(self._idle_poll_s)
                    continue
                for event in runner.step():
                    self._send(event)
            for event in runner.shutdown(self._shutdown_message):
                self._send(event)
        except BaseException:  # noqa: BLE001 - a dead engine must not look alive
            log.exception("engine_crashed")
            try:
                for event in runner.shutdown("the worker's engine crashed"):
                    self._send(event)
            except BaseException:  # noqa: BLE001
                log.exception("engine_shutdown_failed")
        finally:
            self._stopped.set()

    def _send(self, event: TokenEvent) -> None:
        try:
            self._emit(event)
        except Exception:  # noqa: BLE001 - one undeliverable frame must not stop the engine
            log.exception("emit_failed", **logs.submit_fields(event.request_id))

    @property
    def alive(self) -> bool:
        return self._thread.is_alive() and not self._stopped.is_set()
