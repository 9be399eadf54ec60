"""A synchronous OCI distribution v2 client: manifests, blobs (with Range), uploads, auth.

Runs on the store's worker threads, so it is plain blocking `http.client`, one connection per
request. Auth follows the registry's `WWW-Authenticate` challenge: anonymous until asked, then
Basic with the host's credentials, or Bearer via the challenge's token endpoint (sending the
credentials there, if any). `https://` always, `http://` only when `insecure=True`.

Every connection (redirects and token services included) goes through the store's address
filter (connections.py); errors name the status, never the registry's own text.
"""

from __future__ import annotations

import base64
import http.client
import json
import re
import ssl
import urllib.parse
from dataclasses import dataclass
from typing import BinaryIO, Callable, Iterable

from mlxserve import __version__
from mlxserve.services.common.addresses import Guard
from mlxserve.services.common.errors import InvalidArgument, MlxServeError, NotFound, Unavailable

from .connections import clean_text, describe_failure, open_connection, status_line
from .credentials import Credentials

OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_INDEX = "application/vnd.oci.image.index.v1+json"
DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
DOCKER_MANIFEST_LIST = "application/vnd.docker.distribution.manifest.list.v2+json"
MANIFEST_ACCEPT = ", ".join((OCI_MANIFEST, DOCKER_MANIFEST, OCI_INDEX, DOCKER_MANIFEST_LIST))

USER_AGENT = f"mlxserve/{__version__}"
SEND_BLOCK = 1024 * 1024
_REDIRECTS = (301, 302, 303, 307, 308)
MAX_TOKEN_ANSWER = 1024 * 1024  # a bearer token answer is a few KB
_CHALLENGE_PARAM = re.compile(r'(\w+)\s*=\s*(?:"([^"]*)"|([^\s,]+))')

Body = bytes | Callable[[], BinaryIO] | None  # a callable re-opens the body when a request is retried


class RegistryError(Unavailable):
    """The registry answered with an error we cannot act on (a 5xx, or an unexpected status)."""


@dataclass(frozen=True)
class Challenge:
    scheme: str  # "basic" or "bearer"
    params: dict[str, str]


def parse_challenge(header: str) -> Challenge | None:
    """Parse one `WWW-Authenticate` header (`Bearer realm="...",service="...",scope="..."`)."""
    scheme, _, rest = header.strip().partition(" ")
    if not scheme:
        return None
    params = {m.group(1).lower(): m.group(2) if m.group(2) is not None else m.group(3)
              for m in _CHALLENGE_PARAM.finditer(rest)}
    return Challenge(scheme.lower(), params)


