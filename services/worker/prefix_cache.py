"""PrefixCache: KV caches of finished sequences, keyed by their tokens, reused by later prompts.

A multi-turn chat resends the whole conversation each turn, and many requests share a system
prompt; the KV state of such a prefix is already known from an earlier request. `lookup` finds
the longest stored prefix of a new prompt (or a stored sequence that shares a longer prefix
with it, trimmed back), and hands out a private copy: the batch then evaluates only the rest.

Bounded in bytes and in entries, evicting the least recently used. Engine thread only (MLX
arrays belong to the thread's stream); `nbytes` may be read from any thread.

With a `DiskPrefixCache` behind it (disk_cache.py), long sequences are also written to disk, and
a prompt whose longest stored prefix is on disk only (a new worker, or one whose memory evicted
it) loads it from there; the memory cache keeps it from then on. Memory wins a tie.
"""

from __future__ import annotations

import collections
import copy
from dataclasses import dataclass, replace
from typing import Any

import mlx.core as mx
from mlx_lm.models.cache import PromptTrie, can_trim_prompt_cache, trim_prompt_cache

from .disk_cache import DiskPrefixCache

_MODEL = "model"  # PromptTrie keys its tries by model; one cache serves one model


@dataclass(frozen=True)
class CacheHit:
    """A private KV cache holding `cached` prompt tokens; `rest` must still be evaluated."""

    cache: list[Any]
    cached: int
    rest: list[int]
    source: str = "memory"   # or "disk"


@dataclass
class _Entry:
    cache: list[Any]
    nbytes: int


class PrefixCache:
    """LRU store of per-layer KV caches keyed by the token sequence they hold."""

    def __init__(self, *, max_bytes: int, max_entries: int, disk: DiskPrefixCache | None = None) -> None:
        if max_bytes < 0 or max_entries < 0:
            raise ValueError("max_bytes and max_entries must be >= 0")
        self.max_bytes = max_bytes
        self.max_entries = max_entries
        self.disk = disk
        self._trie = PromptTrie()
        self._entries: collections.OrderedDict[tuple[int, ...], _Entry] = collections.OrderedDict()  # oldest first
        self.nbytes = 0

    def __len__(self) -> int:
        return len(self._entries)

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
        self._insert_memory(entry_tokens, cache)
        kept = self._lookup_memory(tokens)
        if kept is not None and kept.cached >= found.reusable:
            return replace(kept, source="disk")
        # Not kept (larger than the memory bound, or no memory cache): the loaded cache serves alone.
        trim_prompt_cache(cache, len(entry_tokens) - found.reusable)
        return CacheHit(cache=cache, cached=found.reusable, rest=list(tokens[found.reusable:]), source="disk")

    def insert(self, tokens: list[int], cache: list[Any], *, prompt_tokens: int | None = None) -> None:
        """Store `cache`, which holds the KV state of exactly `tokens` (`prompt_tokens` of them the
        prompt); the cache is kept as is, and handed to the disk cache when there is one."""
        self._insert_memory(tokens, cache)
        if self.disk is not None and tokens and cache:
            self.disk.save(tokens, cache, prompt_tokens=prompt_tokens)

    def close(self, timeout: float = 1.5) -> None:
        """Finish the disk writes under way (within `timeout`) before the process exits."""
        if self.disk is not None:
            self.disk.close(timeout)

    def _lookup_memory(self, tokens: list[int]) -> CacheHit | None:
        if len(tokens) < 2 or not self._entries:
            return None
        found = self._trie.search(_MODEL, tokens)
        candidates: list[tuple[int, tuple[int, ...]]] = []  # (tokens reused, stored key)
        # A stored sequence that shares a prefix with the prompt or extends past it: trim it
        # back to the shared part, minus one token so that the batch has something to evaluate.
        if found.exact is not None:
            candidates.append((len(tokens) - 1, tuple(tokens)))
        if found.longer is not None:
            candidates.append((min(len(tokens) - 1, found.common_prefix), tuple(found.longer)))
        # A stored sequence that is a prefix of the prompt: used as it is.
        if found.shorter is not None and len(found.shorter) < len(tokens):
            candidates.append((len(found.shorter), tuple(found.shorter)))
        for reused, key in sorted(candidates, reverse=True):
            entry = self._entries[key]
            excess = len(key) - reused
            if reused <= 0 or (excess > 0 and not can_trim_prompt_cache(entry.cache)):
                continue
            cache = copy.deepcopy(entry.cache)
            if excess > 0:
                trim_prompt_cache(cache, excess)
            self._entries.move_to_end(key)
            return CacheHit(cache=cache, cached=reused, rest=list(tokens[reused:]))
        return None

    def _insert_memory(self, tokens: list[int], cache: list[Any]) -> None:
        """Keep `cache` (exactly `tokens`) in memory.

        Redundant entries go: stored prefixes of `tokens` (the new cache can be trimmed to
        them), and `tokens` itself when a stored sequence extends it. Then the least recently
        used entries are evicted until both bounds hold; a cache larger than the byte bound
        alone is not stored.
        """
        if not tokens or not cache or self.max_entries == 0:
            return
        key = tuple(tokens)
        trimmable = can_trim_prompt_cache(cache)
        if trimmable and key not in self._entries:
            found = self._trie.search(_MODEL, tokens)
            if found.longer is not None and found.common_prefix == len(tokens):
                longer = tuple(found.longer)
                if can_trim_prompt_cache(self._entries[longer].cache):
                    self._entries.move_to_end(longer)
                    return
        mx.eval([c.state for c in cache])  # detach from the batch's arrays before keeping it
        nbytes = sum(c.nbytes for c in cache)
        if nbytes > self.max_bytes:
            return
        self._pop(key)
        entry = _Entry(cache, nbytes)
        self._trie.add(_MODEL, tokens, entry)
        self._entries[key] = entry
        self.nbytes += nbytes
        if trimmable:
            for length, _ in self._trie.pop_prefixes(_MODEL, tokens):
                self.nbytes -= self._entries.pop(key[:length]).nbytes
        while len(self._entries) > self.max_entries or self.nbytes > self.max_bytes:
            self._pop(next(iter(self._entries)))

    def clear(self) -> None:
        """Drop every entry (e.g. when the batch's state is unknown after a failure)."""
        self._trie = PromptTrie()
        self._entries.clear()
        self.nbytes = 0

    def _pop(self, key: tuple[int, ...]) -> None:
        entry = self._entries.pop(key, None)
        if entry is not None:
            self._trie.pop(_MODEL, list(key))
            self.nbytes -= entry.nbytes
