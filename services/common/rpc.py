"""gRPC glue shared by every service: Unix-socket servers, channels, and error mapping.

Servicer methods raise `MlxServeError`s; `@rpc_method` turns them into status codes. Clients
wrap calls in `call(...)` (aio) or `call_sync(...)`, which turn status codes back into errors.
"""

from __future__ import annotations

import functools
import inspect
import os
import time
from pathlib import Path
from typing import Any, Awaitable, Callable, TypeVar

import grpc

from mlxserve import __version__
from mlxserve.v1 import common_pb2

from . import logs
from .errors import Internal, MlxServeError, from_rpc_error, grpc_status

T = TypeVar("T")

_call_log = logs.get_logger(component="rpc")

# Generous message sizes: Show returns templates and manifests; nothing streams weights over gRPC.
CHANNEL_OPTIONS = [
    ("grpc.max_receive_message_length", 64 * 1024 * 1024),
    ("grpc.max_send_message_length", 64 * 1024 * 1024),
]


def unix_target(path: Path | str) -> str:
    return f"unix://{path}"


def prepare_socket_path(path: Path) -> None:
    """Remove a stale socket left by a dead process, so a restarted service is never blocked."""
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    try:
        path.unlink()
    except FileNotFoundError:
        pass


def secure_socket(path: Path) -> None:
    """Restrict a bound socket to its owner (the run directory is 0700 too)."""
    try:
        os.chmod(path, 0o600)
    except FileNotFoundError:
        pass


def _request_id_from(context: Any) -> str | None:
    try:
        for key, value in context.invocation_metadata() or ():
            if key == logs.REQUEST_ID_KEY:
                return value
    except Exception:  # noqa: BLE001
        return None
    return None


def _bind_from(context: Any) -> None:
    # Sync servicers run on pooled threads whose context outlives the call: bind, and unbind
    # in `finally`. Async ones run each call in its own task, so the binding ends with it.
    rid = _request_id_from(context)
    if rid:
        logs.bind_request_id(rid)
    else:
        logs.unbind_request_id()


def rpc_method(fn: Callable[..., Any]) -> Callable[..., Any]:
    """Decorate a servicer method (sync, async, or async generator) to map errors to status codes."""
    log = logs.get_logger()

    def _status(e: BaseException) -> tuple[grpc.StatusCode, str, tuple]:
        if isinstance(e, MlxServeError):
            return grpc_status(e)
        log.exception("rpc_failed", method=fn.__name__)
        return grpc_status(Internal(f"internal error in {fn.__name__}: {type(e).__name__}: {e}"))

    if inspect.isasyncgenfunction(fn):
        @functools.wraps(fn)
        async def agen(self: Any, request: Any, context: Any) -> Any:
            _bind_from(context)
            try:
                async for item in fn(self, request, context):
                    yield item
            except (MlxServeError, Exception) as e:  # noqa: BLE001
                if isinstance(e, grpc.RpcError) and not isinstance(e, MlxServeError):
                    raise
                code, msg, meta = _status(e)
                context.set_trailing_metadata(meta)
                await context.abort(code, msg)
        return agen

    if inspect.iscoroutinefunction(fn):
        @functools.wraps(fn)
        async def coro(self: Any, request: Any, context: Any) -> Any:
            _bind_from(context)
            try:
                return await fn(self, request, context)
            except (MlxServeError, Exception) as e:  # noqa: BLE001
                if isinstance(e, grpc.RpcError) and not isinstance(e, MlxServeError):
                    raise
                code, msg, meta = _status(e)
                context.set_trailing_metadata(meta)
                await context.abort(code, msg)
        return coro

    if inspect.isgeneratorfunction(fn):
        @functools.wraps(fn)
        def gen(self: Any, request: Any, context: Any) -> Any:
            _bind_from(context)
            try:
                yield from fn(self, request, context)
            except Exception as e:  # noqa: BLE001
                if isinstance(e, grpc.RpcError) and not isinstance(e, MlxServeError):
                    raise
                code, msg, meta = _status(e)
                context.set_trailing_metadata(meta)
                context.abort(code, msg)
            finally:
                logs.unbind_request_id()
        return gen

    @functools.wraps(fn)
    def sync(self: Any, request: Any, context: Any) -> Any:
        _bind_from(context)
        try:
            return fn(self, request, context)
        except Exception as e:  # noqa: BLE001
            if isinstance(e, grpc.RpcError) and not isinstance(e, MlxServeError):
                raise
            code, msg, meta = _status(e)
            context.set_trailing_metadata(meta)
            context.abort(code, msg)
        finally:
            logs.unbind_request_id()
    return sync


def ping_response(service: str) -> common_pb2.PingResponse:
    return common_pb2.PingResponse(service=service, version=__version__, pid=os.getpid())


def aio_channel(target: str) -> grpc.aio.Channel:
    return grpc.aio.insecure_channel(target, options=CHANNEL_OPTIONS)


def sync_channel(target: str) -> grpc.Channel:
    return grpc.insecure_channel(target, options=CHANNEL_OPTIONS)


def metadata(request_id: str | None) -> tuple[tuple[str, str], ...]:
    return ((logs.REQUEST_ID_KEY, request_id),) if request_id else ()


def _method_name(fn: Any) -> str:
    method = getattr(fn, "_method", b"")  # grpc's multicallables keep "/pkg.Service/Method" here
    return (method.decode() if isinstance(method, bytes) else str(method or getattr(fn, "__name__", "?"))).rsplit("/", 1)[-1]


def _log_call(service: str, fn: Any, request_id: str | None, started: float, error: grpc.RpcError | None) -> None:
    if not logs.debug_enabled():
        return
    fields: dict[str, Any] = {"callee": service, "method": _method_name(fn), "duration_ms": round((time.perf_counter() - started) * 1e3, 2)}
    if request_id:
        fields["request_id"] = request_id
    if error is not None:
        code = error.code() if hasattr(error, "code") else None
        fields.update(code=getattr(code, "name", str(code)), details=error.details() if hasattr(error, "details") else str(error))
    _call_log.debug("rpc_call", **fields)


async def call(service: str, fn: Callable[..., Awaitable[T]], request: Any, *, timeout: float | None = None, request_id: str | None = None) -> T:
    """Await a unary aio call, mapping gRPC failures to MlxServeError.

    The request id (given, or the one bound in this context) travels as `x-request-id` metadata.
    """
    request_id = request_id or logs.current_request_id()
    started = time.perf_counter()
    try:
        result = await fn(request, timeout=timeout, metadata=metadata(request_id))
    except grpc.RpcError as e:
        _log_call(service, fn, request_id, started, e)
        raise from_rpc_error(e, service=service, timeout=timeout) from None
    _log_call(service, fn, request_id, started, None)
    return result


def call_sync(service: str, fn: Callable[..., T], request: Any, *, timeout: float | None = None, request_id: str | None = None) -> T:
    """Make a unary sync call, mapping gRPC failures to MlxServeError (request id as in `call`)."""
    request_id = request_id or logs.current_request_id()
    started = time.perf_counter()
    try:
        result = fn(request, timeout=timeout, metadata=metadata(request_id))
    except grpc.RpcError as e:
        _log_call(service, fn, request_id, started, e)
        raise from_rpc_error(e, service=service, timeout=timeout) from None
    _log_call(service, fn, request_id, started, None)
    return result
