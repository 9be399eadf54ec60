"""ModelRunner on a tiny random llama, driven step by step on the test thread (no sockets)."""

from __future__ import annotations

from pathlib import Path

import pytest

from mlxserve.services.common.errors import Busy, InvalidArgument, Unavailable
from mlxserve.services.worker.prompts import ChatMessage, GenerationRequest
from mlxserve.services.worker.runner import ModelRunner
from mlxserve.services.worker.sampling import SamplingOptions
from mlxserve.v1.frames import TokenEvent
from tests.fixtures.runner_driver import GREEDY, chat, drive, run_alone, text, tokens
from tests.fixtures.tiny_model import tiny_model_dir, tiny_model_factory  # noqa: F401 - fixtures

@pytest.fixture(scope="module")
def runner(tmp_path_factory: pytest.TempPathFactory) -> ModelRunner:
    from tests.fixtures.tiny_model import write_tiny_model

    return ModelRunner(write_tiny_model(tmp_path_factory.mktemp("runner-model")), num_parallel=4, max_queue=8)


def test_greedy_generation_is_deterministic(runner: ModelRunner) -> None:
    first = run_alone(runner, chat("Why is the sky blue?"))
    second = run_alone(runner, chat("Why is the sky blue?"))
    assert tokens(first) == tokens(second)
    assert text(first) == text(second)
    assert len(tokens(first)) == 16


def test_batched_requests_each_get_their_own_solo_output(runner: ModelRunner) -> None:
    prompts = ["Hello there", "Tell me a short story about a friendly robot", "Why?"]
    solo = [tokens(run_alone(runner, chat(p))) for p in prompts]
    requests = [chat(p) for p in prompts]
    for r in requests:
        runner.submit(r)
    together = drive(runner)
    assert [tokens(together[r.request_id]) for r in requests] == solo
    assert len({tuple(s) for s in solo}) == 3  # distinct prompts really gave distinct outputs


def test_request_submitted_mid_decode_joins_before_the_first_finishes(runner: ModelRunner) -> None:
    long = chat("Tell me a story", SamplingOptions(temperature=0, num_predict=40))
    runner.submit(long)
    seen_long = 0
    while seen_long < 3:
        seen_long += sum(1 for e in runner.step() if e.request_id == long.request_id)
    short = chat("Hi", SamplingOptions(temperature=0, num_predict=4))
    runner.submit(short)
    shared_steps = 0
    done: list[str] = []
    while len(done) < 2:
        step = runner.step()
        ids = {e.request_id for e in step}
        shared_steps += {long.request_id, short.request_id} <= ids
        done += [e.request_id for e in step if e.done]
    assert done == [short.request_id, long.request_id]
    assert shared_steps >= 3  # decoded side by side, not one after the other


def test_same_seed_gives_same_sample_even_when_batched(runner: ModelRunner) -> None:
    sampled = SamplingOptions(temperature=1.5, top_k=0, top_p=1.0, seed=42, num_predict=24)
    alone = tokens(run_alone(runner, chat("Tell me a story", sampled)))
    mine = chat("Tell me a story", sampled)
    others = [chat("Hello there", SamplingOptions(temperature=1.5, seed=7, num_predict=30)), chat("Why?", GREEDY)]
    for r in [others[0], mine, others[1]]:
        runner.submit(r)
    assert tokens(drive(runner)[mine.request_id]) == alone
    other_seed = SamplingOptions(temperature=1.5, top_k=0, top_p=1.0, seed=43, num_predict=24)
    assert tokens(run_alone(runner, chat("Tell me a story", other_seed))) != alone


def test_stop_string_across_token_boundary_is_never_emitted(runner: ModelRunner) -> None:
    options = SamplingOptions(temperature=0, num_predict=24)
    full = run_alone(runner, chat("Hello there", options))
    full_text = text(full)
    # A stop string made of the last character of one frame and the first of the next.
    pieces = [e.text for e in full]

    def boundary_stop(i: int) -> str | None:
        if not (pieces[i] and pieces[i + 1]):
            return None
        stop = pieces[i][-1] + pieces[i + 1][0]
        # Its first occurrence must straddle frames i and i+1.
        return stop if full_text.find(stop) == len("".join(pieces[: i + 1])) - 1 else None

    stop = next(s for s in map(boundary_stop, range(2, len(pieces) - 1)) if s)
    expected = full_text[: full_text.find(stop)]

    stopped = run_alone(runner, chat("Hello there", SamplingOptions(temperature=0, num_predict=24, stop=(stop,))))
    assert text(stopped) == expected
    assert stop not in text(stopped)
    assert stopped[-1].done and stopped[-1].done_reason == "stop"


