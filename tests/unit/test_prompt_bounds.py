"""A prompt that cannot fit is refused before it is tokenized whole (issue 21, item 1): by its length in
characters at once, else by counting it in pieces; a request whose caller is gone stops while counting."""

from __future__ import annotations

from typing import Any

import pytest
from tokenizers import Tokenizer, models, normalizers, pre_tokenizers
from transformers import PreTrainedTokenizerFast

from mlxserve.services.common.errors import Cancelled, InvalidArgument
from mlxserve.services.worker.prompt_bounds import PIECE_CHARS, PromptBounds, PromptTooLong
from mlxserve.services.worker.prompts import ChatMessage, GenerationRequest, fit_prompt
from mlxserve.services.worker.runner import ModelRunner
from mlxserve.services.worker.sampling import SamplingOptions
from tests.fixtures.tiny_model import write_tiny_model


@pytest.fixture(scope="module")
def runner(tmp_path_factory: pytest.TempPathFactory) -> ModelRunner:
    return ModelRunner(write_tiny_model(tmp_path_factory.mktemp("bounds-model")), num_parallel=2, max_queue=4)


class CountingTokenizer:
    """The model's tokenizer, noting how many characters each `encode` was handed."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner
        self.encoded: list[int] = []

    def encode(self, text: str, **kwargs: Any) -> list[int]:
        self.encoded.append(len(text))
        return self.inner.encode(text, **kwargs)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)


def raw(text: str, num_ctx: int) -> GenerationRequest:
    return GenerationRequest("b", prompt=text, raw=True, options=SamplingOptions(num_ctx=num_ctx))


def test_a_prompt_past_the_character_bound_is_refused_without_being_tokenized(runner: ModelRunner) -> None:
    tok = CountingTokenizer(runner.tokenizer)
    limit = runner.prompt_bounds.max_chars(64)
    assert limit is not None
    with pytest.raises(InvalidArgument, match=rf"the prompt is at least {limit + 6} characters, which does not fit the context of 64 tokens"):
        fit_prompt(tok, raw("x" * (limit + 6), 64), 64, bounds=runner.prompt_bounds)
    assert tok.encoded == []


def test_the_character_bound_holds_for_the_longest_token(runner: ModelRunner) -> None:
    # A text made of the vocabulary's longest entry, as many times as the context holds, still fits the bound.
    longest = max(runner.tokenizer.get_vocab(), key=len)
    limit = runner.prompt_bounds.max_chars(100)
    assert limit is not None and limit >= 100 * len(longest)


def test_a_long_prompt_under_the_character_bound_is_refused_after_one_piece(runner: ModelRunner) -> None:
    tok = CountingTokenizer(runner.tokenizer)
    text = "the quick brown fox jumps over the lazy dog " * 20_000  # 880,000 characters: far more than 2,048 tokens
    bounds = PromptBounds(chars_per_token=1_000)  # a character bound too loose to refuse it
    with pytest.raises(PromptTooLong, match=r"the prompt is more than \d+ tokens, which does not fit the context of 2048 tokens"):
        fit_prompt(tok, raw(text, 2048), 2048, bounds=bounds)
    assert sum(tok.encoded) <= PIECE_CHARS  # one piece was enough, the whole text never went in


def test_a_prompt_that_fits_is_tokenized_as_before(runner: ModelRunner) -> None:
    text = "Once upon a time there was a small village by the sea. " * 2_500  # counted in pieces first, then whole
    assert len(text) > 2 * PIECE_CHARS
    tokens, dropped = fit_prompt(runner.tokenizer, raw(text, 1_000_000), 1_000_000, bounds=runner.prompt_bounds)
    assert tokens == runner.tokenizer.encode(text) and dropped == 0


def test_counting_stops_when_the_caller_is_gone(runner: ModelRunner) -> None:
    tok = CountingTokenizer(runner.tokenizer)
    answers = iter([True, False])
    with pytest.raises(Cancelled):
        fit_prompt(tok, raw("hello there " * 100_000, 100_000), 100_000, bounds=PromptBounds(chars_per_token=1_000),
                   alive=lambda: next(answers))
    assert len(tok.encoded) == 1


def test_a_chat_whose_oldest_message_is_huge_loses_it_instead_of_being_refused(runner: ModelRunner) -> None:
    tok = CountingTokenizer(runner.tokenizer)
    huge = ChatMessage("user", "hello " * 1_000_000)
    request = GenerationRequest("c", is_chat=True, options=SamplingOptions(num_ctx=256),
                                messages=(huge, ChatMessage("assistant", "hi"), ChatMessage("user", "Why is the sky blue?")))
    tokens, dropped = fit_prompt(tok, request, 256, bounds=runner.prompt_bounds)
    assert dropped == 1 and "sky blue" in runner.tokenizer.decode(tokens)
    assert max(tok.encoded) < 1_000  # the huge message was never tokenized


def test_a_huge_last_message_is_refused_at_once_by_submit(runner: ModelRunner) -> None:
    request = GenerationRequest("d", is_chat=True, messages=(ChatMessage("user", "hello " * 5_400_000),),
                                options=SamplingOptions(num_predict=1))
    with pytest.raises(InvalidArgument, match=r"at least 32400\d+ characters, which does not fit the context of 2048 tokens"):
        runner.submit(request)
    assert runner.counts() == (0, 0)


def test_a_request_cancelled_while_its_submit_was_tokenizing_is_not_queued(runner: ModelRunner) -> None:
    tokenizer = runner.tokenizer
    cancelled: list[bool] = []

    class CancelledMidway(CountingTokenizer):
        def encode(self, text: str, **kwargs: Any) -> list[int]:
            cancelled.append(runner.cancel("early"))  # the gateway gave up while Submit was tokenizing
            return super().encode(text, **kwargs)

    runner.tokenizer = CancelledMidway(tokenizer)
    try:
        with pytest.raises(Cancelled):
            runner.submit(GenerationRequest("early", prompt="Hello", raw=True, options=SamplingOptions(num_predict=1)))
    finally:
        runner.tokenizer = tokenizer
    assert cancelled == [True] and runner.counts() == (0, 0)
    assert runner.cancel("early") is False  # nothing of it is kept


def test_a_submit_whose_rpc_ended_is_not_queued(runner: ModelRunner) -> None:
    with pytest.raises(Cancelled):
        runner.submit(GenerationRequest("gone", prompt="Hello", raw=True, options=SamplingOptions(num_predict=1)),
                      alive=lambda: False)
    assert runner.counts() == (0, 0)


def test_a_tokenizer_that_deletes_characters_gets_no_character_bound() -> None:
    # BERT's normalizer strips accents and its pre-tokenizer drops whitespace: a long text may make few tokens.
    inner = Tokenizer(models.WordLevel({"[UNK]": 0, "a": 1}, unk_token="[UNK]"))
    inner.normalizer = normalizers.BertNormalizer()
    inner.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    assert PromptBounds.for_tokenizer(PreTrainedTokenizerFast(tokenizer_object=inner)).chars_per_token == 0
    sequence = Tokenizer(models.WordLevel({"[UNK]": 0, "a": 1}, unk_token="[UNK]"))
    sequence.normalizer = normalizers.Sequence([normalizers.NFC(), normalizers.Replace(" ", "")])
    assert PromptBounds.for_tokenizer(PreTrainedTokenizerFast(tokenizer_object=sequence)).chars_per_token == 0
