"""The gateway's data plane: one ZeroMQ PULL socket whose `TokenEvent` frames go to per-request queues.

Workers PUSH frames to `address` (the `reply_to` of each Submit); `deliver` hands one decoded frame
to the queue of the request it names, so an in-process worker (tests) can call it without a socket.
"""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

import msgspec
import zmq
import zmq.asyncio

from mlxserve.services.common import lifecycle, logs, rpc
from mlxserve.v1 import frames
from mlxserve.v1.frames import TokenEvent

# Frames one request may have waiting; more means its client stopped reading.
MAX_PENDING_FRAMES = 8192

log = logs.get_logger(component="token_router")


class RequestStream:
    """Frames for one in-flight request, bounded; overflow fails the request rather than the router."""

    def __init__(self) -> None:
        self.queue: asyncio.Queue[TokenEvent] = asyncio.Queue(maxsize=MAX_PENDING_FRAMES)
        self.overflowed = False

    def push(self, event: TokenEvent) -> None:
        try:
            self.queue.put_nowait(event)
        except asyncio.QueueFull:
            self.overflowed = True


class TokenRouter:
    """The gateway's ZeroMQ PULL socket, routing frames by request id to per-request queues."""

    def __init__(self, run_dir: Path, *, name: str | None = None) -> None:
        self.path = Path(run_dir) / (name or f"gateway-{os.getpid()}.ipc")
        self.address = f"ipc://{self.path}"
        self._streams: dict[str, RequestStream] = {}
        self._ctx: zmq.asyncio.Context | None = None
        self._sock: zmq.asyncio.Socket | None = None
        self._task: asyncio.Task | None = None

    async def start(self) -> None:
        """Bind the socket (replacing a stale file a dead gateway left) and start routing."""
        rpc.prepare_socket_path(self.path)
        for stale in lifecycle.remove_stale_gateway_sockets(self.path.parent):  # those of gateways killed with -9
            log.info("stale_socket_removed", path=str(stale))
        self._ctx = zmq.asyncio.Context()
        self._sock = self._ctx.socket(zmq.PULL)
        self._sock.setsockopt(zmq.LINGER, 0)
        # A worker's frames queue here up to this many (plus ~2k in the kernel and the worker's own
        # SNDHWM) before its socket refuses more; from then on the worker merges the frames of each
        # request (replies.py), so a gateway that fell behind catches up on fewer, larger frames.
        self._sock.setsockopt(zmq.RCVHWM, 1_000)
        self._sock.bind(self.address)
        rpc.secure_socket(self.path)
        self._task = asyncio.get_running_loop().create_task(self._route(), name="token-router")

    async def _route(self) -> None:
        assert self._sock is not None
        while True:
            data = await self._sock.recv()
            try:
                event = frames.decode(data)
            except msgspec.DecodeError as e:
                log.warning("bad_frame", error=str(e), size=len(data))
                continue
            self.deliver(event)

    def deliver(self, event: TokenEvent) -> None:
        """Queue `event` for its request; a frame for a request that already ended (e.g. after a cancel) is dropped."""
        stream = self._streams.get(event.request_id)
        if stream is not None:
            stream.push(event)

    def register(self, request_id: str) -> RequestStream:
        """Start collecting frames for `request_id`; call before Submit so no frame is missed."""
        stream = self._streams[request_id] = RequestStream()
        return stream

    def unregister(self, request_id: str) -> None:
        self._streams.pop(request_id, None)

    @property
    def in_flight(self) -> int:
        return len(self._streams)

    async def close(self) -> None:
        """Stop routing, close the socket and remove its file."""
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except (asyncio.CancelledError, Exception):  # noqa: BLE001 - shutting down
                pass
            self._task = None
        if self._sock is not None:
            self._sock.close(linger=0)
            self._sock = None
        if self._ctx is not None:
            self._ctx.term()
            self._ctx = None
        try:
            self.path.unlink()
        except FileNotFoundError:
            pass
