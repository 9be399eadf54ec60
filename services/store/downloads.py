"""Resumable, verified blob downloads shared by every pull source (OCI and Ollama registries, the
Hugging Face hub).

A blob goes to `models/tmp/partial-sha256-<hex>` and is hashed as it arrives (a helper thread
writes and hashes one chunk while the next is received); after an interruption the next pull
hashes what the partial file holds and asks for the rest with an HTTP Range request. Only bytes
whose sha256 matches are adopted into the store, so nothing unverified is ever visible. Threads
of one store process that need the same blob share one download; store processes on the same
folder take turns (a lock on the partial file). Progress follows Ollama's "pulling <digest>".
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import os
import threading
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, BinaryIO, Callable, Iterator, Protocol

from mlxserve.services.common.errors import Cancelled, DiskFull, Internal, MlxServeError, Unavailable

from .blobs import CHUNK
from .connections import describe_failure
from .layout import Throttle, short
from .manifest import Descriptor
from .progress import ProgressCallback, ProgressEvent

if TYPE_CHECKING:
    from .store import ModelStore

__all__ = ["BlobSource", "PARTIAL_PREFIX", "fetch_blob", "partial_path", "source_blob"]


class BlobResponse(Protocol):
    """An HTTP response being read: 200 (the whole blob), 206 (from the offset asked) or 416."""

    status: int
    headers: object

    def read(self, n: int = -1) -> bytes: ...

    def readinto(self, b: bytearray | memoryview) -> int: ...

    def close(self) -> None: ...

    def __enter__(self) -> BlobResponse: ...

    def __exit__(self, *exc: object) -> None: ...


class BlobSource(Protocol):
    """Where a pull's blobs come from: `open(digest, offset)` starts reading one at `offset`."""

    where: str  # for messages: "registry registry.ollama.ai", "the Hugging Face hub"

    def open(self, digest: str, offset: int) -> BlobResponse: ...


def _check_cancel(cancel: threading.Event | None, what: str) -> None:
    if cancel is not None and cancel.is_set():
        raise Cancelled(f"{what} cancelled")


PARTIAL_PREFIX = "partial-sha256-"


def partial_path(store: ModelStore, digest: str) -> Path:
    """Where a download of `digest` accumulates until it is verified."""
    return store.tmp_dir / (PARTIAL_PREFIX + digest.removeprefix("sha256:"))



# ---------------------------------------------------------------------- shared downloads


@dataclass
class _Download:
    """One blob download in flight; other pulls of the same blob wait on it."""

    total: int
    completed: int = 0
    done: threading.Event = field(default_factory=threading.Event)
    error: BaseException | None = None


_inflight: dict[tuple[str, str], _Download] = {}
_inflight_lock = threading.Lock()


def fetch_blob(store: ModelStore, source: BlobSource, desc: Descriptor,
               progress: ProgressCallback, cancel: threading.Event | None) -> None:
    """Make `desc` present in the store: skip, join a download in flight, or download it.

    The bytes go to `models/tmp/partial-sha256-<hex>` (resumed with a Range request after an
    interruption), hashed as they arrive, and are adopted as a blob only if they match.
    """
    status = f"pulling {short(desc.digest)}"
    key = (str(store.models_dir.resolve()), desc.digest)
    while True:
        if store.blobs.exists(desc.digest):
            progress(ProgressEvent(status, desc.digest, desc.size, desc.size))
            return
        with _inflight_lock:
            download = _inflight.get(key)
            owner = download is None
            if owner:
                download = _inflight[key] = _Download(desc.size)
        assert download is not None
        if owner:
            try:
                _download(store, source, desc, download, Throttle(progress, status, desc.digest, desc.size), cancel)
            except BaseException as e:
                download.error = e
                raise
            finally:
                with _inflight_lock:
                    del _inflight[key]
                download.done.set()
            return
        # Another pull is fetching this blob: report its progress from our own thread.
        progress(ProgressEvent(status, desc.digest, desc.size, download.completed))
        while not download.done.wait(0.1):
            _check_cancel(cancel, "pull")
            progress(ProgressEvent(status, desc.digest, desc.size, download.completed))
        if download.error is None or isinstance(download.error, Cancelled):
            continue  # finished (the loop sees the blob), or its owner gave up: take over from its partial
        err = download.error
        if isinstance(err, MlxServeError):
            raise type(err)(err.message) from err
        if isinstance(err, OSError) and err.errno is not None:
            # The owner's own disk (network failures arrive as Unavailable): a full disk stays a
            # full disk for every pull waiting on it, which the store reports as such.
            raise OSError(err.errno, err.strerror) from err
        raise Unavailable(f"download of {desc.digest} failed: {describe_failure(err)}") from err


