"""The generation core against in-process peers (tests/fixtures/gateway_fakes.py): leases, frames, endings.

No sockets, no processes, no wall-clock windows: the worker plays frames straight into the token
router, the ping interval and the lease linger are injected, and each test waits on events, not time.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from mlxserve.gateway.generation import GenerationCore, GenerationRequest
from mlxserve.services.common.errors import Internal, NotFound, Unavailable
from mlxserve.services.store.changes import ChangeMarker, marker_path
from tests.fixtures.gateway_fakes import InprocCore, done, make_core, text

pytestmark = pytest.mark.timeout(10)


def request(**kw) -> GenerationRequest:
    return GenerationRequest(model="tiny", request_id="r1", prompt="Hi", **kw)


async def settle(core: GenerationCore) -> None:
    """Let the releases started with release_soon finish."""
    for _ in range(5):
        await asyncio.sleep(0)
    if core._background:
        await asyncio.wait(list(core._background))


def run(tmp_path: Path, scenario, **kw) -> None:
    async def main():
        c = make_core(tmp_path, **kw)
        try:
            await scenario(c)
        finally:
            await c.worker.stop()
            await c.core.close()
    asyncio.run(main())


def test_collect_gathers_the_whole_answer_and_the_lease_goes_back_after(tmp_path):
    async def scenario(c: InprocCore):
        gen = await c.core.start(request(keep_alive_s=600))
        try:
            out = await gen.collect()
        finally:
            await gen.close()
        assert out.content == "Hello" and gen.done_reason == "stop" and gen.stats.eval_count == 3
        assert gen.model == "tiny:latest" and gen.load_duration_ns >= 250_000_000
        await settle(c.core)
        assert [(r.lease_id, r.keep_alive_s) for r in c.supervisor.releases] == [("lease-1", 600)]
        assert c.worker.cancels == [] and c.router.in_flight == 0
    run(tmp_path, scenario)


def test_an_error_frame_fails_the_generation_after_the_text_before_it(tmp_path):
    async def scenario(c: InprocCore):
        c.worker.plan = [text("Hel"), done("error", "out of memory while decoding")]
        gen = await c.core.start(request())
        seen = []
        with pytest.raises(Internal, match="out of memory"):
            async for event in gen.events():
                seen.append(event.text)
        await gen.close()
        assert seen == ["Hel"] and c.worker.cancels == []  # it ended: nothing to cancel
    run(tmp_path, scenario)


def test_a_worker_that_dies_mid_stream_fails_the_request_and_is_forgotten(tmp_path):
    async def scenario(c: InprocCore):
        ChangeMarker(marker_path(c.home / "run")).changed()
        c.worker.plan = [text("Hel"), "die"]
        gen = await c.core.start(request())
        with pytest.raises(Unavailable, match="exited unexpectedly"):
            async for _ in gen.events():
                pass
        await gen.close()
        await settle(c.core)
        assert c.worker.forgotten == [c.worker.address] and gen.worker_lost
        assert [r.lease_id for r in c.supervisor.releases] == ["lease-1"]  # the shared lease is retired at once
    run(tmp_path, scenario, lease_linger_s=60.0)


def test_a_worker_that_freezes_mid_stream_fails_the_request_saying_it_stopped_responding(tmp_path):
    async def scenario(c: InprocCore):
        c.worker.plan = [text("Hel"), "freeze"]
        gen = await c.core.start(request())
        with pytest.raises(Unavailable, match="stopped responding; it is being restarted"):
            async for _ in gen.events():
                pass
        await gen.close()
        assert gen.worker_lost
    run(tmp_path, scenario)


def test_a_leased_worker_that_cannot_be_reached_is_retried_once_with_a_fresh_lease(tmp_path):
    async def scenario(c: InprocCore):
        c.supervisor.dead_addresses = ["inproc://gone"]
        gen = await c.core.start(request())
        assert (await gen.collect()).content == "Hello"
        await gen.close()
        c.supervisor.dead_addresses = ["inproc://gone"] * 2
        with pytest.raises(Unavailable, match="is not answering"):
            await c.core.start(request())
        await settle(c.core)
        assert len(c.supervisor.acquires) == 4 and c.worker.forgotten == ["inproc://gone"] * 3
        assert sorted(r.lease_id for r in c.supervisor.releases) == ["lease-1", "lease-2", "lease-3", "lease-4"]
    run(tmp_path, scenario)


def test_closing_an_unfinished_generation_cancels_it_on_the_worker_and_releases(tmp_path):
    async def scenario(c: InprocCore):
        c.worker.plan = [text("Hel"), 3600.0, done()]
        gen = await c.core.start(request())
        events = gen.events()
        assert (await events.__anext__()).text == "Hel"
        await events.aclose()
        await gen.close()  # the handler's `finally` when the client went away
        await settle(c.core)
        assert c.worker.cancels == [gen.submit_id] and [r.lease_id for r in c.supervisor.releases] == ["lease-1"]
        assert c.router.in_flight == 0
    run(tmp_path, scenario)


def test_generations_share_one_lease_until_the_store_changes(tmp_path):
    async def scenario(c: InprocCore):
        store = ChangeMarker(marker_path(c.home / "run"))
        store.changed()

        async def one(**kw) -> None:
            gen = await c.core.start(request(**kw))
            await gen.collect()
            await gen.close()

        for _ in range(3):
            await one()
        assert len(c.supervisor.acquires) == 1  # one Acquire for three requests
        await settle(c.core)
        assert c.supervisor.releases == []  # still lingering for the next request
        store.changed()  # e.g. `mlxctl rm` or a new create of the name: the next request asks again
        await one()
        await settle(c.core)
        assert len(c.supervisor.acquires) == 2 and [r.lease_id for r in c.supervisor.releases] == ["lease-1"]
        await one(keep_alive_s=0)  # unload when idle: a lease of its own
        await settle(c.core)
        assert len(c.supervisor.acquires) == 3 and c.supervisor.releases[-1].keep_alive_s == 0
    run(tmp_path, scenario, lease_linger_s=3600.0)


def test_a_shared_lease_goes_back_once_unused_for_its_linger(tmp_path):
    async def scenario(c: InprocCore):
        ChangeMarker(marker_path(c.home / "run")).changed()
        gen = await c.core.start(request(keep_alive_s=600))
        await gen.collect()
        await gen.close()
        await settle(c.core)  # the linger is injected as 0: the timer fires on the next loop turn
        assert [(r.lease_id, r.keep_alive_s) for r in c.supervisor.releases] == [("lease-1", 600)]
    run(tmp_path, scenario, lease_linger_s=0.0)


def test_a_client_leaving_while_the_model_loads_still_releases_the_lease(tmp_path):
    async def scenario(c: InprocCore):
        c.supervisor.acquire_gate = asyncio.Event()
        start = asyncio.ensure_future(c.core.start(request()))
        await asyncio.sleep(0)
        start.cancel()
        with pytest.raises(asyncio.CancelledError):
            await start
        c.supervisor.acquire_gate.set()  # the model finishes loading after the client left
        await settle(c.core)
        assert [r.lease_id for r in c.supervisor.releases] == ["lease-1"] and c.worker.submits == []
    run(tmp_path, scenario)


def test_load_holds_no_lease_and_unload_of_an_unknown_model_is_not_found(tmp_path):
    async def scenario(c: InprocCore):
        await c.core.load("tiny", "r1", None)
        await settle(c.core)
        assert len(c.supervisor.releases) == 1
        await c.core.unload("tiny", "r2")
        assert c.supervisor.stops == ["tiny"]
        with pytest.raises(NotFound, match="model 'nope' not found"):
            await c.core.unload("nope", "r3")
    run(tmp_path, scenario)


def test_count_tokens_and_embed_release_their_leases(tmp_path):
    async def scenario(c: InprocCore):
        assert await c.core.count_tokens(request()) == 5
        resp, lease = await c.core.embed("tiny", "r1", None, ["a", "b"])
        assert len(resp.embeddings) == 2 and lease.model == "tiny:latest"
        await settle(c.core)
        assert len(c.supervisor.releases) == 2
    run(tmp_path, scenario)
