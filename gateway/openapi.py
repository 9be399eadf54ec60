"""The gateway's OpenAPI 3.1 description, served at GET /openapi.json.

Request schemas are generated from the msgspec Structs the handlers decode with
(request_types*.py), so they say exactly what the parsers accept: types, bounds, enums. Request
objects are open: a field the server does not know is ignored and named in the
X-Mlxserve-Ignored response header, not refused. Responses (the success shapes and both error
shapes) are written here. tests/unit/test_openapi.py keeps the paths and the app's routes equal,
and tests/e2e/test_fuzz.py fuzzes a running system against this document.
"""

from __future__ import annotations

from typing import Any

import msgspec
from aiohttp import web

from mlxserve import __version__

from .rendering import dumps
from .request_types import (ChatRequest, CopyRequest, CreateRequest, EmbedRequest, GenerateRequest, LegacyEmbeddingsRequest, ModelRef,
                            ShowRequest, TINY_MODEL, TransferRequest)
from .request_types_anthropic import CountTokensRequest, MessagesRequest
from .request_types_openai import ChatCompletionRequest, CompletionRequest, EmbeddingsRequest, ResponsesRequest
from .validation import IGNORED_HEADER

JSON = "application/json"
NDJSON = "application/x-ndjson"
SSE = "text/event-stream"
REF = "#/components/schemas/{name}"

Schema = dict[str, Any]

STR: Schema = {"type": "string"}
BOOL: Schema = {"type": "boolean"}
INT: Schema = {"type": "integer"}

