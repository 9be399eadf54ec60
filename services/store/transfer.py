"""Pull and push models over OCI distribution v2, and pack them as image-layout tarballs.

Pull: the manifest first (it must be an mlxserve model), then each missing blob into
`models/tmp/partial-sha256-<hex>`, resumed with an HTTP Range request after an interruption;
each blob is verified before it is adopted into the store, and the manifest is written last,
so a failed or cancelled pull leaves no visible model. Threads of one store process that pull
the same blob share one download. Progress follows Ollama's pull statuses.

Push: HEAD each blob, upload only the missing ones, then PUT the manifest.
"""

from __future__ import annotations

import fcntl
import hashlib
import os
import threading
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO

from mlxserve.services.common.errors import Cancelled, Internal, InvalidArgument, MlxServeError, Unavailable

from .blobs import CHUNK
from .credentials import CredentialStore, Credentials, resolve_credentials
from .importers.oci_layout import is_package_ref, unpack
from .layout import Throttle, model_manifest, pack, short
from .manifest import Descriptor
from .names import DEFAULT_HOST, ModelName, parse_name
from .progress import ProgressCallback, ProgressEvent, no_progress
from .registry import OCI_MANIFEST, RegistryClient
from .store import ModelStore, ModelSummary

__all__ = ["pull", "push", "pack", "partial_path"]

PARTIAL_PREFIX = "partial-sha256-"


def partial_path(store: ModelStore, digest: str) -> Path:
    """Where a download of `digest` accumulates until it is verified."""
    return store.tmp_dir / (PARTIAL_PREFIX + digest.removeprefix("sha256:"))


def _registry_parts(mname: ModelName, verb: str) -> tuple[str, str]:
    if mname.host == DEFAULT_HOST:
        raise InvalidArgument(
            f"'{mname.display}' names no registry; {verb} needs a name that starts with the registry host, "
            "e.g. registry.example.com/library/model:tag")
    return mname.host, f"{mname.namespace}/{mname.name}"


def _check_cancel(cancel: threading.Event | None, what: str) -> None:
    if cancel is not None and cancel.is_set():
        raise Cancelled(f"{what} cancelled")


# ---------------------------------------------------------------------- shared downloads


@dataclass
class _Download:
    """One blob download in flight; other pulls of the same blob wait on it."""

    total: int
    completed: int = 0
    done: threading.Event = field(default_factory=threading.Event)
    error: BaseException | None = None


_inflight: dict[tuple[str, str], _Download] = {}
_inflight_lock = threading.Lock()


def _fetch_blob(store: ModelStore, client: RegistryClient, repo: str, desc: Descriptor,
                progress: ProgressCallback, cancel: threading.Event | None) -> None:
    """Make `desc` present in the store: skip, join a download in flight, or download it."""
    status = f"pulling {short(desc.digest)}"
    key = (str(store.models_dir.resolve()), desc.digest)
    while True:
        if store.blobs.exists(desc.digest):
            progress(ProgressEvent(status, desc.digest, desc.size, desc.size))
            return
        with _inflight_lock:
            download = _inflight.get(key)
            owner = download is None
            if owner:
                download = _inflight[key] = _Download(desc.size)
        assert download is not None
        if owner:
            try:
                _download(store, client, repo, desc, download, Throttle(progress, status, desc.digest, desc.size),
                          cancel)
            except BaseException as e:
                download.error = e
                raise
            finally:
                with _inflight_lock:
                    del _inflight[key]
                download.done.set()
            return
        # Another pull is fetching this blob: report its progress from our own thread.
        progress(ProgressEvent(status, desc.digest, desc.size, download.completed))
        while not download.done.wait(0.1):
            _check_cancel(cancel, "pull")
            progress(ProgressEvent(status, desc.digest, desc.size, download.completed))
        if download.error is None or isinstance(download.error, Cancelled):
            continue  # finished (the loop sees the blob), or its owner gave up: take over from its partial
        err = download.error
        if isinstance(err, MlxServeError):
            raise type(err)(err.message) from err
        raise Unavailable(f"download of {desc.digest} failed: {err}") from err


