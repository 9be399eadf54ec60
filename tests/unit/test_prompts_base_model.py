"""A model without a chat template (a base model): /api/generate completes the prompt as it is,
as Ollama's default template `{{ .Prompt }}` does; what needs a template says so."""

from __future__ import annotations

import pytest

from mlxserve.services.common.errors import Unsupported
from mlxserve.services.worker.prompts import ChatMessage, GenerationRequest, encode_prompt

BOS = 2


class BaseModelTokenizer:
    """The two things encode_prompt asks of a tokenizer; BOS comes from its post-processor."""

    has_chat_template = False

    def encode(self, text: str, add_special_tokens: bool = True) -> list[int]:
        return ([BOS] if add_special_tokens else []) + [ord(c) for c in text]


def test_generate_on_a_base_model_continues_the_prompt_with_bos() -> None:
    tokens = encode_prompt(BaseModelTokenizer(), GenerationRequest("r1", prompt="Once upon"))
    assert tokens == [BOS, *map(ord, "Once upon")]


def test_raw_and_plain_generate_tokenize_alike_on_a_base_model() -> None:
    tok = BaseModelTokenizer()
    assert encode_prompt(tok, GenerationRequest("r1", prompt="x y", raw=True)) == \
        encode_prompt(tok, GenerationRequest("r2", prompt="x y"))


@pytest.mark.parametrize("request_", [
    GenerationRequest("s", prompt="hi", system="be brief"),
    GenerationRequest("c", is_chat=True, messages=(ChatMessage("user", "hi"),)),
])
def test_what_needs_a_template_is_refused_on_a_base_model(request_: GenerationRequest) -> None:
    with pytest.raises(Unsupported, match="no chat template"):
        encode_prompt(BaseModelTokenizer(), request_)
