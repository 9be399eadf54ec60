"""ModelStore without sockets: blobs, create/list/show/resolve/remove on a tiny HF-style folder."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from mlxserve.services.common.errors import InvalidArgument, NotFound
from mlxserve.services.store.blobs import BlobStore, check_digest
from mlxserve.services.store.format import FORMAT_FILE
from mlxserve.services.store.store import ModelStore
from tests.fixtures.tiny_gguf import CHAT_TEMPLATE, write_tiny_gguf, write_tiny_hf_folder




@pytest.fixture()
def store(tmp_path: Path) -> ModelStore:
    return ModelStore(tmp_path / "models")


@pytest.fixture()
def tiny_folder(tmp_path: Path) -> Path:
    return write_tiny_hf_folder(tmp_path / "tiny-src")


def _files(root: Path) -> list[Path]:
    """Every file a model or a failed operation left, not the store's own lock and format marker."""
    return sorted(p for p in root.rglob("*") if p.is_file() and p.name not in (".lock", FORMAT_FILE))


def test_blob_written_once_and_named_by_its_content(tmp_path: Path) -> None:
    blobs = BlobStore(tmp_path / "models")
    digest, created = blobs.put_bytes(b"hello")
    again, created_again = blobs.put_bytes(b"hello")
    assert digest == again and created and not created_again
    assert blobs.read(digest) == b"hello"
    assert blobs.path(digest).name == "sha256-" + digest.removeprefix("sha256:")
    assert list(blobs.tmp_dir.iterdir()) == []  # the temp file was renamed into place


@pytest.mark.parametrize("bad", ["sha256:ABC", "md5:" + "a" * 64, "sha256:" + "A" * 64, "sha256:../../etc"])
def test_malformed_digests_are_refused(bad: str) -> None:
    with pytest.raises(InvalidArgument):
        check_digest(bad)


def test_create_list_show_resolve_remove_round_trip(store: ModelStore, tiny_folder: Path) -> None:
    events = []
    summary = store.create_from_path("Tiny:v1", tiny_folder, progress=events.append)
    assert events[-1].status == "success"
    assert any("skipping README.md" in e.status for e in events)  # skipped files are reported

    assert summary.name == "tiny:v1" and len(summary.digest) == 64
    assert [m.name for m in store.list()] == ["tiny:v1"]
    assert summary.details.family == "llama" and summary.details.quantization_level == "F32"

    shown = store.show("tiny:V1")
    assert shown.config.template == CHAT_TEMPLATE
    assert shown.config.model_info["llama.context_length"] == 512
    assert shown.config.model_info["general.parameter_count"] == shown.config.parameter_count > 0
    assert shown.config.capabilities == ["completion"]
    assert 'temperature                    0.3' in shown.parameters_text
    manifest = json.loads(shown.manifest_json)
    assert manifest["artifactType"] == "application/vnd.mlxserve.model.v1"
    titles = {layer["annotations"]["org.opencontainers.image.title"] for layer in manifest["layers"]}
    assert {"config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json"} <= titles
    assert "README.md" not in titles
    assert manifest["annotations"]["io.mlxserve.source.name"] == "tiny-src"

    resolved = store.resolve("tiny:v1")
    assert resolved.view_path == store.models_dir / "views" / summary.digest
    assert store.resolve("tiny:v1").view_path == resolved.view_path  # idempotent
    for title in titles:
        link = resolved.view_path / title
        assert link.is_symlink() and link.resolve().parent == store.blobs.root.resolve()
    assert resolved.view_path.stat().st_mode & 0o222 == 0  # read-only view

    import mlx_lm

    model, tokenizer = mlx_lm.load(str(resolved.view_path))
    ids = tokenizer.apply_chat_template([{"role": "user", "content": "hello"}], add_generation_prompt=True)
    assert ids[0] == tokenizer.convert_tokens_to_ids("<|im_start|>")

    removed = store.remove("tiny:v1")
    assert len(removed) == len(manifest["layers"]) + 1  # every layer plus the config blob
    assert store.list() == []
    assert _files(store.models_dir) == []
    assert not resolved.view_path.exists()
    with pytest.raises(NotFound, match="tiny:v1"):
        store.show("tiny:v1")


