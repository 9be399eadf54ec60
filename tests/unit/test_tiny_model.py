"""The tiny model fixture writes, fast, a folder that mlx-lm loads like a real chat model."""

from __future__ import annotations

import json
from pathlib import Path

from tests.fixtures.tiny_model import CHAT_TEMPLATE, VOCAB_SIZE, _tokenizer_json, write_tiny_model


def test_tiny_models_after_the_first_reuse_its_trained_tokenizer(tmp_path: Path) -> None:
    # What keeps the fixture fast (no timing here: a busy machine is no test failure): the BPE is
    # trained once per process and every later folder gets the same tokenizer, with its own weights.
    first = write_tiny_model(tmp_path / "warm")
    trained = _tokenizer_json.cache_info().misses
    path = write_tiny_model(tmp_path / "fast", seed=5)
    assert _tokenizer_json.cache_info().misses == trained
    assert (path / "tokenizer.json").read_text() == (first / "tokenizer.json").read_text()
    assert (path / "model.safetensors").read_bytes() != (first / "model.safetensors").read_bytes()
    assert {p.name for p in path.iterdir()} >= {"config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json", "generation_config.json"}


def test_tiny_model_loads_with_mlx_lm_and_speaks_chatml(tmp_path: Path) -> None:
    import mlx.core as mx
    import mlx_lm

    model, tokenizer = mlx_lm.load(str(write_tiny_model(tmp_path / "m")))
    assert len(tokenizer) == VOCAB_SIZE == json.loads((tmp_path / "m" / "config.json").read_text())["vocab_size"]
    assert tokenizer.eos_token_ids == {tokenizer.convert_tokens_to_ids("<|im_end|>")}
    text = tokenizer.apply_chat_template([{"role": "user", "content": "Hello there"}], add_generation_prompt=True, tokenize=False)
    assert text == "<|im_start|>user\nHello there<|im_end|>\n<|im_start|>assistant\n"
    ids = tokenizer.encode(text, add_special_tokens=False)
    assert tokenizer.decode(ids) == text  # byte-level BPE round-trips, specials included
    assert tokenizer.chat_template == CHAT_TEMPLATE
    logits = model(mx.array([ids]))
    assert logits.shape == (1, len(ids), VOCAB_SIZE)


def test_seed_changes_weights_but_not_the_tokenizer(tmp_path: Path) -> None:
    a, b = write_tiny_model(tmp_path / "a", seed=1), write_tiny_model(tmp_path / "b", seed=2)
    assert (a / "tokenizer.json").read_bytes() == (b / "tokenizer.json").read_bytes()
    assert (a / "model.safetensors").read_bytes() != (b / "model.safetensors").read_bytes()
    c = write_tiny_model(tmp_path / "c", seed=1)
    assert (a / "model.safetensors").read_bytes() == (c / "model.safetensors").read_bytes()
