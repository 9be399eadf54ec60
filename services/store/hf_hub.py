"""Pull from the Hugging Face hub: `hf.co/ORG/REPO[:TAG]` (also `huggingface.co/...`).

What the repo holds decides what is made of it:
- an MLX / safetensors repo (config.json, model*.safetensors, tokenizer files, as mlx-community
  publishes): imported as it is, any architecture mlx-lm loads, with only the files mlx-lm needs
  (`MLX_FILES`, the weight shards, LICENSE*). TAG, if given, is a branch, tag or commit;
- a GGUF repo: TAG picks the quant by its name, case-insensitive (`Q4_K_M`, `q8_0`) or by file
  name (`Model-Q4_K_M.gguf`); without one, Q4_K_M, else the nearest quant (`pick_gguf`, the order
  the hub's own libraries use). The file is converted by the GGUF importer, then removed. A
  split GGUF (-00001-of-0000N) is refused, naming the way out.

hf_client.py reads the endpoint's metadata (what `HfApi.model_info` with `files_metadata` asks
for: file names, sizes, git blob ids, LFS sha256s, the commit) through the store's address
filter, and maps the hub's errors to ours with a sentence that says what to do. The bytes come through downloads.fetch_blob (resumable, hashed
as they arrive, adopted only if the sha256 is the hub's), fetched at the commit the metadata
named, so a branch that moves mid-pull cannot mix two versions. Files kept in git rather than
LFS (config.json, tokenizer files: at most a few MB) have no sha256 on the hub, only their git
blob id: they are read into memory (bounded), checked against sha1("blob <size>\\0" + bytes),
and written into the staging folder the create pipeline imports from.

Where: `hf_endpoint` (the store's setting), else $HF_ENDPOINT, else https://huggingface.co. An
http:// endpoint is an explicit choice (a local mirror) and needs no --insecure. The token:
`hf_token_file`, else $HF_TOKEN, else the one `hf auth login` saved; it is sent to the
endpoint's host only, never to the storage host that LFS downloads are redirected to.

Modules: hf_refs.py (the reference, a repo's files, the GGUF quant a tag picks), hf_client.py (the
hub's metadata and bytes), this one (the pull itself).

A name that already holds this very source (the provenance annotations: the repo and file, and
the commit; for a GGUF, the same file bytes at a later commit too) is up to date: nothing is
downloaded.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import tempfile
import threading
from fnmatch import fnmatch
from pathlib import Path, PurePosixPath

from mlxserve.services.common.errors import (
    Cancelled,
    Internal,
    InvalidArgument,
    NotFound,
    Unavailable,
    Unsupported,
)

from .blobs import remove_tree
from .connections import describe_failure
from .downloads import fetch_blob, source_blob
from .hf_client import DEFAULT_ENDPOINT, Hub, HubFiles, Snapshot
from .hf_refs import DEFAULT_QUANT, QUANT_ORDER, GgufChoice, RepoFile, gguf_choices, parse_ref, pick_gguf, quant_label
from .manifest import (
    ANN_SOURCE,
    ANN_SOURCE_DIGEST,
    ANN_SOURCE_MANIFEST,
    ANN_SOURCE_REF,
    Descriptor,
    Manifest,
    media_type_for,
)
from .names import ModelName
from .progress import ProgressCallback, ProgressEvent
from .recipes import CreateSpec
from .remotes import Remotes
from .store import ModelStore, ModelSummary

__all__ = ["DEFAULT_ENDPOINT", "DEFAULT_QUANT", "QUANT_ORDER", "pick_gguf", "pull", "quant_label"]

# Files of a safetensors repo that mlx-lm (and our sentence-transformers encoder) read, besides
# the weights and LICENSE*; everything else in the repo (README, images, .pth/.bin copies,
# ONNX exports) is not downloaded.
MLX_FILES = frozenset({
    "config.json", "model.safetensors.index.json", "generation_config.json",
    "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "tokenizer.model", "added_tokens.json",
    "vocab.json", "vocab.txt", "merges.txt", "chat_template.jinja", "chat_template.json",
    "modules.json", "sentence_bert_config.json",
})
_POOLING_CONFIG = re.compile(r"\d+_Pooling/config\.json")
MAX_GIT_FILE = 64 * 1024 * 1024  # git (non-LFS) files on the hub are at most 10 MB


# ---------------------------------------------------------------------- pull


def pull(store: ModelStore, ref: str, target: ModelName, *, remotes: Remotes, progress: ProgressCallback,
         cancel: threading.Event | None) -> ModelSummary:
    """Pull `ref` (`hf.co/ORG/REPO[:TAG]`, as typed) from the hub into `store` as `target`; see the module."""
    if target.digest:
        raise InvalidArgument(f"cannot store a pull from the hub under the digest-pinned name '{target}'")
    hub_ref = parse_ref(ref)
    hub = Hub.from_settings(remotes.hf_endpoint, remotes.hf_token_file, remotes.guard())
    progress(ProgressEvent("pulling manifest"))
    snap = hub.snapshot(hub_ref.repo_id, None)
    where = f"hf.co/{snap.repo_id}"
    choices = gguf_choices(snap.files)
    has_weights = any(f.path == "config.json" for f in snap.files) and any(
        fnmatch(f.path, "*.safetensors") and "/" not in f.path for f in snap.files)
    if choices and (not has_weights or hub_ref.tag is not None):
        return _pull_gguf(store, hub, snap, pick_gguf(choices, hub_ref.tag, where), target, progress, cancel)
    if has_weights:
        if hub_ref.tag is not None:
            snap = hub.snapshot(hub_ref.repo_id, hub_ref.tag)
        return _pull_folder(store, hub, snap, hub_ref.tag, target, progress, cancel)
    raise Unsupported(f"{where} holds neither GGUF files nor an MLX / safetensors model (config.json and "
                      f"model*.safetensors); it has {', '.join(f.path for f in snap.files[:12]) or 'no files'}")


def _check_cancel(cancel: threading.Event | None) -> None:
    if cancel is not None and cancel.is_set():
        raise Cancelled("pull cancelled")


def _up_to_date(store: ModelStore, target: ModelName, source_ref: str, commit: str,
                sha256: str | None = None) -> ModelSummary | None:
    """The stored `target` if it was made from this source at this commit (or, for a GGUF, from
    the very same file bytes at another commit), with all its blobs present."""
    try:
        found = store.find(target)
        manifest = Manifest.from_bytes(found.data)
    except (NotFound, Internal, InvalidArgument):
        return None
    ann = manifest.annotations
    if ann.get(ANN_SOURCE_REF) != source_ref:
        return None
    same = ann.get(ANN_SOURCE_MANIFEST) == f"git:{commit}" or (
        sha256 is not None and ann.get(ANN_SOURCE_DIGEST) == f"sha256:{sha256}")
    if not same or not all(store.blobs.exists(d) for d in manifest.digests()):
        return None
    return store.summary(found.name, found.path, found.data, manifest)


def _fetch(store: ModelStore, hub: Hub, snap: Snapshot, f: RepoFile, dest: Path,
           progress: ProgressCallback, cancel: threading.Event | None) -> None:
    """Make repo file `f` readable at `dest`: an LFS file becomes a verified blob (dest links to
    it); a git file is read into memory, checked against its git blob id, and written to dest."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    if f.sha256:
        digest = f"sha256:{f.sha256}"
        fetch_blob(store, HubFiles(hub, snap), Descriptor(media_type_for(f.name) or "application/octet-stream",
                                                          digest, f.size, f.name), progress, cancel)
        os.symlink(store.blobs.path(digest), dest)
        return
    where = f"{f.path} of hf.co/{snap.repo_id}"
    if f.size > MAX_GIT_FILE:
        raise Unsupported(f"{where} is {f.size} bytes but not in LFS, so the hub gives no sha256 to check it by; "
                          f"mlxserve reads such files only up to {MAX_GIT_FILE} bytes")
    status = f"pulling {f.blob_id[:12]}"
    progress(ProgressEvent(status, "", f.size, 0))
    data = bytearray()
    try:
        with hub.open_file(snap.repo_id, snap.commit, f.path) as resp:
            if resp.status != 200:
                raise Unavailable(f"the Hugging Face hub answered {resp.status} for {where}")
            while len(data) <= f.size:  # one byte more than listed is enough to know it is wrong
                _check_cancel(cancel)
                chunk = resp.read(f.size + 1 - len(data))
                if not chunk:
                    break
                data += chunk
    except OSError as e:
        raise Unavailable(f"download of {where} broke off ({describe_failure(e)}); pull again") from e
    actual = hashlib.sha1(b"blob %d\0" % len(data) + bytes(data)).hexdigest()
    if len(data) != f.size or actual != f.blob_id:
        raise Internal(f"{where} failed verification: the hub lists {f.size} bytes with git blob id {f.blob_id}, "
                       f"it sent {len(data)} bytes whose id is {actual}; nothing was stored")
    dest.write_bytes(bytes(data))
    progress(ProgressEvent(status, "", f.size, f.size))


