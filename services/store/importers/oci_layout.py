"""Import a model from an OCI image-layout tarball (what `mlxctl pack` writes), by path or URL.

The layout itself (oci-layout, index.json, blobs/sha256/<hex>) is described in ../layout.py.
A URL's package is downloaded into models/tmp first, resumable like every pull; unpacking then
reads the tarball (once for what `pack` writes), writes only the blobs the manifest references,
each bounded by its declared size and verified against its digest, and writes the manifest last,
so nothing partial ever becomes visible.
"""

from __future__ import annotations

import bz2
import gzip
import hashlib
import lzma
import os
import shutil
import tarfile
import tempfile
import threading
import urllib.error
import urllib.request
import zlib
from pathlib import Path
from typing import Any, BinaryIO

from mlxserve.services.common.addresses import Guard
from mlxserve.services.common.errors import (
    Cancelled,
    InvalidArgument,
    NotFound,
    Unavailable,
    Unsupported,
)

from ..blobs import CHUNK, check_digest, is_disk_full
from ..connections import describe_failure, status_line, url_opener
from ..integrity import check_sizes, layer_label
from ..layout import (
    BLOB_ENTRY,
    MAX_MANIFEST_BYTES,
    MODEL_NAME,
    OCI_LAYOUT_VERSION,
    REF_NAME,
    Throttle,
    check_cancel,
    load_json,
    model_manifest,
    short,
)
from ..manifest import Manifest
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
                   cancel: threading.Event | None, guard: Guard) -> Path:
    """Download the package at `url` into models/tmp, resuming an earlier partial download.

    A tarball carries no digest to check it against before it is read, so it is fetched whole
    first (each blob in it is verified as it is unpacked); after an interruption the next pull asks
    for the rest with a Range request, conditional (If-Range) on the ETag or Last-Modified the
    first response gave, so a package that changed meanwhile is fetched again from the start.
    Every connection, redirects included, goes through the store's address filter (`guard`).
    """
    if url.startswith("http://") and not insecure:
        raise InvalidArgument(f"{url} is plain http; fetch packages over http:// only with --insecure")
    partial = package_partial(store, url)
    validator_file = partial.with_name(partial.name + ".validator")
    offset = partial.stat().st_size if partial.exists() else 0
    validator = validator_file.read_text() if offset and validator_file.exists() else ""
    headers = {"Range": f"bytes={offset}-", "If-Range": validator} if offset and validator else {}
    try:
        resp = url_opener(guard).open(urllib.request.Request(url, headers=headers), timeout=60)
    except urllib.error.HTTPError as e:
        e.close()  # its body is the remote's text: never quoted back
        if e.code == 404:
            raise NotFound(f"package {url} not found (404)") from e
        raise Unavailable(f"fetching package {url} failed: {status_line(e.code)}") from e
    except urllib.error.URLError as e:
        reason = e.reason if isinstance(e.reason, BaseException) else OSError(str(e.reason))
        raise Unavailable(f"cannot fetch package {url}: {describe_failure(reason)}") from e
    except OSError as e:
        raise Unavailable(f"cannot fetch package {url}: {describe_failure(e)}") from e
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
            if is_disk_full(e):
                raise  # the disk, not the download: the store reports it as disk full
            raise Unavailable(f"download of package {url} broke off after {done} bytes ({describe_failure(e)}); "
                              "pull again to resume") from e
        if total and done != total:
            raise Unavailable(f"download of package {url} ended after {done} of {total} bytes; pull again to resume")
        f.flush()
        os.fsync(f.fileno())
    report(done, force=True)
    return partial


def _open_source(store: ModelStore, source: str, insecure: bool, progress: ProgressCallback,
                 cancel: threading.Event | None, guard: Guard) -> tuple[BinaryIO, str, Path | None]:
    """The package as a stream, its name for messages, and its partial download (URLs) or None."""
    if source.startswith(("http://", "https://")):
        partial = _fetch_package(store, source, insecure, progress, cancel, guard)
        return open(partial, "rb"), source, partial
    path = Path(source).expanduser()
    if not path.is_file():
        raise NotFound(f"package {source!r} not found (not a file)")
    return open(path, "rb"), str(path), None


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
           cancel: threading.Event | None = None, name: str | None = None, guard: Guard | None = None) -> ModelSummary:
    """Import the model in an OCI image-layout tarball (a file path or an http(s) URL).

    `guard`: the store's address filter for a URL (transfer.py passes the store's; default:
    loopback-only plain http).

    `name` overrides the model name recorded in the package. Only the blobs its manifest
    references are written, each bounded by its declared size and verified against its digest;
    the manifest is written last.
    """
    tag_hint = parse_name(name).tag if name else None
    stream, where, partial = _open_source(store, source, insecure, progress, cancel, guard or Guard())
    try:
        with stream:
            summary = _unpack_file(store, stream, where, tag_hint, name, progress, cancel)
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


