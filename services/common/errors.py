"""The error taxonomy: one exception type per failure kind, mapped once to HTTP, gRPC and exit codes.

Domain code raises these; the gRPC servicers turn them into status codes (`abort_with`), the
clients turn status codes back into them (`from_rpc_error`), and the gateway and CLI render them.
"""

from __future__ import annotations

import grpc


class MlxServeError(Exception):
    """Base class. `message` is a complete sentence fit to show a user."""

    http_status: int = 500
    grpc_code: grpc.StatusCode = grpc.StatusCode.INTERNAL
    exit_code: int = 1
    openai_type: str = "api_error"

    def __init__(self, message: str, *, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.retry_after = retry_after

    def __str__(self) -> str:
        return self.message


class InvalidArgument(MlxServeError):
    """The request is malformed or names something impossible (400)."""

    http_status = 400
    grpc_code = grpc.StatusCode.INVALID_ARGUMENT
    exit_code = 2
    openai_type = "invalid_request_error"


class Unsupported(InvalidArgument):
    """The model or the server lacks a feature the request needs (400)."""

    grpc_code = grpc.StatusCode.FAILED_PRECONDITION


class NotFound(MlxServeError):
    """An unknown model, blob or request (404)."""

    http_status = 404
    grpc_code = grpc.StatusCode.NOT_FOUND
    exit_code = 3
    openai_type = "not_found_error"


class AlreadyExists(MlxServeError):
    http_status = 409
    grpc_code = grpc.StatusCode.ALREADY_EXISTS
    exit_code = 2
    openai_type = "invalid_request_error"


class Busy(MlxServeError):
    """A bounded queue is full; the client should retry after `retry_after` seconds (503)."""

    http_status = 503
    grpc_code = grpc.StatusCode.RESOURCE_EXHAUSTED
    exit_code = 5
    openai_type = "server_error"


class Unavailable(MlxServeError):
    """A service or worker is down or failed to start (503)."""

    http_status = 503
    grpc_code = grpc.StatusCode.UNAVAILABLE
    exit_code = 4
    openai_type = "server_error"


class Timeout(MlxServeError):
    """An operation ran past its deadline (504)."""

    http_status = 504
    grpc_code = grpc.StatusCode.DEADLINE_EXCEEDED
    exit_code = 6
    openai_type = "server_error"


class Cancelled(MlxServeError):
    """The client went away or asked to stop (499, nginx's 'client closed request')."""

    http_status = 499
    grpc_code = grpc.StatusCode.CANCELLED
    exit_code = 130
    openai_type = "server_error"


class Unauthenticated(MlxServeError):
    """The request lacks the API key the server requires, or carries a wrong one (401)."""

    http_status = 401
    grpc_code = grpc.StatusCode.UNAUTHENTICATED
    exit_code = 7
    openai_type = "authentication_error"


class Forbidden(MlxServeError):
    """The request is refused whoever sends it: an unexpected Host or Origin (403)."""

    http_status = 403
    grpc_code = grpc.StatusCode.PERMISSION_DENIED
    exit_code = 8
    openai_type = "permission_error"


class DiskFull(MlxServeError):
    """The disk that holds the model store has no room for what is being written (507)."""

    http_status = 507
    grpc_code = grpc.StatusCode.RESOURCE_EXHAUSTED  # shared with Busy: told apart by ERROR_CLASS_KEY
    exit_code = 9
    openai_type = "server_error"


class Internal(MlxServeError):
    """A bug or an unexpected failure (500)."""


_BY_GRPC_CODE: dict[grpc.StatusCode, type[MlxServeError]] = {
    cls.grpc_code: cls
    for cls in (InvalidArgument, Unsupported, NotFound, AlreadyExists, Busy, Unavailable, Timeout, Cancelled,
                Unauthenticated, Forbidden, Internal)
}

# Classes that share a gRPC code with another are told apart by the name a servicer sends along.
_BY_NAME: dict[str, type[MlxServeError]] = {cls.__name__: cls for cls in (DiskFull,)}

# gRPC trailing-metadata key that carries Retry-After across a process boundary.
RETRY_AFTER_KEY = "x-retry-after"
# Set on every status a servicer sends on purpose; its absence means gRPC itself failed (the
# peer is down), which is the only case where UNAVAILABLE should read as "service not reachable".
ERROR_CLASS_KEY = "x-mlxserve-error"


def from_rpc_error(err: grpc.RpcError, *, service: str = "", timeout: float | None = None) -> MlxServeError:
    """Turn a gRPC failure (from either the sync or the aio API) back into our error type.

    A servicer's verdict keeps its message. A failure of gRPC itself (no ERROR_CLASS_KEY: the peer
    is down, died mid-call, or did not answer within `timeout`) becomes a sentence naming the
    service; gRPC's own text ("Deadline Exceeded", "Stream removed", "failed to connect to all
    addresses") is no client's business (rpc.call logs it, with debug logging on).
    """
    code = err.code() if callable(getattr(err, "code", None)) else grpc.StatusCode.UNKNOWN
    details = err.details() if callable(getattr(err, "details", None)) else str(err)
    meta: dict[str, str] = {}
    try:
        meta = {key: value for key, value in (err.trailing_metadata() or ())}
    except Exception:  # noqa: BLE001 - metadata is optional garnish
        pass
    if ERROR_CLASS_KEY not in meta:
        return transport_error(code, service=service, timeout=timeout)
    retry_after = None
    if RETRY_AFTER_KEY in meta:
        try:
            retry_after = float(meta[RETRY_AFTER_KEY])
        except ValueError:
            pass
    cls = _BY_NAME.get(meta[ERROR_CLASS_KEY]) or _BY_GRPC_CODE.get(code, Internal)
    return cls(details or code.name.lower(), retry_after=retry_after)


def transport_error(code: grpc.StatusCode, *, service: str = "", timeout: float | None = None) -> MlxServeError:
    """The error for a call that gRPC itself failed with `code`: one clear sentence per kind."""
    name = f"the {service or 'backend'} service"
    if code == grpc.StatusCode.UNAVAILABLE:
        return Unavailable(f"{name} is not reachable")
    if code == grpc.StatusCode.DEADLINE_EXCEEDED:
        within = f" within {timeout:g} s" if timeout else " in time"
        return Timeout(f"{name} did not answer{within}")
    if code == grpc.StatusCode.CANCELLED:
        return Cancelled(f"the call to {name} was cancelled")
    if code == grpc.StatusCode.UNIMPLEMENTED:
        return Internal(f"{name} does not know this call (is it another version of mlxserve?)")
    if code == grpc.StatusCode.RESOURCE_EXHAUSTED:
        return InvalidArgument(f"the message to or from {name} is larger than gRPC may carry")
    # UNKNOWN / INTERNAL without a servicer's verdict: the connection broke mid-call ("Stream removed").
    return Unavailable(f"the connection to {name} was lost mid-call")


def grpc_status(err: MlxServeError) -> tuple[grpc.StatusCode, str, tuple[tuple[str, str], ...]]:
    """The (code, details, trailing metadata) a servicer should abort with for `err`."""
    meta: tuple[tuple[str, str], ...] = ((ERROR_CLASS_KEY, type(err).__name__),)
    if err.retry_after is not None:
        meta += ((RETRY_AFTER_KEY, str(err.retry_after)),)
    return err.grpc_code, err.message, meta
