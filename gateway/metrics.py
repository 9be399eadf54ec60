"""Prometheus metrics and the access log: GET /metrics, the middleware that counts every request,
and the hooks the generation core calls (time to first token, tokens per second, in flight).

Each app has its own `CollectorRegistry`, so tests can build several apps in one process. Labels
stay bounded whatever clients send: the route label is the matched route's pattern (unknown paths
share one label), methods outside HTTP's usual set share one, and model labels come from names
the supervisor resolved (a name it did not know is only labelled while a request uses it).
Loaded models and their memory are read from the supervisor's ListLoaded at scrape time.
"""

from __future__ import annotations

import asyncio
import time
from typing import TYPE_CHECKING, Awaitable, Callable

from aiohttp import web
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.exposition import CONTENT_TYPE_PLAIN_0_0_4, generate_latest

from mlxserve.services.common import logs, rpc
from mlxserve.services.common.errors import MlxServeError
from mlxserve.v1 import common_pb2, supervisor_pb2
from mlxserve.v1.frames import Stats

from .rendering import STREAM_COMPLETED

if TYPE_CHECKING:
    from .backends import Backends

UNMATCHED_ROUTE = "unmatched"  # 404s and 405s: the raw path would let clients mint labels
KNOWN_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "DELETE", "PATCH", "OPTIONS"})
CLIENT_CLOSED = 499  # nginx's convention: the client went away before the response ended

# Seconds to ask the supervisor and the store at scrape time: a scrape must not hang on them.
SCRAPE_TIMEOUT_S = 1.0

HTTP_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600)
TTFT_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120)
TPS_BUCKETS = (1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 2000, 5000)

log = logs.get_logger(component="http")


class InFlight:
    """One generation counted in `mlxserve_requests_in_flight` from start to `done()`.

    It starts under the name the client asked for and moves to the supervisor's canonical name
    once leased, so aliases ("tiny" / "tiny:latest") end up as one series.
    """

    def __init__(self, metrics: GatewayMetrics, model: str) -> None:
        self._metrics = metrics
        self.model: str | None = model
        metrics._in_flight_add(model, 1)

    def move(self, model: str) -> None:
        if self.model is None or model == self.model:
            return
        self._metrics._in_flight_add(self.model, -1)
        self.model = model
        self._metrics._in_flight_add(model, 1)

    def done(self) -> None:
        if self.model is not None:
            self._metrics._in_flight_add(self.model, -1)
            self.model = None


