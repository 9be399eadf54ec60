"""The gateway's aiohttp application: routes, request ids, and error rendering.

Each API module declares its routes (an aiohttp `RouteTableDef`); this module registers them and
wires the generation core to the gRPC clients of the supervisor and the workers and to the token
router. Handlers validate, translate, call the generation core or one backend, and render. Anything they
raise is turned into a response here, once: an `MlxServeError` by its class (status, OpenAI
type), aiohttp's own HTTP errors (404, 405, 413) as JSON in the request's dialect (native, OpenAI
or Anthropic).
"""

from __future__ import annotations

import re
import secrets

from aiohttp import web

from mlxserve.services.common import logs
from mlxserve.services.common.config import Settings
from mlxserve.services.common.errors import Internal, MlxServeError

from . import (anthropic_api, embeddings_api, metrics, models_api, native, openai_api, openai_responses, openapi, security,
               state, status_api)
from .backends import Backends
from .clients import GrpcSupervisorClient, GrpcWorkerClient, SupervisorClient, WorkerClient
from .generation import GenerationCore
from .rendering import dialect_of, error_response, http_error_response
from .token_router import TokenRouter
from .validation import IGNORED, IGNORED_HEADER, ignored_header

_SANE_REQUEST_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:-]{0,127}")

log = logs.get_logger(component="http")


def new_request_id() -> str:
    return secrets.token_hex(8)


@web.middleware
async def request_middleware(request: web.Request, handler) -> web.StreamResponse:
    """Bind a request id, and render every error raised before a response started."""
    given = request.headers.get("X-Request-Id", "")
    rid = given if _SANE_REQUEST_ID.fullmatch(given) else new_request_id()
    request[state.REQUEST_ID] = rid
    logs.bind_request_id(rid)
    dialect = dialect_of(request.path, request.headers)
    try:
        return await handler(request)
    except MlxServeError as e:
        log.info("request_failed", path=request.path, status=e.http_status, error=e.message)
        return error_response(e, dialect)
    except web.HTTPException as e:
        if e.status < 400:
            raise
        headers = {"Allow": e.headers["Allow"]} if "Allow" in e.headers else None
        message = {404: f"{request.path} not found", 405: f"method {request.method} not allowed for {request.path}"}.get(
            e.status, e.reason if e.text is None or e.text.startswith(f"{e.status}:") else e.text)
        return http_error_response(e.status, message, dialect, headers)
    except Exception as e:  # noqa: BLE001 - a bug: say so, with the request id to find the log line
        log.exception("request_crashed", path=request.path)
        return error_response(Internal(f"internal error ({type(e).__name__}); request id {rid}"), dialect)


async def _add_request_id_header(request: web.Request, response: web.StreamResponse) -> None:
    rid = request.get(state.REQUEST_ID)
    if rid:
        response.headers["X-Request-Id"] = rid


async def _add_ignored_header(request: web.Request, response: web.StreamResponse) -> None:
    fields = request.get(IGNORED)
    if fields:
        response.headers[IGNORED_HEADER] = ignored_header(fields)


# Each API module declares its routes; registered in this order (the first match wins).
ROUTE_TABLES = (status_api.routes, openapi.routes, metrics.routes, native.routes, models_api.routes, openai_api.routes,
                openai_responses.routes, embeddings_api.routes, anthropic_api.routes)


def create_app(settings: Settings, *, backends: Backends | None = None, router: TokenRouter | None = None,
               supervisor: SupervisorClient | None = None, workers: WorkerClient | None = None) -> web.Application:
    """The gateway app. The ZeroMQ socket binds on startup and is removed on cleanup; `supervisor` and
    `workers` replace the gRPC clients (tests plug in-process ones in)."""
    app = web.Application(middlewares=[metrics.access_middleware, request_middleware, *security.middlewares(settings)],
                          client_max_size=settings.max_body_bytes)
    backends = backends or Backends(settings)
    router = router or TokenRouter(settings.run_dir)
    app[state.SETTINGS] = settings
    app[state.BACKENDS] = backends
    app[state.ROUTER] = router
    app[state.CORE] = GenerationCore(settings, supervisor or GrpcSupervisorClient(backends), workers or GrpcWorkerClient(backends),
                                     router)

    async def start(app: web.Application) -> None:
        settings.run_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        await router.start()

    async def stop(app: web.Application) -> None:
        await app[state.CORE].close()  # leases still being given back
        await router.close()
        await backends.close()

    app.on_startup.append(start)
    app.on_cleanup.append(stop)
    app.on_response_prepare.append(_add_request_id_header)
    app.on_response_prepare.append(_add_ignored_header)
    app.on_response_prepare.append(security.cors_headers(settings))
    metrics.install(app, app[state.CORE].metrics, backends)
    for table in ROUTE_TABLES:
        app.router.add_routes(table)
    return app
