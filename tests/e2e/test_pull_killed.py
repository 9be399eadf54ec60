"""The store service killed (SIGKILL) halfway through a pull, from each source: an OCI registry
(an mlxserve model), Ollama's image format in a registry, and the Hugging Face hub. Nothing is
visible afterwards, the partial download stays, and the next pull (store started again) goes on
from where it stopped with a Range request instead of starting over.

The store runs on its own (as launchd or systemd runs it): `mlxctl pull` talks to it over its
socket. The sources are paced (a throttling relay in front of the registry, the hub stand-in's
own switch) so that the kill lands mid-download.
"""

from __future__ import annotations

import hashlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Iterator

import pytest

from mlxserve.services.store.store import ModelStore
from mlxserve.services.store.transfer import push
from tests.e2e.harness import MLXCTL
from tests.fixtures.hf_hub_server import HubServer, make_file
from tests.fixtures.ollama_registry import GEMMA3, PushedImage, ollama_gemma3  # noqa: F401 (fixture)
from tests.fixtures.registry import Registry, put_model, registry  # noqa: F401 (fixture)
from tests.fixtures.throttle_proxy import ThrottleProxy

pytestmark = [pytest.mark.gemma3, pytest.mark.timeout(600)]

GEMMA3_SHA256 = "a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818"
OCI_BLOB = 64 << 20
RATE = 24 << 20  # bytes/s while paced: seconds for gemma3, a couple for the OCI blob


class StoreService:
    """The store service as its own process, on a home of its own."""

    def __init__(self, home: Path, env: dict[str, str]) -> None:
        self.home, self.env = home, {**os.environ, "MLXSERVE_HOME": str(home), **env}
        self.proc: subprocess.Popen | None = None

    def start(self) -> None:
        self.proc = subprocess.Popen([sys.executable, "-m", "mlxserve.services.store"], env=self.env,
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 60
        while self.mlxctl("list").returncode != 0:
            assert self.proc.poll() is None and time.monotonic() < deadline, "the store service did not start"
            time.sleep(0.2)

    def kill(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait()

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(20)

    def mlxctl(self, *args: str, timeout: float = 300) -> subprocess.CompletedProcess:
        return subprocess.run([*MLXCTL, *args], env=self.env, capture_output=True, text=True, timeout=timeout)

    def pull(self, name: str) -> subprocess.Popen:
        return subprocess.Popen([*MLXCTL, "pull", name, "--insecure"], env=self.env, stdout=subprocess.DEVNULL,
                                stderr=subprocess.PIPE, text=True)

    def partial(self, digest_hex: str) -> Path:
        return self.home / "models" / "tmp" / f"partial-sha256-{digest_hex}"

    def manifests(self) -> list[Path]:
        return [p for p in (self.home / "models" / "manifests").rglob("*") if p.is_file()]


@pytest.fixture(scope="module")
def proxy(registry: Registry) -> Iterator[ThrottleProxy]:  # noqa: F811
    relay = ThrottleProxy(registry.host).start()
    yield relay
    relay.stop()


@pytest.fixture(scope="module")
def hub(gemma3_gguf: Path) -> Iterator[HubServer]:
    with HubServer() as server:
        server.add_repo("ggml-org/gemma-3-270m-GGUF",
                        {"gemma-3-270m-Q4_K_M.gguf": make_file("gemma-3-270m-Q4_K_M.gguf", gemma3_gguf)})
        yield server


@pytest.fixture(scope="module")
def oci_model(registry: Registry, tmp_path_factory: pytest.TempPathFactory) -> tuple[str, str]:  # noqa: F811
    """An mlxserve model with a 64 MiB weights blob, pushed once: (repository:tag, weights sha256 hex)."""
    folder = tmp_path_factory.mktemp("oci-kill")
    weights = folder / "model.safetensors"
    data = os.urandom(OCI_BLOB)
    weights.write_bytes(data)
    store = ModelStore(folder / "src")
    put_model(store, f"{registry.host}/library/killme:v1", {"model.safetensors": weights, "config.json": b"{}"})
    push(store, f"{registry.host}/library/killme:v1", insecure=True)
    return "library/killme:v1", hashlib.sha256(data).hexdigest()


def _kill_midway(store: StoreService, name: str, digest_hex: str, total: int) -> int:
    """Start `mlxctl pull name`, SIGKILL the store once a quarter has arrived; the bytes kept."""
    pulling = store.pull(name)
    partial = store.partial(digest_hex)
    deadline = time.monotonic() + 120
    while not (partial.exists() and partial.stat().st_size >= total // 4):
        assert pulling.poll() is None, pulling.stderr.read() if pulling.stderr else ""
        assert time.monotonic() < deadline, "the pull did not get going"
        time.sleep(0.02)
    store.kill()
    _, err = pulling.communicate(timeout=60)
    assert pulling.returncode != 0 and err.startswith("Error:"), err
    kept = partial.stat().st_size
    assert total // 4 <= kept < total
    assert store.manifests() == []  # nothing half-visible
    assert not (store.home / "models" / "blobs" / f"sha256-{digest_hex}").exists()
    return kept


@pytest.mark.parametrize("source", ["oci", "ollama", "hf"])
def test_store_killed_mid_pull_leaves_nothing_visible_and_the_next_pull_resumes(
        source: str, tmp_path: Path, registry: Registry, proxy: ThrottleProxy, hub: HubServer,  # noqa: F811
        oci_model: tuple[str, str], ollama_gemma3: PushedImage, gemma3_gguf: Path) -> None:  # noqa: F811
    store = StoreService(tmp_path / "home", {"MLXSERVE_HF_ENDPOINT": hub.url})
    if source == "oci":
        repo_tag, digest_hex = oci_model
        name, total = f"{proxy.host}/{repo_tag}", OCI_BLOB
    elif source == "ollama":
        name, digest_hex, total = f"{proxy.host}/{GEMMA3}", GEMMA3_SHA256, gemma3_gguf.stat().st_size
    else:
        name, digest_hex, total = "hf.co/ggml-org/gemma-3-270m-GGUF:Q4_K_M", GEMMA3_SHA256, gemma3_gguf.stat().st_size
    proxy.rate = RATE
    hub.slow(RATE)
    store.start()
    try:
        kept = _kill_midway(store, name, digest_hex, total)

        proxy.rate = None
        hub.slow(None)
        registry_mark, hub_mark = len(registry.requests()), len(hub.log)
        store.start()
        done = store.mlxctl("pull", name, "--insecure")
        assert done.returncode == 0, done.stderr
        listed = store.mlxctl("list").stdout
        assert {"oci": "killme:v1", "ollama": "gemma3:270m", "hf": "gemma-3-270m-gguf:q4_k_m"}[source] in listed
        assert not store.partial(digest_hex).exists()
        if source == "hf":
            gets = [r for r in hub.log[hub_mark:] if r.server == "cdn" and r.method == "GET"]
            assert [r.headers.get("Range") for r in gets] == [f"bytes={kept}-"]
        else:
            gets = [(status, size) for method, path, status, size in registry.requests()[registry_mark:]
                    if method == "GET" and path.endswith(digest_hex)]
            # The registry logs the killed download (200, cut short) whenever it notices the broken
            # connection, maybe only now; what matters is that nothing was fetched twice.
            assert [g for g in gets if g[0] != 200 or g[1] == total] == [(206, total - kept)]
    finally:
        proxy.rate = None
        hub.slow(None)
        store.stop()
