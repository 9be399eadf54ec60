"""Embedding routes in both dialects: Ollama's /api/embed and legacy /api/embeddings, OpenAI's /v1/embeddings.

Each request leases the model's worker like a generation does and calls its Embed RPC; the
worker batches the inputs (and those of concurrent requests) and returns L2-normalized vectors.
"""

from __future__ import annotations

import base64
import struct
import time
from typing import Any

import msgspec
from aiohttp import web

from mlxserve.services.common import logs

from . import state
from .rendering import dumps
from .request_types import EmbedRequest, LegacyEmbeddingsRequest, Options
from .request_types_openai import EmbeddingsRequest
from .validation import BadField, decode, model_name, note_ignored, parse_keep_alive, read_json_object

log = logs.get_logger(component="embeddings")

routes = web.RouteTableDef()

ENCODINGS = ("float", "base64")
# What `options` mean to an embedding: the context to fit. Sampling options are ignored (as Ollama does), and named.
EMBED_OPTIONS = ("num_ctx",)


def options_ignored(options: Options | None) -> list[str]:
    """The options given that mean nothing to an embedding model."""
    given = msgspec.to_builtins(options) if options is not None else {}
    return [f"options.{key}" for key in given if key not in EMBED_OPTIONS]


def encode_base64(values: list[float]) -> str:
    """OpenAI's base64 encoding: the vector as little-endian float32, base64-encoded."""
    return base64.b64encode(struct.pack(f"<{len(values)}f", *values)).decode()


def token_inputs(value: list[Any], where: str = "input") -> list[list[int]] | None:
    """OpenAI's `input` as token ids: one list of ids, or a list of id lists; None when it is text."""
    if all(isinstance(v, str) for v in value):
        return None
    if all(isinstance(v, int) for v in value):
        return [list(value)]
    if all(isinstance(v, list) for v in value):
        for i, ids in enumerate(value):
            if not ids:
                raise BadField(f"{where}[{i}]", f"'{where}[{i}]' must not be an empty list of token ids")
        return [list(v) for v in value]
    raise BadField(where, f"'{where}' must be text, texts, a list of token ids or a list of token-id lists, not a mix")


@routes.post("/api/embed")
async def embed(request: web.Request) -> web.Response:
    """POST /api/embed: {model, input: str | [str], truncate, dimensions, keep_alive, options}."""
    body, ignored = decode(await read_json_object(request), EmbedRequest)
    model = model_name(body.model)
    inputs = [body.input] if isinstance(body.input, str) else list(body.input or [])
    keep_alive = parse_keep_alive(body.keep_alive)
    num_ctx = body.options.num_ctx if body.options is not None else None
    note_ignored(request, ignored + options_ignored(body.options))
    core, rid = state.core(request), state.request_id(request)
    started = time.monotonic_ns()
    if not inputs:  # Ollama loads the model and returns no vectors
        lease = await core.load(model, rid, keep_alive)
        return web.json_response({"model": model, "embeddings": [], "total_duration": time.monotonic_ns() - started,
                                  "load_duration": int(lease.load_duration_s * 1e9), "prompt_eval_count": 0}, dumps=dumps)
    resp, lease = await core.embed(model, rid, keep_alive, inputs, truncate=body.truncate, dimensions=body.dimensions or 0,
                                   num_ctx=num_ctx)
    return web.json_response({
        "model": model, "embeddings": [list(e.values) for e in resp.embeddings],
        "total_duration": time.monotonic_ns() - started, "load_duration": int(lease.load_duration_s * 1e9),
        "prompt_eval_count": resp.prompt_tokens,
    }, dumps=dumps)


@routes.post("/api/embeddings")
async def embeddings_legacy(request: web.Request) -> web.Response:
    """POST /api/embeddings (deprecated by Ollama, still used): {model, prompt} → {embedding}."""
    body, ignored = decode(await read_json_object(request), LegacyEmbeddingsRequest)
    model = model_name(body.model)
    keep_alive = parse_keep_alive(body.keep_alive)
    num_ctx = body.options.num_ctx if body.options is not None else None
    note_ignored(request, ignored + options_ignored(body.options))
    core, rid = state.core(request), state.request_id(request)
    if not body.prompt:
        await core.load(model, rid, keep_alive)
        return web.json_response({"embedding": []}, dumps=dumps)
    resp, _ = await core.embed(model, rid, keep_alive, [body.prompt], num_ctx=num_ctx)
    return web.json_response({"embedding": list(resp.embeddings[0].values)}, dumps=dumps)


@routes.post("/v1/embeddings")
async def openai_embeddings(request: web.Request) -> web.Response:
    """POST /v1/embeddings: {model, input, encoding_format, dimensions, user}; `input` may be token ids
    (langchain-openai sends them by default), checked against the model's vocabulary by the worker."""
    body, ignored = decode(await read_json_object(request), EmbeddingsRequest)
    model = model_name(body.model)
    texts: list[str] = []
    ids: list[list[int]] | None = None
    if isinstance(body.input, str):
        texts = [body.input]  # an empty string is fine (the encoder still sees its special tokens)
    else:
        ids = token_inputs(body.input)
        texts = [] if ids is not None else list(body.input)
    encoding = body.encoding_format or "float"
    note_ignored(request, ignored)
    resp, _ = await state.core(request).embed(model, state.request_id(request), None, texts, token_inputs=ids,
                                              dimensions=body.dimensions or 0)
    data: list[dict[str, Any]] = []
    for i, e in enumerate(resp.embeddings):
        values = list(e.values)
        data.append({"object": "embedding", "index": i,
                     "embedding": encode_base64(values) if encoding == "base64" else values})
    return web.json_response({"object": "list", "data": data, "model": model,
                              "usage": {"prompt_tokens": resp.prompt_tokens, "total_tokens": resp.prompt_tokens}},
                             dumps=dumps)
