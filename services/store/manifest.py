"""OCI image manifests for models, and the mlxserve config blob they point to.

A model is an OCI image manifest (schemaVersion 2) with an mlxserve artifactType; its config
blob (`ModelConfig`) holds what `show` reports, and each file of the model's view directory is
one layer whose `org.opencontainers.image.title` annotation is that file's name.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from fnmatch import fnmatch
from typing import Any

from mlxserve.services.common.errors import Internal, InvalidArgument

from .blobs import check_digest

MANIFEST_MEDIA_TYPE = "application/vnd.oci.image.manifest.v1+json"
ARTIFACT_TYPE = "application/vnd.mlxserve.model.v1"
CONFIG_MEDIA_TYPE = "application/vnd.mlxserve.model.config.v1+json"
TITLE = "org.opencontainers.image.title"

# Provenance annotations on the manifest.
ANN_CREATED = "org.opencontainers.image.created"
ANN_SOURCE = "io.mlxserve.source.name"
ANN_SOURCE_DIGEST = "io.mlxserve.source.digest"
ANN_CONVERTER = "io.mlxserve.converter"
ANN_CONVERTER_VERSION = "io.mlxserve.converter.version"
ANN_PARENT = "io.mlxserve.parent"              # "<name>@sha256:<hex>" of the model it derives from
ANN_QUANTIZATION = "io.mlxserve.quantization"  # e.g. "affine bits=4 group_size=64" when quantized on create
# Pulled and converted: the remote reference and the digest of what it named (an Ollama image's
# manifest, a Hugging Face commit), so pulling it again knows whether anything changed.
ANN_SOURCE_REF = "io.mlxserve.source.ref"
ANN_SOURCE_MANIFEST = "io.mlxserve.source.manifest"

_P = "application/vnd.mlxserve.model"
# (filename pattern, media type), first match wins. config.json gets its own type so it is never
# confused with the manifest's config blob.
LAYER_MEDIA_TYPES: list[tuple[str, str]] = [
    ("*.safetensors", f"{_P}.weights.v1.safetensors"),
    ("*.safetensors.index.json", f"{_P}.weights.index.v1+json"),
    ("config.json", f"{_P}.hf-config.v1+json"),
    ("generation_config.json", f"{_P}.generation-config.v1+json"),
    ("tokenizer.json", f"{_P}.tokenizer.v1+json"),
    ("tokenizer_config.json", f"{_P}.tokenizer-config.v1+json"),
    ("special_tokens_map.json", f"{_P}.special-tokens.v1+json"),
    ("added_tokens.json", f"{_P}.added-tokens.v1+json"),
    ("tokenizer.model", f"{_P}.tokenizer.v1.sentencepiece"),
    ("vocab.json", f"{_P}.tokenizer-vocab.v1+json"),
    ("vocab.txt", f"{_P}.tokenizer-vocab.v1+text"),
    ("merges.txt", f"{_P}.tokenizer-merges.v1+text"),
    ("chat_template.jinja", f"{_P}.template"),
    ("chat_template.json", f"{_P}.template.v1+json"),
    ("LICENSE*", f"{_P}.license"),
    ("params.json", f"{_P}.params.v1+json"),
    # sentence-transformers (embedding models): the module list, max_seq_length, and the pooling
    # module's config, which the importer flattens from 1_Pooling/config.json.
    ("modules.json", f"{_P}.st-modules.v1+json"),
    ("sentence_bert_config.json", f"{_P}.st-config.v1+json"),
    ("pooling_config.json", f"{_P}.st-pooling.v1+json"),
]


def media_type_for(filename: str) -> str | None:
    """The layer media type of a view file, or None for files the store does not keep."""
    for pattern, media_type in LAYER_MEDIA_TYPES:
        if fnmatch(filename, pattern):
            return media_type
    return None


def human_parameter_size(count: int) -> str:
    """Ollama-style parameter size: 134515008 -> '134.52M', 7241732096 -> '7.24B'."""
    for unit, scale in (("T", 1e12), ("B", 1e9), ("M", 1e6), ("K", 1e3)):
        if count >= scale:
            return f"{count / scale:.2f}".rstrip("0").rstrip(".") + unit
    return str(count)


@dataclass
class ModelConfig:
    """The config blob: facts about the model that list/show report without opening weights."""

    format: str = "mlx"
    family: str = ""
    families: list[str] = field(default_factory=list)
    architecture: str = ""
    parameter_count: int = 0
    parameter_size: str = ""
    quantization_level: str = ""
    context_length: int = 0
    capabilities: list[str] = field(default_factory=list)
    template: str = ""
    system: str = ""
    license: str = ""
    parameters: dict[str, Any] = field(default_factory=dict)
    model_info: dict[str, Any] = field(default_factory=dict)
    messages: list[dict[str, str]] = field(default_factory=list)  # conversation that precedes every chat
    parent_model: str = ""  # the model this one was created from, if any
    # Its distributed placement (services/common/placement.py), when it is served by a group.
    placement: dict[str, Any] = field(default_factory=dict)

    def to_bytes(self) -> bytes:
        doc = asdict(self)
        if not doc["placement"]:
            del doc["placement"]  # absent, not {}: a model without one keeps the config bytes (and digest) it had
        return json.dumps(doc, sort_keys=True, separators=(",", ":")).encode()

    @classmethod
    def from_bytes(cls, data: bytes) -> ModelConfig:
        raw = json.loads(data)
        known = {k: v for k, v in raw.items() if k in cls.__dataclass_fields__}
        return cls(**known)


@dataclass(frozen=True)
class Descriptor:
    media_type: str
    digest: str
    size: int
    title: str = ""

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"mediaType": self.media_type, "digest": self.digest, "size": self.size}
        if self.title:
            out["annotations"] = {TITLE: self.title}
        return out


@dataclass(frozen=True)
class Manifest:
    config: Descriptor
    layers: list[Descriptor]
    annotations: dict[str, str]

    @property
    def size(self) -> int:
        """Bytes of all layers (what `list` reports as the model's size)."""
        return sum(layer.size for layer in self.layers)

    def digests(self) -> set[str]:
        return {self.config.digest, *(layer.digest for layer in self.layers)}

    def to_bytes(self) -> bytes:
        doc = {
            "schemaVersion": 2,
            "mediaType": MANIFEST_MEDIA_TYPE,
            "artifactType": ARTIFACT_TYPE,
            "config": self.config.to_json(),
            "layers": [layer.to_json() for layer in self.layers],
            "annotations": dict(sorted(self.annotations.items())),
        }
        return json.dumps(doc, indent=2).encode() + b"\n"

    @classmethod
    def from_bytes(cls, data: bytes) -> Manifest:
        """Parse a stored manifest; a damaged one raises Internal naming the problem."""
        try:
            doc = json.loads(data)
            if doc.get("schemaVersion") != 2 or doc.get("mediaType") != MANIFEST_MEDIA_TYPE:
                raise ValueError("not an OCI image manifest")
            if doc.get("artifactType") != ARTIFACT_TYPE:
                raise ValueError(f"artifactType is {doc.get('artifactType')!r}, not {ARTIFACT_TYPE}")

            def desc(d: dict[str, Any]) -> Descriptor:
                title = (d.get("annotations") or {}).get(TITLE, "")
                size = d["size"]
                if type(size) is not int or size < 0:  # a bool or float is no byte count
                    named = f"layer {title!r} ({d['digest']})" if title else f"blob {d['digest']}"
                    raise ValueError(f"{named} declares the size {size!r}, not a count of bytes")
                return Descriptor(d["mediaType"], check_digest(d["digest"]), size, title)

            layers = [desc(d) for d in doc.get("layers", [])]
            for layer in layers:
                if not layer.title or "/" in layer.title or layer.title in (".", ".."):
                    raise ValueError(f"layer {layer.digest} has an unusable title {layer.title!r}")
            return cls(desc(doc["config"]), layers, dict(doc.get("annotations") or {}))
        except RecursionError:
            raise Internal("damaged model manifest: nested too deeply") from None
        except (ValueError, KeyError, TypeError, AttributeError, InvalidArgument) as e:
            raise Internal(f"damaged model manifest: {e}") from e
