"""Pull from a registry holding Ollama's image format (issue 15): the local docker-registry with
models pushed as `ollama push` pushes them, and a pair of in-test servers standing in for Ollama's
registry and the storage host its blob GETs redirect to."""

from __future__ import annotations

import hashlib
import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Callable, Iterator

import pytest

from mlxserve.services.common.errors import Cancelled, Internal, NotFound, Unavailable, Unsupported
from mlxserve.services.store.manifest import ANN_SOURCE_MANIFEST, ANN_SOURCE_REF
from mlxserve.services.store.progress import ProgressEvent
from mlxserve.services.store.store import ModelStore
from mlxserve.services.store.transfer import Remotes, pull
from tests.fixtures import ollama_registry as fx
from tests.fixtures.ollama_registry import ollama_models  # noqa: F401 (fixture)
from tests.fixtures.ollama_store import (
    CHATML_GO_TEMPLATE,
    MODEL,
    PARAMS,
    SYSTEM,
    TINY_LICENSE,
    TINY_MESSAGES,
    TINY_SYSTEM,
    write_tiny_ggufs,
)
from tests.fixtures.registry import Registry, registry  # noqa: F401 (fixture)

TINY_TEMPLATE_NOTE = "not executed (Go template); the chat template comes from the GGUF"


def blob_gets(reg: Registry, since: int = 0) -> list[str]:
    """Paths of the blob GETs the registry answered since request number `since`."""
    return [path for method, path, _, _ in reg.requests()[since:] if method == "GET" and "/blobs/" in path]


def assert_nothing_left(store: ModelStore) -> None:
    """No model, no blob, no partial download, no staging folder: as if the pull never ran."""
    assert store.list() == []
    assert store.blobs.all_digests() == set()
    assert sorted(p.name for p in store.tmp_dir.iterdir()) == []


@pytest.fixture
def store(tmp_path: Path) -> ModelStore:
    return ModelStore(tmp_path / "models")


def test_an_ollama_image_converts_with_its_defaults_and_leaves_no_gguf_behind(
        store: ModelStore, ollama_models: fx.OllamaModels) -> None:
    image = ollama_models.images[fx.TINY]
    events: list[ProgressEvent] = []

    summary = pull(store, ollama_models.ref(fx.TINY), insecure=True, progress=events.append)

    shown = store.show(summary.name)
    assert summary.name == ollama_models.ref(fx.TINY)
    assert shown.parameters == {"temperature": 0.2, "top_k": 20, "num_ctx": 256, "seed": 7,
                                "stop": ["<|im_end|>", "<|endoftext|>"]}
    assert (shown.system, shown.license, shown.messages) == (TINY_SYSTEM, TINY_LICENSE, TINY_MESSAGES)
    assert shown.model_info["ollama.template"] == TINY_TEMPLATE_NOTE and "<|im_start|>" in shown.template
    assert shown.details.quantization_level == "Q8_0" and "completion" in shown.capabilities
    _, _, manifest = store.get_manifest(summary.name)
    assert manifest.annotations[ANN_SOURCE_REF] == ollama_models.ref(fx.TINY)
    assert manifest.annotations[ANN_SOURCE_MANIFEST] == image.digest
    # The GGUF was converted: its blob is not kept, nor any download or staging leftover.
    assert not store.blobs.exists(image.layer(MODEL)["digest"])
    assert store.blobs.all_digests() == manifest.digests()
    assert list(store.tmp_dir.iterdir()) == []

    statuses = [e.status for e in events]
    assert statuses[0] == "pulling manifest" and statuses[-1] == "success" and statuses.count("success") == 1
    pulled = {e.digest: e for e in events if e.status.startswith("pulling ") and e.digest}
    assert set(pulled) == {d["digest"] for d in image.layers} | {image.config["digest"]}
    assert all(e.status == f"pulling {e.digest[7:19]}" and e.completed == e.total for e in pulled.values())
    verify, write = statuses.index("verifying sha256 digest"), statuses.index("writing manifest")
    last_pulling = max(i for i, s in enumerate(statuses) if s.startswith("pulling ") and s != "pulling manifest")
    assert last_pulling < verify < write < len(statuses) - 1
    assert any(s.startswith("converting ") for s in statuses[verify:write])