# index.json names the manifest, the manifest names the blobs; a package written in the worst
# order (blobs, manifest, index) needs one read for each. `pack` writes them in one.
MAX_READS = 3


class _Unpacking:
    """What reading a package has found so far. A blob is staged only once the manifest (or, for
    the manifest itself, index.json) says it is wanted, and only as many bytes as declared."""

    def __init__(self, store: ModelStore, where: str, tag_hint: str | None, staging: Path,
                 progress: ProgressCallback, cancel: threading.Event | None) -> None:
        self.store, self.where, self.tag_hint, self.staging = store, where, tag_hint, staging
        self.progress, self.cancel = progress, cancel
        self.layout_seen = False
        self.entry: dict[str, Any] | None = None       # index.json's descriptor of the manifest
        self.manifest: Manifest | None = None
        self.manifest_data = b""
        self.wanted: dict[str, tuple[int, str]] = {}   # digest -> (declared size, how messages name it)
        self.staged: dict[str, Path] = {}
        self.passed_over: set[str] = set()             # blob entries read before they were known to be wanted

    def read(self, stream: BinaryIO) -> None:
        try:
            try:
                tar = tarfile.open(fileobj=_decompressed(stream), mode="r|")
            except tarfile.TarError as e:
                raise InvalidArgument(f"{self.where} is not a tar archive: {e}") from e
            with tar:
                for member in tar:
                    check_cancel(self.cancel, "pull")
                    self._member(tar, member)
        except (tarfile.TarError, EOFError, ValueError, zlib.error, lzma.LZMAError) as e:
            raise InvalidArgument(f"{self.where}: damaged package: {e}") from e
        except OSError as e:
            if is_disk_full(e):
                raise  # the store reports it as disk full
            if e.errno is None:  # gzip's and bz2's word for bytes that do not decompress
                raise InvalidArgument(f"{self.where}: damaged package: {e}") from e
            raise Unavailable(f"reading package {self.where} failed: {e}") from e

    def _member(self, tar: tarfile.TarFile, member: tarfile.TarInfo) -> None:
        entry = member.name.removeprefix("./")
        if member.isdir():
            return
        if not member.isfile():
            raise InvalidArgument(f"{self.where}: entry {entry!r} is not a regular file")
        if entry == "oci-layout" and not self.layout_seen:
            doc = load_json(tar.extractfile(member).read(65536), self.where, "oci-layout")  # type: ignore[union-attr]
            if doc.get("imageLayoutVersion") != OCI_LAYOUT_VERSION:
                raise Unsupported(f"{self.where}: OCI layout version {doc.get('imageLayoutVersion')!r} "
                                  f"is not {OCI_LAYOUT_VERSION}")
            self.layout_seen = True
        elif entry == "index.json" and self.entry is None:
            if member.size > MAX_MANIFEST_BYTES:
                raise InvalidArgument(f"{self.where}: index.json is larger than {MAX_MANIFEST_BYTES} bytes")
            index = load_json(tar.extractfile(member).read(), self.where, "index.json")  # type: ignore[union-attr]
            self.entry = _pick_manifest(index, self.where, self.tag_hint)
            digest = check_digest(self.entry.get("digest", ""))
            size = self.entry.get("size")
            if type(size) is not int or not 0 < size <= MAX_MANIFEST_BYTES:  # a bool is no size
                raise InvalidArgument(f"{self.where}: index.json gives the manifest the size {size!r} "
                                      f"(at most {MAX_MANIFEST_BYTES} bytes)")
            self.wanted[digest] = (size, f"the manifest {digest}")
            self._adopt_manifest_if_staged()
        elif m := BLOB_ENTRY.fullmatch(entry):
            digest = "sha256:" + m.group(1)
            if digest in self.staged or self.store.blobs.exists(digest):
                return
            if digest not in self.wanted:
                self.passed_over.add(digest)  # never written: tarfile skips its bytes
                return
            size, label = self.wanted[digest]
            if member.size != size:  # known from the tar header, before a byte of it is read
                raise InvalidArgument(f"{self.where}: {label} is {member.size} bytes in the package, not the {size} "
                                      "declared for it; nothing was imported")
            report = Throttle(self.progress, f"pulling {short(digest)}", digest, size)
            report(0, force=True)
            dest = self.staging / m.group(1)
            _stage_member(tar.extractfile(member), dest, digest, size, report, self.cancel,  # type: ignore[arg-type]
                          self.where, label)
            self.staged[digest] = dest
            self._adopt_manifest_if_staged()

    def _adopt_manifest_if_staged(self) -> None:
        """Once the manifest is staged: check it, and want each blob it names that the store lacks."""
        if self.manifest is not None or self.entry is None:
            return
        digest = self.entry["digest"]
        if digest in self.staged:
            self.manifest_data = self.staged[digest].read_bytes()
        elif self.store.blobs.exists(digest):  # the store holds it as a blob (it was verified then)
            self.manifest_data = self.store.blobs.read(digest)
        else:
            return
        self.manifest = model_manifest(self.manifest_data, self.where)
        check_sizes(self.manifest, self.store.blobs, self.where)  # blobs the store holds already
        for desc in [self.manifest.config, *self.manifest.layers]:
            if not self.store.blobs.exists(desc.digest) and desc.digest not in self.wanted:
                self.wanted[desc.digest] = (desc.size, layer_label(desc, self.manifest))

    def missing(self) -> list[str]:
        return [d for d in self.wanted if d not in self.staged and not self.store.blobs.exists(d)]

    def another_read_helps(self) -> bool:
        """Whether a blob now wanted was passed over earlier in the stream."""
        return bool(self.passed_over.intersection(self.missing()))

    def finish(self) -> tuple[Manifest, bytes, dict[str, Any]]:
        if not self.layout_seen or self.entry is None:
            raise InvalidArgument(f"{self.where} is not an OCI image layout (oci-layout and index.json are required)")
        if self.manifest is None:
            raise InvalidArgument(f"{self.where}: the manifest blob {self.entry['digest']} is missing from the package")
        if missing := self.missing():
            labels = ", ".join(self.wanted[d][1] for d in missing)
            raise InvalidArgument(f"{self.where}: {labels} missing from the package")
        return self.manifest, self.manifest_data, self.entry


