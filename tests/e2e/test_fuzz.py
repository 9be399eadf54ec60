"""The running gateway fuzzed with schemathesis against its own /openapi.json.

No input may yield a 500 (or any 5xx the document does not declare) or a hung connection, and
every answer must match the status codes, content types, headers and bodies the document
declares. Valid requests are mostly steered to the cheap tiny model; invalid ones keep whatever
hostile name the fuzzer made up. Nothing the fuzzer does may touch the session's models:
deletes and copies never aim at them, and models the fuzzer creates are removed afterwards.
"""

from __future__ import annotations

import json
import urllib.request
from typing import Iterator

import hypothesis
import hypothesis.strategies as st
import pytest
import requests
import schemathesis
from schemathesis.generation import GenerationMode
from schemathesis.specs.openapi.checks import (content_type_conformance, response_headers_conformance,
                                               response_schema_conformance, status_code_conformance)

from mlxserve.gateway.openapi import build_document
from tests.e2e.conftest import SMOL, TINY
from tests.e2e.harness import System, http_json

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(600)]

REQUEST_TIMEOUT_S = 30.0  # no single request may stall longer: a hung connection fails the test
MAX_EXAMPLES = 40         # per operation and mode: ~56 runs, kept to a few minutes on 2 cores
PROTECTED = {SMOL, TINY, "tiny", "smollm2"}
# The body field that names the model each route loads or reads (not delete, pull or push: those must not touch it).
MODEL_FIELDS = {
    "/api/generate": "model", "/api/chat": "model", "/v1/chat/completions": "model", "/v1/completions": "model",
    "/v1/responses": "model", "/api/embed": "model", "/api/embeddings": "model", "/v1/embeddings": "model",
    "/api/show": "model", "/api/copy": "source", "/api/create": "from",
    "/v1/messages": "model", "/v1/messages/count_tokens": "model",
}


@schemathesis.check
def no_internal_error(ctx: schemathesis.CheckContext, response: schemathesis.Response, case: schemathesis.Case) -> bool | None:
    """A 500 is always a bug; another 5xx passes only where the document declares it (503 Busy, 504 Timeout)."""
    status = response.status_code
    if status == 500 or (status >= 500 and str(status) not in case.operation.definition.raw.get("responses", {})):
        raise AssertionError(f"{case.method} {case.path} answered {status}: {response.text[:500]}")
    return None


CHECKS = [no_internal_error, status_code_conformance, content_type_conformance, response_headers_conformance,
          response_schema_conformance]


def steer(case: schemathesis.Case, keep_name: bool) -> None:
    """Name the tiny model in most valid requests: random names would stop nearly all of them at a 404."""
    field = MODEL_FIELDS.get(case.operation.path)
    if field and not keep_name and isinstance(case.body, dict) and field in case.body:
        case.body[field] = TINY


def model_names(system: System) -> set[str]:
    status, body = http_json("GET", f"{system.url}/api/tags", timeout=30)
    assert status == 200, body
    return {m["name"] for m in body["models"]}


def fuzz_cases() -> list[tuple[str, GenerationMode]]:
    """Every operation with valid inputs; those that take any input with invalid ones too."""
    out = []
    for path, item in build_document()["paths"].items():
        for method, op in item.items():
            if method in ("get", "head", "post", "put", "patch", "delete"):
                out.append((f"{method.upper()} {path}", GenerationMode.POSITIVE))
                # Invalid inputs exist only where the document constrains one: a body, or a path with a pattern.
                if "requestBody" in op or any("pattern" in p["schema"] for p in item.get("parameters", [])):
                    out.append((f"{method.upper()} {path}", GenerationMode.NEGATIVE))
    return out


@pytest.fixture(scope="module")
def fuzz_schema(system: System) -> Iterator[schemathesis.BaseSchema]:
    """The document the server serves; models the fuzzer creates are removed afterwards."""
    with urllib.request.urlopen(f"{system.url}/openapi.json", timeout=10) as resp:
        doc = json.loads(resp.read())
    schema = schemathesis.openapi.from_dict(doc)
    schema.config.update(base_url=system.url)
    before = model_names(system)
    yield schema
    # Models made with /api/create or /api/copy go, so later tests see the store they expect.
    for name in model_names(system) - before:
        http_json("DELETE", f"{system.url}/api/delete", {"model": name}, timeout=60)
    assert model_names(system) == before


def aims_at_session_model(case: schemathesis.Case) -> bool:
    if case.operation.path != "/api/delete" or not isinstance(case.body, dict):
        return False
    names = {str(case.body.get(k, "")).lower() for k in ("model", "name")}
    return any(n.removeprefix("library/").split("@")[0] in PROTECTED or n.endswith("/" + TINY) for n in names)


@pytest.mark.parametrize(("label", "mode"), fuzz_cases(), ids=lambda v: getattr(v, "value", v))
def test_no_input_yields_a_server_error_or_a_hang(fuzz_schema: schemathesis.BaseSchema, label: str, mode: GenerationMode) -> None:
    operation = fuzz_schema[label.split(" ", 1)[1]][label.split(" ", 1)[0]]

    @hypothesis.given(case=operation.as_strategy(generation_mode=mode), keep_name=st.booleans())
    @hypothesis.settings(max_examples=MAX_EXAMPLES, derandomize=True, deadline=None, database=None,
                         suppress_health_check=list(hypothesis.HealthCheck), print_blob=False)
    def fuzz(case: schemathesis.Case, keep_name: bool) -> None:
        if mode is GenerationMode.POSITIVE:
            steer(case, keep_name)
        if aims_at_session_model(case):
            return  # the other tests of the session need these models
        try:
            response = case.call(timeout=REQUEST_TIMEOUT_S)
        except requests.Timeout:
            pytest.fail(f"{label} did not answer within {REQUEST_TIMEOUT_S:.0f} s: {case.body!r:.500}")
        case.validate_response(response, checks=CHECKS)

    fuzz()
