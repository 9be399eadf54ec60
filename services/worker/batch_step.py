"""The decode step of the worker's batch: one sampling computation for every row.

mlx-lm's `GenerationBatch._step` samples with one callable per row: when the rows' samplers are
not the same object (and each request needs its own temperature, filters and PRNG key), it slices
the logits per row, builds one small sampling graph per row and concatenates them, every step.
Here every row's settings are arrays (temperature, top-k, top-p, min-p, a PRNG key per row) and
the whole batch samples in one computation; logits processors (penalties, bias, thinking budget,
constraints) stay per row, and only the rows that have them are sliced out and written back.

Why subclasses of mlx-lm's batches rather than one shared sampler: a sampler is called with the
logits alone and cannot know which request each row belongs to (rows move as requests join and
leave), and the per-row keys must follow their rows through `filter` and `extend`. Overriding
`_step` (and the two places where batches are made) keeps everything else of mlx-lm's continuous
batching: prefill, segments, prompt caches, stop sequences. The price is dependence on those
internals; pyproject pins mlx-lm below 0.33 for it.

At batch 1 (and whenever no row is left-padded) the step also drops the attention mask that
`BatchKVCache` builds each step: with no padding every cached position is visible, which is what
no mask means, and the fused attention kernel is then used as in `stream_generate`. That mask was
the batch-1 gap to `stream_generate` (tests/bench/gpu/engine_gap.py on an H200, 8B shape: the same
pipelined loop over BatchKVCache decodes 131 tok/s with it, 193 without; results in
tests/bench/results/gpu-engine-18.json). Whether rows are padded is read once per batch change (a
small sync, as mlx-lm's own `BatchKVCache.filter` makes).

Seeded requests stay reproducible whatever else is in the batch: each row's key is split once a
step, exactly as a per-request sampler would split its own key, and `mx.vmap` draws each row
with its own key (bit-identical to sampling that row alone).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import mlx.core as mx
from mlx_lm.generate import BatchGenerator, GenerationBatch, PromptProcessingBatch
from mlx_lm.models.cache import BatchKVCache


@dataclass(frozen=True)
class RowSampling:
    """One request's sampling settings: what the batch step turns into a row of its arrays.

    temperature 0 means greedy; top_k 0, top_p 1 and min_p 0 turn that filter off."""

    temperature: float = 0.0
    top_k: int = 0
    top_p: float = 1.0
    min_p: float = 0.0
    seed: int = 0

    @property
    def greedy(self) -> bool:
        return self.temperature == 0.0


GREEDY = RowSampling()

_split_keys = mx.vmap(lambda key: mx.random.split(key))
_categorical = mx.vmap(lambda key, logits: mx.random.categorical(logits, key=key))


def filter_logprobs(logprobs: mx.array, top_k: mx.array, top_p: mx.array, min_p: mx.array) -> mx.array:
    """top-k, then top-p, then min-p, each with its own value per row ((B, 1) arrays), as mlx-lm's
    `apply_top_k`, `apply_top_p` and `apply_min_p` do for one value (ties at the k-th value are kept)."""
    vocab = logprobs.shape[-1]
    neg_inf = mx.array(-float("inf"), logprobs.dtype)
    ascending = mx.sort(logprobs, axis=-1)
    # top-k: keep what is >= the k-th largest value; k = 0 (off) keeps everything.
    kth = mx.where(top_k > 0, vocab - mx.minimum(top_k, vocab), 0).astype(mx.int32)
    logprobs = mx.where(logprobs < mx.take_along_axis(ascending, kth, axis=-1), neg_inf, logprobs)
    ascending = mx.where(ascending < mx.take_along_axis(ascending, kth, axis=-1), neg_inf, ascending)
    # top-p over what top-k left (apply_top_p's rule: drop the tail whose mass above stays >= p).
    probs = mx.exp(ascending.astype(mx.float32))
    mass_above = mx.cumsum(probs, axis=-1, reverse=True, inclusive=False)
    total = mass_above[..., :1] + probs[..., :1]
    dropped = (mass_above >= top_p * total).sum(axis=-1, keepdims=True)
    logprobs = mx.where(logprobs < mx.take_along_axis(ascending, dropped, axis=-1), neg_inf, logprobs)
    # min-p: drop what is below min_p times the top probability (log 0 = -inf: off).
    floor = mx.max(logprobs, axis=-1, keepdims=True) + mx.log(min_p)
    return mx.where(logprobs < floor, neg_inf, logprobs)


class RowSamplers:
    """The batch's per-row sampling state as arrays, kept in row order through filter/extend."""

    def __init__(self, rows: list[RowSampling]) -> None:
        self.rows = list(rows)
        self.keys: mx.array | None = None
        self._settle()
        if self.rows:
            self.keys = mx.stack([mx.random.key(r.seed & 0xFFFF_FFFF_FFFF_FFFF) for r in self.rows])

    def _settle(self) -> None:
        rows = self.rows
        self.all_greedy = all(r.greedy for r in rows)
        self.any_filter = any(not r.greedy and (r.top_k or r.top_p < 1.0 or r.min_p > 0.0) for r in rows)
        col = lambda values, dtype: mx.array(values, dtype=dtype)[:, None]
        self.temperature = col([r.temperature or 1.0 for r in rows], mx.float32)
        self.is_greedy = mx.array([r.greedy for r in rows])
        self.top_k = col([r.top_k for r in rows], mx.int32)
        self.top_p = col([r.top_p for r in rows], mx.float32)
        self.min_p = col([r.min_p for r in rows], mx.float32)

    def filter(self, keep: list[int]) -> None:
        self.rows = [self.rows[i] for i in keep]
        self.keys = self.keys[mx.array(keep)] if keep and self.keys is not None else None
        self._settle()

    def extend(self, other: RowSamplers) -> None:
        self.rows += other.rows
        if other.keys is not None:
            self.keys = other.keys if self.keys is None else mx.concatenate([self.keys, other.keys])
        self._settle()

    def sample(self, logprobs: mx.array) -> mx.array:
        """One token per row of `logprobs` (B, vocab): argmax for greedy rows, else each row's filters,
        temperature and key."""
        greedy = mx.argmax(logprobs, axis=-1)
        if self.all_greedy:
            return greedy  # no key is split: a greedy row consumes no randomness, as before
        split = _split_keys(self.keys)
        self.keys, step_keys = split[:, 0], split[:, 1]
        if self.any_filter:
            logprobs = filter_logprobs(logprobs, self.top_k, self.top_p, self.min_p)
        drawn = _categorical(step_keys, logprobs * (1.0 / self.temperature).astype(logprobs.dtype))
        return mx.where(self.is_greedy, greedy, drawn.astype(greedy.dtype))


