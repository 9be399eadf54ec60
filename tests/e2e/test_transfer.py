"""Pull against a small in-test registry: bearer-token auth, servers that ignore Range, cancel."""

from __future__ import annotations

import base64
import hashlib
import json
import os
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Iterator

import pytest

from mlxserve.services.common.errors import Cancelled, InvalidArgument, Unsupported
from mlxserve.services.store.credentials import Credentials
from mlxserve.services.store.registry import parse_challenge
from mlxserve.services.store.store import ModelStore
from mlxserve.services.store.transfer import partial_path, pull
from tests.fixtures.registry import put_model


class FakeRegistry(ThreadingHTTPServer):
    """Serves one repository's manifests and blobs; optionally demands a bearer token, ignores Range."""

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.manifests: dict[str, bytes] = {}
        self.blobs: dict[str, bytes] = {}
        self.token_user: tuple[str, str] | None = None  # require Bearer, issued to this user
        self.ignore_range = False
        self.log: list[tuple[str, str, dict[str, str]]] = []

    @property
    def host(self) -> str:
        return f"127.0.0.1:{self.server_address[1]}"


class _Handler(BaseHTTPRequestHandler):
    server: FakeRegistry

    def log_message(self, *args: object) -> None:
        pass

    def _send(self, status: int, body: bytes = b"", headers: dict[str, str] | None = None) -> None:
        self.send_response(status)
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self) -> None:  # noqa: N802 - http.server's naming
        reg = self.server
        reg.log.append(("GET", self.path, dict(self.headers)))
        if self.path.startswith("/token"):
            expected = "Basic " + base64.b64encode(":".join(reg.token_user or ("", "")).encode()).decode()
            if self.headers.get("Authorization") != expected:
                return self._send(401)
            return self._send(200, json.dumps({"token": "good-token"}).encode())
        if reg.token_user and self.headers.get("Authorization") != "Bearer good-token":
            challenge = (f'Bearer realm="http://{reg.host}/token",service="fake",'
                         f'scope="repository:library/m:pull"')
            return self._send(401, b'{"errors":[{"code":"UNAUTHORIZED"}]}', {"WWW-Authenticate": challenge})
        _, _, repo_ns, repo_name, kind, ref = self.path.split("/", 5)
        if kind == "manifests" and ref in reg.manifests:
            return self._send(200, reg.manifests[ref], {"Content-Type": "application/vnd.oci.image.manifest.v1+json"})
        if kind == "blobs" and ref in reg.blobs:
            data = reg.blobs[ref]
            rng = self.headers.get("Range")
            if rng and not reg.ignore_range:
                start = int(rng.removeprefix("bytes=").rstrip("-"))
                return self._send(206, data[start:], {"Content-Range": f"bytes {start}-{len(data) - 1}/{len(data)}"})
            return self._send(200, data)
        return self._send(404, b'{"errors":[{"code":"NOT_FOUND","message":"unknown"}]}')


@pytest.fixture
def fake() -> Iterator[FakeRegistry]:
    server = FakeRegistry()
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()


def publish(fake: FakeRegistry, tmp_path: Path, files: dict[str, bytes]) -> tuple[str, ModelStore]:
    """Put a model into a scratch store, then serve its manifest and blobs from `fake`."""
    src = ModelStore(tmp_path / "src")
    name = f"{fake.host}/library/m:latest"
    put_model(src, name, files)
    _, data, manifest = src.get_manifest(name)
    fake.manifests["latest"] = data
    for digest in manifest.digests():
        fake.blobs[digest] = src.blobs.read(digest)
    return name, src


def test_bearer_token_auth_fetches_a_token_with_the_credentials(fake: FakeRegistry, tmp_path: Path) -> None:
    name, src = publish(fake, tmp_path, {"config.json": b'{"t": 1}'})
    fake.token_user = ("alice", "pw")
    dst = ModelStore(tmp_path / "dst")

    pull(dst, name, insecure=True, credentials=Credentials("alice", "pw"))

    assert dst.get_manifest(name)[1] == src.get_manifest(name)[1]
    token_calls = [path for method, path, _ in fake.log if path.startswith("/token")]
    assert token_calls == ["/token?service=fake&scope=repository%3Alibrary%2Fm%3Apull"]
    with pytest.raises(InvalidArgument, match="refused the credentials for user 'alice'"):
        pull(ModelStore(tmp_path / "x"), name, insecure=True, credentials=Credentials("alice", "nope"))


