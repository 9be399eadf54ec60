"""Pull, push and pack against a real registry (Debian's docker-registry) and a real peer (skopeo)."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from mlxserve.services.common.errors import Internal, InvalidArgument, Unavailable
from mlxserve.services.store.credentials import Credentials, CredentialStore
from mlxserve.services.store.store import ModelStore
from mlxserve.services.store.transfer import Remotes, pack, partial_path, pull, push
from tests.fixtures.registry import Registry, auth_registry, put_model, registry, require_tool  # noqa: F401

REPO_ROOT = Path(__file__).resolve().parents[2]
BIG = 128 * 1024 * 1024  # big enough that a pull can be caught and killed halfway


def blob_gets(reg: Registry, digest: str, since: int = 0) -> list[tuple[str, str, int, int]]:
    return [r for r in reg.requests()[since:] if r[0] == "GET" and r[1].endswith(f"/blobs/{digest}")]


def store_at(path: Path) -> ModelStore:
    return ModelStore(path / "models")


def blobs_of(store: ModelStore, name: str) -> dict[str, bytes]:
    _, _, manifest = store.get_manifest(name)
    return {d: store.blobs.path(d).read_bytes() for d in manifest.digests()}


@pytest.fixture(scope="session")
def big_model(registry: Registry, tmp_path_factory: pytest.TempPathFactory) -> tuple[str, str, ModelStore]:
    """A model with a 128 MiB random weights blob, pushed once: (name, weights digest, source store)."""
    folder = tmp_path_factory.mktemp("big-model")
    weights = folder / "weights.bin"
    h = hashlib.sha256()
    with open(weights, "wb") as f:
        for _ in range(BIG // (8 << 20)):
            chunk = os.urandom(8 << 20)
            h.update(chunk)
            f.write(chunk)
    store = store_at(folder / "src")
    name = f"{registry.host}/library/big:latest"
    put_model(store, name, {"model.safetensors": weights, "config.json": b'{"model_type": "llama"}'})
    push(store, name, insecure=True)
    return name, "sha256:" + h.hexdigest(), store


def test_push_then_pull_round_trip_is_bit_identical(registry: Registry, tmp_path: Path) -> None:
    src, dst = store_at(tmp_path / "a"), store_at(tmp_path / "b")
    name = f"{registry.host}/library/roundtrip:v1"
    put_model(src, name, {"model.safetensors": os.urandom(1 << 20), "config.json": b'{"x": 1}',
                          "tokenizer.json": b'{"model": {}}'})
    events = []
    push(src, name, insecure=True, progress=events.append)
    assert [e.status for e in events][0] == "retrieving manifest"
    assert [e.status for e in events][-2:] == ["pushing manifest", "success"]

    events = []
    summary = pull(dst, name, insecure=True, progress=events.append)

    assert summary.name == f"{registry.host}/library/roundtrip:v1"
    assert dst.get_manifest(name)[1] == src.get_manifest(name)[1]
    assert blobs_of(dst, name) == blobs_of(src, name)
    statuses = [e.status for e in events]
    assert statuses[0] == "pulling manifest"
    assert statuses[-3:] == ["verifying sha256 digest", "writing manifest", "success"]
    weights = [e for e in events if e.status.startswith("pulling ") and e.total == 1 << 20]
    assert weights and weights[-1].completed == 1 << 20
    assert weights[-1].status == f"pulling {weights[-1].digest[7:19]}"
    assert [m.name for m in dst.list()] == [summary.name]


def test_push_uploads_only_missing_blobs(registry: Registry, tmp_path: Path) -> None:
    store = store_at(tmp_path)
    weights = os.urandom(1 << 20)
    first = f"{registry.host}/library/shared:one"
    put_model(store, first, {"model.safetensors": weights, "config.json": b'{"v": 1}'})
    push(store, first, insecure=True)

    # Same weights, a different config.json: only that one small blob is new.
    second = f"{registry.host}/library/shared:two"
    put_model(store, second, {"model.safetensors": weights, "config.json": b'{"v": 2}'})
    mark = len(registry.requests())
    push(store, second, insecure=True)
    calls = registry.requests()[mark:]
    uploads = [r for r in calls if r[0] == "PUT" and "/blobs/uploads/" in r[1]]
    assert len(uploads) == 1 and hashlib.sha256(b'{"v": 2}').hexdigest() in uploads[0][1]
    assert [r[:3] for r in calls if "/manifests/" in r[1]] == [("PUT", "/v2/library/shared/manifests/two", 201)]

    # Pushing again uploads nothing at all but the manifest.
    mark = len(registry.requests())
    push(store, second, insecure=True)
    calls = registry.requests()[mark:]
    assert not [r for r in calls if r[0] in ("POST", "PATCH") or "/blobs/uploads/" in r[1]]
    assert [r[0] for r in calls if "/manifests/" in r[1]] == ["PUT"]


def test_skopeo_copies_what_we_push(registry: Registry, tmp_path: Path) -> None:
    skopeo = require_tool("skopeo", "skopeo")
    store = store_at(tmp_path / "s")
    name = f"{registry.host}/library/toskopeo:latest"
    put_model(store, name, {"model.safetensors": os.urandom(4096), "config.json": b"{}"})
    push(store, name, insecure=True)

    out = tmp_path / "oci"
    subprocess.run([skopeo, "copy", "--src-tls-verify=false", "--preserve-digests", f"docker://{name}",
                    f"oci:{out}:latest"], check=True, capture_output=True)

    _, data, manifest = store.get_manifest(name)
    index = json.loads((out / "index.json").read_text())
    assert index["manifests"][0]["digest"] == "sha256:" + hashlib.sha256(data).hexdigest()
    for digest in manifest.digests():
        assert (out / "blobs/sha256" / digest[7:]).read_bytes() == store.blobs.path(digest).read_bytes()


def test_we_pull_what_skopeo_pushes(registry: Registry, tmp_path: Path) -> None:
    skopeo = require_tool("skopeo", "skopeo")
    src, dst = store_at(tmp_path / "a"), store_at(tmp_path / "b")
    put_model(src, "packed:v3", {"model.safetensors": os.urandom(8192), "config.json": b'{"k": 3}'})
    tarball = pack(src, "packed:v3", tmp_path / "packed.tar")
    target = f"{registry.host}/other/fromskopeo:v3"
    subprocess.run([skopeo, "copy", "--dest-tls-verify=false", f"oci-archive:{tarball}:v3", f"docker://{target}"],
                   check=True, capture_output=True)

    pull(dst, target, insecure=True)

    assert dst.get_manifest(target)[1] == src.get_manifest("packed:v3")[1]
    assert blobs_of(dst, target) == blobs_of(src, "packed:v3")
    assert dst.resolve(target).view_path.joinpath("config.json").read_bytes() == b'{"k": 3}'


_PULL_SCRIPT = """
import sys, time
from pathlib import Path
from mlxserve.services.store.store import ModelStore
from mlxserve.services.store.transfer import pull