def _download(store: ModelStore, source: BlobSource, desc: Descriptor, download: _Download,
              report: Throttle, cancel: threading.Event | None) -> None:
    partial = partial_path(store, desc.digest)
    store.tmp_dir.mkdir(parents=True, exist_ok=True)
    with open(partial, "a+b") as f:
        # Another store process on the same folder would corrupt the partial file: take turns.
        fcntl.flock(f.fileno(), fcntl.LOCK_EX)
        if store.blobs.exists(desc.digest):  # it finished while we waited for the lock
            partial.unlink(missing_ok=True)
            return
        h = hashlib.sha256()
        offset = os.fstat(f.fileno()).st_size
        if offset > desc.size:
            f.truncate(0)
            offset = 0
        # Hash the bytes we already have (read locally, never fetched again).
        f.seek(0)
        remaining = offset
        while remaining:
            chunk = f.read(min(CHUNK, remaining))
            if not chunk:
                break
            h.update(chunk)
            remaining -= len(chunk)
        download.completed = offset
        report(offset, force=True)
        try:
            check_room(store.tmp_dir, desc, offset)
        except DiskFull:
            if not offset:
                partial.unlink(missing_ok=True)  # nothing of it was ever fetched
            raise
        if offset < desc.size:
            h = _receive(source, desc, f, h, offset, download, report, cancel)
        f.flush()
        os.fsync(f.fileno())
        got = "sha256:" + h.hexdigest()
        if got != desc.digest:
            partial.unlink(missing_ok=True)
            raise Internal(f"blob {desc.digest} from {source.where} failed verification (its bytes hash "
                           f"to {got}); nothing was stored")
        store.blobs.adopt(partial, desc.digest)
    report(desc.size, force=True)


def check_room(folder: Path, desc: Descriptor, have: int = 0) -> None:
    """Refuse, before a byte is fetched, a blob the disk cannot hold: a manifest may declare any
    size (2^60 bytes for a layer is a lie, or a model no disk here holds), and downloading until the
    disk fills would only end in a worse error later."""
    usage = os.statvfs(folder)
    free = usage.f_bavail * usage.f_frsize
    if desc.size - have > free:
        raise DiskFull(f"layer {desc.digest} declares {desc.size} bytes; the disk holding the model store has "
                       f"{free} bytes free: nothing was downloaded")


def _load_sync_file_range() -> Callable[[int, int, int, int], int] | None:
    """Linux's sync_file_range(2), which Python's os module lacks; None elsewhere."""
    import ctypes
    import ctypes.util

    try:
        fn = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True).sync_file_range
    except (OSError, AttributeError):
        return None
    fn.argtypes = [ctypes.c_int, ctypes.c_longlong, ctypes.c_longlong, ctypes.c_uint]
    return fn


_SYNC_FILE_RANGE = _load_sync_file_range()
_START_WRITEBACK = 2  # SYNC_FILE_RANGE_WRITE: start writing these pages to disk, do not wait


def _write(f: BinaryIO, chunk: memoryview) -> None:
    """Append `chunk`, and start its writeback now: the fsync that ends the download then finds
    little left to write (for a 256 MiB blob here it took ~70 ms after the download, now ~1 ms)."""
    start = f.tell()
    f.write(chunk)
    if _SYNC_FILE_RANGE is not None:
        f.flush()
        _SYNC_FILE_RANGE(f.fileno(), start, len(chunk), _START_WRITEBACK)


def _fill(resp: BlobResponse, buf: memoryview) -> int:
    """Read into `buf` until it is full or the body ends; the number of bytes read."""
    got = 0
    while got < len(buf):
        n = resp.readinto(buf[got:])
        if not n:
            break
        got += n
    return got