def test_two_models_share_blobs_and_removing_one_keeps_the_other(store: ModelStore, tiny_folder: Path) -> None:
    store.create_from_path("a", tiny_folder)
    blob_count = len(list(store.blobs.root.iterdir()))
    store.create_from_path("b", tiny_folder)
    assert len(list(store.blobs.root.iterdir())) == blob_count  # stored once
    store.remove("a")
    assert len(list(store.blobs.root.iterdir())) == blob_count
    assert (store.resolve("b").view_path / "model.safetensors").is_file()


def test_recreating_a_name_drops_blobs_only_the_old_version_used(store: ModelStore, tmp_path: Path, tiny_folder: Path) -> None:
    store.create_from_path("m", tiny_folder)
    old_weights = store.resolve("m").view_path.joinpath("model.safetensors").resolve()
    store.create_from_path("m", write_tiny_hf_folder(tmp_path / "other", seed=1))
    assert not old_weights.exists()
    assert [m.name for m in store.list()] == ["m:latest"]


def test_digest_pinned_name_resolves_only_the_matching_manifest(store: ModelStore, tiny_folder: Path) -> None:
    digest = store.create_from_path("m:v1", tiny_folder).digest
    assert store.resolve(f"m@sha256:{digest}").name == "m:v1"
    with pytest.raises(NotFound):
        store.resolve(f"m@sha256:{'0' * 64}")
    with pytest.raises(InvalidArgument, match="digest-pinned"):
        store.create_from_path(f"m@sha256:{digest}", tiny_folder)


def test_damaged_view_is_rebuilt(store: ModelStore, tiny_folder: Path) -> None:
    store.create_from_path("m", tiny_folder)
    view = store.resolve("m").view_path
    os.chmod(view, 0o755)
    (view / "config.json").unlink()
    assert (store.resolve("m").view_path / "config.json").is_file()


def test_folder_without_tokenizer_is_refused_and_leaves_nothing(store: ModelStore, tiny_folder: Path) -> None:
    (tiny_folder / "tokenizer.json").unlink()
    with pytest.raises(InvalidArgument, match="missing tokenizer.json"):
        store.create_from_path("m", tiny_folder)
    assert _files(store.models_dir) == []


def test_missing_source_is_refused(store: ModelStore, tmp_path: Path) -> None:
    with pytest.raises(InvalidArgument, match="does not exist"):
        store.create_from_path("m", tmp_path / "nope.gguf")


def test_gguf_import_through_the_store_is_listed_with_its_quantization(store: ModelStore, tmp_path: Path) -> None:
    src = tmp_path / "tiny.gguf"
    write_tiny_gguf(src, quant="Q4_1")
    summary = store.create_from_path("tiny-gguf", src)
    assert summary.details.quantization_level == "Q4_1" and summary.details.parameter_size == "tiny"
    shown = store.show("tiny-gguf")
    assert shown.config.license == "apache-2.0"
    assert json.loads(shown.manifest_json)["annotations"]["io.mlxserve.converter"].startswith("mlxserve-gguf/")
    assert list(store.tmp_dir.iterdir()) == []


def test_failure_while_committing_removes_new_blobs(store: ModelStore, tiny_folder: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from mlxserve.services.store import create as create_module

    def boom(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(create_module, "write_atomic", boom)  # the manifest write, the create's last step
    with pytest.raises(OSError, match="disk full"):
        store.create_from_path("m", tiny_folder)
    assert _files(store.models_dir) == []
    assert list(store.manifests_dir.iterdir()) == []  # no empty name folders either
