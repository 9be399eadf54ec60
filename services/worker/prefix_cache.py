"""PrefixCache: KV caches of finished sequences, keyed by their tokens, reused by later prompts.

A multi-turn chat resends the whole conversation each turn, and many requests share a system
prompt; the KV state of such a prefix is already known from an earlier request. `lookup` finds
the longest stored prefix of a new prompt (or a stored sequence that shares a longer prefix
with it, trimmed back), and hands out a private copy: the batch then evaluates only the rest.

The entries live in mlx-lm's `LRUPromptCache`: its trie of token sequences, its byte count, its
eviction (least recently used first, finished sequences before system-prompt checkpoints) and
its dropping of the stored prefixes a new trimmable sequence covers. This module adds what that
one does not do: a hit always leaves a token to evaluate, a hit counts as a use for the eviction
order, a sequence that a stored one already covers is not stored again, a cache over the byte
bound is refused, and the disk tier. Engine thread only (MLX arrays belong to the thread's
stream); `nbytes` may be read from any thread.

With a `DiskPrefixCache` behind it (disk_cache.py), long sequences are also written to disk, and
a prompt whose longest stored prefix is on disk only (a new worker, or one whose memory evicted
it) loads it from there; the memory cache keeps it from then on. Memory wins a tie.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, replace
from typing import Any, Literal

import mlx.core as mx
from mlx_lm.models.cache import LRUPromptCache, can_trim_prompt_cache, trim_prompt_cache

from .disk_cache import DiskPrefixCache

_MODEL = "model"  # LRUPromptCache keys its entries by model; one cache serves one model

# LRUPromptCache's kinds of entry, evicted in this order: "assistant" (a finished sequence) while
# any is stored, the newest included, then "system" (the KV state of a system prompt alone, which
# serves every session that starts with it). mlx-lm's third kind, "user", is not used here.
CacheType = Literal["assistant", "system"]


@dataclass(frozen=True)
class CacheHit:
    """A private KV cache holding `cached` prompt tokens; `rest` must still be evaluated."""

    cache: list[Any]
    cached: int
    rest: list[int]
    source: str = "memory"   # or "disk"


class _Stored(list):
    """One entry's per-layer caches, knowing the tokens they hold and the entry's kind.

    `LRUPromptCache.fetch_nearest_cache` hands back a deep copy of an entry without saying which
    one; the copy's `source` says it, so that the hit can count as a use of that entry.
    """

    def __init__(self, layers: list[Any], tokens: list[int], cache_type: CacheType, source: _Stored | None = None) -> None:
        super().__init__(layers)
        self.tokens = tokens
        self.cache_type = cache_type
        self.source = source

    def __deepcopy__(self, memo: dict[int, Any]) -> _Stored:
        return _Stored([copy.deepcopy(c, memo) for c in self], self.tokens, self.cache_type, source=self)


class PrefixCache:
    """LRU store of per-layer KV caches keyed by the token sequence they hold."""

    def __init__(self, *, max_bytes: int, max_entries: int, disk: DiskPrefixCache | None = None) -> None:
        if max_bytes < 0 or max_entries < 0:
            raise ValueError("max_bytes and max_entries must be >= 0")
        self.max_bytes = max_bytes
        self.max_entries = max_entries
        self.disk = disk
        self._store = LRUPromptCache(max_size=max_entries, max_bytes=max_bytes)
        self.nbytes = 0  # the store's count, set after each change: other threads never see one under way

    def __len__(self) -> int:
        return len(self._store)

    def lookup(self, tokens: list[int]) -> CacheHit | None:
        """The longest reusable prefix of `tokens`, leaving at least one token to evaluate.

        None when nothing useful is stored. The returned cache is a copy: the caller may
        extend it freely without touching what is stored. The disk is read only when it holds
        a longer prefix than memory does.
        """
        hit = self._lookup_memory(tokens)
        found = self.disk.find(tokens) if self.disk is not None and len(tokens) >= 2 else None
        if found is None or (hit is not None and hit.cached >= found.reusable):
            return hit
        cache = self.disk.load(found.entry)
        if cache is None:
            return hit
        entry_tokens = found.entry.tokens.tolist()
        self._insert_memory(entry_tokens, cache, "assistant")
        kept = self._lookup_memory(tokens)
        if kept is not None and kept.cached >= found.reusable:
            return replace(kept, source="disk")
        # Not kept (larger than the memory bound, or no memory cache): the loaded cache serves alone.
        trim_prompt_cache(cache, len(entry_tokens) - found.reusable)
        return CacheHit(cache=cache, cached=found.reusable, rest=list(tokens[found.reusable:]), source="disk")

    def insert(self, tokens: list[int], cache: list[Any], *, prompt_tokens: int | None = None,
               cache_type: CacheType = "assistant") -> None:
        """Store `cache`, which holds the KV state of exactly `tokens` (`prompt_tokens` of them the
        prompt); the cache is kept as is, and handed to the disk cache when there is one.
        `cache_type` "system" marks a system prompt's checkpoint, evicted after every finished
        sequence."""
        self._insert_memory(tokens, cache, cache_type)
        if self.disk is not None and tokens and cache:
            self.disk.save(tokens, cache, prompt_tokens=prompt_tokens)

    def close(self, timeout: float = 1.5) -> None:
        """Finish the disk writes under way (within `timeout`) before the process exits."""
        if self.disk is not None:
            self.disk.close(timeout)

    def clear(self) -> None:
        """Drop every entry (e.g. when the batch's state is unknown after a failure)."""
        self._store = LRUPromptCache(max_size=self.max_entries, max_bytes=self.max_bytes)
        self.nbytes = 0

    def _lookup_memory(self, tokens: list[int]) -> CacheHit | None:
        if len(tokens) < 2 or not len(self._store):
            return None
        tokens = list(tokens)
        found, rest = self._store.fetch_nearest_cache(_MODEL, tokens)
        if found is not None and not rest:
            # The prompt itself is stored, but the batch needs a token to evaluate for the next
            # logits: cut the copy back by one, or else take the best entry for all but the last.
            if can_trim_prompt_cache(found):
                trim_prompt_cache(found, 1)
                rest = tokens[-1:]
            else:
                found, rest = self._store.fetch_nearest_cache(_MODEL, tokens[:-1])
                rest = [*rest, tokens[-1]]
        if found is None:
            return None
        self._touch(found.source)
        return CacheHit(cache=list(found), cached=len(tokens) - len(rest), rest=list(rest))

    def _insert_memory(self, tokens: list[int], cache: list[Any], cache_type: CacheType) -> None:
        """Keep `cache` (exactly `tokens`) in memory.

        Not when a stored trimmable sequence extends `tokens` (it serves every prompt this one
        would; it counts as used instead), nor when the cache alone is over the byte bound
        (LRUPromptCache would empty itself trying to fit it). The store drops the stored
        prefixes of a trimmable `tokens` and evicts until both bounds hold.
        """
        if not tokens or not cache or self.max_entries == 0:
            return
        tokens = list(tokens)
        if can_trim_prompt_cache(cache) and (longer := self._stored_extension(tokens)) is not None:
            self._touch(longer)
            return
        mx.eval([c.state for c in cache])  # detach from the batch's arrays before keeping it
        if sum(c.nbytes for c in cache) > self.max_bytes:
            return
        self._store.insert_cache(_MODEL, tokens, _Stored(cache, tokens, cache_type), cache_type=cache_type)
        self.nbytes = self._store.nbytes

    def _stored_extension(self, tokens: list[int]) -> _Stored | None:
        """The stored trimmable sequence that extends `tokens` past their end, if any."""
        found, _ = self._store.fetch_nearest_cache(_MODEL, tokens)  # a lazy copy, never evaluated
        if found is None:
            return None
        stored = found.source.tokens
        return found.source if len(stored) > len(tokens) and stored[: len(tokens)] == tokens else None

    def _touch(self, entry: _Stored) -> None:
        """Count a use of `entry`: fetching leaves LRUPromptCache's order as it was, while
        inserting an entry again moves it to the most recent end of its kind's queue."""
        self._store.insert_cache(_MODEL, entry.tokens, entry, cache_type=entry.cache_type)
        self.nbytes = self._store.nbytes
