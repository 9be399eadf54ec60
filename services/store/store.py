"""ModelStore: the domain object behind the store service (no sockets, no gRPC).

Layout under `models_dir`:
    blobs/sha256-<hex>                           immutable, content-addressed
    manifests/<host>/<namespace>/<name>/<tag>    OCI image manifests
    views/<manifest-hex>/<title> -> ../../blobs/sha256-<hex>   what workers load
    views/<manifest-hex>/mlxserve-defaults.json      the config's system/parameters/messages
    tmp/                                         staging; emptied of our leftovers on start
                                                 (partial-* are resumable downloads: kept)
Writers (create, remove, copy, gc, view building) hold one lock, so a blob is never collected
while a create that is about to reference it is committing. Imports convert outside that lock,
inside `in_flight()`: a shared lock that tells `gc` some operation has staged files or blobs
not yet referenced by any manifest.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import shutil
import tempfile
import threading
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, BinaryIO, Iterator

from mlxserve import __version__
from mlxserve.services.common import logs
from mlxserve.services.common.errors import Internal, InvalidArgument, MlxServeError, NotFound

from .blobs import BlobStore, check_digest, digest_of_file, fsync_dir, write_atomic
from .format import ensure_format
from .manifest import (
    ANN_CONVERTER,
    ANN_CONVERTER_VERSION,
    ANN_CREATED,
    ANN_PARENT,
    ANN_QUANTIZATION,
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
from .recipes import CreateSpec, quantization
from .templates import capabilities, default_stops, pick_template

# The model's defaults (SYSTEM, PARAMETER, MESSAGE) as a file in its view, which the worker
# reads at load (services/worker/defaults.py); a regular file, as it derives from the config blob.
VIEW_DEFAULTS_FILE = "mlxserve-defaults.json"

_TMP_PREFIXES = ("create-", "view-", "trash-", ".blob-", ".write-")
PARTIAL_PREFIX = "partial-"  # resumable downloads (transfer.py); gc drops stale ones
PARTIAL_MAX_AGE_S = 3600.0
# An unreferenced blob younger than this may be an upload (`put_blob`) whose create has not
# arrived yet, so gc keeps it.
ORPHAN_MIN_AGE_S = 600.0


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
class CorruptBlob:
    digest: str              # "sha256:<hex>"
    models: list[str]        # display names of the models that use it (empty: unreferenced)


@dataclass(frozen=True)
class VerifyReport:
    checked: int                                                  # blobs re-hashed
    corrupt: list[CorruptBlob] = field(default_factory=list)      # content does not match the name
    missing: list[CorruptBlob] = field(default_factory=list)      # referenced but absent
    damaged_manifests: list[str] = field(default_factory=list)    # manifest paths that do not parse

    @property
    def ok(self) -> bool:
        return not (self.corrupt or self.missing or self.damaged_manifests)


@dataclass(frozen=True)
class GcReport:
    removed_blobs: list[str] = field(default_factory=list)     # digests
    freed_bytes: int = 0
    removed_partials: list[str] = field(default_factory=list)  # names under models/tmp


@dataclass(frozen=True)
class ResolvedModel:
    name: str          # display name
    digest: str        # manifest digest, hex
    view_path: Path    # directory of symlinks named by layer title -> blobs
    size: int
    capabilities: list[str] = field(default_factory=list)
    context_length: int = 0
    config: ModelConfig | None = None


@dataclass
class _Draft:
    """A model being created: staged files, layers reused from a base model, its config blob."""

    files: dict[str, tuple[Path, str | None]]  # title -> (staged path, digest if known)
    reuse: dict[str, Descriptor]               # title -> layer of the base model (blob already stored)
    config: ModelConfig
    annotations: dict[str, str]


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


def view_defaults(config: ModelConfig) -> bytes:
    """The view's defaults file: what the worker applies to every request for this model."""
    doc = {"system": config.system, "parameters": config.parameters, "messages": config.messages}
    return json.dumps(doc, indent=2, sort_keys=True, ensure_ascii=False).encode() + b"\n"


def _quoted(text: str) -> str:
    return f'"""{text}"""'


