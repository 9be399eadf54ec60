"""GET /metrics: Prometheus exposition that parses, moves with traffic, and keeps its labels bounded.

The generation metrics run against the in-process fake supervisor/worker of the streaming tests
(real gRPC, real ZeroMQ frames), so the timings come through the same path as in production.
"""

from __future__ import annotations

import asyncio
import shutil
import tempfile
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from mlxserve.gateway.app import create_app
from mlxserve.services.common.config import load_settings

from tests.fixtures.gateway_harness import done, harness, ndjson, sse, text, wait_for, with_client
from tests.fixtures.inproc_http import InprocClient

pytestmark = pytest.mark.timeout(30)


def parse(body: str) -> dict[str, list[tuple[dict[str, str], float]]]:
    """Sample name -> [(labels, value)], from the text exposition (fails if it does not parse)."""
    out: dict[str, list[tuple[dict[str, str], float]]] = {}
    for family in text_string_to_metric_families(body):
        for s in family.samples:
            out.setdefault(s.name, []).append((s.labels, s.value))
    return out


def value(samples: dict, name: str, **labels: str) -> float | None:
    for got, v in samples.get(name, []):
        if all(got.get(k) == want for k, want in labels.items()):
            return v
    return None


async def scrape(client) -> dict:
    resp = await client.get("/metrics")
    assert resp.status == 200 and resp.headers["Content-Type"].startswith("text/plain")
    return parse(await resp.text())


def test_requests_are_counted_by_route_pattern_method_and_status():
    async def check(c):
        for _ in range(2):
            assert (await c.get("/api/version")).status == 200
        assert (await c.get("/v1/models/some-model")).status == 503  # no store running
        m = await scrape(c)
        assert value(m, "mlxserve_http_requests_total", route="/api/version", method="GET", status="200") == 2
        assert value(m, "mlxserve_http_requests_total", route="/v1/models/{model}", method="GET", status="503") == 1
        assert not any("some-model" in labels.get("route", "") for labels, _ in m["mlxserve_http_requests_total"])
        assert value(m, "mlxserve_http_request_duration_seconds_count", route="/api/version", method="GET") == 2
    with_client(check)


def test_unknown_paths_and_methods_share_one_label_each():
    async def check(c):
        assert (await c.get("/no/such/path-1")).status == 404
        assert (await c.get("/another-unknown-path?x=1")).status == 404
        assert (await c.request("PROPFIND", "/api/version")).status == 405
        m = await scrape(c)
        routes = {labels["route"] for labels, _ in m["mlxserve_http_requests_total"]}
        assert value(m, "mlxserve_http_requests_total", route="unmatched", method="GET", status="404") == 2
        assert value(m, "mlxserve_http_requests_total", route="unmatched", method="other", status="405") == 1
        assert not any("unknown" in r or "no/such" in r for r in routes)
    with_client(check)


def test_metrics_still_answer_when_the_supervisor_and_store_are_down():
    async def check(c):
        m = await scrape(c)
        assert value(m, "mlxserve_backend_up", service="supervisor") == 0
        assert value(m, "mlxserve_backend_up", service="store") == 0
        assert value(m, "mlxserve_loaded_models") == 0
    with_client(check)


def test_two_apps_in_one_process_keep_separate_counts():
    async def scenario():
        homes = [Path(tempfile.mkdtemp(prefix="gwm", dir="/tmp")) for _ in range(2)]
        clients = [InprocClient(create_app(load_settings({"home": str(h)}, env={}))) for h in homes]
        for c in clients:
            await c.start_server()
        try:
            await clients[0].get("/api/version")
            assert value(await scrape(clients[1]), "mlxserve_http_requests_total", route="/api/version") is None
            assert value(await scrape(clients[0]), "mlxserve_http_requests_total", route="/api/version") == 1
        finally:
            for c, h in zip(clients, homes):
                await c.close()
                shutil.rmtree(h, ignore_errors=True)
    asyncio.run(scenario())


