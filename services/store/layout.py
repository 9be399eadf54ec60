"""OCI image-layout tarballs: `pack` writes one model (importers/oci_layout.py reads one back).

The tarball holds `oci-layout`, `index.json` (one manifest descriptor whose
`org.opencontainers.image.ref.name` is the tag, and whose `io.mlxserve.model.name` is the full
model name) and `blobs/sha256/<hex>` for the manifest, its config and its layers, uncompressed,
so `skopeo copy oci-archive:model.tar:<tag> docker://...` can push it to any registry.
Unpacking streams the tarball once, verifies every blob it keeps against its name, and writes
the manifest last, so nothing partial ever becomes visible.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import re
import tarfile
import tempfile
import threading
import time
from pathlib import Path
from typing import Any, BinaryIO

from mlxserve.services.common.errors import (
    Cancelled,
    InvalidArgument,
    NotFound,
    Unsupported,
)

from .blobs import fsync_dir
from .manifest import ARTIFACT_TYPE, CONFIG_MEDIA_TYPE, MANIFEST_MEDIA_TYPE, Manifest
from .progress import ProgressCallback, ProgressEvent, no_progress
from .store import ModelStore

OCI_LAYOUT_VERSION = "1.0.0"
OCI_INDEX_MEDIA_TYPE = "application/vnd.oci.image.index.v1+json"
REF_NAME = "org.opencontainers.image.ref.name"
MODEL_NAME = "io.mlxserve.model.name"
MAX_MANIFEST_BYTES = 4 * 1024 * 1024
BLOB_ENTRY = re.compile(r"blobs/sha256/([0-9a-f]{64})")
_INDEX_TYPES = ("application/vnd.oci.image.index.v1+json", "application/vnd.docker.distribution.manifest.list.v2+json")


def load_json(data: bytes, where: str, what: str) -> dict[str, Any]:
    """A JSON object from a registry or a package, refused (InvalidArgument naming `what`) if it is not one."""
    try:
        doc = json.loads(data)
    except RecursionError:
        raise InvalidArgument(f"{where}: {what} is nested too deeply to be an OCI document") from None
    except ValueError as e:
        raise InvalidArgument(f"{where}: {what} is not valid JSON ({e})") from None
    if not isinstance(doc, dict):
        raise InvalidArgument(f"{where}: {what} is not a JSON object")
    return doc


def model_manifest(data: bytes, where: str) -> Manifest:
    """Parse a manifest fetched from elsewhere, refusing (clearly) anything that is not an mlxserve model."""
    if len(data) > MAX_MANIFEST_BYTES:
        raise InvalidArgument(f"{where}: manifest is larger than {MAX_MANIFEST_BYTES} bytes")
    doc = load_json(data, where, "the manifest")
    if doc.get("mediaType") in _INDEX_TYPES or "manifests" in doc:
        raise Unsupported(f"{where} is an image index (multi-platform image), not an mlxserve model")
    config_type = (doc.get("config") or {}).get("mediaType") if isinstance(doc.get("config"), dict) else None
    if doc.get("artifactType") != ARTIFACT_TYPE and config_type != CONFIG_MEDIA_TYPE:
        raise Unsupported(
            f"{where} is not an mlxserve model (artifactType {doc.get('artifactType')!r}, config media type "
            f"{config_type!r}); mlxserve pulls only models pushed or packed by mlxserve")
    if doc.get("mediaType", MANIFEST_MEDIA_TYPE) != MANIFEST_MEDIA_TYPE:
        raise Unsupported(f"{where}: manifest media type {doc.get('mediaType')!r} is not {MANIFEST_MEDIA_TYPE}")
    try:
        return Manifest.from_bytes(data)
    except Exception as e:  # Manifest.from_bytes says what is wrong; the source is remote, not our store
        raise InvalidArgument(f"{where}: {e}") from e


def short(digest: str) -> str:
    """The 12 hex digits Ollama shows for a blob."""
    return digest.removeprefix("sha256:")[:12]


class Throttle:
    """Emit byte-progress at most every `interval` seconds (always the first and the last)."""

    def __init__(self, progress: ProgressCallback, status: str, digest: str, total: int, interval: float = 0.1):
        self.progress, self.status, self.digest, self.total, self.interval = progress, status, digest, total, interval
        self._last = 0.0

    def __call__(self, completed: int, force: bool = False) -> None:
        now = time.monotonic()
        if force or completed >= self.total or now - self._last >= self.interval:
            if not force:  # a forced event (start, end) does not delay the first byte count
                self._last = now
            self.progress(ProgressEvent(self.status, self.digest, self.total, completed))


def check_cancel(cancel: threading.Event | None, what: str) -> None:
    if cancel is not None and cancel.is_set():
        raise Cancelled(f"{what} cancelled")


# ---------------------------------------------------------------------- pack


def _tarinfo(name: str, size: int, mode: int = 0o644) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.size = size
    info.mode = mode
    info.mtime = 0  # reproducible archives: the same model packs to the same bytes
    return info


def pack(store: ModelStore, name: str, out_path: Path | str, progress: ProgressCallback = no_progress) -> Path:
    """Write `name` as an OCI image-layout tarball at `out_path` (a folder gets `<name>-<tag>.tar`).

    The tarball appears under its final name only once complete (temp file, fsync, rename).
    """
    mname, data, manifest = store.get_manifest(name)
    out = Path(out_path).expanduser()
    if out.is_dir():
        out = out / f"{mname.name}-{mname.tag}.tar"
    if not out.parent.is_dir():
        raise NotFound(f"folder {str(out.parent)!r} does not exist")
    manifest_digest = "sha256:" + hashlib.sha256(data).hexdigest()
    index = {
        "schemaVersion": 2,
        "mediaType": OCI_INDEX_MEDIA_TYPE,
        "manifests": [{
            "mediaType": MANIFEST_MEDIA_TYPE,
            "digest": manifest_digest,
            "size": len(data),
            "artifactType": ARTIFACT_TYPE,
            "annotations": {REF_NAME: mname.tag, MODEL_NAME: mname.display},
        }],
    }
    fd, tmp_name = tempfile.mkstemp(dir=out.parent, prefix=f".{out.name}.", suffix=".partial")
    tmp = Path(tmp_name)
    try:
        with os.fdopen(fd, "wb") as raw, tarfile.open(fileobj=raw, mode="w", format=tarfile.PAX_FORMAT) as tar:
            for folder in ("blobs", "blobs/sha256"):
                info = tarfile.TarInfo(folder)
                info.type, info.mode, info.mtime = tarfile.DIRTYPE, 0o755, 0
                tar.addfile(info)
            layout = json.dumps({"imageLayoutVersion": OCI_LAYOUT_VERSION}).encode()
            tar.addfile(_tarinfo("oci-layout", len(layout)), io.BytesIO(layout))
            index_bytes = json.dumps(index, indent=2).encode()
            tar.addfile(_tarinfo("index.json", len(index_bytes)), io.BytesIO(index_bytes))
            tar.addfile(_tarinfo(f"blobs/sha256/{manifest_digest[7:]}", len(data), 0o444), io.BytesIO(data))
            seen = set()
            for desc in [manifest.config, *manifest.layers]:
                if desc.digest in seen:
                    continue
                seen.add(desc.digest)
                report = Throttle(progress, f"packing {short(desc.digest)}", desc.digest, desc.size)
                report(0, force=True)
                with open(store.blobs.path(desc.digest), "rb") as f:
                    size = os.fstat(f.fileno()).st_size
                    if size != desc.size:
                        raise InvalidArgument(f"blob {desc.digest} of '{mname.display}' has {size} bytes, "
                                              f"the manifest says {desc.size}; run `mlxctl verify`")
                    tar.addfile(_tarinfo(f"blobs/sha256/{desc.digest[7:]}", size, 0o444), _CountingReader(f, report))
                report(desc.size, force=True)
            tar.close()
            raw.flush()
            os.fsync(raw.fileno())
        os.replace(tmp, out)
        fsync_dir(out.parent)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    progress(ProgressEvent("success"))
    return out


class _CountingReader:
    """A read-only file wrapper that reports how many bytes were read so far."""

    def __init__(self, f: BinaryIO, report: Throttle) -> None:
        self._f, self._report, self._n = f, report, 0

    def read(self, n: int = -1) -> bytes:
        chunk = self._f.read(n)
        self._n += len(chunk)
        self._report(self._n)
        return chunk
