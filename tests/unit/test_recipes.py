"""Modelfile and ModelSpec.yaml parsing into CreateSpec, and the checks on parameters and quantize."""

from __future__ import annotations

from pathlib import Path

import pytest

from mlxserve.services.common.errors import InvalidArgument
from mlxserve.services.store.recipes import CreateSpec, normalize_parameters, parse_modelfile, parse_modelspec, quantization

MODELFILE = '''
# a comment
FROM smollm2:latest
PARAMETER temperature 0.7
PARAMETER num_ctx 4096
PARAMETER stop "<|im_end|>"
PARAMETER stop <|im_start|>
parameter use_mmap false
TEMPLATE """{{ range .Messages }}
{{ .Content }}
{{ end }}"""
SYSTEM You are a pirate.
LICENSE """MIT
with two lines"""
MESSAGE user Is the sea blue?
MESSAGE assistant """Aye,
it is."""
'''


def test_modelfile_instructions_become_a_typed_spec(tmp_path: Path) -> None:
    spec = parse_modelfile(MODELFILE, tmp_path)
    assert spec.from_model == "smollm2:latest" and spec.from_path is None
    assert spec.parameters == {"temperature": 0.7, "num_ctx": 4096, "stop": ["<|im_end|>", "<|im_start|>"], "use_mmap": False}
    assert spec.template == "{{ range .Messages }}\n{{ .Content }}\n{{ end }}"
    assert spec.system == "You are a pirate."
    assert spec.license == "MIT\nwith two lines"
    assert spec.messages == [{"role": "user", "content": "Is the sea blue?"}, {"role": "assistant", "content": "Aye,\nit is."}]


def test_modelfile_from_a_relative_path_resolves_against_its_folder(tmp_path: Path) -> None:
    (tmp_path / "weights").mkdir()
    (tmp_path / "weights" / "m.gguf").write_bytes(b"GGUF")
    spec = parse_modelfile("FROM ./weights/m.gguf\n", tmp_path)
    assert spec.from_path == (tmp_path / "weights" / "m.gguf").resolve() and spec.from_model is None


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("FROM m\nADAPTER ./lora.safetensors\n", "ADAPTER is not supported"),
        ("FROM m\nPARAMETER warp_speed 9\n", "unknown parameter 'warp_speed'"),
        ("FROM m\nPARAMETER num_ctx lots\n", "num_ctx must be an integer"),
        ("FROM m\nPARAMETER temperature hot\n", "temperature must be a number"),
        ("FROM m\nPARAMETER use_mmap maybe\n", "use_mmap must be true or false"),
        ("PARAMETER temperature 1\n", "needs a FROM"),
        ("FROM a\nFROM b\n", "only one FROM"),
        ("FROM m\nTEMPLATE \"\"\"never closed\n", "unterminated"),
        ("FROM m\nMESSAGE wizard hello\n", "role 'wizard'"),
        ("FROM m\nFROBNICATE yes\n", "unknown instruction 'FROBNICATE'"),
        ("FROM ../../etc/passwd-model.gguf\n", "does not exist"),
        ("FROM bad\x00name\n", "control characters"),
    ],
)
def test_bad_modelfiles_are_refused_naming_the_problem(tmp_path: Path, text: str, message: str) -> None:
    with pytest.raises(InvalidArgument, match=message):
        parse_modelfile(text, tmp_path)


def test_modelspec_yaml_gives_the_same_spec(tmp_path: Path) -> None:
    (tmp_path / "src").mkdir()
    spec = parse_modelspec(
        "from: src\n"
        "template: '{{ messages }}'\n"
        "system: Be brief.\n"
        "parameters: {temperature: 0.2, stop: ['<|im_end|>'], seed: 7}\n"
        "quantize: q4\n"
        "group_size: 32\n"
        "license: Apache-2.0\n"
        "messages:\n  - {role: user, content: hi}\n",
        tmp_path,
    )
    assert spec.from_path == (tmp_path / "src").resolve()
    assert spec.parameters == {"temperature": 0.2, "stop": ["<|im_end|>"], "seed": 7}
    assert (spec.quantize, spec.group_size, spec.license, spec.system) == ("q4", 32, "Apache-2.0", "Be brief.")
    assert spec.messages == [{"role": "user", "content": "hi"}]


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("template: x\n", "needs 'from'"),
        ("from: m\nflavour: x\n", "unknown ModelSpec key"),
        ("from: m\nadapter: x\n", "adapter is not supported"),
        ("from: m\nparameters: {top_k: 1.5}\n", "top_k must be an integer"),
        ("from: m\nquantize: q4_K_M\n", "'q4_K_M' is not supported"),
        ("- just a list\n", "YAML mapping"),
        ("from: [unclosed\n", "not valid YAML"),
    ],
)
def test_bad_modelspecs_are_refused(tmp_path: Path, text: str, message: str) -> None:
    with pytest.raises(InvalidArgument, match=message):
        parse_modelspec(text, tmp_path)


@pytest.mark.parametrize(
    ("quantize", "group", "expected"),
    [("q4", None, (4, 64)), ("Q8", None, (8, 64)), ("q4_0", None, (4, 32)), ("q8_0", 128, (8, 128)), (None, None, None)],
)
def test_quantize_spellings(quantize: str | None, group: int | None, expected: tuple[int, int] | None) -> None:
    assert quantization(quantize, group) == expected


@pytest.mark.parametrize(("quantize", "group"), [("q4_K_M", None), ("f16", None), ("q7", None), ("q4", 48), (None, 64)])
def test_quantize_requests_mlx_cannot_honour_are_refused(quantize: str | None, group: int | None) -> None:
    with pytest.raises(InvalidArgument):
        quantization(quantize, group)


def test_parameters_from_an_api_request_are_typed_and_checked() -> None:
    assert normalize_parameters({"stop": "END", "num_predict": "12", "top_p": 1}) == {"stop": ["END"], "num_predict": 12, "top_p": 1.0}
    with pytest.raises(InvalidArgument, match="unknown parameter"):
        normalize_parameters({"nope": 1})


@pytest.mark.parametrize(
    "spec",
    [
        CreateSpec(),
        CreateSpec(from_model="a", files={"x.gguf": "sha256:" + "0" * 64}),
        CreateSpec(files={"../x.gguf": "sha256:" + "0" * 64}),
        CreateSpec(files={"x.gguf": "sha256:../../etc"}),
        CreateSpec(from_model="../../etc/passwd"),
    ],
)
def test_specs_without_exactly_one_clean_source_are_refused(spec: CreateSpec) -> None:
    with pytest.raises(InvalidArgument):
        spec.validate()
