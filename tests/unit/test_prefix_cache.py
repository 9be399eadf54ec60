"""The prefix cache alone (hand-made KV caches) and inside the ModelRunner (tiny random llama)."""

from __future__ import annotations

from pathlib import Path

import mlx.core as mx
import pytest
from mlx_lm.models.cache import RotatingKVCache

from mlxserve.services.worker.prefix_cache import PrefixCache
from mlxserve.services.worker.prompts import ChatMessage, GenerationRequest
from mlxserve.services.worker.runner import ModelRunner
from mlxserve.services.worker.sampling import SamplingOptions
from mlxserve.v1.frames import TokenEvent
from tests.fixtures.kv_caches import LAYERS, held, kv
from tests.fixtures.tiny_model import tiny_model_dir  # noqa: F401 - fixture


def entry_bytes(n_tokens: int) -> int:
    return sum(c.nbytes for c in kv(n_tokens))


# -- the store -------------------------------------------------------------------------------------


def test_prompt_extending_a_stored_sequence_reuses_all_of_it() -> None:
    store = PrefixCache(max_bytes=1 << 20, max_entries=8)
    store.insert([1, 2, 3, 4], kv(4))
    hit = store.lookup([1, 2, 3, 4, 5, 6])
    assert hit is not None and hit.cached == 4 and hit.rest == [5, 6]
    assert held(hit.cache) == [0, 1, 2, 3]


def test_prompt_equal_to_a_stored_sequence_still_leaves_one_token_to_evaluate() -> None:
    store = PrefixCache(max_bytes=1 << 20, max_entries=8)
    store.insert([1, 2, 3, 4], kv(4))
    hit = store.lookup([1, 2, 3, 4])
    assert hit is not None and hit.cached == 3 and hit.rest == [4]
    assert held(hit.cache) == [0, 1, 2]


def test_diverging_sequence_is_trimmed_to_the_shared_prefix() -> None:
    store = PrefixCache(max_bytes=1 << 20, max_entries=8)
    store.insert([1, 2, 3, 4, 5, 6], kv(6))
    hit = store.lookup([1, 2, 3, 9, 9])
    assert hit is not None and hit.cached == 3 and hit.rest == [9, 9]
    assert held(hit.cache) == [0, 1, 2]


def test_unrelated_prompt_misses() -> None:
    store = PrefixCache(max_bytes=1 << 20, max_entries=8)
    store.insert([1, 2, 3], kv(3))
    assert store.lookup([7, 8, 9]) is None


def test_longest_of_several_candidates_wins() -> None:
    store = PrefixCache(max_bytes=1 << 20, max_entries=8)
    store.insert([1, 2, 9, 9], kv(4, start=100))
    store.insert([1, 2, 3, 4, 5, 8], kv(6))
    hit = store.lookup([1, 2, 3, 4, 5, 6, 7])
    assert hit is not None and hit.cached == 5 and held(hit.cache) == [0, 1, 2, 3, 4]


def test_a_hit_is_a_private_copy_the_store_keeps_intact() -> None:
    store = PrefixCache(max_bytes=1 << 20, max_entries=8)
    store.insert([1, 2, 3, 4], kv(4))
    hit = store.lookup([1, 2, 3, 7])
    for c in hit.cache:  # what the batch does with it: write the next positions
        c.update_and_fetch(mx.full((1, 1, 1, 4), -1.0), mx.full((1, 1, 1, 4), -1.0))
    again = store.lookup([1, 2, 3, 4, 5])
    assert again.cached == 4 and held(again.cache) == [0, 1, 2, 3]


def test_longer_sequence_replaces_its_stored_prefixes() -> None:
    store = PrefixCache(max_bytes=1 << 20, max_entries=8)
    store.insert([1, 2], kv(2))
    store.insert([1, 2, 3, 4], kv(4))
    store.insert([1, 2, 3], kv(3))  # already covered by [1, 2, 3, 4]: not stored again
    assert len(store) == 1 and store.nbytes == entry_bytes(4)
    assert store.lookup([1, 2, 3, 4, 5]).cached == 4


