"""The prefix cache's disk tier alone (hand-made KV caches in a temporary folder) and inside the
ModelRunner (tiny random llama): what a new worker finds, and what it refuses to load."""

from __future__ import annotations

import os
import shutil
import time
from pathlib import Path

import pytest
from mlx_lm.models.cache import KVCache

from mlxserve.services.worker import disk_cache
from mlxserve.services.worker.disk_cache import DiskCacheSettings, DiskPrefixCache, model_digest
from mlxserve.services.worker.prefix_cache import PrefixCache
from mlxserve.services.worker.prompts import ChatMessage, GenerationRequest
from mlxserve.services.worker.runner import ModelRunner
from mlxserve.services.worker.sampling import SamplingOptions
from mlxserve.v1.frames import TokenEvent
from tests.fixtures.tiny_model import tiny_model_dir  # noqa: F401 - fixture
from tests.fixtures.kv_caches import held, kv

MODEL = "a" * 64
OTHER = "b" * 64
COMPUTE = "cpu float32"
MIN = 8  # min_tokens in these tests


def disk(root: Path, model: str = MODEL, max_bytes: int = 1 << 30, compute: str = COMPUTE) -> DiskPrefixCache:
    return DiskPrefixCache(DiskCacheSettings(root, max_bytes, MIN), model=model, compute=compute)


def saved(d: DiskPrefixCache, tokens: list[int], cache: list[KVCache] | None = None, prompt_tokens: int | None = None) -> None:
    assert d.save(tokens, cache or kv(len(tokens)), prompt_tokens=prompt_tokens)
    assert d.wait_idle(10)


def files(root: Path, model: str = MODEL) -> list[Path]:
    return sorted((root / model).glob("*.safetensors"))


SEQ = list(range(100, 120))  # 20 tokens


# -- write, index, find, load ------------------------------------------------------------------------


def test_a_new_process_finds_and_loads_a_written_prefix(tmp_path: Path) -> None:
    saved(disk(tmp_path), SEQ)
    fresh = disk(tmp_path)  # what the next worker sees: the index read from the folder
    match = fresh.find(SEQ + [7, 8])
    assert match is not None and match.reusable == len(SEQ)
    cache = fresh.load(match.entry)
    assert cache is not None and held(cache) == [float(i) for i in range(len(SEQ))]


def test_a_diverging_prompt_reuses_the_shared_part_and_the_same_prompt_leaves_one_token(tmp_path: Path) -> None:
    d = disk(tmp_path)
    saved(d, SEQ)
    assert d.find(SEQ[:15] + [1, 2, 3]).reusable == 15
    assert d.find(SEQ).reusable == len(SEQ) - 1
    assert d.find([1] + SEQ) is None


def test_short_sequences_are_not_written_and_short_shared_prefixes_not_read(tmp_path: Path) -> None:
    d = disk(tmp_path)
    assert not d.save(SEQ[: MIN - 1], kv(MIN - 1))
    assert files(tmp_path) == []
    saved(d, SEQ)
    assert d.find(SEQ[: MIN - 1] + [1, 2, 3, 4]) is None  # shares fewer than MIN tokens
    assert d.find(SEQ[:MIN] + [1]).reusable == MIN


def test_a_sequence_a_file_already_covers_is_not_written_again(tmp_path: Path) -> None:
    d = disk(tmp_path)
    saved(d, SEQ)
    assert not d.save(SEQ, kv(len(SEQ)))
    assert not d.save(SEQ[:12], kv(12))
    assert len(files(tmp_path)) == 1


def test_the_next_turn_of_a_conversation_supersedes_the_previous_one(tmp_path: Path) -> None:
    d = disk(tmp_path)
    saved(d, SEQ, prompt_tokens=15)           # 15 prompt tokens + 5 generated
    other = list(range(500, 520))
    saved(d, other, prompt_tokens=20)
    turn2 = SEQ[:17] + list(range(900, 910))  # re-templates the answer: shares 17 tokens of SEQ
    saved(d, turn2, kv(len(turn2), start=0), prompt_tokens=24)
    assert len(d) == 2 and len(files(tmp_path)) == 2
    assert d.find(SEQ[:15] + [1]).entry.tokens.tolist() == turn2
    assert d.find(other + [1]).reusable == len(other)


