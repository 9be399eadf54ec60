"""Importing an Ollama store: what a scan finds, how Ollama's layers map onto a model, which models
are skipped and why, idempotence, hostile folders, and `mlxctl import-ollama` over the store's RPCs.

The Ollama store is `tests/fixtures/ollama_store.py`'s: laid out exactly as Ollama writes one.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Iterator

import pytest
from typer.testing import CliRunner

from mlxserve.cli.main import app
from mlxserve.services.common.errors import InvalidArgument, NotFound
from mlxserve.services.store.importers import ollama
from mlxserve.services.store.progress import ProgressEvent
from mlxserve.services.store.recipes import CreateSpec
from mlxserve.services.store.server import build_server
from mlxserve.services.store.store import ModelStore
from tests.fixtures import ollama_store as fx
from tests.fixtures.tiny_gguf import write_tiny_gguf


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The standard Ollama store, built once; tests that change it work on a copy."""
    root = tmp_path_factory.mktemp("ollama") / "models"
    fx.build_ollama_store(root, tmp_path_factory.mktemp("ggufs"))
    return root


@pytest.fixture
def ollama_dir(built: Path, tmp_path: Path) -> Path:
    copy = tmp_path / "ollama-models"
    shutil.copytree(built, copy)
    return copy


@pytest.fixture
def store(tmp_path: Path) -> ModelStore:
    return ModelStore(tmp_path / "mlxserve-models")


def by_name(results: list[ollama.ImportResult]) -> dict[str, ollama.ImportResult]:
    return {r.ollama_name: r for r in results}


def import_all(store: ModelStore, root: Path, **kwargs) -> dict[str, ollama.ImportResult]:
    return by_name(ollama.import_models(store, root, [], everything=True, **kwargs))


# ----------------------------------------------------------------------------- scanning


def test_scan_names_each_model_as_ollama_shows_it_with_ours_its_size_architecture_and_quantization(built: Path) -> None:
    models = {m.ollama_name: m for m in ollama.scan(built)}
    assert set(models) == {fx.TINY, fx.TINY_SHARED, fx.USER_NS, fx.HF, fx.NO_TEMPLATE, fx.PROJECTOR_MODEL,
                           fx.ADAPTER_MODEL, fx.MISSING, fx.CORRUPT, fx.MAMBA}
    tiny = models[fx.TINY]
    assert (tiny.name, tiny.architecture, tiny.quantization, tiny.parameter_size) == \
        ("tiny:latest", "llama", "Q8_0", "1M")
    manifest = json.loads((built / "manifests/registry.ollama.ai/library/tiny/latest").read_text())
    assert tiny.size == sum(d["size"] for d in manifest["layers"]) + manifest["config"]["size"]
    assert tiny.gguf == built / "blobs" / manifest["layers"][0]["digest"].replace(":", "-")
    assert models[fx.USER_NS].name == "someuser/tiny:v1"
    assert models[fx.HF].name == "hf.co/tinyorg/tiny-gguf:q8_0"  # mlxserve names are lower case
    assert models[fx.HF].full_name == "hf.co/tinyorg/Tiny-GGUF:Q8_0"
    assert all(models[n].skip_reason is None for n in fx.IMPORTABLE)


def test_scan_says_why_a_model_cannot_be_imported_before_hashing_anything(built: Path) -> None:
    models = {m.ollama_name: m for m in ollama.scan(built)}
    assert "vision projector" in models[fx.PROJECTOR_MODEL].skip_reason
    assert "adapter" in models[fx.ADAPTER_MODEL].skip_reason
    assert "missing" in models[fx.MISSING].skip_reason and "ollama pull gone:latest" in models[fx.MISSING].skip_reason
    # The GGUF importer's own header check, in its own words.
    assert models[fx.MAMBA].skip_reason.startswith("GGUF architecture 'mamba' is not supported (supported: llama")
    # Skipped models still show what they are.
    assert models[fx.PROJECTOR_MODEL].architecture == "llama"
    # Same size, one flipped byte: only hashing tells, which the import does.
    assert models[fx.CORRUPT].skip_reason is None


def test_ollama_layers_map_onto_the_create_spec(built: Path) -> None:
    tiny = next(m for m in ollama.scan(built) if m.ollama_name == fx.TINY)
    spec = tiny.create_spec(Path("/x/tiny.gguf"))
    assert spec.from_path == Path("/x/tiny.gguf")
    assert spec.parameters == fx.TINY_PARAMS
    assert (spec.system, spec.license, spec.messages) == (fx.TINY_SYSTEM, fx.TINY_LICENSE, fx.TINY_MESSAGES)
    assert spec.template is None  # the GGUF has its own chat template
    assert spec.model_info == {
        "ollama.source": "registry.ollama.ai/library/tiny:latest",
        "ollama.manifest_digest": tiny.manifest_digest,
        "ollama.template": "not executed (Go template); the chat template comes from the GGUF",
    }
    spec.validate()


