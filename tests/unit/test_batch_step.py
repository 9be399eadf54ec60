"""The batch step samples every row in one computation, each row as it would be sampled alone."""

from __future__ import annotations

import mlx.core as mx
import msgspec
import pytest
from mlx_lm.sample_utils import apply_min_p, apply_top_k, apply_top_p
from mlxserve.services.worker.batch_step import (
    GREEDY,
    RowSamplers,
    RowSampling,
    filter_logprobs,
)
from mlxserve.services.worker.runner import ModelRunner
from mlxserve.services.worker.sampling import SamplingOptions

from tests.fixtures.tiny_model import write_tiny_model
from tests.fixtures.runner_driver import chat, drive, run_alone, tokens


@pytest.fixture(scope="module")
def runner(tmp_path_factory: pytest.TempPathFactory) -> ModelRunner:
    return ModelRunner(write_tiny_model(tmp_path_factory.mktemp("batch-step-model")), num_parallel=4, max_queue=8)


def test_per_row_filters_match_mlx_lm_filters_applied_row_by_row() -> None:
    logprobs = mx.log(mx.softmax(mx.random.normal((3, 500), key=mx.random.key(0)), axis=-1))
    settings = [(0, 1.0, 0.0), (20, 0.9, 0.0), (0, 0.5, 0.05)]  # (top_k, top_p, min_p); 0 / 1 / 0 are off
    column = lambda i, dtype: mx.array([s[i] for s in settings], dtype=dtype)[:, None]
    batched = filter_logprobs(logprobs, column(0, mx.int32), column(1, mx.float32), column(2, mx.float32))
    for row, (top_k, top_p, min_p) in enumerate(settings):
        alone = logprobs[row : row + 1]
        if top_k:
            alone = apply_top_k(alone, top_k)
        if top_p < 1.0:
            alone = apply_top_p(alone, top_p)
        if min_p:
            alone = apply_min_p(alone, min_p)
        assert mx.array_equal(mx.isinf(batched[row]), mx.isinf(alone[0])).item()


def test_each_row_draws_with_its_own_key_whatever_the_batch() -> None:
    logprobs = mx.log(mx.softmax(mx.random.normal((3, 200), key=mx.random.key(1)), axis=-1))
    seeded = RowSampling(temperature=1.0, top_k=50, top_p=0.95, seed=42)
    alone = RowSamplers([seeded])
    batch = RowSamplers([RowSampling(temperature=0.7, seed=7), seeded, GREEDY])
    for _ in range(5):
        assert batch.sample(logprobs)[1].item() == alone.sample(logprobs[1:2])[0].item()
    assert batch.sample(logprobs)[2].item() == mx.argmax(logprobs[2]).item()  # the greedy row stays greedy


def test_rows_keep_their_keys_when_others_leave_or_join() -> None:
    logprobs = mx.log(mx.softmax(mx.random.normal((2, 200), key=mx.random.key(2)), axis=-1))
    seeded = RowSampling(temperature=1.2, seed=9)
    alone = RowSamplers([seeded])
    batch = RowSamplers([RowSampling(temperature=1.0, seed=1), seeded])
    drawn = [batch.sample(logprobs)[1].item()]
    batch.filter([1])  # the first request finished
    drawn.append(batch.sample(logprobs[1:2])[0].item())
    batch.extend(RowSamplers([RowSampling(temperature=1.0, seed=3)]))  # another joined
    drawn.append(batch.sample(mx.concatenate([logprobs[1:2], logprobs[:1]]))[0].item())
    assert drawn == [alone.sample(logprobs[1:2])[0].item() for _ in range(3)]


def test_default_filtered_sampling_is_the_same_alone_and_in_a_mixed_batch(runner: ModelRunner) -> None:
    # Ollama's defaults (top_k 40, top_p 0.9) beside a greedy row and a differently filtered one.
    mine_options = SamplingOptions(temperature=0.9, seed=5, num_predict=20)
    alone = tokens(run_alone(runner, chat("Tell me a story", mine_options)))
    mine = chat("Tell me a story", mine_options)
    others = [chat("Why?", SamplingOptions(temperature=0, num_predict=12)),
              chat("Hello there", SamplingOptions(temperature=1.3, top_k=5, min_p=0.1, seed=3, num_predict=28))]
    for r in [others[0], mine, others[1]]:
        runner.submit(r)
    assert tokens(drive(runner)[mine.request_id]) == alone


def test_greedy_rows_beside_sampled_rows_stay_argmax(runner: ModelRunner) -> None:
    greedy = SamplingOptions(temperature=0, num_predict=16)
    alone = tokens(run_alone(runner, chat("Tell me a story", greedy)))
    mine = chat("Tell me a story", greedy)
    runner.submit(chat("Hello there", SamplingOptions(temperature=1.0, seed=11, num_predict=16)))
    runner.submit(mine)
    assert tokens(drive(runner)[mine.request_id]) == alone


def test_rows_of_equal_length_decoded_without_a_mask_match_their_solo_outputs(runner: ModelRunner) -> None:
    # Same-length prompts leave no row padded: the step then runs without an attention mask.
    greedy = SamplingOptions(temperature=0, num_predict=16)
    requests = [chat(f"Story number {k}", greedy) for k in (1, 2)]
    assert len({len(runner.tokenizer.encode(r.messages[0].content)) for r in requests}) == 1
    solo = [tokens(run_alone(runner, msgspec.structs.replace(r, request_id=f"{r.request_id}-alone"))) for r in requests]
    for r in requests:
        runner.submit(r)
    frames = drive(runner)
    assert [tokens(frames[r.request_id]) for r in requests] == solo
