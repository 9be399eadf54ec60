"""verify and gc: re-hash every blob; collect what no manifest references.

Both read the store through its own views of it (manifest paths, blobs, locks: `MaintainedStore`), so
they hold the same locks as create, pull and remove.
"""

from __future__ import annotations

import contextlib
import hashlib
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

from mlxserve.services.common.errors import Internal, MlxServeError

from .blobs import BlobStore, digest_of_file, newest_mtime, remove_tree, tree_size
from .integrity import size_problems
from .manifest import Manifest
from .names import name_from_manifest_path
from .progress import ProgressCallback, ProgressEvent, no_progress

if TYPE_CHECKING:
    import structlog


class MaintainedStore(Protocol):
    """What verify and gc need of the store (`ModelStore` is one); named here so this module need not import store.py."""

    models_dir: Path
    tmp_dir: Path
    manifests_dir: Path
    views_dir: Path
    blobs: BlobStore
    log: structlog.stdlib.BoundLogger

    def locked(self) -> contextlib.AbstractContextManager[None]: ...
    def nothing_in_flight(self) -> contextlib.AbstractContextManager[bool]: ...
    def manifest_paths(self) -> list[Path]: ...


PARTIAL_PREFIX = "partial-"  # resumable downloads (transfer.py); gc drops stale ones
PARTIAL_MAX_AGE_S = 3600.0
# An unreferenced blob younger than this may be an upload (`put_blob`) whose create has not
# arrived yet, so gc keeps it.
ORPHAN_MIN_AGE_S = 600.0


@dataclass(frozen=True)
class CorruptBlob:
    digest: str              # "sha256:<hex>"
    models: list[str]        # display names of the models that use it (empty: unreferenced)


@dataclass(frozen=True)
class VerifyReport:
    checked: int                                                  # blobs re-hashed
    corrupt: list[CorruptBlob] = field(default_factory=list)      # content does not match the name
    missing: list[CorruptBlob] = field(default_factory=list)      # referenced but absent
    # Manifest paths that do not parse, or "<path>: <what is wrong>" (a size its blob does not have).
    damaged_manifests: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not (self.corrupt or self.missing or self.damaged_manifests)


@dataclass(frozen=True)
class GcReport:
    removed_blobs: list[str] = field(default_factory=list)     # digests
    freed_bytes: int = 0
    removed_partials: list[str] = field(default_factory=list)  # names under models/tmp


def verify(store: MaintainedStore, progress: ProgressCallback = no_progress) -> VerifyReport:
    """Re-hash every blob; report corrupt and missing ones with the models they break.

    Reads only (no lock held), so serving and creating go on meanwhile.
    """
    users: dict[str, list[str]] = {}
    damaged: list[str] = []
    for path in store.manifest_paths():
        try:
            mname = name_from_manifest_path(store.models_dir, path)
            manifest = Manifest.from_bytes(path.read_bytes())
        except (MlxServeError, OSError):
            damaged.append(str(path.relative_to(store.manifests_dir)))
            continue
        for digest in manifest.digests():
            users.setdefault(digest, []).append(mname.display)
        if problems := size_problems(manifest, store.blobs):
            damaged.append(f"{path.relative_to(store.manifests_dir)}: {'; '.join(problems)}")
    present = sorted(store.blobs.all_digests())
    total = sum(_size_or_zero(store, d) for d in present)
    done = 0
    corrupt: list[CorruptBlob] = []
    for digest in present:
        status = f"verifying {digest.removeprefix('sha256:')[:12]}"

        def hashed(n: int) -> None:
            nonlocal done
            done += n
            progress(ProgressEvent(status, digest=digest, total=total, completed=done))

        try:
            actual = digest_of_file(store.blobs.path(digest), hashed)
        except FileNotFoundError:
            continue  # removed meanwhile (rm or gc): not corruption
        if actual != digest:
            corrupt.append(CorruptBlob(digest, sorted(users.get(digest, []))))
            store.log.warning("blob_corrupt", digest=digest, actual=actual, models=users.get(digest, []))
    missing = [CorruptBlob(d, sorted(m)) for d, m in sorted(users.items()) if not store.blobs.exists(d)]
    progress(ProgressEvent("success"))
    return VerifyReport(checked=len(present), corrupt=corrupt, missing=missing, damaged_manifests=damaged)


def gc(store: MaintainedStore, *, orphan_min_age_s: float = ORPHAN_MIN_AGE_S,
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
    with store.locked(), store.nothing_in_flight() as idle:
        referenced: set[str] = set()
        manifest_digests: set[str] = set()
        readable = True
        for path in store.manifest_paths():
            try:
                data = path.read_bytes()
                referenced |= Manifest.from_bytes(data).digests()
                manifest_digests.add(hashlib.sha256(data).hexdigest())
            except (Internal, OSError) as e:
                readable = False  # what it uses is unknown: deleting any blob could break it
                store.log.warning("gc_manifest_unreadable", path=str(path), error=str(e))
        if readable and idle:
            for digest in sorted(store.blobs.all_digests() - referenced):
                path = store.blobs.path(digest)
                try:
                    st = path.stat()
                except FileNotFoundError:
                    continue
                if now - st.st_mtime < orphan_min_age_s:  # adopt's rename keeps the write time
                    continue
                if store.blobs.remove(digest):
                    removed.append(digest)
                    freed += st.st_size
        for entry in sorted(store.tmp_dir.iterdir()):
            age = now - newest_mtime(entry)
            if entry.name.startswith(PARTIAL_PREFIX):
                if age < partial_max_age_s:
                    continue
            elif age < (orphan_min_age_s if idle else partial_max_age_s):
                continue  # may belong to an operation in flight (or one that forgot to say so)
            freed += tree_size(entry)
            remove_tree(entry)
            partials.append(entry.name)
        if readable:
            for view in sorted(store.views_dir.iterdir()):
                if view.name not in manifest_digests:
                    remove_tree(view)
    store.log.info("gc_done", removed_blobs=len(removed), removed_partials=len(partials), freed_bytes=freed)
    return GcReport(removed_blobs=removed, freed_bytes=freed, removed_partials=partials)


def _size_or_zero(store: MaintainedStore, digest: str) -> int:
    try:
        return store.blobs.path(digest).stat().st_size
    except OSError:
        return 0