def test_entries_bound_evicts_the_least_recently_used() -> None:
    store = PrefixCache(max_bytes=1 << 20, max_entries=2)
    store.insert([1, 1, 1], kv(3))
    store.insert([2, 2, 2], kv(3))
    assert store.lookup([1, 1, 1, 5]) is not None  # [1, 1, 1] is now the most recent
    store.insert([3, 3, 3], kv(3))
    assert len(store) == 2
    assert store.lookup([2, 2, 2, 5]) is None
    assert store.lookup([1, 1, 1, 5]) is not None and store.lookup([3, 3, 3, 5]) is not None


def test_bytes_bound_is_never_exceeded() -> None:
    bound = entry_bytes(10) * 3 + entry_bytes(10) // 2
    store = PrefixCache(max_bytes=bound, max_entries=100)
    for i in range(20):
        store.insert([100 + i] + list(range(9)), kv(10))
        assert store.nbytes <= bound
    assert len(store) == 3 and store.nbytes == 3 * entry_bytes(10)
    assert store.lookup([119] + list(range(9)) + [5]) is not None  # the newest stays
    assert store.lookup([100] + list(range(9)) + [5]) is None      # the oldest went


def test_cache_larger_than_the_byte_bound_is_not_stored() -> None:
    store = PrefixCache(max_bytes=entry_bytes(4), max_entries=8)
    store.insert([1, 2, 3, 4], kv(4))
    store.insert(list(range(50, 60)), kv(10))
    assert len(store) == 1 and store.nbytes == entry_bytes(4)


def test_zero_entries_disables_the_cache() -> None:
    store = PrefixCache(max_bytes=1 << 20, max_entries=0)
    store.insert([1, 2, 3], kv(3))
    assert len(store) == 0 and store.lookup([1, 2, 3, 4]) is None


def test_a_system_prompt_checkpoint_outlives_older_and_newer_finished_sequences() -> None:
    store = PrefixCache(max_bytes=1 << 20, max_entries=2)
    store.insert([9, 9, 9], kv(3), cache_type="system")
    store.insert([1, 1, 1], kv(3))
    store.insert([2, 2, 2], kv(3))  # over the bound: the older finished sequence goes, not the checkpoint
    assert len(store) == 2
    assert store.lookup([1, 1, 1, 5]) is None
    assert store.lookup([9, 9, 9, 5]) is not None and store.lookup([2, 2, 2, 5]) is not None


def test_checkpoints_alone_evict_the_least_recently_used_one() -> None:
    store = PrefixCache(max_bytes=1 << 20, max_entries=2)
    store.insert([7, 7, 7], kv(3), cache_type="system")
    store.insert([8, 8, 8], kv(3), cache_type="system")
    assert store.lookup([7, 7, 7, 5]) is not None  # [7, 7, 7] is now the most recent
    store.insert([9, 9, 9], kv(3), cache_type="system")
    assert store.lookup([8, 8, 8, 5]) is None
    assert store.lookup([7, 7, 7, 5]) is not None and store.lookup([9, 9, 9, 5]) is not None


def wrapped(n_tokens: int, window: int) -> list[RotatingKVCache]:
    """A sliding-window cache of `n_tokens` positions: past its window it cannot be cut back."""
    layers = [RotatingKVCache(max_size=window) for _ in range(LAYERS)]
    for c in layers:
        positions = mx.broadcast_to(mx.arange(n_tokens, dtype=mx.float32)[None, None, :, None], (1, 1, n_tokens, 4))
        c.update_and_fetch(positions + 0, positions + 0)
    return layers


def test_prompt_equal_to_a_sequence_that_cannot_be_cut_back_uses_a_shorter_entry() -> None:
    store = PrefixCache(max_bytes=1 << 20, max_entries=8)
    store.insert([1, 2, 3, 4, 5, 6], wrapped(6, window=4))
    store.insert([1, 2, 3], wrapped(3, window=4), cache_type="system")
    hit = store.lookup([1, 2, 3, 4, 5, 6])
    assert hit is not None and hit.cached == 3 and hit.rest == [4, 5, 6]
    assert len(store) == 2


