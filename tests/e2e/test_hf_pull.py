"""Pull `hf.co/ORG/REPO[:TAG]` from a local stand-in of the Hugging Face hub (tests/fixtures/hf_hub_server.py).

The stand-in answers what huggingface_hub and our downloader ask, as huggingface.co does (model
info with file hashes, resolve with a redirect of LFS files to a second "CDN" port, X-Error-Code
errors), so these tests run the real client code end to end on loopback.
"""

from __future__ import annotations

import json
import threading
from pathlib import Path
from typing import Iterator

import pytest

from mlxserve.services.common.errors import (
    Cancelled,
    Forbidden,
    Internal,
    NotFound,
    Unauthenticated,
    Unavailable,
    Unsupported,
)
from mlxserve.services.store.hf_refs import GgufChoice, RepoFile, gguf_choices, pick_gguf, quant_label
from mlxserve.services.store.manifest import ANN_SOURCE_MANIFEST, ANN_SOURCE_REF, Manifest
from mlxserve.services.store.progress import ProgressEvent
from mlxserve.services.store.store import ModelStore
from mlxserve.services.store.transfer import Remotes, partial_path, pull
from tests.fixtures.hf_hub_server import HubFile, HubServer, gguf_repo_files, mlx_repo_files, write_mlx_repo

MLX_REPO = "Tiny-Org/Tiny-Llama-4bit"
GGUF_REPO = "Tiny-Org/Tiny-Llama-GGUF"
MLX_KEPT = {"config.json", "model.safetensors", "model.safetensors.index.json", "tokenizer.json",
            "tokenizer_config.json", "chat_template.jinja", "generation_config.json", "LICENSE"}


