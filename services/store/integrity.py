"""Manifest sizes checked against the blobs they name.

A descriptor's `size` is a claim by whoever wrote the manifest (a registry, a package, an old
store). The store never reports a claimed size: every manifest it writes (create, copy, pull,
unpack) has each size checked against the blob first, `verify` reports stored manifests whose
sizes disagree with their blobs, and the sizes `list`, `ps` and residency planning see are the
blobs' own (`verified_size`).
"""

from __future__ import annotations

from mlxserve.services.common.errors import InvalidArgument

from .blobs import BlobStore
from .manifest import Descriptor, Manifest


def layer_label(desc: Descriptor, manifest: Manifest) -> str:
    """How a message names one descriptor: the layer's title, or "the config blob"."""
    if desc is manifest.config:
        return f"the config blob {desc.digest}"
    return f"layer {desc.title!r} ({desc.digest})"


def size_problems(manifest: Manifest, blobs: BlobStore) -> list[str]:
    """One sentence per descriptor whose declared size differs from its stored blob's.

    Blobs the store lacks are not judged here (they are "missing", a different problem).
    """
    problems = []
    for desc in [manifest.config, *manifest.layers]:
        try:
            actual = blobs.path(desc.digest).stat().st_size
        except FileNotFoundError:
            continue
        if actual != desc.size:
            problems.append(f"{layer_label(desc, manifest)} declares {desc.size} bytes, its blob has {actual}")
    return problems


def check_sizes(manifest: Manifest, blobs: BlobStore, where: str) -> None:
    """Refuse a manifest any of whose sizes is not its blob's (InvalidArgument naming the layer)."""
    problems = size_problems(manifest, blobs)
    if problems:
        raise InvalidArgument(f"{where}: {'; '.join(problems)}; nothing was stored")


def verified_size(manifest: Manifest, blobs: BlobStore) -> int:
    """Bytes of the model's layers as stored (a missing blob counts 0), never a declared size."""
    total = 0
    for desc in manifest.layers:
        try:
            total += blobs.path(desc.digest).stat().st_size
        except FileNotFoundError:
            pass
    return total
