from mlxserve.v1 import common_pb2 as _common_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class AcquireRequest(_message.Message):
    __slots__ = ("model", "request_id", "keep_alive_s")
    MODEL_FIELD_NUMBER: _ClassVar[int]
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    KEEP_ALIVE_S_FIELD_NUMBER: _ClassVar[int]
    model: str
    request_id: str
    keep_alive_s: float
    def __init__(self, model: _Optional[str] = ..., request_id: _Optional[str] = ..., keep_alive_s: _Optional[float] = ...) -> None: ...

class AcquireResponse(_message.Message):
    __slots__ = ("lease_id", "worker_address", "model", "digest", "load_duration_s", "capabilities")
    LEASE_ID_FIELD_NUMBER: _ClassVar[int]
    WORKER_ADDRESS_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    DIGEST_FIELD_NUMBER: _ClassVar[int]
    LOAD_DURATION_S_FIELD_NUMBER: _ClassVar[int]
    CAPABILITIES_FIELD_NUMBER: _ClassVar[int]
    lease_id: str
    worker_address: str
    model: str
    digest: str
    load_duration_s: float
    capabilities: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, lease_id: _Optional[str] = ..., worker_address: _Optional[str] = ..., model: _Optional[str] = ..., digest: _Optional[str] = ..., load_duration_s: _Optional[float] = ..., capabilities: _Optional[_Iterable[str]] = ...) -> None: ...

class ReleaseRequest(_message.Message):
    __slots__ = ("lease_id", "keep_alive_s")
    LEASE_ID_FIELD_NUMBER: _ClassVar[int]
    KEEP_ALIVE_S_FIELD_NUMBER: _ClassVar[int]
    lease_id: str
    keep_alive_s: float
    def __init__(self, lease_id: _Optional[str] = ..., keep_alive_s: _Optional[float] = ...) -> None: ...

class ReleaseResponse(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class LoadedModel(_message.Message):
    __slots__ = ("name", "model", "digest", "size", "size_vram", "memory_bytes", "expires_at", "details", "pid", "in_flight", "context_length", "blas", "blas_gflops", "compute_dtype", "ranks", "strategy")
    NAME_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    DIGEST_FIELD_NUMBER: _ClassVar[int]
    SIZE_FIELD_NUMBER: _ClassVar[int]
    SIZE_VRAM_FIELD_NUMBER: _ClassVar[int]
    MEMORY_BYTES_FIELD_NUMBER: _ClassVar[int]
    EXPIRES_AT_FIELD_NUMBER: _ClassVar[int]
    DETAILS_FIELD_NUMBER: _ClassVar[int]
    PID_FIELD_NUMBER: _ClassVar[int]
    IN_FLIGHT_FIELD_NUMBER: _ClassVar[int]
    CONTEXT_LENGTH_FIELD_NUMBER: _ClassVar[int]
    BLAS_FIELD_NUMBER: _ClassVar[int]
    BLAS_GFLOPS_FIELD_NUMBER: _ClassVar[int]
    COMPUTE_DTYPE_FIELD_NUMBER: _ClassVar[int]
    RANKS_FIELD_NUMBER: _ClassVar[int]
    STRATEGY_FIELD_NUMBER: _ClassVar[int]
    name: str
    model: str
    digest: str
    size: int
    size_vram: int
    memory_bytes: int
    expires_at: str
    details: _common_pb2.ModelDetails
    pid: int
    in_flight: int
    context_length: int
    blas: str
    blas_gflops: float
    compute_dtype: str
    ranks: _containers.RepeatedCompositeFieldContainer[_common_pb2.RankInfo]
    strategy: str
    def __init__(self, name: _Optional[str] = ..., model: _Optional[str] = ..., digest: _Optional[str] = ..., size: _Optional[int] = ..., size_vram: _Optional[int] = ..., memory_bytes: _Optional[int] = ..., expires_at: _Optional[str] = ..., details: _Optional[_Union[_common_pb2.ModelDetails, _Mapping]] = ..., pid: _Optional[int] = ..., in_flight: _Optional[int] = ..., context_length: _Optional[int] = ..., blas: _Optional[str] = ..., blas_gflops: _Optional[float] = ..., compute_dtype: _Optional[str] = ..., ranks: _Optional[_Iterable[_Union[_common_pb2.RankInfo, _Mapping]]] = ..., strategy: _Optional[str] = ...) -> None: ...

class ListLoadedRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class ListLoadedResponse(_message.Message):
    __slots__ = ("models",)
    MODELS_FIELD_NUMBER: _ClassVar[int]
    models: _containers.RepeatedCompositeFieldContainer[LoadedModel]
    def __init__(self, models: _Optional[_Iterable[_Union[LoadedModel, _Mapping]]] = ...) -> None: ...

class StopRequest(_message.Message):
    __slots__ = ("model",)
    MODEL_FIELD_NUMBER: _ClassVar[int]
    model: str
    def __init__(self, model: _Optional[str] = ...) -> None: ...

class StopResponse(_message.Message):
    __slots__ = ("stopped",)
    STOPPED_FIELD_NUMBER: _ClassVar[int]
    stopped: bool
    def __init__(self, stopped: _Optional[bool] = ...) -> None: ...
