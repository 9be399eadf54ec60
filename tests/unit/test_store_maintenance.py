"""Store upkeep without sockets: copy (aliases), blob uploads, verify and gc."""

from __future__ import annotations

import hashlib
import io
import os
import threading
import time
from pathlib import Path

import pytest

from mlxserve.services.common.errors import InvalidArgument, NotFound
from mlxserve.services.store.store import ModelStore
from tests.fixtures.tiny_gguf import write_tiny_hf_folder


@pytest.fixture()
def store(tmp_path: Path) -> ModelStore:
    return ModelStore(tmp_path / "models")


@pytest.fixture(scope="module")
def tiny_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_tiny_hf_folder(tmp_path_factory.mktemp("src") / "tiny")


def _digest(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def _age(path: Path, seconds: float) -> None:
    past = time.time() - seconds
    os.utime(path, (past, past), follow_symlinks=False)


def test_copy_makes_an_alias_with_the_same_manifest_and_no_new_blobs(store: ModelStore, tiny_folder: Path) -> None:
    original = store.create_from_path("tiny", tiny_folder)
    blobs_before = store.blobs.all_digests()
    alias = store.copy("tiny", "team/tiny-alias:v2")
    assert alias.name == "team/tiny-alias:v2" and alias.digest == original.digest
    assert store.blobs.all_digests() == blobs_before
    assert sorted(m.name for m in store.list()) == ["team/tiny-alias:v2", "tiny:latest"]
    store.remove("tiny")  # the alias keeps every blob alive
    assert (store.resolve("team/tiny-alias:v2").view_path / "model.safetensors").is_file()


def test_copy_of_an_unknown_model_or_to_a_pinned_name_is_refused(store: ModelStore, tiny_folder: Path) -> None:
    with pytest.raises(NotFound):
        store.copy("nope", "other")
    digest = store.create_from_path("tiny", tiny_folder).digest
    with pytest.raises(InvalidArgument, match="digest-pinned"):
        store.copy("tiny", f"other@sha256:{digest}")
    assert [m.name for m in store.list()] == ["tiny:latest"]


def test_put_blob_stores_verified_bytes_once(store: ModelStore) -> None:
    data = b"some weights" * 1000
    digest = _digest(data)
    assert not store.has_blob(digest)
    assert store.put_blob(digest, io.BytesIO(data)) is True
    assert store.has_blob(digest) and store.blobs.read(digest) == data
    assert store.put_blob(digest, io.BytesIO(data)) is False
    assert list(store.tmp_dir.iterdir()) == []


def test_put_blob_with_mismatched_digest_stores_nothing(store: ModelStore) -> None:
    claimed = _digest(b"what the client said")
    with pytest.raises(InvalidArgument, match="digest mismatch"):
        store.put_blob(claimed, io.BytesIO(b"what it sent"))
    assert not store.has_blob(claimed)
    assert store.blobs.all_digests() == set() and list(store.tmp_dir.iterdir()) == []


@pytest.mark.parametrize("bad", ["sha256:../../etc/passwd", "sha256:" + "A" * 64, "", "sha256:" + "a" * 63])
def test_blob_entry_points_refuse_malformed_digests(store: ModelStore, bad: str) -> None:
    with pytest.raises(InvalidArgument):
        store.has_blob(bad)
    with pytest.raises(InvalidArgument):
        store.put_blob(bad, io.BytesIO(b"x"))


def test_verify_reports_a_clean_store(store: ModelStore, tiny_folder: Path) -> None:
    store.create_from_path("tiny", tiny_folder)
    events = []
    report = store.verify(progress=events.append)
    assert report.ok and report.checked == len(store.blobs.all_digests())
    assert events[-1].status == "success" and any(e.status.startswith("verifying ") for e in events)


def test_verify_names_corrupt_and_missing_blobs_and_the_models_they_break(store: ModelStore, tiny_folder: Path) -> None:
    store.create_from_path("a", tiny_folder)
    store.copy("a", "b")
    _, _, manifest = store.get_manifest("a")
    weights = next(layer for layer in manifest.layers if layer.title == "model.safetensors")
    tokenizer = next(layer for layer in manifest.layers if layer.title == "tokenizer.json")
    path = store.blobs.path(weights.digest)
    os.chmod(path, 0o644)
    with open(path, "r+b") as f:  # flip one byte in the middle, as bit rot would
        f.seek(1000)
        b = f.read(1)
        f.seek(1000)
        f.write(bytes([b[0] ^ 0xFF]))
    store.blobs.path(tokenizer.digest).unlink()
    report = store.verify()
    assert not report.ok
    assert [(c.digest, c.models) for c in report.corrupt] == [(weights.digest, ["a:latest", "b:latest"])]
    assert [(c.digest, c.models) for c in report.missing] == [(tokenizer.digest, ["a:latest", "b:latest"])]


def test_gc_removes_old_unreferenced_blobs_and_stale_staging_but_keeps_models(store: ModelStore, tiny_folder: Path) -> None:
    store.create_from_path("tiny", tiny_folder)
    used = store.blobs.all_digests()
    orphan = _digest(b"orphan")
    store.put_blob(orphan, io.BytesIO(b"orphan"))
    fresh = _digest(b"just uploaded")
    store.put_blob(fresh, io.BytesIO(b"just uploaded"))
    _age(store.blobs.path(orphan), 3600)
    os.utime(store.blobs.path(fresh))
    old_partial = store.tmp_dir / "partial-aaaa"
    old_partial.write_bytes(b"x" * 10)
    _age(old_partial, 2 * 3600)
    live_partial = store.tmp_dir / "partial-bbbb"
    live_partial.write_bytes(b"y" * 10)
    leftover = store.tmp_dir / "create-crashed"
    leftover.mkdir()
    (leftover / "model.safetensors").write_bytes(b"z" * 100)
    _age(leftover / "model.safetensors", 3600)
    _age(leftover, 3600)
    fresh_staging = store.tmp_dir / "create-just-started"
    fresh_staging.mkdir()
    stale_view = store.views_dir / ("f" * 64)
    stale_view.mkdir()

    report = store.gc(orphan_min_age_s=600)
    assert report.removed_blobs == [orphan]
    assert sorted(report.removed_partials) == ["create-crashed", "partial-aaaa"]
    assert report.freed_bytes == len(b"orphan") + 10 + 100
    assert store.blobs.all_digests() == used | {fresh}
    assert live_partial.exists() and fresh_staging.exists() and not stale_view.exists()
    assert store.verify().ok and [m.name for m in store.list()] == ["tiny:latest"]
    store.resolve("tiny")


def test_gc_leaves_the_work_of_an_operation_in_flight_alone(store: ModelStore) -> None:
    staged = store.tmp_dir / "create-running"
    staged.mkdir()
    _age(staged, 3000)
    orphan = _digest(b"adopted by a pull")
    store.put_blob(orphan, io.BytesIO(b"adopted by a pull"))
    _age(store.blobs.path(orphan), 3600)
    entered, release = threading.Event(), threading.Event()

    def operation() -> None:
        with ModelStore(store.models_dir).in_flight():  # another store object: the lock is on disk
            entered.set()
            release.wait(10)

    t = threading.Thread(target=operation)
    t.start()
    entered.wait(10)
    try:
        report = store.gc(orphan_min_age_s=0)
        assert report.removed_blobs == [] and report.removed_partials == []
        assert staged.exists() and store.has_blob(orphan)
    finally:
        release.set()
        t.join()
    assert store.gc(orphan_min_age_s=0).removed_blobs == [orphan]
    assert not staged.exists()
