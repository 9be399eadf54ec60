"""Hostile input gets a 400 in the gateway's JSON error shape, never a 500 or plain text; gRPC's own failure
text never reaches a client (issue 21, items 5, 7 and 9)."""

from __future__ import annotations

import asyncio
import json
import shutil
import tempfile
from pathlib import Path

import grpc
import pytest

from mlxserve.gateway.app import create_app
from mlxserve.gateway.generation import GenerationRequest
from mlxserve.gateway.http_server import GatewayRunner
from mlxserve.services.common.config import load_settings
from mlxserve.services.common.errors import Cancelled, InvalidArgument, MlxServeError, Timeout, Unavailable, from_rpc_error
from tests.fixtures.gateway_fakes import make_core
from tests.fixtures.inproc_http import InprocClient

pytestmark = pytest.mark.timeout(60)

CORPUS = Path(__file__).parent.parent / "corpus" / "json"
JSON_ROUTES = ["/api/generate", "/api/chat", "/api/pull", "/api/push", "/api/create", "/api/copy", "/api/show",
               "/v1/chat/completions", "/v1/completions", "/v1/responses", "/api/embed", "/api/embeddings",
               "/v1/embeddings", "/v1/messages", "/v1/messages/count_tokens"]


def post_raw(path: str, raw: bytes, method: str = "POST") -> tuple[int, dict]:
    """Send `raw` to a gateway with no backends running; (status, JSON body)."""
    async def scenario() -> tuple[int, dict]:
        home = Path(tempfile.mkdtemp(prefix="gw", dir="/tmp"))
        client = InprocClient(create_app(load_settings({"home": str(home)}, env={})))
        await client.start_server()
        try:
            resp = await client.request(method, path, data=raw, headers={"Content-Type": "application/json"})
            assert resp.content_type == "application/json", await resp.text()
            return resp.status, await resp.json()
        finally:
            await client.close()
            shutil.rmtree(home, ignore_errors=True)
    return asyncio.run(scenario())


def error_text(body: dict) -> str:
    error = body["error"]
    return error["message"] if isinstance(error, dict) else error


# -- JSON nested ~1,000 deep (item 7) --------------------------------------------------------------------


@pytest.mark.parametrize("path", JSON_ROUTES + ["/api/delete"])
def test_json_nested_a_thousand_deep_is_a_400_naming_the_nesting_on_every_json_route(path: str) -> None:
    deep = b'{"model": "m", "x": ' + b"[" * 1000 + b"]" * 1000 + b"}"
    status, body = post_raw(path, deep, "DELETE" if path == "/api/delete" else "POST")
    assert status == 400
    assert "levels deep" in error_text(body)


@pytest.mark.parametrize("name", sorted(p.name for p in CORPUS.glob("*.json")))
def test_every_body_of_the_hostile_json_corpus_is_a_400_on_chat(name: str) -> None:
    status, body = post_raw("/api/chat", (CORPUS / name).read_bytes())
    assert status == 400, body
    assert error_text(body)


def test_nesting_inside_a_schema_at_a_sane_depth_is_not_refused_for_depth() -> None:
    schema: dict = {"type": "string"}
    for _ in range(20):
        schema = {"type": "object", "properties": {"a": schema}}
    status, body = post_raw("/api/chat", json.dumps({"model": "m", "messages": [], "format": schema}).encode())
    assert "levels deep" not in error_text(body)


def test_tool_call_arguments_nested_too_deep_are_a_400_naming_the_field() -> None:
    arguments = "[" * 1000 + "]" * 1000
    body = {"model": "m", "messages": [{"role": "assistant", "content": None, "tool_calls": [
        {"id": "c1", "type": "function", "function": {"name": "f", "arguments": arguments}}]}]}
    status, answer = post_raw("/v1/chat/completions", json.dumps(body).encode())
    assert status == 400 and "levels deep" in error_text(answer)


# -- num_predict below -2 (item 9) ---------------------------------------------------------------------


@pytest.mark.parametrize("path, body", [
    ("/api/generate", {"model": "m", "prompt": "hi", "options": {"num_predict": -5}}),
    ("/api/chat", {"model": "m", "messages": [{"role": "user", "content": "hi"}], "options": {"num_predict": -3}}),
    ("/v1/chat/completions", {"model": "m", "messages": [{"role": "user", "content": "hi"}], "options": {"num_predict": -5}}),
])
def test_num_predict_below_minus_two_is_a_400_naming_it(path: str, body: dict) -> None:
    status, answer = post_raw(path, json.dumps(body).encode())
    assert status == 400
    assert "num_predict" in error_text(answer)


@pytest.mark.parametrize("value", [-1, -2])
def test_num_predict_minus_one_and_minus_two_are_taken(value: int) -> None:
    # Taken by validation: the request goes on to the (absent) backends and fails there, not with a 400.
    status, _ = post_raw("/api/generate", json.dumps({"model": "m", "prompt": "hi", "options": {"num_predict": value}}).encode())
    assert status == 503


# -- a request line aiohttp cannot parse (item 9) ----------------------------------------------------------


