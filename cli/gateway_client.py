"""mlxctl's one HTTP client for the gateway: JSON answers, NDJSON streams, and errors as ours.

`run` and `chat` use `GatewayClient` (blocking urllib: Ctrl-C closes the connection, which is how
the server learns to cancel); `bench` streams many requests at once with `stream_chunks` over an
aiohttp session. Both map an error answer with `error_from_answer`, the way the gateway's status
codes map back to our error classes, so every verb fails with the same message and exit code.
"""

from __future__ import annotations

import contextlib
import json
import urllib.error
import urllib.request
from typing import TYPE_CHECKING, Any, AsyncIterator, Iterable, Iterator, Mapping

from mlxserve.services.common.config import Settings
from mlxserve.services.common.errors import (
    Busy, Cancelled, Forbidden, Internal, InvalidArgument, MlxServeError, NotFound, Timeout, Unauthenticated, Unavailable,
)

from .backend import START_HINT, gateway_headers

if TYPE_CHECKING:
    import http.client

    import aiohttp

_BY_STATUS: dict[int, type[MlxServeError]] = {400: InvalidArgument, 401: Unauthenticated, 403: Forbidden, 404: NotFound,
                                               499: Cancelled, 503: Busy, 504: Timeout}


def base_url(host: str | None, default: str) -> str:
    """`--host` as a URL, host:port, or bare host (with the default port); else the default URL."""
    if not host:
        return default
    if host.startswith(("http://", "https://")):
        return host.rstrip("/")
    if ":" in host and not host.startswith("["):
        return f"http://{host}"
    port = default.rsplit(":", 1)[1]
    return f"http://{host}:{port}"


def error_from_answer(status: int, body: bytes, headers: Mapping[str, str], reason: str = "") -> MlxServeError:
    """The gateway's error answer (`{"error": ...}`, Ollama- or OpenAI-shaped) as one of our errors."""
    try:
        message = json.loads(body.decode() or "{}").get("error") or reason
    except (ValueError, AttributeError):
        message = reason
    if isinstance(message, dict):  # OpenAI-shaped
        message = message.get("message", str(message))
    cls = _BY_STATUS.get(status, Internal if status >= 500 else InvalidArgument)
    if status == 503 and headers.get("Retry-After") is None:
        cls = Unavailable  # a backend is down, not a full queue
    return cls(str(message))


def not_running(url: str, reason: object) -> Unavailable:
    return Unavailable(f"mlxserve is not running (nothing answers at {url}: {reason}); {START_HINT}")


class StreamFailed(Internal):
    """A streamed answer that failed after it began: its `{"error": ...}` line."""


def read_chunks(lines: Iterable[bytes]) -> Iterator[dict]:
    """The NDJSON objects of a stream; an `{"error": ...}` line (a failure after the first chunk) raises StreamFailed."""
    for raw in lines:
        if not raw.strip():
            continue
        chunk = json.loads(raw)
        if chunk.get("error"):
            raise StreamFailed(str(chunk["error"]))
        yield chunk


def make_opener() -> urllib.request.OpenerDirector:
    """The urllib opener a client uses unless given one (tests put an in-process gateway here)."""
    return urllib.request.build_opener()


class GatewayClient:
    """The gateway routes mlxctl uses, over HTTP (so `--host` reaches another machine too).

    `opener` is urllib's: tests pass one whose handler answers in-process, without a socket.
    """

    def __init__(self, url: str, headers: Mapping[str, str] | None = None, timeout_s: float = 600.0,
                 opener: urllib.request.OpenerDirector | None = None) -> None:
        self.url = url
        self.headers = dict(headers or {})
        self.timeout_s = timeout_s
        self._opener = opener or make_opener()

    @classmethod
    def for_settings(cls, url: str, settings: Settings, **kwargs: Any) -> GatewayClient:
        """A client sending this home's API key and request id, with its request timeout."""
        return cls(url, gateway_headers(settings), settings.request_timeout, **kwargs)

    def open(self, method: str, path: str, body: dict | None = None, timeout_s: float | None = None) -> http.client.HTTPResponse:
        """The open answer to one request; HTTP errors become our errors, nothing listening is 'not running'."""
        data = json.dumps(body).encode() if body is not None else None
        headers = {"Content-Type": "application/json", **self.headers} if data is not None else dict(self.headers)
        req = urllib.request.Request(f"{self.url}{path}", data=data, headers=headers, method=method)
        try:
            return self._opener.open(req, timeout=timeout_s if timeout_s is not None else self.timeout_s)
        except urllib.error.HTTPError as e:
            raise error_from_answer(e.code, e.read(), e.headers, str(e.reason)) from None
        except (urllib.error.URLError, ConnectionError) as e:
            raise not_running(self.url, getattr(e, "reason", e)) from None

    def get_json(self, path: str, timeout_s: float | None = None) -> dict:
        with self.open("GET", path, timeout_s=timeout_s) as resp:
            raw = resp.read()
        return json.loads(raw) if raw.strip() else {}

    def post_json(self, path: str, body: dict) -> dict:
        """One request, one JSON answer (e.g. /api/show)."""
        with self.open("POST", path, body) as resp:
            raw = resp.read()
        return json.loads(raw) if raw.strip() else {}

    @contextlib.contextmanager
    def stream(self, path: str, body: dict) -> Iterator[Iterator[dict]]:
        """The NDJSON chunks of one streamed answer; leaving the block closes it, which stops the answer."""
        with self.open("POST", path, body) as resp:
            yield read_chunks(resp)

    # -- the routes -----------------------------------------------------------------------------------

    def show(self, model: str) -> dict[str, Any]:
        """The model's /api/show answer; an unknown model is NotFound, with where to look."""
        try:
            return self.post_json("/api/show", {"model": model})
        except NotFound as e:
            raise NotFound(f"{e}; `mlxctl list` shows the models here") from None

    def load(self, body: dict[str, Any]) -> None:
        """Load the model of a chat request with no messages."""
        self.post_json("/api/chat", body)

    def chat(self, body: dict[str, Any]) -> contextlib.AbstractContextManager[Iterator[dict]]:
        return self.stream("/api/chat", body)

    def generate(self, body: dict[str, Any]) -> contextlib.AbstractContextManager[Iterator[dict]]:
        return self.stream("/api/generate", body)

    def create(self, body: dict[str, Any]) -> Iterator[dict[str, Any]]:
        with self.stream("/api/create", body) as chunks:
            yield from chunks

    def version(self) -> str:
        """mlxserve's version ('' when it cannot be read); `version` is the Ollama API level it speaks."""
        try:
            doc = self.get_json("/api/version", timeout_s=10)
        except (MlxServeError, OSError, ValueError):
            return ""
        return str(doc.get("mlxserve_version") or doc.get("version", ""))


async def stream_chunks(session: aiohttp.ClientSession, url: str, path: str, body: dict) -> AsyncIterator[dict]:
    """`GatewayClient.stream` for many requests at once: the NDJSON chunks of one answer, read as they arrive."""
    async with session.post(f"{url}{path}", json=body) as resp:
        if resp.status != 200:
            raise error_from_answer(resp.status, await resp.read(), resp.headers, resp.reason or "")
        async for raw in resp.content:
            for chunk in read_chunks([raw]):
                yield chunk
