from mlxserve.v1 import common_pb2 as _common_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class ModelMessage(_message.Message):
    __slots__ = ("role", "content")
    ROLE_FIELD_NUMBER: _ClassVar[int]
    CONTENT_FIELD_NUMBER: _ClassVar[int]
    role: str
    content: str
    def __init__(self, role: _Optional[str] = ..., content: _Optional[str] = ...) -> None: ...

class CreateRequest(_message.Message):
    __slots__ = ("name", "from_path", "from_model", "files", "template", "system", "parameters_json", "license", "messages", "quantize", "group_size", "recipe", "recipe_format", "base_dir", "placement_json")
    class FilesEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    NAME_FIELD_NUMBER: _ClassVar[int]
    FROM_PATH_FIELD_NUMBER: _ClassVar[int]
    FROM_MODEL_FIELD_NUMBER: _ClassVar[int]
    FILES_FIELD_NUMBER: _ClassVar[int]
    TEMPLATE_FIELD_NUMBER: _ClassVar[int]
    SYSTEM_FIELD_NUMBER: _ClassVar[int]
    PARAMETERS_JSON_FIELD_NUMBER: _ClassVar[int]
    LICENSE_FIELD_NUMBER: _ClassVar[int]
    MESSAGES_FIELD_NUMBER: _ClassVar[int]
    QUANTIZE_FIELD_NUMBER: _ClassVar[int]
    GROUP_SIZE_FIELD_NUMBER: _ClassVar[int]
    RECIPE_FIELD_NUMBER: _ClassVar[int]
    RECIPE_FORMAT_FIELD_NUMBER: _ClassVar[int]
    BASE_DIR_FIELD_NUMBER: _ClassVar[int]
    PLACEMENT_JSON_FIELD_NUMBER: _ClassVar[int]
    name: str
    from_path: str
    from_model: str
    files: _containers.ScalarMap[str, str]
    template: str
    system: str
    parameters_json: str
    license: str
    messages: _containers.RepeatedCompositeFieldContainer[ModelMessage]
    quantize: str
    group_size: int
    recipe: str
    recipe_format: str
    base_dir: str
    placement_json: str
    def __init__(self, name: _Optional[str] = ..., from_path: _Optional[str] = ..., from_model: _Optional[str] = ..., files: _Optional[_Mapping[str, str]] = ..., template: _Optional[str] = ..., system: _Optional[str] = ..., parameters_json: _Optional[str] = ..., license: _Optional[str] = ..., messages: _Optional[_Iterable[_Union[ModelMessage, _Mapping]]] = ..., quantize: _Optional[str] = ..., group_size: _Optional[int] = ..., recipe: _Optional[str] = ..., recipe_format: _Optional[str] = ..., base_dir: _Optional[str] = ..., placement_json: _Optional[str] = ...) -> None: ...

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
    __slots__ = ("summary", "template", "system", "license", "parameters", "model_info_json", "capabilities", "manifest_json", "modelfile", "messages")
    SUMMARY_FIELD_NUMBER: _ClassVar[int]
    TEMPLATE_FIELD_NUMBER: _ClassVar[int]
    SYSTEM_FIELD_NUMBER: _ClassVar[int]
    LICENSE_FIELD_NUMBER: _ClassVar[int]
    PARAMETERS_FIELD_NUMBER: _ClassVar[int]
    MODEL_INFO_JSON_FIELD_NUMBER: _ClassVar[int]
    CAPABILITIES_FIELD_NUMBER: _ClassVar[int]
    MANIFEST_JSON_FIELD_NUMBER: _ClassVar[int]
    MODELFILE_FIELD_NUMBER: _ClassVar[int]
    MESSAGES_FIELD_NUMBER: _ClassVar[int]
    summary: ModelSummary
    template: str
    system: str
    license: str
    parameters: str
    model_info_json: str
    capabilities: _containers.RepeatedScalarFieldContainer[str]
    manifest_json: str
    modelfile: str
    messages: _containers.RepeatedCompositeFieldContainer[ModelMessage]
    def __init__(self, summary: _Optional[_Union[ModelSummary, _Mapping]] = ..., template: _Optional[str] = ..., system: _Optional[str] = ..., license: _Optional[str] = ..., parameters: _Optional[str] = ..., model_info_json: _Optional[str] = ..., capabilities: _Optional[_Iterable[str]] = ..., manifest_json: _Optional[str] = ..., modelfile: _Optional[str] = ..., messages: _Optional[_Iterable[_Union[ModelMessage, _Mapping]]] = ...) -> None: ...

