"""Pull and push models: one entry point per verb, whatever the source.

`pull(name)` goes by what the name says:
- a path or URL of an OCI image-layout tarball: importers/oci_layout.py unpacks it;
- `hf.co/ORG/REPO[:TAG]`: the Hugging Face hub (hf_hub.py): an MLX folder as it is, a GGUF repo
  by quant, converted;
- any other name: a registry speaking distribution v2, the name's host, or for a bare name
  (Ollama's library: `gemma3:270m`) the `default_registry` setting. The manifest says what it
  is: an mlxserve model (an OCI artifact) is stored as it is, an Ollama image (Docker schema-2,
  Ollama's layer media types) is converted (ollama_registry.py).

Every source downloads through downloads.py (resumable, verified before anything is visible) and
writes the model's manifest last. Progress follows Ollama's pull statuses: "pulling manifest",
"pulling <12 hex>" (digest, total, completed), "verifying sha256 digest", "writing manifest",
"success".

Push: HEAD each blob, upload only the missing ones, then PUT the manifest.
"""

from __future__ import annotations

import hashlib
import threading
from pathlib import Path

from mlxserve.services.common.errors import Cancelled, Internal, InvalidArgument, NotFound, Unavailable

from .credentials import CredentialStore, Credentials, resolve_credentials
from .downloads import BlobResponse, fetch_blob, partial_path
from .importers.oci_layout import is_package_ref, unpack
from .layout import Throttle, model_manifest, pack, short
from .manifest import ANN_SOURCE_REF
from .names import DEFAULT_HOST, HF_HOST, ModelName, parse_name
from .progress import ProgressCallback, ProgressEvent, no_progress
from .registry import OCI_MANIFEST, RegistryClient
from .remotes import OLLAMA_REGISTRY, Remotes  # noqa: F401 - Remotes is part of this module's API
from .store import ModelStore, ModelSummary

__all__ = ["Remotes", "pull", "push", "pack", "partial_path", "registry_for"]



def registry_for(mname: ModelName, remotes: Remotes, insecure: bool) -> tuple[str, bool]:
    """(host[:port], insecure) to reach the registry of `mname`.

    A bare name's registry is `default_registry`; written there as `http://...` it is plain http
    by explicit choice (a local mirror), so it needs no --insecure.
    """
    if mname.host != DEFAULT_HOST:
        return mname.host, insecure
    endpoint = remotes.default_registry.strip().rstrip("/")
    if endpoint.startswith("http://"):
        return endpoint.removeprefix("http://"), True
    return endpoint.removeprefix("https://"), insecure


class RegistryBlobs:
    """A registry repository as a BlobSource (downloads.py)."""

    def __init__(self, client: RegistryClient, repo: str) -> None:
        self.client, self.repo = client, repo
        self.where = f"registry {client.host}"

    def open(self, digest: str, offset: int) -> BlobResponse:
        return self.client.open_blob(self.repo, digest, offset)


def _check_cancel(cancel: threading.Event | None, what: str) -> None:
    if cancel is not None and cancel.is_set():
        raise Cancelled(f"{what} cancelled")


# ---------------------------------------------------------------------- pull


