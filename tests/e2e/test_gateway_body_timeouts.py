"""Request bodies that stall or trickle in are cut off with 408: raw sockets against the real gateway
served on a loopback port (the fake services of tests/fixtures/gateway_harness.py), since only a
socket can send half a body and then wait."""

from __future__ import annotations

import asyncio
import json

import pytest

from tests.fixtures.gateway_harness import gateway, run

pytestmark = pytest.mark.timeout(30)


def test_a_blob_upload_that_stalls_is_cut_off_and_nothing_is_stored():
    async def scenario():
        async with gateway(body_timeout=0.5, port=True) as g:
            digest = "sha256:" + "ab" * 32
            reader, writer = await asyncio.open_connection("127.0.0.1", g.client.port)
            writer.write(f"POST /api/blobs/{digest} HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                         "Content-Length: 1000000\r\n\r\n".encode() + b"x" * 1000)
            await writer.drain()  # ...and then nothing more
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
            length = int(next(line for line in head.split(b"\r\n") if line.lower().startswith(b"content-length:")).split(b":")[1])
            body = await asyncio.wait_for(reader.readexactly(length), 5)
            writer.close()
            assert head.startswith(b"HTTP/1.1 408")
            assert "upload stalled" in json.loads(body)["error"]
            assert g.store.blobs == {}
    run(scenario())


def test_a_body_that_trickles_in_is_cut_off_with_408():
    async def scenario():
        async with gateway(body_timeout=0.5, port=True) as g:
            reader, writer = await asyncio.open_connection("127.0.0.1", g.client.port)
            writer.write(b"POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
                         b"Content-Length: 200\r\n\r\n{\"model\":")
            await writer.drain()
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
            length = int(next(line for line in head.split(b"\r\n") if line.lower().startswith(b"content-length:")).split(b":")[1])
            body = await asyncio.wait_for(reader.readexactly(length), 5)
            writer.close()
            assert head.startswith(b"HTTP/1.1 408") and b"connection: close" in head.lower()
            assert "did not arrive within 0.5 s" in json.loads(body)["error"]["message"]
            assert g.supervisor.acquires == []
    run(scenario())
