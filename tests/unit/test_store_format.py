"""The store's on-disk format version: new stores get the marker, older ones are migrated step by
step, newer or damaged ones are refused with a message that says what to do, untouched."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from mlxserve.services.common.errors import InvalidArgument, Unsupported
from mlxserve.services.store.format import CURRENT, FORMAT_FILE, ensure_format, read_format
from mlxserve.services.store.store import ModelStore
from tests.fixtures.tiny_model import write_tiny_model


def marker(models_dir: Path) -> dict:
    return json.loads((models_dir / FORMAT_FILE).read_text())


def test_a_new_store_is_written_in_the_current_format(tmp_path: Path) -> None:
    store = ModelStore(tmp_path / "models")
    assert store.format == CURRENT and marker(store.models_dir)["format"] == CURRENT
    assert marker(store.models_dir)["written_by"].startswith("mlxserve ")


def test_a_store_from_before_the_marker_is_adopted_and_its_models_still_resolve(tmp_path: Path) -> None:
    models = tmp_path / "models"
    store = ModelStore(models)
    store.create_from_path("tiny", write_tiny_model(tmp_path / "src"))
    (models / FORMAT_FILE).unlink()  # what a first-release store looks like on disk
    assert read_format(models) == 0

    reopened = ModelStore(models)
    assert reopened.format == 0 and marker(models)["format"] == CURRENT
    assert [m.name for m in reopened.list()] == ["tiny:latest"]
    assert (reopened.resolve("tiny").view_path / "config.json").is_file()


def test_a_multi_step_upgrade_runs_each_migration_in_order_and_records_each_step(tmp_path: Path) -> None:
    models = tmp_path / "models"
    models.mkdir()
    (models / FORMAT_FILE).write_text(json.dumps({"format": 1}))
    seen: list[tuple[int, int]] = []

    def step(n: int):
        def migrate(d: Path) -> None:
            seen.append((n, read_format(d)))  # the marker says n while step n runs
        return migrate

    assert ensure_format(models, migrations={1: step(1), 2: step(2)}, current=3) == 1
    assert seen == [(1, 1), (2, 2)] and marker(models)["format"] == 3


def test_an_interrupted_upgrade_resumes_at_the_step_it_stopped_at(tmp_path: Path) -> None:
    models = tmp_path / "models"
    models.mkdir()
    (models / FORMAT_FILE).write_text(json.dumps({"format": 1}))
    ran: list[int] = []

    def ok(d: Path) -> None:
        ran.append(1)

    def boom(d: Path) -> None:
        raise OSError("disk full")

    with pytest.raises(OSError):
        ensure_format(models, migrations={1: ok, 2: boom}, current=3)
    assert marker(models)["format"] == 2  # step 1 is done and recorded
    ensure_format(models, migrations={1: ok, 2: lambda d: ran.append(2)}, current=3)
    assert ran == [1, 2] and marker(models)["format"] == 3


def test_a_store_from_a_newer_mlxserve_is_refused_untouched(tmp_path: Path) -> None:
    models = tmp_path / "models"
    models.mkdir()
    newer = json.dumps({"format": CURRENT + 1, "written_by": "mlxserve 9.0"})
    (models / FORMAT_FILE).write_text(newer)
    with pytest.raises(Unsupported) as e:
        ModelStore(models)
    assert f"format {CURRENT + 1}" in e.value.message and "Upgrade mlxserve" in e.value.message
    assert "MLXSERVE_HOME" in e.value.message
    assert (models / FORMAT_FILE).read_text() == newer
    assert sorted(p.name for p in models.iterdir()) == sorted([FORMAT_FILE, ".lock"])  # no blobs/, views/ made


@pytest.mark.parametrize("text", ["{", '{"format": "1"}', '{"format": -1}', "[]", '{"version": 1}', '{"format": true}'])
def test_a_damaged_marker_is_refused_with_what_it_should_say(tmp_path: Path, text: str) -> None:
    models = tmp_path / "models"
    models.mkdir()
    (models / FORMAT_FILE).write_text(text)
    with pytest.raises(InvalidArgument, match=f'"format": {CURRENT}'):
        ModelStore(models)


def test_an_old_format_with_no_migration_path_is_refused_with_advice(tmp_path: Path) -> None:
    models = tmp_path / "models"
    models.mkdir()
    (models / FORMAT_FILE).write_text(json.dumps({"format": 0}))
    with pytest.raises(Unsupported, match="no migration"):
        ensure_format(models, migrations={}, current=1)



def _old_store_with(models: Path, names: dict[str, bytes]) -> None:
    """A format-1 store whose bare names live under the old default host, mlxserve.local."""
    (models / FORMAT_FILE).parent.mkdir(parents=True, exist_ok=True)
    (models / FORMAT_FILE).write_text(json.dumps({"format": 1}))
    for rel, data in names.items():
        path = models / "manifests" / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)


def test_format_1_bare_names_move_to_ollamas_host_and_keep_their_short_names(tmp_path: Path) -> None:
    from tests.fixtures.tiny_gguf import write_tiny_hf_folder

    models = tmp_path / "models"
    store = ModelStore(models)
    store.create_from_path("smol:latest", write_tiny_hf_folder(tmp_path / "src"))
    manifest = (models / "manifests" / "registry.ollama.ai" / "library" / "smol" / "latest").read_bytes()
    # Put it back where a format-1 store kept it.
    (models / "manifests" / "registry.ollama.ai").rename(models / "manifests" / "mlxserve.local")
    (models / FORMAT_FILE).write_text(json.dumps({"format": 1}))

    reopened = ModelStore(models)
    assert reopened.format == 1 and marker(models)["format"] == CURRENT
    assert [m.name for m in reopened.list()] == ["smol:latest"]
    assert reopened.get_manifest("smol")[1] == manifest
    assert not (models / "manifests" / "mlxserve.local").exists()


def test_format_1_migration_keeps_both_when_a_name_exists_under_the_new_host(tmp_path: Path) -> None:
    models = tmp_path / "models"
    _old_store_with(models, {"mlxserve.local/library/a/latest": b"old", "registry.ollama.ai/library/a/latest": b"new",
                             "mlxserve.local/me/b/v1": b"moved"})
    ensure_format(models)
    root = models / "manifests"
    assert (root / "registry.ollama.ai/library/a/latest").read_bytes() == b"new"
    assert (root / "mlxserve.local/library/a/latest").read_bytes() == b"old"  # kept, under its full name
    assert (root / "registry.ollama.ai/me/b/v1").read_bytes() == b"moved"
    assert not (root / "mlxserve.local/me").exists()