class _Relay:
    """The create pipeline's progress, passed on: its "success" is held back (the pull says it
    last) and a cancelled pull stops the import at its next event (create cleans up its staging)."""

    def __init__(self, progress: ProgressCallback, cancel: threading.Event | None) -> None:
        self.progress, self.cancel = progress, cancel

    def __call__(self, event: ProgressEvent) -> None:
        if event.status == "success":
            return
        _check_cancel(self.cancel)
        self.progress(event)


def _annotations(source_ref: str, commit: str) -> dict[str, str]:
    return {ANN_SOURCE: source_ref, ANN_SOURCE_REF: source_ref, ANN_SOURCE_MANIFEST: f"git:{commit}"}


# ---------------------------------------------------------------------- MLX / safetensors repos


def mlx_files(snap: Snapshot) -> list[RepoFile]:
    """The repo files to download: MLX_FILES, LICENSE*, a pooling config, and the weights
    (the shards the index lists, else every root model*.safetensors, which is what mlx-lm loads)."""
    where = f"hf.co/{snap.repo_id}"
    by_path = {f.path: f for f in snap.files}
    keep = [f for f in snap.files if f.path in MLX_FILES or _POOLING_CONFIG.fullmatch(f.path)
            or ("/" not in f.path and f.path.startswith("LICENSE"))]
    weights = [f for f in snap.files if "/" not in f.path and fnmatch(f.path, "model*.safetensors")]
    if not weights:
        others = [f.path for f in snap.files if f.path.endswith(".safetensors")]
        raise Unsupported(f"{where} has no model*.safetensors weights at its top level, which is what mlx-lm loads "
                          f"(it has {', '.join(others[:6]) or 'none'})")
    if "tokenizer.json" not in by_path and "tokenizer.model" not in by_path:
        raise Unsupported(f"{where} has no tokenizer (tokenizer.json or tokenizer.model)")
    return keep + weights