def test_a_bare_name_pulls_from_the_default_registry_and_again_downloads_nothing(
        store: ModelStore, registry: Registry, ollama_models: fx.OllamaModels) -> None:
    remotes = Remotes(default_registry=f"http://{registry.host}")
    first = pull(store, "tiny:v1", remotes=remotes)
    assert first.name == "tiny:v1"
    assert store.show("tiny:v1").system == TINY_SYSTEM
    manifest_file = next(store.manifests_dir.rglob("v1"))
    written = manifest_file.stat().st_mtime_ns

    since = len(registry.requests())
    events: list[ProgressEvent] = []
    again = pull(store, "tiny:v1", remotes=remotes, progress=events.append)

    assert blob_gets(registry, since) == []
    assert again == first and manifest_file.stat().st_mtime_ns == written
    assert [e.status for e in events][-1] == "success"
    assert all(e.completed == e.total for e in events if e.digest)


def test_a_tag_that_moved_converts_again(store: ModelStore, registry: Registry,
                                         ollama_models: fx.OllamaModels) -> None:
    name = "library/tiny:moving"
    fx.push_tiny(ollama_models, name, params={"temperature": 0.3})
    pull(store, ollama_models.ref(name), insecure=True)
    assert store.show(ollama_models.ref(name)).parameters["temperature"] == 0.3

    moved = fx.push_tiny(ollama_models, name, params={"temperature": 0.9, "top_k": 5})
    since = len(registry.requests())
    pull(store, ollama_models.ref(name), insecure=True)

    shown = store.show(ollama_models.ref(name))
    assert shown.parameters["temperature"] == 0.9 and shown.parameters["top_k"] == 5
    assert any(path.endswith(moved.layer(MODEL)["digest"]) for path in blob_gets(registry, since))
    _, _, manifest = store.get_manifest(ollama_models.ref(name))
    assert manifest.annotations[ANN_SOURCE_MANIFEST] == moved.digest
    assert len(store.list()) == 1 and store.blobs.all_digests() == manifest.digests()  # the old version is gone


@pytest.mark.parametrize("name, error, message", [
    (fx.PROJECTOR_MODEL, Unsupported, "has a vision projector; vision models are not supported yet"),
    (fx.UNKNOWN_MODEL, Unsupported, f"has the media type '{fx.UNKNOWN_MEDIA_TYPE}', which mlxserve does not know"),
])
def test_what_cannot_be_served_is_refused_before_anything_is_downloaded(
        store: ModelStore, registry: Registry, ollama_models: fx.OllamaModels, name: str, error: type,
        message: str) -> None:
    since = len(registry.requests())
    with pytest.raises(error, match=message) as refused:
        pull(store, ollama_models.ref(name), insecure=True)
    assert ollama_models.ref(name) in str(refused.value)
    assert blob_gets(registry, since) == []
    assert_nothing_left(store)


def test_a_gguf_the_importer_refuses_is_named_and_removed(store: ModelStore, ollama_models: fx.OllamaModels) -> None:
    with pytest.raises(Unsupported, match=r"mamba-tiny:v1: GGUF architecture 'mamba' is not supported"):
        pull(store, ollama_models.ref(fx.MAMBA), insecure=True)
    assert_nothing_left(store)


def _tamper(registry: Registry, digest: str) -> None:
    """Flip one byte of the registry's copy of a blob (same size; only its sha256 can tell)."""
    path = registry.blob_data_path(digest)
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))


@pytest.fixture
def damaged(ollama_models: fx.OllamaModels, registry: Registry, request: pytest.FixtureRequest,
            tmp_path: Path) -> str:
    """An image damaged as the test's parameter says, with blobs of its own (the registry shares
    blobs between repositories by digest: tampering with a shared one would break other tests)."""
    kind = request.param
    unique = f"{request.node.name} {tmp_path.name}"
    name = f"library/damaged-{kind}:v1"
    if kind == "layer-digest":
        image = fx.push_tiny(ollama_models, name, system=f"system prompt of {unique}")
        _tamper(registry, image.layer(SYSTEM)["digest"])
    elif kind == "layer-size":
        image = fx.push_tiny(ollama_models, name, params={"temperature": 0.4},
                             system=f"system prompt of {unique}", sizes={SYSTEM: 3})
    elif kind == "gguf-digest":
        gguf = write_tiny_ggufs(tmp_path / "ggufs")["to_corrupt"]
        gguf.write_bytes(gguf.read_bytes() + unique.encode())  # GGUF readers ignore trailing bytes
        image = fx.push_model(ollama_models.pusher, name, gguf, template=CHATML_GO_TEMPLATE)
        _tamper(registry, image.layer(MODEL)["digest"])
    return ollama_models.ref(name)


