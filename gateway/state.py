"""What handlers find on the app and the request: settings, backends, the generation core, the request id."""

from __future__ import annotations

from aiohttp import web

from mlxserve.services.common.config import Settings

from .backends import Backends
from .generation import GenerationCore
from .token_router import TokenRouter

SETTINGS = web.AppKey("settings", Settings)
BACKENDS = web.AppKey("backends", Backends)
ROUTER = web.AppKey("router", TokenRouter)
CORE = web.AppKey("core", GenerationCore)

REQUEST_ID = web.RequestKey("request_id", str)  # set by the middleware


def core(request: web.Request) -> GenerationCore:
    return request.app[CORE]


def backends(request: web.Request) -> Backends:
    return request.app[BACKENDS]


def request_id(request: web.Request) -> str:
    return request[REQUEST_ID]
