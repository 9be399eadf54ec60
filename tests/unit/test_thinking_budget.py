"""Thinking budgets (Anthropic's thinking.budget_tokens): once a request has thought its budget, the worker
closes the think block (the whole marker, however many tokens it is) and the answer follows.

The processor is driven by hand over scripted outputs; then a tiny model whose vocabulary has <think>
and </think> (tests/fixtures/tool_model.py) runs it through the real runner.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

import mlx.core as mx
import pytest

from mlxserve.services.worker.prompts import ChatMessage, GenerationRequest
from mlxserve.services.worker.runner import ModelRunner
from mlxserve.services.worker.sampling import SamplingOptions
from mlxserve.services.worker.thinking import ThinkingBudget, thinking_budget
from tests.fixtures.tool_model import think_open_model_dir, tool_model_dir  # noqa: F401 - fixtures
from tests.fixtures.runner_driver import drive

VOCAB = 32
START, END = 10, 11


def generate(processor: ThinkingBudget, script: Iterable[int], steps: int, prompt: tuple[int, ...] = (1, 2)) -> list[int]:
    """What a model that would write `script` writes under `processor`: a token the processor forces (the
    only finite logit) replaces the script's next token for that step."""
    script = iter(script)
    context = list(prompt)
    out: list[int] = []
    for _ in range(steps):
        logits = processor(mx.array(context, dtype=mx.int32), mx.zeros((1, VOCAB)))
        allowed = [i for i, v in enumerate(logits[0].tolist()) if v != float("-inf")]
        token = allowed[0] if len(allowed) == 1 else next(script)
        context.append(token)
        out.append(token)
    return out


def test_the_end_marker_is_forced_once_the_budget_is_thought():
    budget = ThinkingBudget([START], [END], 3, inside=False)
    # Before its think block nothing counts; inside, three tokens; then </think>; then the answer, unforced.
    assert generate(budget, [5, START, 6, 7, 8, 9, 9, 9, 9], 9) == [5, START, 6, 7, 8, END, 9, 9, 9]


def test_a_multi_token_end_marker_is_forced_whole_and_a_started_one_completed():
    end = [12, 13, 14]
    assert generate(ThinkingBudget([START], end, 2, inside=True), [6, 7, 8, 8, 8], 7) == [6, 7, 12, 13, 14, 8, 8]
    # The model began the marker itself as the budget ran out: it is completed, not started over.
    assert generate(ThinkingBudget([START], end, 2, inside=True), [6, 12, 8, 8, 8], 6) == [6, 12, 13, 14, 8, 8]


def test_a_model_that_stops_thinking_within_its_budget_is_left_alone():
    assert generate(ThinkingBudget([START], [END], 3, inside=True), [6, END, 7, 7, 7, 7, 7], 7) == [6, END, 7, 7, 7, 7, 7]
    # The budget covers all of a request's thinking: a second block gets what the first left.
    assert generate(ThinkingBudget([START], [END], 3, inside=True), [6, END, 7, START, 8, 8, 8, 9], 7) == [
        6, END, 7, START, 8, 8, END]


def test_a_zero_budget_closes_an_open_think_block_at_once():
    assert generate(ThinkingBudget([START], [END], 0, inside=True), [6, 7], 2) == [END, 6]


def test_no_processor_without_a_budget_or_on_a_model_that_cannot_think(tool_model_dir: Path):
    import mlx_lm

    tokenizer = mlx_lm.load(str(tool_model_dir))[1]
    assert thinking_budget(tokenizer, None, [1, 2]) is None
    assert isinstance(thinking_budget(tokenizer, 8, [1, 2]), ThinkingBudget)

    class Plain:
        has_thinking = False

    assert thinking_budget(Plain(), 8, [1, 2]) is None


@pytest.fixture(scope="module")
def think_open(think_open_model_dir: Path) -> ModelRunner:
    return ModelRunner(think_open_model_dir, num_parallel=2, max_queue=4)


def test_the_runner_closes_the_think_block_at_the_budget_and_the_answer_follows(think_open: ModelRunner):
    end_id = think_open.tokenizer.think_end_id
    # The model could end or close its thinking by itself; biased away, only the budget can close it.
    bias = {end_id: -100.0, **{eos: -100.0 for eos in think_open.eos_token_ids}}

    def run(budget: int | None) -> list:
        request = GenerationRequest(request_id=f"b-{budget}", is_chat=True, messages=(ChatMessage("user", "Why?"),), think=True,
                                    thinking_budget=budget, options=SamplingOptions(temperature=0, num_predict=12, logit_bias=bias))
        think_open.submit(request)
        return drive(think_open)[request.request_id]

    frames = run(4)
    ids = [t for f in frames for t in f.token_ids]
    assert ids[4] == end_id and end_id not in ids[:4] and len(ids) == 12
    thinking, content = "".join(f.thinking for f in frames), "".join(f.text for f in frames)
    assert thinking and content  # four tokens of reasoning, then the answer
    unlimited = [t for f in run(None) for t in f.token_ids]
    assert end_id not in unlimited and unlimited[:4] == ids[:4]  # same reasoning up to the cap