def modelfile_text(name: str, config: ModelConfig) -> str:
    """A Modelfile equivalent of a model, as `ollama show --modelfile` prints one."""
    lines = [
        '# Modelfile generated by "mlxctl show"',
        "# To build a new Modelfile based on this, replace FROM with:",
        f"# FROM {name}",
        "",
        f"FROM {name}",
    ]
    if config.template:
        lines.append(f"TEMPLATE {_quoted(config.template)}")
    if config.system:
        lines.append(f"SYSTEM {_quoted(config.system)}")
    for key, value in sorted(config.parameters.items()):
        for v in value if isinstance(value, list) else [value]:
            v = str(v).lower() if isinstance(v, bool) else v
            lines.append(f"PARAMETER {key} {v}")
    for m in config.messages:
        content = m.get("content", "")
        rendered = _quoted(content) if "\n" in content else content
        lines.append(f"MESSAGE {m.get('role')} {rendered}")
    if config.license:
        lines.append(f"LICENSE {_quoted(config.license)}")
    return "\n".join(lines) + "\n"


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
        self.models_dir.mkdir(parents=True, exist_ok=True)
        with self._locked():
            # Before anything is read or created: a newer store is refused untouched, an older one migrated.
            self.format = ensure_format(self.models_dir)
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
    def _nothing_in_flight(self) -> Iterator[bool]:
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
        with self._locked():
            for p in self.tmp_dir.iterdir():
                if p.name.startswith(_TMP_PREFIXES):
                    _remove_tree(p)

    # ------------------------------------------------------------------ create

    def create(self, name: str, spec: CreateSpec, progress: ProgressCallback = no_progress) -> ModelSummary:
        """Create `name` from `spec`'s source with its overrides; the last event is "success".

        Sources: a GGUF file or mlx-lm/HF folder (`from_path`), blobs uploaded with `put_blob`
        (`files`), or an existing model (`from_model`: same weight blobs, new config). A folder
        or float GGUF may be quantized on the way in (`quantize`). On any failure nothing is
        left behind: no new blobs, no manifest, no staging files.
        """
        mname = parse_name(name)
        if mname.digest:
            raise InvalidArgument(f"cannot create {name!r}: a digest-pinned name names an existing manifest")
        spec.validate()
        quant = quantization(spec.quantize, spec.group_size)
        source = spec.from_model or (str(spec.from_path) if spec.from_path else "uploaded files")
        self._log.info("create_started", model=mname.display, source=source, quantize=spec.quantize or "")
        with self.in_flight():
            staging = Path(tempfile.mkdtemp(dir=self.tmp_dir, prefix="create-"))
            try:
                if spec.from_model:
                    draft = self._draft_from_model(spec.from_model)
                elif spec.from_path:
                    draft = self._draft_from_path(Path(spec.from_path).expanduser(), staging / "import", progress)
                else:
                    draft = self._draft_from_files(spec.files, staging, progress)
                if quant:
                    draft = self._quantized(draft, quant, staging, progress)
                self._apply_overrides(draft, spec, staging / "overrides")
                summary = self._commit(mname, draft, progress)
            finally:
                _remove_tree(staging)
        self._log.info("create_finished", model=mname.display, digest=summary.digest)
        progress(ProgressEvent("success"))
        return summary

    def create_from_path(self, name: str, path: str | Path, progress: ProgressCallback = no_progress) -> ModelSummary:
        """Import a GGUF file or an mlx-lm/Hugging Face folder as `name` (see `create`)."""
        return self.create(name, CreateSpec(from_path=Path(path)), progress)

    def _draft_from_path(self, src: Path, out: Path, progress: ProgressCallback, label: str | None = None) -> _Draft:
        from .importers.gguf import import_gguf
        from .importers.hf import import_hf_folder

        label = label or src.name
        if not src.exists():
            raise InvalidArgument(f"source {label!r} does not exist")
        if src.is_file():
            with open(src, "rb") as f:
                magic = f.read(4)
            if magic != b"GGUF":
                raise InvalidArgument(f"source {label!r} is neither a GGUF file nor a model folder")
            importer = import_gguf
        elif src.is_dir():
            importer = import_hf_folder
        else:
            raise InvalidArgument(f"source {label!r} is neither a file nor a folder")
        out.mkdir(parents=True)
        result = importer(src, out, progress)
        return _Draft(files=dict(result.files), reuse={}, config=result.config, annotations={
            ANN_SOURCE: label, ANN_SOURCE_DIGEST: result.source_digest, ANN_CONVERTER: result.converter,
        })

    def _draft_from_files(self, files: dict[str, str], staging: Path, progress: ProgressCallback) -> _Draft:
        """Uploaded blobs (Ollama's /api/create `files`): one .gguf, or a model folder's files."""
        missing = sorted(f"{name} ({digest})" for name, digest in files.items() if not self.blobs.exists(digest))
        if missing:
            raise InvalidArgument(f"uploaded files are not in the store (upload them first): {', '.join(missing)}")
        ggufs = [name for name in files if name.lower().endswith(".gguf")]
        if ggufs and len(files) > 1:
            raise InvalidArgument(f"a GGUF upload must be the only file; got {', '.join(sorted(files))}")
        src_dir = staging / "uploaded"
        src_dir.mkdir()
        for name, digest in files.items():
            os.symlink(self.blobs.path(digest), src_dir / name)  # read in place: no copy of the upload
        src = src_dir / ggufs[0] if ggufs else src_dir
        label = ggufs[0] if ggufs else "uploaded files"
        return self._draft_from_path(src, staging / "import", progress, label=label)

    def _draft_from_model(self, base: str) -> _Draft:
        found = self._find(parse_name(base))
        manifest = Manifest.from_bytes(found.data)
        config = self._config(manifest)
        config.parent_model = found.name.display
        return _Draft(files={}, reuse={layer.title: layer for layer in manifest.layers}, config=config, annotations={
            ANN_SOURCE: found.name.display, ANN_SOURCE_DIGEST: found.digest,
            ANN_CONVERTER: f"mlxserve-derive/{__version__}", ANN_PARENT: f"{found.name.display}@{found.digest}",
        })

    def _draft_path(self, draft: _Draft, title: str) -> Path | None:
        if title in draft.files:
            return draft.files[title][0]
        if title in draft.reuse:
            return self.blobs.path(draft.reuse[title].digest)
        return None

    def _quantized(self, draft: _Draft, quant: tuple[int, int], staging: Path, progress: ProgressCallback) -> _Draft:
        from .quantize import quantize_folder

        bits, group_size = quant
        if "embedding" in draft.config.capabilities:
            raise InvalidArgument("quantizing embedding models is not supported")
        folder = staging / "to-quantize"
        folder.mkdir()
        for title in [*draft.files, *draft.reuse]:
            os.symlink(self._draft_path(draft, title), folder / title)
        out = staging / "quantized"
        quantize_folder(folder, out, bits, group_size, progress, source=draft.annotations.get(ANN_SOURCE, ""))
        draft.files = {p.name: (p, None) for p in sorted(out.iterdir()) if p.is_file()}
        draft.reuse = {}
        draft.config.quantization_level = f"Q{bits}"
        draft.annotations[ANN_QUANTIZATION] = f"affine bits={bits} group_size={group_size}"
        return draft

    def _apply_overrides(self, draft: _Draft, spec: CreateSpec, out: Path) -> None:
        """Apply template/system/parameters/license/messages; fill in a catalog template if none.

        A template that differs from the one the view carries is written into the view as a new
        tokenizer_config.json (`chat_template`) and chat_template.jinja, which is what mlx-lm's
        tokenizer (and so the worker) renders with.
        """
        cfg = draft.config
        embedding = "embedding" in cfg.capabilities
        tok_config = self._read_draft_json(draft, "tokenizer_config.json")
        template = cfg.template
        if spec.template is not None:
            template = spec.template
        elif not template and not embedding:
            tokenizer = self._draft_path(draft, "tokenizer.json")
            tokens = tokenizer.read_text(errors="replace") if tokenizer else ""
            picked = pick_template(cfg.architecture or cfg.family, tokens)
            if picked is not None:
                template = picked.template
        out.mkdir(parents=True, exist_ok=True)
        if template != cfg.template:
            self._write_template(draft, tok_config, template, out)
            cfg.template = template

        params = dict(cfg.parameters)
        if spec.template is not None and "stop" not in spec.parameters:
            params.pop("stop", None)  # the old template's stops do not fit the new one
        params.update(spec.parameters)
        if "stop" not in params and not embedding:
            eos = tok_config.get("eos_token")
            eos = eos.get("content") if isinstance(eos, dict) else eos
            stops = default_stops(template, eos if isinstance(eos, str) else None)
            if stops:
                params["stop"] = stops
        cfg.parameters = params
        if spec.system is not None:
            cfg.system = spec.system
        if spec.messages:
            cfg.messages = list(spec.messages)
        if spec.license is not None:
            cfg.license = spec.license
            for title in [t for t in (*draft.files, *draft.reuse) if t.startswith("LICENSE")]:
                draft.files.pop(title, None)
                draft.reuse.pop(title, None)
            if spec.license:
                (out / "LICENSE").write_text(spec.license)
                draft.files["LICENSE"] = (out / "LICENSE", None)
        cfg.capabilities = capabilities(template, embedding=embedding, vision="vision" in cfg.capabilities)

    def _read_draft_json(self, draft: _Draft, title: str) -> dict[str, Any]:
        path = self._draft_path(draft, title)
        if path is None:
            return {}
        try:
            data = json.loads(path.read_text())
        except (OSError, ValueError):
            return {}
        return data if isinstance(data, dict) else {}

    def _write_template(self, draft: _Draft, tok_config: dict[str, Any], template: str, out: Path) -> None:
        tok_config = dict(tok_config)
        if template:
            tok_config["chat_template"] = template
        else:
            tok_config.pop("chat_template", None)
        (out / "tokenizer_config.json").write_text(json.dumps(tok_config, indent=2, ensure_ascii=False) + "\n")
        for title in ("tokenizer_config.json", "chat_template.jinja", "chat_template.json"):
            draft.files.pop(title, None)
            draft.reuse.pop(title, None)
        draft.files["tokenizer_config.json"] = (out / "tokenizer_config.json", None)
        if template:
            (out / "chat_template.jinja").write_text(template)
            draft.files["chat_template.jinja"] = (out / "chat_template.jinja", None)

    def _commit(self, mname: ModelName, draft: _Draft, progress: ProgressCallback) -> ModelSummary:
        """Move staged files into blobs and write the manifest, all under the writer lock."""
        manifest_path = mname.manifest_path(self.models_dir)
        with self._locked():
            new_blobs: list[str] = []
            try:
                gone = sorted(t for t, d in draft.reuse.items() if not self.blobs.exists(d.digest))
                if gone:
                    raise NotFound(f"the base model's blobs for {', '.join(gone)} were removed during create")
                layers: list[Descriptor] = list(draft.reuse.values())
                for title, (staged, digest) in draft.files.items():
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
                config_bytes = draft.config.to_bytes()
                config_digest, created = self.blobs.put_bytes(config_bytes)
                if created:
                    new_blobs.append(config_digest)
                manifest = Manifest(
                    config=Descriptor(CONFIG_MEDIA_TYPE, config_digest, len(config_bytes)),
                    layers=layers,
                    annotations={
                        **draft.annotations,
                        ANN_CREATED: _rfc3339(datetime.now(timezone.utc).timestamp()),
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
        summary = self._summary(found.name, found.path, found.data, manifest, config)
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
        found = self._find(parse_name(name))
        manifest = Manifest.from_bytes(found.data)
        config = self._config(manifest)
        hexdigest = found.digest.removeprefix("sha256:")
        view = self.views_dir / hexdigest
        defaults = view_defaults(config)
        if not self._view_ok(view, manifest, defaults):
            with self._locked():
                if not self._view_ok(view, manifest, defaults):
                    self._build_view(view, manifest, found.name, defaults)
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

    # ------------------------------------------------------------------ copy, verify, gc

    def copy(self, src: str, dst: str) -> ModelSummary:
        """Make `dst` a second name for `src`'s manifest (same bytes, no blob is copied)."""
        dname = parse_name(dst)
        if dname.digest:
            raise InvalidArgument(f"cannot copy to {dst!r}: a digest-pinned name names an existing manifest")
        sname = parse_name(src)
        path = dname.manifest_path(self.models_dir)
        with self._locked():
            found = self._find(sname)
            manifest = Manifest.from_bytes(found.data)
            if path != found.path:
                old = self._read_manifest_quietly(path)
                path.parent.mkdir(parents=True, exist_ok=True)
                write_atomic(path, found.data, self.tmp_dir)
                if old is not None and old.digests() != manifest.digests():
                    self._collect(old.digests())
            self._log.info("model_copied", source=found.name.display, destination=dname.display)
            return self._summary(dname, path, found.data, manifest)

    def verify(self, progress: ProgressCallback = no_progress) -> VerifyReport:
        """Re-hash every blob; report corrupt and missing ones with the models they break.

        Reads only (no lock held), so serving and creating go on meanwhile.
        """
        users: dict[str, list[str]] = {}
        damaged: list[str] = []
        for path in self._manifest_paths():
            try:
                mname = name_from_manifest_path(self.models_dir, path)
                manifest = Manifest.from_bytes(path.read_bytes())
            except (MlxServeError, OSError):
                damaged.append(str(path.relative_to(self.manifests_dir)))
                continue
            for digest in manifest.digests():
                users.setdefault(digest, []).append(mname.display)
        present = sorted(self.blobs.all_digests())
        total = sum(self._size_or_zero(d) for d in present)
        done = 0
        corrupt: list[CorruptBlob] = []
        for digest in present:
            status = f"verifying {digest.removeprefix('sha256:')[:12]}"

            def hashed(n: int) -> None:
                nonlocal done
                done += n
                progress(ProgressEvent(status, digest=digest, total=total, completed=done))

            try:
                actual = digest_of_file(self.blobs.path(digest), hashed)
            except FileNotFoundError:
                continue  # removed meanwhile (rm or gc): not corruption
            if actual != digest:
                corrupt.append(CorruptBlob(digest, sorted(users.get(digest, []))))
                self._log.warning("blob_corrupt", digest=digest, actual=actual, models=users.get(digest, []))
        missing = [CorruptBlob(d, sorted(m)) for d, m in sorted(users.items()) if not self.blobs.exists(d)]
        progress(ProgressEvent("success"))
        return VerifyReport(checked=len(present), corrupt=corrupt, missing=missing, damaged_manifests=damaged)

    def gc(self, *, orphan_min_age_s: float = ORPHAN_MIN_AGE_S,
           partial_max_age_s: float = PARTIAL_MAX_AGE_S) -> GcReport:
        """Remove unreferenced blobs, stale partial downloads, staging leftovers and stale views.

        Holds the writer lock, so no create/pull commits meanwhile. While any `in_flight`
        operation runs, unreferenced blobs are kept, and so are staging folders younger than
        `partial_max_age_s`; otherwise blobs and staging leftovers go once older than
        `orphan_min_age_s`. Partial downloads go when untouched for `partial_max_age_s`.
        """
        now = datetime.now(timezone.utc).timestamp()
        removed: list[str] = []
        partials: list[str] = []
        freed = 0
        with self._locked(), self._nothing_in_flight() as idle:
            referenced: set[str] = set()
            manifest_digests: set[str] = set()
            readable = True
            for path in self._manifest_paths():
                try:
                    data = path.read_bytes()
                    referenced |= Manifest.from_bytes(data).digests()
                    manifest_digests.add(hashlib.sha256(data).hexdigest())
                except (Internal, OSError) as e:
                    readable = False  # what it uses is unknown: deleting any blob could break it
                    self._log.warning("gc_manifest_unreadable", path=str(path), error=str(e))
            if readable and idle:
                for digest in sorted(self.blobs.all_digests() - referenced):
                    path = self.blobs.path(digest)
                    try:
                        st = path.stat()
                    except FileNotFoundError:
                        continue
                    if now - st.st_mtime < orphan_min_age_s:  # adopt's rename keeps the write time
                        continue
                    if self.blobs.remove(digest):
                        removed.append(digest)
                        freed += st.st_size
            for entry in sorted(self.tmp_dir.iterdir()):
                age = now - _newest_mtime(entry)
                if entry.name.startswith(PARTIAL_PREFIX):
                    if age < partial_max_age_s:
                        continue
                elif age < (orphan_min_age_s if idle else partial_max_age_s):
                    continue  # may belong to an operation in flight (or one that forgot to say so)
                freed += _tree_size(entry)
                _remove_tree(entry)
                partials.append(entry.name)
            if readable:
                for view in sorted(self.views_dir.iterdir()):
                    if view.name not in manifest_digests:
                        _remove_tree(view)
        self._log.info("gc_done", removed_blobs=len(removed), removed_partials=len(partials), freed_bytes=freed)
        return GcReport(removed_blobs=removed, freed_bytes=freed, removed_partials=partials)

    def _size_or_zero(self, digest: str) -> int:
        try:
            return self.blobs.path(digest).stat().st_size
        except OSError:
            return 0

    # ------------------------------------------------------------------ remove

    def remove(self, name: str) -> list[str]:
        """Delete a model's manifest, then the blobs no other manifest uses; returns those digests."""
        mname = parse_name(name)  # refuse a hostile name before anything touches the disk
        with self._locked():
            found = self._find(mname)
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
                                 config.quantization_level, config.parent_model),
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

    def _view_ok(self, view: Path, manifest: Manifest, defaults: bytes) -> bool:
        if not view.is_dir():
            return False
        expected = {layer.title: layer.digest for layer in manifest.layers}
        try:
            names = {p.name for p in view.iterdir()}
        except OSError:
            return False
        # A view built before the defaults file existed lacks it, and so is rebuilt.
        if names != set(expected) | {VIEW_DEFAULTS_FILE}:
            return False
        for title, digest in expected.items():
            link = view / title
            if not link.is_symlink() or link.resolve() != self.blobs.path(digest).resolve() or not link.exists():
                return False
        defaults_file = view / VIEW_DEFAULTS_FILE
        try:
            return not defaults_file.is_symlink() and defaults_file.read_bytes() == defaults
        except OSError:
            return False

    def _build_view(self, view: Path, manifest: Manifest, mname: ModelName, defaults: bytes) -> None:
        missing = [layer.title for layer in manifest.layers if not self.blobs.exists(layer.digest)]
        if missing:
            raise Internal(f"model '{mname.display}' is damaged: blobs for {', '.join(missing)} are missing; remove and create it again")
        if any(layer.title == VIEW_DEFAULTS_FILE for layer in manifest.layers):
            # Only a manifest from elsewhere can have one (create never makes that layer).
            raise Internal(f"model '{mname.display}' has a layer named {VIEW_DEFAULTS_FILE}, which mlxserve reserves for its own use")
        if view.exists():
            _remove_tree(view)
        tmp = Path(tempfile.mkdtemp(dir=self.tmp_dir, prefix="view-"))
        try:
            for layer in manifest.layers:
                # tmp/<x>/ and views/<x>/ sit at the same depth, so one relative link works in both.
                target = os.path.relpath(self.blobs.path(layer.digest), view)
                os.symlink(target, tmp / layer.title)
            defaults_file = tmp / VIEW_DEFAULTS_FILE
            defaults_file.write_bytes(defaults)
            os.chmod(defaults_file, 0o444)
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


def _newest_mtime(path: Path) -> float:
    """Latest modification time of a file or of anything in a folder (0 if it vanished)."""
    newest = 0.0
    try:
        st = path.lstat()
    except OSError:
        return newest
    newest = st.st_mtime
    if path.is_dir() and not path.is_symlink():
        for dirpath, dirnames, filenames in os.walk(path):
            for name in dirnames + filenames:
                with contextlib.suppress(OSError):
                    st = os.lstat(os.path.join(dirpath, name))
                    newest = max(newest, st.st_mtime)
    return newest


def _tree_size(path: Path) -> int:
    if path.is_symlink() or path.is_file():
        with contextlib.suppress(OSError):
            return path.lstat().st_size
        return 0
    total = 0
    for dirpath, _, filenames in os.walk(path):
        for name in filenames:
            with contextlib.suppress(OSError):
                total += os.lstat(os.path.join(dirpath, name)).st_size
    return total


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