def test_eos_token_ends_with_stop_and_its_text_is_not_emitted(tiny_model_factory) -> None:  # noqa: F811
    plain = ModelRunner(tiny_model_factory(seed=3), num_parallel=2)
    greedy = tokens(run_alone(plain, chat("Hello there")))
    eos = greedy[5]
    cut = greedy.index(eos)
    with_eos = ModelRunner(tiny_model_factory(seed=3, eos_token_ids=[2, eos]), num_parallel=2)
    events = run_alone(with_eos, chat("Hello there"))
    assert events[-1].done_reason == "stop"
    assert tokens(events) == greedy[:cut]
    assert text(events) == with_eos.tokenizer.decode(greedy[:cut])
    assert events[-1].stats.eval_count == cut + 1  # the EOS was generated, just not shown


def test_num_predict_ends_with_length_after_exactly_that_many_tokens(runner: ModelRunner) -> None:
    events = run_alone(runner, chat("Hello", SamplingOptions(temperature=0, num_predict=7)))
    assert len(tokens(events)) == 7
    assert [e.done for e in events].count(True) == 1
    assert events[-1].done_reason == "length"


def test_generation_without_num_predict_stops_at_the_context_length(runner: ModelRunner) -> None:
    request = chat("Hi", SamplingOptions(temperature=0, num_ctx=40))
    result = runner.submit(request)
    events = drive(runner)[request.request_id]
    assert events[-1].done_reason == "length"
    assert len(tokens(events)) == 40 - result.prompt_tokens


def test_final_frame_carries_stats(runner: ModelRunner) -> None:
    request = chat("Why is the sky blue?", SamplingOptions(temperature=0, num_predict=5))
    result = runner.submit(request)
    events = drive(runner)[request.request_id]
    assert all(e.stats is None for e in events[:-1])
    stats = events[-1].stats
    # Earlier requests share the chat template's opening: those tokens come from the prefix cache.
    assert stats.prompt_tokens == result.prompt_tokens == stats.prompt_eval_count + stats.cached_tokens
    assert stats.eval_count == 5
    assert stats.prompt_eval_duration > 0 and stats.eval_duration > 0


def test_cancel_ends_running_and_waiting_requests_with_cancel(tiny_model_dir: Path) -> None:  # noqa: F811
    small = ModelRunner(tiny_model_dir, num_parallel=1, max_queue=4)
    running = chat("Tell me a story", SamplingOptions(temperature=0, num_predict=200))
    waiting = chat("Hello", GREEDY)
    small.submit(running)
    small.submit(waiting)
    for _ in range(3):
        small.step()
    assert small.cancel(running.request_id) and small.cancel(waiting.request_id)
    assert not small.cancel("never-submitted")
    frames = drive(small)
    assert frames[running.request_id][-1].done_reason == "cancel"
    assert frames[waiting.request_id] == [frames[waiting.request_id][-1]]
    assert frames[waiting.request_id][-1].done_reason == "cancel"
    assert not small.has_work()


def test_full_queue_refuses_with_busy_until_a_slot_frees(tiny_model_dir: Path) -> None:  # noqa: F811
    small = ModelRunner(tiny_model_dir, num_parallel=1, max_queue=1)
    first, second = chat("a"), chat("b")
    assert small.submit(first).queue_position == 0
    assert small.submit(second).queue_position == 1
    with pytest.raises(Busy) as busy:
        small.submit(chat("c"))
    assert busy.value.retry_after is not None
    drive(small)
    assert small.submit(chat("d")).queue_position == 0
    drive(small)


