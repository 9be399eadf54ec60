"""pack writes an OCI image-layout tarball; pull imports one by path or URL, verifying every blob."""

from __future__ import annotations

import functools
import hashlib
import json
import os
import tarfile
import threading
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Iterator

import pytest

from mlxserve.services.common.errors import InvalidArgument, NotFound
from mlxserve.services.store.store import ModelStore
from mlxserve.services.store.transfer import pack, pull
from tests.fixtures.registry import put_model

NAME = "example.org/team/packed:v1"


@pytest.fixture
def packed(tmp_path: Path) -> tuple[ModelStore, Path]:
    src = ModelStore(tmp_path / "src")
    put_model(src, NAME, {"model.safetensors": os.urandom(300_000), "config.json": b'{"model_type": "llama"}',
                          "tokenizer.json": b'{"model": {}}'})
    return src, pack(src, NAME, tmp_path)


@pytest.fixture
def http_folder(tmp_path: Path) -> Iterator[str]:
    handler = functools.partial(SimpleHTTPRequestHandler, directory=str(tmp_path))
    handler.log_message = lambda *a: None  # type: ignore[method-assign]
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def test_pack_writes_an_oci_image_layout(packed: tuple[ModelStore, Path]) -> None:
    src, tarball = packed
    assert tarball.name == "packed-v1.tar"
    _, data, manifest = src.get_manifest(NAME)
    with tarfile.open(tarball) as tar:
        names = set(tar.getnames())
        index = json.loads(tar.extractfile("index.json").read())  # type: ignore[union-attr]
        assert json.loads(tar.extractfile("oci-layout").read()) == {"imageLayoutVersion": "1.0.0"}  # type: ignore[union-attr]
    [entry] = index["manifests"]
    assert entry["digest"] == "sha256:" + hashlib.sha256(data).hexdigest()
    assert entry["annotations"]["org.opencontainers.image.ref.name"] == "v1"
    assert {f"blobs/sha256/{d[7:]}" for d in manifest.digests()} | {f"blobs/sha256/{entry['digest'][7:]}"} <= names


def test_pull_from_a_tarball_path_is_bit_identical(packed: tuple[ModelStore, Path], tmp_path: Path) -> None:
    src, tarball = packed
    dst = ModelStore(tmp_path / "dst")
    events = []
    summary = pull(dst, str(tarball), progress=events.append)
    assert summary.name == "example.org/team/packed:v1"
    assert dst.get_manifest(NAME)[1] == src.get_manifest(NAME)[1]
    for digest in src.get_manifest(NAME)[2].digests():
        assert dst.blobs.path(digest).read_bytes() == src.blobs.path(digest).read_bytes()
    assert [e.status for e in events][-3:] == ["verifying sha256 digest", "writing manifest", "success"]


def test_pull_from_a_tarball_url_streams_it(packed: tuple[ModelStore, Path], http_folder: str,
                                            tmp_path: Path) -> None:
    src, tarball = packed
    url = f"{http_folder}/{tarball.name}"
    with pytest.raises(InvalidArgument, match="--insecure"):
        pull(ModelStore(tmp_path / "refused"), url)
    dst = ModelStore(tmp_path / "dst")
    pull(dst, url, insecure=True, name="renamed:local")
    assert dst.get_manifest("renamed:local")[1] == src.get_manifest(NAME)[1]
    with pytest.raises(NotFound):
        pull(dst, f"{http_folder}/missing.tar", insecure=True)


def test_a_tampered_tarball_is_refused_and_nothing_becomes_visible(packed: tuple[ModelStore, Path],
                                                                   tmp_path: Path) -> None:
    src, tarball = packed
    weights = next(layer for layer in src.get_manifest(NAME)[2].layers if layer.title == "model.safetensors")
    raw = bytearray(tarball.read_bytes())
    at = raw.find(src.blobs.path(weights.digest).read_bytes()[:64])
    raw[at + 100] ^= 0xFF
    bad = tmp_path / "bad.tar"
    bad.write_bytes(bytes(raw))
    dst = ModelStore(tmp_path / "dst")

    with pytest.raises(InvalidArgument, match=f"blob {weights.digest} is corrupt"):
        pull(dst, str(bad))

    assert dst.list() == []
    assert not dst.blobs.all_digests()
    assert not [p for p in dst.tmp_dir.iterdir()]


def test_not_a_package_is_refused_clearly(tmp_path: Path) -> None:
    junk = tmp_path / "junk.tar"
    junk.write_bytes(b"this is not a tar file at all" * 100)
    with pytest.raises(InvalidArgument, match="not a tar archive|damaged package"):
        pull(ModelStore(tmp_path / "dst"), str(junk))
    with pytest.raises(NotFound):
        pull(ModelStore(tmp_path / "dst"), str(tmp_path / "absent.tar"))