# Examples of each request, the cheapest that work against the test system (they steer the fuzzer too).
REQUEST_EXAMPLES: dict[str, list[Schema]] = {
    "GenerateRequest": [{"model": TINY_MODEL, "prompt": "Hi", "stream": False, "options": {"num_predict": 4}}],
    "ChatRequest": [{"model": TINY_MODEL, "messages": [{"role": "user", "content": "Hi"}], "stream": False,
                     "options": {"num_predict": 4}}],
    "ChatCompletionRequest": [{"model": TINY_MODEL, "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 4}],
    "CompletionRequest": [{"model": TINY_MODEL, "prompt": "Hi", "max_tokens": 4}],
    "ResponsesRequest": [{"model": TINY_MODEL, "input": "Hi", "max_output_tokens": 4}],
    "MessagesRequest": [{"model": TINY_MODEL, "max_tokens": 4, "messages": [{"role": "user", "content": "Hi"}]}],
    "CountTokensRequest": [{"model": TINY_MODEL, "messages": [{"role": "user", "content": "Hi"}]}],
    "Options": [{"num_predict": 4, "temperature": 0}],
}

# The request bodies of the routes, by the name their schema has in /openapi.json.
REQUEST_TYPES: tuple[type, ...] = (
    GenerateRequest, ChatRequest, EmbedRequest, LegacyEmbeddingsRequest, ModelRef, ShowRequest, CopyRequest,
    TransferRequest, CreateRequest, ChatCompletionRequest, CompletionRequest, EmbeddingsRequest, ResponsesRequest,
    MessagesRequest, CountTokensRequest,
)


def _ref(name: str) -> Schema:
    return {"$ref": REF.format(name=name)}


def request_schemas() -> dict[str, Schema]:
    """The request bodies' schemas (and the objects inside them), generated from their Structs."""
    _, components = msgspec.json.schema_components(REQUEST_TYPES, ref_template=REF)
    for name, examples in REQUEST_EXAMPLES.items():
        components[name]["examples"] = examples
    return components


def _response_schemas() -> dict[str, Schema]:
    details = {"type": "object", "properties": {
        "parent_model": STR, "format": STR, "family": STR, "families": {"type": ["array", "null"], "items": STR},
        "parameter_size": STR, "quantization_level": STR}}
    done_fields = {
        "done_reason": STR, "total_duration": INT, "load_duration": INT, "prompt_eval_count": INT,
        "prompt_eval_duration": INT, "eval_count": INT, "eval_duration": INT,
    }
    return {
        "NativeError": {"type": "object", "properties": {"error": STR}, "required": ["error"],
                        "description": "Every native (/api/*) error; mid-stream, the last NDJSON line."},
        "OpenAIError": {"type": "object", "required": ["error"], "properties": {"error": {
            "type": "object", "required": ["message", "type", "param", "code"],
            "properties": {"message": STR, "type": STR, "param": {"type": ["string", "null"]}, "code": {"type": ["string", "null"]}}}}},
        "GenerateResponse": {"type": "object", "required": ["model", "created_at", "response", "done"], "properties": {
            "model": STR, "created_at": STR, "response": STR, "thinking": STR, "done": BOOL, "logprobs": {"type": "array"},
            "context": {"type": "array", "items": INT, "description": "The prompt's and the answer's token ids: send it back "
                        "as `context` to continue."}, **done_fields}},
        "ChatResponse": {"type": "object", "required": ["model", "created_at", "message", "done"], "properties": {
            "model": STR, "created_at": STR, "done": BOOL, "logprobs": {"type": "array"},
            "message": {"type": "object", "required": ["role", "content"], "properties": {
                "role": STR, "content": STR, "thinking": STR, "tool_calls": {"type": "array"}}},
            **done_fields}},
        "ModelDetails": details,
        "ModelList": {"type": "object", "required": ["models"], "properties": {"models": {"type": "array", "items": {
            "type": "object", "required": ["name", "model", "digest"], "properties": {
                "name": STR, "model": STR, "modified_at": {"type": ["string", "null"]}, "size": INT,
                "digest": STR, "details": _ref("ModelDetails"), "expires_at": {"type": ["string", "null"]},
                "size_vram": INT, "context_length": INT}}}}},
        "Health": {"type": "object", "required": ["status", "services"], "properties": {
            "status": {"type": "string", "enum": ["ok", "unavailable"]}, "error": STR,
            "services": {"type": "object", "additionalProperties": STR}}},
        "Version": {"type": "object", "required": ["version", "mlxserve_version"], "properties": {
            "version": {**STR, "description": "The Ollama API level this server implements (clients gate features on it)."},
            "mlxserve_version": {**STR, "description": "This server's own version."}}},
        "ShowResponse": {"type": "object", "required": ["details", "model_info", "capabilities"], "properties": {
            "license": STR, "modelfile": STR, "parameters": STR, "template": STR, "system": STR,
            "details": _ref("ModelDetails"), "model_info": {"type": "object"}, "capabilities": {"type": "array", "items": STR},
            "messages": {"type": "array"}, "modified_at": {"type": ["string", "null"]}}},
        "Progress": {"type": "object", "required": ["status"], "properties": {
            "status": STR, "digest": STR, "total": INT, "completed": INT}},
        "EmbedResponse": {"type": "object", "required": ["model", "embeddings"], "properties": {
            "model": STR, "embeddings": {"type": "array", "items": {"type": "array", "items": {"type": "number"}}},
            "total_duration": INT, "load_duration": INT, "prompt_eval_count": INT}},
        "ChatCompletion": {"type": "object", "required": ["id", "object", "created", "model", "choices", "usage"], "properties": {
            "id": STR, "object": {"const": "chat.completion"}, "created": INT, "model": STR,
            "system_fingerprint": STR, "usage": _ref("Usage"),
            "choices": {"type": "array", "items": {"type": "object", "required": ["index", "message", "finish_reason"], "properties": {
                "index": INT, "finish_reason": {"type": "string", "enum": ["stop", "length", "tool_calls", "function_call"]},
                "message": {"type": "object", "required": ["role"], "properties": {
                    "role": {"const": "assistant"}, "content": {"type": ["string", "null"]}, "reasoning_content": STR,
                    "tool_calls": {"type": "array"}, "function_call": {"type": "object"}}},
                "logprobs": {"type": ["object", "null"]}}}}}},
        "Completion": {"type": "object", "required": ["id", "object", "created", "model", "choices", "usage"], "properties": {
            "id": STR, "object": {"const": "text_completion"}, "created": INT, "model": STR,
            "system_fingerprint": STR, "usage": _ref("Usage"),
            "choices": {"type": "array", "items": {"type": "object", "required": ["text", "index", "finish_reason"], "properties": {
                "text": STR, "index": INT, "finish_reason": {"type": "string", "enum": ["stop", "length"]},
                "logprobs": {"type": ["object", "null"]}}}}}},
        "Usage": {"type": "object", "required": ["prompt_tokens", "completion_tokens", "total_tokens"], "properties": {
            "prompt_tokens": {**INT, "description": "Every prompt token, cached ones included."},
            "completion_tokens": INT, "total_tokens": INT,
            "prompt_tokens_details": {"type": "object", "properties": {"cached_tokens": INT}}}},
        "Model": {"type": "object", "required": ["id", "object", "created", "owned_by"], "properties": {
            "id": STR, "object": {"const": "model"}, "created": INT, "owned_by": STR}},
        "ModelPage": {"type": "object", "required": ["object", "data"], "properties": {
            "object": {"const": "list"}, "data": {"type": "array", "items": _ref("Model")}}},
        "Embeddings": {"type": "object", "required": ["object", "data", "model", "usage"], "properties": {
            "object": {"const": "list"}, "model": STR,
            "data": {"type": "array", "items": {"type": "object", "required": ["object", "index", "embedding"], "properties": {
                "object": {"const": "embedding"}, "index": INT,
                "embedding": {"oneOf": [{"type": "array", "items": {"type": "number"}}, STR]}}}},
            "usage": {"type": "object", "properties": {"prompt_tokens": INT, "total_tokens": INT}}}},
        "Response": {"type": "object", "required": ["id", "object", "model", "output", "status"], "properties": {
            "id": STR, "object": {"const": "response"}, "model": STR, "status": STR, "created_at": INT,
            "output": {"type": "array"}, "output_text": STR, "usage": {"type": ["object", "null"]}}},
        "AnthropicError": {"type": "object", "required": ["type", "error"], "description": "Every error of /v1/messages*; "
                           "mid-stream, an `event: error` with this data.", "properties": {
            "type": {"const": "error"}, "error": {"type": "object", "required": ["type", "message"], "properties": {
                "type": STR, "message": STR}}}},
        "AnthropicUsage": {"type": "object", "required": ["input_tokens", "output_tokens"], "properties": {
            "input_tokens": {**INT, "description": "Prompt tokens neither read from nor written to the cache."},
            "cache_read_input_tokens": {**INT, "description": "Prompt tokens taken from the prefix cache."},
            "cache_creation_input_tokens": {**INT, "description": "Prompt tokens evaluated and cached, when the request "
                                            "marked blocks with cache_control (0 otherwise)."},
            "output_tokens": INT}},
        "AnthropicMessageResponse": {"type": "object", "required": ["id", "type", "role", "model", "content", "stop_reason",
                                                                    "stop_sequence", "usage"], "properties": {
            "id": STR, "type": {"const": "message"}, "role": {"const": "assistant"}, "model": STR,
            "content": {"type": "array", "items": {"type": "object", "required": ["type"], "properties": {
                "type": {"type": "string", "enum": ["text", "thinking", "tool_use"]}, "text": STR, "thinking": STR,
                "signature": STR, "id": STR, "name": STR, "input": {"type": "object"}}}},
            "stop_reason": {"type": "string", "enum": ["end_turn", "max_tokens", "stop_sequence", "tool_use"]},
            "stop_sequence": {"type": ["string", "null"]}, "usage": _ref("AnthropicUsage")}},
        "AnthropicTokenCount": {"type": "object", "required": ["input_tokens"], "properties": {"input_tokens": INT}},
        "AnthropicModel": {"type": "object", "required": ["type", "id", "display_name", "created_at"], "properties": {
            "type": {"const": "model"}, "id": STR, "display_name": STR, "created_at": STR}},
        "AnthropicModelPage": {"type": "object", "required": ["data", "has_more", "first_id", "last_id"], "properties": {
            "data": {"type": "array", "items": _ref("AnthropicModel")}, "has_more": BOOL,
            "first_id": {"type": ["string", "null"]}, "last_id": {"type": ["string", "null"]}}},
    }


def _schemas() -> dict[str, Schema]:
    requests, responses = request_schemas(), _response_schemas()
    clash = set(requests) & set(responses)
    assert not clash, f"schema names used twice: {clash}"
    return {**responses, **requests}


IGNORED_HEADER_DOC = {IGNORED_HEADER: {"description": "The request's fields that the server ignored (unknown to it, or "
                                                      "accepted without effect), comma-separated.",
                                       "schema": {"type": "string"}}}


def _json(schema_name: str) -> dict[str, Any]:
    return {"application/json": {"schema": _ref(schema_name)}}


_ERROR_SCHEMAS = {"openai": "OpenAIError", "anthropic": "AnthropicError", "native": "NativeError"}


def _dialect(path: str) -> str:
    return "anthropic" if path.startswith("/v1/messages") else "openai" if path.startswith("/v1/") else "native"


def _error(dialect: str, description: str, *, retry: bool = False) -> dict[str, Any]:
    out: dict[str, Any] = {"description": description, "content": _json(_ERROR_SCHEMAS[dialect])}
    if retry:
        out["headers"] = {"Retry-After": {"description": "Seconds to wait before trying again.", "schema": {"type": "string"}}}
    return out


def _errors(dialect: str, *codes: int) -> dict[str, Any]:
    text = {400: "Invalid or unsupported request field (named in the message).", 404: "Unknown model.",
            413: "Request body too large.",
            503: "A service is not reachable, or the model's queue is full (Retry-After says when to retry).",
            504: "The request took longer than the server's request timeout.",
            507: "Disk full: not enough space in the model store.",
            529: "The model's queue is full (Anthropic's overloaded_error; Retry-After says when to retry)."}
    if dialect == "anthropic":
        text[503] = "A service or the model's worker is not reachable."
    return {str(c): _error(dialect, text[c], retry=c in (503, 529)) for c in codes}


def _body(schema_name: str) -> dict[str, Any]:
    return {"required": True, "content": _json(schema_name)}


def _op(op_id: str, summary: str, tag: str, responses: dict[str, Any], body: str | None = None, **extra: Any) -> dict[str, Any]:
    out: dict[str, Any] = {"operationId": op_id, "summary": summary, "tags": [tag], "responses": responses}
    if body:
        out["requestBody"] = _body(body)
    out.update(extra)
    return out


def _generation(op_id: str, summary: str, request: str, response: str, streamed: str, dialect: str, tag: str) -> dict[str, Any]:
    stream_schema = {"description": "One JSON object per line (NDJSON) or per `data:` event (SSE)."}
    return _op(op_id, summary, tag, body=request, responses={
        "200": {"description": "The result, or (with `stream`) its chunks; an error after the first chunk is the last chunk.",
                "headers": IGNORED_HEADER_DOC,
                "content": {JSON: {"schema": _ref(response)}, streamed: {"schema": stream_schema}}},
        **_errors(dialect, 400, 404, 413, 503, 504)})


def _progress_op(op_id: str, summary: str, request: str) -> dict[str, Any]:
    return _op(op_id, summary, "models", body=request, responses={
        "200": {"description": "The final progress object, or (with `stream`) NDJSON progress ending with {\"status\": \"success\"}.",
                "content": {JSON: {"schema": _ref("Progress")}, NDJSON: {"schema": {"description": "One Progress per line."}}}},
        **_errors("native", 400, 404, 413, 503, 504, 507)})


def _empty(description: str) -> dict[str, Any]:
    return {"description": description}


def build_document() -> dict[str, Any]:
    """The OpenAPI 3.1 document for this gateway (a fresh dict on each call)."""
    native_ok = lambda schema, desc: {"200": {"description": desc, "content": _json(schema)}}  # noqa: E731
    paths: dict[str, Any] = {
        "/": {
            "get": _op("root", "Liveness: answers that the server is running.", "native",
                       {"200": {"description": "The server is running.", "content": {"text/plain": {"schema": STR}}}}),
            "head": _op("rootHead", "Liveness, without a body.", "native", {"200": _empty("The server is running.")}),
        },
        "/api/version": {"get": _op("version", "The Ollama API level implemented, and the server's own version.", "native",
                                    {"200": {"description": "Versions.", "content": _json("Version")}})},
        "/api/health": {"get": _op("health", "Whether the store and the supervisor answer.", "native", {
            "200": {"description": "All services answer.", "content": _json("Health")},
            "503": {"description": "A service does not answer (named in `error`).", "content": _json("Health")}})},
        "/api/generate": {"post": _generation("generate", "Generate a completion for a prompt.", "GenerateRequest",
                                              "GenerateResponse", NDJSON, "native", "native")},
        "/api/chat": {"post": _generation("chat", "Generate the next chat message.", "ChatRequest", "ChatResponse", NDJSON,
                                          "native", "native")},
        "/api/tags": {"get": _op("tags", "The models in the store.", "native", {**native_ok("ModelList", "Models."),
                                                                                **_errors("native", 503, 504)})},
        "/api/ps": {"get": _op("ps", "The models loaded now.", "native", {**native_ok("ModelList", "Loaded models."),
                                                                          **_errors("native", 503, 504)})},
        "/api/show": {"post": _op("show", "A model's details, template, parameters and capabilities.", "models",
                                  {**native_ok("ShowResponse", "Details."), **_errors("native", 400, 404, 413, 503, 504)},
                                  body="ShowRequest")},
        "/api/copy": {"post": _op("copy", "Copy a model under a new name; a model of that name is replaced (as Ollama does).",
                                  "models", {"200": _empty("Copied."), **_errors("native", 400, 404, 413, 503, 504, 507)},
                                  body="CopyRequest")},
        "/api/delete": {"delete": _op("delete", "Remove a model.", "models",
                                      {"200": _empty("Removed."), **_errors("native", 400, 404, 413, 503, 504)}, body="ModelRef")},
        "/api/pull": {"post": _progress_op("pull", "Pull a model from a registry.", "TransferRequest")},
        "/api/push": {"post": _progress_op("push", "Push a model to a registry.", "TransferRequest")},
        "/api/create": {"post": _progress_op("create", "Create a model from another model or uploaded blobs; a model of that name is "
                                                "replaced (as Ollama does).", "CreateRequest")},
        "/api/blobs/{digest}": {
            "parameters": [{"name": "digest", "in": "path", "required": True, "schema": {
                "type": "string", "pattern": "^sha256[:-][0-9a-f]{64}$", "examples": ["sha256:" + "0" * 64]}, "description": "sha256:<64 hex> (or sha256-<64 hex>)."}],
            "head": _op("hasBlob", "Whether the store has a blob.", "models", {
                "200": _empty("The blob exists."), "400": _empty("Not a sha256 digest."), "404": _empty("No such blob."),
                "503": _empty("The store is not reachable."), "504": _empty("The store did not answer in time.")}),
            "post": _op("putBlob", "Upload a blob; its bytes must hash to the digest.", "models", {
                "200": _empty("The blob was already there."), "201": _empty("Stored."),
                **_errors("native", 400, 413, 503, 504), "507": _error("native", "Not enough disk space in the model store.")},
                requestBody={"required": True, "content": {"application/octet-stream": {"schema": {"type": "string", "format": "binary"}}}}),
        },
        "/api/embed": {"post": _op("embed", "Embed one or more texts.", "native",
                                   {"200": {"description": "Embeddings.", "headers": IGNORED_HEADER_DOC,
                                            "content": _json("EmbedResponse")}, **_errors("native", 400, 404, 413, 503, 504)},
                                   body="EmbedRequest")},
        "/api/embeddings": {"post": _op("embeddingsLegacy", "Embed one text (older route).", "native", {
            "200": {"description": "The embedding.", "content": _json_inline({
                "type": "object", "required": ["embedding"], "properties": {"embedding": {"type": "array", "items": {"type": "number"}}}})},
            **_errors("native", 400, 404, 413, 503, 504)}, body="LegacyEmbeddingsRequest")},
        "/v1/chat/completions": {"post": _generation("createChatCompletion", "OpenAI chat completion.", "ChatCompletionRequest",
                                                     "ChatCompletion", SSE, "openai", "openai")},
        "/v1/completions": {"post": _generation("createCompletion", "OpenAI (legacy) text completion.", "CompletionRequest",
                                                "Completion", SSE, "openai", "openai")},
        "/v1/responses": {"post": _generation("createResponse", "OpenAI Responses API (not stateful).", "ResponsesRequest",
                                              "Response", SSE, "openai", "openai")},
        "/v1/messages": {"post": _op("createMessage", "Anthropic Messages API (Claude Code and other Anthropic clients); "
                                     "`?beta=true`, `anthropic-version` and `anthropic-beta` are accepted.", "anthropic",
                                     body="MessagesRequest", responses={
            "200": {"description": "The message, or (with `stream`) Anthropic's typed events (`event: <type>` + `data:`), "
                                   "with `ping` events while the prompt prefills; an error after the first event is an "
                                   "`event: error`.", "headers": IGNORED_HEADER_DOC,
                    "content": {JSON: {"schema": _ref("AnthropicMessageResponse")},
                                SSE: {"schema": {"description": "message_start, content_block_start/delta/stop, ping, "
                                                                "message_delta, message_stop."}}}},
            **_errors("anthropic", 400, 404, 413, 503, 504, 529)})},
        "/v1/messages/count_tokens": {"post": _op("countMessageTokens", "The prompt tokens a /v1/messages body would make.",
                                                  "anthropic", body="CountTokensRequest", responses={
            "200": {"description": "The count.", "headers": IGNORED_HEADER_DOC, "content": _json("AnthropicTokenCount")},
            **_errors("anthropic", 400, 404, 413, 503, 504)})},
        "/v1/models": {"get": _op("listModels", "The models in the store (in Anthropic's list shape, paged by `limit`, "
                                  "`after_id` and `before_id`, when the request has an `anthropic-version` header).", "openai",
                                  {"200": {"description": "Models.", "content": _json_inline(
                                      {"oneOf": [_ref("ModelPage"), _ref("AnthropicModelPage")]})},
                                   **_errors("openai", 503, 504)})},
        "/v1/models/{model}": {
            "parameters": [{"name": "model", "in": "path", "required": True, "schema": {"type": "string", "examples": [TINY_MODEL]}}],
            "get": _op("retrieveModel", "One model (Anthropic's shape with an `anthropic-version` header).", "openai",
                       {"200": {"description": "The model.", "content": _json_inline({"oneOf": [_ref("Model"), _ref("AnthropicModel")]})},
                        **_errors("openai", 404, 503, 504)})},
        "/v1/embeddings": {"post": _op("createEmbedding", "OpenAI embeddings.", "openai",
                                       {"200": {"description": "Embeddings.", "headers": IGNORED_HEADER_DOC,
                                                "content": _json("Embeddings")},
                                        **_errors("openai", 400, 404, 413, 503, 504)}, body="EmbeddingsRequest")},
        "/metrics": {"get": _op("metrics", "Prometheus metrics.", "operations", {"200": {
            "description": "Prometheus text exposition format.", "content": {"text/plain": {"schema": STR}}}})},
        "/openapi.json": {"get": _op("openapi", "This document.", "operations", {"200": {
            "description": "OpenAPI 3.1.", "content": {"application/json": {"schema": {"type": "object"}}}}})},
    }
    _add_guard_errors(paths)
    return {
        "openapi": "3.1.0",
        "info": {"title": "mlxserve", "version": __version__,
                 "description": "Ollama's native API (/api/*), the OpenAI API (/v1/*) and Anthropic's Messages API "
                                "(/v1/messages) over local MLX models."},
        "servers": [{"url": "/"}],
        "tags": [{"name": "native"}, {"name": "models"}, {"name": "openai"}, {"name": "anthropic"}, {"name": "operations"}],
        # Optional: only a server started with an API key asks for one (every route but the liveness ones).
        "security": [{}, {"bearerAuth": []}],
        "paths": paths,
        "components": {
            "schemas": _schemas(),
            "securitySchemes": {"bearerAuth": {"type": "http", "scheme": "bearer",
                                               "description": "Required only when the server is started with an API key "
                                                              "(which `x-api-key: <key>` carries too)."}},
        },
    }


PUBLIC_OPERATIONS = {("get", "/"), ("head", "/"), ("get", "/api/health")}  # answered without an API key (security.py)


def _add_guard_errors(paths: dict[str, Any]) -> None:
    """The answers of the guards in security.py, which stand before every route: 401, 403 and 408."""
    for path, item in paths.items():
        dialect = _dialect(path)
        for method, op in item.items():
            if method == "parameters":
                continue
            responses = op["responses"]
            plain = method == "head"  # HEAD answers carry no body
            if (method, path) not in PUBLIC_OPERATIONS:
                responses["401"] = _empty("API key missing or wrong.") if plain else _error(
                    dialect, "The server has an API key and the request did not send it as 'Authorization: Bearer <key>' "
                             "(or 'x-api-key: <key>').")
            responses["403"] = _empty("Refused Host or Origin.") if plain else _error(
                dialect, "The Host header (DNS-rebinding guard) or the Origin (CORS allow-list) is not allowed.")
            if "requestBody" in op:
                responses["408"] = _error(dialect, "The request body did not arrive in time.")
        # security.py asks no key of the liveness routes
        if path in ("/", "/api/health"):
            for method, op in item.items():
                if method != "parameters":
                    op["security"] = [{}]


def _json_inline(schema: Schema) -> dict[str, Any]:
    return {"application/json": {"schema": schema}}


_DOCUMENT_TEXT = dumps(build_document())  # built once: the routes do not change while the server runs


routes = web.RouteTableDef()


@routes.get("/openapi.json")
async def openapi_json(request: web.Request) -> web.Response:
    """GET /openapi.json"""
    return web.Response(text=_DOCUMENT_TEXT, content_type="application/json")