def _pull_folder(store: ModelStore, hub: Hub, snap: Snapshot, revision: str | None, target: ModelName,
                 progress: ProgressCallback, cancel: threading.Event | None) -> ModelSummary:
    source_ref = f"hf.co/{snap.repo_id}" + (f":{revision}" if revision else "")
    if (done := _up_to_date(store, target, source_ref, snap.commit)) is not None:
        progress(ProgressEvent("success"))
        return done
    files = mlx_files(snap)
    if snap.gated and not hub.token:
        raise hub.error_for_status(401, "GatedRepo", "", snap.repo_id)
    skipped = len(snap.files) - len(files)
    if skipped:
        progress(ProgressEvent(f"skipping {skipped} files mlx-lm does not need"))
    with store.in_flight():
        staging = Path(tempfile.mkdtemp(dir=store.tmp_dir, prefix="create-hf-"))
        try:
            folder = staging / PurePosixPath(snap.repo_id).name
            folder.mkdir()
            weights = [f for f in files if f.path.endswith(".safetensors")]
            for f in [f for f in files if f not in weights]:  # the small files first: a bad token fails early
                _check_cancel(cancel)
                _fetch(store, hub, snap, f, folder / f.path, progress, cancel)
            index = folder / "model.safetensors.index.json"
            if index.is_file():
                weights = _indexed_shards(index, weights, f"hf.co/{snap.repo_id}")
            for f in weights:
                _check_cancel(cancel)
                _fetch(store, hub, snap, f, folder / f.path, progress, cancel)
            # Each LFS file was hashed as it arrived and adopted only if it matched; each git file was checked.
            progress(ProgressEvent("verifying sha256 digest"))
            _check_cancel(cancel)
            # The LFS files are verified blobs already: the import links them instead of copying.
            spec = CreateSpec(from_path=folder, annotations=_annotations(source_ref, snap.commit),
                              model_info={"hf.source": source_ref, "hf.commit": snap.commit},
                              source_digests={f.path: f"sha256:{f.sha256}" for f in files if f.sha256})
            summary = store.create(target.full, spec, _Relay(progress, cancel))
        finally:
            remove_tree(staging)
    progress(ProgressEvent("success"))
    return summary


