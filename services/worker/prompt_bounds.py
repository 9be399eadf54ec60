"""A prompt that cannot fit the context is refused before it is tokenized whole.

Tokenizing a 31 MB prompt took 25 s and 1.4 GB (a fast tokenizer keeps offsets and more per token)
only to learn that it did not fit. Two cheaper proofs come first:

1. Characters. No token of the vocabulary stands for more than `longest` characters of text (a
   byte-level vocabulary writes one character per byte, SentencePiece one per character, so the
   length of its longest entry bounds it). Normalizers may shrink text before it is matched (NFC
   composes "e" + U+0301 into one character, Hangul jamo three into one), at most SHRINK times. So
   a text longer than context × longest × SHRINK characters cannot fit: refused at once, untouched.
   A tokenizer whose normalizer or pre-tokenizer deletes characters (BERT's accent and whitespace
   stripping, SentencePiece's precompiled maps, a removing split) gets no character bound.
2. Pieces. A text longer than COUNT_ABOVE × context characters is counted in pieces of about
   PIECE_CHARS characters, cut at whitespace, and refused as soon as the count, less MARGIN_PER_CUT
   tokens for each cut (merges across a cut, a piece's own leading marker), reaches the context.
   Between pieces, `alive()` is asked: a request whose client left or whose deadline passed stops
   there (Cancelled). Memory is one piece's encoding at a time.

What passes both is tokenized whole as before, and is then at most COUNT_ABOVE × context
characters, or proved by its pieces to be about the context's length.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from mlxserve.services.common.errors import Cancelled, InvalidArgument

SHRINK = 4
PIECE_CHARS = 64 * 1024
MARGIN_PER_CUT = 8
COUNT_ABOVE = 4
CUT_SEARCH = 1024  # how far back from a piece's end a whitespace is looked for

# Normalizers and pre-tokenizers (tokenizer.json "type"s) that can delete characters of the text.
_DELETING = frozenset({"BertNormalizer", "StripAccents", "Strip", "Precompiled", "BertPreTokenizer", "Whitespace",
                       "WhitespaceSplit", "CharDelimiterSplit"})



class PromptTooLong(InvalidArgument):
    """The prompt cannot fit the context; `message` says by what measure (characters or tokens)."""


@dataclass(frozen=True)
class PromptBounds:
    """What one tokenizer allows to be proved about a text's length before tokenizing it whole."""

    chars_per_token: int  # a text of more than context × this many characters cannot fit; 0: no such bound
    count_pieces: bool = True  # False: only the character bound (an exact count is wanted below it)

    @classmethod
    def for_tokenizer(cls, tokenizer: Any) -> PromptBounds:
        """The bound for `tokenizer`: its longest vocabulary entry × SHRINK, or 0 when it can delete text
        (or its vocabulary or pipeline cannot be read)."""
        longest = _longest_entry(tokenizer)
        if not longest or _deletes_characters(tokenizer):
            return cls(0)
        return cls(longest * SHRINK)

    def characters_only(self) -> PromptBounds:
        """These bounds without the piecewise count: what CountTokens uses, since its answer must be exact."""
        return PromptBounds(self.chars_per_token, count_pieces=False)

    def max_chars(self, context: int) -> int | None:
        """The most characters a prompt for `context` tokens may have (None: no character bound)."""
        return context * self.chars_per_token if self.chars_per_token else None

    def check(self, tokenizer: Any, text: str, context: int, alive: Callable[[], bool] | None = None) -> None:
        """Raise PromptTooLong if `text` provably makes `context` tokens or more (the prompt must leave room
        for one token), Cancelled if `alive()` turns false while counting; else return, having spent at most
        one pass of piecewise tokenization."""
        limit = self.max_chars(context)
        if limit is not None and len(text) > limit:
            raise PromptTooLong(f"the prompt is at least {len(text)} characters, which does not fit the context of "
                                f"{context} tokens (at most {limit} characters can)")
        if not self.count_pieces or len(text) <= COUNT_ABOVE * max(context, 1) or len(text) <= PIECE_CHARS:
            return
        counted, cuts, start = 0, 0, 0
        while start < len(text):
            if alive is not None and not alive():
                raise Cancelled("the request was cancelled while its prompt was being tokenized")
            end = _cut(text, start + PIECE_CHARS)
            counted += len(tokenizer.encode(text[start:end], add_special_tokens=False))
            cuts += start > 0
            start = end
            at_least = counted - MARGIN_PER_CUT * cuts
            if at_least >= context:
                raise PromptTooLong(f"the prompt is more than {at_least} tokens, which does not fit the context of "
                                    f"{context} tokens")


def _cut(text: str, end: int) -> int:
    """Where a piece ending near `end` stops: before the last whitespace in the CUT_SEARCH characters
    before it (so the next piece starts as the word does in the whole text), else at `end`."""
    if end >= len(text):
        return len(text)
    for i in range(end, max(end - CUT_SEARCH, 1), -1):
        if text[i].isspace() and not text[i - 1].isspace():
            return i
    return end


def _longest_entry(tokenizer: Any) -> int:
    """Characters in the longest entry of the vocabulary (added tokens included); 0 if it cannot be read."""
    try:
        vocab = tokenizer.get_vocab() if hasattr(tokenizer, "get_vocab") else tokenizer.vocab
        return max((len(entry) for entry in vocab), default=0)
    except Exception:  # noqa: BLE001 - a tokenizer without a readable vocabulary gets no character bound
        return 0


def _deletes_characters(tokenizer: Any) -> bool:
    """Whether the tokenizer's pipeline may drop characters (True when it cannot be inspected)."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is None:
        return True
    try:
        pipeline = json.loads(backend.to_str())
    except Exception:  # noqa: BLE001 - unknown: assume the worst
        return True
    return _has_deleting_step(pipeline.get("normalizer")) or _has_deleting_step(pipeline.get("pre_tokenizer"))


def _has_deleting_step(step: Any) -> bool:
    if not isinstance(step, dict):
        return False
    kind = step.get("type")
    if kind in _DELETING:
        return True
    if kind == "Split" and step.get("behavior") == "Removed":
        return True
    if kind == "Replace" and len(str(step.get("content", ""))) < _pattern_length(step.get("pattern")):
        return True  # a replacement shorter than what it replaces (a regex of unknown length counts as such)
    parts = step.get("normalizers") or step.get("pretokenizers") or []
    return any(_has_deleting_step(part) for part in parts)


def _pattern_length(pattern: Any) -> int:
    """Characters a Replace pattern matches: its string's length, or unbounded for a regex."""
    if isinstance(pattern, dict) and "String" in pattern:
        return len(str(pattern["String"]))
    return 1 << 30
