"""`create` with an Ollama Go template: converted to Jinja that the worker renders as Ollama does,
or refused at create time; a template that cannot render is never stored."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from mlxserve.services.common.errors import InvalidArgument, NotFound
from mlxserve.services.store.recipes import CreateSpec, parse_modelfile, parse_modelspec
from mlxserve.services.store.store import ModelStore

DATA = Path(__file__).parents[1] / "data" / "gotemplates"


@pytest.fixture()
def store(tmp_path: Path, tiny_model_dir: Path) -> ModelStore:
    store = ModelStore(tmp_path / "models")
    store.create("base", CreateSpec(from_path=tiny_model_dir))
    return store


def _tokenizer(store: ModelStore, name: str):
    """The tokenizer the worker loads from the model's view."""
    from mlx_lm.utils import load_tokenizer

    return load_tokenizer(store.resolve(name).view_path)


def _render(store: ModelStore, name: str, messages: list[dict], tools: list[dict] | None = None) -> str:
    """What the worker renders."""
    return _tokenizer(store, name).apply_chat_template(messages, tools=tools, add_generation_prompt=True, tokenize=False)


def test_a_go_template_in_a_modelfile_becomes_jinja_that_renders_what_ollama_renders(store: ModelStore,
                                                                                    tmp_path: Path) -> None:
    go = (DATA / "tools" / "qwen2.5.gotmpl").read_text()
    store.create("qwen-tools", parse_modelfile(f'FROM base\nTEMPLATE """{go}"""\n', tmp_path))
    tools = json.loads((DATA / "tools" / "tools.json").read_text())
    messages = json.loads((DATA / "tools" / "messages.json").read_text())
    assert _render(store, "qwen-tools", messages, tools) == (DATA / "tools" / "qwen2.5.out").read_text()
    shown = store.show("qwen-tools")
    assert "{{ .Function" not in shown.template and "tools" in shown.capabilities
    assert shown.model_info["mlxserve.chat_template"].endswith("an Ollama Go template, converted to Jinja")
    assert shown.parameters["stop"] == ["<|im_start|>", "<|im_end|>"]  # ChatML, read off the converted template
    assert _tokenizer(store, "qwen-tools").tool_call_start == "<tool_call>"  # the worker parses the calls it writes
    # `show`'s Modelfile recreates the model: the stored template is Jinja, accepted as it is.
    store.create("again", parse_modelfile(shown.modelfile, tmp_path))
    assert store.show("again").template == shown.template


def test_api_create_and_modelspec_templates_are_converted_too(store: ModelStore, tmp_path: Path) -> None:
    go = (DATA / "template" / "gemma3-instruct.gotmpl").read_text()
    conversation = [{"role": "system", "content": "You are a helpful assistant."},
                    {"role": "user", "content": "Hello, how are you?"},
                    {"role": "assistant", "content": "I'm doing great. How can I help you today?"},
                    {"role": "user", "content": "I'd like to show off how chat templating works!"}]
    expected = (DATA / "template" / "testdata" / "gemma3-instruct.gotmpl" / "system-user-assistant-user").read_text()
    store.create("from-api", CreateSpec(from_model="base", template=go))  # /api/create's `template`
    assert _render(store, "from-api", conversation) == expected
    recipe = "from: base\ntemplate: |-\n" + "".join(f"  {line}\n" for line in go.rstrip("\n").split("\n"))
    store.create("from-spec", parse_modelspec(recipe, tmp_path))
    assert _render(store, "from-spec", conversation) == expected.removesuffix("\n")  # |- drops the last newline


@pytest.mark.parametrize(("template", "reason"), [
    ('{{ define "turn" }}{{ .Content }}{{ end }}{{ range .Messages }}{{ template "turn" . }}{{ end }}',
     "named templates"),
    ("{{ range .Messages }}{{ .Content | html }}{{ end }}", "the html function"),
    ("{% for m in messages %}{{ m.content }}", "neither a Jinja chat template"),
])
def test_a_template_that_cannot_render_is_refused_at_create_and_nothing_is_stored(store: ModelStore, template: str,
                                                                                   reason: str) -> None:
    blobs = store.blobs.all_digests()
    with pytest.raises(InvalidArgument, match=reason):
        store.create("broken", CreateSpec(from_model="base", template=template))
    with pytest.raises(NotFound):
        store.show("broken")
    assert store.blobs.all_digests() == blobs
    assert list(store.tmp_dir.iterdir()) == []


def test_the_bos_a_tokenizer_adds_is_written_by_the_converted_template(store: ModelStore, tiny_model_dir: Path,
                                                                        tmp_path: Path) -> None:
    # llama.cpp (so Ollama) puts BOS before the prompt; the worker encodes without special tokens.
    folder = shutil.copytree(tiny_model_dir, tmp_path / "adds-bos")
    config = json.loads((folder / "tokenizer_config.json").read_text())
    (folder / "tokenizer_config.json").write_text(json.dumps({**config, "add_bos_token": True}))
    go = (DATA / "template" / "llama3-instruct.gotmpl").read_text()
    store.create("with-bos", CreateSpec(from_path=folder, template=go))
    store.create("without-bos", CreateSpec(from_model="base", template=go))
    hello = [{"role": "user", "content": "Hello, how are you?"}]
    expected = (DATA / "template" / "testdata" / "llama3-instruct.gotmpl" / "user").read_text()
    assert _render(store, "with-bos", hello) == "<|endoftext|>" + expected
    assert _render(store, "without-bos", hello) == expected
