"""The reply path: where each request's frames go, and the one thread that sends them.

`ReplyRouter` keeps each request's `reply_to` (registered by Submit before the request is queued,
so even a frame made at once has an address) and hands the engine's frames to the FrameSender.

ZeroMQ sockets are not thread-safe, so frames from the engine are queued here and a single
sender thread keeps one PUSH socket per distinct `reply_to` address. Encoding happens on that
thread too, off the engine's critical path.

A gateway that keeps up gets every frame as the engine made it: one per step per request. A
gateway that falls behind is noticed when its socket refuses a frame (ZeroMQ's high-water mark is
reached: the gateway has stopped reading). From then on its frames wait here, and the frames of one
request that pile up merge into one (`frames.merge`), so the gateway catches up by reading fewer,
larger frames instead of one per token; once everything waiting is sent, frames go one by one again.
A refusal is the only trigger, deliberately: a sender thread that merely ran late (a busy machine)
finds the socket willing and changes nothing, so how a stream is chunked depends on the gateway
alone. A gateway that takes nothing for SEND_TIMEOUT_MS has gone away: what waits for it is dropped
and its requests reported undeliverable. One such gateway never holds up frames for the others.
"""

from __future__ import annotations

import collections
import queue
import threading
import time
from dataclasses import dataclass, field
from typing import Callable

import zmq

from mlxserve.services.common import logs
from mlxserve.services.common.errors import InvalidArgument
from mlxserve.v1 import frames
from mlxserve.v1.frames import TokenEvent

log = logs.get_logger()

# A gateway that reads nothing for this long has gone away. Generous: a gateway that is behind holds
# only one merged frame per request here, and one that is gone delays no other gateway's frames.
SEND_TIMEOUT_MS = 10_000
IDLE_SOCKET_S = 600.0      # close a gateway's socket after this long without frames
# Frames ZeroMQ queues here for one gateway before it refuses more (its default is 1000): well above
# what one step sends (one frame per running request), so only a gateway that stopped reading
# reaches it. A refusal comes once this, the kernel's socket buffer (~1,800 small frames on Linux)
# and the gateway's own receive queue (its RCVHWM) are all full.
SEND_HWM = 256
REFUSAL_GRACE_MS = 10      # a refused frame is offered again after this long before the gateway counts as behind
RETRY_S = 0.005            # how often a gateway that refused a frame is offered it again
CLOSE_FLUSH_S = 1.0        # at close, how long frames still waiting for a slow gateway may wait
_STOP = object()


@dataclass
class _Gateway:
    """One gateway's socket, and the frames it refused (merged per request) waiting to be sent."""

    sock: zmq.Socket
    used: float
    waiting: collections.deque[list[TokenEvent]] = field(default_factory=collections.deque)  # one-item slots, in order
    open: dict[str, list[TokenEvent]] = field(default_factory=dict)  # request id → its last slot, while not done
    stalled_since: float = 0.0  # when the gateway last took a frame or first refused one

    def hold(self, event: TokenEvent) -> None:
        """Keep `event` for later, merged into the frame of its request that is already waiting."""
        slot = self.open.get(event.request_id)
        if slot is not None:
            slot[0] = frames.merge(slot[0], event)
        else:
            slot = [event]
            self.waiting.append(slot)
        if slot[0].done:
            self.open.pop(event.request_id, None)
        else:
            self.open[event.request_id] = slot

    def pop(self) -> TokenEvent:
        slot = self.waiting.popleft()
        if self.open.get(slot[0].request_id) is slot:
            del self.open[slot[0].request_id]
        return slot[0]