def test_memory_wins_over_disk_for_the_same_prefix(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    d = disk(tmp_path)
    store = PrefixCache(max_bytes=1 << 20, max_entries=8, disk=d)
    store.insert(SEQ, kv(len(SEQ)))
    assert d.wait_idle(10) and len(files(tmp_path)) == 1
    monkeypatch.setattr(d, "load", lambda entry: pytest.fail("the disk was read although memory had it"))
    hit = store.lookup(SEQ + [1])
    assert hit.source == "memory" and hit.cached == len(SEQ)


def test_a_disk_hit_is_kept_in_memory_afterwards(tmp_path: Path) -> None:
    saved(disk(tmp_path), SEQ)
    store = PrefixCache(max_bytes=1 << 20, max_entries=8, disk=disk(tmp_path))
    hit = store.lookup(SEQ[:18] + [1, 2])
    assert hit.source == "disk" and hit.cached == 18 and held(hit.cache) == [float(i) for i in range(18)]
    assert len(store) == 1
    assert store.lookup(SEQ + [3]).source == "memory"


def test_a_disk_hit_works_without_a_memory_cache(tmp_path: Path) -> None:
    saved(disk(tmp_path), SEQ)
    store = PrefixCache(max_bytes=1 << 20, max_entries=0, disk=disk(tmp_path))
    hit = store.lookup(SEQ[:12] + [1])
    assert hit.source == "disk" and held(hit.cache) == [float(i) for i in range(12)] and hit.rest == [1]


# -- the size cap -------------------------------------------------------------------------------------


def test_the_size_cap_evicts_the_least_recently_used_file_of_any_model(tmp_path: Path) -> None:
    one = disk(tmp_path)
    saved(one, SEQ)
    size = files(tmp_path)[0].stat().st_size
    two = disk(tmp_path, model=OTHER, max_bytes=int(size * 2.5))
    saved(two, list(range(200, 220)))
    time.sleep(0.01)
    assert one.load(one.find(SEQ + [1]).entry) is not None  # a hit: SEQ is now the most recent
    saved(two, list(range(300, 320)))
    assert [len(files(tmp_path, m)) for m in (MODEL, OTHER)] == [1, 1]
    assert two.find(list(range(200, 220)) + [1]) is None   # the least recently used went
    assert two.find(list(range(300, 320)) + [1]) is not None


def test_a_cache_larger_than_the_cap_is_not_written(tmp_path: Path) -> None:
    d = disk(tmp_path, max_bytes=100)
    assert not d.save(SEQ, kv(len(SEQ)))
    assert files(tmp_path) == []


# -- exact or not used ------------------------------------------------------------------------------


def removed_at_start(tmp_path: Path, damage) -> None:
    saved(disk(tmp_path), SEQ)
    (path,) = files(tmp_path)
    damage(path)
    fresh = disk(tmp_path)
    assert fresh.find(SEQ + [1]) is None and len(fresh) == 0
    assert not path.exists()


def test_a_truncated_file_is_removed_not_loaded(tmp_path: Path) -> None:
    removed_at_start(tmp_path, lambda p: os.truncate(p, p.stat().st_size - 100))


def test_a_garbage_file_is_removed_not_loaded(tmp_path: Path) -> None:
    removed_at_start(tmp_path, lambda p: p.write_bytes(os.urandom(4096)))


def test_a_file_of_another_model_is_removed_not_loaded(tmp_path: Path) -> None:
    foreign = disk(tmp_path, model=OTHER)
    saved(foreign, SEQ)
    (theirs,) = files(tmp_path, OTHER)
    (tmp_path / MODEL).mkdir()
    shutil.copy(theirs, tmp_path / MODEL / theirs.name)
    ours = disk(tmp_path)
    assert ours.find(SEQ + [1]) is None and files(tmp_path) == []
    assert files(tmp_path, OTHER) == [theirs]  # the other model's own file stays


def test_a_cache_computed_in_another_dtype_is_not_used(tmp_path: Path) -> None:
    saved(disk(tmp_path, compute="gpu bfloat16"), SEQ)
    assert disk(tmp_path).find(SEQ + [1]) is None and files(tmp_path) == []


def test_a_file_whose_token_ids_are_not_its_own_is_removed(tmp_path: Path) -> None:
    d = disk(tmp_path)
    saved(d, SEQ)
    saved(d, list(range(600, 620)))
    a, b = files(tmp_path)
    os.replace(a, b)  # b's name, a's tokens
    fresh = disk(tmp_path)
    assert len(fresh) == 0 and files(tmp_path) == []


def test_a_file_replaced_after_the_index_was_read_is_removed_at_load(tmp_path: Path) -> None:
    d = disk(tmp_path)
    saved(d, SEQ)
    match = d.find(SEQ + [1])
    match.entry.path.write_bytes(b"\0" * 64)
    assert d.load(match.entry) is None and not match.entry.path.exists() and len(d) == 0


def test_a_file_holding_fewer_positions_than_its_tokens_is_removed_at_load(tmp_path: Path) -> None:
    d = disk(tmp_path)
    saved(d, SEQ, kv(len(SEQ) - 2))  # mislabelled: 18 positions for 20 tokens
    match = d.find(SEQ + [1])
    assert d.load(match.entry) is None and files(tmp_path) == []


def test_unknown_files_and_crashed_writes_are_cleaned_up_but_live_writes_kept(tmp_path: Path) -> None:
    folder = tmp_path / MODEL
    folder.mkdir(parents=True)
    (folder / "notes.txt").write_text("hello")
    crashed = folder / ".999999999-abcd.tmp.safetensors"  # no such pid
    crashed.write_bytes(b"partial")
    live = folder / f".{os.getpid()}-abcd.tmp.safetensors"
    live.write_bytes(b"partial")
    disk(tmp_path)
    assert sorted(p.name for p in folder.iterdir()) == [live.name]


def test_a_write_is_atomic_a_temporary_file_then_a_rename(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    seen: list[str] = []
    real = disk_cache.os.replace

    def replace(src: str | Path, dst: str | Path) -> None:
        seen.extend(p.name for p in (tmp_path / MODEL).iterdir())  # just before the rename
        real(src, dst)

    monkeypatch.setattr(disk_cache.os, "replace", replace)
    d = disk(tmp_path)
    saved(d, SEQ)
    assert len(seen) == 1 and seen[0].startswith(".") and ".tmp" in seen[0]
    assert [p.name for p in (tmp_path / MODEL).iterdir()] == [files(tmp_path)[0].name]


def test_a_failed_write_leaves_nothing_behind(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def broken(src: str | Path, dst: str | Path) -> None:
        raise OSError("disk full")

    monkeypatch.setattr(disk_cache.os, "replace", broken)
    d = disk(tmp_path)
    assert d.save(SEQ, kv(len(SEQ))) and d.wait_idle(10)
    assert list((tmp_path / MODEL).iterdir()) == [] and len(d) == 0


def test_a_plain_model_folder_has_a_digest_that_changes_with_its_files(tmp_path: Path) -> None:
    view = tmp_path / ("c" * 64)
    view.mkdir()
    assert model_digest(view) == "c" * 64
    folder = tmp_path / "model"
    folder.mkdir()
    (folder / "config.json").write_text("{}")
    before = model_digest(folder)
    (folder / "tokenizer_config.json").write_text('{"chat_template": "x"}')
    assert model_digest(folder) != before


# -- in the runner -----------------------------------------------------------------------------------

GREEDY = SamplingOptions(temperature=0, num_predict=8)
SYSTEM = ChatMessage("system", "You are a helpful assistant who answers about the sky, the sea and the stars. " * 4)
_ids = iter(range(1_000_000))


def request(*messages: ChatMessage) -> GenerationRequest:
    return GenerationRequest(request_id=f"dc-{next(_ids)}", is_chat=True, messages=messages, options=GREEDY)


def run(runner: ModelRunner, req: GenerationRequest) -> list[TokenEvent]:
    runner.submit(req)
    frames: list[TokenEvent] = []
    for _ in range(500):
        frames += [e for e in runner.step() if e.request_id == req.request_id]
        if not runner.has_work():
            return frames
    raise AssertionError("the request did not finish")


def output(events: list[TokenEvent]) -> list[int]:
    return [t for e in events for t in e.token_ids]


def test_a_new_runner_reuses_the_disk_entry_and_answers_as_a_cold_run(tiny_model_dir: Path, tmp_path: Path) -> None:  # noqa: F811
    settings = DiskCacheSettings(tmp_path / "prefix", 1 << 30, 32)
    messages = (SYSTEM, ChatMessage("user", "Why is the sea blue?"))
    cold = ModelRunner(tiny_model_dir, num_parallel=2, max_queue=4, prefix_cache_entries=0)
    expected = run(cold, request(*messages))

    first = ModelRunner(tiny_model_dir, num_parallel=2, max_queue=4, prefix_cache_disk=settings)
    written = run(first, request(*messages))
    assert output(written) == output(expected)
    first.prefix_cache.close(timeout=10)

    second = ModelRunner(tiny_model_dir, num_parallel=2, max_queue=4, prefix_cache_disk=settings)  # a new worker
    again = run(second, request(*messages))
    stats = again[-1].stats
    assert output(again) == output(expected)
    assert stats.cached_tokens == stats.prompt_tokens - 1 and stats.prompt_eval_count == 1
    # The next turn: everything the first turn saw comes from the cache loaded from disk.
    turn2 = (*messages, ChatMessage("assistant", "".join(e.text for e in again)), ChatMessage("user", "And the sky?"))
    follow = run(second, request(*turn2))[-1].stats
    assert follow.cached_tokens >= stats.prompt_tokens
    assert output(run(cold, request(*turn2))) == output(run(second, request(*turn2)))
