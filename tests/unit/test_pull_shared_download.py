"""A blob two pulls need is downloaded once (downloads.py); when the disk fills under it, the pull
that waited on it is told the same: a full disk (which the store reports as 507 / exit 9), not a
network failure to retry (issue 21, item 9)."""

from __future__ import annotations

import errno
import threading
from pathlib import Path

import pytest

from mlxserve.services.common.errors import DiskFull
from mlxserve.services.store.downloads import fetch_blob
from mlxserve.services.store.manifest import Descriptor
from mlxserve.services.store.store import ModelStore


class FullDisk:
    """A source whose first download fails as a full disk would, once a second pull waits on it."""

    where = "a test source"

    def __init__(self) -> None:
        self.opened = threading.Event()
        self.release = threading.Event()

    def open(self, digest: str, offset: int):  # noqa: ANN201 - never returns
        self.opened.set()
        self.release.wait()
        raise OSError(errno.ENOSPC, "No space left on device")


def test_a_pull_waiting_on_a_download_that_filled_the_disk_is_told_the_disk_is_full(tmp_path: Path) -> None:
    store = ModelStore(tmp_path / "models")
    desc = Descriptor("application/octet-stream", "sha256:" + "ab" * 32, 10)
    source = FullDisk()
    errors: dict[str, BaseException] = {}
    waiting = threading.Event()

    def owner() -> None:
        try:
            fetch_blob(store, source, desc, lambda e: None, None)
        except BaseException as e:  # noqa: BLE001 - checked below
            errors["owner"] = e

    def progress(event: object) -> None:
        waiting.set()  # the second pull reports the first one's progress: it is waiting on it
        source.release.set()

    first = threading.Thread(target=owner)
    first.start()
    assert source.opened.wait(10)
    with pytest.raises(OSError) as waited:
        fetch_blob(store, source, desc, progress, None)
    first.join(10)
    assert waiting.is_set()
    assert isinstance(errors["owner"], OSError) and errors["owner"].errno == errno.ENOSPC
    assert waited.value.errno == errno.ENOSPC


class Untouched:
    """A source that must not be asked for a byte."""

    where = "a test source"

    def __init__(self) -> None:
        self.opened = False

    def open(self, digest: str, offset: int):  # noqa: ANN201 - fails the test if reached
        self.opened = True
        raise AssertionError("the blob was fetched")


def test_a_layer_declaring_more_bytes_than_the_disk_has_free_is_refused_before_anything_is_fetched(tmp_path: Path) -> None:
    store = ModelStore(tmp_path / "models")
    source = Untouched()
    with pytest.raises(DiskFull, match=r"declares 1152921504606846976 bytes; the disk holding the model store has \d+ bytes free"):
        fetch_blob(store, source, Descriptor("application/octet-stream", "sha256:" + "cd" * 32, 1 << 60), lambda e: None, None)
    assert not source.opened
    assert not any(store.tmp_dir.glob("*"))