@pytest.mark.parametrize("damaged, message", [
    ("layer-digest", r"its system layer sha256:[0-9a-f]{64} failed verification"),
    ("layer-size", r"sent more than the 3 bytes the manifest gives its system layer sha256:[0-9a-f]{64}"),
    ("gguf-digest", r"blob sha256:[0-9a-f]{64} from registry 127\.0\.0\.1:\d+ failed verification"),
], indirect=["damaged"])
def test_a_layer_whose_bytes_do_not_match_the_manifest_fails_the_pull_naming_it(
        store: ModelStore, damaged: str, message: str) -> None:
    with pytest.raises(Internal, match=message):
        pull(store, damaged, insecure=True)
    assert_nothing_left(store)


def test_a_name_the_registry_lacks_is_not_found(store: ModelStore, ollama_models: fx.OllamaModels) -> None:
    with pytest.raises(NotFound, match=r"manifest library/nope:v1 not found on registry 127\.0\.0\.1:\d+"):
        pull(store, ollama_models.ref("library/nope:v1"), insecure=True)
    assert_nothing_left(store)


def test_a_conversion_interrupted_keeps_the_gguf_so_the_next_pull_does_not_download_it(
        store: ModelStore, registry: Registry, ollama_models: fx.OllamaModels) -> None:
    gguf = ollama_models.images[fx.TINY].layer(MODEL)["digest"]
    cancel = threading.Event()

    def progress(event: ProgressEvent) -> None:
        if event.status.startswith("converting "):
            cancel.set()

    with pytest.raises(Cancelled):
        pull(store, ollama_models.ref(fx.TINY), insecure=True, progress=progress, cancel=cancel)
    assert store.list() == [] and store.blobs.all_digests() == {gguf}
    assert not any(p.name.startswith("create-") for p in store.tmp_dir.iterdir())

    since = len(registry.requests())
    pull(store, ollama_models.ref(fx.TINY), insecure=True)
    assert not any(path.endswith(gguf) for path in blob_gets(registry, since))
    assert not store.blobs.exists(gguf) and len(store.list()) == 1


# ---------------------------------------------------------------------- redirects to a storage host


class _Server(ThreadingHTTPServer):
    def __init__(self, handle: Callable[[BaseHTTPRequestHandler], None]) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.handle_request_ = handle
        self.seen: list[tuple[str, dict[str, str]]] = []  # (path, headers) of every request

    @property
    def host(self) -> str:
        return f"127.0.0.1:{self.server_address[1]}"


class _Handler(BaseHTTPRequestHandler):
    server: _Server

    def log_message(self, *args: object) -> None:
        pass

    def send(self, status: int, body: bytes = b"", headers: dict[str, str] | None = None) -> None:
        self.send_response(status)
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self) -> None:  # noqa: N802 - http.server's naming
        self.server.seen.append((self.path, dict(self.headers)))
        self.server.handle_request_(self)


