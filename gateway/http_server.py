"""The gateway's aiohttp runner: a request that is not even HTTP enough to reach the app gets the JSON error too.

aiohttp answers a request line it cannot parse (invalid UTF-8 in the path, a bad method, an
over-long header) with its own plain-text 400 that quotes the raw bytes back, before any
middleware runs. Clients of the gateway parse `{"error": "..."}` on every 4xx, so these are
rendered in that shape here: a one-line reason, never the echoed request.
"""

from __future__ import annotations

from typing import Any

from aiohttp import web
from aiohttp.web_protocol import RequestHandler

from mlxserve.services.common import logs

log = logs.get_logger(component="http")


class _JsonErrorHandler(RequestHandler):
    """aiohttp's connection handler, with its error responses as the gateway's JSON."""

    __slots__ = ()

    def handle_error(self, request: Any, status: int = 500, exc: BaseException | None = None,
                     message: str | None = None) -> web.StreamResponse:
        super().handle_error(request, status, exc, message)  # aiohttp's logging and its sent-already check
        reason = "internal error" if status >= 500 else f"the HTTP request is malformed: {_first_line(exc, message)}"
        log.info("request_malformed", status=status, reason=reason)
        response = web.json_response({"error": reason}, status=status)
        response.force_close()
        return response


class _JsonErrorServer(web.Server):
    __slots__ = ()

    def __call__(self) -> RequestHandler:
        # web.Server.__call__ builds RequestHandler(self, loop=self._loop, **self._kwargs); those are
        # aiohttp's private fields: should a release rename them, connections keep aiohttp's own
        # handler (plain-text 400s) rather than fail (tests/unit/test_gateway_limits.py notices).
        try:
            return _JsonErrorHandler(self, loop=self._loop, **self._kwargs)
        except (AttributeError, TypeError):
            log.warning("json_error_handler_unavailable", aiohttp_server=type(self).__mro__[1].__qualname__)
            return super().__call__()


class GatewayRunner(web.AppRunner):
    """web.AppRunner whose connections answer malformed requests in JSON (see the module docstring)."""

    async def _make_server(self) -> web.Server:
        server = await super()._make_server()
        # The app builds a plain Server; this subclass only changes which handler a connection gets.
        server.__class__ = _JsonErrorServer
        return server


def _first_line(exc: BaseException | None, message: str | None) -> str:
    """aiohttp's reason without the request bytes it quotes ("Invalid char in url path:\\n\\n  b'GET ...'")."""
    text = getattr(exc, "message", None) or message or (str(exc) if exc else "") or "bad request"
    first = str(text).strip().splitlines()[0].rstrip(":").strip() if str(text).strip() else "bad request"
    hint = " (a URL must be valid UTF-8, percent-encoded)" if "url" in first.lower() else ""
    return f"{first[:200]}{hint}"
