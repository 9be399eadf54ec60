"""The hostile-file corpus (tests/corpus/, written by tests/fixtures/hostile_files.py) through
every importer: GGUF create (a path, and an upload), an Ollama store import, and unpacking an
image-layout tarball. Each is refused as bad input naming the problem, before anything is written;
a full disk reads as disk full."""

from __future__ import annotations

import bz2
import errno
import gzip
import lzma
from pathlib import Path

import pytest

from mlxserve.services.common.errors import DiskFull, InvalidArgument
from mlxserve.services.store import blobs as blobs_module
from mlxserve.services.store.importers import ollama
from mlxserve.services.store.importers.oci_layout import unpack
from mlxserve.services.store.recipes import CreateSpec
from mlxserve.services.store.server import disk_full_as_error
from mlxserve.services.store.store import ModelStore
from tests.fixtures import hostile_files as hf
from tests.fixtures.ollama_store import OllamaStoreWriter

CORPUS = Path(__file__).resolve().parents[1] / "corpus"
GGUF_IDS = [c.name for c in hf.GGUF_CASES]
REFUSED_TARS = [c for c in hf.TAR_CASES if c.says]


@pytest.fixture
def store(tmp_path: Path) -> ModelStore:
    return ModelStore(tmp_path / "models")


def _untouched(store: ModelStore, blobs: set[str] = frozenset()) -> None:
    """Nothing visible and nothing left behind: no model, no new blob, no staging file."""
    assert store.list() == []
    assert store.blobs.all_digests() == set(blobs)
    assert list(store.tmp_dir.iterdir()) == []


def _says(message: str, words: tuple[str, ...]) -> None:
    for word in words:
        assert word.lower() in message.lower(), f"{word!r} not in {message!r}"


def test_the_corpus_is_what_the_fixture_script_writes(tmp_path: Path) -> None:
    written = hf.write_corpus(tmp_path)
    # (Folders beside them hold other corpora: JSON bodies for the gateway.)
    assert sorted(p.name for p in CORPUS.iterdir() if p.is_file()) == sorted(p.name for p in written)
    for p in written:
        assert (CORPUS / p.name).read_bytes() == p.read_bytes(), f"regenerate: python -m tests.fixtures.hostile_files ({p.name})"


def test_the_well_formed_gguf_the_cases_mutate_imports(store: ModelStore, tmp_path: Path) -> None:
    src = tmp_path / "tiny.gguf"
    src.write_bytes(hf.tiny_llama_gguf())
    assert store.create_from_path("tiny", src).name == "tiny:latest"


@pytest.mark.parametrize("case", hf.GGUF_CASES, ids=GGUF_IDS)
def test_a_hostile_gguf_is_refused_naming_the_problem_before_anything_is_written(
        store: ModelStore, case: hf.Case) -> None:
    with pytest.raises(InvalidArgument) as info:
        store.create_from_path("hostile", CORPUS / case.name)
    _says(info.value.message, case.says)
    assert (info.value.http_status, info.value.exit_code) == (400, 2)
    _untouched(store)


@pytest.mark.parametrize("case", hf.GGUF_CASES, ids=GGUF_IDS)
def test_a_hostile_gguf_uploaded_as_a_blob_is_refused_and_only_the_upload_stays(
        store: ModelStore, case: hf.Case) -> None:
    data = (CORPUS / case.name).read_bytes()
    digest = blobs_module.digest_of_bytes(data)
    with open(CORPUS / case.name, "rb") as f:
        store.put_blob(digest, f)
    with pytest.raises(InvalidArgument) as info:
        store.create("hostile", CreateSpec(files={"model.gguf": digest}))
    _says(info.value.message, case.says)
    _untouched(store, {digest})


@pytest.mark.parametrize("case", hf.GGUF_CASES, ids=GGUF_IDS)
def test_an_ollama_model_made_of_a_hostile_gguf_is_skipped_with_the_reason(
        store: ModelStore, case: hf.Case, tmp_path: Path) -> None:
    writer = OllamaStoreWriter(tmp_path / "ollama")
    writer.model("hostile:latest", CORPUS / case.name)
    [result] = ollama.import_models(store, writer.root, [], everything=True)
    assert result.outcome == ollama.SKIPPED
    _says(result.reason, case.says)
    _untouched(store)


def test_an_ollama_manifest_nested_1000_deep_is_skipped_not_a_crash(store: ModelStore, tmp_path: Path) -> None:
    writer = OllamaStoreWriter(tmp_path / "ollama")
    path = writer.model("deep:latest", CORPUS / "head_count_zero.gguf")
    path.write_bytes(b'{"schemaVersion": 2, "layers": ' + b"[" * 1000 + b"]" * 1000 + b"}")
    [result] = ollama.import_models(store, writer.root, [], everything=True)
    assert result.outcome == ollama.SKIPPED and "damaged" in result.reason
    _untouched(store)


