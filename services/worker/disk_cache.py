"""DiskPrefixCache: KV caches of long finished sequences kept on disk, so a new worker starts warm.

A worker's memory cache (prefix_cache.py) dies with the process; an agent's 10-30k-token system
prompt would then be prefilled again after every unload or restart. Sequences of at least
`min_tokens` tokens are therefore also written here, one safetensors file each, by mlx-lm's
`save_prompt_cache`, and read back by `load_prompt_cache`:

    <root>/<model digest>/<key>.safetensors     root: $MLXSERVE_HOME/cache/prefix

The model digest is the store view's name (the manifest digest: a change of weights, template
or defaults is a new digest, so it never hits). Each file's metadata holds the model digest,
what the model computes in (device and dtype), the token ids and the prompt's length; `key`
hashes all but the last. A file is used only when all of it checks out (exact or not used);
an unreadable, truncated, foreign or mislabelled file is removed, never loaded.

Threads. The index (what is on disk, read when the worker starts) is shared under a lock.
The engine thread looks up, loads (an MLX call) and hands finished sequences over; one writer
thread saves them: `save_prompt_cache` on its own CPU stream over arrays the engine thread has
already evaluated and never changes (MLX >= 0.31.2 gives each thread its own stream), so the
decode step pays no copy and no file I/O. Each write goes to a temporary file, is fsynced and
renamed into place (a crash leaves no half file), then the whole folder is brought under
`max_bytes` by evicting the least recently used files of any model (a hit touches its file).
"""

from __future__ import annotations

import contextlib
import copy
import hashlib
import os
import queue
import re
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import mlx.core as mx
import numpy as np
from mlx.utils import tree_unflatten
from mlx_lm.models.cache import can_trim_prompt_cache, load_prompt_cache, save_prompt_cache

from mlxserve.services.common import logs
from mlxserve.services.common.lifecycle import pid_alive

log = logs.get_logger()

FORMAT = "1"          # of the metadata below; another value is a foreign file
SUFFIX = ".safetensors"
WRITER_NICE = 10       # the writer thread's scheduling priority (Linux); the engine thread keeps 0
MAX_PENDING_WRITES = 2  # sequences waiting for the writer; beyond that a write is skipped, never waited for
_KEY = re.compile(r"[0-9a-f]{40}")
_TMP = re.compile(r"\.(\d+)-[0-9a-f]+\.tmp\.safetensors")  # .<pid>-<random>...: the pid tells a live writer from a crashed one


@dataclass(frozen=True)
class DiskCacheSettings:
    """Where and how much: `root` holds one folder per model; 0 `max_bytes` turns the disk cache off."""

    root: Path
    max_bytes: int
    min_tokens: int = 1024


@dataclass(frozen=True)
class DiskEntry:
    """One file on disk, as the index knows it."""

    path: Path
    tokens: np.ndarray       # int64 token ids the cache holds, in order
    prompt_tokens: int       # how many of them were the prompt (the rest were generated)
    trimmable: bool          # can be cut back to a shorter prefix (a sliding window may not)
    nbytes: int


@dataclass
class _Write:
    """A finished sequence on its way to the writer thread."""

    key: str
    tokens: np.ndarray
    cache: list[Any]         # the writer's own layer objects over evaluated, never-changed arrays
    prompt_tokens: int
    trimmable: bool
    handoff_ms: float        # what handing it over cost the engine thread


@dataclass(frozen=True)
class DiskMatch:
    entry: DiskEntry
    reusable: int            # prompt tokens the entry can stand in for


def model_digest(model_path: Path) -> str:
    """The identity of the model a worker loads: the store view's name (its manifest digest), or,
    for a plain folder, a digest of its files' names, sizes and modification times."""
    if re.fullmatch(r"[0-9a-f]{64}", model_path.name):
        return model_path.name
    h = hashlib.sha256(str(model_path.resolve()).encode())
    for f in sorted(p for p in model_path.iterdir() if p.is_file()):
        st = f.stat()
        h.update(f"\n{f.name} {st.st_size} {st.st_mtime_ns}".encode())
    return "dir-" + h.hexdigest()[:60]


