"""The engine thread: the one thread that loads the model and makes every MLX call.

It builds the ModelRunner (so the model's arrays and streams belong to it), then loops:
step the runner, hand the frames to `emit`, and sleep on the runner's wake-up event when idle.
Transport threads only call the runner's thread-safe methods (submit, cancel, counts).
"""

from __future__ import annotations

import threading
from typing import Callable

from mlxserve.services.common import logs
from mlxserve.v1.frames import TokenEvent

from .runner import ModelRunner

log = logs.get_logger()

Emit = Callable[[TokenEvent], None]


class Engine:
    def __init__(self, make_runner: Callable[[], ModelRunner], emit: Emit, *, idle_poll_s: float = 0.5) -> None:
        self._make_runner = make_runner
        self._emit = emit
        self._idle_poll_s = idle_poll_s
        self._loaded = threading.Event()
        self._stopping = threading.Event()
        self._stopped = threading.Event()
        self._load_error: BaseException | None = None
        self._shutdown_message = "the worker is shutting down"
        self.runner: ModelRunner | None = None
        self._thread = threading.Thread(target=self._run, name="mlx-engine", daemon=True)

    def start(self) -> ModelRunner:
        """Start the thread and wait for the model to load; re-raises a load failure."""
        self._thread.start()
        self._loaded.wait()
        if self._load_error is not None:
            raise self._load_error
        assert self.runner is not None
        return self.runner

    def stop(self, message: str = "the worker is shutting down", timeout: float = 10.0) -> bool:
        """End in-flight requests with an error frame carrying `message`, then stop the thread."""
        self._shutdown_message = message
        if self.runner is not None:
            self.runner.close(message)  # wakes the loop and refuses new submissions
        self._stopping.set()
        return self._stopped.wait(timeout)

    def _run(self) -> None:
        try:
            self.runner = self._make_runner()
        except BaseException as e:  # noqa: BLE001 - reported to start()'s caller
            self._load_error = e
            self._loaded.set()
            self._stopped.set()
            return
        self._loaded.set()
        runner = self.runner
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
