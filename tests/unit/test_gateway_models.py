"""The native model-management routes (/api/blobs, create, show, copy, delete, pull, push), the
gateway in process, against a real store service (a real ModelStore on its unix socket)."""

from __future__ import annotations

import asyncio
import hashlib
import json
from typing import Any, AsyncIterator

import pytest

from mlxserve.gateway import models_api
from mlxserve.services.store.store import ModelStore
from tests.fixtures.gateway_store import ndjson, with_store
from tests.fixtures.inproc_http import InprocClient
from tests.fixtures.tiny_gguf import write_tiny_gguf

pytestmark = pytest.mark.timeout(120)


@pytest.fixture(scope="module")
def tiny_gguf(tmp_path_factory: pytest.TempPathFactory) -> bytes:
    path = tmp_path_factory.mktemp("gguf") / "tiny.gguf"
    write_tiny_gguf(path, quant="Q8_0")
    return path.read_bytes()


def digest_of(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


async def upload(c: InprocClient, data: bytes) -> str:
    digest = digest_of(data)
    resp = await c.post(f"/api/blobs/{digest}", data=data)
    assert resp.status in (200, 201), await resp.text()
    return digest


async def create_from_gguf(c: InprocClient, name: str, data: bytes, **fields: Any) -> list[dict[str, Any]]:
    digest = await upload(c, data)
    resp = await c.post("/api/create", json={"model": name, "files": {"model.gguf": digest}, **fields})
    assert resp.status == 200 and resp.headers["Content-Type"].startswith("application/x-ndjson")
    return await ndjson(resp)


def test_blob_upload_is_201_then_present_and_a_second_upload_is_200() -> None:
    data = b"some weights" * 10_000
    digest = digest_of(data)

    async def check(c: InprocClient, store: ModelStore) -> None:
        assert (await c.head(f"/api/blobs/{digest}")).status == 404
        assert (await c.post(f"/api/blobs/{digest}", data=data)).status == 201
        assert (await c.head(f"/api/blobs/{digest}")).status == 200
        assert (await c.post(f"/api/blobs/{digest}", data=data)).status == 200
        assert store.blobs.path(digest).read_bytes() == data
    with_store(check)


def test_blob_upload_that_does_not_match_its_digest_is_400_and_nothing_is_kept() -> None:
    data = b"the real bytes" * 1000
    wrong = digest_of(b"other bytes")

    async def check(c: InprocClient, store: ModelStore) -> None:
        resp = await c.post(f"/api/blobs/{wrong}", data=data)
        assert resp.status == 400 and "digest" in (await resp.json())["error"]
        assert (await c.head(f"/api/blobs/{wrong}")).status == 404
        assert not store.has_blob(digest_of(data)) and list(store.tmp_dir.iterdir()) == []
    with_store(check)


@pytest.mark.parametrize("digest", ["sha256:abc", "md5:" + "a" * 32, "sha256:" + "A" * 64, "..%2F..%2Fetc%2Fpasswd",
                                    "sha256:" + "a" * 64 + "%00"])
def test_malformed_blob_digests_are_400(digest: str) -> None:
    async def check(c: InprocClient, store: ModelStore) -> None:
        head = await c.head(f"/api/blobs/{digest}")
        post = await c.post(f"/api/blobs/{digest}", data=b"x")
        assert head.status == 400 and post.status == 400
        assert "invalid digest" in (await post.json())["error"]
    with_store(check)


def test_an_upload_larger_than_the_free_disk_is_507_whether_or_not_its_length_is_declared(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(models_api, "upload_limit", lambda models_dir: 100_000)
    data = b"z" * 300_000
    digest = digest_of(data)

    async def chunked() -> AsyncIterator[bytes]:
        for i in range(0, len(data), 50_000):
            yield data[i:i + 50_000]

    async def check(c: InprocClient, store: ModelStore) -> None:
        resp = await c.post(f"/api/blobs/{digest}", data=data)
        assert resp.status == 507 and "not enough disk space" in (await resp.json())["error"]
        resp = await c.post(f"/api/blobs/{digest}", data=chunked())
        assert resp.status == 507
        assert not store.has_blob(digest)
    with_store(check)


def test_create_streams_progress_and_show_answers_in_ollamas_shape(tiny_gguf: bytes) -> None:
    async def check(c: InprocClient, store: ModelStore) -> None:
        lines = await create_from_gguf(c, "tiny", tiny_gguf, system="Answer in French.",
                                       parameters={"temperature": 0.3, "stop": ["<|im_end|>"]},
                                       messages=[{"role": "user", "content": "Bonjour"}], license="MIT")
        assert lines[-1] == {"status": "success"} and all("status" in line for line in lines)
        resp = await c.post("/api/show", json={"model": "tiny"})
        assert resp.status == 200
        shown = await resp.json()
        assert {"details", "model_info", "parameters", "template", "system", "license", "capabilities",
                "modelfile", "modified_at", "messages"} <= set(shown)
        assert shown["system"] == "Answer in French." and shown["license"] == "MIT"
        assert shown["details"]["family"] == "llama" and shown["details"]["quantization_level"] == "Q8_0"
        assert shown["model_info"]["general.architecture"] == "llama"
        assert "completion" in shown["capabilities"] and "temperature" in shown["parameters"]
        assert shown["messages"] == [{"role": "user", "content": "Bonjour"}]
        assert (await c.post("/api/show", json={"name": "tiny:latest", "verbose": True})).status == 200
    with_store(check)


def test_create_without_streaming_answers_one_final_object(tiny_gguf: bytes) -> None:
    async def check(c: InprocClient, store: ModelStore) -> None:
        digest = await upload(c, tiny_gguf)
        resp = await c.post("/api/create", json={"model": "quiet", "files": {"model.gguf": digest}, "stream": False})
        assert resp.status == 200 and await resp.json() == {"status": "success"}
        resp = await c.post("/api/create", json={"model": "derived", "from": "quiet", "system": "Be terse.", "stream": False})
        assert resp.status == 200
        assert (await (await c.post("/api/show", json={"model": "derived"})).json())["system"] == "Be terse."
    with_store(check)


def test_create_with_a_placement_keeps_the_group_and_a_bad_one_is_400(tiny_gguf: bytes) -> None:
    async def check(c: InprocClient, store: ModelStore) -> None:
        digest = await upload(c, tiny_gguf)
        placement = {"hosts": ["127.0.0.1", "10.0.0.2:40000"], "strategy": "pipeline"}
        resp = await c.post("/api/create", json={"model": "grouped", "files": {"model.gguf": digest},
                                                 "placement": placement, "stream": False})
        assert resp.status == 200, await resp.text()
        assert store.resolve("grouped").config.placement["hosts"] == ["127.0.0.1", "10.0.0.2:40000"]
        shown = await (await c.post("/api/show", json={"model": "grouped"})).json()
        assert shown["model_info"]["mlxserve.placement"] == "2 ranks on 127.0.0.1, 10.0.0.2:40000 (pipeline, ring)"
        resp = await c.post("/api/create", json={"model": "bad", "from": "grouped", "stream": False,
                                                 "placement": {"hosts": ["10.0.0.2", "127.0.0.1"]}})
        assert resp.status == 400 and "first host is rank 0" in (await resp.json())["error"]
    with_store(check)


@pytest.mark.parametrize("body, message", [
    ({"model": "x"}, "either 'from'"),
    ({"model": "x", "from": "base", "adapters": {"lora.gguf": "sha256:" + "a" * 64}}, "'adapters' is not supported"),
    ({"model": "x", "modelfile": "FROM base"}, "old create API"),
    ({"model": "x", "files": {"../../evil": "sha256:" + "a" * 64}}, "'files' keys must be a string matching"),
    ({"model": "x", "files": {"model.gguf": "sha256:nothex"}}, "'files' values must be a string matching ^sha256"),
    ({"model": "x", "from": "base", "quantize": "q3_K_S"}, "q3_K_S"),
    ({"model": "../../etc/passwd", "files": {"model.gguf": "sha256:" + "a" * 64}}, "model name"),
])
def test_create_refuses_what_it_cannot_do_with_400(body: dict, message: str) -> None:
    async def check(c: InprocClient, store: ModelStore) -> None:
        resp = await c.post("/api/create", json=body)
        assert resp.status == 400, await resp.text()
        assert message in (await resp.json())["error"]
    with_store(check)


def test_create_and_show_name_what_they_ignore_in_the_header(tiny_gguf: bytes) -> None:
    # Ollama ignores unknown fields; so does this server, and it says which. Modelfile parameters that
    # this runtime does not use (num_thread) are kept with the model, and named too.
    async def check(c: InprocClient, store: ModelStore) -> None:
        digest = await upload(c, tiny_gguf)
        resp = await c.post("/api/create", json={"model": "p", "files": {"model.gguf": digest}, "flavour": "spicy",
                                                  "parameters": {"temperature": 0.2, "num_thread": 8}, "stream": False})
        assert resp.status == 200, await resp.text()
        assert resp.headers["X-Mlxserve-Ignored"] == "flavour,parameters.num_thread"
        resp = await c.post("/api/show", json={"model": "p", "verbose": True})
        assert resp.status == 200 and resp.headers["X-Mlxserve-Ignored"] == "verbose"
        resp = await c.post("/api/show", json={"model": "p", "verbose": False})
        assert "X-Mlxserve-Ignored" not in resp.headers
    with_store(check)


def test_create_from_an_unknown_model_is_404_and_from_a_missing_blob_is_400() -> None:
    async def check(c: InprocClient, store: ModelStore) -> None:
        resp = await c.post("/api/create", json={"model": "x", "from": "ghost"})
        assert resp.status == 404 and "ghost" in (await resp.json())["error"]
        resp = await c.post("/api/create", json={"model": "x", "files": {"model.gguf": "sha256:" + "b" * 64}})
        assert resp.status in (400, 404) and "error" in await resp.json()
    with_store(check)


def test_copy_and_delete_answer_200_with_empty_bodies_and_404_for_unknown_models(tiny_gguf: bytes) -> None:
    async def check(c: InprocClient, store: ModelStore) -> None:
        await create_from_gguf(c, "orig", tiny_gguf)
        resp = await c.post("/api/copy", json={"source": "orig", "destination": "me/copy:v2"})
        assert resp.status == 200 and await resp.read() == b""
        names = [m["name"] for m in (await (await c.get("/api/tags")).json())["models"]]
        assert sorted(names) == ["me/copy:v2", "orig:latest"]
        resp = await c.post("/api/copy", json={"source": "ghost", "destination": "x"})
        assert resp.status == 404
        resp = await c.post("/api/copy", json={"source": "orig", "destination": "a/b/c/d"})
        assert resp.status == 400

        resp = await c.delete("/api/delete", json={"model": "orig"})
        assert resp.status == 200 and await resp.read() == b""
        assert (await c.delete("/api/delete", json={"name": "orig"})).status == 404
        assert (await c.post("/api/show", json={"model": "me/copy:v2"})).status == 200
        assert (await c.post("/api/show", json={"model": "orig"})).status == 404
    with_store(check)


@pytest.mark.parametrize("name", ["../../etc/passwd", "/etc/passwd", "~/x", "http://evil.example/x.tar", "a\x00b", ""])
def test_pull_and_push_refuse_paths_urls_and_hostile_names_with_400(name: str) -> None:
    async def check(c: InprocClient, store: ModelStore) -> None:
        for route in ("/api/pull", "/api/push"):
            resp = await c.post(route, json={"model": name})
            assert resp.status == 400, (route, await resp.text())
            assert "error" in await resp.json()
    with_store(check)


def test_pull_never_reads_a_tarball_named_over_http() -> None:
    async def check(c: InprocClient, store: ModelStore) -> None:
        resp = await c.post("/api/pull", json={"model": "backup.tar"})
        assert resp.status == 400 and "looks like a file" in (await resp.json())["error"]
    with_store(check)


def test_push_of_an_unknown_model_is_404() -> None:
    async def check(c: InprocClient, store: ModelStore) -> None:
        resp = await c.post("/api/push", json={"model": "127.0.0.1:9/library/ghost:latest", "insecure": True})
        assert resp.status == 404 and "ghost" in (await resp.json())["error"]
    with_store(check)


def test_a_client_that_hangs_up_mid_pull_cancels_the_download_in_the_store(monkeypatch: pytest.MonkeyPatch) -> None:
    import threading

    from mlxserve.services.store import server as store_server
    from mlxserve.services.store.progress import ProgressEvent

    cancelled = threading.Event()

    def slow_pull(store, ref, *, insecure, progress, cancel, remotes):  # noqa: ANN001 - the transfer.pull signature
        progress(ProgressEvent("pulling manifest"))
        if cancel.wait(20):
            cancelled.set()

    monkeypatch.setattr(store_server.transfer, "pull", slow_pull)

    async def check(c: InprocClient, store: ModelStore) -> None:
        resp = await c.post("/api/pull", json={"model": "127.0.0.1:5000/library/slow:latest"})
        assert json.loads(await resp.content.readline()) == {"status": "pulling manifest"}
        resp.close()  # hang up
        assert await asyncio.get_running_loop().run_in_executor(None, cancelled.wait, 10)
    with_store(check)