class PullRequest(_message.Message):
    __slots__ = ("name", "insecure")
    NAME_FIELD_NUMBER: _ClassVar[int]
    INSECURE_FIELD_NUMBER: _ClassVar[int]
    name: str
    insecure: bool
    def __init__(self, name: _Optional[str] = ..., insecure: _Optional[bool] = ...) -> None: ...

class PushRequest(_message.Message):
    __slots__ = ("name", "insecure")
    NAME_FIELD_NUMBER: _ClassVar[int]
    INSECURE_FIELD_NUMBER: _ClassVar[int]
    name: str
    insecure: bool
    def __init__(self, name: _Optional[str] = ..., insecure: _Optional[bool] = ...) -> None: ...

class PackRequest(_message.Message):
    __slots__ = ("name", "out_path")
    NAME_FIELD_NUMBER: _ClassVar[int]
    OUT_PATH_FIELD_NUMBER: _ClassVar[int]
    name: str
    out_path: str
    def __init__(self, name: _Optional[str] = ..., out_path: _Optional[str] = ...) -> None: ...

class CopyRequest(_message.Message):
    __slots__ = ("source", "destination")
    SOURCE_FIELD_NUMBER: _ClassVar[int]
    DESTINATION_FIELD_NUMBER: _ClassVar[int]
    source: str
    destination: str
    def __init__(self, source: _Optional[str] = ..., destination: _Optional[str] = ...) -> None: ...

class CopyResponse(_message.Message):
    __slots__ = ("model",)
    MODEL_FIELD_NUMBER: _ClassVar[int]
    model: ModelSummary
    def __init__(self, model: _Optional[_Union[ModelSummary, _Mapping]] = ...) -> None: ...

class VerifyRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class BlobProblem(_message.Message):
    __slots__ = ("digest", "models")
    DIGEST_FIELD_NUMBER: _ClassVar[int]
    MODELS_FIELD_NUMBER: _ClassVar[int]
    digest: str
    models: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, digest: _Optional[str] = ..., models: _Optional[_Iterable[str]] = ...) -> None: ...

class VerifyReport(_message.Message):
    __slots__ = ("checked", "corrupt", "missing", "damaged_manifests")
    CHECKED_FIELD_NUMBER: _ClassVar[int]
    CORRUPT_FIELD_NUMBER: _ClassVar[int]
    MISSING_FIELD_NUMBER: _ClassVar[int]
    DAMAGED_MANIFESTS_FIELD_NUMBER: _ClassVar[int]
    checked: int
    corrupt: _containers.RepeatedCompositeFieldContainer[BlobProblem]
    missing: _containers.RepeatedCompositeFieldContainer[BlobProblem]
    damaged_manifests: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, checked: _Optional[int] = ..., corrupt: _Optional[_Iterable[_Union[BlobProblem, _Mapping]]] = ..., missing: _Optional[_Iterable[_Union[BlobProblem, _Mapping]]] = ..., damaged_manifests: _Optional[_Iterable[str]] = ...) -> None: ...

class VerifyEvent(_message.Message):
    __slots__ = ("progress", "report")
    PROGRESS_FIELD_NUMBER: _ClassVar[int]
    REPORT_FIELD_NUMBER: _ClassVar[int]
    progress: _common_pb2.Progress
    report: VerifyReport
    def __init__(self, progress: _Optional[_Union[_common_pb2.Progress, _Mapping]] = ..., report: _Optional[_Union[VerifyReport, _Mapping]] = ...) -> None: ...

class GcRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class GcResponse(_message.Message):
    __slots__ = ("removed_blobs", "freed_bytes", "removed_partials")
    REMOVED_BLOBS_FIELD_NUMBER: _ClassVar[int]
    FREED_BYTES_FIELD_NUMBER: _ClassVar[int]
    REMOVED_PARTIALS_FIELD_NUMBER: _ClassVar[int]
    removed_blobs: _containers.RepeatedScalarFieldContainer[str]
    freed_bytes: int
    removed_partials: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, removed_blobs: _Optional[_Iterable[str]] = ..., freed_bytes: _Optional[int] = ..., removed_partials: _Optional[_Iterable[str]] = ...) -> None: ...

class HasBlobRequest(_message.Message):
    __slots__ = ("digest",)
    DIGEST_FIELD_NUMBER: _ClassVar[int]
    digest: str
    def __init__(self, digest: _Optional[str] = ...) -> None: ...

class HasBlobResponse(_message.Message):
    __slots__ = ("exists",)
    EXISTS_FIELD_NUMBER: _ClassVar[int]
    exists: bool
    def __init__(self, exists: _Optional[bool] = ...) -> None: ...

class BlobChunk(_message.Message):
    __slots__ = ("digest", "data")
    DIGEST_FIELD_NUMBER: _ClassVar[int]
    DATA_FIELD_NUMBER: _ClassVar[int]
    digest: str
    data: bytes
    def __init__(self, digest: _Optional[str] = ..., data: _Optional[bytes] = ...) -> None: ...

class PutBlobResponse(_message.Message):
    __slots__ = ("digest", "created")
    DIGEST_FIELD_NUMBER: _ClassVar[int]
    CREATED_FIELD_NUMBER: _ClassVar[int]
    digest: str
    created: bool
    def __init__(self, digest: _Optional[str] = ..., created: _Optional[bool] = ...) -> None: ...

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
    __slots__ = ("name", "digest", "view_path", "size", "capabilities", "context_length", "details", "dtype", "quantization_bits", "placement")
    NAME_FIELD_NUMBER: _ClassVar[int]
    DIGEST_FIELD_NUMBER: _ClassVar[int]
    VIEW_PATH_FIELD_NUMBER: _ClassVar[int]
    SIZE_FIELD_NUMBER: _ClassVar[int]
    CAPABILITIES_FIELD_NUMBER: _ClassVar[int]
    CONTEXT_LENGTH_FIELD_NUMBER: _ClassVar[int]
    DETAILS_FIELD_NUMBER: _ClassVar[int]
    DTYPE_FIELD_NUMBER: _ClassVar[int]
    QUANTIZATION_BITS_FIELD_NUMBER: _ClassVar[int]
    PLACEMENT_FIELD_NUMBER: _ClassVar[int]
    name: str
    digest: str
    view_path: str
    size: int
    capabilities: _containers.RepeatedScalarFieldContainer[str]
    context_length: int
    details: _common_pb2.ModelDetails
    dtype: str
    quantization_bits: int
    placement: str
    def __init__(self, name: _Optional[str] = ..., digest: _Optional[str] = ..., view_path: _Optional[str] = ..., size: _Optional[int] = ..., capabilities: _Optional[_Iterable[str]] = ..., context_length: _Optional[int] = ..., details: _Optional[_Union[_common_pb2.ModelDetails, _Mapping]] = ..., dtype: _Optional[str] = ..., quantization_bits: _Optional[int] = ..., placement: _Optional[str] = ...) -> None: ...

class ListOllamaRequest(_message.Message):
    __slots__ = ("dir",)
    DIR_FIELD_NUMBER: _ClassVar[int]
    dir: str
    def __init__(self, dir: _Optional[str] = ...) -> None: ...

