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


class _RangeServer:
    """Serves one file with Range and If-Range (aiohttp's FileResponse), logging request headers."""

    def __init__(self, path: Path) -> None:
        import asyncio

        from aiohttp import web

        self.requests: list[dict[str, str]] = []
        self.path = path
        self.cut_once = True
        ready = threading.Event()

        async def serve(request: web.Request) -> web.StreamResponse:
            self.requests.append(dict(request.headers))
            if self.cut_once:  # the whole length promised, half sent, then the connection dropped
                self.cut_once = False
                data = self.path.read_bytes()
                resp = web.StreamResponse(headers={"Content-Length": str(len(data)), "ETag": '"v1"'})
                await resp.prepare(request)
                await resp.write(data[:len(data) // 2])
                request.transport.close()
                return resp
            return web.FileResponse(self.path, chunk_size=16384, headers={"ETag": '"v1"'})

        async def start() -> None:
            app = web.Application()
            app.router.add_get("/{name}", serve)
            self.runner = web.AppRunner(app, access_log=None)
            await self.runner.setup()
            site = web.TCPSite(self.runner, "127.0.0.1", 0)
            await site.start()
            self.url = f"http://127.0.0.1:{self.runner.addresses[0][1]}/{path.name}"
            ready.set()

        self.loop = asyncio.new_event_loop()
        threading.Thread(target=lambda: (self.loop.run_until_complete(start()), self.loop.run_forever()),
                         daemon=True).start()
        ready.wait(10)

    def stop(self) -> None:
        import asyncio

        asyncio.run_coroutine_threadsafe(self.runner.cleanup(), self.loop).result(10)
        self.loop.call_soon_threadsafe(self.loop.stop)


def test_a_tarball_url_pull_cut_short_resumes_where_it_stopped(tmp_path: Path) -> None:
    from mlxserve.services.common.errors import Unavailable
    from mlxserve.services.store.importers.oci_layout import package_partial

    src = ModelStore(tmp_path / "big-src")  # bigger than a few read chunks, so a cut lands halfway
    put_model(src, NAME, {"model.safetensors": os.urandom(12 << 20), "config.json": b'{"model_type": "llama"}'})
    tarball = pack(src, NAME, tmp_path)
    server = _RangeServer(tarball)
    try:
        dst = ModelStore(tmp_path / "dst")
        with pytest.raises(Unavailable, match="pull again to resume"):
            pull(dst, server.url, insecure=True)
        partial = package_partial(dst, server.url)
        kept = partial.stat().st_size
        assert 0 < kept < tarball.stat().st_size and dst.list() == []

        events = []
        pull(dst, server.url, insecure=True, progress=events.append)
        assert server.requests[-1]["Range"] == f"bytes={kept}-" and "If-Range" in server.requests[-1]
        assert dst.get_manifest(NAME)[1] == src.get_manifest(NAME)[1]
        assert not partial.exists() and [e.status for e in events][-1] == "success"
        # A bad package is not kept for a resume: fetching the same bytes again would not help.
        tarball.write_bytes(b"not a tarball any more")
        with pytest.raises(InvalidArgument, match="not a tar archive"):
            pull(dst, server.url, insecure=True)
        assert not partial.exists()
    finally:
        server.stop()
