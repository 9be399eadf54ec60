"""SmolLM2-135M-Instruct Q4_1 GGUF imported through the store reproduces the reference exactly."""

from __future__ import annotations

from pathlib import Path

import pytest

from mlxserve.services.store.store import ModelStore

pytestmark = pytest.mark.smollm2


@pytest.fixture(scope="module")
def smollm2_view(smollm2_gguf: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    store = ModelStore(tmp_path_factory.mktemp("home") / "models")
    store.create_from_path("smollm2", smollm2_gguf)
    return store.resolve("smollm2").view_path


def test_smollm2_show_reports_ollama_style_details(smollm2_gguf: Path, tmp_path: Path) -> None:
    store = ModelStore(tmp_path / "models")
    store.create_from_path("smollm2", smollm2_gguf)
    shown = store.show("smollm2")
    d = shown.summary.details
    assert (d.family, d.parameter_size, d.quantization_level) == ("llama", "135M", "Q4_1")
    info = shown.config.model_info
    assert info["general.architecture"] == "llama" and info["llama.context_length"] == 8192
    assert info["general.parameter_count"] == 134_515_008
    assert shown.config.license == "apache-2.0" and "<|im_start|>" in shown.config.template
    assert shown.config.capabilities == ["completion"]


def test_smollm2_prompts_and_greedy_tokens_match_reference(smollm2_view: Path, smollm2_reference: dict) -> None:
    import mlx.core as mx
    import mlx_lm
    from mlx_lm.generate import generate_step

    model, tokenizer = mlx_lm.load(str(smollm2_view))
    for i, case in enumerate(smollm2_reference["cases"]):
        if "messages" in case:
            ids = tokenizer.apply_chat_template(case["messages"], add_generation_prompt=True)
        else:
            ids = tokenizer.encode(case["raw_prompt"])
        assert ids == case["prompt_token_ids"], f"case {i}: prompt tokens differ"

        expected = case["greedy_token_ids"]
        got: list[int] = []
        for token, _ in generate_step(mx.array(ids), model, max_tokens=len(expected)):
            got.append(int(token))
            if got[-1] in tokenizer.eos_token_ids:
                break
        assert got == expected, f"case {i}: greedy tokens differ"
        assert tokenizer.decode(got) == case["greedy_text"], f"case {i}: text differs"