def _receive(source: BlobSource, desc: Descriptor, f: BinaryIO, h: "hashlib._Hash", offset: int,
             download: _Download, report: Throttle, cancel: threading.Event | None) -> "hashlib._Hash":
    """Append the blob's bytes from `offset` to `f` (restarting if the server ignores Range).

    Returns the hash state over the whole file.
    """
    resp = source.open(desc.digest, offset)
    with resp:
        if resp.status == 206:
            content_range = resp.headers.get("Content-Range", "")
            if not content_range.startswith(f"bytes {offset}-"):
                raise Unavailable(f"{source.where} answered a Range request for {desc.digest} with "
                                  f"{content_range!r}; remove the partial download and pull again")
        elif offset > 0:
            # 200: the server sent the whole blob (or 416: our partial is not a prefix); start over cleanly.
            f.truncate(0)
            h = hashlib.sha256()
            download.completed = 0
            if resp.status == 416:
                resp.close()
                return _receive(source, desc, f, h, 0, download, report, cancel)
            offset = 0
        f.seek(0, os.SEEK_END)
        completed = offset
        # Three steps at once, each on its own thread: this one receives the next chunk while one
        # helper writes the previous chunk and another hashes it (socket reads, file writes and
        # sha256 all release the GIL), so a pull goes at the pace of its slowest step (sha256)
        # rather than of their sum. Two buffers are used in turn: a fresh 4 MiB object per chunk
        # would cost a page fault per 4 KiB, more than the copy itself.
        buffers = [memoryview(bytearray(CHUNK)), memoryview(bytearray(CHUNK))]
        turn = 0
        with ThreadPoolExecutor(1, thread_name_prefix="pull-write") as writer, \
                ThreadPoolExecutor(1, thread_name_prefix="pull-hash") as hasher:
            pending: list[Future] = []
            try:
                while True:
                    _check_cancel(cancel, "pull")
                    buf = buffers[turn]
                    try:
                        n = _fill(resp, buf)
                    except OSError as e:
                        raise Unavailable(f"download of {desc.digest} from {source.where} broke off after "
                                          f"{completed} bytes ({describe_failure(e)}); pull again to resume") from e
                    for done in pending:
                        done.result()  # the other buffer is free again
                    if pending:
                        pending = []
                        download.completed = completed
                        report(completed)
                    if not n:
                        break
                    completed += n
                    if completed > desc.size:
                        raise Internal(f"{source.where} sent more than the {desc.size} bytes of {desc.digest}")
                    pending = [writer.submit(_write, f, buf[:n]), hasher.submit(h.update, buf[:n])]
                    turn ^= 1
            finally:
                for done in pending:
                    done.result()  # never leave a write racing the caller's close
        if completed < desc.size:
            raise Unavailable(f"download of {desc.digest} from {source.where} ended after {completed} of "
                              f"{desc.size} bytes; pull again to resume")
    return h


# ---------------------------------------------------------------------- source blobs (pulled, then converted)

_held: dict[tuple[str, str], int] = {}
_held_lock = threading.Lock()


@contextlib.contextmanager
def source_blob(store: ModelStore, digest: str | None) -> Iterator[Callable[[], None]]:
    """Hold a downloaded source blob (a GGUF a pull converts) while the pull uses it.

    Yields `finished()`: call it once the blob has served (the model is committed, or the blob
    was refused: fetching it again would not help). When the last holder in this process lets go
    after `finished()`, the blob is deleted unless a manifest references it. An interrupted pull
    (cancelled, network or disk error) never calls it, so the blob stays and the next pull neither
    downloads nor verifies it again; gc collects it if no pull ever comes back.
    """
    if not digest:  # nothing was kept as a blob (e.g. a small file fetched into staging)
        yield lambda: None
        return
    key = (str(store.models_dir.resolve()), digest)
    with _held_lock:
        _held[key] = _held.get(key, 0) + 1
    done = False

    def finished() -> None:
        nonlocal done
        done = True

    try:
        yield finished
    finally:
        with _held_lock:
            _held[key] -= 1
            last = _held[key] == 0
            if last:
                del _held[key]
        if last and done:
            with store.locked():
                store.collect({digest})
