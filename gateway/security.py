"""Safe by default: who may call the gateway, from which pages, and how long a request may take to arrive.

- Listening beyond loopback needs an API key, unless explicitly waived (`check_exposure`).
- With a key set, every request but the liveness probes carries `Authorization: Bearer <key>` (or
  `x-api-key: <key>`, as Anthropic's clients send it).
- While bound to loopback, the Host header must name this machine: a page whose DNS name was
  rebound to 127.0.0.1 sends its own name and is refused (DNS rebinding).
- Browsers may call from allowed origins only (CORS); a request from any other origin is refused,
  because a "simple" cross-site POST needs no preflight and would otherwise reach the handlers.
- JSON bodies must arrive within `body_timeout` and fit `max_body_bytes` (aiohttp's client_max_size),
  and large ones together may not hold more than `max_inflight_body_bytes` (`BodyBudget`).

Handlers get no wall-clock bound here: generation is bounded by `request_timeout` in the
generation core, each backend call carries its own gRPC deadline, and pull/push/create stream
progress for as long as bytes keep moving (a 40 GB pull is slow, not stuck).
"""

from __future__ import annotations

import asyncio
import hmac
import ipaddress
import re
from typing import Awaitable, Callable, Iterable
from urllib.parse import urlsplit

from aiohttp import hdrs, web

from mlxserve.services.common import logs
from mlxserve.services.common.config import Settings
from mlxserve.services.common.errors import Busy, Forbidden, InvalidArgument, Unauthenticated

from .rendering import dialect_of, error_response, http_error_response

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

# Liveness probes (launchd/systemd watchdogs, load balancers, `mlxctl serve`) carry no secret;
# they learn only whether the services answer.
PUBLIC_ROUTES = {("GET", "/"), ("HEAD", "/"), ("GET", "/api/health"), ("HEAD", "/api/health")}
# Routes that stream their body themselves (a blob upload is as big as a GGUF file): not pre-read.
STREAMED_BODY_ROUTES = {"/api/blobs/{digest}"}

CORS_METHODS = "GET, POST, PUT, DELETE, HEAD, OPTIONS"
CORS_HEADERS = ("Authorization", "Content-Type", "Accept", "User-Agent", "X-Requested-With", "X-Request-Id",
                "X-Api-Key", "Anthropic-Version", "Anthropic-Beta", "Anthropic-Dangerous-Direct-Browser-Access")
API_KEY_HEADER = "x-api-key"  # Anthropic's way to send the key
CORS_EXPOSE = "X-Request-Id, Retry-After, X-Mlxserve-Ignored"
CORS_MAX_AGE_S = 600
# Bodies up to this size are not counted against max_inflight_body_bytes: a chat turn is a few KB.
SMALL_BODY_BYTES = 1 << 20
BODY_BUDGET_RETRY_AFTER_S = 1.0

log = logs.get_logger(component="security")


def is_loopback(host: str) -> bool:
    """Whether listening on `host` keeps the server reachable from this machine only."""
    name = host.strip().strip("[]").lower()
    if name == "localhost":
        return True
    try:
        return ipaddress.ip_address(name).is_loopback
    except ValueError:
        return False  # "" (all interfaces), or a name that may resolve anywhere


def check_exposure(settings: Settings) -> str | None:
    """Refuse (InvalidArgument) to listen beyond loopback without an API key unless waived.

    Returns the warning to show on every start when the waiver is what lets it listen.
    """
    if is_loopback(settings.host) or settings.api_key:
        return None
    where = f"{settings.host or '0.0.0.0'} port {settings.port}"
    if settings.insecure_no_auth:
        return (f"WARNING: listening on {where} with NO API key (insecure_no_auth): anyone who can reach "
                f"this port can run, pull, create and delete models")
    raise InvalidArgument(
        f"refusing to listen on {where} without an API key: other machines could reach it and run, pull "
        f"and delete models. Set one (MLXSERVE_API_KEY=<secret>, or api_key in {settings.home / 'config.toml'}); "
        f"clients then send 'Authorization: Bearer <secret>'. Or, on a network you trust completely, pass "
        f"--insecure-no-auth (MLXSERVE_INSECURE_NO_AUTH=1) to serve without one")


