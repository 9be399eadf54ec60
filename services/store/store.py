"""ModelStore: the domain object behind the store service (no sockets, no gRPC).

Layout under `models_dir`:
    blobs/sha256-<hex>                           immutable, content-addressed
    manifests/<host>/<namespace>/<name>/<tag>    OCI image manifests
    views/<manifest-hex>/<title> -> ../../blobs/sha256-<hex>   what workers load (views.py)
    views/<manifest-hex>/mlxserve-defaults.json      the config's system/parameters/messages
    tmp/                                         staging; emptied of our leftovers on start
                                                 (partial-* are resumable downloads: kept)
This module finds, lists, shows, resolves, tags and removes models. Creating one is create.py,
verify and gc are maintenance.py, Modelfile rendering is modelfile.py, and each source format
has its importer under importers/.

Writers (create, remove, copy, gc, view building) hold one lock, so a blob is never collected
while a create that is about to reference it is committing. Imports convert outside that lock,
inside `in_flight()`: a shared lock that tells `gc` some operation has staged files or blobs
not yet referenced by any manifest.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import os
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO, Iterator

from mlxserve.services.common import logs
from mlxserve.services.common.errors import Internal, InvalidArgument, MlxServeError, NotFound
from mlxserve.services.common.times import rfc3339

from .blobs import BlobStore, check_digest, fsync_dir, remove_tree, write_atomic
from .format import ensure_format
from .integrity import check_sizes, verified_size
from .maintenance import ORPHAN_MIN_AGE_S, PARTIAL_MAX_AGE_S, GcReport, VerifyReport
from .manifest import Manifest, ModelConfig
from .modelfile import modelfile_text, parameters_text
from .names import ModelName, manifests_root, name_from_manifest_path, parse_name
from .progress import ProgressCallback, no_progress
from .recipes import CreateSpec
from .store_types import Found, ModelDetails, ModelSummary
from .views import VIEW_DEFAULTS_FILE, build_view, view_defaults, view_ok

__all__ = ["ModelStore", "ModelSummary", "ModelDetails", "ModelShow", "ResolvedModel", "VIEW_DEFAULTS_FILE"]

_TMP_PREFIXES = ("create-", "view-", "trash-", ".blob-", ".write-")


@dataclass(frozen=True)
class ModelShow:
    """Everything Ollama's /api/show returns, plus the raw manifest."""

    summary: ModelSummary
    config: ModelConfig
    parameters_text: str  # Ollama's "key value" lines (its `parameters` field)
    manifest_json: str
    details: ModelDetails
    model_info: dict[str, Any]       # "general.architecture", "<arch>.context_length", ...
    parameters: dict[str, Any]       # the same defaults as a dict (stop is a list)
    template: str
    system: str
    license: str
    capabilities: list[str]
    messages: list[dict[str, str]]
    modelfile: str                   # a Modelfile that recreates the model from its name
    modified_at: str                 # RFC 3339


@dataclass(frozen=True)
class ResolvedModel:
    name: str          # display name
    digest: str        # manifest digest, hex
    view_path: Path    # directory of symlinks named by layer title -> blobs
    size: int
    capabilities: list[str] = field(default_factory=list)
    context_length: int = 0
    config: ModelConfig | None = None