@pytest.mark.parametrize("case", REFUSED_TARS, ids=[c.name for c in REFUSED_TARS])
@pytest.mark.parametrize("blob_stored", [False, True], ids=["new-blob", "blob-already-stored"])
def test_a_hostile_package_is_refused_naming_the_problem_and_nothing_becomes_visible(
        store: ModelStore, case: hf.Case, blob_stored: bool) -> None:
    before = {store.blobs.put_bytes(hf.CONFIG_JSON)[0]} if blob_stored else set()
    with pytest.raises(InvalidArgument) as info:
        unpack(store, str(CORPUS / case.name))
    _says(info.value.message, case.says)
    assert info.value.exit_code == 2
    assert store.list() == []
    assert store.blobs.all_digests() <= before | {blobs_module.digest_of_bytes(b'{"format":"mlx"}')}
    assert [p for p in store.tmp_dir.iterdir()] == []


def test_a_gzip_bomb_no_manifest_references_is_never_written(store: ModelStore,
                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    written: list[int] = []
    real_open = open

    def watching_open(file, mode="r", *args, **kwargs):  # noqa: ANN001, ANN202 - builtins.open's signature
        f = real_open(file, mode, *args, **kwargs)
        if "w" in mode and str(store.tmp_dir) in str(file):
            real_write = f.write
            f.write = lambda b: written.append(len(b)) or real_write(b)  # type: ignore[method-assign]
        return f

    monkeypatch.setattr("builtins.open", watching_open)
    events = []
    summary = unpack(store, str(CORPUS / "gzip_bomb_unreferenced.tar.gz"), progress=events.append)
    assert summary.name == "hostile/bomb:latest"
    assert sum(written) < 4096  # the manifest, its config and one small layer; not 64 MiB of zeros
    assert not any(e.digest == "sha256:" + "0" * 64 for e in events)


def test_a_referenced_blob_longer_than_declared_is_refused_before_its_bytes_are_read(store: ModelStore) -> None:
    with pytest.raises(InvalidArgument, match=r"layer 'config.json' .* is 23 bytes in the package, not the 4 declared "
                                              r"for it; nothing was imported"):
        unpack(store, str(CORPUS / "layer_longer_than_declared.tar"))
    assert store.list() == []


def test_a_package_written_blobs_first_is_read_again_for_what_it_referenced(store: ModelStore, tmp_path: Path) -> None:
    manifest = hf.model_manifest([("config.json", hf.CONFIG_JSON, None)])
    package = tmp_path / "reversed.tar"
    package.write_bytes(hf.layout_tar(manifest, [b'{"format":"mlx"}', hf.CONFIG_JSON], manifest_last=True))
    assert unpack(store, str(package)).name == "hostile/tar:latest"
    assert store.verify().ok


def test_disk_full_during_a_gguf_create_is_disk_full_and_leaves_nothing(
        store: ModelStore, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    src = tmp_path / "tiny.gguf"
    src.write_bytes(hf.tiny_llama_gguf())

    def no_space(self, staged: Path, digest: str) -> bool:  # noqa: ANN001
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(blobs_module.BlobStore, "adopt", no_space)
    with pytest.raises(DiskFull, match="disk full") as info:
        disk_full_as_error(store.create_from_path)("tiny", src)  # how the store's servicer runs a create
    assert (info.value.http_status, info.value.exit_code) == (507, 9)
    _untouched(store)


def test_disk_full_while_unpacking_a_package_is_disk_full_not_an_unreachable_package(
        store: ModelStore, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    package = tmp_path / "ok.tar"
    package.write_bytes(hf.layout_tar(hf.model_manifest([("config.json", hf.CONFIG_JSON, None)]),
                                      [b'{"format":"mlx"}', hf.CONFIG_JSON]))
    real_fsync = blobs_module.os.fsync

    def fsync(fd: int) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr("os.fsync", fsync)
    with pytest.raises(DiskFull):
        disk_full_as_error(unpack)(store, str(package))
    monkeypatch.setattr("os.fsync", real_fsync)
    assert store.list() == []



def _package(compress: str) -> bytes:
    raw = hf.layout_tar(hf.model_manifest([("config.json", hf.CONFIG_JSON, None)]), [b'{"format":"mlx"}', hf.CONFIG_JSON])
    return {"tar": raw, "gz": gzip.compress(raw), "bz2": bz2.compress(raw), "xz": lzma.compress(raw)}[compress]


@pytest.mark.parametrize("compress", ["tar", "gz", "bz2", "xz"])
def test_a_package_unpacks_whatever_it_is_compressed_with_and_a_truncated_one_is_damaged(
        store: ModelStore, tmp_path: Path, compress: str) -> None:
    data = _package(compress)
    whole, cut = tmp_path / f"whole.{compress}", tmp_path / f"cut.{compress}"
    whole.write_bytes(data)
    cut.write_bytes(data[: len(data) // 3])
    with pytest.raises(InvalidArgument, match="damaged package|not a tar archive|missing"):
        unpack(store, str(cut))
    assert unpack(store, str(whole)).name == "hostile/tar:latest"


def test_a_2_pow_32_by_2_pow_32_tensor_in_a_big_file_does_not_wrap_around_to_zero_bytes(
        store: ModelStore, tmp_path: Path) -> None:
    big = tmp_path / "huge_dimensions_big.gguf"
    big.write_bytes((CORPUS / "huge_dimensions.gguf").read_bytes())
    with open(big, "r+b") as f:
        f.truncate(32 << 20)  # sparse: big enough that 2^32 passes the per-dimension bound
    with pytest.raises(InvalidArgument, match=r"tensor blk.0.ffn_down.weight ends at byte \d{20}"):
        store.create_from_path("hostile", big)
    _untouched(store)
