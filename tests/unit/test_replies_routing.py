"""The worker's reply routing: each request's frames go to the reply_to its Submit named (no sockets)."""

from __future__ import annotations

import pytest

from mlxserve.services.common.errors import InvalidArgument
from mlxserve.services.worker.replies import ReplyRouter
from mlxserve.v1.frames import TokenEvent


class RecordingSender:
    """Stands in for the FrameSender: records (address, event) instead of pushing frames over ZeroMQ."""

    def __init__(self) -> None:
        self.sent: list[tuple[str, TokenEvent]] = []

    def send(self, address: str, event: TokenEvent) -> None:
        self.sent.append((address, event))


def frame(request_id: str, text: str = "", done: bool = False) -> TokenEvent:
    return TokenEvent(request_id=request_id, text=text, done=done, done_reason="stop" if done else "")


def test_each_request_s_frames_go_to_the_gateway_that_submitted_it() -> None:
    sender = RecordingSender()
    router = ReplyRouter(sender)  # type: ignore[arg-type]
    router.register("a", "ipc:///tmp/gw-a")
    router.register("b", "ipc:///tmp/gw-b")
    router.route(frame("a", "x"))
    router.route(frame("b", "y"))
    router.route(frame("a", done=True))
    assert [(address, e.request_id) for address, e in sender.sent] == [
        ("ipc:///tmp/gw-a", "a"), ("ipc:///tmp/gw-b", "b"), ("ipc:///tmp/gw-a", "a")]


def test_a_finished_request_s_id_may_be_used_again_but_not_one_in_flight() -> None:
    router = ReplyRouter(RecordingSender())  # type: ignore[arg-type]
    router.register("a", "ipc:///tmp/gw")
    with pytest.raises(InvalidArgument, match="already in use"):
        router.register("a", "ipc:///tmp/gw")
    router.route(frame("a", done=True))
    router.register("a", "ipc:///tmp/gw")  # the last frame forgot it


def test_a_frame_with_no_registered_address_is_dropped() -> None:
    sender = RecordingSender()
    router = ReplyRouter(sender)  # type: ignore[arg-type]
    router.register("a", "ipc:///tmp/gw")
    router.forget("a")  # a Submit the runner refused
    router.route(frame("a", "x"))
    assert sender.sent == []