def open_disk_cache(settings: DiskCacheSettings | None, model_path: Path, compute: str) -> DiskPrefixCache | None:
    """The disk cache for this model, or None when it is off or its folder cannot be used.

    A disk cache that cannot start never stops the model from loading: it is logged and skipped.
    """
    if settings is None or settings.max_bytes <= 0:
        return None
    try:
        return DiskPrefixCache(settings, model=model_digest(model_path), compute=compute)
    except OSError as e:
        log.warning("prefix_disk_unavailable", root=str(settings.root), error=f"{type(e).__name__}: {e}")
        return None


def common_prefix(a: np.ndarray, b: np.ndarray) -> int:
    n = min(len(a), len(b))
    differ = np.flatnonzero(a[:n] != b[:n])
    return int(differ[0]) if differ.size else n


class DiskPrefixCache:
    """The on-disk tier of the prefix cache for one model (see the module docstring)."""

    def __init__(self, settings: DiskCacheSettings, *, model: str, compute: str) -> None:
        self.root = settings.root
        self.max_bytes = settings.max_bytes
        self.min_tokens = max(1, settings.min_tokens)
        self.model = model
        self.compute = compute            # "cpu float32": a cache computed otherwise is not exact here
        self.folder = self.root / model
        self.folder.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Condition()  # guards _index and _pending; notified when a write ends
        self._index: dict[str, DiskEntry] = {}
        self._pending: set[str] = set()     # keys handed to the writer, not yet on disk
        self._jobs: queue.Queue[_Write | None] = queue.Queue(MAX_PENDING_WRITES)
        self._closed = False
        self._scan()
        self._writer = threading.Thread(target=self._write_loop, name="prefix-disk-writer", daemon=True)
        self._writer.start()

    def __len__(self) -> int:
        with self._lock:
            return len(self._index)

    @property
    def nbytes(self) -> int:
        with self._lock:
            return sum(e.nbytes for e in self._index.values())

    # -- engine thread -----------------------------------------------------------------------------

    def find(self, tokens: Sequence[int]) -> DiskMatch | None:
        """The entry that can stand in for the longest prefix of `tokens` (at least `min_tokens`,
        leaving one token to evaluate), from the index alone: nothing is read yet."""
        if len(tokens) <= self.min_tokens:
            return None  # no prefix of it can be min_tokens long and leave a token to evaluate
        query = np.asarray(tokens, dtype=np.int64)
        best: DiskMatch | None = None
        with self._lock:
            entries = list(self._index.values())
        for entry in entries:
            reusable = min(common_prefix(entry.tokens, query), len(query) - 1)
            if reusable < len(entry.tokens) and not entry.trimmable:
                continue  # usable only whole, as a prefix of the prompt
            if reusable >= self.min_tokens and (best is None or reusable > best.reusable):
                best = DiskMatch(entry, reusable)
        return best

    def load(self, entry: DiskEntry) -> list[Any] | None:
        """The KV cache of `entry`, read and checked (MLX: engine thread); None, and the file is
        removed, when it is not exactly what the index says."""
        started = time.perf_counter()
        try:
            cache, metadata = load_prompt_cache(str(entry.path), return_metadata=True)
            problem = self._check(entry.path, metadata)
            if problem is None and not np.array_equal(_tokens(metadata), entry.tokens):
                problem = "its token ids changed since the index was read"
            if problem is None:
                offsets = {getattr(c, "offset", len(entry.tokens)) for c in cache}
                if offsets != {len(entry.tokens)}:
                    problem = f"it holds {sorted(offsets)} positions for {len(entry.tokens)} tokens"
            if problem is None:
                mx.eval([c.state for c in cache])
        except Exception as e:  # noqa: BLE001 - whatever is wrong with the file, it is not used
            if not entry.path.exists():
                self._forget(entry.path.stem)  # evicted meanwhile (by this model's writer or another worker's)
                return None
            problem = f"{type(e).__name__}: {e}"
        if problem is not None:
            self._remove(entry.path, problem)
            return None
        with contextlib.suppress(OSError):
            os.utime(entry.path)  # most recently used, for the eviction order of every worker
        log.info("prefix_disk_hit", tokens=len(entry.tokens), bytes=entry.nbytes,
                 load_ms=round((time.perf_counter() - started) * 1e3, 2))
        return cache

    def save(self, tokens: Sequence[int], cache: list[Any], *, prompt_tokens: int | None = None) -> bool:
        """Hand a finished sequence's cache (holding exactly `tokens`) to the writer; True if queued.

        Skipped: short sequences, sequences that a file already covers, caches larger than the
        whole disk cache, and any while the writer is `MAX_PENDING_WRITES` behind. The arrays are
        evaluated here (a no-op for the batch's extracted caches) and never changed afterwards.
        """
        if self._closed or len(tokens) < self.min_tokens or not cache:
            return False
        started = time.perf_counter()
        ids = np.asarray(tokens, dtype=np.int64)
        key = self._key(ids)
        nbytes = sum(c.nbytes for c in cache)
        with self._lock:
            if key in self._pending or key in self._index or nbytes > self.max_bytes or any(
                    e.trimmable and len(e.tokens) > len(ids) and common_prefix(e.tokens, ids) == len(ids)
                    for e in self._index.values()):
                return False
            self._pending.add(key)
        mx.eval([c.state for c in cache])
        write = _Write(key=key, tokens=ids, cache=[copy.copy(c) for c in cache],
                       prompt_tokens=len(ids) if prompt_tokens is None else min(prompt_tokens, len(ids)),
                       trimmable=can_trim_prompt_cache(cache), handoff_ms=0.0)
        write.handoff_ms = round((time.perf_counter() - started) * 1e3, 3)
        try:
            self._jobs.put_nowait(write)
        except queue.Full:
            self._done(key)
            log.info("prefix_disk_skipped", tokens=len(ids), reason="the writer is busy")
            return False
        return True

    # -- any thread --------------------------------------------------------------------------------

    def wait_idle(self, timeout: float) -> bool:
        """Block until every queued write is on disk (or `timeout`); True if none is left."""
        with self._lock:
            return self._lock.wait_for(lambda: not self._pending, timeout)

    def close(self, timeout: float = 1.5) -> bool:
        """Take no more writes; finish the queued ones within `timeout`. True if all were written."""
        self._closed = True
        done = self.wait_idle(timeout)
        with contextlib.suppress(queue.Full):
            self._jobs.put_nowait(None)
        return done

    # -- the index -----------------------------------------------------------------------------------

    def _key(self, ids: np.ndarray) -> str:
        h = hashlib.sha256(f"{FORMAT}\n{self.model}\n{self.compute}\n".encode())
        h.update(ids.tobytes())
        return h.hexdigest()[:40]

    def _metadata(self, ids: np.ndarray, prompt_tokens: int, trimmable: bool) -> dict[str, str]:
        return {"mlxserve_format": FORMAT, "model": self.model, "compute": self.compute,
                "tokens": ",".join(map(str, ids.tolist())), "prompt_tokens": str(prompt_tokens),
                "trimmable": "true" if trimmable else "false"}

    def _check(self, path: Path, metadata: dict[str, str]) -> str | None:
        """Why the file at `path` with `metadata` is not this model's entry, or None if it is."""
        if metadata.get("mlxserve_format") != FORMAT:
            return f"format {metadata.get('mlxserve_format')!r} is not {FORMAT!r}"
        if metadata.get("model") != self.model:
            return f"it belongs to model {metadata.get('model')!r}"
        if metadata.get("compute") != self.compute:
            return f"it was computed in {metadata.get('compute')!r}, not {self.compute!r}"
        if self._key(_tokens(metadata)) != path.stem:
            return "its token ids do not match its name"
        return None

    def _scan(self) -> None:
        """Read what this model has on disk; remove what is not a usable entry (engine thread)."""
        for path in sorted(self.folder.iterdir()):
            tmp = _TMP.fullmatch(path.name)
            if tmp:
                if not _pid_alive(int(tmp.group(1))):
                    self._remove(path, "a write that did not finish")
                continue
            if not (path.name.endswith(SUFFIX) and _KEY.fullmatch(path.name[: -len(SUFFIX)])):
                self._remove(path, "not a prefix cache file")
                continue
            try:
                # Reads the header only (the arrays load lazily); a short or garbled file fails here.
                arrays, flat = mx.load(str(path), return_metadata=True)
                metadata = tree_unflatten(list(flat.items()))[0]
                del arrays
                problem = self._check(path, metadata)
            except Exception as e:  # noqa: BLE001 - any unreadable file is removed
                problem, metadata = f"{type(e).__name__}: {e}", {}
            if problem is not None:
                self._remove(path, problem)
                continue
            ids = _tokens(metadata)
            self._index[path.stem] = DiskEntry(
                path=path, tokens=ids, prompt_tokens=int(metadata.get("prompt_tokens", len(ids))),
                trimmable=metadata.get("trimmable", "true") == "true", nbytes=path.stat().st_size)
        log.info("prefix_disk_index", folder=str(self.folder), entries=len(self._index),
                 bytes=sum(e.nbytes for e in self._index.values()))

    def _forget(self, key: str) -> None:
        with self._lock:
            self._index.pop(key, None)

    def _remove(self, path: Path, reason: str) -> None:
        self._forget(path.stem if path.name.endswith(SUFFIX) else path.name)
        with contextlib.suppress(OSError):  # gone already, or a folder someone put here
            path.unlink()
        log.warning("prefix_disk_removed", path=str(path), reason=reason)

    # -- the writer thread ---------------------------------------------------------------------------

    def _write_loop(self) -> None:
        # Linux: a thread is a task with its own nice value. Copying into the page cache competes
        # with the decode step for the cores; the step should win.
        with contextlib.suppress(OSError, AttributeError):
            os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), WRITER_NICE)
        self._evict()  # the cap may have been lowered since the last run
        while True:
            write = self._jobs.get()
            if write is None:
                return
            key = write.key
            try:
                self._write(write)
            except Exception:  # noqa: BLE001 - a failed write costs a future hit, nothing more
                log.exception("prefix_disk_write_failed", tokens=len(write.tokens))
            finally:
                del write  # the arrays go now, not when the next write arrives
                self._done(key)

    def _done(self, key: str) -> None:
        with self._lock:
            self._pending.discard(key)
            self._lock.notify_all()

    def _write(self, write: _Write) -> None:
        key, ids, trimmable = write.key, write.tokens, write.trimmable
        started = time.perf_counter()
        path = self.folder / f"{key}{SUFFIX}"
        tmp = self.folder / f".{os.getpid()}-{os.urandom(4).hex()}.tmp{SUFFIX}"
        try:
            with mx.stream(mx.cpu):  # this thread's own stream; the arrays are evaluated already
                save_prompt_cache(str(tmp), write.cache, self._metadata(ids, write.prompt_tokens, trimmable))
            fd = os.open(tmp, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
            os.replace(tmp, path)
        except BaseException:
            with contextlib.suppress(FileNotFoundError):
                tmp.unlink()
            raise
        entry = DiskEntry(path=path, tokens=ids, prompt_tokens=write.prompt_tokens, trimmable=trimmable,
                          nbytes=path.stat().st_size)
        with self._lock:
            self._index[key] = entry
            # Superseded: entries whose whole prompt this sequence holds (an earlier turn of the
            # same conversation, or the same prompt answered before): it serves all they could.
            stale = [e for k, e in self._index.items() if k != key and trimmable
                     and common_prefix(e.tokens, ids) >= e.prompt_tokens]
        for e in stale:
            self._remove(e.path, "superseded by a longer sequence")
        log.info("prefix_disk_written", tokens=len(ids), bytes=entry.nbytes, handoff_ms=write.handoff_ms,
                 write_ms=round((time.perf_counter() - started) * 1e3, 2))
        self._evict(keep=path)

    def _evict(self, keep: Path | None = None) -> None:
        """Remove the least recently used files of every model until the folder fits `max_bytes`."""
        files = []
        for path in self.root.glob(f"*/*{SUFFIX}"):
            if not _KEY.fullmatch(path.name[: -len(SUFFIX)]):
                continue  # another worker's write in progress, or not ours to judge
            with contextlib.suppress(FileNotFoundError):
                st = path.stat()
                files.append((st.st_mtime_ns, st.st_size, path))
        total = sum(size for _, size, _ in files)
        for _, size, path in sorted(files, key=lambda f: f[0]):
            if total <= self.max_bytes:
                break
            if path == keep:
                continue
            if path.parent == self.folder:
                self._forget(path.stem)
            with contextlib.suppress(FileNotFoundError):
                path.unlink()
            total -= size
            log.info("prefix_disk_evicted", path=str(path), bytes=size)


def _tokens(metadata: dict[str, str]) -> np.ndarray:
    text = metadata.get("tokens", "")
    return np.array(text.split(",") if text else [], dtype=np.int64)


def _pid_alive(pid: int) -> bool:
    return pid == os.getpid() or pid_alive(pid)