def test_unknown_or_mistyped_parameters_are_left_out_and_named(tmp_path: Path) -> None:
    w = fx.OllamaStoreWriter(tmp_path / "ollama")
    gguf = tmp_path / "t.gguf"
    write_tiny_gguf(gguf, quant="Q8_0")
    w.model("odd:latest", gguf, params={"temperature": 0.3, "stop": "<|im_end|>", "top_k": "many",
                                        "mirostat_mode": 2},
            messages=[{"role": "user", "content": "hi", "images": ["aGk="]}])
    (odd,) = ollama.scan(w.root)
    assert odd.skip_reason is None
    assert odd.parameters == {"temperature": 0.3, "stop": ["<|im_end|>"]}
    ignored = odd.create_spec(gguf).model_info["ollama.ignored_parameters"]
    assert "top_k (parameter top_k must be an integer" in ignored and "mirostat_mode (not a parameter" in ignored
    assert odd.messages == [{"role": "user", "content": "hi"}]  # images dropped


# ----------------------------------------------------------------------------- importing


def test_import_all_brings_the_text_models_over_and_skips_each_other_one_with_its_reason(built: Path,
                                                                                        store: ModelStore) -> None:
    results = import_all(store, built)
    assert {n for n, r in results.items() if r.outcome == ollama.IMPORTED} == set(fx.IMPORTABLE)
    skipped = {n: r.reason for n, r in results.items() if r.outcome == ollama.SKIPPED}
    assert set(skipped) == {fx.PROJECTOR_MODEL, fx.ADAPTER_MODEL, fx.MISSING, fx.CORRUPT, fx.MAMBA}
    assert "vision projector" in skipped[fx.PROJECTOR_MODEL]
    assert "adapter" in skipped[fx.ADAPTER_MODEL]
    assert "missing" in skipped[fx.MISSING]
    assert "does not match its digest" in skipped[fx.CORRUPT]
    assert "mamba" in skipped[fx.MAMBA] and "not supported" in skipped[fx.MAMBA]  # the importer's own words
    assert {s.name for s in store.list()} == {results[n].name for n in fx.IMPORTABLE}
    assert results[fx.TINY].digest == next(s.digest for s in store.list() if s.name == "tiny:latest")


def test_an_imported_model_keeps_ollamas_parameters_system_license_and_messages(built: Path, store: ModelStore) -> None:
    ollama.import_models(store, built, [fx.TINY])
    shown = store.show("tiny")
    assert shown.parameters == fx.TINY_PARAMS
    assert (shown.system, shown.license, shown.messages) == (fx.TINY_SYSTEM, fx.TINY_LICENSE, fx.TINY_MESSAGES)
    assert shown.details.family == "llama"
    assert "<|im_start|>" in shown.template  # the GGUF's Jinja template, not Ollama's Go one
    assert "{{ .System }}" not in shown.template


def test_show_says_the_go_template_is_not_executed_and_where_the_chat_template_comes_from(built: Path,
                                                                                          store: ModelStore) -> None:
    ollama.import_models(store, built, [fx.TINY, fx.NO_TEMPLATE, fx.TINY_SHARED])
    assert store.show("tiny").model_info["ollama.template"] == \
        "not executed (Go template); the chat template comes from the GGUF"
    catalog = store.show("chatml-tiny")
    assert catalog.model_info["ollama.template"] == \
        "not executed (Go template); the chat template comes from the catalog (chatml)"
    assert "<|im_start|>" in catalog.template and "completion" in catalog.capabilities
    # Without a template layer there is nothing to say about one.
    assert "ollama.template" not in store.show("tiny:plain").model_info
    assert store.show("tiny:plain").model_info["ollama.source"] == "registry.ollama.ai/library/tiny:plain"


def test_importing_again_says_already_imported_and_force_imports_again(built: Path, store: ModelStore) -> None:
    first = import_all(store, built)
    again = import_all(store, built)
    assert {n for n, r in again.items() if r.outcome == ollama.ALREADY_IMPORTED} == set(fx.IMPORTABLE)
    assert {n for n, r in again.items() if r.outcome == ollama.SKIPPED} == \
        {n for n, r in first.items() if r.outcome == ollama.SKIPPED}
    forced = by_name(ollama.import_models(store, built, [fx.TINY], force=True))
    assert forced[fx.TINY].outcome == ollama.IMPORTED


