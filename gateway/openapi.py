"""The gateway's OpenAPI 3.1 description, served at GET /openapi.json.

Written by hand next to the handlers it describes: request schemas say what the parsers in
native.py, openai_api.py, models_api.py and embeddings_api.py accept (required fields, types,
bounds, enums; unknown fields are refused, so request objects are closed), responses give the
success shapes and both error shapes. tests/unit/test_openapi.py keeps the paths and the app's
routes equal, and tests/e2e/test_fuzz.py fuzzes a running system against this document.
"""

from __future__ import annotations

from typing import Any

from aiohttp import web

from mlxserve import __version__

from .responses import dumps

INT32_MAX = 2**31 - 1
INT64_MAX = 2**63 - 1
TINY_MODEL = "tiny:latest"  # the examples steer clients (and the fuzzer) to the cheapest model of the test system

JSON = "application/json"
NDJSON = "application/x-ndjson"
SSE = "text/event-stream"

Schema = dict[str, Any]


def _ref(name: str) -> Schema:
    return {"$ref": f"#/components/schemas/{name}"}


def _obj(properties: dict[str, Schema], required: tuple[str, ...] = (), *, closed: bool = True, **extra: Any) -> Schema:
    """An object schema; `closed` (the default) because the parsers refuse fields they do not read."""
    out: Schema = {"type": "object", "properties": properties}
    if required:
        out["required"] = list(required)
    if closed:
        out["additionalProperties"] = False
    out.update(extra)
    return out


def _int(minimum: int | None = None, maximum: int = INT32_MAX, **extra: Any) -> Schema:
    return {"type": "integer", "minimum": -maximum - 1 if minimum is None else minimum, "maximum": maximum, **extra}


def _num(minimum: float | None = None, maximum: float | None = None, **extra: Any) -> Schema:
    out: Schema = {"type": "number", **extra}
    if minimum is not None:
        out["minimum"] = minimum
    if maximum is not None:
        out["maximum"] = maximum
    return out


STR: Schema = {"type": "string"}
BOOL: Schema = {"type": "boolean"}
# Looser than the name grammar (services/store/names.py), which the store checks and explains.
NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._:/@+-]{0,254}$"
MODEL: Schema = {"type": "string", "pattern": NAME_PATTERN, "description": "A model name, e.g. \"tiny:latest\".",
                 "examples": [TINY_MODEL]}
NEW_NAME: Schema = {"type": "string", "pattern": NAME_PATTERN}
STOP: Schema = {"oneOf": [STR, {"type": "array", "items": STR}], "description": "Stop sequences, never emitted."}
NOT_SUPPORTED_LIST: Schema = {"type": "array", "maxItems": 0, "description": "Not supported: only an empty value is accepted."}
NOT_SUPPORTED_STR: Schema = {"type": "string", "maxLength": 0, "description": "Not supported: only an empty value is accepted."}


