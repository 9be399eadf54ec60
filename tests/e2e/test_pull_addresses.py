"""Where a pull connects, against servers on 127.0.0.1 (issue 21, item 3): a registry or hub that
redirects to a refused address is refused before any connection is made there, and a remote's
bodies and banners never come back in the error. (The pulls from the real local registry that
must keep working are test_registry.py and test_ollama_registry_pull.py.)

Every test here also wraps socket.create_connection so that a connection anywhere but loopback
fails the test, whatever the store does.
"""

from __future__ import annotations

import ipaddress
import socket
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Callable, Iterator

import pytest

from mlxserve.services.common.errors import Forbidden, NotFound, Unavailable
from mlxserve.services.store.credentials import CredentialStore
from mlxserve.services.store.store import ModelStore
from mlxserve.services.store.transfer import Remotes, pull
from tests.fixtures.gateway_store import ndjson, with_store
from tests.fixtures.inproc_http import InprocClient

pytestmark = pytest.mark.timeout(60)
SECRET = "AKIA-SECRET-FROM-THE-REMOTE"

Answer = tuple[int, dict[str, str], bytes]


class _Server(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, answer: Callable[[str], Answer]) -> None:
        self.answer = answer
        self.paths: list[str] = []
        super().__init__(("127.0.0.1", 0), _Handler)

    @property
    def host(self) -> str:
        return f"127.0.0.1:{self.server_address[1]}"


class _Handler(BaseHTTPRequestHandler):
    server: _Server

    def log_message(self, *args: object) -> None:
        pass

    def do_GET(self) -> None:  # noqa: N802 - http.server's naming
        self.server.paths.append(self.path)
        status, headers, body = self.server.answer(self.path)
        self.send_response(status)
        for k, v in headers.items():
            self.send_header(k, v)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    do_HEAD = do_GET


@pytest.fixture
def serve() -> Iterator[Callable[[Callable[[str], Answer]], _Server]]:
    servers: list[_Server] = []

    def start(answer: Callable[[str], Answer]) -> _Server:
        server = _Server(answer)
        threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True).start()
        servers.append(server)
        return server

    yield start
    for server in servers:
        server.shutdown()
        server.server_close()


@pytest.fixture(autouse=True)
def loopback_only(monkeypatch: pytest.MonkeyPatch) -> list[tuple[str, int]]:
    """Every connection the test makes, each checked to be to loopback before it is made."""
    made: list[tuple[str, int]] = []
    real = socket.create_connection

    def checked(address: tuple[str, int], *args: object, **kwargs: object) -> socket.socket:
        assert ipaddress.ip_address(address[0]).is_loopback, f"a connection to {address} was attempted"
        made.append(address)
        return real(address, *args, **kwargs)

    monkeypatch.setattr(socket, "create_connection", checked)
    return made


def _pull(tmp_path: Path, ref: str, remotes: Remotes | None = None) -> None:
    pull(ModelStore(tmp_path / "models"), ref, insecure=True, credentials=CredentialStore(), remotes=remotes)


REFUSED_TARGETS = [
    ("http://169.254.169.254/latest/meta-data/iam/security-credentials/", "cloud metadata address"),
    ("http://metadata.google.internal/computeMetadata/v1/", "cloud metadata service"),
    ("http://[fe80::1]:8080/", "link-local"),
    ("http://0.0.0.0:22/", "unspecified"),
    ("https://[::ffff:169.254.169.254]/", "cloud metadata address"),
]


@pytest.mark.parametrize("location, reason", REFUSED_TARGETS)
def test_a_registry_redirect_to_a_refused_address_is_refused_before_connecting_there(
        tmp_path: Path, serve: Callable[[Callable[[str], Answer]], _Server], location: str, reason: str,
        loopback_only: list[tuple[str, int]]) -> None:
    registry = serve(lambda path: (307, {"Location": location}, b""))
    with pytest.raises(Forbidden, match=reason):
        _pull(tmp_path, f"{registry.host}/library/tiny:v1")
    assert registry.paths == ["/v2/library/tiny/manifests/v1"]
    assert {port for _, port in loopback_only} == {int(registry.host.rsplit(":", 1)[1])}


def test_a_bearer_token_realm_at_a_metadata_address_is_refused(
        tmp_path: Path, serve: Callable[[Callable[[str], Answer]], _Server]) -> None:
    challenge = 'Bearer realm="http://169.254.169.254/latest/api/token",service="x"'
    registry = serve(lambda path: (401, {"WWW-Authenticate": challenge}, b""))
    with pytest.raises(Forbidden, match="169.254.169.254 is a cloud metadata address"):
        _pull(tmp_path, f"{registry.host}/library/tiny:v1")


