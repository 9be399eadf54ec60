"""HTTP connections of the store to remote hosts, through the address filter, and what of a
remote's answer may be shown to the user.

Every pull and push opens its connections with `open_connection` (the OCI and Ollama registries,
their token services and blob storage, the Hugging Face hub and its storage, redirects
included), so `addresses.Guard` decides each one on the address it then connects to.

A remote host is whatever a caller names: its bodies and free text are never quoted back (that
would make the store a proxy that reads internal services for whoever calls /api/pull). Errors
say the status code and its standard reason (`status_line`), and a failure by its kind
(`describe_failure`), never bytes the remote sent.
"""

from __future__ import annotations

import http
import http.client
import socket
import ssl
import urllib.parse
import urllib.request
from functools import partial

from mlxserve.services.common.addresses import Guard
from mlxserve.services.common.errors import InvalidArgument

MAX_REMOTE_TEXT = 160


class _GuardedHTTP(http.client.HTTPConnection):
    """Plain http to an address the guard allowed for plain http."""

    def __init__(self, host: str, *, guard: Guard, timeout: float, blocksize: int) -> None:
        super().__init__(host, timeout=timeout, blocksize=blocksize)
        self.guard = guard

    def connect(self) -> None:
        self.sock = self.guard.connect(self.host, self.port, self.timeout, insecure=True)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


class _GuardedHTTPS(http.client.HTTPSConnection):
    """TLS (verified against the host's name) to an address the guard allowed."""

    def __init__(self, host: str, *, guard: Guard, timeout: float, blocksize: int, tls: ssl.SSLContext) -> None:
        super().__init__(host, timeout=timeout, blocksize=blocksize, context=tls)
        self.guard, self.tls = guard, tls

    def connect(self) -> None:
        sock = self.guard.connect(self.host, self.port, self.timeout, insecure=False)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        try:
            self.sock = self.tls.wrap_socket(sock, server_hostname=self.host)
        except BaseException:
            sock.close()
            raise


def open_connection(url: str, guard: Guard, *, timeout: float,
                    blocksize: int = 8192) -> tuple[http.client.HTTPConnection, str]:
    """An unconnected connection for `url` (http or https) and the request target (path?query).

    It connects on its first request, through `guard`: a refused host raises Forbidden then.
    """
    parts = urllib.parse.urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise InvalidArgument(f"{clean_text(url)} is not an http(s) URL")
    conn: http.client.HTTPConnection
    if parts.scheme == "https":
        conn = _GuardedHTTPS(parts.netloc, guard=guard, timeout=timeout, blocksize=blocksize,
                             tls=ssl.create_default_context())
    else:
        conn = _GuardedHTTP(parts.netloc, guard=guard, timeout=timeout, blocksize=blocksize)
    target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    return conn, target


class _GuardedHTTPHandler(urllib.request.HTTPHandler):
    def __init__(self, guard: Guard) -> None:
        super().__init__()
        self.guard = guard

    def http_open(self, req: urllib.request.Request) -> http.client.HTTPResponse:
        return self.do_open(partial(_GuardedHTTP, guard=self.guard, blocksize=8192), req)


class _GuardedHTTPSHandler(urllib.request.HTTPSHandler):
    def __init__(self, guard: Guard) -> None:
        super().__init__()
        self.guard = guard

    def https_open(self, req: urllib.request.Request) -> http.client.HTTPResponse:
        return self.do_open(partial(_GuardedHTTPS, guard=self.guard, blocksize=8192,
                                    tls=ssl.create_default_context()), req)


def url_opener(guard: Guard) -> urllib.request.OpenerDirector:
    """A urllib opener whose every connection, redirects included, goes through `guard`: http and
    https only (no ftp, file or proxies from the environment)."""
    opener = urllib.request.OpenerDirector()
    for handler in (_GuardedHTTPHandler(guard), _GuardedHTTPSHandler(guard), urllib.request.HTTPDefaultErrorHandler(),
                    urllib.request.HTTPRedirectHandler(), urllib.request.HTTPErrorProcessor(),
                    urllib.request.UnknownHandler()):
        opener.add_handler(handler)
    return opener


def clean_text(text: str, limit: int = MAX_REMOTE_TEXT) -> str:
    """`text` as printable ASCII on one line, at most `limit` characters (cut with "...")."""
    printable = "".join(c if " " <= c <= "~" else " " for c in text)
    one_line = " ".join(printable.split())
    return one_line if len(one_line) <= limit else one_line[:limit - 3] + "..."


def status_line(status: int) -> str:
    """'404 Not Found': a status code and its standard reason (not the remote's wording)."""
    try:
        return f"{status} {http.HTTPStatus(status).phrase}"
    except ValueError:
        return str(status)


def describe_failure(e: BaseException) -> str:
    """A connection or protocol failure by its kind, without anything the remote sent."""
    if isinstance(e, socket.timeout):
        return "timed out"
    if isinstance(e, socket.gaierror):
        return "the host name does not resolve"
    if isinstance(e, ssl.SSLError):
        return f"TLS failed ({clean_text(str(e.reason or type(e).__name__))})"  # OpenSSL's own words
    if isinstance(e, http.client.RemoteDisconnected):
        return "the server closed the connection without answering"
    if isinstance(e, (http.client.BadStatusLine, http.client.LineTooLong, http.client.UnknownProtocol)):
        return "the server does not answer HTTP"
    if isinstance(e, http.client.IncompleteRead):
        return f"the answer ended early ({len(e.partial)} bytes read)"
    if isinstance(e, http.client.HTTPException):
        return f"an HTTP protocol error ({type(e).__name__})"
    if isinstance(e, OSError) and e.strerror:
        return clean_text(e.strerror)  # the system's words: "Connection refused"
    return clean_text(str(e) or type(e).__name__)