def compile_patterns(patterns: Iterable[str], *, star: str) -> re.Pattern[str]:
    """One case-insensitive regex for `patterns` whose `*` stands for `star` (a regex fragment)."""
    alternatives = "|".join(star.join(re.escape(part) for part in p.split("*")) for p in patterns)
    return re.compile(f"(?:{alternatives or '(?!)'})", re.IGNORECASE)  # (?!): an empty list matches nothing


class OriginPolicy:
    """Which browser origins may call: `*` matches within one origin, never across a `/`."""

    def __init__(self, patterns: Iterable[str]) -> None:
        patterns = tuple(patterns)
        self.any = "*" in patterns
        self._regex = compile_patterns(patterns, star="[^/]*")

    def allows(self, origin: str) -> bool:
        return self.any or self._regex.fullmatch(origin) is not None


class HostPolicy:
    """Host header values a loopback-bound server answers: this machine's names, plus `allowed_hosts`."""

    def __init__(self, allowed_hosts: Iterable[str]) -> None:
        with_port = [h for h in allowed_hosts if _split_host(h)[1]]
        any_port = [h for h in allowed_hosts if not _split_host(h)[1]]
        self._exact = compile_patterns(with_port, star="[^:]*")
        self._any_port = compile_patterns(any_port, star="[^:]*")

    def allows(self, host_header: str) -> bool:
        name, _ = _split_host(host_header)
        if is_loopback(name):
            return True
        return (self._exact.fullmatch(host_header) is not None) or (self._any_port.fullmatch(name) is not None)


def _split_host(value: str) -> tuple[str, str]:
    """("name", "port") of a Host header value; IPv6 literals keep their brackets."""
    value = value.strip().lower()
    if value.startswith("["):
        name, _, rest = value.partition("]")
        return name + "]", rest.removeprefix(":")
    if value.count(":") == 1:
        name, _, port = value.partition(":")
        return name.rstrip("."), port
    return value.rstrip("."), ""


def _bearer_matches(header: str, key: str) -> bool:
    scheme, _, token = header.strip().partition(" ")
    return scheme.lower() == "bearer" and _key_matches(token, key)


def _key_matches(given: str, key: str) -> bool:
    # compare_digest: the time taken must not tell an attacker how much of the key was right.
    return hmac.compare_digest(given.strip().encode(), key.encode())


def _same_origin(request: web.Request, origin: str) -> bool:
    """A page served from this very address (the browser sends Origin on same-origin POSTs too)."""
    host = request.headers.get(hdrs.HOST, "")
    return bool(host) and urlsplit(origin).netloc.lower() == host.lower()


