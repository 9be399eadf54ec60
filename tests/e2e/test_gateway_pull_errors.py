"""A pull through the gateway that fails at the registry (nothing listens on 127.0.0.1:9): the store
really connects, so this lives with the e2e tests."""

from __future__ import annotations

import pytest

from mlxserve.services.store.store import ModelStore
from tests.fixtures.gateway_store import ndjson, with_store
from tests.fixtures.inproc_http import InprocClient

pytestmark = pytest.mark.timeout(120)


def test_pull_failure_after_progress_started_ends_the_stream_with_an_error_line() -> None:
    async def check(c: InprocClient, store: ModelStore) -> None:
        # Nothing listens on port 9: the manifest request fails after "pulling manifest" was sent.
        resp = await c.post("/api/pull", json={"model": "127.0.0.1:9/library/nothing:latest", "insecure": True})
        assert resp.status == 200
        lines = await ndjson(resp)
        assert lines[0] == {"status": "pulling manifest"}
        assert set(lines[-1]) == {"error"} and lines[-1]["error"]
        resp = await c.post("/api/pull", json={"model": "127.0.0.1:9/library/nothing:latest", "insecure": True,
                                                "stream": False})
        assert resp.status >= 400 and "error" in await resp.json()
    with_store(check)