def _indexed_shards(index: Path, weights: list[RepoFile], where: str) -> list[RepoFile]:
    """The shards model.safetensors.index.json lists (a repo may hold other model*.safetensors too)."""
    try:
        listed = set(json.loads(index.read_text()).get("weight_map", {}).values())
    except (ValueError, AttributeError) as e:
        raise Unsupported(f"{where}: model.safetensors.index.json is not a valid index ({e})") from None
    missing = sorted(listed - {f.path for f in weights})
    if missing:
        raise Unsupported(f"{where}: the weight index lists shards the repo does not have: {', '.join(missing)}")
    return [f for f in weights if f.path in listed]


# ---------------------------------------------------------------------- GGUF repos




def _pull_gguf(store: ModelStore, hub: Hub, snap: Snapshot, choice: GgufChoice, target: ModelName,
               progress: ProgressCallback, cancel: threading.Event | None) -> ModelSummary:
    where = f"hf.co/{snap.repo_id}"
    if len(choice.files) > 1:
        singles = [c.display for c in gguf_choices(snap.files) if len(c.files) == 1]
        raise Unsupported(
            f"{where}: {choice.display} is a split GGUF ({choice.files[0].name} ...), which mlxserve does not "
            "import; merge the parts with llama.cpp's `llama-gguf-split --merge` and `mlxctl create NAME --from "
            f"merged.gguf`" + (f", or pull a quant kept in one file: {', '.join(singles)}" if singles else ""))
    f = choice.files[0]
    source_ref = f"{where}/{f.path}"
    if (done := _up_to_date(store, target, source_ref, snap.commit, f.sha256)) is not None:
        progress(ProgressEvent("success"))
        return done
    if snap.gated and not hub.token:
        raise hub.error_for_status(401, "GatedRepo", "", snap.repo_id)
    progress(ProgressEvent(f"pulling {choice.display} ({f.path})"))
    with source_blob(store, f"sha256:{f.sha256}" if f.sha256 else None) as finished:
        try:
            with store.in_flight():
                staging = Path(tempfile.mkdtemp(dir=store.tmp_dir, prefix="create-hf-"))
                try:
                    # A link named like the file: the importer's messages then name it, not "sha256-<hex>".
                    link = staging / f.name
                    _fetch(store, hub, snap, f, link, progress, cancel)
                    progress(ProgressEvent("verifying sha256 digest"))
                    _check_cancel(cancel)
                    spec = CreateSpec(from_path=link, source_digest=f"sha256:{f.sha256}" if f.sha256 else None,
                                      annotations=_annotations(source_ref, snap.commit),
                                      model_info={"hf.source": source_ref, "hf.commit": snap.commit})
                    summary = store.create(target.full, spec, _Relay(progress, cancel))
                    finished()
                finally:
                    remove_tree(staging)
        except (Cancelled, Unavailable, OSError):
            raise  # interrupted: the GGUF (or its partial download) stays, so the next pull goes on from it
        except Exception:
            finished()  # refused or failed on these bytes: downloading them again would not help
            raise
    progress(ProgressEvent("success"))
    return summary