def pull(store: ModelStore, ref: str, *, insecure: bool = False, progress: ProgressCallback = no_progress,
         cancel: threading.Event | None = None, credentials: Credentials | CredentialStore | None = None,
         name: str | None = None, remotes: Remotes | None = None) -> ModelSummary:
    """Pull `ref` (a model name, or a tarball's absolute path or URL) into `store`; see the module.

    `credentials`: explicit ones for this host, a `CredentialStore`, or None for our config file
    plus Docker's config.json. `name` stores the model under another name (tarballs: instead of
    the name recorded in the package). `remotes`: the store's settings for bare and hf.co names.
    """
    remotes = remotes or Remotes()
    if is_package_ref(ref):
        return unpack(store, ref, insecure=insecure, progress=progress, cancel=cancel, name=name,
                      guard=remotes.guard())
    mname = parse_name(ref)
    # A digest-pinned pull is stored under the name's tag (`latest` unless given).
    target = parse_name(name) if name else mname
    if name and target.digest:
        raise InvalidArgument(f"cannot store a pulled model under the digest-pinned name '{target}'")
    if mname.host == HF_HOST:
        from . import hf_hub

        return hf_hub.pull(store, ref, target, remotes=remotes, progress=progress, cancel=cancel)
    host, insecure = registry_for(mname, remotes, insecure)
    repo = f"{mname.namespace}/{mname.name}"
    client = RegistryClient(host, insecure=insecure, credentials=resolve_credentials(host, credentials),
                            guard=remotes.guard())
    reference = mname.digest or mname.tag
    where = f"{host}/{repo}:{reference}"

    local = _local_annotations(store, target) if not mname.digest else None
    if local is not None and mname.host == DEFAULT_HOST and ANN_SOURCE_REF not in local:
        # A bare name made here (create, import), never pulled: Ollama's library has nothing for
        # it to be brought up to date with, and overwriting it with a namesake would lose it.
        progress(ProgressEvent(f"{target.display} was created here, not pulled: nothing to pull"))
        progress(ProgressEvent("success"))
        return store.summary_of(target.full)
    progress(ProgressEvent("pulling manifest"))
    try:
        data, media_type, registry_digest = client.get_manifest(repo, reference)
    except Unavailable as e:
        if local is None:
            raise
        # Scripts pull to make sure a model is there: it is. Say that it could not be checked.
        progress(ProgressEvent(f"could not reach {host} to check for a newer {target.display} ({e.message}); "
                               "keeping the local copy"))
        progress(ProgressEvent("success"))
        return store.summary_of(target.full)
    digest = "sha256:" + hashlib.sha256(data).hexdigest()
    if mname.digest and digest != mname.digest:
        raise Internal(f"{where}: the registry sent a manifest whose digest is {digest}")
    if registry_digest and registry_digest.startswith("sha256:") and registry_digest != digest:
        raise Internal(f"{where}: the manifest's bytes hash to {digest}, the registry says {registry_digest}")

    from . import ollama_registry

    if ollama_registry.is_ollama_image(data, media_type):
        return ollama_registry.pull_image(store, RegistryBlobs(client, repo), data, digest, target,
                                          where=where, progress=progress, cancel=cancel)
    manifest = model_manifest(data, where)
    seen: set[str] = set()
    for desc in [*manifest.layers, manifest.config]:
        if desc.digest not in seen:
            seen.add(desc.digest)
            fetch_blob(store, RegistryBlobs(client, repo), desc, progress, cancel)
    # Each blob was hashed as it arrived and adopted only if it matched.
    progress(ProgressEvent("verifying sha256 digest"))
    _check_cancel(cancel, "pull")
    progress(ProgressEvent("writing manifest"))
    summary = store.put_manifest(target.full, data)
    progress(ProgressEvent("success"))
    return summary


def _local_annotations(store: ModelStore, name: ModelName) -> dict[str, str] | None:
    """The manifest annotations of `name` if the store holds it, else None."""
    try:
        _, _, manifest = store.get_manifest(name.full)
    except NotFound:
        return None
    return dict(manifest.annotations)


# ---------------------------------------------------------------------- push


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
         cancel: threading.Event | None = None, credentials: Credentials | CredentialStore | None = None,
         remotes: Remotes | None = None) -> None:
    """Push `name` to the registry its host part names (a bare name: `default_registry`): the
    blobs it lacks, then the manifest.

    Progress: "retrieving manifest", "pushing <12 hex>" (digest, total, completed),
    "pushing manifest", "success".
    """
    remotes = remotes or Remotes()
    mname, data, manifest = store.get_manifest(name)
    if mname.host == HF_HOST:
        raise InvalidArgument(f"'{mname.display}' names the Hugging Face hub, which mlxserve does not push to; "
                              "copy it to a registry name first (mlxctl cp NAME host/namespace/name:tag)")
    host, insecure = registry_for(mname, remotes, insecure)
    if host == OLLAMA_REGISTRY:
        raise InvalidArgument(
            f"'{mname.display}' would go to Ollama's registry, which holds Ollama's own format, not mlxserve "
            "models; push to an OCI registry: mlxctl cp NAME host[:port]/namespace/name:tag, then push that")
    repo = f"{mname.namespace}/{mname.name}"
    client = RegistryClient(host, insecure=insecure, credentials=resolve_credentials(host, credentials),
                            guard=remotes.guard())
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


