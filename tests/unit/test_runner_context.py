"""Ollama's /api/generate `context`: a prompt continues earlier token ids, and Submit hands its ids back."""

from __future__ import annotations

from pathlib import Path

import pytest

from mlxserve.services.common.errors import InvalidArgument
from mlxserve.services.worker.prompts import ChatMessage, GenerationRequest
from mlxserve.services.worker.runner import ModelRunner
from mlxserve.services.worker.sampling import SamplingOptions
from mlxserve.v1.frames import TokenEvent
from tests.fixtures.tiny_model import tiny_model_dir  # noqa: F401 - fixture
from tests.fixtures.submit_wire import over_the_wire

GREEDY = SamplingOptions(temperature=0, num_predict=12)
_ids = iter(range(1_000_000))


@pytest.fixture(scope="module")
def runner(tiny_model_dir: Path) -> ModelRunner:  # noqa: F811
    return ModelRunner(tiny_model_dir, num_parallel=2, max_queue=4)


def prompt(text: str, **fields) -> GenerationRequest:
    return GenerationRequest(f"ctx-{next(_ids)}", prompt=text, want_prompt_tokens=True, **{"options": GREEDY, **fields})


def generated(runner: ModelRunner, request: GenerationRequest) -> tuple[tuple[int, ...], list[int]]:
    """(the prompt's token ids as Submit returned them, the generated token ids)."""
    ids = runner.submit(request).prompt_token_ids
    frames: list[TokenEvent] = []
    while runner.has_work():
        frames += [e for e in runner.step() if e.request_id == request.request_id]
    assert frames[-1].done
    return ids, [t for e in frames for t in e.token_ids]


def test_submit_returns_the_prompt_token_ids_when_asked(runner: ModelRunner) -> None:
    result = runner.submit(prompt("Hello there", raw=True))
    assert list(result.prompt_token_ids) == runner.tokenizer.encode("Hello there")
    assert result.prompt_tokens == len(result.prompt_token_ids)
    quiet = runner.submit(GenerationRequest("no-ids", prompt="Hello there", raw=True, options=GREEDY))
    assert quiet.prompt_token_ids == ()
    while runner.has_work():
        runner.step()


def test_a_continued_prompt_generates_as_the_concatenated_tokens_do(runner: ModelRunner) -> None:
    tok = runner.tokenizer
    first = tok.encode("The quick brown")
    assert first + tok.encode(" fox jumps", add_special_tokens=False) == tok.encode("The quick brown fox jumps")
    ids, out = generated(runner, prompt(" fox jumps", raw=True, context=tuple(first)))
    assert list(ids) == tok.encode("The quick brown fox jumps")
    whole_ids, whole_out = generated(runner, prompt("The quick brown fox jumps", raw=True))
    assert ids == whole_ids and out == whole_out


def test_a_templated_continuation_follows_the_context_without_a_second_bos(runner: ModelRunner) -> None:
    ids, answer = generated(runner, prompt("Why is the sky blue?"))
    context = (*ids, *answer)
    next_ids, _ = generated(runner, prompt("And the sea?", context=context))
    turn = runner.tokenizer.apply_chat_template([{"role": "user", "content": "And the sea?"}], add_generation_prompt=True)
    assert list(next_ids) == [*context, *turn]


def test_context_ids_outside_the_vocabulary_are_refused_naming_the_first(runner: ModelRunner) -> None:
    with pytest.raises(InvalidArgument, match=r"context\[1\] is token id 99999, which is not in the model's vocabulary"):
        runner.submit(prompt("hi", context=(5, 99999, -1)))
    with pytest.raises(InvalidArgument, match=r"context\[0\] is token id -1"):
        runner.submit(prompt("hi", context=(-1,)))


def test_context_is_for_prompts_not_chats(runner: ModelRunner) -> None:
    with pytest.raises(InvalidArgument, match="context is only accepted with a prompt"):
        runner.submit(GenerationRequest("chat-ctx", is_chat=True, messages=(ChatMessage("user", "hi"),), context=(1, 2)))


def test_a_context_longer_than_num_ctx_is_refused(runner: ModelRunner) -> None:
    with pytest.raises(InvalidArgument, match="does not fit the context of 32 tokens"):
        runner.submit(prompt("hi", context=tuple(range(10, 60)), options=SamplingOptions(num_ctx=32)))


def test_context_and_want_prompt_tokens_cross_the_wire() -> None:
    request = over_the_wire(GenerationRequest(request_id="p", prompt="x", context=(1, 2, 3), want_prompt_tokens=True))
    assert request.context == (1, 2, 3) and request.want_prompt_tokens


def test_a_template_that_writes_bos_does_not_repeat_it_in_a_continuation(tmp_path: Path) -> None:
    import json

    from tests.fixtures.tiny_model import CHAT_TEMPLATE, write_tiny_model

    path = write_tiny_model(tmp_path / "bos")
    config = json.loads((path / "tokenizer_config.json").read_text())
    config["chat_template"] = "{{ bos_token }}" + CHAT_TEMPLATE
    (path / "tokenizer_config.json").write_text(json.dumps(config))
    runner = ModelRunner(path, num_parallel=1, max_queue=1)
    bos = runner.tokenizer.bos_token_id
    first, answer = generated(runner, prompt("Hello"))
    assert first[0] == bos
    continued, _ = generated(runner, prompt("Again", context=(*first, *answer)))
    assert continued.count(bos) == 1