def test_byte_count_matches_what_is_stored_after_hits_and_replacements() -> None:
    store = PrefixCache(max_bytes=1 << 20, max_entries=8)
    store.insert([1, 2, 3, 4], kv(4))
    store.lookup([1, 2, 3, 4, 5])
    store.insert([1, 2, 3, 4], kv(4))  # the same sequence again replaces it
    store.insert([5, 6], kv(2))
    assert len(store) == 2 and store.nbytes == entry_bytes(4) + entry_bytes(2)
    store.clear()
    assert len(store) == 0 and store.nbytes == 0 and store.lookup([1, 2, 3, 4, 5]) is None


# -- in the runner -----------------------------------------------------------------------------------

GREEDY = SamplingOptions(temperature=0, num_predict=12)
SYSTEM = ChatMessage("system", "You are a helpful assistant who answers about the sky and the sea.")
_ids = iter(range(1_000_000))


@pytest.fixture(scope="module")
def cached(tiny_model_dir: Path) -> ModelRunner:  # noqa: F811
    return ModelRunner(tiny_model_dir, num_parallel=4, max_queue=8)


@pytest.fixture(scope="module")
def uncached(tiny_model_dir: Path) -> ModelRunner:  # noqa: F811
    return ModelRunner(tiny_model_dir, num_parallel=4, max_queue=8, prefix_cache_entries=0)


def request(*messages: ChatMessage) -> GenerationRequest:
    return GenerationRequest(request_id=f"pc-{next(_ids)}", is_chat=True, messages=messages, options=GREEDY)


def run(runner: ModelRunner, *requests: GenerationRequest) -> list[list[TokenEvent]]:
    """Submit `requests` together and step until all finish; frames per request, in order."""
    for r in requests:
        runner.submit(r)
    frames: dict[str, list[TokenEvent]] = {}
    for _ in range(500):
        for e in runner.step():
            frames.setdefault(e.request_id, []).append(e)
        if not runner.has_work():
            return [frames[r.request_id] for r in requests]
    raise AssertionError("requests did not finish")


def output(events: list[TokenEvent]) -> tuple[list[int], str]:
    return [t for e in events for t in e.token_ids], "".join(e.text for e in events)


def test_multi_turn_chat_reuses_earlier_turns_and_answers_as_without_cache(cached: ModelRunner, uncached: ModelRunner) -> None:
    messages = [SYSTEM, ChatMessage("user", "Why is the sky blue?")]
    for turn, question in enumerate(["And the sea?", "What about sunsets?", "Thanks!"], start=1):
        with_cache = run(cached, request(*messages))[0]
        without = run(uncached, request(*messages))[0]
        assert output(with_cache) == output(without)
        stats = with_cache[-1].stats
        assert stats.prompt_eval_count + stats.cached_tokens == stats.prompt_tokens
        if turn > 1:  # everything before this turn's new message was seen
            assert stats.cached_tokens > stats.prompt_tokens // 2
            assert stats.prompt_eval_count < stats.prompt_tokens // 2
        messages += [ChatMessage("assistant", output(with_cache)[1]), ChatMessage("user", question)]
    assert uncached.prefix_cache.nbytes == 0


def test_requests_sharing_a_system_prompt_in_one_batch_match_uncached_runs(cached: ModelRunner, uncached: ModelRunner) -> None:
    run(cached, request(SYSTEM, ChatMessage("user", "Hello there")))  # warms the system prompt
    questions = ["Tell me about waves", "Tell me about clouds", "Why is grass green?"]
    batch = run(cached, *(request(SYSTEM, ChatMessage("user", q)) for q in questions))
    for q, events in zip(questions, batch):
        alone = run(uncached, request(SYSTEM, ChatMessage("user", q)))[0]
        assert output(events) == output(alone)
        assert events[-1].stats.cached_tokens > 0


def test_same_prompt_twice_in_one_batch_gives_the_same_output(cached: ModelRunner, uncached: ModelRunner) -> None:
    first, second = run(cached, request(ChatMessage("user", "Twins?")), request(ChatMessage("user", "Twins?")))
    alone = run(uncached, request(ChatMessage("user", "Twins?")))[0]
    assert output(first) == output(second) == output(alone)