def _decompressed(stream: BinaryIO) -> BinaryIO:
    """The package's tar bytes: gzip, bzip2 and xz are undone here rather than by tarfile's stream
    mode, which decompresses in 10 KiB steps and copies its buffer on each (skipping a 1 GiB
    entry took 30 s that way, 3 s through GzipFile)."""
    magic = stream.read(6)
    stream.seek(0)
    if magic.startswith(b"\x1f\x8b"):
        return gzip.GzipFile(fileobj=stream, mode="rb")  # type: ignore[return-value]
    if magic.startswith(b"BZh"):
        return bz2.BZ2File(stream)  # type: ignore[return-value]
    if magic.startswith(b"\xfd7zXZ\x00"):
        return lzma.LZMAFile(stream)  # type: ignore[return-value]
    return stream


def _stage_member(f: BinaryIO, dest: Path, expected: str, size: int, report: Throttle,
                  cancel: threading.Event | None, where: str, label: str) -> None:
    """Write one wanted blob, never more than its declared `size` bytes, and check its digest."""
    h = hashlib.sha256()
    done = 0
    with open(dest, "wb") as out:
        while chunk := f.read(min(CHUNK, size + 1 - done)):
            check_cancel(cancel, "pull")
            done += len(chunk)
            if done > size:
                raise InvalidArgument(f"{where}: {label} is longer than the {size} bytes its manifest declares; "
                                      "nothing was imported")
            h.update(chunk)
            out.write(chunk)
            report(done)
        out.flush()
        os.fsync(out.fileno())
    got = "sha256:" + h.hexdigest()
    if got != expected or done != size:
        raise InvalidArgument(f"{where}: blob {expected} is corrupt (its {done} bytes hash to {got}); "
                              "nothing was imported")


def _unpack_file(store: ModelStore, stream: BinaryIO, where: str, tag_hint: str | None, name: str | None,
                 progress: ProgressCallback, cancel: threading.Event | None) -> ModelSummary:
    progress(ProgressEvent("pulling manifest"))
    staging = Path(tempfile.mkdtemp(dir=store.tmp_dir, prefix="create-unpack-"))  # clean_tmp removes create-*
    try:
        state = _Unpacking(store, where, tag_hint, staging, progress, cancel)
        for reads in range(1, MAX_READS + 1):
            if reads > 1:
                stream.seek(0)
            state.read(stream)
            if not state.another_read_helps():
                break
        manifest, data, entry = state.finish()
        target = name or (entry.get("annotations") or {}).get(MODEL_NAME)
        if not target:
            ref_name = (entry.get("annotations") or {}).get(REF_NAME)
            raise InvalidArgument(f"{where} does not record a model name (ref.name {ref_name!r}); "
                                  "give the name to store it under")
        progress(ProgressEvent("verifying sha256 digest"))
        for desc in [manifest.config, *manifest.layers]:
            if desc.digest in state.staged and state.staged[desc.digest].exists():
                store.blobs.adopt(state.staged.pop(desc.digest), desc.digest)
        progress(ProgressEvent("writing manifest"))
        summary = store.put_manifest(target, data)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return summary
