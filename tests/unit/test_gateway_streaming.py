"""The gateway's generation path against in-process gRPC services and a real ZeroMQ PUSH socket.

The supervisor, store and worker here are small fakes serving real gRPC on Unix sockets
(tests/fixtures/gateway_harness.py); the fake worker PUSHes real TokenEvent frames to the address the
gateway put in Submit. The same lease, cancel and worker-loss logic runs without sockets in
test_gateway_generation.py. What is under test
is the real gateway: its routing of frames, NDJSON/SSE rendering, error shapes, worker-death
detection and cancel-on-disconnect, checked with the real `ollama` and `openai` clients too.
"""

from __future__ import annotations

import asyncio
import json
import shutil
import tempfile
from pathlib import Path

import aiohttp
import pytest
import zmq
import zmq.asyncio

from mlxserve.gateway.token_router import TokenRouter
from mlxserve.services.store.changes import ChangeMarker, marker_path
from mlxserve.v1 import frames
from mlxserve.v1.frames import TokenEvent
from tests.fixtures.gateway_harness import done, harness, ndjson, run, sse, text, wait_for

pytestmark = pytest.mark.timeout(30)


def test_generate_streams_ndjson_chunks_then_a_final_summary():
    async def scenario():
        async with harness() as h:
            resp = await h.post("/api/generate", {"model": "tiny", "prompt": "Hi", "keep_alive": "10m", "options": {"seed": 1}})
            assert resp.status == 200 and resp.headers["Content-Type"].startswith("application/x-ndjson")
            lines = await ndjson(resp)
            assert [l["response"] for l in lines[:-1]] == ["Hel", "lo"] and not any(l["done"] for l in lines[:-1])
            final = lines[-1]
            assert final["done"] is True and final["done_reason"] == "stop" and final["response"] == ""
            assert final["model"] == "tiny" and final["created_at"].endswith("Z")
            assert final["context"] == [7, 8, 9, 1, 1]  # the prompt's token ids, then the answer's
            assert (final["prompt_eval_count"], final["eval_count"], final["eval_duration"]) == (5, 3, 9_000_000)
            assert final["load_duration"] == 250_000_000 and final["total_duration"] > 0
            submit, _ = h.worker.submits[0]
            assert submit.prompt == "Hi" and not submit.is_chat and submit.options.seed == 1
            assert h.worker.reply_to[0].startswith("ipc://") and h.worker.reply_to[0].endswith(".ipc")
            await wait_for(lambda: len(h.supervisor.releases) == 1)
            assert h.supervisor.acquires[0].keep_alive_s == 600 and h.supervisor.releases[0].keep_alive_s == 600
            assert h.supervisor.releases[0].lease_id == "lease-1" and h.worker.cancels == []
    run(scenario())


def test_generate_without_streaming_returns_one_object_with_the_whole_text():
    async def scenario():
        async with harness() as h:
            h.worker.plan = [text("Hel"), text("lo"), done("length")]
            resp = await h.post("/api/generate", {"model": "tiny", "prompt": "Hi", "stream": False})
            body = await resp.json()
            assert resp.status == 200 and body["response"] == "Hello" and body["done_reason"] == "length"
            assert body["eval_count"] == 3
    run(scenario())


def test_request_id_travels_from_header_to_the_worker_and_back():
    async def scenario():
        async with harness() as h:
            resp = await h.post("/api/generate", {"model": "tiny", "prompt": "Hi"}, headers={"X-Request-Id": "trace-42"})
            await resp.read()
            assert resp.headers["X-Request-Id"] == "trace-42"
            submit, metadata = h.worker.submits[0]
            assert submit.request_id.startswith("trace-42.") and metadata["x-request-id"] == "trace-42"
            assert h.supervisor.acquires[0].request_id == "trace-42"
            resp = await h.post("/api/generate", {"model": "tiny", "prompt": "Hi"}, headers={"X-Request-Id": "bad id; <script>"})
            await resp.read()
            assert resp.headers["X-Request-Id"] != "bad id; <script>" and len(resp.headers["X-Request-Id"]) == 16
    run(scenario())


def test_empty_prompt_loads_the_model_and_keep_alive_zero_unloads_it():
    async def scenario():
        async with harness() as h:
            body = await (await h.post("/api/generate", {"model": "tiny"})).json()
            assert body["done"] is True and body["done_reason"] == "load" and body["response"] == ""
            await wait_for(lambda: len(h.supervisor.releases) == 1)  # given back without holding up the answer
            assert len(h.supervisor.acquires) == 1 and h.worker.submits == []
            body = await (await h.post("/api/chat", {"model": "tiny", "messages": []})).json()
            assert body["done_reason"] == "load" and body["message"] == {"role": "assistant", "content": ""}
            body = await (await h.post("/api/generate", {"model": "tiny", "keep_alive": 0})).json()
            assert body["done_reason"] == "unload" and h.supervisor.stops == ["tiny"]
    run(scenario())


