"""Wall-clock bounds on the gateway's lease handling: a dead worker fails the request within two
seconds, and a slow lease release does not delay the answer. tests/unit/test_gateway_generation.py
checks the same behaviours without timing; these keep the real clock, so they live here."""

from __future__ import annotations

import time

import pytest

from tests.fixtures.gateway_harness import harness, ndjson, run, text, wait_for

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
