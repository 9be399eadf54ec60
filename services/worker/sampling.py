"""Per-request sampling: validated options and the sampler callable BatchGenerator calls per row.

Every request in a batch gets its own sampler closure holding its own PRNG key, so a seeded
request produces the same tokens whether it is decoded alone or next to others: nothing reads or
advances MLX's global random state.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Callable

import mlx.core as mx
from mlx_lm.sample_utils import apply_min_p, apply_top_k, apply_top_p

from mlxserve.services.common.errors import InvalidArgument

Sampler = Callable[[mx.array], mx.array]

# Ollama's defaults for options a request leaves unset.
DEFAULT_TEMPERATURE = 0.8
DEFAULT_TOP_K = 40
DEFAULT_TOP_P = 0.9
DEFAULT_MIN_P = 0.0


@dataclass(frozen=True)
class SamplingOptions:
    """What a request may ask of the decoder. `None` means "use the default"."""

    temperature: float | None = None
    top_p: float | None = None
    top_k: int | None = None
    min_p: float | None = None
    seed: int | None = None          # < 0 or None: a fresh random seed
    num_predict: int | None = None   # max new tokens; < 0 or None: until the context is full
    stop: tuple[str, ...] = field(default_factory=tuple)
    num_ctx: int | None = None

    def validate(self) -> None:
        """Raise InvalidArgument naming the first option out of range."""
        if self.temperature is not None and not (0.0 <= self.temperature <= 100.0):
            raise InvalidArgument(f"temperature must be between 0 and 100, got {self.temperature}")
        if self.top_p is not None and not (0.0 < self.top_p <= 1.0):
            raise InvalidArgument(f"top_p must be in (0, 1], got {self.top_p}")
        if self.top_k is not None and self.top_k < 0:
            raise InvalidArgument(f"top_k must be >= 0 (0 disables it), got {self.top_k}")
        if self.min_p is not None and not (0.0 <= self.min_p <= 1.0):
            raise InvalidArgument(f"min_p must be in [0, 1], got {self.min_p}")
        if self.num_ctx is not None and self.num_ctx <= 0:
            raise InvalidArgument(f"num_ctx must be positive, got {self.num_ctx}")
        if self.num_predict == 0:
            raise InvalidArgument("num_predict must not be 0 (use a positive count, or -1 for no limit)")
        for s in self.stop:
            if not s:
                raise InvalidArgument("stop strings must not be empty")

    @property
    def effective_temperature(self) -> float:
        return DEFAULT_TEMPERATURE if self.temperature is None else self.temperature


def greedy(logprobs: mx.array) -> mx.array:
    """Argmax. One shared function object, so an all-greedy batch samples in one call."""
    return mx.argmax(logprobs, axis=-1)


def make_sampler(options: SamplingOptions) -> Sampler:
    """The sampler for one request: greedy at temperature 0, else filtered categorical sampling."""
    temperature = options.effective_temperature
    if temperature == 0.0:
        return greedy
    top_k = DEFAULT_TOP_K if options.top_k is None else options.top_k
    top_p = DEFAULT_TOP_P if options.top_p is None else options.top_p
    min_p = DEFAULT_MIN_P if options.min_p is None else options.min_p
    seed = options.seed if options.seed is not None and options.seed >= 0 else int.from_bytes(os.urandom(8), "little")
    key = mx.random.key(seed & 0xFFFF_FFFF_FFFF_FFFF)

    def sample(logprobs: mx.array) -> mx.array:
        nonlocal key
        # One split per decode step: the key sequence depends only on this request's seed.
        key, step_key = mx.random.split(key)
        if 0 < top_k < logprobs.shape[-1]:
            logprobs = apply_top_k(logprobs, top_k)
        if top_p < 1.0:
            logprobs = apply_top_p(logprobs, top_p)
        if min_p > 0.0:
            logprobs = apply_min_p(logprobs, min_p)
        return mx.random.categorical(logprobs * (1.0 / temperature), key=step_key)

    return sample