def test_unloading_a_model_that_is_not_loaded_succeeds_and_an_unknown_one_is_404():
    async def scenario():
        async with harness() as h:
            h.supervisor.loaded = False
            resp = await h.post("/api/generate", {"model": "tiny", "keep_alive": 0})
            assert resp.status == 200 and (await resp.json())["done_reason"] == "unload"
            resp = await h.post("/api/chat", {"model": "nope", "messages": [], "keep_alive": 0})
            assert resp.status == 404 and (await resp.json()) == {"error": "model 'nope' not found"}
    run(scenario())


def test_error_frame_mid_stream_ends_with_an_error_line_and_status_200():
    async def scenario():
        async with harness() as h:
            h.worker.plan = [text("Hel"), done("error", "out of memory while decoding")]
            resp = await h.post("/api/chat", {"model": "tiny", "messages": [{"role": "user", "content": "Hi"}]})
            lines = await ndjson(resp)
            assert resp.status == 200
            assert lines[0]["message"] == {"role": "assistant", "content": "Hel"}
            assert lines[-1] == {"error": "out of memory while decoding"}
    run(scenario())


def test_a_leased_worker_that_just_died_is_retried_once_with_a_fresh_lease():
    async def scenario():
        async with harness() as h:
            # The supervisor may hand out a just-killed worker before it notices the exit.
            h.supervisor.dead_addresses = [f"unix://{h.home}/gone.sock"]
            h.worker.plan = [text("Hel"), done()]
            resp = await h.post("/api/generate", {"model": "tiny", "prompt": "Hi", "stream": False})
            assert resp.status == 200 and (await resp.json())["response"] == "Hel"
            await wait_for(lambda: len(h.supervisor.releases) == 2)
            assert sorted(r.lease_id for r in h.supervisor.releases) == ["lease-1", "lease-2"]
            h.supervisor.dead_addresses = [f"unix://{h.home}/gone.sock"] * 2
            resp = await h.post("/api/generate", {"model": "tiny", "prompt": "Hi"})
            assert resp.status == 503 and "is not answering" in (await resp.json())["error"]
            assert len(h.supervisor.acquires) == 4
    run(scenario())


def test_client_disconnect_cancels_the_request_on_the_worker_and_releases_the_lease():
    async def scenario():
        async with harness() as h:
            h.worker.plan = [text("Hel")] + [0.05, text("lo")] * 100 + [done()]
            resp = await h.post("/api/generate", {"model": "tiny", "prompt": "Hi"})
            first = await resp.content.readline()
            assert json.loads(first)["response"] == "Hel"
            resp.close()  # the client goes away mid-stream
            await wait_for(lambda: len(h.worker.cancels) == 1 and len(h.supervisor.releases) == 1)
            assert h.worker.cancels[0] == h.worker.submits[0][0].request_id
    run(scenario())


def test_requests_for_a_model_share_one_lease_until_the_store_changes():
    async def scenario():
        async with harness() as h:
            store = ChangeMarker(marker_path(h.home / "run"))
            store.changed()
            one = {"model": "tiny", "prompt": "Hi", "stream": False}
            for _ in range(3):
                assert (await h.post("/api/generate", one)).status == 200
            assert len(h.supervisor.acquires) == 1  # one Acquire for three requests
            await wait_for(lambda: len(h.supervisor.releases) == 1)  # given back once unused for a moment
            assert (await h.post("/api/generate", one)).status == 200
            store.changed()  # e.g. `mlxctl rm` or a new create of the name: the next request asks again
            assert (await h.post("/api/generate", one)).status == 200
            assert [a.model for a in h.supervisor.acquires] == ["tiny"] * 3
            assert (await h.post("/api/generate", {**one, "keep_alive": 0})).status == 200  # unload when idle: its own
            assert len(h.supervisor.acquires) == 4
            await wait_for(lambda: len(h.supervisor.releases) == 4)
            assert h.supervisor.releases[-1].keep_alive_s == 0
    run(scenario())


def test_a_shared_lease_on_a_dead_worker_is_dropped_for_a_fresh_one():
    async def scenario():
        async with harness() as h:
            ChangeMarker(marker_path(h.home / "run")).changed()
            h.supervisor.dead_addresses = [f"unix://{h.home}/gone.sock"]
            one = {"model": "tiny", "prompt": "Hi", "stream": False}
            assert (await h.post("/api/generate", one)).status == 200  # lease-1 is dead: retried on lease-2
            assert (await h.post("/api/generate", one)).status == 200
            assert len(h.supervisor.acquires) == 2
            await wait_for(lambda: [r.lease_id for r in h.supervisor.releases][:1] == ["lease-1"])
    run(scenario())


