"""Killing the store mid-create leaves the old state or the new one, never a damaged blob.

A real child process (the store's own code, no mocks) creates a model with a large weights file
over an existing version of the same name and is killed with SIGKILL at several moments:
while copying into staging, while moving blobs into place, and right after the manifest write
began. After each kill a fresh ModelStore (as the restarted service would) must list either the
old or the new complete model, every blob must hash to its name, and verify must be clean.
"""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from mlxserve.services.store.store import ModelStore
from tests.fixtures.tiny_gguf import write_tiny_hf_folder

BIG = 160 * 1024 * 1024  # large enough that copying and hashing it takes a while

_CHILD = textwrap.dedent("""
    import sys
    from mlxserve.services.store.store import ModelStore

    def report(event):
        print(f"EVENT|{event.status}|{event.completed}|{event.total}", flush=True)

    ModelStore(sys.argv[1]).create_from_path("m", sys.argv[2], progress=report)
""")


@pytest.fixture(scope="module")
def big_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = write_tiny_hf_folder(tmp_path_factory.mktemp("big") / "src", seed=1)
    # A second weights file, of random (incompressible) bytes in a valid safetensors frame.
    header = json.dumps({"pad": {"dtype": "U8", "shape": [BIG], "data_offsets": [0, BIG]}}).encode()
    header += b" " * (-len(header) % 8)
    with open(folder / "model-extra.safetensors", "wb") as f:
        f.write(len(header).to_bytes(8, "little") + header)
        chunk = os.urandom(8 * 1024 * 1024)
        for i in range(BIG // len(chunk)):
            f.write(chunk[i % 7:] + chunk[: i % 7])  # vary the chunks a little
    return folder


@pytest.fixture(scope="module")
def small_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_tiny_hf_folder(tmp_path_factory.mktemp("small") / "src", seed=0)


def _kill_when(models: Path, src: Path, should_kill) -> bool:
    """Run a create in a child and SIGKILL it once `should_kill(status, completed, total)`; True if killed."""
    env = dict(os.environ, PYTHONPATH=os.getcwd())
    child = subprocess.Popen([sys.executable, "-c", _CHILD, str(models), str(src)], stdout=subprocess.PIPE,
                             stderr=subprocess.DEVNULL, text=True, env=env)
    assert child.stdout is not None
    killed = False
    for line in child.stdout:
        if not line.startswith("EVENT|"):
            continue  # the store's own log lines
        status, completed, total = line.rstrip("\n").removeprefix("EVENT|").rsplit("|", 2)
        if should_kill(status, int(completed), int(total)):
            child.send_signal(signal.SIGKILL)
            killed = True
            break
    child.stdout.close()
    child.wait(30)
    return killed


def _assert_consistent(models: Path, old_digest: str, expected_size: int) -> str:
    """Every blob hashes to its name, the model is the old or a complete new one, verify is clean."""
    for blob in (models / "blobs").iterdir():
        h = hashlib.sha256(blob.read_bytes()).hexdigest()
        assert blob.name == f"sha256-{h}", f"{blob.name} holds other bytes"
    store = ModelStore(models)
    store.clean_tmp()  # what the restarted service does first
    listed = store.list()
    assert [m.name for m in listed] == ["m:latest"]
    report = store.verify()
    assert report.ok, report
    view = store.resolve("m").view_path
    assert (view / "model.safetensors").is_file()
    if listed[0].digest != old_digest:
        extra = next(layer for layer in store.get_manifest("m")[2].layers if layer.title == "model-extra.safetensors")
        assert (view / "model-extra.safetensors").stat().st_size == extra.size == expected_size
    assert list(store.tmp_dir.iterdir()) == []
    store.gc(orphan_min_age_s=0)  # orphans of the killed create go; the model stays whole
    assert store.verify().ok and [m.name for m in store.list()] == ["m:latest"]
    return listed[0].digest


@pytest.mark.parametrize(
    "moment",
    [
        pytest.param(lambda s, c, t: s.startswith("copying model-extra") and c > t // 3, id="mid-copy"),
        pytest.param(lambda s, c, t: s.startswith("writing "), id="moving-blobs-into-place"),
        pytest.param(lambda s, c, t: s == "writing manifest", id="writing-manifest"),
    ],
)
def test_killing_a_create_leaves_the_old_model_or_the_new_one(
    tmp_path: Path, big_folder: Path, small_folder: Path, moment
) -> None:
    models = tmp_path / "models"
    old_digest = ModelStore(models).create_from_path("m", small_folder).digest
    assert _kill_when(models, big_folder, moment)
    _assert_consistent(models, old_digest, (big_folder / "model-extra.safetensors").stat().st_size)


def test_a_create_that_runs_to_the_end_replaces_the_old_model(tmp_path: Path, big_folder: Path, small_folder: Path) -> None:
    models = tmp_path / "models"
    old_digest = ModelStore(models).create_from_path("m", small_folder).digest
    assert not _kill_when(models, big_folder, lambda s, c, t: False)
    assert _assert_consistent(models, old_digest, (big_folder / "model-extra.safetensors").stat().st_size) != old_digest
