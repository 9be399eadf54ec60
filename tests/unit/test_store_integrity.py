"""Manifest sizes are checked against the blobs: a layer that lies about its size is refused on
every way in (pull, unpack, create, cp), `verify` names a stored one, and the sizes the store
reports (list, resolve: what the supervisor plans memory with) are the blobs' own."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from mlxserve.services.common.errors import InvalidArgument
from mlxserve.services.store import transfer
from mlxserve.services.store.importers.oci_layout import unpack
from mlxserve.services.store.recipes import CreateSpec
from mlxserve.services.store.store import ModelStore
from tests.fixtures import hostile_files as hf

HUGE = 1 << 60


@pytest.fixture
def store(tmp_path: Path) -> ModelStore:
    s = ModelStore(tmp_path / "models")
    s.create_from_path("tiny", _gguf(tmp_path))
    return s


def _gguf(folder: Path) -> Path:
    path = folder / "tiny.gguf"
    path.write_bytes(hf.tiny_llama_gguf())
    return path


def _lying_manifest(store: ModelStore, title: str, size: int) -> bytes:
    """The stored manifest of `tiny` with layer `title` declaring `size` bytes."""
    _, data, _ = store.get_manifest("tiny")
    doc = json.loads(data)
    for layer in doc["layers"]:
        if layer["annotations"]["org.opencontainers.image.title"] == title:
            layer["size"] = size
    return json.dumps(doc, indent=2).encode()


def _plant(store: ModelStore, name: str, data: bytes) -> None:
    """Write a manifest as a store from before these checks would have kept it."""
    path = store.models_dir / "manifests" / "registry.ollama.ai" / "library" / name / "latest"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)


def _names(store: ModelStore) -> list[str]:
    return sorted(m.name for m in store.list())


@pytest.mark.parametrize("size", [HUGE, 5])
def test_writing_a_manifest_whose_layer_lies_about_its_size_is_refused_naming_the_layer(
        store: ModelStore, size: int) -> None:
    data = _lying_manifest(store, "model.safetensors", size)
    with pytest.raises(InvalidArgument, match=rf"layer 'model.safetensors' \(sha256:[0-9a-f]+\) declares {size} bytes"):
        store.put_manifest("evil", data)
    assert _names(store) == ["tiny:latest"]


def test_a_layer_of_minus_one_bytes_is_refused(store: ModelStore) -> None:
    with pytest.raises(InvalidArgument, match=r"layer 'config.json' \(sha256:[0-9a-f]+\) declares the size -1, not a count"):
        store.put_manifest("evil", _lying_manifest(store, "config.json", -1))
    assert _names(store) == ["tiny:latest"]


class _Registry:
    """A registry that serves one manifest (its blobs are the store's already, so none is fetched)."""

    manifest = b""

    def __init__(self, host: str, **_: object) -> None:
        self.host = host

    def get_manifest(self, repo: str, reference: str) -> tuple[bytes, str, str]:
        return self.manifest, "application/vnd.oci.image.manifest.v1+json", ""

    def open_blob(self, repo: str, digest: str, offset: int) -> None:
        raise AssertionError(f"{digest} is in the store: nothing should be downloaded")


def test_pulling_a_manifest_that_declares_2_pow_60_bytes_for_a_stored_blob_fails_and_stores_nothing(
        store: ModelStore, monkeypatch: pytest.MonkeyPatch) -> None:
    _Registry.manifest = _lying_manifest(store, "model.safetensors", HUGE)
    monkeypatch.setattr(transfer, "RegistryClient", _Registry)
    with pytest.raises(InvalidArgument, match=f"'model.safetensors'.* declares {HUGE} bytes"):
        transfer.pull(store, "127.0.0.1:5000/evil/model:latest", insecure=True)
    assert _names(store) == ["tiny:latest"]


def test_unpacking_a_package_whose_layer_declares_2_pow_60_bytes_for_a_stored_blob_is_refused(
        store: ModelStore, tmp_path: Path) -> None:
    store.blobs.put_bytes(hf.CONFIG_JSON)
    package = tmp_path / "evil.tar"
    package.write_bytes(hf.layout_tar(hf.model_manifest([("config.json", hf.CONFIG_JSON, HUGE)]),
                                      [b'{"format":"mlx"}']))
    with pytest.raises(InvalidArgument, match=f"layer 'config.json' .* declares {HUGE} bytes, its blob has 23"):
        unpack(store, str(package))
    assert _names(store) == ["tiny:latest"]


def test_a_model_planted_with_a_false_size_is_reported_by_verify_and_listed_at_its_true_size(
        store: ModelStore) -> None:
    true_size = store.summary_of("tiny").size
    _plant(store, "evil", _lying_manifest(store, "model.safetensors", HUGE))

    report = store.verify()
    assert not report.ok
    [damaged] = report.damaged_manifests
    assert damaged.startswith("registry.ollama.ai/library/evil/latest: layer 'model.safetensors'")
    assert f"declares {HUGE} bytes" in damaged

    assert {m.name: m.size for m in store.list()}["evil:latest"] == true_size
    assert store.resolve("evil").size == true_size  # what the supervisor plans residency with


def test_deriving_or_copying_a_model_with_a_false_size_is_refused(store: ModelStore) -> None:
    _plant(store, "evil", _lying_manifest(store, "model.safetensors", HUGE))
    with pytest.raises(InvalidArgument, match=f"create 'derived:latest': layer 'model.safetensors'.* {HUGE}"):
        store.create("derived", CreateSpec(from_model="evil", system="hi"))
    with pytest.raises(InvalidArgument, match=f"cannot copy 'evil:latest': layer 'model.safetensors'.* {HUGE}"):
        store.copy("evil", "copied")
    assert _names(store) == ["evil:latest", "tiny:latest"]


def test_an_honest_store_verifies_clean_and_lists_its_layers_sizes(store: ModelStore) -> None:
    _, _, manifest = store.get_manifest("tiny")
    assert store.verify().ok
    assert store.summary_of("tiny").size == manifest.size