class OllamaModel(_message.Message):
    __slots__ = ("ollama_name", "name", "size", "architecture", "quantization", "parameter_size", "skip_reason", "imported", "digest")
    OLLAMA_NAME_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    SIZE_FIELD_NUMBER: _ClassVar[int]
    ARCHITECTURE_FIELD_NUMBER: _ClassVar[int]
    QUANTIZATION_FIELD_NUMBER: _ClassVar[int]
    PARAMETER_SIZE_FIELD_NUMBER: _ClassVar[int]
    SKIP_REASON_FIELD_NUMBER: _ClassVar[int]
    IMPORTED_FIELD_NUMBER: _ClassVar[int]
    DIGEST_FIELD_NUMBER: _ClassVar[int]
    ollama_name: str
    name: str
    size: int
    architecture: str
    quantization: str
    parameter_size: str
    skip_reason: str
    imported: bool
    digest: str
    def __init__(self, ollama_name: _Optional[str] = ..., name: _Optional[str] = ..., size: _Optional[int] = ..., architecture: _Optional[str] = ..., quantization: _Optional[str] = ..., parameter_size: _Optional[str] = ..., skip_reason: _Optional[str] = ..., imported: _Optional[bool] = ..., digest: _Optional[str] = ...) -> None: ...

class ListOllamaResponse(_message.Message):
    __slots__ = ("dir", "models")
    DIR_FIELD_NUMBER: _ClassVar[int]
    MODELS_FIELD_NUMBER: _ClassVar[int]
    dir: str
    models: _containers.RepeatedCompositeFieldContainer[OllamaModel]
    def __init__(self, dir: _Optional[str] = ..., models: _Optional[_Iterable[_Union[OllamaModel, _Mapping]]] = ...) -> None: ...

class ImportOllamaRequest(_message.Message):
    __slots__ = ("dir", "names", "all", "force", "dry_run")
    DIR_FIELD_NUMBER: _ClassVar[int]
    NAMES_FIELD_NUMBER: _ClassVar[int]
    ALL_FIELD_NUMBER: _ClassVar[int]
    FORCE_FIELD_NUMBER: _ClassVar[int]
    DRY_RUN_FIELD_NUMBER: _ClassVar[int]
    dir: str
    names: _containers.RepeatedScalarFieldContainer[str]
    all: bool
    force: bool
    dry_run: bool
    def __init__(self, dir: _Optional[str] = ..., names: _Optional[_Iterable[str]] = ..., all: _Optional[bool] = ..., force: _Optional[bool] = ..., dry_run: _Optional[bool] = ...) -> None: ...

class ImportOllamaResult(_message.Message):
    __slots__ = ("ollama_name", "name", "outcome", "reason", "digest")
    class Outcome(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
        __slots__ = ()
        OUTCOME_UNSPECIFIED: _ClassVar[ImportOllamaResult.Outcome]
        IMPORTED: _ClassVar[ImportOllamaResult.Outcome]
        ALREADY_IMPORTED: _ClassVar[ImportOllamaResult.Outcome]
        SKIPPED: _ClassVar[ImportOllamaResult.Outcome]
        WOULD_IMPORT: _ClassVar[ImportOllamaResult.Outcome]
    OUTCOME_UNSPECIFIED: ImportOllamaResult.Outcome
    IMPORTED: ImportOllamaResult.Outcome
    ALREADY_IMPORTED: ImportOllamaResult.Outcome
    SKIPPED: ImportOllamaResult.Outcome
    WOULD_IMPORT: ImportOllamaResult.Outcome
    OLLAMA_NAME_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    OUTCOME_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    DIGEST_FIELD_NUMBER: _ClassVar[int]
    ollama_name: str
    name: str
    outcome: ImportOllamaResult.Outcome
    reason: str
    digest: str
    def __init__(self, ollama_name: _Optional[str] = ..., name: _Optional[str] = ..., outcome: _Optional[_Union[ImportOllamaResult.Outcome, str]] = ..., reason: _Optional[str] = ..., digest: _Optional[str] = ...) -> None: ...

class ImportOllamaEvent(_message.Message):
    __slots__ = ("ollama_name", "progress", "result")
    OLLAMA_NAME_FIELD_NUMBER: _ClassVar[int]
    PROGRESS_FIELD_NUMBER: _ClassVar[int]
    RESULT_FIELD_NUMBER: _ClassVar[int]
    ollama_name: str
    progress: _common_pb2.Progress
    result: ImportOllamaResult
    def __init__(self, ollama_name: _Optional[str] = ..., progress: _Optional[_Union[_common_pb2.Progress, _Mapping]] = ..., result: _Optional[_Union[ImportOllamaResult, _Mapping]] = ...) -> None: ...
