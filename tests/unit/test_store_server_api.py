"""The store's gRPC API for create, blobs, copy, verify, gc, pack and pull: a real ModelStore served
on a real unix socket (in this process, so a test can reach into the store's files)."""

from __future__ import annotations

import errno
import hashlib
import json
import os
import shutil
import tempfile
import threading
import time
from pathlib import Path
from typing import Iterator

import grpc
import pytest

from mlxserve.services.common import rpc
from mlxserve.services.common.errors import DiskFull, InvalidArgument, NotFound
from mlxserve.services.store import server as store_server
from mlxserve.services.store.progress import ProgressEvent
from mlxserve.services.store.server import build_server, disk_full_as_error
from mlxserve.services.store.store import ModelStore
from mlxserve.v1 import store_pb2, store_pb2_grpc
from tests.fixtures.tiny_gguf import write_tiny_gguf

OLD = time.time() - 7 * 86400


@pytest.fixture(scope="module")
def tiny_gguf(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("gguf") / "tiny.gguf"
    write_tiny_gguf(path, quant="Q8_0")
    return path


@pytest.fixture
def served() -> Iterator[tuple[store_pb2_grpc.StoreStub, ModelStore, Path]]:
    home = Path(tempfile.mkdtemp(prefix="mxs"))  # short: unix socket paths are limited to ~107 bytes
    store = ModelStore(home / "models")
    sock = home / "run" / "store.sock"
    server = build_server(store, sock)
    server.start()
    channel = rpc.sync_channel(rpc.unix_target(sock))
    try:
        yield store_pb2_grpc.StoreStub(channel), store, home
    finally:
        channel.close()
        server.stop(0)
        shutil.rmtree(home, ignore_errors=True)


def sha256(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def chunks(digest: str, data: bytes, size: int = 64 * 1024) -> Iterator[store_pb2.BlobChunk]:
    yield store_pb2.BlobChunk(digest=digest)
    for i in range(0, len(data), size):
        yield store_pb2.BlobChunk(data=data[i:i + size])


def call(stub_method, request, timeout: float = 60):
    return rpc.call_sync("store", stub_method, request, timeout=timeout)


def stream(stub_method, request, timeout: float = 120) -> list:
    try:
        return list(stub_method(request, timeout=timeout))
    except grpc.RpcError as e:
        from mlxserve.services.common.errors import from_rpc_error
        raise from_rpc_error(e, service="store") from None


def test_a_model_created_from_uploaded_blobs_keeps_its_system_parameters_and_messages(served, tiny_gguf: Path) -> None:
    stub, _, _ = served
    data = tiny_gguf.read_bytes()
    digest = sha256(data)
    assert not stub.HasBlob(store_pb2.HasBlobRequest(digest=digest), timeout=5).exists
    first = stub.PutBlob(chunks(digest, data), timeout=30)
    assert (first.digest, first.created) == (digest, True)
    assert stub.PutBlob(chunks(digest, data), timeout=30).created is False
    assert stub.HasBlob(store_pb2.HasBlobRequest(digest=digest), timeout=5).exists

    request = store_pb2.CreateRequest(
        name="chat", files={"model.gguf": digest}, system="Be brief.",
        parameters_json=json.dumps({"temperature": 0.25, "stop": ["<|im_end|>"]}),
        messages=[store_pb2.ModelMessage(role="user", content="hi"), store_pb2.ModelMessage(role="assistant", content="hello")],
    )
    events = stream(stub.Create, request)
    assert events[-1].status == "success"

    shown = call(stub.Show, store_pb2.ShowRequest(name="chat"))
    assert shown.system == "Be brief."
    assert "temperature" in shown.parameters and "0.25" in shown.parameters
    assert [(m.role, m.content) for m in shown.messages] == [("user", "hi"), ("assistant", "hello")]
    assert shown.template and shown.summary.details.quantization_level == "Q8_0"
    assert "\nFROM chat:latest\n" in shown.modelfile and 'SYSTEM """Be brief."""' in shown.modelfile
    assert "PARAMETER temperature 0.25" in shown.modelfile and "MESSAGE user hi" in shown.modelfile


def test_resolve_hands_the_supervisor_the_placement_a_model_was_created_with(served, tiny_gguf: Path) -> None:
    stub, _, _ = served
    data = tiny_gguf.read_bytes()
    digest = sha256(data)
    stub.PutBlob(chunks(digest, data), timeout=30)
    placement = {"hosts": ["127.0.0.1", "127.0.0.1:40001"], "strategy": "pipeline", "port": 40000}
    stream(stub.Create, store_pb2.CreateRequest(name="g", files={"model.gguf": digest}, placement_json=json.dumps(placement)))
    resolved = call(stub.Resolve, store_pb2.ResolveRequest(name="g"))
    assert json.loads(resolved.placement) == {**placement, "backend": "ring"}
    stream(stub.Create, store_pb2.CreateRequest(name="one", from_model="g", placement_json="{}"))
    assert call(stub.Resolve, store_pb2.ResolveRequest(name="one")).placement == ""
    with pytest.raises(InvalidArgument, match="placement_json is not valid JSON"):
        stream(stub.Create, store_pb2.CreateRequest(name="x", from_model="g", placement_json="{hosts"))


def test_an_upload_that_does_not_hash_to_its_digest_is_refused_and_not_kept(served) -> None:
    stub, store, home = served
    data = b"x" * 300_000
    wrong = sha256(b"something else")
    with pytest.raises(InvalidArgument, match="digest"):
        rpc.call_sync("store", stub.PutBlob, chunks(wrong, data), timeout=10)
    assert not stub.HasBlob(store_pb2.HasBlobRequest(digest=wrong), timeout=5).exists
    assert not stub.HasBlob(store_pb2.HasBlobRequest(digest=sha256(data)), timeout=5).exists
    assert [p for p in (home / "models" / "blobs").iterdir()] == []
    assert [p for p in store.tmp_dir.iterdir()] == []
    with pytest.raises(InvalidArgument):
        call(stub.HasBlob, store_pb2.HasBlobRequest(digest="sha256:../../etc/passwd"))
    with pytest.raises(InvalidArgument, match="first chunk"):
        rpc.call_sync("store", stub.PutBlob, iter([store_pb2.BlobChunk(data=b"no digest")]), timeout=10)


def test_a_modelfile_recipe_reads_paths_from_its_folder_and_request_fields_override_it(served, tiny_gguf: Path, tmp_path: Path) -> None:
    stub, _, _ = served
    shutil.copy(tiny_gguf, tmp_path / "weights.gguf")
    recipe = "FROM ./weights.gguf\nSYSTEM You are a pirate.\nPARAMETER temperature 0.5\nPARAMETER num_ctx 128\n"
    events = stream(stub.Create, store_pb2.CreateRequest(
        name="pirate", recipe=recipe, recipe_format="modelfile", base_dir=str(tmp_path), template="{{ .Prompt }}"))
    assert events[-1].status == "success"
    shown = call(stub.Show, store_pb2.ShowRequest(name="pirate"))
    # The request's template wins over the recipe's; an Ollama Go template is stored converted to Jinja.
    assert shown.system == "You are a pirate." and shown.template.startswith("{#- Converted by mlxserve")
    assert "num_ctx" in shown.parameters and "temperature" in shown.parameters

    with pytest.raises(InvalidArgument, match="absolute"):
        stream(stub.Create, store_pb2.CreateRequest(name="x", recipe=recipe, recipe_format="modelfile", base_dir="rel"))
    with pytest.raises(InvalidArgument, match="recipe_format"):
        stream(stub.Create, store_pb2.CreateRequest(name="x", recipe=recipe, recipe_format="dockerfile", base_dir=str(tmp_path)))


def test_copy_makes_an_alias_that_outlives_the_original(served, tiny_gguf: Path) -> None:
    stub, _, _ = served
    stream(stub.Create, store_pb2.CreateRequest(name="orig", from_path=str(tiny_gguf)))
    copied = call(stub.Copy, store_pb2.CopyRequest(source="orig", destination="me/alias:v1")).model
    assert copied.name == "me/alias:v1"
    call(stub.Remove, store_pb2.RemoveRequest(name="orig"))
    assert call(stub.Show, store_pb2.ShowRequest(name="me/alias:v1")).summary.digest == copied.digest
    with pytest.raises(NotFound):
        call(stub.Copy, store_pb2.CopyRequest(source="ghost", destination="x"))
    with pytest.raises(InvalidArgument):
        call(stub.Copy, store_pb2.CopyRequest(source="me/alias:v1", destination="../../etc"))


def test_verify_streams_progress_then_names_the_models_a_corrupt_blob_breaks(served, tiny_gguf: Path) -> None:
    stub, store, _ = served
    stream(stub.Create, store_pb2.CreateRequest(name="a", from_path=str(tiny_gguf)))
    call(stub.Copy, store_pb2.CopyRequest(source="a", destination="b"))
    events = stream(stub.Verify, store_pb2.VerifyRequest())
    assert any(e.HasField("progress") and e.progress.total > 0 for e in events)
    report = events[-1].report
    assert report.checked >= 5 and not report.corrupt and not report.missing

    _, _, manifest = store.get_manifest("a")
    weights = next(layer for layer in manifest.layers if layer.title.endswith(".safetensors"))
    blob = store.blobs.path(weights.digest)
    os.chmod(blob, 0o644)
    with open(blob, "r+b") as f:
        f.seek(100)
        f.write(b"\xff" * 16)
    report = stream(stub.Verify, store_pb2.VerifyRequest())[-1].report
    assert [(b.digest, list(b.models)) for b in report.corrupt] == [(weights.digest, ["a:latest", "b:latest"])]


def test_gc_removes_unreferenced_blobs_and_stale_partial_downloads(served) -> None:
    stub, store, _ = served
    data = b"orphan" * 1000
    digest = sha256(data)
    stub.PutBlob(chunks(digest, data), timeout=10)
    os.utime(store.blobs.path(digest), (OLD, OLD))
    partial = store.tmp_dir / ("partial-sha256-" + "ab" * 32)
    partial.write_bytes(b"half a download")
    os.utime(partial, (OLD, OLD))
    report = call(stub.Gc, store_pb2.GcRequest())
    assert list(report.removed_blobs) == [digest] and partial.name in report.removed_partials
    assert report.freed_bytes >= len(data)
    assert not stub.HasBlob(store_pb2.HasBlobRequest(digest=digest), timeout=5).exists and not partial.exists()


def test_a_packed_model_pulls_back_from_its_tarball_bit_for_bit(served, tiny_gguf: Path) -> None:
    stub, store, home = served
    stream(stub.Create, store_pb2.CreateRequest(name="packed", from_path=str(tiny_gguf)))
    _, before, _ = store.get_manifest("packed")
    tarball = home / "packed.tar"
    events = stream(stub.Pack, store_pb2.PackRequest(name="packed", out_path=str(tarball)))
    assert events[-1].status == "success" and tarball.stat().st_size > 0
    call(stub.Remove, store_pb2.RemoveRequest(name="packed"))

    events = stream(stub.Pull, store_pb2.PullRequest(name=str(tarball)))
    statuses = [e.status for e in events]
    assert statuses[0] == "pulling manifest" and statuses[-1] == "success"
    assert any(s.startswith("pulling ") and e.digest and e.total for s, e in zip(statuses, events))
    _, after, _ = store.get_manifest("packed")
    assert after == before

    with pytest.raises(InvalidArgument, match="absolute"):
        stream(stub.Pack, store_pb2.PackRequest(name="packed", out_path="rel.tar"))
    with pytest.raises(InvalidArgument, match="looks like a file"):
        stream(stub.Pull, store_pb2.PullRequest(name="packed.tar"))


def test_a_client_that_goes_away_cancels_the_pull(served, monkeypatch: pytest.MonkeyPatch) -> None:
    stub, _, _ = served
    seen: dict[str, bool] = {}
    stopped = threading.Event()

    def slow_pull(store, ref, *, insecure, progress, cancel, remotes):  # noqa: ANN001 - the transfer.pull signature
        progress(ProgressEvent("pulling manifest"))
        seen["cancelled"] = cancel.wait(10)
        stopped.set()

    monkeypatch.setattr(store_server.transfer, "pull", slow_pull)
    call_ = stub.Pull(store_pb2.PullRequest(name="127.0.0.1:5000/library/slow:latest"), timeout=30)
    assert next(call_).status == "pulling manifest"
    call_.cancel()
    assert stopped.wait(10) and seen["cancelled"]


def test_a_full_disk_reads_as_a_sentence_not_an_internal_error() -> None:
    def write() -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    with pytest.raises(DiskFull, match="disk full: no space left on the disk that holds the model store") as info:
        disk_full_as_error(write)()
    assert (info.value.http_status, info.value.exit_code) == (507, 9)