def _download(store: ModelStore, client: RegistryClient, repo: str, desc: Descriptor, download: _Download,
              report: Throttle, cancel: threading.Event | None) -> None:
    partial = partial_path(store, desc.digest)
    store.tmp_dir.mkdir(parents=True, exist_ok=True)
    with open(partial, "a+b") as f:
        # Another store process on the same folder would corrupt the partial file: take turns.
        fcntl.flock(f.fileno(), fcntl.LOCK_EX)
        if store.blobs.exists(desc.digest):  # it finished while we waited for the lock
            partial.unlink(missing_ok=True)
            return
        h = hashlib.sha256()
        offset = os.fstat(f.fileno()).st_size
        if offset > desc.size:
            f.truncate(0)
            offset = 0
        # Hash the bytes we already have (read locally, never fetched again).
        f.seek(0)
        remaining = offset
        while remaining:
            chunk = f.read(min(CHUNK, remaining))
            if not chunk:
                break
            h.update(chunk)
            remaining -= len(chunk)
        download.completed = offset
        report(offset, force=True)
        if offset < desc.size:
            h = _receive(client, repo, desc, f, h, offset, download, report, cancel)
        f.flush()
        os.fsync(f.fileno())
        got = "sha256:" + h.hexdigest()
        if got != desc.digest:
            partial.unlink(missing_ok=True)
            raise Internal(f"blob {desc.digest} from registry {client.host} failed verification (its bytes hash "
                           f"to {got}); nothing was stored")
        store.blobs.adopt(partial, desc.digest)
    report(desc.size, force=True)


def _write_and_hash(f: BinaryIO, h: "hashlib._Hash", chunk: bytes) -> None:
    f.write(chunk)
    h.update(chunk)


def _receive(client: RegistryClient, repo: str, desc: Descriptor, f: BinaryIO, h: "hashlib._Hash", offset: int,
             download: _Download, report: Throttle, cancel: threading.Event | None) -> "hashlib._Hash":
    """Append the blob's bytes from `offset` to `f` (restarting if the server ignores Range).

    Returns the hash state over the whole file.
    """
    resp = client.open_blob(repo, desc.digest, offset)
    with resp:
        if resp.status == 206:
            content_range = resp.headers.get("Content-Range", "")
            if not content_range.startswith(f"bytes {offset}-"):
                raise Unavailable(f"registry {client.host} answered a Range request for {desc.digest} with "
                                  f"{content_range!r}; remove the partial download and pull again")
        elif offset > 0:
            # 200: the server sent the whole blob (or 416: our partial is not a prefix); start over cleanly.
            f.truncate(0)
            h = hashlib.sha256()
            download.completed = 0
            if resp.status == 416:
                resp.close()
                return _receive(client, repo, desc, f, h, 0, download, report, cancel)
            offset = 0
        f.seek(0, os.SEEK_END)
        completed = offset
        # Receive the next chunk while a helper thread writes and hashes the previous one
        # (socket reads, file writes and sha256 all release the GIL).
        with ThreadPoolExecutor(1, thread_name_prefix="pull-write") as writer:
            pending: Future | None = None
            try:
                while True:
                    _check_cancel(cancel, "pull")
                    try:
                        chunk = resp.read(CHUNK)
                    except OSError as e:
                        raise Unavailable(f"download of {desc.digest} from {client.host} broke off after "
                                          f"{completed} bytes ({e}); pull again to resume") from e
                    if pending is not None:
                        pending.result()
                        pending = None
                        download.completed = completed
                        report(completed)
                    if not chunk:
                        break
                    completed += len(chunk)
                    if completed > desc.size:
                        raise Internal(f"registry {client.host} sent more than the {desc.size} bytes of {desc.digest}")
                    pending = writer.submit(_write_and_hash, f, h, chunk)
            finally:
                if pending is not None:
                    pending.result()  # never leave a write racing the caller's close
        if completed < desc.size:
            raise Unavailable(f"download of {desc.digest} from {client.host} ended after {completed} of "
                              f"{desc.size} bytes; pull again to resume")
    return h


# ---------------------------------------------------------------------- pull / push