@pytest.fixture(autouse=True)
def _no_real_hub(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """No token or endpoint of the machine leaks in: every test says what it uses."""
    for var in ("HF_TOKEN", "HF_ENDPOINT", "HF_HUB_OFFLINE", "HF_OIDC_RESOURCE"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf-home"))


@pytest.fixture(scope="module")
def repo_files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, dict[str, bytes | Path]]:
    root = tmp_path_factory.mktemp("hf-repos")
    return {
        "mlx": mlx_repo_files(write_mlx_repo(root / "mlx")),
        # Names as bartowski's repos have them; the bytes are tiny llamas of the types the name says
        # where write_tiny_gguf can write them (Q4_K_M holds Q4_1: what matters here is the choice).
        "gguf": gguf_repo_files(root / "gguf", {"Q8_0": "Q8_0", "Q4_K_M": "Q4_1", "Q4_0": "Q4_0", "F16": "F16"}),
        "gguf-no-q4km": gguf_repo_files(root / "gguf2", {"Q8_0": "Q8_0", "Q4_0": "Q4_0", "F16": "F16"}, stem="small"),
    }


@pytest.fixture
def hub(repo_files: dict[str, dict[str, bytes | Path]]) -> Iterator[HubServer]:
    with HubServer() as server:
        server.add_repo(MLX_REPO, repo_files["mlx"], library="mlx")
        server.add_repo(GGUF_REPO, repo_files["gguf"], library="gguf")
        yield server


@pytest.fixture
def store(tmp_path: Path) -> ModelStore:
    return ModelStore(tmp_path / "models")


def _pull(store: ModelStore, hub: HubServer, ref: str, events: list[ProgressEvent] | None = None, **remotes: str):
    return pull(store, ref, remotes=Remotes(hf_endpoint=hub.url, **remotes),
                progress=(events.append if events is not None else lambda e: None))


def _manifest(store: ModelStore, name: str) -> Manifest:
    return store.get_manifest(name)[2]


def _downloads(hub: HubServer, since: int = 0) -> list[str]:
    """The repo files fetched since request number `since` (resolve GETs)."""
    return [r.path.split("/resolve/", 1)[1].split("/", 1)[1] for r in hub.log[since:]
            if r.method == "GET" and "/resolve/" in r.path]


def _file(hub: HubServer, repo: str, path: str) -> HubFile:
    """A file of `repo` on main, as the stand-in serves it."""
    return hub.repos[repo].commits[hub.repos[repo].refs["main"]][path]


def _leftovers(store: ModelStore) -> list[str]:
    return sorted(p.name for p in store.tmp_dir.iterdir())


# ---------------------------------------------------------------------- MLX repos


def test_mlx_repo_is_stored_as_is_with_only_the_files_mlx_lm_needs_and_loads(store: ModelStore, hub: HubServer) -> None:
    from mlx_lm.utils import load_model

    events: list[ProgressEvent] = []
    summary = _pull(store, hub, f"hf.co/{MLX_REPO}", events)

    assert summary.name == "hf.co/tiny-org/tiny-llama-4bit:latest"
    assert summary.details.quantization_level == "Q4" and summary.details.family == "llama"
    manifest = _manifest(store, summary.name)
    assert {layer.title for layer in manifest.layers} == MLX_KEPT
    # The weights are the repo's bytes, as they are (the hub's LFS sha256 is the blob's name).
    weights = next(layer for layer in manifest.layers if layer.title == "model.safetensors")
    assert weights.digest == "sha256:" + _file(hub, MLX_REPO, "model.safetensors").sha256
    # Nothing else was downloaded: not the README, the figure, nor the original checkpoint.
    assert sorted(_downloads(hub)) == sorted(MLX_KEPT)
    # The repo id travels as typed (the hub's ids are case-sensitive), though the name is lower-cased.
    assert all(MLX_REPO in r.path for r in hub.requests("hub"))
    _, config = load_model(store.resolve(summary.name).view_path)
    assert config["quantization"]["bits"] == 4
    statuses = [e.status for e in events]
    assert statuses[0] == "pulling manifest" and statuses[-1] == "success" and statuses.count("success") == 1
    assert {"verifying sha256 digest", "writing manifest"} <= set(statuses)
    weight_events = [e for e in events if e.digest == weights.digest]
    assert weight_events[0].status == f"pulling {weights.digest[7:19]}"
    assert weight_events[-1].completed == weight_events[-1].total == weights.size
    assert manifest.annotations[ANN_SOURCE_REF] == f"hf.co/{MLX_REPO}"
    assert manifest.annotations[ANN_SOURCE_MANIFEST] == f"git:{hub.repos[MLX_REPO].refs['main']}"
    assert _leftovers(store) == []


def test_an_mlx_repo_tag_names_a_revision_and_a_missing_one_is_a_clear_error(
        store: ModelStore, hub: HubServer, repo_files: dict) -> None:
    readme_only = hub.commit(MLX_REPO, {"README.md": b"# moved on\n"}, branch="v1")

    summary = _pull(store, hub, f"hf.co/{MLX_REPO}:v1")
    assert summary.name == "hf.co/tiny-org/tiny-llama-4bit:v1"
    assert _manifest(store, summary.name).annotations[ANN_SOURCE_MANIFEST] == f"git:{readme_only}"
    with pytest.raises(NotFound, match=f"hf.co/{MLX_REPO} has no branch, tag or commit 'No-Such-Branch'"):
        _pull(store, hub, f"hf.co/{MLX_REPO}:No-Such-Branch")


def test_pulling_an_up_to_date_model_downloads_nothing_and_a_new_commit_only_what_changed(
        store: ModelStore, hub: HubServer) -> None:
    first = _pull(store, hub, f"hf.co/{MLX_REPO}")
    mark = len(hub.log)
    events: list[ProgressEvent] = []

    again = _pull(store, hub, f"hf.co/{MLX_REPO}", events)

    assert again.digest == first.digest
    assert [r.path for r in hub.log[mark:]] == [f"/api/models/{MLX_REPO}?blobs=true"]
    assert [e.status for e in events] == ["pulling manifest", "success"]

    commit = hub.commit(MLX_REPO, {"generation_config.json": b'{"temperature": 0.5, "top_p": 0.9}\n'})
    mark = len(hub.log)
    changed = _pull(store, hub, f"hf.co/{MLX_REPO}")
    assert changed.digest != first.digest
    assert _manifest(store, changed.name).annotations[ANN_SOURCE_MANIFEST] == f"git:{commit}"
    assert "model.safetensors" not in _downloads(hub, mark)  # the weights' blob was already there
    assert len(hub.requests("cdn")) == 1  # one weights download in all: the first pull's
    assert store.show(changed.name).parameters["temperature"] == 0.5


def test_lfs_file_that_fails_its_sha256_is_refused_and_nothing_is_left(store: ModelStore, hub: HubServer) -> None:
    hub.tamper(MLX_REPO, "model.safetensors")
    good = _file(hub, MLX_REPO, "model.safetensors").sha256

    with pytest.raises(Internal, match=f"blob sha256:{good} from the Hugging Face hub .* failed verification"):
        _pull(store, hub, f"hf.co/{MLX_REPO}")

    assert store.list() == []
    assert not store.blobs.exists(f"sha256:{good}") and not partial_path(store, f"sha256:{good}").exists()
    assert _leftovers(store) == []


def test_git_file_that_fails_its_blob_id_is_refused_and_nothing_is_left(store: ModelStore, hub: HubServer) -> None:
    hub.tamper(MLX_REPO, "config.json")

    with pytest.raises(Internal, match=f"config.json of hf.co/{MLX_REPO} failed verification.*git blob id"):
        _pull(store, hub, f"hf.co/{MLX_REPO}")

    assert store.list() == [] and _leftovers(store) == []
    assert "model.safetensors" not in _downloads(hub)  # small files first: the weights were never fetched


def test_a_broken_download_resumes_with_a_range_request(store: ModelStore, hub: HubServer) -> None:
    hub.cut_once(MLX_REPO, "model.safetensors")
    weights = _file(hub, MLX_REPO, "model.safetensors")
    digest = f"sha256:{weights.sha256}"

    with pytest.raises(Unavailable, match="pull again to resume"):
        _pull(store, hub, f"hf.co/{MLX_REPO}")
    have = partial_path(store, digest).stat().st_size
    assert store.list() == [] and 0 < have < weights.size

    _pull(store, hub, f"hf.co/{MLX_REPO}")

    cdn = hub.requests("cdn", "GET")
    assert [r.headers.get("Range") for r in cdn] == [None, f"bytes={have}-"]
    assert store.blobs.path(digest).stat().st_size == weights.size
    assert not partial_path(store, digest).exists()


def test_a_cancelled_pull_stops_keeps_its_partial_download_and_leaves_nothing_visible(
        store: ModelStore, hub: HubServer) -> None:
    weights = _file(hub, MLX_REPO, "model.safetensors")
    digest = f"sha256:{weights.sha256}"
    cancel = threading.Event()

    def progress(event: ProgressEvent) -> None:
        if event.digest == digest:
            cancel.set()  # the client goes away as the weights start

    with pytest.raises(Cancelled):
        pull(store, f"hf.co/{MLX_REPO}", remotes=Remotes(hf_endpoint=hub.url), progress=progress, cancel=cancel)

    assert store.list() == [] and not store.blobs.exists(digest)
    assert _leftovers(store) == [partial_path(store, digest).name]
    _pull(store, hub, f"hf.co/{MLX_REPO}")
    assert [m.name for m in store.list()] == ["hf.co/tiny-org/tiny-llama-4bit:latest"]


# ---------------------------------------------------------------------- errors and tokens


def test_a_repo_the_hub_does_not_have_is_not_found_naming_it(store: ModelStore, hub: HubServer,
                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_ENDPOINT", hub.url)  # the environment's endpoint, as huggingface_hub users set it
    with pytest.raises(NotFound, match=r"hf.co/Tiny-Org/No-Such-Repo was not found on the Hugging Face hub .*"
                                       r"if it is private, set HF_TOKEN"):
        pull(store, "hf.co/Tiny-Org/No-Such-Repo")
    assert store.list() == [] and _leftovers(store) == []


def test_gated_repo_needs_a_token_with_access_which_is_sent_to_the_hub_only(
        store: ModelStore, hub: HubServer, repo_files: dict, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    gated = "Big-Lab/Gated-Llama-4bit"
    hub.add_repo(gated, repo_files["mlx"], gated=True)
    hub.tokens |= {"hf_granted", "hf_not_granted"}
    hub.repos[gated].granted.add("hf_granted")

    with pytest.raises(Unauthenticated, match=f"hf.co/{gated} is gated: accept its terms at {hub.url}/{gated}, "
                                              "then set HF_TOKEN"):
        _pull(store, hub, f"hf.co/{gated}")
    assert _downloads(hub) == []

    monkeypatch.setenv("HF_TOKEN", "hf_not_granted")
    with pytest.raises(Forbidden, match=f"the token from HF_TOKEN has no access to gated hf.co/{gated}"):
        _pull(store, hub, f"hf.co/{gated}")
    monkeypatch.setenv("HF_TOKEN", "hf_expired")
    with pytest.raises(Unauthenticated, match="refused the token from HF_TOKEN: it is invalid or expired"):
        _pull(store, hub, f"hf.co/{gated}")
    assert store.list() == []

    # hf_token_file (the store's setting) wins over the environment.
    token_file = tmp_path / "hf-token"
    token_file.write_text("hf_granted\n")
    mark = len(hub.log)
    _pull(store, hub, f"hf.co/{gated}", hf_token_file=str(token_file))

    assert [m.name for m in store.list()] == ["hf.co/big-lab/gated-llama-4bit:latest"]
    sent = [(r.server, r.headers.get("Authorization")) for r in hub.log[mark:]]
    assert ("cdn", None) in sent  # the weights came from the CDN...
    assert {auth for server, auth in sent if server == "cdn"} == {None}  # ...which never saw the token
    assert {auth for server, auth in sent if server == "hub"} == {"Bearer hf_granted"}


# ---------------------------------------------------------------------- GGUF repos


@pytest.mark.parametrize("tag, file", [("Q8_0", "tiny-Q8_0.gguf"), ("q8_0", "tiny-Q8_0.gguf"),
                                       ("tiny-F16.gguf", "tiny-F16.gguf"), ("TINY-f16.GGUF", "tiny-F16.gguf")])
def test_gguf_quant_is_picked_by_tag_or_file_name_in_any_case(store: ModelStore, hub: HubServer, tag: str,
                                                               file: str) -> None:
    summary = _pull(store, hub, f"hf.co/{GGUF_REPO}:{tag}")

    assert summary.name == f"hf.co/tiny-org/tiny-llama-gguf:{tag.lower()}"
    manifest = _manifest(store, summary.name)
    assert manifest.annotations[ANN_SOURCE_REF] == f"hf.co/{GGUF_REPO}/{file}"
    assert _downloads(hub) == [file]
    assert summary.details.quantization_level == file.removeprefix("tiny-").removesuffix(".gguf").upper()
    # The GGUF went into MLX weights; the downloaded file itself is gone.
    gguf = _file(hub, GGUF_REPO, file)
    assert not store.blobs.exists(f"sha256:{gguf.sha256}") and _leftovers(store) == []


def test_gguf_default_is_q4_k_m_and_else_the_nearest_smaller_quant(store: ModelStore, hub: HubServer,
                                                                   repo_files: dict) -> None:
    hub.add_repo("Tiny-Org/Small-GGUF", repo_files["gguf-no-q4km"])

    _pull(store, hub, f"hf.co/{GGUF_REPO}")
    _pull(store, hub, "hf.co/Tiny-Org/Small-GGUF")

    assert _manifest(store, "hf.co/tiny-org/tiny-llama-gguf").annotations[ANN_SOURCE_REF].endswith("/tiny-Q4_K_M.gguf")
    assert _manifest(store, "hf.co/tiny-org/small-gguf").annotations[ANN_SOURCE_REF].endswith("/small-Q4_0.gguf")


def _choices(*names: str) -> list[GgufChoice]:
    return gguf_choices([RepoFile(n, 1, "0" * 40, "0" * 64) for n in names])


@pytest.mark.parametrize("names, chosen", [
    # bartowski's layout: Q4_K_M is there.
    (["Llama-3.2-1B-Instruct-Q8_0.gguf", "Llama-3.2-1B-Instruct-Q4_K_M.gguf", "Llama-3.2-1B-Instruct-IQ3_M.gguf"],
     "Q4_K_M"),
    # No Q4_K_M: the largest quant at or below it (Q4_K_S before IQ4_XS before Q4_0, then 3-bit).
    (["m-Q8_0.gguf", "m-Q4_0.gguf", "m-Q4_K_S.gguf", "m-IQ4_XS.gguf", "m-Q3_K_M.gguf"], "Q4_K_S"),
    (["m-Q8_0.gguf", "m-Q3_K_L.gguf", "m-Q2_K.gguf"], "Q3_K_L"),
    # Only larger ones: the smallest of them.
    (["m-F16.gguf", "m-Q8_0.gguf", "m-Q6_K.gguf"], "Q6_K"),
    # TheBloke's dotted names and lower case, unsloth's UD- prefix.
    (["llama-2-7b.q5_k_m.gguf", "llama-2-7b.q4_k_m.gguf"], "Q4_K_M"),
    (["m-UD-Q4_K_XL.gguf", "m-Q8_0.gguf"], "UD-Q4_K_XL"),
])
def test_default_quant_follows_the_hubs_order(names: list[str], chosen: str) -> None:
    assert pick_gguf(_choices(*names), None, "hf.co/o/r").label == chosen


def test_quant_labels_are_read_as_the_hub_reads_them() -> None:
    assert quant_label("Llama-3.2-3B-Instruct-IQ3_M.gguf") == "IQ3_M"
    assert quant_label("gemma-3-270m-it-Q4_0_4_4.gguf") == "Q4_0_4_4"
    assert quant_label("model-bf16.gguf") == "BF16"
    assert quant_label("Qwen3-8B-Q6_K_L.gguf") == "Q6_K_L"
    assert quant_label("sub/dir/model.Q8_0.gguf") == "Q8_0"
    assert quant_label("model.gguf") is None


def test_a_quant_the_repo_lacks_is_an_error_listing_the_ones_it_has(store: ModelStore, hub: HubServer) -> None:
    with pytest.raises(NotFound, match=f"hf.co/{GGUF_REPO} has no Q5_K_M GGUF; it has F16, Q4_0, Q4_K_M, Q8_0"):
        _pull(store, hub, f"hf.co/{GGUF_REPO}:Q5_K_M")
    assert _downloads(hub) == [] and store.list() == []


def test_a_split_gguf_is_refused_naming_the_quants_kept_in_one_file(store: ModelStore, hub: HubServer,
                                                                   repo_files: dict) -> None:
    one = repo_files["gguf"]["tiny-Q8_0.gguf"]
    hub.add_repo("Big-Lab/Huge-GGUF", {"Q4_K_M/huge-Q4_K_M-00001-of-00002.gguf": one,
                                       "Q4_K_M/huge-Q4_K_M-00002-of-00002.gguf": one, "huge-Q8_0.gguf": one,
                                       "mmproj-huge-f16.gguf": one})

    with pytest.raises(Unsupported, match=r"Q4_K_M \(split in 2 files\) is a split GGUF .*llama-gguf-split --merge.*"
                                          r"pull a quant kept in one file: Q8_0$"):
        _pull(store, hub, "hf.co/Big-Lab/Huge-GGUF")
    assert _downloads(hub) == [] and store.list() == []


def test_gguf_pull_is_up_to_date_until_the_file_changes(store: ModelStore, hub: HubServer, repo_files: dict) -> None:
    first = _pull(store, hub, f"hf.co/{GGUF_REPO}:Q8_0")
    hub.commit(GGUF_REPO, {"README.md": b"# new card\n"})  # a new commit, the same file
    mark = len(hub.log)

    same = _pull(store, hub, f"hf.co/{GGUF_REPO}:Q8_0")

    assert same.digest == first.digest and _downloads(hub, mark) == []
    hub.commit(GGUF_REPO, {"tiny-Q8_0.gguf": repo_files["gguf"]["tiny-Q4_0.gguf"]})  # re-uploaded bytes
    changed = _pull(store, hub, f"hf.co/{GGUF_REPO}:Q8_0")
    assert changed.digest != first.digest and _downloads(hub, mark) == ["tiny-Q8_0.gguf"]
    assert [m.name for m in store.list()] == ["hf.co/tiny-org/tiny-llama-gguf:q8_0"]
    assert _leftovers(store) == []


def test_an_interrupted_gguf_download_is_kept_and_resumed(store: ModelStore, hub: HubServer) -> None:
    hub.cut_once(GGUF_REPO, "tiny-Q8_0.gguf")
    gguf = _file(hub, GGUF_REPO, "tiny-Q8_0.gguf")

    with pytest.raises(Unavailable):
        _pull(store, hub, f"hf.co/{GGUF_REPO}:Q8_0")
    have = partial_path(store, f"sha256:{gguf.sha256}").stat().st_size
    _pull(store, hub, f"hf.co/{GGUF_REPO}:Q8_0")

    assert [r.headers.get("Range") for r in hub.requests("cdn", "GET")] == [None, f"bytes={have}-"]
    assert not store.blobs.exists(f"sha256:{gguf.sha256}") and _leftovers(store) == []


def test_a_repo_with_neither_gguf_nor_weights_is_refused(store: ModelStore, hub: HubServer) -> None:
    hub.add_repo("Tiny-Org/Dataset-Card", {"README.md": b"# not a model\n", "data.json": json.dumps([1]).encode()})
    with pytest.raises(Unsupported, match="holds neither GGUF files nor an MLX / safetensors model"):
        _pull(store, hub, "huggingface.co/Tiny-Org/Dataset-Card")


def test_the_stand_in_answers_huggingface_hubs_own_downloads_as_the_hub_does(hub: HubServer, tmp_path: Path) -> None:
    """The fixture is faithful enough for huggingface_hub itself: HEAD + redirect + ETags, tree, snapshot."""
    from huggingface_hub import HfApi, hf_hub_download, snapshot_download

    weights = _file(hub, MLX_REPO, "model.safetensors")
    path = hf_hub_download(MLX_REPO, "model.safetensors", endpoint=hub.url, cache_dir=tmp_path / "c1", token=False)
    assert Path(path).stat().st_size == weights.size
    folder = snapshot_download(MLX_REPO, endpoint=hub.url, cache_dir=tmp_path / "c2", token=False,
                               allow_patterns=["*.json"])
    assert (Path(folder) / "config.json").is_file()
    tree = {f.path: f for f in HfApi(endpoint=hub.url, token=False).list_repo_tree(MLX_REPO, recursive=True)
            if hasattr(f, "lfs")}
    assert tree["model.safetensors"].lfs.sha256 == weights.sha256 and tree["original/consolidated.pth"].lfs
