"""Pull from Ollama's registry (or any registry holding Ollama's image format): convert on arrival.

An Ollama image is a Docker schema-2 manifest whose config blob is Ollama's ConfigV2 and whose
layers carry Ollama's media types: the GGUF (`.model`) and small layers (`.template`, `.params`,
`.system`, `.messages`, `.license`) that become the model's defaults, mapped exactly as
`mlxctl import-ollama` maps them (importers/ollama.py). `pull_image`:

1. refuses, from the manifest alone and before anything is downloaded, what mlxserve cannot
   serve: a vision projector, an adapter, a media type it does not know;
2. does nothing when the name already holds the conversion of this very manifest (the
   provenance annotations ANN_SOURCE_REF and ANN_SOURCE_MANIFEST say so): scripts pull to make
   sure; a tag that moved converts again;
3. downloads the small layers into memory (bounded, size- and sha256-checked) and the GGUF as a
   blob (downloads.fetch_blob: resumable, verified before it is adopted);
4. converts the GGUF with the create pipeline under the target name (all-or-nothing: the
   manifest is written last), then removes the GGUF blob, which no manifest references. An
   interrupted conversion keeps it, so the next pull does not download it again (gc collects it
   otherwise); a GGUF the importer refuses is removed at once.

Progress reads as Ollama's: "pulling <12 hex>" per layer (total, completed), "verifying sha256
digest", the conversion's own statuses ("converting ...", "writing ..."), "writing manifest",
"success" (once, last).
"""

from __future__ import annotations

import hashlib
import http.client
import json
import os
import tempfile
import threading
from pathlib import Path
from typing import Any

from mlxserve.services.common.errors import Cancelled, Internal, InvalidArgument, NotFound, Unavailable, Unsupported

from .blobs import remove_tree
from .connections import describe_failure
from .downloads import BlobSource, fetch_blob, source_blob
from .importers.ollama import (
    IGNORED_LAYERS,
    MEDIA_MODEL,
    SMALL_LAYERS,
    OllamaModel,
    apply_config,
    apply_layer,
    canonical,
    parse_manifest,
    read_gguf_header,
    refusal,
    small_layer_too_big,
)
from .layout import short
from .manifest import ANN_SOURCE, ANN_SOURCE_MANIFEST, ANN_SOURCE_REF, Descriptor, Manifest
from .names import ModelName, parse_name
from .progress import ProgressCallback, ProgressEvent, no_progress
from .registry import DOCKER_MANIFEST
from .store import ModelStore, ModelSummary

__all__ = ["OLLAMA_MEDIA_PREFIX", "is_ollama_image", "pull_image"]

OLLAMA_MEDIA_PREFIX = "application/vnd.ollama.image."

# A GGUF blob being converted, by (store folder, digest): how many pulls of this process use it.
# The last one to finish removes it; an earlier one would pull it from under the others.


def is_ollama_image(data: bytes, media_type: str) -> bool:
    """Whether a registry manifest is an Ollama image: Docker schema-2 whose layers carry
    Ollama's media types (`application/vnd.ollama.image.model`, `.template`, `.params`...)."""
    try:
        doc = json.loads(data)
    except ValueError:
        return False
    if not isinstance(doc, dict) or (doc.get("mediaType") or media_type) != DOCKER_MANIFEST:
        return False
    layers = doc.get("layers")
    return isinstance(layers, list) and any(
        isinstance(layer, dict) and str(layer.get("mediaType", "")).startswith(OLLAMA_MEDIA_PREFIX) for layer in layers)