@pytest.mark.parametrize("status, error, shown", [
    (404, NotFound, "404 Not Found"),
    (500, Unavailable, "500 Internal Server Error"),
    (418, Unavailable, "418 I'm a Teapot"),
])
def test_a_registrys_error_body_is_never_quoted_back(
        tmp_path: Path, serve: Callable[[Callable[[str], Answer]], _Server], status: int,
        error: type[Exception], shown: str) -> None:
    body = ('{"errors":[{"code":"MANIFEST_UNKNOWN","message":"%s"}]}' % SECRET).encode()
    registry = serve(lambda path: (status, {"Content-Type": "application/json"}, body))
    with pytest.raises(error) as refused:
        _pull(tmp_path, f"{registry.host}/library/tiny:v1")
    assert shown in str(refused.value) and SECRET not in str(refused.value)


def test_a_port_that_does_not_speak_http_is_named_so_without_its_banner(tmp_path: Path) -> None:
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen()

    def banner() -> None:
        conn, _ = listener.accept()
        with conn:
            conn.sendall(f"SSH-2.0-OpenSSH_9.2 {SECRET}\r\n".encode())
            conn.recv(4096)

    threading.Thread(target=banner, daemon=True).start()
    with listener, pytest.raises(Unavailable) as refused:
        _pull(tmp_path, f"127.0.0.1:{listener.getsockname()[1]}/library/tiny:v1")
    assert "does not answer HTTP" in str(refused.value) and SECRET not in str(refused.value)


def test_a_hub_redirect_to_a_metadata_address_is_refused(
        tmp_path: Path, serve: Callable[[Callable[[str], Answer]], _Server],
        monkeypatch: pytest.MonkeyPatch) -> None:
    for var in ("HF_TOKEN", "HF_ENDPOINT", "HF_HUB_OFFLINE"):
        monkeypatch.delenv(var, raising=False)
    hub = serve(lambda path: (302, {"Location": "http://169.254.169.254/latest/meta-data/"}, b""))
    with pytest.raises(Forbidden, match="cloud metadata address"):
        _pull(tmp_path, "hf.co/Tiny-Org/Tiny-Repo", Remotes(hf_endpoint=f"http://{hub.host}"))
    assert hub.paths == ["/api/models/Tiny-Org/Tiny-Repo?blobs=true"]


def test_a_hub_error_shows_its_short_message_cleaned_never_its_body(
        tmp_path: Path, serve: Callable[[Callable[[str], Answer]], _Server],
        monkeypatch: pytest.MonkeyPatch) -> None:
    for var in ("HF_TOKEN", "HF_ENDPOINT", "HF_HUB_OFFLINE"):
        monkeypatch.delenv(var, raising=False)
    hub = serve(lambda path: (503, {"X-Error-Message": "down\x1b[2J for maintenance"}, SECRET.encode()))
    with pytest.raises(Unavailable) as refused:
        _pull(tmp_path, "hf.co/Tiny-Org/Tiny-Repo", Remotes(hf_endpoint=f"http://{hub.host}"))
    text = str(refused.value)
    assert "503 Service Unavailable" in text and "down [2J for maintenance" in text and SECRET not in text


def test_api_pull_of_a_metadata_address_is_a_403_naming_why() -> None:
    async def check(c: InprocClient, store: ModelStore) -> None:
        body = {"model": "169.254.169.254/latest/meta-data:iam", "insecure": True}
        lines = await ndjson(await c.post("/api/pull", json=body))
        assert "169.254.169.254 is a cloud metadata address" in lines[-1]["error"]
        resp = await c.post("/api/pull", json={**body, "stream": False})
        assert resp.status == 403 and "cloud metadata" in (await resp.json())["error"]
    with_store(check)


@pytest.mark.parametrize("location, reason", REFUSED_TARGETS[:2])
def test_a_package_url_that_redirects_to_a_refused_address_is_refused(
        tmp_path: Path, serve: Callable[[Callable[[str], Answer]], _Server], location: str, reason: str) -> None:
    packages = serve(lambda path: (302, {"Location": location}, b""))
    with pytest.raises(Forbidden, match=reason):
        _pull(tmp_path, f"http://{packages.host}/tiny.tar")
    assert packages.paths == ["/tiny.tar"]


def test_a_package_servers_error_body_is_never_quoted_back(
        tmp_path: Path, serve: Callable[[Callable[[str], Answer]], _Server]) -> None:
    packages = serve(lambda path: (500, {}, SECRET.encode()))
    with pytest.raises(Unavailable) as refused:
        _pull(tmp_path, f"http://{packages.host}/tiny.tar")
    assert "500 Internal Server Error" in str(refused.value) and SECRET not in str(refused.value)
