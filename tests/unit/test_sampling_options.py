"""Per-request penalties and logit bias: each changes the output as it should, alone or batched."""

from __future__ import annotations

import json
import math
from pathlib import Path

import mlx.core as mx
import pytest

from mlxserve.services.common.errors import InvalidArgument
from mlxserve.services.store.store import VIEW_DEFAULTS_FILE
from mlxserve.services.worker.prompts import GenerationRequest
from mlxserve.services.worker.runner import ModelRunner
from mlxserve.services.worker.sampling import SamplingOptions, make_logits_processors
from tests.fixtures.tiny_model import write_tiny_model
from tests.fixtures.runner_driver import chat, drive, run_alone, tokens
from tests.fixtures.submit_wire import over_the_wire

PROMPT = "Tell me a story"


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_tiny_model(tmp_path_factory.mktemp("sampling-model"))


@pytest.fixture(scope="module")
def runner(model_dir: Path) -> ModelRunner:
    return ModelRunner(model_dir, num_parallel=4, max_queue=16)


def greedy(**options: object) -> SamplingOptions:
    return SamplingOptions(temperature=0, num_predict=40, **options)  # type: ignore[arg-type]


def repeats(ids: list[int]) -> int:
    return len(ids) - len(set(ids))


def run(runner: ModelRunner, options: SamplingOptions) -> list[int]:
    return tokens(run_alone(runner, chat(PROMPT, options)))


def test_huge_logit_bias_forces_a_token(runner: ModelRunner) -> None:
    assert run(runner, greedy(logit_bias={300: 100.0})) == [300] * 40


def test_negative_logit_bias_bans_the_greedy_choice(runner: ModelRunner) -> None:
    plain = run(runner, greedy())
    banned = run(runner, greedy(logit_bias={plain[0]: -100.0}))
    assert banned[0] != plain[0] and plain[0] not in banned


def test_repeat_penalty_lowers_repeats(runner: ModelRunner) -> None:
    plain = run(runner, greedy())
    penalized = run(runner, greedy(repeat_penalty=1.5))
    assert repeats(plain) > 0  # the tiny model loops when left alone
    assert repeats(penalized) < repeats(plain)


def test_repeat_last_n_zero_turns_the_penalty_off(runner: ModelRunner) -> None:
    assert run(runner, greedy(repeat_penalty=1.5, repeat_last_n=0)) == run(runner, greedy())


@pytest.mark.parametrize("option", ["presence_penalty", "frequency_penalty"])
def test_presence_and_frequency_penalties_lower_repeats(runner: ModelRunner, option: str) -> None:
    plain = run(runner, greedy())
    penalized = run(runner, greedy(**{option: 50.0}))
    assert repeats(penalized) < repeats(plain)


def test_output_penalties_count_generated_tokens_only_and_repeat_penalty_sees_the_prompt() -> None:
    options = SamplingOptions(presence_penalty=0.5, frequency_penalty=1.0, repeat_penalty=2.0, repeat_last_n=4)
    (repeat, output) = make_logits_processors(options, context_length=64)
    prompt, generated = [1, 2], [3, 3, 4]
    result = None
    for n in range(len(generated) + 1):  # mlx-lm calls once per step with the tokens so far
        context = mx.array(prompt + generated[:n])
        result = output(context, mx.full((1, 8), 2.0))
    assert result is not None
    assert result[0].tolist() == [2.0, 2.0, 2.0, 2.0 - 2 * 1.0 - 0.5, 2.0 - 1.0 - 0.5, 2.0, 2.0, 2.0]
    penalized = repeat(mx.array([0, 1, 2, 3, 3]), mx.array([[2.0, -2.0, 2.0, 2.0, 2.0, 2.0, 2.0, 2.0]]))
    # Last 4 tokens: 1 (negative logit: multiplied), 2 and 3 (positive: divided); 0 is out of the window.
    assert penalized[0].tolist() == [2.0, -4.0, 1.0, 1.0, 2.0, 2.0, 2.0, 2.0]


