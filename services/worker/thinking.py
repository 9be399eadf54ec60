"""Thinking budgets: at most so many tokens of reasoning, then the model must answer.

Anthropic's `thinking.budget_tokens` arrives as `thinking_budget`. `ThinkingBudget` is an mlx-lm
logits processor: it follows the output through the tokenizer's think markers, counts the tokens
generated inside a think block (all blocks together), and once the budget is spent forces the
end-of-thinking marker, one token per step when the marker is several tokens long; the answer
follows as usual. Its state stays on the device (no `.item()` per step), so a request with a
budget does not stall the batch's pipelined decode.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import mlx.core as mx

from .outputs import starts_in_thinking


class ThinkingBudget:
    """Forces `end` once `budget` tokens were generated inside a `start` ... `end` block.

    Called as `processor(tokens, logits)` with the row's context (1-D) and logits (1, vocab).
    The first call sees the prompt alone; each later call sees one more generated token at the
    end (the convention of services/worker/sampling.py). `inside` says whether the prompt left a
    think block open (templates that open it in the generation prompt).
    """

    def __init__(self, start: Sequence[int], end: Sequence[int], budget: int, *, inside: bool) -> None:
        if not start or not end:
            raise ValueError("think markers must be at least one token each")
        self.budget = budget
        self._start = mx.array(list(start), dtype=mx.int32)
        self._end = mx.array(list(end), dtype=mx.int32)
        self._inside = mx.array(inside)
        self._spent = mx.array(0, dtype=mx.int32)  # tokens generated inside think blocks so far
        self._calls = 0

    def __call__(self, tokens: mx.array, logits: mx.array) -> mx.array:
        if self._calls:
            self._follow(tokens)
        self._calls += 1
        force = self._inside & (self._spent >= self.budget)
        target = mx.take(self._end, self._written_of_end(tokens))
        only_target = mx.where(mx.arange(logits.shape[-1]) == target, logits, mx.array(-mx.inf, dtype=logits.dtype))
        return mx.where(force, only_target, logits)

    def _follow(self, tokens: mx.array) -> None:
        """Account for the token just generated: written inside a block, it is thought (unless it completes
        the end marker); outside, it may complete the start marker."""
        was_inside = self._inside
        ended = _ends_with(tokens, self._end)
        self._spent = self._spent + (was_inside & mx.logical_not(ended)).astype(mx.int32)
        self._inside = mx.where(was_inside, mx.logical_not(ended), _ends_with(tokens, self._start))

    def _written_of_end(self, tokens: mx.array) -> mx.array:
        """How many leading tokens of the end marker the output already ends with (0 for a one-token
        marker): forcing resumes from there, so a marker is completed rather than started over."""
        written = mx.array(0, dtype=mx.int32)
        for n in range(1, self._end.size):
            if tokens.size >= n:
                written = mx.where(mx.all(tokens[-n:] == self._end[:n]), n, written)
        return written


def _ends_with(tokens: mx.array, marker: mx.array) -> mx.array:
    n = marker.size
    if tokens.size < n:
        return mx.array(False)
    return mx.all(tokens[-n:] == marker)


def thinking_budget(tokenizer: Any, budget: int | None, prompt_tokens: Sequence[int]) -> ThinkingBudget | None:
    """The budget processor for a request, or None: no budget asked, or a model without think markers
    (it never reasons in a block, so there is nothing to cap)."""
    if budget is None or not getattr(tokenizer, "has_thinking", False):
        return None
    return ThinkingBudget(tokenizer.think_start_tokens, tokenizer.think_end_tokens, budget,
                          inside=starts_in_thinking(tokenizer, prompt_tokens))
