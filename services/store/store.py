"""ModelStore: the domain object behind the store service (no sockets, no gRPC).

Layout under `models_dir`:
    blobs/sha256-<hex>                           immutable, content-addressed
    manifests/<host>/<namespace>/<name>/<tag>    OCI image manifests
    views/<manifest-hex>/<title> -> ../../blobs/sha256-<hex>   what workers load
    tmp/                                         staging; emptied of our leftovers on start
Writers (create, remove, view building) hold one lock, so a blob is never collected while a
create that is about to reference it is committing. Imports convert outside the lock.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import os
import shutil
import tempfile
import threading
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Iterator

from mlxserve import __version__
from mlxserve.services.common import logs
from mlxserve.services.common.errors import Internal, InvalidArgument, MlxServeError, NotFound

from .blobs import BlobStore, digest_of_file, fsync_dir, write_atomic
from .importers import ImportResult
from .manifest import (
    ANN_CONVERTER,
    ANN_CONVERTER_VERSION,
    ANN_CREATED,
    ANN_SOURCE,
    ANN_SOURCE_DIGEST,
    CONFIG_MEDIA_TYPE,
    Descriptor,
    Manifest,
    ModelConfig,
    media_type_for,
)
from .names import ModelName, manifests_root, name_from_manifest_path, parse_name
from .progress import ProgressCallback, ProgressEvent, no_progress

_TMP_PREFIXES = ("create-", "view-", "trash-", ".blob-", ".write-")


@dataclass(frozen=True)
class ModelDetails:
    format: str
    family: str
    families: list[str]
    parameter_size: str
    quantization_level: str
    parent_model: str = ""


@dataclass(frozen=True)
class ModelSummary:
    name: str          # display name, e.g. "smollm2:latest"
    digest: str        # manifest digest, hex without "sha256:"
    size: int          # bytes of all layers
    modified_at: str   # RFC 3339
    details: ModelDetails


@dataclass(frozen=True)
class ModelShow:
    summary: ModelSummary
    config: ModelConfig
    parameters_text: str  # Ollama's "key value" lines
    manifest_json: str


@dataclass(frozen=True)
class ResolvedModel:
    name: str          # display name
    digest: str        # manifest digest, hex
    view_path: Path    # directory of symlinks named by layer title -> blobs
    size: int
    capabilities: list[str] = field(default_factory=list)
    context_length: int = 0
    config: ModelConfig | None = None


@dataclass(frozen=True)
class _Found:
    name: ModelName
    path: Path
    data: bytes
    digest: str  # "sha256:<hex>"


def _rfc3339(ts: float) -> str:
    return datetime.fromtimestamp(ts, timezone.utc).isoformat(timespec="seconds").replace("+00:00", "Z")


def parameters_text(parameters: dict[str, Any]) -> str:
    """Render default parameters the way Ollama's show does: one `key value` line each."""
    lines = []
    for key, value in sorted(parameters.items()):
        for v in value if isinstance(value, list) else [value]:
            rendered = f'"{v}"' if isinstance(v, str) else str(v).lower() if isinstance(v, bool) else str(v)
            lines.append(f"{key:<30} {rendered}")
    return "\n".join(lines)