@pytest.mark.parametrize(
    "request_",
    [
        chat("x", SamplingOptions(temperature=-1)),
        chat("x", SamplingOptions(top_p=0)),
        chat("x", SamplingOptions(top_p=1.5)),
        chat("x", SamplingOptions(top_k=-1)),
        chat("x", SamplingOptions(min_p=2)),
        chat("x", SamplingOptions(num_ctx=0)),
        chat("x", SamplingOptions(num_predict=0)),
        chat("x", SamplingOptions(stop=("",))),
        chat("x", SamplingOptions(num_ctx=8)),  # the templated prompt alone is longer
        GenerationRequest("no-messages", is_chat=True),
        GenerationRequest("bad-role", is_chat=True, messages=(ChatMessage("wizard", "hi"),)),
        GenerationRequest("raw-system", prompt="hi", system="be nice", raw=True),
        GenerationRequest("chat-with-prompt", is_chat=True, messages=(ChatMessage("user", "hi"),), prompt="hi"),
        GenerationRequest("prompt-with-messages", messages=(ChatMessage("user", "hi"),)),
        GenerationRequest("", prompt="no id"),
    ],
    ids=lambda r: r.request_id,
)
def test_bad_requests_are_invalid_argument(runner: ModelRunner, request_: GenerationRequest) -> None:
    with pytest.raises(InvalidArgument):
        runner.submit(request_)
    assert not runner.has_work()


def test_duplicate_request_id_is_refused(runner: ModelRunner) -> None:
    runner.submit(chat("a", request_id="dup"))
    with pytest.raises(InvalidArgument):
        runner.submit(chat("b", request_id="dup"))
    drive(runner)


def test_generate_prompt_is_templated_unless_raw(runner: ModelRunner) -> None:
    tok = runner.tokenizer
    raw = runner.submit(GenerationRequest("raw", prompt="Hello there", raw=True, options=GREEDY))
    templated = runner.submit(GenerationRequest("templated", prompt="Hello there", options=GREEDY))
    with_system = runner.submit(GenerationRequest("system", prompt="Hello there", system="Be brief.", options=GREEDY))
    drive(runner)
    assert raw.prompt_tokens == len(tok.encode("Hello there"))
    chat_text = tok.apply_chat_template([{"role": "user", "content": "Hello there"}], add_generation_prompt=True, tokenize=False)
    assert templated.prompt_tokens == len(tok.encode(chat_text, add_special_tokens=False))
    assert with_system.prompt_tokens > templated.prompt_tokens


def test_engine_failure_fails_the_batch_and_keeps_serving(runner: ModelRunner, monkeypatch: pytest.MonkeyPatch) -> None:
    victim = chat("Hello", SamplingOptions(temperature=0, num_predict=50))
    runner.submit(victim)
    runner.step()
    generator = runner._generator

    def broken() -> None:
        raise RuntimeError("simulated kernel failure")

    monkeypatch.setattr(generator, "next", broken)
    events = runner.step()
    assert [(e.request_id, e.done_reason) for e in events] == [(victim.request_id, "error")]
    assert "simulated kernel failure" in events[0].error
    after = run_alone(runner, chat("Hello", GREEDY))
    assert after[-1].done_reason == "length" and len(tokens(after)) == 16


def test_shutdown_ends_everything_with_an_error_and_refuses_new_work(tiny_model_dir: Path) -> None:  # noqa: F811
    small = ModelRunner(tiny_model_dir, num_parallel=1, max_queue=4)
    running, waiting = chat("a", SamplingOptions(temperature=0, num_predict=100)), chat("b")
    small.submit(running)
    small.submit(waiting)
    small.step()
    events = small.shutdown("going away")
    assert {(e.request_id, e.done_reason, e.error) for e in events} == {
        (running.request_id, "error", "going away"),
        (waiting.request_id, "error", "going away"),
    }
    with pytest.raises(Unavailable):
        small.submit(chat("c"))


