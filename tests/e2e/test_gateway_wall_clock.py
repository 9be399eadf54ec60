"""Wall-clock bounds in the gateway: a dead worker fails the request within two seconds, a slow lease
release does not delay the answer, and request_timeout ends a generation that keeps streaming.
tests/unit/test_gateway_generation.py checks the lease behaviours without timing; these keep the
real clock, so they live here."""

from __future__ import annotations

import asyncio
import json
import time

import pytest

from tests.fixtures.gateway_harness import done, gateway, harness, ndjson, run, text, wait_for
from tests.fixtures.gateway_plans import CHAT

pytestmark = pytest.mark.timeout(30)


def test_worker_death_fails_the_request_with_a_clear_error_within_two_seconds():
    async def scenario():
        async with harness() as h:
            h.worker.plan = [text("Hel"), "die"]
            started = time.monotonic()
            resp = await h.post("/api/generate", {"model": "tiny", "prompt": "Hi"})
            lines = await ndjson(resp)
            elapsed = time.monotonic() - started
            assert lines[0]["response"] == "Hel"
            assert lines[-1] == {"error": "the worker for model 'tiny:latest' exited unexpectedly"}
            assert elapsed < 2.5
            await wait_for(lambda: len(h.supervisor.releases) == 1)
    run(scenario())


def test_a_slow_release_does_not_hold_up_the_answer_and_shutdown_waits_for_it():
    async def scenario():
        async with harness() as h:
            h.supervisor.release_delay = 2.0
            started = time.monotonic()
            resp = await h.post("/api/generate", {"model": "tiny", "prompt": "Hi", "stream": False})
            assert resp.status == 200 and (await resp.json())["response"] == "Hello"
            assert time.monotonic() - started < 1.5 and h.supervisor.releases == []  # answered first
            await h.client.close()  # the gateway shutting down gives the lease back before it goes
            assert [r.lease_id for r in h.supervisor.releases] == ["lease-1"]
    run(scenario())


def test_a_generation_past_request_timeout_ends_even_while_tokens_flow():
    async def scenario():
        async with gateway(request_timeout=0.6) as g:
            g.worker.plan = [step for _ in range(30) for step in (text("x"), 0.1)] + [done()]
            resp = await g.client.post("/api/chat", json={**CHAT, "stream": False})
            assert resp.status == 504 and "ran past 0.6 s" in (await resp.json())["error"]
            resp = await g.client.post("/api/chat", json=CHAT)
            lines = [json.loads(line) for line in (await resp.text()).splitlines()]
            assert resp.status == 200 and "ran past 0.6 s" in lines[-1]["error"]
            await asyncio.sleep(0.1)
            assert len(g.worker.cancels) == 2 and len(g.supervisor.releases) == 2
    run(scenario())
