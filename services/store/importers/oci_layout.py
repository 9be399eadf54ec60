"""Import a model from an OCI image-layout tarball (what `mlxctl pack` writes), by path or URL.

The layout itself (oci-layout, index.json, blobs/sha256/<hex>) is described in ../layout.py.
A URL's package is downloaded into models/tmp first, resumable like every pull; unpacking then
reads the tarball once, verifies every blob it keeps against its name, and writes the manifest
last, so nothing partial ever becomes visible.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tarfile
import tempfile
import threading
import urllib.error
import urllib.request
from pathlib import Path
from typing import BinaryIO

from mlxserve.services.common.errors import Cancelled, InvalidArgument, NotFound, Unavailable, Unsupported

from ..blobs import CHUNK, check_digest
from ..layout import (BLOB_ENTRY, MAX_MANIFEST_BYTES, MODEL_NAME, OCI_LAYOUT_VERSION, REF_NAME, Throttle, check_cancel,
                      model_manifest, short)
from ..names import parse_name
from ..progress import ProgressCallback, ProgressEvent, no_progress
from ..store import ModelStore, ModelSummary


def is_package_ref(ref: str) -> bool:
    """Whether `ref` names an image-layout tarball (a URL or a file path) rather than a model name."""
    if ref.startswith(("http://", "https://")):
        return True
    if ref.startswith(("/", "./", "../", "~")) or ref.endswith((".tar", ".tar.gz", ".tgz")):
        return True
    return Path(ref).is_file()


PACKAGE_PARTIAL = "partial-package-"  # models/tmp/partial-package-<sha256 of the URL>[.validator]


def package_partial(store: ModelStore, url: str) -> Path:
    """Where a package downloaded from `url` accumulates until it has been unpacked."""
    return store.tmp_dir / (PACKAGE_PARTIAL + hashlib.sha256(url.encode()).hexdigest()[:40])


def _fetch_package(store: ModelStore, url: str, insecure: bool, progress: ProgressCallback,
                   cancel: threading.Event | None) -> Path:
    """Download the package at `url` into models/tmp, resuming an earlier partial download.

    A tarball carries no digest to check it against before it is read, so it is fetched whole
    first (each blob in it is verified as it is unpacked); after an interruption the next pull asks
    for the rest with a Range request, conditional (If-Range) on the ETag or Last-Modified the
    first response gave, so a package that changed meanwhile is fetched again from the start.
    """
    if url.startswith("http://") and not insecure:
        raise InvalidArgument(f"{url} is plain http; fetch packages over http:// only with --insecure")
    partial = package_partial(store, url)
    validator_file = partial.with_name(partial.name + ".validator")
    offset = partial.stat().st_size if partial.exists() else 0
    validator = validator_file.read_text() if offset and validator_file.exists() else ""
    headers = {"Range": f"bytes={offset}-", "If-Range": validator} if offset and validator else {}
    try:
        resp = urllib.request.urlopen(urllib.request.Request(url, headers=headers), timeout=60)  # noqa: S310
    except urllib.error.HTTPError as e:
        if e.code == 404:
            raise NotFound(f"package {url} not found (404)") from e
        raise Unavailable(f"fetching package {url} failed: {e.code} {e.reason}") from e
    except (urllib.error.URLError, OSError) as e:
        raise Unavailable(f"cannot fetch package {url}: {getattr(e, 'reason', e)}") from e
    with resp, open(partial, "ab") as f:
        if resp.status != 206:  # the whole package: the server ignored Range, or it changed
            f.truncate(0)
            offset = 0
            validator_file.write_text(resp.headers.get("ETag") or resp.headers.get("Last-Modified") or "")
        length = resp.headers.get("Content-Length")
        total = offset + int(length) if length and length.isdigit() else 0
        report = Throttle(progress, "pulling package", "", total)
        done = offset
        report(done, force=True)
        try:
            while chunk := resp.read(CHUNK):
                check_cancel(cancel, "pull")
                f.write(chunk)
                done += len(chunk)
                report(done)
        except OSError as e:
            raise Unavailable(f"download of package {url} broke off after {done} bytes ({e}); "
                              "pull again to resume") from e
        if total and done != total:
            raise Unavailable(f"download of package {url} ended after {done} of {total} bytes; pull again to resume")
        f.flush()
        os.fsync(f.fileno())
    report(done, force=True)
    return partial


def _open_source(store: ModelStore, source: str, insecure: bool, progress: ProgressCallback,
                 cancel: threading.Event | None) -> tuple[BinaryIO, str, Path | None]:
    """The package as a stream, its name for messages, and its partial download (URLs) or None."""
    if source.startswith(("http://", "https://")):
        partial = _fetch_package(store, source, insecure, progress, cancel)
        return open(partial, "rb"), source, partial
    path = Path(source).expanduser()
    if not path.is_file():
        raise NotFound(f"package {source!r} not found (not a file)")
    return open(path, "rb"), str(path), None


def _stage_member(f: BinaryIO, dest: Path, expected: str, size: int, report: Throttle,
                  cancel: threading.Event | None, where: str) -> None:
    h = hashlib.sha256()
    done = 0
    with open(dest, "wb") as out:
        while chunk := f.read(CHUNK):
            check_cancel(cancel, "pull")
            h.update(chunk)
            out.write(chunk)
            done += len(chunk)
            report(done)
        out.flush()
        os.fsync(out.fileno())
    got = "sha256:" + h.hexdigest()
    if got != expected or done != size:
        raise InvalidArgument(f"{where}: blob {expected} is corrupt (its bytes hash to {got}); nothing was imported")


def _pick_manifest(index: dict, where: str, tag: str | None) -> dict:
    entries = [m for m in index.get("manifests") or [] if isinstance(m, dict)]
    if not entries:
        raise InvalidArgument(f"{where}: index.json lists no manifests")
    if tag is not None:
        matching = [m for m in entries if (m.get("annotations") or {}).get(REF_NAME) == tag]
        if matching:
            return matching[0]
    if len(entries) == 1:
        return entries[0]
    refs = [(m.get("annotations") or {}).get(REF_NAME, "?") for m in entries]
    raise InvalidArgument(f"{where} holds {len(entries)} manifests ({', '.join(refs)}); name the one to import")


def unpack(store: ModelStore, source: str, *, insecure: bool = False, progress: ProgressCallback = no_progress,
           cancel: threading.Event | None = None, name: str | None = None) -> ModelSummary:
    """Import the model in an OCI image-layout tarball (a file path or an http(s) URL).

    `name` overrides the model name recorded in the package. Every blob kept is verified against
    its digest; the manifest is written last.
    """
    tag_hint = parse_name(name).tag if name else None
    stream, where, partial = _open_source(store, source, insecure, progress, cancel)
    try:
        with stream:
            summary = _unpack_stream(store, stream, where, tag_hint, name, progress, cancel)
    except (Unavailable, Cancelled, OSError):
        raise  # the download (if any) stays for the next pull
    except BaseException:
        _drop_partial(partial)  # a bad package: fetching the same bytes again would not help
        raise
    _drop_partial(partial)
    progress(ProgressEvent("success"))
    return summary


def _drop_partial(partial: Path | None) -> None:
    if partial is not None:
        partial.unlink(missing_ok=True)
        partial.with_name(partial.name + ".validator").unlink(missing_ok=True)


def _unpack_stream(store: ModelStore, stream: BinaryIO, where: str, tag_hint: str | None, name: str | None,
                   progress: ProgressCallback, cancel: threading.Event | None) -> ModelSummary:
    progress(ProgressEvent("pulling manifest"))
    staging = Path(tempfile.mkdtemp(dir=store.tmp_dir, prefix="create-unpack-"))  # clean_tmp removes create-*
    try:
        staged: dict[str, Path] = {}
        index: dict | None = None
        layout_seen = False
        try:
            tar = tarfile.open(fileobj=stream, mode="r|*")
        except tarfile.TarError as e:
            raise InvalidArgument(f"{where} is not a tar archive: {e}") from e
        with stream, tar:
            try:
                for member in tar:
                    check_cancel(cancel, "pull")
                    entry = member.name.removeprefix("./")
                    if member.isdir():
                        continue
                    if not member.isfile():
                        raise InvalidArgument(f"{where}: entry {entry!r} is not a regular file")
                    if entry == "oci-layout":
                        doc = json.loads(tar.extractfile(member).read(65536))  # type: ignore[union-attr]
                        if doc.get("imageLayoutVersion") != OCI_LAYOUT_VERSION:
                            raise Unsupported(f"{where}: OCI layout version {doc.get('imageLayoutVersion')!r} "
                                              f"is not {OCI_LAYOUT_VERSION}")
                        layout_seen = True
                    elif entry == "index.json":
                        index = json.loads(tar.extractfile(member).read(MAX_MANIFEST_BYTES))  # type: ignore[union-attr]
                    elif m := BLOB_ENTRY.fullmatch(entry):
                        digest = "sha256:" + m.group(1)
                        if store.blobs.exists(digest):
                            continue  # already stored (and verified when it was)
                        report = Throttle(progress, f"pulling {short(digest)}", digest, member.size)
                        report(0, force=True)
                        dest = staging / m.group(1)
                        _stage_member(tar.extractfile(member), dest, digest, member.size, report,  # type: ignore[arg-type]
                                      cancel, where)
                        staged[digest] = dest
            except (tarfile.TarError, EOFError, ValueError) as e:
                raise InvalidArgument(f"{where}: damaged package: {e}") from e
            except (OSError, urllib.error.URLError) as e:
                raise Unavailable(f"reading package {where} failed: {e}") from e
        if not layout_seen or index is None:
            raise InvalidArgument(f"{where} is not an OCI image layout (oci-layout and index.json are required)")
        entry = _pick_manifest(index, where, tag_hint)
        manifest_digest = check_digest(entry.get("digest", ""))
        if manifest_digest not in staged:
            raise InvalidArgument(f"{where}: the manifest blob {manifest_digest} is missing from the package")
        data = staged[manifest_digest].read_bytes()
        manifest = model_manifest(data, where)
        for desc in [manifest.config, *manifest.layers]:
            if desc.digest in staged:
                if staged[desc.digest].stat().st_size != desc.size:
                    raise InvalidArgument(f"{where}: blob {desc.digest} has the wrong size")
            elif not store.blobs.exists(desc.digest):
                raise InvalidArgument(f"{where}: blob {desc.digest} is missing from the package")
        target = name or (entry.get("annotations") or {}).get(MODEL_NAME)
        if not target:
            ref_name = (entry.get("annotations") or {}).get(REF_NAME)
            raise InvalidArgument(f"{where} does not record a model name (ref.name {ref_name!r}); "
                                  "give the name to store it under")
        progress(ProgressEvent("verifying sha256 digest"))
        for desc in [manifest.config, *manifest.layers]:
            if desc.digest in staged and staged[desc.digest].exists():
                store.blobs.adopt(staged.pop(desc.digest), desc.digest)
        progress(ProgressEvent("writing manifest"))
        summary = store.put_manifest(target, data)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return summary
