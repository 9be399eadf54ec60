from mlxserve.v1 import common_pb2 as _common_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class ChatMessage(_message.Message):
    __slots__ = ("role", "content")
    ROLE_FIELD_NUMBER: _ClassVar[int]
    CONTENT_FIELD_NUMBER: _ClassVar[int]
    role: str
    content: str
    def __init__(self, role: _Optional[str] = ..., content: _Optional[str] = ...) -> None: ...

class SamplingOptions(_message.Message):
    __slots__ = ("temperature", "top_p", "top_k", "min_p", "seed", "num_predict", "stop", "num_ctx")
    TEMPERATURE_FIELD_NUMBER: _ClassVar[int]
    TOP_P_FIELD_NUMBER: _ClassVar[int]
    TOP_K_FIELD_NUMBER: _ClassVar[int]
    MIN_P_FIELD_NUMBER: _ClassVar[int]
    SEED_FIELD_NUMBER: _ClassVar[int]
    NUM_PREDICT_FIELD_NUMBER: _ClassVar[int]
    STOP_FIELD_NUMBER: _ClassVar[int]
    NUM_CTX_FIELD_NUMBER: _ClassVar[int]
    temperature: float
    top_p: float
    top_k: int
    min_p: float
    seed: int
    num_predict: int
    stop: _containers.RepeatedScalarFieldContainer[str]
    num_ctx: int
    def __init__(self, temperature: _Optional[float] = ..., top_p: _Optional[float] = ..., top_k: _Optional[int] = ..., min_p: _Optional[float] = ..., seed: _Optional[int] = ..., num_predict: _Optional[int] = ..., stop: _Optional[_Iterable[str]] = ..., num_ctx: _Optional[int] = ...) -> None: ...

class SubmitRequest(_message.Message):
    __slots__ = ("request_id", "reply_to", "messages", "prompt", "system", "raw", "options", "is_chat")
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    REPLY_TO_FIELD_NUMBER: _ClassVar[int]
    MESSAGES_FIELD_NUMBER: _ClassVar[int]
    PROMPT_FIELD_NUMBER: _ClassVar[int]
    SYSTEM_FIELD_NUMBER: _ClassVar[int]
    RAW_FIELD_NUMBER: _ClassVar[int]
    OPTIONS_FIELD_NUMBER: _ClassVar[int]
    IS_CHAT_FIELD_NUMBER: _ClassVar[int]
    request_id: str
    reply_to: str
    messages: _containers.RepeatedCompositeFieldContainer[ChatMessage]
    prompt: str
    system: str
    raw: bool
    options: SamplingOptions
    is_chat: bool
    def __init__(self, request_id: _Optional[str] = ..., reply_to: _Optional[str] = ..., messages: _Optional[_Iterable[_Union[ChatMessage, _Mapping]]] = ..., prompt: _Optional[str] = ..., system: _Optional[str] = ..., raw: _Optional[bool] = ..., options: _Optional[_Union[SamplingOptions, _Mapping]] = ..., is_chat: _Optional[bool] = ...) -> None: ...

class SubmitResponse(_message.Message):
    __slots__ = ("prompt_tokens", "queue_position")
    PROMPT_TOKENS_FIELD_NUMBER: _ClassVar[int]
    QUEUE_POSITION_FIELD_NUMBER: _ClassVar[int]
    prompt_tokens: int
    queue_position: int
    def __init__(self, prompt_tokens: _Optional[int] = ..., queue_position: _Optional[int] = ...) -> None: ...

class CancelRequest(_message.Message):
    __slots__ = ("request_id",)
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    request_id: str
    def __init__(self, request_id: _Optional[str] = ...) -> None: ...

class CancelResponse(_message.Message):
    __slots__ = ("cancelled",)
    CANCELLED_FIELD_NUMBER: _ClassVar[int]
    cancelled: bool
    def __init__(self, cancelled: _Optional[bool] = ...) -> None: ...

class InfoRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class InfoResponse(_message.Message):
    __slots__ = ("model_path", "memory_bytes", "active_memory", "running", "waiting", "context_length", "device", "pid", "load_duration_s")
    MODEL_PATH_FIELD_NUMBER: _ClassVar[int]
    MEMORY_BYTES_FIELD_NUMBER: _ClassVar[int]
    ACTIVE_MEMORY_FIELD_NUMBER: _ClassVar[int]
    RUNNING_FIELD_NUMBER: _ClassVar[int]
    WAITING_FIELD_NUMBER: _ClassVar[int]
    CONTEXT_LENGTH_FIELD_NUMBER: _ClassVar[int]
    DEVICE_FIELD_NUMBER: _ClassVar[int]
    PID_FIELD_NUMBER: _ClassVar[int]
    LOAD_DURATION_S_FIELD_NUMBER: _ClassVar[int]
    model_path: str
    memory_bytes: int
    active_memory: int
    running: int
    waiting: int
    context_length: int
    device: str
    pid: int
    load_duration_s: float
    def __init__(self, model_path: _Optional[str] = ..., memory_bytes: _Optional[int] = ..., active_memory: _Optional[int] = ..., running: _Optional[int] = ..., waiting: _Optional[int] = ..., context_length: _Optional[int] = ..., device: _Optional[str] = ..., pid: _Optional[int] = ..., load_duration_s: _Optional[float] = ...) -> None: ...