def pull_image(store: ModelStore, source: BlobSource, data: bytes, digest: str, target: ModelName, *,
               where: str, progress: ProgressCallback = no_progress,
               cancel: threading.Event | None = None) -> ModelSummary:
    """Convert the Ollama image whose manifest is `data` (sha256 `digest`, fetched from `where`,
    "host/namespace/name:tag") into a model stored as `target`; see the module.

    Raises Unsupported for what mlxserve cannot serve (named), InvalidArgument for a damaged
    image, Internal for a layer whose bytes do not match the manifest; nothing is left behind.
    """
    name = parse_name(target.full)  # a digest-pinned pull is stored under the name's tag
    m, layers, config = _describe(data, digest, where, name)
    # The small layers, then the config blob (Ollama's order), all before the GGUF: a damaged one
    # fails the pull before anything big is downloaded.
    small = [d for d in layers if d["mediaType"] in SMALL_LAYERS] + ([config] if config else [])
    model_layer = next(d for d in layers if d["mediaType"] == MEDIA_MODEL)  # refusal() made sure of one
    gguf = Descriptor(MEDIA_MODEL, canonical(model_layer["digest"]), model_layer["size"])

    current = _up_to_date(store, name, where, digest)
    if current is not None:
        for d in [*(Descriptor(d["mediaType"], canonical(d["digest"]), d["size"]) for d in small), gguf]:
            progress(ProgressEvent(f"pulling {short(d.digest)}", d.digest, d.size, d.size))
        store.log.info("pull_up_to_date", model=name.display, source=where, manifest=digest)
        progress(ProgressEvent("success"))
        return current

    with store.in_flight():  # gc leaves the GGUF blob alone until the model that replaces it exists
        for desc in small:
            _check_cancel(cancel)
            blob = _fetch_small(source, desc, where, progress, cancel)
            if desc is config:
                apply_config(m, blob)
            else:
                apply_layer(m, desc, blob)
        if m.skip_reason is not None:
            raise InvalidArgument(f"cannot pull {where}: {m.skip_reason}")
        summary = _pull_gguf_and_convert(store, source, m, gguf, name, where, digest, progress, cancel)
    progress(ProgressEvent("success"))
    return summary


# ---------------------------------------------------------------------- the manifest


def _describe(data: bytes, digest: str, where: str,
              name: ModelName) -> tuple[OllamaModel, list[dict[str, Any]], dict[str, Any] | None]:
    """The image as an OllamaModel to fill in, its layers and config; refusals raised here."""
    try:
        layers, config = parse_manifest(data)
    except ValueError as e:
        raise InvalidArgument(f"cannot pull {where}: its Ollama manifest is damaged: {e}") from None
    reason = refusal(layers)
    if reason is not None:
        raise Unsupported(f"cannot pull {where}: {reason}")
    for desc in layers:
        media_type = desc["mediaType"]
        if media_type not in SMALL_LAYERS | IGNORED_LAYERS | {MEDIA_MODEL}:
            raise Unsupported(
                f"cannot pull {where}: its layer {canonical(desc['digest'])} has the media type {media_type!r}, "
                "which mlxserve does not know (it converts Ollama models made of a GGUF and template, params, "
                "system, messages and license layers)")
    for desc in layers + ([config] if config else []):
        if desc["mediaType"] != MEDIA_MODEL and (reason := small_layer_too_big(desc)) is not None:
            raise InvalidArgument(f"cannot pull {where}: {reason}")

    host, _, rest = where.partition("/")
    repo, _, reference = rest.partition(":")
    namespace, _, model = repo.rpartition("/")
    m = OllamaModel(host, namespace, model, reference, manifest_digest=digest, name=name.display)
    m.size = sum(d["size"] for d in layers) + (config["size"] if config else 0)
    m.gguf_digest = next(canonical(d["digest"]) for d in layers if d["mediaType"] == MEDIA_MODEL)
    return m, layers, config


def _up_to_date(store: ModelStore, name: ModelName, where: str, digest: str) -> ModelSummary | None:
    """The stored model `name` if it is the conversion of this very manifest from `where`, whole."""
    try:
        found = store.find(name)
        manifest = Manifest.from_bytes(found.data)
    except (NotFound, Internal, InvalidArgument):
        return None  # absent, or damaged: convert again
    if manifest.annotations.get(ANN_SOURCE_MANIFEST) != digest or manifest.annotations.get(ANN_SOURCE_REF) != where:
        return None
    if not all(store.blobs.exists(d) for d in manifest.digests()):
        return None
    return store.summary(found.name, found.path, found.data, manifest)


# ---------------------------------------------------------------------- downloads


def _check_cancel(cancel: threading.Event | None) -> None:
    if cancel is not None and cancel.is_set():
        raise Cancelled("pull cancelled")