def pull(store: ModelStore, ref: str, *, insecure: bool = False, progress: ProgressCallback = no_progress,
         cancel: threading.Event | None = None, credentials: Credentials | CredentialStore | None = None,
         name: str | None = None) -> ModelSummary:
    """Pull a model from a registry (`host[:port]/namespace/name[:tag|@sha256:...]`), or import an
    OCI image-layout tarball given by absolute path or http(s) URL.

    `credentials`: explicit ones for this host, a `CredentialStore`, or None for our config file
    plus Docker's config.json. `name` stores the model under another name (tarballs: instead of
    the name recorded in the package). Progress: "pulling manifest", "pulling <12 hex>" (digest,
    total, completed), "verifying sha256 digest", "writing manifest", "success".
    """
    if is_package_ref(ref):
        return unpack(store, ref, insecure=insecure, progress=progress, cancel=cancel, name=name)
    mname = parse_name(ref)
    host, repo = _registry_parts(mname, "pull")
    # A digest-pinned pull is stored under the name's tag (`latest` unless given).
    target = parse_name(name) if name else mname
    if name and target.digest:
        raise InvalidArgument(f"cannot store a pulled model under the digest-pinned name '{target}'")
    client = RegistryClient(host, insecure=insecure, credentials=resolve_credentials(host, credentials))
    where = f"{host}/{repo}:{mname.digest or mname.tag}"

    progress(ProgressEvent("pulling manifest"))
    data, _media_type, registry_digest = client.get_manifest(repo, mname.digest or mname.tag)
    digest = "sha256:" + hashlib.sha256(data).hexdigest()
    if mname.digest and digest != mname.digest:
        raise Internal(f"{where}: the registry sent a manifest whose digest is {digest}")
    if registry_digest and registry_digest.startswith("sha256:") and registry_digest != digest:
        raise Internal(f"{where}: the manifest's bytes hash to {digest}, the registry says {registry_digest}")
    manifest = model_manifest(data, where)

    seen: set[str] = set()
    for desc in [*manifest.layers, manifest.config]:
        if desc.digest not in seen:
            seen.add(desc.digest)
            _fetch_blob(store, client, repo, desc, progress, cancel)
    # Each blob was hashed as it arrived and adopted only if it matched.
    progress(ProgressEvent("verifying sha256 digest"))
    _check_cancel(cancel, "pull")
    progress(ProgressEvent("writing manifest"))
    summary = store.put_manifest(target.full, data)
    progress(ProgressEvent("success"))
    return summary


class _UploadReader:
    """A blob file opened for upload: reports bytes sent and stops when the push is cancelled."""

    def __init__(self, path: Path, report: Throttle, cancel: threading.Event | None) -> None:
        self._f = open(path, "rb")
        self._report, self._cancel, self._sent = report, cancel, 0

    def read(self, n: int = -1) -> bytes:
        _check_cancel(self._cancel, "push")
        chunk = self._f.read(n)
        self._sent += len(chunk)
        self._report(self._sent)
        return chunk

    def close(self) -> None:
        self._f.close()


def push(store: ModelStore, name: str, *, insecure: bool = False, progress: ProgressCallback = no_progress,
         cancel: threading.Event | None = None, credentials: Credentials | CredentialStore | None = None) -> None:
    """Push `name` to the registry its host part names: the blobs it lacks, then the manifest.

    Progress: "retrieving manifest", "pushing <12 hex>" (digest, total, completed),
    "pushing manifest", "success".
    """
    mname, data, manifest = store.get_manifest(name)
    host, repo = _registry_parts(mname, "push")
    client = RegistryClient(host, insecure=insecure, credentials=resolve_credentials(host, credentials))
    progress(ProgressEvent("retrieving manifest"))
    seen: set[str] = set()
    for desc in [*manifest.layers, manifest.config]:
        if desc.digest in seen:
            continue
        seen.add(desc.digest)
        _check_cancel(cancel, "push")
        report = Throttle(progress, f"pushing {short(desc.digest)}", desc.digest, desc.size)
        if not client.has_blob(repo, desc.digest):
            path = store.blobs.path(desc.digest)
            report(0, force=True)
            client.upload_blob(repo, desc.digest, desc.size, lambda p=path, r=report: _UploadReader(p, r, cancel))
        report(desc.size, force=True)
    _check_cancel(cancel, "push")
    progress(ProgressEvent("pushing manifest"))
    client.put_manifest(repo, mname.tag, data, OCI_MANIFEST)
    progress(ProgressEvent("success"))