def test_stop_string_ending_keeps_the_output_exact_for_the_next_turn(cached: ModelRunner, uncached: ModelRunner) -> None:
    probe = run(uncached, request(ChatMessage("user", "Stop me")))[0]
    stop_at = output(probe)[1][3:6]
    assert stop_at, "the tiny model's reply is too short for this test"
    stopping = SamplingOptions(temperature=0, num_predict=12, stop=(stop_at,))
    ask = GenerationRequest(request_id=f"pc-{next(_ids)}", is_chat=True, messages=(ChatMessage("user", "Stop me"),), options=stopping)
    events = run(cached, ask)[0]
    assert events[-1].done_reason == "stop" and stop_at not in output(events)[1]
    follow = (ChatMessage("user", "Stop me"), ChatMessage("assistant", output(events)[1]), ChatMessage("user", "Go on"))
    assert output(run(cached, request(*follow))[0]) == output(run(uncached, request(*follow))[0])


def test_worker_cache_stays_within_its_byte_bound(tiny_model_dir: Path) -> None:  # noqa: F811
    probe = ModelRunner(tiny_model_dir, num_parallel=2)
    run(probe, request(ChatMessage("user", "How big is one entry?")))
    one = probe.prefix_cache.nbytes
    assert one > 0
    small = ModelRunner(tiny_model_dir, num_parallel=2, prefix_cache_bytes=int(one * 2.5), prefix_cache_entries=100)
    for i in range(8):
        run(small, request(ChatMessage("user", f"Question number {i} about entirely different things")))
        assert 0 < small.prefix_cache.nbytes <= int(one * 2.5)


def test_prompt_tokens_count_every_prompt_token_and_cached_tokens_the_reused_share(cached: ModelRunner) -> None:
    """What Ollama's prompt_eval_count and OpenAI's prompt_tokens report: the whole prompt, cached or not."""
    question = request(SYSTEM, ChatMessage("user", "How many tokens is this prompt, all told?"))
    submitted = cached.submit(question).prompt_tokens
    while cached.has_work():
        cached.step()
    again = run(cached, request(*question.messages))[0][-1].stats
    assert again.prompt_tokens == submitted
    assert 0 < again.cached_tokens < submitted
    assert again.prompt_eval_count == submitted - again.cached_tokens


# -- models whose cache cannot be cut back (sliding-window layers) --------------------------------------

LONG_SYSTEM = ChatMessage("system", " ".join(["Models are served from a local store; each one runs in its own worker."] * 30))


@pytest.fixture(scope="module")
def sliding_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny llama with a 32-token sliding window on its first layer: mlx-lm gives that layer a
    RotatingKVCache, which cannot be trimmed back once it has wrapped (as Gemma 3's or Mistral's)."""
    import json

    from tests.fixtures.tiny_model import write_tiny_model

    path = write_tiny_model(tmp_path_factory.mktemp("sliding"))
    config = json.loads((path / "config.json").read_text())
    config.update(layer_types=["sliding_attention", "full_attention"], sliding_window=32)
    (path / "config.json").write_text(json.dumps(config))
    return path


def test_a_sliding_window_model_keeps_its_system_prefix_for_the_next_session_and_a_retry(sliding_model_dir: Path) -> None:
    cached = ModelRunner(sliding_model_dir, num_parallel=2, max_queue=4)
    uncached = ModelRunner(sliding_model_dir, num_parallel=2, max_queue=4, prefix_cache_entries=0)
    assert cached.needs_checkpoints
    first = request(LONG_SYSTEM, ChatMessage("user", "Why is the sky blue?"))
    assert run(cached, first)[0][-1].stats.cached_tokens == 0
    # A new session with the same system prompt starts from the kept prefix, and answers the same.
    other = request(LONG_SYSTEM, ChatMessage("user", "Tell me about waves"))
    events = run(cached, other)[0]
    assert output(events) == output(run(uncached, request(*other.messages))[0])
    stats = events[-1].stats
    assert stats.cached_tokens >= 256 and stats.prompt_eval_count < 20, stats
    # The same request again (a client's retry) too: the whole sequence cannot be cut back to it.
    again = run(cached, request(*first.messages))[0][-1].stats
    assert again.cached_tokens == stats.cached_tokens


def test_a_plain_kv_model_needs_no_checkpoints(cached: ModelRunner) -> None:
    assert not cached.needs_checkpoints