def _schemas() -> dict[str, Schema]:
    tool = _obj({
        "type": {"type": "string", "enum": ["function"]},
        "function": _obj({"name": {"type": "string", "minLength": 1}, "description": STR, "parameters": {"type": "object"},
                          "strict": BOOL}, ("name",), closed=False),
    }, ("function",), closed=False)
    details = {"type": "object", "properties": {
        "parent_model": STR, "format": STR, "family": STR, "families": {"type": ["array", "null"], "items": STR},
        "parameter_size": STR, "quantization_level": STR}}
    done_fields = {
        "done_reason": STR, "total_duration": {"type": "integer"}, "load_duration": {"type": "integer"},
        "prompt_eval_count": {"type": "integer"}, "prompt_eval_duration": {"type": "integer"},
        "eval_count": {"type": "integer"}, "eval_duration": {"type": "integer"},
    }
    openai_message_content: Schema = {"oneOf": [
        STR, {"type": "null"},
        {"type": "array", "items": _obj({"type": {"type": "string", "enum": ["text"]}, "text": STR}, ("type", "text"))},
    ]}
    return {
        "NativeError": {"type": "object", "properties": {"error": STR}, "required": ["error"],
                        "description": "Every native (/api/*) error; mid-stream, the last NDJSON line."},
        "OpenAIError": {"type": "object", "required": ["error"], "properties": {"error": {
            "type": "object", "required": ["message", "type", "param", "code"],
            "properties": {"message": STR, "type": STR, "param": {"type": ["string", "null"]}, "code": {"type": ["string", "null"]}}}}},
        "Options": {
            "type": "object", "additionalProperties": True,
            "description": "Ollama's runtime options; keys this server does not know are ignored, as Ollama does.",
            "properties": {
                "temperature": _num(0.0, 100.0), "top_p": _num(None, 1.0, exclusiveMinimum=0.0), "top_k": _int(0), "min_p": _num(0.0, 1.0),
                "seed": _int(maximum=INT64_MAX), "num_predict": _int(examples=[4]), "num_ctx": _int(1),
                "repeat_penalty": _num(0.0), "repeat_last_n": _int(-1), "presence_penalty": _num(-2.0, 2.0),
                "frequency_penalty": _num(-2.0, 2.0), "stop": STOP,
            },
            "examples": [{"num_predict": 4, "temperature": 0}],
        },
        "KeepAlive": {"oneOf": [{"type": "string", "pattern": r"^(-?[0-9]+(\.[0-9]+)?|-?([0-9]+(\.[0-9]*)?(ns|us|ms|s|m|h))+)$",
                                 "examples": ["5m", "0", "-1"]}, {"type": "number"}],
                      "description": "A Go duration (\"5m\", \"1h30m\") or seconds; negative keeps the model loaded."},
        "Format": {"oneOf": [{"type": "string", "enum": ["", "json"]}, {"type": "object"}],
                   "description": "\"json\", or a JSON schema the output must follow."},
        "Tool": tool,
        "NativeToolCall": _obj({"id": STR, "function": _obj({
            "name": {"type": "string", "minLength": 1}, "arguments": {"oneOf": [{"type": "object"}, STR]}}, ("name",), closed=False)},
            ("function",), closed=False),
        "NativeMessage": _obj({
            "role": {"type": "string", "enum": ["system", "user", "assistant", "tool"]}, "content": STR, "thinking": STR,
            "tool_calls": {"type": "array", "items": _ref("NativeToolCall")}, "tool_name": STR, "tool_call_id": STR,
            "images": NOT_SUPPORTED_LIST}, ("role",)),
        "GenerateRequest": _obj({
            "model": MODEL, "prompt": STR, "system": STR, "raw": BOOL, "stream": BOOL, "options": _ref("Options"),
            "keep_alive": _ref("KeepAlive"), "format": _ref("Format"), "think": BOOL, "logprobs": BOOL,
            "top_logprobs": _int(0, 20), "truncate": BOOL, "images": NOT_SUPPORTED_LIST, "context": NOT_SUPPORTED_LIST,
            "suffix": NOT_SUPPORTED_STR, "template": NOT_SUPPORTED_STR, "tools": NOT_SUPPORTED_LIST,
        }, ("model",), examples=[{"model": TINY_MODEL, "prompt": "Hi", "stream": False, "options": {"num_predict": 4}}]),
        "ChatRequest": _obj({
            "model": MODEL, "messages": {"type": "array", "items": _ref("NativeMessage")}, "stream": BOOL,
            "options": _ref("Options"), "keep_alive": _ref("KeepAlive"), "format": _ref("Format"), "think": BOOL,
            "logprobs": BOOL, "top_logprobs": _int(0, 20), "truncate": BOOL, "tools": {"type": "array", "items": tool},
        }, ("model",), examples=[{"model": TINY_MODEL, "messages": [{"role": "user", "content": "Hi"}], "stream": False,
                                  "options": {"num_predict": 4}}]),
        "GenerateResponse": {"type": "object", "required": ["model", "created_at", "response", "done"], "properties": {
            "model": STR, "created_at": STR, "response": STR, "thinking": STR, "done": BOOL, "logprobs": {"type": "array"},
            **done_fields}},
        "ChatResponse": {"type": "object", "required": ["model", "created_at", "message", "done"], "properties": {
            "model": STR, "created_at": STR, "done": BOOL, "logprobs": {"type": "array"},
            "message": {"type": "object", "required": ["role", "content"], "properties": {
                "role": STR, "content": STR, "thinking": STR, "tool_calls": {"type": "array"}}},
            **done_fields}},
        "ModelDetails": details,
        "ModelList": {"type": "object", "required": ["models"], "properties": {"models": {"type": "array", "items": {
            "type": "object", "required": ["name", "model", "digest"], "properties": {
                "name": STR, "model": STR, "modified_at": {"type": ["string", "null"]}, "size": {"type": "integer"},
                "digest": STR, "details": _ref("ModelDetails"), "expires_at": {"type": ["string", "null"]},
                "size_vram": {"type": "integer"}, "context_length": {"type": "integer"}}}}}},
        "Health": {"type": "object", "required": ["status", "services"], "properties": {
            "status": {"type": "string", "enum": ["ok", "unavailable"]}, "error": STR,
            "services": {"type": "object", "additionalProperties": STR}}},
        "ModelRef": _obj({"model": MODEL, "name": {**STR, "description": "Older spelling of `model`."}}, ("model",)),
        "ShowRequest": _obj({"model": MODEL, "name": STR, "verbose": BOOL}, ("model",)),
        "ShowResponse": {"type": "object", "required": ["details", "model_info", "capabilities"], "properties": {
            "license": STR, "modelfile": STR, "parameters": STR, "template": STR, "system": STR,
            "details": _ref("ModelDetails"), "model_info": {"type": "object"}, "capabilities": {"type": "array", "items": STR},
            "messages": {"type": "array"}, "modified_at": {"type": ["string", "null"]}}},
        "CopyRequest": _obj({"source": MODEL, "destination": NEW_NAME}, ("source", "destination")),
        "TransferRequest": _obj({"model": {**NEW_NAME, "examples": ["registry.invalid/library/none:latest"]},
                                 "name": STR, "insecure": BOOL, "stream": BOOL}, ("model",)),
        "CreateRequest": _obj({
            "model": NEW_NAME, "name": STR, "stream": BOOL, "from": MODEL,
            "files": {"type": "object", "minProperties": 1, "propertyNames": {"pattern": "^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$"},
                      "additionalProperties": {"type": "string", "pattern": "^sha256[:-][0-9a-f]{64}$"}},
            "template": STR, "system": STR, "license": {"oneOf": [STR, {"type": "array", "items": STR}]},
            "parameters": {"type": "object"}, "quantize": STR, "adapters": {"type": "object", "maxProperties": 0},
            "messages": {"type": "array", "items": _obj({
                "role": {"type": "string", "enum": ["system", "user", "assistant"]}, "content": STR}, ("role",))},
        }, ("model",), anyOf=[{"required": ["from"]}, {"required": ["files"]}]),
        "Progress": {"type": "object", "required": ["status"], "properties": {
            "status": STR, "digest": STR, "total": {"type": "integer"}, "completed": {"type": "integer"}}},
        "EmbedRequest": _obj({
            "model": MODEL, "input": {"oneOf": [STR, {"type": "array", "items": STR}]}, "truncate": BOOL,
            "dimensions": _int(1), "keep_alive": _ref("KeepAlive"), "options": _ref("Options")}, ("model",)),
        "EmbedResponse": {"type": "object", "required": ["model", "embeddings"], "properties": {
            "model": STR, "embeddings": {"type": "array", "items": {"type": "array", "items": {"type": "number"}}},
            "total_duration": {"type": "integer"}, "load_duration": {"type": "integer"}, "prompt_eval_count": {"type": "integer"}}},
        "LegacyEmbeddingsRequest": _obj({"model": MODEL, "prompt": STR, "keep_alive": _ref("KeepAlive"),
                                         "options": _ref("Options")}, ("model",)),
        # -- OpenAI ----------------------------------------------------------------------------------
        "OpenAIMessage": {"oneOf": [
            _obj({"role": {"type": "string", "enum": ["system", "developer", "user"]}, "content": openai_message_content},
                 ("role",)),
            _obj({"role": {"const": "assistant"}, "content": openai_message_content, "reasoning_content": STR,
                  "tool_calls": {"type": "array", "items": _obj({
                      "id": STR, "type": {"type": "string", "enum": ["function"]},
                      "function": _obj({"name": {"type": "string", "minLength": 1}, "arguments": STR}, ("name",))},
                      ("function",))}}, ("role",)),
            _obj({"role": {"const": "tool"}, "content": openai_message_content, "tool_call_id": STR}, ("role", "tool_call_id")),
        ]},
        "StreamOptions": _obj({"include_usage": BOOL}),
        "LogitBias": {"type": "object", "propertyNames": {"pattern": "^[0-9]{1,9}$"},
                      "additionalProperties": _num(-100, 100)},
        "ResponseFormat": {"oneOf": [
            _obj({"type": {"type": "string", "enum": ["text", "json_object"]}}, ("type",)),
            _obj({"type": {"type": "string", "enum": ["json_schema"]}, "json_schema": _obj({
                "name": STR, "description": STR, "strict": BOOL, "schema": {"type": "object"}})}, ("type",)),
        ]},
        "ChatCompletionRequest": _obj({
            "model": MODEL, "messages": {"type": "array", "minItems": 1, "items": _ref("OpenAIMessage")},
            "stream": BOOL, "stream_options": _ref("StreamOptions"), "n": {"type": "integer", "enum": [1]},
            "temperature": _num(0, 2), "top_p": _num(None, 1, exclusiveMinimum=0), "seed": _int(maximum=INT64_MAX),
            "presence_penalty": _num(-2, 2), "frequency_penalty": _num(-2, 2),
            "max_tokens": _int(1, examples=[4]), "max_completion_tokens": _int(1, examples=[4]), "stop": STOP,
            "logit_bias": _ref("LogitBias"), "user": STR, "response_format": _ref("ResponseFormat"),
            "tools": {"type": "array", "items": tool}, "tool_choice": {"type": "string", "enum": ["auto", "none"]},
            "logprobs": BOOL, "top_logprobs": _int(0, 20),
            "reasoning_effort": {"type": "string", "enum": ["none", "minimal", "low", "medium", "high"]},
            "parallel_tool_calls": BOOL, "store": {"type": "boolean", "enum": [False]},
            "service_tier": {"type": "string", "enum": ["auto", "default"]},
            "modalities": {"type": "array", "items": {"type": "string", "enum": ["text"]}, "minItems": 1, "maxItems": 1},
        }, ("model", "messages"), examples=[{"model": TINY_MODEL, "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 4}]),
        "CompletionRequest": _obj({
            "model": MODEL, "prompt": {"oneOf": [{"type": "string", "minLength": 1},
                                                 {"type": "array", "items": {"type": "string", "minLength": 1}, "minItems": 1, "maxItems": 1}]},
            "stream": BOOL, "stream_options": _ref("StreamOptions"), "n": {"type": "integer", "enum": [1]},
            "best_of": {"type": "integer", "enum": [1]}, "echo": {"type": "boolean", "enum": [False]},
            "suffix": NOT_SUPPORTED_STR, "temperature": _num(0, 2), "top_p": _num(None, 1, exclusiveMinimum=0), "seed": _int(maximum=INT64_MAX),
            "presence_penalty": _num(-2, 2), "frequency_penalty": _num(-2, 2), "max_tokens": _int(1, examples=[4]),
            "stop": STOP, "logit_bias": _ref("LogitBias"), "logprobs": _int(0, 20), "user": STR,
        }, ("model", "prompt"), examples=[{"model": TINY_MODEL, "prompt": "Hi", "max_tokens": 4}]),
        "ChatCompletion": {"type": "object", "required": ["id", "object", "created", "model", "choices", "usage"], "properties": {
            "id": STR, "object": {"const": "chat.completion"}, "created": {"type": "integer"}, "model": STR,
            "system_fingerprint": STR, "usage": _ref("Usage"),
            "choices": {"type": "array", "items": {"type": "object", "required": ["index", "message", "finish_reason"], "properties": {
                "index": {"type": "integer"}, "finish_reason": {"type": "string", "enum": ["stop", "length", "tool_calls"]},
                "message": {"type": "object", "required": ["role"], "properties": {
                    "role": {"const": "assistant"}, "content": {"type": ["string", "null"]}, "reasoning_content": STR,
                    "tool_calls": {"type": "array"}}},
                "logprobs": {"type": ["object", "null"]}}}}}},
        "Completion": {"type": "object", "required": ["id", "object", "created", "model", "choices", "usage"], "properties": {
            "id": STR, "object": {"const": "text_completion"}, "created": {"type": "integer"}, "model": STR,
            "system_fingerprint": STR, "usage": _ref("Usage"),
            "choices": {"type": "array", "items": {"type": "object", "required": ["text", "index", "finish_reason"], "properties": {
                "text": STR, "index": {"type": "integer"}, "finish_reason": {"type": "string", "enum": ["stop", "length"]},
                "logprobs": {"type": ["object", "null"]}}}}}},
        "Usage": {"type": "object", "required": ["prompt_tokens", "completion_tokens", "total_tokens"], "properties": {
            "prompt_tokens": {"type": "integer"}, "completion_tokens": {"type": "integer"}, "total_tokens": {"type": "integer"}}},
        "Model": {"type": "object", "required": ["id", "object", "created", "owned_by"], "properties": {
            "id": STR, "object": {"const": "model"}, "created": {"type": "integer"}, "owned_by": STR}},
        "ModelPage": {"type": "object", "required": ["object", "data"], "properties": {
            "object": {"const": "list"}, "data": {"type": "array", "items": _ref("Model")}}},
        "EmbeddingsRequest": _obj({
            "model": MODEL, "input": {"oneOf": [STR, {"type": "array", "items": STR, "minItems": 1}]},
            "encoding_format": {"type": "string", "enum": ["float", "base64"]}, "dimensions": _int(1), "user": STR,
        }, ("model", "input")),
        "Embeddings": {"type": "object", "required": ["object", "data", "model", "usage"], "properties": {
            "object": {"const": "list"}, "model": STR,
            "data": {"type": "array", "items": {"type": "object", "required": ["object", "index", "embedding"], "properties": {
                "object": {"const": "embedding"}, "index": {"type": "integer"},
                "embedding": {"oneOf": [{"type": "array", "items": {"type": "number"}}, STR]}}}},
            "usage": {"type": "object", "properties": {"prompt_tokens": {"type": "integer"}, "total_tokens": {"type": "integer"}}}}},
        "ResponsesRequest": _obj({
            "model": MODEL,
            "input": {"oneOf": [{"type": "string", "minLength": 1}, {"type": "array", "minItems": 1, "items": _ref("ResponsesItem")}],
                      "description": "Text, or input items: messages, function calls and their outputs, reasoning."},
            "instructions": STR, "max_output_tokens": _int(1, examples=[4]), "temperature": _num(0, 2), "top_p": _num(None, 1, exclusiveMinimum=0),
            "stream": BOOL,
            "text": _obj({"format": {"oneOf": [
                _obj({"type": {"type": "string", "enum": ["text", "json_object"]}}, ("type",)),
                _obj({"type": {"const": "json_schema"}, "name": {"type": "string", "minLength": 1}, "description": STR,
                      "schema": {"type": "object"}, "strict": BOOL}, ("type", "name"))]}}),
            "tools": {"type": "array", "items": {"type": "object", "properties": {
                "type": {"type": "string", "enum": ["function"]}, "name": {"type": "string", "minLength": 1},
                "description": STR, "parameters": {"type": "object"}}, "required": ["type", "name"]}},
        }, ("model", "input"), closed=False,
            description="Non-stateful: `previous_response_id`, `store` true and `conversation` are refused.",
            examples=[{"model": TINY_MODEL, "input": "Hi", "max_output_tokens": 4}]),
        "ResponsesItem": {"oneOf": [
            _obj({"type": {"const": "message"}, "role": {"type": "string", "enum": ["user", "system", "developer", "assistant"]},
                  "content": {"oneOf": [STR, {"type": "array", "items": _obj({
                      "type": {"type": "string", "enum": ["input_text", "output_text", "text"]}, "text": STR}, ("type", "text"))}]}},
                 ("role", "content")),
            _obj({"type": {"const": "function_call"}, "call_id": STR, "name": {"type": "string", "minLength": 1},
                  "arguments": STR}, ("type", "call_id", "name")),
            _obj({"type": {"const": "function_call_output"}, "call_id": STR, "output": STR}, ("type", "call_id", "output")),
        ]},
        "Response": {"type": "object", "required": ["id", "object", "model", "output", "status"], "properties": {
            "id": STR, "object": {"const": "response"}, "model": STR, "status": STR, "created_at": {"type": "integer"},
            "output": {"type": "array"}, "output_text": STR, "usage": {"type": ["object", "null"]}}},
    }


def _json(schema_name: str) -> dict[str, Any]:
    return {"application/json": {"schema": _ref(schema_name)}}


def _error(dialect: str, description: str, *, retry: bool = False) -> dict[str, Any]:
    out: dict[str, Any] = {"description": description,
                           "content": _json("OpenAIError" if dialect == "openai" else "NativeError")}
    if retry:
        out["headers"] = {"Retry-After": {"description": "Seconds to wait before trying again.", "schema": {"type": "string"}}}
    return out


def _errors(dialect: str, *codes: int) -> dict[str, Any]:
    text = {400: "Invalid or unsupported request field (named in the message).", 404: "Unknown model.",
            409: "The destination already exists.", 413: "Request body too large.",
            503: "A service is not reachable, or the model's queue is full (Retry-After says when to retry).",
            504: "The request took longer than the server's request timeout."}
    return {str(c): _error(dialect, text[c], retry=c == 503) for c in codes}


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
                "content": {JSON: {"schema": _ref(response)}, streamed: {"schema": stream_schema}}},
        **_errors(dialect, 400, 404, 413, 503, 504)})