def progress(event):
    if event.total > 1 << 20 and event.completed >= event.total // 3:
        print("HALFWAY", flush=True)
        time.sleep(600)

pull(ModelStore(Path(sys.argv[1])), sys.argv[2], insecure=True, progress=progress)
"""


def test_pull_killed_midway_resumes_without_refetching_finished_bytes(
        registry: Registry, big_model: tuple[str, str, ModelStore], tmp_path: Path) -> None:
    name, weights, _ = big_model
    store = store_at(tmp_path)
    before = len(registry.requests())
    proc = subprocess.Popen([sys.executable, "-c", _PULL_SCRIPT, str(store.models_dir), name],
                            stdout=subprocess.PIPE, text=True, cwd=REPO_ROOT)
    try:
        assert proc.stdout is not None and proc.stdout.readline().strip() == "HALFWAY"
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    partial = partial_path(store, weights)
    kept = partial.stat().st_size
    assert BIG // 3 <= kept < BIG
    assert store.list() == [] and not store.blobs.exists(weights)
    # The registry logs the killed download when it notices the broken connection: wait for it.
    deadline = time.monotonic() + 10
    while not blob_gets(registry, weights, before) and time.monotonic() < deadline:
        time.sleep(0.02)
    assert [status for _, _, status, _ in blob_gets(registry, weights, before)] == [200]

    mark = len(registry.requests())
    pull(store, name, insecure=True)

    gets = blob_gets(registry, weights, mark)
    assert [(status, size) for _, _, status, size in gets] == [(206, BIG - kept)]
    assert store.blobs.path(weights).stat().st_size == BIG and not partial.exists()
    assert [m.name for m in store.list()] == [name]


def test_concurrent_pulls_of_the_same_blob_share_one_download(
        registry: Registry, big_model: tuple[str, str, ModelStore], tmp_path: Path) -> None:
    name, weights, _ = big_model
    store = store_at(tmp_path)
    second_joined = threading.Event()

    def first_progress(event) -> None:  # hold the first download open until the second pull joins it
        if event.digest == weights and 0 < event.completed < event.total:
            second_joined.wait(30)

    def second_progress(event) -> None:
        if event.digest == weights:
            second_joined.set()

    mark = len(registry.requests())
    results: dict[str, object] = {}

    def run(key: str, progress) -> None:
        try:
            results[key] = pull(store, name, insecure=True, progress=progress)
        except BaseException as e:  # noqa: BLE001 - reported by the assertion below
            results[key] = e

    first = threading.Thread(target=run, args=("first", first_progress))
    first.start()
    # Start the second pull once the first is inside the weights download.
    while not os.path.exists(partial_path(store, weights)) and first.is_alive():
        time.sleep(0.005)
    second = threading.Thread(target=run, args=("second", second_progress))
    second.start()
    first.join(60)
    second.join(60)

    summaries = [results["first"], results["second"]]
    assert [(s.name, s.digest) for s in summaries] == [(name, summaries[0].digest)] * 2  # type: ignore[union-attr]
    assert len(blob_gets(registry, weights, mark)) == 1
    assert store.blobs.path(weights).stat().st_size == BIG


def test_corrupted_blob_from_registry_is_refused_and_nothing_becomes_visible(
        registry: Registry, tmp_path: Path) -> None:
    src, dst = store_at(tmp_path / "a"), store_at(tmp_path / "b")
    name = f"{registry.host}/library/corrupt:latest"
    weights = os.urandom(1 << 20)
    put_model(src, name, {"model.safetensors": weights, "config.json": b'{"c": 1}'})
    push(src, name, insecure=True)
    digest = "sha256:" + hashlib.sha256(weights).hexdigest()
    on_disk = registry.blob_data_path(digest)
    tampered = bytearray(weights)
    tampered[12345] ^= 0xFF
    on_disk.write_bytes(bytes(tampered))

    with pytest.raises(Internal, match="failed verification"):
        pull(dst, name, insecure=True)

    assert dst.list() == []
    assert not dst.blobs.exists(digest)
    assert not partial_path(dst, digest).exists()


def test_basic_auth_with_credentials_from_config_and_docker_config(
        auth_registry: Registry, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    reg = auth_registry
    src = store_at(tmp_path / "src")
    name = f"{reg.host}/library/private:latest"
    put_model(src, name, {"model.safetensors": os.urandom(4096), "config.json": b"{}"})
    empty_docker = tmp_path / "no-docker"
    empty_docker.mkdir()
    monkeypatch.setenv("DOCKER_CONFIG", str(empty_docker))

    # Our config file: [registry_auth."host"] username/password.
    config = tmp_path / "config.toml"
    config.write_text(f'[registry_auth."{reg.host}"]\nusername = "{reg.username}"\npassword = "{reg.password}"\n')
    monkeypatch.setenv("MLXSERVE_CONFIG", str(config))
    push(src, name, insecure=True)
    pull(store_at(tmp_path / "via-config"), name, insecure=True)

    # Docker's config.json, with the base64 `auth` form docker login writes.
    config.write_text("")
    docker = tmp_path / "docker"
    docker.mkdir()
    token = __import__("base64").b64encode(f"{reg.username}:{reg.password}".encode()).decode()
    (docker / "config.json").write_text(json.dumps({"auths": {reg.host: {"auth": token}}}))
    monkeypatch.setenv("DOCKER_CONFIG", str(docker))
    via_docker = store_at(tmp_path / "via-docker")
    pull(via_docker, name, insecure=True)
    assert via_docker.get_manifest(name)[1] == src.get_manifest(name)[1]

    # No credentials anywhere, then wrong ones: clear refusals, nothing stored.
    monkeypatch.setenv("DOCKER_CONFIG", str(empty_docker))
    nothing = store_at(tmp_path / "nothing")
    with pytest.raises(InvalidArgument, match="requires authentication.*registry_auth"):
        pull(nothing, name, insecure=True)
    with pytest.raises(InvalidArgument, match="refused the credentials for user 'tester'"):
        pull(nothing, name, insecure=True, credentials=Credentials("tester", "wrong"))
    assert nothing.list() == []
    assert CredentialStore({}, None).lookup(reg.host) is None


def test_plain_http_registry_is_refused_without_insecure(registry: Registry, tmp_path: Path) -> None:
    store = store_at(tmp_path)
    name = f"{registry.host}/library/plain:latest"
    put_model(store, name, {"config.json": b"{}"})
    with pytest.raises(InvalidArgument, match="does not speak HTTPS.*--insecure"):
        push(store, name)
    with pytest.raises(InvalidArgument, match="does not speak HTTPS.*--insecure"):
        pull(store_at(tmp_path / "other"), name)


def test_a_bare_name_is_pulled_from_the_default_registry_and_keeps_its_short_name(registry: Registry,
                                                                                tmp_path: Path) -> None:
    src = store_at(tmp_path / "src")
    mirrored = f"{registry.host}/library/mirrored:v1"
    put_model(src, mirrored, {"model.safetensors": os.urandom(4096), "config.json": b"{}"})
    push(src, mirrored, insecure=True)
    # default_registry written as http://... is plain http by choice: no --insecure needed.
    dst = store_at(tmp_path / "dst")
    summary = pull(dst, "mirrored:v1", remotes=Remotes(default_registry=f"http://{registry.host}"))
    assert summary.name == "mirrored:v1" and [m.name for m in dst.list()] == ["mirrored:v1"]
    assert dst.get_manifest("mirrored:v1")[1] == src.get_manifest(mirrored)[1]


def test_pushing_a_bare_name_to_ollamas_registry_is_refused_saying_where_to_push(tmp_path: Path) -> None:
    store = store_at(tmp_path)
    put_model(store, "mine:latest", {"config.json": b"{}"})
    with pytest.raises(InvalidArgument, match="Ollama's registry.*mlxctl cp NAME"):
        push(store, "mine:latest")


def test_pulling_a_bare_name_made_here_succeeds_without_asking_any_registry(tmp_path: Path) -> None:
    store = store_at(tmp_path)
    put_model(store, "made-here:latest", {"config.json": b"{}"})
    before = store.get_manifest("made-here")[1]
    events = []
    # default_registry points nowhere that answers: no connection is attempted at all.
    summary = pull(store, "made-here", progress=events.append, remotes=Remotes(default_registry="http://127.0.0.1:9"))
    assert summary.name == "made-here:latest" and events[-1].status == "success"
    assert "created here, not pulled" in events[0].status and store.get_manifest("made-here")[1] == before


def test_pulling_a_present_model_whose_registry_is_unreachable_keeps_it_and_says_so(tmp_path: Path) -> None:
    store = store_at(tmp_path / "dst")
    name = "127.0.0.1:9/library/kept:v1"  # a registry on a port nothing listens on
    put_model(store, name, {"config.json": b"{}"})
    with pytest.raises(Unavailable):
        pull(store_at(tmp_path / "empty"), name, insecure=True)  # absent: an error, as before
    events = []
    summary = pull(store, name, insecure=True, progress=events.append)
    assert summary.name == name and events[-1].status == "success"
    assert any("could not reach 127.0.0.1:9" in e.status and "keeping the local copy" in e.status for e in events)
