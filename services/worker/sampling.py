"""Per-request sampling: validated options, the settings the batch step samples each row with, and
the request's logits processors (repeat/presence/frequency penalties, logit bias).

Every request in a batch has its own PRNG key (batch_step.RowSamplers keeps one per row), so a
seeded request produces the same tokens whether it is decoded alone or next to others: nothing
reads or advances MLX's global random state.
"""

from __future__ import annotations

import os
from collections.abc import Callable

import mlx.core as mx
from mlx_lm.sample_utils import make_logits_processors as mlx_logits_processors
from mlx_lm.sample_utils import make_repetition_penalty

# The options type is part of the request that the gateway sends (one definition); re-exported here.
from mlxserve.v1.requests import DEFAULT_TEMPERATURE, SamplingOptions  # noqa: F401

from .batch_step import GREEDY, RowSampling

# mlx-lm's per-row hook: (tokens so far: the prompt, then each generated token, 1-D; logits (1, vocab)).
LogitsProcessor = Callable[[mx.array, mx.array], mx.array]

# Ollama's defaults for options a request leaves unset.
DEFAULT_TOP_K = 40
DEFAULT_TOP_P = 0.9
DEFAULT_MIN_P = 0.0
# repeat_penalty's window when a request sets the penalty but not the window (Ollama's default).
# The penalty itself is off unless asked for, so plain greedy decoding stays the model's argmax.
DEFAULT_REPEAT_LAST_N = 64


def make_sampler(options: SamplingOptions) -> RowSampling:
    """The request's sampling settings, for the batch step (batch_step.py) to sample its row with:
    greedy at temperature 0, else top-k, top-p, min-p and temperature with the request's own key."""
    temperature = options.effective_temperature
    if temperature == 0.0:
        return GREEDY
    seed = options.seed if options.seed is not None and options.seed >= 0 else int.from_bytes(os.urandom(8), "little")
    return RowSampling(
        temperature=temperature,
        top_k=DEFAULT_TOP_K if options.top_k is None else options.top_k,
        top_p=DEFAULT_TOP_P if options.top_p is None else options.top_p,
        min_p=DEFAULT_MIN_P if options.min_p is None else options.min_p,
        seed=seed,
    )


def make_logits_processors(options: SamplingOptions, context_length: int) -> list[LogitsProcessor]:
    """The request's penalties and biases as mlx-lm logits processors, in the order applied.

    Each processor sees the tokens so far (prompt, then output) and the row's logits. mlx-lm
    calls them once per decode step, starting with the first generated token, so the n-th call
    is the one where the last n tokens are this request's output: that count tells the output
    apart from the prompt (reused prefix-cache tokens included) without knowing how it was fed.
    """
    processors: list[LogitsProcessor] = []
    if options.logit_bias:
        # mlx-lm's own processor (the bias is added as float32, so a bf16 row is promoted: more precise).
        processors += mlx_logits_processors(logit_bias=options.logit_bias)

    penalty = options.repeat_penalty
    window = DEFAULT_REPEAT_LAST_N if options.repeat_last_n is None else options.repeat_last_n
    if window == -1:
        window = options.num_ctx or context_length
    if penalty is not None and penalty != 1.0 and window > 0:
        # llama.cpp's repeat_penalty over the last `window` tokens (prompt included) is exactly mlx-lm's
        # repetition penalty: positive logits divided, negative multiplied, once per distinct token.
        processors.append(make_repetition_penalty(penalty, window))

    # Not mlx-lm's presence/frequency penalties: those look at the last N tokens, prompt included;
    # OpenAI's count the whole output and only the output.

    presence = options.presence_penalty or 0.0
    frequency = options.frequency_penalty or 0.0
    if presence or frequency:
        generated = 0  # calls so far == tokens this request has generated before this step

        def output_penalties(tokens: mx.array, logits: mx.array) -> mx.array:
            nonlocal generated
            n, generated = generated, generated + 1
            if n == 0:
                return logits
            output = tokens[-n:]
            if frequency:
                logits = logits.at[:, output].subtract(mx.array(frequency, dtype=logits.dtype))  # accumulates per occurrence
            if presence:
                logits[:, output] = logits[:, output] - presence  # once per distinct token
            return logits

        processors.append(output_penalties)
    return processors