class BodyBudget:
    """Bytes of large request bodies held at once (each large body is parsed and copied a few
    times while its request runs): a request that would pass the budget waits for none of it and
    is refused as Busy (503, Retry-After) before its body is read. One per gateway, event loop only."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.held = 0

    def take(self, size: int) -> int:
        """Charge `size` bytes (0 for a small body); Busy when the budget cannot hold them."""
        if size <= SMALL_BODY_BYTES or self.limit <= 0:
            return 0
        if self.held + size > self.limit:
            raise Busy(f"the server is holding {self.held} bytes of large request bodies (max_inflight_body_bytes="
                       f"{self.limit}); this one declares {size}", retry_after=BODY_BUDGET_RETRY_AFTER_S)
        self.held += size
        return size

    def give(self, size: int) -> None:
        self.held -= size


def middlewares(settings: Settings, budget: BodyBudget | None = None) -> list[Handler]:
    """The gateway's guards, outermost first; they go after the request-id/error middleware."""
    hosts = HostPolicy(settings.allowed_hosts)
    origins = OriginPolicy(settings.cors_origins)
    check_host = is_loopback(settings.host)  # beyond loopback the API key is the guard
    bodies = budget or BodyBudget(settings.max_inflight_body_bytes)

    @web.middleware
    async def host_guard(request: web.Request, handler: Handler) -> web.StreamResponse:
        host = request.headers.get(hdrs.HOST)
        if check_host and host is not None and not hosts.allows(host):
            log.warning("host_refused", host=host, path=request.path)
            raise Forbidden(f"Host '{host}' is not allowed: this server listens on loopback and answers requests "
                            f"addressed to localhost only (a guard against DNS rebinding); if you reach it "
                            f"through that name, add it to allowed_hosts (MLXSERVE_ALLOWED_HOSTS)")
        return await handler(request)

    @web.middleware
    async def origin_guard(request: web.Request, handler: Handler) -> web.StreamResponse:
        origin = request.headers.get(hdrs.ORIGIN)
        if origin is None or _same_origin(request, origin):
            return await handler(request)
        allowed = origins.allows(origin)
        if not allowed:
            log.warning("origin_refused", origin=origin, path=request.path)
            raise Forbidden(f"origin '{origin}' is not allowed to call this server; "
                            f"add it to cors_origins (MLXSERVE_CORS_ORIGINS) to allow it")
        if request.method == "OPTIONS" and hdrs.ACCESS_CONTROL_REQUEST_METHOD in request.headers:
            return preflight_response(request)
        return await handler(request)

    @web.middleware
    async def api_key_guard(request: web.Request, handler: Handler) -> web.StreamResponse:
        if not settings.api_key or (request.method, request.path) in PUBLIC_ROUTES:
            return await handler(request)
        given = request.headers.get(hdrs.AUTHORIZATION)
        api_key = request.headers.get(API_KEY_HEADER)
        if (given is not None and _bearer_matches(given, settings.api_key)) or (
                api_key is not None and _key_matches(api_key, settings.api_key)):
            return await handler(request)
        sent = given is not None or api_key is not None
        message = ("this server requires an API key: send it as 'Authorization: Bearer <key>' (or 'x-api-key: <key>')"
                   if not sent else "the API key is not valid")
        log.warning("unauthenticated", path=request.path, key_given=sent)
        resp = error_response(Unauthenticated(message), dialect_of(request.path, request.headers))
        resp.headers[hdrs.WWW_AUTHENTICATE] = 'Bearer realm="mlxserve"'
        return resp

    @web.middleware
    async def body_guard(request: web.Request, handler: Handler) -> web.StreamResponse:
        resource = request.match_info.route.resource
        streamed = resource is not None and resource.canonical in STREAMED_BODY_ROUTES
        if not request.body_exists or streamed:
            return await handler(request)
        # Charged before a byte is read: what the client declares (a chunked body: the most it may be).
        declared = min(request.content_length or settings.max_body_bytes, settings.max_body_bytes)
        try:
            charged = bodies.take(declared)
        except Busy as e:
            log.warning("body_budget_full", path=request.path, declared=declared, held=bodies.held)
            resp = error_response(e, dialect_of(request.path, request.headers))
            resp.force_close()  # its body was not read
            return resp
        try:
            try:
                async with asyncio.timeout(settings.body_timeout):
                    await request.read()  # cached for the handler; aiohttp raises 413 past client_max_size
            except TimeoutError:
                log.warning("body_timeout", path=request.path, seconds=settings.body_timeout)
                resp = http_error_response(408, f"the request body did not arrive within {settings.body_timeout:g} s",
                                           dialect_of(request.path, request.headers))
                resp.force_close()  # the rest of the body may never come
                return resp
            return await handler(request)
        finally:
            bodies.give(charged)

    return [host_guard, origin_guard, api_key_guard, body_guard]


def preflight_response(request: web.Request) -> web.Response:
    """204 for a CORS preflight from an allowed origin (the CORS headers are added on prepare)."""
    wanted = request.headers.get(hdrs.ACCESS_CONTROL_REQUEST_HEADERS, "")
    extra = [h.strip() for h in wanted.split(",") if h.strip() and h.strip().lower() not in {c.lower() for c in CORS_HEADERS}]
    return web.Response(status=204, headers={
        hdrs.ACCESS_CONTROL_ALLOW_METHODS: CORS_METHODS,
        hdrs.ACCESS_CONTROL_ALLOW_HEADERS: ", ".join([*CORS_HEADERS, *extra]),
        hdrs.ACCESS_CONTROL_MAX_AGE: str(CORS_MAX_AGE_S),
    })


def cors_headers(settings: Settings) -> Callable[[web.Request, web.StreamResponse], Awaitable[None]]:
    """An on_response_prepare hook: every response to an allowed origin (streams and errors too) says so."""
    origins = OriginPolicy(settings.cors_origins)

    async def add(request: web.Request, response: web.StreamResponse) -> None:
        origin = request.headers.get(hdrs.ORIGIN)
        if origin is None:
            return
        response.headers.add(hdrs.VARY, hdrs.ORIGIN)
        if origins.allows(origin):
            response.headers[hdrs.ACCESS_CONTROL_ALLOW_ORIGIN] = origin
            response.headers[hdrs.ACCESS_CONTROL_EXPOSE_HEADERS] = CORS_EXPOSE

    return add
