"""Model names: parsing, normalization, refusals, and that no name can escape the store."""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mlxserve.services.common.errors import InvalidArgument
from mlxserve.services.store.names import DEFAULT_HOST, parse_name

HEX = "a" * 64


def test_short_name_gets_default_host_namespace_and_tag() -> None:
    n = parse_name("smollm2")
    assert (n.host, n.namespace, n.name, n.tag, n.digest) == (DEFAULT_HOST, "library", "smollm2", "latest", None)
    assert n.display == "smollm2:latest"


def test_names_match_case_insensitively() -> None:
    assert parse_name("SmolLM2:Q4") == parse_name("smollm2:q4")


def test_full_name_with_host_port_namespace_and_tag() -> None:
    n = parse_name("registry.example.com:5000/team/model-x:v1.2")
    assert (n.host, n.namespace, n.name, n.tag) == ("registry.example.com:5000", "team", "model-x", "v1.2")
    assert n.display == "registry.example.com:5000/team/model-x:v1.2"
    assert parse_name("team/model").display == "team/model:latest"


def test_digest_pins_a_manifest() -> None:
    n = parse_name(f"smollm2@sha256:{HEX}")
    assert n.digest == f"sha256:{HEX}" and not n.tag_given


def test_manifest_path_layout(tmp_path: Path) -> None:
    path = parse_name("team/model:v1").manifest_path(tmp_path)
    assert path == tmp_path / "manifests" / DEFAULT_HOST / "team" / "model" / "v1"


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("", "empty"),
        ("a/b/c/d", "too many"),
        ("../etc", "namespace"),
        ("a..b", "must not contain '..'"),
        ("model:a:b", "more than one ':'"),
        ("my model", "may only hold"),
        ("bad\x00name", "control characters"),
        ("/etc/passwd", "looks like a path"),
        ("-model", "must start with a letter or digit"),
        ("model:", "tag is empty"),
        (f"model@sha256:{'a' * 10}", "64 hex digits"),
        ("host:99999/ns/model", "port"),
        ("x" * 81, "longer than 80"),
        ("a\\b", "backslashes"),
    ],
)
def test_bad_names_are_refused_with_a_clear_message(text: str, message: str) -> None:
    with pytest.raises(InvalidArgument, match=message):
        parse_name(text)


@settings(max_examples=400, deadline=None)
@given(st.lists(st.sampled_from(["a", "Z", "0", ".", "..", "_", "-", ":", "/", "@", "\\", " ", "\x00", "~", "sha256:"]), max_size=20).map("".join))
def test_no_parsed_name_maps_outside_the_models_dir(text: str) -> None:
    root = Path("/srv/store/models")
    try:
        name = parse_name(text)
    except InvalidArgument:
        return
    path = name.manifest_path(root)
    assert path.resolve().is_relative_to((root / "manifests").resolve())
    assert len(path.relative_to(root / "manifests").parts) == 4
    assert parse_name(name.display).full == name.full  # display names round-trip


@settings(max_examples=200, deadline=None)
@given(st.text(max_size=60))
def test_arbitrary_text_either_parses_safely_or_is_refused(text: str) -> None:
    try:
        name = parse_name(text)
    except InvalidArgument:
        return
    assert ".." not in name.full and "\x00" not in name.full
    assert name.manifest_path(Path("/m")).is_relative_to(Path("/m/manifests"))


_HOSTILE = st.one_of(
    st.text(max_size=80),
    st.lists(st.sampled_from(["a", "0", ".", "..", "/", "\\", ":", "@", "sha256:", "\x00", "\n", "~", "%2e", "f" * 64]),
             max_size=12).map("".join),
)


@settings(max_examples=300, deadline=None)
@given(_HOSTILE)
def test_digest_check_accepts_only_sha256_hex_and_maps_inside_blobs(text: str) -> None:
    from mlxserve.services.store.blobs import BlobStore, check_digest

    try:
        digest = check_digest(text)
    except InvalidArgument:
        return
    path = BlobStore(Path("/m")).path(digest)
    assert path.parent == Path("/m/blobs") and len(path.name) == len("sha256-") + 64


@pytest.fixture(scope="module")
def fuzz_store(tmp_path_factory: pytest.TempPathFactory):
    from mlxserve.services.store.store import ModelStore

    root = tmp_path_factory.mktemp("fuzz")
    store = ModelStore(root / "home" / "models")
    store.gc()  # creates the lock files up front: they are not what this test is about
    return root, store


@settings(max_examples=200, deadline=None)
@given(src=_HOSTILE, dst=_HOSTILE)
def test_store_entry_points_refuse_hostile_names_without_touching_the_disk(fuzz_store, src: str, dst: str) -> None:
    from mlxserve.services.common.errors import NotFound

    root, store = fuzz_store
    before = sorted(p.relative_to(root) for p in root.rglob("*"))
    for call in (lambda: store.show(src), lambda: store.remove(src), lambda: store.copy(src, dst),
                 lambda: store.resolve(src), lambda: store.has_blob(src), lambda: store.get_manifest(src)):
        try:
            result = call()
        except (InvalidArgument, NotFound):
            continue
        assert result is False  # only has_blob of a well-formed, absent digest gets this far
    assert sorted(p.relative_to(root) for p in root.rglob("*")) == before


def test_bare_names_mean_ollamas_library_as_they_do_for_an_ollama_user() -> None:
    for text in ("gemma3:270m", "library/gemma3:270m", "registry.ollama.ai/library/gemma3:270m",
                 "ollama.com/library/gemma3:270m", "OLLAMA.COM/Library/Gemma3:270M"):
        name = parse_name(text)
        assert (name.host, name.namespace, name.name, name.tag) == ("registry.ollama.ai", "library", "gemma3", "270m")
        assert name.display == "gemma3:270m"
    assert parse_name("llama3.2").display == "llama3.2:latest"


def test_hugging_face_names_keep_their_host_in_every_spelling() -> None:
    for text in ("hf.co/mlx-community/Qwen3-0.6B-4bit", "huggingface.co/mlx-community/Qwen3-0.6B-4bit"):
        name = parse_name(text)
        assert (name.host, name.namespace, name.name) == ("hf.co", "mlx-community", "qwen3-0.6b-4bit")
        assert name.display == "hf.co/mlx-community/qwen3-0.6b-4bit:latest"
    assert parse_name("hf.co/unsloth/gemma-3-270m-it-GGUF:Q4_K_M").tag == "q4_k_m"