class Response:
    """A streaming HTTP response; read it, then close it (or use it as a context manager)."""

    def __init__(self, conn: http.client.HTTPConnection, resp: http.client.HTTPResponse, url: str) -> None:
        self._conn = conn
        self._resp = resp
        self.status = resp.status
        self.headers = resp.headers
        self.url = url

    def read(self, n: int = -1) -> bytes:
        return self._resp.read(n) if n >= 0 else self._resp.read()

    def readinto(self, b: bytearray | memoryview) -> int:
        return self._resp.readinto(b)

    def close(self) -> None:
        self._resp.close()
        self._conn.close()

    def __enter__(self) -> Response:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class RegistryClient:
    """One registry host (`host[:port]`), with the auth state it has learnt so far."""

    def __init__(self, host: str, *, insecure: bool = False, credentials: Credentials | None = None,
                 timeout: float = 60.0, guard: Guard | None = None) -> None:
        self.host = host
        self.insecure = insecure
        self.guard = guard or Guard()
        self.scheme = "http" if insecure else "https"
        self.credentials = credentials
        self.timeout = timeout
        self._auth_header: str | None = None
        self._bearer_tokens: dict[str, str] = {}  # scope -> token

    # ------------------------------------------------------------------ API

    def get_manifest(self, repo: str, reference: str) -> tuple[bytes, str, str | None]:
        """GET a manifest: (bytes, media type, the registry's Docker-Content-Digest or None)."""
        with self.request("GET", f"/v2/{repo}/manifests/{reference}", headers={"Accept": MANIFEST_ACCEPT},
                          what=f"manifest {repo}:{reference}") as resp:
            data = resp.read()
            media_type = (resp.headers.get("Content-Type") or "").split(";")[0].strip()
            return data, media_type, resp.headers.get("Docker-Content-Digest")

    def put_manifest(self, repo: str, reference: str, data: bytes, media_type: str = OCI_MANIFEST) -> str | None:
        """PUT a manifest under a tag or digest; returns the registry's digest for it."""
        with self.request("PUT", f"/v2/{repo}/manifests/{reference}", body=data,
                          headers={"Content-Type": media_type}, expect=(200, 201),
                          what=f"manifest {repo}:{reference}") as resp:
            resp.read()
            return resp.headers.get("Docker-Content-Digest")

    def has_blob(self, repo: str, digest: str) -> bool:
        with self.request("HEAD", f"/v2/{repo}/blobs/{digest}", expect=(200, 404), what=f"blob {digest}") as resp:
            return resp.status == 200

    def open_blob(self, repo: str, digest: str, offset: int = 0) -> Response:
        """GET a blob from `offset` (a Range request when > 0): status 206 resumes, 200 starts over."""
        headers = {"Range": f"bytes={offset}-"} if offset > 0 else {}
        return self.request("GET", f"/v2/{repo}/blobs/{digest}", headers=headers, expect=(200, 206, 416),
                            what=f"blob {digest}")

    def upload_blob(self, repo: str, digest: str, size: int, opener: Callable[[], BinaryIO]) -> None:
        """Upload one blob monolithically: POST an upload session, then PUT the bytes with the digest."""
        with self.request("POST", f"/v2/{repo}/blobs/uploads/", body=b"", expect=(202,),
                          headers={"Content-Length": "0"}, what=f"upload of {digest}") as resp:
            resp.read()
            location = resp.headers.get("Location")
        if not location:
            raise RegistryError(f"registry {self.host} started an upload without a Location header")
        parsed = urllib.parse.urlsplit(location)
        query = urllib.parse.parse_qsl(parsed.query, keep_blank_values=True) + [("digest", digest)]
        url = urllib.parse.urlunsplit((parsed.scheme, parsed.netloc, parsed.path, urllib.parse.urlencode(query), ""))
        with self.request("PUT", url, body=opener, expect=(201, 204),
                          headers={"Content-Type": "application/octet-stream", "Content-Length": str(size)},
                          what=f"upload of {digest}") as resp:
            resp.read()

    # ------------------------------------------------------------------ transport

    def _url(self, path_or_url: str) -> str:
        if path_or_url.startswith(("http://", "https://")):
            return path_or_url
        return f"{self.scheme}://{self.host}{path_or_url}"

    def _connect(self, url: str) -> tuple[http.client.HTTPConnection, str]:
        parts = urllib.parse.urlsplit(url)
        if parts.scheme == "http" and not self.insecure:
            raise InvalidArgument(f"registry {self.host} sent us to plain-http {clean_text(parts.netloc)}; "
                                  "allow http:// registries with --insecure")
        if parts.scheme not in ("http", "https"):
            raise RegistryError(f"registry {self.host} sent us to a URL that is not http(s)")
        return open_connection(url, self.guard, timeout=self.timeout, blocksize=SEND_BLOCK)

    def _send(self, method: str, url: str, headers: dict[str, str], body: Body) -> Response:
        conn, target = self._connect(url)
        payload = body() if callable(body) else body
        try:
            conn.request(method, target, body=payload, headers=headers)
            resp = conn.getresponse()
        except ssl.SSLError as e:
            conn.close()
            if "WRONG_VERSION_NUMBER" in str(e) or "record layer failure" in str(e).lower():
                raise InvalidArgument(
                    f"registry {self.host} does not speak HTTPS (it looks like a plain-http registry); "
                    "if you trust it, use --insecure") from e
            raise InvalidArgument(f"TLS with registry {self.host} failed: {e.reason or e}") from e
        except (OSError, http.client.HTTPException) as e:
            conn.close()
            raise Unavailable(f"cannot reach registry {self.host}: {describe_failure(e)}") from e
        except BaseException:  # e.g. Cancelled raised by a progress-reporting body
            conn.close()
            raise
        finally:
            if payload is not None and not isinstance(payload, bytes):
                payload.close()
        return Response(conn, resp, url)

    def request(self, method: str, path_or_url: str, *, headers: dict[str, str] | None = None, body: Body = None,
                expect: Iterable[int] = (200,), what: str = "") -> Response:
        """Send one request, answering auth challenges and following redirects; check the status."""
        url = self._url(path_or_url)
        expect = tuple(expect)
        auth_tried: set[str] = set()
        visited = [url]
        for _ in range(8):
            hdrs = {"User-Agent": USER_AGENT, **(headers or {})}
            same_host = urllib.parse.urlsplit(url).netloc == self.host
            if self._auth_header and same_host:
                hdrs["Authorization"] = self._auth_header
            resp = self._send(method, url, hdrs, body)
            if resp.status in expect:
                return resp
            if resp.status in _REDIRECTS and method in ("GET", "HEAD"):
                location = resp.headers.get("Location")
                resp.close()
                if not location:
                    raise RegistryError(f"registry {self.host} redirected {what or url} without a Location")
                url = urllib.parse.urljoin(url, location)
                if url in visited:
                    hops = " -> ".join(clean_text(urllib.parse.urlsplit(u).netloc + urllib.parse.urlsplit(u).path, 80)
                                       for u in [*visited[visited.index(url):], url])
                    raise RegistryError(f"registry {self.host}: redirect loop for {what or url} ({hops})")
                visited.append(url)
                continue
            if resp.status == 401 and same_host:
                challenge_header = resp.headers.get("WWW-Authenticate") or ""
                resp.read()
                resp.close()
                if challenge_header in auth_tried:
                    raise self._auth_failure(what)
                auth_tried.add(challenge_header)
                self._answer_challenge(parse_challenge(challenge_header), what)
                continue
            resp.close()  # its body is the registry's text: never quoted back
            raise self._status_error(resp.status, what or url)
        raise RegistryError(f"registry {self.host}: too many redirects or auth rounds for {what or url}")

    # ------------------------------------------------------------------ auth

    def _auth_failure(self, what: str) -> MlxServeError:
        if self.credentials is None:
            return InvalidArgument(
                f"registry {self.host} requires authentication for {what} and no credentials were found; "
                f"add [registry_auth.\"{self.host}\"] with username and password to config.toml, "
                f"or run `docker login {self.host}`")
        return InvalidArgument(
            f"registry {self.host} refused the credentials for user {self.credentials.username!r} "
            f"(from {self.credentials.source or 'the request'}) for {what}")

    def _basic(self) -> str:
        assert self.credentials is not None
        raw = f"{self.credentials.username}:{self.credentials.password}".encode()
        return "Basic " + base64.b64encode(raw).decode()

    def _answer_challenge(self, challenge: Challenge | None, what: str) -> None:
        if challenge is None:
            raise self._auth_failure(what)
        if challenge.scheme == "basic":
            if self.credentials is None:
                raise self._auth_failure(what)
            self._auth_header = self._basic()
            return
        if challenge.scheme != "bearer" or "realm" not in challenge.params:
            raise InvalidArgument(f"registry {self.host} asks for unsupported authentication {challenge.scheme!r}")
        scope = challenge.params.get("scope", "")
        token = self._fetch_token(challenge.params, what)
        self._bearer_tokens[scope] = token
        self._auth_header = f"Bearer {token}"

    def _fetch_token(self, params: dict[str, str], what: str) -> str:
        realm = params["realm"]
        query = [(k, params[k]) for k in ("service",) if params.get(k)]
        query += [("scope", s) for s in params.get("scope", "").split(" ") if s]
        url = realm + ("&" if "?" in realm else "?") + urllib.parse.urlencode(query)
        headers = {"User-Agent": USER_AGENT}
        if self.credentials is not None and self.credentials.username:
            headers["Authorization"] = self._basic()
        conn, target = self._connect(url)
        try:
            conn.request("GET", target, headers=headers)
            resp = conn.getresponse()
            body = resp.read(MAX_TOKEN_ANSWER + 1)
        except (OSError, http.client.HTTPException) as e:
            raise Unavailable(f"cannot reach the token service {clean_text(realm, 80)} of registry {self.host}: "
                              f"{describe_failure(e)}") from e
        finally:
            conn.close()
        if resp.status in (401, 403):
            raise self._auth_failure(what)
        if resp.status != 200:
            raise RegistryError(f"token service {clean_text(realm, 80)} of registry {self.host} answered "
                                f"{status_line(resp.status)}")
        try:
            doc = json.loads(body) if len(body) <= MAX_TOKEN_ANSWER else None
            token = doc.get("token") or doc.get("access_token")
        except (ValueError, AttributeError, RecursionError):
            token = None
        if not token or not isinstance(token, str):
            raise RegistryError(f"token service {clean_text(realm, 80)} of registry {self.host} returned no token")
        return token

    def _status_error(self, status: int, what: str) -> MlxServeError:
        suffix = f" ({status_line(status)})"
        if status == 404:
            return NotFound(f"{what} not found on registry {self.host}{suffix}")
        if status == 403:
            return self._auth_failure(what)
        if status in (400, 405, 413, 415, 422):
            return InvalidArgument(f"registry {self.host} rejected {what}{suffix}")
        return RegistryError(f"registry {self.host} answered {status_line(status)} for {what}")
