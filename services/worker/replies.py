"""The reply path: one thread that owns every ZeroMQ PUSH socket and sends TokenEvent frames.

ZeroMQ sockets are not thread-safe, so frames from the engine are queued here and a single
sender thread keeps one PUSH socket per distinct `reply_to` address.
"""

from __future__ import annotations

import queue
import threading
import time
from typing import Callable

import zmq

from mlxserve.services.common import logs
from mlxserve.v1 import frames
from mlxserve.v1.frames import TokenEvent

log = logs.get_logger()

SEND_TIMEOUT_MS = 2000     # a gateway that reads nothing for this long has gone away
IDLE_SOCKET_S = 600.0      # close a gateway's socket after this long without frames
_STOP = object()


class FrameSender:
    """Sends frames to their gateways; `on_undeliverable(request_id)` is told of dropped frames."""

    def __init__(self, on_undeliverable: Callable[[str], None] | None = None, *, max_pending: int = 100_000) -> None:
        self._queue: queue.Queue = queue.Queue(maxsize=max_pending)
        self._on_undeliverable = on_undeliverable
        self._context = zmq.Context.instance()
        self._sockets: dict[str, tuple[zmq.Socket, float]] = {}
        self._thread = threading.Thread(target=self._run, name="frame-sender", daemon=True)
        self._thread.start()

    def send(self, address: str, event: TokenEvent) -> None:
        """Queue one frame for `address` (thread-safe, never blocks the engine for long)."""
        self._queue.put((address, event), timeout=SEND_TIMEOUT_MS / 1000)

    def close(self, timeout: float = 5.0) -> None:
        """Send what is queued, then close the sockets (lingering briefly so frames leave)."""
        self._queue.put(_STOP)
        self._thread.join(timeout)

    def _socket(self, address: str) -> zmq.Socket:
        entry = self._sockets.get(address)
        if entry is None:
            sock = self._context.socket(zmq.PUSH)
            sock.setsockopt(zmq.SNDTIMEO, SEND_TIMEOUT_MS)
            sock.setsockopt(zmq.LINGER, 1000)
            sock.connect(address)
        else:
            sock = entry[0]
        self._sockets[address] = (sock, time.monotonic())
        return sock

    def _close_idle(self) -> None:
        now = time.monotonic()
        for address, (sock, used) in list(self._sockets.items()):
            if now - used > IDLE_SOCKET_S:
                sock.close()
                del self._sockets[address]

    def _run(self) -> None:
        while True:
            try:
                item = self._queue.get(timeout=60.0)
            except queue.Empty:
                self._close_idle()
                continue
            if item is _STOP:
                break
            address, event = item
            try:
                self._socket(address).send(frames.encode(event))
            except zmq.ZMQError as e:
                log.warning("frame_undeliverable", request_id=event.request_id, reply_to=address, error=str(e))
                if self._on_undeliverable is not None and not event.done:
                    self._on_undeliverable(event.request_id)
        for sock, _ in self._sockets.values():
            sock.close()
        self._sockets.clear()
