"""Per-token logprobs with top alternatives, in the frames, when a request asks for them."""

from __future__ import annotations

import math

import msgspec
import pytest

from mlxserve.services.common.errors import InvalidArgument
from mlxserve.services.worker.runner import ModelRunner
from mlxserve.services.worker.sampling import SamplingOptions
from mlxserve.v1.frames import TokenEvent
from tests.fixtures.tiny_model import write_tiny_model
from tests.fixtures.runner_driver import chat, drive, run_alone, tokens


@pytest.fixture(scope="module")
def runner(tmp_path_factory: pytest.TempPathFactory) -> ModelRunner:
    return ModelRunner(write_tiny_model(tmp_path_factory.mktemp("logprobs-model")), num_parallel=4, max_queue=8)


def with_logprobs(options: SamplingOptions, top: int = 0, text: str = "Tell me a story"):
    return msgspec.structs.replace(chat(text, options), logprobs=True, top_logprobs=top)


def entries(events: list[TokenEvent]):
    return [lp for e in events for lp in e.logprobs]


def test_each_generated_token_gets_its_logprob_and_top_alternatives(runner: ModelRunner) -> None:
    events = run_alone(runner, with_logprobs(SamplingOptions(temperature=0, num_predict=12), top=5))
    assert all(len(e.logprobs) == len(e.token_ids) for e in events)
    got = entries(events)
    assert len(got) == len(tokens(events)) == 12
    for token_id, lp in zip(tokens(events), got):
        assert lp.token == runner.tokenizer.decode([token_id])
        assert lp.logprob <= 0.0 and len(lp.top) == 5
        assert [t.logprob for t in lp.top] == sorted((t.logprob for t in lp.top), reverse=True)
        # Greedy picks the most likely token: it is the first alternative.
        assert (lp.top[0].token, lp.top[0].logprob) == (lp.token, lp.logprob)
        assert sum(math.exp(t.logprob) for t in lp.top) <= 1.0 + 1e-4


def test_bytes_rebuild_the_text_even_across_split_characters(runner: ModelRunner) -> None:
    events = run_alone(runner, with_logprobs(SamplingOptions(temperature=0, num_predict=24), top=20))
    got = entries(events)
    assert bytes(b for lp in got for b in lp.bytes).decode("utf-8", "replace") == runner.tokenizer.decode(tokens(events))
    for lp in got:
        for alt in lp.top:
            if "\ufffd" not in alt.token:
                assert bytes(alt.bytes) == alt.token.encode()


def test_sampled_token_logprob_matches_its_alternative_entry(runner: ModelRunner) -> None:
    request = with_logprobs(SamplingOptions(temperature=1.5, top_k=0, top_p=1.0, seed=3, num_predict=16), top=20)
    for lp in entries(run_alone(runner, request)):
        same = [t.logprob for t in lp.top if t.token == lp.token]
        if same:
            assert any(abs(v - lp.logprob) < 1e-5 for v in same)


def test_logprobs_off_by_default_and_without_alternatives_when_top_is_zero(runner: ModelRunner) -> None:
    assert entries(run_alone(runner, chat("Hello", SamplingOptions(temperature=0, num_predict=4)))) == []
    plain = entries(run_alone(runner, with_logprobs(SamplingOptions(temperature=0, num_predict=4))))
    assert len(plain) == 4 and all(lp.top == [] for lp in plain)


def test_logprobs_follow_the_logit_bias(runner: ModelRunner) -> None:
    forced = entries(run_alone(runner, with_logprobs(SamplingOptions(temperature=0, num_predict=4, logit_bias={300: 100.0}), top=2)))
    assert all(lp.logprob > -1e-3 for lp in forced)  # the biased token is certain


def test_logprobs_in_a_batch_equal_those_alone(runner: ModelRunner) -> None:
    options = SamplingOptions(temperature=0, num_predict=8)
    alone = entries(run_alone(runner, with_logprobs(options, top=3)))
    mine = with_logprobs(options, top=3)
    other = chat("Hello there", SamplingOptions(temperature=0.9, seed=1, num_predict=8))
    runner.submit(other)
    runner.submit(mine)
    together = entries(drive(runner)[mine.request_id])
    assert [lp.token for lp in together] == [lp.token for lp in alone]
    assert all(abs(a.logprob - b.logprob) < 1e-4 for a, b in zip(alone, together))


@pytest.mark.parametrize("top, logprobs", [(21, True), (-1, True), (3, False)])
def test_bad_top_logprobs_are_invalid_argument(runner: ModelRunner, top: int, logprobs: bool) -> None:
    request = msgspec.structs.replace(chat("Hi"), logprobs=logprobs, top_logprobs=top)
    with pytest.raises(InvalidArgument, match="top_logprobs"):
        runner.submit(request)
    assert not runner.has_work()


def test_gpt2_byte_table_is_the_published_bytes_to_unicode() -> None:
    from mlxserve.services.worker.logprobs import byte_decoder

    # openai/gpt-2 src/encoder.py, bytes_to_unicode(), inverted.
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(2**8):
        if b not in bs:
            bs.append(b)
            cs.append(2**8 + n)
            n += 1
    assert byte_decoder() == {chr(c): b for b, c in zip(bs, cs)}