def test_an_ollama_model_that_changed_since_its_import_is_imported_again(ollama_dir: Path, store: ModelStore) -> None:
    ollama.import_models(store, ollama_dir, [fx.TINY])
    tiny = next(m for m in ollama.scan(ollama_dir) if m.ollama_name == fx.TINY)
    w = fx.OllamaStoreWriter(ollama_dir)
    w.model(fx.TINY, tiny.gguf, params={"temperature": 0.9})  # e.g. `ollama create` with a new Modelfile
    (result,) = ollama.import_models(store, ollama_dir, [fx.TINY])
    assert result.outcome == ollama.IMPORTED
    assert store.show("tiny").parameters["temperature"] == 0.9


def test_a_model_of_the_same_name_from_elsewhere_is_kept_unless_forced(built: Path, store: ModelStore,
                                                                     tmp_path: Path) -> None:
    mine = tmp_path / "mine.gguf"
    write_tiny_gguf(mine, quant="Q8_0")
    store.create("tiny", CreateSpec(from_path=mine))
    (kept,) = ollama.import_models(store, built, [fx.TINY])
    assert kept.outcome == ollama.SKIPPED and "--force" in kept.reason
    assert "ollama.source" not in store.show("tiny").model_info
    (replaced,) = ollama.import_models(store, built, [fx.TINY], force=True)
    assert replaced.outcome == ollama.IMPORTED
    assert store.show("tiny").model_info["ollama.source"] == "registry.ollama.ai/library/tiny:latest"


def test_a_gguf_blob_shared_by_several_tags_is_hashed_once(built: Path, store: ModelStore) -> None:
    hashed: list[str] = []

    def progress_for(m: ollama.OllamaModel):
        def progress(event: ProgressEvent) -> None:
            if event.status.startswith("verifying") and event.completed == 0:
                hashed.append(m.ollama_name)
        return progress

    ollama.import_models(store, built, [fx.TINY, fx.TINY_SHARED, fx.USER_NS, fx.HF], progress_for=progress_for)
    assert hashed == [fx.TINY]


def test_dry_run_checks_every_digest_and_writes_nothing(built: Path, store: ModelStore) -> None:
    results = import_all(store, built, dry_run=True)
    assert {n for n, r in results.items() if r.outcome == ollama.WOULD_IMPORT} == set(fx.IMPORTABLE)
    assert "does not match its digest" in results[fx.CORRUPT].reason
    assert store.list() == []


def test_unknown_names_fail_before_anything_is_imported(built: Path, store: ModelStore) -> None:
    with pytest.raises(NotFound, match="no model 'tiny:nope'.*it has: .*tiny:latest"):
        ollama.import_models(store, built, [fx.TINY, "tiny:nope"])
    assert store.list() == []
    with pytest.raises(InvalidArgument, match="not both"):
        ollama.import_models(store, built, [fx.TINY], everything=True)


@pytest.mark.parametrize("typed, expected", [
    ("tiny", fx.TINY), ("TINY:Latest", fx.TINY), ("registry.ollama.ai/library/tiny:plain", fx.TINY_SHARED),
    ("library/tiny:plain", fx.TINY_SHARED), ("someuser/tiny:v1", fx.USER_NS), ("hf.co/tinyorg/tiny-gguf:q8_0", fx.HF),
])
def test_names_are_matched_the_way_ollama_parses_them(built: Path, typed: str, expected: str) -> None:
    (picked,) = ollama.select(ollama.scan(built), [typed], False)
    assert picked.ollama_name == expected


def test_the_default_folder_is_ollama_models_else_the_home_one() -> None:
    assert ollama.default_ollama_dir({"OLLAMA_MODELS": "/data/ollama"}) == Path("/data/ollama")
    assert ollama.default_ollama_dir({"OLLAMA_MODELS": ' "/data/quoted" '}) == Path("/data/quoted")
    assert ollama.default_ollama_dir({}) == Path.home() / ".ollama" / "models"


# ----------------------------------------------------------------------------- hostile folders


def _tiny_manifest(root: Path) -> dict:
    return json.loads((root / "manifests/registry.ollama.ai/library/tiny/latest").read_text())


def _link_manifest_outside(root: Path, outside: Path) -> str:
    target = outside / "manifest"
    target.write_text(json.dumps(_tiny_manifest(root)))
    path = root / "manifests/registry.ollama.ai/library/escape/latest"
    path.parent.mkdir(parents=True)
    path.symlink_to(target)
    return "escape:latest"


