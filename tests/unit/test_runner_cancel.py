"""Cancellation: the request leaves the batch at the next step, its KV cache goes, the rest go on."""

from __future__ import annotations

from pathlib import Path

import pytest

from mlxserve.services.worker.runner import ModelRunner
from mlxserve.services.worker.sampling import SamplingOptions
from mlxserve.v1.frames import TokenEvent
from tests.fixtures.tiny_model import write_tiny_model
from tests.fixtures.runner_driver import chat, run_alone, tokens

LONG = SamplingOptions(temperature=0, num_predict=200)


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_tiny_model(tmp_path_factory.mktemp("cancel-model"))


def sequences_in(runner: ModelRunner) -> int:
    """Sequences mlx-lm holds: queued for prefill, prefilling, or decoding."""
    g = runner._generator
    return len(g._unprocessed_sequences) + len(g._prompt_batch) + len(g._generation_batch)


def test_cancelled_request_leaves_the_batch_at_the_next_step_and_others_continue(model_dir: Path) -> None:
    runner = ModelRunner(model_dir, num_parallel=2, max_queue=2)
    other_options = SamplingOptions(temperature=0, num_predict=30)
    expected_other = tokens(run_alone(runner, chat("Hello there", other_options)))

    victim, other = chat("Tell me a story", LONG), chat("Hello there", other_options)
    runner.submit(victim)
    runner.submit(other)
    frames: dict[str, list[TokenEvent]] = {victim.request_id: [], other.request_id: []}
    while not (frames[victim.request_id] and frames[other.request_id]):  # both decoding
        for e in runner.step():
            frames[e.request_id].append(e)
    cache_before = runner._generator.prompt_cache_nbytes
    assert sequences_in(runner) == 2

    assert runner.cancel(victim.request_id)
    step = {e.request_id: e for e in runner.step()}
    assert step[victim.request_id].done and step[victim.request_id].done_reason == "cancel"
    assert step[victim.request_id].token_ids == []
    assert not step[other.request_id].done  # the other one decoded in that same step
    assert sequences_in(runner) == 1
    assert runner._generator.prompt_cache_nbytes < cache_before  # the victim's KV is gone

    frames[other.request_id].append(step[other.request_id])
    while runner.has_work():
        for e in runner.step():
            assert e.request_id == other.request_id  # nothing more for the cancelled one
            frames[other.request_id].append(e)
    assert tokens(frames[other.request_id]) == expected_other
    assert frames[other.request_id][-1].done_reason == "length"
    assert sequences_in(runner) == 0


def test_cancel_during_a_chunked_prefill_stops_it_at_once(model_dir: Path) -> None:
    runner = ModelRunner(model_dir, num_parallel=2, max_queue=2, prefill_step_size=8)
    request = chat("the quick brown fox jumps over the lazy dog " * 12, LONG)
    runner.submit(request)
    assert runner.step() == []  # the first chunk of the prompt only
    assert sequences_in(runner) == 1
    runner.cancel(request.request_id)
    (final,) = runner.step()
    assert (final.request_id, final.done_reason) == (request.request_id, "cancel")
    assert final.stats.eval_count == 0
    assert sequences_in(runner) == 0 and not runner.has_work()


def test_a_cancelled_slot_is_taken_by_the_next_waiting_request_in_the_same_step(model_dir: Path) -> None:
    runner = ModelRunner(model_dir, num_parallel=1, max_queue=2)
    running, waiting = chat("Tell me a story", LONG), chat("Hi", SamplingOptions(temperature=0, num_predict=3))
    runner.submit(running)
    runner.submit(waiting)
    while not any(e.request_id == running.request_id for e in runner.step()):
        pass
    runner.cancel(running.request_id)
    step = runner.step()
    assert [(e.request_id, e.done_reason) for e in step if e.done] == [(running.request_id, "cancel")]
    assert sequences_in(runner) == 1  # the waiting request was admitted in its place
