"""Lock-step serving: a follower fed rank 0's step messages makes exactly rank 0's frames, whatever
the mix of requests (greedy, seeded and unseeded sampling, structured output, a cancellation), and
a rank that computes other tokens stops the group instead of serving them.

Two GroupRunners in one process (tests/fixtures/group_pair.py): no socket, no process."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from mlxserve.services.worker.distributed import GroupFailure
from mlxserve.v1 import requests
from mlxserve.v1.frames import TokenEvent
from tests.fixtures.group_pair import TIMEOUT_S, start_pair
from tests.fixtures.runner_driver import chat
from tests.fixtures.tiny_model import tiny_model_dir  # noqa: F401 - fixture


def wait_until(condition: Callable[[], bool]) -> bool:
    """Poll `condition` (the ranks run on their own threads); False after TIMEOUT_S."""
    deadline = time.monotonic() + TIMEOUT_S
    while not condition():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.01)
    return True


def by_request(events: list[TokenEvent]) -> dict[str, tuple[list[int], str, str | None]]:
    out: dict[str, tuple[list[int], str, str | None]] = {}
    for e in events:
        ids, text, _ = out.get(e.request_id, ([], "", None))
        out[e.request_id] = (ids + list(e.token_ids), text + e.text, e.done_reason if e.done else None)
    return out


def test_follower_makes_rank_0s_frames_for_a_mixed_batch_with_a_cancellation(tiny_model_dir: Path) -> None:  # noqa: F811
    leader, follower = start_pair(tiny_model_dir, num_parallel=4, max_queue=8)
    schema = {"type": "object", "properties": {"n": {"type": "integer"}}, "required": ["n"]}
    submitted = [
        chat("Hello there", requests.SamplingOptions(temperature=0, num_predict=12), request_id="greedy"),
        chat("Tell me a story", requests.SamplingOptions(temperature=0.9, seed=3, num_predict=12), request_id="seeded"),
        chat("Tell me a story", requests.SamplingOptions(temperature=0.9, num_predict=12), request_id="unseeded"),
        requests.GenerationRequest(request_id="json", is_chat=True, messages=(requests.ChatMessage("user", "A number"),),
                                   format=json.dumps(schema), options=requests.SamplingOptions(temperature=0, num_predict=40)),
        chat("Why is the sky blue?", requests.SamplingOptions(temperature=0, num_predict=400), request_id="cancelled"),
    ]
    for request in submitted:
        leader.runner.submit(request)
    try:
        # Cancelled mid-stream: once rank 0 has sent a frame of it (the step message carries the cancel).
        assert wait_until(lambda: any(e.request_id == "cancelled" for e in list(leader.events)) or leader.error is not None)
        assert leader.runner.cancel("cancelled")
        assert wait_until(lambda: not leader.runner.has_work() or leader.error is not None)
    finally:
        leader.stop.set()
        leader.join(TIMEOUT_S)
        follower.join(TIMEOUT_S)
    assert leader.error is None and follower.error is None, (leader.error, follower.error)
    assert not follower.is_alive(), "the follower did not stop with rank 0"
    ours, theirs = by_request(leader.events), by_request(follower.events)
    assert ours == theirs
    assert set(ours) == {r.request_id for r in submitted}
    assert ours["cancelled"][2] == "cancel" and 0 < len(ours["cancelled"][0]) < 400
    assert ours["greedy"][2] in ("stop", "length") and ours["unseeded"][0]
    json.loads(ours["json"][1])


def test_a_rank_that_computes_other_tokens_stops_the_group(tiny_model_dir: Path) -> None:  # noqa: F811
    leader, follower = start_pair(tiny_model_dir, num_parallel=2, max_queue=2)
    follower.runner._fingerprint ^= 1  # as if its last step had sampled another token
    leader.runner.submit(chat("Hello there", requests.SamplingOptions(temperature=0, num_predict=50), request_id="r"))
    follower.join(TIMEOUT_S)
    leader.join(TIMEOUT_S)
    for rank in (leader, follower):
        assert isinstance(rank.error, GroupFailure) and "diverged: rank 1 (host-b)" in str(rank.error), rank.error