def test_generations_record_ttft_tokens_per_second_and_token_counts_under_the_canonical_name():
    async def scenario():
        async with harness() as h:
            resp = await h.post("/api/generate", {"model": "tiny", "prompt": "Hi", "stream": False})
            assert resp.status == 200
            resp = await h.post("/v1/chat/completions", {"model": "tiny", "stream": True,
                                                          "messages": [{"role": "user", "content": "Hi"}]})
            assert (await sse(resp))[-1] == "[DONE]"
            m = await scrape(h.client)
            model = "tiny:latest"  # what the fake supervisor resolves "tiny" to
            assert value(m, "mlxserve_time_to_first_token_seconds_count", model=model) == 2
            assert value(m, "mlxserve_time_to_first_token_seconds_sum", model=model) > 0
            # The fake worker reports eval_count 3 in 9 ms: 333 tok/s, in the (200, 500] bucket.
            assert value(m, "mlxserve_generation_tokens_per_second_count", model=model) == 2
            assert value(m, "mlxserve_generation_tokens_per_second_bucket", model=model, le="200.0") == 0
            assert value(m, "mlxserve_generation_tokens_per_second_bucket", model=model, le="500.0") == 2
            assert value(m, "mlxserve_generated_tokens_total", model=model) == 6
            assert value(m, "mlxserve_prompt_tokens_total", model=model) == 10
            assert value(m, "mlxserve_generations_total", model=model, done_reason="stop") == 2
            assert value(m, "mlxserve_requests_in_flight", model=model) == 0
            assert value(m, "mlxserve_requests_in_flight", model="tiny") is None
            assert value(m, "mlxserve_loaded_models") == 1
            assert value(m, "mlxserve_model_memory_bytes", model=model) is not None
            assert value(m, "mlxserve_backend_up", service="supervisor") == 1
            assert value(m, "mlxserve_backend_up", service="store") == 1
    asyncio.run(scenario())


def test_in_flight_counts_a_running_stream_and_forgets_unknown_model_names():
    async def scenario():
        async with harness() as h:
            h.worker.plan = [text("a"), 0.6, text("b"), done()]
            task = asyncio.ensure_future(h.post("/api/generate", {"model": "tiny", "prompt": "Hi"}))
            await wait_for(lambda: h.worker.submits)
            m = await scrape(h.client)
            assert value(m, "mlxserve_requests_in_flight", model="tiny:latest") == 1
            resp = await task
            assert (await ndjson(resp))[-1]["done"] is True
            assert (await h.post("/api/generate", {"model": "made-up-name", "prompt": "Hi"})).status == 404
            m = await scrape(h.client)
            assert value(m, "mlxserve_requests_in_flight", model="tiny:latest") == 0
            assert not any(labels.get("model") == "made-up-name" for samples in m.values() for labels, _ in samples)
    asyncio.run(scenario())


def test_failed_generation_counts_as_error_without_a_speed_sample():
    async def scenario():
        async with harness() as h:
            h.worker.plan = [text("a"), done("error", "boom")]
            resp = await h.post("/api/generate", {"model": "tiny", "prompt": "Hi"})
            lines = await ndjson(resp)
            assert "boom" in lines[-1]["error"]
            m = await scrape(h.client)
            assert value(m, "mlxserve_generations_total", model="tiny:latest", done_reason="error") == 1
            assert value(m, "mlxserve_generation_tokens_per_second_count", model="tiny:latest") is None
            assert value(m, "mlxserve_requests_in_flight", model="tiny:latest") == 0
    asyncio.run(scenario())


def test_a_stream_sent_to_the_end_counts_as_served_even_if_the_client_leaves_during_cleanup():
    """After the last chunk the handler still releases the lease; a client that hangs up then
    (urllib, curl) cancels the handler, but it was served: 200, not 499."""
    from aiohttp.test_utils import make_mocked_request

    from mlxserve.gateway import metrics
    from mlxserve.gateway.rendering import STREAM_COMPLETED

    async def scenario():
        app = create_app(load_settings({"home": tempfile.mkdtemp(prefix="gwm", dir="/tmp")}, env={}))

        async def served_then_cancelled(request):
            request[STREAM_COMPLETED] = 200
            raise asyncio.CancelledError

        async def cut_off(request):
            raise asyncio.CancelledError

        for handler in (served_then_cancelled, cut_off):
            with pytest.raises(asyncio.CancelledError):
                await metrics.access_middleware(make_mocked_request("POST", "/api/generate", app=app), handler)
        m = parse(app[metrics.METRICS].exposition().decode())
        assert value(m, "mlxserve_http_requests_total", method="POST", status="200") == 1
        assert value(m, "mlxserve_http_requests_total", method="POST", status="499") == 1
    asyncio.run(scenario())
