"""`mlxctl run`: stream one answer from the gateway's /api/generate (NDJSON) to stdout."""

from __future__ import annotations

import json
import sys
import urllib.error
import urllib.request
from typing import Optional

import typer

from mlxserve.services.common.errors import (
    Busy, Cancelled, Forbidden, Internal, InvalidArgument, MlxServeError, NotFound, Timeout, Unauthenticated, Unavailable,
)

from .backend import START_HINT, exits_on_error, gateway_headers, settings_from
from .render import print_timings

_BY_STATUS: dict[int, type[MlxServeError]] = {400: InvalidArgument, 401: Unauthenticated, 403: Forbidden, 404: NotFound,
                                               499: Cancelled, 503: Busy, 504: Timeout}


def base_url(host: str | None, default: str) -> str:
    """`--host` as a URL, host:port, or bare host (with the default port); else the default URL."""
    if not host:
        return default
    if host.startswith(("http://", "https://")):
        return host.rstrip("/")
    if ":" in host and not host.startswith("["):
        return f"http://{host}"
    port = default.rsplit(":", 1)[1]
    return f"http://{host}:{port}"


def _http_error(e: urllib.error.HTTPError) -> MlxServeError:
    try:
        message = json.loads(e.read().decode() or "{}").get("error") or e.reason
    except (ValueError, AttributeError):
        message = str(e.reason)
    if isinstance(message, dict):  # OpenAI-shaped
        message = message.get("message", str(message))
    cls = _BY_STATUS.get(e.code, Internal if e.code >= 500 else InvalidArgument)
    if e.code == 503 and e.headers.get("Retry-After") is None:
        cls = Unavailable  # a backend is down, not a full queue
    return cls(str(message))


def parse_options(pairs: list[str]) -> dict:
    """`KEY=VALUE` pairs as an Ollama `options` object; values are JSON where they parse (numbers,
    booleans, lists), else strings. `stop` may repeat and accumulates into a list."""
    options: dict = {}
    for pair in pairs:
        key, sep, raw = pair.partition("=")
        if not sep or not key.strip():
            raise InvalidArgument(f"--option wants KEY=VALUE, got {pair!r}")
        try:
            value = json.loads(raw)
        except ValueError:
            value = raw
        key = key.strip()
        if key == "stop":
            options.setdefault("stop", []).extend(value if isinstance(value, list) else [str(value)])
        else:
            options[key] = value
    return options


@exits_on_error
def run(
    ctx: typer.Context,
    model: str = typer.Argument(..., help="the model to run"),
    prompt: Optional[str] = typer.Argument(None, help="the prompt (default: read stdin)"),
    system: Optional[str] = typer.Option(None, "--system", help="system message"),
    keepalive: Optional[str] = typer.Option(None, "--keepalive", help="how long the model stays loaded after this (e.g. 5m, 0, -1)"),
    verbose: bool = typer.Option(False, "--verbose", help="print timings at the end"),
    option: list[str] = typer.Option([], "--option", "-o", help="a model option as KEY=VALUE (e.g. -o temperature=0 -o num_predict=64); repeatable"),
    host: Optional[str] = typer.Option(None, "--host", envvar="MLXSERVE_HOST", help="server URL or host[:port]"),
) -> None:
    """Generate an answer to a prompt, streamed as it is produced."""
    settings = settings_from(ctx)
    url = base_url(host, settings.base_url)
    if prompt is None:
        prompt = sys.stdin.read()
    body: dict = {"model": model, "prompt": prompt, "stream": True}
    if system is not None:
        body["system"] = system
    if keepalive is not None:
        body["keep_alive"] = keepalive
    if option:
        body["options"] = parse_options(option)
    req = urllib.request.Request(f"{url}/api/generate", data=json.dumps(body).encode(),
                                 headers={"Content-Type": "application/json", **gateway_headers(settings)}, method="POST")
    try:
        resp = urllib.request.urlopen(req, timeout=settings.request_timeout)
    except urllib.error.HTTPError as e:
        raise _http_error(e) from None
    except (urllib.error.URLError, ConnectionError) as e:
        raise Unavailable(f"mlxserve is not running (nothing answers at {url}: {getattr(e, 'reason', e)}); {START_HINT}") from None
    done: dict = {}
    wrote_newline = True
    with resp:
        for raw in resp:
            if not raw.strip():
                continue
            chunk = json.loads(raw)
            if chunk.get("error"):
                if not wrote_newline:
                    sys.stdout.write("\n")
                raise Internal(str(chunk["error"]))
            text = chunk.get("response", "")
            if text:
                sys.stdout.write(text)
                sys.stdout.flush()
                wrote_newline = text.endswith("\n")
            if chunk.get("done"):
                done = chunk
    if not wrote_newline:
        sys.stdout.write("\n")
        sys.stdout.flush()
    if verbose and done:
        print_timings(done)
