"""The OpenAPI document: valid OpenAPI 3.1, served at /openapi.json, and describing exactly the app's routes."""

from __future__ import annotations

import asyncio
import shutil
import tempfile
from pathlib import Path

import jsonschema
import pytest
import schemathesis

from mlxserve.gateway.app import create_app
from mlxserve.gateway.openapi import build_document
from mlxserve.services.common.config import load_settings
from tests.fixtures.inproc_http import InprocClient

pytestmark = pytest.mark.timeout(60)

METHODS = ("get", "head", "post", "put", "patch", "delete", "options")


def app_routes() -> set[tuple[str, str]]:
    """(METHOD, path template) for every route the app serves; the HEAD aiohttp adds to each GET is folded into it."""
    home = Path(tempfile.mkdtemp(prefix="gw", dir="/tmp"))
    try:
        app = create_app(load_settings({"home": str(home)}, env={}))
        routes = {(r.method, r.resource.canonical) for r in app.router.routes() if r.resource is not None}
    finally:
        shutil.rmtree(home, ignore_errors=True)
    return {(m, p) for m, p in routes if not (m == "HEAD" and ("GET", p) in routes)}


def described_routes() -> set[tuple[str, str]]:
    doc = build_document()
    routes = {(m.upper(), path) for path, item in doc["paths"].items() for m in item if m in METHODS}
    return {(m, p) for m, p in routes if not (m == "HEAD" and ("GET", p) in routes)}


def test_document_is_valid_openapi_3_1_that_schemathesis_loads():
    doc = build_document()
    schema = schemathesis.openapi.from_dict(doc)
    schema.validate()  # raises on a document that breaks the OpenAPI 3.1 meta-schema
    for name, component in doc["components"]["schemas"].items():
        jsonschema.Draft202012Validator.check_schema(component)
    # Bearer auth is optional: only a server started with an API key asks for it.
    assert doc["security"] == [{}, {"bearerAuth": []}]
    assert doc["components"]["securitySchemes"]["bearerAuth"] == {**doc["components"]["securitySchemes"]["bearerAuth"],
                                                                   "type": "http", "scheme": "bearer"}
    assert {op.ok().method.upper() + " " + op.ok().path for op in schema.get_all_operations()} >= {
        "POST /api/chat", "POST /v1/chat/completions"}


def test_every_route_the_app_serves_is_described():
    missing = app_routes() - described_routes()
    assert not missing, f"routes served but missing from gateway/openapi.py: {sorted(missing)}"


def test_every_described_route_is_served():
    extra = described_routes() - app_routes()
    assert not extra, f"routes described in gateway/openapi.py that the app does not serve: {sorted(extra)}"


def test_every_operation_documents_its_error_shape_in_its_dialect():
    doc = build_document()
    for path, item in doc["paths"].items():
        for method, op in item.items():
            if method not in METHODS:
                continue
            for status, resp in op["responses"].items():
                if int(status) < 400 or "content" not in resp:
                    continue
                ref = resp["content"]["application/json"]["schema"].get("$ref", "")
                want = "AnthropicError" if path.startswith("/v1/messages") else "OpenAIError" if path.startswith("/v1/") else (
                    "Health" if (path, status) == ("/api/health", "503") else "NativeError")
                assert ref.endswith(want), f"{method.upper()} {path} {status} uses {ref}"


def test_every_example_in_the_document_follows_its_own_schema():
    doc = build_document()
    for name, component in doc["components"]["schemas"].items():
        validator = jsonschema.Draft202012Validator({"$ref": f"#/components/schemas/{name}", "components": doc["components"]})
        for example in component.get("examples", []):
            validator.validate(example)


def test_served_document_is_the_built_one():
    doc = build_document()

    async def scenario() -> None:
        home = Path(tempfile.mkdtemp(prefix="gw", dir="/tmp"))
        client = InprocClient(create_app(load_settings({"home": str(home)}, env={})))
        await client.start_server()
        try:
            resp = await client.get("/openapi.json")
            assert resp.status == 200 and resp.content_type == "application/json"
            assert await resp.json() == doc
        finally:
            await client.close()
            shutil.rmtree(home, ignore_errors=True)
    asyncio.run(scenario())
