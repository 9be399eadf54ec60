"""The worker's frame sender: one frame per event to a gateway that keeps up; merged frames, with
nothing lost or reordered, to one that fell behind; dropped and reported for one that went away."""

from __future__ import annotations

import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import zmq

from mlxserve.services.worker import replies
from mlxserve.services.worker.replies import FrameSender, _Gateway
from mlxserve.v1 import frames
from mlxserve.v1.frames import Stats, TokenEvent, TokenLogprob

WORD = "lorem ipsum dolor sit amet " * 4  # ~100 bytes a frame: fewer frames fill the kernel's buffer


def events(request_id: str, n: int) -> list[TokenEvent]:
    out = [TokenEvent(request_id, text=f"{WORD}{i} ", token_ids=[i], logprobs=[TokenLogprob(str(i), -float(i))])
           for i in range(n - 1)]
    out.append(TokenEvent(request_id, text="end", token_ids=[n - 1], done=True, done_reason="length",
                          stats=Stats(prompt_tokens=5, eval_count=n)))
    return out


def interleave(*streams: list[TokenEvent]) -> list[TokenEvent]:
    return [e for step in zip(*streams) for e in step]


class Gateway:
    """A PULL socket on ipc, as the gateway binds one; `stalled` holds back reading until released."""

    def __init__(self, path: Path, *, stalled: bool = False) -> None:
        self.address = f"ipc://{path}"
        self.sock = zmq.Context.instance().socket(zmq.PULL)
        self.sock.setsockopt(zmq.RCVHWM, 1)  # a stalled gateway refuses frames soon
        self.sock.setsockopt(zmq.LINGER, 0)
        self.sock.bind(self.address)
        self.received: list[TokenEvent] = []
        self.reading = threading.Event()
        self._closing = threading.Event()
        if not stalled:
            self.reading.set()
        self._thread = threading.Thread(target=self._read, daemon=True)
        self._thread.start()

    def _read(self) -> None:
        self.reading.wait()
        while not self._closing.is_set():
            if self.sock.poll(20):
                self.received.append(frames.decode(self.sock.recv()))
        self.sock.close()

    def wait_done(self, request_ids: set[str], timeout: float = 10.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if request_ids <= {e.request_id for e in self.received if e.done}:
                return
            time.sleep(0.01)
        raise AssertionError(f"not every request ended: got {len(self.received)} frames")

    def of(self, request_id: str) -> list[TokenEvent]:
        return [e for e in self.received if e.request_id == request_id]

    def close(self) -> None:
        self._closing.set()
        self.reading.set()
        self._thread.join()


def wait_until_sent(sender: FrameSender) -> None:
    """Until the sender thread has taken every queued frame (sent, or holding it for later)."""
    while not sender._queue.empty():
        time.sleep(0.01)
    time.sleep(0.1)


@pytest.fixture
def sender():
    undeliverable: list[str] = []
    s = FrameSender(on_undeliverable=undeliverable.append, send_hwm=4)
    s.undeliverable = undeliverable  # type: ignore[attr-defined]
    yield s
    s.close()


def test_gateway_that_keeps_up_gets_one_frame_per_event(sender: FrameSender, tmp_path: Path) -> None:
    gateway = Gateway(tmp_path / "g.ipc")
    a, b = events("a", 40), events("b", 40)
    for event in interleave(a, b):
        sender.send(gateway.address, event)
        time.sleep(0.002)  # a step's pace, however short
    gateway.wait_done({"a", "b"})
    assert gateway.of("a") == a and gateway.of("b") == b
    gateway.close()


def test_stalled_gateway_gets_merged_frames_that_add_up_to_the_stream(sender: FrameSender, tmp_path: Path) -> None:
    gateway = Gateway(tmp_path / "g.ipc", stalled=True)
    a, b = events("a", 3000), events("b", 3000)
    for event in interleave(a, b):
        sender.send(gateway.address, event)
    wait_until_sent(sender)
    gateway.reading.set()
    gateway.wait_done({"a", "b"})

    for stream in (a, b):
        got = gateway.of(stream[0].request_id)
        assert len(got) < len(stream), "frames should have merged while the gateway was behind"
        assert any(len(e.token_ids) > 1 for e in got)
        assert "".join(e.text for e in got) == "".join(e.text for e in stream)
        assert [t for e in got for t in e.token_ids] == [t for e in stream for t in e.token_ids]
        assert [lp for e in got for lp in e.logprobs] == [lp for e in stream for lp in e.logprobs]
        assert [e.done for e in got] == [False] * (len(got) - 1) + [True]
        assert got[-1].stats == Stats(prompt_tokens=5, eval_count=3000) and got[-1].done_reason == "length"
    assert sender.undeliverable == []
    gateway.close()


def test_gateway_that_catches_up_gets_single_frames_again(sender: FrameSender, tmp_path: Path) -> None:
    gateway = Gateway(tmp_path / "g.ipc", stalled=True)
    a = events("a", 2200)
    for event in a[:2000]:
        sender.send(gateway.address, event)
    wait_until_sent(sender)
    gateway.reading.set()
    deadline = time.monotonic() + 10
    while 1999 not in {t for e in gateway.of("a") for t in e.token_ids}:  # the backlog drains
        assert time.monotonic() < deadline, "the stalled frames never arrived"
        time.sleep(0.01)
    for event in a[2000:]:
        sender.send(gateway.address, event)
        time.sleep(0.001)
    gateway.wait_done({"a"})
    got = gateway.of("a")
    assert [t for e in got for t in e.token_ids] == list(range(2200))
    assert got[-200:] == a[2000:]
    gateway.close()


def test_gone_gateway_drops_its_frames_without_holding_up_another(
        sender: FrameSender, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(replies, "SEND_TIMEOUT_MS", 1000)
    gone = Gateway(tmp_path / "gone.ipc", stalled=True)
    alive = Gateway(tmp_path / "alive.ipc")
    for event in events("lost", 3000)[:-1]:
        sender.send(gone.address, event)
    wait_until_sent(sender)
    started = time.monotonic()
    b = events("b", 30)
    for event in b:
        sender.send(alive.address, event)
    alive.wait_done({"b"})
    assert time.monotonic() - started < 1.0, "the other gateway waited for the stalled one to time out"
    assert alive.of("b") == b
    deadline = time.monotonic() + 5
    while "lost" not in sender.undeliverable and time.monotonic() < deadline:
        time.sleep(0.01)
    assert sender.undeliverable and set(sender.undeliverable) == {"lost"}
    gone.close()
    alive.close()


GATEWAY_PROCESS = """
import sys, zmq
sock = zmq.Context().socket(zmq.PULL)
sock.bind(sys.argv[1])
print("bound", flush=True)
while True:
    sock.recv()
"""


def test_requests_of_a_gateway_killed_mid_stream_are_reported_undeliverable_within_the_send_timeout(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(replies, "SEND_TIMEOUT_MS", 1000)
    address = f"ipc://{tmp_path}/gateway.ipc"
    gateway = subprocess.Popen([sys.executable, "-c", GATEWAY_PROCESS, address], stdout=subprocess.PIPE, text=True)
    undeliverable: list[str] = []
    sender = FrameSender(on_undeliverable=undeliverable.append)  # the worker's own high-water mark
    try:
        assert gateway.stdout is not None and gateway.stdout.readline().strip() == "bound"
        for event in events("early", 3):
            sender.send(address, event)
        wait_until_sent(sender)
        gateway.kill()  # kill -9: its socket file stays, nobody reads it again
        gateway.wait()
        started = time.monotonic()
        # The engine goes on making a frame a step (20 a second here) for the request of the gone gateway.
        for event in events("orphan", 1000)[:-1]:
            if "orphan" in undeliverable or time.monotonic() - started > 20:
                break
            sender.send(address, event)
            time.sleep(0.05)
        took = time.monotonic() - started
        assert "orphan" in undeliverable, "the worker would go on generating for a gateway that is gone"
        # Within the send timeout (1 s here), not after a high-water mark's worth of frames (~14 s).
        assert took < 4.0, took
    finally:
        sender.close()
        if gateway.poll() is None:
            gateway.kill()


def test_held_frames_merge_per_request_in_order_and_never_past_done() -> None:
    held = _Gateway(sock=None, used=0.0)  # type: ignore[arg-type]
    held.hold(TokenEvent("a", text="1", token_ids=[1]))
    held.hold(TokenEvent("b", text="x", token_ids=[9]))
    held.hold(TokenEvent("a", text="2", token_ids=[2], done=True, done_reason="stop"))
    held.hold(TokenEvent("b", text="y", token_ids=[8]))
    assert held.pop() == TokenEvent("a", text="12", token_ids=[1, 2], done=True, done_reason="stop")
    assert held.pop() == TokenEvent("b", text="xy", token_ids=[9, 8])
    assert not held.waiting and not held.open


def test_frame_for_an_address_that_cannot_be_reached_is_reported_undeliverable(sender: FrameSender) -> None:
    sender.send("ipc://", TokenEvent("r", text="x", token_ids=[1]))
    sender.send("ipc://", TokenEvent("r", done=True, done_reason="stop"))
    wait_until_sent(sender)
    assert sender.undeliverable == ["r"]  # once: a done frame's request has nothing left to cancel
