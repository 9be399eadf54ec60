"""HTTP rendering shared by the dialects: error bodies, NDJSON lines, SSE events, token logprobs.

Errors are rendered once from the taxonomy in services/common/errors.py: the HTTP status and the
OpenAI error type come from the exception class; only the body shape depends on the dialect
(native, OpenAI, or Anthropic's Messages API, whose full queue is its own 529 "overloaded").
"""

from __future__ import annotations

import json
import math
from typing import Any, AsyncIterator, Callable, Mapping

from aiohttp import web

from mlxserve.services.common import logs
from mlxserve.services.common.errors import Busy, MlxServeError, NotFound
from mlxserve.v1.frames import TokenLogprob

NDJSON_HEADERS = {"Content-Type": "application/x-ndjson"}

# Set on a request once its streamed response was sent to the end: a client that leaves while
# the handler still cleans up (releasing the lease) was served, not cut off.
STREAM_COMPLETED = web.RequestKey("stream_completed", int)

NATIVE = "native"
OPENAI = "openai"
ANTHROPIC = "anthropic"

ANTHROPIC_VERSION_HEADER = "anthropic-version"  # every Anthropic SDK request carries it
ANTHROPIC_OVERLOADED = 529  # Anthropic's status for "try again later" (a full queue here)
_ANTHROPIC_ERROR_TYPES = {400: "invalid_request_error", 401: "authentication_error", 403: "permission_error",
                          404: "not_found_error", 408: "timeout_error", 413: "request_too_large", 429: "rate_limit_error",
                          504: "timeout_error", ANTHROPIC_OVERLOADED: "overloaded_error"}


def dialect_of(path: str, headers: Mapping[str, str] | None = None) -> str:
    """The API a request speaks, by its path: /v1/messages* is Anthropic's, and so is /v1/models* when asked
    with an `anthropic-version` header; the rest of /v1/* is OpenAI's, everything else native."""
    if path.startswith("/v1/messages"):
        return ANTHROPIC
    if path.startswith("/v1/") or path == "/v1":
        if headers is not None and ANTHROPIC_VERSION_HEADER in headers and path.startswith("/v1/models"):
            return ANTHROPIC
        return OPENAI
    return NATIVE


def dumps(obj: Any) -> str:
    return json.dumps(obj, ensure_ascii=False, separators=(",", ":"))


def logprobs_json(items: list[TokenLogprob], *, top: bool = True) -> list[dict[str, Any]]:
    """Token logprobs as every dialect shows them: [{token, logprob, bytes, top_logprobs: [{token, logprob,
    bytes}]}] (Ollama's, OpenAI chat's `logprobs.content`, the Responses API's). `top` False leaves
    top_logprobs out (Ollama, when none were asked for); OpenAI's legacy completions regroup these entries."""
    out = []
    for lp in items:
        entry: dict[str, Any] = {"token": lp.token, "logprob": lp.logprob, "bytes": lp.bytes}
        if top:
            entry["top_logprobs"] = [{"token": t.token, "logprob": t.logprob, "bytes": t.bytes} for t in lp.top]
        out.append(entry)
    return out


def sse_response_headers() -> dict[str, str]:
    return {"Content-Type": "text/event-stream", "Cache-Control": "no-cache"}


def native_error_body(message: str) -> dict[str, Any]:
    return {"error": message}


def openai_error_body(err: MlxServeError) -> dict[str, Any]:
    code = None
    if isinstance(err, NotFound) and err.message.startswith("model "):
        code = "model_not_found"
    return {"error": {"message": err.message, "type": err.openai_type, "param": getattr(err, "param", None), "code": code}}


def anthropic_status(err: MlxServeError) -> int:
    return ANTHROPIC_OVERLOADED if isinstance(err, Busy) else err.http_status


def anthropic_error_body(status: int, message: str) -> dict[str, Any]:
    """Anthropic's error object: {"type": "error", "error": {"type", "message"}}, the type by status."""
    kind = _ANTHROPIC_ERROR_TYPES.get(status, "invalid_request_error" if status < 500 else "api_error")
    return {"type": "error", "error": {"type": kind, "message": message}}


def error_response(err: MlxServeError, dialect: str) -> web.Response:
    """The HTTP response for an error raised before any output was sent."""
    status = err.http_status
    if dialect == ANTHROPIC:
        status = anthropic_status(err)
        body = anthropic_error_body(status, err.message)
    else:
        body = openai_error_body(err) if dialect == OPENAI else native_error_body(err.message)
    headers = {}
    if isinstance(err, Busy) or (err.retry_after is not None and err.http_status in (429, 503)):
        headers["Retry-After"] = str(max(1, math.ceil(err.retry_after or 1)))
    return web.Response(status=status, text=dumps(body), content_type="application/json", headers=headers)


def http_error_response(status: int, message: str, dialect: str, headers: dict[str, str] | None = None) -> web.Response:
    """A JSON body for aiohttp's own HTTP errors (404 route, 405, 413) in the request's dialect."""
    if dialect == OPENAI:
        kind = "invalid_request_error" if status < 500 else "server_error"
        body: dict[str, Any] = {"error": {"message": message, "type": kind, "param": None, "code": None}}
    elif dialect == ANTHROPIC:
        body = anthropic_error_body(status, message)
    else:
        body = native_error_body(message)
    return web.Response(status=status, text=dumps(body), content_type="application/json", headers=headers)


def ndjson_line(obj: dict[str, Any]) -> bytes:
    return (dumps(obj) + "\n").encode()


def sse_event(obj: dict[str, Any] | str) -> bytes:
    data = obj if isinstance(obj, str) else dumps(obj)
    return f"data: {data}\n\n".encode()


async def stream_chunks(request: web.Request, headers: dict[str, str], chunks: AsyncIterator[bytes], *,
                        error_chunk: Callable[[MlxServeError], bytes], trailer: bytes = b"",
                        failure_event: str = "generation_failed") -> web.StreamResponse:
    """Send `chunks` as one streamed response, the same way for every streaming route.

    The status (200) is sent before the first chunk, so a failure mid-stream becomes a final
    `error_chunk` in the dialect's shape; `trailer` (SSE's `[DONE]`) always ends the stream. A
    client that went away is logged, not raised: the caller's cleanup cancels the work.
    """
    resp = web.StreamResponse(headers=headers)
    await resp.prepare(request)
    log = logs.get_logger(component="stream")
    try:
        try:
            async for chunk in chunks:
                await resp.write(chunk)
        except MlxServeError as e:
            log.warning(failure_event, error=e.message)
            await resp.write(error_chunk(e))
        if trailer:
            await resp.write(trailer)
        await resp.write_eof()
        request[STREAM_COMPLETED] = resp.status
    except ConnectionResetError:
        log.info("client_disconnected")
    return resp