@pytest.fixture
def servers(tmp_path: Path) -> Iterator[tuple[_Server, _Server, dict[str, bytes], dict[str, bool]]]:
    """Ollama's registry (anonymous bearer tokens; every blob GET answered with a redirect to the
    storage host, with a signed URL) and the storage host; an image of the tiny model in them."""
    blobs: dict[str, bytes] = {}
    mode = {"loop": False}

    def add(media_type: str, data: bytes) -> dict:
        digest = "sha256:" + hashlib.sha256(data).hexdigest()
        blobs[digest] = data
        return {"mediaType": media_type, "digest": digest, "size": len(data)}

    gguf = write_tiny_ggufs(tmp_path / "ggufs")["llama"].read_bytes()
    layers = [add(MODEL, gguf), add(SYSTEM, TINY_SYSTEM.encode()), add(PARAMS, fx.go_json({"temperature": 0.1}))]
    config = add(fx.DOCKER_CONFIG, fx.go_json(fx.config_v2("llama", "Q8_0", "1M")))
    manifest = json.dumps({"schemaVersion": 2, "mediaType": fx.DOCKER_MANIFEST, "config": config,
                           "layers": layers}, separators=(",", ":")).encode()

    def storage(h: BaseHTTPRequestHandler) -> None:
        digest = "sha256:" + h.path.split("?")[0].rsplit("/", 1)[-1]
        if mode["loop"]:  # storage that sends the client back to the registry, which sends it here...
            return h.send(307, headers={"Location": f"http://{ollama_host.host}/v2/library/tiny/blobs/{digest}"})
        data = blobs[digest]
        if rng := h.headers.get("Range"):
            start = int(rng.removeprefix("bytes=").rstrip("-"))
            return h.send(206, data[start:], {"Content-Range": f"bytes {start}-{len(data) - 1}/{len(data)}"})
        h.send(200, data)

    def ollama(h: BaseHTTPRequestHandler) -> None:
        if h.path.startswith("/token"):
            return h.send(200, b'{"token": "anonymous-pull-token"}')
        if h.headers.get("Authorization") != "Bearer anonymous-pull-token":
            challenge = (f'Bearer realm="http://{ollama_host.host}/token",service="ollama.com",'
                         'scope="repository:library/tiny:pull"')
            return h.send(401, b'{"errors":[{"code":"UNAUTHORIZED"}]}', {"WWW-Authenticate": challenge})
        if h.path == "/v2/library/tiny/manifests/v1":
            return h.send(200, manifest, {"Content-Type": fx.DOCKER_MANIFEST})
        digest = h.path.rsplit("/", 1)[-1]
        if "/blobs/" in h.path and digest in blobs:
            signed = f"http://{store_host.host}/blobs/{digest.removeprefix('sha256:')}?X-Amz-Signature=abc"
            return h.send(307, headers={"Location": signed})
        h.send(404, b'{"errors":[{"code":"NOT_FOUND"}]}')

    ollama_host, store_host = _Server(ollama), _Server(storage)
    threads = [threading.Thread(target=s.serve_forever, daemon=True) for s in (ollama_host, store_host)]
    for t in threads:
        t.start()
    yield ollama_host, store_host, blobs, mode
    for s in (ollama_host, store_host):
        s.shutdown()
        s.server_close()


def test_blob_redirects_to_a_storage_host_are_followed_without_the_registrys_authorization(
        store: ModelStore, servers: tuple[_Server, _Server, dict[str, bytes], dict[str, bool]]) -> None:
    registry_host, storage, blobs, _ = servers

    summary = pull(store, f"{registry_host.host}/library/tiny:v1", insecure=True)

    assert store.show(summary.name).parameters["temperature"] == 0.1
    fetched = {path.split("?")[0].rsplit("/", 1)[-1] for path, _ in storage.seen}
    assert fetched == {d.removeprefix("sha256:") for d in blobs}  # every blob came from the storage host
    assert all("Authorization" not in headers for _, headers in storage.seen)
    # The registry's own blob GETs carried the token it asked for; the storage host never saw it.
    blob_requests = [headers for path, headers in registry_host.seen if "/blobs/" in path]
    assert len(blob_requests) == len(blobs)
    assert all(h.get("Authorization") == "Bearer anonymous-pull-token" for h in blob_requests)


def test_a_redirect_loop_is_an_error_naming_it(
        store: ModelStore, servers: tuple[_Server, _Server, dict[str, bytes], dict[str, bool]]) -> None:
    registry_host, _, _, mode = servers
    mode["loop"] = True
    with pytest.raises(Unavailable, match=r"redirect loop for blob sha256:[0-9a-f]{64} \(.* -> .*\)"):
        pull(store, f"{registry_host.host}/library/tiny:v1", insecure=True)
    assert_nothing_left(store)