def _fetch_small(source: BlobSource, desc: dict[str, Any], where: str, progress: ProgressCallback,
                 cancel: threading.Event | None) -> bytes:
    """A small layer's bytes, read into memory (never more than one byte past the size the
    manifest gives it, which _describe bounded) and checked against that size and its digest."""
    digest, size = canonical(desc["digest"]), desc["size"]
    what = desc["mediaType"].removeprefix(OLLAMA_MEDIA_PREFIX) if desc["mediaType"] in SMALL_LAYERS else "config"
    status = f"pulling {short(digest)}"
    progress(ProgressEvent(status, digest, size, 0))
    chunks: list[bytes] = []
    got = 0
    try:
        with source.open(digest, 0) as resp:
            if resp.status != 200:
                raise Unavailable(f"cannot pull {where}: {source.where} answered {resp.status} for its {what} "
                                  f"layer {digest}")
            while got <= size:  # one byte more than the manifest says is enough to know it is wrong
                _check_cancel(cancel)
                chunk = resp.read(size + 1 - got)
                if not chunk:
                    break
                chunks.append(chunk)
                got += len(chunk)
    except (OSError, http.client.HTTPException) as e:
        raise Unavailable(f"cannot pull {where}: the download of its {what} layer {digest} from {source.where} "
                          f"broke off ({describe_failure(e)}); pull again") from e
    if got != size:
        sent = "more than" if got > size else f"only {got} of"
        raise Internal(f"cannot pull {where}: {source.where} sent {sent} the {size} bytes the manifest gives its "
                       f"{what} layer {digest}; the image is damaged, nothing was stored")
    blob = b"".join(chunks)
    actual = "sha256:" + hashlib.sha256(blob).hexdigest()
    if actual != digest:
        raise Internal(f"cannot pull {where}: its {what} layer {digest} failed verification (the bytes "
                       f"{source.where} sent hash to {actual}); nothing was stored")
    progress(ProgressEvent(status, digest, size, size))
    return blob


# ---------------------------------------------------------------------- conversion


class _ConversionProgress:
    """Relays the create pipeline's progress: its "success" is held back (the pull says it once
    the GGUF blob is gone), and a cancelled pull stops the conversion at its next event (create
    has no cancel of its own; it cleans up whatever it staged when an event raises)."""

    def __init__(self, progress: ProgressCallback, cancel: threading.Event | None) -> None:
        self.progress, self.cancel = progress, cancel

    def __call__(self, event: ProgressEvent) -> None:
        if event.status == "success":
            return  # committed: too late to cancel, and the pull has the last word
        _check_cancel(self.cancel)
        self.progress(event)


def _pull_gguf_and_convert(store: ModelStore, source: BlobSource, m: OllamaModel, gguf: Descriptor,
                           name: ModelName, where: str, digest: str, progress: ProgressCallback,
                           cancel: threading.Event | None) -> ModelSummary:
    """Download the GGUF as a blob, check it, convert it into `name`; then drop the blob unless
    the conversion was interrupted (see the module)."""
    with source_blob(store, gguf.digest) as finished:
        try:
            fetch_blob(store, source, gguf, progress, cancel)
            # Every blob was hashed as it arrived and adopted (or kept in memory) only if it matched.
            progress(ProgressEvent("verifying sha256 digest"))
            _check_cancel(cancel)
            m.gguf = store.blobs.path(gguf.digest)
            read_gguf_header(m)  # the importer's own check, and the chat template the model gets
            if m.skip_reason is not None:
                raise Unsupported(f"cannot pull {where}: {m.skip_reason}")
            summary = _convert(store, m, name, where, digest, _ConversionProgress(progress, cancel))
            finished()
            return summary
        except (Cancelled, Unavailable, OSError):
            raise  # interrupted (or the disk): the GGUF stays for the next pull
        except Exception:
            finished()  # refused, or the converter failed on it: downloading it again will not help
            raise


def _convert(store: ModelStore, m: OllamaModel, name: ModelName, where: str, digest: str,
             progress: ProgressCallback) -> ModelSummary:
    """Create `name` from the GGUF blob `m.gguf` with the image's defaults and provenance."""
    assert m.gguf is not None
    # The importer reads the blob through a link named like the model, so that its messages and
    # the manifest's source annotation name the model, not "sha256-<hex>". In tmp/ under a
    # staging prefix: a crash leaves nothing that the next start does not clean.
    folder = Path(tempfile.mkdtemp(dir=store.tmp_dir, prefix="create-pull-"))
    try:
        link = folder / f"{name.name}-{name.tag}.gguf"
        os.symlink(m.gguf, link)
        spec = m.create_spec(link)
        spec.annotations = {ANN_SOURCE: where, ANN_SOURCE_REF: where, ANN_SOURCE_MANIFEST: digest}
        return store.create(name.full, spec, progress)
    finally:
        remove_tree(folder)