def _progress_op(op_id: str, summary: str, request: str) -> dict[str, Any]:
    return _op(op_id, summary, "models", body=request, responses={
        "200": {"description": "The final progress object, or (with `stream`) NDJSON progress ending with {\"status\": \"success\"}.",
                "content": {JSON: {"schema": _ref("Progress")}, NDJSON: {"schema": {"description": "One Progress per line."}}}},
        **_errors("native", 400, 404, 409, 413, 503, 504)})


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
        "/api/version": {"get": _op("version", "The server's version.", "native", {"200": {
            "description": "Version.", "content": _json_inline({"type": "object", "required": ["version"], "properties": {"version": STR}})}})},
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
        "/api/copy": {"post": _op("copy", "Copy a model under a new name.", "models",
                                  {"200": _empty("Copied."), **_errors("native", 400, 404, 409, 413, 503, 504)}, body="CopyRequest")},
        "/api/delete": {"delete": _op("delete", "Remove a model.", "models",
                                      {"200": _empty("Removed."), **_errors("native", 400, 404, 413, 503, 504)}, body="ModelRef")},
        "/api/pull": {"post": _progress_op("pull", "Pull a model from a registry.", "TransferRequest")},
        "/api/push": {"post": _progress_op("push", "Push a model to a registry.", "TransferRequest")},
        "/api/create": {"post": _progress_op("create", "Create a model from another model or uploaded blobs.", "CreateRequest")},
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
                                   {**native_ok("EmbedResponse", "Embeddings."), **_errors("native", 400, 404, 413, 503, 504)},
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
        "/v1/models": {"get": _op("listModels", "The models in the store.", "openai",
                                  {"200": {"description": "Models.", "content": _json("ModelPage")}, **_errors("openai", 503, 504)})},
        "/v1/models/{model}": {
            "parameters": [{"name": "model", "in": "path", "required": True, "schema": {"type": "string", "examples": [TINY_MODEL]}}],
            "get": _op("retrieveModel", "One model.", "openai", {"200": {"description": "The model.", "content": _json("Model")},
                                                               **_errors("openai", 404, 503, 504)})},
        "/v1/embeddings": {"post": _op("createEmbedding", "OpenAI embeddings.", "openai",
                                       {"200": {"description": "Embeddings.", "content": _json("Embeddings")},
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
                 "description": "Ollama's native API (/api/*) and the OpenAI API (/v1/*) over local MLX models."},
        "servers": [{"url": "/"}],
        "tags": [{"name": "native"}, {"name": "models"}, {"name": "openai"}, {"name": "operations"}],
        # Optional: only a server started with an API key asks for one (every route but the liveness ones).
        "security": [{}, {"bearerAuth": []}],
        "paths": paths,
        "components": {
            "schemas": _schemas(),
            "securitySchemes": {"bearerAuth": {"type": "http", "scheme": "bearer",
                                               "description": "Required only when the server is started with an API key."}},
        },
    }


PUBLIC_OPERATIONS = {("get", "/"), ("head", "/"), ("get", "/api/health")}  # answered without an API key (security.py)


def _add_guard_errors(paths: dict[str, Any]) -> None:
    """The answers of the guards in security.py, which stand before every route: 401, 403 and 408."""
    for path, item in paths.items():
        dialect = "openai" if path.startswith("/v1/") else "native"
        for method, op in item.items():
            if method == "parameters":
                continue
            responses = op["responses"]
            plain = method == "head"  # HEAD answers carry no body
            if (method, path) not in PUBLIC_OPERATIONS:
                responses["401"] = _empty("API key missing or wrong.") if plain else _error(
                    dialect, "The server has an API key and the request did not send it as 'Authorization: Bearer <key>'.")
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


async def openapi_json(request: web.Request) -> web.Response:
    """GET /openapi.json"""
    return web.Response(text=_DOCUMENT_TEXT, content_type="application/json")