class ModelStore:
    """Create, list, show, remove and resolve models in one models directory."""

    def __init__(self, models_dir: Path | str) -> None:
        self.models_dir = Path(models_dir)
        self.blobs = BlobStore(self.models_dir)
        self.tmp_dir = self.models_dir / "tmp"
        self.views_dir = self.models_dir / "views"
        self.manifests_dir = manifests_root(self.models_dir)
        self._lock = threading.RLock()
        self.log = logs.get_logger(component="store")
        self.models_dir.mkdir(parents=True, exist_ok=True)
        with self.locked():
            # Before anything is read or created: a newer store is refused untouched, an older one migrated.
            self.format = ensure_format(self.models_dir)
        for d in (self.blobs.root, self.manifests_dir, self.tmp_dir, self.views_dir):
            d.mkdir(parents=True, exist_ok=True)

    # ------------------------------------------------------------------ locking

    @contextlib.contextmanager
    def locked(self) -> Iterator[None]:
        """Exclusive writer access: a thread lock plus a file lock (for a second process)."""
        with self._lock:
            with open(self.models_dir / ".lock", "a+") as lock_file:
                fcntl.flock(lock_file.fileno(), fcntl.LOCK_EX)
                try:
                    yield
                finally:
                    fcntl.flock(lock_file.fileno(), fcntl.LOCK_UN)

    @contextlib.contextmanager
    def in_flight(self) -> Iterator[None]:
        """Mark an operation that stages files or adopts blobs before its manifest exists.

        Pull, create and blob uploads run inside it; while any does (in any process), `gc`
        leaves unreferenced blobs and staging folders alone. Shared: many may run at once.
        """
        # The lock is an flock on the tmp folder itself: no lock file to leave behind.
        self.tmp_dir.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.tmp_dir, os.O_RDONLY)
        try:
            fcntl.flock(fd, fcntl.LOCK_SH)
            yield
        finally:
            os.close(fd)  # releases the lock

    @contextlib.contextmanager
    def nothing_in_flight(self) -> Iterator[bool]:
        """Yield True if no `in_flight` operation runs now (and none can start until exit)."""
        fd = os.open(self.tmp_dir, os.O_RDONLY)
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                yield False
                return
            yield True
        finally:
            os.close(fd)

    def clean_tmp(self) -> None:
        """Delete staging leftovers of a previous run (call once at service start)."""
        with self.locked():
            for p in self.tmp_dir.iterdir():
                if p.name.startswith(_TMP_PREFIXES):
                    remove_tree(p)

    # ------------------------------------------------------------------ create, verify, gc (create.py, maintenance.py)

    def create(self, name: str, spec: CreateSpec, progress: ProgressCallback = no_progress) -> ModelSummary:
        """Create `name` from `spec`'s source with its overrides; the last event is "success".

        Sources: a GGUF file or mlx-lm/HF folder (`from_path`), blobs uploaded with `put_blob`
        (`files`), or an existing model (`from_model`: same weight blobs, new config). See
        create.py; on any failure nothing is left behind.
        """
        from .create import CreatePipeline

        return CreatePipeline(self).create(name, spec, progress)

    def create_from_path(self, name: str, path: str | Path, progress: ProgressCallback = no_progress) -> ModelSummary:
        """Import a GGUF file or an mlx-lm/Hugging Face folder as `name` (see `create`)."""
        return self.create(name, CreateSpec(from_path=Path(path)), progress)

    def verify(self, progress: ProgressCallback = no_progress) -> VerifyReport:
        """Re-hash every blob; report corrupt and missing ones with the models they break."""
        from .maintenance import verify

        return verify(self, progress)

    def gc(self, *, orphan_min_age_s: float = ORPHAN_MIN_AGE_S,
           partial_max_age_s: float = PARTIAL_MAX_AGE_S) -> GcReport:
        """Remove unreferenced blobs, stale partial downloads, staging leftovers and stale views."""
        from .maintenance import gc

        return gc(self, orphan_min_age_s=orphan_min_age_s, partial_max_age_s=partial_max_age_s)

    # ------------------------------------------------------------------ read

    def list(self) -> list[ModelSummary]:
        """Every model in the store, most recently modified first."""
        out = []
        for path in self.manifest_paths():
            try:
                mname = name_from_manifest_path(self.models_dir, path)
                data = path.read_bytes()
                out.append(self.summary(mname, path, data, Manifest.from_bytes(data)))
            except (MlxServeError, OSError) as e:
                self.log.warning("manifest_skipped", path=str(path), error=str(e))
        out.sort(key=lambda s: (s.modified_at, s.name), reverse=True)
        return out

    def summary_of(self, name: str) -> ModelSummary:
        """What `list` reports for one model."""
        found = self.find(parse_name(name))
        return self.summary(found.name, found.path, found.data, Manifest.from_bytes(found.data))

    def show(self, name: str) -> ModelShow:
        """Everything `show` reports about one model."""
        found = self.find(parse_name(name))
        manifest = Manifest.from_bytes(found.data)
        config = self.config_of(manifest)
        summary = self.summary(found.name, found.path, found.data, manifest, config)
        info = dict(config.model_info)
        arch = config.architecture or config.family
        info.setdefault("general.architecture", arch)
        info.setdefault("general.parameter_count", config.parameter_count)
        if arch and config.context_length:
            info.setdefault(f"{arch}.context_length", config.context_length)
        return ModelShow(
            summary=summary,
            config=config,
            parameters_text=parameters_text(config.parameters),
            manifest_json=found.data.decode(),
            details=summary.details,
            model_info=info,
            parameters=dict(config.parameters),
            template=config.template,
            system=config.system,
            license=config.license,
            capabilities=list(config.capabilities),
            messages=[dict(m) for m in config.messages],
            modelfile=modelfile_text(found.name.display, config),
            modified_at=summary.modified_at,
        )

    def resolve(self, name: str) -> ResolvedModel:
        """The view directory a worker loads `name` from (built once per manifest digest)."""
        found = self.find(parse_name(name))
        manifest = Manifest.from_bytes(found.data)
        config = self.config_of(manifest)
        hexdigest = found.digest.removeprefix("sha256:")
        view = self.views_dir / hexdigest
        defaults = view_defaults(config)
        if not view_ok(view, manifest, defaults, self.blobs):
            with self.locked():
                if not view_ok(view, manifest, defaults, self.blobs):
                    build_view(view, manifest, found.name.display, defaults, self.blobs, self.tmp_dir)
        return ResolvedModel(
            name=found.name.display, digest=hexdigest, view_path=view, size=verified_size(manifest, self.blobs),
            capabilities=list(config.capabilities), context_length=config.context_length, config=config,
        )

    # ------------------------------------------------------------------ manifests as bytes (pull, push, pack)

    def get_manifest(self, name: str) -> tuple[ModelName, bytes, Manifest]:
        """The stored manifest of `name`: (its canonical name, its exact bytes, parsed)."""
        found = self.find(parse_name(name))
        return found.name, found.data, Manifest.from_bytes(found.data)

    def put_manifest(self, name: str, data: bytes) -> ModelSummary:
        """Make `name` point at the manifest `data`, whose blobs must already be in the store.

        Used by pull and by unpacking an image layout: blobs arrive first (verified), and the
        manifest is written last and atomically, so nothing partial ever becomes visible.
        """
        mname = parse_name(name)
        if mname.digest:
            raise InvalidArgument(f"cannot tag {name!r}: a digest-pinned name names an existing manifest")
        try:
            manifest = Manifest.from_bytes(data)
        except Internal as e:  # the bytes came from a registry or a package: the input is bad, not the store
            raise InvalidArgument(f"manifest for '{mname.display}': {e.message}") from None
        manifest_path = mname.manifest_path(self.models_dir)
        with self.locked():
            missing = sorted(d for d in manifest.digests() if not self.blobs.exists(d))
            if missing:
                raise InvalidArgument(f"manifest for '{mname.display}' references blobs not in the store: {', '.join(missing)}")
            check_sizes(manifest, self.blobs, f"manifest for '{mname.display}'")
            old = self.manifest_at(manifest_path)
            manifest_path.parent.mkdir(parents=True, exist_ok=True)
            write_atomic(manifest_path, data, self.tmp_dir)
            if old is not None and old.digests() != manifest.digests():
                self.collect(old.digests())
        return self.summary(mname, manifest_path, data, manifest)

    # ------------------------------------------------------------------ blobs (uploads)

    def has_blob(self, digest: str) -> bool:
        """Whether the store holds the blob `digest` ("sha256:<hex>"; malformed -> InvalidArgument)."""
        return self.blobs.exists(check_digest(digest))

    def put_blob(self, digest: str, stream: BinaryIO) -> bool:
        """Store the bytes of `stream` as blob `digest`; True if newly stored.

        The bytes are hashed while staged; a mismatch raises InvalidArgument and stores nothing.
        A blob already present is not read again (as Ollama's POST /api/blobs does).
        """
        check_digest(digest)
        if self.blobs.exists(digest):
            return False
        with self.in_flight():
            staged, actual, _ = self.blobs.stage_copy(stream)
            if actual != digest:
                staged.unlink(missing_ok=True)
                raise InvalidArgument(f"digest mismatch: the uploaded bytes hash to {actual}, not {digest}")
            return self.blobs.adopt(staged, digest)

    # ------------------------------------------------------------------ copy, remove

    def copy(self, src: str, dst: str) -> ModelSummary:
        """Make `dst` a second name for `src`'s manifest (same bytes, no blob is copied)."""
        dname = parse_name(dst)
        if dname.digest:
            raise InvalidArgument(f"cannot copy to {dst!r}: a digest-pinned name names an existing manifest")
        sname = parse_name(src)
        path = dname.manifest_path(self.models_dir)
        with self.locked():
            found = self.find(sname)
            manifest = Manifest.from_bytes(found.data)
            check_sizes(manifest, self.blobs, f"cannot copy '{found.name.display}'")  # `verify` names it too
            if path != found.path:
                old = self.manifest_at(path)
                path.parent.mkdir(parents=True, exist_ok=True)
                write_atomic(path, found.data, self.tmp_dir)
                if old is not None and old.digests() != manifest.digests():
                    self.collect(old.digests())
            self.log.info("model_copied", source=found.name.display, destination=dname.display)
            return self.summary(dname, path, found.data, manifest)

    def remove(self, name: str) -> list[str]:
        """Delete a model's manifest, then the blobs no other manifest uses; returns those digests."""
        mname = parse_name(name)  # refuse a hostile name before anything touches the disk
        with self.locked():
            found = self.find(mname)
            try:
                digests = Manifest.from_bytes(found.data).digests()
            except Internal:
                digests = set()  # a damaged manifest still goes; its blobs wait for a later collect
            found.path.unlink()
            fsync_dir(found.path.parent)
            self.prune_empty_dirs(found.path.parent)
            self.log.info("model_removed", model=found.name.display, digest=found.digest)
            removed = self.collect(digests)
            if not any(self._digest_of(p) == found.digest for p in self.manifest_paths()):
                remove_tree(self.views_dir / found.digest.removeprefix("sha256:"))
            return sorted(removed)

    # ------------------------------------------------------------------ used by create.py and maintenance.py

    def manifest_paths(self) -> list[Path]:
        root = self.manifests_dir
        if not root.is_dir():
            return []
        return sorted(p for p in root.glob("*/*/*/*") if p.is_file() and not p.name.startswith("."))

    @staticmethod
    def _digest_of(path: Path) -> str | None:
        try:
            return "sha256:" + hashlib.sha256(path.read_bytes()).hexdigest()
        except OSError:
            return None

    def find(self, mname: ModelName) -> Found:
        if mname.digest and not mname.tag_given:
            # name@sha256:... matches any tag of that name whose manifest has this digest.
            folder = mname.manifest_path(self.models_dir).parent
            candidates = sorted(p for p in folder.iterdir() if p.is_file()) if folder.is_dir() else []
        else:
            candidates = [mname.manifest_path(self.models_dir)]
        for path in candidates:
            try:
                data = path.read_bytes()
            except FileNotFoundError:
                continue
            digest = "sha256:" + hashlib.sha256(data).hexdigest()
            if mname.digest is None or digest == mname.digest:
                found_name = name_from_manifest_path(self.models_dir, path)
                return Found(found_name, path, data, digest)
        raise NotFound(f"model '{mname}' not found")

    def manifest_at(self, path: Path) -> Manifest | None:
        try:
            return Manifest.from_bytes(path.read_bytes())
        except (OSError, Internal):
            return None

    def config_of(self, manifest: Manifest) -> ModelConfig:
        try:
            return ModelConfig.from_bytes(self.blobs.read(manifest.config.digest))
        except (ValueError, TypeError, RecursionError) as e:
            raise Internal(f"damaged model config blob {manifest.config.digest}: {e}") from e

    def summary(self, mname: ModelName, path: Path, data: bytes, manifest: Manifest,
                 config: ModelConfig | None = None) -> ModelSummary:
        config = config or self.config_of(manifest)
        return ModelSummary(
            name=mname.display,
            digest=hashlib.sha256(data).hexdigest(),
            size=verified_size(manifest, self.blobs),
            modified_at=rfc3339(path.stat().st_mtime),
            details=ModelDetails(config.format, config.family, list(config.families), config.parameter_size,
                                 config.quantization_level, config.parent_model),
        )

    def collect(self, candidates: set[str]) -> set[str]:
        """Delete the blobs among `candidates` that no remaining manifest references."""
        referenced: set[str] = set()
        for path in self.manifest_paths():
            try:
                referenced |= Manifest.from_bytes(path.read_bytes()).digests()
            except (Internal, OSError) as e:
                # Without knowing what that manifest uses, deleting anything could break it.
                self.log.warning("collect_skipped", path=str(path), error=str(e))
                return set()
        removed = {d for d in candidates - referenced if self.blobs.remove(d)}
        return removed

    def prune_empty_dirs(self, folder: Path) -> None:
        root = self.manifests_dir.resolve()
        folder = folder.resolve()
        while folder != root and folder.is_relative_to(root):
            try:
                folder.rmdir()
            except OSError:
                return
            folder = folder.parent
