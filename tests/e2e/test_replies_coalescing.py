"""The worker's frame sender: one frame per event to a gateway that keeps up; merged frames, with
nothing lost or reordered, to one that fell behind; dropped and reported for one that went away."""

from __future__ import annotations

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


def test_requests_of_a_gateway_that_died_are_reported_undeliverable_after_a_few_frames(
        sender: FrameSender, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(replies, "SEND_TIMEOUT_MS", 1000)
    dead = Gateway(tmp_path / "dead.ipc")
    first = events("early", 2)
    for event in first:
        sender.send(dead.address, event)
    dead.wait_done({"early"})
    dead.close()  # the gateway goes away mid-stream (its process killed): nobody reads that path again
    started = time.monotonic()
    for event in events("orphan", 3)[:-1]:  # a few tokens, far below the high-water mark
        sender.send(dead.address, event)
    while "orphan" not in sender.undeliverable and time.monotonic() - started < 5:
        time.sleep(0.01)
    assert "orphan" in sender.undeliverable, "the worker would go on generating for a gateway that is gone"
    assert time.monotonic() - started < 3.0


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
