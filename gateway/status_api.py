"""What the server is, has and runs: GET /, /api/version, /api/tags (the store's models), /api/ps (the
loaded ones) and /api/health (whether the store and the supervisor answer)."""

from __future__ import annotations

import asyncio
from typing import Any

from aiohttp import web

from mlxserve import __version__
from mlxserve.services.common import rpc
from mlxserve.services.common.errors import MlxServeError
from mlxserve.v1 import common_pb2, store_pb2, supervisor_pb2

from . import state
from .rendering import dumps

routes = web.RouteTableDef()


@routes.get("/")
async def root(request: web.Request) -> web.Response:
    """GET and HEAD /: the liveness line Ollama answers with."""
    return web.Response(text="mlxserve is running")


# The Ollama release whose API this server implements, reported as `version` because clients gate
# features on it (Codex --oss needs >= 0.13.4). 0.13.5 is the last release before 0.14, which added
# image generation on /api/generate (not served here) and Anthropic's /v1/messages (served here too);
# it has the rest: /v1/responses (0.13.3), logprobs on /api/generate and /api/chat, tool call ids.
OLLAMA_API_VERSION = "0.13.5"


@routes.get("/api/version")
async def version(request: web.Request) -> web.Response:
    """GET /api/version: the Ollama API level in `version`, this server's own version in `mlxserve_version`."""
    return web.json_response({"version": OLLAMA_API_VERSION, "mlxserve_version": __version__}, dumps=dumps)


def details_json(d: common_pb2.ModelDetails) -> dict[str, Any]:
    return {
        "parent_model": d.parent_model,
        "format": d.format,
        "family": d.family,
        "families": list(d.families) or None,
        "parameter_size": d.parameter_size,
        "quantization_level": d.quantization_level,
    }


@routes.get("/api/tags")
async def tags(request: web.Request) -> web.Response:
    """GET /api/tags: the models in the store."""
    resp = await rpc.call("store", state.backends(request).store().List, store_pb2.ListRequest(),
                          timeout=10.0, request_id=state.request_id(request))
    return web.json_response({"models": [
        {"name": m.name, "model": m.model or m.name, "modified_at": m.modified_at or None, "size": m.size,
         "digest": m.digest, "details": details_json(m.details)}
        for m in resp.models
    ]}, dumps=dumps)


@routes.get("/api/ps")
async def ps(request: web.Request) -> web.Response:
    """GET /api/ps: the models loaded now."""
    resp = await rpc.call("supervisor", state.backends(request).supervisor().ListLoaded, supervisor_pb2.ListLoadedRequest(),
                          timeout=10.0, request_id=state.request_id(request))
    return web.json_response({"models": [
        {"name": m.name, "model": m.model or m.name, "size": m.size, "digest": m.digest, "details": details_json(m.details),
         "expires_at": m.expires_at or None, "size_vram": m.size_vram, "context_length": m.context_length,
         **compute_fields(m)}
        for m in resp.models
    ]}, dumps=dumps)


def compute_fields(m: supervisor_pb2.LoadedModel) -> dict[str, Any]:
    """mlxserve's additions to an /api/ps entry: how the worker computes (only what it reported),
    and for a model served by a group of processes its strategy and ranks (absent otherwise, so
    a one-process entry keeps Ollama's shape)."""
    out: dict[str, Any] = {}
    if m.compute_dtype:
        out["compute_dtype"] = m.compute_dtype
    if m.blas:
        out["blas"] = m.blas
        out["blas_gflops"] = round(m.blas_gflops, 1)
    if m.ranks:
        out["strategy"] = m.strategy
        out["ranks"] = [{"rank": r.rank, "host": r.host, "pid": r.pid, "memory_bytes": r.memory_bytes,
                         "active_memory": r.active_memory} for r in m.ranks]
    return out


@routes.get("/api/health")
async def health(request: web.Request) -> web.Response:
    """GET /api/health: 200 when the store and the supervisor answer a Ping, else 503 naming who does not."""
    backends, rid = state.backends(request), state.request_id(request)
    names = ("store", "supervisor")
    results = await asyncio.gather(*(backends.ping(n, timeout=1.0, request_id=rid) for n in names), return_exceptions=True)
    services: dict[str, str] = {}
    down: list[str] = []
    for name, result in zip(names, results):
        if isinstance(result, BaseException):
            services[name] = result.message if isinstance(result, MlxServeError) else f"{type(result).__name__}: {result}"
            down.append(name)
        else:
            services[name] = "ok"
    if not down:
        return web.json_response({"status": "ok", "services": services}, dumps=dumps)
    body = {"status": "unavailable", "error": f"not answering: {', '.join(down)}", "services": services}
    return web.json_response(body, status=503, dumps=dumps)