def _link_blob_outside(root: Path, outside: Path) -> str:
    secret = outside / "secret"
    secret.write_bytes(b"not yours")
    digest = "sha256:" + "ab" * 32
    (root / "blobs" / ("sha256-" + "ab" * 32)).symlink_to(secret)
    fx.OllamaStoreWriter(root).manifest("linked:latest", [{"mediaType": fx.MODEL, "digest": digest, "size": 9}])
    return "linked:latest"


def _oversized_params(root: Path, outside: Path) -> str:
    w = fx.OllamaStoreWriter(root)
    doc = _tiny_manifest(root)
    big = w.blob(json.dumps({"stop": ["x" * (ollama.MAX_TEXT_LAYER_BYTES + 10)]}).encode(), fx.PARAMS)
    w.manifest("big:latest", [doc["layers"][0], big])
    return "big:latest"


def _digest_that_climbs_out(root: Path, outside: Path) -> str:
    doc = _tiny_manifest(root)
    climbing = {**doc["layers"][0], "digest": "sha256:../../../../etc/passwd"}
    fx.OllamaStoreWriter(root).manifest("climb:latest", [climbing])
    return "climb:latest"


def _not_json(root: Path, outside: Path) -> str:
    path = root / "manifests/registry.ollama.ai/library/garbled/latest"
    path.parent.mkdir(parents=True)
    path.write_bytes(b"\x00\xffnot a manifest")
    return "garbled:latest"


def _truncated_blob(root: Path, outside: Path) -> str:
    doc = _tiny_manifest(root)
    layer = doc["layers"][0]
    fx.OllamaStoreWriter(root).manifest("short:latest", [{**layer, "size": layer["size"] + 1}])
    return "short:latest"


def _fifo_blob(root: Path, outside: Path) -> str:
    data = b"a fifo is not a file"
    digest = "sha256:" + hashlib.sha256(data).hexdigest()
    os.mkfifo(root / "blobs" / digest.replace(":", "-"))
    fx.OllamaStoreWriter(root).manifest("fifo:latest", [{"mediaType": fx.MODEL, "digest": digest, "size": len(data)}])
    return "fifo:latest"


@pytest.mark.parametrize("make, reason", [
    (_link_manifest_outside, "link that leads outside the Ollama store"),
    (_link_blob_outside, "link that leads outside the Ollama store"),
    (_oversized_params, "more than the 1048576 allowed"),
    (_digest_that_climbs_out, "is not a sha256 digest"),
    (_not_json, "its manifest is damaged"),
    (_truncated_blob, "damaged or incomplete"),
    (_fifo_blob, "not a regular file"),
], ids=lambda v: v.__name__.strip("_") if callable(v) else "")
def test_hostile_store_entries_are_skipped_with_the_reason(ollama_dir: Path, store: ModelStore, tmp_path: Path,
                                                           make, reason: str) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    name = make(ollama_dir, outside)
    found = {m.ollama_name: m for m in ollama.scan(ollama_dir)}
    assert reason in found[name].skip_reason
    (result,) = ollama.import_models(store, ollama_dir, [name])
    assert result.outcome == ollama.SKIPPED and reason in result.reason
    assert store.list() == []


def test_a_store_whose_blobs_folder_links_to_another_disk_still_imports(ollama_dir: Path, store: ModelStore,
                                                                         tmp_path: Path) -> None:
    elsewhere = tmp_path / "external-disk" / "blobs"
    elsewhere.parent.mkdir()
    shutil.move(ollama_dir / "blobs", elsewhere)
    (ollama_dir / "blobs").symlink_to(elsewhere)
    (result,) = ollama.import_models(store, ollama_dir, [fx.TINY])
    assert result.outcome == ollama.IMPORTED


def test_manifest_names_outside_ollamas_grammar_are_skipped(ollama_dir: Path) -> None:
    path = ollama_dir / "manifests/registry.ollama.ai/library/-dash/latest"
    path.parent.mkdir(parents=True)
    path.write_text(json.dumps(_tiny_manifest(ollama_dir)))
    bad = [m for m in ollama.scan(ollama_dir) if m.model == "-dash"]
    assert "not a valid Ollama model name" in bad[0].skip_reason


def test_a_folder_that_is_not_an_ollama_store_is_refused(tmp_path: Path) -> None:
    with pytest.raises(InvalidArgument, match="not a folder"):
        ollama.scan(tmp_path / "nowhere")
    with pytest.raises(InvalidArgument, match="no manifests/ folder"):
        ollama.scan(tmp_path)


# ----------------------------------------------------------------------------- the real Gemma 3 file