def send_bytes(raw: bytes) -> bytes:
    """Write `raw` into a connection of the gateway's own runner; what it answers."""
    async def scenario() -> bytes:
        home = Path(tempfile.mkdtemp(prefix="gw", dir="/tmp"))
        runner = GatewayRunner(create_app(load_settings({"home": str(home)}, env={})), handler_cancellation=True, access_log=None)
        await runner.setup()
        written = bytearray()
        closed = asyncio.Event()

        class Transport(asyncio.Transport):
            def write(self, data: bytes) -> None:
                written.extend(data)

            def close(self) -> None:
                closed.set()

            def is_closing(self) -> bool:
                return closed.is_set()

            def get_extra_info(self, name: str, default=None):
                return {"peername": ("127.0.0.1", 50000)}.get(name, default)

        protocol = runner.server()
        protocol.connection_made(Transport())
        protocol.data_received(raw)
        try:
            await asyncio.wait_for(closed.wait(), 10)
        finally:
            protocol.connection_lost(None)
            await runner.cleanup()
            shutil.rmtree(home, ignore_errors=True)
        return bytes(written)
    return asyncio.run(scenario())


def test_an_invalid_utf8_path_gets_the_json_400_shape() -> None:
    answer = send_bytes(b"GET /api/\xff\xfe HTTP/1.1\r\nHost: 127.0.0.1:11434\r\n\r\n")
    head, _, body = answer.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 400") or head.startswith(b"HTTP/1.0 400")
    assert b"application/json" in head
    message = json.loads(body)["error"]
    assert message.startswith("the HTTP request is malformed") and "UTF-8" in message
    assert "\\xff" not in message  # the request is not quoted back


# -- gRPC's own failures (item 5) ------------------------------------------------------------------------


class _Failure(grpc.RpcError):
    def __init__(self, code: grpc.StatusCode, details: str) -> None:
        self._code, self._details = code, details

    def code(self) -> grpc.StatusCode:
        return self._code

    def details(self) -> str:
        return self._details

    def trailing_metadata(self) -> tuple:
        return ()


RAW_GRPC = [
    (grpc.StatusCode.DEADLINE_EXCEEDED, "Deadline Exceeded", Timeout, "did not answer within 30 s"),
    (grpc.StatusCode.UNAVAILABLE, "failed to connect to all addresses; last error: UNAVAILABLE: ipc:///x", Unavailable,
     "is not reachable"),
    (grpc.StatusCode.UNKNOWN, "Stream removed", Unavailable, "was lost mid-call"),
    (grpc.StatusCode.INTERNAL, "Socket closed", Unavailable, "was lost mid-call"),
    (grpc.StatusCode.CANCELLED, "Locally cancelled by application!", Cancelled, "was cancelled"),
]


@pytest.mark.parametrize("code, details, kind, sentence", RAW_GRPC)
def test_a_grpc_failure_becomes_a_sentence_naming_the_service(code, details, kind, sentence) -> None:
    err = from_rpc_error(_Failure(code, details), service="worker", timeout=30.0)
    assert isinstance(err, kind)
    assert err.message.startswith("the ") and "worker service" in err.message and sentence in err.message
    assert details not in err.message


@pytest.mark.parametrize("code, details, kind, sentence", RAW_GRPC[:4])
def test_no_raw_grpc_text_reaches_a_client_of_chat(code, details, kind, sentence) -> None:
    async def scenario() -> tuple[int, str]:
        peers = make_core(Path(tempfile.mkdtemp(prefix="gw", dir="/tmp")))

        async def failing_submit(*args, **kwargs):
            raise from_rpc_error(_Failure(code, details), service="worker", timeout=30.0)

        peers.worker.submit = failing_submit
        app = create_app(peers.core.settings, supervisor=peers.supervisor, workers=peers.worker, router=peers.router)
        client = InprocClient(app)
        await client.start_server()
        try:
            resp = await client.post("/api/chat", json={"model": "tiny", "messages": [{"role": "user", "content": "hi"}],
                                                         "stream": False})
            return resp.status, await resp.text()
        finally:
            await client.close()
    status, text = asyncio.run(scenario())
    assert status in (499, 503, 504)
    assert details not in text and "Deadline Exceeded" not in text and "Stream removed" not in text
    assert sentence in text


def test_every_error_kind_keeps_one_http_status() -> None:
    # The taxonomy is the only place a status is decided: the transport sentences reuse its kinds.
    for code, details, kind, _ in RAW_GRPC:
        err = from_rpc_error(_Failure(code, details), service="store")
        assert isinstance(err, MlxServeError) and type(err).http_status == kind.http_status


def test_a_submit_past_its_deadline_is_cancelled_on_the_worker() -> None:
    # The worker may still be tokenizing it, or have queued it as the deadline passed: it is told to stop.
    async def scenario() -> list[str]:
        peers = make_core(Path(tempfile.mkdtemp(prefix="gw", dir="/tmp")))

        async def late_submit(*args, **kwargs):
            raise from_rpc_error(_Failure(grpc.StatusCode.DEADLINE_EXCEEDED, "Deadline Exceeded"), service="worker", timeout=30.0)

        peers.worker.submit = late_submit
        with pytest.raises(Timeout):
            await peers.core.start(GenerationRequest(model="tiny", request_id="late", prompt="hi"))
        return peers.worker.cancels
    cancels = asyncio.run(scenario())
    assert len(cancels) == 1 and cancels[0].startswith("late.")


def test_a_submit_the_worker_refused_is_not_cancelled() -> None:
    async def scenario() -> list[str]:
        peers = make_core(Path(tempfile.mkdtemp(prefix="gw", dir="/tmp")))

        async def refusing_submit(*args, **kwargs):
            raise InvalidArgument("the prompt is at least 9 characters, which does not fit the context of 1 tokens")

        peers.worker.submit = refusing_submit
        with pytest.raises(InvalidArgument):
            await peers.core.start(GenerationRequest(model="tiny", request_id="refused", prompt="hi"))
        return peers.worker.cancels
    assert asyncio.run(scenario()) == []