class UnpaddedBatchKVCache(BatchKVCache):
    """A BatchKVCache known to have no left padding: a decode step gets no mask, as a single-stream
    KVCache gives it (a class switched in and out, so that no closure ties the cache to itself)."""

    def make_mask(self, N: int, return_array: bool = False, **kwargs: Any) -> Any:
        if N == 1 and kwargs.get("window_size") is None:
            return None
        return super().make_mask(N, return_array=return_array, **kwargs)


class BatchedGeneration(GenerationBatch):
    """mlx-lm's GenerationBatch whose `samplers` are RowSampling settings, sampled in one computation."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        samplers = kwargs.get("samplers") if "samplers" in kwargs else args[5]
        self.rows = RowSamplers([s if isinstance(s, RowSampling) else GREEDY for s in samplers or []])
        self._aligned = False
        super().__init__(*args, **kwargs)

    def extend(self, batch: GenerationBatch) -> None:
        super().extend(batch)
        self.rows.extend(batch.rows)
        self._aligned = False  # the caches' padding changed: look again before the next step

    def filter(self, keep: list[int]) -> None:
        super().filter(keep)
        self.rows.filter(keep)
        self._aligned = False

    def _unmask_if_aligned(self) -> None:
        """With no row left-padded, a decode step needs no mask (checked once per batch change)."""
        caches = [c for c in self.prompt_cache if type(c) in (BatchKVCache, UnpaddedBatchKVCache)]
        if not caches or len(caches) != len(self.prompt_cache):
            return
        aligned = not caches[0].left_padding.any().item()  # every layer is padded alike
        for c in caches:
            c.__class__ = UnpaddedBatchKVCache if aligned else BatchKVCache
        self._aligned = True

    def _step(self) -> tuple[list[int], list[mx.array]]:
        """mlx-lm's `_step`, with batched sampling: the next step is queued before this one is read."""
        self._current_tokens = self._next_tokens
        self._current_logprobs = self._next_logprobs
        inputs = self._current_tokens
        if not self._aligned:
            self._unmask_if_aligned()

        logits = self.model(inputs[:, None], cache=self.prompt_cache)[:, -1, :]

        token_context = []
        rows = [e for e, processors in enumerate(self.logits_processors) if processors]
        if rows:  # only these rows are sliced out and written back
            processed = []
            for e in rows:
                context = self._token_context[e].update_and_fetch(inputs[e : e + 1])
                token_context.append(context)
                row = logits[e : e + 1]
                for processor in self.logits_processors[e]:
                    row = processor(context, row)
                processed.append(row)
            if len(rows) == len(self.uids):
                logits = mx.concatenate(processed, axis=0)
            else:
                logits[mx.array(rows)] = mx.concatenate(processed, axis=0).astype(logits.dtype)

        logprobs = logits - mx.logsumexp(logits, axis=-1, keepdims=True)
        self._next_tokens = self.rows.sample(logprobs)
        self._next_logprobs = list(logprobs)
        mx.async_eval(self._next_tokens, self._next_logprobs, token_context)

        mx.eval(inputs, self._current_logprobs)
        inputs = inputs.tolist()
        for sti, ti in zip(self.tokens, inputs):
            sti.append(ti)
        return inputs, self._current_logprobs


class BatchedPrompts(PromptProcessingBatch):
    """Prompt processing that hands its rows on as a BatchedGeneration."""

    def generate(self, tokens: list[list[int]]) -> BatchedGeneration:
        if any(len(t) > 1 for t in tokens):
            self.prompt([t[:-1] for t in tokens])
        generation = BatchedGeneration(
            self.model, self.uids, mx.array([t[-1] for t in tokens]), self.prompt_cache, self.tokens,
            self.samplers, self.fallback_sampler, self.logits_processors, self.stop_sequences, self.max_tokens,
        )
        self.uids, self.prompt_cache, self.tokens = [], [], []
        self.samplers, self.logits_processors, self.max_tokens = [], [], []
        return generation


class BatchedGenerator(BatchGenerator):
    """BatchGenerator whose per-request `samplers` are `RowSampling` settings (None: greedy)."""

    def __init__(self, model: Any, **kwargs: Any) -> None:
        super().__init__(model, **kwargs)
        self._prompt_batch = BatchedPrompts.empty(self.model, self.sampler, prefill_step_size=self.prefill_step_size)
        self._generation_batch = BatchedGeneration.empty(self.model, self.sampler)

    def _make_batch(self, n: int) -> BatchedPrompts:
        batch = super()._make_batch(n)
        batch.__class__ = BatchedPrompts  # same fields; only how it turns into a generation batch differs
        return batch