@pytest.mark.gemma3
def test_gemma3_in_an_ollama_store_is_listed_with_its_architecture_quant_and_catalog_template(
        tmp_path: Path, gemma3_gguf: Path) -> None:
    w = fx.OllamaStoreWriter(tmp_path / "ollama")
    fx_gemma = gemma3_gguf
    w.model(fx.GEMMA3, fx_gemma, template=fx.GEMMA_GO_TEMPLATE, params={"stop": ["<end_of_turn>"], "top_k": 64},
            config={"model_format": "gguf", "model_family": "gemma3", "model_type": "268.10M", "file_type": "Q4_K_M"})
    (gemma,) = ollama.scan(w.root)
    assert (gemma.name, gemma.architecture, gemma.quantization) == ("gemma3:270m", "gemma3", "Q4_K_M")
    assert gemma.skip_reason is None
    assert gemma.create_spec(fx_gemma).model_info["ollama.template"] == \
        "not executed (Go template); the chat template comes from the catalog (gemma)"


# ----------------------------------------------------------------------------- mlxctl over the store's RPCs


runner = CliRunner()


@pytest.fixture
def served(monkeypatch: pytest.MonkeyPatch) -> Iterator[ModelStore]:
    """A real ModelStore served on a unix socket in this process; mlxctl talks to it."""
    home = Path(tempfile.mkdtemp(prefix="mxo"))  # short: unix socket paths are limited to ~107 bytes
    store = ModelStore(home / "models")
    server = build_server(store, home / "run" / "store.sock")
    server.start()
    monkeypatch.setenv("MLXSERVE_HOME", str(home))
    try:
        yield store
    finally:
        server.stop(0)
        shutil.rmtree(home, ignore_errors=True)


def mlxctl(*argv: str) -> tuple[int, str, str]:
    result = runner.invoke(app, list(argv))
    return result.exit_code, result.stdout, result.stderr


def test_mlxctl_lists_an_ollama_store_then_imports_by_name_and_says_why_it_skips(served: ModelStore,
                                                                                built: Path) -> None:
    code, out, _ = mlxctl("import-ollama", str(built))
    assert code == 0
    rows = {line.split()[0]: line for line in out.splitlines() if line and line.split()[0] in
            {fx.TINY, fx.PROJECTOR_MODEL, fx.MISSING, fx.HF}}
    assert "llama" in rows[fx.TINY] and "Q8_0" in rows[fx.TINY] and rows[fx.TINY].rstrip().endswith("importable")
    assert "skip: it has a vision projector" in rows[fx.PROJECTOR_MODEL]
    assert "skip: its model blob" in rows[fx.MISSING]
    assert "importable as hf.co/tinyorg/tiny-gguf:q8_0" in rows[fx.HF]
    assert "mlxctl import-ollama NAME" in out

    code, out, _ = mlxctl("import-ollama", str(built), fx.TINY, fx.PROJECTOR_MODEL)
    assert code == 1  # a named model was skipped
    assert "imported tiny:latest" in out.splitlines()
    assert any(line.startswith("skipped llava-tiny:latest: it has a vision projector") for line in out.splitlines())
    assert out.splitlines()[-1] == "1 imported, 1 skipped"
    assert served.show("tiny").system == fx.TINY_SYSTEM

    code, out, _ = mlxctl("import-ollama", str(built), "--all")
    assert code == 0  # with --all, skipping what cannot be imported is expected
    assert "already imported tiny:latest" in out.splitlines()
    code, out, _ = mlxctl("import-ollama", str(built), "--json")
    listed = {m["ollama_name"]: m for m in json.loads(out)["models"]}
    assert listed[fx.TINY]["imported"] is True and listed[fx.CORRUPT]["imported"] is False

    code, out, _ = mlxctl("show", "tiny")
    assert "not executed (Go template); the chat template comes from the GGUF" in out
    code, out, _ = mlxctl("show", "tiny", "--json")
    assert json.loads(out)["model_info"]["ollama.source"] == "registry.ollama.ai/library/tiny:latest"


def test_mlxctl_dry_run_and_bad_input_write_nothing(served: ModelStore, built: Path,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OLLAMA_MODELS", str(built))  # no DIR argument: the default folder
    code, out, _ = mlxctl("import-ollama", "--dry-run", fx.TINY, fx.CORRUPT)
    assert code == 1
    assert "would import tiny:latest" in out and "skipped corrupt:latest: its model blob" in out
    code, _, err = mlxctl("import-ollama", "nope:latest")
    assert code == 3 and "Error: the Ollama store at" in err and "has no model 'nope:latest'" in err
    code, _, err = mlxctl("import-ollama", "/definitely/not/here", "--all")
    assert code == 2 and "no Ollama store at /definitely/not/here" in err
    assert served.list() == []