class ModelStore:
    """Create, list, show, remove and resolve models in one models directory."""

    def __init__(self, models_dir: Path | str) -> None:
        self.models_dir = Path(models_dir)
        self.blobs = BlobStore(self.models_dir)
        self.tmp_dir = self.models_dir / "tmp"
        self.views_dir = self.models_dir / "views"
        self.manifests_dir = manifests_root(self.models_dir)
        self._lock = threading.RLock()
        self._log = logs.get_logger(component="store")
        for d in (self.blobs.root, self.manifests_dir, self.tmp_dir, self.views_dir):
            d.mkdir(parents=True, exist_ok=True)

    # ------------------------------------------------------------------ locking

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        """Exclusive writer access: a thread lock plus a file lock (for a second process)."""
        with self._lock:
            with open(self.models_dir / ".lock", "a+") as lock_file:
                fcntl.flock(lock_file.fileno(), fcntl.LOCK_EX)
                try:
                    yield
                finally:
                    fcntl.flock(lock_file.fileno(), fcntl.LOCK_UN)

    def clean_tmp(self) -> None:
        """Delete staging leftovers of a previous run (call once at service start)."""
        with self._locked():
            for p in self.tmp_dir.iterdir():
                if p.name.startswith(_TMP_PREFIXES):
                    _remove_tree(p)

    # ------------------------------------------------------------------ create

    def create_from_path(self, name: str, path: str | Path, progress: ProgressCallback = no_progress) -> ModelSummary:
        """Import a GGUF file or an mlx-lm/Hugging Face folder as `name`; the last event is "success".

        On any failure nothing is left behind: no new blobs, no manifest, no staging files.
        """
        from .importers.gguf import import_gguf
        from .importers.hf import import_hf_folder

        mname = parse_name(name)
        if mname.digest:
            raise InvalidArgument(f"cannot create {name!r}: a digest-pinned name names an existing manifest")
        src = Path(path).expanduser()
        if not src.exists():
            raise InvalidArgument(f"source {str(path)!r} does not exist")
        if src.is_file():
            with open(src, "rb") as f:
                magic = f.read(4)
            if magic != b"GGUF":
                raise InvalidArgument(f"source {src.name!r} is neither a GGUF file nor a model folder")
            importer = import_gguf
        elif src.is_dir():
            importer = import_hf_folder
        else:
            raise InvalidArgument(f"source {str(path)!r} is neither a file nor a folder")

        self._log.info("create_started", model=mname.display, source=str(src))
        staging = Path(tempfile.mkdtemp(dir=self.tmp_dir, prefix="create-"))
        try:
            result = importer(src, staging, progress)
            summary = self._commit(mname, src, result, progress)
        finally:
            _remove_tree(staging)
        self._log.info("create_finished", model=mname.display, digest=summary.digest)
        progress(ProgressEvent("success"))
        return summary

    def _commit(self, mname: ModelName, src: Path, result: ImportResult, progress: ProgressCallback) -> ModelSummary:
        """Move staged files into blobs and write the manifest, all under the writer lock."""
        manifest_path = mname.manifest_path(self.models_dir)
        with self._locked():
            new_blobs: list[str] = []
            try:
                layers: list[Descriptor] = []
                for title, (staged, digest) in result.files.items():
                    media_type = media_type_for(title)
                    if media_type is None:
                        raise Internal(f"importer produced a file the store does not know: {title}")
                    digest = digest or digest_of_file(staged)
                    size = staged.stat().st_size
                    progress(ProgressEvent(f"writing {title}", digest=digest, total=size, completed=size))
                    if self.blobs.adopt(staged, digest):
                        new_blobs.append(digest)
                    layers.append(Descriptor(media_type, digest, size, title))
                # Weights first (as Ollama orders its layers), then the rest by title.
                layers.sort(key=lambda d: (not d.title.endswith(".safetensors"), d.title))
                config_bytes = result.config.to_bytes()
                config_digest, created = self.blobs.put_bytes(config_bytes)
                if created:
                    new_blobs.append(config_digest)
                manifest = Manifest(
                    config=Descriptor(CONFIG_MEDIA_TYPE, config_digest, len(config_bytes)),
                    layers=layers,
                    annotations={
                        ANN_CREATED: _rfc3339(datetime.now(timezone.utc).timestamp()),
                        ANN_SOURCE: src.name,
                        ANN_SOURCE_DIGEST: result.source_digest,
                        ANN_CONVERTER: result.converter,
                        ANN_CONVERTER_VERSION: __version__,
                    },
                )
                data = manifest.to_bytes()
                progress(ProgressEvent("writing manifest"))
                old = self._read_manifest_quietly(manifest_path)
                manifest_path.parent.mkdir(parents=True, exist_ok=True)
                write_atomic(manifest_path, data, self.tmp_dir)
            except BaseException:
                for digest in new_blobs:
                    self.blobs.remove(digest)
                self._prune_empty_dirs(manifest_path.parent)
                raise
            if old is not None and old.digests() != manifest.digests():
                self._collect(old.digests())  # the name moved on: drop what only the old version used
        return self._summary(mname, manifest_path, data, manifest)

    # ------------------------------------------------------------------ read

    def list(self) -> list[ModelSummary]:
        """Every model in the store, most recently modified first."""
        out = []
        for path in self._manifest_paths():
            try:
                mname = name_from_manifest_path(self.models_dir, path)
                data = path.read_bytes()
                out.append(self._summary(mname, path, data, Manifest.from_bytes(data)))
            except (MlxServeError, OSError) as e:
                self._log.warning("manifest_skipped", path=str(path), error=str(e))
        out.sort(key=lambda s: (s.modified_at, s.name), reverse=True)
        return out

    def show(self, name: str) -> ModelShow:
        """Everything `show` reports about one model."""
        found = self._find(parse_name(name))
        manifest = Manifest.from_bytes(found.data)
        config = self._config(manifest)
        return ModelShow(
            summary=self._summary(found.name, found.path, found.data, manifest, config),
            config=config,
            parameters_text=parameters_text(config.parameters),
            manifest_json=found.data.decode(),
        )

    def resolve(self, name: str) -> ResolvedModel:
        """The view directory a worker loads `name` from (built once per manifest digest)."""
        found = self._find(parse_name(name))
        manifest = Manifest.from_bytes(found.data)
        config = self._config(manifest)
        hexdigest = found.digest.removeprefix("sha256:")
        view = self.views_dir / hexdigest
        if not self._view_ok(view, manifest):
            with self._locked():
                if not self._view_ok(view, manifest):
                    self._build_view(view, manifest, found.name)
        return ResolvedModel(
            name=found.name.display, digest=hexdigest, view_path=view, size=manifest.size,
            capabilities=list(config.capabilities), context_length=config.context_length, config=config,
        )

    # ------------------------------------------------------------------ manifests as bytes (pull, push, pack)

    def get_manifest(self, name: str) -> tuple[ModelName, bytes, Manifest]:
        """The stored manifest of `name`: (its canonical name, its exact bytes, parsed)."""
        found = self._find(parse_name(name))
        return found.name, found.data, Manifest.from_bytes(found.data)

    def put_manifest(self, name: str, data: bytes) -> ModelSummary:
        """Make `name` point at the manifest `data`, whose blobs must already be in the store.

        Used by pull and by unpacking an image layout: blobs arrive first (verified), and the
        manifest is written last and atomically, so nothing partial ever becomes visible.
        """
        mname = parse_name(name)
        if mname.digest:
            raise InvalidArgument(f"cannot tag {name!r}: a digest-pinned name names an existing manifest")
        manifest = Manifest.from_bytes(data)
        manifest_path = mname.manifest_path(self.models_dir)
        with self._locked():
            missing = sorted(d for d in manifest.digests() if not self.blobs.exists(d))
            if missing:
                raise InvalidArgument(f"manifest for '{mname.display}' references blobs not in the store: {', '.join(missing)}")
            old = self._read_manifest_quietly(manifest_path)
            manifest_path.parent.mkdir(parents=True, exist_ok=True)
            write_atomic(manifest_path, data, self.tmp_dir)
            if old is not None and old.digests() != manifest.digests():
                self._collect(old.digests())
        return self._summary(mname, manifest_path, data, manifest)

    # ------------------------------------------------------------------ remove

    def remove(self, name: str) -> list[str]:
        """Delete a model's manifest, then the blobs no other manifest uses; returns those digests."""
        with self._locked():
            found = self._find(parse_name(name))
            try:
                digests = Manifest.from_bytes(found.data).digests()
            except Internal:
                digests = set()  # a damaged manifest still goes; its blobs wait for a later collect
            found.path.unlink()
            fsync_dir(found.path.parent)
            self._prune_empty_dirs(found.path.parent)
            self._log.info("model_removed", model=found.name.display, digest=found.digest)
            removed = self._collect(digests)
            if not any(self._digest_of(p) == found.digest for p in self._manifest_paths()):
                _remove_tree(self.views_dir / found.digest.removeprefix("sha256:"))
            return sorted(removed)

    # ------------------------------------------------------------------ internals

    def _manifest_paths(self) -> list[Path]:
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

    def _find(self, mname: ModelName) -> _Found:
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
                return _Found(found_name, path, data, digest)
        raise NotFound(f"model '{mname}' not found")

    def _read_manifest_quietly(self, path: Path) -> Manifest | None:
        try:
            return Manifest.from_bytes(path.read_bytes())
        except (OSError, Internal):
            return None

    def _config(self, manifest: Manifest) -> ModelConfig:
        try:
            return ModelConfig.from_bytes(self.blobs.read(manifest.config.digest))
        except (ValueError, TypeError) as e:
            raise Internal(f"damaged model config blob {manifest.config.digest}: {e}") from e

    def _summary(self, mname: ModelName, path: Path, data: bytes, manifest: Manifest,
                 config: ModelConfig | None = None) -> ModelSummary:
        config = config or self._config(manifest)
        return ModelSummary(
            name=mname.display,
            digest=hashlib.sha256(data).hexdigest(),
            size=manifest.size,
            modified_at=_rfc3339(path.stat().st_mtime),
            details=ModelDetails(config.format, config.family, list(config.families), config.parameter_size,
                                 config.quantization_level),
        )

    def _collect(self, candidates: set[str]) -> set[str]:
        """Delete the blobs among `candidates` that no remaining manifest references."""
        referenced: set[str] = set()
        for path in self._manifest_paths():
            try:
                referenced |= Manifest.from_bytes(path.read_bytes()).digests()
            except (Internal, OSError) as e:
                # Without knowing what that manifest uses, deleting anything could break it.
                self._log.warning("collect_skipped", path=str(path), error=str(e))
                return set()
        removed = {d for d in candidates - referenced if self.blobs.remove(d)}
        return removed

    def _view_ok(self, view: Path, manifest: Manifest) -> bool:
        if not view.is_dir():
            return False
        expected = {layer.title: layer.digest for layer in manifest.layers}
        try:
            names = {p.name for p in view.iterdir()}
        except OSError:
            return False
        if names != set(expected):
            return False
        for title, digest in expected.items():
            link = view / title
            if not link.is_symlink() or link.resolve() != self.blobs.path(digest).resolve() or not link.exists():
                return False
        return True

    def _build_view(self, view: Path, manifest: Manifest, mname: ModelName) -> None:
        missing = [layer.title for layer in manifest.layers if not self.blobs.exists(layer.digest)]
        if missing:
            raise Internal(f"model '{mname.display}' is damaged: blobs for {', '.join(missing)} are missing; remove and create it again")
        if view.exists():
            _remove_tree(view)
        tmp = Path(tempfile.mkdtemp(dir=self.tmp_dir, prefix="view-"))
        try:
            for layer in manifest.layers:
                # tmp/<x>/ and views/<x>/ sit at the same depth, so one relative link works in both.
                target = os.path.relpath(self.blobs.path(layer.digest), view)
                os.symlink(target, tmp / layer.title)
            os.chmod(tmp, 0o555)  # read-only: a worker must never write into the store
            os.replace(tmp, view)
            fsync_dir(self.views_dir)
        except BaseException:
            _remove_tree(tmp)
            raise

    def _prune_empty_dirs(self, folder: Path) -> None:
        root = self.manifests_dir.resolve()
        folder = folder.resolve()
        while folder != root and folder.is_relative_to(root):
            try:
                folder.rmdir()
            except OSError:
                return
            folder = folder.parent


def _remove_tree(path: Path) -> None:
    """Remove a file or a folder, including read-only view folders."""
    if path.is_symlink() or path.is_file():
        path.unlink(missing_ok=True)
        return
    if not path.exists():
        return
    for dirpath, _, _ in os.walk(path):
        with contextlib.suppress(OSError):
            os.chmod(dirpath, 0o755)
    shutil.rmtree(path, ignore_errors=True)