class FrameSender:
    """Sends frames to their gateways; `on_undeliverable(request_id)` is told of dropped frames."""

    def __init__(self, on_undeliverable: Callable[[str], None] | None = None, *, max_pending: int = 100_000,
                 send_hwm: int = SEND_HWM) -> None:
        self._queue: queue.Queue = queue.Queue(maxsize=max_pending)
        self._on_undeliverable = on_undeliverable
        self._send_hwm = send_hwm
        self._context = zmq.Context.instance()
        self._gateways: dict[str, _Gateway] = {}
        self._thread = threading.Thread(target=self._run, name="frame-sender", daemon=True)
        self._thread.start()

    def send(self, address: str, event: TokenEvent) -> None:
        """Queue one frame for `address` (thread-safe, never blocks the engine for long)."""
        self._queue.put((address, event), timeout=SEND_TIMEOUT_MS / 1000)

    def close(self, timeout: float = 5.0) -> None:
        """Send what is queued, then close the sockets (lingering briefly so frames leave)."""
        self._queue.put(_STOP)
        self._thread.join(timeout)

    def _gateway(self, address: str) -> _Gateway:
        gateway = self._gateways.get(address)
        if gateway is None:
            sock = self._context.socket(zmq.PUSH)
            sock.setsockopt(zmq.SNDHWM, self._send_hwm)
            sock.setsockopt(zmq.LINGER, 1000)
            # Queue only on a live connection: a gateway that died (kill -9) then refuses every
            # frame at once, and its requests are cancelled after SEND_TIMEOUT_MS, instead of the
            # engine generating for it until SNDHWM frames have piled up in a dead pipe first.
            # (A fresh connection completes within REFUSAL_GRACE_MS.)
            sock.setsockopt(zmq.IMMEDIATE, 1)
            try:
                sock.connect(address)
            except zmq.ZMQError:
                sock.close(linger=0)
                raise
            gateway = self._gateways[address] = _Gateway(sock, time.monotonic())
        gateway.used = time.monotonic()
        return gateway

    def _close_idle(self) -> None:
        now = time.monotonic()
        for address, gateway in list(self._gateways.items()):
            if not gateway.waiting and now - gateway.used > IDLE_SOCKET_S:
                gateway.sock.close()
                del self._gateways[address]

    def _run(self) -> None:
        while True:
            behind = any(g.waiting for g in self._gateways.values())
            try:
                item = self._queue.get(timeout=RETRY_S if behind else 60.0)
            except queue.Empty:
                item = None
                if not behind:
                    self._close_idle()
            # Everything queued now is taken at once: for a gateway that is behind, it merges.
            while item is not None and item is not _STOP:
                self._deliver(*item)
                try:
                    item = self._queue.get_nowait()
                except queue.Empty:
                    item = None
            if behind:
                self._retry()
            if item is _STOP:
                break
        deadline = time.monotonic() + CLOSE_FLUSH_S
        while any(g.waiting for g in self._gateways.values()) and time.monotonic() < deadline:
            time.sleep(RETRY_S)
            self._retry()
        for address, gateway in self._gateways.items():
            if gateway.waiting:
                self._drop(address, gateway, "the worker closed before the gateway took these frames")
            gateway.sock.close()
        self._gateways.clear()

    def _deliver(self, address: str, event: TokenEvent) -> None:
        """Send `event` now, unless its gateway is behind (or refuses it): then it waits, merging."""
        try:
            gateway = self._gateway(address)
        except zmq.ZMQError as e:
            self._undeliverable(address, [event], str(e))
            return
        if gateway.waiting:
            gateway.hold(event)
            return
        data = frames.encode(event)
        try:
            try:
                gateway.sock.send(data, zmq.NOBLOCK)
            except zmq.Again:
                # A burst can outrun ZeroMQ's own accounting of what its I/O thread already passed
                # on; only a socket still full after a moment means the gateway stopped reading.
                if not gateway.sock.poll(REFUSAL_GRACE_MS, zmq.POLLOUT):
                    raise
                gateway.sock.send(data, zmq.NOBLOCK)
        except zmq.Again:
            gateway.stalled_since = time.monotonic()
            gateway.hold(event)
        except zmq.ZMQError as e:
            self._undeliverable(address, [event], str(e))

    def _retry(self) -> None:
        """Offer each gateway that is behind what waits for it, in order, until it refuses again."""
        now = time.monotonic()
        for address, gateway in self._gateways.items():
            try:
                while gateway.waiting:
                    gateway.sock.send(frames.encode(gateway.waiting[0][0]), zmq.NOBLOCK)
                    gateway.pop()
                    gateway.stalled_since = now
            except zmq.Again:
                if now - gateway.stalled_since > SEND_TIMEOUT_MS / 1000:
                    self._drop(address, gateway, f"the gateway took no frame for {SEND_TIMEOUT_MS} ms")
            except zmq.ZMQError as e:
                self._drop(address, gateway, str(e))

    def _drop(self, address: str, gateway: _Gateway, reason: str) -> None:
        dropped = [gateway.pop() for _ in range(len(gateway.waiting))]
        self._undeliverable(address, dropped, reason)

    def _undeliverable(self, address: str, events: list[TokenEvent], reason: str) -> None:
        for event in events:
            log.warning("frame_undeliverable", request_id=event.request_id, reply_to=address, error=reason)
            if self._on_undeliverable is not None and not event.done:
                self._on_undeliverable(event.request_id)


class ReplyRouter:
    """Each request's `reply_to`, from Submit until its last frame; the engine's frames go through `route`."""

    def __init__(self, sender: FrameSender) -> None:
        self._sender = sender
        self._lock = threading.Lock()
        self._reply_to: dict[str, str] = {}

    def register(self, request_id: str, reply_to: str) -> None:
        """Send `request_id`'s frames to `reply_to` (any thread); an id already in flight is refused."""
        with self._lock:
            if request_id in self._reply_to:
                raise InvalidArgument(f"request_id {request_id!r} is already in use")
            self._reply_to[request_id] = reply_to

    def forget(self, request_id: str) -> None:
        """Drop the address of a request that was never queued."""
        with self._lock:
            self._reply_to.pop(request_id, None)

    def route(self, event: TokenEvent) -> None:
        """Engine-side sink: send `event` to the gateway that submitted its request."""
        with self._lock:
            address = self._reply_to.pop(event.request_id, None) if event.done else self._reply_to.get(event.request_id)
        if address is None:
            log.warning("frame_without_reply_to", **logs.submit_fields(event.request_id))
            return
        self._sender.send(address, event)