class GatewayMetrics:
    """The gateway's metrics, in a registry of their own."""

    def __init__(self) -> None:
        r = self.registry = CollectorRegistry()
        self.http_requests = Counter("mlxserve_http_requests", "HTTP requests answered, by route pattern, method and status.",
                                     ["route", "method", "status"], registry=r)
        self.http_duration = Histogram("mlxserve_http_request_duration_seconds", "Time from request to the end of its response.",
                                       ["route", "method"], buckets=HTTP_BUCKETS, registry=r)
        self.ttft = Histogram("mlxserve_time_to_first_token_seconds",
                              "Time from a generation request to its first output (model load and queueing included).",
                              ["model"], buckets=TTFT_BUCKETS, registry=r)
        self.tps = Histogram("mlxserve_generation_tokens_per_second",
                             "Decode speed of finished generations: eval_count / eval_duration, as the worker timed it.",
                             ["model"], buckets=TPS_BUCKETS, registry=r)
        self.generated_tokens = Counter("mlxserve_generated_tokens", "Tokens generated.", ["model"], registry=r)
        self.prompt_tokens = Counter("mlxserve_prompt_tokens", "Prompt tokens of finished generations (cached ones included).",
                                     ["model"], registry=r)
        self.generations = Counter("mlxserve_generations", "Generations ended, by done_reason (stop, length, tool_calls, cancel, error).",
                                   ["model", "done_reason"], registry=r)
        self.in_flight = Gauge("mlxserve_requests_in_flight",
                               "Generation requests this gateway has open per model: waiting for a worker, queued, or decoding.",
                               ["model"], registry=r)
        self.loaded_models = Gauge("mlxserve_loaded_models", "Models loaded now (0 when the supervisor does not answer).", registry=r)
        self.model_memory = Gauge("mlxserve_model_memory_bytes", "Resident memory of each loaded model's worker.", ["model"], registry=r)
        self.model_vram = Gauge("mlxserve_model_vram_bytes", "GPU memory of each loaded model (0 on CPU).", ["model"], registry=r)
        self.model_leases = Gauge("mlxserve_model_leases",
                                  "Requests holding each loaded model's worker, as the supervisor counts them (every gateway).",
                                  ["model"], registry=r)
        self.backend_up = Gauge("mlxserve_backend_up", "1 when the service answered at the last scrape, else 0.", ["service"], registry=r)
        self._in_flight_counts: dict[str, int] = {}
        self._known_models: set[str] = set()   # canonical names: their series stay at 0

    # -- HTTP -----------------------------------------------------------------------------------

    def request_done(self, route: str, method: str, status: int, seconds: float) -> None:
        method = method if method in KNOWN_METHODS else "other"
        self.http_requests.labels(route, method, str(status)).inc()
        self.http_duration.labels(route, method).observe(seconds)

    # -- generations (called by generation.GenerationCore) ------------------------------------------

    def generation_started(self, model: str) -> InFlight:
        return InFlight(self, model)

    def leased(self, ticket: InFlight, model: str) -> None:
        """The supervisor resolved the request's model to `model`, a real one."""
        self._known_models.add(model)
        ticket.move(model)

    def first_token(self, model: str, seconds: float) -> None:
        self.ttft.labels(model).observe(seconds)

    def generation_finished(self, model: str, done_reason: str, stats: Stats | None) -> None:
        self.generations.labels(model, done_reason).inc()
        if stats is None:
            return
        if stats.eval_count:
            self.generated_tokens.labels(model).inc(stats.eval_count)
        if stats.prompt_tokens:
            self.prompt_tokens.labels(model).inc(stats.prompt_tokens)
        if stats.eval_count and stats.eval_duration > 0 and done_reason in ("stop", "length", "tool_calls"):
            self.tps.labels(model).observe(stats.eval_count / (stats.eval_duration / 1e9))

    def _in_flight_add(self, model: str, delta: int) -> None:
        n = self._in_flight_counts.get(model, 0) + delta
        if n > 0 or model in self._known_models:
            self._in_flight_counts[model] = max(n, 0)
            self.in_flight.labels(model).set(max(n, 0))
        else:  # a name no lease confirmed: drop its series, so made-up names leave no trace
            self._in_flight_counts.pop(model, None)
            try:
                self.in_flight.remove(model)
            except KeyError:
                pass

    # -- scrape ---------------------------------------------------------------------------------

    async def refresh_backends(self, backends: Backends, request_id: str | None = None) -> None:
        """Read loaded models from the supervisor and ping the store; a silent one reads as down."""
        listed, store = await asyncio.gather(
            rpc.call("supervisor", backends.supervisor().ListLoaded, supervisor_pb2.ListLoadedRequest(),
                     timeout=SCRAPE_TIMEOUT_S, request_id=request_id),
            rpc.call("store", backends.store().Ping, common_pb2.PingRequest(), timeout=SCRAPE_TIMEOUT_S, request_id=request_id),
            return_exceptions=True)
        self.backend_up.labels("store").set(0 if isinstance(store, BaseException) else 1)
        for gauge in (self.model_memory, self.model_vram, self.model_leases):
            gauge.clear()  # unloaded models must not linger
        if isinstance(listed, BaseException):
            if not isinstance(listed, MlxServeError):
                log.warning("metrics_supervisor_failed", error=f"{type(listed).__name__}: {listed}")
            self.backend_up.labels("supervisor").set(0)
            self.loaded_models.set(0)
            return
        self.backend_up.labels("supervisor").set(1)
        self.loaded_models.set(len(listed.models))
        for m in listed.models:
            name = m.model or m.name
            self.model_memory.labels(name).set(m.memory_bytes)
            self.model_vram.labels(name).set(m.size_vram)
            self.model_leases.labels(name).set(m.in_flight)

    def exposition(self) -> bytes:
        return generate_latest(self.registry)


METRICS = web.AppKey("metrics", GatewayMetrics)
_BACKENDS = web.AppKey("metrics_backends", object)


routes = web.RouteTableDef()


def install(app: web.Application, metrics: GatewayMetrics, backends: Backends) -> None:
    """Where GET /metrics and the middleware find the generation core's metrics, and the backends to scrape."""
    app[METRICS] = metrics
    app[_BACKENDS] = backends


@routes.get("/metrics")
async def metrics_handler(request: web.Request) -> web.Response:
    """GET /metrics: Prometheus text exposition (version 0.0.4)."""
    metrics = request.app[METRICS]
    await metrics.refresh_backends(request.app[_BACKENDS], logs.current_request_id())  # type: ignore[arg-type]
    return web.Response(body=metrics.exposition(), headers={"Content-Type": CONTENT_TYPE_PLAIN_0_0_4})


def route_of(request: web.Request) -> str:
    """The matched route's pattern ("/v1/models/{model}"), never the raw path."""
    resource = request.match_info.route.resource
    return resource.canonical if resource is not None else UNMATCHED_ROUTE


@web.middleware
async def access_middleware(request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]) -> web.StreamResponse:
    """Count and time every request, and log one access line for it (with its request id).

    Outermost, so it sees the status of whatever answered: a handler, the error renderer, or a
    middleware that refused the request.
    """
    started = time.perf_counter()
    status = 500
    logs.unbind_request_id()  # the request middleware binds this request's own
    try:
        response = await handler(request)
        status = response.status
        return response
    except web.HTTPException as e:
        status = e.status
        raise
    except asyncio.CancelledError:
        status = request.get(STREAM_COMPLETED, CLIENT_CLOSED)
        raise
    finally:
        elapsed = time.perf_counter() - started
        route = route_of(request)
        metrics = request.app.get(METRICS)
        if metrics is not None:
            metrics.request_done(route, request.method, status, elapsed)
        # request_id comes from the context the request middleware bound.
        log.info("request", method=request.method, route=route, path=request.path[:200], status=status,
                 duration_ms=round(elapsed * 1e3, 2))
