"""The create pipeline: a source (file, folder, uploads, another model) becomes a stored model.

draft (an importer converts the source into staged view files, or a base model lends its
layers) -> optional quantization -> overrides (template, system, parameters, license, messages)
-> commit (staged files adopted as blobs, config blob, manifest written last and atomically).
On any failure nothing is left behind: no new blobs, no manifest, no staging files.
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from mlxserve import __version__
from mlxserve.services.common.errors import Internal, InvalidArgument, NotFound
from mlxserve.services.common.placement import parse_placement
from mlxserve.services.common.times import rfc3339

from .blobs import BlobStore, digest_of_file, remove_tree, write_atomic
from .integrity import check_sizes
from .gotemplate import bos_token_added, is_go_template, jinja_syntax_error, to_jinja, tool_parser_for
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
from .names import ModelName, parse_name
from .progress import ProgressCallback, ProgressEvent, no_progress
from .recipes import RUNTIME_PARAMETERS, CreateSpec, quantization
from .store_types import Found, ModelSummary
from .templates import capabilities, default_stops, pick_template

if TYPE_CHECKING:
    import structlog


class CreateTarget(Protocol):
    """What a create needs of the store (`ModelStore` is one); named here so create.py need not import store.py."""

    models_dir: Path
    tmp_dir: Path
    blobs: BlobStore
    log: structlog.stdlib.BoundLogger

    def locked(self) -> contextlib.AbstractContextManager[None]: ...
    def in_flight(self) -> contextlib.AbstractContextManager[None]: ...
    def find(self, mname: ModelName) -> Found: ...
    def manifest_at(self, path: Path) -> Manifest | None: ...
    def config_of(self, manifest: Manifest) -> ModelConfig: ...
    def summary(self, mname: ModelName, path: Path, data: bytes, manifest: Manifest,
                config: ModelConfig | None = None) -> ModelSummary: ...
    def collect(self, candidates: set[str]) -> set[str]: ...
    def prune_empty_dirs(self, folder: Path) -> None: ...


@dataclass
class Draft:
    """A model being created: staged files, layers reused from a base model, its config blob."""

    files: dict[str, tuple[Path, str | None]]  # title -> (staged path, digest if known)
    reuse: dict[str, Descriptor]               # title -> layer of the base model (blob already stored)
    config: ModelConfig
    annotations: dict[str, str]


class CreatePipeline:
    """Runs one `create` against a store (see `ModelStore.create`)."""

    def __init__(self, store: CreateTarget) -> None:
        self.store = store

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
        # A GGUF keeps its own quantization ("auto") unless asked for floats ("none"); a quantized
        # one is not quantized again (`_quantized` refuses), a float one may be.
        gguf_mode = "none" if (spec.quantize or "").strip().lower() == "none" else "auto"
        source = spec.from_model or (str(spec.from_path) if spec.from_path else "uploaded files")
        self.store.log.info("create_started", model=mname.display, source=source, quantize=spec.quantize or "")
        with self.store.in_flight():
            staging = Path(tempfile.mkdtemp(dir=self.store.tmp_dir, prefix="create-"))
            try:
                if spec.from_model:
                    draft = self._draft_from_model(spec.from_model)
                elif spec.from_path:
                    draft = self._draft_from_path(Path(spec.from_path).expanduser(), staging / "import", progress,
                                                  gguf_mode=gguf_mode, source_digest=spec.source_digest,
                                                  known=spec.source_digests)
                else:
                    draft = self._draft_from_files(spec.files, staging, progress, gguf_mode=gguf_mode)
                if quant:
                    draft = self._quantized(draft, quant, staging, progress)
                draft.annotations.update(spec.annotations)
                self._apply_overrides(draft, spec, staging / "overrides")
                if unused := draft.config.model_info.get("mlxserve.parameters_not_used"):
                    progress(ProgressEvent(f"keeping parameters mlxserve does not use: {unused}"))
                summary = self._commit(mname, draft, progress)
            finally:
                remove_tree(staging)
        self.store.log.info("create_finished", model=mname.display, digest=summary.digest)
        progress(ProgressEvent("success"))
        return summary

    def _draft_from_path(self, src: Path, out: Path, progress: ProgressCallback, label: str | None = None,
                         *, gguf_mode: str = "auto", source_digest: str | None = None,
                         known: dict[str, str] | None = None) -> Draft:
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
            out.mkdir(parents=True)
            result = import_gguf(src, out, progress, quantize=gguf_mode, source_digest=source_digest)
        elif src.is_dir():
            out.mkdir(parents=True)
            result = import_hf_folder(src, out, progress, known=known)
        else:
            raise InvalidArgument(f"source {label!r} is neither a file nor a folder")
        return Draft(files=dict(result.files), reuse={}, config=result.config, annotations={
            **result.annotations,
            ANN_SOURCE: label, ANN_SOURCE_DIGEST: result.source_digest, ANN_CONVERTER: result.converter,
        })

    def _draft_from_files(self, files: dict[str, str], staging: Path, progress: ProgressCallback,
                          *, gguf_mode: str = "auto") -> Draft:
        """Uploaded blobs (Ollama's /api/create `files`): one .gguf, or a model folder's files."""
        missing = sorted(f"{name} ({digest})" for name, digest in files.items() if not self.store.blobs.exists(digest))
        if missing:
            raise InvalidArgument(f"uploaded files are not in the store (upload them first): {', '.join(missing)}")
        ggufs = [name for name in files if name.lower().endswith(".gguf")]
        if ggufs and len(files) > 1:
            raise InvalidArgument(f"a GGUF upload must be the only file; got {', '.join(sorted(files))}")
        src_dir = staging / "uploaded"
        src_dir.mkdir()
        for name, digest in files.items():
            os.symlink(self.store.blobs.path(digest), src_dir / name)  # read in place: no copy of the upload
        src = src_dir / ggufs[0] if ggufs else src_dir
        label = ggufs[0] if ggufs else "uploaded files"
        # The uploads are verified blobs already: a folder's files are linked, a GGUF not hashed again.
        return self._draft_from_path(src, staging / "import", progress, label=label, gguf_mode=gguf_mode,
                                     source_digest=files[ggufs[0]] if ggufs else None, known=dict(files))

    def _draft_from_model(self, base: str) -> Draft:
        found = self.store.find(parse_name(base))
        manifest = Manifest.from_bytes(found.data)
        config = self.store.config_of(manifest)
        config.parent_model = found.name.display
        return Draft(files={}, reuse={layer.title: layer for layer in manifest.layers}, config=config, annotations={
            ANN_SOURCE: found.name.display, ANN_SOURCE_DIGEST: found.digest,
            ANN_CONVERTER: f"mlxserve-derive/{__version__}", ANN_PARENT: f"{found.name.display}@{found.digest}",
        })

    def _draft_path(self, draft: Draft, title: str) -> Path | None:
        if title in draft.files:
            return draft.files[title][0]
        if title in draft.reuse:
            return self.store.blobs.path(draft.reuse[title].digest)
        return None

    def _quantized(self, draft: Draft, quant: tuple[int, int], staging: Path, progress: ProgressCallback) -> Draft:
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

    def _apply_overrides(self, draft: Draft, spec: CreateSpec, out: Path) -> None:
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
            template, note, parser = self._given_template(draft, tok_config, spec.template)
            cfg.model_info["mlxserve.chat_template"] = note
            if parser:  # mlx-lm reads it from tokenizer_config.json; it cannot infer it from the converted text
                tok_config = {**tok_config, "tool_parser_type": parser}
        elif not template and not embedding:
            tokenizer = self._draft_path(draft, "tokenizer.json")
            tokens = tokenizer.read_text(errors="replace") if tokenizer else ""
            picked = pick_template(cfg.architecture or cfg.family, tokens)
            if picked is not None:
                template = picked.template
                cfg.model_info["mlxserve.chat_template"] = f"catalog: {picked.name} (the source has none)"
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
        unused = sorted(k for k in params if k not in RUNTIME_PARAMETERS)
        if unused:
            cfg.model_info["mlxserve.parameters_not_used"] = ", ".join(unused)
        else:
            cfg.model_info.pop("mlxserve.parameters_not_used", None)
        cfg.model_info.update(spec.model_info)
        if spec.system is not None:
            cfg.system = spec.system
        if spec.messages:
            cfg.messages = list(spec.messages)
        if spec.placement is not None:
            cfg.placement = dict(spec.placement)
        if cfg.placement:
            cfg.model_info["mlxserve.placement"] = parse_placement(cfg.placement).describe()
        else:
            cfg.model_info.pop("mlxserve.placement", None)
        if spec.license is not None:
            cfg.license = spec.license
            for title in [t for t in (*draft.files, *draft.reuse) if t.startswith("LICENSE")]:
                draft.files.pop(title, None)
                draft.reuse.pop(title, None)
            if spec.license:
                (out / "LICENSE").write_text(spec.license)
                draft.files["LICENSE"] = (out / "LICENSE", None)
        cfg.capabilities = capabilities(template, embedding=embedding, vision="vision" in cfg.capabilities)

    def _given_template(self, draft: Draft, tok_config: dict[str, Any], template: str) -> tuple[str, str, str | None]:
        """For a TEMPLATE given at create: the Jinja template to store, what `show` says of it, and
        the mlx-lm tool parser its tool calls need (None: leave the source's).

        An Ollama Go template is converted to Jinja here, or refused naming what cannot be
        converted; a Jinja template must compile. Either way a template that cannot render is
        never stored (it would fail every chat instead).
        """
        if not template:
            return "", "none", None
        if is_go_template(template):
            tokenizer = self._draft_path(draft, "tokenizer.json")
            bos = bos_token_added(tok_config, tokenizer.read_text(errors="replace") if tokenizer else "")
            note = "given at create (TEMPLATE): an Ollama Go template, converted to Jinja"
            return to_jinja(template, bos_token=bos), note, tool_parser_for(template)
        error = jinja_syntax_error(template)
        if error:
            raise InvalidArgument(f"the template is neither a Jinja chat template ({error}) nor an Ollama Go template")
        return template, "given at create (TEMPLATE)", None

    def _read_draft_json(self, draft: Draft, title: str) -> dict[str, Any]:
        path = self._draft_path(draft, title)
        if path is None:
            return {}
        try:
            data = json.loads(path.read_text())
        except (OSError, ValueError):
            return {}
        return data if isinstance(data, dict) else {}

    def _write_template(self, draft: Draft, tok_config: dict[str, Any], template: str, out: Path) -> None:
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

    def _commit(self, mname: ModelName, draft: Draft, progress: ProgressCallback) -> ModelSummary:
        """Move staged files into blobs and write the manifest, all under the writer lock."""
        manifest_path = mname.manifest_path(self.store.models_dir)
        with self.store.locked():
            new_blobs: list[str] = []
            try:
                gone = sorted(t for t, d in draft.reuse.items() if not self.store.blobs.exists(d.digest))
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
                    if self.store.blobs.adopt(staged, digest):
                        new_blobs.append(digest)
                    layers.append(Descriptor(media_type, digest, size, title))
                # Weights first (as Ollama orders its layers), then the rest by title.
                layers.sort(key=lambda d: (not d.title.endswith(".safetensors"), d.title))
                config_bytes = draft.config.to_bytes()
                config_digest, created = self.store.blobs.put_bytes(config_bytes)
                if created:
                    new_blobs.append(config_digest)
                manifest = Manifest(
                    config=Descriptor(CONFIG_MEDIA_TYPE, config_digest, len(config_bytes)),
                    layers=layers,
                    annotations={
                        **draft.annotations,
                        ANN_CREATED: rfc3339(datetime.now(timezone.utc).timestamp()),
                        ANN_CONVERTER_VERSION: __version__,
                    },
                )
                # A layer lent by a base model carries the size its manifest claimed: check it too.
                check_sizes(manifest, self.store.blobs, f"create '{mname.display}'")
                data = manifest.to_bytes()
                progress(ProgressEvent("writing manifest"))
                old = self.store.manifest_at(manifest_path)
                manifest_path.parent.mkdir(parents=True, exist_ok=True)
                write_atomic(manifest_path, data, self.store.tmp_dir)
            except BaseException:
                for digest in new_blobs:
                    self.store.blobs.remove(digest)
                self.store.prune_empty_dirs(manifest_path.parent)
                raise
            if old is not None and old.digests() != manifest.digests():
                self.store.collect(old.digests())  # the name moved on: drop what only the old version used
        return self.store.summary(mname, manifest_path, data, manifest)
