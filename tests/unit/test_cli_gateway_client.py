"""mlxctl's gateway client: requests it sends, answers and streams it reads, errors it maps (no sockets)."""

from __future__ import annotations

import pytest

from mlxserve.cli.gateway_client import GatewayClient, StreamFailed, base_url, error_from_answer, read_chunks
from mlxserve.services.common.errors import Busy, Internal, InvalidArgument, NotFound, Unavailable
from tests.fixtures.http_gateway import InProcessGateway

URL = "http://gateway"


def client_for(route, **kwargs) -> tuple[GatewayClient, InProcessGateway]:
    fake = InProcessGateway(route)
    return GatewayClient(URL, {"Authorization": "Bearer k"}, 5.0, opener=fake.opener(), **kwargs), fake


def test_a_json_request_sends_the_body_and_the_headers_and_returns_the_answer() -> None:
    client, fake = client_for(lambda method, path, body: (200, {"model": body["model"], "system": "s"}, {}))
    assert client.show("tiny") == {"model": "tiny", "system": "s"}
    method, path, body, headers = fake.requests[0]
    assert (method, path, body) == ("POST", "/api/show", {"model": "tiny"})
    assert headers["Authorization"] == "Bearer k" and headers["Content-type"] == "application/json"


def test_a_stream_yields_each_chunk_and_an_error_line_raises() -> None:
    lines = [{"response": "a", "done": False}, {"response": "b", "done": False}, {"done": True, "eval_count": 2}]
    client, _ = client_for(lambda method, path, body: (200, lines, {}))
    with client.generate({"model": "tiny", "prompt": "hi"}) as chunks:
        assert list(chunks) == lines
    client, _ = client_for(lambda method, path, body: (200, [{"response": "a"}, {"error": "the worker crashed"}], {}))
    with pytest.raises(StreamFailed, match="the worker crashed"), client.chat({"model": "tiny", "messages": []}) as chunks:
        list(chunks)


def test_an_unknown_model_is_not_found_with_where_to_look() -> None:
    client, _ = client_for(lambda method, path, body: (404, {"error": "model 'ghost' not found"}, {}))
    with pytest.raises(NotFound, match="model 'ghost' not found; `mlxctl list` shows the models here"):
        client.show("ghost")


@pytest.mark.parametrize(("status", "headers", "error"), [
    (400, {}, InvalidArgument), (404, {}, NotFound), (503, {"Retry-After": "1"}, Busy), (503, {}, Unavailable),
    (500, {}, Internal), (418, {}, InvalidArgument),
])
def test_error_answers_map_to_our_error_classes(status: int, headers: dict, error: type) -> None:
    client, _ = client_for(lambda method, path, body: (status, {"error": "no"}, headers))
    with pytest.raises(error, match="^no$"):
        client.post_json("/api/chat", {})


def test_an_openai_shaped_error_gives_its_message() -> None:
    err = error_from_answer(400, b'{"error": {"message": "bad temperature", "type": "invalid_request_error"}}', {})
    assert isinstance(err, InvalidArgument) and str(err) == "bad temperature"


def test_nothing_listening_reads_as_not_running_with_how_to_start() -> None:
    class Refusing(InProcessGateway):
        def http_open(self, req):  # type: ignore[override]
            raise ConnectionRefusedError("refused")

    client = GatewayClient(URL, opener=Refusing(lambda *a: (200, {}, {})).opener())
    with pytest.raises(Unavailable, match="mlxserve is not running .*start it with `mlxctl serve`"):
        client.post_json("/api/show", {"model": "tiny"})


def test_version_prefers_mlxserve_s_own_and_is_empty_when_unreadable() -> None:
    client, fake = client_for(lambda method, path, body: (200, {"version": "0.6.0", "mlxserve_version": "1.2.3"}, {}))
    assert client.version() == "1.2.3" and fake.requests[0][:2] == ("GET", "/api/version")
    client, _ = client_for(lambda method, path, body: (500, {"error": "down"}, {}))
    assert client.version() == ""


def test_blank_lines_in_a_stream_are_skipped() -> None:
    assert list(read_chunks([b'{"a": 1}\n', b"\n", b'{"b": 2}\n'])) == [{"a": 1}, {"b": 2}]


@pytest.mark.parametrize(("host", "url"), [
    (None, "http://127.0.0.1:11434"), ("10.0.0.2", "http://10.0.0.2:11434"), ("10.0.0.2:8080", "http://10.0.0.2:8080"),
    ("https://example.org/", "https://example.org"),
])
def test_host_flag_becomes_a_base_url(host: str | None, url: str) -> None:
    assert base_url(host, "http://127.0.0.1:11434") == url
