"""Model names: `[host[:port]/][namespace/]name[:tag]`, optionally pinned with `@sha256:<hex>`.

The one name parser. Names match case-insensitively (everything is lower-cased), every part is
validated against a narrow character set, and a parsed name maps to exactly one manifest path
that can never leave the store's manifests folder.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from mlxserve.services.common.errors import InvalidArgument

# A bare name means what it means to an Ollama user: Ollama's library. (Where `pull` fetches such a
# name from is the `default_registry` setting; the name, and where it is stored, stay the same.)
DEFAULT_HOST = "registry.ollama.ai"
DEFAULT_NAMESPACE = "library"
DEFAULT_TAG = "latest"
HF_HOST = "hf.co"  # the Hugging Face hub: hf.co/ORG/REPO[:QUANT]
# Other spellings of the same hosts, stored under one name.
HOST_ALIASES = {"ollama.com": DEFAULT_HOST, "www.ollama.com": DEFAULT_HOST,
                "huggingface.co": HF_HOST, "www.huggingface.co": HF_HOST}

MAX_HOST = 253
MAX_PART = 80  # namespace, name, tag (Ollama's bounds)
MAX_NAME_TOTAL = 512

_PART = re.compile(r"[a-z0-9][a-z0-9._-]*")
_DIGEST = re.compile(r"sha256:[0-9a-f]{64}")


@dataclass(frozen=True)
class ModelName:
    """A fully qualified, validated, lower-case model name."""

    host: str = DEFAULT_HOST
    namespace: str = DEFAULT_NAMESPACE
    name: str = ""
    tag: str = DEFAULT_TAG
    digest: str | None = None  # "sha256:<hex>" when the name pins a manifest digest
    tag_given: bool = True  # False when the tag was defaulted (matters for digest-pinned lookups)

    @property
    def display(self) -> str:
        """The short form users see: default host and namespace dropped, e.g. `smollm2:latest`."""
        prefix = ""
        if self.host != DEFAULT_HOST:
            prefix = f"{self.host}/{self.namespace}/"
        elif self.namespace != DEFAULT_NAMESPACE:
            prefix = f"{self.namespace}/"
        return f"{prefix}{self.name}:{self.tag}"

    @property
    def full(self) -> str:
        return f"{self.host}/{self.namespace}/{self.name}:{self.tag}"

    def __str__(self) -> str:
        return self.display + (f"@{self.digest}" if self.digest else "")

    def manifest_path(self, models_dir: Path) -> Path:
        """Where this name's manifest lives: models/manifests/<host>/<namespace>/<name>/<tag>."""
        root = manifests_root(models_dir)
        path = root / self.host / self.namespace / self.name / self.tag
        # Defence in depth: validation already rules out separators and dot-dot parts.
        if not path.resolve().is_relative_to(root.resolve()):
            raise InvalidArgument(f"model name {self.display!r} maps outside the model store")
        return path

    def with_tag(self, tag: str) -> ModelName:
        return ModelName(self.host, self.namespace, self.name, _check_part(tag.lower(), "tag"), self.digest, True)


def manifests_root(models_dir: Path) -> Path:
    return models_dir / "manifests"


def _check_part(part: str, what: str, limit: int = MAX_PART) -> str:
    if not part:
        raise InvalidArgument(f"model name: the {what} is empty")
    if len(part) > limit:
        raise InvalidArgument(f"model name: the {what} is longer than {limit} characters")
    if ".." in part:
        raise InvalidArgument(f"model name: the {what} {part!r} must not contain '..'")
    if not _PART.fullmatch(part):
        raise InvalidArgument(
            f"model name: the {what} {part!r} may only hold letters, digits, '.', '_' and '-', "
            "and must start with a letter or digit"
        )
    return part


def _check_host(host: str) -> str:
    if len(host) > MAX_HOST:
        raise InvalidArgument(f"model name: the host is longer than {MAX_HOST} characters")
    hostname, sep, port = host.partition(":")
    _check_part(hostname, "host", MAX_HOST)
    if sep:
        if not port.isdigit() or not (0 < int(port) < 65536) or len(port) > 5:
            raise InvalidArgument(f"model name: the port in host {host!r} must be a number from 1 to 65535")
    return host


def parse_name(text: str) -> ModelName:
    """Parse and validate a model name; raise InvalidArgument saying what is wrong."""
    if not isinstance(text, str) or not text:
        raise InvalidArgument("model name is empty")
    if len(text) > MAX_NAME_TOTAL:
        raise InvalidArgument(f"model name is longer than {MAX_NAME_TOTAL} characters")
    if any(ord(c) < 0x20 or ord(c) == 0x7F for c in text):
        raise InvalidArgument("model name must not contain control characters")
    if text.startswith("/") or text.startswith("\\"):
        raise InvalidArgument(f"model name {text!r} looks like a path; give a name such as 'smollm2:latest'")
    if "\\" in text:
        raise InvalidArgument("model name must not contain backslashes")
    s = text.lower()

    digest: str | None = None
    if "@" in s:
        s, _, digest = s.partition("@")
        if not _DIGEST.fullmatch(digest):
            raise InvalidArgument(f"model name: the digest {digest!r} must be 'sha256:' followed by 64 hex digits")

    parts = s.split("/")
    if len(parts) > 3:
        raise InvalidArgument(f"model name {text!r} has too many '/' parts; expected [host/][namespace/]name[:tag]")
    last = parts[-1]
    name, colon, tag = last.partition(":")
    tag_given = bool(colon)
    if not colon:
        tag = DEFAULT_TAG
    elif ":" in tag:
        raise InvalidArgument(f"model name {text!r} has more than one ':' in its last part")
    host, namespace = DEFAULT_HOST, DEFAULT_NAMESPACE
    if len(parts) == 3:
        host, namespace = HOST_ALIASES.get(parts[0], parts[0]), parts[1]
    elif len(parts) == 2:
        namespace = parts[0]
    return ModelName(
        host=_check_host(host),
        namespace=_check_part(namespace, "namespace"),
        name=_check_part(name, "name"),
        tag=_check_part(tag, "tag"),
        digest=digest,
        tag_given=tag_given,
    )


def name_from_manifest_path(models_dir: Path, path: Path) -> ModelName:
    """The name a manifest file stands for (raises InvalidArgument for stray files)."""
    rel = path.relative_to(manifests_root(models_dir)).parts
    if len(rel) != 4:
        raise InvalidArgument(f"{path} is not a manifest path")
    host, namespace, name, tag = rel
    return ModelName(_check_host(host), _check_part(namespace, "namespace"), _check_part(name, "name"), _check_part(tag, "tag"))