def test_mixed_traffic_with_chunked_prefill_and_cancels_keeps_every_output_exact(tiny_model_dir: Path) -> None:  # noqa: F811
    import random

    busy = ModelRunner(tiny_model_dir, num_parallel=3, max_queue=20, prefill_step_size=8)  # prompts prefill in chunks
    rng = random.Random(0)
    words = "the quick brown fox jumps over the lazy dog while children play on the sand by the sea".split()
    prompts = [" ".join(rng.choices(words, k=rng.randint(1, 30))) for _ in range(10)]
    options = SamplingOptions(temperature=0, num_predict=12)
    solo = {p: tokens(run_alone(busy, chat(p, options))) for p in prompts}

    requests = [chat(p, options) for p in prompts]
    to_submit = list(requests)
    frames: dict[str, list[TokenEvent]] = {}
    for _ in range(1000):
        if to_submit and rng.random() < 0.5:
            busy.submit(to_submit.pop(0))
        if rng.random() < 0.05:
            busy.cancel(rng.choice(requests).request_id)
        for e in busy.step():
            frames.setdefault(e.request_id, []).append(e)
        if not to_submit and not busy.has_work():
            break
    reasons = []
    for r in requests:
        events = frames[r.request_id]
        assert [e.done for e in events].count(True) == 1 and events[-1].done
        expected = solo[r.messages[0].content]
        got = tokens(events)
        reasons.append(events[-1].done_reason)
        if events[-1].done_reason == "cancel":
            assert got == expected[: len(got)]
        else:
            assert events[-1].done_reason == "length" and got == expected
    assert "cancel" in reasons and "length" in reasons


def test_one_step_prefills_a_bounded_number_of_prompts(tmp_path_factory: pytest.TempPathFactory) -> None:
    """A step is what the supervisor's wedge detector watches: 32 fresh prompts prefilled in one
    step took over 60 s on a 2-core CPU, and the detector killed a healthy worker."""
    from mlxserve.services.worker.runner import CPU_PREFILL_TOKENS_PER_STEP
    from tests.fixtures.tiny_model import write_tiny_model

    wide = ModelRunner(write_tiny_model(tmp_path_factory.mktemp("wide")), num_parallel=32, max_queue=0)
    bound = CPU_PREFILL_TOKENS_PER_STEP // wide.prefill_step_size
    for i in range(32):
        wide.submit(chat(f"hello {i}", SamplingOptions(temperature=0, num_predict=2)))
    wide.step()
    prefilled = [a for a in wide._active.values() if a.prefilled_ns is not None]
    assert wide._generator.prefill_batch_size == bound < 32
    assert len(prefilled) <= bound
    frames = drive(wide)
    assert len(frames) == 32 and all(events[-1].done for events in frames.values())


def test_prefill_batch_shrinks_to_what_the_memory_budget_holds(tmp_path_factory: pytest.TempPathFactory) -> None:
    from tests.fixtures.tiny_model import write_tiny_model

    path = write_tiny_model(tmp_path_factory.mktemp("tight"))
    roomy = ModelRunner(path, num_parallel=4, max_queue=0, prefill_step_size=64)
    tight = ModelRunner(path, num_parallel=4, max_queue=0, prefill_step_size=64, memory_budget=1)
    assert roomy._prefill_batch_size() == 4 and tight._prefill_batch_size() == 1
    for i in range(4):
        tight.submit(chat(f"hello {i}", SamplingOptions(temperature=0, num_predict=3)))
    frames = drive(tight)  # one prompt at a time, every request still served
    assert len(frames) == 4 and all(events[-1].done_reason == "length" for events in frames.values())


def test_a_long_prompt_holds_running_requests_back_one_chunk_a_step(tmp_path_factory: pytest.TempPathFactory) -> None:
    """Decoding goes on while a long prompt is prefilled chunk by chunk, and every chunk counts as
    a step: the supervisor's wedge detector sees progress before the long prompt's first token."""
    from tests.fixtures.tiny_model import write_tiny_model

    chunked = ModelRunner(write_tiny_model(tmp_path_factory.mktemp("chunked")), num_parallel=2, max_queue=0,
                          prefill_step_size=16)
    running = chat("Why?", SamplingOptions(temperature=0, num_predict=200))
    chunked.submit(running)
    while not any(e.token_ids for e in chunked.step()):
        pass
    long = chat("story " * 150, SamplingOptions(temperature=0, num_predict=2))
    prompt_tokens = chunked.submit(long).prompt_tokens
    steps_before, chunk_steps = chunked.steps, 0
    while True:
        step = {e.request_id: e for e in chunked.step()}
        if long.request_id in step:
            break
        chunk_steps += 1
        assert step[running.request_id].token_ids  # the running request got its token this step
        assert chunked.steps == steps_before + chunk_steps  # each chunk is a step the detector sees
    assert chunk_steps >= prompt_tokens // 16 - 1
