"""A step's logprobs computed together are the ones each request would get alone."""

from __future__ import annotations

import mlx.core as mx
import pytest

from mlxserve.services.worker.logprobs import token_logprob, token_logprobs, top_alternatives


class Texts:
    """Token texts without a tokenizer: id 7 reads "t7"."""

    def __call__(self, token: int) -> tuple[str, list[int]]:
        return f"t{token}", list(f"t{token}".encode())


def test_logprobs_of_a_step_match_each_request_alone_whatever_each_asked() -> None:
    mx.random.seed(3)
    logits = mx.random.normal((6, 300))
    rows = list(logits - mx.logsumexp(logits, axis=-1, keepdims=True))
    tops = [0, 5, 5, 20, 1, 0]
    tokens = [3, 17, 299, 0, 150, 42]
    together = token_logprobs(list(zip(tokens, rows, tops)), Texts())
    alone = [token_logprob(t, row, top, Texts()) for t, row, top in zip(tokens, rows, tops)]
    assert [lp.token for lp in together] == [f"t{t}" for t in tokens]
    for got, want, top in zip(together, alone, tops):
        assert len(got.top) == top
        assert [a.token for a in got.top] == [a.token for a in want.top]
        assert abs(got.logprob - want.logprob) < 1e-6
        assert all(abs(a.logprob - b.logprob) < 1e-6 for a, b in zip(got.top, want.top))


@pytest.mark.parametrize("vocab", [7, 300, 1000, 49_157])
@pytest.mark.parametrize("top", [1, 5, 20])
def test_top_alternatives_are_the_largest_values_in_order(vocab: int, top: int) -> None:
    mx.random.seed(vocab + top)
    rows = mx.random.normal((4, vocab))
    ids, values = top_alternatives(rows, top)
    k = min(top, vocab)
    want = mx.argsort(-rows, axis=-1)[:, :k]
    assert ids.tolist() == want.tolist()
    assert values.tolist() == mx.take_along_axis(rows, want, axis=-1).tolist()