def test_client_leaving_while_the_model_loads_still_releases_the_lease():
    async def scenario():
        async with harness() as h:
            h.supervisor.acquire_delay = 0.5
            with pytest.raises(asyncio.TimeoutError):
                await h.post("/api/generate", {"model": "tiny", "prompt": "Hi"}, timeout=aiohttp.ClientTimeout(total=0.2))
            await wait_for(lambda: len(h.supervisor.releases) == 1)
            assert h.supervisor.releases[0].lease_id == "lease-1" and h.worker.submits == []
    run(scenario())


def test_unknown_model_is_404_in_each_dialects_shape():
    async def scenario():
        async with harness() as h:
            resp = await h.post("/api/generate", {"model": "nope", "prompt": "Hi"})
            assert resp.status == 404 and await resp.json() == {"error": "model 'nope' not found"}
            resp = await h.post("/v1/chat/completions", {"model": "nope", "messages": [{"role": "user", "content": "Hi"}]})
            body = await resp.json()
            assert resp.status == 404
            assert body == {"error": {"message": "model 'nope' not found", "type": "not_found_error", "param": None,
                                      "code": "model_not_found"}}
    run(scenario())


def test_full_queue_is_503_with_retry_after():
    async def scenario():
        async with harness() as h:
            h.supervisor.busy = True
            resp = await h.post("/api/generate", {"model": "tiny", "prompt": "Hi"})
            assert resp.status == 503 and resp.headers["Retry-After"] == "3"
            assert "full" in (await resp.json())["error"]
    run(scenario())


def test_openai_stream_is_role_chunk_deltas_finish_usage_then_done():
    async def scenario():
        async with harness() as h:
            resp = await h.post("/v1/chat/completions", {
                "model": "tiny", "stream": True, "stream_options": {"include_usage": True},
                "messages": [{"role": "user", "content": "Hi"}]})
            assert resp.headers["Content-Type"].startswith("text/event-stream")
            events = await sse(resp)
            assert events[-1] == "[DONE]"
            chunks = events[:-1]
            assert chunks[0]["choices"][0]["delta"] == {"role": "assistant", "content": ""}
            assert [c["choices"][0]["delta"]["content"] for c in chunks[1:3]] == ["Hel", "lo"]
            assert chunks[3]["choices"][0] == {"index": 0, "delta": {}, "finish_reason": "stop", "logprobs": None}
            assert chunks[4]["choices"] == [] and chunks[4]["usage"] == {"prompt_tokens": 5, "completion_tokens": 3, "total_tokens": 8,
                                                                "prompt_tokens_details": {"cached_tokens": 0}}
            assert len({c["id"] for c in chunks}) == 1 and chunks[0]["id"].startswith("chatcmpl-")
            assert all(c["object"] == "chat.completion.chunk" and c["model"] == "tiny" for c in chunks)
    run(scenario())


def test_openai_error_mid_stream_is_an_error_event_then_done():
    async def scenario():
        async with harness() as h:
            h.worker.plan = [text("Hel"), done("error", "the model produced NaN")]
            resp = await h.post("/v1/chat/completions", {"model": "tiny", "stream": True,
                                                         "messages": [{"role": "user", "content": "Hi"}]})
            events = await sse(resp)
            assert resp.status == 200 and events[-1] == "[DONE]"
            assert events[-2]["error"]["message"] == "the model produced NaN" and events[-2]["error"]["type"] == "api_error"
    run(scenario())


def test_router_survives_garbage_and_drops_frames_for_finished_requests():
    async def scenario():
        run_dir = Path(tempfile.mkdtemp(prefix="gw", dir="/tmp"))
        router = TokenRouter(run_dir, name="g.ipc")
        await router.start()
        ctx = zmq.asyncio.Context()
        push = ctx.socket(zmq.PUSH)
        push.connect(router.address)
        try:
            stream = router.register("r1")
            await push.send(b"not msgpack at all")
            await push.send(frames.encode(TokenEvent(request_id="gone", text="late")))
            await push.send(frames.encode(TokenEvent(request_id="r1", text="ok", done=True, done_reason="stop")))
            event = await asyncio.wait_for(stream.queue.get(), 2.0)
            assert (event.text, event.done) == ("ok", True) and stream.queue.empty()
            assert (run_dir / "g.ipc").exists()
        finally:
            push.close(linger=0)
            ctx.destroy(linger=0)
            await router.close()
        assert not (run_dir / "g.ipc").exists()  # the socket file goes with the gateway
        shutil.rmtree(run_dir, ignore_errors=True)
    run(scenario())
