"""The chat-template catalog: autodetection, default stops, capabilities, and rendering."""

from __future__ import annotations

import pytest
from jinja2.sandbox import ImmutableSandboxedEnvironment

from mlxserve.services.store.templates import BY_NAME, CATALOG, capabilities, default_stops, pick_template


@pytest.mark.parametrize(
    ("arch", "tokens", "expected"),
    [
        ("llama", {"<|begin_of_text|>", "<|start_header_id|>", "<|eot_id|>"}, "llama3"),
        ("llama", {"<|im_start|>", "<|im_end|>"}, "chatml"),  # SmolLM2: llama weights, ChatML tokens
        ("qwen2", set(), "chatml"),
        ("gemma2", {"<start_of_turn>"}, "gemma"),
        ("mistral", {"[INST]", "[/INST]"}, "mistral"),
        ("phi3", {"<|end|>", "<|user|>", "<|assistant|>"}, "phi3"),
        ("llama", {"<s>", "</s>"}, None),  # a base llama: no guess
        ("bert", {"[CLS]"}, None),
    ],
)
def test_template_is_picked_from_special_tokens_then_architecture(arch: str, tokens: set[str], expected: str | None) -> None:
    picked = pick_template(arch, tokens)
    assert (picked.name if picked else None) == expected


@pytest.mark.parametrize("entry", CATALOG, ids=lambda e: e.name)
def test_every_catalog_template_renders_a_conversation_ending_in_the_assistant_turn(entry) -> None:
    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True)
    text = env.from_string(entry.template).render(
        messages=[{"role": "system", "content": "Be kind."}, {"role": "user", "content": "Hi there"}],
        add_generation_prompt=True, bos_token="<s>", eos_token="</s>",
    )
    assert "Be kind." in text and "Hi there" in text
    assert text.index("Be kind.") < text.index("Hi there")
    if entry.name != "mistral":
        assert entry.stop[0] in text or any(s in text for s in entry.stop)


def test_default_stops_follow_the_template_family_or_the_eos_token() -> None:
    assert default_stops(BY_NAME["chatml"].template) == ["<|im_start|>", "<|im_end|>"]
    assert default_stops(BY_NAME["llama3"].template)[-1] == "<|eot_id|>"
    assert default_stops("{{ m }}<|stop|>", eos_token="<|stop|>") == ["<|stop|>"]
    assert default_stops("{{ m }}", eos_token="</s>") == []


def test_capabilities_are_read_off_the_template_like_ollama() -> None:
    assert capabilities("plain") == ["completion"]
    assert capabilities("{% if tools %}...{% endif %}") == ["completion", "tools"]
    assert capabilities("{% if enable_thinking %}<think>{% endif %}") == ["completion", "thinking"]
    assert capabilities("{% if tools %}{% endif %}", embedding=True) == ["embedding"]
    assert capabilities("", vision=True) == ["completion", "vision"]
