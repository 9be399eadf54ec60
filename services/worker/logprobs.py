"""Per-token log-probabilities for the frames: the sampled token and its top alternatives.

mlx-lm hands each generated token's full log-softmax row (after this request's logits
processors) to the runner on the engine thread; only the few numbers asked for leave MLX.
"""

from __future__ import annotations

import functools
from typing import Any

import mlx.core as mx
from mlx_lm.tokenizer_utils import BPEStreamingDetokenizer, SPMStreamingDetokenizer

from mlxserve.v1.frames import TokenLogprob, TopLogprob


@functools.cache
def byte_decoder() -> dict[str, int]:
    """GPT-2's byte-level BPE table, printable character -> byte (the inverse of `bytes_to_unicode`
    in openai/gpt-2's encoder.py): bytes that print stand for themselves, the other 68 are moved to
    U+0100 onwards in byte order. Ours, not mlx-lm's private `_byte_decoder`, which its main branch
    has removed."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    shifted = [b for b in range(256) if b not in printable]
    table = {chr(b): b for b in printable}
    table.update((chr(256 + i), b) for i, b in enumerate(shifted))
    return table


class TokenTexts:
    """Each token id's text and raw bytes, looked up once per id.

    The text is what the tokenizer decodes the token to alone (a piece of a multi-byte character
    decodes to U+FFFD); the bytes are the token's own, so a client can join pieces back together
    (that is what OpenAI's `bytes` field is for).
    """

    def __init__(self, tokenizer: Any) -> None:
        self._tokenizer = tokenizer
        self._kind = type(getattr(tokenizer, "detokenizer", None))  # mlx-lm's wrapper picks the scheme
        self._known: dict[int, tuple[str, list[int]]] = {}

    def __call__(self, token: int) -> tuple[str, list[int]]:
        known = self._known.get(token)
        if known is None:
            text = self._tokenizer.decode([token])
            known = self._known[token] = (text, list(self._raw_bytes(token) or text.encode()))
        return known

    def _raw_bytes(self, token: int) -> bytes | None:
        try:
            piece = self._tokenizer.convert_ids_to_tokens(token)
        except Exception:  # noqa: BLE001 - a tokenizer without the mapping: fall back to the text
            return None
        if not isinstance(piece, str):
            return None
        if issubclass(self._kind, BPEStreamingDetokenizer):
            decoder = byte_decoder()
            if all(c in decoder for c in piece):
                return bytes(decoder[c] for c in piece)
        elif issubclass(self._kind, SPMStreamingDetokenizer):
            if len(piece) == 6 and piece.startswith("<0x") and piece.endswith(">"):
                return bytes([int(piece[3:5], 16)])  # SentencePiece byte fallback
            return piece.replace("\u2581", " ").encode()
        return None


def token_logprob(token: int, logprobs: mx.array, top: int, texts: TokenTexts) -> TokenLogprob:
    """`token`'s natural-log probability in `logprobs` (one row), with the `top` most likely tokens."""
    alternatives: list[TopLogprob] = []
    if top:
        ids = mx.argpartition(-logprobs, kth=top - 1)[:top]
        values = logprobs[ids]
        order = mx.argsort(-values)
        for i, value in zip(ids[order].tolist(), values[order].tolist()):
            text, raw = texts(i)
            alternatives.append(TopLogprob(token=text, logprob=value, bytes=raw))
    text, raw = texts(token)
    return TokenLogprob(token=text, logprob=logprobs[token].item(), bytes=raw, top=alternatives)