def test_resume_against_a_server_that_ignores_range_restarts_cleanly(fake: FakeRegistry, tmp_path: Path) -> None:
    weights = os.urandom(3 << 20)
    name, _ = publish(fake, tmp_path, {"model.safetensors": weights})
    fake.ignore_range = True
    dst = ModelStore(tmp_path / "dst")
    digest = "sha256:" + hashlib.sha256(weights).hexdigest()
    partial_path(dst, digest).write_bytes(weights[:1000])

    pull(dst, name, insecure=True)

    assert dst.blobs.path(digest).read_bytes() == weights
    ranged = [h.get("Range") for method, path, h in fake.log if path.endswith(digest)]
    assert ranged == ["bytes=1000-"]


def test_a_damaged_partial_download_is_discarded_not_kept(fake: FakeRegistry, tmp_path: Path) -> None:
    weights = os.urandom(1 << 20)
    name, _ = publish(fake, tmp_path, {"model.safetensors": weights})
    dst = ModelStore(tmp_path / "dst")
    digest = "sha256:" + hashlib.sha256(weights).hexdigest()
    partial_path(dst, digest).write_bytes(b"\0" * 1000)  # not a prefix of the blob

    with pytest.raises(Exception, match="failed verification"):
        pull(dst, name, insecure=True)
    assert dst.list() == [] and not partial_path(dst, digest).exists()

    pull(dst, name, insecure=True)  # the next pull starts from scratch and succeeds
    assert dst.blobs.path(digest).read_bytes() == weights


def test_cancelled_pull_keeps_its_partial_and_shows_no_model(fake: FakeRegistry, tmp_path: Path) -> None:
    weights = os.urandom(9 << 20)
    name, _ = publish(fake, tmp_path, {"model.safetensors": weights})
    dst = ModelStore(tmp_path / "dst")
    digest = "sha256:" + hashlib.sha256(weights).hexdigest()
    cancel = threading.Event()

    def progress(event) -> None:
        if event.digest == digest and event.completed > 0:
            cancel.set()

    with pytest.raises(Cancelled):
        pull(dst, name, insecure=True, progress=progress, cancel=cancel)

    assert dst.list() == [] and not dst.blobs.exists(digest)
    kept = partial_path(dst, digest).stat().st_size
    assert 0 < kept < len(weights)
    pull(dst, name, insecure=True)
    range_headers = [h.get("Range") for method, path, h in fake.log if path.endswith(digest)]
    assert range_headers == [None, f"bytes={kept}-"]


def test_foreign_manifests_are_refused_clearly(fake: FakeRegistry, tmp_path: Path) -> None:
    image = {"schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
             "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": "sha256:" + "0" * 64,
                        "size": 2}, "layers": []}
    fake.manifests["latest"] = json.dumps(image).encode()
    fake.manifests["multi"] = json.dumps({"schemaVersion": 2, "manifests": []}).encode()
    dst = ModelStore(tmp_path / "dst")
    with pytest.raises(Unsupported, match="not an mlxserve model"):
        pull(dst, f"{fake.host}/library/m:latest", insecure=True)
    with pytest.raises(Unsupported, match="image index"):
        pull(dst, f"{fake.host}/library/m:multi", insecure=True)
    assert dst.list() == []


def test_pull_by_digest_checks_the_manifest_digest(fake: FakeRegistry, tmp_path: Path) -> None:
    name, src = publish(fake, tmp_path, {"config.json": b"{}"})
    data = src.get_manifest(name)[1]
    digest = "sha256:" + hashlib.sha256(data).hexdigest()
    fake.manifests[digest] = data
    dst = ModelStore(tmp_path / "dst")
    summary = pull(dst, f"{fake.host}/library/m@{digest}", insecure=True)
    assert summary.digest == digest[7:]
    fake.manifests["sha256:" + "1" * 64] = data
    with pytest.raises(Exception, match="whose digest is"):
        pull(dst, f"{fake.host}/library/m@sha256:{'1' * 64}", insecure=True)


def test_www_authenticate_challenges_parse() -> None:
    c = parse_challenge('Bearer realm="https://auth.example/token",service="reg",scope="repository:a/b:pull,push"')
    assert c is not None and c.scheme == "bearer"
    assert c.params == {"realm": "https://auth.example/token", "service": "reg", "scope": "repository:a/b:pull,push"}
    basic = parse_challenge('Basic realm="test-realm"')
    assert basic is not None and basic.scheme == "basic" and basic.params == {"realm": "test-realm"}
