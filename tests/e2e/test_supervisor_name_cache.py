"""The supervisor remembers what a model name resolves to, and forgets it when the store changes.

A real ModelStore served on a real unix socket (in this process, so the test counts the store's
resolves), and the supervisor's real `StoreResolver` reading the store's change marker.
"""

from __future__ import annotations

import asyncio
import shutil
import tempfile
from pathlib import Path
from typing import Any, Iterator

import pytest

from mlxserve.services.common import rpc
from mlxserve.services.common.errors import NotFound
from mlxserve.services.store.changes import marker_path
from mlxserve.services.store.server import build_server
from mlxserve.services.store.store import ModelStore
from mlxserve.services.supervisor.store_client import StoreResolver
from mlxserve.v1 import store_pb2, store_pb2_grpc
from tests.fixtures.tiny_model import write_tiny_model


class Served:
    def __init__(self, home: Path) -> None:
        self.home = home
        self.sock = home / "run" / "store.sock"
        self.store = ModelStore(home / "models")
        self.resolves: list[str] = []
        resolve = self.store.resolve

        def counted(name: str):
            self.resolves.append(name)
            return resolve(name)

        self.store.resolve = counted  # type: ignore[method-assign]
        self.digest_of = lambda name: resolve(name).digest  # uncounted: what the store holds now
        self.server = build_server(self.store, self.sock)
        self.server.start()
        self.channel = rpc.sync_channel(rpc.unix_target(self.sock))
        self.stub = store_pb2_grpc.StoreStub(self.channel)

    def create(self, name: str, folder: Path) -> str:
        """Create `name` from `folder`; the new model's digest (a manifest records when it was made, so
        the same folder made twice may be two digests)."""
        list(self.stub.Create(store_pb2.CreateRequest(name=name, from_path=str(folder)), timeout=60))
        return self.digest_of(name)

    def restart(self) -> None:
        self.server.stop(0)
        self.server = build_server(self.store, self.sock)
        self.server.start()

    def close(self) -> None:
        self.channel.close()
        self.server.stop(0)


@pytest.fixture(scope="module")
def folders(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("tiny")
    return write_tiny_model(root / "a", seed=0), write_tiny_model(root / "b", seed=1)


@pytest.fixture
def served() -> Iterator[Served]:
    home = Path(tempfile.mkdtemp(prefix="mxs"))  # short: unix socket paths are limited to ~107 bytes
    s = Served(home)
    try:
        yield s
    finally:
        s.close()
        shutil.rmtree(home, ignore_errors=True)


def run(coro) -> Any:
    return asyncio.run(coro)


def test_a_name_is_resolved_once_until_the_store_changes(served: Served, folders: tuple[Path, Path]) -> None:
    a, b = folders
    served.create("tiny", a)

    async def scenario() -> None:
        resolver = StoreResolver(rpc.unix_target(served.sock), changes=marker_path(served.sock.parent))
        try:
            first = await resolver.resolve("tiny")
            second = await resolver.resolve("tiny")
            assert second == first and served.resolves == ["tiny"]  # the second request asked nobody
            # What ps and the memory estimate need comes with the answer: no Show, no file read.
            assert first.details is not None and (first.details.family, first.details.quantization_level) == ("llama", "F32")
            assert (first.dtype, first.quantization_bits) == ("float32", 0)

            served.stub.Remove(store_pb2.RemoveRequest(name="tiny"), timeout=30)
            with pytest.raises(NotFound):
                await resolver.resolve("tiny")  # `mlxctl rm` is seen by the very next request

            served.create("tiny", b)
            recreated = await resolver.resolve("tiny")
            assert recreated.digest != first.digest  # the new model, not the cached one

            served.stub.Copy(store_pb2.CopyRequest(source="tiny", destination="tiny:other"), timeout=30)
            again = served.create("tiny", a)  # copy keeps b under the new name; tiny is a again
            assert (await resolver.resolve("tiny")).digest == again != recreated.digest
            assert (await resolver.resolve("tiny:other")).digest == recreated.digest

            asked = len(served.resolves)
            served.restart()  # a restarted store may have changed anything meanwhile
            await resolver.resolve("tiny")
            assert len(served.resolves) == asked + 1
        finally:
            await resolver.close()

    run(scenario())


def test_without_a_change_marker_every_request_resolves(served: Served, folders: tuple[Path, Path]) -> None:
    served.create("tiny", folders[0])

    async def scenario() -> None:
        resolver = StoreResolver(rpc.unix_target(served.sock), changes=served.home / "no-such-marker")
        try:
            await resolver.resolve("tiny")
            await resolver.resolve("tiny")
            assert served.resolves == ["tiny", "tiny"]
        finally:
            await resolver.close()

    run(scenario())
