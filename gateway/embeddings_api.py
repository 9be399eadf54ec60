"""Embedding routes in both dialects: Ollama's /api/embed and legacy /api/embeddings, OpenAI's /v1/embeddings.

Each request leases the model's worker like a generation does and calls its Embed RPC; the
worker batches the inputs (and those of concurrent requests) and returns L2-normalized vectors.
"""

from __future__ import annotations

import base64
import struct
import time
from typing import Any

from aiohttp import web

from mlxserve.services.common import logs

from . import state
from .native import parse_options
from .responses import dumps
from .validation import Body, BadField, parse_embed_input, parse_keep_alive, read_json_object

log = logs.get_logger(component="embeddings")

ENCODINGS = ("float", "base64")


def parse_model(body: Body) -> str:
    model = body.str("model", required=True) or ""
    if not model.strip():
        raise BadField("model", "'model' is required")
    return model


def parse_dimensions(body: Body) -> int:
    return body.int("dimensions", minimum=1) or 0


def encode_base64(values: list[float]) -> str:
    """OpenAI's base64 encoding: the vector as little-endian float32, base64-encoded."""
    return base64.b64encode(struct.pack(f"<{len(values)}f", *values)).decode()


async def embed(request: web.Request) -> web.Response:
    """POST /api/embed: {model, input: str | [str], truncate, dimensions, keep_alive, options}."""
    body = Body(await read_json_object(request))
    model = parse_model(body)
    inputs = parse_embed_input(body.raw("input"), "input", required=False)
    truncate = body.bool("truncate")
    dimensions = parse_dimensions(body)
    keep_alive = parse_keep_alive(body.raw("keep_alive"))
    parse_options(body.object("options"))  # validated as for generation; sampling means nothing here
    body.finish()
    core, rid = state.core(request), state.request_id(request)
    started = time.monotonic_ns()
    if not inputs:  # Ollama loads the model and returns no vectors
        lease = await core.load(model, rid, keep_alive)
        return web.json_response({"model": model, "embeddings": [], "total_duration": time.monotonic_ns() - started,
                                  "load_duration": int(lease.load_duration_s * 1e9), "prompt_eval_count": 0}, dumps=dumps)
    resp, lease = await core.embed(model, rid, keep_alive, inputs, truncate=truncate, dimensions=dimensions)
    return web.json_response({
        "model": model, "embeddings": [list(e.values) for e in resp.embeddings],
        "total_duration": time.monotonic_ns() - started, "load_duration": int(lease.load_duration_s * 1e9),
        "prompt_eval_count": resp.prompt_tokens,
    }, dumps=dumps)


async def embeddings_legacy(request: web.Request) -> web.Response:
    """POST /api/embeddings (deprecated by Ollama, still used): {model, prompt} → {embedding}."""
    body = Body(await read_json_object(request))
    model = parse_model(body)
    prompt = body.str("prompt", default="") or ""
    keep_alive = parse_keep_alive(body.raw("keep_alive"))
    parse_options(body.object("options"))
    body.finish()
    core, rid = state.core(request), state.request_id(request)
    if not prompt:
        await core.load(model, rid, keep_alive)
        return web.json_response({"embedding": []}, dumps=dumps)
    resp, _ = await core.embed(model, rid, keep_alive, [prompt])
    return web.json_response({"embedding": list(resp.embeddings[0].values)}, dumps=dumps)


async def openai_embeddings(request: web.Request) -> web.Response:
    """POST /v1/embeddings: {model, input, encoding_format, dimensions, user}."""
    body = Body(await read_json_object(request))
    model = parse_model(body)
    inputs = parse_embed_input(body.raw("input"), "input")
    if not inputs:  # an empty string is fine (the encoder still sees its special tokens); no inputs is not
        raise BadField("input", "'input' must not be an empty array")
    encoding = body.str("encoding_format", default="float")
    if encoding not in ENCODINGS:
        raise BadField("encoding_format", "'encoding_format' must be \"float\" or \"base64\"")
    dimensions = parse_dimensions(body)
    user = body.str("user")
    if user:
        log.info("openai_user", user=user)
    body.finish()
    resp, _ = await state.core(request).embed(model, state.request_id(request), None, inputs, dimensions=dimensions)
    data: list[dict[str, Any]] = []
    for i, e in enumerate(resp.embeddings):
        values = list(e.values)
        data.append({"object": "embedding", "index": i,
                     "embedding": encode_base64(values) if encoding == "base64" else values})
    return web.json_response({"object": "list", "data": data, "model": model,
                              "usage": {"prompt_tokens": resp.prompt_tokens, "total_tokens": resp.prompt_tokens}},
                             dumps=dumps)


def add_routes(app: web.Application) -> None:
    app.router.add_post("/api/embed", embed)
    app.router.add_post("/api/embeddings", embeddings_legacy)
    app.router.add_post("/v1/embeddings", openai_embeddings)
