"""Content-addressed blobs: models/blobs/sha256-<hex>, immutable, written atomically.

Every write goes to a temporary file in models/tmp (same filesystem), is fsynced, then renamed
into place, so a blob path either does not exist or holds exactly the bytes its name promises.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import os
import re
import shutil
import tempfile
from pathlib import Path
from typing import BinaryIO, Callable

from mlxserve.services.common.errors import InvalidArgument, NotFound

CHUNK = 4 * 1024 * 1024
_DIGEST = re.compile(r"sha256:[0-9a-f]{64}")


def check_digest(digest: str) -> str:
    """Return `digest` if it is `sha256:` + 64 lowercase hex digits, else raise InvalidArgument."""
    if not isinstance(digest, str) or not _DIGEST.fullmatch(digest):
        raise InvalidArgument(f"invalid digest {digest!r}: expected 'sha256:' followed by 64 lowercase hex digits")
    return digest


def digest_of_bytes(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def digest_of_file(path: Path, progress: Callable[[int], None] | None = None) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(CHUNK):
            h.update(chunk)
            if progress:
                progress(len(chunk))
    return "sha256:" + h.hexdigest()


def copy_hashing(src: BinaryIO, out: BinaryIO, progress: Callable[[int], None] | None = None) -> tuple[str, int]:
    """Copy a stream, hashing it on the way (one read for both); returns (digest, size)."""
    h = hashlib.sha256()
    size = 0
    while chunk := src.read(CHUNK):
        h.update(chunk)
        out.write(chunk)
        size += len(chunk)
        if progress:
            progress(len(chunk))
    return "sha256:" + h.hexdigest(), size


def copy_with_digest(src: Path, dst: Path, progress: Callable[[int], None] | None = None) -> tuple[str, int]:
    """Copy a file, hashing it on the way; returns (digest, size)."""
    with open(src, "rb") as fin, open(dst, "wb") as out:
        return copy_hashing(fin, out, progress)


def is_disk_full(e: OSError) -> bool:
    """Whether a write failed for want of space (or quota): the disk's problem, not the input's."""
    return e.errno in (errno.ENOSPC, errno.EDQUOT)


def fsync_dir(path: Path) -> None:
    """Make a rename in `path` durable (a no-op where directories cannot be opened)."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def write_atomic(path: Path, data: bytes, tmp_dir: Path, mode: int = 0o644) -> None:
    """Write `data` to `path` via a fsynced temp file in `tmp_dir` and a rename."""
    tmp_dir.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=tmp_dir, prefix=".write-", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException:
        _unlink(Path(tmp))
        raise
    fsync_dir(path.parent)


def _unlink(path: Path) -> None:
    try:
        path.unlink()
    except FileNotFoundError:
        pass


def remove_tree(path: Path) -> None:
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


def tree_size(path: Path) -> int:
    """Bytes under `path` (a file or a folder; links count as themselves)."""
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


def newest_mtime(path: Path) -> float:
    """Latest modification time of a file or of anything in a folder (0 if it vanished)."""
    try:
        newest = path.lstat().st_mtime
    except OSError:
        return 0.0
    if path.is_dir() and not path.is_symlink():
        for dirpath, dirnames, filenames in os.walk(path):
            for name in dirnames + filenames:
                with contextlib.suppress(OSError):
                    newest = max(newest, os.lstat(os.path.join(dirpath, name)).st_mtime)
    return newest


class BlobStore:
    """The blobs folder of one store. Paths are derived only from validated digests."""

    def __init__(self, models_dir: Path) -> None:
        self.root = models_dir / "blobs"
        self.tmp_dir = models_dir / "tmp"

    def ensure_dirs(self) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        self.tmp_dir.mkdir(parents=True, exist_ok=True)

    def path(self, digest: str) -> Path:
        return self.root / ("sha256-" + check_digest(digest).removeprefix("sha256:"))

    def exists(self, digest: str) -> bool:
        return self.path(digest).is_file()

    def size(self, digest: str) -> int:
        try:
            return self.path(digest).stat().st_size
        except FileNotFoundError:
            raise NotFound(f"blob {digest} is missing from the store") from None

    def read(self, digest: str) -> bytes:
        try:
            return self.path(digest).read_bytes()
        except FileNotFoundError:
            raise NotFound(f"blob {digest} is missing from the store") from None

    def put_bytes(self, data: bytes) -> tuple[str, bool]:
        """Store `data`; return (digest, created) where created is False if it was already stored."""
        self.ensure_dirs()
        digest = digest_of_bytes(data)
        target = self.path(digest)
        if target.is_file():
            return digest, False
        write_atomic(target, data, self.tmp_dir, mode=0o444)
        return digest, True

    def stage_copy(self, src: BinaryIO, progress: Callable[[int], None] | None = None) -> tuple[Path, str, int]:
        """Copy a stream into a fsynced temp file in tmp/, hashing on the way.

        Returns (temp path, digest, size); hand the path to `adopt` (or delete it).
        """
        self.ensure_dirs()
        fd, tmp = tempfile.mkstemp(dir=self.tmp_dir, prefix=".blob-", suffix=".tmp")
        try:
            with os.fdopen(fd, "wb") as out:
                digest, size = copy_hashing(src, out, progress)
                out.flush()
                os.fsync(out.fileno())
        except BaseException:
            _unlink(Path(tmp))
            raise
        return Path(tmp), digest, size

    def adopt(self, staged: Path, digest: str) -> bool:
        """Move a staged file (same filesystem, already hashed to `digest`) into place.

        Returns True if the blob is new; if the store already holds it the staged copy is
        deleted (dedupe). The caller must have computed `digest` from the staged bytes.
        """
        self.ensure_dirs()
        target = self.path(digest)
        if target.is_file():
            _unlink(staged)
            return False
        with open(staged, "rb+") as f:
            os.fsync(f.fileno())
        os.chmod(staged, 0o444)  # blobs are immutable; views expose them read-only
        os.replace(staged, target)
        fsync_dir(self.root)
        return True

    def remove(self, digest: str) -> bool:
        try:
            self.path(digest).unlink()
            return True
        except FileNotFoundError:
            return False

    def all_digests(self) -> set[str]:
        if not self.root.is_dir():
            return set()
        out = set()
        for p in self.root.iterdir():
            if p.name.startswith("sha256-"):
                d = "sha256:" + p.name.removeprefix("sha256-")
                if _DIGEST.fullmatch(d):
                    out.add(d)
        return out
