"""`mlxctl run`: stream one answer from the gateway's /api/generate (NDJSON) to stdout, or chat on a terminal.

Also the HTTP plumbing `mlxctl chat` shares: opening a gateway stream, reading its chunks, and
printing an answer (thinking first, dimmed on a terminal) as it arrives.
"""

from __future__ import annotations

import http.client
import json
import sys
import urllib.error
import urllib.request
from typing import Iterable, Iterator, Optional, TextIO

import typer

from mlxserve.services.common.config import Settings
from mlxserve.services.common.errors import (
    Busy, Cancelled, Forbidden, Internal, InvalidArgument, MlxServeError, NotFound, Timeout, Unauthenticated, Unavailable,
)

from .backend import START_HINT, complete_model_names, exits_on_error, gateway_headers, settings_from
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


def open_stream(url: str, path: str, body: dict, settings: Settings) -> http.client.HTTPResponse:
    """POST `body` to the gateway; HTTP errors become our errors, nothing listening is 'not running'."""
    req = urllib.request.Request(f"{url}{path}", data=json.dumps(body).encode(),
                                 headers={"Content-Type": "application/json", **gateway_headers(settings)}, method="POST")
    try:
        return urllib.request.urlopen(req, timeout=settings.request_timeout)
    except urllib.error.HTTPError as e:
        raise _http_error(e) from None
    except (urllib.error.URLError, ConnectionError) as e:
        raise Unavailable(f"mlxserve is not running (nothing answers at {url}: {getattr(e, 'reason', e)}); {START_HINT}") from None


def post_json(url: str, path: str, body: dict, settings: Settings) -> dict:
    """One request, one JSON answer (e.g. /api/show)."""
    with open_stream(url, path, body, settings) as resp:
        raw = resp.read()
    return json.loads(raw) if raw.strip() else {}


def read_chunks(resp: Iterable[bytes]) -> Iterator[dict]:
    """The NDJSON objects of a stream; an `{"error": ...}` line (a failure after the first chunk) raises."""
    for raw in resp:
        if not raw.strip():
            continue
        chunk = json.loads(raw)
        if chunk.get("error"):
            raise Internal(str(chunk["error"]))
        yield chunk


DIM, RESET = "\x1b[2m", "\x1b[0m"


class AnswerWriter:
    """Prints an answer as it streams: thinking first (between Ollama's 'Thinking...' markers,
    dimmed on a terminal), then the content; `finish` ends the last line."""

    def __init__(self, out: TextIO | None = None) -> None:
        self.out = out or sys.stdout
        self.tty = self.out.isatty()
        self.content = ""
        self.thinking = ""
        self._in_thinking = False
        self._at_line_start = True

    def _write(self, text: str) -> None:
        self.out.write(text)
        self.out.flush()
        self._at_line_start = text.endswith("\n")

    def add(self, content: str = "", thinking: str = "") -> None:
        if thinking:
            if not self._in_thinking:
                self._write("Thinking...\n")
                self._in_thinking = True
            self.thinking += thinking
            self._write(f"{DIM}{thinking}{RESET}" if self.tty else thinking)
        if content:
            self._end_thinking()
            self.content += content
            self._write(content)

    def _end_thinking(self) -> None:
        if self._in_thinking:
            self._in_thinking = False
            self._write(("" if self._at_line_start else "\n") + "...done thinking.\n\n")

    def finish(self) -> None:
        self._end_thinking()
        if not self._at_line_start:
            self._write("\n")


def stream_answer(resp: Iterable[bytes], writer: AnswerWriter, chat: bool) -> dict:
    """Print a /api/generate (`chat=False`) or /api/chat stream as it arrives; return the final chunk."""
    done: dict = {}
    try:
        for chunk in read_chunks(resp):
            if chat:
                message = chunk.get("message") or {}
                writer.add(message.get("content", ""), message.get("thinking", ""))
            else:
                writer.add(chunk.get("response", ""), chunk.get("thinking", ""))
            if chunk.get("done"):
                done = chunk
    finally:
        writer.finish()
    return done


@exits_on_error
def run(
    ctx: typer.Context,
    model: str = typer.Argument(..., help="the model to run", autocompletion=complete_model_names),
    prompt: Optional[str] = typer.Argument(None, help="the prompt (default: read stdin; on a terminal, chat)"),
    system: Optional[str] = typer.Option(None, "--system", help="system message"),
    keepalive: Optional[str] = typer.Option(None, "--keepalive", help="how long the model stays loaded after this (e.g. 5m, 0, -1)"),
    verbose: bool = typer.Option(False, "--verbose", help="print timings at the end"),
    option: list[str] = typer.Option([], "--option", "-o", help="a model option as KEY=VALUE (e.g. -o temperature=0 -o num_predict=64); repeatable"),
    format_: Optional[str] = typer.Option(None, "--format", help="constrain the answer: json"),
    think: Optional[bool] = typer.Option(None, "--think/--no-think", help="let a reasoning model think first (shown apart), or not"),
    raw: bool = typer.Option(False, "--raw", help="send the prompt as is, without the chat template (continue the text)"),
    host: Optional[str] = typer.Option(None, "--host", envvar="MLXSERVE_HOST", help="server URL or host[:port]"),
) -> None:
    """Generate an answer to a prompt, streamed as it is produced; with no prompt on a terminal, chat."""
    settings = settings_from(ctx)
    url = base_url(host, settings.base_url)
    check_format(format_)
    options = parse_options(option)
    if raw and (system is not None or think is not None):
        raise InvalidArgument("--raw sends the prompt without the template, so it takes no --system or --think")
    if prompt is None and sys.stdin.isatty() and not raw:
        from .chat import ChatSession, start_chat  # chat pulls in readline; `run PROMPT` needs none of it

        session = ChatSession(model=model, system=system, options=options, format=format_, think=think,
                              verbose=verbose, keepalive=keepalive)
        raise typer.Exit(start_chat(session, url, settings))
    if prompt is None:
        prompt = sys.stdin.read()
    body: dict = {"model": model, "prompt": prompt, "stream": True}
    if system is not None:
        body["system"] = system
    if keepalive is not None:
        body["keep_alive"] = keepalive
    if options:
        body["options"] = options
    if format_:
        body["format"] = format_
    if think is not None:
        body["think"] = think
    if raw:
        body["raw"] = True
    with open_stream(url, "/api/generate", body, settings) as resp:
        done = stream_answer(resp, AnswerWriter(), chat=False)
    if verbose and done:
        print_timings(done)


def check_format(format_: str | None) -> None:
    """`--format` takes `json` (a JSON schema goes through the API, not the command line)."""
    if format_ is not None and format_ != "json":
        raise InvalidArgument(f"--format takes 'json', got {format_!r}")
