"""A chat longer than the context loses its oldest messages (Ollama's way), or is refused."""

from __future__ import annotations

import msgspec
import pytest

from mlxserve.services.common.errors import InvalidArgument
from mlxserve.services.worker.prompts import ChatMessage, GenerationRequest, encode_prompt, fit_prompt
from mlxserve.services.worker.runner import ModelRunner
from mlxserve.services.worker.sampling import SamplingOptions
from tests.fixtures.tiny_model import write_tiny_model
from tests.fixtures.runner_driver import drive

SYSTEM = ChatMessage("system", "You are a lighthouse keeper.")
HISTORY = tuple(
    ChatMessage("user" if i % 2 == 0 else "assistant", f"turn {i}: " + "the quick brown fox jumps over the lazy dog " * 3)
    for i in range(8)
)
LAST = ChatMessage("user", "Why is the sky blue?")


@pytest.fixture(scope="module")
def runner(tmp_path_factory: pytest.TempPathFactory) -> ModelRunner:
    return ModelRunner(write_tiny_model(tmp_path_factory.mktemp("truncation-model")), num_parallel=2, max_queue=4)


def conversation(*messages: ChatMessage, num_ctx: int, truncate: bool | None = None) -> GenerationRequest:
    return GenerationRequest(
        request_id=f"t-{num_ctx}-{truncate}-{len(messages)}", is_chat=True, messages=messages,
        options=SamplingOptions(temperature=0, num_predict=4, num_ctx=num_ctx), truncate=truncate,
    )


def length(runner: ModelRunner, *messages: ChatMessage) -> int:
    return len(encode_prompt(runner.tokenizer, conversation(*messages, num_ctx=1)))


def test_oldest_messages_are_dropped_keeping_system_and_the_last(runner: ModelRunner) -> None:
    full = length(runner, SYSTEM, *HISTORY, LAST)
    # Room for the system message, the last one and the newest three of the history.
    num_ctx = length(runner, SYSTEM, *HISTORY[-3:], LAST) + 1
    assert num_ctx < full
    request = conversation(SYSTEM, *HISTORY, LAST, num_ctx=num_ctx)
    tokens, dropped = fit_prompt(runner.tokenizer, request, num_ctx)
    assert dropped == 5
    text = runner.tokenizer.decode(tokens)
    assert text.startswith("<|im_start|>system\nYou are a lighthouse keeper.")
    assert "turn 4" not in text and "turn 5" in text and "turn 7" in text
    assert text.rstrip().endswith("Why is the sky blue?<|im_end|>\n<|im_start|>assistant")


def test_system_messages_anywhere_are_kept(runner: ModelRunner) -> None:
    middle_system = ChatMessage("system", "Remember the storm.")
    messages = (*HISTORY[:4], middle_system, *HISTORY[4:], LAST)
    num_ctx = length(runner, middle_system, LAST) + 1
    tokens, dropped = fit_prompt(runner.tokenizer, conversation(*messages, num_ctx=num_ctx), num_ctx)
    assert dropped == len(HISTORY)
    assert "Remember the storm." in runner.tokenizer.decode(tokens)


def test_the_runner_reports_how_many_messages_it_dropped(runner: ModelRunner) -> None:
    num_ctx = length(runner, SYSTEM, *HISTORY[-2:], LAST) + 5
    request = conversation(SYSTEM, *HISTORY, LAST, num_ctx=num_ctx)
    result = runner.submit(request)
    final = drive(runner)[request.request_id][-1]
    assert result.prompt_tokens < num_ctx
    assert final.done_reason == "length" and final.stats.truncated_messages == 6


def test_a_prompt_that_fits_is_left_whole(runner: ModelRunner) -> None:
    request = conversation(SYSTEM, *HISTORY, LAST, num_ctx=2048)
    runner.submit(request)
    assert drive(runner)[request.request_id][-1].stats.truncated_messages == 0


def test_truncate_false_refuses_an_over_long_prompt(runner: ModelRunner) -> None:
    num_ctx = length(runner, SYSTEM, LAST) + 1
    with pytest.raises(InvalidArgument, match="truncate is false"):
        runner.submit(conversation(SYSTEM, *HISTORY, LAST, num_ctx=num_ctx, truncate=False))
    # It still runs when it fits.
    fits = conversation(SYSTEM, LAST, num_ctx=num_ctx, truncate=False)
    runner.submit(fits)
    assert drive(runner)[fits.request_id][-1].done_reason == "length"


def test_a_last_message_too_long_on_its_own_is_refused(runner: ModelRunner) -> None:
    num_ctx = length(runner, SYSTEM, LAST) - 2
    with pytest.raises(InvalidArgument, match="last message"):
        runner.submit(conversation(SYSTEM, *HISTORY, LAST, num_ctx=num_ctx))
    assert not runner.has_work()


def test_raw_prompts_are_never_truncated(runner: ModelRunner) -> None:
    raw = GenerationRequest("raw-long", prompt="the quick brown fox " * 40, raw=True,
                            options=SamplingOptions(num_ctx=16))
    with pytest.raises(InvalidArgument, match="does not fit"):
        runner.submit(raw)
    with pytest.raises(InvalidArgument):
        runner.submit(msgspec.structs.replace(raw, request_id="raw-long-2", truncate=True))
