"""How mlxctl reaches a running mlxserve: settings, gRPC stubs, and errors rendered as one line.

The gateway's HTTP routes (`run`, `chat`, `bench`) go through gateway_client.py instead."""

from __future__ import annotations

import functools
import os
import socket
import traceback
from typing import Any, Callable, Iterator, TypeVar

import grpc
import typer

from mlxserve.services.common import logs, rpc
from mlxserve.services.common.config import Settings, load_settings
from mlxserve.services.common.errors import Internal, MlxServeError, Timeout, Unavailable, from_rpc_error
from mlxserve.v1 import store_pb2, store_pb2_grpc, supervisor_pb2, supervisor_pb2_grpc

T = TypeVar("T")
F = TypeVar("F", bound=Callable[..., Any])

START_HINT = "start it with `mlxctl serve` (or keep it running with `mlxctl service install`)"
COMPLETION_TIMEOUT_S = 1.0  # a shell waits on this while the user waits on the shell


def settings_from(ctx: typer.Context | None, **overrides: Any) -> Settings:
    """Settings from defaults, config file, env, the global `--home` and the command's own flags."""
    home = overrides.pop("home", None) or ((ctx.obj or {}).get("home") if ctx is not None else None)
    return load_settings({"home": home, **overrides})


def gateway_headers(settings: Settings) -> dict[str, str]:
    """Headers for every HTTP request mlxctl sends to the gateway: the API key, when one is
    configured, and this command's request id, so the services' log lines for it share one id."""
    headers = {"Authorization": f"Bearer {settings.api_key}"} if settings.api_key else {}
    rid = logs.current_request_id()
    if rid:
        headers["X-Request-Id"] = rid
    return headers


def unexpected_error(e: BaseException) -> MlxServeError:
    """A failure no verb anticipated, as one of our errors: a dead connection mid-answer reads as
    the server going away, a socket timeout as a timeout, anything else as internal."""
    if isinstance(e, (TimeoutError, socket.timeout)):
        return Timeout(f"the server did not answer in time ({e or 'timed out'})")
    if isinstance(e, (ConnectionError, grpc.RpcError)):
        return Unavailable(f"the connection to mlxserve broke ({e}); is it still running? {START_HINT}")
    return Internal(f"unexpected {type(e).__name__}: {e} (run `mlxctl -v ...` for the traceback)")


def exits_on_error(fn: F) -> F:
    """Render any failure as one `Error: ...` line on stderr and exit with its class's exit code
    (the traceback of an unexpected one goes to stderr too under `mlxctl -v`)."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except MlxServeError as e:
            err = e
        except KeyboardInterrupt:
            raise typer.Exit(130) from None
        except (typer.Exit, typer.Abort, SystemExit):
            raise
        except Exception as e:  # noqa: BLE001 - the CLI's promise is one line, never a traceback
            if os.environ.get("MLXSERVE_LOG_LEVEL") == "debug":
                traceback.print_exc()
            err = unexpected_error(e)
        typer.echo(f"Error: {err}", err=True)
        raise typer.Exit(err.exit_code)

    return wrapper  # type: ignore[return-value]


class Backend:
    """Sync gRPC stubs for the store and the supervisor of one mlxserve home."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings

    def _not_running(self, service: str) -> Unavailable:
        sock = self.settings.store_socket if service == "store" else self.settings.supervisor_socket
        return Unavailable(f"mlxserve is not running (no {service} at {sock}); {START_HINT}")

    def _channel(self, service: str) -> grpc.Channel:
        sock = self.settings.store_socket if service == "store" else self.settings.supervisor_socket
        if not sock.exists():
            raise self._not_running(service)
        return rpc.sync_channel(rpc.unix_target(sock))

    def call(self, service: str, method: str, request: Any, timeout: float | None = 30.0) -> Any:
        """One unary call; a socket nobody answers on reads as 'mlxserve is not running'."""
        with self._channel(service) as channel:
            stub = self._stub(service, channel)
            try:
                return rpc.call_sync(service, getattr(stub, method), request, timeout=timeout)
            except Unavailable as e:
                if self._unreachable(service, e):
                    raise self._not_running(service) from None
                raise

    def stream(self, service: str, method: str, request: Any) -> Iterator[Any]:
        """A server-streaming call (the store's Create, Pull, Push, Pack, ImportOllama, Verify), mapping failures to our errors."""
        answered = False
        with self._channel(service) as channel:
            try:
                for message in getattr(self._stub(service, channel), method)(request):
                    answered = True
                    yield message
            except grpc.RpcError as e:
                err = from_rpc_error(e, service=service)
                if isinstance(err, Unavailable) and self._unreachable(service, err):
                    if answered:  # it was running a moment ago: it died (or was stopped) mid-operation
                        raise Unavailable(f"the {service} stopped while working on this; see `mlxctl logs "
                                          f"{service}`, and run the command again once it is back") from None
                    raise self._not_running(service) from None
                raise err from None

    @staticmethod
    def _unreachable(service: str, err: Unavailable) -> bool:
        """Whether the service itself is down (not, say, a registry the store could not reach)."""
        return err.message.startswith(f"the {service} service is not reachable")

    @staticmethod
    def _stub(service: str, channel: grpc.Channel) -> Any:
        return store_pb2_grpc.StoreStub(channel) if service == "store" else supervisor_pb2_grpc.SupervisorStub(channel)


def _completion_backend(ctx: typer.Context) -> Backend:
    # While the shell completes, the root callback has not run: read --home from the parsed params.
    home = ctx.find_root().params.get("home")
    return Backend(load_settings({"home": home}))


def complete_model_names(ctx: typer.Context, incomplete: str) -> list[str]:
    """Shell completion for model arguments: the store's models starting with what was typed;
    nothing at all (never an error) when mlxserve is not running."""
    try:
        resp = _completion_backend(ctx).call("store", "List", store_pb2.ListRequest(), timeout=COMPLETION_TIMEOUT_S)
    except Exception:  # noqa: BLE001 - a completion must not print or fail
        return []
    return _matching([m.name for m in resp.models], incomplete)


def complete_loaded_models(ctx: typer.Context, incomplete: str) -> list[str]:
    """Shell completion for `stop`: the models loaded now; nothing when mlxserve is not running."""
    try:
        resp = _completion_backend(ctx).call("supervisor", "ListLoaded", supervisor_pb2.ListLoadedRequest(),
                                             timeout=COMPLETION_TIMEOUT_S)
    except Exception:  # noqa: BLE001 - a completion must not print or fail
        return []
    return _matching([m.name for m in resp.models], incomplete)


def _matching(names: list[str], incomplete: str) -> list[str]:
    """Names that start with `incomplete` (case-insensitively, as names match), also when the
    user left out the `library/` namespace or typed no tag yet."""
    typed = incomplete.lower()
    return sorted({n for n in names if n.lower().startswith(typed) or n.lower().removeprefix("library/").startswith(typed)})