def test_seeded_sampling_with_penalties_reproduces(runner: ModelRunner) -> None:
    sampled = SamplingOptions(temperature=1.2, seed=11, num_predict=24, repeat_penalty=1.3, presence_penalty=1.0)
    assert run(runner, sampled) == run(runner, sampled)


def test_mixed_settings_in_one_batch_match_the_same_requests_alone(runner: ModelRunner) -> None:
    settings = [
        greedy(),
        greedy(logit_bias={300: 100.0}),
        greedy(repeat_penalty=1.5),
        SamplingOptions(temperature=1.0, seed=5, num_predict=40, presence_penalty=50.0),
        greedy(frequency_penalty=50.0, logit_bias={7: -100.0}),
    ]
    alone = [run(runner, s) for s in settings]
    requests = [chat(PROMPT, s) for s in settings]
    for r in requests:
        runner.submit(r)
    together = drive(runner)
    assert [tokens(together[r.request_id]) for r in requests] == alone
    assert len({tuple(a) for a in alone}) == len(settings)  # every setting really did something


@pytest.mark.parametrize(
    "options",
    [
        SamplingOptions(repeat_penalty=0),
        SamplingOptions(repeat_penalty=-1.0),
        SamplingOptions(repeat_last_n=-2),
        SamplingOptions(presence_penalty=1000.0),
        SamplingOptions(frequency_penalty=-1000.0),
        SamplingOptions(logit_bias={-1: 1.0}),
        SamplingOptions(logit_bias={5: math.nan}),
        SamplingOptions(logit_bias={100_000: 1.0}),  # not in the tiny model's 512-token vocabulary
    ],
    ids=["repeat0", "repeat-neg", "last-n", "presence", "frequency", "bias-id", "bias-nan", "bias-vocab"],
)
def test_out_of_range_options_are_invalid_argument(runner: ModelRunner, options: SamplingOptions) -> None:
    with pytest.raises(InvalidArgument):
        runner.submit(chat(PROMPT, options))
    assert not runner.has_work()


def test_model_parameters_for_penalties_take_effect(model_dir: Path, tmp_path: Path, runner: ModelRunner) -> None:
    folder = write_tiny_model(tmp_path / "with-defaults")  # same seed: the same weights as `runner`
    (folder / VIEW_DEFAULTS_FILE).write_text(json.dumps({"parameters": {"repeat_penalty": 1.5, "repeat_last_n": 64}}))
    with_defaults = ModelRunner(folder, num_parallel=1)
    assert with_defaults.defaults.ignored == ()
    assert run(with_defaults, greedy()) == run(runner, greedy(repeat_penalty=1.5)) != run(runner, greedy())
    # A request's own value replaces the model's.
    assert run(with_defaults, greedy(repeat_penalty=1.0)) == run(runner, greedy())


def test_options_sent_over_the_wire_reach_the_runner() -> None:
    req = over_the_wire(GenerationRequest(
        request_id="r", prompt="p",
        options=SamplingOptions(repeat_penalty=1.1, repeat_last_n=-1, presence_penalty=0.5,
                                frequency_penalty=0.0, logit_bias={42: -5.0}),
        format="json", logprobs=True, top_logprobs=3, truncate=False, think=True,
    ))
    o = req.options
    assert (o.repeat_penalty, o.repeat_last_n, o.presence_penalty, o.frequency_penalty) == (1.1, -1, 0.5, 0.0)
    assert o.logit_bias == {42: -5.0}
    assert (req.format, req.logprobs, req.top_logprobs, req.truncate, req.think) == ("json", True, 3, False, True)
    unset = over_the_wire(GenerationRequest(request_id="r", prompt="p"))
    assert (unset.options.repeat_penalty, unset.options.logit_bias, unset.truncate, unset.think) == (None, None, None, None)
