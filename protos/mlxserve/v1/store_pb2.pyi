from mlxserve.v1 import common_pb2 as _common_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class CreateRequest(_message.Message):
    __slots__ = ("name", "from_path")
    NAME_FIELD_NUMBER: _ClassVar[int]
    FROM_PATH_FIELD_NUMBER: _ClassVar[int]
    name: str
    from_path: str
    def __init__(self, name: _Optional[str] = ..., from_path: _Optional[str] = ...) -> None: ...

class ListRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class ModelSummary(_message.Message):
    __slots__ = ("name", "model", "digest", "size", "modified_at", "details")
    NAME_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    DIGEST_FIELD_NUMBER: _ClassVar[int]
    SIZE_FIELD_NUMBER: _ClassVar[int]
    MODIFIED_AT_FIELD_NUMBER: _ClassVar[int]
    DETAILS_FIELD_NUMBER: _ClassVar[int]
    name: str
    model: str
    digest: str
    size: int
    modified_at: str
    details: _common_pb2.ModelDetails
    def __init__(self, name: _Optional[str] = ..., model: _Optional[str] = ..., digest: _Optional[str] = ..., size: _Optional[int] = ..., modified_at: _Optional[str] = ..., details: _Optional[_Union[_common_pb2.ModelDetails, _Mapping]] = ...) -> None: ...

class ListResponse(_message.Message):
    __slots__ = ("models",)
    MODELS_FIELD_NUMBER: _ClassVar[int]
    models: _containers.RepeatedCompositeFieldContainer[ModelSummary]
    def __init__(self, models: _Optional[_Iterable[_Union[ModelSummary, _Mapping]]] = ...) -> None: ...

class ShowRequest(_message.Message):
    __slots__ = ("name",)
    NAME_FIELD_NUMBER: _ClassVar[int]
    name: str
    def __init__(self, name: _Optional[str] = ...) -> None: ...

class ShowResponse(_message.Message):
    __slots__ = ("summary", "template", "system", "license", "parameters", "model_info_json", "capabilities", "manifest_json")
    SUMMARY_FIELD_NUMBER: _ClassVar[int]
    TEMPLATE_FIELD_NUMBER: _ClassVar[int]
    SYSTEM_FIELD_NUMBER: _ClassVar[int]
    LICENSE_FIELD_NUMBER: _ClassVar[int]
    PARAMETERS_FIELD_NUMBER: _ClassVar[int]
    MODEL_INFO_JSON_FIELD_NUMBER: _ClassVar[int]
    CAPABILITIES_FIELD_NUMBER: _ClassVar[int]
    MANIFEST_JSON_FIELD_NUMBER: _ClassVar[int]
    summary: ModelSummary
    template: str
    system: str
    license: str
    parameters: str
    model_info_json: str
    capabilities: _containers.RepeatedScalarFieldContainer[str]
    manifest_json: str
    def __init__(self, summary: _Optional[_Union[ModelSummary, _Mapping]] = ..., template: _Optional[str] = ..., system: _Optional[str] = ..., license: _Optional[str] = ..., parameters: _Optional[str] = ..., model_info_json: _Optional[str] = ..., capabilities: _Optional[_Iterable[str]] = ..., manifest_json: _Optional[str] = ...) -> None: ...

class RemoveRequest(_message.Message):
    __slots__ = ("name",)
    NAME_FIELD_NUMBER: _ClassVar[int]
    name: str
    def __init__(self, name: _Optional[str] = ...) -> None: ...

class RemoveResponse(_message.Message):
    __slots__ = ("removed_blobs",)
    REMOVED_BLOBS_FIELD_NUMBER: _ClassVar[int]
    removed_blobs: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, removed_blobs: _Optional[_Iterable[str]] = ...) -> None: ...

class ResolveRequest(_message.Message):
    __slots__ = ("name",)
    NAME_FIELD_NUMBER: _ClassVar[int]
    name: str
    def __init__(self, name: _Optional[str] = ...) -> None: ...

class ResolveResponse(_message.Message):
    __slots__ = ("name", "digest", "view_path", "size", "capabilities", "context_length")
    NAME_FIELD_NUMBER: _ClassVar[int]
    DIGEST_FIELD_NUMBER: _ClassVar[int]
    VIEW_PATH_FIELD_NUMBER: _ClassVar[int]
    SIZE_FIELD_NUMBER: _ClassVar[int]
    CAPABILITIES_FIELD_NUMBER: _ClassVar[int]
    CONTEXT_LENGTH_FIELD_NUMBER: _ClassVar[int]
    name: str
    digest: str
    view_path: str
    size: int
    capabilities: _containers.RepeatedScalarFieldContainer[str]
    context_length: int
    def __init__(self, name: _Optional[str] = ..., digest: _Optional[str] = ..., view_path: _Optional[str] = ..., size: _Optional[int] = ..., capabilities: _Optional[_Iterable[str]] = ..., context_length: _Optional[int] = ...) -> None: ...
